"""Does convcli slow its caller's other work? torch's time beside convcli in one process.

Times torch (``F.conv2d``, 2 threads) on the conv layers of a network from
``convcli/data/cnn_layers.json`` (default mobilenet_v3_small and resnet18, batch 1),
one pass over the layers at a time, in four kinds of process, each a fresh one, in
turns (``--rounds`` rounds):

* ``alone``: torch only (convcli is not imported);
* ``shared``: before each torch call, convcli runs the same layer on ``--backend``
  (default opencl); only torch's calls are timed;
* ``idle``: torch only, but before each call the process sleeps as long as convcli's
  call of that layer took in ``shared`` (the same gaps between torch's calls, filled
  by a sleep instead of convcli: this separates what the gaps do to torch's own
  threads from what convcli's threads do);
* ``after``: convcli runs every layer once first, then torch's passes run alone (does
  anything convcli started keep taxing the process after its last call?).

Per mode it prints torch's ms per pass (median and minimum of wall time; median of the
process's CPU time during torch's calls) and the ratio to ``alone``; issue 15's target
is shared/alone <= 1.25. Two figures do not depend on the machine's other load:

* ``others' CPU``: CPU time that threads other than torch's (those started after
  torch's warm-up pass: PoCL's workers, our pools) used *during* torch's calls, ms per
  pass: what convcli's threads took from torch while it ran;
* ``queued``: how long torch's threads waited for a CPU during its calls, ms per pass
  (contention, from anyone: on a loaded machine this, not convcli, sets the medians).

On a loaded machine torch's back-to-back calls (``alone``) can run several times
slower than calls with gaps between them (its OpenMP threads spin at barriers while
other processes hold the cores); compare ``shared`` with ``idle`` and the minima then.
Usage::

    python benchmarks/shared_process.py [--network mobilenet_v3_small,resnet18]
        [--passes 15] [--rounds 3] [--backend opencl] [--env POCL_AFFINITY=0 ...]

``--env`` sets variables for the convcli processes (e.g. to compare PoCL settings).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("alone", "shared", "idle", "after")


def _threads() -> list[int]:
    return [int(t) for t in os.listdir("/proc/self/task")]


def _thread_cpu_ns(tids: list[int]) -> int:
    total = 0
    for tid in tids:
        # Linux's per-thread CPU clock (CPUCLOCK_SCHED | CPUCLOCK_PERTHREAD); a thread
        # that ended is left out
        with contextlib.suppress(OSError):
            total += time.clock_gettime_ns(((~tid) << 3) | 6)
    return total


def _queued_ns(tids: list[int]) -> int:
    total = 0
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat", "rb") as fh:
                total += int(fh.read().split()[1])
        except (OSError, ValueError, IndexError):
            pass
    return total


def child(mode: str, network: str, passes: int, backend: str, gaps: list[float]) -> None:
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT))
    from convcli.bench_cnn import load_networks

    torch.set_num_threads(2)
    layers = load_networks()[0][network]
    arrays = [layer.arrays(1) for layer in layers]
    tensors = [
        (torch.from_numpy(x), torch.from_numpy(w), None if b is None else torch.from_numpy(b))
        for x, w, b in arrays
    ]

    def torch_call(i: int) -> None:
        tx, tw, tb = tensors[i]
        layer = layers[i]
        F.conv2d(tx, tw, tb, layer.stride, layer.padding, layer.dilation, layer.groups)

    with torch.no_grad():
        for i in range(len(layers)):  # torch's own threads start here
            torch_call(i)
    mine = set(_threads())
    conv = None
    if mode in ("shared", "after"):
        from convcli import conv2d

        def conv(i: int):
            x, w, b = arrays[i]
            return conv2d(x, w, b, backend=backend, **layers[i].options())

        for i in range(len(layers)):
            conv(i)
        if mode == "after":
            conv = None
    others = [t for t in _threads() if t not in mine]
    torch_tids = sorted(mine)
    rows = []
    ours: list[list[float]] = [[] for _ in layers]
    with torch.no_grad():
        for p in range(passes + 1):  # the first pass warms up
            spent = cpu = foreign = queued = 0.0
            for i in range(len(layers)):
                if conv is not None:
                    t0 = time.perf_counter()
                    conv(i)
                    ours[i].append(time.perf_counter() - t0)
                elif gaps:
                    time.sleep(gaps[i])
                f0, q0 = _thread_cpu_ns(others), _queued_ns(torch_tids)
                c0, t0 = time.process_time(), time.perf_counter()
                torch_call(i)
                spent += time.perf_counter() - t0
                cpu += time.process_time() - c0
                foreign += (_thread_cpu_ns(others) - f0) / 1e9
                queued += (_queued_ns(torch_tids) - q0) / 1e9
            if p:
                rows.append([spent * 1e3, cpu * 1e3, foreign * 1e3, queued * 1e3])
    gaps_out = [statistics.median(t) if t else 0.0 for t in ours]
    print(json.dumps({"rows": rows, "gaps": gaps_out, "threads": len(others)}))


def measure(args: argparse.Namespace, network: str, extra: dict[str, str]) -> None:
    got: dict[str, list[list[float]]] = {mode: [] for mode in MODES}
    gaps: list[float] = []
    threads = 0
    for k in range(args.rounds):
        # shared first: idle needs its gaps
        order = ["shared", *(m for m in (MODES if k % 2 == 0 else MODES[::-1]) if m != "shared")]
        for mode in order:
            env = dict(os.environ, **(extra if mode in ("shared", "after") else {}))
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
            cmd = [sys.executable, __file__, "--child", mode, "--network", network]
            cmd += ["--passes", str(args.passes), "--backend", args.backend]
            if mode == "idle":
                cmd += ["--gaps", json.dumps(gaps)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            got[mode] += res["rows"]
            if mode == "shared":
                gaps, threads = res["gaps"], res["threads"]
    med = {m: [statistics.median(r[j] for r in got[m]) for j in range(4)] for m in MODES}
    low = {m: min(r[0] for r in got[m]) for m in MODES}
    print(f"\ntorch on {network} (batch 1, 2 threads), ms per pass over its conv layers; "
          f"{len(got['alone'])} passes per mode; convcli: {args.backend}, "
          f"{threads} threads of its own; extra environment: {extra or 'none'}")  # fmt: skip
    print(f"  shared/alone {med['shared'][0] / med['alone'][0]:.2f} (medians), "
          f"{low['shared'] / low['alone']:.2f} (minima); shared/idle "
          f"{med['shared'][0] / med['idle'][0]:.2f} (medians), "
          f"{low['shared'] / low['idle']:.2f} (minima)")  # fmt: skip
    for mode in MODES:
        wall, cpu, foreign, queued = med[mode]
        print(f"  {mode:7s} wall median {wall:8.2f} min {low[mode]:7.2f} "
              f"({wall / med['alone'][0]:5.2f}x, min {low[mode] / low['alone']:5.2f}x) | "
              f"CPU {cpu:7.2f} | others' CPU {foreign:6.3f} | queued {queued:7.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", default="mobilenet_v3_small,resnet18")
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
    for network in args.network.split(","):
        measure(args, network, extra)


if __name__ == "__main__":
    main()
