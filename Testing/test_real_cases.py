"""The real scans fetched from PyPI packages: checksums, geometry, labels, and the MRC reader."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from CTDeepSegLib.errors import CTDeepSegError
from CTDeepSegLib.real_cases import CASES, fetch_cases, load_case, read_mrc


@pytest.fixture(scope="session")
def fetched():
    """All cases in the user cache (fetched once, reused by later runs)."""
    return fetch_cases()


@pytest.mark.realdata
def test_lung2_is_a_chest_ct_with_one_lesion(fetched):
    image, label, record = load_case("lung2")
    assert image.shape == (61, 512, 512)
    np.testing.assert_allclose(image.spacing, [0.6269531, 0.6269531, 5.0], atol=1e-6)
    assert image.array.min() == -1024 and record["training_allowed"] is True
    components, count = ndimage.label(label.array > 0)
    assert count == 1 and np.count_nonzero(components) * image.voxel_volume_mm3 > 1000  # over 1 mL


@pytest.mark.realdata
def test_brain1_is_an_mri_with_a_lesion(fetched):
    image, label, record = load_case("brain1")
    assert image.shape == (25, 256, 256) and record["modality"] == "MRI"
    assert image.array.min() >= 0 and np.count_nonzero(label.array) > 0


@pytest.mark.realdata
def test_liver117_has_liver_and_tumours_and_is_for_evaluation_only(fetched):
    image, label, record = load_case("liver117")
    assert image.shape == (128, 128, 128) and np.allclose(image.spacing, 1.0)
    assert record["training_allowed"] is False and "evaluation only" in record["licence"]
    assert set(np.unique(label.array)) == {0, 1, 2}
    assert -1100 < image.array.min() < -1000 and image.array.max() > 1000  # Hounsfield units
    sizes = np.bincount(ndimage.label(label.array == 2)[0].ravel())[1:]  # face-connected components
    assert np.count_nonzero(sizes >= 100) == 38  # tumours of at least 100 voxels (0.1 mL at the assumed 1 mm)


@pytest.mark.realdata
def test_fetching_again_reuses_the_cache(fetched):
    before = {path: (path / "case.json").stat().st_mtime for path in fetched}
    again = fetch_cases()
    assert {path: (path / "case.json").stat().st_mtime for path in again} == before


def test_missing_case_says_how_to_fetch_it(tmp_path):
    with pytest.raises(CTDeepSegError, match="run `ctdeepseg fetch-cases lung2`"):
        load_case("lung2", cache=tmp_path)
    with pytest.raises(CTDeepSegError, match="Unknown case"):
        load_case("lung3", cache=tmp_path)


def test_mrc_reader_handles_byte_order_and_extended_headers():
    data = np.arange(2 * 3 * 4, dtype=">f4").reshape(2, 3, 4)
    header = np.zeros(256, dtype=">i4")
    header[:4] = [4, 3, 2, 2]
    header[16:19] = [1, 2, 3]
    header[23] = 16  # extended header bytes
    raw = bytearray(header.tobytes())
    raw[212:214] = b"\x11\x11"
    mrc = bytes(raw) + b"\0" * 16 + data.tobytes()
    np.testing.assert_array_equal(read_mrc(mrc, "test.mrc"), data)
    with pytest.raises(CTDeepSegError, match="truncated"):
        read_mrc(mrc[:-4], "test.mrc")


def test_the_liver_case_and_the_reserved_dicom_series_are_never_offered_for_training():
    assert [name for name, case in CASES.items() if not case.training_allowed] == ["liver117", "ts_ct_dicom"]
    assert "reserved for independent evaluation" in CASES["ts_ct_dicom"].licence


@pytest.mark.realdata
def test_totalsegmentator_examples_come_with_their_labels_on_the_image_grid(fetched):
    expected = {
        "ts_ct": ((112, 101, 122), 3.0, {"liver": 41692, "spleen": 9668, "kidney_left": 5090, "aorta": 1839}),
        "ts_cta": ((164, 126, 120), 1.5, {"aorta": 72801, "vertebrae_T12": 9617, "celiac_trunk": 644}),
        "ts_mr": ((20, 91, 117), 3.0, {"liver": 18480, "kidney_right": 1721, "vertebrae": 2006}),
        "ts_ct_dicom": ((20, 512, 512), 2.0, {"liver": 366708, "spleen": 130634, "aorta": 11723}),
    }
    for name, (shape, slice_mm, counts) in expected.items():
        image, label, record = load_case(name)
        assert image.shape == shape and image.spacing[2] == pytest.approx(slice_mm), name
        values = {v: k for k, v in record["labels"].items()}
        for structure, count in counts.items():
            assert np.count_nonzero(label.array == int(values[structure])) == count, (name, structure)
    image, _, record = load_case("ts_ct_dicom")
    assert image.array.min() == -1024 and record["training_allowed"] is False
