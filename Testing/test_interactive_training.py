"""The interactive model's recipe: which data it may use, scenes that keep away from the evaluation lesions,
samples prompted as a user would, and a short run of the real recipe writing a loadable model."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from CTDeepSegLib.errors import CTDeepSegError
from CTDeepSegLib.interactive import synthesis
from CTDeepSegLib.interactive.encoding import CHANNELS
from CTDeepSegLib.interactive.training import (
    LESION_SOURCES,
    ORGAN_SOURCES,
    InteractiveRecipe,
    _interior_point,
    _reused,
    drawn_batches,
    engine_spacing,
    load_sources,
    make_sample,
    train_interactive,
)
from CTDeepSegLib.model_paths import SHIPPED_MODELS
from CTDeepSegLib.model_store import load_model, open_model
from CTDeepSegLib.real_cases import CASES
from CTDeepSegLib.volume import Volume


def test_the_recipe_uses_only_cases_it_may_train_on():
    used = set(LESION_SOURCES) | set(ORGAN_SOURCES)
    assert used == {"lung2", "brain1", "ts_ct", "ts_cta"}
    assert all(CASES[name].training_allowed for name in used)
    assert not used & {"liver117", "ts_ct_dicom", "ts_mr"}


@pytest.mark.realdata
def test_lesion_scenes_never_come_near_the_real_lesions_kept_for_evaluation(monkeypatch):
    lesions, _ = load_sources()
    cubes = []

    class RecordedCrop(synthesis.Crop):
        def __init__(self, centre, spacing, size):
            cubes.append((np.asarray(centre), spacing, size))
            super().__init__(centre, spacing, size)

    monkeypatch.setattr(synthesis, "Crop", RecordedCrop)
    rng = np.random.default_rng(0)
    for name in ("lung2", "brain1"):
        source, cubes[:] = lesions[name], []
        drawn = sum(synthesis.lesion_scene(rng, source) is not None for _ in range(12))
        assert drawn >= 6 and cubes
        for centre, spacing, size in cubes:
            nearest = np.min(np.linalg.norm(source.avoid - centre, axis=1))
            assert nearest > source.avoid_mm + spacing * size * np.sqrt(3) / 2, (name, nearest)


def test_samples_are_prompted_as_a_user_would():
    rng = np.random.default_rng(1)
    kinds = {"click": 0, "box": 0, "refine": 0, "hidden": 0}
    for _ in range(40):
        image, target = synthesis.synthetic_scene(rng)
        inputs, truth = make_sample(rng, image, target, 2.0, dropout=0.4)
        assert inputs.shape == (CHANNELS, synthesis.SIZE, synthesis.SIZE, synthesis.SIZE) and truth.any()
        assert inputs.dtype == np.float32 and truth.shape == inputs.shape[1:]
        if inputs[5].any():
            kinds["refine"] += 1
        elif inputs[4].any():
            kinds["box"] += 1
        elif inputs[2].any():
            peak = np.unravel_index(np.argmax(inputs[2]), truth.shape)
            assert truth[peak], "an include click lies inside the object"
            kinds["click"] += 1
        else:
            kinds["hidden"] += 1
    assert all(count > 0 for count in kinds.values()), kinds


@pytest.mark.realdata
def test_the_batches_survive_being_sent_to_a_spawned_worker_and_repeat_from_the_seed():
    from CTDeepSegLib.interactive.scene_batches import SceneBatches

    recipe = InteractiveRecipe(seed=7, batch=2, mix=(1.0, 0.0, 0.0))  # synthetic scenes only: no download
    sent = pickle.loads(pickle.dumps(SceneBatches(recipe, {}, {})))  # what spawn does (macOS, Windows)
    first, again = next(iter(sent)), next(iter(SceneBatches(recipe, {}, {})))
    assert tuple(first[0].shape) == (2, CHANNELS, 64, 64, 64) and tuple(first[1].shape) == (2, 1, 64, 64, 64)
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(first, again))


def test_a_short_run_of_the_recipe_writes_a_model_that_loads(tmp_path):
    recipe = InteractiveRecipe(iterations=4, batch=2, validate_every=2, validation_samples=2, reuse=2)
    card = train_interactive(tmp_path / "short", recipe, device="cpu")
    loaded, network = open_model(card.folder, task="interactive")
    assert loaded["network"]["args"]["in_channels"] == CHANNELS and len(loaded["training_curve"]) == 2
    assert {"liver117", "ts_ct_dicom", "ts_mr"} <= set(loaded["provenance"]["data"]["never used"])
    assert loaded["provenance"]["device"] == "cpu"
    assert loaded["provenance"]["command"].endswith("--iterations 4 --batch 2 --reuse 2")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_training_on_a_missing_gpu_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(CTDeepSegError, match="no CUDA GPU is available"):
        train_interactive(tmp_path / "gpu", InteractiveRecipe(iterations=2), device="cuda")
    assert not (tmp_path / "gpu").exists()


def test_interior_points_are_those_of_the_whole_cube():
    """The depth is measured in the mask's box only; the points drawn must be the ones the whole cube gives."""

    def whole_cube(rng, mask):
        depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1, 1:-1]
        candidates = np.argwhere(depth >= 0.4 * depth.max())
        return candidates[rng.integers(len(candidates))].astype(float)

    shapes = np.random.default_rng(3)
    for trial in range(12):
        centre = shapes.uniform(0, 40, 3) if trial % 3 else np.array([1.0, 20.0, 38.0])  # some touch the border
        mask = synthesis.blob(shapes, (40, 40, 40), centre, shapes.uniform(3, 12))
        if not mask.any():
            continue
        ours, reference = np.random.default_rng(trial), np.random.default_rng(trial)
        for _ in range(3):
            assert np.array_equal(_interior_point(ours, mask), whole_cube(reference, mask))


