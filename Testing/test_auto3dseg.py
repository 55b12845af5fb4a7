"""MONAIAuto3DSeg models (``model.pt`` with ``state_dict`` and ``config``, plus ``labels.csv``) run in CTDeepSeg's
pipeline and give the labels MONAIAuto3DSeg's own recipe gives with MONAI's SegResNetDS on the same weights.

The checkpoint is written here in that layout (numpy values in its config, as Auto3DSeg saves them; the fused
``INSTANCE_NVFUSER`` norm name). The reference is MONAIAuto3DSeg's inference recipe rebuilt from MONAI
transforms: normalisation, ``Orientationd`` to RAS, ``CropForegroundd`` (margin 10), ``Spacingd`` with the 0.75-1.25
tolerance, ``SlidingWindowInfererAdapt`` (overlap 0.625, Gaussian), argmax, ``Invertd`` by nearest neighbour. The
input is RAS so that its crop and ours coincide (that extension computes the crop box on the image before it is
reoriented, which crops the wrong side of a flipped axis; CTDeepSeg crops the image it segments).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from CTDeepSegLib.auto3dseg import read_checkpoint
from CTDeepSegLib.errors import CTDeepSegError
from CTDeepSegLib.inference import model_grid, segment_volume
from CTDeepSegLib.model_store import build_network, card_of, open_model
from CTDeepSegLib.phantom import make_phantom

NETWORK = {
    "_target_": "SegResNetDS",
    "init_filters": 8,
    "blocks_down": [1, 2, 2],
    "norm": "INSTANCE_NVFUSER",
    "in_channels": 1,
    "out_channels": 4,
    "dsdepth": 2,
}
LABELS_CSV = (
    "LabelValue,Name,SegmentedPropertyCategoryCodeSequence.CodingSchemeDesignator,"
    "SegmentedPropertyCategoryCodeSequence.CodeValue,SegmentedPropertyCategoryCodeSequence.CodeMeaning,"
    "SegmentedPropertyTypeCodeSequence.CodingSchemeDesignator,SegmentedPropertyTypeCodeSequence.CodeValue,"
    "SegmentedPropertyTypeCodeSequence.CodeMeaning\n"
    "1,liver,SCT,123037004,Anatomical Structure,SCT,10200004,Liver\n"
    "2,lung,SCT,123037004,Anatomical Structure,SCT,39607008,Lung\n"
    "3,spine,,,,,,\n"
)


def _volume():
    """A phantom CT in RAS (direction diag(-1, -1, 1) in LPS) with air around the body.

    Its spacing is 7/5 of the model's on every axis: no voxel of the input falls exactly halfway between two
    model voxels, where nearest neighbour has no right answer (MONAI breaks such ties by float rounding, one
    way on one axis and the other way on the next; CTDeepSeg rounds half to even)."""
    return make_phantom(
        (40, 36, 28), (2.8, 2.8, 3.5), seed=3, origin=(60.0, 40.0, 100.0), direction=np.diag([-1.0, -1.0, 1.0])
    ).image


def _model(folder, volume, mode="range"):
    """An Auto3DSeg model folder; the final bias centred on this image so that every class appears."""
    folder.mkdir(parents=True)
    config = {
        "network": NETWORK,
        "resample_resolution": np.array([2.0, 2.0, 2.5]),
        "orientation_ras": True,
        "crop_foreground": True,
        "normalize_mode": mode,
        "intensity_bounds": [np.float32(-200.0), np.float32(300.0)],
        "roi_size": [48, 48, 32],
        "sigmoid": False,
    }
    (folder / "labels.csv").write_text(LABELS_CSV)
    torch.save({"state_dict": {}, "config": config, "epoch": 7, "best_metric": 0.5}, folder / "model.pt")
    card = card_of(folder)
    torch.manual_seed(0)
    network = build_network(card).eval()
    grid = model_grid(volume, card)
    image = grid.resample(grid.oriented(volume.array), card["normalisation"])
    with torch.no_grad():
        xyz = image.permute(0, 1, 4, 3, 2)
        padding = [amount for n in xyz.shape[:1:-1] for amount in (0, -n % 8)]
        logits = network(torch.nn.functional.pad(xyz, padding))
        final = [m for m in network.modules() if isinstance(m, torch.nn.Conv3d) and m.bias is not None][-1]
        final.bias -= logits.mean(dim=(0, 2, 3, 4))
    checkpoint = {"state_dict": network.state_dict(), "config": config, "epoch": 7, "best_metric": 0.5}
    torch.save(checkpoint, folder / "model.pt")
    return folder


def _reference(folder, volume) -> np.ndarray:
    from monai.data import MetaTensor
    from monai.inferers import SlidingWindowInfererAdapt
    from monai.networks.nets import SegResNetDS
    from monai.transforms import (
        Compose,
        CropForegroundd,
        Invertd,
        Lambdad,
        NormalizeIntensityd,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
    )

    checkpoint = torch.load(folder / "model.pt", weights_only=False)
    config = checkpoint["config"]
    network = SegResNetDS(**{**{k: v for k, v in NETWORK.items() if k != "_target_"}, "norm": "INSTANCE"})
    network.load_state_dict(checkpoint["state_dict"])
    network.eval()
    low, high = (float(v) for v in config["intensity_bounds"])
    if config["normalize_mode"] == "range":
        normalise = [
            ScaleIntensityRanged(keys="image", a_min=low, a_max=high, b_min=-1, b_max=1, clip=False),
            Lambdad(keys="image", func=torch.sigmoid),
        ]
    else:
        normalise = [NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)]
    pixdim = np.asarray(config["resample_resolution"])
    transform = Compose(
        [
            *normalise,
            Orientationd(keys="image", axcodes="RAS"),
            CropForegroundd(keys="image", source_key="raw", margin=10, allow_smaller=True),
            Spacingd(
                keys="image", pixdim=list(pixdim), mode="bilinear", min_pixdim=pixdim * 0.75, max_pixdim=pixdim * 1.25
            ),
        ]
    )
    lps = np.eye(4)
    lps[:3, :3] = volume.direction * volume.spacing
    lps[:3, 3] = volume.origin
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    array = torch.from_numpy(volume.array.transpose(2, 1, 0).astype(np.float32))[None]
    data = transform({"image": MetaTensor(array, affine=torch.tensor(ras)), "raw": array.clone()})
    inferer = SlidingWindowInfererAdapt(roi_size=config["roi_size"], sw_batch_size=1, overlap=0.625, mode="gaussian")
    with torch.no_grad():
        logits = inferer(inputs=data["image"][None].as_tensor(), network=network)
    pred = torch.softmax(logits, 1).argmax(1, keepdim=True).to(torch.uint8)[0]
    data["pred"] = MetaTensor(pred, meta=data["image"].meta, applied_operations=data["image"].applied_operations)
    inverted = Invertd(keys="pred", orig_keys="image", transform=transform, nearest_interp=True)(data)["pred"]
    return np.asarray(inverted[0]).transpose(2, 1, 0).astype(np.uint8)


@pytest.mark.parametrize("mode", ["range", "meanstd"])
def test_auto3dseg_model_agrees_with_its_own_recipe(tmp_path, mode):
    volume = _volume()
    folder = _model(tmp_path / "abdomen-test", volume, mode)
    card, network = open_model(folder)
    assert [(label.value, label.name) for label in card.labels] == [(1, "liver"), (2, "lung"), (3, "spine")]
    assert card.labels[0].snomed["type"] == ["SCT", "10200004", "Liver"] and card.labels[2].snomed == {}
    assert card["network"]["args"]["norm"] == "INSTANCE" and card["spacing"] == [2.0, 2.0, 2.5]
    ours = segment_volume(volume, card, network, device="cpu").labels.array
    theirs = _reference(folder, volume)
    present = np.unique(theirs)
    agreement = float(np.mean(ours == theirs))
    print(f"{mode}: agreement {agreement:.4f}, labels {present.tolist()}")
    assert len(present) >= 3 and agreement >= 0.99


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoint_needing_code_is_refused(tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "labels.csv").write_text(LABELS_CSV)
    torch.save({"state_dict": {}, "config": {"x": Payload()}}, folder / "model.pt", pickle_module=pickle)
    with pytest.raises(CTDeepSegError, match=r"model\.pt: not a plain weights file"):
        read_checkpoint(folder / "model.pt")
    assert "code ran" not in capsys.readouterr().out
    torch.save({"weights": {}}, folder / "model.pt")
    with pytest.raises(CTDeepSegError, match=r"not an Auto3DSeg checkpoint \(no 'config' dictionary\)"):
        open_model(folder)
