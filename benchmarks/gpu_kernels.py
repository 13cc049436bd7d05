"""The GPU-shaped kernels (direct_local, gemm_local) against the kernels the planner
picks for a CPU device, on the default OpenCL device, side by side in one process.

Usage::

    python benchmarks/gpu_kernels.py [--quick] [--repeat 5] [W1 W5 ...]

For each workload of ``convcli.bench``'s suite (its inputs and filters) it runs the
backend with
``settings.gpu_kernels`` False (the CPU-shaped plan) and True (the GPU-shaped plan),
checks both against the NumPy backend, and prints the median kernel time (profiling
events) and the median wall time of ``OpenCLBackend.run`` after a warm-up call. On a CPU
device (PoCL) this measures what the GPU kernels cost there, not what they do on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convcli import backends
from convcli.backends.numpy import NumpyBackend
from convcli.bench import SUITES
from convcli.runinfo import RunInfo
from convcli.spec import make_spec


def _time(be, x, w, b, spec, repeat: int) -> tuple[float, float, str, np.ndarray]:
    info = RunInfo()
    y = be.run(x, w, b, spec, info=info)  # warm-up: builds and first launches
    kernel, wall = [], []
    for _ in range(repeat):
        info = RunInfo()
        t0 = time.perf_counter()
        be.run(x, w, b, spec, info=info)
        wall.append(time.perf_counter() - t0)
        kernel.append(info.timings.get("compute", 0.0))
    return statistics.median(kernel), statistics.median(wall), info.algo, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ids", nargs="*")
    ap.add_argument("--quick", action="store_true", help="the quick suite's small sizes")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    be = backends.get_backend("opencl")
    default = be.settings
    print(f"device: {be.device_name} ({be.limits.type})")
    print(f"{'id':4} {'workload':44} {'plan':>14} {'kernel ms':>10} {'wall ms':>9}  error")
    rng = np.random.default_rng(0)
    for wl in SUITES["quick" if args.quick else "standard"]:
        if args.ids and wl.id not in args.ids:
            continue
        x, w = wl.arrays()
        b = rng.standard_normal(wl.w_shape[0]).astype(np.float32)
        spec = make_spec(x, w, b, **wl.options())
        ref = NumpyBackend().run(x, w, b, spec, algo="auto", info=RunInfo())
        for gpu in (False, True):
            be.settings = dataclasses.replace(default, gpu_kernels=gpu)
            kernel, wall, algo, y = _time(be, x, w, b, spec, args.repeat)
            err = float(np.abs(y - ref).max() / np.abs(ref).max())
            plan = ("gpu " if gpu else "cpu ") + algo
            print(
                f"{wl.id:4} {wl.description[:44]:44} {plan:>14} {kernel * 1e3:10.2f} "
                f"{wall * 1e3:9.2f}  {err:.1e}",
                flush=True,
            )
    be.settings = default


if __name__ == "__main__":
    main()
