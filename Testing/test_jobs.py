"""Progress with ETA, nested steps and cancellation within the work."""

from __future__ import annotations

import pytest

from CTDeepSegLib.errors import CancelledError
from CTDeepSegLib.jobs import Progress


def test_nested_steps_map_onto_the_overall_fraction():
    seen = []
    progress = Progress(seen.append)
    progress.update(0.5, "half")
    second = progress.step(0.5, 1.0)
    second.update(0.5, "three quarters")
    assert [round(info.fraction, 3) for info in seen] == [0.5, 0.75]
    assert seen[-1].message == "three quarters" and seen[-1].eta_s is not None


def test_cancel_stops_the_work_at_its_next_update():
    progress = Progress()
    progress.update(0.1)
    progress.cancel()
    with pytest.raises(CancelledError, match="Cancelled by the user"):
        progress.update(0.2)
