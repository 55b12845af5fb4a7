"""Which 3D Slicer releases the module supports, and what it says on an older one.

Slicer 5.8 (Python 3.9, numpy 1.26) is the oldest: the engine is kept Python 3.9 compatible (checked by
``vermin`` in ``make lint``) and the module never relies on behaviour that changed between 5.8 and 5.10
(colour-table names, saving of hidden nodes). Older releases lack pieces the panel uses
(``slicer.parameterNodeWrapper`` arrived in 5.4) and were never tested.
"""

from __future__ import annotations

MINIMUM_SLICER = (5, 8)


def unsupported_slicer(major: int, minor: int) -> str | None:
    """A polite message when Slicer ``major.minor`` is older than the oldest supported release, else None."""
    if (int(major), int(minor)) >= MINIMUM_SLICER:
        return None
    oldest = ".".join(map(str, MINIMUM_SLICER))
    return (
        f"CTDeepSeg needs 3D Slicer {oldest} or newer, and this is Slicer {major}.{minor}. "
        f"Please install Slicer {oldest} or a later release from https://download.slicer.org and add the "
        "CTDeepSeg extension there; nothing was changed in this installation."
    )
