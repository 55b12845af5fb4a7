"""Test helper: do two volumes put the same voxel values at the same physical places?

Slicer's file reader re-indexes left-handed volumes (it flips an axis so IJK-to-RAS is right-handed), so
two correct readings of one file can differ in indexing while agreeing voxel for voxel in patient space.
"""

from __future__ import annotations

import numpy as np

from CTDeepSegLib.volume import Volume


def assert_same_image(expected: Volume, actual: Volume, tolerance_mm: float = 1e-6) -> None:
    index_map = np.linalg.inv(expected.ijk_to_lps()) @ actual.ijk_to_lps()
    linear = np.round(index_map[:3, :3])
    assert np.allclose(index_map[:3, :3], linear, atol=tolerance_mm), "the grids are not aligned voxel for voxel"
    assert sorted(np.abs(linear).sum(axis=0)) == [1, 1, 1] and sorted(np.abs(linear).sum(axis=1)) == [1, 1, 1]
    offset = np.round(index_map[:3, 3])
    assert np.allclose(index_map[:3, 3], offset, atol=tolerance_mm)
    # Map every index of `actual` (i, j, k) to `expected`'s, then compare voxel values.
    k, j, i = np.indices(actual.shape).reshape(3, -1)
    mapped = (linear @ np.stack([i, j, k]) + offset[:, None]).astype(int)
    np.testing.assert_array_equal(expected.array[mapped[2], mapped[1], mapped[0]], actual.array[k, j, i])
