"""Catalogue downloads against a real HTTP server on 127.0.0.1: verified, resumable, proxied, refused cleanly.

Each failure test checks the message the user sees and that nothing was installed (no model folder, no
half-unpacked staging folder); where a partial download should be kept for resuming, that it is.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from CTDeepSegLib.catalogue import download as download_module
from CTDeepSegLib.catalogue.install import MANIFEST, pull
from CTDeepSegLib.cli import main
from CTDeepSegLib.errors import CTDeepSegError
from CTDeepSegLib.jobs import Progress
from CTDeepSegLib.model_store import open_model
from model_fixtures import spleen_bundle
from model_server import NAME, SMALL_UNET, Served, catalogue, zip_folder


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def assert_nothing_installed(models: Path) -> None:
    assert not (models / NAME).exists()
    assert not list(models.glob(f".{NAME}.installing-*")) if models.exists() else True


def test_pull_installs_verified_model_once_and_it_loads_by_name(tmp_path, monkeypatch, server, home, bundle_zip):
    server.files["/m.zip"] = Served(bundle_zip)
    catalogue(tmp_path, monkeypatch, [server.url("/m.zip")], sha1(bundle_zip))
    seen = []
    folder = pull(NAME, progress=Progress(seen.append))
    assert folder == home / NAME
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["zip_sha1"] == sha1(bundle_zip)
    assert manifest["zip_sha256"] == hashlib.sha256(bundle_zip).hexdigest()
    assert set(manifest["files"]) >= {"configs/inference.json", "models/model.pt"}
    assert json.loads((home / ".catalogue-pins.json").read_text()) == {f"{NAME}@1.0.0": manifest["zip_sha256"]}
    assert seen[-1].fraction == 1.0 and any("MB" in info.message for info in seen)
    assert not (home / ".downloads" / "m.zip").exists()
    card, network = open_model(NAME)
    assert card["labels"][0]["name"] == "spleen"
    assert sum(p.numel() for p in network.parameters()) > 0
    requests_before = len(server.log)
    assert pull(NAME) == folder  # installed and verified: no second download
    assert len(server.log) == requests_before


def test_dropped_connection_resumes_with_range(tmp_path, monkeypatch, server, home, bundle_zip):
    server.files["/m.zip"] = Served(bundle_zip, drop_after=len(bundle_zip) * 2 // 5, drops=1)
    catalogue(tmp_path, monkeypatch, [server.url("/m.zip")], sha1(bundle_zip))
    pull(NAME, backoff_s=0.01)
    assert [entry["range"] is None for entry in server.log] == [True, False]
    resumed_at = int(server.log[1]["range"].removeprefix("bytes=").rstrip("-"))
    assert len(bundle_zip) * 2 // 5 - (1 << 16) <= resumed_at <= len(bundle_zip) * 2 // 5  # at most a block lost
    assert (home / NAME / "models" / "model.pt").is_file()


def test_interrupted_run_keeps_partial_and_next_run_resumes(tmp_path, monkeypatch, server, home, bundle_zip):
    server.files["/m.zip"] = Served(bundle_zip)
    catalogue(tmp_path, monkeypatch, [server.url("/m.zip")], sha1(bundle_zip))

    def ctrl_c(info):
        if 0 < info.fraction < 0.8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pull(NAME, progress=Progress(ctrl_c))
    part = home / ".downloads" / "m.zip.part"
    kept = part.stat().st_size
    assert 0 < kept < len(bundle_zip)
    assert_nothing_installed(home)
    pull(NAME)
    assert server.log[-1]["range"] == f"bytes={kept}-"
    assert (home / NAME / MANIFEST).is_file() and not part.exists()


def test_truncated_file_fails_keeps_partial_then_resumes(tmp_path, monkeypatch, server, home, bundle_zip):
    half = len(bundle_zip) // 2
    server.files["/m.zip"] = Served(bundle_zip, truncate_at=half)
    catalogue(tmp_path, monkeypatch, [server.url("/m.zip")], sha1(bundle_zip))
    with pytest.raises(CTDeepSegError, match=r"connection dropped .* kept in .*m\.zip\.part resumes"):
        pull(NAME, attempts=3, backoff_s=0.01)
    kept = (home / ".downloads" / "m.zip.part").stat().st_size
    assert half - (1 << 16) <= kept <= half
    assert_nothing_installed(home)
    server.files["/m.zip"].truncate_at = None
    pull(NAME)
    assert server.log[-1]["range"] == f"bytes={kept}-"


def test_checksum_mismatch_deletes_the_file_and_installs_nothing(tmp_path, monkeypatch, server, home, bundle_zip):
    server.files["/m.zip"] = Served(bundle_zip)
    catalogue(tmp_path, monkeypatch, [server.url("/m.zip")], "0" * 40)
    with pytest.raises(CTDeepSegError, match=r"SHA1 [0-9a-f]{12}\.\.\. differs .* deleted and nothing was installed"):
        pull(NAME)
    assert not list((home / ".downloads").iterdir())
    assert_nothing_installed(home)


@pytest.mark.parametrize("status, tries", [(404, 1), (500, 3)])
def test_http_errors_are_reported_and_transient_ones_retried(tmp_path, monkeypatch, server, home, status, tries):
    server.files["/m.zip"] = Served(b"", status=status)
    catalogue(tmp_path, monkeypatch, [server.url("/m.zip")], "0" * 40)
    with pytest.raises(CTDeepSegError, match=rf"Download failed: http://127\.0\.0\.1:\d+/m\.zip: HTTP {status}\."):
        pull(NAME, attempts=3, backoff_s=0.01)
    assert len(server.log) == tries
    assert_nothing_installed(home)


def test_no_network_is_a_clear_error(tmp_path, monkeypatch, home):
    catalogue(tmp_path, monkeypatch, ["http://127.0.0.1:9/m.zip"], "0" * 40)
    with pytest.raises(CTDeepSegError, match=r"cannot connect \(connection refused\)\. Check the network and proxy"):
        pull(NAME, backoff_s=0.01)
    assert_nothing_installed(home)


def test_disk_full_is_refused_before_downloading(tmp_path, monkeypatch, server, home, bundle_zip):
    server.files["/m.zip"] = Served(bundle_zip)
    catalogue(tmp_path, monkeypatch, [server.url("/m.zip")], sha1(bundle_zip))
    monkeypatch.setattr(download_module.shutil, "disk_usage", lambda _: type("Usage", (), {"free": 1000})())
    with pytest.raises(CTDeepSegError, match=r"0\.0 MB free, the download needs 3\.\d MB; free some space"):
        pull(NAME)
    assert_nothing_installed(home)


def test_proxy_variables_are_honoured(tmp_path, monkeypatch, server, home, bundle_zip):
    server.files["/m.zip"] = Served(bundle_zip)
    catalogue(tmp_path, monkeypatch, ["http://models.example.invalid/m.zip"], sha1(bundle_zip))
    monkeypatch.setenv("HTTP_PROXY", server.url(""))
    pull(NAME)
    assert server.log[0]["path"] == "http://models.example.invalid/m.zip"  # the request went through the proxy
    assert server.log[0]["host"] == "models.example.invalid"


def test_no_proxy_bypasses_the_proxy(tmp_path, monkeypatch, server, home, bundle_zip):
    server.files["/m.zip"] = Served(bundle_zip)
    catalogue(tmp_path, monkeypatch, [server.url("/m.zip")], sha1(bundle_zip))
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # a proxy that is not there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    pull(NAME)
    assert server.log[0]["path"] == "/m.zip"


def test_mirror_is_tried_first(tmp_path, monkeypatch, server, home, bundle_zip):
    server.files["/mirror/m.zip"] = Served(bundle_zip)
    catalogue(tmp_path, monkeypatch, ["http://127.0.0.1:9/models/m.zip"], sha1(bundle_zip))
    pull(NAME, mirror=server.url("/mirror/"))
    assert [entry["path"] for entry in server.log] == ["/mirror/m.zip"]


def test_offline_import_verifies_and_never_deletes_the_users_file(tmp_path, monkeypatch, home, bundle_zip):
    catalogue(tmp_path, monkeypatch, ["http://127.0.0.1:9/m.zip"], sha1(bundle_zip))
    wrong = tmp_path / "other.zip"
    wrong.write_bytes(bundle_zip[:-1] + b"x")
    with pytest.raises(CTDeepSegError, match=r"other\.zip: SHA1 .* differs from the catalogue's"):
        pull(NAME, source=str(wrong))
    assert wrong.is_file()
    assert_nothing_installed(home)
    good = tmp_path / "m.zip"
    good.write_bytes(bundle_zip)
    folder = pull(NAME, source=str(good))
    assert good.is_file() and json.loads((folder / MANIFEST).read_text())["source"] == str(good.resolve())


def test_unpublished_checksum_is_pinned_and_a_changed_file_refused(tmp_path, monkeypatch, server, home, bundle_zip):
    server.files["/m.zip"] = Served(bundle_zip)
    catalogue(tmp_path, monkeypatch, [server.url("/m.zip")], None)
    pull(NAME)
    pinned = json.loads((home / ".catalogue-pins.json").read_text())[f"{NAME}@1.0.0"]
    assert pinned == hashlib.sha256(bundle_zip).hexdigest()
    (home / NAME / MANIFEST).unlink()  # forget the install: the next pull downloads again
    server.files["/m.zip"] = Served(bundle_zip[:-1] + b"x")
    with pytest.raises(CTDeepSegError, match=r"SHA256 .* differs from the expected"):
        pull(NAME)


def test_tampered_installed_model_is_refused_at_load(tmp_path, monkeypatch, server, home, bundle_zip):
    server.files["/m.zip"] = Served(bundle_zip)
    catalogue(tmp_path, monkeypatch, [server.url("/m.zip")], sha1(bundle_zip))
    folder = pull(NAME)
    config = folder / "configs" / "inference.json"
    config.write_text(config.read_text().replace("-57", "-60"))
    with pytest.raises(CTDeepSegError, match=r"inference\.json: differs from the file installed .* `ctdeepseg pull"):
        open_model(NAME)


def _bad_zip(tmp_path, monkeypatch, server, data: bytes) -> None:
    server.files["/m.zip"] = Served(data)
    catalogue(tmp_path, monkeypatch, [server.url("/m.zip")], sha1(data))


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/evil.txt", "spleen_test/../../evil.txt"])
def test_zip_paths_outside_the_folder_are_refused(tmp_path, monkeypatch, server, home, bundle_zip, member):
    buffer = io.BytesIO(bundle_zip)
    with zipfile.ZipFile(buffer, "a") as archive:
        archive.writestr(member, b"x")
    _bad_zip(tmp_path, monkeypatch, server, buffer.getvalue())
    with pytest.raises(CTDeepSegError, match=r"points outside the model folder; refusing the zip"):
        pull(NAME)
    assert_nothing_installed(home)
    assert not (home / "evil.txt").exists() and not (home.parent / "evil.txt").exists()


def test_zip_bomb_is_refused(tmp_path, monkeypatch, server, home):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open(f"{NAME}/models/model.pt", "w") as member:
            block = bytes(1 << 20)
            for _ in range(300):
                member.write(block)
    _bad_zip(tmp_path, monkeypatch, server, buffer.getvalue())
    with pytest.raises(CTDeepSegError, match=r"would unpack to 0\.3 GB from 0\.\d MB; .*zip bomb"):
        pull(NAME)
    assert_nothing_installed(home)


def test_bundle_with_code_in_its_config_is_not_installed(tmp_path, monkeypatch, server, home):
    folder = spleen_bundle(tmp_path / "b" / NAME, network_args=SMALL_UNET)
    config = json.loads((folder / "configs" / "inference.json").read_text())
    config["preprocessing"]["transforms"][3]["pixdim"] = "$__import__('os').system('echo owned')"
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    _bad_zip(tmp_path, monkeypatch, server, zip_folder(folder, NAME))
    message = (
        r"^spleen_test/configs/inference\.json Spacingd\.pixdim: .* uses a call of __import__.* Nothing was installed"
    )
    with pytest.raises(CTDeepSegError, match=message):
        pull(NAME)
    assert_nothing_installed(home)


class Payload:
    """An object only pickle can rebuild: what a checkpoint that runs code on load contains."""

    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoint_that_needs_code_to_unpickle_is_not_installed(tmp_path, monkeypatch, server, home, capsys):
    folder = spleen_bundle(tmp_path / "b" / NAME, network_args=SMALL_UNET, publish_hash=False)
    with open(folder / "models" / "model.pt", "wb") as stream:
        torch.save({"state_dict": Payload()}, stream, pickle_module=pickle)
    _bad_zip(tmp_path, monkeypatch, server, zip_folder(folder, NAME))
    with pytest.raises(CTDeepSegError, match=r"model\.pt: not a plain weights file"):
        pull(NAME)
    assert "code ran" not in capsys.readouterr().out
    assert_nothing_installed(home)


def test_non_commercial_licence_needs_acceptance_before_any_download(tmp_path, monkeypatch, server, home):
    catalogue(
        tmp_path,
        monkeypatch,
        [server.url("/m.zip")],
        "0" * 40,
        licence={"name": "research only", "non_commercial": True},
    )
    with pytest.raises(CTDeepSegError, match=r"NON-COMMERCIAL use only\)\. Read it, then run again with --accept"):
        pull(NAME)
    assert server.log == []


def test_unsupported_model_is_refused_before_any_download(tmp_path, monkeypatch, server, home):
    catalogue(tmp_path, monkeypatch, [server.url("/m.zip")], None, supported=False, why_not="a 2D image generator")
    with pytest.raises(CTDeepSegError, match=r"cannot run in CTDeepSeg: a 2D image generator\. Nothing was downloaded"):
        pull(NAME)
    assert server.log == []


def test_command_line_pull_and_available_listing(tmp_path, monkeypatch, server, home, bundle_zip, capsys):
    server.files["/m.zip"] = Served(bundle_zip)
    catalogue(tmp_path, monkeypatch, [server.url("/m.zip")], sha1(bundle_zip))
    assert main(["models", "--available"]) == 0
    assert "spleen_test@1.0.0" in capsys.readouterr().out
    assert main(["pull", f"{NAME}@1.0.0"]) == 0
    out = capsys.readouterr()
    assert f"installed in {home / NAME}; use it with --model {NAME}" in out.out
    assert "licence: Apache-2.0" in out.err
    assert main(["models", "--available"]) == 0
    assert "installed 1.0.0" in capsys.readouterr().out
    assert main(["pull", f"{NAME}@9.9"]) == 2
    assert "has no version '9.9' in the catalogue; versions: 1.0.0" in capsys.readouterr().err


def test_auto3dseg_zip_with_a_nested_folder_installs_and_pins_its_checksum(tmp_path, monkeypatch, server, home):
    from monai.networks.nets import SegResNetDS

    network = SegResNetDS(init_filters=4, blocks_down=[1, 1], in_channels=1, out_channels=3, norm="INSTANCE")
    config = {
        "network": {"_target_": "SegResNetDS", "init_filters": 4, "blocks_down": [1, 1], "in_channels": 1},
        "resample_resolution": [3.0, 3.0, 3.0],
        "normalize_mode": "range",
        "intensity_bounds": [-200.0, 300.0],
        "roi_size": [32, 32, 32],
    }
    config["network"]["out_channels"], config["network"]["norm"] = 3, "INSTANCE_NVFUSER"
    buffer = io.BytesIO()
    weights = io.BytesIO()
    torch.save({"state_dict": network.state_dict(), "config": config}, weights)
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("abdomen-v1.0.0/model/model.pt", weights.getvalue())
        archive.writestr("abdomen-v1.0.0/model/labels.csv", "LabelValue,Name\n1,liver\n2,spleen\n")
    data = buffer.getvalue()
    server.files["/abdomen-v1.0.0.zip"] = Served(data)
    catalogue(tmp_path, monkeypatch, [server.url("/abdomen-v1.0.0.zip")], None, format="auto3dseg-segresnet")
    folder = pull(NAME)
    assert sorted(path.name for path in folder.iterdir()) == [MANIFEST, "labels.csv", "model.pt"]
    card, _ = open_model(NAME)
    assert [label.name for label in card.labels] == ["liver", "spleen"] and card["spacing"] == [3.0, 3.0, 3.0]
    pins = json.loads((home / ".catalogue-pins.json").read_text())
    assert pins == {f"{NAME}@1.0.0": hashlib.sha256(data).hexdigest()}


def test_zip_without_a_model_is_refused(tmp_path, monkeypatch, server, home):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "no model here")
    _bad_zip(tmp_path, monkeypatch, server, buffer.getvalue())
    with pytest.raises(CTDeepSegError, match=r"m\.zip: holds no models .* Nothing was installed"):
        pull(NAME)
    assert_nothing_installed(home)
