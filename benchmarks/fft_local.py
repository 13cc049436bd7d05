"""FFT tiles: fft_local.cl (a work-group per tile pair, the GPU shape) against
fft_conv.cl (one work-item per tile pair, the CPU shape) on the default OpenCL device.

Usage::

    python benchmarks/fft_local.py [--size 1024] [--repeat 5] [--kernels 9 25]

An RGB image of ``size`` x ``size`` convolved with a disk of each kernel size (depthwise,
'same' zero padding), ``algo='fft'`` forced, the backend's ``settings.gpu_kernels`` False
(fft_conv) and True (fft_local) alternating round by round after a warm-up of each; prints the
median and minimum kernel time (profiling events) and wall time of ``conv2d``, and the
error against the NumPy backend. On a CPU device (PoCL) this measures what the GPU
shape costs there, not what it does on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convcli import RunInfo, backends, conv2d

PLANS = (("fft_conv", False), ("fft_local", True))


def disk(k: int) -> np.ndarray:
    t = np.arange(k) - (k - 1) / 2
    d = (t[:, None] ** 2 + t[None, :] ** 2 <= ((k - 1) / 2) ** 2 + 0.5).astype(np.float32)
    return d / d.sum()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--kernels", type=int, nargs="+", default=[9, 25])
    args = ap.parse_args()
    be = backends.get_backend("opencl")  # the backend conv2d(backend="opencl") runs on
    default = be.settings
    x = np.random.default_rng(0).random((1, 3, args.size, args.size), dtype=np.float32)
    for k in args.kernels:
        w = np.repeat(disk(k)[None, None], 3, 0)
        opts = dict(padding=k // 2, groups=3)
        ref = conv2d(x, w, backend="numpy", **opts)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in PLANS}
        errors = {}
        for name, gpu in PLANS:  # warm-up: builds and first launches
            be.settings = dataclasses.replace(default, gpu_kernels=gpu)
            y = conv2d(x, w, backend="opencl", algo="fft", **opts)
            errors[name] = float(np.abs(y - ref).max() / np.abs(ref).max())
        for _ in range(args.repeat):
            for name, gpu in PLANS:
                be.settings = dataclasses.replace(default, gpu_kernels=gpu)
                info = RunInfo()
                t0 = time.perf_counter()
                conv2d(x, w, backend="opencl", algo="fft", info=info, **opts)
                times[name].append((info.timings.get("compute", 0.0), time.perf_counter() - t0))
        for name, got in times.items():
            kern = sorted(t for t, _ in got)
            wall = sorted(t for _, t in got)
            print(
                f"RGB {args.size}^2 disk {k:3d} {name:9s} kernel ms median "
                f"{kern[len(kern) // 2] * 1e3:8.1f} min {kern[0] * 1e3:8.1f}  wall ms median "
                f"{wall[len(wall) // 2] * 1e3:8.1f} min {wall[0] * 1e3:8.1f}  "
                f"error {errors[name]:.1e}",
                flush=True,
            )
    be.settings = default


if __name__ == "__main__":
    main()
