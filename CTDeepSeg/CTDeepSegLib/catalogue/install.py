"""Install a catalogue model: download (or take a zip the user already has), verify, unpack, check, move in.

Why this order: the zip is verified against the catalogue's checksum before a byte of it is unpacked; it is
unpacked into a temporary folder inside the user model folder and the model is loaded there (configs read as
data, weights with ``weights_only``) before one rename puts it in place, so the model folder is either the
complete, working model or untouched. A manifest (``ctdeepseg-install.json``) records where it came from and
the SHA-256 of every file, and every later load checks the files against it. Once installed and verified, a
model is never downloaded again.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from ..errors import CTDeepSegError
from ..jobs import Progress
from ..model_paths import user_models_folder
from .download import candidate_urls, download, file_digests, mismatch
from .entries import Release, expected_checksum, find_release, pin
from .unpack import unpack

MANIFEST = "ctdeepseg-install.json"


def read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def verify_installed(folder: Path) -> None:
    """Check an installed model's files against the SHA-256 recorded at install (nothing to do without one)."""
    from ..model_store import sha256_file

    manifest = read_manifest(folder)
    if manifest is None:
        return
    for relative, expected in manifest["files"].items():
        path = folder / relative
        if not path.is_file() or sha256_file(path) != expected:
            raise CTDeepSegError(
                f"{path}: differs from the file installed from {manifest['source']} (missing, damaged or replaced); "
                f"reinstall it with `ctdeepseg pull {manifest['name']}@{manifest['version']}`."
            )


_MARKERS = ("model.json", "configs/metadata.json", "labels.csv")  # a CTDeepSeg model, a bundle, an Auto3DSeg model


def _model_root(unpacked: Path, where: str) -> Path:
    """The folder holding the model: the zip's root or single top-level folder, else the one folder below
    that holds a model (MONAIAuto3DSeg zips nest it)."""
    entries = [path for path in unpacked.iterdir() if not path.name.startswith(("__MACOSX", "."))]
    root = entries[0] if len(entries) == 1 and entries[0].is_dir() else unpacked
    if any((root / marker).is_file() for marker in _MARKERS):
        return root
    found = {path.parent for path in root.rglob("model.json")} | {path.parent for path in root.rglob("labels.csv")}
    found |= {path.parent.parent for path in root.rglob("configs/metadata.json")}
    if len(found) == 1:
        return found.pop()
    raise CTDeepSegError(
        f"{where}: holds {len(found) or 'no'} models (a model.json, configs/metadata.json or labels.csv with "
        "model.pt); expected exactly one. Nothing was installed."
    )


def check_model(folder: Path) -> str:
    """Load the model as CTDeepSeg will (no code run), so that a model that cannot run is never installed;
    returns its card's name."""
    from ..model_store import open_model

    card, _ = open_model(folder)
    return card.name


def _file_hashes(folder: Path) -> dict[str, str]:
    from ..model_store import sha256_file

    return {
        path.relative_to(folder).as_posix(): sha256_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }


def install_archive(archive: Path, release: Release, digests: dict[str, str], source: str, models: Path) -> Path:
    """Unpack a verified zip into ``models/<name>`` atomically (replacing another version only once this one
    loads)."""
    models.mkdir(parents=True, exist_ok=True)
    target = models / release.name
    staging = Path(tempfile.mkdtemp(prefix=f".{release.name}.installing-", dir=models))
    try:
        unpacked = staging / "unpacked"
        unpacked.mkdir()
        try:
            unpack(archive, unpacked)
        except OSError as error:
            if error.errno == errno.ENOSPC:
                raise CTDeepSegError(f"{models}: the disk is full; free some space. Nothing was installed.") from None
            raise
        root = _model_root(unpacked, archive.name)
        try:
            check_model(root)
        except CTDeepSegError as error:  # name the model's files, not the temporary folder they were checked in
            message = str(error).replace(f"{root}{os.sep}", f"{release.name}/").replace(str(root), release.name)
            raise CTDeepSegError(f"{message} Nothing was installed.") from None
        manifest = {
            "name": release.name,
            "version": release.version,
            "format": release.entry["format"],
            "source": source,
            "zip_sha256": digests["sha256"],
            "zip_sha1": digests["sha1"],
            "licence": release.entry["licence"],
            "installed": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": _file_hashes(root),
        }
        (root / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if target.exists():
            os.replace(target, staging / "previous")
        os.replace(root, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def pull(
    spec: str,
    source: str | None = None,
    mirror: str | None = None,
    progress: Progress | None = None,
    accept_licence: bool = False,
    models: Path | None = None,
    attempts: int = 5,
    backoff_s: float = 1.0,
) -> Path:
    """Install catalogue model ``NAME[@VERSION]``; returns its folder. ``source`` is a zip file or URL to use
    instead of the published URLs (verified the same way); ``mirror`` a base URL tried before them."""
    release = find_release(spec)
    entry = release.entry
    if not entry["supported"]:
        reason = entry["why_not"].rstrip(".")
        raise CTDeepSegError(f"{release.name} cannot run in CTDeepSeg: {reason}. Nothing was downloaded.")
    if entry["licence"]["non_commercial"] is not False and not accept_licence:
        raise CTDeepSegError(
            f"{release.name}: {release.licence_line()}. Read it, then run again with --accept-licence "
            "(the panel asks instead)."
        )
    models = Path(models) if models is not None else user_models_folder()
    target = models / release.name
    manifest = read_manifest(target)
    if manifest is not None and manifest["version"] == release.version:
        verify_installed(target)
        return target
    expected = expected_checksum(release, models)
    if source is not None and not _is_url(source):
        archive = Path(source)
        if not archive.is_file():
            raise CTDeepSegError(f"{archive}: no such file; give the model zip you downloaded.")
        digests = file_digests(archive)
        difference = mismatch(digests, expected, "the catalogue's")
        if difference:  # the user's own file: reported, never deleted
            raise CTDeepSegError(
                f"{archive}: {difference}; it is not the "
                "published model (damaged or another version). Nothing was installed."
            )
        installed = install_archive(archive, release, digests, str(archive.resolve()), models)
    else:
        urls = [source] if source is not None else list(release.urls)
        archive = models / ".downloads" / release.file_name
        step = progress.step(0.0, 0.9) if progress is not None else None
        digests = download(candidate_urls(urls, mirror), archive, expected, step, attempts, backoff_s)
        if progress is not None:
            progress.update(0.92, f"unpacking and checking {release.key}")
        try:
            installed = install_archive(archive, release, digests, urls[0], models)
        finally:
            archive.unlink(missing_ok=True)
    pin(release, models, digests["sha256"])
    if progress is not None:
        progress.update(1.0, f"installed {release.key} in {installed}")
    return installed
