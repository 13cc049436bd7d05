"""The fast OpenCL paths (separable, dw_direct, dense_gemm) against the naive reference.

Each test calls :func:`convcli.backends.opencl.plan.run` directly, so it knows which
path ran (``info.algo``) and cannot pass through the generic kernel by accident; a few
go through :func:`convcli.conv2d` end to end. Runs on whatever OpenCL device exists
(PoCL's CPU device in CI); skips only where there is none.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from convcli import backends, conv2d
from convcli.backends.numpy.threads import gemm_threads
from convcli.backends.opencl import gemm
from convcli.backends.opencl import plan as opencl_plan
from convcli.backends.opencl import winograd as opencl_winograd
from convcli.backends.opencl.settings import DEFAULT
from convcli.errors import BackendError, ConvValueError
from convcli.runinfo import RunInfo
from convcli.spec import make_spec
from tests.conftest import assert_close, run_twice_with_one_pocl_cache
from tests.naive import naive_conv2d, naive_for_spec

MODES = ["zeros", "reflect", "replicate", "circular", "symmetric"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def default_backend():
    try:
        return backends.get_backend("opencl")
    except (BackendError, ImportError):
        pytest.skip("no OpenCL device")


@pytest.fixture
def ocl(default_backend, tune):
    """The default device's backend on its CPU-shaped kernels, on every device: GPU-type
    devices (Oclgrind in CI) would otherwise run the GPU-shaped ones
    (tests/test_opencl_gpu.py). A 1x1 layer of one image runs the device's kernels, not
    the host's matrix product (``host_pointwise_max_batch``)."""
    return tune(default_backend, gpu_kernels=False, host_pointwise_max_batch=0)


def fresh_backend(tune, **changes):
    """A new backend on the default device (its own caches), CPU-shaped kernels, 1x1
    layers on the device."""
    from convcli.backends.opencl.backend import OpenCLBackend

    try:
        be = OpenCLBackend.create()
    except (BackendError, ImportError):
        pytest.skip("no OpenCL device")
    return tune(be, gpu_kernels=False, host_pointwise_max_batch=0, **changes)


def fast(ocl, x, w, b=None, *, algo="auto", **opts):
    """Run the fast path; returns (result, reference, info)."""
    spec = make_spec(x, w, b, **opts)
    info = RunInfo()
    out = opencl_plan.run(ocl, x, w, b, spec, algo=algo, info=info)
    ref = naive_for_spec(x, w, b, spec)
    return out, ref, info


def gaussian(k: int, sigma: float) -> np.ndarray:
    t = np.arange(k) - (k - 1) / 2
    g = np.exp(-(t**2) / (2 * sigma**2))
    return np.outer(g, g) / g.sum() ** 2


@pytest.fixture(params=["runtime sizes", "fixed sizes"])
def dw_sizes(request, ocl, tune):
    """Run dw_direct with image sizes as kernel arguments, then as build defines."""
    limit = 0 if request.param == "runtime sizes" else 1 << 62
    tune(ocl, dw_fixed_pixels=limit)
    return request.param


def rng_arrays(seed, xshape, wshape, bias=True, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xshape).astype(dtype)
    w = rng.standard_normal(wshape).astype(dtype)
    b = rng.standard_normal(wshape[0]).astype(dtype) if bias else None
    return x, w, b


# ---------------------------------------------------------------- dw_direct (depthwise)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "hw, k, stride, dilation, padding",
    [
        ((19, 29), (3, 3), 1, 1, 1),
        ((17, 37), (5, 3), (2, 1), 1, (2, 1)),
        ((21, 26), (3, 5), (1, 2), (2, 1), (2, 4)),
        ((16, 40), (3, 3), 3, 2, 2),
        ((9, 11), (2, 4), 1, 1, "same"),
    ],
)
def test_dw_direct_matches_naive(ocl, dw_sizes, mode, hw, k, stride, dilation, padding):
    x, w, b = rng_arrays(1, (2, 3, *hw), (6, 1, *k))  # multiplier 2
    out, ref, info = fast(
        ocl,
        x,
        w,
        b,
        stride=stride,
        dilation=dilation,
        padding=padding,
        groups=3,
        padding_mode=mode,
    )
    assert info.algo == "direct"
    assert out.dtype == np.float32
    assert_close(out, ref, "float32")


@pytest.mark.parametrize(
    "hw, k, padding",
    [((1, 1), (1, 1), 0), ((1, 7), (1, 3), (0, 1)), ((5, 3), (3, 3), 1), ((2, 9), (3, 3), 1)],
)
@pytest.mark.parametrize("mode", ["zeros", "replicate", "circular"])
def test_dw_direct_tiny_images(ocl, dw_sizes, hw, k, padding, mode):
    # widths below and just above one float8 vector, single rows
    x, w, b = rng_arrays(2, (1, 2, *hw), (2, 1, *k))
    out, ref, info = fast(ocl, x, w, b, padding=padding, groups=2, padding_mode=mode)
    assert info.algo == "direct"
    assert_close(out, ref, "float32")


