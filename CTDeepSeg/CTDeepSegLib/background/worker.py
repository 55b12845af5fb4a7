"""The child side: ``python -m CTDeepSegLib.background.worker TASK_FOLDER`` runs one engine action.

The task folder holds ``request.json`` (written by ``runner.EngineProcess``): the action's name, which must be
in ``actions.ACTIONS``, and its arguments. Progress goes to stdout as one line per update,
``PROGRESS_PREFIX`` followed by JSON (fraction, message, elapsed and remaining seconds), at most ten a second.
The outcome is ``result.json`` on success (exit status 0), or ``error-result.json`` with the kind of failure
(``error``: a problem the user can fix; ``cancelled``; ``bug``: with its traceback) and exit status 2, 3 or 1.
SIGTERM cancels the work at its next progress update, so ``finally`` blocks clean up as they do on Cancel.

``--serve FOLDER`` keeps the process up for a series of requests (``session.EngineSession``): interactive
clicks, where starting Python and loading torch for every click would cost seconds.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from ..errors import CancelledError, CTDeepSegError
from ..jobs import Progress, ProgressInfo
from . import transfer

PROGRESS_PREFIX = "@ctdeepseg-progress "
EXIT_OK, EXIT_BUG, EXIT_ERROR, EXIT_CANCELLED = 0, 1, 2, 3


class _Reporter:
    """Prints progress lines, rate-limited so a fast inner loop cannot flood the parent's log."""

    def __init__(self) -> None:
        self._last = 0.0

    def __call__(self, info: ProgressInfo) -> None:
        now = time.monotonic()
        if now - self._last < 0.1 and info.fraction < 1.0:
            return
        self._last = now
        record = {"fraction": info.fraction, "message": info.message, "elapsed_s": info.elapsed_s, "eta_s": info.eta_s}
        sys.stdout.write(PROGRESS_PREFIX + json.dumps(record) + "\n")
        sys.stdout.flush()


def _answer(folder: Path, progress: Progress, request: str, result: str) -> int:
    """Run the request ``<request>.json`` in ``folder``; write ``<result>.json`` or ``error-<result>.json``."""
    from ..actions import ACTIONS

    def fail(kind: str, message: str, detail: str = "") -> None:
        record = {"kind": kind, "message": message, "detail": detail}
        (folder / f"error-{result}.json").write_text(json.dumps(record))

    try:
        call = transfer.load(folder, request)
        action = ACTIONS.get(call["action"])
        if action is None:
            raise CTDeepSegError(f"Unknown engine action {call['action']!r}; the module and engine differ.")
        transfer.dump(action(*call["args"], progress=progress, **call["kwargs"]), folder, result)
        return EXIT_OK
    except CancelledError as error:
        fail("cancelled", str(error))
        return EXIT_CANCELLED
    except CTDeepSegError as error:
        fail("error", str(error))
        return EXIT_ERROR
    except BaseException as error:  # a bug: the parent shows the message and keeps the traceback
        detail = traceback.format_exc()
        sys.stderr.write(detail)
        fail("bug", f"{type(error).__name__}: {error}", detail)
        return EXIT_BUG


def run(folder: Path) -> int:
    """Run the task in ``folder``; returns the exit status."""
    progress = Progress(_Reporter())
    signal.signal(signal.SIGTERM, lambda *_: progress.cancel())
    return _answer(folder, progress, "request", "result")


def serve(folder: Path, poll_s: float = 0.01) -> int:
    """Answer ``request-<n>.json`` in order, n = 0, 1, ..., staying up between them (models stay loaded) until
    ``stop`` appears in the folder or the parent goes away."""
    parent = os.getppid()
    number = 0
    while not (folder / "stop").exists():
        if transfer.exists(folder, f"request-{number}"):
            _answer(folder, Progress(_Reporter()), f"request-{number}", f"result-{number}")
            (folder / f"done-{number}").write_text("")
            number += 1
        elif os.getppid() != parent:  # orphaned: the parent died without stopping us
            return EXIT_OK
        else:
            time.sleep(poll_s)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    faulthandler.enable()  # a crash in native code still leaves a Python traceback in the log
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[0] == "--serve":
        return serve(Path(arguments[1]))
    return run(Path(arguments[0]))


if __name__ == "__main__":
    sys.exit(main())
