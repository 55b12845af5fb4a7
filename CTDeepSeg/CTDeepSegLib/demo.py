"""The main job on an embedded default: segment a sample CT, measure it, and show it.

The sample is a synthetic phantom the code makes on the spot (no download), plus the real chest CT ``lung2``
when it has been fetched. Results go to one folder: the image, the true labels, the segmentation, a PNG with
three orthogonal slices and the overlay, and a summary (text and JSON) with Dice and HD95 per structure.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import CTDeepSegError
from .jobs import Progress
from .volume import Volume


def overlay_png(image: Volume, labels: Volume, colours: dict[int, tuple], path: Path, title: str) -> None:
    """Axial, coronal and sagittal slices through the labelled region's centre, with labels blended in colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = np.argwhere(labels.array > 0)
    centre = found.mean(axis=0).round().astype(int) if len(found) else np.array(image.shape) // 2
    grey = np.clip((image.array.astype(np.float32) + 1000) / 1400, 0, 1)
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.4), dpi=90)
    views = [
        ("axial", grey[centre[0]], labels.array[centre[0]], image.spacing[1] / image.spacing[0]),
        ("coronal", grey[::-1, centre[1]], labels.array[::-1, centre[1]], image.spacing[2] / image.spacing[0]),
        ("sagittal", grey[::-1, :, centre[2]], labels.array[::-1, :, centre[2]], image.spacing[2] / image.spacing[1]),
    ]
    for axis, (name, slice_grey, slice_labels, aspect) in zip(axes, views):
        rgb = np.repeat(slice_grey[..., None], 3, axis=-1)
        for value, colour in colours.items():
            mask = slice_labels == value
            rgb[mask] = 0.5 * rgb[mask] + 0.5 * np.asarray(colour[:3])
        axis.imshow(rgb, aspect=aspect)
        axis.set_title(name)
        axis.axis("off")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def run_demo(output: Path, model: str | None = None, device: str = "auto", progress: Progress | None = None) -> dict:
    """Run the demo into ``output`` (which must not hold an earlier demo); returns the summary."""
    from .inference import segment_volume
    from .metrics import compare_labels
    from .model_store import open_model
    from .phantom import make_phantom
    from .real_cases import load_case
    from .volume_io import write_volume

    progress = progress or Progress()
    if (output / "summary.json").exists():
        raise CTDeepSegError(f"{output}: already holds a demo; choose another folder or remove it.")
    output.mkdir(parents=True, exist_ok=True)
    progress.update(0.0, "Loading model")
    card, network = open_model(model, task="segmentation")
    colours = {label.value: label.colour for label in card.labels}
    names = {label.value: label.name for label in card.labels}
    phantom = make_phantom(shape=(128, 192, 192), spacing=(1.8, 1.8, 2.5), seed=2026, lung_lesions=3, liver_lesions=3)
    result = segment_volume(phantom.image, card, network, device, progress=progress.step(0.05, 0.7))
    for name, volume in (
        ("phantom_image", phantom.image),
        ("phantom_truth", phantom.labels),
        ("phantom_segmentation", result.labels),
    ):
        write_volume(volume, output / f"{name}.nii.gz")
    overlay_png(
        phantom.image,
        result.labels,
        colours,
        output / "phantom_overlay.png",
        f"{card.name} on a synthetic CT phantom ({result.seconds:.1f} s on {result.device})",
    )
    figures = compare_labels(result.labels, phantom.labels, names)
    summary = {
        "model": f"{card.name} {card['version']}",
        "device": result.device,
        "notes": result.notes,
        "phantom": {
            "seconds": round(result.seconds, 2),
            "per_label": {m.name: {"dice": round(m.dice, 4), "hd95_mm": m.hd95_mm} for m in figures},
        },
    }
    try:
        image, truth, _ = load_case("lung2")
    except CTDeepSegError:
        summary["lung2"] = "not fetched (run `ctdeepseg fetch-cases lung2` to add the real chest CT)"
    else:
        real = segment_volume(image, card, network, device, progress=progress.step(0.7, 1.0))
        write_volume(real.labels, output / "lung2_segmentation.nii.gz")
        overlay_png(
            image,
            real.labels,
            colours,
            output / "lung2_overlay.png",
            f"{card.name} on the real chest CT lung2 ({real.seconds:.1f} s)",
        )
        lesion = [v for v, n in names.items() if n == "lesion"]
        truth_lesion = truth.with_array((truth.array > 0).astype(np.uint8))
        predicted = real.labels.with_array((real.labels.array == (lesion[0] if lesion else -1)).astype(np.uint8))
        (figure,) = compare_labels(predicted, truth_lesion, {1: "lesion"})
        summary["lung2"] = {"seconds": round(real.seconds, 2), "lesion_dice": round(figure.dice, 4)}
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    progress.update(1.0, "Demo done")
    return summary
