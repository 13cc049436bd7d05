"""conv2d on dask arrays: lazy, and equal to the independent naive reference and to the
NumPy path for every padding mode, stride, dilation, group count and chunking, including
kernels whose reach spans several chunks. Skipped where dask is not installed."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import assert_close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from naive import naive_conv2d, naive_for_spec

from convcli import Conv2d, RunInfo, conv2d
from convcli.errors import ConvTypeError, ConvValueError
from convcli.spec import make_spec

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

MODES = ("zeros", "reflect", "replicate", "circular", "symmetric")


def _random(rng: np.random.Generator, shape: tuple[int, ...], dtype: str = "float32"):
    return rng.standard_normal(shape).astype(dtype)


def _check(x, weight, bias=None, chunks=None, scheduler="sync", backend="numpy", **kw):
    """Dask result vs the naive reference and the NumPy path on the whole array."""
    y = conv2d(da.from_array(x, chunks=chunks), weight, bias, backend=backend, **kw)
    assert isinstance(y, da.Array)
    out = y.compute(scheduler=scheduler)
    assert isinstance(out, np.ndarray)
    spec = make_spec(x, weight, bias, **kw)
    expected = naive_for_spec(x if spec.batched else x[None], weight, bias, spec)
    if not spec.batched:
        expected = expected[0]
    assert y.shape == expected.shape == out.shape
    assert out.dtype == x.dtype
    assert_close(out, expected)
    assert_close(out, conv2d(x, weight, bias, backend="numpy", **kw))
    return y


@pytest.mark.parametrize("mode", MODES)
def test_kernel_reach_beyond_chunks(mode):
    # a 31x31 kernel over 40-row chunks, and over 8-row chunks (reach: 4 chunks)
    rng = np.random.default_rng(1)
    x = _random(rng, (1, 2, 100, 90))
    w = _random(rng, (3, 2, 31, 31))
    b = _random(rng, (3,))
    _check(x, w, b, chunks=(1, 1, 40, 37), padding=15, padding_mode=mode)
    _check(x[:, :, :60, :45], w, b, chunks=(1, 2, 8, 7), padding="same", padding_mode=mode)


@pytest.mark.parametrize("mode", MODES)
def test_strides_that_do_not_divide_the_chunks(mode):
    rng = np.random.default_rng(2)
    x = _random(rng, (3, 50, 47))
    w = _random(rng, (4, 3, 4, 5))
    y = _check(x, w, chunks=(2, 7, 9), stride=(3, 2), padding=(2, 3), padding_mode=mode)
    # output blocks of ceil(7/3) rows and ceil(9/2) cols: input chunks at any phase
    assert y.chunks[1][0] == 3 and y.chunks[2][0] == 5


@pytest.mark.parametrize("mode", MODES)
def test_same_padding_odd_extra_pixel_and_dilation(mode):
    rng = np.random.default_rng(3)
    x = _random(rng, (2, 3, 33, 29))
    w = _random(rng, (2, 3, 4, 2))
    # totals 3*(4-1)=9 and 2*(2-1)=2: the odd extra row goes to the bottom
    y = _check(x, w, chunks=(1, 3, 5, 6), padding="same", dilation=(3, 2), padding_mode=mode)
    assert y.chunks[2:] == ((5,) * 6 + (3,), (6,) * 4 + (5,))  # chunked as the input
    # the split written out: 9 = 4 top + 5 bottom, 2 = 1 left + 1 right
    explicit = naive_conv2d(x, w, pad=(4, 5, 1, 1), dilation=(3, 2), padding_mode=mode)
    assert_close(y.compute(scheduler="sync"), explicit)


@pytest.mark.parametrize("mode", MODES)
def test_groups_split_channel_blocks(mode):
    rng = np.random.default_rng(4)
    x = _random(rng, (2, 6, 21, 19))
    w = _random(rng, (9, 2, 3, 3))
    b = _random(rng, (9,))
    # input channel chunks of 4 (2 groups' worth) and 1 (less than a group)
    y = _check(x, w, b, chunks=(1, 4, 6, 5), groups=3, padding=2, padding_mode=mode)
    assert y.chunks[1] == (6, 3)
    y = _check(x, w, b, chunks=(2, 1, 6, 5), groups=3, padding=2, padding_mode=mode)
    assert y.chunks[1] == (3, 3, 3)
    # depthwise, strided
    dw = _random(rng, (6, 1, 3, 3))
    _check(x, dw, chunks=(1, 5, 4, 4), groups=6, stride=2, padding=1, padding_mode=mode)


def test_padding_beyond_the_window_and_negative_padding():
    rng = np.random.default_rng(5)
    x = _random(rng, (1, 1, 12, 12))
    w = _random(rng, (1, 1, 3, 3))
    # output blocks wholly inside zero padding
    _check(x, w, chunks=(1, 1, 2, 3), padding=9)
    # symmetric padding larger than the input (mirrors over and over)
    _check(x, w, chunks=(1, 1, 5, 4), padding=(20, 13), padding_mode="symmetric")
    # non-zero modes crop on negative padding (F.pad): the same as convolving the crop
    y = conv2d(da.from_array(x, chunks=(1, 1, 5, 4)), w, padding=(-2, -1), padding_mode="replicate")
    assert_close(y.compute(), naive_conv2d(x[:, :, 2:-2, 1:-1], w))


def test_empty_batch_and_dtypes():
    rng = np.random.default_rng(6)
    w = _random(rng, (2, 1, 3, 3))
    y = conv2d(da.zeros((0, 1, 9, 9), dtype="float32", chunks=4), w, padding=1)
    assert y.shape == (0, 2, 9, 9)
    assert y.compute().shape == (0, 2, 9, 9)
    for dtype in ("float64", "complex64", "float16"):
        x = rng.standard_normal((1, 9, 8)).astype(dtype)
        ww = rng.standard_normal((2, 1, 3, 3)).astype(dtype)
        out = conv2d(da.from_array(x, chunks=3), ww, padding=1, padding_mode="circular")
        expected = naive_conv2d(x[None], ww, pad=(1, 1, 1, 1), padding_mode="circular")[0]
        assert out.dtype == dtype
        assert_close(out.compute(), expected, dtype)


@st.composite
def problems(draw) -> dict:
    mode = draw(st.sampled_from(MODES))
    groups = draw(st.integers(1, 3))
    cin_g, cout_g = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    batched = draw(st.booleans())
    n = draw(st.integers(1, 2))
    h, w = draw(st.integers(1, 16)), draw(st.integers(1, 16))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    limit = {"reflect": (h - 1, w - 1), "circular": (h, w)}.get(mode, (2 * h, 2 * w))
    if draw(st.booleans()) and (sh, sw) == (1, 1):
        padding = "same"
        pads = [d * (k - 1) for d, k in ((dh, kh), (dw, kw))]
        if mode == "reflect" and (pads[0] - pads[0] // 2 >= h or pads[1] - pads[1] // 2 >= w):
            padding = 0
    else:
        padding = (draw(st.integers(0, limit[0])), draw(st.integers(0, limit[1])))
    shape = (n, cin_g * groups, h, w) if batched else (cin_g * groups, h, w)
    chunks = tuple(draw(st.integers(1, s)) for s in shape)
    seed = draw(st.integers(0, 2**31 - 1))
    return {
        "shape": shape,
        "weight": (cout_g * groups, cin_g, kh, kw),
        "chunks": chunks,
        "kw": {
            "stride": (sh, sw),
            "padding": padding,
            "dilation": (dh, dw),
            "groups": groups,
            "padding_mode": mode,
        },
        "seed": seed,
    }


@settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(problems())
def test_random_problems_and_chunks(problem):
    rng = np.random.default_rng(problem["seed"])
    x = _random(rng, problem["shape"])
    w = _random(rng, problem["weight"])
    b = _random(rng, problem["weight"][:1])
    try:
        make_spec(x, w, b, **problem["kw"])
    except ConvValueError:
        # the kernel is larger than the padded input: the dask path must say so too
        with pytest.raises(ConvValueError):
            conv2d(da.from_array(x, chunks=problem["chunks"]), w, b, **problem["kw"])
        return
    _check(x, w, b, chunks=problem["chunks"], **problem["kw"])


def test_lazy_nothing_computed_on_call():
    calls = []

    def make(block_info=None):
        calls.append(block_info[None]["chunk-location"])
        return np.ones(block_info[None]["chunk-shape"], dtype="float32")

    x = da.map_blocks(make, chunks=((1,), (1,), (16,) * 4, (16,) * 4), dtype="float32")
    w = np.ones((1, 1, 5, 5), dtype="float32")
    y = conv2d(x, w, padding=2, padding_mode="reflect")
    assert calls == []
    assert y.shape == (1, 1, 64, 64)
    out = y.compute(scheduler="sync")
    assert len(calls) == 16
    np.testing.assert_array_equal(out, np.full((1, 1, 64, 64), 25, dtype="float32"))


def test_each_task_gets_only_its_window():
    """The inputs a block's task receives add up to at most its padded window."""
    from dask.callbacks import Callback
    from dask.core import get_dependencies

    rng = np.random.default_rng(7)
    x = _random(rng, (1, 2, 200, 160))
    w = _random(rng, (2, 2, 9, 9))
    y = conv2d(da.from_array(x, chunks=(1, 2, 50, 40)), w, padding=4, padding_mode="reflect")
    nbytes: dict = {}

    def posttask(key, result, dsk, state, worker_id):
        nbytes[key] = getattr(result, "nbytes", 0)

    with Callback(posttask=posttask):
        out = y.compute(scheduler="sync")
    assert_close(out, conv2d(x, w, padding=4, padding_mode="reflect", backend="numpy"))
    graph = dict(y.__dask_graph__())
    blocks = [k for k in graph if isinstance(k, tuple) and k[0] == y.name]
    assert len(blocks) == 4 * 4
    item = x.itemsize
    for key in blocks:
        _, _, _, i, j = key
        rows, cols = y.chunks[2][i] + 8, y.chunks[3][j] + 8  # window: block + 2*4 halo
        deps = [d for d in get_dependencies(graph, key) if "weight" not in d[0]]
        assert all(d[0].startswith("convcli-conv2d-piece") for d in deps)
        received = sum(nbytes[d] for d in deps)
        assert received <= 2 * rows * cols * item, (key, received)
        # an input chunk alone is 2*50*40 values: a window of 58x48 reads parts of up to 9
        assert received < 3 * 2 * 50 * 40 * item


