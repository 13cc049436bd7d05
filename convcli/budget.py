"""Size limits and the memory budget: what a convolution needs, checked before allocating.

One module holds every size rule, so that :func:`convcli.conv2d`, its tiling, the file
pipeline and every kernel source apply the same numbers.

Kernels
    At most :data:`MAX_KERNEL_SIDE` taps per side and :data:`MAX_WEIGHT_ELEMENTS` weights,
    whatever the source (preset, kernel text, weight file): :func:`check_kernel_shape`.

Budget
    ``max_memory`` when the caller gives it; otherwise what the machine can give now
    (:func:`available_memory`): ``MemAvailable`` from ``/proc/meminfo``, lowered to the
    room left under a cgroup v2 limit (``memory.max - memory.current``) when one is set;
    where neither exists, ``os.sysconf``'s available pages; None (no check) when nothing
    tells.

Estimates
    Upper bounds in bytes of what a call allocates, part by part (:class:`Need`): the
    output, the band of padded input a backend materialises, index maps and the
    algorithm's workspace (FFT buffers and spectra, GEMM column matrices, separable
    passes, OpenCL staging). :func:`conv_need` prices a piece of ``rows`` output rows of
    ``images`` images, so the tiling can size its bands and the smallest band (one output
    row of one image) decides whether a call can run at all. :func:`file_need` prices one
    file through the strip pipeline (the reader, the strips in flight, the encoder).
"""

from __future__ import annotations

import functools
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from convcli.errors import InputError, LimitError
from convcli.spec import ConvSpec, resolve_padding

# Kernel caps (every source): a mistyped radius or a stray array must not allocate
# gigabytes. 1001 taps per side is far beyond what an image filter needs and still runs
# in seconds by FFT; 2**26 weights (256 MiB of float32) is 25x the largest layer of
# VGG-16 and ResNet-152.
MAX_KERNEL_SIDE = 1001
MAX_WEIGHT_ELEMENTS = 1 << 26

# Work arrays the NumPy paths bound by themselves (the NumPy backend's settings
# chunk_bytes and blas_gemm_bytes), counted per worker thread.
_NUMPY_CHUNK = 64 * 2**20
_NUMPY_GEMM = 6 * 2**20
# index maps and position arrays per padded row/column (int64 positions, bool masks,
# int64 indices, int32 device maps)
_MAP_BYTES = 32
# the OpenCL Winograd and separable paths stage at most this much per chunk
_OPENCL_CHUNK = 8 * 2**20


def check_kernel_shape(shape: tuple[int, ...], what: str) -> None:
    """Refuse a kernel larger than :data:`MAX_KERNEL_SIDE` or :data:`MAX_WEIGHT_ELEMENTS`.

    ``shape`` is ``(kH, kW)`` or ``(C_out, C_in/groups, kH, kW)``; ``what`` names the
    source (a file name, ``kernel '...'``, a preset) and starts the message.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) >= 2 and max(shape[-2:]) > MAX_KERNEL_SIDE:
        kh, kw = shape[-2:]
        raise InputError(
            f"{what}: kernel {kw}x{kh} (width x height) is larger than the "
            f"{MAX_KERNEL_SIDE}x{MAX_KERNEL_SIDE} convcli accepts"
        )
    count = math.prod(shape)
    if count > MAX_WEIGHT_ELEMENTS:
        raise InputError(
            f"{what}: weight of shape {shape} has {count} values, more than the "
            f"{MAX_WEIGHT_ELEMENTS} convcli accepts"
        )


# ---------------------------------------------------------------------------- budget
def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'`` (powers of 1024, one decimal)."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")
    value = float(n)
    for unit in units:
        if abs(value) < 1024 or unit == units[-1]:
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _meminfo_available(path: str = "/proc/meminfo") -> int | None:
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room(root: str = "/sys/fs/cgroup") -> int | None:
    """Bytes left under this process's cgroup v2 memory limit, or None without one."""
    try:
        rel = "/"
        with open("/proc/self/cgroup") as fh:
            for line in fh:
                if line.startswith("0::"):
                    rel = line[3:].strip() or "/"
        folder = Path(root) / rel.lstrip("/")
        limit = (folder / "memory.max").read_text().strip()
        if limit == "max":
            return None
        current = int((folder / "memory.current").read_text().strip())
        return max(0, int(limit) - current)
    except (OSError, ValueError):
        return None


