"""The OpenCL backend: the generic direct kernel against the naive reference, device
selection, program caching across processes, error translation and fault injection.

Runs for real on whatever OpenCL device exists (PoCL's CPU device in CI); skips only
where there is none.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_close, opencl_available, require_device
from naive import naive_conv2d

import convcli
from convcli import RunInfo, backends
from convcli.errors import BackendError, BackendUnavailable, ConvValueError
from convcli.spec import make_spec

pytestmark = pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")

REPO = Path(__file__).resolve().parents[1]


def _module():
    # imported on demand: pyopencl loads only when the OpenCL tests run
    return importlib.import_module("convcli.backends.opencl.backend")


MODES = ["zeros", "reflect", "replicate", "circular", "symmetric"]
DTYPES = ["float32", "float64", "complex64", "complex128", "float16"]


@pytest.fixture(scope="module")
def ocl():
    from convcli.backends.opencl.backend import OpenCLBackend

    return OpenCLBackend.create(None)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("CONVCLI_FAULT", "CONVCLI_DEVICE", "PYOPENCL_CTX"):
        monkeypatch.delenv(name, raising=False)


def _rand(rng, shape, dtype):
    a = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        a = a + 1j * rng.standard_normal(shape)
    return a.astype(dtype)


def _problem(
    seed=0,
    *,
    n=2,
    c_in=4,
    hw=(9, 11),
    c_out=6,
    k=(3, 4),
    stride=(1, 1),
    dilation=(1, 1),
    groups=1,
    pad=(0, 0, 0, 0),
    mode="zeros",
    dtype="float32",
    bias=True,
):
    """Arrays and a ConvSpec with any (top, bottom, left, right) padding."""
    rng = np.random.default_rng(seed)
    x = _rand(rng, (n, c_in, *hw), dtype)
    w = _rand(rng, (c_out, c_in // groups, *k), dtype)
    b = _rand(rng, (c_out,), dtype) if bias else None
    # validate with the larger pad of each axis, then set the exact (top, bottom, left,
    # right) and mode: asymmetric padding as 'same' makes it, and beyond torch's limits
    # where the mode allows it (symmetric)
    big = (max(pad[0], pad[1]), max(pad[2], pad[3]))
    spec = make_spec(x, w, b, stride=stride, dilation=dilation, groups=groups, padding=big)
    spec = dataclasses.replace(spec, pad=tuple(pad), padding_mode=mode)
    ref = naive_conv2d(x, w, b, stride, tuple(pad), dilation, groups, mode)
    return x, w, b, spec, ref


def _check(ocl, dtype, **kw):
    require_device(dtype=dtype)
    x, w, b, spec, ref = _problem(dtype=dtype, **kw)
    info = RunInfo()
    y = ocl.run_direct(x, w, b, spec, info=info)
    expected_dtype = np.float32 if dtype == "float16" else np.dtype(dtype)
    assert y.dtype == expected_dtype
    assert y.shape == (spec.n, spec.c_out, spec.h_out, spec.w_out)
    assert_close(y, ref, dtype)
    assert info.algo == "direct"
    assert info.timings["compute"] >= 0.0
    return y


# ---------------------------------------------------------------- the generic kernel


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_direct_modes_dtypes_groups_stride_dilation(ocl, mode, dtype):
    """Every padding mode and dtype on a grouped, strided, dilated, asymmetric layer."""
    _check(
        ocl,
        dtype,
        n=2,
        c_in=4,
        hw=(12, 37),
        c_out=6,
        k=(3, 4),
        stride=(2, 1),
        dilation=(1, 2),
        groups=2,
        pad=(2, 1, 3, 0),
        mode=mode,
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float32", "complex64"])
def test_direct_wide_image_interior_and_strided(ocl, mode, dtype):
    """Wide rows exercise the mapping-free interior path next to border work-items."""
    _check(
        ocl,
        dtype,
        n=1,
        c_in=3,
        hw=(11, 70),
        c_out=3,
        k=(3, 3),
        groups=3,
        pad=(1, 1, 1, 1),
        mode=mode,
    )
    _check(
        ocl,
        dtype,
        n=1,
        c_in=2,
        hw=(13, 83),
        c_out=5,
        k=(3, 5),
        stride=(2, 3),
        dilation=(2, 1),
        pad=(2, 2, 2, 2),
        mode=mode,
    )


GEOMETRIES = {
    # name: problem keywords (float32 unless given)
    "depthwise": dict(c_in=3, c_out=3, groups=3, hw=(20, 31), pad=(1, 1, 1, 1)),
    "depthwise-multiplier": dict(c_in=3, c_out=6, groups=3, hw=(15, 22), pad=(2, 0, 1, 2)),
    "groups-4-cout-3": dict(c_in=8, c_out=12, groups=4, hw=(10, 19), pad=(1, 1, 1, 1)),
    "dense-cout-12": dict(c_in=5, c_out=12, hw=(10, 17), pad=(1, 1, 1, 1)),
    "dense-cout-9-partial-block": dict(c_in=3, c_out=9, hw=(8, 21), pad=(0, 2, 2, 0)),
    "dense-cout-20": dict(c_in=4, c_out=20, hw=(9, 16), k=(3, 3), pad=(1, 1, 1, 1)),
    "stride-3-dilation-3": dict(hw=(25, 29), stride=(3, 3), dilation=(3, 3), pad=(2, 3, 1, 4)),
    "stride-2-dilation-1x3": dict(hw=(17, 40), stride=(2, 2), dilation=(1, 3), pad=(1, 1, 3, 3)),
    "same-2x2": dict(k=(2, 2), hw=(9, 10), pad=(0, 1, 0, 1)),
    "same-4x6-dilated": dict(k=(4, 6), dilation=(2, 2), hw=(14, 23), pad=(3, 3, 5, 5)),
    "same-even-reflect": dict(k=(4, 2), hw=(10, 12), pad=(1, 2, 0, 1), mode="reflect"),
    "1x1": dict(k=(1, 1), c_in=7, c_out=5, hw=(6, 13)),
    "1x1-stride-2": dict(k=(1, 1), stride=(2, 2), hw=(9, 17), mode="circular", pad=(1, 1, 1, 1)),
    "kernel-fills-padded-input": dict(k=(5, 6), hw=(3, 4), pad=(1, 1, 1, 1)),
    "kernel-fills-input-circular": dict(k=(5, 5), hw=(3, 3), pad=(1, 1, 1, 1), mode="circular"),
    "width-1": dict(hw=(7, 1), k=(3, 1), pad=(1, 1, 0, 0), mode="replicate"),
    "width-3": dict(hw=(7, 3), k=(3, 3), pad=(1, 1, 1, 1), mode="reflect"),
    "width-5": dict(hw=(5, 7), k=(1, 3)),
    "width-9": dict(hw=(5, 11), k=(3, 3), mode="replicate", pad=(1, 1, 1, 0)),
    "symmetric-pad-beyond-size": dict(hw=(3, 4), k=(3, 3), pad=(7, 5, 9, 6), mode="symmetric"),
    "reflect-pad-size-minus-1": dict(hw=(4, 5), k=(3, 3), pad=(3, 3, 4, 4), mode="reflect"),
    "reflect-size-2": dict(hw=(2, 2), k=(2, 2), pad=(1, 1, 1, 1), mode="reflect"),
    "circular-pad-equal-size": dict(hw=(4, 5), k=(3, 3), pad=(4, 4, 5, 5), mode="circular"),
    "replicate-huge-pad": dict(hw=(3, 3), k=(2, 2), pad=(6, 2, 1, 7), mode="replicate"),
    "wide-kernel-13": dict(c_in=2, c_out=8, hw=(20, 40), k=(11, 13), pad=(5, 5, 6, 6)),
    "kernel-31x1": dict(
        c_in=1, c_out=1, hw=(40, 9), k=(31, 1), pad=(15, 15, 0, 0), mode="symmetric"
    ),
    "no-bias": dict(bias=False, mode="reflect", pad=(1, 1, 1, 1)),
    "batch-5": dict(n=5, c_in=2, c_out=2, hw=(6, 9), pad=(1, 1, 1, 1)),
    "float64-dense": dict(dtype="float64", c_in=3, c_out=7, hw=(11, 23), pad=(1, 1, 1, 1)),
    "complex128-grouped": dict(
        dtype="complex128",
        c_in=4,
        c_out=4,
        groups=2,
        stride=(2, 2),
        hw=(13, 21),
        pad=(1, 2, 2, 1),
        mode="circular",
    ),
    "float16-depthwise": dict(
        dtype="float16", c_in=3, c_out=3, groups=3, hw=(16, 33), pad=(1, 1, 1, 1), mode="symmetric"
    ),
}


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_direct_geometries(ocl, name):
    kw = dict(GEOMETRIES[name])
    dtype = kw.pop("dtype", "float32")
    _check(ocl, dtype, **kw)


def _random_case(seed: int) -> dict:
    """A random valid problem: every knob at once, pads asymmetric and mode-legal."""
    rng = np.random.default_rng(1000 + seed)
    mode = MODES[seed % len(MODES)]
    dtype = ["float32", "float32", "float64", "complex64", "complex128", "float16"][seed % 6]
    groups = int(rng.choice([1, 2, 3]))
    c_in = groups * int(rng.integers(1, 4))
    c_out = groups * int(rng.integers(1, 6))
    k = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
    stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    hw = (int(rng.integers(3, 20)), int(rng.integers(3, 45)))
    limit = {"reflect": lambda n: n - 1, "circular": lambda n: n}.get(mode, lambda n: 9)
    pad = tuple(int(rng.integers(0, min(limit(n), 4) + 1)) for n in (hw[0], hw[0], hw[1], hw[1]))
    for axis in (0, 1):  # the kernel must fit the padded input
        need = dilation[axis] * (k[axis] - 1) + 1
        if hw[axis] + pad[2 * axis] + pad[2 * axis + 1] < need:
            hw = tuple(need if a == axis else v for a, v in enumerate(hw))
    return dict(
        n=int(rng.integers(1, 3)),
        c_in=c_in,
        c_out=c_out,
        hw=hw,
        k=k,
        stride=stride,
        dilation=dilation,
        groups=groups,
        pad=pad,
        mode=mode,
        dtype=dtype,
        bias=bool(seed % 3),
        seed=seed,
    )


@pytest.mark.parametrize("seed", range(30))
def test_direct_random_configurations(ocl, seed):
    kw = _random_case(seed)
    _check(ocl, kw.pop("dtype"), **kw)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular", "symmetric"])
@pytest.mark.parametrize("pad", [(-1, 2, 1, -2), (-2, -1, -3, 0), (2, -2, 0, 3)])
def test_direct_negative_padding_crops(ocl, mode, pad):
    """Negative padding (torch crops, in the non-zero modes) gives the NumPy backend's map."""
    from convcli.backends.numpy import conv2d_direct

    x, w, b, spec, _ = _problem(hw=(9, 21), pad=(0, 0, 0, 0), mode=mode, groups=2)
    spec = dataclasses.replace(spec, pad=pad)
    y = ocl.run_direct(x, w, b, spec, info=RunInfo())
    assert_close(y, conv2d_direct(x, w, b, spec).astype(np.float64), "float32")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_api_negative_padding_matches_numpy(dtype):
    require_device(dtype=dtype)
    x, w, b, _, _ = _problem(hw=(10, 19), dtype=dtype)
    kw = dict(padding=(-1, 2), padding_mode="circular")
    y = convcli.conv2d(x, w, b, backend="opencl", **kw)
    assert_close(y, convcli.conv2d(x, w, b, backend="numpy", **kw).astype(np.float64), dtype)


