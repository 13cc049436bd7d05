"""Two convcli checkouts on the cnn suite's layers, A/B in alternating processes.

Each round runs one process per checkout (order alternating: A B, B A, ...), each
timing every distinct layer of the chosen networks on the OpenCL backend (a warm-up
call, then ``--calls`` timed calls); prints per layer the median and minimum wall
time and the minimum CPU time of the process (all its threads: on a machine shared
with other work the least noisy of the three), and the network totals (per-layer
values times the layer's count). Layers come from the checkout running the script
(``convcli/data/cnn_layers.json``)::

    git archive <old> | tar -x -C /tmp/old
    python benchmarks/cnn_checkouts_ab.py /tmp/old . --nets resnet50,regnet_y_400mf \\
        --batch 8 --rounds 4 --calls 5 [--only "1x1 7^2|dw 7x7"]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path


def _layers(nets: str, only: str):
    from convcli.bench_cnn import load_networks

    found, _ = load_networks()
    seen: dict[tuple[str, str], object] = {}
    counts: Counter = Counter()
    for net in nets.split(","):
        for layer in found[net]:
            key = (net, layer.describe())
            if only and not any(part in key[1] for part in only.split("|")):
                continue
            counts[key] += 1
            seen.setdefault(key, layer)
    return seen, counts


def worker(nets: str, batch: int, calls: int, only: str) -> None:
    """Time the layers in this process (the checkout on PYTHONPATH); JSON on stdout."""
    from convcli.api import conv2d
    from convcli.runinfo import RunInfo

    layers, _ = _layers(nets, only)
    found = {}
    for (net, desc), layer in layers.items():
        x, w, b = layer.arrays(batch)
        info = RunInfo()
        conv2d(x, w, b, backend="opencl", info=info, **layer.options())
        times = []
        for _ in range(calls):
            c0, t0 = time.process_time(), time.perf_counter()
            conv2d(x, w, b, backend="opencl", **layer.options())
            times.append((time.perf_counter() - t0, time.process_time() - c0))
        found[f"{net}|{desc}"] = (times, info.algo)
    print(json.dumps(found))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="checkout A (the baseline)")
    ap.add_argument("b", help="checkout B")
    ap.add_argument("--nets", default="resnet50")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--only", default="", help="layer description substrings, '|'-separated")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.nets, args.batch, args.calls, args.only)
        return
    wall: dict[str, dict[str, list[float]]] = {"A": defaultdict(list), "B": defaultdict(list)}
    cpu: dict[str, dict[str, list[float]]] = {"A": defaultdict(list), "B": defaultdict(list)}
    algo = {}
    roots = {"A": str(Path(args.a).resolve()), "B": str(Path(args.b).resolve())}
    for r in range(args.rounds):
        for tag in ("A", "B") if r % 2 == 0 else ("B", "A"):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", ".", "."]
            cmd += ["--nets", args.nets, "--batch", str(args.batch)]
            cmd += ["--calls", str(args.calls), "--only", args.only]
            env = dict(os.environ, PYTHONPATH=roots[tag])
            out = subprocess.run(cmd, env=env, cwd=roots[tag], capture_output=True, text=True)
            if out.returncode:
                sys.exit(out.stderr[-2000:])
            for key, (times, name) in json.loads(out.stdout.splitlines()[-1]).items():
                wall[tag][key] += [t[0] * 1e3 for t in times]
                cpu[tag][key] += [t[1] * 1e3 for t in times]
                algo[(tag, key)] = name
    _, counts = _layers(args.nets, args.only)
    totals: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    print("layer  count  A: wall median / min, CPU min  |  B: the same  |  A/B wall median")
    for (net, desc), count in counts.items():
        key = f"{net}|{desc}"
        row = []
        for tag in ("A", "B"):
            med, low = statistics.median(wall[tag][key]), min(wall[tag][key])
            cmin = min(cpu[tag][key])
            for name, value in (("median", med), ("min", low), ("cpu_min", cmin)):
                totals[(net, tag)][name] += value * count
            row.append(f"{med:8.3f} {low:8.3f} {cmin:8.3f} {algo[(tag, key)]:>9}")
        ratio = statistics.median(wall["A"][key]) / statistics.median(wall["B"][key])
        print(f"{key:52} x{count:<3} {row[0]} | {row[1]} | {ratio:5.2f}x")
    for net in args.nets.split(","):
        a, b = totals[(net, "A")], totals[(net, "B")]
        print(
            f"{net} N={args.batch}: wall median {a['median']:.1f} -> {b['median']:.1f} ms, "
            f"min {a['min']:.1f} -> {b['min']:.1f}, CPU min {a['cpu_min']:.1f} -> "
            f"{b['cpu_min']:.1f}"
        )


if __name__ == "__main__":
    main()
