"""MONAI RetinaNet detection bundles (Model Zoo ``lung_nodule_ct_detection`` layout) as a second detector backend.

Why: users of MONAI's 3D RetinaNet detectors can bring them into the same findings list, ROIs, table and FROC
scoring as CTDeepSeg's own 2.5D Faster R-CNN, without a MONAI Label server.

The bundle's configs are read without running them. Its components are written either as ``{"_target_": ...}``
entries or as one-call expressions such as ``"$monai.networks.nets.resnet.resnet50(spatial_dims=3, ...)"``;
each is parsed with Python's ``ast`` (never evaluated) into an allow-listed MONAI callable and literal arguments,
``@name`` references resolving to other config entries. The ``detector_ops`` lines are read the same way, for
the box selector and sliding-window settings. Anything else is refused with a message naming the field.

Inference follows the bundle exactly: MONAI's own ``Orientation``, ``Spacing`` and ``ScaleIntensityRange``
with the bundle's values (``Spacing`` always: the Model Zoo bundle disables it for LUNA16 images resampled
beforehand, but CTDeepSeg's inputs come at any spacing), the ``RetinaNetDetector`` (sliding windows when the
image exceeds the patch size, as the bundle's inferer does), boxes clipped to the image, then mapped to
patient space with the resampled image's affine. MONAI's box coordinates are continuous voxel indices with
voxel centres on integers (what its ``AffineBoxToWorldCoordinated`` assumes), so a box's corners map through
the affine as they are. A box takes the input volume's axes (the resampled grid's, up to order and sign), so
findings read like the Faster R-CNN's and an oblique scan gives boxes aligned with its voxels.
"""

from __future__ import annotations

import ast
import math
import re
from typing import Any

import numpy as np

from .boxes import Box
from .errors import CTDeepSegError
from .jobs import Progress
from .volume import LPS_TO_RAS, Volume

RETINANET_CLASS = "RetinaNet"
DEFAULT_FINDING_THRESHOLD = 0.5  # findings; every box above the bundle's own score_thresh is a FROC candidate
_BACKBONES = {f"resnet{depth}" for depth in (10, 18, 34, 50, 101, 152, 200)}
_CALLABLES = {
    **{name: "monai.networks.nets.resnet" for name in _BACKBONES},
    "resnet_fpn_feature_extractor": "monai.apps.detection.networks.retinanet_network",
    "RetinaNet": "monai.apps.detection.networks.retinanet_network",
    "AnchorGeneratorWithAnchorShape": "monai.apps.detection.utils.anchor_utils",
}
_FEATURE_EXTRACTOR_ARGS = (
    "backbone",
    "spatial_dims",
    "pretrained_backbone",
    "returned_layers",
    "trainable_backbone_layers",
)


def _reference_name(text: str) -> str:
    return text[1:].split("#")[0]