def test_repeated_batches_turn_the_prompts_and_the_target_with_the_image():
    rng = np.random.default_rng(0)
    targets = torch.from_numpy((rng.uniform(size=(2, 1, 6, 7, 8)) > 0.7).astype(np.float32))
    inputs = torch.from_numpy(rng.normal(size=(2, CHANNELS, 6, 7, 8)).astype(np.float32))
    inputs[:, 5] = targets[:, 0]  # the previous mask channel: it must stay aligned with the target
    repeats = list(_reused(iter([(inputs, targets)]), InteractiveRecipe(reuse=5)))
    assert len(repeats) == 5 and torch.equal(repeats[0][0], inputs) and torch.equal(repeats[0][1], targets)
    assert any(x.shape != inputs.shape or not torch.equal(x, inputs) for x, _ in repeats[1:])
    for x, y in repeats:
        assert torch.equal(x[:, 5], y[:, 0])
        assert sorted(x.shape[2:]) == [6, 7, 8] and torch.equal(
            x.flatten().sort().values, inputs.flatten().sort().values
        )


def test_each_scene_worker_draws_its_own_stream_reproducibly():
    recipe = InteractiveRecipe(seed=5, batch=2, mix=(1.0, 0.0, 0.0), workers=2)  # synthetic scenes only
    first = [b for _, b in zip(range(2), drawn_batches(recipe, {}, {}))]
    again = [b for _, b in zip(range(2), drawn_batches(recipe, {}, {}))]
    assert not torch.equal(first[0][0], first[1][0]), "two workers drew the same scenes"
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    single = next(iter(drawn_batches(InteractiveRecipe(seed=5, batch=2, mix=(1.0, 0.0, 0.0)), {}, {})))
    assert torch.equal(single[0], first[0][0]), "the first worker draws the seed's own stream"


def test_engine_scale_scenes_show_the_cubes_a_first_click_gets():
    """The default 40 mm field (64 voxels at 0.625 mm, or half the scan's finest spacing when coarser), grown 1.8x
    once or twice only for a lesion that would have filled the smaller cube."""
    thin = synthesis.RealSource(Volume(np.zeros((4, 4, 4), np.float32), (0.63, 0.63, 5.0), (0, 0, 0), np.eye(3)), "CT")
    coarse = synthesis.RealSource(Volume(np.zeros((4, 4, 4), np.float32), (3.0, 3.0, 3.0), (0, 0, 0), np.eye(3)), "CT")
    rng = np.random.default_rng(0)
    assert {engine_spacing(rng, thin, 10.0) for _ in range(20)} == {0.625}
    assert {round(engine_spacing(rng, thin, 40.0), 4) for _ in range(40)} == {0.625, 1.125}
    assert {round(engine_spacing(rng, thin, 60.0), 4) for _ in range(60)} == {0.625, 1.125, 2.025}
    assert {engine_spacing(rng, coarse, 10.0) for _ in range(20)} == {1.5}


