"""Where CTDeepSeg looks for model folders (a folder holding a ``model.json`` card).

In order: folders listed in ``$CTDEEPSEG_MODELS`` (separated by the OS path separator), the user's model
folder (where fine-tuned models go; the usual per-user data folder of each OS, see ``user_models_folder``),
and the models shipped with the extension (``Resources/Models`` of the source tree or install).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

SHIPPED_MODELS = Path(__file__).resolve().parents[2] / "Resources" / "Models"
# The detector used when none is named: the one trained with real CT backgrounds (its card has the figures).
DEFAULT_DETECTOR = "ctdeepseg-ct-detector"


def user_models_folder(platform: str = sys.platform, environ: Mapping[str, str] = os.environ) -> Path:
    """The user's model folder: ``%LOCALAPPDATA%\\CTDeepSeg\\models`` on Windows,
    ``~/Library/Application Support/CTDeepSeg/models`` on macOS, ``$XDG_DATA_HOME/ctdeepseg/models`` (default
    ``~/.local/share/ctdeepseg/models``) elsewhere."""
    if platform == "win32":
        return Path(environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "CTDeepSeg" / "models"
    if platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "CTDeepSeg" / "models"
    return Path(environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "ctdeepseg" / "models"


def model_search_paths() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("CTDEEPSEG_MODELS", "").split(os.pathsep) if p]
    return [*extra, user_models_folder(), SHIPPED_MODELS]


def find_model_folders() -> list[Path]:
    """Every model folder (``model.json``), MONAI bundle (``configs/metadata.json``) and MONAIAuto3DSeg model
    (``model.pt`` with ``labels.csv``) on the search path."""
    found = []
    for root in model_search_paths():
        if root.is_dir():
            cards = {card.parent for card in root.glob("*/model.json")}
            bundles = {meta.parent.parent for meta in root.glob("*/configs/metadata.json")}
            auto3dseg = {
                labels.parent for labels in root.glob("*/labels.csv") if (labels.parent / "model.pt").is_file()
            }
            found.extend(sorted(cards | bundles | auto3dseg))
    return found