def _held_bytes(cache: dict) -> int:
    """Bytes of the arrays the scheduler holds (a view counts as its base, once)."""
    bases = {}
    for value in cache.values():
        while isinstance(value, np.ndarray) and isinstance(value.base, np.ndarray):
            value = value.base
        if isinstance(value, np.ndarray):
            bases[id(value)] = value.nbytes
    return sum(bases.values())


def test_bounded_memory_on_a_tall_array():
    """The data the scheduler holds at once stays a few rows of chunks, not the array."""
    from dask.callbacks import Callback

    w = np.full((1, 1, 5, 5), 1 / 25, dtype="float32")
    x = da.ones((1, 1, 8192, 256), dtype="float32", chunks=(1, 1, 128, 128))
    x = x.map_blocks(np.array)  # chunks of real memory (da.ones' are broadcast views)
    y = conv2d(x, w, padding=2, padding_mode="replicate", backend="numpy")
    peak = 0

    def posttask(key, result, dsk, state, worker_id):
        nonlocal peak
        peak = max(peak, _held_bytes(state["cache"]))

    with Callback(posttask=posttask):
        total = y.sum(dtype="float64").compute(scheduler="sync")
    assert abs(total - 8192 * 256) < 1e-3 * 8192 * 256
    whole = 8192 * 256 * 4
    # dask orders the tasks: about 10 rows of chunks at once here, 1/7 of the array
    assert 0 < peak < whole / 4, (peak, whole)


