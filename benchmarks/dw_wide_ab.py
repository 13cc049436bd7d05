"""dw_wide (pad once, then dw_direct without padding) against dw_direct, A/B in one process.

For depthwise layers of CNN shapes (``--cases`` N,C,HW,K,S;...), alternating the two
paths call by call (``opencl_dw_wide.pays`` switched off for dw_direct), prints the
median and minimum wall time of ``conv2d`` and the kernels' time (profiling events);
layers the planner does not send to dw_wide are reported as such::

    python benchmarks/dw_wide_ab.py [--rounds 8] [--cases "8,96,56,7,1;8,144,56,3,1"]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from convcli import conv2d
from convcli.backends import opencl_dw_wide, opencl_fast
from convcli.runinfo import RunInfo
from convcli.spec import make_spec

CASES = "8,96,56,7,1;8,240,56,5,1;8,144,56,3,1;1,96,56,7,1;1,144,56,3,1;8,32,112,3,1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--cases", default=CASES)
    args = parser.parse_args()
    pays = opencl_dw_wide.pays
    rng = np.random.default_rng(0)
    for case in args.cases.split(";"):
        n, c, hw, k, s = (int(v) for v in case.split(","))
        x = rng.standard_normal((n, c, hw, hw), dtype=np.float32)
        w = rng.standard_normal((c, 1, k, k), dtype=np.float32)
        opts = {"padding": k // 2, "stride": s, "groups": c}
        label = f"N={n} {c}ch {k}x{k} s{s} {hw}^2"
        if opencl_fast.choose(make_spec(x, w, None, **opts), w)[0].kernel != "dw_wide":
            print(f"{label}: not a dw_wide layer")
            continue
        got: dict[str, tuple[list[float], list[float]]] = {
            "dw_direct": ([], []),
            "dw_wide": ([], []),
        }
        for r in range(args.rounds + 1):  # the first round warms up
            for path, (walls, kernels) in got.items():
                opencl_dw_wide.pays = pays if path == "dw_wide" else (lambda spec, cpu: False)
                info = RunInfo()
                t0 = time.perf_counter()
                conv2d(x, w, backend="opencl", info=info, **opts)
                if r:
                    walls.append((time.perf_counter() - t0) * 1e3)
                    kernels.append(info.timings["compute"] * 1e3)
        opencl_dw_wide.pays = pays
        (aw, ak), (bw, bk) = got["dw_direct"], got["dw_wide"]
        med = statistics.median
        print(f"{label}: dw_direct -> dw_wide, wall median {med(aw):6.2f} -> {med(bw):6.2f} "
              f"(min {min(aw):6.2f} -> {min(bw):6.2f}) | kernels median {med(ak):6.2f} -> "
              f"{med(bk):6.2f} (min {min(ak):6.2f} -> {min(bk):6.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
