"""The public API: :func:`conv2d` and the :class:`Conv2d` layer.

A call goes validate (``spec.make_spec``) -> plan (backend, tiles) -> run.
"""

from __future__ import annotations

import math
import numbers
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from convcli import backends
from convcli.backends import choice
from convcli.backends.numpy import compute_dtype, gather_rows
from convcli.backends.numpy.reference import conv2d_direct
from convcli.backends.numpy.threads import ONE_THREAD_BLAS
from convcli.budget import (
    SMALL_NEED,
    call_need,
    check_call,
    conv_need,
    largest_fit,
    memory_budget,
    output_bytes,
)
from convcli.dask_array import is_dask_array
from convcli.errors import BackendError, ConvTypeError, ConvValueError, InputError
from convcli.names import ALGOS
from convcli.plan import frozen_copy
from convcli.runinfo import RunInfo
from convcli.spec import (
    ConvSpec,
    IntPair,
    Padding,
    make_spec,
    normalize_dilation,
    normalize_groups,
    normalize_kernel_size,
    normalize_padding_mode,
    normalize_stride,
    resolve_padding,
)

# with a progress callback, problems of this many FLOPs (about a second on NumPy) or
# more run in about PROGRESS_STEPS tiles so that the callback can report as they finish
PROGRESS_MIN_FLOPS = 4 * 10**9
PROGRESS_STEPS = 16
# validated specs of recent calls, keyed by what the validation reads (see _cached_spec)
SPEC_CACHE_SIZE = 256
_SPECS: OrderedDict[tuple, ConvSpec] = OrderedDict()
_SPECS_LOCK = threading.Lock()
_CANON: dict[ConvSpec, ConvSpec] = {}  # the specs of _SPECS, each equal one once


def _all_plain(values: tuple) -> bool:
    """Whether every value is an int, a str or a tuple of ints, exactly: the values
    whose equality means the same validation (True == 1 and np.int64(1) == 1, but
    bools are rejected). A loop, not a generator per value: a warm call asks it."""
    for v in values:
        kind = type(v)
        if kind is int or kind is str:
            continue
        if kind is not tuple or tuple(map(type, v)) != (int,) * len(v):
            return False
    return True


def _cached_spec(x, weight, bias, options: dict[str, object]) -> ConvSpec:
    """``make_spec(x, weight, bias, **options)``, from a cache on a repeated call.

    ``make_spec`` reads only types, shapes and dtypes, so a call with the same plain
    arrays' shapes and dtypes and the same plain option values gets the same spec (or the
    same error: errors are not cached). Anything else (array subclasses, lists, numpy
    integers) is validated afresh.
    """
    key = None
    values = tuple(options.values())
    if (
        type(x) is np.ndarray
        and type(weight) is np.ndarray
        and (bias is None or type(bias) is np.ndarray)
        and _all_plain(values)
    ):
        key = (
            x.shape,
            x.dtype,
            weight.shape,
            weight.dtype,
            None if bias is None else (bias.shape, bias.dtype),
            values,
        )
        with _SPECS_LOCK:
            spec = _SPECS.get(key)
            if spec is not None:
                _SPECS.move_to_end(key)
                return spec
    spec = make_spec(x, weight, bias, **options)
    if key is not None:
        with _SPECS_LOCK:
            # one object per problem: the caches a warm call asks (plans, kept launches)
            # then find their key by identity, not by comparing every field (``padding=1``
            # and a Conv2d layer's ``(1, 1)`` cost 5 us a call more otherwise)
            spec = _CANON.setdefault(spec, spec)
            if len(_CANON) > 4 * SPEC_CACHE_SIZE:
                _CANON.clear()
            _SPECS[key] = spec
            while len(_SPECS) > SPEC_CACHE_SIZE:
                _SPECS.popitem(last=False)
    return spec


# (spec, backend, algo) of calls that ran in one piece with no memory to check: small
# (budget.SMALL_NEED) for the algorithm that runs whatever the weights, no max_memory,
# no progress callback. Their repeats skip the memory checks and the planning, which
# only decide the tiling (a warm small layer's call spent a fifth of its time there).
_UNTILED: set[tuple] = set()
_UNTILED_SIZE = 1024


