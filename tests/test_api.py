"""API-level behaviour: shapes, dtypes, validation messages, Conv2d, tiling."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
from conftest import assert_close, band_budget
from naive import naive_conv2d

from convcli import Conv2d, ConvTypeError, ConvValueError, RunInfo, conv2d


def _rand(rng, shape, dtype):
    a = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        a = a + 1j * rng.standard_normal(shape)
    return a.astype(dtype)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular", "symmetric"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "complex64"])
def test_matches_naive(backend, mode, dtype):
    rng = np.random.default_rng(1)
    x = _rand(rng, (2, 4, 9, 11), dtype)
    w = _rand(rng, (6, 2, 3, 4), dtype)
    b = _rand(rng, (6,), dtype)
    y = conv2d(
        x,
        w,
        b,
        stride=(2, 1),
        padding=(2, 3),
        dilation=(1, 2),
        groups=2,
        padding_mode=mode,
        backend=backend,
    )
    ref = naive_conv2d(x, w, b, (2, 1), (2, 2, 3, 3), (1, 2), 2, mode)
    assert y.dtype == np.dtype(dtype)
    assert_close(y, ref, dtype)


def test_same_padding_puts_extra_pixel_bottom_right(backend):
    x = np.zeros((1, 5, 5), np.float32)
    x[0, 0, 0] = 1.0
    w = np.zeros((1, 1, 2, 2), np.float32)
    w[0, 0, 1, 1] = 1.0  # picks pixel (i+1, j+1): total pad 1 goes bottom/right
    y = conv2d(x, w, padding="same", backend=backend)
    assert y.shape == (1, 5, 5)
    assert y[0, 0, 0] == 0.0 and y[0, 4, 4] == 0.0
    # with the extra pixel at the bottom/right the top-left input lands at (-1,-1): gone
    assert y.sum() == 0.0
    x[0, 1, 1] = 2.0
    y = conv2d(x, w, padding="same", backend=backend)
    assert y[0, 0, 0] == 2.0


def test_no_kernel_flip(backend):
    x = np.zeros((1, 3, 3), np.float32)
    x[0, 1, 1] = 1.0
    w = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    y = conv2d(x, w, padding=1, backend=backend)
    # correlation: out[i, j] = sum w[a, b] x[i+a-1, j+b-1] -> the kernel appears flipped
    np.testing.assert_array_equal(y[0], w[0, 0, ::-1, ::-1])


def test_float16_accumulates_in_float32(backend):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 16, 16)).astype(np.float16)
    w = rng.standard_normal((3, 3, 5, 5)).astype(np.float16)
    y = conv2d(x, w, padding=2, backend=backend)
    assert y.dtype == np.float16
    ref = naive_conv2d(x[None].astype(np.float64), w.astype(np.float64), pad=(2, 2, 2, 2))[0]
    assert_close(y.astype(np.float64), ref, "float16")


def test_zero_batch(backend):
    x = np.zeros((0, 3, 8, 8), np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    y = conv2d(x, w, padding=1, backend=backend)
    assert y.shape == (0, 4, 8, 8) and y.dtype == np.float32


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"groups": 2}, "expected input[1, 3, 8, 8] to have 6 channels"),
        ({"stride": 2, "padding": "same"}, "padding='same' is not supported for strided"),
        ({"stride": 0}, "non-positive stride is not supported"),
        ({"dilation": 0}, "dilation should be greater than zero"),
        ({"groups": 0}, "non-positive groups is not supported"),
        ({"padding": -1}, "negative padding is not supported"),
        ({"padding": "full"}, "Invalid padding string 'full'"),
        ({"padding_mode": "mirror"}, "padding_mode must be one of"),
        ({"padding": 8, "padding_mode": "reflect"}, "Padding size should be less than"),
        ({"padding": 9, "padding_mode": "circular"}, "wrapping around more than once"),
        ({"dilation": 5}, "Kernel size can't be greater than actual input size"),
        # torch's int64 limit; NumPy's index arithmetic raised OverflowError past it
        ({"stride": 2**63}, "stride 9223372036854775808 does not fit in a 64-bit integer"),
    ],
)
def test_validation_messages(kwargs, message):
    x = np.zeros((1, 3, 8, 8), np.float32)
    w = np.zeros((4, 3, 3, 3), np.float32)
    with pytest.raises(ConvValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        conv2d(x, w, backend="numpy", **kwargs)


@pytest.mark.parametrize(
    ("max_memory", "error", "message"),
    [
        ("1G", ConvTypeError, "max_memory must be a number of bytes, got '1G'"),
        (True, ConvTypeError, "max_memory must be a number of bytes, got True"),
        (float("nan"), ConvValueError, "max_memory must be a positive number of bytes"),
        (0, ConvValueError, "max_memory must be a positive number of bytes, got 0"),
    ],
)
def test_max_memory_must_be_a_positive_number(max_memory, error, message):
    """A string gave a bare TypeError from a comparison, NaN a refusal for 'nan YiB'."""
    x = np.zeros((1, 3, 8, 8), np.float32)
    w = np.zeros((4, 3, 3, 3), np.float32)
    with pytest.raises(error, match=message):
        conv2d(x, w, backend="numpy", max_memory=max_memory)


def test_validation_types():
    x = np.zeros((3, 8, 8), np.float32)
    w = np.zeros((4, 3, 3, 3), np.float32)
    with pytest.raises(ConvTypeError, match="Input type \\(Float\\) and weight type \\(Double"):
        conv2d(x, w.astype(np.float64))
    with pytest.raises(ConvValueError, match="expected bias to be 1-dimensional with 4"):
        conv2d(x, w, np.zeros(3, np.float32))
    with pytest.raises(ConvValueError, match="Expected 3D \\(unbatched\\) or 4D"):
        conv2d(x[0], w)
    with pytest.raises(ConvTypeError, match="supported dtypes"):
        conv2d(x.astype(np.int32), w.astype(np.int32))


def test_conv2d_layer_init_repr_and_save(tmp_path):
    layer = Conv2d(16, 33, (3, 5), stride=(2, 1), padding=(4, 2), dilation=(3, 1), seed=0)
    assert repr(layer) == (
        "Conv2d(16, 33, kernel_size=(3, 5), stride=(2, 1), padding=(4, 2), dilation=(3, 1))"
    )
    assert layer.weight.shape == (33, 16, 3, 5) and layer.bias.shape == (33,)
    bound = 1 / np.sqrt(16 * 3 * 5)
    assert np.abs(layer.weight).max() <= bound and np.abs(layer.weight).max() > 0.9 * bound
    x = np.random.default_rng(0).standard_normal((2, 16, 20, 30)).astype(np.float32)
    y = layer(x, backend="numpy")
    assert y.shape == (2, 33, 11, 30)  # (20+8-6-1)//2+1, (30+4-4-1)+1
    layer.save(tmp_path / "layer.npz")
    again = Conv2d.load(tmp_path / "layer.npz")
    assert repr(again) == repr(layer)
    np.testing.assert_array_equal(again(x, backend="numpy"), y)
    assert repr(Conv2d(4, 4, 3, groups=4, bias=False, padding="same", padding_mode="reflect")) == (
        "Conv2d(4, 4, kernel_size=(3, 3), stride=(1, 1), padding=same, groups=4, "
        "bias=False, padding_mode=reflect)"
    )


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular", "symmetric"])
def test_tiled_equals_untiled(backend, mode):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 37, 29)).astype(np.float32)
    w = rng.standard_normal((6, 1, 5, 3)).astype(np.float32)
    kw = dict(
        stride=(2, 1), padding=(3, 1), dilation=(2, 1), groups=3, padding_mode=mode, backend=backend
    )
    whole = conv2d(x, w, **kw)
    info = RunInfo()
    tiled = conv2d(x, w, max_memory=band_budget(x, w, 4, **kw), info=info, **kw)
    assert info.tiles > 2
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-6 * np.abs(whole).max())


def test_backend_registry_survives_submodule_imports(backend):
    # the registry function is not named like a submodule: importing the submodules
    # (as the backends themselves do) must not shadow it
    import convcli.backends.numpy.backend
    import convcli.backends.numpy.gemm
    import convcli.backends.opencl.backend  # noqa: F401
    from convcli import backends

    first = backends.get_backend(backend)
    assert backends.get_backend(backend) is first
    assert first.name == backend


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular", "symmetric"])
def test_tiles_run_the_algorithm_of_the_whole(backend, mode):
    # a 9x9 Gaussian on a tall image: the whole picks a fast path; row bands alone could
    # tip the cost model elsewhere. OpenCL tiles are bit-identical; NumPy's passes are
    # BLAS GEMMs whose rounding depends on the band's matrix shape: within 2 float32 ulps.
    rng = np.random.default_rng(4)
    x = rng.random((3, 300, 64)).astype(np.float32)
    g = np.exp(-0.5 * (np.arange(-4, 5) / 2.0) ** 2)
    w = np.tile((np.outer(g, g) / np.outer(g, g).sum()).astype(np.float32), (3, 1, 1, 1))
    kw = dict(padding="same", groups=3, padding_mode=mode, backend=backend)
    whole_info, tiled_info = RunInfo(), RunInfo()
    whole = conv2d(x, w, info=whole_info, **kw)
    budget = band_budget(x, w, 50, **kw)
    tiled = conv2d(x, w, max_memory=budget, info=tiled_info, **kw)
    assert tiled_info.tiles > 2
    assert tiled_info.algo == whole_info.algo
    if backend == "opencl":
        np.testing.assert_array_equal(tiled, whole)
    else:
        np.testing.assert_allclose(tiled, whole, rtol=0, atol=2 * np.finfo(np.float32).eps)


def test_progress_reports_rows_and_keeps_results(backend, monkeypatch):
    import convcli.api

    # split this small problem the way a large one is split
    monkeypatch.setattr(convcli.api, "PROGRESS_MIN_FLOPS", 1)
    rng = np.random.default_rng(5)
    x = rng.random((2, 3, 400, 300)).astype(np.float32)
    w = rng.standard_normal((8, 3, 7, 7)).astype(np.float32)
    seen: list[tuple[int, int]] = []
    info = RunInfo()
    y = conv2d(x, w, padding=3, backend=backend, info=info, progress=lambda *a: seen.append(a))
    whole = conv2d(x, w, padding=3, backend=backend)
    assert info.tiles >= 8 and len(seen) == info.tiles
    assert seen[-1] == (2 * 400, 2 * 400)
    assert all(a[0] < b[0] for a, b in itertools.pairwise(seen))
    assert_close(y, whole)


def test_progress_leaves_small_problems_whole():
    x = np.ones((3, 32, 32), np.float32)
    w = np.ones((3, 1, 3, 3), np.float32)
    seen = []
    info = RunInfo()
    conv2d(x, w, groups=3, backend="numpy", info=info, progress=lambda d, t: seen.append((d, t)))
    assert info.tiles == 1 and seen == [(30, 30)]


def test_opencl_tiles_of_a_winograd_layer_are_bit_identical():
    # Winograd computes 2x2 output tiles: bands must start at even output rows, whatever
    # height the memory limit gives them (odd heights rounded down)
    from conftest import opencl_available

    if not opencl_available():
        pytest.skip("no OpenCL device")
    from convcli.backends import get_backend
    from convcli.backends.opencl import plan as opencl_plan
    from convcli.spec import make_spec

    rng = np.random.default_rng(9)
    x = rng.random((1, 32, 41, 30)).astype(np.float32)
    w = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
    spec = make_spec(x, w, None, padding=1)
    assert opencl_plan.choose(spec, w)[0].kernel == "winograd"
    assert get_backend("opencl").plan_algo(spec, w) == "gemm"
    whole = conv2d(x, w, padding=1, backend="opencl")
    for rows in (3, 5, 7):  # limits that give bands of this many rows, before rounding
        info = RunInfo()
        budget = band_budget(x, w, rows, padding=1, backend="opencl")
        tiled = conv2d(x, w, padding=1, backend="opencl", max_memory=budget, info=info)
        assert info.tiles > 2
        np.testing.assert_array_equal(tiled, whole)


def test_wrong_argument_types_are_named_not_internal_attribute_errors(tmp_path, monkeypatch):
    """None for the input or weight, a dict for info, None for a batch's filter, a list
    of file names for its tasks, one path string for plan_files' inputs: each raised a
    bare AttributeError from deep inside (or, for the string, took each character as an
    input). Each is now a ConvTypeError naming the argument; Task takes strings."""
    import convcli
    from convcli import batch as cb

    x = np.zeros((1, 1, 5, 5), np.float32)
    w = np.ones((1, 1, 3, 3), np.float32)
    cases = [
        (lambda: convcli.conv2d(None, w), "input must be a numpy.ndarray, got NoneType"),
        (lambda: convcli.conv2d(x, None), "weight must be a numpy.ndarray, got NoneType"),
        (lambda: convcli.Conv2d(1, 1, 3)(None), "input must be a numpy.ndarray"),
        (lambda: convcli.conv2d(x, w, info={}), "info must be a convcli.RunInfo, got dict"),
        (lambda: cb.plan_files("a.png", "o.png"), "inputs must be a list of paths"),
        (lambda: cb.run_tasks([], None), "filt must be a convcli.Filter, got NoneType"),
        (lambda: cb.run_tasks(["a.png"], convcli.Filter.from_array(w[0, 0])), "got str 'a.png'"),
        (lambda: cb.Task(None, "o.png"), "Task.src must be a path, got None"),
    ]
    for call, words in cases:
        with pytest.raises(ConvTypeError, match=re.escape(words)):
            call()
    monkeypatch.chdir(tmp_path)
    convcli.io.write_image("a.png", np.random.default_rng(0).random((3, 6, 7)))
    res = cb.run_tasks([cb.Task("a.png", "o.png")], convcli.Filter.from_array(w[0, 0] / 9))
    assert res.ok and (tmp_path / "o.png").exists()
