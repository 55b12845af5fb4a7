"""File I/O: exact round trips of voxels and geometry, checked against nibabel and SimpleITK, and bad input."""

from __future__ import annotations

import tempfile

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk

from CTDeepSegLib.errors import CTDeepSegError
from CTDeepSegLib.volume import Volume
from CTDeepSegLib.volume_io import read_label, read_volume, write_volume


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_round_trip_keeps_voxels_and_geometry(tmp_path, oblique_volume, suffix):
    path = write_volume(oblique_volume, tmp_path / f"image{suffix}")
    back = read_volume(path)
    np.testing.assert_array_equal(back.array, oblique_volume.array)
    assert back.array.dtype == np.float32
    # NIfTI stores geometry in float32 (qform/sform), so allow its rounding; the others are exact.
    tolerance = 1e-4 if suffix.startswith(".nii") else 1e-9
    np.testing.assert_allclose(back.spacing, oblique_volume.spacing, atol=tolerance)
    np.testing.assert_allclose(back.origin, oblique_volume.origin, atol=tolerance)
    np.testing.assert_allclose(back.direction, oblique_volume.direction, atol=tolerance)
    reference = sitk.ReadImage(str(path))
    np.testing.assert_allclose(back.index_to_physical([5, 3, 2]), reference.TransformIndexToPhysicalPoint((5, 3, 2)))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary file may remain"


def test_nifti_geometry_agrees_with_nibabel(tmp_path, oblique_volume):
    path = write_volume(oblique_volume, tmp_path / "image.nii.gz")
    image = nibabel.load(path)
    # nibabel's affine maps (i, j, k) to RAS+; the engine's ijk_to_ras must be the same matrix.
    np.testing.assert_allclose(image.affine, oblique_volume.ijk_to_ras(), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(image.dataobj).transpose(2, 1, 0), oblique_volume.array)


def test_label_maps_keep_integer_types(tmp_path, oblique_volume):
    labels = oblique_volume.with_array((oblique_volume.array > 0).astype(np.uint8) * 3)
    path = write_volume(labels, tmp_path / "labels.nrrd")
    back = read_label(path, reference=oblique_volume)
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, labels.array)
    integral_floats = write_volume(labels.with_array(labels.array.astype(np.float32)), tmp_path / "f.nii.gz")
    assert np.issubdtype(read_label(integral_floats).array.dtype, np.integer)


def test_label_on_another_grid_is_refused(tmp_path, oblique_volume):
    labels = Volume(
        np.zeros(oblique_volume.shape, np.uint8),
        oblique_volume.spacing * 2,
        oblique_volume.origin,
        oblique_volume.direction,
    )
    path = write_volume(labels, tmp_path / "labels.nrrd")
    with pytest.raises(CTDeepSegError, match=r"labels.nrrd: .*spacing .*Resample"):
        read_label(path, reference=oblique_volume)
    continuous = write_volume(oblique_volume, tmp_path / "noise.nrrd")
    with pytest.raises(CTDeepSegError, match="noise.nrrd: is not a label map"):
        read_label(continuous)


def _dicom_series(folder, volume, series_uid, name):
    image = sitk.Cast(sitk.GetImageFromArray(volume.array.astype(np.int16)), sitk.sitkInt16)
    image.SetSpacing(tuple(volume.spacing))
    image.SetOrigin(tuple(volume.origin))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        piece = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in [
            ("0020|000e", series_uid),
            ("0020|000d", "1.2.826.0.1.3680043.2.1125.1"),
            ("0008|0060", "CT"),
            ("0020|0032", "\\".join(f"{p:.6f}" for p in position)),
            ("0020|0013", str(k + 1)),
            ("0020|0037", "1\\0\\0\\0\\1\\0"),
            ("0028|0030", f"{volume.spacing[1]}\\{volume.spacing[0]}"),
            ("0008|0018", f"{series_uid}.{k + 1}"),
        ]:
            piece.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{name}{k:03d}.dcm"))
        writer.Execute(piece)


def test_dicom_folder_picks_the_series_with_most_slices(tmp_path):
    rng = np.random.default_rng(1)
    big = Volume(
        rng.integers(-1000, 1000, size=(6, 8, 10)).astype(np.float32),
        spacing=(0.8, 0.8, 2.5),
        origin=(-4.0, -3.2, 10.0),
    )
    small = Volume(rng.integers(-1000, 1000, size=(3, 8, 10)).astype(np.float32), spacing=(0.8, 0.8, 2.5))
    _dicom_series(tmp_path, big, "1.2.826.0.1.3680043.2.1125.10", "big")
    _dicom_series(tmp_path, small, "1.2.826.0.1.3680043.2.1125.20", "small")
    volume = read_volume(tmp_path)
    np.testing.assert_array_equal(volume.array, big.array)
    np.testing.assert_allclose(volume.spacing, big.spacing, atol=1e-6)
    np.testing.assert_allclose(volume.origin, big.origin, atol=1e-6)
    chosen = read_volume(tmp_path, series_uid="1.2.826.0.1.3680043.2.1125.20")
    np.testing.assert_array_equal(chosen.array, small.array)
    with pytest.raises(CTDeepSegError, match="no DICOM series with UID 9.9"):
        read_volume(tmp_path, series_uid="9.9")


