"""An nnU-Net v2 results folder with random weights, as nnU-Net lays it out (for the tests and the benchmark)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

LABELS = {"background": 0, "lung": 1, "liver": 2, "lesion": 3}
# nnU-Net's region labels (nested structures, one sigmoid each), written in regions_class_order
REGIONS = {"background": 0, "body": [1, 2, 3], "organ": [2, 3], "lesion": 3}
ARCHITECTURE = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 3,
        "features_per_stage": [8, 16, 32],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * 3,
        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
        "n_conv_per_stage": [1, 1, 1],
        "n_conv_per_stage_decoder": [1, 1],
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    },
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}
_LAYERS = {"conv_op": torch.nn.Conv3d, "norm_op": torch.nn.InstanceNorm3d, "nonlin": torch.nn.LeakyReLU}


def _plans(spacing_zyx: list[float], patch_zyx: list[int], scheme: str) -> dict:
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": "Dataset001_Phantom",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": spacing_zyx,
        "original_median_shape_after_transp": [40, 64, 64],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": patch_zyx,
                "median_image_size_in_voxels": [40, 64, 64],
                "spacing": spacing_zyx,
                "normalization_schemes": [scheme],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": resampling,
                "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
                "architecture": ARCHITECTURE,
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": 400.0,
                "mean": 60.0,
                "median": 50.0,
                "min": -1000.0,
                "percentile_00_5": -900.0,
                "percentile_99_5": 300.0,
                "std": 150.0,
            }
        },
    }


def results_folder(
    root: Path,
    spacing_zyx=(3.0, 2.0, 2.0),
    patch_zyx=(32, 48, 48),
    scheme="CTNormalization",
    folds=(0, 1),
    features=(8, 16, 32),
    regions: bool = False,
    convs: int = 1,
    classes: int | None = None,
    reader: str = "SimpleITKIO",
    mirror_axes: tuple | None = (0, 1, 2),
) -> Path:
    """An nnU-Net v2 results folder laid out as nnU-Net writes it: random weights, a PlainConvUNet with
    ``features`` per stage (small by default) and ``convs`` convolutions per stage, one checkpoint per fold; with
    ``regions``, region labels (one sigmoid head per region); with ``classes``, that many labels (background
    included) instead of the phantom's four; ``reader`` is the plans' image reader, ``mirror_axes`` the
    checkpoints' test-time mirroring (None: none, as nnUNetTrainerNoMirroring saves it)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    architecture = json.loads(json.dumps(ARCHITECTURE))
    stages = len(features)
    architecture["arch_kwargs"].update(
        n_stages=stages,
        features_per_stage=list(features),
        kernel_sizes=[[3, 3, 3]] * stages,
        strides=[[1, 1, 1]] + [[2, 2, 2]] * (stages - 1),
        n_conv_per_stage=[convs] * stages,
        n_conv_per_stage_decoder=[convs] * (stages - 1),
    )

    folder = root / "Dataset001_Phantom" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    folder.mkdir(parents=True)
    dataset = {"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": 2, "file_ending": ".nii.gz"}
    if regions:
        dataset.update(labels=REGIONS, regions_class_order=[1, 2, 3])
    if classes:
        dataset["labels"] = {"background": 0, **{f"structure {value}": value for value in range(1, classes)}}
    heads = 3 if regions else len(dataset["labels"])
    plans = _plans(list(spacing_zyx), list(patch_zyx), scheme)
    plans["configurations"]["3d_fullres"]["architecture"] = architecture
    plans["image_reader_writer"] = reader
    (folder / "dataset.json").write_text(json.dumps(dataset))
    (folder / "plans.json").write_text(json.dumps(plans))
    for fold in folds:
        torch.manual_seed(fold)
        kwargs = {**architecture["arch_kwargs"], **_LAYERS}
        network = PlainConvUNet(input_channels=1, num_classes=heads, deep_supervision=False, **kwargs)
        with torch.no_grad():  # wider logit margins than random initialisation gives: labels that mean something
            network.decoder.seg_layers[-1].weight.mul_(20)
        checkpoint = {
            "network_weights": network.state_dict(),
            "init_args": {"configuration": "3d_fullres", "fold": fold},
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": mirror_axes,
            "current_epoch": 1000,
        }
        (folder / f"fold_{fold}").mkdir()
        torch.save(checkpoint, folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder
