"""Does ``convcli bench --suite cnn`` time each system as it runs alone?

For one network and batch, in alternating rounds: the suite with all systems (each in
its worker, taking turns per layer, as the bench runs), then each system in a suite of
its own (one worker, nothing else timed beside it). Prints per system the network's
total (sum of per-layer medians x occurrences, and of minima) in both, their ratio, the
layers whose medians differ most, and the rows' disturbance figures (``others_cpu_ms``:
CPU the other workers used while a row was timed; ``queued_pct``: how long the timed
threads waited for a CPU, i.e. the machine's other load)::

    python benchmarks/cnn_bench_vs_alone.py [--network resnet18] [--batch 8]
        [--rounds 3] [--settle 0.1] [--json out.json]

On a loaded machine medians of either kind swing by 2x and more between rounds; the
minima and the ``queued_pct`` column say how far to trust a comparison.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from convcli import bench_cnn as cnn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", default="resnet18")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=cnn.SETTLE_S)
    parser.add_argument("--systems", default=",".join(cnn.SYSTEMS))
    parser.add_argument("--json", help="write every round's rows here")
    args = parser.parse_args()
    systems = args.systems.split(",")
    nets, _ = cnn.load_networks()
    sub = {args.network: nets[args.network]}
    # mode -> (layer, system) -> [(median, min, others_cpu_ms, queued_pct)] per round
    got: dict[str, dict[tuple[int, str], list[tuple]]] = {"bench": {}, "alone": {}}
    desc: dict[int, tuple[str, int]] = {}

    def run(mode: str, these: list[str]) -> None:
        res = cnn.run_cnn_suite(sub, batches=(args.batch,), systems=these, settle=args.settle)
        for r in res.rows:
            desc[r.layer] = (r.description, r.count)
            got[mode].setdefault((r.layer, r.system), []).append(
                (r.median_ms, r.min_ms, r.others_cpu_ms, r.queued_pct)
            )

    for k in range(args.rounds):
        order = ["bench", "alone"] if k % 2 == 0 else ["alone", "bench"]
        for mode in order:
            if mode == "bench":
                run(mode, systems)
            else:
                for s in systems:
                    run(mode, [s])
        print(f"round {k + 1}/{args.rounds} done", file=sys.stderr)

    def med(mode: str, layer: int, s: str, i: int) -> float:
        return statistics.median(v[i] for v in got[mode][(layer, s)])

    print(f"{args.network} N={args.batch}, {args.rounds} rounds; ms, median over rounds")
    print(f"{'system':15s} {'bench':>9s} {'alone':>9s} {'ratio':>6s} | {'mins: bench':>11s} "
          f"{'alone':>9s} {'ratio':>6s} | others' CPU max | queued % bench / alone")  # fmt: skip
    for s in systems:
        tot = {m: [0.0, 0.0] for m in got}
        for layer, (_, count) in desc.items():
            for m in got:
                tot[m][0] += med(m, layer, s, 0) * count
                tot[m][1] += med(m, layer, s, 1) * count
        others = [v[2] for (_, sy), vs in got["bench"].items() if sy == s for v in vs
                  if v[2] is not None]  # fmt: skip
        queued = {
            m: statistics.median(
                v[3] for (_, sy), vs in got[m].items() if sy == s for v in vs if v[3] is not None
            )
            for m in got
        }
        (b, bmin), (a, amin) = tot["bench"], tot["alone"]
        print(f"{s:15s} {b:9.2f} {a:9.2f} {b / a:6.2f} | {bmin:11.2f} {amin:9.2f} "
              f"{bmin / amin:6.2f} | {max(others, default=float('nan')):9.2f} ms | "
              f"{queued['bench']:5.0f} / {queued['alone']:5.0f}")  # fmt: skip
    print("layers whose bench/alone median ratio is furthest from 1:")
    worst = sorted(
        (
            (med("bench", layer, s, 0) / med("alone", layer, s, 0), layer, s)
            for layer in desc
            for s in systems
        ),
        key=lambda t: abs(t[0] - 1),
        reverse=True,
    )[:8]
    for ratio, layer, s in worst:
        print(f"  {desc[layer][0]:30s} x{desc[layer][1]:<2d} {s:15s} "
              f"bench {med('bench', layer, s, 0):8.2f} alone {med('alone', layer, s, 0):8.2f} "
              f"{ratio:5.2f}x")  # fmt: skip
    if args.json:
        Path(args.json).write_text(
            json.dumps({m: {f"{k[0]}:{k[1]}": v for k, v in d.items()} for m, d in got.items()})
        )


if __name__ == "__main__":
    main()