def _resolve(value: Any, config: dict, where: str, depth: int = 0) -> Any:
    """A literal, a component (dict with ``_target_`` or a ``$`` call) or an ``@reference`` as plain data.

    Components come back as ``{"component": name, "args": [...], "kwargs": {...}}``."""
    if depth > 8:
        raise CTDeepSegError(f"{where}: references nest too deeply.")
    if isinstance(value, str) and value.startswith("@"):
        name = _reference_name(value)
        if name not in config:
            raise CTDeepSegError(f"{where}: refers to @{name}, which the config does not define.")
        return _resolve(config[name], config, f"{where} -> @{name}", depth + 1)
    if isinstance(value, str) and value.startswith("$"):
        return _parse_call(value[1:], config, where, depth)
    if isinstance(value, str) and value.startswith("%"):
        raise CTDeepSegError(f"{where}: refers to another file ({value!r}); CTDeepSeg reads one config only.")
    if isinstance(value, dict) and "_target_" in value:
        name = str(value["_target_"]).split(".")[-1]
        if name not in _CALLABLES:
            raise CTDeepSegError(f"{where}: {value['_target_']!r} is not a component CTDeepSeg can build.")
        kwargs = {
            key: _resolve(item, config, f"{where}.{key}", depth + 1)
            for key, item in value.items()
            if not key.startswith("_")
        }
        return {"component": name, "args": [], "kwargs": kwargs}
    if isinstance(value, dict):
        return {key: _resolve(item, config, f"{where}.{key}", depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve(item, config, where, depth + 1) for item in value]
    return value


def _parse_call(expression: str, config: dict, where: str, depth: int, allowed: dict[str, str] = _CALLABLES) -> dict:
    """``module.function(literal or @ref, ...)`` parsed, never evaluated; the function must be in ``allowed``
    (name to the module it must come from, if the expression names one)."""
    references: dict[str, str] = {}

    def placeholder(match_text: str) -> str:
        key = f"_ref{len(references)}_"
        references[key] = match_text
        return key

    text = re.sub(r"@[A-Za-z_][\w#]*", lambda m: placeholder(m.group(0)), expression.strip())
    refused = CTDeepSegError(
        f"{where}: {expression!r} is not a single call of an allow-listed MONAI component with literal "
        "arguments; CTDeepSeg reads bundles without running code."
    )
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        raise refused from None
    if not isinstance(tree, ast.Call):
        raise refused
    dotted = []
    function = tree.func
    while isinstance(function, ast.Attribute):
        dotted.append(function.attr)
        function = function.value
    if not isinstance(function, ast.Name):
        raise refused
    dotted.append(function.id)
    name = dotted[0]
    module = ".".join(reversed(dotted[1:]))
    if name not in allowed or (module and not f"{allowed[name]}.".startswith(f"{module}.")):
        raise refused

    def argument(node: ast.AST) -> Any:
        if isinstance(node, ast.Name) and node.id in references:
            return _resolve(references[node.id], config, where, depth + 1)
        try:
            return ast.literal_eval(node)
        except ValueError:
            raise refused from None

    return {
        "component": name,
        "args": [argument(node) for node in tree.args],
        "kwargs": {keyword.arg: argument(keyword.value) for keyword in tree.keywords if keyword.arg},
    }


def _method_calls(config: dict, where: str) -> dict[str, dict]:
    """The ``detector_ops`` lines as ``{method: keyword arguments}`` (``@`` references resolved)."""
    calls = {}
    for index, line in enumerate(config.get("detector_ops", [])):
        text = str(line)
        head, _, rest = text.lstrip("$").partition(".")
        if head != "@detector" or "(" not in rest:
            continue
        method = rest.split("(")[0]
        if method not in ("set_box_selector_parameters", "set_sliding_window_inferer"):
            continue
        calls[method] = _parse_call(rest, config, f"{where} detector_ops[{index}]", 0, {method: ""})["kwargs"]
    return calls


def _component(entry: Any, expected: set[str] | str, where: str) -> dict:
    names = {expected} if isinstance(expected, str) else expected
    if not isinstance(entry, dict) or entry.get("component") not in names:
        raise CTDeepSegError(f"{where}: expected {' or '.join(sorted(names))}.")
    return entry


def retinanet_card(folder: Any, metadata: dict, config: dict, transforms: dict, labels_from: dict) -> dict:
    """The card data of a RetinaNet detection bundle (see the module docstring); weights are not loaded."""
    where = f"{folder / 'configs' / 'inference.json'}"
    network = _component(_resolve(config.get("network_def"), config, f"{where} network_def"), "RetinaNet", where)
    extractor = _component(
        network["kwargs"].get("feature_extractor"), "resnet_fpn_feature_extractor", f"{where} feature_extractor"
    )
    extractor_args = dict(zip(_FEATURE_EXTRACTOR_ARGS, extractor["args"])) | extractor["kwargs"]
    backbone = _component(extractor_args.pop("backbone", None), _BACKBONES, f"{where} backbone")
    if backbone["args"] or backbone["kwargs"].get("pretrained") or extractor_args.get("pretrained_backbone"):
        raise CTDeepSegError(
            f"{where}: the backbone asks for pretrained weights (a download); the bundle's "
            "models/model.pt must hold all of them."
        )
    detector = config.get("detector")
    anchors = _component(
        _resolve(detector.get("anchor_generator") if isinstance(detector, dict) else None, config, where),
        "AnchorGeneratorWithAnchorShape",
        f"{where} anchor_generator",
    )
    operations = _method_calls(config, where)
    window = operations.get("set_sliding_window_inferer", {})
    selector = operations.get("set_box_selector_parameters", {})
    spacing = _resolve(transforms.get("Spacingd", {}).get("pixdim"), config, f"{where} Spacingd.pixdim")
    if spacing is None:
        raise CTDeepSegError(f"{where}: no Spacingd transform in preprocessing; cannot tell the model's spacing.")
    scale = transforms.get("ScaleIntensityRanged")
    if scale is None:
        raise CTDeepSegError(f"{where}: no ScaleIntensityRanged transform to map (a CT window is expected).")
    scale = _resolve({k: v for k, v in scale.items() if not k.startswith("_")}, config, f"{where} ScaleIntensityRanged")
    classes = int(network["kwargs"].get("num_classes", 1))
    names = labels_from or {str(c): "lesion" if classes == 1 else f"class {c}" for c in range(classes)}
    roi = _resolve(window.get("roi_size", config.get("infer_patch_size")), config, f"{where} roi_size")
    return {
        "name": metadata.get("name", folder.name),
        "version": str(metadata.get("version", "")),
        "task": "detection",
        "modality": "CT",
        "description": metadata.get("description", ""),
        "labels": [
            {"value": int(channel) + 1, "name": str(name), "colour": [1.0, 0.85, 0.0]}
            for channel, name in sorted(names.items(), key=lambda item: int(item[0]))
        ],
        "network": {
            "class": RETINANET_CLASS,
            "backbone": {"function": backbone["component"], "kwargs": backbone["kwargs"]},
            "feature_extractor": extractor_args,
            "args": {k: v for k, v in network["kwargs"].items() if k != "feature_extractor"},
            "anchor_generator": anchors["kwargs"],
        },
        "spacing": [float(s) for s in spacing],
        "orientation": str(_resolve(transforms.get("Orientationd", {}).get("axcodes", "RAS"), config, where)),
        "normalisation": {
            "kind": "ct_window",
            "window": [float(scale["a_min"]), float(scale["a_max"])],
            "output_range": [float(scale.get("b_min", 0.0)), float(scale.get("b_max", 1.0))],
            "clip": bool(scale.get("clip", False)),
        },
        "roi_size": [int(r) for r in roi] if roi is not None else None,
        "overlap": float(window.get("overlap", 0.25)),
        "sw_batch_size": int(window.get("sw_batch_size", 1)),
        "blend": str(window.get("mode", "constant")),
        "detection": {
            "score_threshold": DEFAULT_FINDING_THRESHOLD,
            "box_selector": {
                "score_thresh": float(selector.get("score_thresh", 0.05)),
                "topk_candidates_per_level": int(selector.get("topk_candidates_per_level", 1000)),
                "nms_thresh": float(selector.get("nms_thresh", 0.5)),
                "detections_per_img": int(selector.get("detections_per_img", 300)),
            },
        },
        "weights": {"file": "models/model.pt", "format": "torch (weights only)"},
        "provenance": {"source": "MONAI bundle", "bundle": str(folder)},
    }


def build_retinanet(card: Any) -> Any:
    """The bundle's RetinaNet network (backbone, FPN feature extractor, heads) from the card's parsed values."""
    from monai.apps.detection.networks.retinanet_network import RetinaNet, resnet_fpn_feature_extractor
    from monai.networks.nets import resnet

    spec = card["network"]
    try:
        backbone = getattr(resnet, spec["backbone"]["function"])(**spec["backbone"]["kwargs"])
        extractor = resnet_fpn_feature_extractor(backbone, **spec["feature_extractor"])
        return RetinaNet(feature_extractor=extractor, **spec["args"])
    except (TypeError, ValueError) as error:
        message = f"{card.folder}: the bundle's network arguments do not fit MONAI's RetinaNet: {error}."
        raise CTDeepSegError(message) from None


def _detector(card: Any, network: Any, where: str, windows: int) -> Any:
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape

    spec = card["network"]
    detector = RetinaNetDetector(network, AnchorGeneratorWithAnchorShape(**spec["anchor_generator"]))
    detector.set_box_selector_parameters(**card["detection"]["box_selector"])
    if card["roi_size"] is not None:
        detector.set_sliding_window_inferer(
            roi_size=card["roi_size"],
            sw_batch_size=windows,
            overlap=card["overlap"],
            mode=card["blend"],
            sw_device=where,
            device=where,
        )
    return detector.eval()


def _windows(shape: tuple[int, ...], roi: list[int], overlap: float) -> int:
    """How many sliding windows MONAI visits over ``shape`` (for progress)."""
    count = 1
    for size, patch in zip(shape, roi):
        step = max(int(patch * (1 - overlap)), 1)
        count *= 1 if size <= patch else math.ceil((size - patch) / step) + 1
    return count


def model_image(volume: Volume, card: Any) -> Any:
    """The volume as the bundle's preprocessing leaves it: a (1, x, y, z) MetaTensor on the model's grid."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Orientation, ScaleIntensityRange, Spacing

    array = np.ascontiguousarray(volume.array.transpose(2, 1, 0), dtype=np.float32)[None]
    image = MetaTensor(torch.from_numpy(array), affine=torch.as_tensor(volume.ijk_to_ras()))
    ras_labels = (("L", "R"), ("P", "A"), ("I", "S"))  # the affine above is RAS, whatever MONAI's default becomes
    image = Orientation(axcodes=card["orientation"], labels=ras_labels)(image)
    image = Spacing(pixdim=card["spacing"])(image)
    window = card["normalisation"]
    low, high = window["output_range"]
    scale = ScaleIntensityRange(*window["window"], b_min=low, b_max=high, clip=window.get("clip", False))
    return scale(image)


def to_patient_boxes(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    affine_ras: np.ndarray,
    shape: tuple[int, ...],
    names: dict[int, str],
    axes: np.ndarray | None = None,
) -> list[Box]:
    """MONAI ``xyzxyz`` boxes (continuous indices, voxel centres on integers) on a grid as LPS ``Box`` objects,
    clipped to the image and best first.

    ``axes`` (the input volume's direction) names the box axes when the grid's axes are those up to order and
    sign (the bundle only reorients and resamples), so findings read like the Faster R-CNN's."""
    affine = LPS_TO_RAS @ np.asarray(affine_ras, dtype=np.float64)  # its own inverse: RAS -> LPS
    linear = affine[:3, :3]
    norms = np.linalg.norm(linear, axis=0)
    grid_axes = linear / norms
    swap = np.eye(3)
    if axes is not None:
        permutation = np.abs(np.round(np.asarray(axes).T @ grid_axes))
        if np.allclose(permutation.sum(axis=0), 1) and np.allclose(permutation.sum(axis=1), 1):
            grid_axes, swap = np.asarray(axes, dtype=np.float64), permutation
    found = []
    for box, score, label in zip(boxes, scores, classes):
        lower = np.clip(np.minimum(box[:3], box[3:]), 0, shape)
        upper = np.clip(np.maximum(box[:3], box[3:]), 0, shape)
        if np.any(upper <= lower):
            continue
        centre = linear @ ((lower + upper) / 2) + affine[:3, 3]
        size = swap @ ((upper - lower) * norms)
        found.append(Box(centre, size, grid_axes, names[int(label)], float(score)))
    return sorted(found, key=lambda b: -b.score)


def retinanet_candidates(
    volume: Volume, card: Any, network: Any, device: str, progress: Progress, notes: list[str]
) -> list[Box]:
    """Every box the bundle's detector keeps (above its ``score_thresh``), in patient space, best first.

    ``detector.detect_volume`` calls this for a RetinaNet card and makes the findings from it."""
    import torch

    from .inference import run_with_fallback

    image = model_image(volume, card)
    shape = tuple(image.shape[1:])
    roi = card["roi_size"]
    sliding = roi is not None and any(size > patch for size, patch in zip(shape, roi))

    def run(where: str, size: int) -> dict:
        detector = _detector(card, network.to(where), where, size)
        total = math.ceil(_windows(shape, roi, card["overlap"]) / size) if sliding else 1
        calls = [0]

        def report(*_: Any) -> None:
            progress.update(min(calls[0] / total, 0.99), f"Detecting ({where})")
            calls[0] += 1

        hook = network.register_forward_pre_hook(report)
        try:
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=where.startswith("cuda")):
                return detector([image.as_tensor().to(where)], use_inferer=sliding)[0]
        finally:
            hook.remove()

    output = run_with_fallback(run, device, card["sw_batch_size"], notes)
    return to_patient_boxes(
        output["boxes"].float().cpu().numpy(),
        output["labels_scores"].float().cpu().numpy(),
        output["labels"].cpu().numpy(),
        image.affine.numpy(),
        shape,
        {label.value - 1: label.name for label in card.labels},
        volume.direction,
    )
