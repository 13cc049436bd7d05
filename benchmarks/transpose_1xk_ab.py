"""1xK layers on OpenCL as they are, against the same layers run as Kx1 on the
transposed image (host transposes in and out), alternating in one process: the
measurement behind docs/PERFORMANCE.md's note on inception_v3's 1x7 layers.

    python benchmarks/transpose_1xk_ab.py [--calls 12]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from convcli.api import conv2d
from convcli.bench_cnn import CnnLayer

LAYER_FILE = Path(__file__).resolve().parent / "cnn_layers_other.json"
# (c_in, c_out, K, H, W, padding along the width) beyond inception's: larger maps
MORE = [
    (64, 64, 7, 56, 56, 3),
    (128, 128, 7, 28, 28, 3),
    (32, 32, 7, 112, 112, 3),
    (64, 64, 3, 56, 56, 1),
    (256, 256, 3, 14, 14, 1),
    (48, 48, 5, 100, 60, 2),
]


def inception_cases() -> list[tuple[int, int, int, int, int, int]]:
    found, seen = [], set()
    for d in json.loads(LAYER_FILE.read_text())["networks"]["inception_v3"]:
        layer = CnnLayer.from_dict(d)
        if layer.kh == 1 and layer.kw > 1 and layer.key not in seen:
            seen.add(layer.key)
            found.append((layer.c_in, layer.c_out, layer.kw, layer.h, layer.w, layer.padding[1]))
    return found


def compare(case: tuple[int, int, int, int, int, int], batch: int, calls: int):
    cin, cout, k, h, w_, p = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, cin, h, w_), dtype=np.float32)
    w = rng.standard_normal((cout, cin, 1, k), dtype=np.float32)
    b = rng.standard_normal(cout, dtype=np.float32)
    wt = w.reshape(cout, cin, k, 1)  # the same memory: a 1xK kernel is a Kx1 one transposed

    def as_is() -> np.ndarray:
        return conv2d(x, w, b, backend="opencl", padding=(0, p))

    def transposed() -> np.ndarray:
        xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2))
        y = conv2d(xt, wt, b, backend="opencl", padding=(p, 0))
        return np.ascontiguousarray(y.transpose(0, 1, 3, 2))

    ya, yb = as_is(), transposed()
    assert np.allclose(ya, yb, rtol=1e-4, atol=1e-4 * np.abs(ya).max())
    times: dict[str, list[float]] = {"as_is": [], "transposed": []}
    for _ in range(calls):
        for name, run in (("as_is", as_is), ("transposed", transposed)):
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    return (float(np.median(times[n])) * 1e3 for n in ("as_is", "transposed"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=12)
    args = ap.parse_args()
    cases = inception_cases() + MORE
    for batch in (1, 8):
        total = [0.0, 0.0]
        for case in cases:
            a, t = compare(case, batch, args.calls)
            total[0] += a
            total[1] += t
            cin, cout, k, h, w_, _ = case
            print(
                f"N={batch} {cin}->{cout} 1x{k} {h}x{w_}: 1xK {a:.3f} ms, "
                f"as Kx1 {t:.3f} ms, ratio {a / t:.2f}"
            )
        print(f"N={batch} total: 1xK {total[0]:.2f} ms, as Kx1 {total[1]:.2f} ms")


if __name__ == "__main__":
    main()
