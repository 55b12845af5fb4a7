"""The panel's background work in Slicer's situation: engine child process against the former worker thread.

Segments a CT phantom four ways and prints the times side by side: in this process (the console's route); through
the engine runner with the main thread free, and with the main thread holding the GIL between 100 ms polls as
Slicer's does (``Testing/gil.py``); and on a worker thread in this process under the same GIL-holding loop (the
panel's former design), stopped at ``--thread-cap`` times the in-process time, with the fraction it reached.

    .venv/bin/python bench/background.py [--shape 80 96 96] [--spacing 3 3 3.5] [--thread-cap 3]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "CTDeepSeg"), str(ROOT / "Testing")]

from CTDeepSegLib import actions  # noqa: E402
from CTDeepSegLib.background.runner import EngineProcess  # noqa: E402
from CTDeepSegLib.errors import CancelledError  # noqa: E402
from CTDeepSegLib.jobs import Progress  # noqa: E402
from CTDeepSegLib.phantom import make_phantom  # noqa: E402
from gil import free_running_loop, slicer_like_main_loop  # noqa: E402


def runner(image, main_loop) -> float:
    began = time.monotonic()
    job = EngineProcess("segment", image, device="cpu").start()
    main_loop(lambda: job.done, job.poll)
    job.result()
    return time.monotonic() - began


def thread_under_held_gil(image, cap_s: float) -> tuple[float, float]:
    """Seconds the worker thread ran (at most ``cap_s``) and the fraction of the work it finished."""
    reached = [0.0]
    progress = Progress(lambda info: reached.__setitem__(0, info.fraction))

    def work() -> None:
        try:
            actions.segment(image, device="cpu", progress=progress)
        except CancelledError:
            pass

    worker = threading.Thread(target=work, daemon=True)
    began = time.monotonic()
    worker.start()
    slicer_like_main_loop(lambda: not worker.is_alive(), lambda: None, deadline=began + cap_s)
    seconds = time.monotonic() - began
    progress.cancel()
    worker.join()
    return seconds, reached[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(80, 96, 96), metavar=("K", "J", "I"))
    parser.add_argument("--spacing", type=float, nargs=3, default=(3.0, 3.0, 3.5), metavar=("SI", "SJ", "SK"))
    parser.add_argument("--thread-cap", type=float, default=3.0, help="stop the thread at this many times in-process")
    arguments = parser.parse_args()
    image = make_phantom(seed=77, shape=tuple(arguments.shape), spacing=tuple(arguments.spacing)).image
    print(f"CT phantom {image.shape[::-1]} voxels at {tuple(arguments.spacing)} mm, shipped model, CPU")

    actions.segment(image, device="cpu")  # imports torch and MONAI here, as every child process does on its own
    began = time.monotonic()
    actions.segment(image, device="cpu")
    inline = time.monotonic() - began
    free = runner(image, free_running_loop)
    held = runner(image, slicer_like_main_loop)
    thread_s, fraction = thread_under_held_gil(image, arguments.thread_cap * inline)

    print(f"  in this process (console, self-test)          {inline:7.1f} s")
    print(f"  child process, main thread free               {free:7.1f} s  ({free / inline:.2f}x in-process)")
    print(f"  child process, main thread holding the GIL    {held:7.1f} s  ({held / free:.2f}x free-running)")
    done = "finished" if fraction >= 1.0 else f"stopped at {fraction:.0%} done"
    rate = fraction / thread_s if thread_s else 0.0
    if rate == 0:
        slowdown = "no measurable progress"
    else:
        slowdown = f"about {1 / (rate * inline):.0f}x slower than in-process" if rate * inline < 1 else "no slower"
    print(f"  worker thread, main thread holding the GIL    {thread_s:7.1f} s  ({done}; {slowdown})")


if __name__ == "__main__":
    main()