def _untiled_key(spec: ConvSpec, be: object, algo: str, max_memory, progress) -> tuple | None:
    """The :data:`_UNTILED` key of a call, or None when its checks cannot be skipped."""
    if max_memory is not None or progress is not None:
        return None
    return (spec, be, algo)


def _remember_untiled(key: tuple | None, spec: ConvSpec, be: object, algo: str) -> None:
    """Add ``key`` when the call it names runs untiled whatever the weights: the need of
    the algorithm that runs, where the backend's plan cannot depend on the weights'
    values (``fixed_plan``), else of the dearest."""
    if key is None:
        return
    if algo == "auto":
        fixed = getattr(be, "fixed_plan", None)
        algo = (fixed(spec) if fixed is not None else None) or "auto"
    if call_need(spec, algo, be.name).total > SMALL_NEED:
        return
    alloc = getattr(be, "max_alloc_bytes", None)
    piece = conv_need(spec, algo, be.name, rows=spec.h_out, images=spec.n, tiled=False)
    if alloc and piece.largest()[1] > alloc:
        return
    if len(_UNTILED) >= _UNTILED_SIZE:
        _UNTILED.clear()
    _UNTILED.add(key)


# (OpenCL backend, spec) pairs its supports() accepted: a pure function of the two
_SUPPORTED: set[tuple] = set()


def _select_backend(
    name: str,
    device: str | None,
    spec: ConvSpec,
    info: RunInfo,
    weight: np.ndarray | None = None,
    algo: str = "auto",
):
    if name not in backends.BACKEND_NAMES:
        raise ConvValueError(
            f"backend must be one of {list(backends.BACKEND_NAMES)}, but got backend='{name}'"
        )
    if name == "numpy":
        return backends.get_backend("numpy")
    if name == "auto" and weight is not None and choice.numpy_first(spec, weight, device, algo):
        # NumPy finishes before OpenCL would have started (and built): not a fallback
        return backends.get_backend("numpy")
    try:
        cl = backends.get_backend("opencl", device)
        if (cl, spec) in _SUPPORTED:
            return cl
        reason = cl.supports(spec)
        if reason is not None:
            raise BackendError(reason)
        if len(_SUPPORTED) >= _UNTILED_SIZE:
            _SUPPORTED.clear()
        _SUPPORTED.add((cl, spec))
        return cl
    except BackendError as exc:
        if name == "opencl":
            raise
        info.notices.append(f"OpenCL unavailable ({exc}); using NumPy")
        return backends.get_backend("numpy")


def plan_call(
    spec: ConvSpec,
    weight: np.ndarray,
    *,
    backend: str = "auto",
    device: str | None = None,
    algo: str = "auto",
    info: RunInfo | None = None,
) -> tuple[str, str]:
    """The backend and algorithm :func:`conv2d` runs the whole of ``spec`` with.

    A caller that convolves an image strip by strip passes both to every strip, so that
    each strip is computed by the whole image's algorithm (a short strip could tip the
    cost model to another one, with other rounding), as :func:`_run_tiled` does.
    """
    info = info if info is not None else RunInfo()
    be = _select_backend(backend, device, spec, info, weight, algo)
    planned = algo if algo != "auto" or spec.n == 0 else be.plan_algo(spec, weight)
    return be.name, planned


