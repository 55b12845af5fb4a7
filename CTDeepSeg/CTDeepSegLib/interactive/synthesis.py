"""Training scenes for the interactive model, made on the fly: an image cube and the object the user means.

Three kinds, so the model learns what an object is rather than what one scanner shows:

* synthetic (SynthSeg-style domain randomisation): a random label field as background, a blob or a tube as the
  object, every intensity random, then blur, bias field, noise and thick slices;
* real backgrounds with lesions inserted: a cube from a real CT or MRI at a random scale, a lesion drawn into it
  with a contrast relative to the tissue where it lies, partial volume at its edge and the tissue's noise;
* real organs: a cube around a labelled structure of a real scan (TotalSegmentator's silver labels).

Scenes are drawn in a context cube (``CONTEXT`` voxels) and the network's cube (``SIZE``) is taken from it where
inference would place it: centred on the first click, or on the object's box.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..metrics import bounding_box
from ..volume import Volume
from .crop import Crop
from .simulation import farthest_interior_point

SIZE = 64
CONTEXT = 96


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cells: int) -> np.ndarray:
    """Smooth random field in [-1, 1] with about ``cells`` bumps per axis (coarse noise, linear upsampling)."""
    coarse = rng.uniform(-1, 1, size=(cells + 2,) * 3).astype(np.float32)
    return ndimage.zoom(coarse, [n / (cells + 2) for n in shape], order=1, mode="nearest", grid_mode=True)[
        : shape[0], : shape[1], : shape[2]
    ]


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def blob(rng: np.random.Generator, shape: tuple[int, ...], centre: np.ndarray, radius: float) -> np.ndarray:
    """A lobulated, irregular solid: one to three rotated ellipsoids, their surface deformed by smooth noise."""
    inside = np.zeros(shape, dtype=bool)
    reach = int(np.ceil(radius * 1.8)) + 2
    low = np.clip(np.floor(centre).astype(int) - reach, 0, np.array(shape))
    high = np.clip(np.floor(centre).astype(int) + reach + 1, 0, np.array(shape))
    if np.any(high <= low):
        return inside
    window = tuple(slice(a, b) for a, b in zip(low, high))
    local_shape = tuple(high - low)
    grid = np.stack(np.meshgrid(*(np.arange(a, b, dtype=np.float32) for a, b in zip(low, high)), indexing="ij"))
    wobble = smooth_noise(rng, local_shape, int(rng.integers(2, 6))) * rng.uniform(0.0, 0.35)
    part_mask = np.zeros(local_shape, dtype=bool)
    for part in range(int(rng.choice([1, 1, 2, 3]))):
        offset = rng.normal(0, 0.35 * radius, 3) if part else np.zeros(3)
        radii = radius * rng.uniform(0.55, 1.0, 3) * (0.8 if part else 1.0)
        local = np.tensordot(random_rotation(rng), grid - (centre + offset)[:, None, None, None], axes=1)
        part_mask |= (np.sum((local / radii[:, None, None, None]) ** 2, axis=0) + wobble) <= 1.0
    inside[window] = part_mask
    return inside


def tube(rng: np.random.Generator, shape: tuple[int, ...], centre: np.ndarray, length: float) -> np.ndarray:
    """A vessel-like tube: a smooth random path through ``centre``, 1.5 to 5 voxels in radius, maybe tapering."""
    knots = centre + np.cumsum(rng.normal(0, length / 4, size=(5, 3)), axis=0)
    knots -= knots[2] - centre
    t = np.linspace(0, 4, 400)
    path = np.stack([np.interp(t, np.arange(5), knots[:, axis]) for axis in range(3)], axis=1)
    path = ndimage.gaussian_filter1d(path, 12, axis=0, mode="nearest")
    radius = rng.uniform(1.5, 5.0) * np.linspace(1.0, rng.uniform(0.5, 1.0), len(path))
    points = np.round(path).astype(int)
    keep = np.all((points >= 0) & (points < np.array(shape)), axis=1)
    if not keep.any():
        return np.zeros(shape, dtype=bool)
    radius_at = np.zeros(shape, dtype=np.float32)
    radius_at[tuple(points[keep].T)] = radius[keep]
    distance, nearest = ndimage.distance_transform_edt(radius_at == 0, return_indices=True)
    return distance <= radius_at[tuple(nearest)]


def _resized(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``image`` zoomed (linearly) to exactly ``shape``."""
    return ndimage.zoom(image, [n / m for n, m in zip(shape, image.shape)], order=1, grid_mode=True, mode="nearest")


