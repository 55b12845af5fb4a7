"""Engine values to and from a folder, so that work and its results can cross a process boundary.

A value is written as ``<name>.json`` plus one ``.npy`` file per array. Arrays keep their exact dtype and
bytes (a ``Volume``'s geometry is float64 JSON, so it round-trips exactly); numpy reads them back with
``allow_pickle=False``. Nothing is unpickled and no class is looked up by a name taken from the file except
those in ``_DATACLASSES``, so a folder cannot make the reader run code.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CTDeepSegError

# The engine's result types that may travel (module, class); anything else is refused on both sides.
_DATACLASSES = {
    "Volume": ("volume", "Volume"),
    "Box": ("boxes", "Box"),
    "Phantom": ("phantom", "Phantom"),
    "Lesion": ("phantom", "Lesion"),
    "SegmentationResult": ("inference", "SegmentationResult"),
    "DetectionResult": ("detector", "DetectionResult"),
    "Change": ("postprocess", "Change"),
    "ExportResult": ("training_data", "ExportResult"),
    "Prompts": ("interactive.prompts", "Prompts"),
    "ClickResult": ("interactive.engine", "ClickResult"),
}


class _Writer:
    def __init__(self, folder: Path, name: str) -> None:
        self.folder, self.name, self.count = folder, name, 0

    def array(self, value: np.ndarray) -> dict:
        if value.dtype == object:
            raise TypeError("object arrays cannot be transferred")
        self.count += 1
        file = f"{self.name}.{self.count}.npy"
        np.save(self.folder / file, value, allow_pickle=False)
        return {"__array__": file}

    def encode(self, value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, np.ndarray):
            return self.array(value)
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, Path):
            return {"__path__": str(value)}
        if isinstance(value, tuple):
            return {"__tuple__": [self.encode(item) for item in value]}
        if isinstance(value, list):
            return [self.encode(item) for item in value]
        if isinstance(value, dict):
            return {"__dict__": [[self.encode(key), self.encode(item)] for key, item in value.items()]}
        kind = type(value).__name__
        if kind == "ModelCard":
            return {"__card__": {"folder": str(value.folder), "data": value.data}}
        if kind in _DATACLASSES and dataclasses.is_dataclass(value):
            fields = {field.name: self.encode(getattr(value, field.name)) for field in dataclasses.fields(value)}
            return {"__dataclass__": kind, "fields": fields}
        raise TypeError(f"{kind} values cannot be transferred to or from the engine process")


def _decode(value: Any, folder: Path) -> Any:
    if isinstance(value, list):
        return [_decode(item, folder) for item in value]
    if not isinstance(value, dict):
        return value
    if "__array__" in value:
        return np.load(folder / Path(value["__array__"]).name, allow_pickle=False)
    if "__path__" in value:
        return Path(value["__path__"])
    if "__tuple__" in value:
        return tuple(_decode(item, folder) for item in value["__tuple__"])
    if "__dict__" in value:
        return {_decode(key, folder): _decode(item, folder) for key, item in value["__dict__"]}
    if "__card__" in value:
        from ..model_store import ModelCard

        return ModelCard(Path(value["__card__"]["folder"]), value["__card__"]["data"])
    if "__dataclass__" in value and value["__dataclass__"] in _DATACLASSES:
        module, name = _DATACLASSES[value["__dataclass__"]]
        cls = getattr(importlib.import_module(f"..{module}", __package__), name)
        return cls(**{key: _decode(item, folder) for key, item in value["fields"].items()})
    raise CTDeepSegError(f"{folder}: unknown entry {value!r:.80} in a transfer file; the engine versions differ.")


def dump(value: Any, folder: Path | str, name: str) -> None:
    """Write ``value`` as ``folder/<name>.json`` and its arrays beside it."""
    folder = Path(folder)
    encoded = _Writer(folder, name).encode(value)
    temporary = folder / f"{name}.json.part"
    temporary.write_text(json.dumps(encoded))
    temporary.replace(folder / f"{name}.json")


def load(folder: Path | str, name: str) -> Any:
    """Read back what :func:`dump` wrote."""
    folder = Path(folder)
    return _decode(json.loads((folder / f"{name}.json").read_text()), folder)


def exists(folder: Path | str, name: str) -> bool:
    return (Path(folder) / f"{name}.json").is_file()
