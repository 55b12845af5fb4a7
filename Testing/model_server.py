"""A real HTTP server on 127.0.0.1 (random port) that serves test-made model zips and misbehaves on request,
and the test catalogue that points at it.

It answers ``Range`` requests (206 with ``Content-Range``, an ``ETag`` for ``If-Range``), and per file can: drop
the connection after some bytes for the first few requests, never send past an offset (a truncated file), answer
with a fixed status, or pace its sending. Requests whose path is an absolute URL are what a client sends to a
proxy; they are served too, so one server also stands in for an HTTP proxy. Every request is logged.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

NAME = "spleen_test"  # the catalogue name of the test-made bundle
SMALL_UNET = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8, 16],
    "strides": [2, 2],
    "num_res_units": 1,
    "norm": "batch",
}


@dataclass
class Served:
    data: bytes
    status: int = 200
    drop_after: int | None = None  # close the connection after this many bytes of a response ...
    drops: int = 0  # ... for this many responses
    truncate_at: int | None = None  # never send bytes at or beyond this offset (but announce the full length)
    pace_s: float = 0.0  # pause between 64 KiB blocks
    ignore_range: bool = False


@dataclass
class ModelServer:
    files: dict[str, Served] = field(default_factory=dict)
    log: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = urlsplit(self.path).path if self.path.startswith("http") else self.path
                server.log.append({"path": self.path, "range": self.headers.get("Range"), "host": self.headers["Host"]})
                served = server.files.get(path)
                if served is None:
                    self._empty(404)
                    return
                if served.status != 200:
                    self._empty(served.status)
                    return
                data = served.data
                etag = '"' + hashlib.sha1(data).hexdigest() + '"'
                start = 0
                wanted = self.headers.get("Range")
                if_range = self.headers.get("If-Range")
                if wanted and not served.ignore_range and (if_range is None or if_range == etag):
                    start = int(wanted.split("=", 1)[1].split("-", 1)[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("ETag", etag)
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                stop = len(data) if served.truncate_at is None else min(len(data), served.truncate_at)
                if served.drops > 0 and served.drop_after is not None:
                    served.drops -= 1
                    stop = min(stop, start + served.drop_after)
                for offset in range(start, stop, 1 << 16):
                    try:
                        self.wfile.write(data[offset : min(offset + (1 << 16), stop)])
                        self.wfile.flush()
                    except OSError:
                        return
                    if served.pace_s:
                        time.sleep(served.pace_s)
                self.close_connection = stop < len(data)

            def _empty(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def zip_folder(folder: Path, top: str, padding: int = 0) -> bytes:
    """A zip of ``folder`` under ``top/`` as the Model Zoo packs bundles; ``padding`` random bytes in docs/."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{top}/{path.relative_to(folder).as_posix()}")
        if padding:
            archive.writestr(f"{top}/docs/padding.bin", np.random.default_rng(0).bytes(padding))
    return buffer.getvalue()


def catalogue(tmp_path: Path, monkeypatch, urls: list[str], sha1: str | None, **changes) -> Path:
    """A catalogue with one runnable bundle entry (``NAME``), used instead of the shipped one."""
    entry = {
        "name": NAME,
        "title": "Spleen (test)",
        "description": "test bundle",
        "source": "test",
        "format": "monai-bundle",
        "task": "segmentation",
        "modality": "CT",
        "region": "abdomen",
        "structures": [{"name": "spleen"}],
        "licence": {"name": "Apache-2.0", "non_commercial": False},
        "versions": [{"version": "1.0.0", "urls": urls, "sha1": sha1}],
        "size_bytes": None,
        "published_speed": None,
        "supported": True,
        "why_not": None,
        **changes,
    }
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps({"schema": 1, "models": [entry]}))
    monkeypatch.setenv("CTDEEPSEG_CATALOGUE", str(path))
    return path
