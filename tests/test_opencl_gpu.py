"""The GPU-shaped path (``direct_local.cl``, :mod:`convcli.backends.opencl.gpu`) against
the naive reference.

On a CPU device (PoCL in CI) the kernels are forced with ``settings.gpu_kernels``;
on a GPU-type device (Oclgrind in ``.ci/opencl``, with a GPU's work-group and local
memory limits and its race and access checks) they are what ``algo='auto'`` runs. Shapes
are tiny: Oclgrind simulates every work-item.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from convcli import RunInfo, conv2d
from convcli.backends.opencl import backend as ob
from convcli.backends.opencl import gpu as opencl_gpu
from convcli.backends.opencl import plan as opencl_fast
from convcli.backends.opencl.settings import Settings
from convcli.errors import ConvValueError
from convcli.spec import PADDING_MODES, make_spec
from tests.conftest import assert_close
from tests.naive import naive_for_spec


def _backend(ocl, launched: list, **limits):
    """A backend on the same device (its own caches), its limits changed by ``limits``
    (a smaller GPU's), recording (kernel name, local size, local memory bytes) of every
    launch."""
    other = ob.OpenCLBackend(ocl._cl, ocl.platform, ocl.device, ocl.ctx, ocl.queue)
    other.settings = ocl.settings
    other.limits = dataclasses.replace(ocl.limits, **limits)
    real = other.enqueue

    def spy(kernel, gsize, local, args, info=None):
        mem = sum(a.size for a in args if isinstance(a, ocl._cl.LocalMemory))
        launched.append((kernel.function_name, other.local_size(kernel, local), mem))
        return real(kernel, gsize, local, args, info)

    other.enqueue = spy
    return other


def _random_case(seed: int):
    """A random valid convolution: stride, dilation, groups (depthwise and multipliers
    included), every padding mode, odd and tiny sizes, bias or not."""
    rng = np.random.default_rng(seed)
    while True:
        kind = rng.choice(["dense", "grouped", "depthwise"])
        groups = 1 if kind == "dense" else int(rng.integers(2, 4))
        cin_g = 1 if kind == "depthwise" else int(rng.integers(1, 4))
        cout_g = int(rng.integers(1, 4)) if kind == "depthwise" else int(rng.integers(1, 11))
        kh, kw = (int(v) for v in rng.integers(1, 6, 2))
        h, w = (int(v) for v in rng.integers(1, 14, 2))
        stride = tuple(int(v) for v in rng.integers(1, 4, 2))
        dilation = tuple(int(v) for v in rng.integers(1, 4, 2))
        pad = tuple(int(v) for v in rng.integers(0, 4, 2))
        # "same" pads asymmetrically where the extent is even
        padding = "same" if rng.random() < 0.25 else pad
        mode = str(rng.choice(PADDING_MODES))
        f = np.float32
        x = rng.standard_normal((int(rng.integers(1, 3)), groups * cin_g, h, w)).astype(f)
        wt = rng.standard_normal((groups * cout_g, cin_g, kh, kw)).astype(f)
        b = rng.standard_normal(groups * cout_g).astype(f) if rng.random() < 0.7 else None
        try:
            spec = make_spec(
                x,
                wt,
                b,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
                padding_mode=mode,
            )
        except ConvValueError:
            continue
        if spec.h_out * spec.w_out == 0:
            continue
        return x, wt, b, spec


def _run(be, x, w, b, spec, algo="auto"):
    info = RunInfo()
    y = be.run(x, w, b, spec, algo=algo, info=info)
    return y, info


@pytest.mark.parametrize("seed", range(12))
def test_random_configurations_match_naive(ocl, gpu, seed):
    x, w, b, spec = _random_case(seed)
    launched: list = []
    # odd seeds: a work-group of at most 4 x 2 items, so that these small images span
    # several tiles in both directions
    small = dict(max_work_group_size=8, max_work_item_sizes=(4, 2, 1)) if seed % 2 else {}
    be = _backend(ocl, launched, **small)
    y, info = _run(be, x, w, b, spec)
    assert_close(y, naive_for_spec(x, w, b, spec), "float32")
    assert info.algo == "direct"
    assert [name for name, _, _ in launched] == ["direct_local"]


@pytest.mark.parametrize(
    "name, x, w, opts",
    [
        # depthwise, multiplier 1 and 3, a wide and a one-pixel-high image
        ("dw wide", (1, 2, 3, 150), (2, 1, 3, 3), dict(groups=2, padding=1)),
        ("dw mult", (1, 2, 5, 9), (6, 1, 3, 3), dict(groups=2, padding="same")),
        ("dw one row", (1, 3, 1, 70), (3, 1, 1, 5), dict(groups=3, padding=(0, 2))),
        ("dw dilated", (1, 2, 9, 11), (2, 1, 3, 3), dict(groups=2, dilation=3, padding=3)),
        # several tiles across and down, strided: 2 x 64-column and 2 x 64-row tiles
        ("dw wide s2", (1, 1, 3, 300), (1, 1, 3, 3), dict(stride=(1, 2), padding=1)),
        ("dw tall s2", (1, 1, 150, 5), (1, 1, 3, 3), dict(stride=(2, 1), padding=1)),
        # dense: 1x1, strided, 16 channels (two blocks of 8), tiny image
        ("1x1", (2, 5, 4, 7), (16, 5, 1, 1), {}),
        ("dense s2", (1, 3, 11, 20), (12, 3, 3, 3), dict(stride=2, padding=1)),
        ("tiny", (1, 2, 1, 1), (3, 2, 3, 3), dict(padding=1, padding_mode="replicate")),
    ],
)
def test_layers_match_naive(ocl, gpu, name, x, w, opts):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(x).astype(np.float32)
    w = rng.standard_normal(w).astype(np.float32)
    b = rng.standard_normal(w.shape[0]).astype(np.float32)
    spec = make_spec(x, w, b, **opts)
    launched: list = []
    y, _ = _run(_backend(ocl, launched), x, w, b, spec)
    assert_close(y, naive_for_spec(x, w, b, spec), "float32")
    assert [n for n, _, _ in launched] == ["direct_local"]


@pytest.mark.parametrize("seed", range(6))
def test_gemm_random_configurations_match_naive(ocl, gpu, seed):
    # 1x1 layers, stride 1, no padding, 16 or more input channels per group (a K chunk
    # and a remainder), channel counts that are not multiples of the tile, odd planes
    rng = np.random.default_rng(100 + seed)
    groups = int(rng.integers(1, 4))
    cin_g, cout_g = int(rng.integers(16, 41)), int(rng.integers(1, 41))
    h, w = (int(v) for v in rng.integers(1, 14, 2))
    f = np.float32
    x = rng.standard_normal((int(rng.integers(1, 3)), groups * cin_g, h, w)).astype(f)
    wt = rng.standard_normal((groups * cout_g, cin_g, 1, 1)).astype(f)
    b = rng.standard_normal(groups * cout_g).astype(f) if seed % 3 else None
    spec = make_spec(x, wt, b, groups=groups)
    launched: list = []
    small = dict(max_work_group_size=8, max_work_item_sizes=(4, 2, 1)) if seed % 2 else {}
    y, info = _run(_backend(ocl, launched, **small), x, wt, b, spec)
    assert_close(y, naive_for_spec(x, wt, b, spec), "float32")
    assert info.algo == "gemm" and [n for n, _, _ in launched] == ["gemm_local"]


def test_gemm_tiles_follow_the_devices_local_memory(ocl, gpu):
    # 16 x 16 items need 8 KiB of K-chunk tiles; in 2 KiB the work-group shrinks
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 20, 9, 30)).astype(np.float32)
    w = rng.standard_normal((40, 20, 1, 1)).astype(np.float32)
    spec = make_spec(x, w, None)
    launched: list = []
    y, _ = _run(_backend(ocl, launched, local_mem_bytes=2048), x, w, None, spec)
    assert_close(y, naive_for_spec(x, w, None, spec), "float32")
    ((name, local, mem),) = launched
    assert name == "gemm_local" and mem == opencl_gpu.gemm_bytes(local) <= 2048


@pytest.mark.parametrize("group, items", [(32, (32, 32, 32)), (8, (2, 8, 1))])
def test_work_group_and_local_memory_follow_the_device(ocl, gpu, group, items):
    # a small GPU: few items per group, 2 KiB of local memory (a 3x3 dilated 2 tile of
    # 32 items needs more, so rows are given up until it fits)
    x = np.random.default_rng(2).standard_normal((1, 3, 12, 40)).astype(np.float32)
    w = np.random.default_rng(3).standard_normal((4, 3, 3, 3)).astype(np.float32)
    spec = make_spec(x, w, None, padding=2, dilation=2)
    launched: list = []
    limit = 2048
    be = _backend(
        ocl, launched, max_work_group_size=group, max_work_item_sizes=items, local_mem_bytes=limit
    )
    y, _ = _run(be, x, w, None, spec)
    assert_close(y, naive_for_spec(x, w, None, spec), "float32")
    ((name, local, mem),) = launched
    assert name == "direct_local"
    assert np.prod(local) <= group and all(v <= c for v, c in zip(local, items, strict=False))
    cob, _, rx = opencl_gpu.blocking(spec)
    assert mem == opencl_gpu.tile_bytes(spec, cob, rx, local) <= limit


def test_a_tile_beyond_local_memory_runs_the_generic_kernel(ocl, gpu):
    x = np.random.default_rng(4).standard_normal((1, 2, 6, 7)).astype(np.float32)
    w = np.random.default_rng(5).standard_normal((2, 1, 3, 3)).astype(np.float32)
    spec = make_spec(x, w, None, padding=1, groups=2)
    launched: list = []
    # one item's tile (3x3 input + 9 taps = 72 bytes) does not fit in 64 bytes
    y, info = _run(_backend(ocl, launched, local_mem_bytes=64), x, w, None, spec)
    assert_close(y, naive_for_spec(x, w, None, spec), "float32")
    assert info.algo == "direct" and [n for n, _, _ in launched] == ["conv2d_direct"]


def test_float16_input_runs_in_float32(ocl, gpu):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 4, 7, 9)).astype(np.float16)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float16)
    y = conv2d(x, w, padding=1, groups=2, backend="opencl")
    ref = naive_for_spec(x, w, None, make_spec(x, w, None, padding=1, groups=2))
    assert_close(y, ref, "float16")


# ---------------------------------------------------------------------- the choice


def _plan(x, w, cpu: bool, algo: str = "auto", **opts):
    spec = make_spec(np.zeros(x, np.float32), np.asarray(w, np.float32), None, **opts)
    s = Settings(host_pointwise_max_batch=0)  # 1x1 layers of one image on the device
    plan, _ = opencl_fast.choose(spec, w, algo, cpu=cpu, settings=s)
    return opencl_gpu.device_plan(plan, spec, algo, cpu, s)


@pytest.mark.parametrize(
    "x, w, opts, algo, cpu_kernel",
    [
        ((1, 3, 64, 64), np.ones((3, 1, 3, 3)), dict(groups=3), "auto", "dw_direct"),
        ((1, 16, 28, 28), np.ones((16, 16, 3, 3)), {}, "auto", "dense_gemm"),
        ((1, 64, 28, 28), np.ones((64, 64, 3, 3)), {}, "auto", "winograd"),
        ((1, 8, 32, 32), np.ones((16, 8, 1, 1)), {}, "auto", "gemm_1x1"),
        ((1, 16, 28, 28), np.ones((16, 16, 3, 3)), {}, "direct", "dw_direct"),
        ((1, 32, 28, 28), np.ones((16, 32, 1, 1)), {}, "direct", "dw_direct"),
    ],
)
def test_gpu_devices_run_direct_local_in_place_of_cpu_shaped_kernels(x, w, opts, algo, cpu_kernel):
    assert _plan(x, w, cpu=True, algo=algo, **opts).kernel == cpu_kernel
    assert _plan(x, w, cpu=False, algo=algo, **opts) == opencl_fast.Plan("direct", "direct_local")


@pytest.mark.parametrize(
    "x, w, opts, cpu_kernel",
    [
        ((1, 128, 32, 32), np.ones((16, 128, 1, 1)), {}, "pointwise"),
        ((1, 32, 8, 8), np.ones((64, 16, 1, 1)), dict(groups=2), "gemm_1x1"),
        ((1, 16, 8, 8), np.ones((2, 16, 1, 1)), {}, "dw_direct"),
    ],
)
def test_gpu_devices_run_1x1_layers_as_a_local_memory_gemm(x, w, opts, cpu_kernel):
    assert _plan(x, w, cpu=True, **opts).kernel == cpu_kernel
    assert _plan(x, w, cpu=False, **opts) == opencl_fast.Plan("gemm", "gemm_local")
    # a forced GEMM too (a tiled call forces the whole's algorithm on its bands)
    assert _plan(x, w, cpu=False, algo="gemm", **opts) == opencl_fast.Plan("gemm", "gemm_local")


@pytest.mark.parametrize(
    "x, w, opts, algo, kernel",
    [
        # algorithm choices stay: separable for a rank-1 filter (its passes on the GPU
        # kernel), a forced GEMM of a KxK layer
        ((1, 3, 64, 64), np.ones((3, 1, 5, 5)), dict(groups=3), "auto", "direct_local"),
        ((1, 3, 64, 64), np.ones((3, 1, 31, 31)), dict(groups=3), "separable", "direct_local"),
        ((1, 16, 28, 28), np.ones((16, 16, 3, 3)), {}, "gemm", "dense_gemm"),
    ],
)
def test_gpu_devices_keep_algorithm_choices(x, w, opts, algo, kernel):
    plan = _plan(x, w, cpu=False, algo=algo, **opts)
    assert plan.kernel == kernel and plan.algo in ("separable", "gemm")


def test_the_switch_and_environment_choose_the_kernels(monkeypatch):
    monkeypatch.delenv(opencl_gpu.GPU_KERNELS_ENV, raising=False)
    assert opencl_gpu.gpu_kernels(cpu=False) and not opencl_gpu.gpu_kernels(cpu=True)
    monkeypatch.setenv(opencl_gpu.GPU_KERNELS_ENV, "1")
    assert opencl_gpu.gpu_kernels(cpu=True)
    monkeypatch.setenv(opencl_gpu.GPU_KERNELS_ENV, "0")
    assert not opencl_gpu.gpu_kernels(cpu=False)
    assert opencl_gpu.gpu_kernels(cpu=True, s=Settings(gpu_kernels=True))


def test_plan_algo_reports_what_runs(ocl, gpu):
    # a dense 3x3 layer: "gemm" on a CPU device, the direct tiles on a GPU-shaped one
    w = np.ones((16, 16, 3, 3), np.float32)
    spec = make_spec(np.zeros((1, 16, 8, 8), np.float32), w, None)
    assert ocl.plan_algo(spec, w) == "direct"


def test_each_new_local_size_counts_its_first_launch_as_build(ocl, gpu, monkeypatch):
    # drivers compile per kernel and work-group size at first launch (PoCL does): one
    # build entry for the program, one per new local size, none on a repeat
    other = ob.OpenCLBackend(ocl._cl, ocl.platform, ocl.device, ocl.ctx, ocl.queue)
    other.settings = ocl.settings
    added: list = []
    real = other._add

    def spy(info, key, seconds):
        added.append(key)
        real(info, key, seconds)

    monkeypatch.setattr(other, "_add", spy)
    w = np.random.default_rng(9).standard_normal((2, 1, 3, 3)).astype(np.float32)
    counts = []
    for h in (4, 8, 8):  # 16 x 4, then 16 x 8 items per work-group
        x = np.random.default_rng(h).standard_normal((1, 2, h, 20)).astype(np.float32)
        spec = make_spec(x, w, None, padding=1, groups=2)
        added.clear()
        y, _ = _run(other, x, w, None, spec)
        assert_close(y, naive_for_spec(x, w, None, spec), "float32")
        counts.append(added.count("build"))
    assert counts == [2, 1, 0]


@pytest.mark.parametrize(
    "x, w, opts",
    [
        ((1, 3, 30, 21), (6, 1, 5, 3), dict(stride=(2, 1), padding=(3, 1), groups=3)),
        ((2, 20, 25, 9), (7, 20, 1, 1), {}),
    ],
    ids=["depthwise", "1x1"],
)
def test_row_bands_of_a_tiled_call_run_the_gpu_kernels(ocl, gpu, monkeypatch, x, w, opts):
    from tests.conftest import band_budget

    rng = np.random.default_rng(10)
    x = rng.standard_normal(x).astype(np.float32)
    w = rng.standard_normal(w).astype(np.float32)
    kw = dict(backend="opencl", padding_mode="reflect" if opts else "zeros", **opts)
    names: list = []
    real = ob.Runtime.enqueue  # both devices: this one and the inline one

    def spy(self, kernel, *args, **kwargs):
        names.append(kernel.function_name)
        return real(self, kernel, *args, **kwargs)

    monkeypatch.setattr(ob.Runtime, "enqueue", spy)
    info = RunInfo()
    y = conv2d(x, w, max_memory=band_budget(x, w, 4, **kw), info=info, **kw)
    assert info.tiles > 2
    spec = make_spec(x, w, None, **{k: v for k, v in kw.items() if k != "backend"})
    assert_close(y, naive_for_spec(x, w, None, spec), "float32")
    assert set(names) == {"direct_local" if opts else "gemm_local"}


@pytest.mark.parametrize(
    "k, opts",
    [
        # W2-W4's kinds: a Gaussian with 'same' reflect padding, a box (running sums on a
        # CPU), a wide Gaussian; strides, dilations and a channel multiplier
        (5, dict(padding="same", padding_mode="reflect")),
        (7, dict(padding=3, padding_mode="replicate", box=True)),
        (31, dict(padding=15)),
        (5, dict(stride=(2, 3), dilation=(1, 2), padding=(2, 4), padding_mode="circular")),
        (4, dict(padding=(1, 2), padding_mode="symmetric", multiplier=2)),
    ],
)
def test_separable_passes_match_naive(ocl, gpu, k, opts):
    opts = dict(opts)
    box, mult = opts.pop("box", False), opts.pop("multiplier", 1)
    rng = np.random.default_rng(11)
    t = np.ones(k) if box else np.exp(-((np.arange(k) - k / 2) ** 2) / k)
    w = np.stack([np.outer(t, t * (1 + i)) for i in range(3 * mult)])[:, None]
    w = w.astype(np.float32)
    x = rng.standard_normal((1, 3, 23, 41)).astype(np.float32)
    b = rng.standard_normal(3 * mult).astype(np.float32)
    spec = make_spec(x, w, b, groups=3, **opts)
    launched: list = []
    y, info = _run(_backend(ocl, launched), x, w, b, spec)
    assert_close(y, naive_for_spec(x, w, b, spec), "float32")
    assert info.algo == "separable"
    assert [n for n, _, _ in launched] == ["direct_local", "direct_local"]