def test_direct_zero_batch(ocl):
    x, w, b, spec, _ = _problem(n=0, hw=(5, 6), pad=(1, 1, 1, 1))
    y = ocl.run_direct(x, w, b, spec, info=RunInfo())
    assert y.shape == (0, 6, 5, 5) and y.dtype == np.float32


def test_direct_read_only_input_and_reused_weights(ocl):
    x, w, b, spec, ref = _problem(hw=(8, 19), pad=(1, 1, 1, 1))
    x.flags.writeable = False  # cannot be wrapped with USE_HOST_PTR: copied instead
    first = ocl.run_direct(x, w, b, spec, info=RunInfo())
    assert_close(first, ref, "float32")
    # the packed weights are cached by content: changing them in place must not reuse them
    w *= 2
    b *= 2
    second = ocl.run_direct(x, w, b, spec, info=RunInfo())
    assert_close(second, 2 * ref, "float32")


def test_direct_copy_path_as_on_gpus(ocl):
    """Non-CPU devices copy through reusable scratch buffers and run one row per item."""
    from convcli.backends.opencl.backend import OpenCLBackend

    other = OpenCLBackend(ocl._cl, ocl.platform, ocl.device, ocl.ctx, ocl.queue)
    other.is_cpu = False
    for hw in [(14, 30), (9, 12), (16, 33)]:  # smaller, then larger: scratch reused, regrown
        _check(other, "float32", hw=hw, pad=(1, 2, 2, 1), mode="reflect", groups=2)
    _check(other, "complex64", hw=(7, 9), pad=(1, 1, 1, 1), mode="circular")


