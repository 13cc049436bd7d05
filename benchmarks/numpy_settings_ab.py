"""A/B of NumPy backend settings on the cnn suite's layers, alternating call by call.

Each distinct layer of a network is called with each variant in turn (a variant is a
dict of ``Settings`` changes), rounds after a warm-up; per layer and per network total
(layers counted as often as they occur) the median and minimum ms are printed. Running
the variants in one process, call by call, makes them share whatever else the machine
does. ``--cpu`` times the process's CPU time on one thread (ours and BLAS's): the work
itself, for A/B runs on a busy machine where waiting for a CPU swamps wall times::

    python benchmarks/numpy_settings_ab.py --net convnext_tiny --batch 8 --cpu \\
        --variants '{"blocks": {"dw_rows": false, "dw_shifted": false}, "now": {}}'

(that pair: the depthwise GEMMs before and after the whole-row and shifted-row layouts).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

if "PYTHONPATH" not in os.environ:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from convcli import backends, conv2d
from convcli.bench_cnn import load_networks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", required=True, help="JSON: {name: {setting: value}}")
    ap.add_argument("--net", action="append", help="network (repeatable); default: all")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--cpu", action="store_true", help="one thread, process CPU time")
    ap.add_argument("--grouped", action="store_true", help="only layers with groups > 1")
    args = ap.parse_args(argv)
    variants = json.loads(args.variants)
    backend = backends.get_backend("numpy")
    base = original = backend.settings
    clock = time.perf_counter
    if args.cpu:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
        base = dataclasses.replace(base, threads=1)
        clock = time.process_time
    networks, _ = load_networks()
    try:
        for name in args.net or list(networks):
            counts, layers = {}, {}
            for layer in networks[name]:
                counts[layer.key] = counts.get(layer.key, 0) + 1
                layers[layer.key] = layer
            totals = {v: [0.0, 0.0] for v in variants}
            for key, layer in layers.items():
                opts = layer.options()
                if args.grouped and opts.get("groups", 1) == 1:
                    continue
                x, w, b = layer.arrays(args.batch)
                times: dict[str, list[float]] = {v: [] for v in variants}
                for r in range(args.rounds + 1):  # the first round warms up
                    for v, changes in variants.items():
                        backend.settings = dataclasses.replace(base, **changes)
                        t0 = clock()
                        conv2d(x, w, b, backend="numpy", **opts)
                        if r:
                            times[v].append((clock() - t0) * 1e3)
                cells = []
                for v, t in times.items():
                    med, low = statistics.median(t), min(t)
                    totals[v][0] += med * counts[key]
                    totals[v][1] += low * counts[key]
                    cells.append(f"{v} {med:.3f}/{low:.3f}")
                print(
                    f"{name} N={args.batch} {layer.describe():28s} x{counts[key]:<2d} "
                    + "  ".join(cells),
                    flush=True,
                )
            cells = [f"{v} {med:.2f}/{low:.2f}" for v, (med, low) in totals.items()]
            print(f"{name} N={args.batch} TOTAL (ms, median/min) " + "  ".join(cells))
    finally:
        backend.settings = original
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