def test_training_can_continue_from_a_model_with_the_same_network(tmp_path):
    start = str(SHIPPED_MODELS / "ctdeepseg-interactive")
    recipe = InteractiveRecipe(
        iterations=2, batch=2, validate_every=2, validation_samples=2, learning_rate=1e-9, start_from=start
    )
    card, network = load_model(train_interactive(tmp_path / "continued", recipe).folder)
    _, original = load_model(start)
    continued, before = network.state_dict(), original.state_dict()
    assert all(np.allclose(continued[k].numpy(), before[k].numpy(), atol=1e-5) for k in before)
    assert f"--start-from {start}" in card["provenance"]["command"]
    with pytest.raises(CTDeepSegError, match="not an interactive model"):
        train_interactive(
            tmp_path / "wrong",
            InteractiveRecipe(iterations=2, start_from=str(Path(start).parent / "ctdeepseg-phantom-ct")),
        )


def test_a_lesion_seen_as_acquired_is_smeared_across_thick_slices_only():
    """A step edge on the cube, seen through a scan of 5 mm slices and 0.625 mm pixels: along the slices it rises
    over one to two slices (8-16 cube voxels); across the pixels it stays as sharp as the cube."""
    image = Volume(np.zeros((24, 96, 96), np.float32), (0.625, 0.625, 5.0), (0, 0, 0), np.eye(3))
    crop = synthesis.Crop(image.index_to_physical(np.array([[48.0, 48.0, 12.0]]))[0], 0.625, 64)

    def rise(axis: int) -> float:
        step = np.zeros((64, 64, 64), np.float32)
        step[(slice(None),) * axis + (slice(0, 32),)] = 1.0
        seen = synthesis.acquired(image, crop, step)
        profile = np.moveaxis(seen, axis, 0)[:, 32, 32]
        assert profile[0] > 0.99 and profile[-1] < 0.01
        return float(np.sum((profile > 0.1) & (profile < 0.9)))

    assert 5 <= rise(0) <= 16, rise(0)  # the slab's average, then linear interpolation between slices
    assert rise(1) <= 2 and rise(2) <= 2, (rise(1), rise(2))


def test_a_lesion_seen_as_acquired_keeps_its_true_shape_as_the_object():
    source = synthesis.RealSource(
        Volume(np.random.default_rng(0).normal(0, 20, (24, 96, 96)).astype(np.float32), (0.625, 0.625, 5.0)), "CT"
    )
    plain = synthesis.lesion_scene(np.random.default_rng(4), source, spacing=0.625)
    seen = synthesis.lesion_scene(np.random.default_rng(4), source, spacing=0.625, as_acquired=True)
    assert np.array_equal(plain[1], seen[1]) and plain[1].sum() > 100
    inside, outside = plain[1], ~ndimage.binary_dilation(plain[1], iterations=12)
    for image in (plain[0], seen[0]):  # the lesion is there in both, apart from the tissue
        assert abs(np.median(image[inside]) - np.median(image[outside])) > 20
    assert not np.allclose(plain[0], seen[0], atol=1.0)


def test_the_command_line_gives_every_recipe_option_and_its_command_repeats_them():
    from CTDeepSegLib.cli import build_parser, interactive_recipe
    from CTDeepSegLib.interactive.training import _command

    words = "--seed 3 --iterations 2000 --learning-rate 0.001 --engine-scale 0.5 --as-acquired 1 --mix 0.3 0.35 0.35"
    words += " --start-from results/v1.1 --batch 8 --workers 15 --reuse 3"
    arguments = build_parser().parse_args(["train-interactive", "-o", "results/v1.2", *words.split()])
    recipe = interactive_recipe(arguments)
    assert (recipe.seed, recipe.iterations, recipe.learning_rate, recipe.engine_scale) == (3, 2000, 0.001, 0.5)
    assert recipe.mix == (0.3, 0.35, 0.35)
    assert (recipe.as_acquired, recipe.start_from, recipe.batch, recipe.workers, recipe.reuse) == (
        1.0,
        "results/v1.1",
        8,
        15,
        3,
    )
    assert _command(Path("results/v1.2"), recipe) == f"ctdeepseg train-interactive -o results/v1.2 {words}"


def test_a_mix_that_is_not_three_shares_adding_up_to_one_is_refused():
    from CTDeepSegLib.cli import build_parser, interactive_recipe

    arguments = build_parser().parse_args(["train-interactive", "-o", "x", "--mix", "0.5", "0.5", "0.5"])
    with pytest.raises(CTDeepSegError, match="add up to 1"):
        interactive_recipe(arguments)
