"""The GPU-shaped FFT path (``fft_local.cl``, :mod:`convcli.backends.opencl.fft_local`)
against the naive reference.

On a CPU device (PoCL in CI) the GPU-shaped kernels are forced with
``settings.gpu_kernels``; on a GPU-type device (Oclgrind in ``.ci/opencl``, with a
GPU's work-group and local memory limits and its race and access checks) they are what
runs anyway. Shapes are small (Oclgrind simulates every work-item) but span several tiles
of the small sides forced here, with odd tile counts (a half-empty pair) and tiles across
every border. ``.ci/opencl`` runs a subset under Oclgrind (its ``FFT_LOCAL`` list).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from convcli import RunInfo, conv2d
from convcli.backends.opencl import backend as ob
from convcli.backends.opencl import fft as opencl_fft
from convcli.backends.opencl import fft_local as opencl_fft_local
from convcli.backends.opencl import gpu as opencl_gpu
from convcli.backends.opencl import plan as opencl_fast
from convcli.errors import ConvValueError
from convcli.spec import PADDING_MODES, make_spec
from tests.conftest import assert_close, band_budget, require_device
from tests.naive import naive_for_spec


def _backend(ocl, launched: list, refuse=(), **limits):
    """A backend on the same device (its own caches), its limits changed by ``limits``,
    recording (kernel name, tile side or None, local size) of every launch; launches of
    ``fft_local`` with a tile side in ``refuse`` fail as a driver refusing their size.
    Its settings are ``ocl``'s (see the ``tune`` fixture)."""
    other = ob.OpenCLBackend(ocl._cl, ocl.platform, ocl.device, ocl.ctx, ocl.queue)
    other.settings = ocl.settings
    other.limits = dataclasses.replace(ocl.limits, **limits)
    built: list = []
    program, enqueue = other.program, other.enqueue

    def program_spy(name, defines=None, info=None):
        built.append((name, dict(defines or {})))
        return program(name, defines, info)

    def enqueue_spy(kernel, gsize, local, args, info=None):
        name = kernel.function_name
        t = next((d.get("T") for n, d in reversed(built) if n == name), None)
        launched.append((name, t, other.local_size(kernel, local)))
        if name == "fft_local" and t in refuse:
            cl = ocl._cl
            code = cl.status_code.OUT_OF_RESOURCES
            raise cl.RuntimeError(cl._cl._ErrorRecord("clEnqueueNDRangeKernel", code, "refused"))
        return enqueue(kernel, gsize, local, args, info)

    other.program = program_spy
    other.enqueue = enqueue_spy
    return other


def disk(k: int) -> np.ndarray:
    t = np.arange(k) - (k - 1) / 2
    d = (t[:, None] ** 2 + t[None, :] ** 2 <= ((k - 1) / 2) ** 2 + 0.5).astype(np.float32)
    return d / d.sum()