def _sysconf_available() -> int | None:
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def available_memory() -> int | None:
    """Bytes the machine can give this process now, or None when nothing tells.

    ``MemAvailable`` (Linux's estimate of memory available without swapping), lowered to
    the room under a cgroup v2 limit; elsewhere ``os.sysconf``'s available pages. Read
    at most every :data:`_FRESH` seconds (three files per small call cost more than the
    call).
    """
    now = time.monotonic()
    with _AVAILABLE_LOCK:
        if now - _AVAILABLE[0] < _FRESH:
            return _AVAILABLE[1]
    found = [v for v in (_meminfo_available(), _cgroup_room()) if v is not None]
    if not found:
        found = [v for v in (_sysconf_available(),) if v is not None]
    value = min(found) if found else None
    with _AVAILABLE_LOCK:
        _AVAILABLE[:] = [now, value]
    return value


_FRESH = 0.25
_AVAILABLE: list = [-1e9, None]
_AVAILABLE_LOCK = threading.Lock()


def memory_budget(max_memory: int | None, need: int | None = None) -> int | None:
    """``max_memory`` when given, else :func:`available_memory`; None (no check) for a
    ``need`` under :data:`SMALL_NEED` bytes, which any machine that runs Python has."""
    if max_memory is not None:
        return max_memory
    if need is not None and need <= SMALL_NEED:
        return None
    return available_memory()


SMALL_NEED = 64 * 2**20

# What an OpenCL runtime adds to the process once started, measured on PoCL 3.0 (2 CPU
# cores): its context 107 MiB, the first program build (LLVM) 132 MiB more, with a
# tenth of margin. A file run under max_memory keeps this room for a runtime that has
# not started yet; once it has, the process's own size (process_bytes) counts it.
OPENCL_CONTEXT_BYTES = 118 * 2**20
OPENCL_BUILD_BYTES = 146 * 2**20


def process_bytes() -> int:
    """Bytes this process holds now (resident set: interpreter, modules, runtimes), or
    0 where the system does not tell (then only the work is counted)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def release_freed_memory() -> None:
    """Hand memory freed by the last file back to the system (glibc keeps freed arrays
    under 32 MiB in its heap, where they would count as the process's own size for the
    next file); nothing where the C library has no ``malloc_trim``."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def opencl_reserve(device: str | None) -> int:
    """Bytes an OpenCL runtime for ``device`` will still add when it is used: nothing
    once it has built a program (the process's size holds it) or when it failed to
    start (NumPy runs instead), its build once the context exists, else both."""
    from convcli import backends

    started = backends.started_opencl(device)
    if started is None:
        return OPENCL_CONTEXT_BYTES + OPENCL_BUILD_BYTES
    if started is False:
        return 0
    return 0 if started.built_any() else OPENCL_BUILD_BYTES


def budget_text(budget: int, max_memory: int | None) -> str:
    """How a message names the budget it compares with (``budget`` may be what is left
    of ``max_memory`` once the image itself is held)."""
    if max_memory is not None and budget < 0.99 * max_memory:
        return f"the {format_bytes(budget)} left of max_memory ({format_bytes(max_memory)})"
    if max_memory is not None:
        return f"max_memory ({format_bytes(budget)})"
    return f"the {format_bytes(budget)} this machine has free"


# ---------------------------------------------------------------------------- estimates
@dataclass(frozen=True)
class Need:
    """Bytes a piece of work allocates, by part (``(name, bytes)`` pairs)."""

    parts: tuple[tuple[str, int], ...]

    @property
    def total(self) -> int:
        return sum(b for _, b in self.parts)

    def largest(self) -> tuple[str, int]:
        return max(self.parts, key=lambda p: p[1])

    def __add__(self, other: Need) -> Need:
        return Need(self.parts + other.parts)


def _itemsize(spec: ConvSpec) -> int:
    # float16 is computed in float32
    return max(4, np.dtype(spec.dtype).itemsize)


def _extent(spec: ConvSpec) -> tuple[int, int]:
    return spec.dilation[0] * (spec.kh - 1) + 1, spec.dilation[1] * (spec.kw - 1) + 1


