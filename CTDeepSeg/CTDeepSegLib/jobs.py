"""Progress, ETA and cancellation for long work.

Engine functions take an optional ``Progress`` and call ``progress.update(fraction, message)`` often (at least
once a second of work). ``update`` raises ``CancelledError`` once cancel was requested, so cancelling needs no
extra code in the engine beyond cleaning up in ``finally`` blocks. Scripts and tests call the function directly
(blocking) with a ``Progress`` of their own; the Slicer panel runs it in a child process
(``background.runner``), whose worker turns each update into a progress line and SIGTERM into cancel.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import CancelledError


@dataclass(frozen=True)
class ProgressInfo:
    fraction: float
    message: str
    elapsed_s: float
    eta_s: float | None

    def __str__(self) -> str:
        eta = "" if self.eta_s is None else f", about {self.eta_s:.0f} s left"
        return f"{self.fraction:6.1%} {self.message}{eta}"


class Progress:
    """Receives progress from long work, estimates time left, and carries the cancel request into it."""

    def __init__(
        self,
        callback: Callable[[ProgressInfo], None] | None = None,
        cancel_event: threading.Event | None = None,
        _span: tuple[float, float] = (0.0, 1.0),
        _started: float | None = None,
    ) -> None:
        self.callback = callback
        self.cancel_event = cancel_event or threading.Event()
        self._span = _span
        self._started = time.monotonic() if _started is None else _started

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check(self) -> None:
        """Raise ``CancelledError`` if cancel was requested."""
        if self.cancel_event.is_set():
            raise CancelledError("Cancelled by the user; nothing was written.")

    def update(self, fraction: float, message: str = "") -> None:
        """Report ``fraction`` (0..1) of this step done; raises ``CancelledError`` if cancel was requested."""
        self.check()
        low, high = self._span
        overall = low + (high - low) * min(max(fraction, 0.0), 1.0)
        elapsed = time.monotonic() - self._started
        eta = elapsed * (1 - overall) / overall if overall > 0.02 else None
        if self.callback is not None:
            self.callback(ProgressInfo(overall, message, elapsed, eta))

    def step(self, start: float, end: float) -> "Progress":
        """A child progress whose 0..1 covers ``start``..``end`` of this one (for nested stages)."""
        low, high = self._span
        return Progress(
            self.callback, self.cancel_event, (low + (high - low) * start, low + (high - low) * end), self._started
        )
