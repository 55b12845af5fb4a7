"""The ``ctdeepseg`` command line: the engine for cohorts, scripts and CI, without Slicer.

Every user-fixable problem ends with ``ctdeepseg: error: <message>`` on stderr and exit status 2; progress
goes to stderr so stdout stays clean for results.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .dependencies import REQUIREMENTS
from .errors import CTDeepSegError
from .jobs import Progress, ProgressInfo


def _print_progress(info: ProgressInfo) -> None:
    end = "\r" if sys.stderr.isatty() and info.fraction < 1 else "\n"
    sys.stderr.write(f"{info}{' ' * 10}{end}")
    sys.stderr.flush()


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _devices() -> list[str]:
    try:
        import torch
    except ImportError:
        return ["cpu (torch not installed: no inference possible)"]
    devices = [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps (Apple GPU)")
    return [*devices, "cpu"]


def command_info(_arguments: argparse.Namespace) -> int:
    from .model_paths import model_search_paths
    from .model_store import list_models

    print(f"CTDeepSeg {__version__}")
    print(f"Python {platform.python_version()} on {platform.system()} {platform.machine()}")
    for requirement in REQUIREMENTS:
        print(f"  {requirement.distribution:<12} {_package_version(requirement.distribution)}")
    print("Devices: " + ", ".join(_devices()))
    cards, problems = list_models()
    print("Models:" if cards else "Models: none found; searched " + ", ".join(map(str, model_search_paths())))
    for card in cards:
        print(f"  {card.name} {card['version']} ({card.folder})")
    for problem in problems:
        print(f"  unreadable: {problem}")
    return 0


def command_available(_arguments: argparse.Namespace) -> int:
    """The catalogue: every downloadable model, whether it is installed, whether CTDeepSeg runs it, its licence."""
    from .catalogue.entries import find_release, load_catalogue, size_text
    from .catalogue.install import read_manifest
    from .model_paths import user_models_folder

    models = user_models_folder()
    entries = load_catalogue()
    for entry in entries:
        release = find_release(entry["name"], entries)  # the newest version
        manifest = read_manifest(models / entry["name"])
        state = f"installed {manifest['version']}" if manifest else "not installed"
        runs = "runs in CTDeepSeg" if entry["supported"] else f"not runnable: {entry['why_not']}"
        print(f"{release.key}  [{entry['modality']} {entry['task']}, {entry['region']}]  {entry['title']}")
        size = size_text(entry, "size unknown")
        print(f"    {entry['source']}; {len(entry['structures'])} structures; {size}; {state}; {runs}")
        print(f"    {release.licence_line()}")
    return 0


def command_pull(arguments: argparse.Namespace) -> int:
    from .catalogue.entries import find_release
    from .catalogue.install import pull

    release = find_release(arguments.name)
    print(
        f"{release.key}: {release.entry['title']} ({release.entry['source']}); {release.licence_line()}",
        file=sys.stderr,
    )
    try:
        folder = pull(
            arguments.name,
            source=arguments.source,
            mirror=arguments.mirror,
            progress=Progress(_print_progress),
            accept_licence=arguments.accept_licence,
        )
    except KeyboardInterrupt:
        print(
            "ctdeepseg: interrupted; nothing was installed. The partial download is kept and the same command "
            "resumes it.",
            file=sys.stderr,
        )
        return 130
    print(f"{release.key} installed in {folder}; use it with --model {release.name}")
    return 0


def command_models(arguments: argparse.Namespace) -> int:
    from .model_paths import model_search_paths

    if arguments.available:
        return command_available(arguments)
    if arguments.import_path:
        return command_import(arguments)
    from .model_store import list_models

    cards, problems = list_models()
    if not cards:
        print("No models found; searched " + ", ".join(map(str, model_search_paths())))
    for card in cards:
        labels = ", ".join(f"{label.value} {label.name}" for label in card.labels)
        spacing = "x".join(f"{s:g}" for s in card["spacing"])
        print(f"{card.name} {card['version']}  [{card['modality']} {card['task']}, {spacing} mm]  labels: {labels}")
        print(f"    {card.folder}")
        if card.get("description"):
            print(f"    {card['description']}")
    for problem in problems:
        print(f"unreadable model: {problem}", file=sys.stderr)
    return 0


def command_import(arguments: argparse.Namespace) -> int:
    from .formats.importing import import_model, labels_from_text, normalisation_from_text, read_card_file

    card = read_card_file(arguments.card) if arguments.card else {}
    stated = {
        "modality": arguments.modality,
        "labels": labels_from_text(arguments.labels) if arguments.labels else None,
        "spacing": arguments.spacing,
        "orientation": arguments.orientation,
        "roi_size": arguments.roi_size,
        "normalisation": normalisation_from_text(arguments.normalisation) if arguments.normalisation else None,
        "activation": arguments.activation,
        "threshold": arguments.threshold,
    }
    card.update({key: value for key, value in stated.items() if value is not None})
    imported = import_model(arguments.import_path, arguments.name, card, overwrite=arguments.overwrite)
    labels = ", ".join(f"{label.value} {label.name}" for label in imported.labels)
    print(f"Imported {imported.name} into {imported.folder}  [{imported['modality']}; labels: {labels}]")
    return 0


def command_fetch_cases(arguments: argparse.Namespace) -> int:
    from .real_cases import CASES, fetch_cases

    folders = fetch_cases(arguments.names or None, cache=arguments.cache, progress=Progress(_print_progress))
    for folder in folders:
        case = CASES[folder.name]
        print(f"{folder.name}: {folder}  [{case.modality}; licence {case.licence}]")
    return 0


def command_phantom(arguments: argparse.Namespace) -> int:
    from .phantom import LABELS, make_phantom
    from .volume_io import write_volume

    output = Path(arguments.output)
    names = ("image.nii.gz", "label.nii.gz", "lesions.json")
    clashes = [name for name in names if (output / name).exists()]
    if clashes and not arguments.overwrite:
        raise CTDeepSegError(f"{output}: already holds {', '.join(clashes)}; choose another folder or --overwrite.")
    phantom = make_phantom(
        shape=arguments.shape[::-1],
        spacing=arguments.spacing,
        seed=arguments.seed,
        modality=arguments.modality,
        lung_lesions=arguments.lung_lesions,
        liver_lesions=arguments.liver_lesions,
    )
    output.mkdir(parents=True, exist_ok=True)
    write_volume(phantom.image, output / names[0], overwrite=arguments.overwrite)
    write_volume(phantom.labels, output / names[1], overwrite=arguments.overwrite)
    record = {
        "labels": {str(value): name for value, name in LABELS.items()},
        "lesions": [
            {"organ": lesion.organ, "radius_mm": lesion.radius_mm, "contrast": lesion.contrast, **lesion.box.to_dict()}
            for lesion in phantom.lesions
        ],
    }
    (output / names[2]).write_text(json.dumps(record, indent=2))
    print(f"Wrote {', '.join(str(output / name) for name in names)}")
    return 0


def command_evaluate(arguments: argparse.Namespace) -> int:
    from .evaluation import evaluate_case, evaluate_folders, format_table, parse_labels, write_results
    from .metrics import summarise

    prediction, reference = Path(arguments.prediction), Path(arguments.reference)
    labels = parse_labels(arguments.labels)
    if prediction.is_dir() != reference.is_dir():
        raise CTDeepSegError("PRED and REF must both be files (one case) or both be folders (a cohort).")
    if reference.is_dir():
        if arguments.output is None:
            raise CTDeepSegError("Evaluating folders writes tables and a report: give an output folder with -o.")
        rows, problems = evaluate_folders(prediction, reference, labels, Progress(_print_progress))
    else:
        rows, problems = evaluate_case(prediction, reference, labels, prediction.name), []
    columns = ("case", "name", "status", "dice", "hd_mm", "hd95_mm", "assd_mm", "volume_pred_ml", "volume_ref_ml")
    print(format_table(rows, columns))
    if reference.is_dir():
        summary_columns = (
            "name",
            "cases",
            "failures",
            "dice_mean",
            "dice_std",
            "dice_median",
            "hd95_mm_mean",
            "assd_mm_mean",
        )
        print("\n" + format_table(summarise(rows), summary_columns))
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if arguments.output is not None:
        written = write_results(
            rows, problems, Path(arguments.output), report=not arguments.no_report, overwrite=arguments.overwrite
        )
        print("Wrote " + ", ".join(map(str, written)))
    return 0


def command_postprocess(arguments: argparse.Namespace) -> int:
    from .evaluation import parse_labels
    from .postprocess import postprocess, steps_from_options
    from .volume_io import read_label, write_volume

    steps = steps_from_options(
        arguments.fill_holes,
        arguments.fill_holes_plane,
        arguments.min_island_mm3,
        arguments.keep_largest,
        arguments.closing_mm,
        arguments.opening_mm,
    )
    output = Path(arguments.output)
    if output.exists() and not arguments.overwrite:
        raise CTDeepSegError(f"{output}: already exists; choose another name or --overwrite.")
    labels = read_label(arguments.input)
    selected = parse_labels(arguments.labels)
    cleaned, changes = postprocess(
        labels, steps, None if selected is None else list(selected), Progress(_print_progress)
    )
    for change in changes:
        print(change)
    write_volume(cleaned, output, overwrite=arguments.overwrite)
    print(f"Wrote {output}")
    return 0


def command_segment(arguments: argparse.Namespace) -> int:
    from .cohort import cohort_inputs, run_cohort
    from .inference import segment_volume
    from .model_store import open_model
    from .volume_io import read_volume, write_probabilities, write_volume

    card, network = open_model(arguments.model, task="segmentation")
    progress = Progress(_print_progress)

    def segment_one(source: Path, target: Path, step: Progress) -> None:
        volume = read_volume(source)
        result = segment_volume(
            volume,
            card,
            network,
            arguments.device,
            arguments.probabilities is not None,
            not arguments.no_postprocess,
            progress=step,
            strict=arguments.strict,
            fast=arguments.fast,
        )
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
        write_volume(result.labels, target, overwrite=arguments.overwrite)
        if arguments.probabilities is not None:
            write_probabilities(result.probabilities, volume, arguments.probabilities, overwrite=arguments.overwrite)
        print(f"{source} -> {target} ({result.seconds:.1f} s on {result.device})")
        if result.confidence:
            figures = ", ".join(f"{name} {value:.2f}" for name, value in result.confidence.items())
            print(f"    confidence (mean probability inside each structure): {figures}")

    cases = cohort_inputs(arguments.input)
    output = Path(arguments.output)
    if cases is None:
        if output.exists() and not arguments.overwrite:
            raise CTDeepSegError(f"{output}: already exists; choose another name or --overwrite.")
        segment_one(Path(arguments.input), output, progress)
        return 0
    if arguments.probabilities is not None:
        raise CTDeepSegError("--probabilities is for one case; segment cases one by one to keep probabilities.")
    report = run_cohort(cases, output, segment_one, arguments.overwrite, progress)
    print(report.summary())
    return 1 if report.failed else 0


def command_detect(arguments: argparse.Namespace) -> int:
    from .cohort import cohort_inputs, run_cohort
    from .detector import detect_volume
    from .findings import write_findings
    from .model_paths import DEFAULT_DETECTOR
    from .model_store import open_model
    from .volume_io import read_volume

    card, network = open_model(arguments.model or DEFAULT_DETECTOR, task="detection")

    def detect_one(source: Path, target: Path, step: Progress) -> None:
        result = detect_volume(read_volume(source), card, network, arguments.device, arguments.threshold, progress=step)
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
        write_findings(target, result, str(source), overwrite=arguments.overwrite)
        print(f"{source} -> {target}: {len(result.findings)} finding(s) ({result.seconds:.1f} s on {result.device})")
        for rank, box in enumerate(result.findings, start=1):
            centre = ", ".join(f"{v:.1f}" for v in box.centre)
            size = " x ".join(f"{v:.1f}" for v in box.size)
            print(f"  {rank:>2}. {box.label} score {box.score:.2f} at LPS ({centre}) mm, {size} mm")

    cases = cohort_inputs(arguments.input)
    if cases is None:
        detect_one(Path(arguments.input), Path(arguments.output), Progress(_print_progress))
        return 0
    report = run_cohort(
        cases, Path(arguments.output), detect_one, arguments.overwrite, Progress(_print_progress), ".json"
    )
    print(report.summary())
    return 1 if report.failed else 0


def command_froc(arguments: argparse.Namespace) -> int:
    from .atomic import write_text_atomic
    from .evaluation import parse_labels
    from .findings import read_candidates
    from .froc import froc, truth_boxes
    from .froc_report import froc_plot, pair_cases
    from .volume_io import read_label

    pairs = pair_cases(Path(arguments.predictions), Path(arguments.truth))
    values = list(parse_labels(arguments.labels) or {}) or None
    predictions, truths = {}, {}
    for case, prediction, truth in pairs:
        predictions[case] = read_candidates(prediction) if prediction else []
        truths[case] = (
            read_candidates(truth)
            if truth.suffix == ".json"
            else truth_boxes(read_label(truth), values, arguments.min_volume_mm3)
        )
    result = froc(predictions, truths, arguments.rule, arguments.iou)
    print(f"{result.scans} scan(s), {result.lesions} lesion(s); hit rule: {arguments.rule}")
    print("FP per scan   " + "  ".join(f"{rate:>6g}" for rate in result.sensitivities))
    print("sensitivity   " + "  ".join(f"{value:6.3f}" for value in result.sensitivities.values()))
    print(f"CPM {result.cpm:.3f}; " + ", ".join(f"AP@IoU{t:g} {v:.3f}" for t, v in result.average_precision.items()))
    output = Path(arguments.output)
    output.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output / "froc.json", json.dumps({"rule": arguments.rule, **result.to_dict()}, indent=2))
    froc_plot(result, output / "froc.png")
    print(f"Wrote {output / 'froc.json'} and {output / 'froc.png'}")
    return 0


def command_demo(arguments: argparse.Namespace) -> int:
    from .demo import run_demo

    output = Path(arguments.output)
    summary = run_demo(output, arguments.model, arguments.device, Progress(_print_progress))
    print(f"Model {summary['model']} on {summary['device']}")
    for name, figures in summary["phantom"]["per_label"].items():
        hd95 = "-" if figures["hd95_mm"] is None else f"{figures['hd95_mm']:.2f} mm"
        print(f"  phantom {name:<8} Dice {figures['dice']:.3f}  HD95 {hd95}")
    lung2 = summary["lung2"]
    print(f"  lung2: {lung2}" if isinstance(lung2, str) else f"  lung2 lesion Dice {lung2['lesion_dice']:.3f}")
    print(f"Results in {output}: segmentations (.nii.gz), overlays (.png), summary.json")
    return 0


def command_train(arguments: argparse.Namespace) -> int:
    from .training import Recipe, train_segmenter

    recipe = Recipe(seed=arguments.seed, iterations=arguments.iterations, train_phantoms=arguments.phantoms)
    _print_trained(train_segmenter(Path(arguments.output), recipe, Progress(_print_progress)))
    return 0


def _print_trained(card) -> None:
    scores = card["validation"]["validation_phantoms"]["dice"]
    print(
        f"Wrote model {card.name} to {card.folder}; phantom validation Dice: "
        + ", ".join(f"{name} {value:.3f}" for name, value in scores.items())
    )


def command_export(arguments: argparse.Namespace) -> int:
    from .evaluation import parse_labels
    from .model_store import model_record, open_model
    from .training_data import export_files

    names, model = parse_labels(arguments.labels) if arguments.labels else None, None
    if arguments.model:
        card, _ = open_model(arguments.model)
        names = {label.value: label.name for label in card.labels}
        model = model_record(card)
    result = export_files(
        arguments.dataset,
        arguments.image,
        arguments.label,
        names,
        arguments.original,
        arguments.case,
        model,
        arguments.replace,
    )
    print(result.message)
    for name, change in result.changes.items():
        print(
            f"  {name:<12} Dice original vs corrected {change['dice']:.3f}, "
            f"+{change['added_ml']:.2f} ml, -{change['removed_ml']:.2f} ml"
        )
    return 0


def command_finetune(arguments: argparse.Namespace) -> int:
    import os

    from .finetune import FinetuneRecipe, finetune

    recipe = FinetuneRecipe(
        epochs=arguments.epochs,
        iterations_per_epoch=arguments.iterations_per_epoch,
        val_fraction=arguments.val_fraction,
        learning_rate=arguments.learning_rate,
        seed=arguments.seed,
    )
    first = os.environ.get("RANK", "0") == "0"  # under torchrun only the first process reports
    progress = Progress(_print_progress if first else None)
    card = finetune(
        arguments.dataset, arguments.model, arguments.output, recipe, arguments.device, arguments.resume, progress
    )
    if card is not None:
        before, after = card["validation"]["before"], card["validation"]["after"]
        from .finetune import CURVE_FILE

        curve = card.folder / CURVE_FILE
        print(f"Wrote model {card.name} to {card.folder}" + (f" (training curve: {curve})" if curve.is_file() else ""))
        for name in before:
            print(f"  {name:<12} validation Dice {before[name]:.3f} -> {after.get(name, float('nan')):.3f}")
    return 0


def command_train_real(arguments: argparse.Namespace) -> int:
    from .real_training import RealRecipe, train_real_segmenter

    recipe = RealRecipe(seed=arguments.seed, iterations=arguments.iterations, hold_out=arguments.hold_out)
    card = train_real_segmenter(Path(arguments.output), recipe, Progress(_print_progress))
    _print_trained(card)
    if held := card["validation"].get("held_out_case"):
        figures = ", ".join(
            f"{name} Dice {row['dice']:.3f} HD95 {row['hd95_mm']} mm" for name, row in held["structures"].items()
        )
        print(f"Held-out case {held['case']}: {figures}")
    return 0


def command_train_detector(arguments: argparse.Namespace) -> int:
    from .detector_training import DetectorRecipe, train_detector

    recipe = DetectorRecipe(
        seed=arguments.seed,
        iterations=arguments.iterations,
        train_phantoms=arguments.phantoms,
        real_backgrounds=tuple(arguments.real_backgrounds),
        vary_real_look=arguments.vary_look,
    )
    card = train_detector(Path(arguments.output), recipe, Progress(_print_progress))
    figures = card["validation"]["validation_phantoms"]
    print(f"Wrote detector {card.name} to {card.folder}; validation CPM {figures['cpm']:.3f}")
    return 0


INTERACTIVE_MODEL = "ctdeepseg-interactive"


def command_click(arguments: argparse.Namespace) -> int:
    from .interactive.engine import segment_click
    from .interactive.prompts import Prompts, box_from_corners
    from .model_store import open_model
    from .volume_io import read_label, read_volume, write_volume

    output = Path(arguments.output)
    if output.exists() and not arguments.overwrite:
        raise CTDeepSegError(f"{output}: already exists; choose another name or --overwrite.")
    volume = read_volume(arguments.image)
    volume.require_finite("image")
    convert = (lambda p: [p[0] * -1, p[1] * -1, p[2]]) if arguments.ras else (lambda p: p)
    box = None
    if arguments.box:
        corners = [convert(arguments.box[:3]), convert(arguments.box[3:])]
        box = box_from_corners(*corners)
    prompts = Prompts([convert(p) for p in arguments.include or []], [convert(p) for p in arguments.exclude or []], box)
    previous = read_label(arguments.previous, reference=volume) if arguments.previous else None
    card, network = open_model(arguments.model or INTERACTIVE_MODEL, task="interactive")
    result = segment_click(volume, prompts, card, network, arguments.device, previous)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    write_volume(result.mask, output, overwrite=arguments.overwrite)
    voxels = int(result.mask.array.sum())
    print(
        f"{output}: {voxels} voxels ({voxels * volume.voxel_volume_mm3 / 1000:.2f} mL) in {result.seconds:.2f} s "
        f"on {result.device}; cube spacing {', '.join(f'{s:.2f}' for s in result.spacings)} mm"
    )
    return 0


def command_evaluate_clicks(arguments: argparse.Namespace) -> int:
    from .atomic import write_text_atomic
    from .evaluation import format_table
    from .interactive.evaluation import CLICK_CASES, evaluate_cases, model_method, summarise
    from .model_store import open_model
    from .real_cases import fetch_cases

    names = arguments.cases or [*CLICK_CASES, "phantom"]
    card, network = open_model(arguments.model or INTERACTIVE_MODEL, task="interactive")
    progress = Progress(_print_progress)
    fetch_cases([name for name in names if name != "phantom"], progress=progress.step(0.0, 0.05))
    traces = evaluate_cases(
        names,
        {"ctdeepseg": model_method(card, network, arguments.device)},
        baselines=not arguments.no_baselines,
        max_clicks=arguments.max_clicks,
        progress=progress.step(0.05, 1.0),
    )
    rows = summarise(traces)
    columns = ("case", "method", "objects", "dice_1", "dice_3", "dice_5", "noc85", "noc90", "latency_median_s")
    print(format_table(rows, columns))
    if arguments.output:
        output = Path(arguments.output)
        output.mkdir(parents=True, exist_ok=True)
        record = {"model": card.name, "summary": rows, "traces": [vars(trace) for trace in traces]}
        write_text_atomic(output / "clicks.json", json.dumps(record, indent=2))
        print(f"Wrote {output / 'clicks.json'}")
    return 0


def add_interactive_recipe_arguments(parser: argparse.ArgumentParser, iterations: bool = True) -> None:
    """The interactive recipe's options, for ``train-interactive`` and the tools that train it elsewhere (without
    ``--iterations`` where the tool works out the number itself)."""
    parser.add_argument("--seed", type=int, default=0)
    if iterations:
        parser.add_argument("--iterations", type=int, default=4500)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument(
        "--engine-scale",
        type=float,
        default=0.0,
        help="share of lesion scenes shown at the cube the engine uses for a first click (default 0)",
    )
    parser.add_argument(
        "--as-acquired",
        type=float,
        default=0.0,
        help="share of lesion scenes seen through the scan's own voxels, as its real lesions look (default 0)",
    )
    parser.add_argument(
        "--mix",
        type=float,
        nargs=3,
        default=(0.4, 0.35, 0.25),
        metavar=("SYNTHETIC", "LESIONS", "ORGANS"),
        help="shares of synthetic objects, lesions drawn into real scans and real organs (default 0.4 0.35 0.25)",
    )
    parser.add_argument("--start-from", help="a model folder to continue training from (same network)")
    parser.add_argument("--batch", type=int, default=4, help="samples per step (default 4)")
    parser.add_argument(
        "--workers", type=int, default=1, help="processes drawing the scenes, one stream each (default 1)"
    )
    parser.add_argument(
        "--reuse", type=int, default=1, help="steps per drawn batch, repeats flipped and transposed (default 1)"
    )


def interactive_recipe(arguments: argparse.Namespace, **changes: Any):
    """The interactive recipe of ``add_interactive_recipe_arguments``'s options (and ``changes``)."""
    from dataclasses import fields

    from .interactive.training import InteractiveRecipe

    given = {f.name: getattr(arguments, f.name) for f in fields(InteractiveRecipe) if hasattr(arguments, f.name)}
    recipe = InteractiveRecipe(**{**given, "mix": tuple(given.get("mix", InteractiveRecipe.mix)), **changes})
    if min(recipe.mix) < 0 or abs(sum(recipe.mix) - 1.0) > 1e-6:
        raise CTDeepSegError(
            f"--mix {' '.join(f'{v:g}' for v in recipe.mix)}: give three shares of at least 0 that add up to 1."
        )
    return recipe


