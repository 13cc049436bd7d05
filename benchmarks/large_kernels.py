"""Large non-separable image filters: convcli (OpenCL, NumPy) against OpenCV and SciPy.

A disk ("bokeh") blur of radius r is a (2r+1)^2 kernel of rank > 1, so no separable
passes apply; OpenCV's filter2D switches to a DFT from 11x11, SciPy's fftconvolve is
an FFT throughout. Every system is timed in the same run, interleaved per kernel size,
and checked against the NumPy reference (``algo="direct"``) within 2e-5 of max|ref|.

    python benchmarks/large_kernels.py [--side 2048] [--sizes 9,15,25,41,63] [--repeat 5]

Prints a Markdown table (median ms, and ratio = best peer's median / ours).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import numpy as np

import convcli
from convcli.runinfo import RunInfo


def disk(k: int) -> np.ndarray:
    t = np.arange(k) - (k - 1) / 2
    d = (t[:, None] ** 2 + t[None, :] ** 2 <= ((k - 1) / 2) ** 2 + 0.5).astype(np.float32)
    return d / d.sum()


def timed(fn: Callable[[], np.ndarray], repeat: int) -> tuple[float, np.ndarray]:
    out = fn()  # warm-up: builds, caches, page faults
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, out


def peers(x: np.ndarray, kern: np.ndarray) -> dict[str, Callable[[], np.ndarray]]:
    found: dict[str, Callable[[], np.ndarray]] = {}
    r = kern.shape[0] // 2
    try:
        import cv2

        def opencv() -> np.ndarray:
            planes = [cv2.filter2D(p, -1, kern, borderType=cv2.BORDER_CONSTANT) for p in x[0]]
            return np.stack(planes)[None]

        found["opencv filter2D"] = opencv
    except ImportError:
        pass
    try:
        from scipy import signal

        def scipy_fft() -> np.ndarray:
            xp = np.pad(x, ((0, 0), (0, 0), (r, r), (r, r)))
            k = kern[::-1, ::-1][None, None]
            return signal.fftconvolve(xp, k, mode="valid", axes=(2, 3)).astype(np.float32)

        found["scipy fftconvolve"] = scipy_fft
    except ImportError:
        pass
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=2048)
    ap.add_argument("--sizes", default="9,15,25,41,63")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.random((1, 3, args.side, args.side), dtype=np.float32)
    print(f"RGB {args.side}x{args.side}, disk kernels, zero padding 'same', float32\n")
    print("| kernel | system | algo | median ms | ratio to best peer | max rel err |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for k in map(int, args.sizes.split(",")):
        kern = disk(k)
        w = np.ascontiguousarray(np.broadcast_to(kern, (3, 1, k, k)))
        opts = dict(padding=k // 2, groups=3)
        ref = convcli.conv2d(x, w, backend="numpy", algo="direct", **opts)
        scale = float(np.abs(ref).max())
        rows: list[tuple[str, str, float, float]] = []
        systems: dict[str, Callable[[], np.ndarray]] = {}
        infos: dict[str, RunInfo] = {}
        for backend in ("opencl", "numpy"):
            infos[backend] = RunInfo()
            systems[f"convcli-{backend}"] = functools.partial(
                convcli.conv2d, x, w, backend=backend, info=infos[backend], **opts
            )
        systems.update(peers(x, kern))
        for name, fn in systems.items():
            ms, out = timed(fn, args.repeat)
            err = float(np.abs(out - ref).max()) / scale
            algo = infos[name.split("-")[1]].algo if name.startswith("convcli") else "-"
            rows.append((name, algo, ms, err))
        peer_ms = [ms for name, _, ms, _ in rows if not name.startswith("convcli")]
        best_peer = min(peer_ms, default=None)
        for name, algo, ms, err in rows:
            ratio = f"{best_peer / ms:.2f}" if best_peer and name.startswith("convcli") else "-"
            print(f"| {k}x{k} | {name} | {algo} | {ms:.1f} | {ratio} | {err:.1e} |")


if __name__ == "__main__":
    main()