# -------------------------------------------------------------------- through the API


@pytest.mark.parametrize("dtype", DTYPES)
def test_api_unbatched_same_padding(dtype):
    require_device(dtype=dtype)
    rng = np.random.default_rng(5)
    x = _rand(rng, (3, 17, 26), dtype)
    w = _rand(rng, (4, 3, 4, 2), dtype)
    info = RunInfo()
    y = convcli.conv2d(x, w, padding="same", padding_mode="reflect", backend="opencl", info=info)
    ref = naive_conv2d(x[None], w, None, (1, 1), (1, 2, 0, 1), (1, 1), 1, "reflect")[0]
    assert y.dtype == np.dtype(dtype) and y.shape == (4, 17, 26)
    assert_close(y.astype(np.complex128 if y.dtype.kind == "c" else np.float64), ref, dtype)
    assert info.backend == "opencl" and info.device and info.algo
    assert {"compute", "upload", "download", "total"} <= set(info.timings)


def test_api_zero_batch():
    x = np.zeros((0, 3, 8, 8), np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    y = convcli.conv2d(x, w, padding=1, backend="opencl")
    assert y.shape == (0, 4, 8, 8) and y.dtype == np.float32


def test_run_uses_generic_kernel_when_no_fast_path_applies(ocl, monkeypatch):
    from convcli.backends.opencl import plan

    monkeypatch.setattr(plan, "run", lambda *args, **kwargs: None)
    x, w, b, spec, ref = _problem(hw=(10, 12), pad=(1, 1, 1, 1))
    info = RunInfo()
    assert_close(ocl.run(x, w, b, spec, info=info), ref, "float32")
    assert info.algo == "direct"
    with pytest.raises(ConvValueError, match="algo='fft' is not available"):
        ocl.run(x, w, b, spec, algo="fft", info=RunInfo())


def test_forced_separable_on_rank2_kernel_is_a_value_error():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 16, 16)).astype(np.float32)
    w = rng.standard_normal((2, 1, 3, 3)).astype(np.float32)  # rank 2 or 3, not separable
    with pytest.raises(ConvValueError):
        convcli.conv2d(x, w, groups=2, algo="separable", backend="opencl")


