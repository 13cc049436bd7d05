"""dw_wide (pad once, then dw_direct without padding) against dw_direct, A/B in one process.

For depthwise layers of CNN shapes (``--cases`` N,C,HW,K,S;...), alternating the two
paths call by call (``settings.dw_wide_max_wo`` set to 0 for dw_direct), prints the
median and minimum wall time of ``conv2d`` and the kernels' time (profiling events);
layers the planner does not send to dw_wide are reported as such::

    python benchmarks/dw_wide_ab.py [--rounds 8] [--cases "8,96,56,7,1;8,144,56,3,1"]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from convcli import backends, conv2d
from convcli.backends.opencl import plan
from convcli.runinfo import RunInfo
from convcli.spec import make_spec

CASES = "8,96,56,7,1;8,240,56,5,1;8,144,56,3,1;1,96,56,7,1;1,144,56,3,1;8,32,112,3,1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--cases", default=CASES)
    args = parser.parse_args()
    backend = backends.get_backend("opencl")
    on = backend.settings
    off = dataclasses.replace(on, dw_wide_max_wo=0)
    rng = np.random.default_rng(0)
    for case in args.cases.split(";"):
        n, c, hw, k, s = (int(v) for v in case.split(","))
        x = rng.standard_normal((n, c, hw, hw), dtype=np.float32)
        w = rng.standard_normal((c, 1, k, k), dtype=np.float32)
        opts = {"padding": k // 2, "stride": s, "groups": c}
        label = f"N={n} {c}ch {k}x{k} s{s} {hw}^2"
        if plan.choose(make_spec(x, w, None, **opts), w, settings=on)[0].kernel != "dw_wide":
            print(f"{label}: not a dw_wide layer")
            continue
        got: dict[str, tuple[list[float], list[float]]] = {
            "dw_direct": ([], []),
            "dw_wide": ([], []),
        }
        for r in range(args.rounds + 1):  # the first round warms up
            for path, (walls, kernels) in got.items():
                backend.settings = on if path == "dw_wide" else off
                info = RunInfo()
                t0 = time.perf_counter()
                conv2d(x, w, backend="opencl", info=info, **opts)
                if r:
                    walls.append((time.perf_counter() - t0) * 1e3)
                    kernels.append(info.timings["compute"] * 1e3)
        backend.settings = on
        (aw, ak), (bw, bk) = got["dw_direct"], got["dw_wide"]
        med = statistics.median
        print(f"{label}: dw_direct -> dw_wide, wall median {med(aw):6.2f} -> {med(bw):6.2f} "
              f"(min {min(aw):6.2f} -> {min(bw):6.2f}) | kernels median {med(ak):6.2f} -> "
              f"{med(bk):6.2f} (min {min(ak):6.2f} -> {min(bk):6.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
