"""Kernel time of image sizes as kernel arguments against sizes as build defines.

Issue 13 item 5: sizes are runtime arguments wherever that costs under 10 %, so a
layer builds once for every image and batch size (row bands of a tiled call, a last
short batch). For each kernel family with both forms (``settings.*_fixed_sizes``) and a
few layers, runs both forms alternately in one process (A, B, B, A, ...) and prints the
median and minimum kernel time (profiling events) of each and their ratio::

    python benchmarks/opencl_size_args.py [--rounds 31] [dense pointwise dw_channels winograd
        wino_gemm_out wino_split]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convcli import backends
from convcli.backends.opencl import plan
from convcli.runinfo import RunInfo
from convcli.spec import make_spec

# family -> (settings field, kernel, [(name, x shape, w shape, options)])
FAMILIES = {
    "dense": (
        "dense_fixed_sizes",
        "dense_gemm",
        [
            ("32->64 3x3 s2 56^2", (1, 32, 56, 56), (64, 32, 3, 3), dict(stride=2, padding=1)),
            ("16->32 5x5 64^2", (1, 16, 64, 64), (32, 16, 5, 5), dict(padding=2)),
            ("64->64 1x1 28^2", (1, 64, 28, 28), (64, 64, 1, 1), {}),
            ("N8 64->128 3x3 s2 28^2", (8, 64, 28, 28), (128, 64, 3, 3), dict(stride=2, padding=1)),
            ("3->16 3x3 112^2", (1, 3, 112, 112), (16, 3, 3, 3), dict(padding=1)),
            ("128->128 3x3 14^2", (1, 128, 14, 14), (128, 128, 3, 3), dict(padding=1)),
        ],
    ),
    "pointwise": (
        "pointwise_fixed_sizes",
        "pointwise",
        [
            ("W8 N8 128->256 56^2", (8, 128, 56, 56), (256, 128, 1, 1), {}),
            ("N8 256->256 14^2", (8, 256, 14, 14), (256, 256, 1, 1), {}),
            ("128->128 28^2", (1, 128, 28, 28), (128, 128, 1, 1), {}),
            ("512->128 14^2", (1, 512, 14, 14), (128, 512, 1, 1), {}),
        ],
    ),
    "dw_channels": (
        "dw_channels_fixed_sizes",
        "dw_channels",
        [
            ("dw 96 3x3 28^2", (1, 96, 28, 28), (96, 1, 3, 3), dict(padding=1, groups=96)),
            (
                "dw 144 3x3 s2 56^2",
                (1, 144, 56, 56),
                (144, 1, 3, 3),
                dict(stride=2, padding=1, groups=144),
            ),
            ("N8 dw 64 5x5 14^2", (8, 64, 14, 14), (64, 1, 5, 5), dict(padding=2, groups=64)),
            ("dw 32x2 3x3 32^2", (1, 32, 32, 32), (64, 1, 3, 3), dict(padding=1, groups=32)),
        ],
    ),
    "winograd": (
        "wino_whole_fixed_sizes",
        "winograd",
        [
            ("16->32 3x3 112^2", (1, 16, 112, 112), (32, 16, 3, 3), dict(padding=1)),
            ("32->32 3x3 56^2", (1, 32, 56, 56), (32, 32, 3, 3), dict(padding=1)),
            ("N8 64->64 3x3 28^2", (8, 64, 28, 28), (64, 64, 3, 3), dict(padding=1)),
            ("48->48 3x3 40^2", (1, 48, 40, 40), (48, 48, 3, 3), dict(padding=1)),
        ],
    ),
}
# the split Winograd kernels, per kernel: winograd_input + winograd_gemm_out
# (wino_fused=True) or winograd_input + winograd_gemm + winograd_output
_SPLIT_LAYERS = [
    ("16->32 3x3 112^2", (1, 16, 112, 112), (32, 16, 3, 3), dict(padding=1)),
    ("64->64 3x3 56^2", (1, 64, 56, 56), (64, 64, 3, 3), dict(padding=1)),
    ("N8 64->64 3x3 28^2", (8, 64, 28, 28), (64, 64, 3, 3), dict(padding=1)),
    (
        "128->128 3x3 s2 28^2",
        (1, 128, 28, 28),
        (128, 128, 3, 3),
        dict(padding=2, stride=2, dilation=2),
    ),
    ("256->256 3x3 14^2", (1, 256, 14, 14), (256, 256, 3, 3), dict(padding=1)),
]
FAMILIES["wino_gemm_out"] = ("wino_split_fixed_sizes", "winograd", _SPLIT_LAYERS)
FAMILIES["wino_split"] = ("wino_split_fixed_sizes", "winograd", _SPLIT_LAYERS)
# launches of one chunk, in order: a run's events are these, chunk after chunk
SPLIT_KERNELS = {
    "wino_gemm_out": ("winograd_input", "winograd_gemm_out"),
    "wino_split": ("winograd_input", "winograd_gemm", "winograd_output"),
}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("families", nargs="*", default=list(FAMILIES))
    ap.add_argument("--rounds", type=int, default=31)
    args = ap.parse_args(argv)
    be = backends.get_backend("opencl")
    original = be.settings
    # every layer on its family's kernel: no Winograd form, the CPU-shaped kernels
    common = dataclasses.replace(be.settings, winograd=False, gpu_kernels=False)
    rng = np.random.default_rng(0)
    # every launch's kernel seconds, by its place in a chunk's launches
    seconds: list[float] = []
    add_compute = be.add_compute

    def recording(info, events):
        for i, ev in enumerate(events if seconds else ()):  # not while warming up
            ev.wait()
            seconds[i % len(seconds)] += be.event_seconds(ev)
        add_compute(info, events)

    be.add_compute = recording
    print(f"device: {be.device_name}; kernel ms, arguments against defines")
    for family in args.families:
        field, kernel, layers = FAMILIES[family]
        base = common
        if family == "pointwise":  # from any size
            base = dataclasses.replace(common, pointwise_min_cin=1, pointwise_min_pixels=1)
        if family == "winograd":  # its one-launch form, winograd_fused
            base = dataclasses.replace(common, winograd=True, wino_whole=True)
        names = SPLIT_KERNELS.get(family, (kernel,))
        if family in SPLIT_KERNELS:
            one = family == "wino_gemm_out"
            base = dataclasses.replace(common, winograd=True, wino_whole=False, wino_fused=one)
        for name, xs, ws, opts in layers:
            x = rng.standard_normal(xs).astype(np.float32)
            w = rng.standard_normal(ws).astype(np.float32)
            b = rng.standard_normal(ws[0]).astype(np.float32)
            spec = make_spec(x, w, b, **opts)
            settings = {f: dataclasses.replace(base, **{field: f}) for f in (True, False)}
            chosen = plan.choose(spec, w, "gemm" if family != "dw_channels" else "auto",
                                 settings=base)[0]  # fmt: skip
            assert chosen is not None and chosen.kernel == kernel, (name, chosen)
            algo = chosen.algo
            # kernel seconds per launch of a chunk (the events in order)
            times: dict[bool, list[list[float]]] = {True: [], False: []}
            seconds.clear()
            for fixed in (True, False):  # builds and first launches
                be.settings = settings[fixed]
                for _ in range(3):
                    be.run(x, w, b, spec, algo=algo, info=RunInfo())
            for r in range(args.rounds):
                for fixed in (True, False) if r % 2 == 0 else (False, True):
                    be.settings = settings[fixed]
                    seconds[:] = [0.0] * len(names)
                    be.run(x, w, b, spec, algo=algo, info=RunInfo())
                    times[fixed].append(list(seconds))
            for i, kname in enumerate(names):
                med = {f: statistics.median(t[i] for t in ts) for f, ts in times.items()}
                low = {f: min(t[i] for t in ts) for f, ts in times.items()}
                print(
                    f"{kname:17} {name:22}"
                    f" args {med[False] * 1e3:7.3f} (min {low[False] * 1e3:7.3f})"
                    f"  defines {med[True] * 1e3:8.3f} (min {low[True] * 1e3:8.3f})"
                    f"  ratio {med[False] / med[True]:5.2f} (min {low[False] / low[True]:5.2f})",
                    flush=True,
                )
    be.settings = original
    del be.add_compute


if __name__ == "__main__":
    main()
