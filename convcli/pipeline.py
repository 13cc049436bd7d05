"""Files in, files out, in strips: one image from its decoder to its encoder.

An image flows as strips of output rows. For each strip the rows of native samples it
needs (the strip's rows plus the kernel's halo, ``dilation * (k - 1)``, and the top or
bottom padding through the padding mode's row map, :func:`convcli.spec.source_index`)
are gathered from a :class:`convcli.io.stream.Source`, converted to float32 in one pass
into a reused buffer (``/ top`` as :mod:`convcli.io.images` does), padded left and
right, premultiplied by alpha, convolved with no padding (:func:`convcli.conv2d`, the
whole image's backend and algorithm), then alpha is divided out, the result mapped and
rounded to the output's samples, and the sink (:func:`convcli.io.stream.write_rows`)
encodes them. No float copy of the whole image is made: memory is a few strips plus
what the source and the sink hold (a format decoded or encoded whole holds its native
samples).

Three threads overlap per image: one gathers and converts strip i+1, the caller's
convolves strip i, and one maps and encodes strip i-1; bounded queues (and a pool of
:data:`BUFFERS` input buffers) keep at most a few strips in flight. While OpenCL starts
on a thread of its own (the native step's first use in the process), a source that
decodes ahead goes on decoding, up to :data:`READ_AHEAD_BYTES`. The output is
published atomically (:func:`convcli.io.publish.publish`): an error or an interrupt in
any stage leaves no file.

``out_map='normalize'`` needs the whole result's range: a first pass convolves every
strip and keeps only its min and max, a second (the source opened again) writes.

Every output pixel is computed from the same float32 values, by the same algorithm, as
when the whole image is convolved at once. Strips start at output rows that keep the
algorithm's internal blocks where they are (NumPy's separable pass works in blocks of
16 or more output rows; OpenCL's Winograd tiles are 2 rows, its box sums restart every
32), so NumPy's direct (one kernel per channel) and separable paths and OpenCL's direct
and separable paths give the whole image's values bit for bit. BLAS-based paths (a
weight over several channels per group: NumPy's gemm and im2col direct) block a strip's
matrices differently, and an FFT's last band has its own size: those round an ulp or
two apart in float32 (at most one level once stored).
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convcli import notes as cnotes
from convcli import pixels
from convcli.api import conv2d, plan_call
from convcli.backends import started_opencl
from convcli.budget import STRIP_INPUTS
from convcli.errors import BackendError, InputError, OutputExistsError
from convcli.filters import Filter
from convcli.io import stream
from convcli.io._common import name_of
from convcli.io._common import reason as one_line_reason
from convcli.io.images import (
    check_bit_depth,
    check_size,
    output_format,
    scaled,
    stored_channels,
)
from convcli.io.publish import publish
from convcli.runinfo import RunInfo, fallback_notice
from convcli.spec import ConvSpec, make_spec, source_index

# Float32 input per strip: large enough that per-call overhead and the halo stay small,
# small enough that the strips in flight stay a few tens of MB.
STRIP_BYTES = 2 * 2**20
# Input strips in flight (being gathered, waiting, being convolved), and results
# waiting for the encoder.
BUFFERS = STRIP_INPUTS
RESULTS_QUEUED = 1  # (convcli.budget.STRIP_RESULTS counts them and the ones being mapped)
# Strips are at least this many times the rows they share with the next (the halo).
HALO_FACTOR = 4
# The fewest output rows of a native strip that OpenCL filters: below this, reading,
# queueing and regrouping rows for the encoder cost more CPU (tiled TIFFs: 250 MP, 6.4
# CPU s at 48 rows, 6.0 at 64, 5.9 at 128; 1000 MP, about 23 at 32 rows, 22 at 64 and
# 128), while every row more in each strip in flight is memory (the gigapixel TIFF
# peaked at 260 MiB with 32-row strips, 289 with 64, 358 with 128).
NATIVE_OPENCL_ROWS = 64
# While OpenCL starts beside the first strips (the native step's start-up on a thread
# of its own: a few tenths of a second with nothing to filter yet), a source that can
# decode ahead (:meth:`convcli.io.sources.VipsSource.read_ahead`) goes on decoding into
# up to this many bytes of rows instead of waiting for a strip buffer to come back, so
# that the decode overlaps the start instead of following it. Only without a memory
# limit (the budget prices the source's held_bytes).
READ_AHEAD_BYTES = 96 * 2**20
# How long a blocked queue waits before it looks whether the other side has failed.
_POLL_S = 0.1


class Aborted(Exception):
    """The producer or consumer of a queue stopped; the other side gives up."""


# ---------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Geometry:
    """How one image is cut: the whole problem, its row and column maps, the strips."""

    spec: ConvSpec  # the whole image's convolution (channels that are convolved)
    rows: int  # output rows per strip
    ridx: np.ndarray  # padded row -> source row
    rvalid: np.ndarray  # False where zero padding applies
    cidx: np.ndarray
    cvalid: np.ndarray

    @property
    def extent(self) -> int:
        return self.spec.dilation[0] * (self.spec.kh - 1) + 1

    def strips(self) -> list[tuple[int, int]]:
        ho = self.spec.h_out
        return [(r0, min(ho, r0 + self.rows)) for r0 in range(0, ho, self.rows)]

    def padded_rows(self, r0: int, r1: int) -> tuple[int, int]:
        """The padded input rows ``p0:p1`` that output rows ``r0:r1`` read."""
        sh = self.spec.stride[0]
        return r0 * sh, (r1 - 1) * sh + self.extent

    @property
    def padded_width(self) -> int:
        return self.spec.w + self.spec.pad[2] + self.spec.pad[3]


def strip_alignment(spec: ConvSpec, backend: str, algo: str) -> int:
    """Output rows a strip's start must be a multiple of, so that ``algo`` computes each
    row as it does on the whole image (its internal blocks stay where they are)."""
    align = 2 if backend == "opencl" else 1  # OpenCL's Winograd tiles of 2x2 outputs
    if algo == "separable" and backend == "opencl":
        from convcli.backends.opencl.settings import DEFAULT

        # a box's running sums restart every box_rows rows
        align = math.lcm(align, DEFAULT.box_rows)
    elif algo == "separable" and backend == "numpy":
        from convcli.backends.numpy.separable import toeplitz_block

        align = math.lcm(align, toeplitz_block(spec.dilation[0] * (spec.kh - 1) + 1))
    elif algo == "fft" and backend == "numpy":
        from convcli.backends.numpy.fft import fft_plan

        align = math.lcm(align, fft_plan(spec)[0])
    return align


def strip_least(spec: ConvSpec, backend: str, algo: str) -> int:
    """The fewest output rows a strip should have for ``algo`` to run at its speed.

    NumPy's separable pass reads whole blocks of input rows: a strip of 3 blocks wasted
    a third of the vertical pass (96-row strips of a 24 MP photo took 40 % longer per
    row than 224-row ones), so it gets 8 blocks at least."""
    if algo == "separable" and backend == "numpy":
        return 8 * strip_alignment(spec, backend, algo)
    return 1


def strip_rows(
    spec: ConvSpec,
    *,
    align: int = 1,
    least: int = 1,
    target: int | None = None,
    rows: int | None = None,
) -> int:
    """Output rows per strip: about ``target`` bytes of float32 input, at least
    :data:`HALO_FACTOR` times the halo and ``least``, a multiple of ``align`` (or
    ``rows`` exactly, for tests and memory limits, rounded up to ``align``)."""
    ho = max(1, spec.h_out)
    if rows is None:
        target = STRIP_BYTES if target is None else target
        sh = spec.stride[0]
        ekh = spec.dilation[0] * (spec.kh - 1) + 1
        row_bytes = spec.c_in * (spec.w + spec.pad[2] + spec.pad[3]) * 4
        in_rows = max(1, target // max(1, row_bytes))
        rows = max(1, (in_rows - ekh) // sh + 1)
        rows = max(rows, HALO_FACTOR * max(0, ekh - sh) // sh, least)
    if spec.stride[0] > spec.dilation[0] * (spec.kh - 1) + 1:
        # rows between the output rows' windows are never read: one output row a strip
        # gathers only its window (a strip of several would span the gaps)
        return 1
    rows = max(1, -(-int(rows) // align) * align)
    return min(rows, -(-ho // align) * align)


def plan_geometry(spec: ConvSpec, rows: int) -> Geometry:
    ridx, rvalid = source_index(spec.h, spec.pad[0], spec.pad[1], spec.padding_mode)
    cidx, cvalid = source_index(spec.w, spec.pad[2], spec.pad[3], spec.padding_mode)
    return Geometry(spec, rows, ridx, rvalid, cidx, cvalid)


# ---------------------------------------------------------------------------- input rows
class RowReader:
    """Native rows of a source for strip after strip, each row decoded once.

    A window holds the source rows the current strip reads in place; the rows it shares
    with the next strip (the halo) are kept, not read again. Rows that padding maps from
    elsewhere (reflect, circular, symmetric) come from a small store filled as they
    stream by, or, for a :attr:`~convcli.io.stream.Source.sequential` source that needs
    them before it reaches them (circular padding at the top), from a first pass over a
    second opening of the file.
    """

    def __init__(
        self,
        source: stream.Source,
        geo: Geometry,
        reopen: Callable[[], stream.Source],
        name: str = "",
    ) -> None:
        self.source = source
        self.name = name
        self.geo = geo
        self.pos = 0  # next row a sequential read returns
        self.window = np.empty((0, source.info.width, source.info.channels), source.info.dtype)
        self.wlo = 0
        self.store: dict[int, np.ndarray] = {}
        h = geo.spec.h
        top = geo.spec.pad[0]
        self.plan = []  # per strip: (p0, p1, lo, hi) with lo:hi the rows read in place
        extra: set[int] = set()
        early: set[int] = set()
        self.last_need: dict[int, int] = {}  # a row from elsewhere -> the last strip using it
        for k, (r0, r1) in enumerate(geo.strips()):
            p0, p1 = geo.padded_rows(r0, r1)
            lo, hi = min(h, max(0, p0 - top)), min(h, max(0, p1 - top))
            hi = max(hi, lo)
            self.plan.append((p0, p1, lo, hi))
            idx = geo.ridx[p0:p1][geo.rvalid[p0:p1]]
            outside = idx[(idx < lo) | (idx >= hi)]
            extra.update(int(r) for r in outside)
            for r in outside.tolist():
                self.last_need[r] = k
            early.update(int(r) for r in outside[outside >= hi])
        self.extra = extra
        if early:
            self._prefetch(sorted(early), reopen)

    def _prefetch(self, rows: list[int], reopen: Callable[[], stream.Source]) -> None:
        if not self.source.sequential:
            for r in rows:
                self.store[r] = np.array(self.source.read_rows(r, r + 1)[0])
            return
        other = reopen()
        try:
            step = max(1, self.geo.rows * self.geo.spec.stride[0])
            want = set(rows)
            for y0 in range(0, rows[-1] + 1, step):
                block = other.read_rows(y0, min(rows[-1] + 1, y0 + step))
                for r in range(y0, y0 + len(block)):
                    if r in want:
                        self.store[r] = np.array(block[r - y0])
        finally:
            other.close()

    def _row(self, r: int) -> np.ndarray:
        if self.wlo <= r < self.wlo + len(self.window):
            return self.window[r - self.wlo]
        if r not in self.store:  # a random-access source: read it where it is
            self.store[r] = np.array(self.source.read_rows(r, r + 1)[0])
        return self.store[r]

    def strip(self, k: int, out: np.ndarray) -> None:
        """Gather strip ``k``'s padded rows into ``out`` ``(C, rows, W + left + right)``
        float32: converted, padded left and right, zeros where zero padding applies."""
        geo, info = self.geo, self.source.info
        p0, p1, lo, hi = self.plan[k]
        whi = self.wlo + len(self.window)
        # keep the window rows from lo on; read what is missing up to hi
        keep = self.window[max(0, lo - self.wlo) :] if lo < whi else self.window[:0]
        if self.source.sequential and whi < lo:
            # rows no window reads (a stride past the kernel): skipped, except those
            # padding takes from there, which a sequential source gives only now
            gap = [r for r in self.extra if whi <= r < lo and r not in self.store]
            if gap:
                block = self.source.read_rows(whi, max(gap) + 1)
                for r in gap:
                    self.store[r] = np.array(block[r - whi])
                whi = max(gap) + 1
        start = max(lo, whi)
        new = self.source.read_rows(start, hi) if hi > start else self.window[:0]
        if len(new) != max(0, hi - start):
            raise InputError(f"{self.name}: truncated image data")
        for r in self.extra:
            if start <= r < hi and r not in self.store:
                self.store[r] = np.array(new[r - start])
        left, width = geo.spec.pad[2], geo.spec.w
        inner = out[:, :, left : left + width]
        top = geo.spec.pad[0]
        # padded row j is source row p0 + j - top where that lies in lo:hi
        j_keep = lo + top - p0
        if len(keep):
            _convert(keep[: hi - lo], info.top, inner[:, j_keep : j_keep + min(len(keep), hi - lo)])
        if len(new):
            j_new = start + top - p0
            _convert(new, info.top, inner[:, j_new : j_new + len(new)])
        idx, valid = geo.ridx[p0:p1], geo.rvalid[p0:p1]
        for j in range(p1 - p0):
            if lo <= p0 + j - top < hi:
                continue  # read in place above
            if not valid[j]:
                inner[:, j] = 0
                continue
            r = int(idx[j])
            if lo <= r < hi:
                inner[:, j] = inner[:, r + top - p0]
            else:
                _convert(self._row(r)[None], info.top, inner[:, j : j + 1])
        # the window for the next strip: the rows it shares with this one
        nxt = self.plan[k + 1][2] if k + 1 < len(self.plan) else hi
        parts = []
        if len(keep):
            parts.append(keep[max(0, nxt - lo) :])
        if len(new):
            parts.append(new[max(0, nxt - start) :])
        self.window = np.concatenate(parts) if parts else self.window[:0]
        self.wlo = max(nxt, lo) if len(self.window) else hi
        self.window = self.window[: max(0, hi - self.wlo)]
        self.store = {r: v for r, v in self.store.items() if self.last_need.get(r, -1) > k}
        _pad_columns(out, geo)


def _convert(native: np.ndarray, top: float | None, out: np.ndarray) -> None:
    """``(n, W, C)`` native samples into ``out`` ``(C, n, W)`` in one pass: integer
    samples divided by ``top`` into float32 by :func:`convcli.io.images.scaled` (the
    whole-image readers' division), float samples cast, a native strip copied."""
    if top is None or out.dtype == native.dtype:  # float samples; a native strip
        np.copyto(out, np.moveaxis(native, -1, 0), casting="same_kind")
        return
    scaled(native, top, out=out)


def _pad_columns(out: np.ndarray, geo: Geometry) -> None:
    left, right, width = geo.spec.pad[2], geo.spec.pad[3], geo.spec.w
    if not left and not right:
        return
    cols = np.arange(out.shape[-1])
    pad = (cols < left) | (cols >= left + width)
    src = left + geo.cidx[pad]
    out[:, :, pad] = out[:, :, src]
    zero = pad & ~geo.cvalid
    if zero.any():
        out[:, :, zero] = 0


@dataclass(frozen=True)
class NativeStep:
    """What :func:`convcli.native.filter_strip` needs besides the strip: the image's
    filter applies one kernel to every channel, and the result is mapped and rounded
    to integer levels in the same step (see :func:`native_step`)."""

    kernel: np.ndarray
    bias: float
    scale: float
    offset: float
    out_map: str
    out_top: int


def native_step(
    job: ImageJob, *, out_map: str, scale: float, offset: float, bits: int, algo: str
) -> NativeStep | None:
    """The fused native-depth step for this image, or None where the float path runs:
    integer samples of at most 16 bits without alpha, one kernel for every channel, a
    clip/offset/abs mapping into 8 or 16 bits, the engine's own algorithm choice, and a
    kernel the step covers (rank 1, or at most 49 taps)."""
    from convcli import native

    info = job.source.info
    if info.top is None or info.dtype.kind != "u" or info.dtype.itemsize > 2:
        return None
    if info.has_alpha or bits not in (8, 16) or algo != "auto":
        return None
    if out_map not in native.NATIVE_MAPS:
        return None
    shared = native.shared_kernel(job.weight, job.bias, job.spec.groups, job.conv_channels)
    if shared is None:
        return None
    kernel, bias = shared
    spec = job.spec
    probe = np.zeros(
        (spec.dilation[0] * (spec.kh - 1) + 1, spec.dilation[1] * (spec.kw - 1) + 1, 1),
        info.dtype,
    )
    out_top = (1 << bits) - 1
    plan = native._plan(probe, info.top, kernel, spec.stride, spec.dilation, bias, scale,
                        offset, out_map, out_top, None)  # fmt: skip
    if plan is None or (not plan.separable and plan.taps > native.NUMPY_DIRECT_MAX_TAPS):
        return None
    return NativeStep(np.asarray(kernel, np.float32), bias, scale, offset, out_map, out_top)


# ---------------------------------------------------------------------------- one image
@dataclass
class ImageRun:
    """What one image's run did: stage seconds (each stage's own work), notes, info."""

    read: float = 0.0
    convolve: float = 0.0
    read_notes: list[str] = field(default_factory=list)
    info: RunInfo = field(default_factory=RunInfo)


def target_for(
    dst: Path,
    channels: int,
    height: int,
    width: int,
    bit_depth: int,
    quality: int,
    subsampling: str | None = None,
    alpha: bool | None = None,
) -> tuple[stream.Target, int, bool]:
    """The sink's :class:`~convcli.io.stream.Target` for a result of ``channels``, the
    bits it is rounded to (0: float32 samples), and whether its last channel (alpha) is
    dropped; raises InputError as :func:`convcli.io.write_image` does. ``subsampling``:
    a colour JPEG's chroma subsampling (None: by quality). ``alpha``: whether the
    result's last channel is alpha (None: 2 and 4 channels end in alpha), as
    ``write_image``'s ``has_alpha``."""
    name = name_of(dst)
    fmt = output_format(dst)
    if 0 in (channels, height, width):
        raise InputError(
            f"{name}: cannot write an array of shape {(channels, height, width)} as an image"
        )
    if fmt == "NPY":
        return stream.Target(fmt, height, width, channels, np.dtype(np.float32), False), 0, False
    check_bit_depth(name, fmt, bit_depth)
    check_size(name, fmt, height, width)
    if fmt == "TIFF":
        bits = 0 if bit_depth == 32 else bit_depth
        dtype = np.float32 if bits == 0 else np.uint8 if bits == 8 else np.uint16
        has_alpha = channels in (2, 4) and alpha is not False
        target = stream.Target(fmt, height, width, channels, np.dtype(dtype), has_alpha)
        return target, bits, False
    if alpha is None and fmt in ("JPEG", "BMP"):
        alpha = False  # a channel no one called alpha is not dropped unasked: refused
    channels, drop = stored_channels(name, fmt, channels, alpha)
    bits = 16 if fmt == "PNG" and bit_depth == 16 else 8
    dtype = np.uint8 if bits == 8 else np.uint16
    has_alpha = channels in (2, 4)
    target = stream.Target(
        fmt, height, width, channels, np.dtype(dtype), has_alpha, quality, subsampling
    )
    return target, bits, drop


def to_samples(data: np.ndarray, bits: int, drop_alpha: bool, fmt: str) -> np.ndarray:
    """A mapped ``(C, n, W)`` strip as the ``(n, W, C)`` samples the sink stores."""
    if drop_alpha:
        data = data[:-1]
    if bits:
        return pixels.quantize(data, bits)
    samples = np.ascontiguousarray(np.moveaxis(data, 0, -1), dtype=np.float32)
    if fmt == "TIFF":
        # float TIFF is an image format: clipped to [0, 1] as map_output clips (NaN and
        # -inf to 0, inf to 1), also where no mapping ran (a plain clip, whose rounding
        # the integer formats do); only .npy keeps the raw result
        np.fmax(samples, 0, out=samples)
        np.fmin(samples, 1, out=samples)
    return samples


class _Stop:
    """Set when the run of this image fails anywhere: the other threads give up."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def put(self, q: queue.Queue, item: object) -> None:
        while True:
            if self.event.is_set():
                raise Aborted()
            try:
                q.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def get(self, q: queue.Queue, idle: Callable[[], bool] | None = None) -> object:
        """The next item of ``q``; while there is none, ``idle()`` is called as long as
        it returns True (it did some work), then the wait begins."""
        while idle is not None:
            if self.event.is_set():
                raise Aborted()
            try:
                return q.get_nowait()
            except queue.Empty:
                if not idle():
                    break
        while True:
            if self.event.is_set():
                raise Aborted()
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                continue


_END = object()


class ImageJob:
    """One image through the strips: open, read strips in a thread, convolve in the
    caller's, encode in a thread (see the module docstring).

    Parameters
    ----------
    src, dst : Path
    filt : Filter
    alpha : str
        The requested alpha mode (adapted per image by ``alpha_rule``).
    alpha_rule : callable
        ``alpha_rule(filt, channels, alpha) -> (mode, note)``.
    max_pixels : int or None
    strip : int, optional
        Output rows per strip (rounded up to the algorithm's alignment); default from
        :data:`STRIP_BYTES`.
    check : callable, optional
        ``check(source)`` prices the file before any pixel is decoded (its result is
        :attr:`allowed`; what it raises is the open's error): ``source`` is the file
        opened for reading by strips (headers read only), or None for a file that is
        decoded whole, which is opened after the check.
    """

    def __init__(
        self,
        src: Path,
        dst: Path,
        filt: Filter,
        *,
        alpha: str,
        alpha_rule: Callable[[Filter, int, str], tuple[str, str | None]],
        max_pixels: int | None,
        strip: int | None = None,
        check: Callable[[stream.Source | None], object] | None = None,
    ) -> None:
        self.src, self.dst, self.filt = src, dst, filt
        self.check = check
        self.allowed: object = None
        self.alpha_request, self.alpha_rule = alpha, alpha_rule
        self.max_pixels = max_pixels
        self.strip_request = strip
        self.run = ImageRun()
        self.stop = _Stop()
        self.source: stream.Source | None = None
        self.opened = threading.Event()
        self.open_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        #: set before convolve_strips: strips go through the fused native-depth step
        #: and on_strip gets the rounded samples (no result, no kept alpha)
        self.native: NativeStep | None = None
        #: images of the run still to come, this one included (the native step's
        #: ``auto`` spreads OpenCL's start-up over all of them, not one image's strips)
        self.images_ahead = 1
        #: set by prepare: the bias added to the colour once alpha is divided out
        self.colour_bias: np.ndarray | None = None

    # ---- opening (in a reader thread, ahead of the convolution)
    def start(self) -> None:
        """Open the source in a thread of its own (the next image's decode overlaps the
        current one's convolution)."""
        self._thread = threading.Thread(target=self._open, name="convcli-open", daemon=True)
        self._thread.start()

    def _open(self) -> None:
        t0 = time.perf_counter()
        caught: list = []
        try:
            with cnotes.collect(caught):
                # the file is opened once: a reader by strips reads its headers here;
                # one decoded whole is priced from its header before it is decoded
                source = stream.open_source(self.src, max_pixels=self.max_pixels, whole=False)
                try:
                    if self.check is not None:  # refuse before decoding
                        self.allowed = self.check(source)
                    if source is None:
                        source = stream.open_source(self.src, max_pixels=self.max_pixels)
                except BaseException:
                    if source is not None:
                        source.close()
                    raise
                self.source = source
        except BaseException as exc:  # handed to the caller's thread
            self.open_error = exc
        finally:
            self.run.read += time.perf_counter() - t0
            self.run.read_notes.extend(cnotes.text(w) for w in caught)
            self.opened.set()

    def adopt(self, source: stream.Source) -> None:
        """Take a source opened elsewhere (a batch's small-image path decoded it) instead
        of opening the file; :meth:`start` and :meth:`wait_open` then open nothing."""
        self.source = source
        self.opened.set()

    def wait_open(self) -> stream.Source:
        if self._thread is None and not self.opened.is_set():
            self._open()
        self.opened.wait()
        if self.open_error is not None:
            raise self.open_error
        assert self.source is not None
        return self.source

    def cancel(self) -> None:
        self.stop.event.set()
        if self._thread is not None:
            self._thread.join()
        self.close()

    def close(self) -> None:
        if self.source is not None:
            self.source.close()
            self.source = None

    # ---- the run (caller's thread)
    def prepare(self) -> None:
        """After :meth:`wait_open`: the alpha mode, the convolution's geometry."""
        info = self.source.info
        self.run.read_notes[:0] = [" ".join(str(n).split()) for n in info.notes]
        alpha = self.alpha_request
        if info.has_alpha:
            alpha, note = self.alpha_rule(self.filt, info.channels, alpha)
            if note:
                self.run.read_notes.append(note)
        self.alpha = alpha
        pixels.split_alpha(np.empty((0, 0, 0), np.float32), alpha, has_alpha=False)  # checks
        set_aside = info.has_alpha and info.channels >= 2 and alpha in ("keep", "drop")
        self.conv_channels = info.channels - 1 if set_aside else info.channels
        # premultiplied colour takes its bias after alpha is divided out (finish_alpha)
        filt, self.colour_bias = self.filt, None
        if info.has_alpha:
            filt, self.colour_bias = filt.split_bias(info.channels, alpha)
        self.weight, self.bias, groups = filt.for_channels(self.conv_channels)
        self.options = self.filt.conv_options(groups)
        self.spec = make_spec(
            np.broadcast_to(np.float32(0), (self.conv_channels, info.height, info.width)),
            self.weight,
            self.bias,
            **self.options,
        )

    def convolve_strips(
        self,
        *,
        engine: object,
        conv_memory: int | None,
        backend: str,
        on_strip: Callable[[int, int, np.ndarray, np.ndarray | None], None],
        on_rows: Callable[[int, int], None] | None = None,
    ) -> None:
        """Every strip through the convolution, in order: ``on_strip(r0, r1, result,
        kept_alpha)`` in the caller's thread."""
        spec = self.spec
        step = self.native
        fallback = backend == "auto"
        native_backend = backend  # the native step chooses for itself under auto
        if step is None:
            info = RunInfo()
            be_name, algo = plan_call(spec, self.weight, backend=backend, device=engine.device,
                                      algo=engine.algo, info=info)  # fmt: skip
            self.run.info.add(info)
            # every strip on the whole image's backend (a cost model could send a short
            # strip elsewhere, with other rounding); auto still falls back below
            backend = be_name
        else:
            # the native step computes each output row alone on OpenCL; NumPy's rank-1
            # pass works in blocks of rows, kept where the whole image has them. No
            # float-path plan: it would start OpenCL before the first strip is read.
            be_name, algo = "numpy", "separable"
        align = strip_alignment(spec, be_name, algo)
        least = strip_least(spec, be_name, algo)
        if step is not None and not _numpy_runs_native(native_backend, engine.device):
            # NumPy's blocks stay where they are (a strip that falls back to NumPy gives
            # the whole image's values), but OpenCL's filter costs the same per pixel
            # from 32 rows to 256: only the work around each strip asks for height, and
            # each row more in every strip in flight is memory
            least = NATIVE_OPENCL_ROWS
        # a native strip holds 1-2 bytes a sample, not float32's 4: as many bytes hold
        # four times the rows (fewer calls, the same memory)
        target = 4 * STRIP_BYTES if self.native is not None else None
        rows = strip_rows(spec, align=align, least=least, target=target, rows=self.strip_request)
        geo = plan_geometry(spec, rows)
        src_info = self.source.info
        channels = src_info.channels
        flat = channels * geo.padded_rows(0, min(rows, spec.h_out))[1] * geo.padded_width
        free: queue.Queue = queue.Queue()
        for _ in range(BUFFERS):
            free.put(np.empty(flat, src_info.dtype if step is not None else np.float32))
        ready: queue.Queue = queue.Queue(BUFFERS)
        # OpenCL starts on a thread of its own (below): the source decodes ahead meanwhile
        warming = (
            step is not None and native_backend != "numpy" and started_opencl(engine.device) is None
        )
        ahead = threading.Event()
        read_ahead = getattr(self.source, "read_ahead", None)
        if warming and conv_memory is None and read_ahead is not None:
            ahead.set()

        def decode_ahead() -> bool:
            if not ahead.is_set():
                return False
            t0 = time.perf_counter()
            try:
                return read_ahead(READ_AHEAD_BYTES)
            finally:
                self.run.read += time.perf_counter() - t0

        reader = RowReader(self.source, geo, self._reopen, name_of(self.src))
        kh, kw = spec.kh, spec.kw
        dh, dw = spec.dilation
        sh, sw = spec.stride
        centre_cols = dw * ((kw - 1) // 2) + sw * np.arange(spec.w_out)

        def produce() -> None:
            caught: list = []
            try:
                with cnotes.collect(caught):
                    for k, (r0, r1) in enumerate(geo.strips()):
                        buf = self.stop.get(free, decode_ahead)
                        t0 = time.perf_counter()
                        p0, p1 = geo.padded_rows(r0, r1)
                        used = buf[: channels * (p1 - p0) * geo.padded_width]
                        if step is not None:
                            # channels last, as the native step takes it (x is a view)
                            x = np.moveaxis(
                                used.reshape(p1 - p0, geo.padded_width, channels), -1, 0
                            )
                        else:
                            x = used.reshape(channels, p1 - p0, geo.padded_width)
                        reader.strip(k, x)
                        if step is not None:  # native samples, no alpha
                            self.run.read += time.perf_counter() - t0
                            self.stop.put(ready, (r0, r1, buf, x, None))
                            continue
                        conv_in, kept = pixels.split_alpha(
                            x, self.alpha, has_alpha=src_info.has_alpha, in_place=True
                        )
                        if kept is not None:
                            at = dh * ((kh - 1) // 2) + sh * np.arange(r0, r1) - p0
                            kept = kept[:, at][:, :, centre_cols]
                        self.run.read += time.perf_counter() - t0
                        self.stop.put(ready, (r0, r1, buf, conv_in, kept))
                # every row is read: a source that decoded the whole image lets it go
                # before the encoder gathers the result
                self.source.close()
                self.stop.put(ready, _END)
            except Aborted:
                pass
            except BaseException as exc:  # handed to the caller's thread, which stops
                while not self.stop.event.is_set():
                    try:
                        ready.put(exc, timeout=_POLL_S)
                        break
                    except queue.Full:
                        continue
            finally:
                self.run.read_notes.extend(cnotes.text(w) for w in caught)

        producer = threading.Thread(target=produce, name="convcli-strips", daemon=True)
        producer.start()
        warm = None
        if warming:
            shape = (geo.padded_rows(0, min(rows, spec.h_out))[1], geo.padded_width, channels)
            warm = _Warm(self, step, shape, native_backend, engine.device,
                         len(geo.strips()) * max(1, self.images_ahead))  # fmt: skip
        try:
            while True:
                item = self.stop.get(ready)
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                r0, r1, buf, conv_in, kept = item
                t0 = time.perf_counter()
                part = RunInfo()
                progress = None
                if on_rows is not None:  # the image's rows, as the strip's pieces finish

                    def progress(done: int, total: int, r0: int = r0) -> None:
                        on_rows(r0 + done, spec.h_out)

                if step is not None:
                    if warm is not None:  # OpenCL started beside the first strip's read
                        try:
                            warm.join(self.run.info)
                        finally:
                            ahead.clear()
                        warm = None
                    result, native_backend = self._native_strip(
                        conv_in,
                        src_info.top,
                        step,
                        native_backend,
                        engine.device,
                        len(geo.strips()) * max(1, self.images_ahead),
                        part,
                    )
                    self.run.info.add(part)
                    self.run.convolve += time.perf_counter() - t0
                    free.put(buf)
                    on_strip(r0, r1, result, None)
                    if on_rows is not None:
                        on_rows(r1, spec.h_out)
                    continue
                try:
                    result = conv2d(conv_in, self.weight, self.bias, **_no_padding(self.options),
                                    backend=backend, device=engine.device, algo=algo,
                                    max_memory=conv_memory, info=part,
                                    progress=progress)  # fmt: skip
                except BackendError as exc:
                    if not fallback or backend == "numpy":
                        raise
                    part.notices.append(fallback_notice(exc))
                    backend = "numpy"
                    result = conv2d(conv_in, self.weight, self.bias, **_no_padding(self.options),
                                    backend="numpy", algo=_numpy_algo(algo),
                                    max_memory=conv_memory, info=part,
                                    progress=progress)  # fmt: skip
                self.run.info.add(part)
                self.run.convolve += time.perf_counter() - t0
                free.put(buf)
                on_strip(r0, r1, result, kept)
        except BaseException:
            self.stop.event.set()
            raise
        finally:
            producer.join()
            if warm is not None:
                warm.thread.join()

    def _native_strip(
        self,
        x: np.ndarray,
        top: float,
        step: NativeStep,
        backend: str,
        device: str | None,
        strips: int,
        part: RunInfo,
    ) -> tuple[np.ndarray, str]:
        """One strip through :func:`convcli.native.filter_strip`; returns the samples
        and the backend that ran it (the next strips take the same one)."""
        from convcli import native

        spec = self.spec
        strip = np.moveaxis(x, 0, -1)  # the buffer, channels last (no copy)
        samples = native.filter_strip(
            strip, top=top,
            kernel=step.kernel, stride=spec.stride, dilation=spec.dilation, bias=step.bias,
            scale=step.scale, offset=step.offset, out_map=step.out_map,
            out_top=step.out_top, backend=backend, device=device, strips=strips, info=part,
        )  # fmt: skip
        part.tiles += 1  # one bounded call per strip, as conv2d counts its tiles
        if samples is None:  # native_step checked what the step covers
            raise BackendError("the native-depth step declined a strip it was planned for")
        return samples, part.backend or backend

    def _reopen(self) -> stream.Source:
        return stream.open_source(self.src, max_pixels=self.max_pixels)

    def reopen(self) -> None:
        """A fresh source for a second pass (a sequential decoder runs once)."""
        t0 = time.perf_counter()
        self.close()
        self.source = self._reopen()
        self.run.read += time.perf_counter() - t0


class _Warm:
    """:func:`convcli.native.prepare` on a thread of its own: OpenCL's start-up and the
    program's build overlap the decoding of the first strips instead of preceding it."""

    def __init__(self, job: ImageJob, step: NativeStep, shape: tuple[int, int, int],
                 backend: str, device: str | None, strips: int) -> None:  # fmt: skip
        self.info = RunInfo()
        self.error: BaseException | None = None
        spec, src = job.spec, job.source.info
        strip = np.broadcast_to(np.zeros((), src.dtype), shape)

        def run() -> None:
            from convcli import native

            try:
                native.prepare(
                    strip, top=src.top,
                    kernel=step.kernel, stride=spec.stride, dilation=spec.dilation,
                    bias=step.bias, scale=step.scale, offset=step.offset, out_map=step.out_map,
                    out_top=step.out_top, backend=backend, device=device, strips=strips,
                    info=self.info,
                )  # fmt: skip
            except BaseException as exc:  # the first strip's error, in the caller's thread
                self.error = exc

        self.thread = threading.Thread(target=run, name="convcli-opencl", daemon=True)
        self.thread.start()

    def join(self, info: RunInfo) -> None:
        self.thread.join()
        info.add(self.info)
        if self.error is not None:
            raise self.error


def _numpy_runs_native(backend: str, device: str | None) -> bool:
    """Whether the native step's strips will run on NumPy, as far as is known before
    OpenCL is asked: NumPy named, or OpenCL absent or failed in this process."""
    if backend == "numpy" or started_opencl(device) is False:
        return True
    if backend == "opencl":
        return False
    import importlib.util

    return importlib.util.find_spec("pyopencl") is None


def _no_padding(options: dict[str, object]) -> dict[str, object]:
    return {**options, "padding": 0, "padding_mode": "zeros"}


def _numpy_algo(algo: str) -> str:
    return algo if algo in ("direct", "separable", "fft", "gemm") else "auto"


def encode(
    dst: Path,
    target: stream.Target,
    strips: Iterator[np.ndarray],
    *,
    replace: bool,
) -> None:
    """Publish ``dst`` from the samples ``strips`` yields (atomic: an exception from
    ``strips`` or the encoder leaves no file)."""
    name = name_of(dst)
    if not replace and os.path.lexists(dst):  # before the encoding work
        raise OutputExistsError(f"{name}: already exists")

    def write(fh) -> None:
        try:
            stream.write_rows(fh, strips, target, name=str(dst))
        except InputError:
            raise  # names the file and says what is wrong already
        except (ValueError, TypeError, KeyError) as exc:  # an encoder's own refusal
            raise InputError(f"{name}: cannot write: {one_line_reason(exc)}") from None

    publish(dst, write, mode="replace" if replace else "create")
