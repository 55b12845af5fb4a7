"""Slicer's main loop, imitated: the main thread holds Python's GIL while it idles.

In Slicer, PythonQt does not release the GIL when control returns to Qt's C++ event loop, so the main thread
holds it except while Python code runs (a timer callback every 100 ms). Sleeping inside a ``ctypes.PyDLL``
call keeps the GIL the same way (PyDLL does not release it), as C++ entered from PythonQt does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable


def slicer_like_main_loop(finished: Callable[[], bool], poll: Callable[[], object], deadline: float = float("inf")):
    """Hold the GIL for 100 ms at a time, run ``poll`` in between, until ``finished()`` or ``deadline``."""
    libc = ctypes.PyDLL(ctypes.util.find_library("c"))
    while not finished() and time.monotonic() < deadline:
        libc.usleep(100_000)
        poll()


def free_running_loop(finished: Callable[[], bool], poll: Callable[[], object]) -> None:
    """The same polling with the GIL released between polls, as a plain script does."""
    while not finished():
        time.sleep(0.1)
        poll()
