"""Depthwise layers on 48-64-column maps (``dw_wide``: dw_pad, then dw_direct
with no padding) against the naive reference, and where the planner sends them."""

from __future__ import annotations

import numpy as np
import pytest

from convcli import backends, conv2d
from convcli.backends.opencl import depthwise, plan
from convcli.backends.opencl.settings import DEFAULT
from convcli.errors import BackendError
from convcli.runinfo import RunInfo
from convcli.spec import make_spec
from tests.conftest import assert_close
from tests.naive import naive_for_spec


@pytest.fixture(scope="module")
def ocl():
    try:
        backend = backends.get_backend("opencl")
    except (BackendError, ImportError):
        pytest.skip("no OpenCL device")
    if not backend.is_cpu:
        pytest.skip("dw_wide runs on CPU devices only")
    return backend


def _cases(count: int) -> list[tuple]:
    """Random depthwise layers (seeded) that dw_wide takes: 48-64-column outputs (whole
    float8 vectors), kernels 3-7 (some not square, some dilated), asymmetric padding,
    multipliers, bias or none, batch 1-3; fewer than 8 channels (from 8 on, kernels of
    25+ taps run dw_blocks)."""
    rng = np.random.default_rng(150)
    cases = []
    while len(cases) < count:
        c = int(rng.integers(1, 8))
        kh, kw = (int(v) for v in rng.choice([3, 5, 7], 2))
        dh, dw = (int(v) for v in rng.choice([1, 1, 2], 2))
        pad = (int(rng.integers(0, kh)), int(rng.integers(1, kw)))
        w_out = int(rng.choice([48, 56, 64]))
        w = w_out - 2 * pad[1] + dw * (kw - 1)
        h = int(rng.integers(dh * (kh - 1) + 1, 40))
        if w < dw * (kw - 1) + 1:
            continue
        mult = int(rng.choice([1, 1, 2]))
        cases.append((c, mult, (h, w), (kh, kw), (dh, dw), pad, bool(rng.integers(2)),
                      int(rng.integers(1, 4))))  # fmt: skip
    return cases


@pytest.mark.parametrize("c, mult, hw, k, dilation, padding, bias, n", _cases(10))
def test_dw_wide_matches_naive(ocl, c, mult, hw, k, dilation, padding, bias, n):
    rng = np.random.default_rng(c * 1000 + hw[0])
    x = rng.standard_normal((n, c, *hw)).astype(np.float32)
    w = rng.standard_normal((c * mult, 1, *k)).astype(np.float32)
    b = rng.standard_normal(c * mult).astype(np.float32) if bias else None
    spec = make_spec(x, w, b, padding=padding, dilation=dilation, groups=c)
    assert plan.choose(spec, w, cpu=True)[0].kernel == "dw_wide", spec
    info = RunInfo()
    out = plan.run(ocl, x, w, b, spec, algo="auto", info=info)
    assert info.algo == "direct" and out.shape == (n, c * mult, spec.h_out, spec.w_out)
    assert_close(out, naive_for_spec(x, w, b, spec), "float32")


def test_dw_wide_twice_and_after_a_larger_layer(ocl):
    """The padded copy lives in a reused scratch buffer: a smaller layer after a larger
    one, and the same layer twice, read only their own planes."""
    rng = np.random.default_rng(7)
    for n, c in ((3, 12), (1, 5), (1, 5)):
        x = rng.standard_normal((n, c, 30, 56)).astype(np.float32)
        w = rng.standard_normal((c, 1, 7, 7)).astype(np.float32)
        got = conv2d(x, w, backend="opencl", padding=3, groups=c)
        ref = naive_for_spec(x, w, None, make_spec(x, w, None, padding=3, groups=c))
        assert_close(got, ref, "float32")


@pytest.mark.parametrize(
    "w_out_cols, stride, mode, cpu, dtype, wide",
    [
        (56, 1, "zeros", True, np.float32, True),
        (48, 1, "zeros", True, np.float32, True),
        (64, 1, "zeros", True, np.float32, True),
        (60, 1, "zeros", True, np.float32, False),  # a partial last float8
        (112, 1, "zeros", True, np.float32, False),  # wider: the copy costs more
        (40, 1, "zeros", True, np.float32, False),
        (56, 2, "zeros", True, np.float32, False),  # stride 2: the copy costs more
        (56, 1, "reflect", True, np.float32, False),  # only zero padding is copied
        (56, 1, "zeros", False, np.float32, False),  # GPUs keep their kernels
        (56, 1, "zeros", True, np.float16, False),
    ],
)
def test_dw_wide_only_where_it_pays(w_out_cols, stride, mode, cpu, dtype, wide):
    # 4 channels: from 8 on, dw_blocks takes these rows
    x = np.ones((1, 4, 20, w_out_cols * stride), dtype)
    w = np.ones((4, 1, 3, 3), dtype)
    spec = make_spec(x, w, None, padding=1, stride=stride, groups=4, padding_mode=mode)
    assert depthwise.wide_pays(spec, cpu, DEFAULT) == wide
    if cpu and dtype == np.float32:
        kernel = plan.choose(spec, w, cpu=cpu)[0].kernel
        assert (kernel == "dw_wide") == wide, kernel


def test_the_cost_model_predicts_its_builds(monkeypatch, ocl):
    """plan.programs() names the two programs a dw_wide run builds."""
    from convcli.backends.opencl.backend import OpenCLBackend
    from convcli.backends.opencl.runtime import Runtime, _defines_key

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 6, 21, 56)).astype(np.float32)
    w = rng.standard_normal((6, 1, 5, 5)).astype(np.float32)
    spec = make_spec(x, w, None, padding=2, groups=6)
    backend = OpenCLBackend.create(None)
    built = []
    real = Runtime._build  # the inline device's builds too

    def record(self, name, defines):
        built.append((name, defines))
        return real(self, name, defines)

    monkeypatch.setattr(Runtime, "_build", record)
    predicted = plan.programs(spec, w, "auto", cpu=True,
                                     local_mem=backend.limits.local_mem_bytes)  # fmt: skip
    assert [n for n, _ in predicted] == ["dw_pad", "dw_direct"]
    y = backend.run(x, w, None, spec, info=RunInfo())
    assert sorted(built) == sorted((n, _defines_key(d)) for n, d in predicted)
    assert_close(y, naive_for_spec(x, w, None, spec), "float32")