def _out_hw(spec: ConvSpec) -> tuple[int, int]:
    # variants built for blame (padding 0, dilation 1) may have no output: price one row
    return max(1, spec.h_out), max(1, spec.w_out)


def output_bytes(spec: ConvSpec) -> int:
    """The whole output of ``spec`` in the compute dtype (plus the cast to float16)."""
    ho, wo = _out_hw(spec)
    size = spec.n * spec.c_out * ho * wo
    extra = size * 2 if spec.dtype == "float16" else 0
    return size * _itemsize(spec) + extra


def _fft_workspace(spec: ConvSpec, images: int, rows: int, cols_in: int) -> int:
    """NumPy's overlap-save FFT: band, spectra of band and kernel, products, inverse."""
    from convcli.backends.numpy.fft import fft_plan

    it = _itemsize(spec)
    cplx = np.dtype(spec.dtype).kind == "c"
    fft_rows, fh, fw, kbytes = fft_plan(spec)
    r = min(rows, fft_rows)
    sh = spec.stride[0]
    ekh, ekw = _extent(spec)
    width = fw if cplx else fw // 2 + 1
    spectrum = fh * width * 2 * 8  # numpy's pocketfft works in double precision
    band = images * spec.c_in * ((r - 1) * sh + ekh) * cols_in * it
    kernel = spec.c_out * spec.cin_g * ekh * ekw * it
    per_image = (spec.c_in + 2 * spec.c_out) * spectrum + spec.c_out * fh * fw * 8
    return band + kernel + 2 * kbytes + images * per_image


