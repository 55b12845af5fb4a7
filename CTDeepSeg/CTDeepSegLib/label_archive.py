"""A label volume as compact text: its geometry, and its voxels cropped to the labelled box, compressed.

Why: the Slicer module keeps the model's original prediction beside every segmentation it makes, so that a
later correction can be measured and exported as training data, and it keeps the state before an in-place
clean-up for Undo. Kept as segmentations, both would double the memory of a large segmentation; as text
(a label map compresses to a few percent of its size) they cost little, and a text node is saved with the
scene like any other node.
"""

from __future__ import annotations

import base64
import json
import zlib

import numpy as np

from .errors import CTDeepSegError
from .metrics import bounding_box
from .volume import Volume

FORMAT = "ctdeepseg-labels/1"


def pack_labels(labels: Volume) -> str:
    """``labels`` as a JSON text (see the module docstring); :func:`unpack_labels` gives it back exactly."""
    array = labels.array
    if array.dtype not in (np.uint8, np.uint16):
        array = array.astype(np.uint8 if int(array.max(initial=0)) < 256 else np.uint16)
    box = bounding_box(array != 0) or (slice(0, 0),) * 3
    cropped = np.ascontiguousarray(array[box])
    record = {
        "format": FORMAT,
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "start": [s.start for s in box],
        "box_shape": list(cropped.shape),
        "spacing": labels.spacing.tolist(),
        "origin": labels.origin.tolist(),
        "direction": labels.direction.tolist(),
        "voxels": base64.b64encode(zlib.compress(cropped.tobytes(), 6)).decode("ascii"),
    }
    return json.dumps(record)


def unpack_labels(text: str) -> Volume:
    """The label volume packed by :func:`pack_labels`."""
    try:
        record = json.loads(text)
        if record.get("format") != FORMAT:
            raise ValueError(f"format {record.get('format')!r}")
        cropped = np.frombuffer(zlib.decompress(base64.b64decode(record["voxels"])), dtype=record["dtype"])
        array = np.zeros(record["shape"], dtype=record["dtype"])
        box = tuple(slice(start, start + size) for start, size in zip(record["start"], record["box_shape"]))
        array[box] = cropped.reshape(record["box_shape"])
    except (ValueError, KeyError, TypeError, zlib.error) as error:
        raise CTDeepSegError(
            f"Stored labels are damaged or of another version ({error}); they cannot be used."
        ) from None
    return Volume(array, record["spacing"], record["origin"], record["direction"])
