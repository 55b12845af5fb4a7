"""SNOMED CT codes for the structure names that catalogue models publish, where the name is unambiguous.

Why: Slicer shows and exports segments by their terminology, so a model listed in the catalogue names what it
segments with the same codes the shipped models use. Names are matched without case and without a leading
"left" / "right" (kept as the modifier); anything not listed keeps its name only, never a guessed code.
"""

from __future__ import annotations

_ANATOMY = ("SCT", "123037004", "Anatomical Structure")
_TYPES = {
    "adrenal gland": ("23451007", "Adrenal gland"),
    "aorta": ("15825003", "Aorta"),
    "brain": ("12738006", "Brain"),
    "colon": ("71854001", "Colon"),
    "duodenum": ("38848004", "Duodenum"),
    "esophagus": ("32849002", "Esophagus"),
    "gallbladder": ("28231008", "Gallbladder"),
    "heart": ("80891009", "Heart"),
    "inferior vena cava": ("64131007", "Inferior vena cava"),
    "kidney": ("64033007", "Kidney"),
    "liver": ("10200004", "Liver"),
    "lung": ("39607008", "Lung"),
    "pancreas": ("15776009", "Pancreas"),
    "portal vein": ("32764006", "Portal vein"),
    "prostate": ("41216001", "Prostate"),
    "small intestine": ("30315005", "Small intestine"),
    "spleen": ("78961009", "Spleen"),
    "stomach": ("69695003", "Stomach"),
    "trachea": ("44567001", "Trachea"),
    "urinary bladder": ("89837001", "Urinary bladder"),
}
_SIDES = {"left": ("SCT", "7771000", "Left"), "right": ("SCT", "24028007", "Right")}


def structure(name: str) -> dict:
    """``{"name": ...}`` plus ``snomed`` (category, type, and modifier for a side) when the name is known."""
    words = name.strip().replace("_", " ").lower().split()
    side = words[0] if words and words[0] in _SIDES else None
    key = " ".join(words[1:] if side else words)
    if key not in _TYPES:
        return {"name": name}
    code, meaning = _TYPES[key]
    snomed = {"category": list(_ANATOMY), "type": ["SCT", code, meaning]}
    if side:
        snomed["modifier"] = list(_SIDES[side])
    return {"name": name, "snomed": snomed}
