"""What a call on the NumPy backend's threads costs besides its jobs: the round trip of
two empty jobs through ``threads.run_jobs``, split into the wait for the worker to start
(waking it, on its own CPU with ``spread_workers``) and the wait, after the worker's job,
for the call to return (waking the caller), with the workers spread over the CPUs and
not. Microseconds, median/min over ``--calls`` calls, ``--gap`` seconds apart (a call
after idle finds its threads asleep, as a network's next layer does)::

    PYTHONPATH=. python benchmarks/numpy_pool_latency.py --calls 500

On the busy 2-vCPU machine (05:2x UTC, 2026-12-07): spread, to start 44-80 / 32-49,
worker's end to return 47-64 / 19-33, whole call 89-155 / 55-103; not spread, whole call
40-88 / 38-57. A layer whose jobs take less than about twice that on one thread gains
little from the second one.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

if "PYTHONPATH" not in os.environ:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from convcli.backends.numpy import threads
from convcli.backends.numpy.settings import DEFAULT


def measure(spread: bool, calls: int, gap: float) -> dict[str, list[float]]:
    """Per call: (to the worker's start, its job, its end to the call's return, whole)."""
    marks: list[tuple[float, float]] = []
    original = threads.on_own_cpu

    def on_own_cpu(work, k, place):
        start = time.perf_counter()
        original(work, k, place)
        marks.append((start, time.perf_counter()))

    settings = dataclasses.replace(DEFAULT, spread_workers=spread)
    rows: dict[str, list[float]] = {"to start": [], "end to return": [], "call": []}
    threads.on_own_cpu = on_own_cpu
    try:
        for _ in range(calls):
            marks.clear()
            t0 = time.perf_counter()
            threads.run_jobs(lambda _: None, [(0,), (1,)], 2, settings)
            t1 = time.perf_counter()
            start, end = marks[0]
            rows["to start"].append(start - t0)
            rows["end to return"].append(t1 - end)
            rows["call"].append(t1 - t0)
            time.sleep(gap)
    finally:
        threads.on_own_cpu = original
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--gap", type=float, default=0.0003, help="seconds between calls")
    args = ap.parse_args(argv)
    if not threads.ONE_THREAD_BLAS.available:
        print("no BLAS found by threadpoolctl: the backend runs on one thread")
        return 0
    for spread in (True, False):
        rows = measure(spread, args.calls, args.gap)
        parts = "  ".join(
            f"{name} {statistics.median(v) * 1e6:.1f}/{min(v) * 1e6:.1f}"
            for name, v in rows.items()
        )
        print(f"spread_workers={spread!s:5s} us median/min: {parts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
