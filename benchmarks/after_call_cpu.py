"""CPU that convcli's threads burn after a call has returned (a tax on the caller).

For each conv layer of a network from ``convcli/data/cnn_layers.json`` (default
mobilenet_v3_small, batch 1): one ``conv2d`` call, then ``--gap`` ms of sleep, and the
process's CPU time (user + system, all threads) during the sleep. A thread pool that
spins after its work (OpenBLAS's idle threads spin for about 0.1 s) shows here as CPU
time taken from whatever the caller runs next. CPU time, unlike wall time, barely
depends on what else the machine runs, so the number holds on a shared machine.
Printed per backend: CPU ms burnt after all calls together, and the same sleeps without
calls (the floor)::

    python benchmarks/after_call_cpu.py [--network mobilenet_v3_small] [--gap 20]
        [--backend numpy,opencl] [--rounds 3]

Run with ``PYTHONPATH=<checkout>`` to measure another checkout (before/after).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

if "PYTHONPATH" not in os.environ:  # this checkout's convcli, unless told otherwise
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

import convcli
from convcli import conv2d

LAYERS = "convcli/data/cnn_layers.json"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", default="mobilenet_v3_small")
    parser.add_argument("--gap", type=float, default=20.0, help="ms of sleep after a call")
    parser.add_argument("--backend", default="numpy,opencl")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    # the layer file of this checkout, read here: older checkouts have no bench_cnn
    data = json.loads((Path(__file__).resolve().parent.parent / LAYERS).read_text())
    layers = data["networks"][args.network]
    rng = np.random.default_rng(0)
    arrays = []
    for d in layers:
        x = rng.uniform(-1, 1, (1, d["c_in"], d["h"], d["w"])).astype(np.float32)
        w = rng.uniform(-0.1, 0.1, (d["c_out"], d["c_in"] // d["groups"], d["kh"], d["kw"]))
        b = rng.uniform(-0.1, 0.1, d["c_out"]).astype(np.float32) if d["bias"] else None
        opts = {k: d[k] for k in ("stride", "padding", "dilation", "groups")}
        arrays.append(
            (
                x,
                w.astype(np.float32),
                b,
                {k: tuple(v) if isinstance(v, list) else v for k, v in opts.items()},
            )
        )
    gap = args.gap / 1e3
    print(f"convcli from {Path(convcli.__file__).parent}; {args.network}, {len(layers)} layers")
    floor = []
    for _ in range(args.rounds):
        burnt = 0.0
        for _ in layers:
            c0 = _cpu()
            time.sleep(gap)
            burnt += _cpu() - c0
        floor.append(burnt * 1e3)
    print(f"no calls : {min(floor):7.2f} ms CPU in the sleeps (best of {args.rounds})")
    for backend in args.backend.split(","):
        for x, w, b, opts in arrays:  # warm-up
            conv2d(x, w, b, backend=backend, **opts)
        results = []
        for _ in range(args.rounds):
            burnt = 0.0
            for x, w, b, opts in arrays:
                conv2d(x, w, b, backend=backend, **opts)
                c0 = _cpu()
                time.sleep(gap)
                burnt += _cpu() - c0
            results.append(burnt * 1e3)
        print(f"{backend:9s}: {min(results):7.2f} ms CPU in the sleeps after the calls (best)")


if __name__ == "__main__":
    main()
