"""The benchmark harness behind ``convcli bench``: times convcli and its peers, returns rows.

A library module: it prints nothing and imports neither click nor rich; progress goes to
an optional callback. Peers (torch, OpenCV, SciPy) are imported only when asked for and
skipped when missing, so none of them is a dependency.

Method, per workload:

* one NumPy reference result (``backend="numpy", algo="direct"``: im2col for layers,
  tap accumulation for depthwise filters; both tested against the naive reference);
* every system runs once as warm-up (OpenCL builds, caches, page faults), then
  ``repeat`` timed runs; rows give the median and the minimum. Every call returns host
  arrays, so device work has finished when the clock stops. A single run slower than
  ``SLOW_S`` is reported as is (one run, noted): torch's 31x31 depthwise path takes
  about 40 s here;
* convcli's OpenCL backend gets an ``end-to-end`` row (what a ``conv2d`` caller waits
  for, copies included) and a ``kernel`` row (``RunInfo.timings["compute"]``, from
  OpenCL profiling events);
* every result is compared with the reference: ``max_rel_err`` is
  ``max|y - ref| / max|ref|`` and ``ok`` means it is within ``TOLERANCE``;
* ``gflops`` counts 2 x multiply-adds of the direct convolution per second, whatever the
  algorithm; ``ratio`` (convcli rows only) is the best correct peer's median time over
  this row's median time: above 1 means convcli is faster.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from convcli.api import conv2d
from convcli.errors import BackendError
from convcli.plan import separable_factors
from convcli.runinfo import RunInfo
from convcli.spec import ConvSpec, make_spec

# float32 results within this fraction of max|reference| count as correct (the engine's
# own float32 tolerance, tests/conftest.py RTOL)
TOLERANCE = 2e-5
# a warm-up run slower than this is used as the only measurement
SLOW_S = 5.0
# Seconds of quiet before each system's warm-up, per suite. The thread pools of the
# system timed before (torch's OpenMP, OpenBLAS, PoCL) keep spinning after their last
# call and slowed whichever system came next by up to 2x (W5-W9, measured: 5 ms of
# pause was not enough, 0.5 s was); every system, peers and convcli alike, is timed
# from rest, then warm from its own runs.
SETTLE_S = {"standard": 0.5, "quick": 0.05}
# Every system is timed in up to this many rounds, the systems of a workload in turn
# within each round: the machine has slow spells (both vCPUs busy at half speed for
# seconds, measured with /proc/stat: no steal time, the same work taking 2x), and timing
# one system's runs back to back let a spell land on one system only (W5's OpenCL kernel
# read 7.1-7.5 ms for seconds, then 13.4-14.0 for the next 10 runs). With one timed run
# per round (--repeat 7), a spell of a few seconds touches one or two of a system's
# seven runs and leaves the median alone; with three rounds it took three at once.
ROUNDS = 7
# the notice of a run the OpenCL backend handed to NumPy on the host (a CPU device's 1x1
# layers, the widest FFTs), and what the row's note then says
HOST_MARK = "on the host (NumPy)"
HOST_NOTE = "on host"


def ran_on_host(backend: str, info: Any) -> bool:
    """Whether ``backend``'s run that filled ``info`` (a RunInfo) was the OpenCL backend
    handing the layer to NumPy on the host (its notice says :data:`HOST_MARK`)."""
    return backend == "opencl" and any(HOST_MARK in n for n in info.notices)


SYSTEMS = ("convcli-opencl", "convcli-numpy", "torch", "opencv", "scipy")
PEERS = ("torch", "opencv", "scipy")

Progress = Callable[..., Any]


@dataclass
class BenchRow:
    """One timed system on one workload."""

    workload: str
    description: str
    system: str
    mode: str  # "end-to-end" or "kernel"
    median_ms: float
    min_ms: float
    gflops: float | None
    ratio: float | None
    max_rel_err: float | None
    ok: bool
    note: str = ""


@dataclass(frozen=True)
class Workload:
    """A float32 convolution problem of the suite (inputs are made by :meth:`arrays`)."""

    id: str
    description: str
    x_shape: tuple[int, int, int, int]
    w_shape: tuple[int, int, int, int]
    stride: int = 1
    padding: int | str = 0
    dilation: int = 1
    groups: int = 1
    padding_mode: str = "zeros"
    kernel: str = "random"  # image filters: "sharpen", "gaussian", "box"

    @property
    def is_image_filter(self) -> bool:
        """A depthwise filter of an image (one kernel per channel): W1-W4."""
        return self.kernel != "random"

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Input and weight, float32, from a fixed seed."""
        rng = np.random.default_rng(sum(map(ord, self.id)))
        x = rng.random(self.x_shape, dtype=np.float32)
        _, cin_g, kh, kw = self.w_shape
        if self.kernel == "random":
            fan_in = cin_g * kh * kw
            w = rng.uniform(-1, 1, self.w_shape) / math.sqrt(fan_in)
        else:
            w = np.broadcast_to(_image_kernel(self.kernel, kh, kw), self.w_shape)
        return x, np.ascontiguousarray(w, dtype=np.float32)

    def options(self) -> dict[str, Any]:
        return {
            "stride": self.stride,
            "padding": self.padding,
            "dilation": self.dilation,
            "groups": self.groups,
            "padding_mode": self.padding_mode,
        }

    def spec(self, x: np.ndarray, w: np.ndarray) -> ConvSpec:
        return make_spec(x, w, None, **self.options())


