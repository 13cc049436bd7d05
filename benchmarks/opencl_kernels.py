"""Micro-benchmark of the fast OpenCL paths (convcli.backends.opencl.plan) vs the peers.

Usage::

    python benchmarks/opencl_kernels.py [W1 W2 ...] [--repeat 7]
        [--api] [--winograd auto|on|off]

Times, side by side in one run, ``plan.run`` end to end (buffers, kernel, map;
kernel time from profiling events) and the peers: torch CPU (NCHW) for the CNN layers
W5-W9 and OpenCV's best per channel (filter2D / sepFilter2D) for the image filters
W1-W4. Every result is checked against the NumPy backend. ``--api`` times
``convcli.conv2d(..., backend="opencl")`` instead of the fast path alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convcli import conv2d
from convcli.backends.numpy import conv2d_direct
from convcli.backends.opencl import plan as opencl_plan
from convcli.runinfo import RunInfo
from convcli.spec import make_spec


def gaussian(k: int, sigma: float) -> np.ndarray:
    t = np.arange(k) - (k - 1) / 2
    g = np.exp(-(t**2) / (2 * sigma**2))
    g /= g.sum()
    return np.outer(g, g)


def workloads(rng: np.random.Generator) -> dict[str, tuple]:
    """id -> (x, weight, bias, conv options); the suite of issue 5 (float32)."""
    img = rng.random((1, 3, 2048, 2048), dtype=np.float32)

    def dw(k2d: np.ndarray) -> np.ndarray:
        return np.repeat(k2d[None, None].astype(np.float32), 3, axis=0)

    def layer(n, cin, cout, hw, k, groups=1):
        x = rng.standard_normal((n, cin, hw, hw), dtype=np.float32)
        w = rng.standard_normal((cout, cin // groups, k, k), dtype=np.float32) * 0.1
        return x, w, rng.standard_normal(cout, dtype=np.float32)

    w1 = rng.standard_normal((3, 1, 3, 3), dtype=np.float32)
    return {
        "W1": (img, w1, None, dict(padding=1, groups=3)),
        "W2": (
            img,
            dw(gaussian(5, 1.1)),
            None,
            dict(padding="same", groups=3, padding_mode="reflect"),
        ),
        "W3": (
            img,
            dw(np.full((15, 15), 1 / 225)),
            None,
            dict(padding=7, groups=3, padding_mode="replicate"),
        ),
        "W4": (img, dw(gaussian(31, 5.0)), None, dict(padding=15, groups=3)),
        "W5": (*layer(8, 64, 64, 56, 3), dict(padding=1)),
        "W6": (*layer(1, 256, 256, 28, 3), dict(padding=1)),
        "W7": (*layer(4, 64, 128, 64, 3, 4), dict(stride=2, dilation=2, groups=4, padding=2)),
        "W8": (*layer(8, 128, 256, 56, 1), {}),
        "W9": (*layer(1, 3, 16, 1024, 7), dict(stride=2, padding=3)),
    }


def median_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def opencv_peer(x, w, opts):
    import cv2

    border = {
        "zeros": cv2.BORDER_CONSTANT,
        "reflect": cv2.BORDER_REFLECT_101,
        "replicate": cv2.BORDER_REPLICATE,
    }[opts.get("padding_mode", "zeros")]
    k2d = w[0, 0]
    u, s, vt = np.linalg.svd(k2d.astype(np.float64))
    separable = s[1] < 1e-7 * s[0]
    col = (u[:, 0] * np.sqrt(s[0])).astype(np.float32)
    row = (vt[0] * np.sqrt(s[0])).astype(np.float32)

    def fn():
        out = []
        for c in range(x.shape[1]):
            plane = x[0, c]
            if separable:
                out.append(cv2.sepFilter2D(plane, -1, row, col, borderType=border))
            else:
                out.append(cv2.filter2D(plane, -1, w[c, 0], borderType=border))
        return out

    return fn


def calibrate(backend, repeat: int = 5) -> tuple[float, float]:
    """(GFLOP/s of a float8 multiply-add kernel, GB/s of a float8 copy) right now."""
    cl = __import__("pyopencl")
    src = (Path(__file__).with_name("calibrate.cl")).read_text()
    prg = cl.Program(backend.ctx, src).build()
    n = 3 * 2048 * 2048
    mf = cl.mem_flags
    x = np.full(n, 0.5, np.float32)
    xb = cl.Buffer(backend.ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=x)
    ob = cl.Buffer(backend.ctx, mf.READ_WRITE, size=x.nbytes)
    items = 1 << 18
    fma, copy = prg.fma_peak, prg.copy8
    best_f = best_c = float("inf")
    for _ in range(repeat):
        ev = fma(backend.queue, (items,), (64,), xb, ob)
        ev.wait()
        best_f = min(best_f, (ev.profile.end - ev.profile.start) * 1e-9)
        ev = copy(backend.queue, (n // 8,), (64,), xb, ob, np.float32(2.0))
        ev.wait()
        best_c = min(best_c, (ev.profile.end - ev.profile.start) * 1e-9)
    return items * 8192 / best_f / 1e9, 2 * x.nbytes / best_c / 1e9


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("ids", nargs="*")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--algo", default="auto")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--api", action="store_true", help="time convcli.conv2d end to end")
    ap.add_argument(
        "--winograd",
        choices=["auto", "on", "off"],
        default="auto",
        help="Winograd F(2x2,3x3) for eligible 3x3 layers: cost model, forced, or never",
    )
    args = ap.parse_args(argv)
    from convcli.backends import get_backend

    backend = get_backend("opencl")
    winograd = {"auto": None, "on": True, "off": False}[args.winograd]
    backend.settings = dataclasses.replace(backend.settings, winograd=winograd)
    gf, gb = calibrate(backend)
    print(f"device now: float8 FMA kernel {gf:.0f} GFLOP/s, copy kernel {gb:.1f} GB/s", flush=True)
    rng = np.random.default_rng(0)
    suite = workloads(rng)
    for wid in args.ids or list(suite):
        x, w, b, opts = suite[wid]
        spec = make_spec(x, w, b, **opts)
        info = RunInfo()
        out = opencl_plan.run(backend, x, w, b, spec, algo=args.algo, info=info)
        if out is None:
            print(f"{wid}: no fast path")
            continue
        ref = conv2d_direct(x, w, b, spec)
        err = float(np.abs(out - ref).max() / np.abs(ref).max())
        first = dict(info.timings)
        infos = []

        def ours(infos=infos, x=x, w=w, b=b, spec=spec, opts=opts):
            i = RunInfo()
            if args.api:  # as a user calls it: validation, backend wrapper, fast path
                conv2d(x, w, b, **opts, backend="opencl", algo=args.algo, info=i)
            else:
                opencl_plan.run(backend, x, w, b, spec, algo=args.algo, info=i)
            infos.append(i)

        # torch's OpenMP workers spin for a while after each call and would steal the
        # two cores from whatever runs next: let them go to sleep between systems
        time.sleep(0.5)
        ms = median_ms(ours, args.repeat)
        kern = statistics.median(i.timings["compute"] for i in infos[1:]) * 1e3
        peer_ms, peer = float("nan"), "-"
        if not args.no_peer:
            if wid in ("W1", "W2", "W3", "W4"):
                peer = "opencv"
                peer_ms = median_ms(opencv_peer(x, w, opts), args.repeat)
            else:
                import torch

                torch.set_num_threads(2)
                tx, tw = torch.from_numpy(x), torch.from_numpy(w)
                tb = None if b is None else torch.from_numpy(b)
                peer = "torch"
                with torch.no_grad():
                    peer_ms = median_ms(
                        lambda tx=tx, tw=tw, tb=tb, opts=opts: torch.nn.functional.conv2d(
                            tx, tw, tb, **{k: v for k, v in opts.items() if k != "padding_mode"}
                        ),
                        args.repeat,
                    )
        time.sleep(0.5)
        # GFLOP/s count the direct convolution's multiply-adds (2 flops each), also for
        # Winograd, which does 2.25x fewer: comparable across algorithms and peers
        gflops = 2 * spec.macs / (ms * 1e-3) / 1e9
        kernel_gflops = 2 * spec.macs / (kern * 1e-3) / 1e9
        kernel = opencl_plan.choose(spec, w, args.algo, settings=backend.settings)[0].kernel
        print(
            f"{wid}: algo={info.algo:9s} ({kernel:10s}) e2e {ms:8.2f} ms  kernel {kern:8.2f} ms"
            f"  {gflops:6.1f} / {kernel_gflops:6.1f} GFLOP/s (e2e / kernel)  {peer} "
            f"{peer_ms:8.2f} ms  ratio {peer_ms / ms:5.2f}  build {first.get('build', 0):.2f}s"
            f"  err {err:.1e}",
            flush=True,
        )
    gf, gb = calibrate(backend)
    print(f"device now: float8 FMA kernel {gf:.0f} GFLOP/s, copy kernel {gb:.1f} GB/s", flush=True)


if __name__ == "__main__":
    main()
