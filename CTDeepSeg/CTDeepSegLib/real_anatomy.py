"""Real anatomy for the CT segmenter's training: the shippable real CTs with labels mapped onto the model's.

Why: phantoms are smooth ellipsoids, so a model trained on them alone calls muscle "liver" and vessels
"lesion" on a real scan. Three real CT patients ship in PyPI packages with a licence that allows training
(``real_cases``): ``ts_ct`` (abdomen and lower chest, TotalSegmentator's silver labels of every organ),
``ts_cta`` (a thorax CT angiogram whose labels are only the aorta and T12) and ``lung2`` (a chest CT whose
only label is one lesion). So:

* each case says which model labels it annotates (``known``); the others may hide in its background, and
  ``marginal_dice_ce`` (Shi et al., "Marginal loss and exclusion loss for partially supervised multi-organ
  segmentation", MedIA 2021) merges their probability into the background instead of punishing it;
* lungs without a lung label are found from Hounsfield units (``lungs_from_hu``: air enclosed by the body,
  the vessels inside filled in), a bronze standard, stated as such wherever it is reported;
* lesions are inserted into real lungs and livers (``insert_lesions``): irregular ellipsoids with a soft
  partial-volume edge and the scan's own noise, so that vessels, bronchi and bowel become negatives.

The liver package's case and the reserved DICOM series are refused here (``real_cases`` marks them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import CTDeepSegError
from .real_cases import CASES, load_case
from .volume import Volume

MODEL_LABELS = {1: "lung", 2: "liver", 3: "spine", 4: "lesion", 5: "spleen", 6: "kidney"}
LUNG, LIVER, SPINE, LESION, SPLEEN, KIDNEY = range(1, 7)
TRAINING_CASES = ("ts_ct", "ts_cta", "lung2")

# TotalSegmentator's class map "total": lung lobes 10-14, vertebrae S1..C1 26-50 (the sacrum, 25, is not spine).
_TOTAL_TO_MODEL = {
    **{value: LUNG for value in range(10, 15)},
    5: LIVER,
    **{value: SPINE for value in range(26, 51)},
    1: SPLEEN,
    2: KIDNEY,
    3: KIDNEY,
}


@dataclass(frozen=True)
class AnnotatedCase:
    """A real CT with the model's labels: ``known`` holds the label values the case annotates; any other
    structure of the model may be present but unlabelled (background)."""

    name: str
    image: Volume
    labels: Volume
    known: frozenset[int]
    lung_reference: str  # "silver" (TotalSegmentator), "HU" (lungs_from_hu, a bronze standard) or "none"


def lungs_from_hu(image: Volume, threshold: float = -400.0) -> np.ndarray:
    """The lungs of a chest CT from Hounsfield units, with the vessels inside filled in slice by slice.

    Air-density components whose mean is above -920 HU (lung parenchyma mixes air with tissue; the air around
    the patient and large pockets of gas are purer), of at least 50 mL and a fifth of the largest such
    component. Airways connected to the lungs are included. Rules chosen on lung2 and ts_cta, the two cases
    that need them, by looking at their components: a bronze standard, reported as such."""
    from scipy import ndimage

    air = image.array < threshold
    components, count = ndimage.label(air)
    if count == 0:
        return np.zeros(air.shape, bool)
    sizes = np.bincount(components.ravel(), minlength=count + 1).astype(np.float64)
    sums = np.bincount(components.ravel(), weights=image.array.ravel().astype(np.float64), minlength=count + 1)
    means = sums / np.maximum(sizes, 1)
    sizes[0] = 0
    sizes[means <= -920.0] = 0
    if sizes.max() * image.voxel_volume_mm3 < 50_000:  # under 50 mL: no lungs in this scan
        return np.zeros(air.shape, bool)
    lungs = np.isin(components, np.flatnonzero(sizes >= 0.2 * sizes.max()))
    for index, plane in enumerate(lungs):
        if plane.any():
            lungs[index] = ndimage.binary_fill_holes(ndimage.binary_closing(plane, iterations=2)) | plane
    return lungs


def annotated_case(name: str) -> AnnotatedCase:
    """One of ``TRAINING_CASES`` with its labels mapped onto MODEL_LABELS; cases not allowed for training
    (the liver package's, the reserved DICOM series) are refused."""
    if name in CASES and not CASES[name].training_allowed:
        raise CTDeepSegError(f"Case {name!r} may not be used for training ({CASES[name].licence}).")
    return evaluation_case(name)


def evaluation_case(name: str) -> AnnotatedCase:
    """Any real CT case with its reference labels mapped onto MODEL_LABELS, for measuring a model on it."""
    if name not in CASES:
        raise CTDeepSegError(f"Unknown case {name!r}; the real training cases are {', '.join(TRAINING_CASES)}.")
    image, label, record = load_case(name)
    if record["modality"] != "CT":
        raise CTDeepSegError(f"Case {name!r} is {record['modality']}; the segmenter is made for CT.")
    source = label.array
    mapped = np.zeros(source.shape, np.uint8)
    if name in ("ts_ct", "ts_ct_dicom"):
        for value, target in _TOTAL_TO_MODEL.items():
            mapped[source == value] = target
        known, reference = {LUNG, LIVER, SPINE, SPLEEN, KIDNEY}, "silver"
    elif name == "lung2":
        mapped[lungs_from_hu(image)] = LUNG
        mapped[source == 1] = LESION
        known, reference = {LUNG, LESION}, "HU"
    elif name == "ts_cta":
        mapped[lungs_from_hu(image)] = LUNG
        known, reference = {LUNG}, "HU"
    elif name == "liver117":
        mapped[source == 1] = LIVER
        mapped[source == 2] = LESION
        known, reference = {LIVER, LESION}, "none"
    else:
        raise CTDeepSegError(f"No label mapping for case {name!r}.")
    return AnnotatedCase(name, image, image.with_array(mapped), frozenset(known), reference)


def on_model_grid(case: AnnotatedCase, card) -> tuple[np.ndarray, np.ndarray]:
    """``case`` exactly as inference shows it to a model ``card`` (body crop, axis order, spacing,
    normalisation): the normalised image and the labels, (d, h, w) arrays."""
    from .inference import model_grid

    grid = model_grid(case.image, card)
    image = grid.resample(grid.oriented(case.image.array), card["normalisation"])[0, 0].numpy()
    return image, grid.resample(grid.oriented(case.labels.array))[0, 0].numpy().astype(np.int64)


def _blob(shape: tuple[int, ...], centre: np.ndarray, radii: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Signed distance-like field (voxels) of an irregular ellipsoid: positive inside, about 1 per voxel."""
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    offset = (grid - centre.reshape(3, 1, 1, 1)) / radii.reshape(3, 1, 1, 1)
    radius = np.sqrt((offset**2).sum(0))
    direction = offset / np.maximum(radius, 1e-6)
    bumps = sum(
        rng.uniform(-0.12, 0.12)
        * np.cos(rng.integers(2, 5) * np.arctan2(direction[a], direction[b]) + rng.uniform(0, 6.3))
        for a, b in ((0, 1), (1, 2), (0, 2))
    )
    return (1.0 + bumps - radius) * float(radii.min())


def insert_lesions(
    image: np.ndarray,
    labels: np.ndarray,
    spacing_mm: float,
    window: tuple[float, float],
    rng: np.random.Generator,
    count: int = 1,
) -> int:
    """Insert up to ``count`` lesions, in place, into the lungs or liver of a crop on the model's grid
    (``image`` normalised by the CT ``window``): solid nodules (-100 to 60 HU) in lungs, hypo- or hyperdense
    lesions in the liver, 3-25 mm (lung) or 3-20 mm (liver) in radius, half of them against the organ's wall
    (tumours abutting the pleura or the liver capsule), with a partial-volume edge and noise like the tissue
    around them. Returns how many were inserted (none where the crop holds too little lung or liver)."""
    low, high = window
    scale = high - low
    inserted = 0
    for _ in range(count):
        organ = LUNG if rng.random() < 0.5 else LIVER
        organ_mask = labels == organ
        if np.count_nonzero(organ_mask) < 200:
            organ = LIVER if organ == LUNG else LUNG
            organ_mask = labels == organ
            if np.count_nonzero(organ_mask) < 200:
                break
        where = np.argwhere(organ_mask)
        if rng.random() < 0.5:  # against the organ's wall (juxtapleural, subcapsular): a half-ball
            from scipy import ndimage

            wall = np.argwhere(organ_mask & ~ndimage.binary_erosion(organ_mask, border_value=1))
            where = wall if len(wall) else where
        centre = where[rng.integers(len(where))].astype(np.float32)
        largest = 25.0 if organ == LUNG else 20.0
        radii = rng.uniform(3.0, largest) / spacing_mm * rng.uniform(0.75, 1.25, size=3)
        field = _blob(image.shape, centre, radii.astype(np.float32), rng)
        edge = rng.uniform(0.3, 0.8)  # voxels: how soft the partial-volume edge is
        alpha = 1.0 / (1.0 + np.exp(-np.clip(field / edge, -30, 30)))
        inside = (field > 0) & organ_mask
        if np.count_nonzero(inside) < 4:
            continue
        alpha = np.where(organ_mask, alpha, 0.0).astype(np.float32)  # never past the organ's edge
        tissue = image[organ_mask]
        noise = float(np.std(tissue)) if organ == LIVER else rng.uniform(0.005, 0.02)
        if organ == LUNG:
            value = (rng.uniform(-100.0, 60.0) - low) / scale
        else:
            liver = float(np.median(tissue))
            value = liver + rng.choice([-1.0, -1.0, -1.0, 1.0]) * rng.uniform(15.0, 70.0) / scale
        texture = value + rng.normal(0.0, noise, size=image.shape).astype(np.float32)
        image[:] = image * (1 - alpha) + texture * alpha
        labels[inside] = LESION
        inserted += 1
    return inserted


def wash_out_contrast(image: np.ndarray, window, strength: float) -> None:
    """Make a contrast-enhanced CT look unenhanced, in place: tissue at 130-500 HU is pulled towards 45 HU
    (``strength`` 1: all the way). Both real training backgrounds are contrast CTs; many chest scans (lung2
    among them) are not, and an unenhanced heart and vessels must be seen as negatives too. Cancellous bone,
    in that range as well, comes out osteopenic inside its cortex (clipped at the window's 500 HU, untouched)."""
    low, high = window
    hu = image * np.float32(high - low) + np.float32(low)
    weight = np.clip((hu - 130.0) / 40.0, 0.0, 1.0) * np.clip((high - hu) / 30.0, 0.0, 1.0)
    image += (strength * weight * (45.0 - hu) / (high - low)).astype(np.float32)


def thick_slices(image: np.ndarray, thickness_mm: float, spacing_mm: float) -> np.ndarray:
    """``image`` as slices ``thickness_mm`` thick show it: a Gaussian along the slice axis (axis 0) whose full
    width at half maximum is the thickness. The training backgrounds have 1.5-3 mm slices, many chest CTs 5 mm."""
    from scipy import ndimage

    return ndimage.gaussian_filter1d(image, thickness_mm / spacing_mm / 2.355, axis=0)


def marginal_dice_ce(logits, target, known):
    """Dice plus cross-entropy for partially labelled cases: ``known`` (batch, classes) says which classes each
    case annotates (background always). An unannotated class's probability is merged into the background, so
    predicting it where the case says "background" costs nothing, and it gets no Dice term. With every class
    known this equals MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True)``."""
    import torch

    probabilities = torch.softmax(logits.float(), 1)
    known = known.to(torch.bool).clone()
    known[:, 0] = True
    spread = (1,) * (logits.ndim - 2)
    unknown = (~known).to(probabilities.dtype).view(*known.shape, *spread)
    merged = probabilities * known.to(probabilities.dtype).view(*known.shape, *spread)
    merged[:, 0] = probabilities[:, 0] + (probabilities * unknown).sum(1)
    cross_entropy = -torch.log(merged.gather(1, target.long()).clamp_min(1e-12)).mean()
    onehot = torch.zeros_like(probabilities).scatter_(1, target.long(), 1.0)
    axes = tuple(range(2, logits.ndim))
    intersection = (merged * onehot).sum(axes)
    total = merged.sum(axes) + onehot.sum(axes)
    dice = 1.0 - (2.0 * intersection + 1e-5) / (total + 1e-5)
    return dice[known].mean() + cross_entropy
