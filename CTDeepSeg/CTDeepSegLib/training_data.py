"""Clinician-corrected labels as training data: image/label pairs in a Medical Segmentation Decathlon folder.

Layout (what MONAI's ``load_decathlon_datalist`` and nnU-Net's converters read)::

    DATASET/dataset.json                 name, modality, labels, numTraining, training: [{image, label}]
    DATASET/imagesTr/<case>.nii.gz       the image
    DATASET/labelsTr/<case>.nii.gz       the corrected label, on the image's exact grid, the model's values
    DATASET/labelsTr/original/<case>.nii.gz   the model's own prediction, when known
    DATASET/provenance/<case>.json       source, model (name, version, weights SHA-256), time, content hash,
                                         and what the correction changed per label (Dice, ml added / removed)

Why the rules below: corrections are the scarcest data a hospital has, so nothing is ever lost.
* No file is ever overwritten: a case name already used (listed, or with any file on disk) gets a new name
  (``case-2``, ...); ``replace=True`` moves the old case to ``replaced/<case>-<time>/`` first.
* Each file is written under a temporary name and renamed when complete, and ``dataset.json`` (rewritten
  atomically) is updated last: it lists exactly the complete cases, whatever interrupts an export.
* The same image and label exported twice is recognised by a content hash and skipped.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import write_text_atomic
from .errors import CTDeepSegError
from .volume import Volume
from .volume_io import read_label, read_volume, write_volume

DATASET_JSON = "dataset.json"


@dataclass(frozen=True)
class ExportResult:
    """What an export did: ``status`` is ``exported``, ``replaced`` or ``skipped`` (same content already there)."""

    case: str
    status: str
    message: str
    cases: int
    changes: dict[str, dict] = field(default_factory=dict)


def suggest_case_name(source: str) -> str:
    """A file-safe case name from a volume name ("Chest CT 3" -> "Chest_CT_3")."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", source.strip()).strip("._-")
    return name or "case"


def content_hash(image: Volume, labels: Volume) -> str:
    """SHA-256 over both arrays and the geometry: equal for the same pair however it was named or stored."""
    digest = hashlib.sha256()
    for volume in (image, labels):
        digest.update(str((volume.array.dtype.str, volume.array.shape)).encode())
        digest.update(np.ascontiguousarray(volume.array).tobytes())
    for values in (image.spacing, image.origin, image.direction):
        digest.update(np.round(np.asarray(values, dtype=np.float64), 6).tobytes())
    return digest.hexdigest()


def read_dataset(dataset: Path) -> dict | None:
    """The dataset's ``dataset.json`` (None when the folder holds no dataset yet)."""
    path = Path(dataset) / DATASET_JSON
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CTDeepSegError(f"{path}: is not valid JSON ({error.msg}); restore it or choose another folder.") from None


def dataset_cases(dataset: Path) -> list[tuple[str, Path, Path]]:
    """(case, image path, label path) of every complete case, as ``dataset.json`` lists them."""
    description = read_dataset(dataset)
    if description is None:
        raise CTDeepSegError(f"{dataset}: no {DATASET_JSON}; export training pairs into it first.")
    cases = []
    for entry in description.get("training", []):
        image, label = Path(dataset) / entry["image"], Path(dataset) / entry["label"]
        cases.append((_case_of(entry), image, label))
    return cases


def dataset_labels(dataset: Path) -> dict[int, str]:
    """The dataset's label values and names, background excluded."""
    description = read_dataset(dataset) or {}
    return {int(value): name for value, name in description.get("labels", {}).items() if int(value) != 0}


def dataset_hash(dataset: Path) -> str:
    """SHA-256 over the listed cases' content hashes: identifies the data a model was fine-tuned on."""
    digest = hashlib.sha256()
    for case, _, _ in dataset_cases(dataset):
        record = _provenance(Path(dataset), case)
        digest.update(f"{case}:{record.get('content_sha256', '')}\n".encode())
    return digest.hexdigest()


def _stem(name: str) -> str:
    """A file name without its extension, ``.nii.gz`` counting as one."""
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else Path(name).stem


def _case_of(entry: Mapping) -> str:
    return _stem(Path(entry["image"]).name)


def _provenance(dataset: Path, case: str) -> dict:
    path = dataset / "provenance" / f"{case}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _files(dataset: Path, case: str) -> list[Path]:
    return [
        dataset / "imagesTr" / f"{case}.nii.gz",
        dataset / "labelsTr" / f"{case}.nii.gz",
        dataset / "labelsTr" / "original" / f"{case}.nii.gz",
        dataset / "provenance" / f"{case}.json",
    ]


def _write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def correction_changes(original: Volume, edited: Volume, names: Mapping[int, str]) -> dict[str, dict]:
    """Per label: Dice between the model's prediction and the correction, and the ml added and removed."""
    voxel_ml = float(np.prod(edited.spacing)) / 1000.0
    changes = {}
    for value, name in names.items():
        before, after = original.array == value, edited.array == value
        total = int(np.count_nonzero(before)) + int(np.count_nonzero(after))
        both = int(np.count_nonzero(before & after))
        changes[name] = {
            "dice": 1.0 if total == 0 else round(2.0 * both / total, 6),
            "added_ml": round(int(np.count_nonzero(after & ~before)) * voxel_ml, 3),
            "removed_ml": round(int(np.count_nonzero(before & ~after)) * voxel_ml, 3),
        }
    return changes


