"""Progress with ETA, nested steps, cancellation within the work, and the worker-thread job."""

from __future__ import annotations

import threading
import time

import pytest

from CTDeepSegLib.errors import CancelledError, CTDeepSegError
from CTDeepSegLib.jobs import Job, Progress


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


def _counting(limit, progress):
    for step in range(limit):
        progress.update(step / limit, f"step {step}")
        time.sleep(0.01)
    return limit


def test_job_runs_in_the_background_and_returns_its_result():
    job = Job(_counting, 20).start()
    assert job.result(timeout=10) == 20
    assert job.done and job.latest.fraction == 1.0


def test_job_cancel_is_prompt_and_reraised():
    started = threading.Event()

    def endless(progress):
        started.set()
        while True:
            progress.update(0.5)
            time.sleep(0.01)

    job = Job(endless).start()
    started.wait(5)
    began = time.monotonic()
    job.cancel()
    with pytest.raises(CancelledError):
        job.result(timeout=5)
    assert time.monotonic() - began < 1.0


def test_job_hands_errors_to_the_caller():
    def failing(progress):
        raise CTDeepSegError("bad input")

    with pytest.raises(CTDeepSegError, match="bad input"):
        Job(failing).start().result(timeout=5)
