"""nnU-Net v2 results folders in CTDeepSeg's pipeline agree with nnU-Net's own predictor; unsafe checkpoints and
changed folds are refused."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from nnunet_fixtures import results_folder

from CTDeepSegLib.errors import CTDeepSegError
from CTDeepSegLib.formats.importing import import_model
from CTDeepSegLib.inference import segment_volume
from CTDeepSegLib.model_store import open_model
from CTDeepSegLib.phantom import make_phantom
from CTDeepSegLib.volume_io import write_volume


def _nnunet(folder: Path, image_kji: np.ndarray, spacing_ijk) -> np.ndarray:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=True,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        verbose=False,
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=None, checkpoint_name="checkpoint_final.pth")
    properties = {"spacing": [float(s) for s in spacing_ijk[::-1]]}
    return predictor.predict_single_npy_array(image_kji[None].astype(np.float32), properties, None, None, False)


@pytest.mark.parametrize(
    ("spacing", "scheme", "regions"),
    [
        ((1.4, 1.4, 2.6), "CTNormalization", False),
        ((1.0, 1.0, 6.0), "ZScoreNormalization", False),
        ((1.4, 1.4, 2.6), "CTNormalization", True),
    ],
    ids=["isotropic-enough", "anisotropic-separate-z", "region-labels"],
)
def test_results_folder_agrees_with_nnunet_predictor(tmp_path, monkeypatch, spacing, scheme, regions):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    folder = results_folder(tmp_path / "results", scheme=scheme, regions=regions)
    card = import_model(folder, "phantom-nnunet", destination=tmp_path / "models")
    assert card["network"]["class"] == "nnUNet" and set(card["weights"]["folds"]) == {"0", "1"}
    names = ["body", "organ", "lesion"] if regions else ["lung", "liver", "lesion"]
    assert [label.name for label in card.labels] == names
    if not regions:
        assert card.labels[1].snomed["type"][1] == "10200004"
    phantom = make_phantom(shape=(36, 60, 60), spacing=spacing, seed=4)
    loaded, model = open_model(card.folder)
    ours = segment_volume(phantom.image, loaded, model, device="cpu").labels.array
    reference = _nnunet(folder, phantom.image.array, phantom.image.spacing)
    counts = np.bincount(reference.ravel(), minlength=4)
    print(f"{scheme}: agreement {np.mean(ours == reference):.5f}; nnU-Net's label counts {counts.tolist()}")
    assert (counts > 0.02 * reference.size).sum() >= 2, "one label everywhere would make agreement meaningless"
    assert np.mean(ours == reference) >= 0.99


def test_a_checkpoint_that_needs_pickled_objects_is_refused(tmp_path):
    folder = results_folder(tmp_path, folds=(0,))
    path = folder / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["init_args"]["output_folder"] = pathlib.PurePosixPath("/somewhere")  # any class, e.g. nnU-Net's
    torch.save(checkpoint, path)
    with pytest.raises(CTDeepSegError, match="not a plain weights file .*never unpickles code"):
        import_model(folder, "unsafe", destination=tmp_path / "models")
    assert not (tmp_path / "models" / "unsafe").exists()


def test_a_fold_changed_after_import_is_refused(tmp_path):
    folder = results_folder(tmp_path, folds=(0,))
    card = import_model(folder, "changed", destination=tmp_path / "models")
    path = folder / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["current_epoch"] = 999
    torch.save(checkpoint, path)
    with pytest.raises(CTDeepSegError, match="fold 0's checkpoint changed since it was imported"):
        open_model(card.folder)


def test_unsupported_layer_types_are_refused_not_imported(tmp_path):
    folder = results_folder(tmp_path, folds=(0,))
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["nonlin"] = "os.system"
    (folder / "plans.json").write_text(json.dumps(plans))
    card = import_model(folder, "layers", destination=tmp_path / "models")
    with pytest.raises(CTDeepSegError, match="layer type 'os.system' is not on CTDeepSeg's allow-list"):
        open_model(card.folder)


def test_command_line_registers_a_results_folder(tmp_path):
    folder = results_folder(tmp_path / "results", folds=(0,))
    env = {"XDG_DATA_HOME": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}
    cwd = Path(__file__).resolve().parents[1] / "CTDeepSeg"
    done = subprocess.run(
        [sys.executable, "-m", "CTDeepSegLib.cli", "models", "--import", str(folder)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "Imported Dataset001_Phantom" in done.stdout
    phantom = make_phantom(shape=(30, 48, 48), seed=2)
    write_volume(phantom.image, tmp_path / "ct.nii.gz")
    done = subprocess.run(
        [sys.executable, "-m", "CTDeepSegLib.cli", "segment", str(tmp_path / "ct.nii.gz"), "-o"]
        + [str(tmp_path / "seg.nii.gz"), "--model", "Dataset001_Phantom", "--device", "cpu"],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
    )
    assert done.returncode == 0, done.stderr


def test_the_logic_registers_a_results_folder_and_segments_a_volume_node(scene, ctdeepseg_module, tmp_path, home):
    """The console's route (the panel runs the same action in its child process), on real MRML nodes: the
    segments carry the dataset's names and the labels sit on the volume's grid."""
    folder = results_folder(tmp_path / "results", folds=(0,))
    logic = ctdeepseg_module.CTDeepSegLogic()
    model = logic.importModel(str(folder), "console-nnunet")
    assert model == str(home / "console-nnunet")
    volumeNode, _, _ = logic.createPhantom(seed=2, shape=(24, 40, 40), spacing=(3.0, 3.0, 4.0))
    segmentationNode = logic.segment(volumeNode, model=model, device="cpu")
    labels = logic.segmentationToLabels(segmentationNode)
    assert logic.volumeFromNode(volumeNode).geometry_mismatch(labels) is None
    segmentation = segmentationNode.GetSegmentation()
    names = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
    assert names and names <= {"lung", "liver", "lesion"}
    expected = _nnunet(folder, logic.volumeFromNode(volumeNode).array, logic.volumeFromNode(volumeNode).spacing)
    assert np.mean(labels.array == expected) >= 0.99


@pytest.mark.parametrize("regions", [False, True], ids=["softmax", "region-sigmoids"])
def test_probabilities_agree_with_nnunet_predictor(tmp_path, monkeypatch, regions):
    """--probabilities: every class's probability on the input grid, as nnU-Net's predictor returns them."""
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    folder = results_folder(tmp_path / "results", folds=(0,), regions=regions)
    card = import_model(folder, "probabilities", destination=tmp_path / "models")
    loaded, model = open_model(card.folder)
    phantom = make_phantom(shape=(36, 60, 60), spacing=(1.4, 1.4, 2.6), seed=4)
    result = segment_volume(phantom.image, loaded, model, device="cpu", keep_probabilities=True)
    ours = result.probabilities

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(device=torch.device("cpu"), verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=None, checkpoint_name="checkpoint_final.pth")
    properties = {"spacing": [float(s) for s in phantom.image.spacing[::-1]]}
    image = phantom.image.array[None].astype(np.float32)
    labels, reference = predictor.predict_single_npy_array(image, properties, None, None, True)
    assert ours.shape == reference.shape == (3 if regions else 4, *phantom.image.shape)
    difference = np.abs(ours - reference)
    tail = np.quantile(difference, 0.999)
    print(f"regions={regions}: probabilities differ by {difference.mean():.1e} on average, {tail:.4f} at the 99.9th")
    # nnU-Net stitches the logits in float16 (steps of 0.03 at 60): near a tie between classes that moves the
    # softmax by up to about 0.1 in a few voxels
    assert difference.mean() < 1e-3 and tail < 0.01 and difference.max() < 0.2
    assert np.mean(result.labels.array == labels) >= 0.99
    if not regions:
        assert np.allclose(ours.sum(0), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("shape", "new_shape", "spacing", "new_spacing", "kwargs"),
    [
        ((30, 41, 37), (45, 20, 60), (2.0, 1.0, 1.5), (1.33, 2.05, 0.925), {"order": 3}),
        ((12, 40, 40), (40, 31, 55), (5.0, 1.0, 1.0), (1.5, 1.29, 0.727), {"order": 3, "order_z": 0}),
        ((40, 30, 30), (12, 45, 45), (1.0, 1.0, 1.0), (3.33, 0.67, 0.67), {"order": 3, "order_z": 1}),
        ((20, 33, 41), (40, 66, 20), (2.0, 2.0, 2.0), (1.0, 1.0, 4.1), {"order": 1, "order_z": 0}),
    ],
    ids=["spline-3d", "anisotropic-input-nearest-z", "anisotropic-target-linear-z", "linear"],
)
def test_resampling_matches_nnunet(shape, new_shape, spacing, new_spacing, kwargs):
    """The matrix-product resampling equals nnU-Net's own ``resample_data_or_seg_to_shape`` (skimage, float64)."""
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

    from CTDeepSegLib.formats.nnunet_resampling import Resampler, resample

    rng = np.random.default_rng(3)
    data = rng.normal(size=shape).cumsum(0).cumsum(2).astype(np.float32)
    reference = resample_data_or_seg_to_shape(
        data[None], new_shape, spacing, new_spacing, False, force_separate_z=None, **kwargs
    )[0]
    kwargs = {"force_separate_z": None, **kwargs}
    ours = resample(data, new_shape, spacing, new_spacing, kwargs).numpy()
    assert ours.shape == tuple(new_shape)
    assert np.abs(ours - reference).max() <= 1e-5 * np.abs(reference).max()
    resampler = Resampler(data, new_shape, spacing, new_spacing, kwargs)  # slab by slab, as labels are made
    slabs = [resampler.rows(slice(start, start + 7)).numpy() for start in range(0, new_shape[0], 7)]
    assert np.abs(np.concatenate(slabs) - reference).max() <= 1e-5 * np.abs(reference).max()


