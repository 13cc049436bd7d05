"""Per-call overhead of ``conv2d`` on a warm path: a tiny layer, called many times.

The layer (default: 1x8x7x7 input, 8->8 3x3, padding 1, bias) does about 28k
multiply-adds, well under a microsecond of arithmetic, so a call's time is nearly all
overhead: validation, planning, weight checks, buffers, the launch and the wait. Per
backend, after a warm-up, ``--calls`` calls of ``conv2d`` and of a ``Conv2d`` layer are
timed one by one; printed are the median and the minimum per call and, for OpenCL, the
median kernel time from profiling events (``RunInfo.timings["compute"]``)::

    python benchmarks/call_overhead.py [--calls 1000] [--backend numpy,opencl]

Run it with ``PYTHONPATH=<checkout>`` to time another checkout's convcli (before/after
a change, in turns, on the same machine: its noise moves medians by 2x here).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

if "PYTHONPATH" not in os.environ:  # this checkout's convcli, unless told otherwise
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from convcli import Conv2d, conv2d
from convcli.runinfo import RunInfo


def measure(backend: str, calls: int, layer_call: bool) -> tuple[float, float, float, str]:
    """(median us, min us, median kernel us, algo) per call."""
    rng = np.random.default_rng(0)
    x = rng.random((1, 8, 7, 7), dtype=np.float32)
    layer = Conv2d(8, 8, 3, padding=1, seed=0)
    w, b = np.array(layer.weight), np.array(layer.bias)

    def call(info: RunInfo) -> np.ndarray:
        if layer_call:
            return layer(x, backend=backend, info=info)
        return conv2d(x, w, b, padding=1, backend=backend, info=info)

    for _ in range(50):
        call(RunInfo())
    times, kernel = [], []
    info = RunInfo()
    for _ in range(calls):
        info = RunInfo()
        t0 = time.perf_counter()
        call(info)
        times.append(time.perf_counter() - t0)
        kernel.append(info.timings.get("compute", 0.0) if backend == "opencl" else 0.0)
    us = 1e6
    return statistics.median(times) * us, min(times) * us, statistics.median(kernel) * us, info.algo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--backend", default="numpy,opencl")
    args = parser.parse_args()
    import convcli

    print(f"convcli from {Path(convcli.__file__).parent}")
    for backend in args.backend.split(","):
        for layer_call in (False, True):
            med, low, kern, algo = measure(backend, args.calls, layer_call)
            what = "Conv2d layer" if layer_call else "conv2d()"
            print(
                f"{backend:7s} {what:13s} median {med:7.1f} us  min {low:7.1f} us  "
                f"kernel {kern:6.1f} us  algo={algo}"
            )


if __name__ == "__main__":
    main()