def command_train_interactive(arguments: argparse.Namespace) -> int:
    from .interactive.training import train_interactive

    recipe = interactive_recipe(arguments)
    card = train_interactive(Path(arguments.output), recipe, Progress(_print_progress), device=arguments.device)
    figures = card["validation"]["validation_scenes"]
    print(f"Wrote interactive model {card.name} to {card.folder}; validation Dice {figures['dice']:.3f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctdeepseg", description="Deep-learning segmentation and detection for CT and MRI (3D Slicer's CTDeepSeg)."
    )
    parser.add_argument("--version", action="version", version=f"ctdeepseg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="print versions, compute devices and available models")
    info.set_defaults(handler=command_info)

    fetch = commands.add_parser("fetch-cases", help="fetch the small set of real scans into the user cache")
    fetch.add_argument(
        "names",
        nargs="*",
        help="cases to fetch (lung2, brain1, liver117, ts_ct, ts_cta, ts_mr, ts_ct_dicom); default all",
    )
    fetch.add_argument("--cache", type=Path, help="cache folder (default $CTDEEPSEG_CACHE or ~/.cache/ctdeepseg)")
    fetch.set_defaults(handler=command_fetch_cases)

    phantom = commands.add_parser("phantom", help="write a synthetic CT or MRI phantom with labels and lesion list")
    phantom.add_argument("-o", "--output", required=True, help="output folder")
    phantom.add_argument("--seed", type=int, default=0)
    phantom.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=(96, 96, 64),
        metavar=("I", "J", "K"),
        help="voxels along i, j, k (default 96 96 64)",
    )
    phantom.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        default=(3.5, 3.5, 5.0),
        metavar=("SI", "SJ", "SK"),
        help="voxel spacing in mm (default 3.5 3.5 5)",
    )
    phantom.add_argument("--modality", choices=("CT", "MRI"), default="CT")
    phantom.add_argument("--lung-lesions", type=int, default=2)
    phantom.add_argument("--liver-lesions", type=int, default=2)
    phantom.add_argument("--overwrite", action="store_true", help="replace existing files")
    phantom.set_defaults(handler=command_phantom)

    demo = commands.add_parser("demo", help="the main job on a built-in sample: segment, measure, show")
    demo.add_argument("-o", "--output", default="results/demo", help="results folder (default results/demo)")
    demo.add_argument("--model", help="model name or folder (default: the shipped CT model)")
    demo.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    demo.set_defaults(handler=command_demo)

    models = commands.add_parser("models", help="list the models found (shipped, user folder, MONAI bundles)")
    models.add_argument(
        "--available", action="store_true", help="list the downloadable catalogue instead (installed or not, licence)"
    )
    models.add_argument(
        "--import",
        dest="import_path",
        metavar="PATH",
        help="install an ONNX file (with its preprocessing) or register an nnU-Net v2 results folder",
    )
    models.add_argument("--name", help="name of the imported model (default: the file or dataset name)")
    models.add_argument("--card", help="a model.json-style file with the ONNX model's preprocessing and labels")
    models.add_argument("--modality", choices=("CT", "MRI"), help="what the imported ONNX model reads")
    models.add_argument("--labels", help="structures by output channel: NAME or VALUE=NAME,... (e.g. 1=liver)")
    models.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), help="model spacing in mm")
    models.add_argument("--orientation", help="axis codes the model reads, e.g. RAS (MONAI) or LPS")
    models.add_argument("--roi-size", type=int, nargs=3, metavar=("X", "Y", "Z"), help="sliding-window size")
    models.add_argument("--normalisation", help="ct:LOW:HIGH, zscore or zscore-nonzero")
    models.add_argument("--activation", choices=("softmax", "sigmoid"), help="how the outputs become labels")
    models.add_argument("--threshold", type=float, help="probability a sigmoid output must exceed")
    models.add_argument("--overwrite", action="store_true", help="replace a model of the same name")
    models.set_defaults(handler=command_models)

    pull = commands.add_parser("pull", help="download, verify and install a catalogue model (or install a zip)")
    pull.add_argument("name", help="catalogue name, optionally @VERSION (default: the newest)")
    pull.add_argument("--from", dest="source", help="a zip you downloaded elsewhere, or another URL (verified alike)")
    pull.add_argument("--mirror", help="base URL of a mirror holding the same zip files (or $CTDEEPSEG_MIRROR)")
    pull.add_argument(
        "--accept-licence", action="store_true", help="accept a non-commercial or unstated licence shown above"
    )
    pull.set_defaults(handler=command_pull)

    segment = commands.add_parser("segment", help="segment a volume, a DICOM folder, or a folder / glob of cases")
    segment.add_argument("input", help="volume file, DICOM series folder, folder of volume files, or a glob")
    segment.add_argument("-o", "--output", required=True, help="label volume to write (a folder for many cases)")
    segment.add_argument("--model", help="model name or folder (default: the shipped CT model)")
    segment.add_argument("--device", default="auto", help="auto (CUDA, then Apple MPS, then CPU), cuda, mps or cpu")
    segment.add_argument("--probabilities", help="also write per-class probabilities (4D .nii.gz), one case only")
    segment.add_argument(
        "--strict", action="store_true", help="refuse a scan outside the model's scope (modality, body region)"
    )
    segment.add_argument(
        "--fast",
        action="store_true",
        help="bfloat16 on the CPU: 2-3x faster on CPUs with AVX-512 BF16 or AMX; a few boundary voxels differ",
    )
    segment.add_argument("--no-postprocess", action="store_true", help="skip the model card's default clean-up")
    segment.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip them)")
    segment.set_defaults(handler=command_segment)

    detect = commands.add_parser("detect", help="find lesions: 3D boxes with scores, as JSON and CSV")
    detect.add_argument("input", help="volume file, DICOM series folder, folder of volume files, or a glob")
    detect.add_argument(
        "-o", "--output", required=True, help="FINDINGS.json (a CSV is written beside it); a folder for many cases"
    )
    detect.add_argument("--model", help="detection model name or folder (default: the shipped detector)")
    detect.add_argument("--threshold", type=float, help="lowest score reported as a finding (default: the model's)")
    detect.add_argument("--device", default="auto", help="auto (CUDA, then Apple MPS, then CPU), cuda, mps or cpu")
    detect.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip them)")
    detect.set_defaults(handler=command_detect)

    score = commands.add_parser("froc", help="FROC, CPM and average precision of findings against the truth")
    score.add_argument("predictions", help="a findings JSON, or a folder of them (<case>.json)")
    score.add_argument("truth", help="a label volume or box-list JSON, or a folder of them (matched by case name)")
    score.add_argument("--labels", help="label values that are lesions in the truth volumes (default: all)")
    score.add_argument("--min-volume-mm3", type=float, default=0.0, help="ignore smaller true lesions")
    score.add_argument("--rule", choices=("centre", "iou"), default="centre", help="hit rule (default: centre)")
    score.add_argument("--iou", type=float, default=0.1, help="3D IoU for the iou rule (default 0.1)")
    score.add_argument("-o", "--output", default="results/froc", help="folder for froc.json and froc.png")
    score.set_defaults(handler=command_froc)

    train = commands.add_parser("train", help="train the demonstration CT segmenter from phantoms (the shipped recipe)")
    train.add_argument("-o", "--output", required=True, help="new model folder")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--iterations", type=int, default=2400)
    train.add_argument("--phantoms", type=int, default=24, help="training phantoms (3 more are held out)")
    train.set_defaults(handler=command_train)

    real = commands.add_parser(
        "train-real", help="train the CT segmenter on phantoms and the real training cases (fetch-cases first)"
    )
    real.add_argument("-o", "--output", required=True, help="new model folder")
    real.add_argument("--seed", type=int, default=0)
    real.add_argument("--iterations", type=int, default=2000)
    real.add_argument("--hold-out", help="leave this case out (ts_ct, ts_cta or lung2) and report its figures")
    real.set_defaults(handler=command_train_real)

    export = commands.add_parser("export", help="add a corrected image/label pair to a training dataset folder")
    export.add_argument("image", help="the image volume")
    export.add_argument("label", help="the corrected label volume (the image's grid)")
    export.add_argument("--dataset", required=True, help="dataset folder (Decathlon layout; created if needed)")
    export.add_argument("--original", help="the model's own prediction, kept beside the correction")
    export.add_argument("--case", help="case name (default: from the image file name)")
    export.add_argument("--model", help="the model that made the prediction (its labels and provenance)")
    export.add_argument("--labels", help="label names when no --model, e.g. 1:liver,2:tumour")
    export.add_argument("--replace", action="store_true", help="replace a case of that name (the old one is kept)")
    export.set_defaults(handler=command_export)

    tune = commands.add_parser("finetune", help="fine-tune a segmentation model on an exported dataset")
    tune.add_argument("--dataset", required=True, help="dataset folder written by export")
    tune.add_argument("--model", help="model name or folder to start from (default: the shipped CT model)")
    tune.add_argument("-o", "--output", required=True, help="new model: a name (user model folder) or a folder")
    tune.add_argument("--epochs", type=int, default=10)
    tune.add_argument("--iterations-per-epoch", type=int, default=20)
    tune.add_argument("--val-fraction", type=float, default=0.2, help="share of cases kept for validation")
    tune.add_argument("--learning-rate", type=float, default=5e-4)
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    tune.add_argument("--resume", action="store_true", help="continue an interrupted or cancelled run")
    tune.set_defaults(handler=command_finetune)

    train_det = commands.add_parser(
        "train-detector", help="train the demonstration lesion detector from phantoms (the shipped recipe)"
    )
    train_det.add_argument("-o", "--output", required=True, help="new model folder")
    train_det.add_argument("--seed", type=int, default=0)
    train_det.add_argument("--iterations", type=int, default=1200)
    train_det.add_argument("--phantoms", type=int, default=24, help="training phantoms (3 more are held out)")
    train_det.add_argument(
        "--real-backgrounds",
        nargs="*",
        default=[],
        metavar="CASE",
        help="real CTs (ts_ct, ts_cta) to insert lesions into as training backgrounds (fetch-cases first)",
    )
    train_det.add_argument(
        "--vary-look",
        action="store_true",
        help="show each real background copy, with probability 1/2 each, unenhanced and through 3-6 mm slices",
    )
    train_det.set_defaults(handler=command_train_detector)

    click = commands.add_parser("click", help="segment the object at include points (or in a box), refined by clicks")
    click.add_argument("image", help="volume file or DICOM series folder")
    click.add_argument("-o", "--output", required=True, help="mask to write (1 inside the object, the image's grid)")
    point = {"type": float, "nargs": 3, "action": "append", "metavar": ("X", "Y", "Z")}
    click.add_argument("--include", **point, help="a point inside the object, LPS mm (repeatable)")
    click.add_argument("--exclude", **point, help="a point outside the object, LPS mm (repeatable)")
    click.add_argument("--box", type=float, nargs=6, metavar=("X0", "Y0", "Z0", "X1", "Y1", "Z1"), help="box corners")
    click.add_argument("--ras", action="store_true", help="the coordinates are RAS, as Slicer shows them")
    click.add_argument("--previous", help="the mask to refine (from the last click)")
    click.add_argument("--model", help=f"interactive model name or folder (default {INTERACTIVE_MODEL})")
    click.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    click.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    click.set_defaults(handler=command_click)

    replay = commands.add_parser(
        "evaluate-clicks", help="replay simulated clicks on real cases: Dice after 1/3/5 clicks, NoC85/90, latency"
    )
    replay.add_argument("cases", nargs="*", help="lung2 brain1 liver117 ts_ct_dicom ts_mr phantom (default all)")
    replay.add_argument("--model", help=f"interactive model name or folder (default {INTERACTIVE_MODEL})")
    replay.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    replay.add_argument("--max-clicks", type=int, default=10)
    replay.add_argument("--no-baselines", action="store_true", help="skip region growing and Grow from seeds")
    replay.add_argument("-o", "--output", help="folder for clicks.json (every trace and the summary)")
    replay.set_defaults(handler=command_evaluate_clicks)

    train_int = commands.add_parser(
        "train-interactive", help="train the interactive (click) model: the shipped model's recipe"
    )
    train_int.add_argument("-o", "--output", required=True, help="new model folder")
    add_interactive_recipe_arguments(train_int)
    train_int.add_argument("--device", default="auto", help="where the network learns: auto, cuda, mps or cpu")
    train_int.set_defaults(handler=command_train_interactive)

    evaluate = commands.add_parser(
        "evaluate",
        help="Dice, Hausdorff and surface distances of a segmentation (or a folder of them) against references",
    )
    evaluate.add_argument("prediction", metavar="PRED", help="label volume, or folder of them (matched by file name)")
    evaluate.add_argument("reference", metavar="REF", help="reference label volume, or folder of them")
    evaluate.add_argument(
        "--labels", help="label values to score, optionally named: 1,2 or 1:liver,2:tumour (default: every label found)"
    )
    evaluate.add_argument("-o", "--output", help="folder for metrics.csv, summary.csv, metrics.json, report.html")
    evaluate.add_argument("--no-report", action="store_true", help="skip the HTML report")
    evaluate.add_argument("--overwrite", action="store_true", help="replace existing result files")
    evaluate.set_defaults(handler=command_evaluate)

    clean = commands.add_parser("postprocess", help="fill holes, remove islands, keep largest, close, open")
    clean.add_argument("input", help="label volume")
    clean.add_argument("-o", "--output", required=True, help="cleaned label volume to write")
    clean.add_argument("--fill-holes", action="store_true", help="fill cavities enclosed in 3D")
    clean.add_argument(
        "--fill-holes-plane",
        choices=("axial", "coronal", "sagittal"),
        help="also fill cavities closed in each slice of this plane",
    )
    clean.add_argument("--min-island-mm3", type=float, help="remove components smaller than this volume")
    clean.add_argument("--keep-largest", type=int, metavar="N", help="keep only the N largest components")
    clean.add_argument("--closing-mm", type=float, help="morphological closing with a ball of this radius")
    clean.add_argument("--opening-mm", type=float, help="morphological opening with a ball of this radius")
    clean.add_argument("--labels", help="label values to clean (default: all)")
    clean.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    clean.set_defaults(handler=command_postprocess)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        return arguments.handler(arguments)
    except CTDeepSegError as error:
        print(f"ctdeepseg: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ctdeepseg: interrupted; nothing partial was left behind.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