@pytest.mark.parametrize("groups, cin, cout", [(1, 3, 2), (2, 8, 4), (1, 5, 3)])
def test_forced_direct_on_grouped_layers(ocl, groups, cin, cout):
    # dw_direct sums C_in/groups planes when 'direct' is forced on a multi-channel layer
    x, w, b = rng_arrays(3, (2, cin, 13, 21), (cout, cin // groups, 3, 3))
    out, ref, info = fast(ocl, x, w, b, algo="direct", padding=1, groups=groups)
    assert info.algo == "direct"
    assert_close(out, ref, "float32")


# ---------------------------------------------------------------- dw_channels


def _dw_channels_cases(count: int) -> list[tuple]:
    """Random CNN depthwise layers (seeded): channels 96-1152 (some not a multiple of
    8), maps 7-56, kernels 3/5/7, stride 1/2, channel multipliers, bias or none; every
    one with an output at most DW_CHANNELS_MAX_WO wide, so that dw_channels runs."""
    rng = np.random.default_rng(15)
    cases = []
    while len(cases) < count:
        c = int(rng.integers(96, 1153))
        hw = int(rng.integers(7, 57))
        k = int(rng.choice([3, 5, 7]))
        stride = int(rng.choice([1, 2]))
        mult = int(rng.choice([1, 1, 2]))
        if (hw + 2 * (k // 2) - k) // stride + 1 > 32 or c * mult * hw * hw > 1_500_000:
            continue
        cases.append((c, hw, k, stride, mult, bool(rng.integers(2)), int(rng.integers(1, 3))))
    return cases


@pytest.mark.parametrize("c, hw, k, stride, mult, bias, n", _dw_channels_cases(8))
def test_dw_channels_matches_naive(ocl, c, hw, k, stride, mult, bias, n):
    x, w, b = rng_arrays(c + hw, (n, c, hw, hw + 1), (c * mult, 1, k, k), bias=bias)
    out, ref, info = fast(ocl, x, w, b, stride=stride, padding=k // 2, groups=c)
    assert info.algo == "direct"
    assert_close(out, ref, "float32")


@pytest.mark.parametrize(
    "c, mult, hw, k, stride, dilation, padding, kernel",
    [
        # 4 lanes of the last block past C_OUT
        (36, 1, (7, 9), (3, 3), 1, 1, 1, "dw_blocks"),
        (36, 1, (7, 9), (3, 3), 2, 1, 1, "dw_blocks"),  # 3x3 s2
        (36, 1, (7, 9), (2, 2), 2, 1, 0, "dw_channels"),  # 2x2 s2: one tap per pixel
        (45, 3, (10, 10), (5, 5), 2, 1, 2, "dw_channels"),  # multiplier 3: blocks straddle
        # asymmetric everything
        (64, 1, (13, 11), (3, 5), (2, 1), (2, 1), (2, 3), "dw_blocks"),
        (64, 1, (13, 11), (3, 3), (2, 3), (2, 1), (2, 3), "dw_channels"),
        (96, 1, (1, 1), (3, 3), 1, 1, 1, "dw_blocks"),  # a 1x1 map: all but one tap padding
        # 40 columns: segments of 7, the last one short (the copy pads past the plane)
        (128, 1, (16, 40), (7, 7), 1, 2, 0, "dw_blocks"),
        (44, 1, (9, 13), (7, 7), 1, 1, (3, 1), "dw_blocks"),  # more padding than rows
    ],
)
def test_dw_channels_edges(ocl, c, mult, hw, k, stride, dilation, padding, kernel):
    x, w, b = rng_arrays(c, (2, c, *hw), (c * mult, 1, *k))
    spec = make_spec(x, w, b, stride=stride, dilation=dilation, padding=padding, groups=c)
    assert opencl_plan.choose(spec, w, cpu=True)[0].kernel == kernel
    out, ref, _ = fast(ocl, x, w, b, stride=stride, dilation=dilation, padding=padding, groups=c)
    assert_close(out, ref, "float32")


@pytest.mark.parametrize("wd", [1, 2, 3, 5, 6, 8, 11, 16, 17])
def test_dw_blocks_and_dw_groups_row_widths(ocl, wd):
    """Every segment width's vector stores (1 to 8 columns, in float4/float2/float
    pieces), a partial last segment (17 columns), the copy's 8-column groups with and
    without an overlapping last one, and lanes past C (44 channels)."""
    for c, cin_g in ((44, 1), (24, 8)):
        x, w, b = rng_arrays(wd + c, (2, c, 5, wd), (c, cin_g, 3, 3))
        groups = c // cin_g
        spec = make_spec(x, w, b, padding=1, groups=groups)
        assert opencl_plan.choose(spec, w, cpu=True)[0].kernel == (
            "dw_blocks" if cin_g == 1 else "dw_groups"
        )
        out, ref, _ = fast(ocl, x, w, b, padding=1, groups=groups)
        assert_close(out, ref, "float32")


@pytest.mark.parametrize(
    "c, hw, k, padding, transpose",
    [
        (40, (7, 7), 3, 1, 2),  # 7-wide rows: 8 values read on into the next row
        (24, (6, 5), 7, 3, 2),  # 5-wide: the last row (2 values left) gathers
        (16, (1, 7), 3, 1, 2),  # one row: fewer than 8 values, gathered
        (16, (5, 6), 3, 1, 0),  # no room for 8 columns in the padded row
        (16, (3, 13), 3, 1, 1),
    ],
)
def test_dw_to_blocks_narrow_rows(ocl, c, hw, k, padding, transpose):
    """The blocked copy of rows narrower than 8: one transposed group of 8 columns
    where the plane holds 8 more values and the padded row has room, else gathers."""
    from convcli.backends.opencl import depthwise

    x, w, b = rng_arrays(c + hw[1], (2, c, *hw), (c, 1, k, k))
    spec = make_spec(x, w, b, padding=padding, groups=c)
    assert opencl_plan.choose(spec, w, cpu=True)[0].kernel == "dw_blocks"
    assert depthwise.blocks_programs(spec, DEFAULT)[0][1]["TRANSPOSE"] == transpose
    out, ref, _ = fast(ocl, x, w, b, padding=padding, groups=c)
    assert_close(out, ref, "float32")


def test_dw_blocks_after_a_larger_layer_and_without_bias(ocl):
    """The blocked copy's scratch buffer is shared: a smaller layer after a larger one
    reads only its own blocks, and a layer without bias adds nothing."""
    for c, hw, bias in ((192, 28, True), (40, 7, False), (384, 14, True)):
        x, w, b = rng_arrays(c + hw, (2, c, hw, hw), (c, 1, 7, 7), bias=bias)
        out, ref, _ = fast(ocl, x, w, b, padding=3, groups=c)
        assert opencl_plan.choose(make_spec(x, w, b, padding=3, groups=c), w)[0].kernel == (
            "dw_blocks"
        )
        assert_close(out, ref, "float32")


@pytest.mark.parametrize(
    "k, hw, kernel",
    [
        (7, 56, "dw_blocks"),
        (7, 70, "dw_blocks"),
        (7, 120, "dw_direct"),
        (5, 56, "dw_blocks"),
        (3, 56, "dw_blocks"),
        (3, 112, "dw_blocks"),
    ],
)
def test_dw_blocks_takes_wide_rows_for_large_kernels(ocl, k, hw, kernel):
    # 3x3 and larger kernels on rows up to 112 wide (copied in local memory): dw_blocks,
    # not dw_wide or dw_direct
    x, w, b = rng_arrays(k, (1, 40, hw, hw), (40, 1, k, k))
    spec = make_spec(x, w, b, padding=k // 2, groups=40)
    assert opencl_plan.choose(spec, w, cpu=True)[0].kernel == kernel
    out, ref, _ = fast(ocl, x, w, b, padding=k // 2, groups=40)
    assert_close(out, ref, "float32")


@pytest.mark.parametrize(
    "c, n, hw, k, stride, padding",
    [
        (8, 2, (9, 13), (3, 3), 1, 1),  # one block
        (13, 1, (7, 12), (5, 5), 1, 2),  # one block and 5 lanes
        (16, 2, (20, 111), (3, 3), 2, 1),  # stride 2, a 56-wide output row
        (24, 1, (9, 100), (3, 3), (1, 2), (1, 0)),  # strided along the row only
    ],
)
def test_dw_blocks_few_channels_and_wide_strided_rows(ocl, c, n, hw, k, stride, padding):
    x, w, b = rng_arrays(c + hw[1], (n, c, *hw), (c, 1, *k))
    spec = make_spec(x, w, b, stride=stride, padding=padding, groups=c)
    assert opencl_plan.choose(spec, w, cpu=True)[0].kernel == "dw_blocks"
    out, ref, _ = fast(ocl, x, w, b, stride=stride, padding=padding, groups=c)
    assert_close(out, ref, "float32")


def test_dw_blocks_not_for_large_strided_inputs(tune, ocl):
    # a strided layer whose input is larger than dw_blocks_strided_max_bytes keeps
    # dw_direct on rows over dw_channels_max_wo where dw_to_blocks would copy it (the
    # copy would leave the caches); a fused dw_blocks copies in local memory
    x = np.zeros((2, 16, 30, 111), np.float32)
    w = np.zeros((16, 1, 3, 3), np.float32)
    spec = make_spec(x, w, None, stride=2, padding=1, groups=16)
    assert opencl_plan.choose(spec, w, cpu=True)[0].kernel == "dw_blocks"
    small = tune(ocl, dw_blocks_strided_max_bytes=x.nbytes - 1).settings
    assert opencl_plan.choose(spec, w, cpu=True, settings=small)[0].kernel == "dw_blocks"
    unfused = tune(ocl, dw_blocks_fused=False).settings
    assert opencl_plan.choose(spec, w, cpu=True, settings=unfused)[0].kernel == "dw_direct"


def test_dw_blocks_over_the_local_memory_copies_first(ocl, tune, monkeypatch):
    """A block whose rows need more local memory than the device has runs dw_to_blocks
    first (the fused build is not asked for)."""
    from dataclasses import replace as dc_replace

    be = fresh_backend(tune, inline_max_macs=0)
    x, w, b = rng_arrays(5, (2, 24, 20, 30), (24, 1, 3, 3))
    spec = make_spec(x, w, b, padding=1, groups=24)
    monkeypatch.setattr(be, "limits", dc_replace(be.limits, local_mem_bytes=1024))
    out = opencl_plan.run(be, x, w, b, spec, algo="auto", info=RunInfo())
    assert_close(out, naive_for_spec(x, w, b, spec), "float32")
    assert sorted(name for name, _ in be._programs) == ["dw_blocks", "dw_to_blocks"]


@pytest.mark.parametrize("limit", [1, 5, 16])
def test_dw_blocks_fused_in_smaller_work_groups(tune, monkeypatch, limit):
    """A device that runs fewer items a group than a block's rows and segments: each
    group copies the rows its own output rows reach (and items past the last row or
    segment still meet the barrier)."""
    from convcli.backends.opencl.runtime import Runtime

    be = fresh_backend(tune, inline_max_macs=0)
    monkeypatch.setattr(Runtime, "_group_limit", lambda self, kernel: limit)
    for c, hw, k, stride in ((24, (14, 14), 3, 1), (16, (15, 23), 5, 2)):
        x, w, b = rng_arrays(c + limit, (2, c, *hw), (c, 1, k, k))
        spec = make_spec(x, w, b, stride=stride, padding=k // 2, groups=c)
        out = opencl_plan.run(be, x, w, b, spec, algo="auto", info=RunInfo())
        assert_close(out, naive_for_spec(x, w, b, spec), "float32")
    assert sorted(name for name, _ in be._programs) == ["dw_blocks", "dw_blocks"]


def test_dw_blocks_off_runs_dw_channels(ocl, tune):
    x, w, b = rng_arrays(3, (1, 64, 14, 14), (64, 1, 5, 5))
    spec = make_spec(x, w, b, padding=2, groups=64)
    assert opencl_plan.choose(spec, w, cpu=True)[0].kernel == "dw_blocks"
    tune(ocl, dw_blocks=False)
    assert opencl_plan.choose(spec, w, cpu=True, settings=ocl.settings)[0].kernel == ("dw_channels")
    out, ref, _ = fast(ocl, x, w, b, padding=2, groups=64)
    assert_close(out, ref, "float32")


@pytest.mark.parametrize(
    "c, hw, mode, cpu, kernel",
    [
        (96, 14, "zeros", True, "dw_blocks"),
        (96, 14, "zeros", False, "dw_direct"),  # GPUs keep their kernels
        (96, 14, "reflect", True, "dw_direct"),  # padding maps: dw_direct's index maps
        (16, 14, "zeros", True, "dw_blocks"),  # 8 channels or more: blocks of 8
        (4, 14, "zeros", True, "dw_direct"),  # fewer: float8 along the width
        (96, 56, "zeros", True, "dw_blocks"),  # rows up to 112 wide: blocks too
        (96, 57, "zeros", True, "dw_blocks"),
        (96, 112, "zeros", True, "dw_blocks"),
        (96, 120, "zeros", True, "dw_direct"),  # wider: dw_direct
    ],
)
def test_dw_channels_only_where_it_pays(c, hw, mode, cpu, kernel):
    x = np.ones((1, c, hw, hw), np.float32)
    w = np.random.default_rng(0).standard_normal((c, 1, 3, 3)).astype(np.float32)
    spec = make_spec(x, w, None, padding=1, groups=c, padding_mode=mode)
    assert opencl_plan.choose(spec, w, cpu=cpu)[0].kernel == kernel


# ---------------------------------------------------------------- dw_groups


@pytest.mark.parametrize(
    "c, n, hw, stride, dilation, padding, bias",
    [
        (208, 2, (14, 14), 1, 1, 1, True),  # regnet: two segments of 7
        (440, 1, (7, 7), 1, 1, 1, False),  # one segment
        (208, 3, (28, 28), 2, 1, 1, True),  # stride 2, 14 wide
        (104, 2, (28, 28), 1, 1, 1, False),  # four segments: the middle ones unchecked
        (48, 2, (23, 19), 2, 1, 1, True),  # odd sizes, stride 2, a short last segment
        (16, 2, (9, 31), 1, 2, 2, False),  # dilation, 31 columns: 4 segments of 8
        (16, 1, (5, 8), 1, 1, (1, 9), True),  # middle segments in the padding (checked)
        (24, 2, (6, 11), (2, 3), (1, 2), (2, 0), True),  # asymmetric everything
        (32, 1, (1, 1), 1, 1, 1, True),  # a 1x1 map: all but one tap padding
        (16, 1, (4, 5), 1, 1, 3, False),  # more padding than rows
        (16, 2, (6, 111), 2, 1, 1, True),  # a 56-wide output row: 7 segments
    ],
)
def test_dw_groups_matches_naive(ocl, c, n, hw, stride, dilation, padding, bias):
    # grouped layers of 8 input and 8 output channels a group (regnet's)
    x, w, b = rng_arrays(c + hw[1], (n, c, *hw), (c, 8, 3, 3), bias=bias)
    opts = dict(stride=stride, dilation=dilation, padding=padding, groups=c // 8)
    spec = make_spec(x, w, b, **opts)
    assert opencl_plan.choose(spec, w, cpu=True)[0].kernel == "dw_groups"
    out, ref, info = fast(ocl, x, w, b, **opts)
    assert info.algo == "direct"
    assert_close(out, ref, "float32")


@pytest.mark.parametrize(
    "c, cin_g, hw, k, stride, padding",
    [
        (64, 8, 12, (5, 5), 1, 2),
        (24, 8, 9, (1, 3), 1, (0, 1)),
        (48, 16, 11, (3, 3), 1, 1),  # 16 channels a group: two output blocks each
        (64, 32, 10, (3, 3), 2, 1),  # 7-wide output, 32 a group
        (128, 64, 4, (3, 3), 1, 1),
    ],
)
def test_dw_groups_kernel_sizes_and_wider_groups(ocl, c, cin_g, hw, k, stride, padding):
    """Other kernel sizes, and groups of 16-64 channels (several blocks of 8 outputs
    a group, every one reading all of the group's input channels)."""
    x, w, b = rng_arrays(c + hw, (2, c, hw, hw + 3), (c, cin_g, *k))
    spec = make_spec(x, w, b, stride=stride, padding=padding, groups=c // cin_g)
    assert opencl_plan.choose(spec, w, cpu=True)[0].kernel == "dw_groups"
    out, ref, info = fast(ocl, x, w, b, stride=stride, padding=padding, groups=c // cin_g)
    assert info.algo == "direct"
    assert_close(out, ref, "float32")


@pytest.mark.parametrize(
    "cin_g, cout_g, hw, mode, cpu, kernel",
    [
        (8, 8, 14, "zeros", True, "dw_groups"),
        (8, 8, 14, "zeros", False, "dense_gemm"),  # GPUs keep their kernels
        (8, 8, 14, "reflect", True, "dense_gemm"),  # padding maps: dense_gemm's
        (8, 8, 120, "zeros", True, "dense_gemm"),  # rows over 112: dense_gemm
        (8, 16, 14, "zeros", True, "dense_gemm"),  # not as many in as out
        (4, 4, 14, "zeros", True, "dense_gemm"),  # not a multiple of 8
        (16, 16, 56, "zeros", True, "dw_groups"),
        (32, 32, 14, "zeros", True, "dw_groups"),  # 7-wide outputs: up to 64 a group
        (64, 64, 14, "zeros", True, "dw_groups"),
        (32, 32, 28, "zeros", True, "dense_gemm"),  # wider: dense_gemm's tiles
        (128, 128, 14, "zeros", True, "dense_gemm"),
    ],
)
def test_dw_groups_only_where_it_pays(cin_g, cout_g, hw, mode, cpu, kernel):
    x = np.ones((1, 8 * cin_g, hw, hw), np.float32)
    w = np.ones((8 * cout_g, cin_g, 3, 3), np.float32)
    spec = make_spec(x, w, None, stride=2, padding=1, groups=8, padding_mode=mode)
    assert opencl_plan.choose(spec, w, cpu=cpu)[0].kernel == kernel


def test_dw_groups_off_runs_dense_gemm(ocl, tune):
    x, w, b = rng_arrays(5, (1, 64, 14, 14), (64, 8, 3, 3))
    tune(ocl, dw_groups=False)
    out, ref, info = fast(ocl, x, w, b, padding=1, groups=8)
    assert info.algo == "gemm"
    assert_close(out, ref, "float32")


# ---------------------------------------------------------------- separable


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "k, stride, dilation, padding",
    [(5, 1, 1, "same"), (7, 2, 1, 3), (5, (1, 2), (2, 1), (4, 2)), (4, 1, 1, "same")],
)
def test_separable_matches_naive(ocl, dw_sizes, mode, k, stride, dilation, padding):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 23, 35)).astype(np.float32)
    col = rng.standard_normal((3, 1, k, 1))
    row = rng.standard_normal((3, 1, 1, k))
    w = (col * row).astype(np.float32)  # rank 1 per channel, different per channel
    b = rng.standard_normal(3).astype(np.float32)
    out, ref, info = fast(
        ocl,
        x,
        w,
        b,
        algo="separable",
        stride=stride,
        dilation=dilation,
        padding=padding,
        groups=3,
        padding_mode=mode,
    )
    assert info.algo == "separable"
    assert_close(out, ref, "float32")


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate"])
def test_auto_picks_separable_for_gaussian_and_box(ocl, mode):
    rng = np.random.default_rng(5)
    x = rng.random((1, 3, 40, 45)).astype(np.float32)
    for k2d in (gaussian(5, 1.1), np.full((7, 7), 1 / 49)):
        w = np.repeat(k2d[None, None], 3, axis=0).astype(np.float32)
        out, ref, info = fast(ocl, x, w, padding="same", groups=3, padding_mode=mode)
        assert info.algo == "separable"
        assert_close(out, ref, "float32")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("hw, k, stride", [((45, 37), 9, 1), ((70, 13), 15, 1), ((20, 30), 5, 2)])
def test_box_running_sums(ocl, dw_sizes, mode, hw, k, stride):
    # constant column factor: the vertical pass runs by running sums (sep_boxsum), which
    # restart every 32 rows; signed data exercises the cancellation
    rng = np.random.default_rng(15)
    x = rng.standard_normal((1, 2, *hw)).astype(np.float32)
    w = np.stack([np.full((k, k), 1 / k**2), np.full((k, k), -2.0)])[:, None]
    w = w.astype(np.float32)
    out, ref, info = fast(ocl, x, w, stride=stride, padding=k // 2, groups=2, padding_mode=mode)
    assert info.algo == "separable"
    assert_close(out, ref, "float32")


def test_box_running_sums_in_several_strips(ocl, tune):
    # images wider than one item's strip (4096 columns) split into strips; force it small
    tune(ocl, box_max_xv=2, box_rows=5)
    rng = np.random.default_rng(17)
    x = rng.standard_normal((2, 3, 23, 37)).astype(np.float32)
    w = np.full((3, 1, 7, 3), 0.25, np.float32)
    out, ref, info = fast(ocl, x, w, padding=(3, 1), groups=3, padding_mode="reflect")
    assert info.algo == "separable"
    assert_close(out, ref, "float32")


# ------------------------------------------------- one build per filter, any image size


@pytest.mark.parametrize(
    "k2d, algo, programs",
    [
        (gaussian(5, 1.1), "separable", 2),  # vertical + horizontal dw_direct pass
        (np.full((7, 7), 1 / 49), "separable", 2),  # sep_boxsum + horizontal pass
        (np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]]), "direct", 1),
    ],
)
@pytest.mark.parametrize("mode", ["reflect", "zeros"])
def test_image_sizes_share_one_build(k2d, algo, programs, mode, tune):
    # Image sizes are kernel arguments, not build defines: portrait, landscape and a
    # batch of another size reuse the first image's programs (a fresh backend, so the
    # count is this test's alone). Small planes as large ones, to keep the test fast.
    be = fresh_backend(tune, dw_fixed_pixels=0)
    rng = np.random.default_rng(23)
    w = np.repeat(np.asarray(k2d, np.float32)[None, None], 3, axis=0)
    for i, shape in enumerate([(1, 37, 70), (1, 70, 37), (2, 53, 91), (1, 9, 4100)]):
        n, h, wd = shape
        x = rng.random((n, 3, h, wd), dtype=np.float32)
        spec = make_spec(x, w, None, padding="same", groups=3, padding_mode=mode)
        info = RunInfo()
        launched = len(be._launched)
        out = opencl_plan.run(be, x, w, None, spec, algo="auto", info=info)
        assert info.algo == algo
        assert len(be._programs) == programs
        # later sizes build nothing, but a new work-group size is a first-launch compile
        new_local_size = len(be._launched) > launched
        assert (info.timings.get("build", 0.0) > 0) == (i == 0 or new_local_size)
        ref = naive_conv2d(x, w, None, pad=spec.pad, groups=3, padding_mode=mode)
        assert_close(out, ref, "float32")


def test_photo_sizes_share_one_build_by_default(tune):
    # Planes over dw_fixed_pixels (photos) take sizes as arguments; smaller ones (CNN
    # feature maps, sizes repeat) get a build per size with constant sizes.
    be = fresh_backend(tune)
    rng = np.random.default_rng(31)
    w = np.repeat(gaussian(5, 1.1)[None, None], 3, axis=0).astype(np.float32)
    side = int(be.settings.dw_fixed_pixels**0.5)
    shapes = [(side + 9, side + 40), (side + 40, side + 9), (20, 30), (30, 20)]
    for shape, count in zip(shapes, [2, 2, 4, 6], strict=True):
        x = rng.random((1, 3, *shape), dtype=np.float32)
        spec = make_spec(x, w, None, padding="same", groups=3, padding_mode="reflect")
        out = opencl_plan.run(be, x, w, None, spec, algo="auto", info=RunInfo())
        assert len(be._programs) == count
        ref = conv2d(x, w, padding="same", groups=3, padding_mode="reflect", backend="numpy")
        assert_close(out, ref, "float32")


def test_separable_depth_multiplier_and_single_channel(ocl):
    rng = np.random.default_rng(6)
    x = rng.random((1, 1, 30, 17)).astype(np.float32)
    w = np.stack([gaussian(9, s) for s in (1.0, 2.0, 3.0)])[:, None].astype(np.float32)
    out, ref, info = fast(ocl, x, w, padding=4, padding_mode="reflect")
    assert info.algo == "separable"
    assert_close(out, ref, "float32")


# ---------------------------------------------------------------- dense_gemm


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "cin, cout, groups, k, stride, dilation, padding",
    [
        (16, 40, 1, (3, 3), 1, 1, 1),  # 40 = one full and one partial block of 32
        (8, 16, 2, (3, 3), 2, 2, 2),  # groups, stride and dilation
        (3, 16, 1, (7, 7), 2, 1, 3),  # W9's shape, smaller image
        (6, 12, 1, (2, 3), (1, 2), (2, 1), (1, 2)),
        (12, 24, 3, (1, 1), 1, 1, 0),  # 1x1 with groups
    ],
)
def test_dense_gemm_matches_naive(ocl, tune, mode, cin, cout, groups, k, stride, dilation, padding):
    tune(ocl, winograd=False)  # the direct GEMM, not its Winograd form
    x, w, b = rng_arrays(7, (2, cin, 15, 19), (cout, cin // groups, *k))
    out, ref, info = fast(
        ocl,
        x,
        w,
        b,
        stride=stride,
        dilation=dilation,
        padding=padding,
        groups=groups,
        padding_mode=mode,
    )
    assert info.algo == "gemm"
    assert_close(out, ref, "float32")


@pytest.mark.parametrize("unchunked", [4, 0])
def test_dense_gemm_stem_in_one_chunk(ocl, tune, unchunked):
    # a stem (3 input channels, 7x7 s2 p3, 40 output channels: blocks of 32 whose
    # 19 KB of weights exceed the L1 budget) runs without input-channel chunks and
    # strips, or (for the comparison) in chunks of 2 and 1 channels
    from convcli.backends.opencl import gemm as dense

    tune(ocl, winograd=False, dense_flat=False, dense_unchunked_max_cin=unchunked)
    x, w, b = rng_arrays(8, (2, 3, 23, 21), (40, 3, 7, 7))
    spec = make_spec(x, w, b, stride=2, padding=3)
    d = dense.dense_defines(spec, ocl.is_cpu, ocl.settings)
    if unchunked or not ocl.is_cpu:
        assert (d["STRIP"], d["CI_CHUNK"]) == (1, 3)
    else:
        assert (d["STRIP"], d["CI_CHUNK"]) == (6, 2)
    out = opencl_plan.run(ocl, x, w, b, spec, algo="gemm", info=RunInfo())
    assert_close(out, naive_for_spec(x, w, b, spec), "float32")


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
@pytest.mark.parametrize(
    "cin, cout, groups, k, stride, dilation, padding, wd",
    [
        (10, 40, 1, (3, 3), 1, 1, 1, 19),  # 3 input-channel chunks of 4, 3 and 3
        (8, 16, 2, (3, 3), 2, 2, 2, 23),
        (6, 24, 3, (1, 1), 1, 1, 0, 7),
        (3, 8, 1, (5, 3), (1, 2), 1, (2, 1), 30),
    ],
)
def test_dense_gemm_strips_and_channel_chunks(
    ocl, tune, mode, cin, cout, groups, k, stride, dilation, padding, wd
):
    # layers whose weights exceed L1 run in strips of column groups and channel chunks;
    # force them on small layers (strip of 3 groups, chunks of a few channels)
    tune(ocl, winograd=False, dense_strip=3, dense_l1_bytes=4 * 1024, dense_l1_bytes_1x1=4 * 1024)
    x, w, b = rng_arrays(19, (2, cin, 11, wd), (cout, cin // groups, *k))
    out, ref, info = fast(
        ocl,
        x,
        w,
        b,
        stride=stride,
        dilation=dilation,
        padding=padding,
        groups=groups,
        padding_mode=mode,
    )
    assert info.algo == "gemm"
    assert_close(out, ref, "float32")


@pytest.mark.parametrize("hw", [(1, 1), (1, 5), (3, 2), (4, 9)])
def test_dense_gemm_tiny_images(ocl, hw):
    x, w, b = rng_arrays(8, (1, 8, *hw), (8, 8, 3, 3))
    out, ref, info = fast(ocl, x, w, b, padding=1, padding_mode="replicate")
    assert info.algo == "gemm"
    assert_close(out, ref, "float32")


# a layer of each family with image sizes as arguments; (n, h, w) -> what its build
# still depends on with the sizes as arguments, and with them as defines
_SIZE_CASES = {
    "dense_gemm": ((12, 6, 3, 3), dict(padding=1, stride=(2, 1), padding_mode="reflect"),
                   lambda n, h, w: (), lambda n, h, w: (n, h, w)),
    "pointwise": ((10, 6, 1, 1), {}, lambda n, h, w: (), lambda n, h, w: h * w),
    "dw_channels": ((128, 1, 3, 3), dict(padding=1, groups=64),
                    lambda n, h, w: w, lambda n, h, w: (n, h, w)),
    "winograd": ((8, 6, 3, 3), dict(padding=1, padding_mode="reflect"),
                 lambda n, h, w: w, lambda n, h, w: (n, h, w)),
}  # fmt: skip


@pytest.mark.parametrize("fixed", [False, True], ids=["size arguments", "size defines"])
@pytest.mark.parametrize("kernel", list(_SIZE_CASES))
def test_image_and_batch_sizes_share_one_build(tune, kernel, fixed):
    # With sizes as kernel arguments (the default) the image and batch sizes of a layer
    # share its program (row bands of a tiled call, a last short batch; dw_channels and
    # winograd_fused keep the widths as defines); with them as defines (the A/B alternative) each
    # size builds its own. Both compute the same.
    w_shape, opts, by_args, by_defines = _SIZE_CASES[kernel]
    wino = dict(winograd=kernel == "winograd", wino_whole=True)  # winograd_fused
    be = fresh_backend(tune, pointwise_min_cin=1, pointwise_min_pixels=1, **wino)
    names = ("dense", "pointwise", "dw_channels", "wino_whole")
    fixed_sizes = {f"{name}_fixed_sizes": fixed for name in names}
    tune(be, **fixed_sizes)
    rng = np.random.default_rng(41)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    shapes = [(1, 13, 17), (2, 13, 17), (1, 9, 17), (1, 9, 30), (3, 21, 8)]
    seen = set()  # what the builds so far were made for
    for n, h, wd in shapes:
        seen.add((by_defines if fixed else by_args)(n, h, wd))
        c_in = w_shape[1] * opts.get("groups", 1)
        x = rng.standard_normal((n, c_in, h, wd)).astype(np.float32)
        spec = make_spec(x, w, b, **opts)
        assert opencl_plan.choose(spec, w, settings=be.settings)[0].kernel == kernel
        out = opencl_plan.run(be, x, w, b, spec, algo="auto", info=RunInfo())
        assert_close(out, naive_for_spec(x, w, b, spec), "float32")
        assert len(be._programs) == len(seen)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "dw_to_blocks"])
def test_dw_blocks_heights_and_batch_sizes_share_its_builds(tune, fused):
    # dw_blocks (and dw_to_blocks) take the batch size and the heights as arguments:
    # row bands and a last short batch of a layer run its builds (the widths are
    # defines); fused, one program copies into local memory sized per call
    be = fresh_backend(tune, dw_blocks_fused=fused)
    rng = np.random.default_rng(43)
    w = rng.standard_normal((40, 1, 5, 5)).astype(np.float32)
    for n, h in ((1, 13), (2, 13), (3, 9), (1, 20)):
        x = rng.standard_normal((n, 40, h, 17)).astype(np.float32)
        spec = make_spec(x, w, None, padding=2, groups=40)
        assert opencl_plan.choose(spec, w, settings=be.settings)[0].kernel == "dw_blocks"
        out = opencl_plan.run(be, x, w, None, spec, algo="auto", info=RunInfo())
        assert_close(out, naive_for_spec(x, w, None, spec), "float32")
        names = sorted(name for name, _ in be._programs)
        assert names == (["dw_blocks"] if fused else ["dw_blocks", "dw_to_blocks"])


@pytest.mark.parametrize(
    "c, n, hw, k, stride, dilation, padding",
    [
        (40, 2, (14, 14), 3, 1, 1, 1),
        (36, 1, (7, 9), 3, 2, 1, 1),  # lanes past C, stride 2
        (64, 2, (13, 11), (3, 5), (2, 1), (2, 1), (2, 3)),
        (44, 1, (9, 13), 7, 1, 1, (3, 1)),  # more padding than rows
        (24, 2, (6, 5), 7, 1, 1, 3),  # 5-wide rows
        (16, 1, (30, 111), 3, 2, 1, 1),  # 56-wide output rows, 7 segments
    ],
)
def test_dw_blocks_with_and_without_its_copy_launch(
    ocl, tune, c, n, hw, k, stride, dilation, padding
):
    """The copy into local memory (fused) and the dw_to_blocks launch both give the
    exact result; a block over dw_blocks_fused_max_bytes takes dw_to_blocks."""
    from convcli.backends.opencl import depthwise

    k = (k, k) if isinstance(k, int) else k
    x, w, b = rng_arrays(c + hw[1], (n, c, *hw), (c, 1, *k))
    opts = dict(stride=stride, dilation=dilation, padding=padding, groups=c)
    spec = make_spec(x, w, b, **opts)
    assert depthwise.fused(spec, ocl.settings)
    assert not depthwise.fused(spec, replace(ocl.settings, dw_blocks_fused_max_bytes=1024))
    for fused in (True, False):
        # (3x3 on wide rows takes dw_to_blocks only when told to)
        settings = tune(ocl, dw_blocks_fused=fused, dw_blocks_wide_taps=9).settings
        assert opencl_plan.choose(spec, w, cpu=True, settings=settings)[0].kernel == "dw_blocks"
        out, ref, _ = fast(ocl, x, w, b, **opts)
        assert_close(out, ref, "float32")


@pytest.mark.parametrize("fixed", [False, True], ids=["size arguments", "size defines"])
@pytest.mark.parametrize("one", [True, False], ids=["winograd_gemm_out", "winograd_output"])
def test_split_winograd_sizes_share_one_build(tune, one, fixed):
    # The split Winograd kernels (resnet-like 3x3 layers, winograd_fused off) take the
    # batch size and the heights as arguments (the GEMM and output kernels the chunk's
    # row stride too): the row bands and batch sizes of a layer run one build of each
    # kernel (per width: the widths stay defines, and stride 1 and 2 give two). The
    # small chunk budget runs every image here in one-tile-row chunks, so the input
    # transform's row stride (a define) is the same for all. With the sizes as defines
    # (the A/B alternative) each size builds its own input and output kernels.
    be = fresh_backend(tune, winograd=True, wino_whole=False, wino_fused=one)
    tune(be, wino_split_fixed_sizes=fixed, wino_chunk_bytes=20000, wino_fused_chunk_bytes=20000)
    kernels = ["winograd_input", "winograd_gemm_out" if one else "winograd_output"]
    rng = np.random.default_rng(43)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    shapes = [(1, 28, 28), (2, 28, 28), (1, 14, 28), (3, 15, 28), (1, 61, 28)]
    for i, (n, h, wd) in enumerate(shapes[:3] if fixed else shapes):  # builds are slow
        for padding_mode, stride in (("zeros", 1), ("reflect", 2)):
            x = rng.standard_normal((n, 16, h, wd)).astype(np.float32)
            spec = make_spec(x, w, b, padding=stride, stride=stride, dilation=stride,
                             padding_mode=padding_mode)  # fmt: skip
            assert opencl_plan.choose(spec, w, settings=be.settings)[0].kernel == "winograd"
            out = opencl_plan.run(be, x, w, b, spec, algo="auto", info=RunInfo())
            assert_close(out, naive_for_spec(x, w, b, spec), "float32")
        built = Counter(name for name, _ in be._programs)
        assert set(built) == set(kernels) | ({"winograd_gemm"} if not one else set())
        if not fixed:
            assert [built[name] for name in kernels] == [2, 2], built
            assert built["winograd_gemm"] == (0 if one else 1), built
        else:  # every size (stride 1 and 2 at each) builds the input transform
            assert built["winograd_input"] == 2 * (i + 1), built
    if fixed:  # and the output kernel for several (it does not depend on N)
        assert built[kernels[1]] > 2, built


@pytest.mark.parametrize("wino", [False, True])
def test_weights_edited_in_place_are_not_served_stale(ocl, tune, wino):
    # packed weights are cached on the device while the caller passes equal weights
    tune(ocl, winograd=wino)
    x, w, b = rng_arrays(16, (1, 8, 9, 9), (16, 8, 3, 3))
    first, ref, _ = fast(ocl, x, w, b, padding=1)
    assert_close(first, ref, "float32")
    w[3, 2, 1, 1] += 5.0
    b[0] -= 1.0
    second, ref2, _ = fast(ocl, x, w, b, padding=1)
    assert_close(second, ref2, "float32")
    assert not np.allclose(second, first)


def test_weights_cache_returns_to_earlier_weights(ocl):
    # an entry found behind others of the same shape moves to the front (this raised
    # "truth value of an array is ambiguous" when list.remove compared the entries)
    x, w1, b = rng_arrays(17, (1, 8, 9, 9), (16, 8, 3, 3))
    w2 = w1 + 1.0
    for w in (w1, w2, w1, w2):
        out, ref, _ = fast(ocl, x, w, b, padding=1)
        assert_close(out, ref, "float32")


def test_forced_gemm_on_depthwise(ocl):
    x, w, b = rng_arrays(9, (1, 4, 11, 13), (4, 1, 3, 3))
    out, ref, info = fast(ocl, x, w, b, algo="gemm", padding=1, groups=4)
    assert info.algo == "gemm"
    assert_close(out, ref, "float32")


def test_dense_1x1_no_bias(ocl):
    x, w, _ = rng_arrays(10, (3, 32, 9, 10), (64, 32, 1, 1), bias=False)
    out, ref, info = fast(ocl, x, w)
    assert info.algo == "gemm"
    assert_close(out, ref, "float32")


# ---------------------------------------------------------------- gemm_1x1 (small maps)


def _gemm1x1_plan(ocl, x, w, b, **opts):
    spec = make_spec(x, w, b, **opts)
    return opencl_plan.choose(spec, w, cpu=True, settings=ocl.settings)[0].kernel


def _gemm1x1_run(ocl, x, w, b, **opts):
    """The fast path on a CPU device (gemm_1x1's route); elsewhere (the route is
    CPU-only) gemm_1x1 itself, so that GPU-shaped drivers (Oclgrind in CI, with its
    checks) run the kernel too. Returns (result, reference, info)."""
    if ocl.is_cpu:
        return fast(ocl, x, w, b, **opts)
    spec = make_spec(x, w, b, **opts)
    info = RunInfo()
    out = gemm.run_gemm1x1(ocl, x, w, b, spec, info)
    return out, naive_for_spec(x, w, b, spec), info


@pytest.mark.parametrize(
    "n, cin, cout, groups, hw, tile",
    [
        (1, 440, 440, 1, (7, 7), None),  # 440 = 18 blocks of 24 + 8: a part block
        (3, 58, 58, 1, (7, 7), None),  # 2 x 6 tile; columns of one item span images
        (2, 116, 232, 1, (5, 5), None),
        (5, 232, 116, 1, (7, 7), (3, 4)),  # strip of 14 column groups, 245 columns
        (2, 24, 30, 3, (3, 5), None),  # groups of 8 -> 10; 15-pixel planes
        (3, 12, 20, 4, (7, 7), (2, 6)),  # groups, a part block in each
        (1, 8, 4, 1, (2, 3), None),  # fewer columns than one column group
        (7, 33, 7, 1, (1, 1), (3, 4)),  # one-pixel planes: every column another image
        (4, 64, 96, 1, (8, 8), (4, 2)),
    ],
)
@pytest.mark.parametrize("blocks_fast", [None, True, False])
def test_gemm_1x1_matches_naive(ocl, tune, n, cin, cout, groups, hw, tile, blocks_fast):
    # columns run through the batch, so a column group or a strip may span two images;
    # partial channel blocks store only their real channels; both work orders
    tune(ocl, gemm1x1_tile=tile, gemm1x1_blocks_fast=blocks_fast, host_fc_max_macs=0)
    x, w, b = rng_arrays(51, (n, cin, *hw), (cout, cin // groups, 1, 1))
    assert _gemm1x1_plan(ocl, x, w, b, groups=groups) == "gemm_1x1"
    for bias in (b, None):
        out, ref, info = _gemm1x1_run(ocl, x, w, bias, groups=groups)
        assert info.algo == ("gemm" if ocl.is_cpu else "")
        assert_close(out, ref, "float32")


@pytest.mark.parametrize("cout", [64, 200])
def test_gemm_1x1_takes_a_single_images_larger_map(ocl, cout):
    # N=1: 64 and 200 output channels (no narrow padding) on an odd 47x33 map
    from convcli.backends.numpy.reference import conv2d_direct

    x, w, b = rng_arrays(55, (1, 36, 47, 33), (cout, 36, 1, 1))
    spec = make_spec(x, w, b)
    assert _gemm1x1_plan(ocl, x, w, b) == "gemm_1x1"
    assert _gemm1x1_plan(ocl, np.concatenate([x, x]), w, b) == "dense_gemm"
    for bias in (b, None):
        out, _, info = _gemm1x1_run(ocl, x, w, bias)
        assert info.algo == ("gemm" if ocl.is_cpu else "")
        assert_close(out, conv2d_direct(x, w, bias, spec), "float32")


@pytest.mark.parametrize("n, hw", [(1, (31, 41)), (2, (57, 29))])
def test_gemm_1x1_takes_narrow_layers_on_larger_maps(ocl, n, hw):
    # 40 output channels: dense_gemm's blocks of 32 pad them to 64, gemm_1x1's of 24 to
    # 48; on maps up to 112^2 (odd sizes, columns of a strip across two images) the
    # narrow layer runs gemm_1x1, exactly as the reference
    from convcli.backends.numpy.reference import conv2d_direct

    x, w, b = rng_arrays(54, (n, 24, *hw), (40, 24, 1, 1))
    spec = make_spec(x, w, b)
    assert spec.h * spec.w > 28 * 28
    assert _gemm1x1_plan(ocl, x, w, b) == "gemm_1x1"
    out, _, info = _gemm1x1_run(ocl, x, w, b)
    assert info.algo == ("gemm" if ocl.is_cpu else "")
    assert_close(out, conv2d_direct(x, w, b, spec), "float32")


def test_gemm_1x1_short_strips_and_chunks(ocl, tune):
    # tiny L1 budget and strips: many input-channel chunks, each strip a column group
    # or two, partial sums carried across the chunks
    tune(ocl, gemm1x1_l1_bytes=512, gemm1x1_strip_cols=8, gemm1x1_whole_cols=8)
    tune(ocl, gemm1x1_min_items=64)
    x, w, b = rng_arrays(52, (2, 150, 5, 7), (50, 150, 1, 1))  # 35-pixel planes
    defines = gemm.gemm1x1_defines(make_spec(x, w, b), ocl.settings)
    assert defines["CI_CHUNK"] < 150 and defines["STRIP"] <= 2
    assert _gemm1x1_plan(ocl, x, w, b) == "gemm_1x1"
    out, ref, _ = _gemm1x1_run(ocl, x, w, b)
    assert_close(out, ref, "float32")


def test_gemm_1x1_batches_share_one_build(tune):
    # the batch decides the strips and the work order (kernel arguments): a single
    # image runs as one strip a block, a batch of 5 in strips of 24 columns (blocks
    # first); one program serves both
    be = fresh_backend(tune)
    if not be.is_cpu:
        pytest.skip("gemm_1x1 runs on CPU devices")
    rng = np.random.default_rng(53)
    w = rng.standard_normal((240, 96, 1, 1)).astype(np.float32)  # 10 blocks of 24
    strips = []
    for n in (1, 5, 2):
        x = rng.standard_normal((n, 96, 7, 7)).astype(np.float32)
        spec = make_spec(x, w, None)
        assert opencl_plan.choose(spec, w, settings=be.settings)[0].kernel == "gemm_1x1"
        assert gemm.gemm1x1_defines(spec, be.settings)["XB"] == 4
        strips.append(gemm.gemm1x1_strip(spec, 4, 10, be.settings))
        out = opencl_plan.run(be, x, w, None, spec, algo="auto", info=RunInfo())
        assert_close(out, naive_for_spec(x, w, None, spec), "float32")
    assert strips == [13, 6, 5]  # 49 columns whole; 245 and 98 in strips of 24 or less
    assert len(be._programs) == 1


def test_gemm_1x1_route():
    # 1x1 stride-1 unpadded layers on maps up to gemm1x1_max_pixels on CPU devices;
    # larger maps, strides, padding and GPU-shaped devices keep their kernels (a single
    # image's 1x1 layers on the device: see test_small_batches_1x1_layers_run_on_the_host)
    s = replace(DEFAULT, host_pointwise_max_batch=0)
    w = np.zeros((64, 32, 1, 1), np.float32)

    def kernel(hw, cpu=True, n=1, **opts):
        x = np.zeros((n, 32, hw, hw), np.float32)
        return opencl_plan.choose(make_spec(x, w, None, **opts), w, cpu=cpu, settings=s)[0].kernel

    assert kernel(7) == "gemm_1x1"
    assert kernel(8) == "gemm_1x1"
    assert kernel(14, n=2) == "dense_gemm"  # 64 channels: both pad none
    assert kernel(14) == kernel(112) == "gemm_1x1"  # a single image's map up to 112^2
    assert kernel(113) == "dense_gemm"
    w = np.zeros((40, 32, 1, 1), np.float32)  # dense_gemm 64, gemm_1x1 48: larger maps
    assert kernel(28, n=2) == "gemm_1x1"
    assert kernel(112, n=2) == "gemm_1x1"
    assert kernel(113, n=2) == "dense_gemm"
    w = np.zeros((64, 32, 1, 1), np.float32)
    assert kernel(7, stride=2) == "dense_gemm"
    assert kernel(7, padding=1) == "dense_gemm"
    assert kernel(7, cpu=False) != "gemm_1x1"
    assert opencl_plan.choose(
        make_spec(np.zeros((1, 32, 7, 7), np.float32), w, None), w,
        settings=replace(s, gemm1x1=False),
    )[0].kernel == "dense_gemm"  # fmt: skip


def test_small_batches_1x1_layers_route_to_the_host():
    # CPU devices: a 1x1 layer without padding or groups, float32, of up to 8 images
    # (strided: one) and 16 MiB of output; larger batches and outputs, groups, padding,
    # float16, GPU-shaped devices and 0 stay put
    s = DEFAULT
    w = np.zeros((64, 32, 1, 1), np.float32)

    def kernel(n=1, hw=14, cpu=True, settings=s, dtype=np.float32, **opts):
        x = np.zeros((n, 32, hw, hw), dtype)
        spec = make_spec(x, w.astype(dtype), None, **opts)
        return opencl_plan.choose(spec, w, cpu=cpu, settings=settings)[0].kernel

    assert kernel() == kernel(hw=112) == "host_gemm"
    assert kernel(stride=2) == kernel(dilation=3) == "host_gemm"
    assert kernel(n=2) == kernel(n=8) == kernel(n=8, dilation=2) == "host_gemm"
    assert kernel(n=9) == kernel(n=2, stride=2) == kernel(padding=1) == "dense_gemm"
    assert kernel(hw=256) == kernel(n=2, hw=181) == "host_gemm"  # up to 16 MiB of output
    assert kernel(hw=257) == kernel(n=2, hw=182) == "dense_gemm"
    assert kernel(dtype=np.float16) == "gemm_1x1"
    assert kernel(cpu=False) != "host_gemm"
    assert kernel(settings=replace(s, host_pointwise_max_batch=0)) == "gemm_1x1"
    assert kernel(n=9, settings=replace(s, host_pointwise_max_batch=9)) == "host_gemm"
    wider = replace(s, host_pointwise_strided_max_batch=2)
    assert kernel(n=2, stride=2, settings=wider) == "host_gemm"
    wg = np.zeros((64, 16, 1, 1), np.float32)
    spec = make_spec(np.zeros((1, 32, 14, 14), np.float32), wg, None, groups=2)
    assert opencl_plan.choose(spec, wg, cpu=True, settings=s)[0].kernel == "gemm_1x1"
    wk = np.zeros((64, 32, 3, 3), np.float32)
    spec = make_spec(np.zeros((1, 32, 14, 14), np.float32), wk, None, padding=1)
    assert opencl_plan.choose(spec, wk, cpu=True, settings=s)[0].kernel != "host_gemm"


@pytest.mark.parametrize(
    "shape, opts",
    [
        ((1, 36, 47, 33), {}),  # one BLAS thread's product, replayed
        ((1, 256, 28, 28), {}),  # 19.7 MFLOP: one BLAS thread's product too, replayed
        ((2, 256, 48, 48), {}),  # 116 MFLOP: NumPy's own threads (two CPUs), not replayed
        ((1, 24, 29, 31), {"stride": 2}),
        ((1, 24, 16, 16), {"stride": (1, 3), "dilation": 2}),
        ((3, 40, 13, 9), {}),
        ((8, 16, 7, 7), {"dilation": 3}),
    ],
)
def test_small_batches_1x1_layers_run_on_the_host(default_backend, tune, shape, opts):
    # on a CPU device they run NumPy's matrix product: its result bit for bit (the
    # replay too, and after the weights change in place), within float32 of the naive
    # reference, with a notice; the device's kernels are not built for them
    be = tune(default_backend, gpu_kernels=False)
    if not be.is_cpu:
        pytest.skip("the host route is for CPU devices")
    rng = np.random.default_rng(57)
    cin = shape[1]
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((48 + cin % 5, cin, 1, 1)).astype(np.float32)
    b = rng.standard_normal(w.shape[0]).astype(np.float32)
    spec = make_spec(x, w, b, **opts)
    numpy = backends.get_backend("numpy")
    rt = be.runtime_for(spec)  # the inline device's for the smaller ones

    def built():
        return len(be._programs) + len(rt._programs)

    before = built()
    # the unstrided product NumPy runs on one thread of ours is kept as the replay
    replayed = spec.stride == (1, 1) and gemm_threads(spec, numpy.settings) == 1
    for bias in (b, None, b):
        one = make_spec(x, w, bias, **opts)
        rt.replays.pop((one, "auto"), None)
        want = numpy.run(x, w, bias, one, info=RunInfo())
        for _ in range(2):  # planned, then replayed where it is kept
            info = RunInfo()
            out = be.run(x, w, bias, one, info=info)
            assert np.array_equal(out, want)
            assert info.algo == "gemm" and "on the host (NumPy)" in info.notices[0]
            assert ((one, "auto") in rt.replays) == replayed
        assert_close(out, naive_for_spec(x, w, bias, spec), "float32")
    w *= -0.5  # changed in place: the next call reads the new values
    out = be.run(x, w, b, spec, info=RunInfo())
    assert_close(out, naive_for_spec(x, w, b, spec), "float32")
    assert built() == before


def test_gemm_1x1_leaves_batches_beyond_32_bit_offsets():
    # gemm_1x1 indexes the batch's input with 32-bit ints: a batch of 2**31 input
    # floats or more (1024 channels of 7x7: 42800 images, 8 GiB) keeps dense_gemm,
    # which offsets each image with size_t
    w = np.zeros((64, 1024, 1, 1), np.float32)
    spec = make_spec(np.zeros((1, 1024, 7, 7), np.float32), w, None)
    most = (2**31 - 1) // (1024 * 49)
    assert gemm.gemm1x1_applies(replace(spec, n=most), True, DEFAULT)
    assert not gemm.gemm1x1_applies(replace(spec, n=most + 1), True, DEFAULT)


def test_gemm_1x1_tile_choice():
    # 3 x 4 unless it pads the output channels 8 % more than 2 x 6 would
    s = DEFAULT

    def tile(cout):
        x = np.zeros((1, 16, 7, 7), np.float32)
        w = np.zeros((cout, 16, 1, 1), np.float32)
        d = gemm.gemm1x1_defines(make_spec(x, w, None), s)
        return d["COB"], d["XB"]

    assert tile(440) == (3, 4)  # 456 against 448
    assert tile(512) == (3, 4)  # 528 against 512: 3 %
    assert tile(128) == (2, 6)  # 144 against 128
    assert tile(58) == (2, 6)  # 72 against 64
    assert tile(96) == (3, 4)


# ---------------------------------------------------------------- pointwise (1x1 gemm)


@pytest.fixture
def pointwise(ocl, tune):
    """Run every 1x1 stride-1 unpadded layer on pointwise.cl, small ones included (one-
    pixel maps too: not on the host)."""
    tune(ocl, pointwise_min_cin=1, pointwise_min_pixels=1, host_fc_max_macs=0)


def misaligned(x: np.ndarray, floats: int) -> np.ndarray:
    """A contiguous copy of ``x`` starting ``floats`` float32s past a 64-byte boundary."""
    from convcli.backends.opencl.runtime import aligned_empty

    raw = aligned_empty((x.size + floats,), np.float32, align=64)
    out = raw[floats:].reshape(x.shape)
    out[...] = x
    return out


@pytest.mark.parametrize(
    "n, cin, cout, groups, hw",
    [
        (2, 16, 40, 1, (8, 8)),  # 40 channels: six full blocks of 6 and one of 4
        (3, 12, 18, 3, (7, 9)),  # groups; 63 pixels: a masked last group
        (1, 8, 4, 1, (5, 6)),  # fewer output channels than a block
        (2, 5, 7, 1, (1, 1)),
        (1, 24, 12, 2, (16, 17)),  # a plane of 272 pixels, a multiple of 8 and 16
        (2, 9, 13, 1, (3, 8)),  # a plane of 24 pixels, a multiple of 8 but not 16
    ],
)
@pytest.mark.parametrize("floats", [0, 1, 4, 7])
def test_pointwise_matches_naive(pointwise, ocl, n, cin, cout, groups, hw, floats):
    # the input at every alignment: pixel groups and the output follow its cache lines
    x, w, b = rng_arrays(21, (n, cin, *hw), (cout, cin // groups, 1, 1))
    x = misaligned(x, floats)
    spec = make_spec(x, w, b, groups=groups)
    assert opencl_plan.choose(spec, w, settings=ocl.settings)[0].kernel == "pointwise"
    out, ref, info = fast(ocl, x, w, b, groups=groups)
    assert info.algo == "gemm"
    assert_close(out, ref, "float32")
    if (hw[0] * hw[1]) % 8 == 0 and ocl.is_cpu:  # elsewhere the output is a device copy
        assert out.ctypes.data % 64 == x.ctypes.data % 64


@pytest.mark.parametrize("dilation", [2, (1, 3)])
def test_pointwise_ignores_dilation(pointwise, ocl, dilation):
    # a 1x1 kernel has one tap: dilation changes nothing, and the layer stays pointwise
    x, w, b = rng_arrays(24, (2, 16, 9, 11), (20, 16, 1, 1))
    spec = make_spec(x, w, b, dilation=dilation)
    assert opencl_plan.choose(spec, w, settings=ocl.settings)[0].kernel == "pointwise"
    out, ref, _ = fast(ocl, x, w, b, dilation=dilation)
    assert_close(out, ref, "float32")


def test_pointwise_read_only_input_and_no_bias(pointwise, ocl):
    # a read-only input is copied, not wrapped: no alignment to follow
    x, w, _ = rng_arrays(22, (2, 16, 12, 12), (24, 16, 1, 1), bias=False)
    x = misaligned(x, 4)
    x.flags.writeable = False
    out, ref, _ = fast(ocl, x, w)
    assert_close(out, ref, "float32")


def test_pointwise_results_held_are_not_reused(pointwise, ocl):
    # pooled outputs start at the input's offset; a held one must not be overwritten
    rng = np.random.default_rng(23)
    w = rng.standard_normal((32, 16, 1, 1)).astype(np.float32)
    x = rng.standard_normal((2, 16, 128, 128)).astype(np.float32)
    xs = [misaligned(x * (i + 1), f) for i, f in enumerate((4, 0, 4, 2))]
    outs = [conv2d(x, w, backend="opencl") for x in xs]
    for x, out in zip(xs, outs, strict=True):
        assert_close(out, naive_conv2d(x, w), "float32")


@pytest.mark.parametrize(
    "cin, hw, stride, padding, kernel",
    [
        (128, (56, 56), 1, 0, "pointwise"),  # W8
        (256, (32, 32), 1, 0, "pointwise"),
        (64, (56, 56), 1, 0, "pointwise"),  # resnet50's 64->256 56^2
        (32, (56, 56), 1, 0, "dense_gemm"),  # too few input channels to pay
        (256, (14, 14), 1, 0, "dense_gemm"),  # too few pixels
        (128, (56, 56), 2, 0, "dense_gemm"),  # strided
        (128, (56, 56), 1, 1, "dense_gemm"),  # padded
    ],
)
def test_pointwise_only_where_it_applies_and_pays(cin, hw, stride, padding, kernel):
    # two images: a single image's unstrided 1x1 layers go to gemm_1x1 where pointwise
    # does not apply (test_gemm_1x1_route); on the device, not the host's BLAS
    x = np.ones((2, cin, *hw), np.float32)
    w = np.ones((64, cin, 1, 1), np.float32)
    spec = make_spec(x, w, None, stride=stride, padding=padding)
    s = replace(DEFAULT, host_pointwise_max_batch=0)
    assert opencl_plan.choose(spec, w, settings=s)[0].kernel == kernel


@pytest.mark.parametrize(
    "cin, cout, hw, tile",
    [
        (96, 120, (13, 17), (3, 4)),  # blocks of 24 pad 120 channels least
        (96, 120, (13, 11), (4, 2)),  # a smaller map
        (256, 1024, (14, 14), (3, 4)),  # resnet50's
        (512, 128, (28, 28), (4, 2)),  # 144 against 128: 4 x 2 stays
        (112, 112, (14, 14), (2, 4)),  # blocks of 16 (120 against 112)
        (48, 288, (14, 14), (4, 2)),  # few input channels
    ],
)
def test_dense_1x1_tile(ocl, cin, cout, hw, tile):
    x = np.ones((8, cin, *hw), np.float32)
    w = np.ones((cout, cin, 1, 1), np.float32)
    spec = make_spec(x, w, None)
    assert gemm.dense_1x1_blocking(spec, True, ocl.settings) == tile
    assert gemm.dense_1x1_blocking(spec, False, ocl.settings) == gemm.dense_blocking(cout, DEFAULT)


def test_dense_1x1_tile_on_column_copies():
    # a 1x1 stride-2 layer's column copy takes the 1x1 layers' tile by the copy's map
    def cob(cin, cout, hw):
        x = np.ones((8, cin, hw, hw), np.float32)
        w = np.ones((cout, cin, 1, 1), np.float32)
        spec = make_spec(x, w, None, stride=2)
        assert gemm.copied_columns(spec, DEFAULT)
        return gemm.dense_defines(spec, True, DEFAULT)["COB"]

    assert cob(512, 1024, 28) == 3  # onto 14^2
    assert cob(1024, 2048, 14) == 4  # onto 7^2: 4 x 2 stays


def test_dense_1x1_in_blocks_of_24(ocl, tune):
    # the 3 x 4 tile on the flat 1x1 form: 3 images whose columns are not a multiple of
    # 4, 120 output channels in five blocks of 24, input channels in chunks
    tune(ocl, gemm1x1=False, dense_l1_bytes_1x1=2048)
    x, w, b = rng_arrays(31, (3, 96, 13, 17), (120, 96, 1, 1))
    spec = make_spec(x, w, b)
    assert opencl_plan.choose(spec, w, settings=ocl.settings)[0].kernel == "dense_gemm"
    d = gemm.dense_defines(spec, ocl.is_cpu, ocl.settings)
    if ocl.is_cpu:
        assert (d["COB"], d["XB"], d["NBLK"]) == (3, 4, 5) and d["CI_CHUNK"] < 96
    out = opencl_plan.run(ocl, x, w, b, spec, algo="gemm", info=RunInfo())
    assert_close(out, naive_for_spec(x, w, b, spec), "float32")


# ---------------------------------------------------------------- winograd (3x3 gemm)


@pytest.fixture(params=["split", "fused", "whole"])
def winograd(request, ocl, tune):
    """Force Winograd F(2x2, 3x3) for every 3x3 layer whose stride equals its dilation:
    input transform, GEMMs and output transform as three kernels, as two (GEMMs and
    output fused), then as one (winograd_fused)."""
    fused, whole = request.param == "fused", request.param == "whole"
    tune(ocl, winograd=True, wino_fused=fused, wino_whole=whole)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "n, cin, cout, groups, hw, sd, padding",
    [
        (2, 16, 40, 1, (15, 19), 1, 1),  # odd output sizes, blocks of 4 channels
        (1, 12, 42, 1, (11, 13), 1, 1),  # blocks of 6 channels
        (1, 5, 11, 1, (10, 18), 1, 1),  # a partial channel block
        (1, 8, 16, 2, (16, 23), 2, 2),  # stride = dilation = 2 (W7's kind), groups
        (2, 6, 4, 1, (9, 12), 1, (2, 0)),  # fewer output channels than one vector
        (1, 12, 24, 3, (20, 17), (1, 3), (1, 3)),  # per-axis stride = dilation
        (3, 8, 8, 1, (7, 8), 1, "same"),
        (1, 4, 8, 1, (5, 40), 1, 0),  # no padding, rows of more than 8 tiles
        (2, 64, 24, 1, (9, 11), 1, 1),  # 64 input channels: 64 KB private per item
    ],
)
def test_winograd_matches_naive(winograd, ocl, mode, n, cin, cout, groups, hw, sd, padding):
    x, w, b = rng_arrays(21, (n, cin, *hw), (cout, cin // groups, 3, 3))
    opts = dict(stride=sd, dilation=sd, padding=padding, groups=groups, padding_mode=mode)
    spec = make_spec(x, w, b, **opts)
    assert opencl_plan.choose(spec, w, settings=ocl.settings)[0].kernel == "winograd"
    out, ref, info = fast(ocl, x, w, b, **opts)
    assert info.algo == "gemm"
    assert_close(out, ref, "float32")


@pytest.mark.parametrize("hw", [(1, 1), (1, 5), (3, 2), (2, 9)])
def test_winograd_tiny_images(winograd, ocl, hw):
    x, w, b = rng_arrays(22, (2, 8, *hw), (8, 8, 3, 3))
    out, ref, _ = fast(ocl, x, w, b, padding=1, padding_mode="replicate")
    assert_close(out, ref, "float32")


def test_winograd_chunks_are_bit_identical(winograd, ocl, tune):
    # large images run in chunks of tile rows; each tile is computed the same way
    x, w, b = rng_arrays(23, (3, 8, 13, 21), (16, 8, 3, 3))
    whole, ref, _ = fast(ocl, x, w, b, padding=1, padding_mode="reflect")
    tune(ocl, wino_chunk_bytes=1)  # one tile row per chunk
    rows, _, _ = fast(ocl, x, w, b, padding=1, padding_mode="reflect")
    assert_close(whole, ref, "float32")
    np.testing.assert_array_equal(rows, whole)


@pytest.mark.parametrize("budget, even", [(8, 7), (15, 11)])
def test_winograd_even_chunks(ocl, tune, budget, even):
    # chunks of equal row counts, as many as full ones of the budget would be (3 images
    # of 7 tile rows: 21 rows in chunks of 8 -> 3 chunks of 7; of 15 -> 2 of 11 and 10);
    # each tile is computed as in one chunk, and as the naive reference
    from convcli.backends.opencl import winograd as wino

    tune(ocl, winograd=True, wino_whole=False, wino_fused=False)
    x, w, b = rng_arrays(24, (3, 8, 13, 21), (16, 8, 3, 3))
    whole, ref, _ = fast(ocl, x, w, b, padding=1)
    assert_close(whole, ref, "float32")
    spec = make_spec(x, w, b, padding=1)
    geo = wino._split(spec, ocl.is_cpu, ocl.settings)[0]
    assert geo["chunk"] == 21
    row_bytes = 16 * 4 * geo["tw"] * (spec.c_in + geo["kp"])
    tune(ocl, wino_chunk_bytes=budget * row_bytes)
    full = replace(ocl.settings, wino_even_chunks=False)
    assert wino._split(spec, ocl.is_cpu, full)[0]["chunk"] == budget
    assert wino._split(spec, ocl.is_cpu, ocl.settings)[0]["chunk"] == even
    chunked, _, _ = fast(ocl, x, w, b, padding=1)
    np.testing.assert_array_equal(chunked, whole)


def test_winograd_row_bands_from_even_rows_are_bit_identical(winograd, ocl):
    # a band of output rows that starts at an even row (its input rows and halo passed
    # as a smaller image, as tiled calls do) computes every 2x2 tile exactly as the
    # whole image does; odd starts shift the tiles and round differently
    x, w, b = rng_arrays(25, (1, 8, 17, 13), (16, 8, 3, 3))
    whole, ref, _ = fast(ocl, x, w, b, padding=1)
    assert_close(whole, ref, "float32")
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)))
    for r0, r1 in [(0, 6), (6, 12), (12, 17)]:
        band, _, _ = fast(ocl, xp[:, :, r0 : r1 + 2].copy(), w, b, padding=(0, 1))
        np.testing.assert_array_equal(band, whole[:, :, r0:r1])


def test_winograd_wide_layer_is_accurate(ocl):
    # the layer kind auto runs as Winograd (W6's channels): well inside the tolerance
    x, w, b = rng_arrays(24, (1, 256, 12, 10), (256, 256, 3, 3))
    spec = make_spec(x, w, b, padding=1)
    assert opencl_plan.choose(spec, w)[0].kernel == "winograd"
    out, ref, info = fast(ocl, x, w, b, padding=1)
    assert info.algo == "gemm"
    err = np.abs(out - ref).max() / np.abs(ref).max()
    assert err < 2e-6


@pytest.mark.parametrize(
    "k, stride, dilation, cin, cout, groups, kernel",
    [
        ((3, 3), 2, 2, 64, 128, 4, "winograd"),  # W7
        ((3, 3), 1, 1, 16, 32, 1, "winograd"),
        ((3, 3), 2, 1, 256, 256, 1, "dense_gemm"),  # stride != dilation
        ((3, 3), 1, 2, 256, 256, 1, "dense_gemm"),
        ((5, 5), 1, 1, 256, 256, 1, "dense_gemm"),
        ((3, 3), 1, 1, 16, 16, 1, "dense_gemm"),  # too few channels to pay
        ((3, 3), 1, 1, 3, 64, 1, "dense_gemm"),
        ((3, 3), 1, 1, 32, 32, 8, "dense_gemm"),
        ((3, 3), 1, 1, 128, 32, 1, "dense_gemm"),  # densenet: many inputs, few outputs
        ((3, 3), 1, 1, 80, 40, 1, "dense_gemm"),
        ((3, 3), 1, 1, 96, 48, 1, "winograd"),
        ((3, 3), 1, 1, 64, 32, 1, "winograd"),  # up to 64 inputs: its fused forms
    ],
)
def test_winograd_only_where_it_applies_and_pays(k, stride, dilation, cin, cout, groups, kernel):
    x = np.ones((1, cin, 12, 12), np.float32)
    w = np.ones((cout, cin // groups, *k), np.float32)
    spec = make_spec(x, w, None, padding=1, stride=stride, dilation=dilation, groups=groups)
    assert opencl_plan.choose(spec, w)[0].kernel == kernel


@pytest.mark.parametrize(
    "cin, cout, groups, on_cpu, elsewhere",
    [
        (64, 128, 4, True, False),  # W7; on a GPU, too few items (and private spills)
        (16, 64, 1, True, False),
        (64, 64, 1, True, False),  # W5: 64 KB of private memory per item
        (128, 128, 1, False, False),
        (256, 256, 1, False, False),  # W6
    ],
)
def test_winograd_in_one_launch_for_few_input_channels(cin, cout, groups, on_cpu, elsewhere):
    x = np.ones((1, cin, 12, 12), np.float32)
    w = np.ones((cout, cin // groups, 3, 3), np.float32)
    spec = make_spec(x, w, None, padding=1, groups=groups)
    assert opencl_winograd.whole(spec, True, DEFAULT) is on_cpu
    assert opencl_winograd.whole(spec, False, DEFAULT) is elsewhere


@pytest.mark.parametrize("cin, on_cpu", [(16, True), (32, True), (64, False)])
def test_winograd_gemm_and_output_fused_on_cpus_only(cin, on_cpu):
    # the fused kernel's ~6 KB of private GEMM results per item would spill on a GPU
    spec = make_spec(
        np.ones((1, cin, 8, 8), np.float32), np.ones((32, cin, 3, 3), np.float32), None
    )
    assert opencl_winograd.fused(spec, True, DEFAULT) is on_cpu
    assert opencl_winograd.fused(spec, False, DEFAULT) is False


def test_dense_strips_of_partial_sums_on_cpus_only():
    # 256 input channels of 3x3 weights exceed L1: a strip of column groups on CPUs,
    # none on GPUs (the strip's partial sums would be private memory)
    spec = make_spec(
        np.ones((1, 256, 8, 64), np.float32), np.ones((32, 256, 3, 3), np.float32), None
    )
    strip, chunk = gemm.dense_strip(spec, 4, 2, True, DEFAULT)
    assert strip > 1 and chunk < 256
    assert gemm.dense_strip(spec, 4, 2, False, DEFAULT) == (1, 256)


@pytest.mark.parametrize("flat", [True, False])
@pytest.mark.parametrize(
    "n, cin, cout, hw, groups",
    [
        (3, 40, 72, (7, 7), 1),
        (2, 48, 40, (5, 9), 2),
        (1, 512, 40, (7, 7), 1),
        (2, 16, 8, (3, 1), 1),
    ],
)
def test_dense_gemm_1x1_as_one_row_per_plane(ocl, tune, flat, n, cin, cout, hw, groups):
    # 1x1 layers with stride 1 and no padding run as one row of H*W pixels per plane
    # (the last column group of a 7-wide row no longer mostly idle), column groups
    # straddling the rows of the map; the same results as row by row
    tune(ocl, dense_flat_1x1=flat, pointwise_min_cin=1 << 20)
    x, w, b = rng_arrays(cin + cout, (n, cin, *hw), (cout, cin // groups, 1, 1))
    spec = make_spec(x, w, b, groups=groups)
    view = gemm.dense_view(spec, ocl.settings)
    assert (view.h, view.w) == ((1, hw[0] * hw[1]) if flat and hw[0] > 1 else hw)
    out, ref, info = fast(ocl, x, w, b, groups=groups)
    assert info.algo == "gemm"
    assert_close(out, ref, "float32")


def test_dense_gemm_1x1_tile_choice():
    # 1x1 layers on maps up to 28^2 of 96 channels or more (CPU): 2 x 4 where 4 x 2's
    # blocks of 32 channels pad the output channels 7 % more than blocks of 16; else,
    # and elsewhere, 4 x 2
    s = DEFAULT

    def tile(cout, hw=14, cpu=True, cin=16, **opts):
        x = np.zeros((1, cin, hw, hw), np.float32)
        w = np.zeros((cout, cin, 1, 1), np.float32)
        d = gemm.dense_defines(make_spec(x, w, None, **opts), cpu, s)
        return d["COB"], d["XB"]

    assert tile(208) == (2, 4)  # 224 against 208
    assert tile(112) == (2, 4)  # 128 against 112
    assert tile(100) == (2, 4)  # 128 against 112
    assert tile(77) == (4, 2)  # 96 against 80, but fewer than 96 channels
    assert tile(240) == (4, 2)  # 256 against 240: 6.7 %
    assert tile(256) == (4, 2)
    assert tile(116) == (4, 2)  # 128 against 128
    assert tile(208, hw=28) == (2, 4)
    assert tile(208, hw=29) == (4, 2)  # a larger map
    assert tile(208, cpu=False) == (4, 2)
    assert tile(208, padding=1) == (4, 2)
    assert tile(208, stride=2) == (4, 2)
    assert tile(24) == (3, 3)  # narrow layers keep their tile
    x, w = np.zeros((1, 16, 3, 3), np.float32), np.zeros((208, 16, 3, 3), np.float32)
    assert gemm.dense_defines(make_spec(x, w, None), True, s)["COB"] == 4  # 3x3


@pytest.mark.parametrize(
    "n, cin, cout, hw, groups, bias",
    [
        (3, 13, 100, (9, 11), 1, True),  # odd counts, a batch
        (2, 26, 202, (7, 5), 2, True),  # groups of 13 -> 101
        (1, 40, 208, (14, 14), 1, False),  # regnet's width, no bias
        (2, 18, 66, (3, 17), 3, True),  # 22 outputs a group: dense_blocking's 3 x 3
    ],
)
def test_dense_gemm_1x1_blocks_of_16_match_naive(ocl, tune, n, cin, cout, hw, groups, bias):
    # the 2 x 4 tile of dense_gemm's 1x1 form (channel blocks of 16, the last one
    # partly padding) gives the reference's values
    tune(ocl, gemm1x1=False, pointwise_min_cin=1 << 20)
    x, w, b = rng_arrays(cin + cout, (n, cin, *hw), (cout, cin // groups, 1, 1))
    b = b if bias else None
    spec = make_spec(x, w, b, groups=groups)
    d = gemm.dense_defines(spec, True, ocl.settings)
    assert (d["COB"], d["XB"]) == ((3, 3) if cout // groups == 22 else (2, 4))
    out, ref, info = fast(ocl, x, w, b, groups=groups)
    assert info.algo == "gemm"
    assert_close(out, ref, "float32")


@pytest.mark.parametrize("copy", [True, False])
@pytest.mark.parametrize("mode", ["zeros", "reflect"])
@pytest.mark.parametrize(
    "n, cin, cout, hw, k, stride, dilation, padding, groups",
    [
        (2, 24, 40, (14, 13), (1, 1), 2, 1, 0, 1),  # resnet's 1x1 stride 2, odd width
        (1, 16, 24, (9, 12), (1, 1), (2, 3), 1, 0, 2),  # grouped, uneven strides
        (1, 16, 24, (9, 12), (1, 1), 2, 1, 1, 1),  # padded 1x1: rows and columns of pad
        (2, 12, 32, (15, 14), (2, 2), 2, 1, 0, 1),  # convnext's downsampling, a row over
        (1, 3, 16, (17, 16), (4, 4), 4, 1, 0, 1),  # a patch embedding
        (2, 16, 24, (13, 14), (3, 3), 2, 1, 1, 1),  # resnet's 3x3 stride 2 (9/4 the input)
        (1, 8, 16, (11, 11), (2, 3), (3, 5), (2, 2), (1, 2), 1),  # dilated, padded
    ],
)
def test_dense_gemm_on_copied_columns(
    ocl, tune, copy, mode, n, cin, cout, hw, k, stride, dilation, padding, groups
):
    # strided layers run as a 1x1 layer on a copy of their columns (im2col_copy), any
    # padding mode through the index maps; the same results as the strided implicit GEMM
    kernels = ((1, 1), (2, 2), (3, 3), (4, 4), (2, 3)) if copy else ()
    tune(ocl, dense_columns_kernels=kernels, dense_columns_max_growth=4.0, winograd=False)
    tune(ocl, dense_columns_min_cout=1)
    x, w, b = rng_arrays(cin * cout, (n, cin, *hw), (cout, cin // groups, *k))
    opts = dict(stride=stride, dilation=dilation, padding=padding, groups=groups)
    spec = make_spec(x, w, b, padding_mode=mode, **opts)
    assert gemm.copied_columns(spec, ocl.settings) == copy
    out, ref, info = fast(ocl, x, w, b, padding_mode=mode, **opts)
    assert info.algo == "gemm"
    assert_close(out, ref, "float32")


def test_dense_gemm_copies_columns_by_default_for_wide_1x1_strided_layers_only():
    # 1x1 with stride 2 from 256 output channels per group; 2x2 and 3x3 with stride 2
    # ran faster on the implicit GEMM, and a stride-1 layer has nothing to gain
    x = np.ones((1, 64, 14, 14), np.float32)
    for k, cout, stride, copied in (
        (1, 256, 2, True),
        (1, 128, 2, False),
        (2, 256, 2, False),
        (3, 256, 2, False),
        (1, 256, 1, False),
    ):
        w = np.ones((cout, 64, k, k), np.float32)
        spec = make_spec(x, w, None, stride=stride, padding=k // 2)
        assert gemm.copied_columns(spec, DEFAULT) == copied, (k, cout, stride)
    # a copy larger than max_growth times the input is never made: 3x3 stride 1
    s = replace(DEFAULT, dense_columns_kernels=((3, 3),), dense_columns_min_cout=1)
    spec = make_spec(x, np.ones((8, 64, 3, 3), np.float32), None, stride=(2, 1), padding=1)
    assert not gemm.copied_columns(spec, s)  # 9/2 the input


def test_dense_gemm_keeps_rows_where_it_must():
    # padding, a stride (without the column copy) or a kernel taller than 1 need the rows
    s = replace(DEFAULT, dense_columns_kernels=())
    for opts, wshape in ((dict(padding=1), (8, 8, 1, 1)), (dict(stride=2), (8, 8, 1, 1)),
                         ({}, (8, 8, 3, 1))):  # fmt: skip
        spec = make_spec(
            np.ones((1, 8, 7, 7), np.float32), np.ones(wshape, np.float32), None, **opts
        )
        assert gemm.dense_view(spec, s) is spec


# ---------------------------------------------------------------- dtypes and choices


def test_float16_computed_in_float32(ocl):
    x, w, b = rng_arrays(11, (1, 3, 20, 21), (3, 1, 3, 3), dtype=np.float16)
    out, ref, info = fast(ocl, x, w, b, padding=1, groups=3)
    assert info.algo == "direct"
    assert out.dtype == np.float32
    assert_close(out, ref, "float32")


def test_other_dtypes_fall_back(ocl):
    x, w, b = rng_arrays(12, (1, 3, 10, 10), (3, 1, 3, 3), dtype=np.float64)
    spec = make_spec(x, w, b, padding=1, groups=3)
    assert opencl_plan.run(ocl, x, w, b, spec, algo="auto", info=RunInfo()) is None
    assert opencl_plan.run(ocl, x, w, b, spec, algo="direct", info=RunInfo()) is None


@pytest.mark.parametrize(
    "algo, groups, weight, message",
    [
        ("separable", 3, np.arange(27, dtype=np.float32).reshape(3, 1, 3, 3) % 5, "rank-1"),
        ("separable", 1, np.ones((2, 3, 3, 3), np.float32), "depthwise"),
        # FFT tiles run depthwise kernels only (a dense layer here)
        ("fft", 1, np.ones((2, 3, 3, 3), np.float32), "algo='fft' is not available.*depthwise"),
    ],
)
def test_forced_algo_errors(ocl, algo, groups, weight, message):
    x = np.ones((1, 3, 8, 8), np.float32)
    spec = make_spec(x, weight, None, padding=1, groups=groups)
    with pytest.raises(ConvValueError, match=message):
        opencl_plan.run(ocl, x, weight, None, spec, algo=algo, info=RunInfo())


def test_forced_separable_float64_is_an_error(ocl):
    x = np.ones((1, 3, 8, 8))
    w = np.ones((3, 1, 3, 3))
    spec = make_spec(x, w, None, padding=1, groups=3)
    with pytest.raises(ConvValueError, match="float32"):
        opencl_plan.run(ocl, x, w, None, spec, algo="separable", info=RunInfo())


def test_a_fast_kernel_that_does_not_build_falls_back(ocl, monkeypatch):
    # a device whose compiler rejects a fast kernel still runs 'auto' (generic kernel)
    # and reports the failure for a forced algorithm
    def broken(name, defines, info=None):
        raise BackendError(f"building OpenCL program {name}: CL_BUILD_PROGRAM_FAILURE")

    monkeypatch.setattr(ocl, "program", broken)
    x, w, b = rng_arrays(18, (1, 3, 9, 10), (3, 1, 3, 3))
    spec = make_spec(x, w, b, padding=1, groups=3)
    assert opencl_plan.run(ocl, x, w, b, spec, algo="auto", info=RunInfo()) is None
    with pytest.raises(BackendError, match="BUILD_PROGRAM_FAILURE"):
        opencl_plan.run(ocl, x, w, b, spec, algo="gemm", info=RunInfo())


def test_through_conv2d_reports_algo_and_timings(ocl):
    rng = np.random.default_rng(13)
    x = rng.random((3, 64, 70)).astype(np.float32)
    w = np.repeat(gaussian(5, 1.0)[None, None], 3, axis=0).astype(np.float32)
    info = RunInfo()
    y = conv2d(x, w, padding="same", groups=3, padding_mode="reflect", backend="opencl", info=info)
    assert info.algo == "separable"
    assert info.timings["compute"] > 0
    ref = naive_conv2d(x[None], w, pad=(2, 2, 2, 2), groups=3, padding_mode="reflect")[0]
    assert_close(y, ref, "float32")


def test_results_held_by_the_caller_are_not_reused(ocl):
    # outputs come from a pool; one the caller still holds must never be overwritten
    rng = np.random.default_rng(14)
    w = rng.standard_normal((3, 1, 3, 3)).astype(np.float32)
    xs = [rng.random((1, 3, 300, 300)).astype(np.float32) for _ in range(4)]
    outs = [conv2d(x, w, padding=1, groups=3, backend="opencl") for x in xs]
    views = [conv2d(x, w, padding=1, groups=3, backend="opencl")[0, 1] for x in xs]
    for x, out, view in zip(xs, outs, views, strict=True):
        ref = naive_conv2d(x, w, pad=(1, 1, 1, 1), groups=3)
        assert_close(out, ref, "float32")
        assert_close(view, ref[0, 1], "float32")


# ---------------------------------------------------------------- PoCL's disk cache

_SCRIPT = textwrap.dedent(
    """
    import dataclasses
    import sys
    import numpy as np
    sys.path.insert(0, {root!r})
    from convcli import backends
    from convcli.backends.opencl import plan as opencl_plan
    from convcli.backends.opencl.settings import DEFAULT
    from convcli.runinfo import RunInfo
    from convcli.spec import make_spec
    from tests.naive import naive_conv2d, naive_for_spec

    ocl = backends.get_backend("opencl")
    rng = np.random.default_rng(0)
    cases = [
        (rng.random((1, 3, 37, 53), dtype=np.float32), np.ones((3, 1, 5, 5), np.float32) / 25,
         dict(padding=2, groups=3, padding_mode="reflect")),
        (rng.random((1, 3, 37, 53), dtype=np.float32),
         rng.standard_normal((3, 1, 3, 3)).astype(np.float32), dict(padding=1, groups=3)),
        (rng.random((2, 8, 21, 23), dtype=np.float32),
         rng.standard_normal((16, 8, 3, 3)).astype(np.float32), dict(padding=1)),
    ]
    # the last case again as Winograd: three kernels, two (GEMMs + output fused), one
    cases += [cases[-1] + (kind,) for kind in ("split", "fused", "whole")]
    # and a 1x1 layer on pointwise.cl
    cases.append((rng.random((2, 8, 9, 16), dtype=np.float32),
                  rng.standard_normal((12, 8, 1, 1)).astype(np.float32), dict(), "pointwise"))
    for x, w, opts, *kind in cases:
        ocl.settings = dataclasses.replace(
            DEFAULT, winograd=kind not in ([], ["pointwise"]), wino_fused=kind == ["fused"],
            wino_whole=kind == ["whole"], pointwise_min_cin=1, pointwise_min_pixels=1,
            host_pointwise_max_batch=0,
        )
        spec = make_spec(x, w, None, **opts)
        info = RunInfo()
        out = opencl_plan.run(ocl, x, w, None, spec, algo="auto", info=info)
        ref = naive_conv2d(x, w, pad=spec.pad, groups=spec.groups,
                           padding_mode=spec.padding_mode)
        err = float(np.abs(out - ref).max() / np.abs(ref).max())
        kernel = opencl_plan.choose(spec, w, settings=ocl.settings)[0].kernel
        print(info.algo + "/" + kernel, "%.3e" % err, "%.6f" % float(out.astype(np.float64).sum()))
    """
)


def test_second_process_uses_pocl_cache(ocl, tmp_path):
    # PoCL has returned cached programs without kernels for some vector types; build in
    # one process, then run from the disk cache in another and compare.
    outs = run_twice_with_one_pocl_cache(_SCRIPT.format(root=str(ROOT)), tmp_path)
    first, second = (out.split("\n") for out in outs)
    assert first == second
    lines = [line.split() for line in first if line]
    assert [a for a, _, _ in lines] == [
        "separable/dw_direct",
        "direct/dw_direct",
        "gemm/dense_gemm",
        "gemm/winograd",
        "gemm/winograd",
        "gemm/winograd",
        "gemm/pointwise",
    ]
    assert all(float(err) < 2e-5 for _, err, _ in lines)
    if ocl.device.platform.name.startswith("Portable"):
        assert any((tmp_path / "kcache").rglob("*")), "PoCL wrote no cache entries"
