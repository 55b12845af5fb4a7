"""Streamed, resumable, verified downloads.

Why: the anchors' users lose models to proxies, host outages, connections that stall at 86 % and downloads
repeated on every run. Here a download streams into ``<file>.part`` beside its target, resumes with an HTTP
``Range`` request after a dropped connection or an interrupted run (``If-Range`` guards against the file having
changed on the server), honours ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY`` (requests reads them), tries each
URL in turn (a mirror first when given), and reports bytes, rate and time left. The file only takes its final
name once its checksum matches; a mismatch deletes it. Nothing is unpacked here.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import CTDeepSegError
from ..jobs import Progress

_CHUNK = 1 << 20  # hashing
_BLOCK = 1 << 16  # receiving: a dropped connection loses at most the block in flight
# Statuses worth retrying: the host or a proxy in the way is briefly unavailable.
_TRANSIENT = {408, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class Checksum:
    """Expected digests of a file (any of them may be None; every one given must match)."""

    sha256: str | None = None
    sha1: str | None = None

    def known(self) -> bool:
        return bool(self.sha256 or self.sha1)


def file_digests(path: Path) -> dict[str, str]:
    """SHA-256 and SHA-1 of a file, read once."""
    sha256, sha1 = hashlib.sha256(), hashlib.sha1()  # noqa: S324 (SHA-1 is what the Model Zoo publishes)
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(_CHUNK), b""):
            sha256.update(block)
            sha1.update(block)
    return {"sha256": sha256.hexdigest(), "sha1": sha1.hexdigest()}


def mismatch(digests: dict[str, str], expected: Checksum, reference: str) -> str | None:
    """``"SHA1 abc... differs from <reference> def..."`` for the first digest that differs, else None."""
    for kind in ("sha256", "sha1"):
        want = getattr(expected, kind)
        if want and digests[kind] != want.lower():
            return f"{kind.upper()} {digests[kind][:12]}... differs from {reference} {want[:12]}..."
    return None


def verify(path: Path, expected: Checksum, what: str) -> dict[str, str]:
    """The file's digests, after checking them against ``expected``; a mismatch deletes the file."""
    digests = file_digests(path)
    difference = mismatch(digests, expected, "the expected")
    if difference:
        path.unlink()
        raise CTDeepSegError(
            f"{what}: {difference}; the file was deleted and nothing was installed. "
            "Download it again, or from another mirror."
        )
    return digests


def _describe(count: float) -> str:
    return f"{count / 1e6:.1f} MB"


class _DroppedError(Exception):
    """The connection ended before the whole file arrived (the part already written is kept)."""


class _HttpError(Exception):
    def __init__(self, status: int, url: str) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.url = url


