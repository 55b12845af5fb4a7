"""A small local set of real scans, built from packages on PyPI and checked against pinned SHA-256 sums.

Why: phantoms prove the code right, but only real scans show how a model fares on real anatomy. Public
datasets live behind download pages; these cases ship inside two PyPI packages, so ``pip download`` (the one
network access CTDeepSeg's users already have) can fetch them:

* ``lung2`` (chest CT, 512x512x61, one lung lesion) and ``brain1`` (T1 MRI, one brain lesion) from the
  pyradiomics 3.0.1 source archive. BSD-3-Clause.
* ``liver117`` (a 128^3 abdominal CT crop in HU with liver = 1 and tumour = 2) from
  liver-ct-segmentation-package 1.6.0, stored as MRC files with no spacing: it is read as 1 mm isotropic with
  an identity direction, which is an assumption. Its licence is unclear: **evaluation only**, never training.

The cache lives in ``$CTDEEPSEG_CACHE`` or the user's cache folder (``~/.cache/ctdeepseg``). Each case is
written to a temporary folder and renamed into place once complete, so an interrupted fetch leaves nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CTDeepSegError
from .jobs import Progress
from .volume import Volume
from .volume_io import read_label, read_volume, write_volume


@dataclass(frozen=True)
class CaseSource:
    name: str
    modality: str
    description: str
    licence: str
    training_allowed: bool
    package: str
    archive_sha256: str
    members: dict[str, tuple[str, str]]  # role -> (path inside the archive, sha256)
    labels: dict[int, str]
    note: str = ""


_PYRADIOMICS = ("pyradiomics==3.0.1", "47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5")
_LIVER = ("liver-ct-segmentation-package==1.6.0", "67ffa526d8500ce5e3d9f2c96c1690543d811d352d93d531301d35791b9d6bba")

CASES = {
    case.name: case
    for case in (
        CaseSource(
            "lung2",
            "CT",
            "Chest CT, 512x512x61 at 0.63x0.63x5 mm, one lung lesion (label 1).",
            "BSD-3-Clause (pyradiomics)",
            True,
            *_PYRADIOMICS,
            {
                "image": (
                    "pyradiomics-3.0.1/data/lung2_image.nrrd",
                    "aa2b94eec79127ed786798ac8dc3c013010e1692d5787bebfae1a1e9685a4651",
                ),
                "label": (
                    "pyradiomics-3.0.1/data/lung2_label.nrrd",
                    "cef52738dc51aab69a48fe30639da956d2b911b1c2920439c091fab84727657a",
                ),
            },
            {1: "lesion"},
        ),
        CaseSource(
            "brain1",
            "MRI",
            "T1-weighted brain MRI, 256x256x25 at 0.78x0.78x6.5 mm, one lesion (label 1).",
            "BSD-3-Clause (pyradiomics)",
            True,
            *_PYRADIOMICS,
            {
                "image": (
                    "pyradiomics-3.0.1/data/brain1_image.nrrd",
                    "fffdb111ee8b428ede7256707393c927a7d5be912f0604cf3c6f1bd5fc9644cf",
                ),
                "label": (
                    "pyradiomics-3.0.1/data/brain1_label.nrrd",
                    "ae6d8e6b84f7e99d68c210ee2fa6aaaefa0b2df0a84f55efca4feebe2b216059",
                ),
            },
            {1: "lesion"},
        ),
        CaseSource(
            "liver117",
            "CT",
            "Abdominal CT crop, 128^3, liver (label 1) with tumours (label 2).",
            "unclear: evaluation only, never for training",
            False,
            *_LIVER,
            {
                "image": (
                    "liver_ct_segmentation_package/data/img_117.mrc",
                    "6519548844be8c92a6f37dff22961800ec4baad72a4efbb9f7061ffd265e1780",
                ),
                "label": (
                    "liver_ct_segmentation_package/data/lab_117.mrc",
                    "0f4950afdb218ae1a8790c2367a3f1bffe3d68cf186239cdfae897e4d4f99240",
                ),
            },
            {1: "liver", 2: "tumour"},
            note="MRC stores no spacing or orientation: read as 1 mm isotropic, identity direction (assumed).",
        ),
    )
}

_MRC_MODES = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16, 12: np.float16}


def cache_folder() -> Path:
    """Where fetched cases live: ``$CTDEEPSEG_CACHE``, ``$XDG_CACHE_HOME/ctdeepseg`` or ``~/.cache/ctdeepseg``."""
    if os.environ.get("CTDEEPSEG_CACHE"):
        return Path(os.environ["CTDEEPSEG_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ctdeepseg"


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_mrc(data: bytes, name: str) -> np.ndarray:
    """Voxels of an MRC2014 file as a ``(sections, rows, columns)`` array (the header has no usable geometry)."""
    if len(data) < 1024:
        raise CTDeepSegError(f"{name}: too short to be an MRC file.")
    byte_order = ">" if data[212] == 0x11 else "<"
    header = np.frombuffer(data[:1024], dtype=f"{byte_order}i4")
    columns, rows, sections, mode = (int(v) for v in header[:4])
    if mode not in _MRC_MODES:
        raise CTDeepSegError(f"{name}: MRC data mode {mode} is not supported.")
    if tuple(header[16:19]) != (1, 2, 3):
        raise CTDeepSegError(f"{name}: MRC axis order {tuple(header[16:19])} is not the standard (1, 2, 3).")
    offset = 1024 + int(header[23])
    dtype = np.dtype(_MRC_MODES[mode]).newbyteorder(byte_order)
    count = columns * rows * sections
    if len(data) < offset + count * dtype.itemsize:
        raise CTDeepSegError(f"{name}: MRC file is truncated.")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return array.reshape(sections, rows, columns).astype(dtype.newbyteorder("="))


def _download(requirement: str, expected_sha256: str, folder: Path, python: str) -> Path:
    command = [python, "-m", "pip", "download", "--no-deps", "--no-build-isolation", "-d", str(folder), requirement]
    result = subprocess.run(command, capture_output=True, text=True)
    files = [path for path in folder.iterdir() if path.is_file()]
    if result.returncode != 0 or len(files) != 1:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise CTDeepSegError(
            f"Could not download {requirement} from the package registry ({detail[0]}). Check the network "
            "connection or pip's proxy settings, then fetch again."
        )
    if sha256_of(files[0].read_bytes()) != expected_sha256:
        raise CTDeepSegError(f"{files[0].name}: checksum differs from the pinned one; refusing to use it.")
    return files[0]


def _member(archive: Path, member: str, expected_sha256: str) -> bytes:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as bundle:
            data = bundle.read(member)
    else:
        with tarfile.open(archive) as bundle:
            handle = bundle.extractfile(member)
            if handle is None:
                raise CTDeepSegError(f"{archive.name}: {member} is missing.")
            data = handle.read()
    if sha256_of(data) != expected_sha256:
        raise CTDeepSegError(f"{archive.name}: {member} differs from the pinned checksum; refusing to use it.")
    return data


def _build_case(case: CaseSource, archive: Path, target: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{case.name}.", dir=target.parent))
    try:
        suffix = ".nii.gz" if case.package.startswith("liver") else ".nrrd"
        files = {}
        for role, (member, digest) in case.members.items():
            data = _member(archive, member, digest)
            path = staging / f"{role}{suffix}"
            if member.endswith(".mrc"):
                array = read_mrc(data, member)
                write_volume(Volume(array.astype(np.uint8) if role == "label" else array), path)
            else:
                path.write_bytes(data)
            files[role] = path.name
        record = {
            "name": case.name,
            "modality": case.modality,
            "description": case.description,
            "licence": case.licence,
            "training_allowed": case.training_allowed,
            "source": case.package,
            "source_sha256": {role: digest for role, (_, digest) in case.members.items()},
            "labels": {str(k): v for k, v in case.labels.items()},
            "files": files,
            "note": case.note,
        }
        (staging / "case.json").write_text(json.dumps(record, indent=2))
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch_cases(
    names: list[str] | None = None,
    cache: Path | None = None,
    python: str = sys.executable,
    progress: Progress | None = None,
) -> list[Path]:
    """Fetch the named cases (default all) into the cache, skipping those already there; returns their folders."""
    names = list(CASES) if names is None else names
    unknown = [name for name in names if name not in CASES]
    if unknown:
        raise CTDeepSegError(f"Unknown case(s) {unknown}; available: {', '.join(CASES)}.")
    cases_folder = (cache or cache_folder()) / "cases"
    try:
        cases_folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CTDeepSegError(f"{cases_folder}: cannot create the cache folder ({error.strerror}).") from None
    progress = progress or Progress()
    archives: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="ctdeepseg-fetch-") as scratch:
        for index, name in enumerate(names):
            progress.update(index / len(names), f"Fetching {name}")
            case = CASES[name]
            target = cases_folder / name
            if (target / "case.json").exists():
                continue
            if case.package not in archives:
                folder = Path(scratch) / f"download{len(archives)}"
                folder.mkdir()
                archives[case.package] = _download(case.package, case.archive_sha256, folder, python)
            _build_case(case, archives[case.package], target)
    progress.update(1.0, "Cases ready")
    return [cases_folder / name for name in names]


def load_case(name: str, cache: Path | None = None) -> tuple[Volume, Volume, dict]:
    """The image, label map and record of a fetched case; tells how to fetch it when missing."""
    if name not in CASES:
        raise CTDeepSegError(f"Unknown case {name!r}; available: {', '.join(CASES)}.")
    folder = (cache or cache_folder()) / "cases" / name
    if not (folder / "case.json").exists():
        raise CTDeepSegError(f"Case {name} is not in the cache {folder.parent}; run `ctdeepseg fetch-cases {name}`.")
    record = json.loads((folder / "case.json").read_text())
    image = read_volume(folder / record["files"]["image"])
    return image, read_label(folder / record["files"]["label"], reference=image), record
