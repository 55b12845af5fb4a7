"""The engine's long-running operations, one function each, callable in this process or in a child process.

Why one place: the Slicer module runs these in a child Python process (``background.runner``), because
Slicer's main thread holds the GIL and a worker thread there barely runs; the Python console, the self-test
and scripts call the same functions directly and block. Every function takes engine values (``Volume``,
lists, dictionaries, paths) and a ``progress`` keyword, returns engine values, and never touches MRML, so
its inputs and outputs can travel as files (``background.transfer``). ``ACTIONS`` is the allow-list a child
process may run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .jobs import Progress
from .volume import Volume


def make_phantom(seed: int = 0, modality: str = "CT", progress: Progress | None = None, **options: Any):
    """A synthetic phantom (``phantom.Phantom``: image, labels, lesions); see ``phantom.make_phantom``."""
    from .phantom import make_phantom as make

    progress = progress or Progress()
    progress.update(0.0, "Creating phantom")
    phantom = make(seed=seed, modality=modality, **options)
    progress.update(1.0, "Phantom created")
    return phantom


def segment(
    volume: Volume, model: str | Path | None = None, device: str = "auto", progress: Progress | None = None, **options
):
    """Segment ``volume`` with a model name, model or bundle folder, or (None) the shipped CT model.

    Returns an ``inference.SegmentationResult`` on the volume's grid."""
    from .inference import segment_volume
    from .model_store import open_model

    progress = progress or Progress()
    progress.update(0.0, "Loading model")
    card, network = open_model(model, task="segmentation")
    return segment_volume(volume, card, network, device, progress=progress, **options)


def detect(
    volume: Volume,
    model: str | Path | None = None,
    device: str = "auto",
    threshold: float | None = None,
    segment_lesions: bool = False,
    segmenter: str | Path | None = None,
    progress: Progress | None = None,
):
    """Find lesions: a ``detector.DetectionResult`` and, with ``segment_lesions``, a label volume where finding
    n is value n (the interactive model ``segmenter``, default ``ctdeepseg-interactive``, prompted with each
    finding's box), else None."""
    from .detect_segment import segment_findings
    from .detector import detect_volume
    from .model_paths import DEFAULT_DETECTOR
    from .model_store import open_model

    progress = progress or Progress()
    progress.update(0.0, "Loading detector")
    card, network = open_model(model or DEFAULT_DETECTOR, task="detection")
    result = detect_volume(volume, card, network, device, threshold, progress=progress.step(0.0, 0.6))
    lesions = None
    if segment_lesions and result.findings:
        segmenter_card, segmenter_network = open_model(segmenter or "ctdeepseg-interactive", task="interactive")
        lesions = segment_findings(
            volume, result.findings, segmenter_card, segmenter_network, device, progress=progress.step(0.6, 1.0)
        )
    return result, lesions


def compare(
    prediction: Volume, reference: Volume, names: Mapping[int, str], progress: Progress | None = None
) -> list[dict]:
    """Figures per label (Dice, Hausdorff, HD95, surface distances, volumes) as table rows; see ``metrics``."""
    from .metrics import compare_labels

    progress = progress or Progress()
    progress.update(0.0, "Measuring")
    rows = [metrics.as_row() for metrics in compare_labels(prediction, reference, names)]
    progress.update(1.0, "Measured")
    return rows


def postprocess(labels: Volume, steps: list[dict], progress: Progress | None = None):
    """Clean a label volume: (cleaned labels, the change each step made per label); see ``postprocess``."""
    from .postprocess import postprocess as clean

    return clean(labels, steps, progress=progress)


def export_pair(*args: Any, progress: Progress | None = None, **kwargs: Any):
    """Add an image and its corrected labels to a training dataset: ``training_data.export_pair`` with the same
    arguments; returns its ``ExportResult``.

    Not cancellable once it has started writing (it takes seconds, and each file is written whole or not at all),
    so a Cancel never reports "nothing was written" about a case that was."""
    from .training_data import export_pair as export

    (progress or Progress()).update(0.0, "Exporting")
    return export(*args, **kwargs)


_INTERACTIVE: dict[tuple[str, float], Any] = {}  # (folder, weights mtime) -> (card, network), kept by a session


def click(
    volume: Volume,
    prompts,
    model: str | Path | None = None,
    device: str = "auto",
    previous: Volume | None = None,
    progress: Progress | None = None,
):
    """One interactive click (``interactive.engine.segment_click``); returns a ``ClickResult``. The model stays
    loaded between calls, so a persistent child process (``background.session``) answers in well under a second."""
    from .interactive.engine import segment_click
    from .model_store import open_model, resolve_model

    folder = resolve_model(model or "ctdeepseg-interactive")
    key = (
        str(folder),
        (folder / "model.safetensors").stat().st_mtime if (folder / "model.safetensors").exists() else 0,
    )
    if key not in _INTERACTIVE:
        _INTERACTIVE.clear()
        _INTERACTIVE[key] = open_model(folder, task="interactive")
    card, network = _INTERACTIVE[key]
    return segment_click(volume, prompts, card, network, device, previous)


def finetune(
    dataset: str | Path,
    model: str | Path | None = None,
    name: str = "finetuned",
    epochs: int = 10,
    device: str = "auto",
    resume: bool = False,
    progress: Progress | None = None,
    **recipe: Any,
):
    """Fine-tune ``model`` on an exported dataset into model ``name`` (user model folder); returns its card."""
    from .finetune import FinetuneRecipe
    from .finetune import finetune as train

    return train(dataset, model, name, FinetuneRecipe(epochs=epochs, **recipe), device, resume, progress)


# Seconds a cancelled action may take to stop by itself before it is killed: fine-tuning stops at its next
# training step, but a validation pass in between can take a while, and killing it would lose the epoch.
GRACE_S = {"finetune": 120.0}


def pull_model(
    spec: str,
    source: str | None = None,
    mirror: str | None = None,
    accept_licence: bool = False,
    progress: Progress | None = None,
) -> str:
    """Download (or, with ``source``, take a zip or URL), verify and install catalogue model ``NAME[@VERSION]``;
    returns the installed folder. See ``catalogue.install.pull``."""
    from .catalogue.install import pull

    return str(pull(spec, source=source, mirror=mirror, progress=progress or Progress(), accept_licence=accept_licence))


def import_model(
    source: str, name: str | None = None, card_file: str | None = None, progress: Progress | None = None
) -> str:
    """Install an ONNX file (its preprocessing and labels in ``card_file``, a model.json-style file) or register
    an nnU-Net v2 results folder; returns the new model folder. See ``formats.importing``."""
    from .formats.importing import import_model as run
    from .formats.importing import read_card_file

    (progress or Progress()).update(0.0, "Importing the model")
    card = read_card_file(card_file) if card_file else None
    return str(run(source, name, card).folder)


ACTIONS = {
    function.__name__: function
    for function in (
        make_phantom,
        segment,
        detect,
        compare,
        postprocess,
        export_pair,
        click,
        finetune,
        pull_model,
        import_model,
    )
}