def _sidecar(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _report(progress: Progress | None, done: int, total: int | None, started: float, resumed_at: int) -> None:
    if progress is None:
        return
    rate = (done - resumed_at) / max(time.monotonic() - started, 1e-6)
    if total:
        left = (total - done) / rate if rate > 0 else None
        tail = f", about {left:.0f} s left" if left is not None else ""
        progress.update(
            done / total, f"downloaded {_describe(done)} of {_describe(total)} at {_describe(rate)}/s{tail}"
        )
    else:
        progress.update(0.0, f"downloaded {_describe(done)} at {_describe(rate)}/s (size not announced)")


def _attempt(session, url: str, part: Path, progress: Progress | None, timeout: float) -> None:
    """One request: continue ``part`` from its current size, or start it over when the server cannot."""
    offset = part.stat().st_size if part.exists() else 0
    state = json.loads(_sidecar(part).read_text()) if offset and _sidecar(part).is_file() else {}
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if state.get("url") == url and state.get("validator"):
            headers["If-Range"] = state["validator"]
    with session.get(url, stream=True, timeout=timeout, headers=headers, allow_redirects=True) as response:
        if response.status_code == 416 and offset:  # nothing left to send: the part may already be whole
            total = state.get("total")
            if total == offset:
                return
            part.unlink()
            raise _DroppedError()
        if response.status_code not in (200, 206):
            raise _HttpError(response.status_code, url)
        resumed = response.status_code == 206 and response.headers.get("Content-Range", "").startswith(
            f"bytes {offset}-"
        )
        if not resumed:
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
        _sidecar(part).write_text(json.dumps({"url": url, "validator": validator, "total": total}))
        if total is not None:
            _check_space(part.parent, total - offset)
        started = time.monotonic()
        done = offset
        last = 0.0
        with open(part, "ab" if resumed else "wb") as stream:
            try:
                for block in response.iter_content(_BLOCK):
                    stream.write(block)
                    done += len(block)
                    if time.monotonic() - last > 0.25:
                        last = time.monotonic()
                        _report(progress, done, total, started, offset)
            except OSError as error:
                if error.errno == errno.ENOSPC:
                    raise CTDeepSegError(
                        f"{part.parent}: the disk is full after {_describe(done)}; free some space and run the "
                        "same command again (the download resumes)."
                    ) from None
                raise
        _report(progress, done, total, started, offset)
        if total is not None and done < total:
            raise _DroppedError()


def _check_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise CTDeepSegError(
            f"{folder}: {_describe(free)} free, the download needs {_describe(needed)}; free some space "
            "(or point XDG_DATA_HOME / LOCALAPPDATA elsewhere) and run it again. Nothing was installed."
        )


def candidate_urls(urls: Sequence[str], mirror: str | None) -> list[str]:
    """The mirror's copy of each file first (``<mirror>/<file name>``), then the published URLs."""
    mirror = mirror or os.environ.get("CTDEEPSEG_MIRROR")
    mirrored = [f"{mirror.rstrip('/')}/{urlsplit(url).path.rsplit('/', 1)[-1]}" for url in urls] if mirror else []
    return list(dict.fromkeys([*mirrored, *urls]))


def download(
    urls: Sequence[str],
    target: Path,
    expected: Checksum,
    progress: Progress | None = None,
    attempts: int = 5,
    backoff_s: float = 1.0,
    timeout: float = 30.0,
) -> dict[str, str]:
    """Download the first URL that works into ``target``, verified; returns its digests.

    A dropped connection or a transient HTTP status is retried ``attempts`` times per URL with a growing pause,
    each time resuming where the part ended. Cancel (``progress``) and Ctrl-C keep the part for the next run.
    """
    import requests

    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    failures: list[str] = []
    with requests.Session() as session:
        session.headers["User-Agent"] = "CTDeepSeg model download"
        for url in urls:
            for attempt in range(attempts):
                try:
                    _attempt(session, url, part, progress, timeout)
                except _HttpError as error:
                    failures.append(f"{url}: HTTP {error.status}")
                    if error.status in _TRANSIENT and attempt + 1 < attempts:
                        time.sleep(backoff_s * 2**attempt)
                        continue
                    break
                except (_DroppedError, requests.exceptions.ChunkedEncodingError, requests.exceptions.Timeout) as error:
                    failures.append(f"{url}: connection dropped ({type(error).__name__})")
                    if attempt + 1 < attempts:
                        time.sleep(backoff_s * 2**attempt)
                        continue
                    break
                except requests.exceptions.ConnectionError as error:
                    failures.append(f"{url}: cannot connect ({_reason(error)})")
                    if attempt + 1 < min(attempts, 2):  # no route or no name: one more try, then the next URL
                        time.sleep(backoff_s * 2**attempt)
                        continue
                    break
                else:
                    try:
                        digests = verify(part, expected, url)
                    finally:
                        _sidecar(part).unlink(missing_ok=True)
                    os.replace(part, target)
                    return digests
    kept = f"; {_describe(part.stat().st_size)} kept in {part} resumes on the next try" if part.exists() else ""
    last = {failure.split(": ", 1)[0]: failure for failure in failures}  # the last failure of each URL
    raise CTDeepSegError(
        f"Download failed: {'; '.join(last.values()) or 'no URL to try'}{kept}. Check the network and proxy "
        "(HTTPS_PROXY, HTTP_PROXY, NO_PROXY), try --mirror, or download the file elsewhere and install it with --from."
    )


def _reason(error: Exception) -> str:
    text = str(error)
    for marker in ("Connection refused", "Name or service not known", "timed out", "Temporary failure", "No route"):
        if marker in text:
            return marker.lower()
    return type(error).__name__
