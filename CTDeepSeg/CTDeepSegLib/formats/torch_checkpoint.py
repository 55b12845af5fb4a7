"""PyTorch checkpoints read as plain data: ``torch.load(weights_only=True)``, which cannot run code, with only
numpy's array and scalar constructors allowed besides tensors and plain containers (Auto3DSeg and nnU-Net
checkpoints hold numpy numbers in their configs and logs). A checkpoint that needs any other pickled object is
refused with a message, never unpickled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import CTDeepSegError


def load_plain(path: Path) -> Any:
    """The file's content; memory-mapped where the format allows, so reading a config does not read every
    weight."""
    import numpy as np
    import torch

    multiarray = (np._core if hasattr(np, "_core") else np.core).multiarray
    allowed: list = [np.ndarray, np.dtype]
    allowed += [type(np.dtype(kind)) for kind in ("float32", "float64", "int64", "int32", "bool")]
    for name in ("_reconstruct", "scalar"):  # numpy 1 and 2 pickle these under different module names
        allowed += [(getattr(multiarray, name), f"numpy{core}.multiarray.{name}") for core in (".core", "._core")]
    try:
        with torch.serialization.safe_globals(allowed):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as error:  # a file in torch's old (not zip) format cannot be mapped
                if "mmap" not in str(error):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # an unpickling refusal or a damaged file: both mean "do not use"
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CTDeepSegError(
            f"{path}: not a plain weights file ({type(error).__name__}: {first}); CTDeepSeg never unpickles code."
        ) from None