def degrade(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Blur, a multiplicative bias field, thick slices along one axis and noise, each at a random strength."""
    image = ndimage.gaussian_filter(image, rng.uniform(0.0, 1.2))
    image = image * (1.0 + 0.25 * rng.uniform() * smooth_noise(rng, image.shape, 2))
    if rng.uniform() < 0.4:
        axis, factor = int(rng.integers(3)), int(rng.integers(2, 5))
        thin = [n // factor if a == axis else n for a, n in enumerate(image.shape)]
        image = _resized(_resized(image, tuple(thin)), image.shape)
    return (image + rng.normal(0, rng.uniform(0.0, 0.08), image.shape)).astype(np.float32)


def synthetic_scene(rng: np.random.Generator, size: int = CONTEXT) -> tuple[np.ndarray, np.ndarray]:
    """(image, object) in a context cube: random tissue classes, a blob or tube object, distractors, degraded."""
    shape = (size,) * 3
    half = (size // 2,) * 3
    classes = int(rng.integers(3, 8))
    fields = np.stack([smooth_noise(rng, half, int(rng.integers(2, 7))) for _ in range(classes)])
    labels = ndimage.zoom(np.argmax(fields, axis=0).astype(np.uint8), 2, order=0)[:size, :size, :size]
    means = rng.uniform(0, 1, classes)
    image = means[labels] + rng.normal(0, 1, shape) * rng.uniform(0, 0.04, classes)[labels]
    centre = np.array(shape, dtype=np.float32) / 2 + rng.normal(0, size / 12, 3)
    scale = size * np.exp(rng.uniform(np.log(0.08), np.log(0.7)))  # up to larger than the network's cube
    target = tube(rng, shape, centre, scale * 2) if rng.uniform() < 0.25 else blob(rng, shape, centre, scale)
    if target.sum() < 8:
        target = blob(rng, shape, np.array(shape, dtype=np.float32) / 2, max(scale, 3.0))
    ring = ndimage.binary_dilation(target, iterations=3) & ~target
    local = float(np.median(image[ring])) if ring.any() else 0.5
    value = float(np.clip(local + rng.choice([-1, 1]) * rng.uniform(0.05, 0.6), -0.2, 1.2))
    for _ in range(int(rng.integers(0, 3))):  # look-alikes that are not the object
        other = blob(rng, shape, rng.uniform(0, size, 3), scale * rng.uniform(0.3, 1.0)) & ~ndimage.binary_dilation(
            target, iterations=2
        )
        image[other] = value + rng.normal(0, 0.05)
    image[target] = value + rng.normal(0, rng.uniform(0, 0.05), int(target.sum()))
    return degrade(rng, image), target


@dataclass
class RealSource:
    """A real scan for training scenes: its image, the structures that may be targets (label values), and the
    regions never to show (its own real lesions, kept for evaluation)."""

    image: Volume
    modality: str
    labels: Volume | None = None
    targets: tuple[int, ...] = ()
    avoid: np.ndarray | None = None  # LPS points around which no cube is drawn
    avoid_mm: float = 0.0

    def __post_init__(self) -> None:
        array = self.image.array
        if self.modality == "CT":
            tissue = (array > -900) & (array < 300)
        else:
            tissue = array > np.percentile(array, 40)
        self.tissue = np.argwhere(tissue)[::7]  # where lesions may be drawn (a sample of the voxels)


def _far_from_avoided(source: RealSource, point: np.ndarray, reach_mm: float) -> bool:
    if source.avoid is None or not len(source.avoid):
        return True
    return bool(np.min(np.linalg.norm(source.avoid - point, axis=1)) > source.avoid_mm + reach_mm)


def _spacing(source: RealSource, extent_mm: float, fraction: float) -> float:
    floor = max(0.4, 0.5 * float(np.min(source.image.spacing)))
    return max(extent_mm / (fraction * SIZE), floor)


def acquired(image: Volume, crop: Crop, values: np.ndarray) -> np.ndarray:
    """``values`` (on the cube) as the scanner of ``image`` would show them on it: averaged over each of the
    image's voxels (a 5 mm slice averages 5 mm of tissue), sampled on the image's grid, and resampled linearly
    onto the cube, as the cube's background was. A lesion drawn straight onto a fine cube cut from a thick-slice
    scan is sharp along the slices where the real tissue around it is smeared: a look no real lesion has."""
    widths = np.asarray(image.spacing[::-1], dtype=np.float64) / crop.spacing
    for axis, width in enumerate(widths):
        if width >= 1.5:
            values = ndimage.uniform_filter1d(values, int(round(width)), axis=axis, mode="nearest")
    region, on_grid = crop.paste(image, values, margin=1)  # the image voxels around the cube's edges too
    start = np.array([[s.start for s in region]], dtype=np.float64)[:, ::-1]
    layer = Volume(on_grid, image.spacing, image.index_to_physical(start)[0], image.direction)
    return crop.sample(layer, order=1, fill=0.0)


def lesion_scene(
    rng: np.random.Generator,
    source: RealSource,
    context: int = CONTEXT,
    spacing: float | Callable[[float], float] | None = None,
    as_acquired: bool = False,
) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(image, object, spacing) with a lesion drawn into a cube of a real scan; None when no place was found.
    By default the spacing fits the cube to the lesion (it fills 0.3-0.85 of the network's cube); ``spacing``
    may instead be a number (with a larger ``context``: whole test images in which the size must be found) or a
    function of the lesion's diameter in mm. ``as_acquired`` shows the lesion through the scan's own voxels
    (``acquired``), as a real lesion of that scan looks; the object stays the lesion's true shape."""
    diameter = float(np.exp(rng.uniform(np.log(5.0), np.log(60.0))))
    if spacing is None:
        spacing = _spacing(source, diameter, rng.uniform(0.3, 0.85))
    elif callable(spacing):
        spacing = spacing(diameter)
    for _ in range(20):
        index = source.tissue[rng.integers(len(source.tissue))][::-1].astype(float)
        point = source.image.index_to_physical(index)
        if _far_from_avoided(source, point, spacing * context):
            break
    else:
        return None
    crop = Crop(point, spacing, context)
    cube = crop.sample(source.image)
    centre = np.array([context / 2] * 3) + rng.normal(0, 2, 3)
    target = blob(rng, cube.shape, centre, diameter / 2 / spacing)
    if target.sum() < 8:
        return None
    rim = ndimage.binary_dilation(target, iterations=2) & ~target
    local = float(np.median(cube[rim]))
    spread = float(np.subtract(*np.percentile(cube, [75, 25]))) or 1.0
    if source.modality == "CT":
        value = rng.uniform(-200, 80) if local < -500 else local + rng.choice([-1, 1]) * rng.uniform(25, 150)
        noise = rng.uniform(5, 25)
    else:
        value = local + rng.choice([-1, 1]) * rng.uniform(0.3, 1.5) * spread
        noise = rng.uniform(0.02, 0.1) * spread
    lesion = value + noise * ndimage.gaussian_filter(rng.normal(0, 1, cube.shape), 1.0) * 2
    weight = ndimage.gaussian_filter(target.astype(np.float32), rng.uniform(0.4, 1.0))
    if as_acquired:
        return (cube + acquired(source.image, crop, (lesion - cube) * weight)).astype(np.float32), target, spacing
    return (cube * (1 - weight) + lesion * weight).astype(np.float32), target, spacing


def organ_scene(rng: np.random.Generator, source: RealSource) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(image, object, spacing) of a cube around one labelled structure of a real scan (one of its pieces)."""
    value = int(rng.choice(source.targets))
    components, count = ndimage.label(source.labels.array == value, structure=np.ones((3, 3, 3)))
    if count == 0:
        return None
    sizes = np.bincount(components.ravel())[1:]
    piece = components == int(np.argmax(sizes)) + 1
    box = bounding_box(piece)
    ends = np.array([[s.start for s in box], [s.stop - 1 for s in box]], dtype=np.float64)[:, ::-1]
    extent = float(np.max(np.abs(np.diff(source.image.index_to_physical(ends), axis=0)))) + 2 * np.min(
        source.image.spacing
    )
    # from an organ in a small part of the cube to the cube well inside a large organ (a first click on a liver)
    spacing = _spacing(source, extent, float(np.exp(rng.uniform(np.log(0.25), np.log(4.0)))))
    click = farthest_interior_point(piece, source.image.spacing[::-1])
    centre_index = click if rng.uniform() < 0.5 else np.array([(s.start + s.stop - 1) / 2 for s in box])
    point = source.image.index_to_physical(np.asarray(centre_index, dtype=float)[::-1])
    crop = Crop(point + rng.normal(0, 2 * spacing, 3), spacing, CONTEXT)
    target = crop.sample(source.image.with_array(piece.astype(np.float32)), order=1, fill=0.0) > 0.5
    if target.sum() < 8:
        return None
    return crop.sample(source.image), target, spacing
