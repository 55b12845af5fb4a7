"""Whole-or-nothing text files: written under a temporary name in the target's folder, then renamed into place.

Why: an interrupted write (a crash, Ctrl-C, a full disk) must never leave a half-written report, findings list
or ``dataset.json`` where a complete one is expected; a rename within one folder is atomic.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` exactly as given (no newline translation), replacing it only when complete."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "w", newline="") as stream:
            stream.write(text)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