def test_threads_and_backends(backend):
    rng = np.random.default_rng(8)
    x = _random(rng, (2, 3, 64, 72))
    w = _random(rng, (4, 3, 5, 5))
    b = _random(rng, (4,))
    _check(
        x,
        w,
        b,
        chunks=(1, 3, 20, 25),
        scheduler="threads",
        backend=backend,
        padding="same",
        padding_mode="circular",
    )


def test_backend_runs_on_each_block():
    seen = []
    lock = threading.Lock()
    from convcli import dask_array

    original = dask_array._block

    def spy(pieces, weight, bias, geometry, options):
        with lock:
            seen.append(options)
        return original(pieces, weight, bias, geometry, options)

    rng = np.random.default_rng(9)
    x = _random(rng, (1, 20, 20))
    w = _random(rng, (1, 1, 3, 3))
    dask_array._block = spy
    try:
        y = conv2d(da.from_array(x, chunks=10), w, backend="numpy", algo="direct")
        y.compute(scheduler="sync")
    finally:
        dask_array._block = original
    assert len(seen) == 4
    assert all(o["backend"] == "numpy" and o["algo"] == "direct" for o in seen)


def test_layer_on_dask_array():
    layer = Conv2d(3, 4, 3, padding=1, padding_mode="reflect", seed=0)
    x = np.random.default_rng(10).standard_normal((3, 17, 15)).astype("float32")
    y = layer(da.from_array(x, chunks=(3, 6, 6)), backend="numpy")
    assert isinstance(y, da.Array)
    assert_close(y.compute(), layer(x, backend="numpy"))


