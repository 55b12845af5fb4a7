"""Synthetic CT and MRI phantoms of the chest and upper abdomen, with exact labels and lesion lists.

Why: tests, demos and training need images whose truth is known exactly, of any size and spacing, made on
the spot without a download. A phantom is deterministic from its seed; the seed also varies organ sizes,
positions and intensities a little, so phantoms from different seeds make a varied training set.

Anatomy is laid out in the image's index space as fractions of the field of view (so any shape works):
a body outline with a fat layer, two lungs in the upper half, a liver on the patient's right below them, a
spine behind, and spherical lesions of chosen count, radius (mm) and contrast inside lungs and liver. With an
identity direction, +i, +j, +k run to patient Left, Posterior and Superior (LPS).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .boxes import Box
from .errors import CTDeepSegError
from .volume import Volume

LABELS = {1: "lung", 2: "liver", 3: "spine", 4: "lesion"}
LABEL_COLOURS = {1: (0.5, 0.68, 0.85), 2: (0.87, 0.51, 0.4), 3: (0.95, 0.92, 0.82), 4: (1.0, 0.85, 0.0)}

# Typical attenuation in Hounsfield units (CT) and a T1-weighted-like brightness (MRI, arbitrary units).
_CT = {"air": -1000.0, "lung": -850.0, "fat": -100.0, "soft": 40.0, "liver": 60.0, "bone": 500.0}
_MRI = {"air": 0.0, "lung": 40.0, "fat": 900.0, "soft": 420.0, "liver": 560.0, "bone": 650.0}
_LUNG_NODULE_CT = 20.0
_LUNG_NODULE_MRI = 380.0


@dataclass(frozen=True)
class Lesion:
    """A spherical lesion: where it is (LPS mm), how big, in which organ, and how it differs from that organ."""

    centre_lps_mm: tuple[float, float, float]
    radius_mm: float
    organ: str
    contrast: float
    box: Box


@dataclass(frozen=True)
class Phantom:
    image: Volume
    labels: Volume
    lesions: list[Lesion]


def _ellipsoid(grid: Sequence[np.ndarray], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    total = np.zeros(np.broadcast_shapes(*(g.shape for g in grid)), dtype=np.float32)
    for axis, c, r in zip(grid, centre, radii):
        total += ((axis - np.float32(c)) / np.float32(r)) ** 2
    return total <= 1.0


def _place_lesions(
    rng: np.random.Generator,
    count: int,
    organ_ellipsoids: list[tuple[np.ndarray, np.ndarray]],
    extent_mm: np.ndarray,
    radius_range: tuple[float, float],
    taken: list[tuple[np.ndarray, float]],
) -> list[tuple[np.ndarray, float]]:
    """Pick lesion centres (normalised coordinates) that fit inside one of the organ ellipsoids, not touching."""
    placed = []
    for _ in range(count):
        for _attempt in range(200):
            radius = float(rng.uniform(*radius_range))
            centre_n, radii_n = organ_ellipsoids[rng.integers(len(organ_ellipsoids))]
            radii_mm = radii_n * extent_mm / 2 - radius - 1.0
            if np.any(radii_mm <= 0):
                continue
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            offset_mm = direction * radii_mm * rng.uniform(0, 1) ** (1 / 3)
            centre = centre_n + 2 * offset_mm / extent_mm
            centre_mm = centre * extent_mm / 2
            if all(np.linalg.norm(centre_mm - c * extent_mm / 2) > radius + r + 2.0 for c, r in taken + placed):
                placed.append((centre, radius))
                break
        else:
            raise CTDeepSegError(
                f"Could not fit {count} lesions of radius {radius_range} mm into the phantom; use fewer or "
                "smaller lesions, or a larger field of view."
            )
    return placed


def make_phantom(
    shape: Sequence[int] = (64, 96, 96),
    spacing: Sequence[float] = (3.5, 3.5, 5.0),
    seed: int = 0,
    lung_lesions: int = 2,
    liver_lesions: int = 2,
    lesion_radius_mm: tuple[float, float] = (5.0, 12.0),
    lesion_contrast: float = 45.0,
    liver_enhancement: float = 0.0,
    noise: float = 12.0,
    blur_mm: float = 1.0,
    modality: str = "CT",
    origin: Sequence[float] | None = None,
    direction: np.ndarray | None = None,
) -> Phantom:
    """Make a phantom.

    ``shape`` is ``(k, j, i)`` as for every array here; ``spacing`` is ``(si, sj, sk)`` in mm. Liver
    lesions are ``lesion_contrast`` darker than liver (hypodense metastases); lung lesions are solid nodules.
    ``liver_enhancement`` brightens the liver (a contrast phase); ``noise`` is the noise standard deviation
    (HU for CT); ``blur_mm`` the partial-volume blur. ``modality="MRI"`` gives a T1-like image with a smooth
    bias field instead of Hounsfield units. The default origin centres the volume on the scanner origin.
    """
    if modality not in ("CT", "MRI"):
        raise CTDeepSegError(f"Phantom modality must be 'CT' or 'MRI', got {modality!r}.")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise CTDeepSegError(f"Phantom shape must be three sizes of at least 8 voxels, got {shape}.")
    rng = np.random.default_rng(seed)
    spacing = np.asarray(spacing, dtype=np.float64)
    size_ijk = np.array(shape[::-1])
    extent_mm = size_ijk * spacing
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    if origin is None:
        origin = -direction @ (spacing * (size_ijk - 1) / 2)

    # Normalised coordinates in (-1, 1) along i, j, k, broadcastable to the (k, j, i) array.
    x = ((np.arange(shape[2], dtype=np.float32) + 0.5) / shape[2] * 2 - 1)[np.newaxis, np.newaxis, :]
    y = ((np.arange(shape[1], dtype=np.float32) + 0.5) / shape[1] * 2 - 1)[np.newaxis, :, np.newaxis]
    z = ((np.arange(shape[0], dtype=np.float32) + 0.5) / shape[0] * 2 - 1)[:, np.newaxis, np.newaxis]
    grid = (x, y, z)

    def jitter(values: Sequence[float], amount: float = 0.04) -> np.ndarray:
        return np.asarray(values) + rng.uniform(-amount, amount, size=len(values))

    body_radii = jitter([0.88, 0.72], 0.03)
    lungs = [(jitter([side * 0.42, -0.05, 0.45], 0.03), jitter([0.30, 0.45, 0.52], 0.03)) for side in (-1.0, 1.0)]
    liver = (jitter([-0.33, 0.0, -0.5], 0.03), jitter([0.42, 0.45, 0.38], 0.03))
    spine_centre, spine_radius = jitter([0.0, 0.5], 0.02), float(rng.uniform(0.08, 0.1))

    labels = np.zeros(shape, dtype=np.uint8)
    body = _ellipsoid((x, y), (0, 0), body_radii) & np.ones_like(z, dtype=bool)
    inner = _ellipsoid((x, y), (0, 0), body_radii * 0.9) & np.ones_like(z, dtype=bool)
    spine = _ellipsoid((x, y), spine_centre, (spine_radius, spine_radius)) & body
    lung = (_ellipsoid(grid, *lungs[0]) | _ellipsoid(grid, *lungs[1])) & inner & ~spine
    liver_mask = _ellipsoid(grid, *liver) & inner & ~lung & ~spine
    labels[lung] = 1
    labels[liver_mask] = 2
    labels[spine] = 3

    tissue = dict(_CT if modality == "CT" else _MRI)
    scale = 1.0 if modality == "CT" else 8.0
    for name in ("soft", "liver", "fat"):
        tissue[name] += rng.uniform(-5, 5) * scale
    tissue["liver"] += liver_enhancement
    image = np.full(shape, tissue["air"], dtype=np.float32)
    image[body] = tissue["fat"]
    image[inner] = tissue["soft"]
    image[lung] = tissue["lung"]
    image[liver_mask] = tissue["liver"]
    image[spine] = tissue["bone"]

    lung_found = _place_lesions(rng, lung_lesions, lungs, extent_mm, lesion_radius_mm, [])
    liver_found = _place_lesions(rng, liver_lesions, [liver], extent_mm, lesion_radius_mm, lung_found)
    lesions = []
    nodule = _LUNG_NODULE_CT if modality == "CT" else _LUNG_NODULE_MRI
    for organ, found, value in (
        ("lung", lung_found, nodule),
        ("liver", liver_found, tissue["liver"] - lesion_contrast),
    ):
        for centre_n, radius in found:
            centre_ijk = (centre_n + 1) / 2 * size_ijk - 0.5
            half = np.ceil(radius / spacing).astype(int) + 1
            low = np.maximum(np.floor(centre_ijk).astype(int) - half, 0)
            high = np.minimum(np.ceil(centre_ijk).astype(int) + half + 1, size_ijk)
            region = tuple(slice(lo, hi) for lo, hi in zip(low[::-1], high[::-1]))
            ii, jj, kk = ((np.arange(lo, hi) - c) * s for lo, hi, c, s in zip(low, high, centre_ijk, spacing))
            sphere = (ii[None, None, :] ** 2 + jj[None, :, None] ** 2 + kk[:, None, None] ** 2) <= radius**2
            labels[region][sphere] = 4
            image[region][sphere] = value
            centre_lps = Volume(labels, spacing, origin, direction).index_to_physical(centre_ijk)
            box = Box(centre_lps, np.full(3, 2 * radius), direction.copy(), label=f"{organ} lesion")
            contrast = value - (tissue["lung"] if organ == "lung" else tissue["liver"])
            lesions.append(Lesion(tuple(float(v) for v in centre_lps), float(radius), organ, float(contrast), box))

    if blur_mm > 0:
        image = ndimage.gaussian_filter(image, sigma=(blur_mm / spacing)[::-1] / 2.355, mode="nearest")
    if modality == "MRI":
        coefficients = rng.uniform(-0.15, 0.15, size=4)
        bias = np.exp(coefficients[0] * x + coefficients[1] * y + coefficients[2] * z + coefficients[3] * x * y)
        image = image * bias.astype(np.float32)
        real = image + rng.normal(0, noise * scale, size=shape).astype(np.float32)
        imaginary = rng.normal(0, noise * scale, size=shape).astype(np.float32)
        image = np.sqrt(real**2 + imaginary**2)
    elif noise > 0:
        image += rng.normal(0, noise, size=shape).astype(np.float32)

    image_volume = Volume(image.astype(np.float32), spacing, origin, direction)
    return Phantom(image_volume, image_volume.with_array(labels), lesions)
