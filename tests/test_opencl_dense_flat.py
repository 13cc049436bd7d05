"""dense_flat (the implicit GEMM over the flat list of output pixels, batch folded in, on
an input padded by pad_copy) against the naive reference, and its route rule."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from convcli import backends, conv2d
from convcli.backends.opencl import dense_flat
from convcli.backends.opencl import plan as opencl_plan
from convcli.backends.opencl.settings import DEFAULT
from convcli.errors import BackendError
from convcli.runinfo import RunInfo
from convcli.spec import make_spec
from tests.conftest import assert_close
from tests.naive import naive_for_spec


@pytest.fixture
def ocl(tune):
    try:
        be = backends.get_backend("opencl")
    except (BackendError, ImportError):
        pytest.skip("no OpenCL device")
    return tune(be, gpu_kernels=False)


@pytest.fixture
def flat_runs(monkeypatch):
    """Counts dense_flat.run calls (the route really ran, not dense_gemm)."""
    calls = []
    real = dense_flat.run

    def counted(*args, **kwargs):
        calls.append(args[4])
        return real(*args, **kwargs)

    monkeypatch.setattr(dense_flat, "run", counted)
    return calls


def arrays(seed, xshape, wshape, bias=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xshape).astype(np.float32)
    w = rng.standard_normal(wshape).astype(np.float32)
    b = rng.standard_normal(wshape[0]).astype(np.float32) if bias else None
    return x, w, b


@pytest.mark.parametrize(
    "n, cin, cout, hw, k, stride, dilation, padding, groups, mode, bias",
    [
        (2, 16, 24, (13, 14), (3, 3), 2, 1, 1, 1, "zeros", True),  # resnet's 3x3 s2, odd
        (3, 5, 17, (9, 12), (3, 3), 2, 1, 1, 1, "reflect", False),  # odd channels, no bias
        (1, 7, 40, (15, 15), (2, 2), 2, 1, 0, 1, "zeros", True),  # convnext's 2x2 s2, odd
        (2, 8, 24, (15, 16), (3, 3), 2, 2, 2, 1, "circular", True),  # dilated
        (2, 12, 36, (11, 13), (3, 3), (2, 1), (1, 2), (1, 2), 2, "replicate", True),  # grouped
        (1, 6, 8, (10, 9), (3, 2), (3, 2), 1, (2, 1), 1, "symmetric", True),  # one vector
        (2, 3, 64, (23, 21), (7, 7), 2, 1, 3, 1, "zeros", True),  # a stem, 7x7 s2 p3
    ],
)
def test_dense_flat_matches_naive(
    ocl, tune, flat_runs, n, cin, cout, hw, k, stride, dilation, padding, groups, mode, bias
):
    tune(ocl, dense_flat=True)
    x, w, b = arrays(cin * cout + n, (n, cin, *hw), (cout, cin // groups, *k), bias)
    opts = dict(stride=stride, dilation=dilation, padding=padding, groups=groups)
    spec = make_spec(x, w, b, padding_mode=mode, **opts)
    info = RunInfo()
    out = opencl_plan.run(ocl, x, w, b, spec, algo="gemm", info=info)
    assert flat_runs == [spec]
    assert info.algo == "gemm"
    assert_close(out, naive_for_spec(x, w, b, spec), "float32")


@pytest.mark.parametrize("tile", [(2, 6), (4, 2), (1, 4), (3, 3)])
@pytest.mark.parametrize("l1", [1024, 1 << 20])
@pytest.mark.parametrize("inner", [True, False])
def test_dense_flat_tiles_strips_and_chunks(ocl, tune, flat_runs, tile, l1, inner):
    # a pixel list that no strip divides (2*25 pixels), input channels in uneven weight
    # chunks (a small L1 budget), blocks of channels past C_out, each tile shape, either
    # launch order
    tune(ocl, dense_flat=True, dense_tile=tile, dense_l1_bytes=l1)
    tune(ocl, dense_flat_inner_bytes=0 if inner else 1 << 62)
    x, w, b = arrays(7, (2, 13, 10, 9), (44, 13, 3, 3))
    spec = make_spec(x, w, b, stride=2, padding=1)
    d = dense_flat.defines(spec, ocl.settings)
    assert (d["COB"], d["XB"]) == tile
    assert ("BLOCKS_INNER" in d) == inner
    if l1 == 1024:
        assert d["STRIP"] > 1 and d["CI_CHUNK"] < 13
    out = opencl_plan.run(ocl, x, w, b, spec, algo="gemm", info=RunInfo())
    assert len(flat_runs) == 1
    assert_close(out, naive_for_spec(x, w, b, spec), "float32")


def test_dense_flat_by_default_through_conv2d(ocl, flat_runs):
    # resnet's 3x3 stride-2 layer on a 7^2 output map takes the route under 'auto'
    x, w, b = arrays(3, (2, 32, 14, 14), (64, 32, 3, 3))
    out = conv2d(x, w, b, stride=2, padding=1, backend="opencl")
    # on CPU devices only (a GPU-type device, Oclgrind in CI, runs dense_gemm)
    assert len(flat_runs) == (1 if backends.get_backend("opencl").is_cpu else 0)
    spec = make_spec(x, w, b, stride=2, padding=1)
    assert_close(out, naive_for_spec(x, w, b, spec), "float32")


def test_dense_flat_rule():
    def spec(cin, cout, k, stride, hw, padding=0):
        x = np.ones((1, cin, hw, hw), np.float32)
        w = np.ones((cout, cin, k, k), np.float32)
        return make_spec(x, w, None, stride=stride, padding=padding)

    taken = [
        spec(256, 512, 3, 2, 14, 1),  # resnet's stride-2 3x3 onto 7^2
        spec(512, 512, 3, 2, 14, 1),
        spec(384, 768, 2, 2, 14),  # convnext's downsampling onto 7^2
        spec(96, 192, 2, 2, 56),  # and onto 28^2: windows that do not overlap
    ]
    left = [
        spec(256, 256, 3, 2, 28, 1),  # 14^2 outputs: dense_gemm ran as fast or faster
        spec(3, 64, 7, 2, 224, 3),  # the stems
        spec(3, 96, 4, 4, 224),
        spec(512, 512, 3, 1, 7, 1),  # stride 1 (Winograd's)
        spec(1024, 2048, 1, 2, 14),  # 1x1 stride 2 (the column copy's)
        spec(64, 32, 3, 2, 14, 1),  # few output channels
    ]
    for s in taken:
        assert dense_flat.pays(s, True, DEFAULT), s
        assert not dense_flat.pays(s, False, DEFAULT), s  # GPU-type devices: dense_gemm
    for s in left:
        assert not dense_flat.pays(s, True, DEFAULT), s
    forced = replace(DEFAULT, dense_flat=True)
    assert dense_flat.pays(left[0], True, forced)


@pytest.mark.parametrize("padding", [1, 0])
def test_dense_flat_programs_are_predicted(ocl, monkeypatch, padding):
    # plan.programs() names the builds a run makes (pad_copy only with padding), so the
    # cost model prices them before the first call
    from convcli.backends.opencl.backend import OpenCLBackend
    from convcli.backends.opencl.runtime import Runtime, _defines_key

    x, w, b = arrays(5, (1, 32, 14, 14), (64, 32, 3 - padding, 3 - padding))
    spec = make_spec(x, w, b, stride=2, padding=padding)
    backend = OpenCLBackend.create(None)  # holds nothing yet
    if not backend.is_cpu:
        pytest.skip("dense_flat's route is for CPU devices")
    built = []
    real = Runtime._build

    def record(self, name, defines):
        built.append((name, defines))
        return real(self, name, defines)

    monkeypatch.setattr(Runtime, "_build", record)
    predicted = opencl_plan.programs(
        spec, w, "auto", cpu=backend.is_cpu, local_mem=backend.limits.local_mem_bytes
    )
    assert [n for n, _ in predicted] == (["pad_copy"] if padding else []) + ["dense_flat"]
    out = backend.run(x, w, b, spec, info=RunInfo())
    assert sorted(built) == sorted((n, _defines_key(d)) for n, d in predicted)
    assert_close(out, naive_for_spec(x, w, b, spec), "float32")


@pytest.mark.parametrize("items", [1, 3, 5, None])
def test_dense_flat_blocks_split_over_work_groups(ocl, tune, flat_runs, items):
    # a pixel chunk's channel blocks over several work-groups (blocks first): splits that
    # do not divide the 6 blocks (5: one work-group of 1), one block each, the rule's
    # own; an odd pixel list (3 images of 5x4 outputs), uneven input-channel chunks
    tune(ocl, dense_flat=True, dense_tile=(1, 4), dense_l1_bytes=1024)
    tune(ocl, dense_flat_inner_bytes=0, dense_flat_inner_items=items)
    x, w, b = arrays(11, (3, 9, 9, 8), (43, 9, 3, 3))
    spec = make_spec(x, w, b, stride=2, padding=1)
    assert "BLOCKS_INNER" in dense_flat.defines(spec, ocl.settings)
    out = opencl_plan.run(ocl, x, w, b, spec, algo="gemm", info=RunInfo())
    assert len(flat_runs) == 1
    assert_close(out, naive_for_spec(x, w, b, spec), "float32")


def test_dense_flat_inner_split_rule():
    # resnet50's 512->512 3x3 s2 14^2 at N=8: 9 pixel chunks of 32 blocks on 2 compute
    # units: 18 work-groups of 16 blocks, not 9 of 32; many chunks keep whole ones
    assert dense_flat.inner_local(32, 9, 2, DEFAULT) == 16
    assert dense_flat.inner_local(48, 9, 2, DEFAULT) == 24  # convnext's 384->768
    assert dense_flat.inner_local(24, 33, 2, DEFAULT) == 24  # 192->384 2x2 s2 28^2
    assert dense_flat.inner_local(128, 40, 1, DEFAULT) == 64  # at most 64
    assert dense_flat.inner_local(3, 1, 16, DEFAULT) == 1  # no fewer than one block
    forced = replace(DEFAULT, dense_flat_inner_items=5)
    assert dense_flat.inner_local(32, 9, 2, forced) == 5
    assert dense_flat.inner_local(3, 9, 2, forced) == 3