# ------------------------------------------------------------------ device selection


def test_list_devices_marks_the_default(ocl):
    from convcli.backends.opencl.device import list_devices

    devices = list_devices()
    assert devices, "an OpenCL device exists, so list_devices must list it"
    assert sum(d.default for d in devices) == 1
    default = next(d for d in devices if d.default)
    assert ocl.device_name == f"{default.name} ({default.platform})"
    for d in devices:
        p, i = d.index.split(":")
        assert p.isdigit() and i.isdigit()
        assert d.type in ("GPU", "CPU", "ACCELERATOR", "CUSTOM", "OTHER")
        assert d.compute_units >= 1 and d.global_mem_bytes >= d.max_alloc_bytes > 0
        assert isinstance(d.fp64, bool) and isinstance(d.fp16, bool)
    assert ocl.max_alloc_bytes == default.max_alloc_bytes
    assert ocl.has_fp64 == default.fp64
    assert ocl.is_cpu == (default.type == "CPU")


def test_device_by_index_substring_and_type(ocl):
    from convcli.backends.opencl.backend import OpenCLBackend
    from convcli.backends.opencl.device import list_devices

    default = next(d for d in list_devices() if d.default)
    by_index = OpenCLBackend.create(default.index)
    assert by_index.device_name == ocl.device_name
    if default.index.startswith("0:"):
        assert OpenCLBackend.create(default.index[2:]).device_name == ocl.device_name
    needle = default.name[2:7].upper()  # case-insensitive, any part of the name
    assert OpenCLBackend.create(needle).device.name.strip() == default.name
    platform_needle = default.platform[:8].lower()
    assert OpenCLBackend.create(platform_needle).platform.name.strip() == default.platform
    assert OpenCLBackend.create(default.type.lower()).device_name == ocl.device_name


