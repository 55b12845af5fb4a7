"""Segmentation end to end: CTDeepSeg's pipeline versus the MONAI reference pipeline a Model Zoo bundle runs.

Both read the same CT file and write a label file, with the same network and weights (the shipped model if
present) and the same sliding window (ROI, overlap, Gaussian blending, batch). The reference is MONAI's bundle
recipe: LoadImaged, EnsureChannelFirstd, Orientationd, Spacingd, ScaleIntensityRanged, sliding_window_inference,
softmax, Invertd, AsDiscreted, SaveImaged. Each runs in its own process so that its peak memory (max RSS) is
its own; the ratios are printed at the end, after checking the two label maps agree.

With ``--bundle NAME`` the model is a real Model Zoo config from ``Testing/data/model-zoo`` (e.g.
``wholeBody_ct_segmentation``: SegResNet, 105 output channels at 1.5 mm) with random weights, and the reference
is that config itself run by ``monai.bundle.ConfigParser`` (its loader, transforms, inferer, postprocessing).

With ``--nnunet`` the model is an nnU-Net v2 results folder (a 3d_fullres PlainConvUNet of 5 stages, 32-320
features, patch 80x160x160, 4 classes, random weights, mirroring on all axes, ``--folds`` folds; with
``--totalsegmentator-shaped`` 25 classes, 6 stages of two convolutions, patch 128^3 at 1.5 mm) and the reference
is nnU-Net's own ``nnUNetPredictor`` on the same file (CPU: it stitches in float16 and writes with SimpleITK).

    .venv/bin/python bench/segment.py [--device cpu] [--shape 512 512 240] [--model FOLDER | --bundle NAME | --nnunet]
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


def run_ours(model: str, source: str, target: str, device: str, fast: bool = False) -> None:
    from CTDeepSegLib.inference import segment_volume
    from CTDeepSegLib.model_store import open_model
    from CTDeepSegLib.volume_io import read_volume, write_volume

    card, network = open_model(model)
    volume = read_volume(source)
    result = segment_volume(volume, card, network, device, postprocess_labels=False, fast=fast)
    write_volume(result.labels, target)


def run_ours_fast(model: str, source: str, target: str, device: str) -> None:
    run_ours(model, source, target, device, fast=True)


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


def run_bundle(model: str, source: str, target: str, device: str) -> None:
    """The bundle's own config through MONAI's parser, from file to file (its SaveImaged replaced by ours)."""
    import torch
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    from CTDeepSegLib.volume_io import read_volume, write_volume

    parser = ConfigParser()
    parser.read_config(str(Path(model) / "configs" / "inference.json"))
    if parser["network_def"]["_target_"] == "SwinUNETR":
        parser["network_def"].pop("img_size", None)
    post = [t for t in parser["postprocessing"]["transforms"] if t["_target_"] != "SaveImaged"]
    parser["postprocessing"]["transforms"] = post
    parser["inferer"]["device"] = "$torch.device('cpu')"  # stitch on the CPU as MONAI's bundle does on a CPU
    preprocessing = parser.get_parsed_content("preprocessing")
    data = preprocessing({"image": source})
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(Path(model) / "models" / "model.pt", weights_only=True))
    network.to(device).eval()
    with torch.inference_mode():
        data["pred"] = parser.get_parsed_content("inferer")(data["image"][None].to(device), network)[0].cpu()
    pred = Compose(parser.get_parsed_content("postprocessing").transforms)(data)["pred"]
    labels = (pred.argmax(0) if pred.shape[0] > 1 else pred[0]).numpy().astype("uint8").transpose(2, 1, 0)
    write_volume(read_volume(source).with_array(labels), target)


def bundle_folder(name: str, scratch: Path) -> Path:
    """The real config of Model Zoo bundle ``name`` with random weights (seeded), as an installed bundle."""
    import shutil

    import torch

    from CTDeepSegLib.bundle import bundle_card
    from CTDeepSegLib.model_store import build_network

    folder = scratch / name
    shutil.copytree(ROOT / "Testing" / "data" / "model-zoo" / name / "configs", folder / "configs")
    (folder / "models").mkdir()
    torch.manual_seed(0)
    torch.save(build_network(bundle_card(folder)).state_dict(), folder / "models" / "model.pt")
    return folder


def run_nnunet(model: str, source: str, target: str, device: str) -> None:
    """nnU-Net's predictor on the results folder the CTDeepSeg model folder ``model`` was registered from."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    results = json.loads((Path(model) / "model.json").read_text())["network"]["results"]
    predictor = nnUNetPredictor(device=torch.device(device), verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(results, use_folds=None, checkpoint_name="checkpoint_final.pth")
    predictor.predict_from_files(
        [[source]],
        [target[: -len(".nii.gz")]],
        save_probabilities=False,
        overwrite=True,
        num_processes_preprocessing=1,
        num_processes_segmentation_export=1,
    )


def nnunet_model(scratch: Path, folds: int, totalsegmentator: bool) -> str:
    """A registered nnU-Net v2 results folder of a realistic size (random weights): by default 4 classes and a
    5-stage U-Net of one convolution per stage; or shaped like TotalSegmentator's 1.5 mm tasks (25 classes,
    6 stages of two convolutions, patch 128 cubed)."""
    sys.path.insert(0, str(ROOT / "Testing"))
    from nnunet_fixtures import results_folder

    from CTDeepSegLib.formats.importing import import_model

    if totalsegmentator:
        shape = {"spacing_zyx": (1.5, 1.5, 1.5), "patch_zyx": (128, 128, 128), "convs": 2, "classes": 25}
        shape["features"] = (32, 64, 128, 256, 320, 320)
    else:
        shape = {"spacing_zyx": (2.5, 1.5, 1.5), "patch_zyx": (80, 160, 160), "features": (32, 64, 128, 256, 320)}
    folder = results_folder(scratch / "results", folds=tuple(range(folds)), **shape)
    return str(import_model(folder, "bench-nnunet", destination=scratch / "models").folder)


def child(arguments: argparse.Namespace) -> None:
    started = time.perf_counter()
    runners = {"ours": run_ours, "ours-fast": run_ours_fast, "monai": run_monai, "bundle": run_bundle}
    runner = {**runners, "nnunet": run_nnunet}[arguments.child]
    runner(arguments.model, arguments.source, arguments.target, arguments.device)
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


def _half_voxel_ties(volume, model: str):
    """Voxels of the input whose position on the model's grid is exactly halfway between two model voxels along
    some axis (bundles that label first and invert by nearest neighbour); None for other models."""
    import numpy as np

    from CTDeepSegLib.inference import _from_target, model_grid
    from CTDeepSegLib.model_store import card_of

    card = card_of(Path(model))
    if card.get("invert") != "nearest":
        return None
    grid = model_grid(volume, card, crop_to_body=False)
    tie = [np.isclose(np.abs(np.modf(p)[0]), 0.5) for p in grid.input_positions()]
    oriented = tie[0][:, None, None] | tie[1][None, :, None] | tie[2][None, None, :]
    return _from_target(oriented, grid.order, grid.flips)


def agreement_off_ties(a, b, ties) -> float:
    import numpy as np

    return float(np.mean(a[~ties] == b[~ties]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=("ours", "ours-fast", "monai", "bundle", "nnunet"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--nnunet", action="store_true", help="an nnU-Net v2 results folder against nnU-Net's predictor"
    )
    parser.add_argument("--folds", type=int, default=1, help="folds of the --nnunet results folder (default 1)")
    parser.add_argument(
        "--totalsegmentator-shaped",
        action="store_true",
        help="with --nnunet: 25 classes, 6 stages of two convolutions, patch 128^3 at 1.5 mm (TotalSegmentator's)",
    )
    parser.add_argument("--fast", action="store_true", help="CTDeepSeg in bfloat16 on the CPU (segment --fast)")
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--model", default=str(ROOT / "Resources" / "Models" / "ctdeepseg-phantom-ct"))
    parser.add_argument("--bundle", help="a Model Zoo config in Testing/data/model-zoo, with random weights")
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
        model, reference = arguments.model, "monai"
        if arguments.bundle:
            model, reference = str(bundle_folder(arguments.bundle, scratch)), "bundle"
        if arguments.nnunet:
            model, reference = nnunet_model(scratch, arguments.folds, arguments.totalsegmentator_shaped), "nnunet"
        print(f"Input {arguments.shape} voxels at 0.75x0.75x1.25 mm; model {model}; device {arguments.device}")
        (scratch / "ours").mkdir()
        (scratch / "monai").mkdir()
        ours = measure(
            "ours-fast" if arguments.fast else "ours", model, source, scratch / "ours" / "ct.nii.gz", arguments.device
        )
        monai = measure(reference, model, source, scratch / "monai" / "ct.nii.gz", arguments.device)
        a = read_label(scratch / "ours" / "ct.nii.gz").array
        b = read_label(scratch / "monai" / "ct.nii.gz").array
        agreement = float(np.mean(a == b))
        ties = None if arguments.nnunet else _half_voxel_ties(phantom.image, model)
        body = phantom.image.array > -500
        inside = float(np.mean(a[body] == b[body]))
        dice = {name: _dice(labels, phantom.labels.array) for name, labels in (("ours", a), ("monai", b))}
        if arguments.bundle or arguments.nnunet:  # random weights: Dice against the phantom means nothing
            dice = {"ours": "n/a (random weights)", "monai": "n/a (random weights)"}
    title = "CTDeepSeg pipeline" + (" (bf16)" if arguments.fast else "")
    print(f"{title:<28} {ours[0]:8.1f} s   peak RSS {ours[1]:6.2f} GiB   Dice {dice['ours']}")
    other = "nnU-Net predictor" if arguments.nnunet else "MONAI bundle pipeline"
    print(f"{other:<28} {monai[0]:8.1f} s   peak RSS {monai[1]:6.2f} GiB   Dice {dice['monai']}")
    print(f"voxel agreement of the two label maps: {agreement:.4f} overall, {inside:.4f} inside the body")
    if ties is not None:
        print(
            f"  {agreement_off_ties(a, b, ties):.4f} away from the {ties.mean():.1%} of voxels that fall exactly "
            "halfway between two model voxels (nearest neighbour has no right answer there)"
        )
    print(
        f"ratio time {other} / CTDeepSeg: {monai[0] / ours[0]:.2f}x; "
        f"peak RSS CTDeepSeg / {other}: {ours[1] / monai[1]:.2f}"
    )


if __name__ == "__main__":
    main()
