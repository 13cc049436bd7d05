"""Every NumPy algorithm against the independent naive reference (tests/naive.py).

Covers every padding mode (incl. symmetric), strides, dilations, groups, even and odd
kernels, unbatched input, float64/complex64, the cost model's choices and the errors of
forced algorithms that cannot apply. No timing here: speed lives in ``convcli bench``.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from conftest import assert_close
from naive import naive_conv2d

from convcli import ConvValueError, RunInfo, conv2d
from convcli.backends import get_backend
from convcli.backends.numpy import depthwise, gemm, packed
from convcli.backends.numpy import threads as numpy_threads
from convcli.backends.numpy.fft import fft_plan
from convcli.backends.numpy.gather import Phases, band_rows
from convcli.backends.numpy.settings import DEFAULT
from convcli.plan import frozen_copy
from convcli.spec import PADDING_MODES, make_spec

ALGOS = ("direct", "gemm", "separable", "fft")

# (x shape, weight shape, stride, padding (h, w), dilation, groups)
CASES = [
    ((2, 3, 13, 12), (3, 1, 3, 3), (1, 1), (1, 1), (1, 1), 3),  # depthwise 3x3
    ((1, 2, 17, 15), (4, 1, 4, 5), (2, 1), (2, 3), (1, 2), 2),  # multiplier 2, even kH
    ((2, 4, 11, 14), (6, 2, 3, 4), (2, 3), (2, 1), (2, 1), 2),  # grouped dense
    ((1, 3, 16, 16), (5, 3, 2, 2), (1, 1), (1, 0), (3, 3), 1),  # dense even, dilation 3
    ((2, 4, 9, 10), (6, 4, 1, 1), (2, 2), (1, 1), (1, 1), 1),  # 1x1, stride, padding
    ((2, 4, 9, 10), (6, 2, 1, 1), (1, 1), (0, 0), (1, 1), 2),  # 1x1 pure channel matmul
    ((1, 1, 40, 37), (1, 1, 9, 7), (3, 2), (4, 3), (1, 1), 1),  # large kernel, strides
]


def _rand(rng, shape, dtype):
    a = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        a = a + 1j * rng.standard_normal(shape)
    return a.astype(dtype)


def _rank1(rng, shape, dtype):
    """A weight whose every 2-D kernel is rank 1 (so 'separable' applies)."""
    c_out, cin_g, kh, kw = shape
    if dtype == "float16":
        # small integers: the products are exact in float16, so the kernel stays rank 1
        col = rng.integers(-4, 5, (c_out, cin_g, kh, 1))
        row = rng.integers(-4, 5, (c_out, cin_g, 1, kw))
        return (col * row).astype(dtype)
    col = _rand(rng, (c_out, cin_g, kh, 1), dtype)
    return (col * _rand(rng, (c_out, cin_g, 1, kw), dtype)).astype(dtype)


def _check(x, w, b, stride, pad, dilation, groups, mode, algo, dtype):
    if mode == "reflect" and (pad[0] >= x.shape[-2] or pad[1] >= x.shape[-1]):
        pytest.skip("reflect needs padding < size")
    info = RunInfo()
    y = conv2d(
        x,
        w,
        b,
        stride=stride,
        padding=pad,
        dilation=dilation,
        groups=groups,
        padding_mode=mode,
        backend="numpy",
        algo=algo,
        info=info,
    )
    ref = naive_conv2d(
        x if x.ndim == 4 else x[None],
        w,
        b,
        stride,
        (pad[0], pad[0], pad[1], pad[1]),
        dilation,
        groups,
        mode,
    )
    if x.ndim == 3:
        ref = ref[0]
    assert y.dtype == np.dtype(dtype)
    assert_close(y, ref, dtype)
    assert info.algo == algo or algo == "auto"
    return info


@pytest.mark.parametrize("mode", PADDING_MODES)
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_algo_matches_naive_float32(case, algo, mode):
    xs, ws, stride, pad, dilation, groups = CASES[case]
    rng = np.random.default_rng(case)
    x = _rand(rng, xs, "float32")
    w = _rank1(rng, ws, "float32") if algo == "separable" else _rand(rng, ws, "float32")
    b = _rand(rng, (ws[0],), "float32")
    _check(x, w, b, stride, pad, dilation, groups, mode, algo, "float32")


@pytest.mark.parametrize("dtype", ["float64", "complex64", "complex128", "float16"])
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("mode", ["zeros", "reflect", "symmetric"])
def test_algo_other_dtypes(algo, dtype, mode):
    rng = np.random.default_rng(7)
    x = _rand(rng, (2, 4, 12, 11), dtype)
    shape = (4, 2, 3, 5)
    w = _rank1(rng, shape, dtype) if algo == "separable" else _rand(rng, shape, dtype)
    b = _rand(rng, (4,), dtype)
    if dtype == "float16":
        # float16 is computed in float32: compare with the reference of the float16 values
        info = RunInfo()
        y = conv2d(
            x,
            w,
            b,
            padding=(1, 2),
            groups=2,
            padding_mode=mode,
            backend="numpy",
            algo=algo,
            info=info,
        )
        ref = naive_conv2d(x, w, b, (1, 1), (1, 1, 2, 2), (1, 1), 2, mode)
        assert y.dtype == np.float16 and info.algo == algo
        assert_close(y.astype(np.float64), ref, "float16")
        return
    _check(x, w, b, (1, 2), (1, 2), (1, 1), 2, mode, algo, dtype)


@pytest.mark.parametrize("algo", ALGOS)
def test_unbatched_same_padding(algo):
    rng = np.random.default_rng(3)
    x = _rand(rng, (3, 20, 19), "float32")
    shape = (3, 1, 4, 6)  # even kernel: the odd extra pixel goes bottom/right
    w = _rank1(rng, shape, "float32") if algo == "separable" else _rand(rng, shape, "float32")
    y = conv2d(x, w, padding="same", groups=3, padding_mode="reflect", backend="numpy", algo=algo)
    spec = make_spec(x, w, None, padding="same", groups=3)
    ref = naive_conv2d(x[None], w, None, (1, 1), spec.pad, (1, 1), 3, "reflect")[0]
    assert y.shape == (3, 20, 19)
    assert_close(y, ref, "float32")


@pytest.mark.parametrize("algo", ALGOS)
def test_bands_cover_the_image(numpy_settings, algo):
    """Tiny band budgets force many bands: seams must not show."""
    numpy_settings(chunk_bytes=4096, gemm_bytes=2048, tap_piece=100)
    rng = np.random.default_rng(4)
    x = _rand(rng, (2, 2, 70, 33), "float32")
    shape = (4, 1, 7, 5)
    w = _rank1(rng, shape, "float32") if algo == "separable" else _rand(rng, shape, "float32")
    _check(x, w, None, (2, 1), (3, 2), (1, 2), 2, "circular", algo, "float32")


def test_fft_long_image_many_bands():
    rng = np.random.default_rng(5)
    x = _rand(rng, (1, 1, 700, 40), "float32")
    w = _rand(rng, (1, 1, 11, 11), "float32")
    _check(x, w, None, (1, 1), (5, 5), (1, 1), 1, "replicate", "fft", "float32")


def test_separable_rejects_rank2_kernel():
    x = np.ones((1, 1, 8, 8), np.float32)
    w = np.eye(3, dtype=np.float32)[None, None]
    with pytest.raises(ConvValueError, match="rank 1"):
        conv2d(x, w, backend="numpy", algo="separable")


def test_fft_rejects_huge_spectra(numpy_settings):
    numpy_settings(fft_kernel_bytes=1000)
    x = np.ones((1, 8, 16, 16), np.float32)
    w = np.ones((8, 8, 3, 3), np.float32)
    with pytest.raises(ConvValueError, match="kernel spectra"):
        conv2d(x, w, backend="numpy", algo="fft")


def test_unknown_algo_is_rejected():
    x = np.ones((1, 1, 8, 8), np.float32)
    w = np.ones((1, 1, 3, 3), np.float32)
    with pytest.raises(ConvValueError, match="algo"):
        conv2d(x, w, backend="numpy", algo="winograd")


@pytest.mark.parametrize(
    ("xs", "ws", "groups", "padding", "expected"),
    [
        ((1, 3, 256, 256), (3, 1, 31, 31), 3, 15, "separable"),  # Gaussian-like, rank 1
        ((1, 3, 256, 256), (3, 1, 31, 31), 3, 15, "fft"),  # the same size, rank 2+
        ((1, 3, 256, 256), (3, 1, 3, 3), 3, 1, "direct"),  # small depthwise
        ((2, 64, 28, 28), (64, 64, 3, 3), 1, 1, "gemm"),  # dense layer
        ((2, 64, 28, 28), (128, 64, 1, 1), 1, 0, "gemm"),  # 1x1
    ],
)
def test_auto_choice(xs, ws, groups, padding, expected):
    """The cost model's choices on clear-cut cases, and the result is still right."""
    rng = np.random.default_rng(6)
    x = _rand(rng, xs, "float32")
    w = _rank1(rng, ws, "float32") if expected == "separable" else _rand(rng, ws, "float32")
    info = _check(
        x, w, None, (1, 1), (padding, padding), (1, 1), groups, "zeros", "auto", "float32"
    )
    assert info.algo == expected


