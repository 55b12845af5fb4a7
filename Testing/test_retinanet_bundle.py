"""MONAI RetinaNet detection bundles as a second detector backend: same boxes as MONAI's own bundle pipeline,
read without running the bundle's code."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from CTDeepSegLib.cli import main
from CTDeepSegLib.detector import detect_volume
from CTDeepSegLib.errors import CTDeepSegError
from CTDeepSegLib.model_store import open_model
from CTDeepSegLib.phantom import make_phantom
from CTDeepSegLib.retinanet_bundle import to_patient_boxes
from CTDeepSegLib.volume_io import write_volume
from model_fixtures import lung_nodule_bundle


def _flipped_phantom():
    """A chest phantom whose i axis runs right-to-left (so Orientationd flips it) with an offset origin."""
    return make_phantom(
        (24, 56, 56),
        (1.6, 1.6, 2.0),
        seed=5,
        lung_lesions=2,
        liver_lesions=1,
        origin=(40.0, -60.0, 120.0),
        direction=np.diag([-1.0, 1.0, 1.0]),
    ).image


def _monai_reference(bundle, volume) -> tuple[np.ndarray, np.ndarray]:
    """What the bundle itself computes, through MONAI's ConfigParser (this runs the test's own config):
    preprocessing after the loader, the detector with its detector_ops, then the postprocessing to LPS
    ``cccwhd`` boxes. The loader's output is built here from the volume's geometry (ITK's LPS affine turned
    to RAS, as ITKReader does)."""
    import monai.apps.detection.networks.retinanet_detector  # noqa: F401  (so the parser can locate the targets)
    import monai.apps.detection.networks.retinanet_network  # noqa: F401
    import monai.apps.detection.utils.anchor_utils  # noqa: F401
    from monai.bundle import ConfigParser
    from monai.data import MetaTensor

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["whether_raw_luna16"] = True  # enables Spacingd, as for any scan not resampled beforehand
    parser["preprocessing"]["transforms"] = parser["preprocessing"]["transforms"][2:]
    lps = np.eye(4)
    lps[:3, :3] = volume.direction * volume.spacing
    lps[:3, 3] = volume.origin
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    image = MetaTensor(torch.from_numpy(volume.array.transpose(2, 1, 0).astype(np.float32)), affine=torch.tensor(ras))
    image.meta["original_channel_dim"] = float("nan")
    data = parser.get_parsed_content("preprocessing")({"image": image})
    detector = parser.get_parsed_content("detector")
    detector.network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    parser.get_parsed_content("detector_ops")
    detector.eval()
    with torch.no_grad():
        output = detector([data["image"]], use_inferer=True)[0]
    result = parser.get_parsed_content("postprocessing")(
        {"image": data["image"], "box": output["box"], "label": output["label"]}
    )
    return np.asarray(result["box"], dtype=np.float64), output["label_scores"].numpy()


def test_retinanet_bundle_gives_the_boxes_monai_gives(tmp_path, capsys):
    bundle = lung_nodule_bundle(tmp_path / "lung_nodule_ct_detection")
    volume = _flipped_phantom()
    write_volume(volume, tmp_path / "chest.nii.gz")

    reference_boxes, reference_scores = _monai_reference(bundle, volume)
    assert 20 <= len(reference_scores) <= 300  # the test network's scores sit near 0.5: many boxes

    assert (
        main(
            [
                "detect",
                str(tmp_path / "chest.nii.gz"),
                "-o",
                str(tmp_path / "found.json"),
                "--model",
                str(bundle),
                "--threshold",
                "0.5",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    record = json.loads((tmp_path / "found.json").read_text())
    candidates = record["candidates"]
    order = np.argsort(-reference_scores, kind="stable")
    assert len(candidates) == len(order)
    ours = np.array([[*c["centre_lps_mm"], *c["size_mm"]] for c in candidates])
    np.testing.assert_allclose(ours, reference_boxes[order], atol=2e-3)
    np.testing.assert_allclose([c["score"] for c in candidates], reference_scores[order], atol=1e-5)
    assert len(record["findings"]) == int(np.sum(reference_scores >= 0.5))
    assert all(c["label"] == "lesion" for c in candidates)


def test_boxes_map_from_monai_indices_to_patient_space_analytically():
    """Voxel centres on integers: x from 1 to 5 at 2 mm spans 8 mm around index 3."""
    ras = np.array([[2.0, 0, 0, 10], [0, 3.0, 0, 20], [0, 0, 4.0, 30], [0, 0, 0, 1]])
    (box,) = to_patient_boxes(
        np.array([[1, 2, 3, 5, 6, 7.0]]), np.array([0.9]), np.array([0]), ras, (10, 10, 10), {0: "nodule"}
    )
    np.testing.assert_allclose(box.centre, [-16.0, -32.0, 50.0])
    np.testing.assert_allclose(box.size, [8.0, 12.0, 16.0])
    assert (box.label, box.score) == ("nodule", pytest.approx(0.9))
    (clipped,) = to_patient_boxes(
        np.array([[-3, 2, 3, 5, 6, 12.0]]), np.array([0.9]), np.array([0]), ras, (10, 10, 10), {0: "nodule"}
    )
    np.testing.assert_allclose(clipped.size, [10.0, 12.0, 28.0])  # clipped to [0, 10] as ClipBoxToImaged does
    swapped = np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]])  # an input scanned with i along y: sizes follow it
    (aligned,) = to_patient_boxes(
        np.array([[1, 2, 3, 5, 6, 7.0]]), np.array([0.9]), np.array([0]), ras, (10, 10, 10), {0: "n"}, swapped
    )
    np.testing.assert_allclose(aligned.centre, box.centre)
    np.testing.assert_allclose(aligned.size, [12.0, 8.0, 16.0])
    np.testing.assert_allclose(aligned.corners().min(axis=0), box.corners().min(axis=0))


def test_retinanet_bundle_is_listed_as_a_detector_and_runs_through_the_engine(tmp_path, monkeypatch, capsys):
    bundle = lung_nodule_bundle(tmp_path / "models" / "lung_nodule_ct_detection")
    monkeypatch.setenv("CTDEEPSEG_MODELS", str(tmp_path / "models"))
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "lung_nodule_ct_detection" in listing and "detection" in listing
    card, network = open_model(bundle)
    assert card["spacing"] == [2.0, 2.0, 2.5] and card["roi_size"] == [32, 32, 16]
    assert card["detection"]["box_selector"]["nms_thresh"] == pytest.approx(0.22)
    assert "md5 verified" in card["provenance"]["checksum"]
    result = detect_volume(_flipped_phantom(), card, network, "cpu", threshold=0.0)
    assert len(result.findings) == len(result.candidates) > 0
    assert all(np.allclose(box.axes, np.diag([-1.0, 1.0, 1.0])) for box in result.findings)  # the input's axes


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("backbone", "$__import__('os').system('touch pwned')", "allow-listed MONAI component"),
        ("backbone", "$monai.networks.nets.resnet.resnet10(pretrained=True, spatial_dims=3)", "pretrained"),
        ("feature_extractor", "$os.system('touch pwned')", "allow-listed MONAI component"),
        ("anchor_generator", {"_target_": "builtins.eval", "source": "1"}, "not a component"),
        ("infer_patch_size", "$open('pwned', 'w')", "allow-listed MONAI component"),
    ],
)
def test_code_in_a_detection_bundle_is_refused_not_run(tmp_path, monkeypatch, field, value, message):
    monkeypatch.chdir(tmp_path)
    bundle = lung_nodule_bundle(tmp_path / "b")
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config[field] = value
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(CTDeepSegError, match=message):
        open_model(bundle)
    assert not (tmp_path / "pwned").exists()


def test_tampered_detection_bundle_weights_are_refused(tmp_path):
    bundle = lung_nodule_bundle(tmp_path / "b")
    with open(bundle / "models" / "model.pt", "ab") as stream:
        stream.write(b"\0")
    with pytest.raises(CTDeepSegError, match="checksum differs"):
        open_model(bundle)


def test_logic_detect_with_a_retinanet_bundle_gives_rois_at_the_boxes(tmp_path, scene, ctdeepseg_module):
    bundle = lung_nodule_bundle(tmp_path / "lung_nodule_ct_detection")
    logic = ctdeepseg_module.CTDeepSegLogic()
    volumeNode, _, _ = logic.createPhantom(seed=5, shape=(24, 56, 56), spacing=(1.6, 1.6, 2.0))
    card, network = open_model(bundle)
    expected = detect_volume(logic.volumeFromNode(volumeNode), card, network, "cpu", threshold=0.7).findings
    rois, table, _ = logic.detect(volumeNode, model=str(bundle), device="cpu", threshold=0.7)
    assert len(rois) == table.GetNumberOfRows() == len(expected) > 0
    for roi, box in zip(rois, expected):
        found = logic.roiNodeToBox(roi)
        np.testing.assert_allclose(found.centre, box.centre, atol=1e-3)
        np.testing.assert_allclose(found.size, box.size, atol=1e-3)
        assert float(roi.GetAttribute("CTDeepSeg.Score")) == pytest.approx(box.score, abs=1e-4)