# A pure function of its (hashable) arguments and this module's constants; a warm call
# of conv2d asks for the same few pieces every time (about 40 us of a 100 us call).
@functools.lru_cache(maxsize=1024)
def conv_need(
    spec: ConvSpec,
    algo: str | None,
    backend: str,
    *,
    rows: int | None = None,
    images: int | None = None,
    tiled: bool = False,
) -> Need:
    """What a piece of ``spec`` allocates besides the caller's input and the whole output.

    Parameters
    ----------
    spec : ConvSpec
        The whole call.
    algo : str
        The algorithm that runs (``'direct'``, ``'gemm'``, ``'separable'``, ``'fft'``);
        ``'auto'`` prices the dearest of them, ``'least'`` the cheapest, None none of
        them (what every algorithm needs: a lower bound).
    backend : {'numpy', 'opencl'}
    rows, images : int, optional
        The piece: output rows of how many images (default: all).
    tiled : bool
        The piece is a band of rows, gathered on the host before the backend sees it.
    """
    ho, wo = _out_hw(spec)
    rows = ho if rows is None else max(1, min(rows, ho))
    images = spec.n if images is None else max(1, min(images, spec.n))
    it = _itemsize(spec)
    sh, sw = spec.stride
    ekh, ekw = _extent(spec)
    rows_in = (rows - 1) * sh + ekh
    cols_in = (wo - 1) * sw + ekw
    parts = [("output piece", images * spec.c_out * rows * wo * it)]
    if tiled:
        # the band of input rows gathered on the host, through maps of every padded row
        parts.append(("input band", images * spec.c_in * rows_in * spec.w * it))
        parts.append(("row maps", _MAP_BYTES * (spec.h + spec.pad[0] + spec.pad[1])))
    parts.append(("index maps", _MAP_BYTES * (rows_in + cols_in)))
    if algo is None:  # what every algorithm needs
        return Need(tuple(parts))
    if algo in ("auto", "least"):
        options = ("direct", "gemm", "separable", "fft")
        if backend == "opencl":
            options = ("direct", "fft")
        needs = [conv_need(spec, a, backend, rows=rows, images=images) for a in options]
        pick = max if algo == "auto" else min
        work = pick(n.parts[-1][1] for n in needs)
        return Need((*parts, ("workspace", work)))
    taps = spec.kh * spec.kw
    if backend == "opencl":
        if algo == "fft" and max(ekh, ekw) > 128:
            # past the device's FFT tiles the host's NumPy FFT runs
            work = _fft_workspace(spec, images, rows, cols_in)
        elif algo == "fft":
            work = (
                spec.c_out * 256 * 256 * (8 + 16)
            )  # spectra on the device and float64 on the host
        else:
            # separable intermediate, Winograd chunks, packed weights
            inter = images * spec.c_out * rows_in * wo * it if algo == "separable" else 0
            weights = spec.c_out * spec.cin_g * taps * it * 2
            work = max(inter, _OPENCL_CHUNK) + weights
        # the runtime's copies of host buffers it cannot use in place, and the pooled
        # output the backend keeps for the next call
        work += images * spec.c_in * rows_in * spec.w * it + parts[0][1]
        return Need((*parts, ("workspace", work)))
    # NumPy: direct/gemm/separable gather the padded band in chunks of about
    # _NUMPY_CHUNK / 4, but never less than the rows one output row needs
    one_row = images * spec.c_in * ekh * cols_in * it
    full = images * spec.c_in * rows_in * cols_in * it
    band = min(full, max(_NUMPY_CHUNK // 4, one_row))
    if algo == "fft":
        work = _fft_workspace(spec, images, rows, cols_in)
    elif algo == "gemm":
        # column matrices: per thread within _NUMPY_GEMM, but at least one output row
        cols_row = spec.c_in * taps * (wo + (ekw - 1) // sw) * it
        threads = max(1, min(os.cpu_count() or 1, 64))
        cols = min(images * rows * cols_row, threads * max(_NUMPY_GEMM, cols_row))
        work = 2 * band + cols
    elif algo == "separable":
        # the band, its transposed copy, the slab products and partial sums of both passes
        block = images * spec.c_in * 16 * cols_in * it  # Toeplitz blocks of 16 rows
        work = 8 * min(full, max(_NUMPY_CHUNK // 4, one_row + block))
    elif spec.cin_g == 1:  # direct, tap accumulation: phase copies, border gathers, sums
        acc_rows = max(1, min(rows, band // max(1, spec.c_in * cols_in * it)))
        work = 2 * band + spec.c_out * acc_rows * (wo + (ekw - 1) // sw) * it
    else:  # direct reference: im2col rows
        cols_row = images * wo * spec.c_in * taps * it
        work = 2 * band + min(rows * cols_row, max(_NUMPY_CHUNK, cols_row))
    return Need((*parts, ("workspace", work)))


def call_need(spec: ConvSpec, algo: str | None, backend: str, **piece: object) -> Need:
    """The whole output plus a piece (:func:`conv_need`): what a call holds at its peak."""
    return Need((("output", output_bytes(spec)),)) + conv_need(spec, algo, backend, **piece)


def smallest_need(spec: ConvSpec, algo: str | None, backend: str) -> Need:
    """The least a call can run in: the whole output and a band of one output row."""
    return call_need(spec, algo, backend, rows=1, images=1, tiled=spec.h_out > 1 or spec.n > 1)


# ---------------------------------------------------------------------------- refusals
def _blame(
    spec: ConvSpec,
    padding: object,
    fits: Callable[[ConvSpec], bool],
) -> str | None:
    """The one argument whose neutral value would let ``spec`` fit, in API words."""

    def repad(s: ConvSpec) -> ConvSpec:
        if not isinstance(padding, str):
            return s
        return replace(s, pad=resolve_padding(padding, (s.kh, s.kw), s.stride, s.dilation))

    variants = []
    if not isinstance(padding, str) and max(spec.pad) > 0:
        variants.append(("padding", replace(spec, pad=(0, 0, 0, 0))))
    if max(spec.dilation) > 1:
        variants.append(("dilation", repad(replace(spec, dilation=(1, 1)))))
    if spec.kh * spec.kw > 1:
        variants.append(("kernel_size", repad(replace(spec, kh=1, kw=1))))
    for name, variant in variants:
        if fits(variant):
            return name
    return None


def _dominant(need: int, without: Callable[[ConvSpec], int]) -> Callable[[ConvSpec], bool]:
    """A test for :func:`_blame`: the argument the variant neutralises makes the need at
    least ten times larger (a 13x13 kernel under a tight max_memory is not the kernel's
    fault: the limit is)."""
    return lambda variant: 10 * without(variant) <= need


def _shown(name: str, spec: ConvSpec, padding: object) -> str:
    if name == "padding":
        p = spec.pad
        return str(p[0]) if len(set(p)) == 1 else f"({p[0]}, {p[2]})"
    if name == "dilation":
        d = spec.dilation
        return str(d[0]) if d[0] == d[1] else str(d)
    if name == "kernel_size":
        return f"({spec.kh}, {spec.kw})"
    return ""


def check_call(
    spec: ConvSpec,
    algo: str | None,
    backend: str,
    *,
    padding: object,
    max_memory: int | None,
    budget: int | None,
) -> None:
    """Refuse ``spec`` when even its smallest band does not fit ``budget``.

    Raises
    ------
    LimitError
        Naming the argument that makes it too large (``padding``, ``dilation``,
        ``kernel_size``), else ``max_memory`` when the machine has more, else the input.
    """
    if budget is None or spec.n == 0:  # an empty batch allocates nothing
        return
    need = smallest_need(spec, algo, backend)
    if need.total <= budget:
        return
    where = budget_text(budget, max_memory)
    part, size = need.largest()
    detail = f"at least {format_bytes(need.total)} ({part} {format_bytes(size)})"

    def variant_need(s: ConvSpec) -> int:
        return smallest_need(s, algo, backend).total

    fits = _dominant(need.total, variant_need)
    culprit = _blame(spec, padding, lambda s: variant_need(s) <= budget and fits(s))
    if culprit is not None:
        raise LimitError(
            f"the convolution would need {detail}, more than {where}",
            argument=culprit,
            value=_shown(culprit, spec, padding),
        )
    if max_memory is not None:
        free = available_memory()
        if free is None or need.total <= free:
            raise LimitError(
                f"the convolution needs {detail} even one output row at a time, more than {where}",
                argument="max_memory",
                value=format_bytes(max_memory),
                need=need.total,
            )
    raise LimitError(
        f"the convolution of a {spec.c_in}x{spec.h}x{spec.w} input needs {detail} even "
        f"one output row at a time, more than {where}"
    )


# ---------------------------------------------------------------------------- files
@dataclass(frozen=True)
class FileShape:
    """What a file's header says: enough to price it before decoding.

    ``kind`` is the reader that will decode it (``'pil'``, ``'png'``, ``'tiff'``,
    ``'npy'``); ``sample_bytes`` the bytes per decoded native sample.
    """

    channels: int
    height: int
    width: int
    sample_bytes: int
    kind: str
    file_bytes: int = 0
    #: bytes an opened source holds (:attr:`convcli.io.stream.Source.held_bytes`);
    #: None for a file priced from its header, which is decoded whole
    held: int | None = None


# Strips in flight in the file pipeline (convcli.pipeline): float32 input buffers being
# gathered, waiting or convolved; result strips queued for the encoder, being mapped
# (the result, alpha divided out, mapped: three arrays) and rounded.
STRIP_INPUTS = 2
STRIP_RESULTS = 5


def file_need(
    opening: int,
    held: int,
    sink: tuple[int, int],
    conv: Need,
    *,
    strip_in: int,
    strip_out: int,
) -> dict[str, int]:
    """Peak bytes of one file through the strip pipeline, by stage.

    ``opening`` and ``held`` are what the reader takes while it opens the file and
    while rows are read (:func:`convcli.io.stream.source_bytes`: a few strips for a
    reader that decodes by strips, the image for one that decodes whole; the reader is
    closed once the last strip is read), ``sink`` what the encoder holds while strips
    come in and at its end (:func:`convcli.io.stream.sink_bytes`), ``conv`` the
    convolution of one strip (its output piece and workspace), ``strip_in`` and
    ``strip_out`` the float32 bytes of one input strip (with its halo and padding) and
    one result strip. Returns the stages ``{'decode', 'convolve', 'encode'}``; the peak
    is their maximum. Strips in flight: :data:`STRIP_INPUTS` inputs and
    :data:`STRIP_RESULTS` results; the sink fills while strips are convolved.
    """
    strips = STRIP_INPUTS * strip_in + STRIP_RESULTS * strip_out
    return {
        "decode": opening,
        "convolve": held + strips + conv.total + sink[0],
        "encode": sink[1] + STRIP_RESULTS * strip_out,
    }


def largest_fit(fits: Callable[[int], bool], most: int) -> int:
    """The largest ``k`` in ``1..most`` with ``fits(k)`` (monotone), or 0: the most
    images, rows or strips a memory budget holds."""
    if most < 1 or not fits(1):
        return 0
    lo, hi = 1, most
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo
