"""Does convcli slow its caller's other work? torch's time beside convcli in one process.

Times torch (``F.conv2d``, 2 threads) on the conv layers of a network from
``convcli/data/cnn_layers.json`` (default mobilenet_v3_small, batch 1), one pass over
the layers at a time, in three kinds of process, each a fresh one, in turns:

* ``alone``: torch only (convcli is not imported);
* ``shared``: before each torch call, convcli runs the same layer on ``--backend``
  (default opencl); only torch's calls are timed;
* ``after``: convcli runs every layer once first, then torch's passes run alone (does
  anything convcli started keep taxing the process after its last call?);
* ``idle``: torch only, but before each call the process sleeps as long as convcli's
  call of that layer took in ``shared`` (torch's own threads go idle between calls
  either way: this separates that from what convcli's threads do).

Prints torch's median ms per pass in each (wall time, and the process's CPU time during
torch's calls: on a loaded machine the wall time of torch's two OpenMP threads swings by
10x and more, CPU time much less), and the ratio to ``alone``; issue 15's target is
shared/alone <= 1.25. On a loaded machine torch's back-to-back calls (``alone``) can run
several times slower than calls with gaps between them (its OpenMP threads spin at
barriers while other processes hold the cores), so compare ``shared`` with ``idle``
too: the same gaps, filled by convcli or by a sleep. Usage::

    python benchmarks/shared_process.py [--network mobilenet_v3_small] [--passes 15]
        [--rounds 3] [--backend opencl] [--env POCL_AFFINITY=0 ...]

``--env`` sets variables for the convcli processes (e.g. to compare PoCL settings).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(mode: str, network: str, passes: int, backend: str, gaps: list[float]) -> None:
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT))
    from convcli.bench_cnn import load_networks

    torch.set_num_threads(2)
    layers = load_networks()[0][network]
    arrays = [layer.arrays(1) for layer in layers]
    conv = None
    if mode != "alone":
        from convcli import conv2d

        def conv(i: int):
            x, w, b = arrays[i]
            return conv2d(x, w, b, backend=backend, **layers[i].options())

        if mode == "after":
            for i in range(len(layers)):
                conv(i)
            conv = None
    tensors = [
        (torch.from_numpy(x), torch.from_numpy(w), None if b is None else torch.from_numpy(b))
        for x, w, b in arrays
    ]
    totals, cpu_totals = [], []
    ours = [[] for _ in layers]
    with torch.no_grad():
        for p in range(passes + 1):  # the first pass warms up
            spent = cpu = 0.0
            for i, layer in enumerate(layers):
                if conv is not None:
                    t0 = time.perf_counter()
                    conv(i)
                    ours[i].append(time.perf_counter() - t0)
                elif gaps:
                    time.sleep(gaps[i])
                tx, tw, tb = tensors[i]
                c0, t0 = time.process_time(), time.perf_counter()
                F.conv2d(tx, tw, tb, layer.stride, layer.padding, layer.dilation, layer.groups)
                spent += time.perf_counter() - t0
                cpu += time.process_time() - c0
            if p:
                totals.append(spent * 1e3)
                cpu_totals.append(cpu * 1e3)
    gaps_out = [statistics.median(t) if t else 0.0 for t in ours]
    print(json.dumps({"totals": totals, "cpu": cpu_totals, "gaps": gaps_out}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", default="mobilenet_v3_small")
    parser.add_argument("--passes", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", default="opencl")
    parser.add_argument("--env", nargs="*", default=[], metavar="NAME=VALUE")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--gaps", default="[]", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.network, args.passes, args.backend, json.loads(args.gaps))
        return
    extra = dict(item.split("=", 1) for item in args.env)
    results: dict[str, list[float]] = {"alone": [], "shared": [], "idle": [], "after": []}
    cpu: dict[str, list[float]] = {mode: [] for mode in results}
    gaps: list[float] = []
    for _ in range(args.rounds):
        for mode in results:
            env = dict(os.environ, **(extra if mode in ("shared", "after") else {}))
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
            cmd = [sys.executable, __file__, "--child", mode, "--network", args.network]
            cmd += ["--passes", str(args.passes), "--backend", args.backend]
            if mode == "idle":
                cmd += ["--gaps", json.dumps(gaps)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            results[mode] += got["totals"]
            cpu[mode] += got["cpu"]
            if mode == "shared":
                gaps = got["gaps"]
    alone = statistics.median(results["alone"])
    alone_cpu = statistics.median(cpu["alone"])
    print(f"torch on {args.network} (batch 1, 2 threads), ms per pass over its conv layers")
    print(f"convcli processes' extra environment: {extra or 'none'}")
    idle = statistics.median(results["idle"])
    shared = statistics.median(results["shared"])
    print(f"shared / idle (same gaps, no convcli): {shared / idle:.2f} wall time")
    for mode, values in results.items():
        med = statistics.median(values)
        cmed = statistics.median(cpu[mode])
        print(
            f"{mode:7s} wall: median {med:7.2f}  min {min(values):7.2f}  "
            f"ratio to alone {med / alone:5.2f} | CPU: median {cmed:7.2f}  "
            f"ratio to alone {cmed / alone_cpu:5.2f}  ({len(values)} passes)"
        )


if __name__ == "__main__":
    main()
