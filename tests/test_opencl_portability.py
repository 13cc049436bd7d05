"""What lets the OpenCL backend run on devices other than PoCL's CPU device: build logs
in every compiler's format, launch sizes fitted to the device and the kernel (with a
retry when a driver still refuses one), device ranking, and the per-device self-test.

The launch tests shrink the limits of the device in hand (a copy of the backend whose
``limits`` say what a GPU or Oclgrind with ``OCLGRIND_MAX_WGSIZE=32`` says), so they run
on PoCL in CI; ``.ci/run`` also runs this file on Oclgrind with those limits for real.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from convcli import RunInfo, conv2d
from convcli.backends.opencl import backend as ob
from convcli.backends.opencl import device as dev
from convcli.backends.opencl import runtime
from tests.conftest import assert_close, opencl_available
from tests.naive import naive_conv2d

# ------------------------------------------------------------------ no device needed


@pytest.mark.parametrize(
    "log, expected",
    [
        # PoCL
        ("error: /tmp/pocl/x.cl:12:3: use of undeclared identifier 'q'", "line 12:3: use of"),
        # Intel's CPU runtime: a source index before line and column
        ("1:12:3: error: use of undeclared identifier 'q'\n1 error generated.", "line 12:3: use"),
        # Mesa rusticl
        ("input.cl:12:3: error: use of undeclared identifier 'q'", "line 12:3: use of"),
        # clang without a file name, and a fatal error after a warning
        ("<source>:4:1: warning: w\n12:3: fatal error: 'x.h' file not found", "line 12:3: 'x.h"),
        ("error: no kernel named x", "no kernel named x"),
    ],
)
def test_build_log_error_reads_every_compilers_format(log, expected):
    assert runtime.build_log_error(log).startswith(expected)


def test_build_log_without_an_error_line():
    assert runtime.build_log_error("warning: x\n1 warning generated.") is None


@pytest.mark.parametrize(
    "wanted, limit, items, expected",
    [
        ((64, 1, 1), 4096, (4096, 4096, 4096), (64, 1, 1)),  # fits: unchanged
        ((64, 1, 1), 32, (32, 32, 32), (32, 1, 1)),  # Oclgrind OCLGRIND_MAX_WGSIZE=32
        ((8, 8, 1), 32, (1024, 1024, 64), (4, 8, 1)),  # product over the kernel's limit
        ((1, 64, 1), 1024, (1024, 16, 16), (1, 16, 1)),  # one dimension over its limit
        ((4, 1, 1), 1, (1, 1, 1), (1, 1, 1)),
        ((6, 1, 1), 4, (64, 64, 64), (3, 1, 1)),  # not a power of two
    ],
)
def test_fit_local_size(wanted, limit, items, expected):
    local = runtime.fit_local_size(wanted, limit, items)
    assert local == expected
    assert np.prod(local) <= limit and all(v <= c for v, c in zip(local, items, strict=False))


def _fake(name: str, type_name: str, platform: str = "P", unified: bool = False):
    import pyopencl as cl

    device = SimpleNamespace(
        name=name, type=getattr(cl.device_type, type_name), host_unified_memory=unified
    )
    return device, SimpleNamespace(name=platform, vendor="")


@pytest.mark.skipif(not opencl_available(), reason="pyopencl with a device needed for types")
def test_device_ranking_prefers_real_gpus_and_puts_simulators_last():
    specs = [
        ("Oclgrind Simulator", "GPU", "Oclgrind", False),
        ("llvmpipe (LLVM 15.0.6, 256 bits)", "GPU", "rusticl", True),
        ("pthread-AMD EPYC", "CPU", "Portable Computing Language", True),
        ("Intel(R) UHD Graphics", "GPU", "Intel(R) OpenCL Graphics", True),
        ("NVIDIA H100", "GPU", "NVIDIA CUDA", False),
    ]
    found = []
    for i, (name, kind, plat, unified) in enumerate(specs):
        device, platform = _fake(name, kind, plat, unified)
        found.append(dev._Found(i, 0, platform, device))
    order = [f.device.name for f in dev._preferred(found)]
    assert order == [
        "NVIDIA H100",
        "Intel(R) UHD Graphics",
        "pthread-AMD EPYC",
        "Oclgrind Simulator",
        "llvmpipe (LLVM 15.0.6, 256 bits)",
    ]
    # named, a simulator is still chosen
    assert dev._pick(found, "oclgrind", "test").device.name == "Oclgrind Simulator"
    # alone, it is the default
    assert dev._select(found[:2], None).device.name == "Oclgrind Simulator"


# ------------------------------------------------------------- launches on the device


def _small(ocl, group: int, items: tuple[int, int, int], sizes: list):
    """A backend on the same device whose limits are a small GPU's; every local size
    it launches with is recorded in ``sizes``."""
    other = ob.OpenCLBackend(ocl._cl, ocl.platform, ocl.device, ocl.ctx, ocl.queue)
    other.limits = dataclasses.replace(
        ocl.limits, max_work_group_size=group, max_work_item_sizes=items
    )
    real = other.local_size

    def spy(kernel, wanted):
        local = real(kernel, wanted)
        sizes.append(local)
        return local

    other.local_size = spy
    return other


def _cases():
    rng = np.random.default_rng(7)
    t = np.exp(-(np.linspace(-2, 2, 5) ** 2))
    gauss = np.tile(np.outer(t, t)[None, None], (3, 1, 1, 1)).astype(np.float32)
    r = rng.standard_normal
    f = np.float32
    return [
        # (name, x, w, options): the layers the issue saw refused under Oclgrind
        ("pointwise", r((1, 128, 32, 40)).astype(f), r((16, 128, 1, 1)).astype(f), {}),
        ("depthwise wide", r((1, 3, 6, 600)).astype(f), r((3, 1, 3, 3)).astype(f), {"groups": 3}),
        ("dense wide", r((1, 4, 4, 640)).astype(f), r((8, 4, 3, 3)).astype(f), {}),
        ("winograd", r((1, 16, 12, 40)).astype(f), r((16, 16, 3, 3)).astype(f), {}),
        ("separable", r((1, 3, 20, 530)).astype(f), gauss, {"groups": 3}),
        ("generic", r((1, 3, 11, 30)).astype(f), r((4, 3, 3, 2)).astype(f), {"stride": 2}),
    ]


@pytest.mark.parametrize("case", range(6), ids=[c[0] for c in _cases()])
@pytest.mark.parametrize(
    "group, items", [(32, (32, 32, 32)), (16, (8, 16, 4))], ids=["oclgrind32", "narrow"]
)
def test_every_path_launches_within_the_devices_limits(ocl, tune, case, group, items):
    name, x, w, opts = _cases()[case]
    sizes: list = []
    small = _small(ocl, group, items, sizes)
    if name == "pointwise":
        tune(small, pointwise_min_cin=1, host_pointwise_max_batch=0)
    if name == "winograd":
        tune(small, winograd=True, wino_whole=True)
    info = RunInfo()
    pad = (w.shape[2] // 2, w.shape[3] // 2)
    spec_kw = dict(padding=pad, **opts)
    from convcli.spec import make_spec

    spec = make_spec(x, w, None, **spec_kw)
    if name == "generic":
        y = small.run_direct(x, w, None, spec, info=info)
    else:
        y = small.run(x, w, None, spec, algo="auto", info=info)
    ref = naive_conv2d(
        x, w, None, spec.stride, spec.pad, spec.dilation, spec.groups, spec.padding_mode
    )
    assert_close(y, ref, "float32")
    assert sizes, "no launch went through the backend's sizing"
    for local in sizes:
        assert np.prod(local) <= group, local
        assert all(v <= c for v, c in zip(local, items, strict=False)), local


class _Refusing:
    """A kernel stand-in whose driver refuses work-groups over ``limit`` items."""

    function_name = "refusing"

    def __init__(self, ocl, limit: int, code: str = "INVALID_WORK_GROUP_SIZE"):
        self.cl, self.limit, self.code, self.calls = ocl._cl, limit, code, []
        # a finished event: profiling counters read by number, as Runtime.event_seconds does
        self.event = SimpleNamespace(wait=lambda: None, get_profiling_info=lambda what: 0)

    def __call__(self, queue, gsize, local, *args):
        self.calls.append((gsize, local))
        if np.prod(local) > self.limit:
            code = getattr(self.cl.status_code, self.code)
            raise self.cl.LogicError(
                self.cl._cl._ErrorRecord("clEnqueueNDRangeKernel", code, "refused")
            )
        return self.event

    def get_work_group_info(self, what, device):
        return 256

    def set_scalar_arg_dtypes(self, dtypes):
        pass


@pytest.mark.parametrize(
    "code", ["INVALID_WORK_GROUP_SIZE", "INVALID_WORK_ITEM_SIZE", "OUT_OF_RESOURCES"]
)
def test_a_refused_launch_is_retried_smaller_and_remembered(ocl, code):
    # a device that claims more than the driver then runs
    other = _small(ocl, 4096, (4096, 4096, 4096), [])
    kernel = _Refusing(ocl, 8, code)
    assert other.enqueue(kernel, (100, 3, 1), (64, 1, 1), []) is kernel.event
    # 64 refused, 32, 16 refused, 8 runs over a global size rounded up to it
    assert [c[1] for c in kernel.calls] == [(64, 1, 1), (32, 1, 1), (16, 1, 1), (8, 1, 1)]
    assert kernel.calls[-1][0] == (104, 3, 1)
    kernel.calls.clear()
    other.enqueue(kernel, (100, 3, 1), (64, 1, 1), [])
    assert [c[1] for c in kernel.calls] == [(8, 1, 1)]  # learnt


def test_a_launch_refused_at_one_item_is_an_error(ocl):
    other = ob.OpenCLBackend(ocl._cl, ocl.platform, ocl.device, ocl.ctx, ocl.queue)
    with pytest.raises(ocl._cl.Error) as err:
        other.enqueue(_Refusing(ocl, 0, "OUT_OF_RESOURCES"), (10,), (4,), [])
    assert runtime.launch_refused(err.value)


def test_a_fast_path_refused_at_one_item_runs_the_generic_kernel(ocl, monkeypatch):
    from convcli.backends.opencl import plan as opencl_plan

    real = ob.OpenCLBackend.enqueue

    def refuse_fast(self, kernel, gsize, local, args, info=None):
        if kernel.function_name != "conv2d_direct":
            kernel = _Refusing(self, 0, "OUT_OF_RESOURCES")
        return real(self, kernel, gsize, local, args, info)

    other = ob.OpenCLBackend(ocl._cl, ocl.platform, ocl.device, ocl.ctx, ocl.queue)
    monkeypatch.setattr(ob.OpenCLBackend, "enqueue", refuse_fast)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 3, 9, 20)).astype(np.float32)
    w = rng.standard_normal((3, 1, 3, 3)).astype(np.float32)
    info = RunInfo()
    from convcli.spec import make_spec

    spec = make_spec(x, w, None, padding=1, groups=3)
    y = other.run(x, w, None, spec, info=info)
    assert info.algo == "direct"
    assert_close(y, naive_conv2d(x, w, None, pad=(1, 1, 1, 1), groups=3), "float32")
    with pytest.raises(Exception, match="OUT_OF_RESOURCES"):
        opencl_plan.run(other, x, w, None, spec, algo="gemm", info=RunInfo())


def test_conv2d_through_the_api_on_the_default_device(ocl):
    # the public path, for the implementations CI runs this file on
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 17, 23)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    y = conv2d(x, w, padding=1, padding_mode="reflect", backend="opencl")
    ref = naive_conv2d(x, w, None, pad=(1, 1, 1, 1), padding_mode="reflect")
    assert_close(y, ref, "float32")


# ------------------------------------------------------------------ device self-test


def test_check_device_passes_on_the_default_device(ocl, monkeypatch):
    from convcli.backends.opencl import plan as opencl_plan

    # every case on the device: none handed to a host route (a CPU device's 1x1 layers)
    hosted = []
    monkeypatch.setattr(opencl_plan, "_note_host_fc", lambda info, spec: hosted.append(spec))
    default = next(d for d in dev.list_devices() if d.default)
    check = dev.check_device(default.index)
    assert not hosted
    assert check.ok, check.failures
    # one case per kernel family; FFT where local memory allows, float64 with fp64
    expected = 6 + dev._fft_fits(ocl.limits) + ocl.limits.fp64
    assert check.total == check.passed == expected
    assert 0 <= check.build_seconds <= check.seconds


def test_check_device_reports_wrong_results_and_errors(ocl, monkeypatch):
    from convcli.errors import BackendError

    real = ob.OpenCLBackend.run

    def broken(self, x, w, b, spec, *, algo="auto", info):
        if spec.groups == 3:
            raise BackendError("OpenCL: clEnqueueNDRangeKernel failed: OUT_OF_RESOURCES")
        y = real(self, x, w, b, spec, algo=algo, info=info)
        return y * 1.001 if spec.c_in == 128 else y

    monkeypatch.setattr(ob.OpenCLBackend, "run", broken)
    default = next(d for d in dev.list_devices() if d.default)
    check = dev.check_device(default.index)
    assert not check.ok and check.passed == check.total - 3
    text = "\n".join(check.failures)
    assert "depthwise 3x3: OpenCL: clEnqueueNDRangeKernel failed: OUT_OF_RESOURCES" in text
    assert "separable 5x5: OpenCL" in text and "pointwise 1x1: error 0.001" in text


def test_devices_check_renders_the_library_result(monkeypatch):
    import json

    from click.testing import CliRunner

    from convcli.cli import cli

    found = [
        dev.DeviceInfo("0:0", "P", "Good GPU", "GPU", 8, 1 << 30, 1 << 28, False, False, True,
                      65536, 256, (256, 256, 64), "discrete"),
        dev.DeviceInfo("0:1", "P", "Bad CPU", "CPU", 2, 1 << 30, 1 << 28, True, False, False,
                      32768, 8192, (8192, 8192, 8192), ""),
    ]  # fmt: skip
    checks = [
        dev.DeviceCheck("0:0", "Good GPU", 7, 7, 1.25, 2.0, ()),
        dev.DeviceCheck("0:1", "Bad CPU", 7, 8, 0.5, 1.0, ("dense 3x3: error 0.5",)),
    ]
    monkeypatch.setattr(dev, "list_devices", lambda: found)
    monkeypatch.setattr(dev, "check_devices", lambda: checks)
    res = CliRunner().invoke(cli, ["devices", "--check"])
    assert res.exit_code == 1
    assert "pass 7/7" in res.stdout and "FAIL 7/8" in res.stdout and "1.2" in res.stdout
    assert "GPU (discrete)" in res.stdout and "64.0 KiB" in res.stdout
    assert res.stderr.strip() == "convcli: notice: device 0:1: dense 3x3: error 0.5"
    res = CliRunner().invoke(cli, ["devices", "--check", "--json"])
    data = json.loads(res.stdout)
    assert res.exit_code == 1 and [d["check"]["ok"] for d in data] == [True, False]
    assert data[0]["local_mem_bytes"] == 65536 and data[0]["max_work_item_sizes"] == [256, 256, 64]
    monkeypatch.setattr(dev, "check_devices", lambda: checks[:1])
    assert CliRunner().invoke(cli, ["devices", "--check"]).exit_code == 0


def test_first_launches_of_fast_kernels_count_as_build(ocl, monkeypatch, tune):
    # the driver's compile at a kernel's first launch (PoCL JIT-compiles then) is build
    # time: one entry per program build and one per kernel's first launch, none again
    from convcli.spec import make_spec

    other = ob.OpenCLBackend(ocl._cl, ocl.platform, ocl.device, ocl.ctx, ocl.queue)
    # Winograd's three kernels
    tune(other, gpu_kernels=False, winograd=True, wino_whole=False, wino_fused=False)
    added: list = []
    real = other._add

    def spy(info, key, seconds):
        added.append((key, seconds))
        real(info, key, seconds)

    monkeypatch.setattr(other, "_add", spy)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 16, 10, 12)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    spec = make_spec(x, w, None, padding=1)
    info = RunInfo()
    y = other.run(x, w, None, spec, info=info)
    assert_close(y, naive_conv2d(x, w, None, pad=(1, 1, 1, 1)), "float32")
    builds = [s for k, s in added if k == "build"]
    assert len(builds) == 6  # input, GEMM and output transforms: 3 builds, 3 first launches
    assert info.timings["build"] == pytest.approx(sum(builds))
    added.clear()
    other.run(x, w, None, spec, info=RunInfo())
    assert [k for k, _ in added if k == "build"] == []
