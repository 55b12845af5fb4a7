"""The shipped model catalogue: complete, checksummed, honest about licences and about what CTDeepSeg runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from CTDeepSegLib.bundle import bundle_card
from CTDeepSegLib.catalogue.entries import find_release, load_catalogue
from CTDeepSegLib.errors import CTDeepSegError

ZOO = Path(__file__).parent / "data" / "model-zoo"
ENTRIES = load_catalogue()
BY_NAME = {entry["name"]: entry for entry in ENTRIES}


def test_every_published_model_is_listed_with_urls_and_checksums():
    zoo = [entry for entry in ENTRIES if entry["source"] == "MONAI Model Zoo"]
    auto3dseg = [entry for entry in ENTRIES if entry["source"] == "MONAIAuto3DSeg"]
    assert (len(zoo), len(auto3dseg)) == (31, 33)
    assert sum(len(entry["versions"]) for entry in zoo) == 446
    for entry in zoo:
        for version in entry["versions"]:
            assert re.fullmatch(r"[0-9a-f]{40}", version["sha1"]), entry["name"]
            assert version["urls"][0].startswith("https://") and version["urls"][0].endswith(".zip")
    assert all(entry["versions"][0]["sha1"] is None for entry in auto3dseg)  # none published: pinned on install
    assert len(BY_NAME) == len(ENTRIES)
    runnable = {entry["source"]: 0 for entry in ENTRIES}
    for entry in ENTRIES:
        runnable[entry["source"]] += entry["supported"]
        assert entry["supported"] or entry["why_not"], entry["name"]
    assert runnable == {"MONAI Model Zoo": 8, "MONAIAuto3DSeg": 27}
    multi = [entry["name"] for entry in auto3dseg if not entry["supported"]]
    assert sorted(multi) == ["brats-gli", "brats-men", "brats-met", "brats-ped", "brats-ssa", "prostate"]


def test_newest_version_is_the_default_and_versions_can_be_chosen():
    newest = find_release("spleen_ct_segmentation")
    assert newest.version == BY_NAME["spleen_ct_segmentation"]["versions"][0]["version"]
    old = find_release("spleen_ct_segmentation@0.1.0")
    assert old.sha1 == "18bae0a62d90fb06b33c1c7702867a4d4d7b98f0"
    with pytest.raises(CTDeepSegError, match=r"No model 'spleen' in the catalogue\. Did you mean spleen_ct"):
        find_release("spleen")


def test_non_commercial_licences_are_flagged():
    assert BY_NAME["multi_organ_segmentation"]["licence"]["non_commercial"] is True
    assert BY_NAME["vista3d"]["licence"]["non_commercial"] is True
    assert BY_NAME["spleen_ct_segmentation"]["licence"] == {"name": "Apache-2.0", "non_commercial": False}
    assert BY_NAME["whole-body-ts2"]["licence"]["non_commercial"] is None  # not stated: the user is asked


def test_structures_carry_terminology_codes_where_known():
    structures = {item["name"]: item for item in BY_NAME["abdominal-organs"]["structures"]}
    assert structures["Liver"]["snomed"]["type"] == ["SCT", "10200004", "Liver"]
    assert structures["Left Kidney"]["snomed"]["modifier"] == ["SCT", "7771000", "Left"]
    assert "snomed" not in structures["Cyst in Left Kidney"]  # never a guessed code
    assert len(BY_NAME["wholeBody_ct_segmentation"]["structures"]) == 104


@pytest.mark.parametrize("folder", sorted(p for p in ZOO.iterdir() if p.is_dir()), ids=lambda p: p.name)
def test_runnable_flag_agrees_with_the_bundle_reader_on_the_real_config(folder):
    entry = BY_NAME[folder.name]
    snapshot = json.loads((folder / "configs" / "metadata.json").read_text())["version"]
    assert entry["snapshot_version"] == snapshot
    try:
        bundle_card(folder)
        reads = True
    except CTDeepSegError:
        reads = False
    own_code = folder.name in ("vista3d", "spleen_deepedit_annotation")
    assert entry["supported"] == (reads and not own_code), entry["why_not"]
    if not entry["supported"]:
        assert entry["why_not"]
