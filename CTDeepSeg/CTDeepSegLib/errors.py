"""The one error type the engine raises for problems a user can fix.

Callers (the Slicer panel, the command line, scripts) catch ``CTDeepSegError`` and show its message as is,
so every message names the thing at fault (usually a file) and says what to do about it. Programming
errors keep their ordinary Python exception types so they are not mistaken for bad input.
"""

from __future__ import annotations


class CTDeepSegError(Exception):
    """A problem with the user's input or environment, with a message meant to be shown to them."""


class CancelledError(CTDeepSegError):
    """Raised inside long work when the user pressed Cancel; the work leaves no partial output behind."""


class EngineError(CTDeepSegError):
    """The engine's child process failed unexpectedly (a bug, or a crash such as a segmentation fault or the
    system killing it for memory). ``detail`` holds its traceback or last output, for the log and the
    error dialog's details."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail
