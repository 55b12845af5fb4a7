"""The Logic's model catalogue, as the panel and the console use it: what the chooser offers for download,
the consent text, installing from the local test server and from an imported zip, then segmenting with it on
real MRML nodes."""

from __future__ import annotations

import hashlib

import numpy as np

from model_server import NAME, Served, catalogue


def test_chooser_offers_catalogue_models_then_installs_one_that_segments(
    scene, ctdeepseg_module, tmp_path, monkeypatch, server, home, bundle_zip
):
    server.files["/spleen_test_v1.0.0.zip"] = Served(bundle_zip)
    url = server.url("/spleen_test_v1.0.0.zip")
    catalogue(tmp_path, monkeypatch, [url], hashlib.sha1(bundle_zip).hexdigest())
    logic = ctdeepseg_module.CTDeepSegLogic()
    (entry,) = logic.downloadableModels("segmentation")
    assert logic.downloadableModels("detection") == []
    assert logic.downloadLabel(entry) == f"{NAME} 1.0.0 (download, size shown when it starts)"
    notice = logic.downloadNotice(entry)
    assert f"from {url}" in notice and "licence: Apache-2.0" in notice and "checked against the catalogue" in notice

    seen = []
    folder = logic.pullModel(NAME, progress=ctdeepseg_module.Progress(seen.append))
    assert folder == str(home / NAME) and seen[-1].fraction == 1.0
    assert logic.downloadableModels("segmentation") == []
    (card,) = [c for c in logic.availableModels() if str(c.folder) == folder]

    volumeNode, _, _ = logic.createPhantom(seed=2, shape=(24, 32, 32), spacing=(4.0, 4.0, 5.0))
    segmentationNode = logic.segment(volumeNode, model=folder, device="cpu")
    labels = logic.segmentationToLabels(segmentationNode)
    assert logic.volumeFromNode(volumeNode).geometry_mismatch(labels) is None
    assert set(np.unique(labels.array)) <= {0, 1}
    assert segmentationNode.GetSegmentation().GetNumberOfSegments() <= 1


def test_imported_zip_is_recognised_by_its_published_name(ctdeepseg_module, tmp_path, monkeypatch, home, bundle_zip):
    catalogue(tmp_path, monkeypatch, ["https://models.example.invalid/spleen_test_v1.0.0.zip"], None)
    logic = ctdeepseg_module.CTDeepSegLogic()
    downloaded = tmp_path / "spleen_test_v1.0.0.zip"
    downloaded.write_bytes(bundle_zip)
    entry = logic.catalogueEntryForFile(str(downloaded))
    assert entry["name"] == NAME
    assert f"from {downloaded}" in logic.downloadNotice(entry, str(downloaded))
    assert logic.pullModel(NAME, source=str(downloaded)) == str(home / NAME)
    assert downloaded.is_file()  # the user's file stays where it was


def test_an_unreadable_catalogue_leaves_the_installed_models(ctdeepseg_module, tmp_path, monkeypatch, home):
    broken = tmp_path / "catalogue.json"
    broken.write_text("{not json")
    monkeypatch.setenv("CTDEEPSEG_CATALOGUE", str(broken))
    logic = ctdeepseg_module.CTDeepSegLogic()
    assert logic.downloadableModels() == []
    assert any(card.name == "ctdeepseg-phantom-ct" for card in logic.availableModels())