def test_device_from_environment(ocl, monkeypatch):
    from convcli.backends.opencl.backend import OpenCLBackend
    from convcli.backends.opencl.device import list_devices

    default = next(d for d in list_devices() if d.default)
    monkeypatch.setenv("CONVCLI_DEVICE", default.index)
    assert OpenCLBackend.create(None).device_name == ocl.device_name
    monkeypatch.setenv("CONVCLI_DEVICE", "no-such-device-xyz")
    with pytest.raises(BackendUnavailable, match=r"no-such-device-xyz.*CONVCLI_DEVICE"):
        OpenCLBackend.create(None)
    # the argument wins over the environment
    assert OpenCLBackend.create(default.index).device_name == ocl.device_name
    monkeypatch.delenv("CONVCLI_DEVICE")
    monkeypatch.setenv("PYOPENCL_CTX", default.index)
    assert OpenCLBackend.create(None).device_name == ocl.device_name
    monkeypatch.setenv("PYOPENCL_CTX", default.index.split(":")[0])
    assert OpenCLBackend.create(None).platform.name.strip() == default.platform
    monkeypatch.setenv("PYOPENCL_CTX", "97")
    with pytest.raises(BackendUnavailable, match="PYOPENCL_CTX"):
        OpenCLBackend.create(None)


@pytest.mark.parametrize("spec", ["9:9", "42", "no-such-device-xyz"])
def test_bad_device_spec(spec):
    from convcli.backends.opencl.backend import OpenCLBackend

    with pytest.raises(BackendUnavailable) as err:
        OpenCLBackend.create(spec)
    message = str(err.value)
    assert repr(spec) in message and "\n" not in message


def test_bad_device_through_api(monkeypatch):
    monkeypatch.setattr(backends, "_OPENCL", {})
    x = np.ones((1, 5, 5), np.float32)
    w = np.ones((1, 1, 3, 3), np.float32)
    with pytest.raises(BackendUnavailable, match="no-such-device-xyz"):
        convcli.conv2d(x, w, backend="opencl", device="no-such-device-xyz")
    info = RunInfo()
    y = convcli.conv2d(x, w, backend="auto", device="no-such-device-xyz", info=info)
    assert info.backend == "numpy" and np.all(y == 9.0)
    assert any("no-such-device-xyz" in note for note in info.notices)


def test_without_pyopencl(monkeypatch):
    opencl_backend = _module()
    from convcli.backends.opencl import device

    monkeypatch.setitem(sys.modules, "pyopencl", None)  # import raises ImportError
    assert device.list_devices() == []
    with pytest.raises(BackendUnavailable, match="pyopencl is not importable"):
        opencl_backend.OpenCLBackend.create(None)