def test_large_kernel_on_large_image_is_bounded():
    """A 31x31 kernel on a tall image runs in bands: the work arrays stay small."""
    spec = make_spec(
        np.empty((1, 3, 4096, 4096), np.float32),
        np.empty((3, 1, 31, 31), np.float32),
        None,
        padding=15,
        groups=3,
    )
    rows, fh, fw, kbytes = fft_plan(spec)
    band_bytes = spec.c_in * fh * (fw // 2 + 1) * 8
    assert rows < spec.h_out and band_bytes < 64 * 2**20 and kbytes < 64 * 2**20
    per_row = spec.c_in * (4096 + 30) * 4
    assert band_rows(spec, per_row, DEFAULT.chunk_bytes // 4) < spec.h_out


@pytest.mark.parametrize("mode", PADDING_MODES)
@pytest.mark.parametrize("small_bands", [False, True])
def test_separable_one_kernel_for_every_channel(numpy_settings, mode, small_bands):
    """Image filters (the same kernel on every channel) take the side-by-side path."""
    if small_bands:
        numpy_settings(chunk_bytes=4096)
    rng = np.random.default_rng(8)
    x = _rand(rng, (2, 3, 41, 37), "float32")
    k = _rank1(rng, (1, 1, 5, 7), "float32")
    w = np.ascontiguousarray(np.broadcast_to(k, (3, 1, 5, 7)))
    b = _rand(rng, (3,), "float32")
    _check(x, w, b, (2, 1), (3, 4), (1, 2), 3, mode, "separable", "float32")


# ---------------------------------------------------------------------------------------
# the gemm path: phase grids, tasks on threads, junk columns, padded row strides

GRID_CASES = [
    # (x shape, weight shape, stride, padding, dilation, groups)
    ((4, 8, 20, 18), (8, 2, 3, 3), (2, 2), (2, 2), (2, 2), 4),  # W7's shape: one phase
    ((1, 3, 33, 30), (4, 3, 7, 7), (2, 2), (3, 3), (1, 1), 1),  # W9's shape: four phases
    ((2, 4, 23, 25), (6, 4, 4, 5), (3, 2), (1, 2), (2, 3), 1),  # uneven phases, gcd > 1
    ((3, 6, 15, 16), (9, 2, 3, 2), (1, 2), (0, 1), (1, 1), 3),  # stride on one axis
]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("junk_below", [0, 10**6])
@pytest.mark.parametrize("case", range(len(GRID_CASES)))
@pytest.mark.parametrize("mode", ["zeros", "reflect", "circular"])
def test_gemm_tasks_and_grids(numpy_settings, threads, junk_below, case, mode):
    """Many tasks and gather chunks on 1-3 threads, with and without junk columns."""
    numpy_settings(
        threads=threads,
        threaded_min_flops=0,
        junk_below=junk_below,
        gemm_bytes=3000,
        gemm_min_pixels=1,
        chunk_bytes=40000,
    )
    xs, ws, stride, pad, dilation, groups = GRID_CASES[case]
    rng = np.random.default_rng(10 + case)
    x = _rand(rng, xs, "float32")
    w = _rand(rng, ws, "float32")
    b = _rand(rng, (ws[0],), "float32")
    _check(x, w, b, stride, pad, dilation, groups, mode, "gemm", "float32")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("band_bytes, piece", [(1, 3), (2**20, 256)])
@pytest.mark.parametrize("case", [0, 1, 3])
@pytest.mark.parametrize("mode", PADDING_MODES)
def test_gemm_shared_rows(numpy_settings, threads, band_bytes, piece, case, mode):
    """GEMMs per output row (in pieces of columns, and a rest) over columns the rows
    share: one-row bands to whole images, 1-2 threads, stride phases along the
    columns, dilation dividing the stride."""
    settings = numpy_settings(
        shared_rows=True,
        shared_rows_bytes=band_bytes,
        shared_rows_piece=piece,
        threads=threads,
        threaded_min_flops=0,
    )
    xs, ws, stride, pad, dilation, groups = GRID_CASES[case]
    rng = np.random.default_rng(20 + case)
    x, w, b = _rand(rng, xs, "float32"), _rand(rng, ws, "float32"), _rand(rng, (ws[0],), "float32")
    spec = make_spec(x, w, None, stride=stride, padding=pad, dilation=dilation, groups=groups)
    assert gemm._shared_rows(spec, settings)
    _check(x, w, b, stride, pad, dilation, groups, mode, "gemm", "float32")


@pytest.mark.parametrize("dtype", ["float64", "complex64", "float16"])
def test_gemm_shared_rows_other_dtypes(numpy_settings, dtype):
    numpy_settings(shared_rows=True, shared_rows_piece=4)
    rng = np.random.default_rng(30)
    x, w = _rand(rng, (2, 4, 12, 11), dtype), _rand(rng, (6, 2, 3, 5), dtype)
    if dtype == "float16":
        y = conv2d(x, w, padding=(1, 2), groups=2, backend="numpy", algo="gemm")
        ref = naive_conv2d(x, w, None, (1, 1), (1, 1, 2, 2), (1, 1), 2, "zeros")
        assert y.dtype == np.float16
        assert_close(y.astype(np.float64), ref, "float16")
        return
    _check(x, w, None, (1, 1), (1, 2), (1, 1), 2, "reflect", "gemm", dtype)


@pytest.mark.parametrize(
    "xs, ws, stride, dilation, shared",
    [
        ((1, 3, 1024, 1024), (16, 3, 7, 7), 2, 1, True),  # W9: wide, few output channels
        ((1, 3, 540, 960), (16, 3, 3, 3), 1, 1, True),
        ((1, 3, 224, 224), (16, 3, 3, 3), 2, 1, True),  # mobile stems: 112 wide
        ((1, 3, 224, 224), (64, 3, 7, 7), 2, 1, False),  # resnet's: 64 output channels
        ((1, 64, 224, 224), (64, 64, 3, 3), 1, 1, False),  # copies are cheap beside GEMMs
        ((8, 64, 56, 56), (64, 64, 3, 3), 1, 1, False),  # W5: narrow rows, small GEMMs
        ((1, 3, 1024, 1024), (16, 3, 3, 3), 1, 2, False),  # dilation 2 does not divide 1
        ((1, 3, 1024, 1024), (16, 3, 1, 7), 1, 1, False),  # one kernel row: nothing shared
    ],
)
def test_shared_rows_where_it_pays(xs, ws, stride, dilation, shared):
    x, w = np.empty(xs, np.float32), np.empty(ws, np.float32)
    spec = make_spec(x, w, None, stride=stride, dilation=dilation, padding=1)
    assert gemm._shared_rows(spec, DEFAULT) is shared


def test_gemm_plan_splits_work_over_threads():
    """About two chunks per thread, each a whole number of GEMM bands."""
    x = np.empty((1, 3, 1024, 1024), np.float32)
    spec = make_spec(x, np.empty((16, 3, 7, 7), np.float32), None, stride=2, padding=3)
    lw, m, rows, crows = gemm._gemm_plan(spec, 4, 2, DEFAULT)
    assert lw == spec.w_out and m == 1
    limit = max(DEFAULT.gemm_bytes, DEFAULT.gemm_min_pixels * 4 * 147)
    assert spec.c_in * 49 * lw * rows * 4 <= limit
    assert crows % rows == 0 and -(-spec.h_out // crows) == 4
    # W7: one image per chunk, narrow outputs computed with junk columns
    x = np.empty((4, 64, 64, 64), np.float32)
    spec = make_spec(
        x, np.empty((128, 16, 3, 3), np.float32), None, stride=2, padding=2, dilation=2, groups=4
    )
    assert len(Phases(spec).phases) == 1
    lw, m, rows, crows = gemm._gemm_plan(spec, 4, 2, DEFAULT)
    assert lw == spec.w_out + 2 and m == 1 and crows >= spec.h_out


def test_small_problems_leave_threads_to_blas(numpy_settings):
    settings = numpy_settings(threads=2)
    small = make_spec(
        np.empty((1, 8, 16, 16), np.float32), np.empty((8, 8, 3, 3), np.float32), None
    )
    assert numpy_threads.gemm_threads(small, settings) == 1
    big = make_spec(
        np.empty((1, 3, 1024, 1024), np.float32), np.empty((16, 3, 7, 7), np.float32), None
    )
    blas = numpy_threads.ONE_THREAD_BLAS
    assert numpy_threads.gemm_threads(big, settings) == (2 if blas.available else 1)
    if blas.available:
        # without a thread count, a process that limited BLAS to one thread gets one too
        settings = numpy_settings(threads=None)
        before = blas.get()
        blas.put(1)
        try:
            assert numpy_threads.gemm_threads(big, settings) == 1
        finally:
            blas.put(before)
    # one thread: fewer, larger GEMMs (BLAS threads each)
    assert gemm._gemm_plan(big, 4, 1, settings)[2] > gemm._gemm_plan(big, 4, 2, settings)[2]


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs Linux and 2+ CPUs",
)
def test_parallel_work_keeps_each_thread_on_its_own_cpu():
    """During a parallel call the caller stays on its CPU and each worker takes another;
    afterwards the caller's own affinity is back as it was."""
    import ctypes

    if numpy_threads.current_cpu() is None:
        pytest.skip("no sched_getcpu (not glibc): workers are not spread")
    getcpu = ctypes.CDLL(None).sched_getcpu
    before = os.sched_getaffinity(0)
    seen: dict[int, tuple[set[int], int]] = {}

    def work(k: int) -> None:
        seen[k] = (os.sched_getaffinity(0), getcpu())

    numpy_threads.run_parallel(work, 2)
    assert os.sched_getaffinity(0) == before
    (mask0, cpu0), (mask1, cpu1) = seen[0], seen[1]
    assert len(mask0) == len(mask1) == 1 and mask0 != mask1
    assert {cpu0} == mask0 and {cpu1} == mask1 and mask0 | mask1 <= before
    # a caller limited to one CPU is left alone
    only = min(before)
    os.sched_setaffinity(0, {only})
    try:
        seen.clear()
        numpy_threads.run_parallel(work, 2)
        # ...and its workers may not leave its CPUs either
        assert os.sched_getaffinity(0) == {only} and seen[0][0] == seen[1][0] == {only}
    finally:
        os.sched_setaffinity(0, before)


@pytest.mark.parametrize("itemsize", [4, 8, 16])
def test_lead_is_an_odd_number_of_cache_lines(itemsize):
    for length in [1, 15, 16, 512, 1024, 1536, 3000, 4096]:
        lead = gemm.row_lead(length, itemsize)
        assert lead >= length
        assert (lead * itemsize) % 128 == 64


def test_one_thread_blas_is_restored():
    """BLAS runs one thread inside the gemm path and gets the caller's setting back."""
    blas = numpy_threads.ONE_THREAD_BLAS
    if not blas.available:
        pytest.skip("threadpoolctl finds no BLAS library")
    get = blas.get
    before = get()
    with blas:
        assert get() == 1
        with blas:  # nested (a second thread's call) keeps it at one
            assert get() == 1
        assert get() == 1
    assert get() == before


def test_gemm_from_concurrent_threads(numpy_settings):
    """Two user threads in the gemm path at once: right results, BLAS setting restored."""
    from concurrent.futures import ThreadPoolExecutor

    numpy_settings(threads=2, threaded_min_flops=0)
    rng = np.random.default_rng(12)
    x = _rand(rng, (2, 8, 40, 36), "float32")
    w = _rand(rng, (8, 8, 3, 3), "float32")
    ref = naive_conv2d(x, w, None, (2, 2), (1, 1, 1, 1), (1, 1), 1, "zeros")
    blas = numpy_threads.ONE_THREAD_BLAS
    before = blas.get() if blas.available else None

    def call(_):
        return conv2d(x, w, stride=2, padding=1, backend="numpy", algo="gemm")

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(call, range(12)))
    for y in results:
        assert_close(y, ref, "float32")
    if blas.available:
        assert blas.get() == before


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("junk_below", [0, 10**6])
def test_gemm_several_images_per_product(numpy_settings, threads, junk_below):
    """Several images per GEMM task (one batched product), threaded and not."""
    settings = numpy_settings(threads=threads, threaded_min_flops=0, junk_below=junk_below)
    rng = np.random.default_rng(13)
    x = _rand(rng, (9, 6, 11, 13), "float32")
    w = _rand(rng, (8, 3, 3, 2), "float32")
    spec = make_spec(x, w, None, stride=(2, 1), padding=1, groups=2)
    assert gemm._gemm_plan(spec, 4, threads, settings)[1] > 1
    _check(x, w, None, (2, 1), (1, 1), (1, 1), 2, "replicate", "gemm", "float32")


@pytest.mark.parametrize(
    "xs, ws, groups, junk",
    [
        ((4, 64, 34, 34), (128, 16, 3, 3), 4, True),  # W7 (after its stride phase): 32 wide
        ((1, 256, 28, 28), (256, 256, 3, 3), 1, False),  # W6: GEMM work outweighs copies
        ((1, 16, 100, 100), (16, 16, 3, 3), 1, False),  # wide rows: long copies anyway
    ],
)
def test_junk_columns_for_narrow_outputs_with_few_channels(xs, ws, groups, junk):
    spec = make_spec(np.empty(xs, np.float32), np.empty(ws, np.float32), None, groups=groups)
    lw = gemm._gemm_plan(spec, 4, 1, DEFAULT)[0]
    assert lw == (spec.w_out + 2 if junk else spec.w_out)


def test_1x1_layers_take_threads_from_their_own_size(numpy_settings):
    """Products of ``pointwise_threaded_min_flops`` or more run on our threads; the
    gathering paths keep ``threaded_min_flops``."""
    from convcli.backends.numpy.gemm import pointwise_threads
    from convcli.backends.numpy.threads import ONE_THREAD_BLAS, gemm_threads

    if not ONE_THREAD_BLAS.available or ONE_THREAD_BLAS.threads() < 2:
        pytest.skip("NumPy's threads need threadpoolctl and BLAS on two threads")
    settings = numpy_settings(threads=2, threaded_min_flops=10**8)
    assert settings.pointwise_threaded_min_flops < settings.threaded_min_flops
    x = np.zeros((1, 832, 14, 14), np.float32)
    mid = make_spec(x, np.zeros((128, 832, 1, 1), np.float32), None)  # 41.8 MFLOP
    small = make_spec(x, np.zeros((64, 832, 1, 1), np.float32), None)  # 20.9 MFLOP
    assert 2 * small.macs < settings.pointwise_threaded_min_flops <= 2 * mid.macs
    assert pointwise_threads(mid, settings) == 2 and gemm_threads(mid, settings) == 1
    assert pointwise_threads(small, settings) == 1


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(
    "xs, ws, groups",
    [
        ((1, 12, 9, 11), (10, 12, 1, 1), 1),  # one image: pieces of pixels
        ((5, 8, 4, 6), (6, 4, 1, 1), 2),  # images, groups; a plane under one piece
        ((2, 6, 17, 16), (3, 6, 1, 1), 1),
        ((1, 12, 3, 3), (40, 12, 1, 1), 1),  # fewer pixels than channels: channel pieces
        ((1, 16, 2, 3), (50, 8, 1, 1), 2),  # ... 25 a group, the last piece short
        ((3, 20, 4, 4), (36, 20, 1, 1), 1),  # three images, channel pieces at 3 threads
    ],
)
def test_pointwise_pieces_on_threads(numpy_settings, threads, xs, ws, groups):
    """1x1 layers: matmuls straight on the input, in pieces of images and of pixels or
    output channels."""
    numpy_settings(threads=threads, threaded_min_flops=0, pointwise_threaded_min_flops=0)
    rng = np.random.default_rng(sum(xs))
    x, w, b = _rand(rng, xs, "float32"), _rand(rng, ws, "float32"), _rand(rng, (ws[0],), "float32")
    _check(x, w, b, (1, 1), (0, 0), (1, 1), groups, "zeros", "gemm", "float32")


class _Recorder:
    available = True

    def __init__(self) -> None:
        self.entered = 0

    def __enter__(self) -> None:
        self.entered += 1

    def __exit__(self, *exc: object) -> None:
        pass


@pytest.mark.parametrize(
    "xs, ws, pad",
    [
        ((1, 240, 14, 14), (40, 240, 1, 1), 0),  # pointwise: 1.9M multiply-adds
        ((1, 16, 24, 24), (16, 16, 3, 3), 1),  # the gemm path's single thread
    ],
)
def test_single_threaded_calls_keep_blas_on_one_thread(monkeypatch, numpy_settings, xs, ws, pad):
    """OpenBLAS's threads spin for about 0.1 s after a threaded GEMM, taxing whatever the
    caller runs next: a call whose GEMMs run on one of our threads puts BLAS on one
    thread for the call, except tiny ones (which OpenBLAS keeps on one thread anyway)."""
    recorder = _Recorder()
    monkeypatch.setattr(numpy_threads, "ONE_THREAD_BLAS", recorder)
    numpy_settings(threaded_min_flops=10**12)  # one thread of ours
    rng = np.random.default_rng(3)
    x, w = _rand(rng, xs, "float32"), _rand(rng, ws, "float32")
    y = conv2d(x, w, padding=pad, backend="numpy", algo="gemm")
    assert recorder.entered == 1
    assert_close(y, naive_conv2d(x, w, None, (1, 1), (pad,) * 4), "float32")
    tiny = conv2d(x[:, :, :2, :2], w, padding=pad, backend="numpy", algo="gemm")
    assert recorder.entered == 1 and tiny.shape[-1] == 2


@pytest.mark.parametrize("band", [1, 2**20])  # one-row bands, whole images
@pytest.mark.parametrize("dtype", ["float32", "float64", "complex64", "float16"])
@pytest.mark.parametrize(
    "xs, k, stride, pad, dilation",
    [
        ((2, 5, 7, 7), (5, 5), (1, 1), (2, 2), (1, 1)),  # a 7x7 map, 'same'
        ((1, 6, 11, 9), (3, 2), (2, 1), (1, 0), (1, 2)),  # strides, dilation, odd kernel
        ((3, 4, 6, 8), (7, 7), (1, 1), (3, 3), (1, 1)),  # kernel larger than half the map
    ],
)
def test_depthwise_channels_last(numpy_settings, band, dtype, xs, k, stride, pad, dilation):
    """Many-channel depthwise layers run with the channels innermost (forced here on a
    few channels): the same taps in the same order as the planar loop."""
    settings = numpy_settings(channels_last_min=1, channels_last_band=band)
    rng = np.random.default_rng(sum(xs) + len(dtype))
    c = xs[1]
    x, w, b = _rand(rng, xs, dtype), _rand(rng, (c, 1, *k), dtype), _rand(rng, (c,), dtype)
    spec = make_spec(x, w, b, stride=stride, padding=pad, dilation=dilation, groups=c)
    assert depthwise._channels_last_pays(spec, settings)
    _check(x, w, b, stride, pad, dilation, c, "zeros", "direct", dtype)
    # bit for bit what the planar loop gives
    numpy_settings(channels_last_min=10**9)
    planar = conv2d(x, w, b, stride, pad, dilation, c, backend="numpy", algo="direct")
    numpy_settings(channels_last_min=1)
    last = conv2d(x, w, b, stride, pad, dilation, c, backend="numpy", algo="direct")
    assert np.array_equal(planar, last)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize(
    "xs, k, stride, pad, dilation",
    [
        ((2, 5, 7, 7), (7, 7), (1, 1), (3, 3), (1, 1)),  # convnext's 7x7 on a 7x7 map
        ((1, 6, 11, 19), (5, 3), (2, 1), (2, 1), (1, 2)),  # strides, dilation, 3 blocks
        ((3, 4, 6, 8), (7, 7), (2, 2), (3, 3), (1, 1)),  # kernel larger than half the map
        ((1, 3, 5, 30), (1, 9), (1, 3), (0, 4), (1, 1)),  # one row, a block-crossing stride
        ((1, 2, 9, 9), (3, 3), (1, 1), (0, 0), (2, 3)),  # no padding, dilated
    ],
)
@pytest.mark.parametrize(
    "block, rows, job_bytes, threads",
    # whole layers, two rows a block; a row per job; three rows of two columns a block
    [(16, 2, 2**17, 1), (8, 1, 1, 2), (6, 3, 2**17, 2)],
)
def test_depthwise_gemm(
    numpy_settings, dtype, xs, k, stride, pad, dilation, block, rows, job_bytes, threads
):
    """Depthwise taps as GEMMs against banded tap matrices, forced on small layers: full
    and partial blocks of 1-3 rows, jobs of whole channels or single rows (or row
    groups), on 1-2 threads."""
    settings = numpy_settings(
        dw_gemm=True,
        dw_gemm_block=block,
        dw_gemm_rows=rows,
        dw_gemm_job_bytes=job_bytes,
        dw_gemm_min_job_bytes=job_bytes,
        threads=threads,
        dw_gemm_threaded_min_macs=0,
        dw_rows=False,
        dw_shifted=False,
    )
    rng = np.random.default_rng(sum(xs) + len(dtype) + 7)
    c = xs[1]
    x, w, b = _rand(rng, xs, dtype), _rand(rng, (c, 1, *k), dtype), _rand(rng, (c,), dtype)
    spec = make_spec(x, w, b, stride=stride, padding=pad, dilation=dilation, groups=c)
    assert depthwise._depthwise_gemm_pays(spec, settings)
    assert depthwise._rows_layout(spec, settings) is None
    _check(x, w, b, stride, pad, dilation, c, "zeros", "direct", dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize(
    "xs, k, stride, pad, dilation, whole",
    [
        ((2, 5, 7, 7), (7, 7), (1, 1), (3, 3), (1, 1), True),  # convnext's 7x7 on 7^2
        ((1, 5, 7, 7), (7, 7), (1, 1), (3, 3), (1, 1), False),  # ... pairs of its rows
        ((3, 4, 14, 14), (7, 7), (1, 1), (3, 3), (1, 1), False),  # ... on 14^2
        ((1, 6, 11, 13), (5, 3), (2, 1), (2, 1), (1, 2), False),  # strides, dilation
        ((2, 3, 9, 10), (3, 3), (2, 2), (1, 0), (1, 1), False),  # odd rows: a part group
        ((1, 3, 6, 8), (7, 7), (2, 2), (3, 3), (1, 1), True),  # kernel wider than the map
        ((2, 2, 5, 6), (3, 5), (1, 1), (0, 2), (2, 1), True),  # no vertical padding
    ],
)
@pytest.mark.parametrize("rows, threads", [(2, 1), (1, 2), (3, 2)])
def test_depthwise_rows(numpy_settings, dtype, xs, k, stride, pad, dilation, whole, rows, threads):
    """Depthwise GEMMs over whole rows (or the whole map) with the padding left out of
    the band, forced on small layers: groups of 1-3 rows, one channel a job on 2
    threads."""
    settings = numpy_settings(
        dw_gemm=True,
        dw_rows=True,
        dw_rows_group=rows,
        dw_gemm_job_bytes=1,
        threads=threads,
        dw_gemm_threaded_min_macs=0,
        dw_rows_whole_bytes=2**20 if whole else 0,
        dw_rows_whole_min_images=1,
        dw_rows_single_min_rows=10**6,
    )
    rng = np.random.default_rng(sum(xs) + len(dtype) + 11)
    c = xs[1]
    x, w, b = _rand(rng, xs, dtype), _rand(rng, (c, 1, *k), dtype), _rand(rng, (c,), dtype)
    spec = make_spec(x, w, b, stride=stride, padding=pad, dilation=dilation, groups=c)
    layout = depthwise._rows_layout(spec, settings)
    assert layout is not None and layout[1] is whole
    _check(x, w, b, stride, pad, dilation, c, "zeros", "direct", dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize(
    "xs, k, stride, pad, dilation",
    [
        ((2, 5, 19, 17), (7, 7), (1, 1), (3, 3), (1, 1)),  # convnext's 7x7, a part group
        ((1, 6, 21, 22), (5, 3), (2, 3), (2, 1), (1, 2)),  # strides, column dilation
        ((3, 4, 9, 16), (3, 3), (1, 1), (0, 1), (1, 1)),  # no vertical padding
        ((1, 3, 17, 18), (5, 5), (3, 1), (4, 0), (1, 1)),  # stride past the kernel's rows
    ],
)
@pytest.mark.parametrize(
    "rows, job_bytes, threads, width, slack",
    [(4, 2**20, 1, 128, 2), (1, 1, 2, 1, 2), (3, 1, 2, 40, 2), (2, 16000, 2, 128, 1)],
)
def test_depthwise_shifted(
    numpy_settings, dtype, xs, k, stride, pad, dilation, rows, job_bytes, threads, width, slack
):
    """Depthwise GEMMs over column-shifted copies of the input rows, forced on small
    layers: groups of 1-4 output rows with a last part group, jobs of whole channels,
    of one group of rows or of a few, of one image, two or all, on 1-2 threads, the
    images' padded rows side by side (slack 2) or their output's columns (slack 1)."""
    settings = numpy_settings(
        dw_gemm=True,
        dw_rows=False,
        dw_shifted=True,
        dw_shifted_rows=rows,
        dw_shifted_job_bytes=job_bytes,
        dw_shifted_width=width,
        dw_shifted_flat_slack=slack,
        threads=threads,
        dw_gemm_threaded_min_macs=0,
    )
    rng = np.random.default_rng(sum(xs) + len(dtype) + 13)
    c = xs[1]
    x, w, b = _rand(rng, xs, dtype), _rand(rng, (c, 1, *k), dtype), _rand(rng, (c,), dtype)
    spec = make_spec(x, w, b, stride=stride, padding=pad, dilation=dilation, groups=c)
    assert depthwise._depthwise_gemm_pays(spec, settings)
    assert depthwise._shifted_pays(spec, settings)
    _check(x, w, b, stride, pad, dilation, c, "zeros", "direct", dtype)


@pytest.mark.parametrize(
    "xs, k, stride, pad, dilation",
    [
        ((1, 5, 24, 19), (7, 7), (1, 1), (3, 3), (1, 1)),  # 2-12 parts of 24 rows
        ((1, 4, 30, 20), (3, 5), (2, 1), (1, 2), (1, 2)),  # stride 2, column dilation
        ((1, 3, 28, 17), (5, 5), (1, 2), (0, 2), (1, 1)),  # no vertical padding: 24 rows
    ],
)
@pytest.mark.parametrize(
    "part_rows, rows, job_bytes, threads, slack",
    [(2, 1, 2**20, 1, 2), (2, 3, 1, 2, 2), (5, 1, 3000, 2, 1)],
)
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_depthwise_shifted_parts_of_one_image(
    numpy_settings, dtype, xs, k, stride, pad, dilation, part_rows, rows, job_bytes, threads, slack
):
    """One image's output rows in parts side by side, as if images: the parts' own
    rows of the input (the first and last part's padding included), jobs of all rows
    or of a few groups of rows, on 1-2 threads, the parts' padded rows side by side
    (slack 2) or their output's columns (slack 1)."""
    settings = numpy_settings(
        dw_gemm=True,
        dw_rows=False,
        dw_shifted=True,
        dw_shifted_rows=rows,
        dw_shifted_part_rows=part_rows,
        dw_shifted_part_min_taps=1,
        dw_shifted_flat_slack=slack,
        dw_shifted_job_bytes=job_bytes,
        threads=threads,
        dw_gemm_threaded_min_macs=0,
        dw_shifted_threaded_min_macs=0,
    )
    rng = np.random.default_rng(sum(xs) + part_rows)
    c = xs[1]
    x, w, b = _rand(rng, xs, dtype), _rand(rng, (c, 1, *k), dtype), _rand(rng, (c,), dtype)
    spec = make_spec(x, w, b, stride=stride, padding=pad, dilation=dilation, groups=c)
    assert depthwise._shifted_pays(spec, settings)
    assert depthwise._shifted_parts(spec, settings, rows) > 1
    _check(x, w, b, stride, pad, dilation, c, "zeros", "direct", dtype)


@pytest.mark.parametrize(
    "n, hw, k, stride, parts",
    [
        (1, 56, 7, 1, 2),  # convnext's 56^2: 2 parts of 28 rows (7 groups of 4), 112 columns
        (1, 28, 7, 1, 1),  # 28^2: 2 parts of 14 would leave groups of 2 rows
        (1, 112, 7, 2, 2),  # stride 2: 56 rows
        (1, 112, 3, 1, 1),  # 3x3: copies outweigh the GEMMs
        (1, 23, 7, 1, 1),  # 23 rows: no parts
        (2, 56, 7, 1, 1),  # images side by side instead
    ],
)
def test_depthwise_shifted_parts_by_shape(n, hw, k, stride, parts):
    x = np.ones((n, 8, hw, hw), np.float32)
    w = np.ones((8, 1, k, k), np.float32)
    spec = make_spec(x, w, None, padding=k // 2, stride=stride, groups=8)
    assert depthwise._shifted_parts(spec, DEFAULT, DEFAULT.dw_shifted_rows) == parts


DEFAULT_ROWS = dataclasses.replace(DEFAULT, dw_rows=True, dw_rows_whole_bytes=0)
NO_ROWS = dataclasses.replace(DEFAULT, dw_rows=False)


@pytest.mark.parametrize("path", ["shifted", "rows"])
@pytest.mark.parametrize("threads, keep", [(1, 32 * 2**20), (2, 32 * 2**20), (2, 0)])
def test_depthwise_padding_is_zero_after_other_calls(numpy_settings, path, threads, keep):
    """The shifted and whole-row GEMMs pad each job's rows in a buffer the thread keeps
    between calls: a call after one of another shape, whose rows were large values where
    this one's padding lies, still reads zeros there (and so does every job where the
    buffer is not kept, ``scratch_keep`` 0)."""
    numpy_settings(
        dw_gemm=True,
        dw_rows=path == "rows",
        dw_rows_whole_bytes=0,
        dw_shifted=path == "shifted",
        dw_shifted_job_bytes=2**20,
        dw_gemm_job_bytes=2**14,
        dw_rows_min_job_bytes=0,
        threads=threads,
        scratch_keep=keep,
        dw_gemm_threaded_min_macs=0,
        dw_shifted_threaded_min_macs=0,
        dw_rows_threaded_min_macs=0,
    )
    rng = np.random.default_rng(5)
    big = np.full((2, 6, 30, 31), 1e6, np.float32)
    conv2d(big, np.ones((6, 1, 3, 3), np.float32), groups=6, backend="numpy", algo="direct")
    for xs, k, pad in [((2, 6, 23, 19), 7, 3), ((3, 5, 17, 20), 5, 2), ((1, 7, 9, 11), 5, 2)]:
        x, w = _rand(rng, xs, "float32"), _rand(rng, (xs[1], 1, k, k), "float32")
        spec = make_spec(x, w, None, padding=pad, groups=xs[1])
        layout = depthwise._rows_layout(spec, DEFAULT_ROWS if path == "rows" else NO_ROWS)
        assert (layout is not None and not layout[1]) is (path == "rows")
        _check(x, w, None, (1, 1), (pad, pad), (1, 1), xs[1], "zeros", "direct", "float32")


@pytest.mark.parametrize(
    "n, c, hw, k, stride, layout",
    [
        (1, 384, 14, 7, 1, (1, False)),  # one image of 14 rows: single rows
        (8, 384, 14, 7, 1, (2, False)),  # eight: pairs
        (1, 768, 7, 7, 1, (2, False)),  # one image of 7 rows: pairs
        (2, 768, 7, 7, 1, (7, True)),  # two: the whole map
        (1, 672, 28, 5, 2, (1, False)),  # 14 rows of stride 2: single rows too
    ],
)
def test_depthwise_rows_group_by_images_and_rows(n, c, hw, k, stride, layout):
    x = np.ones((n, c, hw, hw), np.float32)
    w = np.ones((c, 1, k, k), np.float32)
    spec = make_spec(x, w, None, padding=k // 2, stride=stride, groups=c)
    assert depthwise._rows_layout(spec, DEFAULT) == layout


@pytest.mark.parametrize(
    "n, c, hw, k, stride, path",
    [
        (8, 768, 7, 7, 1, "whole"),  # convnext's last stage: the whole map, in place
        (1, 768, 7, 7, 1, "rows"),  # ... but for one image, pairs of rows
        (8, 384, 14, 7, 1, "rows"),  # its third: pairs of whole rows
        (1, 384, 14, 7, 1, "rows"),  # ... single rows
        (1, 96, 56, 7, 1, "shifted"),  # its first: column-shifted rows
        (8, 192, 28, 7, 1, "shifted"),
        (1, 672, 14, 5, 1, "rows"),  # efficientnet's 5x5 on 14^2
        (1, 672, 28, 5, 2, "rows"),  # ... with stride 2 on 28^2 (1.5 blocks' spans)
        (1, 1152, 7, 3, 1, "rows"),  # 3x3 on 7^2
        (8, 240, 28, 3, 2, "blocks"),  # 3x3 with stride 2 on 28^2: 14 output columns
        (1, 240, 28, 3, 2, "taps"),  # ... of one image: the channels-last loop
        (8, 96, 112, 3, 2, "shifted"),  # a 3x3 stride 2 on 112^2
    ],
)
def test_depthwise_path_by_shape(n, c, hw, k, stride, path):
    x = np.ones((n, c, hw, hw), np.float32)
    w = np.ones((c, 1, k, k), np.float32)
    spec = make_spec(x, w, None, padding=k // 2, stride=stride, groups=c)
    got = "taps"
    if depthwise._depthwise_gemm_pays(spec, DEFAULT):
        layout = depthwise._rows_layout(spec, DEFAULT)
        if layout is not None:
            got = "whole" if layout[1] else "rows"
        else:
            got = "shifted" if depthwise._shifted_pays(spec, DEFAULT) else "blocks"
    assert got == path


@pytest.mark.parametrize(
    "c, hw, k, stride, mult, mode, pays",
    [
        (96, 56, 7, 1, 1, "zeros", True),  # convnext's depthwise layers
        (768, 7, 7, 1, 1, "zeros", True),
        (96, 56, 3, 1, 1, "zeros", True),  # 3x3 on wide rows and many channels
        (3, 224, 3, 1, 1, "zeros", True),  # an image filter's 3x3 on RGB: shifted rows
        (480, 14, 3, 1, 1, "zeros", True),  # short rows: whole rows
        (1152, 7, 3, 1, 1, "zeros", True),
        (576, 7, 5, 1, 1, "zeros", True),
        (240, 28, 3, 2, 1, "zeros", False),  # 14 columns of stride 2: the tap loop
        (96, 56, 7, 1, 1, "reflect", False),  # padding maps: the tap loops gather them
        (48, 56, 7, 1, 2, "zeros", False),  # a channel multiplier
        (8, 9, 7, 1, 1, "zeros", False),  # too small for the band's set-up to pay
        (3, 40, 2, 1, 1, "zeros", False),  # too few taps
    ],
)
def test_depthwise_gemm_only_where_it_applies_and_pays(c, hw, k, stride, mult, mode, pays):
    x = np.ones((1, c, hw, hw), np.float32)
    w = np.ones((c * mult, 1, k, k), np.float32)
    spec = make_spec(x, w, None, padding=k // 2, stride=stride, groups=c, padding_mode=mode)
    assert depthwise._depthwise_gemm_pays(spec, DEFAULT) is pays


@pytest.mark.parametrize("dtype", ["float32", "float64", "complex64"])
@pytest.mark.parametrize(
    "xs, ws, k, groups",
    [
        ((1, 3, 16, 20), (8, 3, 4, 4), (4, 4), 1),  # convnext's stem, 4x4 / 4
        ((3, 8, 15, 9), (16, 8, 2, 2), (2, 2), 1),  # odd sizes: the last row/column unused
        ((2, 12, 10, 10), (6, 4, 2, 3), (2, 3), 3),  # groups, a 2x3 patch
        ((1, 40, 4, 4), (64, 40, 2, 2), (2, 2), 1),  # enough channels to split among threads
    ],
)
def test_patches(dtype, xs, ws, k, groups):
    """Kernels as large as their stride (non-overlapping patches) run as one transposed
    copy and a GEMM per image."""
    rng = np.random.default_rng(sum(xs) + len(dtype))
    x, w, b = _rand(rng, xs, dtype), _rand(rng, ws, dtype), _rand(rng, ws[:1], dtype)
    spec = make_spec(x, w, b, stride=k, groups=groups)
    assert gemm._patches_apply(spec)
    _check(x, w, b, k, (0, 0), (1, 1), groups, "zeros", "gemm", dtype)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("rows_weight_bytes", [0, 2**30])
@pytest.mark.parametrize(
    "xs, ws, k, groups",
    [
        ((1, 3, 20, 16), (8, 3, 4, 4), (4, 4), 1),  # the stem: 5 output rows in 2-3 jobs
        ((1, 12, 10, 11), (18, 4, 2, 2), (2, 2), 3),  # groups, odd width
        ((2, 16, 7, 9), (24, 16, 2, 3), (2, 3), 1),  # two images on 3 threads
    ],
)
def test_patches_jobs_split_rows_or_channels(
    numpy_settings, threads, rows_weight_bytes, xs, ws, k, groups
):
    """Fewer images than threads: the jobs split each image's output rows (each copying
    its rows' patches) or its output channels, the bias added by each job to its part."""
    numpy_settings(
        threads=threads, threaded_min_flops=0, patches_rows_weight_bytes=rows_weight_bytes
    )
    rng = np.random.default_rng(sum(xs) + threads)
    x, w, b = _rand(rng, xs, "float32"), _rand(rng, ws, "float32"), _rand(rng, ws[:1], "float32")
    assert gemm._patches_apply(make_spec(x, w, b, stride=k, groups=groups))
    _check(x, w, b, k, (0, 0), (1, 1), groups, "zeros", "gemm", "float32")


@pytest.mark.parametrize(
    "k, stride, padding, dilation, applies",
    [
        (2, 2, 0, 1, True),
        (4, 4, 0, 1, True),
        (3, 2, 0, 1, False),  # overlapping patches
        (2, 2, 1, 1, False),  # padded
        (2, 2, 0, 2, False),  # dilated
        (1, 1, 0, 1, False),  # 1x1: the pointwise path
    ],
)
def test_patches_only_where_they_apply(k, stride, padding, dilation, applies):
    x = np.ones((1, 4, 12, 12), np.float32)
    w = np.ones((8, 4, k, k), np.float32)
    spec = make_spec(x, w, None, stride=stride, padding=padding, dilation=dilation)
    assert gemm._patches_apply(spec) is applies


def test_settings_are_frozen_and_using_gives_them_back():
    """Tuning lives in one frozen object the backend holds; ``using`` swaps in a changed
    copy for a block and puts the backend's own back, also after an error."""
    be = get_backend("numpy")
    before = be.settings
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.chunk_bytes = 1
    with pytest.raises(RuntimeError), be.using(chunk_bytes=4096, threads=1) as changed:
        assert be.settings is changed and changed.chunk_bytes == 4096
        assert changed.gemm_bytes == before.gemm_bytes and be.threads() == 1
        raise RuntimeError
    assert be.settings is before


# ---------------------------------------------------------------------------------------
# weights prepared once per weight array (backends/numpy/packed.py)


def test_prepared_is_reused_only_while_the_values_stay():
    packed.clear()
    made = []

    def make():
        made.append(1)
        return np.arange(3.0)

    w = np.ones((4, 2, 3, 3), np.float32)
    first = packed.prepared(("k",), w, make)
    assert packed.prepared(("k",), w, make) is first and len(made) == 1
    assert packed.prepared(("k",), w.copy(), make) is first and len(made) == 1  # equal values
    assert not first.flags.writeable  # shared between calls: nobody may write it
    packed.prepared(("other",), w, make)
    assert len(made) == 2
    w[1, 1, 2, 2] = 5  # in place: the kept copy no longer matches
    packed.prepared(("k",), w, make)
    assert len(made) == 3
    big = np.ones((64, 64, 5, 5), np.float32)  # 400 KiB: sampled, then compared in full
    packed.prepared(("k",), big, make)
    packed.prepared(("k",), big.copy(), make)
    assert len(made) == 4
    big[0, 0, 0, 1] = 2  # off the sample's grid
    packed.prepared(("k",), big, make)
    assert len(made) == 5
    frozen = frozen_copy(w + 1)  # Conv2d's weights: kept as they are, not copied
    packed.prepared(("k",), frozen, make)
    assert packed.prepared(("k",), frozen, make) is not first and len(made) == 6


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "xs, ws, stride, groups, changes",
    [
        ((1, 6, 13, 12), (8, 6, 3, 3), 2, 1, {}),  # stride phases: reordered weights
        ((1, 4, 12, 11), (6, 2, 3, 5), 1, 2, {"shared_rows": True}),  # shared rows
        ((1, 5, 11, 11), (5, 1, 7, 7), 1, 5, {"dw_gemm": True}),  # depthwise bands
    ],
)
def test_prepared_weights_follow_in_place_changes(
    numpy_settings, dtype, xs, ws, stride, groups, changes
):
    """A weight array changed in place between two calls gives the new result, not the
    one prepared from its old values."""
    numpy_settings(**changes)
    packed.clear()
    rng = np.random.default_rng(sum(ws))
    x, w = _rand(rng, xs, dtype), _rand(rng, ws, dtype)
    pad = (ws[2] // 2, ws[3] // 2)
    algo = "direct" if groups == xs[1] else "gemm"
    for _ in range(2):  # the second call takes the prepared weights
        _check(x, w, None, (stride, stride), pad, (1, 1), groups, "zeros", algo, dtype)
    w[0] += 1
    _check(x, w, None, (stride, stride), pad, (1, 1), groups, "zeros", algo, dtype)


def test_depthwise_shifted_rows_only_where_their_copies_fit():
    """A few rows cut to fit a memory budget take the column blocks: the shifted rows'
    least job (kW copies of the rows one group reads) would outgrow what the budget
    prices for the band."""

    def shifted(rows: int) -> bool:
        x, w = np.ones((1, 3, rows, 100), np.float32), np.ones((3, 1, 15, 15), np.float32)
        return depthwise._shifted_pays(make_spec(x, w, None, padding=7, groups=3), DEFAULT)

    assert shifted(400) and not shifted(15)


def test_depthwise_gemm_counts_the_rows_of_every_image():
    """Short rows of column blocks with many channels: the tap loop for one image, the
    GEMM for eight (more rows per channel amortise its per-channel calls)."""

    def pays(n: int) -> bool:
        x, w = np.ones((n, 240, 28, 28), np.float32), np.ones((240, 1, 3, 3), np.float32)
        spec = make_spec(x, w, None, padding=1, stride=2, groups=240)
        assert depthwise._rows_layout(spec, DEFAULT) is None
        return depthwise._depthwise_gemm_pays(spec, DEFAULT)

    assert not pays(1) and pays(8)


def test_depthwise_gemm_threads_only_large_layers(monkeypatch, numpy_settings):
    """Our threads for a depthwise GEMM of 16M multiply-adds, not for one of 4M (waking
    them costs more than they save there)."""
    seen = []
    real = depthwise.run_jobs

    def spy(job, args, threads, *rest):
        seen.append(threads)
        return real(job, args, threads, *rest)

    monkeypatch.setattr(depthwise, "run_jobs", spy)
    numpy_settings(threads=2)
    rng = np.random.default_rng(40)
    for c, hw, k in [(32, 112, 3), (240, 14, 5)]:
        x, w = _rand(rng, (1, c, hw, hw), "float32"), _rand(rng, (c, 1, k, k), "float32")
        _check(x, w, None, (1, 1), (k // 2, k // 2), (1, 1), c, "zeros", "direct", "float32")
    assert seen == [2 if numpy_threads.ONE_THREAD_BLAS.available else 1, 1]


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("junk_below", [0, 10**6])
@pytest.mark.parametrize("case", range(len(GRID_CASES)))
def test_gemm_threads_share_the_output_channels(numpy_settings, threads, junk_below, case):
    """One band (a small map) on several threads: each thread takes a part of every
    group's output channels, with and without junk columns."""
    numpy_settings(
        threads=threads,
        threaded_min_flops=0,
        junk_below=junk_below,
        gemm_min_pixels=10**6,  # every image one band
        gemm_min_part_cout=1,
        shared_rows=False,
    )
    xs, ws, stride, pad, dilation, groups = GRID_CASES[case]
    rng = np.random.default_rng(50 + case)
    x, w, b = _rand(rng, xs[1:], "float32")[None], _rand(rng, ws, "float32"), None
    _check(x, w, b, stride, pad, dilation, groups, "replicate", "gemm", "float32")


def test_depthwise_rows_band_of_a_far_reaching_kernel_stays_small():
    # a review found dilation 150 on a 1000^2 map building (and keeping) a 1 GB band
    x = np.zeros((1, 3, 1000, 1000), np.float32)
    w = np.ones((3, 1, 7, 7), np.float32)
    spec = make_spec(x, w, None, dilation=150, groups=3)
    forced = dataclasses.replace(DEFAULT, dw_rows=True)
    assert depthwise._rows_layout(spec, forced) is None
    near = make_spec(x[..., :40, :40], w, None, groups=3)
    assert depthwise._rows_layout(near, forced) is not None  # the same rule keeps small ones


def test_a_float64_kernel_nearly_rank_1_is_not_run_separable():
    """A float64 kernel 1e-8 away from rank 1 passed the rank-1 test (1e-7 of max|w|,
    a float32 margin), and 'auto' ran it separable: 1.8e-7 off the direct sum (torch's
    float64 is exact to ~1e-15). Float64 kernels are now held to 1000 epsilons; exact
    rank-1 ones and float32 ones keep the separable path."""
    from convcli.plan import separable_factors

    rng = np.random.default_rng(0)
    exact = np.outer(rng.standard_normal(7), rng.standard_normal(7))[None, None]
    near = exact + 1e-8 * rng.standard_normal((1, 1, 7, 7))
    x = rng.standard_normal((1, 1, 40, 40))
    assert separable_factors(near) is None
    assert separable_factors(exact) is not None
    assert separable_factors(near.astype(np.float32)) is not None
    for w in (near, exact):
        info = RunInfo()
        got = conv2d(x, w, padding=3, backend="numpy", info=info)
        want = conv2d(x, w, padding=3, backend="numpy", algo="direct")
        assert info.algo == ("separable" if w is exact else "direct")
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