def test_missing_file(tmp_path):
    with pytest.raises(CTDeepSegError, match=r"missing.nii.gz: no such file or folder"):
        read_volume(tmp_path / "missing.nii.gz")


def test_unreadable_file(tmp_path):
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(b"this is not an image" * 20)
    with pytest.raises(CTDeepSegError, match=r"garbage.nii.gz: could not be read as a medical image .*Supported"):
        read_volume(path)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CTDeepSegError, match="no DICOM series found in this folder"):
        read_volume(tmp_path)


def test_2d_image(tmp_path):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.Image(16, 16, sitk.sitkFloat32), str(path))
    with pytest.raises(CTDeepSegError, match=r"slice.nrrd: is a 2D image .*3D volume"):
        read_volume(path)


def test_single_slice_volume_counts_as_2d(tmp_path):
    path = tmp_path / "one.nii.gz"
    sitk.WriteImage(sitk.Image(16, 16, 1, sitk.sitkInt16), str(path))
    with pytest.raises(CTDeepSegError, match="is a 2D image"):
        read_volume(path)


def test_4d_image(tmp_path):
    path = tmp_path / "series.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.zeros((8, 8, 4, 3), np.float32), np.eye(4)), path)
    with pytest.raises(CTDeepSegError, match=r"series.nii.gz: is a 4D image \(3 volumes.*Extract one"):
        read_volume(path)


def test_4d_image_with_one_volume_is_read_as_3d(tmp_path):
    path = tmp_path / "single.nii.gz"
    data = np.arange(8 * 8 * 4, dtype=np.float32).reshape(8, 8, 4, 1)
    nibabel.save(nibabel.Nifti1Image(data, np.eye(4)), path)
    assert read_volume(path).shape == (4, 8, 8)


def test_colour_image(tmp_path):
    path = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.Image([8, 8, 4], sitk.sitkVectorUInt8, 3), str(path))
    with pytest.raises(CTDeepSegError, match=r"rgb.nrrd: has 3 values per voxel"):
        read_volume(path)


def test_nan_image(tmp_path):
    array = np.zeros((4, 8, 8), np.float32)
    array[0, 0, :3] = np.nan
    path = tmp_path / "nan.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    with pytest.raises(CTDeepSegError, match=r"nan.nrrd has 3 NaN or infinite voxel\(s\)"):
        read_volume(path)


def test_existing_file_is_never_overwritten_by_default(tmp_path, oblique_volume):
    path = write_volume(oblique_volume, tmp_path / "image.nrrd")
    before = path.read_bytes()
    with pytest.raises(CTDeepSegError, match="already exists"):
        write_volume(oblique_volume.with_array(oblique_volume.array * 2), path)
    assert path.read_bytes() == before
    write_volume(oblique_volume.with_array(oblique_volume.array * 2), path, overwrite=True)
    np.testing.assert_array_equal(read_volume(path).array, oblique_volume.array * 2)


def test_unsupported_suffix_and_detached_formats(tmp_path, oblique_volume):
    with pytest.raises(CTDeepSegError, match=r"unsupported file type; use one of .nii.gz"):
        write_volume(oblique_volume, tmp_path / "image.png")
    with pytest.raises(CTDeepSegError, match="cannot be written atomically"):
        write_volume(oblique_volume, tmp_path / "image.mhd")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder(tmp_path, oblique_volume, monkeypatch):
    # CI runs as root, which ignores folder permissions, so the refusal the OS would give is simulated.
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(CTDeepSegError, match="image.nrrd: permission denied; choose a folder you can write to"):
        write_volume(oblique_volume, tmp_path / "image.nrrd")


def test_failed_write_leaves_no_partial_file(tmp_path, oblique_volume, monkeypatch):
    def broken_write(image, name, useCompression=False):
        with open(name, "wb") as handle:
            handle.write(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", broken_write)
    with pytest.raises(CTDeepSegError, match=r"image.nrrd: could not be written \(disk full\)"):
        write_volume(oblique_volume, tmp_path / "image.nrrd")
    assert list(tmp_path.iterdir()) == []


def test_missing_output_folder(tmp_path, oblique_volume):
    with pytest.raises(CTDeepSegError, match="does not exist; create it first"):
        write_volume(oblique_volume, tmp_path / "nowhere" / "image.nrrd")
