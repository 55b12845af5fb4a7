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


def spleen_bundle(folder: Path, publish_hash: bool = True) -> Path:
    """A bundle laid out exactly as the Model Zoo's spleen_ct_segmentation (configs, models/model.pt)."""
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
    network_def = {"_target_": "UNet", **SPLEEN_ARGS}
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
    torch.save(UNet(**SPLEEN_ARGS).state_dict(), folder / "models" / "model.pt")
    if publish_hash:
        digest = hashlib.md5((folder / "models" / "model.pt").read_bytes()).hexdigest()
        (folder / "large_files.yml").write_text(
            f'large_files:\n  - path: "models/model.pt"\n    url: "https://example.invalid/model.pt"\n'
            f'    hash_val: "{digest}"\n    hash_type: "md5"\n'
        )
    return folder
