"""A child process that stays up between requests: for interactive clicks, where a new process per click would
spend seconds starting Python and loading torch and the model before a few hundred milliseconds of work.

Same protocol as ``runner.EngineProcess`` (files in a task folder, no pipes, no threads), numbered: the parent
writes ``request-<n>.json``, the child (``worker --serve``) answers with ``result-<n>.json`` or
``error-result-<n>.json`` and then ``done-<n>``. ``poll`` never blocks. Cancel stops the child (requests run in
order, so a cancelled one cannot be skipped); the next ``submit`` starts a fresh child.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import CancelledError, EngineError
from . import transfer
from .runner import crash_message, launch, read_outcome


class EngineSession:
    """Submit ``actions`` calls to one long-lived child process and collect their results in order."""

    def __init__(self, python: str | None = None, env: dict[str, str] | None = None) -> None:
        self._python, self._env = python, env
        self.folder: Path | None = None
        self._process = None
        self._next = 0
        self._started = 0.0

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _start(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="ctdeepseg-session-"))
        self._process = launch(self._python, self._env, self.folder, "--serve", str(self.folder))
        self._next = 0
        self._started = time.monotonic()

    def submit(self, action: str, *args: Any, **kwargs: Any) -> int:
        """Queue ``actions.ACTIONS[action](*args, **kwargs)``; returns its ticket for ``ready`` and ``result``."""
        if not self.alive:
            self.close()
            self._start()
        ticket = self._next
        transfer.dump({"action": action, "args": list(args), "kwargs": kwargs}, self.folder, f"request-{ticket}")
        self._next += 1
        return ticket

    def ready(self, ticket: int) -> bool:
        """Whether the answer to ``ticket`` is there (or the child has died); never blocks."""
        return (self.folder / f"done-{ticket}").exists() or not self.alive

    def result(self, ticket: int) -> Any:
        """The answer to ``ticket`` (raising the engine's error as ``runner.EngineProcess.result`` does); the
        request's files are removed."""
        if not (self.folder / f"done-{ticket}").exists():
            if self.alive:
                raise RuntimeError("The request is still running; wait until ready().")
            output = (self.folder / "log.txt").read_text(errors="replace")[-4000:]
            returncode = self._process.returncode
            self.close()
            raise EngineError(crash_message(returncode, time.monotonic() - self._started, "answering a click"), output)
        try:
            return read_outcome(self.folder, f"result-{ticket}")
        finally:
            for path in self.folder.glob(f"*-{ticket}.*"):
                path.unlink(missing_ok=True)
            (self.folder / f"done-{ticket}").unlink(missing_ok=True)

    def call(self, action: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Submit and wait (scripts, tests); raises ``CancelledError`` after ``timeout`` seconds."""
        ticket = self.submit(action, *args, **kwargs)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.ready(ticket):
            if deadline is not None and time.monotonic() > deadline:
                self.close()
                raise CancelledError(f"No answer within {timeout:.0f} s; the engine process was stopped.")
            time.sleep(0.005)
        return self.result(ticket)

    def close(self) -> None:
        """Stop the child (politely, then firmly) and remove the folder."""
        if self.folder is not None:
            (self.folder / "stop").write_text("")
        if self._process is not None and self._process.poll() is None:
            try:
                self._process.wait(timeout=2)
            except Exception:  # it did not stop in time
                self._process.kill()
                self._process.wait()
        self._process = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    cancel = close
