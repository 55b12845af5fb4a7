"""Detection per CT: time and peak memory of ``ctdeepseg detect``'s pipeline, beside segmentation of the same scan.

A 512x512x240 CT phantom at 0.75x0.75x1.25 mm is written once; each pipeline then runs file to result in its
own process (so its peak RSS is its own): reading, the shipped detector (2.5D Faster R-CNN, linking, NMS) and
the JSON/CSV findings, then the shipped segmenter for comparison. It prints seconds, peak RSS, the ratio
between the two, and the detector's hits on the phantom's true lesions.

    .venv/bin/python bench/detect.py [--device cpu|cuda] [--shape 512 512 240]
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


def child(kind: str, source: str, target: str, device: str) -> None:
    from CTDeepSegLib.model_store import open_model
    from CTDeepSegLib.volume_io import read_volume, write_volume

    started = time.perf_counter()
    volume = read_volume(source)
    if kind == "detect":
        from CTDeepSegLib.detector import detect_volume
        from CTDeepSegLib.findings import write_findings

        card, network = open_model("ctdeepseg-phantom-detector")
        write_findings(target, detect_volume(volume, card, network, device), source)
    else:
        from CTDeepSegLib.inference import segment_volume

        card, network = open_model(None)
        write_volume(segment_volume(volume, card, network, device).labels, target)
    print(json.dumps({"seconds": time.perf_counter() - started}))


def measure(kind: str, source: Path, target: Path, device: str) -> tuple[float, float]:
    command = [sys.executable, __file__, "--child", kind, "--source", str(source), "--target", str(target)]
    process = subprocess.Popen([*command, "--device", device], stdout=subprocess.PIPE, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"{kind} failed")
    return json.loads(output.strip().splitlines()[-1])["seconds"], usage.ru_maxrss / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=("detect", "segment"), help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 240), metavar=("I", "J", "K"))
    arguments = parser.parse_args()
    if arguments.child:
        child(arguments.child, arguments.source, arguments.target, arguments.device)
        return

    from CTDeepSegLib.findings import read_candidates
    from CTDeepSegLib.froc import centre_inside
    from CTDeepSegLib.phantom import make_phantom
    from CTDeepSegLib.volume_io import write_volume

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        phantom = make_phantom(
            shape=tuple(arguments.shape[::-1]), spacing=(0.75, 0.75, 1.25), seed=7, lung_lesions=3, liver_lesions=3
        )
        source = write_volume(phantom.image, scratch / "ct.nii.gz")
        print(f"Input {tuple(arguments.shape)} voxels at 0.75x0.75x1.25 mm; device {arguments.device}")
        detect = measure("detect", source, scratch / "findings.json", arguments.device)
        segment = measure("segment", source, scratch / "labels.nii.gz", arguments.device)
        findings = json.loads((scratch / "findings.json").read_text())["findings"]
        boxes = read_candidates(scratch / "findings.json")
        found = [box for box in boxes if box.score >= 0.5]
        hits = sum(any(centre_inside(box, lesion.box) for box in found) for lesion in phantom.lesions)
    print(f"{'detection (findings JSON)':<28} {detect[0]:7.1f} s   peak RSS {detect[1]:5.2f} GiB")
    print(f"{'segmentation (label file)':<28} {segment[0]:7.1f} s   peak RSS {segment[1]:5.2f} GiB")
    print(f"ratio time detection / segmentation: {detect[0] / segment[0]:.2f}; peak RSS {detect[1] / segment[1]:.2f}")
    print(f"findings: {len(findings)}; true lesions hit: {hits}/{len(phantom.lesions)}")


if __name__ == "__main__":
    main()
