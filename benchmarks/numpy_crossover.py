"""Where the NumPy backend's algorithms cross over: the data behind its cost model.

Times every applicable NumPy algorithm (direct, gemm, separable, fft) on depthwise image
filters of growing size (rank-1 Gaussian and rank-2 random kernels, RGB image) and on a
few dense layers (W5-W9 of the standard suite among them), next to what ``algo="auto"``
picks. Usage::

    python benchmarks/numpy_crossover.py [--side 1024] [--repeat 3] [--threads N] [--layers]

Prints one line per problem: median ms per algorithm, the fastest, and auto's choice;
for layers also the gemm path's threads (1: BLAS threads its GEMMs) and plan (column
row width, images and rows per GEMM, rows per chunk). ``--threads`` sets the gemm
path's thread count (default: the CPUs this process may use); ``--layers`` skips the
image filters. The crossover points are written next to the constants in
``convcli/backends/numpy/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np

# run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from convcli import RunInfo, conv2d
from convcli.backends import get_backend
from convcli.backends.numpy import gemm as numpy_gemm
from convcli.backends.numpy.threads import gemm_threads
from convcli.errors import ConvValueError
from convcli.spec import make_spec

ALGOS = ("direct", "gemm", "separable", "fft")


def _ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _line(label: str, x: np.ndarray, w: np.ndarray, repeat: int, **opts) -> str:
    cells = []
    best = ("-", float("inf"))
    for algo in ALGOS:
        try:
            ms = _ms(lambda a=algo: conv2d(x, w, backend="numpy", algo=a, **opts), repeat)
        except ConvValueError:
            cells.append(f"{algo}=n/a")
            continue
        cells.append(f"{algo}={ms:.1f}")
        if ms < best[1]:
            best = (algo, ms)
    info = RunInfo()
    conv2d(x, w, backend="numpy", info=info, **opts)
    return f"{label:34s} {' '.join(cells)}  fastest={best[0]} auto={info.algo}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--side", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--layers", action="store_true")
    args = ap.parse_args(argv)
    numpy = get_backend("numpy")
    numpy.settings = dataclasses.replace(numpy.settings, threads=args.threads)
    rng = np.random.default_rng(0)
    x = rng.random((1, 3, args.side, args.side), dtype=np.float32)
    for k in () if args.layers else (3, 5, 7, 9, 11, 15, 21, 31):
        g = np.exp(-(((np.arange(k) - k // 2) / max(k / 6, 0.5)) ** 2) / 2)
        gauss = np.broadcast_to(np.outer(g, g) / g.sum() ** 2, (3, 1, k, k)).astype(np.float32)
        rand = rng.standard_normal((3, 1, k, k)).astype(np.float32)
        for name, w in (("gaussian", gauss), ("random", rand)):
            label = f"RGB {args.side}^2 dw {k}x{k} {name}"
            print(_line(label, x, w, args.repeat, padding=k // 2, groups=3), flush=True)
    layers = [
        ((8, 64, 56, 56), (64, 64, 3, 3), {"padding": 1}),
        ((1, 256, 28, 28), (256, 256, 3, 3), {"padding": 1}),
        ((4, 64, 64, 64), (128, 16, 3, 3), {"padding": 2, "stride": 2, "dilation": 2, "groups": 4}),
        ((8, 128, 56, 56), (256, 128, 1, 1), {}),
        ((1, 3, 1024, 1024), (16, 3, 7, 7), {"padding": 3, "stride": 2}),
        ((1, 32, 128, 128), (32, 1, 3, 3), {"padding": 1, "groups": 32}),
        ((1, 8, 256, 256), (8, 8, 11, 11), {"padding": 5}),
    ]
    for xs, ws, opts in layers:
        xl = rng.random(xs, dtype=np.float32)
        wl = rng.standard_normal(ws).astype(np.float32)
        spec = make_spec(xl, wl, None, **opts)
        threads = gemm_threads(spec, numpy.settings)
        plan = numpy_gemm._gemm_plan(spec, 4, threads, numpy.settings)
        line = _line(f"{xs}x{ws}", xl, wl, args.repeat, **opts)
        print(f"{line} gemm threads={threads} plan={plan}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
