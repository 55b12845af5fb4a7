"""Unpack a model zip without trusting it.

Why: a zip names its own paths and sizes. A member named ``/etc/x`` or ``../../x`` would write outside the
model folder, a symbolic link would point anywhere, and a few kilobytes can claim (or expand to) many gigabytes.
Every member is checked before anything is written, and the bytes actually written are counted against the
sizes the zip declared, so a lying header cannot fill the disk either.
"""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path, PurePosixPath

from ..errors import CTDeepSegError

MAX_UNPACKED_BYTES = 40 * 1024**3  # the largest real models (whole body at 1.5 mm) are well under 2 GB
MAX_RATIO = 200  # weights barely compress (ratio ~1.1); a zip bomb reaches ratios of 1000 and more
_RATIO_FLOOR = 64 * 1024**2  # below this many bytes any ratio is harmless (configs are text)


def _member_path(info: zipfile.ZipInfo, where: str) -> PurePosixPath:
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in path.parts:
        raise CTDeepSegError(f"{where}: member {info.filename!r} points outside the model folder; refusing the zip.")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise CTDeepSegError(f"{where}: member {info.filename!r} is a symbolic link; refusing the zip.")
    return path


def unpack(archive: Path, destination: Path, max_bytes: int = MAX_UNPACKED_BYTES, max_ratio: float = MAX_RATIO) -> None:
    """Extract ``archive`` into the empty folder ``destination`` after checking every member."""
    where = str(archive)
    try:
        bundle = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise CTDeepSegError(f"{where}: not a zip file (damaged or not a model archive).") from None
    with bundle:
        members = bundle.infolist()
        paths = [_member_path(info, where) for info in members]
        declared = sum(info.file_size for info in members)
        packed = max(sum(info.compress_size for info in members), 1)
        if declared > max_bytes or (declared > _RATIO_FLOOR and declared / packed > max_ratio):
            raise CTDeepSegError(
                f"{where}: would unpack to {declared / 1e9:.1f} GB from {packed / 1e6:.1f} MB; that is not a "
                "model (a zip bomb?). Nothing was installed."
            )
        try:
            _extract(bundle, members, paths, destination, where)
        except zipfile.BadZipFile as error:
            raise CTDeepSegError(f"{where}: damaged zip ({error}); download it again.") from None


def _extract(bundle: zipfile.ZipFile, members: list, paths: list, destination: Path, where: str) -> None:
    for info, path in zip(members, paths):
        target = destination.joinpath(*path.parts)
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with bundle.open(info) as source, open(target, "wb") as sink:
            for block in iter(lambda source=source: source.read(1 << 20), b""):
                written += len(block)
                if written > info.file_size:
                    raise CTDeepSegError(
                        f"{where}: member {info.filename!r} unpacks to more than the size it declares; "
                        "refusing the zip."
                    )
                sink.write(block)