def _unet(kind: str):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

    layers = {
        "norm_op": torch.nn.InstanceNorm3d,
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "nonlin": torch.nn.LeakyReLU,
        "nonlin_kwargs": {"inplace": True},
        "conv_bias": True,
    }
    torch.manual_seed(1)
    if kind == "plain-two-convs":
        network = PlainConvUNet(1, 3, (8, 16, 32), torch.nn.Conv3d, 3, [1, 2, 2], [2, 2, 2], 5, [2, 2], **layers)
        return network, (40, 48, 48), 9  # 6 encoder convolutions, 2 in the last decoder stage, the output layer
    if kind == "anisotropic":
        kernels, strides = [[1, 3, 3], [3, 3, 3], [3, 3, 3]], [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
        network = PlainConvUNet(1, 3, (8, 16, 32), torch.nn.Conv3d, kernels, strides, 1, 3, 1, **layers)
        return network, (36, 32, 32), 5
    if kind == "residual-encoder":  # its encoder runs its own forward; the last decoder stage in slabs
        network = ResidualEncoderUNet(1, 3, (8, 16, 32), torch.nn.Conv3d, 3, [1, 2, 2], [1, 2, 2], 3, 1, **layers)
        return network, (24, 32, 32), 2
    layers.update(norm_op=torch.nn.BatchNorm3d, nonlin=torch.nn.ReLU, conv_bias=False)
    network = PlainConvUNet(1, 2, (8, 16), torch.nn.Conv3d, 3, [1, 2], 1, 3, 1, **layers)
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    return network, (20, 16, 16), 4


@pytest.mark.parametrize("kind", ["plain-two-convs", "anisotropic", "residual-encoder", "batch-norm"])
def test_slab_forward_equals_the_networks_own_forward(kind, monkeypatch):
    """The memory-lean forward (convolutions in slabs, normalisation in place) computes the network's output."""
    from CTDeepSegLib.formats import nnunet_forward

    network, shape, expected_slabs = _unet(kind)
    calls = []
    original = nnunet_forward._conv_slabs
    monkeypatch.setattr(nnunet_forward, "_conv_slabs", lambda *args: calls.append(1) or original(*args))
    window = torch.randn((1, 1, *shape))
    with torch.inference_mode():
        reference = network.eval()(window)
        lean = nnunet_forward.lean_forward(network, window)
    assert len(calls) == expected_slabs, "the slab path must be the one tested"
    assert torch.abs(lean - reference).max() <= 1e-5 * torch.abs(reference).max()


@pytest.mark.parametrize("reader", ["NibabelIOWithReorient", "SimpleITKIOWithReorient", "SimpleITKIO"])
def test_a_reorienting_reader_is_followed_as_nnunet_follows_it(tmp_path, monkeypatch, reader):
    """Plans whose reader turns the image to RAS first (TotalSegmentator's newer tasks): a coronal scan, its axes
    permuted and flipped against RAS, gives nnU-Net's labels back on the scan's own grid. Without mirroring, so
    that a flip the reader makes is not averaged away."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from CTDeepSegLib.volume_io import read_label

    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    folder = results_folder(tmp_path / "results", reader=reader, mirror_axes=None, folds=(0,))
    card = import_model(folder, "reoriented", destination=tmp_path / "models")
    coronal = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # i right, j down, k back
    phantom = make_phantom((30, 56, 48), (1.6, 1.3, 2.9), seed=5, lung_lesions=0, liver_lesions=0, direction=coronal)
    source = write_volume(phantom.image, tmp_path / "coronal.nii.gz")
    loaded, model = open_model(card.folder)
    ours = segment_volume(phantom.image, loaded, model, device="cpu").labels.array

    predictor = nnUNetPredictor(device=torch.device("cpu"), verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=None, checkpoint_name="checkpoint_final.pth")
    image, properties = predictor.plans_manager.image_reader_writer_class().read_images([str(source)])
    predictor.predict_single_npy_array(image, properties, None, str(tmp_path / "nnunet"), False)
    reference = read_label(tmp_path / "nnunet.nii.gz").array
    counts = np.bincount(reference.ravel(), minlength=4)
    print(f"{reader}: agreement {np.mean(ours == reference):.5f}; nnU-Net's label counts {counts.tolist()}")
    assert (counts > 0.02 * reference.size).sum() >= 2
    assert np.mean(ours == reference) >= 0.99


@pytest.mark.parametrize(
    ("shape", "new_shape", "spacing", "new_spacing", "along"),
    [
        ((30, 41, 37), (45, 20, 60), (2.0, 1.0, 1.5), (1.33, 2.05, 0.925), "nearest-exact"),
        ((12, 40, 40), (40, 31, 55), (5.0, 1.0, 1.0), (1.5, 1.29, 0.727), "nearest-exact"),
        ((40, 30, 30), (12, 45, 45), (1.0, 1.0, 1.0), (3.33, 0.67, 0.67), "linear"),
    ],
    ids=["linear-3d", "anisotropic-nearest-exact", "anisotropic-linear"],
)
def test_torch_resampling_of_newer_plans_matches_nnunet(shape, new_shape, spacing, new_spacing, along):
    """Plans naming ``resample_torch_fornnunet`` (torch's linear interpolate) resample as nnU-Net's function does."""
    from nnunetv2.preprocessing.resampling.resample_torch import resample_torch_fornnunet

    from CTDeepSegLib.formats.nnunet_resampling import resample, resampling_kwargs

    rng = np.random.default_rng(4)
    data = rng.normal(size=shape).cumsum(0).cumsum(1).astype(np.float32)
    settings = {"is_seg": False, "force_separate_z": None, "memefficient_seg_resampling": False}
    reference = resample_torch_fornnunet(data[None], new_shape, spacing, new_spacing, aniso_axis_mode=along, **settings)
    plans = {"resampling_fn_data": "resample_torch_fornnunet", "resampling_fn_data_kwargs": settings}
    plans["resampling_fn_data_kwargs"]["aniso_axis_mode"] = along
    ours = resample(data, new_shape, spacing, new_spacing, resampling_kwargs(plans, "data", "plans.json")).numpy()
    assert np.abs(ours - reference[0]).max() <= 1e-5 * np.abs(reference).max()
