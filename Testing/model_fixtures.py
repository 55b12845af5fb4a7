"""Test helpers: small real MONAI models and a bundle written in the Model Zoo's exact layout."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from monai.networks.nets import UNet

from CTDeepSegLib.model_store import save_model
from CTDeepSegLib.phantom import LABEL_COLOURS, LABELS

TINY_ARGS = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 5,
    "channels": [4, 8],
    "strides": [2],
    "num_res_units": 0,
    "norm": "instance",
}


def tiny_card(**changes) -> dict:
    card = {
        "name": "tiny",
        "version": "0.0.1",
        "task": "segmentation",
        "modality": "CT",
        "description": "test model",
        "labels": [{"value": v, "name": n, "colour": list(LABEL_COLOURS[v])} for v, n in LABELS.items()],
        "network": {"class": "UNet", "args": TINY_ARGS},
        "spacing": [4.0, 4.0, 4.0],
        "orientation": "LPS",
        "normalisation": {"kind": "ct_window", "window": [-1000, 500]},
        "roi_size": [32, 32, 32],
        "overlap": 0.25,
    }
    card.update(changes)
    return card


def tiny_model(folder: Path, seed: int = 0, **changes):
    """A saved model with random weights for ``tiny_card(**changes)`` (its network arguments included)."""
    torch.manual_seed(seed)
    card = tiny_card(**changes)
    return save_model(folder, card, UNet(**card["network"]["args"]).state_dict())


SPLEEN_ARGS = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [16, 32, 64, 128, 256],
    "strides": [2, 2, 2, 2],
    "num_res_units": 2,
    "norm": "batch",
}


def _publish_md5(folder: Path) -> None:
    """A ``large_files.yml`` publishing the MD5 of ``models/model.pt``, as Model Zoo bundles do."""
    digest = hashlib.md5((folder / "models" / "model.pt").read_bytes()).hexdigest()
    (folder / "large_files.yml").write_text(
        f'large_files:\n  - path: "models/model.pt"\n    url: "https://example.invalid/model.pt"\n'
        f'    hash_val: "{digest}"\n    hash_type: "md5"\n'
    )


def spleen_bundle(folder: Path, publish_hash: bool = True, network_args: dict | None = None) -> Path:
    """A bundle laid out exactly as the Model Zoo's spleen_ct_segmentation (configs, models/model.pt);
    ``network_args`` replaces the real UNet's arguments (a smaller network for quick tests)."""
    network_args = network_args or SPLEEN_ARGS
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    metadata = {
        "name": "Spleen CT segmentation",
        "version": "0.5.9",
        "description": "test copy of the bundle layout",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1}},
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": 2,
                    "channel_def": {"0": "background", "1": "spleen"},
                }
            },
        },
    }
    network_def = {"_target_": "UNet", **network_args}
    inference = {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "image",
                    "a_min": -57,
                    "a_max": 164,
                    "b_min": 0,
                    "b_max": 1,
                    "clip": True,
                },
                {"_target_": "EnsureTyped", "keys": "image"},
            ],
        },
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [96, 96, 96], "sw_batch_size": 4, "overlap": 0.5},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            ],
        },
    }
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    (folder / "configs" / "inference.json").write_text(json.dumps(inference, indent=2))
    torch.manual_seed(0)
    torch.save(UNet(**network_args).state_dict(), folder / "models" / "model.pt")
    if publish_hash:
        _publish_md5(folder)
    return folder


def retinanet_network(backbone_depth: int = 10):
    """The network of ``lung_nodule_bundle`` with random weights, classification bias 0 (scores near 0.5, so
    boxes pass the bundle's score threshold without training)."""
    from monai.apps.detection.networks.retinanet_network import RetinaNet, resnet_fpn_feature_extractor
    from monai.networks.nets import resnet

    torch.manual_seed(0)
    backbone = getattr(resnet, f"resnet{backbone_depth}")(
        spatial_dims=3, n_input_channels=1, conv1_t_stride=[2, 2, 1], conv1_t_size=[7, 7, 7]
    )
    extractor = resnet_fpn_feature_extractor(backbone, 3, False, [1, 2], None)
    network = RetinaNet(
        spatial_dims=3, num_classes=1, num_anchors=3, feature_extractor=extractor, size_divisible=[16, 16, 8]
    )
    torch.nn.init.zeros_(network.classification_head.cls_logits.bias)
    return network


