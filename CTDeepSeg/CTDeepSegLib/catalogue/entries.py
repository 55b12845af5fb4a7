"""The shipped model catalogue (``Resources/Catalogue/models.json``, data built by ``tools/build_catalogue.py``).

Each entry names a downloadable model (MONAI Model Zoo bundle or MONAIAuto3DSeg model): title, task, modality,
region, structures with terminology codes where known, licence (``non_commercial`` true, false, or null when
not stated), published speed, whether CTDeepSeg's pipeline runs it (and why not), and its versions with URLs and
the checksum published for each zip. Zips published without a checksum get their SHA-256 pinned on the first
verified install (``pins``), and every later download is checked against the pin.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_text_atomic
from ..errors import CTDeepSegError
from .download import Checksum

CATALOGUE = Path(__file__).resolve().parents[2] / "Resources" / "Catalogue" / "models.json"


@dataclass(frozen=True)
class Release:
    """One downloadable version of a catalogue model."""

    entry: dict
    version: str
    urls: tuple[str, ...]
    sha1: str | None

    @property
    def name(self) -> str:
        return self.entry["name"]

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def file_name(self) -> str:
        return self.urls[0].rsplit("/", 1)[-1].split("?", 1)[0] or f"{self.name}-{self.version}.zip"

    def licence_line(self) -> str:
        licence = self.entry["licence"]
        flag = {True: " (NON-COMMERCIAL use only)", None: " (licence not stated: check it before use)"}
        return f"licence: {licence['name']}{flag.get(licence['non_commercial'], '')}"


def size_text(entry: dict, unknown: str) -> str:
    """A catalogue model's download size, or ``unknown`` (neither source publishes sizes yet)."""
    return f"{entry['size_bytes'] / 1e6:.0f} MB" if entry.get("size_bytes") else unknown


def catalogue_path() -> Path:
    return Path(os.environ.get("CTDEEPSEG_CATALOGUE") or CATALOGUE)


def load_catalogue(path: Path | None = None) -> list[dict]:
    path = path or catalogue_path()
    try:
        return json.loads(Path(path).read_text())["models"]
    except (OSError, ValueError, KeyError) as error:
        raise CTDeepSegError(f"{path}: the model catalogue cannot be read ({error}); reinstall CTDeepSeg.") from None


def find_release(spec: str, entries: list[dict] | None = None) -> Release:
    """``NAME`` (newest version) or ``NAME@VERSION`` from the catalogue, with a message listing what exists."""
    entries = load_catalogue() if entries is None else entries
    name, _, version = spec.partition("@")
    entry = next((item for item in entries if item["name"] == name), None)
    if entry is None:
        close = [item["name"] for item in entries if name.lower() in item["name"].lower()]
        hint = f" Did you mean {', '.join(close[:5])}?" if close else " `ctdeepseg models --available` lists them."
        raise CTDeepSegError(f"No model {name!r} in the catalogue.{hint}")
    versions = entry["versions"]
    chosen = versions[0] if not version else next((v for v in versions if v["version"] == version), None)
    if chosen is None:
        listed = ", ".join(v["version"] for v in versions[:8])
        raise CTDeepSegError(f"{name} has no version {version!r} in the catalogue; versions: {listed}.")
    return Release(entry, chosen["version"], tuple(chosen["urls"]), chosen.get("sha1"))


def release_for_file(path: Path, entries: list[dict] | None = None) -> Release:
    """The catalogue release a downloaded zip is, from its file name as published (an offline import)."""
    entries = load_catalogue() if entries is None else entries
    for entry in entries:
        for version in entry["versions"]:
            if any(url.rsplit("/", 1)[-1].split("?", 1)[0] == path.name for url in version["urls"]):
                return Release(entry, version["version"], tuple(version["urls"]), version.get("sha1"))
    raise CTDeepSegError(
        f"{path.name}: no catalogue model is published under this file name; keep the name it was downloaded "
        "with, or install it with `ctdeepseg pull NAME --from FILE`."
    )


def _pins_path(models: Path) -> Path:
    return models / ".catalogue-pins.json"


def read_pins(models: Path) -> dict[str, str]:
    path = _pins_path(models)
    return json.loads(path.read_text()) if path.is_file() else {}


def expected_checksum(release: Release, models: Path) -> Checksum:
    """The published SHA-1 and the SHA-256 pinned on the first verified install, whichever exist."""
    return Checksum(sha256=read_pins(models).get(release.key), sha1=release.sha1)


def pin(release: Release, models: Path, sha256: str) -> None:
    """Remember the zip's SHA-256 so that every later download of this version must match it."""
    pins = read_pins(models)
    if pins.get(release.key) != sha256:
        pins[release.key] = sha256
        write_text_atomic(_pins_path(models), json.dumps(pins, indent=1, sort_keys=True))
