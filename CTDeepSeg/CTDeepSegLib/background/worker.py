"""The child side: ``python -m CTDeepSegLib.background.worker TASK_FOLDER`` runs one engine action.

The task folder holds ``request.json`` (written by ``runner.EngineProcess``): the action's name, which must be
in ``actions.ACTIONS``, and its arguments. Progress goes to stdout as one line per update,
``PROGRESS_PREFIX`` followed by JSON (fraction, message, elapsed and remaining seconds), at most ten a second.
The outcome is ``result.json`` on success (exit status 0), or ``error.json`` with the kind of failure
(``error``: a problem the user can fix; ``cancelled``; ``bug``: with its traceback) and exit status 2, 3 or 1.
SIGTERM cancels the work at its next progress update, so ``finally`` blocks clean up as they do on Cancel.
"""

from __future__ import annotations

import faulthandler
import json
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


def _fail(folder: Path, kind: str, message: str, detail: str = "") -> None:
    (folder / "error.json").write_text(json.dumps({"kind": kind, "message": message, "detail": detail}))


def run(folder: Path) -> int:
    """Run the task in ``folder``; returns the exit status."""
    from ..actions import ACTIONS

    progress = Progress(_Reporter())
    signal.signal(signal.SIGTERM, lambda *_: progress.cancel())
    try:
        request = transfer.load(folder, "request")
        action = ACTIONS.get(request["action"])
        if action is None:
            raise CTDeepSegError(f"Unknown engine action {request['action']!r}; the module and engine differ.")
        result = action(*request["args"], progress=progress, **request["kwargs"])
        transfer.dump(result, folder, "result")
        return EXIT_OK
    except CancelledError as error:
        _fail(folder, "cancelled", str(error))
        return EXIT_CANCELLED
    except CTDeepSegError as error:
        _fail(folder, "error", str(error))
        return EXIT_ERROR
    except BaseException as error:  # a bug: the parent shows the message and keeps the traceback
        detail = traceback.format_exc()
        sys.stderr.write(detail)
        _fail(folder, "bug", f"{type(error).__name__}: {error}", detail)
        return EXIT_BUG


def main(argv: list[str] | None = None) -> int:
    faulthandler.enable()  # a crash in native code still leaves a Python traceback in the log
    arguments = sys.argv[1:] if argv is None else argv
    return run(Path(arguments[0]))


if __name__ == "__main__":
    sys.exit(main())