def lung_nodule_bundle(folder: Path, patch: tuple[int, int, int] = (32, 32, 16), publish_hash: bool = True) -> Path:
    """A detection bundle laid out exactly as the Model Zoo's lung_nodule_ct_detection (its inference.json's
    keys, expressions and transforms), with a small ResNet-10 backbone, a small patch and coarse spacing so a
    CPU test runs in seconds."""
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    metadata = {
        "version": "0.1.1",
        "task": "CT lung nodule detection",
        "description": "test copy of the lung_nodule_ct_detection bundle layout",
        "intended_use": "This is an example, not to be used for diagnostic purposes",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "CT", "num_channels": 1}},
            "outputs": {"pred": {"type": "object", "format": "dict", "num_channels": 1}},
        },
    }
    inference = {
        "whether_raw_luna16": False,
        "whether_resampled_luna16": "$(not @whether_raw_luna16)",
        "imports": ["$import glob", "$import os"],
        "bundle_root": "./",
        "ckpt_dir": "$@bundle_root + '/models'",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "amp": True,
        "infer_patch_size": list(patch),
        "anchor_generator": {
            "_target_": "monai.apps.detection.utils.anchor_utils.AnchorGeneratorWithAnchorShape",
            "feature_map_scales": [1, 2, 4],
            "base_anchor_shapes": [[6, 8, 4], [8, 6, 5], [10, 10, 6]],
        },
        "backbone": "$monai.networks.nets.resnet.resnet10(spatial_dims=3,n_input_channels=1,"
        "conv1_t_stride=[2,2,1],conv1_t_size=[7,7,7])",
        "feature_extractor": "$monai.apps.detection.networks.retinanet_network.resnet_fpn_feature_extractor("
        "@backbone,3,False,[1,2],None)",
        "network_def": {
            "_target_": "RetinaNet",
            "spatial_dims": 3,
            "num_classes": 1,
            "num_anchors": 3,
            "feature_extractor": "@feature_extractor",
            "size_divisible": [16, 16, 8],
        },
        "network": "$@network_def.to(@device)",
        "detector": {
            "_target_": "RetinaNetDetector",
            "network": "@network",
            "anchor_generator": "@anchor_generator",
            "debug": False,
        },
        "detector_ops": [
            "$@detector.set_target_keys(box_key='box', label_key='label')",
            "$@detector.set_box_selector_parameters(score_thresh=0.02,topk_candidates_per_level=1000,"
            "nms_thresh=0.22,detections_per_img=300)",
            "$@detector.set_sliding_window_inferer(roi_size=@infer_patch_size,overlap=0.25,sw_batch_size=1,"
            "mode='constant',device='cpu')",
        ],
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {
                    "_target_": "LoadImaged",
                    "keys": "image",
                    "meta_key_postfix": "meta_dict",
                    "_disabled_": "@whether_raw_luna16",
                },
                {
                    "_target_": "LoadImaged",
                    "keys": "image",
                    "meta_key_postfix": "meta_dict",
                    "reader": "itkreader",
                    "affine_lps_to_ras": True,
                    "_disabled_": "@whether_resampled_luna16",
                },
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {
                    "_target_": "Spacingd",
                    "keys": "image",
                    "pixdim": [2.0, 2.0, 2.5],
                    "_disabled_": "@whether_resampled_luna16",
                },
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "image",
                    "a_min": -1024.0,
                    "a_max": 300.0,
                    "b_min": 0.0,
                    "b_max": 1.0,
                    "clip": True,
                },
                {"_target_": "EnsureTyped", "keys": "image"},
            ],
        },
        "inferer": {"_target_": "scripts.detection_inferer.RetinaNetInferer", "detector": "@detector"},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {
                    "_target_": "ClipBoxToImaged",
                    "box_keys": "box",
                    "label_keys": "label",
                    "box_ref_image_keys": "image",
                    "remove_empty": True,
                },
                {
                    "_target_": "AffineBoxToWorldCoordinated",
                    "box_keys": "box",
                    "box_ref_image_keys": "image",
                    "image_meta_key_postfix": "meta_dict",
                    "affine_lps_to_ras": True,
                },
                {"_target_": "ConvertBoxModed", "box_keys": "box", "src_mode": "xyzxyz", "dst_mode": "cccwhd"},
                {"_target_": "DeleteItemsd", "keys": ["image"]},
            ],
        },
    }
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=4))
    (folder / "configs" / "inference.json").write_text(json.dumps(inference, indent=4))
    torch.save(retinanet_network().state_dict(), folder / "models" / "model.pt")
    if publish_hash:
        _publish_md5(folder)
    return folder


def tiny_interactive_model(folder: Path, seed: int = 0):
    """A saved interactive model (six input channels, one output) with random weights: for plumbing tests."""
    from CTDeepSegLib.interactive.encoding import CHANNELS
    from CTDeepSegLib.interactive.engine import DEFAULTS

    torch.manual_seed(seed)
    args = {**TINY_ARGS, "in_channels": CHANNELS, "out_channels": 1}
    card = tiny_card(
        name="tiny-interactive",
        task="interactive",
        modality="CT and MRI",
        labels=[{"value": 1, "name": "object", "colour": [1.0, 0.8, 0.2]}],
        network={"class": "UNet", "args": args},
        spacing=[1.0, 1.0, 1.0],
        roi_size=[32, 32, 32],
        interactive={**DEFAULTS, "crop": 32},
    )
    return save_model(folder, card, UNet(**args).state_dict())
