"""Conv layers of the cnn suite's networks, one system in this process: per layer and
per network total, the median (and min) ms of ``--repeat`` calls after a warm-up.

For A/B runs of the NumPy backend against torch (and against another checkout of
convcli) without the bench's scheduling around it: run each system in a process of its
own, e.g.::

    python benchmarks/numpy_cnn_layers.py --system torch --net convnext_tiny --batch 1
    python benchmarks/numpy_cnn_layers.py --system numpy --net convnext_tiny --batch 1
    PYTHONPATH=/other/checkout python benchmarks/numpy_cnn_layers.py --system numpy ...

Layers that occur several times in a network are timed once and counted as often as
they occur (as ``convcli bench --suite cnn`` does). ``--json`` prints the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

if "PYTHONPATH" not in os.environ:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from convcli.bench_cnn import load_networks


def _runner(system: str, threads: int):
    if system == "torch":
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(threads)

        def run(x, w, b, layer):
            with torch.no_grad():
                tb = None if b is None else torch.from_numpy(b)
                return F.conv2d(torch.from_numpy(x), torch.from_numpy(w), tb, **layer.options())

        return run
    from convcli import conv2d

    def run(x, w, b, layer):
        return conv2d(x, w, b, backend=system, **layer.options())

    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--system", default="numpy", choices=["numpy", "opencl", "torch"])
    ap.add_argument("--net", action="append", help="network (repeatable); default: all")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2, help="torch's threads")
    ap.add_argument(
        "--cpu",
        action="store_true",
        help="time with the process's CPU time (one-thread A/B runs on a busy machine)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    networks, _ = load_networks()
    names = args.net or list(networks)
    run = _runner(args.system, args.threads)
    clock = time.process_time if args.cpu else time.perf_counter
    seen: dict[tuple, tuple[float, float]] = {}
    rows = []
    for name in names:
        counts: dict[tuple, int] = {}
        layers = {}
        for layer in networks[name]:
            counts[layer.key] = counts.get(layer.key, 0) + 1
            layers[layer.key] = layer
        total = total_min = 0.0
        for key, layer in layers.items():
            if key not in seen:
                x, w, b = layer.arrays(args.batch)
                run(x, w, b, layer)
                times = []
                for _ in range(args.repeat):
                    t0 = clock()
                    run(x, w, b, layer)
                    times.append(clock() - t0)
                seen[key] = (statistics.median(times) * 1e3, min(times) * 1e3)
            ms, best = seen[key]
            total += ms * counts[key]
            total_min += best * counts[key]
            rows.append(
                {
                    "net": name,
                    "layer": layer.describe(),
                    "count": counts[key],
                    "ms": round(ms, 4),
                    "min_ms": round(best, 4),
                }
            )
        rows.append({"net": name, "layer": "TOTAL", "count": 1, "ms": total, "min_ms": total_min})
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(
                f"{r['net']:20s} {r['layer']:32s} x{r['count']:<3d} {r['ms']:9.3f} ms "
                f"(min {r['min_ms']:.3f})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
