"""A real HTTP server on 127.0.0.1 (random port) that serves test-made model zips and misbehaves on request.

It answers ``Range`` requests (206 with ``Content-Range``, an ``ETag`` for ``If-Range``), and per file can: drop
the connection after some bytes for the first few requests, never send past an offset (a truncated file), answer
with a fixed status, or pace its sending. Requests whose path is an absolute URL are what a client sends to a
proxy; they are served too, so one server also stands in for an HTTP proxy. Every request is logged.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


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