def _case(seed: int, max_side: int = 48):
    """A random depthwise convolution: channel multiplier, stride, dilation, every padding
    mode ('same' included), bias or not, a kernel of up to 9 x 9 taps."""
    rng = np.random.default_rng(seed)
    while True:
        c, mult = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        kh, kw = (int(v) for v in rng.integers(2, 10, 2))
        dilation = tuple(int(v) for v in rng.integers(1, 3, 2))
        stride = tuple(int(v) for v in rng.integers(1, 4, 2))
        h, w = (int(v) for v in rng.integers(1, max_side, 2))
        keh, kew = (kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1
        pad = (int(rng.integers(0, keh)), int(rng.integers(0, kew)))
        padding = "same" if rng.random() < 0.25 and stride == (1, 1) else pad
        mode = str(rng.choice(PADDING_MODES))
        f = np.float32
        x = rng.standard_normal((int(rng.integers(1, 3)), c, h, w)).astype(f)
        wt = rng.standard_normal((c * mult, 1, kh, kw)).astype(f)
        b = rng.standard_normal(c * mult).astype(f) if rng.random() < 0.7 else None
        opts = dict(stride=stride, padding=padding, dilation=dilation, groups=c)
        try:
            spec = make_spec(x, wt, b, padding_mode=mode, **opts)
        except ConvValueError:
            continue
        if spec.h_out * spec.w_out == 0:
            continue
        return x, wt, b, spec


def _run(be, x, w, b, spec, algo="fft"):
    info = RunInfo()
    y = be.run(x, w, b, spec, algo=algo, info=info)
    return y, info


def _tile(tune, ocl, spec, side: int | None) -> int:
    """Force the tile side (``side``, or the smallest that fits the kernel) on ``ocl``."""
    ke = max(opencl_fft._extent(spec))
    side = side or next(t for t in (16, 32, 64) if t > ke)
    require_device(local_mem=opencl_fft_local.tile_bytes(side))
    tune(ocl, fft_local_tiles=(side,))
    return side


SMALL = dict(max_work_group_size=8, max_work_item_sizes=(4, 2, 1))


@pytest.mark.parametrize("seed", range(16))
def test_random_configurations_match_naive(ocl, gpu, tune, seed):
    x, w, b, spec = _case(seed)
    side = _tile(tune, ocl, spec, None)
    launched: list = []
    # odd seeds: a work-group of at most 8 items (each takes many butterflies per stage)
    small = SMALL if seed % 2 else {}
    y, info = _run(_backend(ocl, launched, **small), x, w, b, spec)
    assert_close(y, naive_for_spec(x, w, b, spec), "float32")
    assert info.algo == "fft"
    ((name, t, local),) = launched
    assert (name, t) == ("fft_local", side)
    assert local[1] == 1 and local[0] <= (8 if small else ocl.settings.fft_local_items)


@pytest.mark.parametrize("mode", PADDING_MODES)
@pytest.mark.parametrize(
    "shape, k, opts, side",
    [
        # several tiles each way, an odd tile count (a half-empty pair), multiplier 2
        ((1, 2, 37, 29), (5, 5), dict(padding=2, mult=2), 16),
        # strides and dilation, asymmetric padding, batch of two
        ((2, 1, 30, 34), (3, 4), dict(stride=(2, 3), dilation=(2, 1), padding=(3, 2)), 16),
        # the image smaller than the tile; a 'same' split of an even extent
        ((1, 1, 9, 11), (6, 4), dict(padding="same"), 32),
    ],
    ids=["tiles", "stride", "small"],
)
def test_padding_modes_match_naive(ocl, gpu, tune, mode, shape, k, opts, side):
    opts = dict(opts)
    mult = opts.pop("mult", 1)
    rng = np.random.default_rng(sum(shape) + k[0])
    x = rng.standard_normal(shape).astype(np.float32)
    c = shape[1]
    w = rng.standard_normal((c * mult, 1, *k)).astype(np.float32)
    b = rng.standard_normal(c * mult).astype(np.float32)
    spec = make_spec(x, w, b, groups=c, padding_mode=mode, **opts)
    _tile(tune, ocl, spec, side)
    launched: list = []
    y, info = _run(_backend(ocl, launched, **(SMALL if mode == "circular" else {})), x, w, b, spec)
    assert_close(y, naive_for_spec(x, w, b, spec), "float32")
    assert info.algo == "fft" and [(n, t) for n, t, _ in launched] == [("fft_local", side)]


def test_each_tile_side_matches_naive(ocl, gpu, tune):
    rng = np.random.default_rng(3)
    for k, side in ((7, 16), (13, 32), (25, 64)):
        if opencl_fft_local.tile_bytes(side) > ocl.limits.local_mem_bytes:
            continue  # beyond the device's local memory: the planner skips the side too
        tune(ocl, fft_local_tiles=(side,))
        x = rng.standard_normal((1, 1, 40, 50)).astype(np.float32)
        w = disk(k)[None, None] * rng.uniform(0.5, 1.5, (k, k)).astype(np.float32)
        spec = make_spec(x, w, None, padding=k // 2)
        launched: list = []
        y, _ = _run(_backend(ocl, launched), x, w, None, spec)
        assert_close(y, naive_for_spec(x, w, None, spec), "float32")
        assert [(n, t) for n, t, _ in launched] == [("fft_local", side)]


def test_local_memory_picks_the_tile_side(ocl, gpu):
    # 13x13 on 48x48: a 64 tile is the cheapest, but 20 KB of local memory holds only
    # 32 (8 KiB)
    x = np.random.default_rng(4).standard_normal((1, 2, 48, 48)).astype(np.float32)
    w = np.random.default_rng(5).standard_normal((2, 1, 13, 13)).astype(np.float32)
    spec = make_spec(x, w, None, padding=6, groups=2)
    assert opencl_fft_local.tiles(spec)[0] == 64
    launched: list = []
    y, _ = _run(_backend(ocl, launched, local_mem_bytes=20000), x, w, None, spec)
    assert_close(y, naive_for_spec(x, w, None, spec), "float32")
    assert [(n, t) for n, t, _ in launched] == [("fft_local", 32)]


def test_a_refused_launch_runs_the_next_tile_side(ocl, gpu):
    require_device(local_mem=opencl_fft_local.tile_bytes(64))
    x = np.random.default_rng(6).standard_normal((1, 1, 48, 48)).astype(np.float32)
    w = np.random.default_rng(7).standard_normal((1, 1, 13, 13)).astype(np.float32)
    b = np.ones(1, np.float32)
    spec = make_spec(x, w, b, padding=6)
    launched: list = []
    y, info = _run(_backend(ocl, launched, refuse=(64,)), x, w, b, spec)
    assert_close(y, naive_for_spec(x, w, b, spec), "float32")
    assert info.algo == "fft"
    assert [(n, t) for n, t, _ in launched] == [("fft_local", 64), ("fft_local", 32)]


@pytest.mark.parametrize(
    "algo, k, kernel",
    [
        # no tile runs: a forced FFT keeps the FFT (fft_conv); auto the GPU's direct
        # taps, or the generic kernel past direct_local's taps
        ("fft", 13, "fft_conv"),
        ("auto", 13, "direct_local"),
        ("auto", 17, "conv2d_direct"),
    ],
)
def test_refused_everywhere_falls_back(ocl, gpu, tune, algo, k, kernel):
    require_device(local_mem=opencl_fft._tile_bytes(32))
    x = np.random.default_rng(8).standard_normal((1, 1, 96, 96)).astype(np.float32)
    w = np.random.default_rng(9).standard_normal((1, 1, k, k)).astype(np.float32)
    spec = make_spec(x, w, None, padding=k // 2)
    assert opencl_fft.pays(spec)  # auto runs FFT tiles
    if algo == "fft":
        tune(ocl, fft_tiles=(32,))  # one fft_conv build
    launched: list = []
    be = _backend(ocl, launched, refuse=ocl.settings.fft_local_tiles)
    y, info = _run(be, x, w, None, spec, algo=algo)
    assert_close(y, naive_for_spec(x, w, None, spec), "float32")
    tried = opencl_fft_local.tiles(spec, ocl.limits.local_mem_bytes)
    if algo == "auto" and not opencl_fft_local._pays(spec, tried[0]):
        tried = []  # a small local memory's tiles do not pay: direct taps at once
    assert [n for n, _, _ in launched] == ["fft_local"] * len(tried) + [kernel]
    assert info.algo == ("fft" if kernel.startswith("fft") else "direct")


def test_too_little_local_memory_for_any_fft(ocl, gpu):
    x = np.random.default_rng(14).standard_normal((1, 1, 20, 20)).astype(np.float32)
    w = disk(9)[None, None]
    spec = make_spec(x, w, None, padding=4)
    assert "needs 2048 bytes" in opencl_fft_local.why_not(spec, 2000)
    launched: list = []
    with pytest.raises(ConvValueError, match=r"algo='fft' is not available.*local memory"):
        _run(_backend(ocl, launched, local_mem_bytes=2000), x, w, None, spec)
    # auto: the GPU's direct taps (their tile fits)
    y, info = _run(_backend(ocl, launched, local_mem_bytes=2000), x, w, None, spec, "auto")
    assert_close(y, naive_for_spec(x, w, None, spec), "float32")
    assert info.algo == "direct" and launched == [("direct_local", None, launched[0][2])]


def test_auto_runs_direct_taps_where_only_small_tiles_fit(ocl, gpu):
    # a 25x25 disk: 64 tiles pay against direct taps, but 20 KB of local memory holds only
    # 32 tiles (8 valid rows of 32), which do not; a forced FFT runs them all the same
    rng = np.random.default_rng(16)
    x = rng.standard_normal((1, 1, 40, 40)).astype(np.float32)
    w = disk(25)[None, None]
    spec = make_spec(x, w, None, padding=12)
    assert opencl_fft.pays(spec) and opencl_fft_local.tiles(spec, 20000) == [32]
    for algo, kernel in (("auto", "conv2d_direct"), ("fft", "fft_local")):
        launched: list = []
        y, info = _run(_backend(ocl, launched, local_mem_bytes=20000), x, w, None, spec, algo)
        assert_close(y, naive_for_spec(x, w, None, spec), "float32")
        assert [n for n, _, _ in launched] == [kernel] and info.algo == algo.replace(
            "auto", "direct"
        )


def test_float16_is_computed_in_float32(ocl, gpu):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((1, 2, 30, 20)).astype(np.float16)
    w = rng.standard_normal((2, 1, 9, 9)).astype(np.float16)
    spec = make_spec(x, w, None, padding=4, groups=2)
    launched: list = []
    y, info = _run(_backend(ocl, launched), x, w, None, spec)
    assert y.dtype == np.float32 and info.algo == "fft"
    assert_close(y, naive_for_spec(x, w, None, spec), "float16")
    assert [n for n, _, _ in launched] == ["fft_local"]


def test_float64_is_no_fft_case(ocl, gpu):
    # both FFT kernels are float32: a forced FFT refuses float64, auto runs direct taps
    require_device(fp64=True)
    x = np.random.default_rng(11).standard_normal((1, 1, 40, 40))
    w = disk(25)[None, None].astype(np.float64)
    with pytest.raises(ConvValueError, match="float32 and float16"):
        conv2d(x, w, backend="opencl", algo="fft")
    spec = make_spec(x, w, None, padding=12)
    assert opencl_fft_local.device_plan(None, spec, "auto") is None
    launched: list = []
    y, info = _run(_backend(ocl, launched), x, w, None, spec, "auto")
    assert info.algo == "direct" and "fft_local" not in [n for n, _, _ in launched]
    assert_close(y, naive_for_spec(x, w, None, spec), "float64")


def test_row_bands_of_a_tiled_call_run_fft_local(ocl, gpu, monkeypatch):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((1, 2, 40, 30)).astype(np.float32)
    w = rng.standard_normal((2, 1, 9, 9)).astype(np.float32)
    kw = dict(backend="opencl", algo="fft", padding=4, groups=2, padding_mode="reflect")
    names: list = []
    real = ob.Runtime.enqueue  # both devices: this one and the inline one

    def spy(self, kernel, *args, **kwargs):
        names.append(kernel.function_name)
        return real(self, kernel, *args, **kwargs)

    monkeypatch.setattr(ob.Runtime, "enqueue", spy)
    info = RunInfo()
    y = conv2d(x, w, max_memory=band_budget(x, w, 8, **kw), info=info, **kw)
    assert info.tiles > 2 and set(names) == {"fft_local"}
    spec = make_spec(x, w, None, padding=4, groups=2, padding_mode="reflect")
    assert_close(y, naive_for_spec(x, w, None, spec), "float32")


# ---------------------------------------------------------------------- the choice


def _spec(w, x=(1, 3, 512, 512), **opts):
    w = np.asarray(w, np.float32)
    return make_spec(np.zeros(x, np.float32), w, None, groups=x[1], **opts), w


def _plan(spec, w, cpu: bool, algo: str = "auto"):
    # default settings: gpu_kernels None, the device type decides
    plan, _ = opencl_fast.choose(spec, w, algo, cpu=cpu)
    return opencl_gpu.device_plan(plan, spec, algo, cpu)


BOX25 = np.ones((3, 1, 25, 25), np.float32)


def _disks(k: int) -> np.ndarray:
    return np.repeat(disk(k)[None, None], 3, 0)


@pytest.mark.parametrize(
    "w, algo, gpu_plan, cpu_plan",
    [
        # a large disk: FFT tiles on both, a work-group per tile on the GPU
        (_disks(25), "auto", ("fft", "fft_local"), ("fft", "fft_conv")),
        (_disks(9), "fft", ("fft", "fft_local"), ("fft", "fft_conv")),
        # rank 1 stays separable, small kernels direct taps, a forced 'direct' direct
        (BOX25, "auto", ("separable", "direct_local"), ("separable", "dw_direct")),
        (_disks(5), "auto", ("direct", "direct_local"), ("direct", "dw_direct")),
        (_disks(15), "direct", ("direct", "direct_local"), ("direct", "dw_direct")),
    ],
)  # fmt: skip
def test_gpu_devices_run_fft_local_in_place_of_fft_conv(monkeypatch, w, algo, gpu_plan, cpu_plan):
    monkeypatch.delenv(opencl_gpu.GPU_KERNELS_ENV, raising=False)  # the device type decides
    spec, w = _spec(w, padding=w.shape[-1] // 2)
    assert _plan(spec, w, cpu=True, algo=algo) == opencl_fast.Plan(*cpu_plan)
    assert _plan(spec, w, cpu=False, algo=algo) == opencl_fast.Plan(*gpu_plan)


def test_auto_keeps_direct_taps_past_the_largest_tile():
    # a 65-pixel disk: no fft_local tile holds it (fft_conv's 128 would, on a CPU)
    spec, w = _spec(_disks(65), x=(1, 3, 2048, 2048), padding=32)
    assert opencl_fft.pays(spec) and not opencl_fft_local.tiles(spec)
    assert _plan(spec, w, cpu=False) is None  # the generic kernel


def test_plan_algo_and_programs_report_what_runs(ocl, gpu):
    # (with less local memory the run takes direct taps: 32 tiles do not pay here)
    require_device(local_mem=opencl_fft_local.tile_bytes(64))
    # a GPU-type device: its plan for a 25x25 disk before the GPU kernels is no fast
    # kernel at all (too many taps for dw_direct), FFT tiles after
    launched: list = []
    be = _backend(ocl, launched)
    be.is_cpu = False
    rng = np.random.default_rng(15)
    x = rng.standard_normal((1, 1, 48, 48)).astype(np.float32)
    w = disk(25)[None, None]
    spec = make_spec(x, w, None, padding=12)
    assert opencl_fast.choose(spec, w, "auto", cpu=False)[0] is None
    assert be.plan_algo(spec, w) == "fft"
    mem = be.limits.local_mem_bytes
    found = opencl_fast.programs(spec, w, "auto", cpu=False, local_mem=mem)
    side = opencl_fft_local.tiles(spec, mem)[0]
    assert found == [("fft_local", {"T": side})]
    y, info = _run(be, x, w, None, spec, "auto")
    assert_close(y, naive_for_spec(x, w, None, spec), "float32")
    assert info.algo == "fft" and [(n, t) for n, t, _ in launched] == [("fft_local", side)]


def test_spectrum_order_matches_a_transform_in_numpy():
    # the layout the kernel relies on: DIF rows then columns leave X[bitrev(r), bitrev(c)]
    # at (r, c); the spectrum is stored the same way, conjugated and scaled
    spec, w = _spec(np.random.default_rng(13).standard_normal((1, 1, 3, 5)), x=(1, 1, 20, 20))
    s = opencl_fft_local.spectra(w, spec, 16)
    k = np.zeros((16, 16))
    k[:3, :5] = w[0, 0]
    rev = opencl_fft._bitrev(16)
    want = np.conj(np.fft.fft2(k))[rev][:, rev] / 256
    np.testing.assert_allclose(s[0, ..., 0] + 1j * s[0, ..., 1], want, atol=1e-7)
