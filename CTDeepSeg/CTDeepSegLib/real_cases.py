"""A small local set of real scans, built from packages on PyPI and checked against pinned SHA-256 sums.

Why: phantoms prove the code right, but only real scans show how a model fares on real anatomy. Public
datasets live behind download pages; these cases ship inside two PyPI packages, so ``pip download`` (the one
network access CTDeepSeg's users already have) can fetch them:

* ``lung2`` (chest CT, 512x512x61, one lung lesion) and ``brain1`` (T1 MRI, one brain lesion) from the
  pyradiomics 3.0.1 source archive. BSD-3-Clause.
* ``liver117`` (a 128^3 abdominal CT crop in HU with liver = 1 and tumour = 2) from
  liver-ct-segmentation-package 1.6.0, stored as MRC files with no spacing: it is read as 1 mm isotropic with
  an identity direction, which is an assumption. Its licence is unclear: **evaluation only**, never training.
* From the test files of the totalsegmentator 2.18.0 source archive (Apache-2.0), with TotalSegmentator's own
  labels (a silver standard): ``ts_ct`` (contrast CT of abdomen and pelvis at 3 mm, 117 structures' labels),
  ``ts_cta`` (a thorax-abdomen CT angiogram at 1.5 mm with the aorta, its branches and T12), ``ts_mr`` (an
  abdominal MR at 3 mm, total_mr labels) and ``ts_ct_dicom`` (a DICOM CT series of the upper abdomen with its
  labels): the last is **reserved for independent evaluation**: never train, tune or choose a model on it.

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
    # role -> (path inside the archive, sha256). Roles: "image" (a volume file), "series/<file>" (the files of a
    # DICOM series, read as the image), "label" (a label volume), "mask/<value>" (binary masks combined into one
    # label volume, in order, later ones winning where they overlap).
    members: dict[str, tuple[str, str]]
    labels: dict[int, str]  # names of the label values that matter (other values may occur)
    note: str = ""


_PYRADIOMICS = ("pyradiomics==3.0.1", "47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5")
_LIVER = ("liver-ct-segmentation-package==1.6.0", "67ffa526d8500ce5e3d9f2c96c1690543d811d352d93d531301d35791b9d6bba")

_TOTALSEGMENTATOR = ("totalsegmentator==2.18.0", "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03")
_TS = "totalsegmentator-2.18.0/tests/reference_files/"
_SOURCE_ARCHIVES = {"pyradiomics", "totalsegmentator"}
_TS_LICENCE = "Apache-2.0 (totalsegmentator test files); labels are TotalSegmentator's output, a silver standard"
# TotalSegmentator's label values of the structures CTDeepSeg evaluates on (its class maps "total", "total_mr").
_TOTAL = {
    1: "spleen",
    2: "kidney_right",
    3: "kidney_left",
    5: "liver",
    6: "stomach",
    31: "vertebrae_L1",
    32: "vertebrae_T12",
    52: "aorta",
}
_TOTAL_MR = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver", 6: "stomach", 19: "vertebrae", 23: "aorta"}
_CTA_MASKS = {
    "aorta": "7fa1b813c63abcbe455b62a510c5e7a00fe0998f30541d5a8af46b20a88dd7f7",
    "brachiocephalic_trunk": "76ce8a3b3e9aeea03c88a358d9c6ceeb66e2fd6fbae33398a4ae4a8596e99661",
    "celiac_trunk": "b7a962f0bac6f7dc6229ce5fd87be53741a4527a8b53df64a0f7b49f96370bcf",
    "common_carotid_artery_left": "d878d1bb6dd9fe999c6523e4b705f99a1e99b6f77f910edcc9d5d06384a4da9b",
    "subclavian_artery_left": "993695ad2e9833fd3346bedc8e31635d4084c6b8e853620870fb52e41958be9a",
    "superior_mesenteric_artery": "ef688fff60982fdf97f6d558a6acb140fd0d7f30ca5333f72edb86e955954d28",
    "vertebrae_T12": "7baada974082529dc6c1f39bee3ef0b4e384ad020c0b7c1d3971d69e9576e0af",
}
_DICOM_PREFIX = "example_ct_dicom/CT.1.3.12.2.1107.5.1.4.60064.300000221208081134280000"
_DICOM = {
    "16573": "4c5633409fa4d3edf6871e5684e9e1b10325b4d0949997582f43b23a684d0dc4",
    "16574": "9148f91127145497f4d6c6f0780f9452504cd7fe5088ec8f2bf2b21800c731ff",
    "16575": "3edaccec892e0821440cbefe3d5465923bb5146c316cbaf58f578d962f120484",
    "16576": "9b68685f0c5f9bfcfc2c397f4fadf431da288d7422ca72e7d9031d4e039418cd",
    "16577": "c8d2c0dc05e414d47d3652c658d8fecc20c3cf7ce106c10d84ad033d39700bcc",
    "16578": "0ee2c1d58e06cedd91483ca35c04da3c26fea0dbe88aaf1eaa950b57f38357d6",
    "16579": "c76cf0818d4215b92883d109b8a0b62ae0a4d81637eed98738f9c62b6f49bb72",
    "16580": "106e20514fd3ca66895e14dbfba96c01c1195e4ed890c035d4368dd71f3ee116",
    "16581": "5804e6c4a50f4d5b20040ac82a1c6d79cba5f7267d71f10b0a1b49eda1bc13ff",
    "16582": "bef219a16b22949224de4581a2d288863b2585d29556ac24021f03307378cb39",
    "16583": "9de5a49e880417d5330fe299115fdb95831a98234216a31c5c0e9a0be9a6dcd3",
    "16584": "fa00c8d81ec8aa0d0cfc4e05343782c3a75a4c60df8cccf9ff5db42ac454e61d",
    "16585": "ebba0900b0f728db0c94c769db3e5ca38a0cd916386a727541eb3e56350770e5",
    "16586": "f084ec95cfba25efb7cbe86e8b4966b051904037e8385f58fe398c5475693b89",
    "16587": "20a9b88a30ea8a824ac65cb19c1ebf80964b41ff476497706ff2a286e5f27a25",
    "16588": "2a515d3b60f3ff733aac1fc5414206c331e3ed2ccef8c2e0c30b844c538e3ed8",
    "16589": "5880669f1bc36b09cad4bdf487992ec415da0afa014e927efc282e612f467574",
    "16590": "7af4dd5b5766a87368939116b91f90d989820e7b2237fb9bcd10d47db0960875",
    "16591": "671306f4462ae881976c18c6a2d8a1567279fb0166ef0e9e8a41271fac9c1cbb",
    "16592": "fdb76ad5272f074e07cc81509604fd163f2f8a9903d34b16ba6f078250373c51",
}

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
        CaseSource(
            "ts_ct",
            "CT",
            "Contrast CT of abdomen and pelvis, 122x101x112 at 3 mm, TotalSegmentator's 117 structures.",
            _TS_LICENCE,
            True,
            *_TOTALSEGMENTATOR,
            {
                "image": (
                    _TS + "example_ct.nii.gz",
                    "dbd3ae6d614d1d7ef3a46925c30c70038ed52da6b37fdd6afdc7b9b71387e3e1",
                ),
                "label": (
                    _TS + "example_seg_fast_force_split.nii.gz",
                    "e8097758e56e73099075b6caaebce23ef11bc6fad66a4ec3753b9406846558c7",
                ),
            },
            _TOTAL,
            note="Label values are TotalSegmentator's class map 'total' (the named ones are listed).",
        ),
        CaseSource(
            "ts_cta",
            "CT",
            "CT angiogram of thorax and upper abdomen, 120x126x164 at 1.5 mm: aorta, branches, T12.",
            _TS_LICENCE,
            True,
            *_TOTALSEGMENTATOR,
            {
                "image": (
                    _TS + "aorta_report/test_result/models/ct_cropped.nii.gz",
                    "f776ecfa1326e7e21a8c30e5530f517c16f16a59a68fc06e8119cefc7c3b87a0",
                ),
                **{
                    f"mask/{value}": (_TS + f"aorta_report/test_result/models/{name}.nii.gz", digest)
                    for value, (name, digest) in enumerate(_CTA_MASKS.items(), start=1)
                },
            },
            dict(enumerate(_CTA_MASKS, start=1)),
        ),
        CaseSource(
            "ts_mr",
            "MRI",
            "Abdominal MR, 117x91x20 at 3 mm, TotalSegmentator's total_mr structures.",
            _TS_LICENCE,
            True,
            *_TOTALSEGMENTATOR,
            {
                "image": (
                    _TS + "example_mr_sm.nii.gz",
                    "209b46efaff595dd54a9332872e17a722b62654bbb68dbd89acd5090701bbd4f",
                ),
                "label": (
                    _TS + "example_seg_mr.nii.gz",
                    "e73a5ee12962aa2bb2f3e43ab58dfc67990c5a7ef2dcb426a1bf5e5982b9587f",
                ),
            },
            _TOTAL_MR,
            note="Label values are TotalSegmentator's class map 'total_mr' (the named ones are listed).",
        ),
        CaseSource(
            "ts_ct_dicom",
            "CT",
            "DICOM CT series of the upper abdomen, 512x512x20 at 0.98x0.98x2 mm, TotalSegmentator's structures.",
            _TS_LICENCE + "; reserved for independent evaluation",
            False,
            *_TOTALSEGMENTATOR,
            {
                **{f"series/{number}": (_TS + _DICOM_PREFIX + number, digest) for number, digest in _DICOM.items()},
                "label": (
                    _TS + "example_seg_dicom.nii.gz",
                    "98af7f6536c316ff9084054f20956cd3e28af376b81d582d269fbea2744878fc",
                ),
            },
            _TOTAL,
            note="Reserved for independent evaluation: never train, tune or choose a model on it. The label file's "
            "y axis runs the other way than the series': it is resampled onto the series' grid (exact).",
        ),
    )
}


@dataclass(frozen=True)
class PackagedFiles:
    """Files other than scans that ship in a PyPI package: a real trained model, and the package's own code that
    runs it (to compare CTDeepSeg's pipeline against, in the tests)."""

    package: str
    archive_sha256: str
    members: dict[str, str]  # path inside the archive -> sha256
    licence: str


PACKAGED_FILES = {
    # TAPS: a trained MONAI SegResNet for prostate T2 MRI as ONNX, with the inference code that runs it. MIT.
    "taps": PackagedFiles(
        "lavlab-taps==1.1.2",
        "e938361febacadbfd70995bee23c4a56219de6cb302eff3b24f34ff4b9bd790a",
        {
            "taps/resources/model_v1.onnx": "1e39be9d19f6f71810cb0931a7fe895441cfd318d6002730c918ee99b9d79b91",
            "taps/inference.py": "dfec48e03b4e892d5502d485765dddda4881d63e3e06ca69018085ae7c3dc93b",
            "taps/__init__.py": "0f622e874e8ce5d11b6ced01eaee8ed5fea7c4727ef160e9b43d506cb44944a0",
            "taps/__about__.py": "ca8b73544aa3f4115ee30c1a6aef44d6de919bf919d0dc5822a18fe8cce61a90",
            "lavlab_taps-1.1.2.dist-info/licenses/LICENSE.txt": (
                "83e83f312603f5b63e74c699a893fa2f3c6c72032c46d217df0111cd801873a4"
            ),
        },
        "MIT (lavlab-taps)",
    ),
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
    name = requirement.split("==")[0]
    command = [python, "-m", "pip", "download", "--no-deps", "--no-build-isolation", "-d", str(folder), requirement]
    if name in _SOURCE_ARCHIVES:  # the files live in the source archive, not in the wheel
        command += ["--no-binary", name]
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


def _label_onto(image: Volume, path: Path) -> Volume:
    """The label volume at ``path`` on ``image``'s grid: as is when it is, else resampled by nearest neighbour when
    it covers the same box (an axis stored the other way round), else an error."""
    labels = read_volume(path)
    if image.geometry_mismatch(labels) is None:
        return image.with_array(labels.array)

    def box(volume: Volume) -> np.ndarray:
        ends = volume.index_to_physical(np.array([np.zeros(3), np.array(volume.size_ijk, dtype=float) - 1]))
        return np.round(np.sort(ends, axis=0), 3)

    if not np.array_equal(box(image), box(labels)):
        raise CTDeepSegError(f"{path.name}: the labels do not cover the image; refusing to guess their alignment.")
    import SimpleITK as sitk

    from .volume_io import to_sitk

    resampled = sitk.Resample(to_sitk(labels), to_sitk(image), sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return image.with_array(sitk.GetArrayFromImage(resampled))


def _build_case(case: CaseSource, archive: Path, target: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{case.name}.", dir=target.parent))
    try:
        files, masks = {}, {}
        for role, (member, digest) in case.members.items():
            data = _member(archive, member, digest)
            if role.startswith("series/"):
                (staging / "series").mkdir(exist_ok=True)
                (staging / "series" / Path(member).name).write_bytes(data)
            elif role.startswith("mask/"):
                masks[int(role.split("/")[1])] = data
            elif member.endswith(".mrc"):
                array = read_mrc(data, member)
                path = staging / f"{role}.nii.gz"
                write_volume(Volume(array.astype(np.uint8) if role == "label" else array), path)
                files[role] = path.name
            else:
                suffix = ".nii.gz" if member.endswith(".nii.gz") else Path(member).suffix
                (staging / f"{role}{suffix}").write_bytes(data)
                files[role] = f"{role}{suffix}"
        if (staging / "series").is_dir():
            write_volume(read_volume(staging / "series"), staging / "image.nii.gz")
            shutil.rmtree(staging / "series")
            files["image"] = "image.nii.gz"
        image = read_volume(staging / files["image"]) if masks or "label" in files else None
        if masks:
            combined = np.zeros(image.shape, dtype=np.uint8)
            for value, data in masks.items():
                (staging / "mask.nii.gz").write_bytes(data)
                combined[_label_onto(image, staging / "mask.nii.gz").array > 0] = value
            (staging / "mask.nii.gz").unlink()
            write_volume(image.with_array(combined), staging / "label.nii.gz")
            files["label"] = "label.nii.gz"
        elif "label" in files and image.geometry_mismatch(read_volume(staging / files["label"])) is not None:
            labels = _label_onto(image, staging / files["label"])
            (staging / files["label"]).unlink()
            write_volume(labels.with_array(labels.array.astype(np.uint8)), staging / "label.nii.gz")
            files["label"] = "label.nii.gz"
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


def fetch_package_files(name: str, cache: Path | None = None, python: str = sys.executable) -> Path:
    """The folder holding the named package's ``PACKAGED_FILES`` at their archive paths (fetched once, checked
    against the pinned sums, written to a temporary folder and renamed into place)."""
    if name not in PACKAGED_FILES:
        raise CTDeepSegError(f"Unknown packaged files {name!r}; available: {', '.join(PACKAGED_FILES)}.")
    files = PACKAGED_FILES[name]
    target = (cache or cache_folder()) / "packages" / name
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ctdeepseg-fetch-") as scratch:
        archive = _download(files.package, files.archive_sha256, Path(scratch), python)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
        try:
            for member, digest in files.members.items():
                (staging / member).parent.mkdir(parents=True, exist_ok=True)
                (staging / member).write_bytes(_member(archive, member, digest))
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


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