def _gaussian_1d(k: int) -> np.ndarray:
    # sigma = (k-1)/6: the kernel covers +-3 sigma (5 taps: sigma 0.67; 31 taps: 5)
    sigma = max((k - 1) / 6.0, 0.5)
    t = np.arange(k) - (k - 1) / 2.0
    g = np.exp(-(t * t) / (2 * sigma * sigma))
    return g / g.sum()


def _image_kernel(name: str, kh: int, kw: int) -> np.ndarray:
    if name == "sharpen":  # rank 2: not separable (OpenCV uses filter2D)
        k = -np.ones((kh, kw)) / (kh * kw - 1)
        k[kh // 2, kw // 2] = 2.0
        return k
    if name == "gaussian":
        return np.outer(_gaussian_1d(kh), _gaussian_1d(kw))
    if name == "box":
        return np.full((kh, kw), 1.0 / (kh * kw))
    raise ValueError(f"unknown image kernel {name!r}")


def _suite(quick: bool) -> list[Workload]:
    """The W1-W9 workloads of issue 5, or small versions of them (same geometry)."""
    side = 256 if quick else 2048
    img = (1, 3, side, side)
    size = f"{side}^2"
    n5, h5 = (2, 28) if quick else (8, 56)
    c6 = 64 if quick else 256
    n7, h7 = (1, 32) if quick else (4, 64)
    n8, h8 = (2, 28) if quick else (8, 56)
    h9 = 256 if quick else 1024
    return [
        Workload("W1", f"RGB {size}, dw 3x3 sharpen, pad 1, zeros", img, (3, 1, 3, 3),
                 padding=1, groups=3, kernel="sharpen"),
        Workload("W2", f"RGB {size}, dw 5x5 Gaussian, 'same', reflect", img, (3, 1, 5, 5),
                 padding="same", groups=3, padding_mode="reflect", kernel="gaussian"),
        Workload("W3", f"RGB {size}, dw 15x15 box, pad 7, replicate", img, (3, 1, 15, 15),
                 padding=7, groups=3, padding_mode="replicate", kernel="box"),
        Workload("W4", f"RGB {size}, dw 31x31 Gaussian, pad 15, zeros", img, (3, 1, 31, 31),
                 padding=15, groups=3, kernel="gaussian"),
        Workload("W5", f"N={n5} 64->64 {h5}^2 3x3, pad 1", (n5, 64, h5, h5), (64, 64, 3, 3),
                 padding=1),
        Workload("W6", f"N=1 {c6}->{c6} 28^2 3x3, pad 1", (1, c6, 28, 28), (c6, c6, 3, 3),
                 padding=1),
        Workload("W7", f"N={n7} 64->128 {h7}^2 3x3 s2 d2 g4, pad 2", (n7, 64, h7, h7),
                 (128, 16, 3, 3), stride=2, padding=2, dilation=2, groups=4),
        Workload("W8", f"N={n8} 128->256 {h8}^2 1x1", (n8, 128, h8, h8), (256, 128, 1, 1)),
        Workload("W9", f"N=1 3->16 {h9}^2 7x7 s2, pad 3", (1, 3, h9, h9), (16, 3, 7, 7),
                 stride=2, padding=3),
    ]  # fmt: skip


SUITES: dict[str, list[Workload]] = {"standard": _suite(False), "quick": _suite(True)}


# ---------------------------------------------------------------------------------------
# timing


class _Timer:
    """The runs of one system (or one way to run a peer) on one workload, gathered over
    interleaved rounds (see :func:`_run_workload`)."""

    def __init__(self, fn: Callable[[RunInfo], np.ndarray]) -> None:
        self.fn = fn
        self.times: list[float] = []
        self.kernel_s: list[float] = []
        self.result: np.ndarray | None = None
        self.single = False  # the warm-up took over SLOW_S: it is the only run

    def round(self, runs: int, settle: float) -> None:
        """After ``settle`` seconds of quiet, one untimed warm-up run, then ``runs``
        timed ones; a warm-up slower than SLOW_S is kept as the only measurement."""
        if self.single:
            return
        time.sleep(settle)
        info = RunInfo()
        t0 = time.perf_counter()
        self.result = self.fn(info)
        first = time.perf_counter() - t0
        if first > SLOW_S and not self.times:
            self.single = True
            self.times = [first]
            self.kernel_s = [info.timings["compute"]] if "compute" in info.timings else []
            return
        for _ in range(runs):
            info = RunInfo()
            t0 = time.perf_counter()
            self.result = self.fn(info)
            self.times.append(time.perf_counter() - t0)
            if "compute" in info.timings:
                self.kernel_s.append(info.timings["compute"])

    @property
    def median_s(self) -> float:
        return statistics.median(self.times)

    @property
    def min_s(self) -> float:
        return min(self.times)


def _rounds(repeat: int) -> list[int]:
    """Timed runs per round: ``repeat`` split as evenly as possible over ROUNDS."""
    rounds = min(repeat, ROUNDS)
    return [repeat // rounds + (1 if i < repeat % rounds else 0) for i in range(rounds)]


def _max_rel_err(y: np.ndarray, ref: np.ndarray) -> float:
    if y.shape != ref.shape:
        return math.inf
    scale = float(np.max(np.abs(ref))) or 1.0
    return float(np.max(np.abs(y.astype(np.float64) - ref))) / scale


# ---------------------------------------------------------------------------------------
# the systems: each returns (callable taking a RunInfo, note) or raises _Skip


class _Skip(Exception):
    """The system cannot run this workload here (not importable, not applicable)."""


def _convcli(backend: str, wl: Workload, x: np.ndarray, w: np.ndarray):
    def run(info: RunInfo) -> np.ndarray:
        return conv2d(x, w, backend=backend, info=info, **wl.options())

    return run


def _torch(wl: Workload, x: np.ndarray, w: np.ndarray, spec: ConvSpec):
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as exc:
        raise _Skip("torch not importable") from exc
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    top, bottom, left, right = spec.pad
    mode = {"zeros": None, "reflect": "reflect", "replicate": "replicate", "circular": "circular"}
    if spec.padding_mode not in mode:
        raise _Skip(f"torch has no padding_mode {spec.padding_mode!r}")
    tmode = mode[spec.padding_mode]
    symmetric = top == bottom and left == right

    def run(info: RunInfo) -> np.ndarray:
        with torch.no_grad():
            xin, pad = tx, (top, left)
            if tmode is not None or not symmetric:
                xin = F.pad(tx, (left, right, top, bottom), mode=tmode or "constant")
                pad = (0, 0)
            y = F.conv2d(xin, tw, None, spec.stride, pad, spec.dilation, spec.groups)
        return y.numpy()

    return run, "F.conv2d NCHW" + (f" + F.pad {tmode}" if tmode else "")


_CV_BORDER = {
    "zeros": "BORDER_CONSTANT",
    "reflect": "BORDER_REFLECT_101",
    "replicate": "BORDER_REPLICATE",
    "symmetric": "BORDER_REFLECT",
}
_SCIPY_MODE = {
    "zeros": "constant",
    "reflect": "mirror",
    "replicate": "nearest",
    "circular": "wrap",
    "symmetric": "reflect",
}
_NP_PAD = {
    "zeros": "constant",
    "reflect": "reflect",
    "replicate": "edge",
    "circular": "wrap",
    "symmetric": "symmetric",
}


def _image_filter_geometry(wl: Workload, spec: ConvSpec) -> None:
    """Image-filter peers need a depthwise, stride-1, output-size-preserving problem."""
    if not wl.is_image_filter or spec.cout_g != 1 or spec.cin_g != 1:
        raise _Skip("only depthwise image filters (W1-W4)")
    top, bottom, left, right = spec.pad
    if (
        spec.stride != (1, 1)
        or spec.dilation != (1, 1)
        or top + bottom != spec.kh - 1
        or left + right != spec.kw - 1
    ):
        raise _Skip("only stride 1, dilation 1, 'same'-size output")


def _opencv(wl: Workload, x: np.ndarray, w: np.ndarray, spec: ConvSpec):
    _image_filter_geometry(wl, spec)
    try:
        import cv2
    except ImportError as exc:
        raise _Skip("cv2 not importable") from exc
    if spec.padding_mode not in _CV_BORDER:
        raise _Skip(f"OpenCV filters have no {spec.padding_mode} border")
    border = getattr(cv2, _CV_BORDER[spec.padding_mode])
    anchor = (spec.pad[2], spec.pad[0])  # (x, y): kernel tap over the output pixel
    kernels = [w[c, 0] for c in range(spec.c_out)]
    factors = separable_factors(w)
    variants = {}

    def filter2d(info: RunInfo) -> np.ndarray:
        out = np.empty((spec.n, spec.c_out, spec.h_out, spec.w_out), np.float32)
        for b in range(spec.n):
            for c in range(spec.c_out):
                out[b, c] = cv2.filter2D(x[b, c], -1, kernels[c], anchor=anchor, borderType=border)
        return out

    variants["filter2D"] = filter2d
    if factors is not None:
        cols = [factors[0][c, 0].astype(np.float32) for c in range(spec.c_out)]
        rows = [factors[1][c, 0].astype(np.float32) for c in range(spec.c_out)]

        def sep(info: RunInfo) -> np.ndarray:
            out = np.empty((spec.n, spec.c_out, spec.h_out, spec.w_out), np.float32)
            for b in range(spec.n):
                for c in range(spec.c_out):
                    out[b, c] = cv2.sepFilter2D(
                        x[b, c], -1, rows[c], cols[c], anchor=anchor, borderType=border
                    )
            return out

        variants["sepFilter2D"] = sep
    return variants


def _scipy(wl: Workload, x: np.ndarray, w: np.ndarray, spec: ConvSpec):
    _image_filter_geometry(wl, spec)
    try:
        from scipy import ndimage, signal
    except ImportError as exc:
        raise _Skip("scipy not importable") from exc
    top, _, left, _ = spec.pad
    # scipy centres the kernel at k//2; origin moves it to our (top, left) anchor
    origin = (spec.kh // 2 - top, spec.kw // 2 - left)
    mode = _SCIPY_MODE[spec.padding_mode]
    pad = ((0, 0), (spec.pad[0], spec.pad[1]), (spec.pad[2], spec.pad[3]))
    npmode = _NP_PAD[spec.padding_mode]
    flipped = np.ascontiguousarray(w[:, 0, ::-1, ::-1])

    def correlate(info: RunInfo) -> np.ndarray:
        out = np.empty((spec.n, spec.c_out, spec.h_out, spec.w_out), np.float32)
        for b in range(spec.n):
            for c in range(spec.c_out):
                ndimage.correlate(x[b, c], w[c, 0], output=out[b, c], mode=mode, origin=origin)
        return out

    def fftconvolve(info: RunInfo) -> np.ndarray:
        out = np.empty((spec.n, spec.c_out, spec.h_out, spec.w_out), np.float32)
        for b in range(spec.n):
            xp = np.pad(x[b], pad, mode=npmode)
            out[b] = signal.fftconvolve(xp, flipped, mode="valid", axes=(1, 2))
        return out

    return {"ndimage.correlate": correlate, "signal.fftconvolve": fftconvolve}


# ---------------------------------------------------------------------------------------
# the suite


def _row(
    wl: Workload,
    system: str,
    mode: str,
    median_s: float,
    min_s: float,
    macs: int,
    err: float | None,
    note: str,
) -> BenchRow:
    ok = err is not None and err <= TOLERANCE
    return BenchRow(
        workload=wl.id,
        description=wl.description,
        system=system,
        mode=mode,
        median_ms=median_s * 1e3,
        min_ms=min_s * 1e3,
        gflops=2.0 * macs / median_s / 1e9 if median_s > 0 else None,
        ratio=None,
        max_rel_err=err,
        ok=ok,
        note=note,
    )


def _run_workload(
    wl: Workload,
    backends: Sequence[str],
    compare: Sequence[str],
    repeat: int,
    say: Progress,
    settle: float = 0.0,
) -> list[BenchRow]:
    """Time every system on ``wl``: the convcli backends, then each way of running each
    peer, in up to ROUNDS interleaved rounds, so that a slow spell of the machine (one of its
    two vCPUs lost for seconds at a time) falls on every system alike instead of on
    whichever one it happens to meet."""
    x, w = wl.arrays()
    spec = wl.spec(x, w)
    macs = spec.macs
    ref = conv2d(x, w, backend="numpy", algo="direct", **wl.options()).astype(np.float64)
    # (system, way of running it, timer); a peer may have several ways (filter2D...)
    entries: list[tuple[str, str, _Timer]] = []
    algos: dict[str, str] = {}
    hosted: set[str] = set()
    for backend in backends:
        system = f"convcli-{backend}"
        fn = _convcli(backend, wl, x, w)
        try:
            probe = RunInfo()
            fn(probe)
        except BackendError as exc:
            say(f"{wl.id} {system}: skipped ({exc})")
            continue
        algos[system] = f"algo={probe.algo}" if probe.algo else ""
        if ran_on_host(backend, probe):
            # the OpenCL backend handed it to NumPy (a CPU device's 1x1 layers, the
            # widest FFTs): its times are the host's, and no profiling events are had
            hosted.add(system)
            algos[system] = (algos[system] + " " + HOST_NOTE).strip()
        entries.append((system, "", _Timer(fn)))
    for peer in compare:
        try:
            if peer == "torch":
                fn, note = _torch(wl, x, w, spec)
                variants = {note: fn}
            elif peer == "opencv":
                variants = _opencv(wl, x, w, spec)
            elif peer == "scipy":
                variants = _scipy(wl, x, w, spec)
            else:
                raise _Skip(f"unknown peer {peer!r}; peers are {list(PEERS)}")
        except _Skip as exc:
            say(f"{wl.id} {peer}: skipped ({exc})")
            continue
        entries += [(peer, name, _Timer(fn)) for name, fn in variants.items()]
    plan = _rounds(repeat)
    for k, runs in enumerate(plan):
        for system, name, timer in entries:
            say(f"{wl.id} {system}{' ' + name if name else ''} (round {k + 1}/{len(plan)}) ...")
            timer.round(runs, settle)

    def note_runs(timer: _Timer, note: str) -> str:
        if timer.single and repeat > 1:
            return (note + "; " if note else "") + f"1 run (> {SLOW_S:.0f} s)"
        return note

    rows: list[BenchRow] = []
    for system, _, timer in entries:
        if not system.startswith("convcli-"):
            continue
        err = _max_rel_err(timer.result, ref)
        note = note_runs(timer, algos[system])
        rows.append(_row(wl, system, "end-to-end", timer.median_s, timer.min_s, macs, err, note))
        if system == "convcli-opencl" and timer.kernel_s and system not in hosted:
            ks = timer.kernel_s
            kernel = (statistics.median(ks), min(ks), macs, err, "OpenCL profiling events")
            rows.append(_row(wl, system, "kernel", *kernel))
        say(f"{wl.id} {system}: {timer.median_s * 1e3:.2f} ms, err {err:.1e}")
    for peer in compare:
        # several ways to run a peer (filter2D or sepFilter2D...): report the fastest
        # correct one, naming it in the note
        best: tuple[_Timer, str, float] | None = None
        for system, name, timer in entries:
            if system != peer:
                continue
            err = _max_rel_err(timer.result, ref)
            key = (err > TOLERANCE, timer.median_s)
            if best is None or key < (best[2] > TOLERANCE, best[0].median_s):
                best = (timer, name, err)
        if best is None:
            continue
        timer, name, err = best
        rows.append(
            _row(
                wl, peer, "end-to-end", timer.median_s, timer.min_s, macs, err,
                note_runs(timer, name),
            )
        )  # fmt: skip
        say(f"{wl.id} {peer}: {timer.median_s * 1e3:.2f} ms ({name}), err {err:.1e}")

    peers_ok = [r.median_ms for r in rows if r.system in PEERS and r.ok]
    if peers_ok:
        best_peer = min(peers_ok)
        for r in rows:
            if r.system.startswith("convcli-") and r.median_ms > 0:
                r.ratio = best_peer / r.median_ms
    return rows


def run_suite(
    suite: str = "standard",
    backends: Sequence[str] = ("opencl", "numpy"),
    compare: Sequence[str] = ("torch", "opencv", "scipy"),
    repeat: int = 5,
    progress: Progress | None = None,
) -> list[BenchRow]:
    """Time ``suite`` on convcli's ``backends`` and the importable ``compare`` peers.

    Parameters
    ----------
    suite : {'standard', 'quick'}
        ``standard`` is W1-W9 of issue 5 (float32); ``quick`` the same layers, smaller.
    backends : sequence of {'opencl', 'numpy'}
        convcli backends to time; one that cannot initialise is skipped (and said so).
    compare : sequence of {'torch', 'opencv', 'scipy'}
        Peers, each timed only where importable and applicable (OpenCV and SciPy: the
        depthwise image filters W1-W4).
    repeat : int
        Timed runs per system, split over up to ROUNDS rounds in which the systems take
        turns, each round after a pause and one warm-up run (median and minimum reported).
    progress : callable, optional
        Called with one-line messages as the suite runs.

    Returns
    -------
    list of BenchRow
        Per workload: convcli rows (OpenCL end-to-end and kernel, NumPy), then peers.

    Examples
    --------
    >>> rows = run_suite("quick", backends=("numpy",), compare=(), repeat=1)  # doctest: +SKIP
    >>> all(r.ok for r in rows)  # doctest: +SKIP
    True
    """
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {list(SUITES)}, got {suite!r}")
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    for b in backends:
        if b not in ("opencl", "numpy"):
            raise ValueError(f"backends must be 'opencl' or 'numpy', got {b!r}")
    say = progress or (lambda *args: None)
    rows: list[BenchRow] = []
    for wl in SUITES[suite]:
        rows += _run_workload(wl, tuple(backends), tuple(compare), repeat, say, SETTLE_S[suite])
    return rows


# issue 5's targets: (convcli system, peer, minimum ratio of end-to-end medians) for the
# workloads of the standard suite (the quick suite's have the same ids and geometry)
TARGETS: dict[tuple[str, ...], list[tuple[str, str, float]]] = {
    ("W1", "W2", "W3", "W4"): [("convcli-opencl", "opencv", 1.0), ("convcli-numpy", "scipy", 1.0)],
    ("W5", "W6", "W7", "W8", "W9"): [
        ("convcli-opencl", "torch", 0.8),
        ("convcli-numpy", "torch", 0.5),
    ],
}


@dataclass
class TargetCheck:
    """One target of issue 5 read off a run: ours against the named peer."""

    workload: str
    system: str
    peer: str
    target: float
    ratio: float  # peer median / our median
    ratio_of_mins: float  # peer minimum / our minimum (the least disturbed runs)
    met: bool  # by medians, with a correct result


def target_checks(rows: Sequence[BenchRow]) -> list[TargetCheck]:
    """The issue-5 targets that ``rows`` hold both sides of (end-to-end rows)."""
    by = {(r.workload, r.system, r.mode): r for r in rows}
    checks = []
    for group, pairs in TARGETS.items():
        for wid in group:
            for system, peer, goal in pairs:
                ours = by.get((wid, system, "end-to-end"))
                theirs = by.get((wid, peer, "end-to-end"))
                if ours is None or theirs is None or ours.median_ms <= 0 or ours.min_ms <= 0:
                    continue
                ratio = theirs.median_ms / ours.median_ms
                low = theirs.min_ms / ours.min_ms
                ok = ratio >= goal and ours.ok and theirs.ok
                checks.append(TargetCheck(wid, system, peer, goal, ratio, low, ok))
    return checks


def rows_to_json(rows: Sequence[Any]) -> str:
    """Dataclass rows (:class:`BenchRow` or another suite's) as a JSON array of objects
    keyed by their fields."""
    return json.dumps([asdict(r) for r in rows], indent=2)


def rows_to_csv(rows: Sequence[Any], row_type: type = BenchRow) -> str:
    """Dataclass rows of ``row_type`` as CSV with a header line (empty cells for None);
    every suite writes its rows through this."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[f.name for f in fields(row_type)])
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in asdict(r).items()})
    return buf.getvalue()
