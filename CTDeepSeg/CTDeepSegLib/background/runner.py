"""The parent side: start an engine action in a child Python process, poll its progress, cancel it.

Why a process and not a thread: in Slicer the main thread holds Python's GIL while Qt's event loop idles, so a
worker thread only runs while Python code runs on the main thread (about 10x slower work); established
extensions (MONAIAuto3DSeg, TotalSegmentator, SlicerNNUnet) run their work in a child process too. A crash of
torch or CUDA in the child also leaves Slicer running.

No threads and no pipes: the child writes progress lines into a log file in its task folder, and ``poll``
reads what is new, so the panel calls it from a timer and nothing blocks. Inputs and results travel as files
in that folder (``transfer``); the folder is removed when the result has been read, on failure and on Cancel.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

from ..errors import CancelledError, CTDeepSegError, EngineError
from ..jobs import ProgressInfo
from . import transfer
from .worker import EXIT_OK, PROGRESS_PREFIX

ENGINE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding CTDeepSegLib: the child's import path

_SIGNALS = {
    "SIGSEGV": "crashed in native code (segmentation fault)",
    "SIGBUS": "crashed in native code (bus error)",
    "SIGILL": "crashed in native code (illegal instruction)",
    "SIGFPE": "crashed in native code (arithmetic error)",
    "SIGABRT": "aborted",
    "SIGKILL": "was killed, most likely by the operating system for lack of memory",
}


def engine_python(executable: str = sys.executable, which: Any = shutil.which) -> str:
    """The Python that runs the engine: ``executable`` when it is a Python, else Slicer's ``PythonSlicer``.

    Inside Slicer ``sys.executable`` is the application (``SlicerApp-real``), not a Python interpreter;
    Slicer puts its ``PythonSlicer`` launcher on PATH and beside the application, as ``slicer.util``'s
    pip installer relies on."""
    if Path(executable).name.lower().startswith("python"):
        return executable
    found = which("PythonSlicer")
    if found:
        return found
    beside = Path(executable).with_name("PythonSlicer.exe" if os.name == "nt" else "PythonSlicer")
    if beside.is_file():
        return str(beside)
    raise CTDeepSegError(
        f"Slicer's Python launcher (PythonSlicer) was not found on PATH or beside {executable}; reinstall Slicer."
    )


def _exit_reason(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            return f"was stopped by signal {-returncode}"
        return f"{_SIGNALS.get(name, f'was stopped by {name}')} ({name})"
    return f"stopped with exit status {returncode} (0x{returncode & 0xFFFFFFFF:08X}) and no result"


def read_outcome(folder: Path, name: str) -> Any:
    """The value the child wrote as ``<name>.json``, or the error it wrote as ``error-<name>.json`` raised as
    ``CancelledError``, ``CTDeepSegError`` (the engine's own message) or ``EngineError`` (a bug, with details)."""
    error_file = folder / f"error-{name}.json"
    if error_file.is_file():
        error = json.loads(error_file.read_text())
        if error["kind"] == "cancelled":
            raise CancelledError(error["message"])
        if error["kind"] == "error":
            raise CTDeepSegError(error["message"])
        raise EngineError(f"The engine failed: {error['message']}", error["detail"])
    return transfer.load(folder, name)


def child_environment(env: dict[str, str] | None) -> dict[str, str]:
    """``env`` (default this process's) with the engine importable in the child."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ENGINE_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def launch(python: str | None, env: dict[str, str] | None, folder: Path, *arguments: str) -> subprocess.Popen:
    """Start the worker in ``folder`` (its output into ``folder/log.txt``), hidden and detached from stdin."""
    with open(folder / "log.txt", "wb") as log:
        return subprocess.Popen(
            [python or engine_python(), "-m", "CTDeepSegLib.background.worker", *arguments],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_environment(env),
            cwd=str(folder),
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),  # no console window on Windows
        )


def crash_message(returncode: int, seconds: float, doing: str) -> str:
    return (
        f"The engine process {_exit_reason(returncode)} after {seconds:.0f} s while {doing}; Slicer itself is "
        "unaffected and nothing was added. Try again with device 'cpu' or on a smaller volume, and see the details "
        "for its last output."
    )


class EngineProcess:
    """One engine action (``actions.ACTIONS[action](*args, **kwargs)``) running in a child process."""

    def __init__(
        self,
        action: str,
        *args: Any,
        python: str | None = None,
        env: dict[str, str] | None = None,
        grace_s: float = 5.0,
        workdir: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        self.action = action
        self._request = {"action": action, "args": list(args), "kwargs": kwargs}
        self._python = python
        self._env = env
        self._grace_s = grace_s
        self._workdir = workdir
        self.folder: Path | None = None
        self._process: subprocess.Popen | None = None
        self._log = None
        self._pending = ""
        self._output: deque[str] = deque(maxlen=40)
        self._latest = ProgressInfo(0.0, "Starting", 0.0, None)
        self._started = 0.0
        self._cancelled_at: float | None = None

    def start(self) -> EngineProcess:
        self.folder = Path(tempfile.mkdtemp(prefix="ctdeepseg-", dir=self._workdir))
        try:
            transfer.dump(self._request, self.folder, "request")
            self._process = launch(self._python, self._env, self.folder, str(self.folder))
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        self._log = open(self.folder / "log.txt", encoding="utf-8", errors="replace")
        self._started = time.monotonic()
        return self

    # ------------------------------------------------------------------ while it runs
    def poll(self) -> ProgressInfo:
        """Read the progress the child reported since the last call; never blocks. Returns the latest."""
        if self._log is not None:
            self._pending += self._log.read()
            *lines, self._pending = self._pending.split("\n")
            for line in lines:
                if line.startswith(PROGRESS_PREFIX):
                    record = json.loads(line[len(PROGRESS_PREFIX) :])
                    self._latest = ProgressInfo(
                        record["fraction"], record["message"], record["elapsed_s"], record["eta_s"]
                    )
                elif line.strip():
                    self._output.append(line)
        if (
            self._cancelled_at is not None
            and self._process.poll() is None
            and time.monotonic() - self._cancelled_at > self._grace_s
        ):
            self._process.kill()  # it did not stop at its next progress update: stop it now
        return self._latest

    @property
    def latest(self) -> ProgressInfo:
        return self._latest

    @property
    def done(self) -> bool:
        return self._process is not None and self._process.poll() is not None

    @property
    def pid(self) -> int:
        return self._process.pid

    def cancel(self) -> None:
        """Ask the child to stop (SIGTERM: it stops at its next progress update and cleans up); it is killed if
        it has not stopped ``grace_s`` seconds later (``poll`` checks)."""
        if self._process is not None and self._process.poll() is None and self._cancelled_at is None:
            self._cancelled_at = time.monotonic()
            self._process.terminate()

    def wait(self, timeout: float | None = None, interval: float = 0.1) -> Any:
        """Block until done (for scripts and tests) and return ``result()``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                deadline = None
            self.poll()
            time.sleep(interval)
        return self.result()

    # ------------------------------------------------------------------ when it is done
    def output(self) -> str:
        """The child's last lines of output other than progress (warnings, tracebacks)."""
        return "\n".join(self._output)

    def result(self) -> Any:
        """The action's return value; raises ``CancelledError``, ``CTDeepSegError`` (the engine's own message) or
        ``EngineError`` (a bug or crash, with details). Removes the task folder either way."""
        if not self.done:
            raise RuntimeError("The engine process is still running; poll until done.")
        self.poll()
        try:
            return self._outcome()
        finally:
            self.discard()

    def _outcome(self) -> Any:
        if self._process.returncode == EXIT_OK or (self.folder / "error-result.json").is_file():
            return read_outcome(self.folder, "result")
        if self._cancelled_at is not None:
            raise CancelledError("Cancelled by the user; nothing was written.")
        elapsed = time.monotonic() - self._started
        doing = f"running '{self.action}'"
        raise EngineError(crash_message(self._process.returncode, elapsed, doing), self.output())

    def discard(self) -> None:
        """Stop the child if it still runs and remove the task folder (nothing is left behind)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
