"""A network's conv layers called in order, one call each, as a forward pass makes them.

``convcli bench --suite cnn`` times each layer on its own (a settle wait, a warm-up
call, then timed calls). A forward pass meets each layer once, right after the one
before it, so a setting that helps a layer alone can cost the next one (a device's
threads left asleep longer wake later). This script times whole passes: ``--passes``
of them after one untimed pass, a short sleep before each, and prints the passes'
median and minimum and each distinct layer's share (the median over passes, summed over
the layer's occurrences). Run one system per process, as the suite does::

    python benchmarks/cnn_forward.py convnext_tiny --system torch
    python benchmarks/cnn_forward.py convnext_tiny --system opencl \\
        --mode dw_inline=inline_dw_weight:0.2 [--batch 8] [--passes 20]

``--mode NAME=FIELD:VALUE[,FIELD:VALUE]`` (OpenCL or NumPy) adds a settings variant
of the backend; the passes of the default settings and of each variant alternate.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import statistics
import time

import numpy as np

from convcli import bench_cnn


def _torch_call(layer, batch):
    import torch

    x, w, b = (None if a is None else torch.from_numpy(a) for a in layer.arrays(batch))
    o = layer.options()

    def call():
        with torch.no_grad():
            torch.nn.functional.conv2d(
                x, w, b, stride=o["stride"], padding=o["padding"], dilation=o["dilation"],
                groups=o["groups"],
            )  # fmt: skip

    return call


def _convcli_call(layer, batch, backend):
    import convcli

    x, w, b = layer.arrays(batch)
    o = layer.options()
    return lambda: convcli.conv2d(x, w, b, backend=backend, **o)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("network")
    ap.add_argument("--system", choices=("torch", "opencl", "numpy"), default="opencl")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--passes", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2, help="torch's threads")
    ap.add_argument("--layers", default=None, help="a layer file (default: the shipped one)")
    ap.add_argument("--mode", action="append", default=[], metavar="NAME=FIELD:VALUE,...")
    args = ap.parse_args()
    nets, _ = bench_cnn.load_networks(args.layers)
    if args.network not in nets:
        ap.error(f"{args.network} not in {', '.join(nets)}")
    layers = nets[args.network]

    modes: dict[str, object] = {"default": None}
    be = None
    if args.system == "torch":
        import torch

        torch.set_num_threads(args.threads)
        calls = [_torch_call(layer, args.batch) for layer in layers]
        if args.mode:
            ap.error("--mode applies to convcli's backends only")
    else:
        from convcli.backends import get_backend

        be = get_backend(args.system)
        modes["default"] = be.settings
        for text in args.mode:
            name, _, fields = text.partition("=")
            kw = {}
            for pair in fields.split(","):
                key, _, value = pair.partition(":")
                kw[key] = ast.literal_eval(value)
            modes[name] = dataclasses.replace(be.settings, **kw)
        calls = [_convcli_call(layer, args.batch, args.system) for layer in layers]

    totals: dict[str, list[float]] = {m: [] for m in modes}
    per = {m: np.zeros((args.passes, len(layers))) for m in modes}
    try:
        for p in range(-1, args.passes):
            for mode, settings in modes.items():
                if be is not None:
                    be.settings = settings
                time.sleep(0.05)
                start = time.perf_counter()
                for i, call in enumerate(calls):
                    t0 = time.perf_counter()
                    call()
                    if p >= 0:
                        per[mode][p, i] = time.perf_counter() - t0
                if p >= 0:
                    totals[mode].append(time.perf_counter() - start)
    finally:
        if be is not None:
            be.settings = modes["default"]

    print(f"{args.network} N={args.batch} {args.system}: {len(layers)} conv layers a pass")
    for mode in modes:
        print(
            f"  {mode}: pass median {statistics.median(totals[mode]) * 1e3:.2f} ms, "
            f"min {min(totals[mode]) * 1e3:.2f} ms"
        )
    shares: dict[str, list[float]] = {}
    for i, layer in enumerate(layers):
        row = shares.setdefault(layer.describe(), [0.0] * len(modes))
        for j, mode in enumerate(modes):
            row[j] += float(np.median(per[mode][:, i])) * 1e3
    print("  layer (ms a pass, summed over its occurrences): " + ", ".join(modes))
    for desc, row in shares.items():
        print(f"  {desc:36s}" + "".join(f" {v:8.3f}" for v in row))


if __name__ == "__main__":
    main()
