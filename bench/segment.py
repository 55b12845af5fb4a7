"""Segmentation end to end: CTDeepSeg's pipeline versus the MONAI reference pipeline a Model Zoo bundle runs.

Both read the same CT file and write a label file, with the same network and weights (the shipped model if
present) and the same sliding window (ROI, overlap, Gaussian blending, batch). The reference is MONAI's bundle
recipe: LoadImaged, EnsureChannelFirstd, Orientationd, Spacingd, ScaleIntensityRanged, sliding_window_inference,
softmax, Invertd, AsDiscreted, SaveImaged. Each runs in its own process so that its peak memory (max RSS) is
its own; the ratios are printed at the end, after checking the two label maps agree.

    .venv/bin/python bench/segment.py [--device cpu] [--shape 512 512 240] [--model FOLDER]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "CTDeepSeg"))


def run_ours(model: str, source: str, target: str, device: str) -> None:
    from CTDeepSegLib.inference import segment_volume
    from CTDeepSegLib.model_store import open_model
    from CTDeepSegLib.volume_io import read_volume, write_volume

    card, network = open_model(model)
    volume = read_volume(source)
    result = segment_volume(volume, card, network, device, postprocess_labels=False)
    write_volume(result.labels, target)


def run_monai(model: str, source: str, target: str, device: str) -> None:
    import torch
    from monai.inferers import sliding_window_inference
    from monai.transforms import (
        Activationsd,
        AsDiscreted,
        Compose,
        EnsureChannelFirstd,
        Invertd,
        LoadImaged,
        Orientationd,
        SaveImaged,
        ScaleIntensityRanged,
        Spacingd,
    )

    from CTDeepSegLib.model_store import open_model

    card, network = open_model(model)
    low, high = card["normalisation"]["window"]
    preprocessing = Compose(
        [
            LoadImaged(keys="image"),
            EnsureChannelFirstd(keys="image"),
            Orientationd(keys="image", axcodes=card["orientation"]),
            Spacingd(keys="image", pixdim=card["spacing"], mode="bilinear"),
            ScaleIntensityRanged(keys="image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True),
        ]
    )
    postprocessing = Compose(
        [
            Activationsd(keys="pred", softmax=True),
            Invertd(keys="pred", transform=preprocessing, orig_keys="image", nearest_interp=False, to_tensor=True),
            AsDiscreted(keys="pred", argmax=True),
            SaveImaged(
                keys="pred",
                output_dir=str(Path(target).parent),
                output_postfix="",
                separate_folder=False,
                output_dtype="uint8",
                resample=False,
            ),
        ]
    )
    data = preprocessing({"image": source})
    network.to(device)
    with torch.inference_mode():
        data["pred"] = sliding_window_inference(
            data["image"][None].to(device),
            tuple(card["roi_size"]),
            4,
            network,
            overlap=card.get("overlap", 0.5),
            mode="gaussian",
        )[0].cpu()
    postprocessing(data)


def child(arguments: argparse.Namespace) -> None:
    started = time.perf_counter()
    (run_ours if arguments.child == "ours" else run_monai)(
        arguments.model, arguments.source, arguments.target, arguments.device
    )
    print(json.dumps({"seconds": time.perf_counter() - started}))


def measure(kind: str, model: str, source: Path, target: Path, device: str) -> tuple[float, float]:
    command = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--model",
        model,
        "--source",
        str(source),
        "--target",
        str(target),
        "--device",
        device,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"{kind} failed")
    return json.loads(output.strip().splitlines()[-1])["seconds"], usage.ru_maxrss / 1024**2


def _dice(labels, truth) -> str:
    from CTDeepSegLib.phantom import LABELS

    figures = []
    for value, name in LABELS.items():
        both = ((labels == value) & (truth == value)).sum()
        figures.append(f"{name} {2 * both / max((labels == value).sum() + (truth == value).sum(), 1):.3f}")
    return ", ".join(figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=("ours", "monai"), help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--model", default=str(ROOT / "Resources" / "Models" / "ctdeepseg-phantom-ct"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 240), metavar=("I", "J", "K"))
    arguments = parser.parse_args()
    if arguments.child:
        child(arguments)
        return

    import numpy as np

    from CTDeepSegLib.phantom import make_phantom
    from CTDeepSegLib.volume_io import read_label, write_volume

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        shape = tuple(arguments.shape[::-1])
        phantom = make_phantom(shape=shape, spacing=(0.75, 0.75, 1.25), seed=7, lung_lesions=3, liver_lesions=3)
        source = write_volume(phantom.image, scratch / "ct.nii.gz")
        print(
            f"Input {arguments.shape} voxels at 0.75x0.75x1.25 mm; model {arguments.model}; device {arguments.device}"
        )
        (scratch / "ours").mkdir()
        (scratch / "monai").mkdir()
        ours = measure("ours", arguments.model, source, scratch / "ours" / "ct.nii.gz", arguments.device)
        monai = measure("monai", arguments.model, source, scratch / "monai" / "ct.nii.gz", arguments.device)
        a = read_label(scratch / "ours" / "ct.nii.gz").array
        b = read_label(scratch / "monai" / "ct.nii.gz").array
        agreement = float(np.mean(a == b))
        body = phantom.image.array > -500
        inside = float(np.mean(a[body] == b[body]))
        dice = {name: _dice(labels, phantom.labels.array) for name, labels in (("ours", a), ("monai", b))}
    print(f"{'CTDeepSeg pipeline':<28} {ours[0]:8.1f} s   peak RSS {ours[1]:6.2f} GiB   Dice {dice['ours']}")
    print(f"{'MONAI bundle pipeline':<28} {monai[0]:8.1f} s   peak RSS {monai[1]:6.2f} GiB   Dice {dice['monai']}")
    print(f"voxel agreement of the two label maps: {agreement:.4f} overall, {inside:.4f} inside the body")
    print(
        f"ratio time MONAI / CTDeepSeg: {monai[0] / ours[0]:.2f}x; peak RSS CTDeepSeg / MONAI: {ours[1] / monai[1]:.2f}"
    )


if __name__ == "__main__":
    main()