def _check_inputs(image: Volume, labels: Volume, original: Volume | None, names: Mapping[int, str]) -> None:
    problem = image.geometry_mismatch(labels)
    if problem:
        raise CTDeepSegError(
            f"The label does not match the image ({problem}); export the segmentation on the image's own grid."
        )
    if original is not None and (problem := image.geometry_mismatch(original)):
        raise CTDeepSegError(f"The original prediction does not match the image ({problem}).")
    unknown = sorted(set(np.unique(labels.array).tolist()) - {0, *names})
    if unknown:
        raise CTDeepSegError(
            f"The label holds value(s) {unknown} that the dataset does not define "
            f"({', '.join(f'{v} {n}' for v, n in names.items())}); rename or remove those segments."
        )


def _open_dataset(dataset: Path, names: Mapping[int, str], modality: str) -> dict:
    description = read_dataset(dataset)
    wanted = {"0": "background", **{str(value): name for value, name in sorted(names.items())}}
    if description is None:
        return {
            "name": dataset.name,
            "description": "Image/label pairs exported by CTDeepSeg from clinician-corrected segmentations.",
            "tensorImageSize": "3D",
            "modality": {"0": modality},
            "labels": wanted,
            "numTraining": 0,
            "numTest": 0,
            "training": [],
            "test": [],
        }
    if description.get("labels") != wanted:
        raise CTDeepSegError(
            f"{dataset}: the dataset's labels {description.get('labels')} differ from this segmentation's {wanted}; "
            "export into a dataset made for the same model."
        )
    return description


def export_pair(
    dataset: Path | str,
    image: Volume,
    labels: Volume,
    names: Mapping[int, str],
    case: str | None = None,
    original: Volume | None = None,
    model: Mapping | None = None,
    source: str = "",
    modality: str = "CT",
    replace: bool = False,
) -> ExportResult:
    """Add one image/label pair to ``dataset`` (created if needed) following the rules in the module docstring.

    ``names`` maps the label values to structure names (the model's labels); ``model`` is the prediction's
    model (``name``, ``version``, ``sha256``); ``original`` the model's prediction before correction.
    """
    dataset = Path(dataset)
    image.require_finite("image")
    _check_inputs(image, labels, original, names)
    try:
        dataset.mkdir(parents=True, exist_ok=True)
        for folder in ("imagesTr", "labelsTr", "labelsTr/original", "provenance"):
            (dataset / folder).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CTDeepSegError(
            f"{dataset}: cannot create the dataset folder ({error.strerror}); choose another."
        ) from None
    if not os.access(dataset, os.W_OK) or not os.access(dataset / "imagesTr", os.W_OK):
        raise CTDeepSegError(f"{dataset}: is not writable; choose a dataset folder you can write to.")
    description = _open_dataset(dataset, names, modality)
    listed = {_case_of(entry): entry for entry in description["training"]}

    digest = content_hash(image, labels)
    for other in listed:
        if _provenance(dataset, other).get("content_sha256") == digest:
            return ExportResult(
                other, "skipped", f"Same image and label as case {other}; nothing written.", len(listed)
            )

    case = suggest_case_name(case or source or "case")
    status = "exported"
    if replace and case in listed:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        keep = dataset / "replaced" / f"{case}-{stamp}"
        for path in _files(dataset, case):
            if path.exists():
                kept = keep / path.relative_to(dataset)
                kept.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, kept)
        description["training"] = [entry for entry in description["training"] if _case_of(entry) != case]
        status = "replaced"
    else:
        base, number = case, 1
        while case in listed or any(path.exists() for path in _files(dataset, case)):
            number += 1
            case = f"{base}-{number}"

    image_path, label_path, original_path, provenance_path = _files(dataset, case)
    write_volume(image, image_path)
    write_volume(
        labels.with_array(labels.array.astype(np.uint8 if labels.array.max() < 256 else np.uint16)), label_path
    )
    changes = {}
    if original is not None:
        write_volume(original.with_array(original.array.astype(labels.array.dtype, copy=False)), original_path)
        changes = correction_changes(original, labels, names)
    record = {
        "case": case,
        "source": source,
        "model": dict(model or {}),
        "exported_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "content_sha256": digest,
        "image": f"./imagesTr/{case}.nii.gz",
        "label": f"./labelsTr/{case}.nii.gz",
        "original": f"./labelsTr/original/{case}.nii.gz" if original is not None else None,
        "changes": changes,
    }
    _write_json(provenance_path, record)
    description["training"].append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    description["numTraining"] = len(description["training"])
    _write_json(dataset / DATASET_JSON, description)
    verb = "Replaced" if status == "replaced" else "Exported"
    return ExportResult(
        case,
        status,
        f"{verb} case {case}; the dataset holds {description['numTraining']} case(s).",
        description["numTraining"],
        changes,
    )


def export_files(
    dataset: Path | str,
    image_path: Path | str,
    label_path: Path | str,
    names: Mapping[int, str] | None = None,
    original_path: Path | str | None = None,
    case: str | None = None,
    model: Mapping | None = None,
    replace: bool = False,
) -> ExportResult:
    """``export_pair`` from files (the command line); label names default to the dataset's, else ``label N``."""
    image = read_volume(image_path)
    labels = read_label(label_path)
    original = read_label(original_path) if original_path else None
    if names is None:
        names = dataset_labels(Path(dataset)) or {int(v): f"label {int(v)}" for v in np.unique(labels.array) if v != 0}
    source = _stem(Path(image_path).name)
    return export_pair(
        dataset, image, labels, names, case=case, original=original, model=model, source=source, replace=replace
    )
