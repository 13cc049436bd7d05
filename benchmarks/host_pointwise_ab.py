"""The OpenCL backend's 1x1 layers on the host (NumPy's matrix products) against the
device's kernels, in one process, alternating: the data behind the settings
``host_pointwise_max_batch`` and ``host_pointwise_max_out_bytes``.

Every distinct unpadded, ungrouped 1x1 layer of the cnn suite's networks (on maps larger
than 1x1), at the batch given, runs ``rounds`` rounds of one warm-up and ``calls`` timed
``conv2d(..., backend="opencl")`` calls with the route on for every batch, stride and
output size (``host``), then off (``device``). Prints the medians
per layer (host / device below 1: the host is faster) and the 1x1 totals per network.

    python benchmarks/host_pointwise_ab.py --batch 8
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections import defaultdict

import convcli
from convcli import bench_cnn
from convcli.backends import get_backend
from convcli.spec import make_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=5)
    args = ap.parse_args()
    be = get_backend("opencl")
    if not be.is_cpu:
        raise SystemExit("the host route is for CPU OpenCL devices")
    base = be.settings
    modes = {
        "host": dataclasses.replace(
            base,
            host_pointwise_max_batch=1 << 30,
            host_pointwise_strided_max_batch=1 << 30,
            host_pointwise_max_out_bytes=1 << 62,
        ),
        "device": dataclasses.replace(base, host_pointwise_max_batch=0),
    }
    nets, _ = bench_cnn.load_networks()
    layers = {}
    for layers_of in nets.values():
        for layer in layers_of:
            if (layer.kh, layer.kw, layer.groups, layer.padding) == (1, 1, 1, (0, 0)) and (
                layer.h > 1
            ):
                layers.setdefault(layer.key, layer)
    medians = {}
    try:
        for key, layer in layers.items():
            x, w, b = layer.arrays(args.batch)
            times = defaultdict(list)
            for _ in range(args.rounds):
                for mode, settings in modes.items():
                    be.settings = settings
                    convcli.conv2d(x, w, b, backend="opencl", **layer.options())
                    for _ in range(args.calls):
                        t0 = time.perf_counter()
                        convcli.conv2d(x, w, b, backend="opencl", **layer.options())
                        times[mode].append(time.perf_counter() - t0)
            h, d = (statistics.median(times[m]) * 1e3 for m in ("host", "device"))
            medians[key] = (h, d)
            spec = make_spec(x, w, b, **layer.options())
            out_mb = 4 * spec.n * spec.c_out * spec.h_out * spec.w_out / 2**20
            print(
                f"{layer.describe():28s} out {out_mb:6.1f} MiB  host {h:7.3f} ms  "
                f"device {d:7.3f} ms  host/device {h / d:.2f}",
                flush=True,
            )
    finally:
        be.settings = base
    for name, layers_of in nets.items():
        tot = [0.0, 0.0]
        for layer in layers_of:
            if layer.key in medians:
                for i in (0, 1):
                    tot[i] += medians[layer.key][i]
        print(f"{name}: 1x1 layers host {tot[0]:.2f} ms, device {tot[1]:.2f} ms")


if __name__ == "__main__":
    main()
