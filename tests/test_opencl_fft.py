"""The OpenCL FFT path (``kernels_cl/fft_conv.cl``) against the naive reference.

Runs on whatever OpenCL device exists (PoCL's CPU device in CI); skips only where there
is none. Small tile sides are forced in some cases so that images span many tiles, an
odd tile count leaves a pair half empty, and tiles cross every border.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from convcli import backends, conv2d
from convcli.backends.opencl import fft as opencl_fft
from convcli.errors import BackendError, ConvValueError
from convcli.runinfo import RunInfo
from convcli.spec import make_spec
from tests.conftest import (
    assert_close,
    band_budget,
    require_device,
    run_twice_with_one_pocl_cache,
)
from tests.naive import naive_conv2d, naive_for_spec

MODES = ["zeros", "reflect", "replicate", "circular", "symmetric"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ocl():
    try:
        return backends.get_backend("opencl")
    except (BackendError, ImportError):
        pytest.skip("no OpenCL device")


def fft(ocl, x, w, b=None, **opts):
    """Run the FFT path; returns (result, reference, spec)."""
    spec = make_spec(x, w, b, **opts)
    info = RunInfo()
    out = opencl_fft.run(ocl, x, w, b, spec, info=info)
    assert info.algo == "fft"
    ref = naive_for_spec(x, w, b, spec)
    return out, ref, spec


def disk(k: int) -> np.ndarray:
    t = np.arange(k) - (k - 1) / 2
    d = (t[:, None] ** 2 + t[None, :] ** 2 <= ((k - 1) / 2) ** 2 + 0.5).astype(np.float32)
    return d / d.sum()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "shape, k, stride, dilation, tile",
    [
        ((1, 3, 45, 61), (7, 7), (1, 1), (1, 1), 32),  # many tiles, odd widths
        ((2, 2, 33, 40), (5, 3), (2, 3), (1, 1), 32),  # strides, batch
        ((1, 1, 50, 38), (3, 4), (1, 1), (3, 2), 32),  # dilation, even kernel width
        ((1, 2, 70, 90), (13, 9), (1, 2), (1, 1), 64),
        ((1, 1, 9, 11), (5, 5), (1, 1), (1, 1), 64),  # image smaller than a tile
    ],
)
def test_matches_reference(ocl, tune, mode, shape, k, stride, dilation, tile):
    require_device(local_mem=opencl_fft._tile_bytes(tile))
    tune(ocl, fft_tiles=(tile,))
    rng = np.random.default_rng(sum(shape) + k[0])
    x = rng.standard_normal(shape).astype(np.float32)
    c = shape[1]
    w = rng.standard_normal((c, 1, *k)).astype(np.float32)
    kh = (k[0] - 1) * dilation[0] + 1
    kw = (k[1] - 1) * dilation[1] + 1
    pad = (min(kh // 2, shape[2] - 1), min(kw // 2, shape[3] - 1))
    out, ref, _ = fft(
        ocl, x, w, padding=pad, stride=stride, dilation=dilation, groups=c, padding_mode=mode
    )
    assert_close(out, ref, "float32")


@pytest.mark.parametrize("tile", [32, 64, 128, 256])
def test_every_tile_side(ocl, tune, tile):
    require_device(local_mem=opencl_fft._tile_bytes(tile))  # 512 KB for 256: not on GPUs
    # one tile side per build: each transform length (T/8 vectors per row) is exercised
    tune(ocl, fft_tiles=(tile,))
    rng = np.random.default_rng(tile)
    x = rng.random((1, 2, tile + 37, tile + 5)).astype(np.float32)
    w = rng.standard_normal((2, 1, 9, 9)).astype(np.float32)
    out, ref, spec = fft(ocl, x, w, padding=4, groups=2)
    assert opencl_fft.plan(spec, None, ocl.settings).t == tile
    assert_close(out, ref, "float32")


def test_channel_multiplier_bias_and_asymmetric_padding(ocl, tune):
    tune(ocl, fft_tiles=(32,))
    rng = np.random.default_rng(3)
    x = rng.random((2, 2, 41, 35)).astype(np.float32)
    w = rng.standard_normal((6, 1, 6, 5)).astype(np.float32)  # 3 outputs per input
    b = rng.standard_normal(6).astype(np.float32)
    out, ref, _ = fft(ocl, x, w, b, padding="same", groups=2)  # 'same': odd extra px
    assert_close(out, ref, "float32")
    out, ref, _ = fft(ocl, x, w, b, padding=(0, 7), groups=2, padding_mode="reflect")
    assert_close(out, ref, "float32")


def test_float16_is_computed_in_float32(ocl):
    rng = np.random.default_rng(4)
    x = rng.random((1, 3, 40, 40)).astype(np.float16)
    w = np.repeat(disk(11)[None, None], 3, axis=0).astype(np.float16)
    y = conv2d(x, w, padding=5, groups=3, backend="opencl", algo="fft")
    ref = naive_conv2d(x, w, pad=(5, 5, 5, 5), groups=3)
    assert y.dtype == np.float16
    assert_close(y, ref, "float16")


def test_large_kernel_image_filter_end_to_end(ocl):
    require_device(cpu=True)  # auto runs FFT tiles (one work-item each) on CPUs only
    # the case the path exists for: a big disk blur of an RGB image, chosen by auto
    rng = np.random.default_rng(5)
    x = rng.random((1, 3, 300, 260)).astype(np.float32)
    w = np.repeat(disk(31)[None, None], 3, axis=0)
    info = RunInfo()
    y = conv2d(x, w, padding=15, groups=3, padding_mode="reflect", backend="opencl", info=info)
    assert info.algo == "fft"
    ref = naive_conv2d(x, w, pad=(15, 15, 15, 15), groups=3, padding_mode="reflect")
    assert_close(y, ref, "float32")


def test_tiles_keep_the_fft_and_its_accuracy(ocl):
    require_device(cpu=True)  # auto picks FFT tiles on CPUs only
    # row bands of a tiled call start their own FFT tile grid: same algorithm, results
    # within float32 rounding of the whole (not bit-identical, unlike the direct kernels)
    rng = np.random.default_rng(6)
    x = rng.random((3, 400, 90)).astype(np.float32)
    w = np.repeat(disk(25)[None, None], 3, axis=0)
    kw = dict(padding=12, groups=3, padding_mode="replicate", backend="opencl")
    whole_info, tiled_info = RunInfo(), RunInfo()
    whole = conv2d(x, w, info=whole_info, **kw)
    tiled = conv2d(x, w, max_memory=band_budget(x, w, 100, **kw), info=tiled_info, **kw)
    assert whole_info.algo == tiled_info.algo == "fft"
    assert tiled_info.tiles > 2
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=8 * np.finfo(np.float32).eps)
    ref = naive_conv2d(x[None], w, pad=(12, 12, 12, 12), groups=3, padding_mode="replicate")
    assert_close(tiled, ref[0], "float32")


@pytest.mark.parametrize(
    "w, groups, expect",
    [
        (np.repeat(disk(31)[None, None], 3, axis=0), 3, "fft"),  # big, rank > 1
        (np.ones((3, 1, 31, 31), np.float32) / 961, 3, "separable"),  # big, rank 1
        (np.repeat(disk(5)[None, None], 3, axis=0), 3, "direct"),  # small
    ],
)
def test_auto_choice(ocl, w, groups, expect):
    if expect == "fft":
        require_device(cpu=True)  # auto picks FFT tiles on CPUs only
    x = np.zeros((1, 3, 512, 512), np.float32)
    spec = make_spec(x, w, None, padding=w.shape[-1] // 2, groups=groups)
    assert ocl.plan_algo(spec, w) == expect


def test_estimates_favour_fft_only_for_large_kernels():
    x = np.zeros((1, 3, 2048, 2048), np.float32)
    small = make_spec(x, np.zeros((3, 1, 5, 5), np.float32), None, padding=2, groups=3)
    large = make_spec(x, np.zeros((3, 1, 25, 25), np.float32), None, padding=12, groups=3)
    assert not opencl_fft.pays(small)
    assert opencl_fft.pays(large)
    assert opencl_fft.estimate_seconds(large) < 0.3 * opencl_fft.direct_seconds(large)


@pytest.mark.parametrize(
    "x_shape, w_shape, dtype, message",
    [
        ((1, 4, 20, 20), (2, 4, 9, 9), np.float32, "depthwise"),
        ((1, 1, 20, 20), (1, 1, 9, 9), np.float64, "float32 and float16"),
    ],
)
def test_forced_fft_errors(ocl, x_shape, w_shape, dtype, message):
    # without fp64 the backend refuses float64 before any algorithm is considered
    require_device(dtype=np.dtype(dtype).name)
    x, w = np.ones(x_shape, dtype), np.ones(w_shape, dtype)
    with pytest.raises(ConvValueError, match="algo='fft' is not available") as err:
        conv2d(x, w, backend="opencl", algo="fft")
    assert message in str(err.value)


def test_forced_fft_past_the_tiles_runs_on_the_host(ocl):
    # a kernel wider than the device's FFT tiles (128 pixels across) is not an error:
    # NumPy's FFT runs it on the host, with a notice
    rng = np.random.default_rng(12)
    x = rng.random((1, 1, 150, 40)).astype(np.float32)
    w = rng.random((1, 1, 129, 3)).astype(np.float32)
    info = RunInfo()
    y = conv2d(x, w, backend="opencl", algo="fft", info=info)
    assert info.algo == "fft" and any("on the host" in n for n in info.notices)
    assert_close(y, naive_conv2d(x, w), "float32")


def test_tile_choice_respects_local_memory():
    x = np.zeros((1, 1, 1000, 1000), np.float32)
    spec = make_spec(x, np.zeros((1, 1, 25, 25), np.float32), None, padding=12)
    assert opencl_fft.plan(spec, local_mem=64 * 1024).t <= 64  # a GPU's 64 KB
    # 16 KB holds only 32 x 32 tiles: too small for a 25-pixel kernel
    assert "up to 16 pixels" in opencl_fft.why_not(spec, local_mem=16 * 1024)
    assert "local memory" in opencl_fft.why_not(spec, local_mem=4 * 1024)


_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    sys.path.insert(0, {root!r})
    from convcli import conv2d
    from convcli.runinfo import RunInfo
    from tests.naive import naive_conv2d, naive_for_spec

    rng = np.random.default_rng(0)
    x = rng.random((1, 3, 70, 90), dtype=np.float32)
    w = rng.standard_normal((3, 1, 13, 13)).astype(np.float32)
    info = RunInfo()
    out = conv2d(x, w, padding=6, groups=3, backend="opencl", algo="fft", info=info)
    ref = naive_conv2d(x, w, pad=(6, 6, 6, 6), groups=3)
    print(info.algo, "%.3e" % float(np.abs(out - ref).max() / np.abs(ref).max()))
    """
)


def test_second_process_uses_pocl_cache(ocl, tmp_path):
    first, second = run_twice_with_one_pocl_cache(_SCRIPT.format(root=str(ROOT)), tmp_path)
    for out in (first, second):
        algo, err = out.split()
        assert algo == "fft" and float(err) < 2e-5
