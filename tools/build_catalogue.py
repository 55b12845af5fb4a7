"""Build the shipped model catalogue (``CTDeepSeg/Resources/Catalogue/models.json``) from published metadata.

Sources, both read as data: the MONAI Model Zoo's ``model_info.json`` (every bundle version's zip URL and SHA-1)
with the real configs of the bundles that matter to CTDeepSeg, and MONAIAuto3DSeg's ``Models.json`` (URLs, no
checksums). Whether CTDeepSeg can run a bundle is decided by its own bundle reader on the real configs, so the
catalogue never promises a model the pipeline refuses; the reason is kept when it cannot.

    .venv/bin/python tools/build_catalogue.py --zoo ../shared/model-zoo --auto3dseg ../shared/monaiauto3dseg
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "CTDeepSeg"))

from CTDeepSegLib.bundle import bundle_card  # noqa: E402
from CTDeepSegLib.catalogue.terminology import structure  # noqa: E402
from CTDeepSegLib.errors import CTDeepSegError  # noqa: E402

OUTPUT = ROOT / "CTDeepSeg" / "Resources" / "Catalogue" / "models.json"
ZOO_SNAPSHOT = "Project-MONAI/model-zoo commit dfae206df112837d817e78d3727c9f32b3b52e82 (2024-10-11)"
AUTO3DSEG_SNAPSHOT = "lassoan/SlicerMONAIAuto3DSeg commit 9cdf2df4e8b3a5351ad11a3f934b0c13ffb15cca (2026-03-19)"

# Bundles whose configs are not in the snapshot: what they are, and why CTDeepSeg (3D CT/MRI segmentation and
# detection) does not run them.
OTHER_BUNDLES = {
    "brats_mri_axial_slices_generative_diffusion": ("generation", "MRI", "brain", "a 2D image generator"),
    "brats_mri_generative_diffusion": ("generation", "MRI", "brain", "an image generator"),
    "breast_density_classification": ("classification", "MG", "breast", "a 2D mammogram classifier"),
    "classification_template": ("classification", "any", "any", "a template for training, no trained weights"),
    "endoscopic_inbody_classification": ("classification", "endoscopy", "any", "a 2D endoscopy video classifier"),
    "endoscopic_tool_segmentation": ("segmentation", "endoscopy", "any", "2D endoscopy video segmentation"),
    "maisi_ct_generative": ("generation", "CT", "whole body", "an image generator"),
    "mednist_gan": ("generation", "any", "any", "a 2D image generator (MedNIST teaching data)"),
    "mednist_reg": ("registration", "any", "any", "2D registration (MedNIST teaching data)"),
    "pathology_nuclei_classification": ("classification", "pathology", "any", "2D pathology"),
    "pathology_nuclei_segmentation_classification": ("segmentation", "pathology", "any", "2D pathology"),
    "pathology_nuclick_annotation": ("segmentation", "pathology", "any", "2D pathology"),
    "pathology_tumor_detection": ("detection", "pathology", "any", "2D pathology"),
    "segmentation_template": ("segmentation", "any", "any", "a template for training, no trained weights"),
    "valve_landmarks": ("landmarks", "MRI", "heart", "2D cardiac landmark regression"),
    "ventricular_short_axis_3label": ("segmentation", "MRI", "heart", "2D cardiac MRI slices"),
    "vista2d": ("segmentation", "microscopy", "any", "2D cell segmentation"),
}
# Bundles in the snapshot that need their own Python code or an interactive protocol CTDeepSeg does not speak.
NEEDS_OWN_CODE = {
    "vista3d": "VISTA3D needs its own inference code (scripts/) and point prompts in its own protocol",
    "spleen_deepedit_annotation": "DeepEdit takes click-guidance channels in its own protocol; "
    "use CTDeepSeg's Interactive section instead",
}
REGION = {
    "brats_mri_segmentation": "brain",
    "lung_nodule_ct_detection": "chest",
    "multi_organ_segmentation": "abdomen",
    "pancreas_ct_dints_segmentation": "abdomen",
    "pediatric_abdominal_ct_segmentation": "abdomen",
    "prostate_mri_anatomy": "pelvis",
    "renalStructures_CECT_segmentation": "abdomen",
    "renalStructures_UNEST_segmentation": "abdomen",
    "spleen_ct_segmentation": "abdomen",
    "spleen_deepedit_annotation": "abdomen",
    "swin_unetr_btcv_segmentation": "abdomen",
    "vista3d": "whole body",
    "wholeBody_ct_segmentation": "whole body",
    "wholeBrainSeg_Large_UNEST_segmentation": "brain",
}
_NON_COMMERCIAL = re.compile(r"non-?commercial|NCLS|research or evaluation purposes only", re.I)


def _version_key(version: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"[.\-]", version))


def _licence(folder: Path) -> dict:
    text = (folder / "LICENSE").read_text() if (folder / "LICENSE").is_file() else ""
    readme = folder / "docs" / "README.md"
    notes = readme.read_text() if readme.is_file() else ""
    non_commercial = bool(_NON_COMMERCIAL.search(text) or _NON_COMMERCIAL.search(notes))
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if "Apache License" in first and not non_commercial:
        name = "Apache-2.0"
    elif non_commercial:
        name = f"{first or 'see the bundle LICENSE'}: non-commercial use only (the weights' licence)"
    else:
        name = first or "not stated"
    return {"name": name, "non_commercial": non_commercial}


def _zoo_versions(info: dict, name: str) -> list[dict]:
    versions = []
    for key, entry in info.items():
        bundle, _, version = key.rpartition("_v")
        if bundle == name:
            versions.append({"version": version, "urls": [entry["source"]], "sha1": entry["checksum"].lower()})
    return sorted(versions, key=lambda item: _version_key(item["version"]), reverse=True)


def zoo_entries(zoo: Path) -> list[dict]:
    info = json.loads((zoo / "model_info.json").read_text())
    names = sorted({key.rpartition("_v")[0] for key in info})
    entries = []
    for name in names:
        folder = zoo / name
        versions = _zoo_versions(info, name)
        entry = {
            "name": name,
            "source": "MONAI Model Zoo",
            "format": "monai-bundle",
            "versions": versions,
            "size_bytes": None,
            "published_speed": None,
        }
        if name in OTHER_BUNDLES:
            task, modality, region, what = OTHER_BUNDLES[name]
            entry.update(
                title=name.replace("_", " "),
                task=task,
                modality=modality,
                region=region,
                structures=[],
                licence={"name": "not in the catalogue snapshot: read the bundle's LICENSE", "non_commercial": None},
                supported=False,
                why_not=f"{what}; CTDeepSeg runs 3D CT and MRI segmentation and detection",
            )
            entries.append(entry)
            continue
        metadata = json.loads((folder / "configs" / "metadata.json").read_text())
        outputs = metadata.get("network_data_format", {}).get("outputs", {})
        channels = next(iter(outputs.values()), {}).get("channel_def", {})
        names_ = [str(value) for key, value in sorted(channels.items(), key=lambda kv: int(kv[0])) if key != "0"]
        if name == "lung_nodule_ct_detection":
            names_ = ["nodule"]
        inputs = metadata.get("network_data_format", {}).get("inputs", {})
        modality = str(next(iter(inputs.values()), {}).get("modality", "CT")).upper()
        entry.update(
            title=metadata.get("name", name),
            description=metadata.get("description", ""),
            task="detection" if "detection" in name else "segmentation",
            modality="MRI" if modality.startswith("MR") else modality,
            region=REGION[name],
            structures=[structure(label) for label in names_],
            licence=_licence(folder),
            snapshot_version=metadata.get("version"),
        )
        if name in NEEDS_OWN_CODE:
            entry.update(supported=False, why_not=NEEDS_OWN_CODE[name])
        else:
            try:
                bundle_card(folder)
                entry.update(supported=True, why_not=None)
            except CTDeepSegError as error:
                reason = str(error).replace(str(folder), name)
                entry.update(supported=False, why_not=reason)
        entries.append(entry)
    return entries


def _auto3dseg_region(title: str) -> str:
    lowered = title.lower()
    for keyword, region in (
        ("whole body", "whole body"),
        ("body", "whole body"),
        ("head", "head"),
        ("brain", "brain"),
        ("icrh", "brain"),
        ("prostate", "pelvis"),
        ("hips", "pelvis"),
        ("lungs", "chest"),
        ("cardiac", "chest"),
        ("mediastinal", "chest"),
        ("ribs", "chest"),
        ("aorta", "chest and abdomen"),
        ("abdominal", "abdomen"),
        ("vertebrae", "spine"),
        ("muscles", "whole body"),
    ):
        if keyword in lowered:
            return region
    return "any"


def auto3dseg_entries(folder: Path) -> list[dict]:
    models = json.loads((folder / "Models.json").read_text())["models"]
    entries = []
    for model in models:
        urls = [version["url"] for version in model["versions"]]
        stem = urls[0].rsplit("/", 1)[-1].removesuffix(".zip")
        name, _, version = stem.rpartition("-v")
        licence = model.get("license") or "not stated"
        channels = len(model.get("inputs", [])) or 1
        entries.append(
            {
                "name": name,
                "title": model["title"],
                "description": model.get("description", ""),
                "source": "MONAIAuto3DSeg",
                "format": "auto3dseg-segresnet",
                "task": "segmentation",
                "modality": "MRI" if model["imagingModality"].upper().startswith("MR") else model["imagingModality"],
                "region": _auto3dseg_region(model["title"]),
                "structures": [structure(label) for label in model["segmentNames"]],
                "licence": {
                    "name": licence,
                    "non_commercial": bool(_NON_COMMERCIAL.search(licence)) if model.get("license") else None,
                },
                "versions": [{"version": version, "urls": urls, "sha1": None}],
                "size_bytes": None,
                "published_speed": {
                    "gpu_s": model.get("segmentationTimeSecGPU"),
                    "cpu_s": model.get("segmentationTimeSecCPU"),
                },
                "supported": channels == 1,
                "why_not": None
                if channels == 1
                else f"takes {channels} input volumes; CTDeepSeg runs single-volume models",
            }
        )
    # TS1 and TS2 whole-body models share a file name; their titles tell them apart.
    stems = [entry["name"] for entry in entries]
    for entry in entries:
        generation = re.search(r"\bTS(\d)\b", entry["title"])
        if stems.count(entry["name"]) > 1 and generation:
            entry["name"] = f"{entry['name']}-ts{generation.group(1)}"
    return entries


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, required=True, help="MONAI Model Zoo metadata folder")
    parser.add_argument("--auto3dseg", type=Path, required=True, help="MONAIAuto3DSeg Models.json folder")
    parser.add_argument("-o", "--output", type=Path, default=OUTPUT)
    arguments = parser.parse_args()
    entries = zoo_entries(arguments.zoo) + auto3dseg_entries(arguments.auto3dseg)
    names = [entry["name"] for entry in entries]
    duplicates = {name for name in names if names.count(name) > 1}
    if duplicates:
        raise SystemExit(f"duplicate catalogue names: {', '.join(sorted(duplicates))}")
    catalogue = {
        "schema": 1,
        "sources": [ZOO_SNAPSHOT, AUTO3DSEG_SNAPSHOT],
        "models": entries,
    }
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(catalogue, indent=1) + "\n")
    supported = sum(entry["supported"] for entry in entries)
    print(f"{arguments.output}: {len(entries)} models, {supported} runnable in CTDeepSeg")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