def _halo_rows(spec: ConvSpec) -> int:
    """Output rows whose band is at least as tall as the rows it shares with the next."""
    ekh = spec.dilation[0] * (spec.kh - 1) + 1
    return max(1, -(-max(0, ekh - spec.stride[0]) // spec.stride[0]))


def _run_tiled(
    backend: object,
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    spec: ConvSpec,
    algo: str,
    planned: str,
    fits: Callable[[int, int, bool], bool],
    info: RunInfo,
    report: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Run ``spec`` on ``backend`` in pieces for which ``fits(images, rows, tiled)``.

    ``report(rows)`` is called after each piece with the output rows (times images) done;
    with it, large problems run in about PROGRESS_STEPS pieces so that it reports as
    they finish (never in bands shorter than the kernel's overlap: a large kernel's
    halo would be computed over and over).

    Splits the batch first, then output rows into bands; a band's input rows carry the
    halo the kernel needs and its vertical padding is gathered on the host, so every
    output pixel is computed from the same values, by the same algorithm (``planned``,
    the one the whole problem would run: a smaller tile could tip the cost model to
    another algorithm with other rounding), as in the untiled call. OpenCL's direct,
    separable and gemm kernels then give bit-identical results; its FFT tiles and
    NumPy's GEMM-based paths may round differently by an ulp or two (the FFT's tile grid
    starts at the band, BLAS blocks a smaller matrix differently). Pieces are written
    into one output array as they finish: the call holds the output once.
    """
    steps = None
    if report is not None and 2 * spec.macs >= PROGRESS_MIN_FLOPS:
        steps = PROGRESS_STEPS
    if spec.n == 0 or (steps is None and fits(spec.n, spec.h_out, False)):
        info.tiles += 1
        out = backend.run(x, weight, bias, spec, algo=algo, info=info)
        if report is not None:
            report(spec.n * spec.h_out)
        return out
    rows = spec.h_out
    per = largest_fit(lambda k: fits(k, spec.h_out, False), spec.n)
    if steps is not None:
        if spec.n >= steps:
            per = min(per, -(-spec.n // steps))
        else:
            per = min(per, 1)
            rows = max(-(-spec.n * spec.h_out // steps), _halo_rows(spec))
    if per == 0 or rows < spec.h_out:
        per = 1
        rows = min(rows, largest_fit(lambda r: fits(1, r, True), spec.h_out) or 1)
        # bands start at even output rows where they can: OpenCL's Winograd path
        # computes 2x2 output tiles, so a band starting at an odd row would round
        # differently
        rows = rows - rows % 2 if 1 < rows < spec.h_out else rows
    out = np.empty((spec.n, spec.c_out, spec.h_out, spec.w_out), compute_dtype(spec.dtype))
    sh = spec.stride[0]
    ekh = spec.dilation[0] * (spec.kh - 1) + 1
    for i in range(0, spec.n, per):
        k = min(per, spec.n - i)
        part_spec = spec.with_batch(k)
        if rows >= spec.h_out:
            info.tiles += 1
            out[i : i + k] = backend.run(
                x[i : i + k], weight, bias, part_spec, algo=planned, info=info
            )
            if report is not None:
                report(k * spec.h_out)
            continue
        for r0 in range(0, spec.h_out, rows):
            r1 = min(spec.h_out, r0 + rows)
            p0, p1 = r0 * sh, (r1 - 1) * sh + ekh
            band = gather_rows(x[i : i + k], part_spec, p0, p1)
            band_spec = part_spec.with_rows(p1 - p0, 0, 0)
            info.tiles += 1
            out[i : i + k, :, r0:r1] = backend.run(
                band, weight, bias, band_spec, algo=planned, info=info
            )
            del band
            if report is not None:
                report(k * (r1 - r0))
    return out


def _spreads_nonfinite(backend_name: str, algo: str, spec: ConvSpec) -> bool:
    """Whether the algorithm that ran can put NaN or inf where torch's direct sum does
    not: an FFT mixes every value into every output; NumPy's separable and depthwise
    paths multiply banded matrices, whose zeros times a NaN or inf give NaN along a
    band; OpenCL's Winograd transforms mix a tile (and turn inf into NaN); OpenCL's
    complex products keep infinities that torch's turn into NaN."""
    if algo == "fft":
        return True
    if spec.dtype.startswith("complex") and backend_name != "numpy":
        # OpenCL's complex product makes (inf+0j)*w a complex infinity; torch's complex
        # convolution, like NumPy's reference, gives nan+nanj there
        return True
    if backend_name == "numpy":
        return algo == "separable" or (algo == "direct" and spec.cin_g == 1)
    return (
        algo == "gemm"
        and (spec.kh, spec.kw) == (3, 3)
        and spec.stride == spec.dilation  # where OpenCL's Winograd applies
    )


# ones to sum rows of 4096 values with (a matrix-vector product), per real dtype
_ONES = {np.dtype(t): np.ones(4096, t) for t in ("float32", "float64")}


def _all_finite(out: np.ndarray) -> bool:
    """Whether ``out`` holds no NaN or inf, by sums of rows of 4096 values (a NaN or inf
    makes its row's sum non-finite): a product with a vector of ones, a few ms for
    24 MP (a quarter of ``isfinite().all()``'s time) and under a microsecond for a small
    layer. A finite row overflowing says no too (then the caller recomputes the call,
    with the same values)."""
    flat = out.reshape(-1)
    if flat.dtype.kind == "c":
        flat = flat.view(flat.real.dtype)
    ones = _ONES.get(flat.dtype)
    if ones is None:
        return bool(np.isfinite(flat).all())
    k = ones.size
    m = flat.size // k * k
    if m:
        # on one BLAS thread: OpenBLAS threads a product from ~9K values, and its idle
        # threads then spin for ~0.1 s against the caller's next work (the NumPy
        # backend's own threads: convnext's depthwise layers at N=8 ran 1.5 -> 4.2 ms)
        with ONE_THREAD_BLAS:
            sums = flat[:m].reshape(-1, k) @ ones
        if not np.isfinite(sums).all():
            return False
    return math.isfinite(flat[m:].dot(ones[: flat.size - m]))


def _exact(x, weight, bias, spec: ConvSpec, info: RunInfo) -> np.ndarray:
    """``spec`` by an algorithm that places NaN and inf as torch does: NumPy's gemm
    (8-30x faster than the reference on an image filter), else its reference."""
    numpy = backends.get_backend("numpy")
    if numpy.algo_reason(spec, "gemm") is None:
        return numpy.run(x, weight, bias, spec, algo="gemm", info=info)
    info.algo = "direct"
    return conv2d_direct(x, weight, bias, spec)


class _Tracker:
    """Adds up the rows the pieces report and passes (done, total) to the callback."""

    def __init__(self, total: int, callback: Callable[[int, int], None]) -> None:
        self.total, self.done, self.callback = total, 0, callback

    def __call__(self, rows: int) -> None:
        self.done += rows
        self.callback(self.done, self.total)


def conv2d(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    *,
    backend: str = "auto",
    device: str | None = None,
    algo: str = "auto",
    max_memory: int | None = None,
    info: RunInfo | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """2D convolution (cross-correlation) with exactly ``torch.nn.Conv2d``'s semantics.

    Parameters
    ----------
    x : ndarray or dask.array.Array
        ``(N, C_in, H, W)`` or unbatched ``(C_in, H, W)``; float16/32/64 or complex64/128.
        A dask array gives a lazy dask array, computed block by block with the same
        values (see :func:`convcli.dask_array.conv2d`; ``info`` and ``progress`` do not
        apply).
    weight : ndarray
        ``(C_out, C_in/groups, kH, kW)``, same dtype as ``x``. Not flipped. It may be
        changed in place between calls: the OpenCL backend keeps its packed copy only
        while a full comparison with the values it was packed from says they are the
        same (a memcmp, about 25-45 us per MB of weights each call; a :class:`Conv2d`
        layer's read-only weights skip it).
    bias : ndarray, optional
        ``(C_out,)``, same dtype as ``x``.
    stride, dilation : int or (int, int)
        Per axis (height, width); positive.
    padding : int, (int, int), 'valid' or 'same'
        Implicit padding on both sides; ``'same'`` puts the odd extra pixel right/bottom.
    groups : int
        Blocked connections; must divide ``C_in`` and ``C_out``.
    padding_mode : {'zeros', 'reflect', 'replicate', 'circular', 'symmetric'}
        torch's modes, plus ``'symmetric'`` (edge-inclusive mirror, scipy's ``reflect``).
    backend : {'auto', 'opencl', 'numpy'}
        ``'auto'`` uses OpenCL when a device initialises, else NumPy (with a notice in
        ``info``).
    device : str, optional
        OpenCL device: ``'P:D'`` indices or a name substring; default from
        ``CONVCLI_DEVICE`` / ``PYOPENCL_CTX``, GPUs first.
    algo : {'auto', 'direct', 'separable', 'fft', 'gemm'}
        Algorithm; ``'auto'`` lets the backend's cost model choose.
    max_memory : int, optional
        Bytes the call may allocate (its output, the band of padded input a backend
        materialises, the algorithm's workspace; see :mod:`convcli.budget`); larger
        problems run in tiles (same results). Default: the memory the machine has free.
        A call whose output and smallest band (one output row) do not fit is refused
        with :class:`~convcli.errors.LimitError` before anything is allocated.
    info : RunInfo, optional
        Filled with the backend, device, algorithm, notices and stage timings.
    progress : callable, optional
        ``progress(done, total)`` in output rows (times images), called as pieces finish.
        Large problems then run in about 16 tiles (same results as untiled: see
        ``max_memory``; never in bands shorter than the kernel's overlap), so that a
        caller can show a bar with an ETA.

    Returns
    -------
    ndarray or dask.array.Array
        Output of torch's shape and the input's dtype (a dask array for a dask input).
        A NaN or inf in the input reaches the outputs whose window holds it, as in
        torch's direct sum, whatever the algorithm (an FFT or Winograd result holding
        one is recomputed by NumPy's gemm), and NumPy's floating-point warnings are off.
        A NaN or inf *weight* reaches every output its tap multiplies; where that tap
        falls on zero padding (``0 * inf`` is NaN) torch itself answers by the kernel it
        picks, multiplying the zeros on some shapes and skipping them on others, and so
        do convcli's algorithms: those outputs may be NaN in one and finite or inf in
        the other.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    >>> w = np.ones((1, 1, 2, 2), dtype=np.float32)
    >>> conv2d(x, w, backend="numpy")
    array([[[10., 14., 18.],
            [26., 30., 34.],
            [42., 46., 50.]]], dtype=float32)
    """
    if type(x) is not np.ndarray and is_dask_array(x):
        if info is not None or progress is not None:
            raise ConvValueError(
                "info and progress report an eager run; a dask array's blocks run when "
                "the result is computed (use dask's diagnostics or dashboard)"
            )
        from convcli import dask_array

        return dask_array.conv2d(
            x,
            weight,
            bias,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            padding_mode=padding_mode,
            backend=backend,
            device=device,
            algo=algo,
            max_memory=max_memory,
        )
    t0 = time.perf_counter()
    if info is None:
        info = RunInfo()
    elif not isinstance(info, RunInfo):
        raise ConvTypeError(f"info must be a convcli.RunInfo, got {type(info).__name__}")
    options = {
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "groups": groups,
        "padding_mode": padding_mode,
    }
    spec = _cached_spec(x, weight, bias, options)
    if algo not in ALGOS:
        raise ConvValueError(f"algo must be one of {list(ALGOS)}, but got algo='{algo}'")
    if max_memory is not None:
        if isinstance(max_memory, bool) or not isinstance(max_memory, numbers.Real):
            # a string ('1G') failed the comparison below with a bare TypeError
            raise ConvTypeError(f"max_memory must be a number of bytes, got {max_memory!r}")
        if not max_memory > 0:  # NaN too
            raise ConvValueError(f"max_memory must be a positive number of bytes, got {max_memory}")
    be = _select_backend(backend, device, spec, info, weight, algo)
    xb = x if spec.batched else x[None]
    xb = np.ascontiguousarray(xb)
    weight = np.ascontiguousarray(weight)
    bias = None if bias is None else np.ascontiguousarray(bias)

    def attempt(be: object) -> np.ndarray:
        key = _untiled_key(spec, be, algo, max_memory, progress)
        if key is not None and key in _UNTILED:
            info.tiles += 1
            return be.run(xb, weight, bias, spec, algo=algo, info=info)
        # the output and the index maps are needed whatever the algorithm: a padding of
        # 10**9 is refused here, before the cost model prices FFT sizes for it
        least = call_need(spec, None, be.name).total
        budget = memory_budget(max_memory, least)
        check_call(spec, None, be.name, padding=padding, max_memory=max_memory, budget=budget)
        planned = algo if algo != "auto" or spec.n == 0 else be.plan_algo(spec, weight)
        budget = memory_budget(max_memory, call_need(spec, planned, be.name).total)
        check_call(spec, planned, be.name, padding=padding, max_memory=max_memory, budget=budget)
        alloc = getattr(be, "max_alloc_bytes", None)

        def fits(images: int, rows: int, tiled: bool) -> bool:
            piece = conv_need(spec, planned, be.name, rows=rows, images=images, tiled=tiled)
            if alloc and piece.largest()[1] > alloc:
                return False
            return budget is None or output_bytes(spec) + piece.total <= budget

        tracker = None if progress is None else _Tracker(spec.n * spec.h_out, progress)
        out = _run_tiled(be, xb, weight, bias, spec, algo, planned, fits, info, tracker)
        _remember_untiled(key, spec, be, algo)
        return out

    # NaN and inf are values like any other, as in torch: NumPy's "invalid value" and
    # "overflow" warnings (an error under -W error) would stop a call torch completes
    # (the NumPy backend's workers run in a copy of this context, so they are quiet too)
    with np.errstate(all="ignore"):
        try:
            out = attempt(be)
        except BackendError as exc:
            if backend != "auto" or be is backends.get_backend("numpy"):
                raise
            info.notices.append(f"OpenCL failed ({exc}); using NumPy")
            be = backends.get_backend("numpy")
            out = attempt(be)
        if spec.n and _spreads_nonfinite(be.name, info.algo, spec) and not _all_finite(out):
            # NaN/inf in the input or weights: torch's direct sum puts them exactly where
            # their windows reach, as NumPy's gemm (gathered windows times the weights)
            # and its reference (im2col + matmul) do
            del out  # not held twice
            out = _exact(xb, weight, bias, spec, info)
        out = out.astype(spec.dtype, copy=False)
    info.backend = be.name
    info.device = be.device_name
    info.flops += 2 * spec.macs
    if not spec.batched:
        out = out[0]
    info.timings["total"] = info.timings.get("total", 0.0) + time.perf_counter() - t0
    return out


class Conv2d:
    """A convolution layer like ``torch.nn.Conv2d``, holding NumPy weights.

    ``weight`` is ``(out_channels, in_channels/groups, kH, kW)`` and ``bias``
    ``(out_channels,)`` or None, both drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with
    ``fan_in = in_channels/groups * kH * kW`` using ``numpy.random.default_rng(seed)``.

    The layer keeps read-only copies of the arrays assigned to ``weight`` and ``bias``
    (:func:`convcli.plan.frozen_copy`): assign a new array to change them
    (``layer.weight = w``); an in-place write raises ``ValueError``, and so does making
    them writable (``flags.writeable = True``). Because they cannot change in place, a
    backend keeps what it derived from them (packed OpenCL weights) across calls without
    comparing them again.

    Examples
    --------
    >>> layer = Conv2d(3, 8, 3, padding=1, seed=0)
    >>> layer
    Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    >>> layer(np.zeros((3, 5, 5), dtype=np.float32), backend="numpy").shape
    (8, 5, 5)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: Padding = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        dtype: str | np.dtype = "float32",
        seed: int | None = None,
    ) -> None:
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = normalize_kernel_size(kernel_size)
        self.stride = normalize_stride(stride)
        self.dilation = normalize_dilation(dilation)
        self.groups = normalize_groups(groups)
        self.padding_mode = normalize_padding_mode(padding_mode)
        if self.in_channels <= 0 or self.out_channels <= 0:
            raise ConvValueError("in_channels and out_channels must be positive")
        if self.in_channels % self.groups:
            raise ConvValueError("in_channels must be divisible by groups")
        if self.out_channels % self.groups:
            raise ConvValueError("out_channels must be divisible by groups")
        if isinstance(padding, str):
            resolve_padding(padding, self.kernel_size, self.stride, self.dilation)
            self.padding: tuple[int, int] | str = padding
        else:
            pad = resolve_padding(padding, self.kernel_size, self.stride, self.dilation)
            self.padding = (pad[0], pad[2])
        self.dtype = np.dtype(dtype)
        if self.dtype.name not in ("float16", "float32", "float64", "complex64", "complex128"):
            raise ConvTypeError(f"unsupported dtype {self.dtype}")
        rng = np.random.default_rng(seed)
        kh, kw = self.kernel_size
        fan_in = self.in_channels // self.groups * kh * kw
        bound = 1.0 / math.sqrt(fan_in)
        wshape = (self.out_channels, self.in_channels // self.groups, kh, kw)
        self.weight = self._uniform(rng, wshape, bound)
        self.bias = self._uniform(rng, (self.out_channels,), bound) if bias else None

    @property
    def weight(self) -> np.ndarray:
        """``(out_channels, in_channels/groups, kH, kW)``, read-only (assign to change)."""
        return self._weight

    @weight.setter
    def weight(self, value: np.ndarray) -> None:
        self._weight = frozen_copy(np.asarray(value))

    @property
    def bias(self) -> np.ndarray | None:
        """``(out_channels,)`` or None, read-only (assign to change)."""
        return self._bias

    @bias.setter
    def bias(self, value: np.ndarray | None) -> None:
        self._bias = None if value is None else frozen_copy(np.asarray(value))

    def _uniform(self, rng: np.random.Generator, shape: tuple[int, ...], bound: float):
        values = rng.uniform(-bound, bound, size=shape)
        if self.dtype.kind == "c":
            values = values + 1j * rng.uniform(-bound, bound, size=shape)
        return values.astype(self.dtype)

    def __call__(self, x: np.ndarray, **options) -> np.ndarray:
        """Apply the layer; ``options`` go to :func:`conv2d` (backend, device, info...)."""
        return conv2d(
            x,
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            padding_mode=self.padding_mode,
            **options,
        )

    forward = __call__

    def __repr__(self) -> str:
        parts = [
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}",
            f"stride={self.stride}",
        ]
        if self.padding != (0, 0):
            parts.append(f"padding={self.padding}")
        if self.dilation != (1, 1):
            parts.append(f"dilation={self.dilation}")
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        if self.bias is None:
            parts.append("bias=False")
        if self.padding_mode != "zeros":
            parts.append(f"padding_mode={self.padding_mode}")
        return f"Conv2d({', '.join(parts)})"

    def save(self, path: str | Path) -> None:
        """Save weights and configuration to an ``.npz`` file."""
        arrays = {"weight": self.weight}
        if self.bias is not None:
            arrays["bias"] = self.bias
        padding = self.padding if isinstance(self.padding, str) else np.array(self.padding)
        np.savez(
            path,
            **arrays,
            stride=np.array(self.stride),
            padding=np.array(padding),
            dilation=np.array(self.dilation),
            groups=np.array(self.groups),
            padding_mode=np.array(self.padding_mode),
        )

    @classmethod
    def load(cls, path: str | Path) -> Conv2d:
        """Load a layer saved by :meth:`save` (or any ``.npz`` with a 4-D ``weight``)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                weight = data["weight"]
                bias = data.get("bias", None)
                cfg = {k: data[k] for k in data.files if k not in ("weight", "bias")}
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"{path}: cannot load Conv2d weights ({exc})") from exc
        if weight.ndim != 4:
            raise InputError(f"{path}: weight must be 4-D, got shape {weight.shape}")
        groups = int(cfg["groups"]) if "groups" in cfg else 1
        padding = cfg.get("padding", np.array(0))
        padding = (
            str(padding)
            if padding.dtype.kind == "U"
            else tuple(int(v) for v in np.atleast_1d(padding))
        )
        layer = cls(
            weight.shape[1] * groups,
            weight.shape[0],
            weight.shape[2:],
            stride=tuple(int(v) for v in cfg.get("stride", (1, 1))),
            padding=padding,
            dilation=tuple(int(v) for v in cfg.get("dilation", (1, 1))),
            groups=groups,
            bias=bias is not None,
            padding_mode=str(cfg.get("padding_mode", "zeros")),
            dtype=weight.dtype,
        )
        layer.weight = weight
        layer.bias = bias
        return layer
