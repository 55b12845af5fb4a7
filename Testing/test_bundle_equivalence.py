"""Every real Model Zoo config CTDeepSeg accepts gives the label map MONAI's own bundle pipeline gives.

The configs are the bundles' real ``inference.json`` files (``Testing/data/model-zoo``); the weights are random
(none can be downloaded here), saved as the bundle's ``models/model.pt``. MONAI's side runs the same config
through ``monai.bundle.ConfigParser`` (which evaluates its expressions: this is the test's own trusted copy):
its preprocessing after the loader, its network and inferer, then activation, argmax and ``Invertd`` back to
the input grid. CTDeepSeg's side reads the config as data and runs its own pipeline. A bundle's "keep the
largest component" step is left out on both sides (MONAI's needs scikit-image); ``postprocess`` tests it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from CTDeepSegLib.bundle import bundle_card
from CTDeepSegLib.bundle_values import BundleConfig
from CTDeepSegLib.errors import CTDeepSegError
from CTDeepSegLib.inference import model_grid, segment_volume
from CTDeepSegLib.model_store import build_network, open_model
from CTDeepSegLib.phantom import make_phantom

ZOO = Path(__file__).parent / "data" / "model-zoo"
RUNNABLE = [
    "multi_organ_segmentation",
    "pancreas_ct_dints_segmentation",
    "pediatric_abdominal_ct_segmentation",
    "prostate_mri_anatomy",
    "spleen_ct_segmentation",
    "swin_unetr_btcv_segmentation",
    "wholeBody_ct_segmentation",
]


@pytest.fixture(scope="module")
def dints_architecture() -> dict:
    """A searched DiNTS topology as the Model Zoo's ``search_code_*.pt`` holds it (numpy arrays), decoded by
    MONAI's own TopologySearch from a seeded random search state (the real file cannot be downloaded here)."""
    from monai.networks.nets import TopologySearch

    torch.manual_seed(0)
    search = TopologySearch(channel_mul=0.25, num_blocks=12, num_depths=4, use_downsample=True, device="cpu")
    node_a, arch_code_a, arch_code_c, arch_code_a_max = search.decode()
    return {
        "node_a": node_a,
        "arch_code_a": arch_code_a,
        "arch_code_c": arch_code_c,
        "arch_code_a_max": arch_code_a_max,
    }


def _bundle(name: str, folder: Path, volume, architecture: dict | None = None) -> Path:
    """The real configs with random weights (seeded) for the network they describe.

    A random network's logits vary smoothly with the image but one class wins everywhere; the final layer's
    bias is shifted so that every class's mean logit on this image is zero, and the label map follows the
    image's structures (a meaningful comparison, not two constant maps)."""
    target = folder / name
    shutil.copytree(ZOO / name / "configs", target / "configs")
    (target / "models").mkdir()
    card = bundle_card(target)
    if card["network"]["class"] == "DiNTS":
        torch.save(architecture, target / card["network"]["architecture"]["file"])
    torch.manual_seed(0)
    network = build_network(card).eval()
    grid = model_grid(volume, card, crop_to_body=False)
    image = grid.resample(grid.oriented(volume.array), card["normalisation"])
    roi = tuple(card["roi_size"])[::-1]
    with torch.no_grad():
        logits = sliding_window_inference(image, roi, 1, network, overlap=0.0)
        final = [m for m in network.modules() if isinstance(m, torch.nn.Conv3d) and m.bias is not None][-1]
        final.bias -= logits.mean(dim=(0, 2, 3, 4))
    torch.save(network.state_dict(), target / "models" / "model.pt")
    return target


def _volume(shape=(40, 36, 28), spacing=(3.0, 3.0, 3.5)):
    """A small abdomen phantom, its i axis right-to-left (Orientationd flips it), at an offset origin."""
    return make_phantom(
        shape,
        spacing,
        seed=3,
        lung_lesions=1,
        liver_lesions=1,
        origin=(60.0, -40.0, 100.0),
        direction=np.diag([-1.0, 1.0, 1.0]),
    ).image


def _monai_labels(bundle: Path, volume) -> np.ndarray:
    from monai.bundle import ConfigParser
    from monai.data import MetaTensor
    from monai.transforms import Compose

    parser = ConfigParser()
    parser.read_config(str(next((bundle / "configs").glob("inference.*"))))
    parser["imports"] = []  # a bundle's own scripts/ are not here (and CTDeepSeg never imports them)
    if parser["network_def"]["_target_"].endswith("DiNTS"):  # the bundle loads its architecture onto CUDA
        parser["arch_ckpt_path"] = str(bundle / "models" / "search_code_18590.pt")
        parser["arch_ckpt"] = "$torch.load(@arch_ckpt_path, map_location='cpu', weights_only=False)"
        parser["dints_space"]["device"] = "cpu"
    if parser["network_def"]["_target_"] == "SwinUNETR":
        parser["network_def"].pop("img_size", None)  # removed from current MONAI; only checked input sizes
    steps = [
        t for t in parser["preprocessing"]["transforms"] if t["_target_"] not in ("LoadImaged", "EnsureChannelFirstd")
    ]
    parser["preprocessing"]["transforms"] = steps
    keep = {"Activationsd", "AsDiscreted", "Invertd"}  # largest component: MONAI needs scikit-image for it
    post = [t for t in parser["postprocessing"]["transforms"] if t["_target_"] in keep]
    parser["postprocessing"]["transforms"] = post  # edits before the first parse (the parser caches)
    lps = np.eye(4)
    lps[:3, :3] = volume.direction * volume.spacing
    lps[:3, 3] = volume.origin
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    image = MetaTensor(
        torch.from_numpy(volume.array.transpose(2, 1, 0).astype(np.float32))[None], affine=torch.tensor(ras)
    )
    preprocessing = parser.get_parsed_content("preprocessing")
    data = preprocessing({"image": image})
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    network.eval()
    inferer = parser.get_parsed_content("inferer")
    with torch.no_grad():
        logits = inferer(data["image"][None], network)[0]
    data["pred"] = MetaTensor(logits, meta=data["image"].meta, applied_operations=data["image"].applied_operations)
    result = Compose(parser.get_parsed_content("postprocessing").transforms)(data)
    pred = result["pred"]
    pred = pred.argmax(0) if pred.shape[0] > 1 else pred[0]
    return np.asarray(pred).transpose(2, 1, 0).astype(np.uint8)


@pytest.mark.parametrize("name", RUNNABLE)
def test_ctdeepseg_agrees_with_monai_bundle_pipeline(tmp_path, name, request):
    dints = "dints" in name or name == "multi_organ_segmentation"
    # DiNTS (77 M parameters, a 96^3 window): one window's worth of abdomen keeps the test short
    volume = _volume((32, 32, 26), (3.0, 3.0, 3.0)) if dints else _volume()
    architecture = request.getfixturevalue("dints_architecture") if dints else None
    bundle = _bundle(name, tmp_path, volume, architecture)
    card, network = open_model(bundle)
    ours = segment_volume(volume, card, network, device="cpu", sw_batch_size=1, postprocess_labels=False).labels.array
    theirs = _monai_labels(bundle, volume)
    assert ours.shape == theirs.shape
    agreement = float(np.mean(ours == theirs))
    present = np.unique(theirs)
    print(f"{name}: agreement {agreement:.4f}, labels {present.tolist()}")
    assert len(present) >= 2  # the comparison is not between two constant maps
    assert agreement >= 0.99


def test_references_and_safe_expressions_resolve_like_monai(tmp_path):
    from monai.bundle import ConfigParser

    path = ZOO / "wholeBody_ct_segmentation" / "configs" / "inference.json"
    ours = BundleConfig.read(path)
    parser = ConfigParser()
    parser.read_config(str(path))
    for identifier in ("pixdim", "modelname", "preprocessing#transforms#4#pixdim", "inferer#overlap"):
        assert ours.value(f"@{identifier}", "test") == parser.get_parsed_content(identifier)
    lowres = BundleConfig({**ours.data, "displayable_configs": {"highres": False}}, ours.folder, ours.name)
    assert lowres.value("@pixdim", "test") == [3.0, 3.0, 3.0]


@pytest.mark.parametrize(
    "expression, message",
    [
        ("$__import__('os').system('echo owned')", r"a call of __import__"),
        ("$torch.device('cpu')", r"a call of torch\.device"),
        ("$(lambda: 1)()", r"a call of lambda: 1"),
        ("$[x for x in range(3)]", r"uses ListComp"),
        ("$'a'.upper()", r"a call of 'a'\.upper"),
        ("$10 ** 100", r"a power above 64"),
        ("$[0] * 10 ** 7", r"a value too large"),
        ("$open", r"the name 'open'"),
    ],
)
def test_code_in_expressions_is_refused(tmp_path, expression, message):
    config = BundleConfig({"x": expression}, tmp_path, "inference.json")
    with pytest.raises(CTDeepSegError, match=message):
        config.value("@x", "inference.json x")


def test_allowed_expressions_compute_values():
    config = BundleConfig(
        {"label_names": {"spleen": 1, "background": 0}, "n": 2, "flag": True, "size": [96, 96, 64]},
        Path("."),
        "inference.json",
    )
    assert config.value("$len(@label_names) + @n", "t") == 4
    assert config.value("$[1.5, 1.5, 1.5] if @flag else [3.0, 3.0, 3.0]", "t") == [1.5, 1.5, 1.5]
    assert config.value("$max(@size) // 2 - -1", "t") == 49
    assert config.value("$@size[0:2]", "t") == [96, 96]
    assert config.value("@size#2", "t") == 64


def test_bundle_needing_its_own_code_says_why(tmp_path):
    target = tmp_path / "renal"
    shutil.copytree(ZOO / "renalStructures_UNEST_segmentation" / "configs", target / "configs")
    with pytest.raises(CTDeepSegError, match=r"scripts\.networks\.unest\.UNesT is the bundle's own Python code"):
        bundle_card(target)
    config = json.loads((target / "configs" / "inference.json").read_text())
    assert config["network_def"]["_target_"].startswith("scripts.")


def test_a_dints_architecture_file_is_checked_and_read_as_data(tmp_path, dints_architecture):
    """The search code is verified against large_files.yml and read as plain arrays: a changed file or one that
    needs pickled code is refused."""
    from CTDeepSegLib.bundle import load_bundle

    bundle = _bundle(
        "pancreas_ct_dints_segmentation", tmp_path, _volume((32, 32, 26), (3.0, 3.0, 3.0)), dints_architecture
    )
    search_code = bundle / "models" / "search_code_18590.pt"
    digest = hashlib.md5(search_code.read_bytes()).hexdigest()
    weights = hashlib.md5((bundle / "models" / "model.pt").read_bytes()).hexdigest()
    listing = 'large_files:\n- path: "models/search_code_18590.pt"\n  hash_val: "{}"\n  hash_type: "md5"\n'
    listing += f'- path: "models/model.pt"\n  hash_val: "{weights}"\n  hash_type: "md5"\n'
    (bundle / "large_files.yml").write_text(listing.format(digest))
    card, network = load_bundle(bundle)
    assert card["provenance"]["checksum"] == "md5 verified" and type(network).__name__ == "DiNTS"

    (bundle / "large_files.yml").write_text(listing.format("0" * 32))
    with pytest.raises(CTDeepSegError, match=r"search_code_18590\.pt: md5 checksum differs from large_files\.yml"):
        load_bundle(bundle)

    (bundle / "large_files.yml").unlink()
    torch.save({**dints_architecture, "where": Path("/tmp")}, search_code)  # a pickled class, not plain data
    with pytest.raises(CTDeepSegError, match=r"search_code_18590\.pt: not a plain weights file"):
        load_bundle(bundle)