def test_errors_at_call_time():
    x = da.zeros((2, 8, 8), dtype="float32", chunks=4)
    w = np.zeros((1, 2, 3, 3), dtype="float32")
    with pytest.raises(ConvValueError, match="expected input\\[2, 8, 8\\] to have 4 channels"):
        conv2d(x, np.zeros((1, 4, 3, 3), dtype="float32"))
    with pytest.raises(ConvTypeError, match="weight type \\(Double\\)"):
        conv2d(x, w.astype("float64"))
    with pytest.raises(ConvTypeError, match="dtype int32"):
        conv2d(x.astype("int32"), w)
    with pytest.raises(ConvValueError, match="backend must be one of"):
        conv2d(x, w, backend="cuda")
    with pytest.raises(ConvValueError, match="algo must be one of"):
        conv2d(x, w, algo="winograd")
    with pytest.raises(ConvValueError, match="info and progress"):
        conv2d(x, w, info=RunInfo())
    with pytest.raises(ConvValueError, match="info and progress"):
        conv2d(x, w, progress=lambda done, total: None)
    unknown = x[x[:, 0, 0] > 0]
    with pytest.raises(ConvValueError, match="unknown chunk sizes"):
        conv2d(unknown[None], w)


def test_dask_weights_are_computed():
    rng = np.random.default_rng(11)
    x = _random(rng, (2, 9, 9))
    w = _random(rng, (1, 2, 3, 3))
    y = conv2d(da.from_array(x, chunks=4), da.from_array(w), padding=1)
    assert_close(y.compute(), conv2d(x, w, padding=1, backend="numpy"))


@pytest.mark.slow
def test_on_a_local_cluster_of_worker_processes(tmp_path):
    """A real scheduler and worker processes on loopback: the graph pickles, the blocks
    run in other processes, and zarr_conv2d goes through the active client."""
    distributed = pytest.importorskip("distributed")
    zarr = pytest.importorskip("zarr")
    from convcli import zarr_conv2d

    rng = np.random.default_rng(12)
    x = _random(rng, (2, 3, 60, 50))
    w = _random(rng, (4, 3, 5, 5))
    b = _random(rng, (4,))
    kw = {"padding": "same", "padding_mode": "circular"}
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        y = conv2d(da.from_array(x, chunks=(1, 3, 16, 16)), w, b, backend="numpy", **kw)
        out = client.compute(y).result()
        src = tmp_path / "in.zarr"
        z = zarr.open_array(
            store=str(src), mode="w", shape=x[0].shape, chunks=(3, 16, 16), dtype="f4"
        )
        z[...] = x[0]
        zarr_conv2d(src, tmp_path / "out.zarr", w, b, backend="numpy", scheduler=None, **kw)
        pids = set(client.run(lambda: __import__("os").getpid()).values())
    import os

    assert len(pids) == 2 and os.getpid() not in pids
    expected = naive_for_spec(x, w, b, make_spec(x, w, b, **kw))
    assert_close(out, expected)
    assert_close(zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...], expected[0])
