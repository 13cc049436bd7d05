"""Native-depth strip filter against the float path, strip by strip.

For an RGB uint8 image (24 MP by default) in strips of 256 output rows: the time of
:func:`convcli.native.filter_strip` over all strips (NumPy and OpenCL) against the float
path a pipeline runs per strip (divide to float32, :func:`convcli.conv2d`, map_output,
quantize). The methods are interleaved round by round (the machine is shared) and the
medians reported; the first round (builds) is left out.

    PYTHONPATH=$PWD python benchmarks/native_strips.py --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import convcli
from convcli.native import filter_strip
from convcli.pixels import map_output, quantize
from convcli.presets import get_preset


def strips_of(padded: np.ndarray, kh: int, rows: int, height: int):
    for r0 in range(0, height, rows):
        r1 = min(height, r0 + rows)
        yield padded[r0 : r1 + kh - 1]


def float_path(strip: np.ndarray, weight: np.ndarray, backend: str) -> np.ndarray:
    x = strip.transpose(2, 0, 1).astype(np.float32)
    x /= np.float32(255)
    res = convcli.conv2d(x, weight, groups=x.shape[0], backend=backend)
    return quantize(map_output(res, "clip"), 8)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=6000)
    ap.add_argument("--height", type=int, default=4000)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--filters", default="gaussian:sigma=3,box:size=9")
    ap.add_argument("--methods", default="native-numpy,native-opencl,float-numpy,float-opencl")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    # a smooth image with noise (a photo's statistics matter little to these paths)
    h, w = args.height, args.width
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    methods = args.methods.split(",")
    for name in args.filters.split(","):
        k = get_preset(name).kernel.astype(np.float32)
        kh, kw = k.shape
        padded = np.pad(
            img, ((kh // 2, kh - 1 - kh // 2), (kw // 2, kw - 1 - kw // 2), (0, 0)), "reflect"
        )
        weight = np.repeat(k[None, None], 3, axis=0)
        times: dict[str, list[float]] = {m: [] for m in methods}
        outs: dict[str, np.ndarray] = {}
        for rnd in range(args.rounds + 1):
            for m in methods:
                kind, be = m.split("-")
                out = np.empty((h, w, 3), np.uint8)
                t0 = time.perf_counter()
                r0 = 0
                for s in strips_of(padded, kh, args.rows, h):
                    n = s.shape[0] - kh + 1
                    if kind == "native":
                        filter_strip(s, top=255.0, kernel=k, out=out[r0 : r0 + n], backend=be)
                    else:
                        out[r0 : r0 + n] = float_path(s, weight, be)
                    r0 += n
                dt = time.perf_counter() - t0
                if rnd:
                    times[m].append(dt)
                outs[m] = out
        ref = outs[methods[-1]].astype(np.int16)
        for m in methods:
            d = np.abs(outs[m].astype(np.int16) - ref)
            med = statistics.median(times[m])
            print(
                f"{name:18s} {m:14s} median {med * 1e3:8.1f} ms  "
                f"runs {' '.join(f'{t * 1e3:.0f}' for t in times[m])}  "
                f"max|diff| vs {methods[-1]} {int(d.max())}, differing {(d > 0).mean():.2e}"
            )


if __name__ == "__main__":
    main()
