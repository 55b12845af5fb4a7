"""Interactive segmentation's machinery: prompts in RAS and LPS, the cube and its way back to the image grid,
the simulated clicks, the replay protocol's arithmetic, clear refusals, and the persistent click session."""

from __future__ import annotations

import numpy as np
import pytest

from CTDeepSegLib.background.session import EngineSession
from CTDeepSegLib.boxes import Box
from CTDeepSegLib.errors import CTDeepSegError
from CTDeepSegLib.interactive.crop import Crop
from CTDeepSegLib.interactive.encoding import encode
from CTDeepSegLib.interactive.evaluation import Trace, replay, summarise
from CTDeepSegLib.interactive.prompts import Prompts, ras_to_lps
from CTDeepSegLib.interactive.simulation import corrective_click, farthest_interior_point
from CTDeepSegLib.volume import Volume


def test_points_given_in_ras_and_lps_land_on_the_same_voxel_of_an_oblique_volume(oblique_volume):
    target = np.array([7, 4, 3])  # i, j, k of one voxel (the volume is 13 x 9 x 6)
    lps = oblique_volume.index_to_physical(target)
    ras = lps * np.array([-1.0, -1.0, 1.0])
    from_lps, from_ras = Prompts([lps]), Prompts.from_ras([ras])
    np.testing.assert_allclose(from_ras.include[0], from_lps.include[0], atol=1e-12)
    np.testing.assert_allclose(ras_to_lps(ras), lps)

    marked = oblique_volume.with_array(np.zeros(oblique_volume.shape, np.float32))
    marked.array[target[2], target[1], target[0]] = 1.0
    crop = Crop(lps + np.array([1.0, -2.0, 0.5]), 0.3, 32)  # finer than the voxels, the point off-centre
    cube = crop.sample(marked, order=0, fill=0.0)
    inputs = encode(cube, crop.to_index(marked, np.array(from_ras.include)), [], None, None, sigma=1.0)
    peak = np.unravel_index(np.argmax(inputs[2]), inputs[2].shape)
    assert cube[peak] == 1.0, "the include blob's peak lies in the clicked voxel"
    back = np.round(marked.physical_to_index(crop.to_physical(marked, np.array([peak]))[0])).astype(int)
    np.testing.assert_array_equal(back, target)


def test_a_cube_on_the_image_grid_goes_there_and_back_exactly():
    rng = np.random.default_rng(1)
    image = Volume(rng.normal(size=(20, 30, 40)).astype(np.float32), (1.5, 1.5, 1.5), (5.0, -3.0, 2.0))
    centre = image.index_to_physical(np.array([20.5, 15.5, 10.5]))  # an even cube: voxel centres meet
    crop = Crop(centre, 1.5, 16)  # same spacing
    cube = crop.sample(image)
    region, pasted = crop.paste(image, cube)
    np.testing.assert_allclose(pasted, image.array[region], atol=1e-5)
    assert pasted.shape == (16, 16, 16)


def test_the_first_click_is_the_deepest_point_and_the_next_goes_to_the_largest_error():
    grid = np.indices((40, 40, 40))
    sphere = ((grid - 20) ** 2).sum(axis=0) <= 10**2
    np.testing.assert_array_equal(farthest_interior_point(sphere, np.ones(3)), [20, 20, 20])
    missed = sphere.copy()
    missed[20:, :, :] = False  # half missed: an include click in the missing half
    extra = sphere | (((grid - np.array([20, 20, 34])[:, None, None, None]) ** 2).sum(axis=0) <= 3**2)
    point, include = corrective_click(missed, sphere, np.ones(3))
    assert include and point[0] >= 20 and sphere[tuple(point)]
    point, include = corrective_click(extra, sphere, np.ones(3))
    assert not include and not sphere[tuple(point)] and extra[tuple(point)]
    assert corrective_click(sphere, sphere, np.ones(3)) is None


def test_the_replay_protocol_counts_clicks_and_dice_exactly():
    truth = np.zeros((20, 20, 20), dtype=bool)
    truth[5:15, 5:15, 5:15] = True
    image = Volume(np.where(truth, 100.0, 0.0).astype(np.float32))

    def half_then_whole(volume, prompts, previous):
        mask = truth.copy()
        if len(prompts.include) + len(prompts.exclude) == 1:
            mask[10:] = False  # the first click finds half of it
        return volume.with_array(mask.astype(np.uint8))

    dice, seconds = replay(image, truth, half_then_whole, max_clicks=6)
    assert dice[0] == pytest.approx(2 * 500 / 1500) and dice[1:] == [1.0] * 5 and len(seconds) == 2
    traces = [Trace("box", "cube", "half then whole", dice, seconds)]
    (row,) = summarise(traces)
    assert (row["dice_1"], row["dice_3"], row["noc85"], row["noc90"], row["never_90"]) == (0.667, 1.0, 2, 2, 0)


def test_prompts_that_mean_nothing_are_refused_clearly(oblique_volume):
    with pytest.raises(CTDeepSegError, match="at least one include point .* or a box"):
        Prompts(exclude=[oblique_volume.origin]).check(oblique_volume)
    far = oblique_volume.origin + 500.0
    with pytest.raises(CTDeepSegError, match=r"The include point at LPS \(.*\) mm lies outside the image"):
        Prompts([far]).check(oblique_volume)
    with pytest.raises(CTDeepSegError, match="no extent"):
        Prompts(box=Box(oblique_volume.origin, [0.0, 5.0, 5.0])).check(oblique_volume)
    Prompts(box=Box(oblique_volume.origin, [5.0, 5.0, 5.0])).check(oblique_volume)


def test_a_session_stays_up_between_requests_and_survives_a_bad_one():
    session = EngineSession()
    try:
        first = session.call("make_phantom", seed=1, shape=(24, 40, 40), spacing=(6, 6, 8), timeout=120)
        process = session._process.pid
        with pytest.raises(CTDeepSegError, match="Unknown engine action 'nonsense'"):
            session.call("nonsense", timeout=60)
        second = session.call("make_phantom", seed=1, shape=(24, 40, 40), spacing=(6, 6, 8), timeout=60)
        assert session._process.pid == process, "one process answered all three"
        np.testing.assert_array_equal(first.labels.array, second.labels.array)
        folder = session.folder
    finally:
        session.close()
    assert not folder.exists() and not session.alive