def test_import_convcli_does_not_import_pyopencl():
    code = "import sys, convcli; import numpy as np; print('pyopencl' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_child_env()
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_pin_pocl_threads_only_when_free_to(monkeypatch):
    from convcli.backends.opencl import device as opencl_backend

    every = set(range(os.cpu_count() or 1))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: every, raising=False)
    env: dict[str, str] = {}
    assert opencl_backend.pin_pocl_threads(env) is True
    assert env == {"POCL_AFFINITY": "1"}
    assert opencl_backend.pin_pocl_threads(env) is False  # already chosen
    env = {"POCL_AFFINITY": "0"}  # the user's choice stands
    assert opencl_backend.pin_pocl_threads(env) is False
    assert env == {"POCL_AFFINITY": "0"}
    # under taskset or a cpuset PoCL's pins to CPUs 0..n-1 would escape the limit
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {max(every)} | {99}, raising=False)
    env = {}
    assert opencl_backend.pin_pocl_threads(env) is False
    assert env == {}


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or (os.cpu_count() or 1) < 2,
    reason="PoCL pins threads on Linux, and only matters with 2+ CPUs",
)
def test_pocl_workers_are_pinned_in_a_fresh_process():
    code = (
        "import glob, os, convcli\n"
        "from convcli.backends.opencl.backend import OpenCLBackend\n"
        "b = OpenCLBackend.create(None)\n"
        "print(b.platform.name, b.device.max_compute_units, os.environ.get('POCL_AFFINITY'))\n"
        "for t in glob.glob(f'/proc/{os.getpid()}/task/*/status'):\n"
        "    print([l.split()[-1] for l in open(t) if l.startswith('Cpus_allowed_list')][0])\n"
    )
    env = _child_env()
    env.pop("POCL_AFFINITY", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    head, *threads = out.stdout.split("\n")
    if "Portable Computing Language" not in head or os.sched_getaffinity(0) != set(
        range(os.cpu_count() or 1)
    ):
        pytest.skip(f"not PoCL's CPU device with every CPU free: {head}")
    cus = int(head.split()[-2])
    assert head.split()[-1] == "1"
    # one worker pinned to each CPU 0..CUs-1 (the main thread keeps the full set)
    assert {t for t in threads if t} >= {str(i) for i in range(cus)}


def test_supports_reports_missing_fp64(ocl):
    from convcli.backends.opencl.backend import OpenCLBackend

    other = OpenCLBackend(ocl._cl, ocl.platform, ocl.device, ocl.ctx, ocl.queue)
    other.has_fp64 = False
    for dtype in ("float64", "complex128"):
        assert "fp64" in other.supports(_problem(dtype=dtype)[3])
    assert other.supports(_problem(dtype="complex64")[3]) is None
    with pytest.raises(BackendError, match="fp64"):
        other.run_direct(*_problem(dtype="float64")[:4], info=RunInfo())


# --------------------------------------------------------------------- program cache


def _direct_defines(**changes) -> dict:
    """Every define conv2d_direct requires (a missing one is a build error)."""
    defines = dict(REAL="float", COMPLEX=0, KH=3, KW=3, SH=1, SW=1, DH=1, DW=1, MODE=0)
    defines.update(CB=1, WB=8, HAS_BIAS=0, RB=1)
    defines.update(changes)
    return defines


def test_program_and_kernel_cached_in_process(ocl):
    defines = _direct_defines(KH=2, KW=5, CB=3, WB=4, MODE=4)
    info = RunInfo()
    prg = ocl.program("conv2d_direct", defines, info)
    again = RunInfo()
    assert ocl.program("conv2d_direct", dict(reversed(defines.items())), again) is prg
    assert "build" not in again.timings
    assert ocl.kernel("conv2d_direct", defines) is ocl.kernel("conv2d_direct", defines)
    assert prg.kernel_names.strip() == "conv2d_direct"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_generic_kernel_builds_once_for_every_image_size(dtype):
    # conv2d_direct takes image sizes as arguments: portrait, landscape and another
    # batch size reuse one build (a fresh backend, so the count is this test's alone)
    from convcli.backends.opencl.backend import OpenCLBackend

    require_device(dtype=dtype)
    be = OpenCLBackend.create(None)
    rng = np.random.default_rng(29)
    w = _rand(rng, (4, 2, 3, 5), dtype)
    for i, shape in enumerate([(1, 4, 23, 41), (1, 4, 41, 23), (2, 4, 17, 30)]):
        x = _rand(rng, shape, dtype)
        spec = make_spec(x, w, None, padding=(1, 2), groups=2, padding_mode="reflect")
        info = RunInfo()
        out = be.run_direct(x, w, None, spec, info=info)
        assert len(be._programs) == 1
        assert (info.timings.get("build", 0.0) > 0) == (i == 0)
        ref = naive_conv2d(x, w, None, pad=spec.pad, groups=2, padding_mode="reflect")
        assert_close(out, ref, dtype)


def test_program_without_kernels_is_rebuilt(ocl, monkeypatch):
    """A cache hit with no kernels (seen with PoCL) is rebuilt under other options."""
    from types import SimpleNamespace

    from convcli.backends.opencl.backend import OpenCLBackend

    fresh = OpenCLBackend(ocl._cl, ocl.platform, ocl.device, ocl.ctx, ocl.queue)
    real = fresh._build_once
    calls = []

    def first_empty(source, options):
        calls.append(options)
        return SimpleNamespace(kernel_names="") if len(calls) == 1 else real(source, options)

    monkeypatch.setattr(fresh, "_build_once", first_empty)
    prg = fresh.program("conv2d_direct", _direct_defines(KH=1, KW=2))
    assert prg.kernel_names.strip() == "conv2d_direct"
    assert len(calls) == 2 and any("CONVCLI_REBUILD" in o for o in calls[1])

    monkeypatch.setattr(fresh, "_build_once", lambda s, o: SimpleNamespace(kernel_names=""))
    with pytest.raises(BackendError, match="without any kernel"):
        fresh.program("conv2d_direct", _direct_defines(KH=2, KW=1))


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for name in ("CONVCLI_FAULT", "CONVCLI_DEVICE"):
        env.pop(name, None)
    return env


_CHILD = """
import json, sys
import numpy as np
from convcli import RunInfo
from convcli.backends.opencl.backend import OpenCLBackend
from convcli.backends.opencl.direct import _direct_config
from convcli.spec import make_spec
dtype = sys.argv[1]
rng = np.random.default_rng(11)
x = rng.standard_normal((1, 3, 20, 45)).astype(dtype)
w = rng.standard_normal((6, 1, 5, 3)).astype(dtype)
spec = make_spec(x, w, None, padding=(2, 1), groups=3, padding_mode="reflect")
be = OpenCLBackend.create(None)
info = RunInfo()
y = be.run_direct(x, w, None, spec, info=info)
cfg = _direct_config(spec, x.dtype, be.is_cpu)
names = be.program("conv2d_direct", cfg.defines).kernel_names
print(json.dumps({"y": y.astype(np.float64).ravel().tolist(), "kernels": names,
                  "build": info.timings.get("build", 0.0)}))
"""


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_second_process_reuses_the_compiled_program(ocl, dtype):
    """PoCL's disk cache once returned programs with no kernels in a second process."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 3, 20, 45)).astype(dtype)
    w = rng.standard_normal((6, 1, 5, 3)).astype(dtype)
    spec = make_spec(x, w, None, padding=(2, 1), groups=3, padding_mode="reflect")
    here = ocl.run_direct(x, w, None, spec, info=RunInfo())  # builds (and fills the cache)
    for _ in range(2):  # the second child certainly hits the disk cache
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, dtype],
            capture_output=True,
            text=True,
            env=_child_env(),
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        assert result["kernels"].strip() == "conv2d_direct"
        np.testing.assert_array_equal(np.array(result["y"]), here.astype(np.float64).ravel())


# ------------------------------------------------------------ errors and fault injection


def test_build_error_is_one_line_backend_error(ocl):
    with pytest.raises(BackendError) as err:
        ocl.program("conv2d_direct", _direct_defines(KH="1+"))
    message = str(err.value)
    assert "BUILD_PROGRAM_FAILURE" in message and "\n" not in message
    assert "(line " in message  # where the compiler's first error is


@pytest.mark.parametrize(
    "name",
    [
        "conv2d_direct",
        "dw_direct",
        "dense_gemm",
        "pointwise",
        "winograd_input",
        "dw_to_blocks",
        "dw_blocks",
        "dw_groups",
    ],
)
def test_a_missing_define_is_a_build_error_naming_it(ocl, name):
    # no silent default geometry: a host that forgets a define gets an error, not a
    # kernel for another shape
    with pytest.raises(BackendError, match=r"BUILD_PROGRAM_FAILURE.*-D \w+=\.\.\. is required"):
        ocl.program(name, {})
    with pytest.raises(BackendError, match="cannot be read"):
        ocl.program("no_such_kernel_file", {})


def _geometry_programs() -> list[tuple[str, dict]]:
    """Every kernel that includes geometry.clh, with every define it requires, built
    by the functions the backend builds them with."""
    from convcli.backends.opencl import depthwise, gemm
    from convcli.backends.opencl.geometry import geometry_defines
    from convcli.backends.opencl.settings import DEFAULT

    x = np.zeros((1, 4, 9, 10), np.float32)
    dw = make_spec(x, np.zeros((4, 1, 3, 3), np.float32), None, padding=1, groups=4)
    dense = make_spec(x, np.zeros((8, 4, 3, 3), np.float32), None, padding=1)
    geometry = geometry_defines(3, 3, (1, 1), (1, 1))
    native = dict(IN_T="uchar", OUT_T="uchar", C=1, ABS=0, ROWS=4, XV=2, SEPARABLE=0, FUSED=0)
    return [
        ("conv2d_direct", _direct_defines()),
        ("dw_direct", depthwise.defines(dw, DEFAULT)),
        ("dw_channels", depthwise.channels_defines(dw, False, DEFAULT)),
        ("dense_gemm", gemm.dense_defines(dense, True, DEFAULT)),
        ("direct_local", dict(geometry, COB=4, RX=1, HAS_BIAS=0)),
        ("native_filter", dict(geometry, **native)),
    ]


@pytest.mark.parametrize("case", range(6))
def test_geometry_header_stops_a_build_without_its_define(ocl, case):
    # the shared guards (kernels_cl/geometry.clh) reach every kernel that takes the
    # geometry: without one of KH..DW (a different one per kernel) the build stops
    # with the #error naming it, not a compile error elsewhere or a default shape
    name, defines = _geometry_programs()[case]
    missing = ("KH", "KW", "SH", "SW", "DH", "DW")[case]
    assert missing in defines
    ocl.program(name, defines)  # complete: builds
    partial = {k: v for k, v in defines.items() if k != missing}
    with pytest.raises(BackendError, match=rf"BUILD_PROGRAM_FAILURE.*-D {missing}=\.\.\. is"):
        ocl.program(name, partial)


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        ("build", "BUILD_PROGRAM_FAILURE"),
        ("alloc", "MEM_OBJECT_ALLOCATION_FAILURE"),
        ("run", "OUT_OF_RESOURCES"),
        ("lost", "DEVICE_NOT_AVAILABLE"),
    ],
)
def test_fault_injection_opencl_raises_auto_falls_back(ocl, monkeypatch, fault, status):
    x, w, b, spec, ref = _problem(hw=(10, 14), pad=(1, 1, 1, 1), mode="replicate")
    kw = dict(padding=1, padding_mode="replicate")
    # built first: auto weighs an unbuilt program against NumPy, which wins on a problem
    # this small; with the program held, auto runs OpenCL (and meets the faults)
    convcli.conv2d(x, w, b, backend="opencl", **kw)
    monkeypatch.setenv("CONVCLI_FAULT", fault)
    with pytest.raises(BackendError, match=status) as err:
        ocl.run(x, w, b, spec, info=RunInfo())
    assert "\n" not in str(err.value) and "injected by CONVCLI_FAULT" in str(err.value)
    with pytest.raises(BackendError, match=status):
        convcli.conv2d(x, w, b, backend="opencl", **kw)
    info = RunInfo()
    y = convcli.conv2d(x, w, b, backend="auto", info=info, **kw)
    assert info.backend == "numpy"
    assert any(status in note for note in info.notices), info.notices
    assert_close(y, ref, "float32")
    # the fault gone, the same backend object works again
    monkeypatch.delenv("CONVCLI_FAULT")
    info = RunInfo()
    assert_close(convcli.conv2d(x, w, b, backend="auto", info=info, **kw), ref, "float32")
    assert info.backend == "opencl"


@pytest.mark.parametrize("fault", ["build", "alloc", "run"])
def test_fault_injection_generic_kernel_steps(ocl, monkeypatch, fault):
    x, w, b, spec, _ = _problem(seed=3, hw=(6, 9))
    monkeypatch.setenv("CONVCLI_FAULT", f"other,{fault}")
    with pytest.raises(BackendError):
        ocl.run_direct(x, w, b, spec, info=RunInfo())


def test_fault_injection_init(monkeypatch):
    from convcli.backends.opencl.backend import OpenCLBackend

    monkeypatch.setattr(backends, "_OPENCL", {})
    monkeypatch.setenv("CONVCLI_FAULT", "init")
    with pytest.raises(BackendUnavailable, match="DEVICE_NOT_AVAILABLE"):
        OpenCLBackend.create(None)
    info = RunInfo()
    x = np.ones((2, 4, 4), np.float32)
    w = np.ones((2, 2, 1, 1), np.float32)
    y = convcli.conv2d(x, w, backend="auto", info=info)
    assert info.backend == "numpy" and np.all(y == 2.0)
    assert any("DEVICE_NOT_AVAILABLE" in note for note in info.notices)


def test_output_is_page_aligned_on_cpu(ocl):
    from convcli.backends.opencl.runtime import SMALL_OUTPUT_BYTES

    shape = (2, 3, 64, SMALL_OUTPUT_BYTES // 256)  # past the small outputs' size
    out, _ = ocl.output(shape, np.float32)
    assert out.shape == shape and out.flags.c_contiguous
    if ocl.is_cpu:
        assert out.ctypes.data % 4096 == 0


def test_small_results_of_repeated_calls_stay_apart(ocl):
    """Small outputs come out of one kept device buffer: each call's result is its own
    array, not overwritten by the next call."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    xs = [rng.standard_normal((1, 3, 6, 6)).astype(np.float32) for _ in range(3)]
    ys = [convcli.conv2d(x, w, padding=1, backend="opencl") for x in xs]
    assert ys[0].nbytes < 4096
    for x, y in zip(xs, ys, strict=True):
        ref = naive_conv2d(x, w, None, (1, 1), (1, 1, 1, 1))
        assert_close(y, ref, "float32")
