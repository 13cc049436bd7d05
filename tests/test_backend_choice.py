"""backend='auto' weighs OpenCL's start-up and builds against NumPy (backends/choice.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convcli import backends
from convcli.backends import build_index, choice
from convcli.spec import make_spec
from tests.naive import naive_conv2d

ROOT = Path(__file__).resolve().parents[1]


def _opencl_device() -> bool:
    try:
        from convcli.backends.opencl.device import list_devices
    except ImportError:
        return False
    return bool(list_devices())


def _gaussian(sigma: float) -> np.ndarray:
    r = int(3.5 * sigma)
    g = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k = np.outer(g, g)
    return (k / k.sum()).astype(np.float32)


def _depthwise(k: np.ndarray, c: int) -> np.ndarray:
    return np.ascontiguousarray(np.broadcast_to(k, (c, 1, *k.shape)))


@pytest.fixture(autouse=True)
def _own_index(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVCLI_CACHE_DIR", str(tmp_path / "index"))
    for name in ("CONVCLI_FAULT", "CONVCLI_DEVICE", "PYOPENCL_CTX"):
        monkeypatch.delenv(name, raising=False)


def _child(script: str, tmp_path: Path) -> dict:
    """Run ``script`` in a fresh interpreter with this checkout and the test's index;
    it prints one JSON line."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("CONVCLI_FAULT", None)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


_RUN = """
import json, sys
import numpy as np
import convcli
from convcli.runinfo import RunInfo
r = int(3.5 * {sigma})
g = np.exp(-0.5 * (np.arange(-r, r + 1) / {sigma}) ** 2)
k = np.outer(g, g); k = (k / k.sum()).astype(np.float32)
w = np.ascontiguousarray(np.broadcast_to(k, (3, 1, *k.shape)))
x = {image}
info = RunInfo()
y = convcli.conv2d(x, w, padding="same", groups=3, padding_mode="replicate",
                   backend="{backend}", info=info)
np.save("y.npy", y[:, ::{step}, ::{step}])
print(json.dumps({{"backend": info.backend, "pyopencl": "pyopencl" in sys.modules,
                  "build": info.timings.get("build", 0.0)}}))
"""


def test_auto_runs_a_small_image_on_numpy_without_importing_pyopencl(tmp_path):
    image = "np.random.default_rng(1).random((3, 512, 512), dtype=np.float32)"
    got = _child(_RUN.format(sigma=2, image=image, backend="auto", step=1), tmp_path)
    assert got == {"backend": "numpy", "pyopencl": False, "build": 0.0}
    x = np.random.default_rng(1).random((3, 512, 512), dtype=np.float32)
    k = _gaussian(2)
    ref = naive_conv2d(x[None, :, :64, :64], _depthwise(k, 3), pad=(7, 7, 7, 7), groups=3,
                       padding_mode="replicate")[0]  # fmt: skip
    # the top-left 50x50 output pixels see only the 64x64 corner (and its padding)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy")[:, :50, :50], ref[:, :50, :50],
                               rtol=0, atol=1e-5)  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(not _opencl_device(), reason="no OpenCL device")
def test_auto_runs_a_large_image_on_opencl(tmp_path):
    # a first process starts OpenCL on a small image with this filter: the index then
    # knows the device and that the filter's programs (image sizes are runtime
    # arguments above 256x256) are built
    small = "np.ones((3, 300, 300), np.float32)"
    seeded = _child(_RUN.format(sigma=8, image=small, backend="opencl", step=1), tmp_path)
    assert seeded["backend"] == "opencl" and seeded["pyopencl"]
    assert (tmp_path / "index" / "devices").is_dir()
    ramp = "np.broadcast_to(np.linspace(0, 1, 4096, dtype=np.float32), (3, 4096, 4096))"
    got = _child(_RUN.format(sigma=8, image=ramp, backend="auto", step=512), tmp_path)
    assert got["backend"] == "opencl" and got["pyopencl"]
    # a horizontal ramp stays a ramp under a normalised symmetric blur, away from the
    # edges (replicate padding bends it within the kernel's reach of them)
    y = np.load(tmp_path / "y.npy")
    cols = np.arange(0, 4096, 512)
    inner = (cols >= 25) & (cols < 4096 - 25)
    want = np.broadcast_to(cols[inner] / 4095, y[:, :, inner].shape)
    np.testing.assert_allclose(y[:, :, inner], want, atol=1e-5)


def _record(**kw) -> build_index.DeviceRecord:
    base = dict(fingerprint="test-device", label="test", is_cpu=True, local_mem=65536,
                startup_s=0.0)  # fmt: skip
    return build_index.DeviceRecord(**{**base, **kw})


def test_an_uncached_build_is_counted_until_it_has_paid(monkeypatch):
    # 3x4096x4096, Gaussian sigma 2: NumPy about 0.67 s by its estimate (times
    # NUMPY_SCALE), OpenCL a quarter of that; two programs (the separable passes)
    x = np.empty((3, 4096, 4096), np.float32)
    w = _depthwise(_gaussian(2), 3)
    spec = make_spec(x, w, None, padding="same", groups=3, padding_mode="replicate")
    monkeypatch.setattr(backends, "started_opencl", lambda device=None: None)
    # a device on which every program without a marker was compiled
    record = _record(unmarked=198, compiled=198)
    monkeypatch.setattr(build_index, "load_device", lambda device=None: record)
    monkeypatch.setattr(build_index, "is_built", lambda key: True)
    assert not choice.numpy_first(spec, w, None, "auto")  # cached: OpenCL
    monkeypatch.setattr(build_index, "is_built", lambda key: False)
    # uncached: 2 x BUILD_S more than NumPy's time; NumPy until what OpenCL would have
    # saved adds up to the builds (the ski-rental rule), then OpenCL builds
    gain = 0.666 * choice.NUMPY_SCALE * (1 - 1 / choice.OPENCL_SPEEDUP)
    flips = 0
    while choice.numpy_first(spec, w, None, "auto"):
        flips += 1
        assert flips < 50
    assert abs(flips - 2 * choice.BUILD_S / gain) <= 1.5
    # a device whose programs without a marker came from the driver's cache (filled
    # before the index): a missing marker is then no reason to stay on NumPy
    record = _record(unmarked=40, compiled=0)
    assert not choice.numpy_first(spec, w, None, "auto")
    # ...unless the driver's cache is off: then every build compiles
    monkeypatch.setenv("POCL_KERNEL_CACHE", "0")
    assert choice.numpy_first(spec, w, None, "auto")


def test_startup_alone_decides_small_jobs_before_importing_opencl_modules(monkeypatch):
    x = np.empty((3, 512, 512), np.float32)
    w = _depthwise(_gaussian(2), 3)
    spec = make_spec(x, w, None, padding="same", groups=3, padding_mode="replicate")
    monkeypatch.setattr(backends, "started_opencl", lambda device=None: None)
    monkeypatch.setattr(build_index, "load_device", lambda device=None: _record(startup_s=0.2))

    def no_prediction(*args, **kwargs):
        raise AssertionError("programs predicted for a job the start-up already decides")

    monkeypatch.setattr(choice, "_build_seconds", no_prediction)
    assert choice.numpy_first(spec, w, None, "auto")
    # a named device, or injected faults, keep OpenCL in the running
    assert not choice.numpy_first(spec, w, "pthread", "auto")
    monkeypatch.setenv("CONVCLI_FAULT", "build")
    assert not choice.numpy_first(spec, w, None, "auto")


@pytest.mark.skipif(not _opencl_device(), reason="no OpenCL device")
@pytest.mark.parametrize(
    ("shape", "kernel", "groups", "dtype"),
    [
        ((3, 300, 310), "gauss", 3, "float32"),  # separable, sizes as arguments
        ((3, 40, 50), "gauss", 3, "float32"),  # separable, sizes baked in
        ((1, 64, 80), "box", 1, "float32"),  # running sums + horizontal pass
        ((3, 64, 64), "rand3", 3, "float32"),  # depthwise direct taps
        ((4, 32, 40), "dense5", 1, "float32"),  # implicit GEMM
        ((2, 20, 24), "rand3", 1, "float64"),  # the generic kernel
        ((3, 96, 96), "rand11", 3, "float32"),  # FFT tiles
        ((32, 20, 24), "dense3", 1, "float32"),  # Winograd, one launch on a CPU
        ((80, 36, 40), "dense3", 1, "float32"),  # split Winograd (input, GEMM, output)
    ],
)
def test_predicted_programs_are_the_ones_a_run_builds(monkeypatch, shape, kernel, groups, dtype):
    from convcli.backends.opencl import plan as opencl_plan
    from convcli.backends.opencl.backend import OpenCLBackend
    from convcli.backends.opencl.runtime import Runtime, _defines_key
    from convcli.runinfo import RunInfo

    rng = np.random.default_rng(3)
    c = shape[0]
    k = {
        "gauss": _gaussian(1.5),
        "box": np.full((5, 5), 1 / 25, np.float32),
        "rand3": rng.random((3, 3), np.float32),
        "rand11": rng.random((11, 11), np.float32),
    }.get(kernel)
    if kernel == "dense5":
        w = rng.random((8, c, 5, 5), np.float32)
    elif kernel == "dense3":
        w = rng.random((c, c, 3, 3), np.float32) / c
    else:
        w = _depthwise(k, c) if groups > 1 else k[None, None].repeat(c, 1) / c
    x = rng.random((1, *shape)).astype(dtype)
    w = w.astype(dtype)
    spec = make_spec(x, w, None, padding="same", groups=groups, padding_mode="replicate")
    backend = OpenCLBackend.create(None)  # holds nothing yet
    built = []
    real = Runtime._build  # the inline device's builds too

    def record(self, name, defines):
        built.append((name, defines))
        return real(self, name, defines)

    monkeypatch.setattr(Runtime, "_build", record)
    predicted = opencl_plan.programs(spec, w, "auto", cpu=backend.is_cpu,
                                     local_mem=backend.limits.local_mem_bytes)  # fmt: skip
    y = backend.run(x, w, None, spec, info=RunInfo())
    assert sorted(built) == sorted((n, _defines_key(d)) for n, d in predicted)
    ref = naive_conv2d(x, w, pad=spec.pad, groups=groups, padding_mode="replicate")
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-4 * float(np.abs(ref).max()))


@pytest.mark.skipif(not _opencl_device(), reason="no OpenCL device")
def test_a_warm_call_whose_programs_are_held_is_not_priced_again(monkeypatch):
    import convcli

    x = np.random.default_rng(2).random((1, 16, 24, 24), np.float32)
    w = np.random.default_rng(3).random((16, 16, 3, 3), np.float32)
    convcli.conv2d(x, w, padding=1, backend="opencl")  # started, programs built
    priced = []
    real = choice._build_seconds
    monkeypatch.setattr(choice, "_build_seconds", lambda *a, **k: priced.append(1) or real(*a, **k))
    for _ in range(3):
        info = convcli.RunInfo()
        y = convcli.conv2d(x, w, padding=1, backend="auto", info=info)
        assert info.backend == "opencl"
    assert len(priced) == 1
    ref = naive_conv2d(x, w, pad=(1, 1, 1, 1))
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-4 * float(np.abs(ref).max()))


@pytest.mark.skipif(not _opencl_device(), reason="no OpenCL device")
def test_a_kernels_first_launch_with_a_new_work_group_size_counts_as_build(monkeypatch):
    # PoCL compiles a kernel for each work-group size at its first launch with it: a
    # narrow image (16 items a row) and then a wide one (64) share dw_direct's program
    # (sizes are runtime arguments above 256x256 pixels) but not the compile
    from convcli.backends.opencl.backend import OpenCLBackend
    from convcli.runinfo import RunInfo

    backend = OpenCLBackend.create(None)
    # one device throughout (small images would run on the inline one, a large on this)
    backend.settings = dataclasses.replace(backend.settings, inline_max_macs=0)
    rng = np.random.default_rng(4)
    w = _depthwise(rng.random((3, 3), np.float32), 2)
    seen = []
    real = OpenCLBackend.enqueue

    def enqueue(self, kernel, global_size, wanted_local, args, info=None):
        seen.append(tuple(wanted_local))
        return real(self, kernel, global_size, wanted_local, args, info)

    monkeypatch.setattr(OpenCLBackend, "enqueue", enqueue)
    for shape in ((2, 1100, 70), (2, 60, 1200), (2, 1000, 1200)):
        x = rng.random((1, *shape), np.float32)
        spec = make_spec(x, w, None, padding=1, groups=2)
        info = RunInfo()
        y = backend.run(x, w, None, spec, info=info)
        ref = naive_conv2d(x, w, pad=(1, 1, 1, 1), groups=2)
        np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5)
        if shape[2] == 1200 and shape[1] == 1000:
            assert info.timings.get("build", 0.0) == 0.0  # nothing new: no build
        else:
            assert info.timings["build"] > 0.0, shape  # a new work-group size
    assert seen[0] != seen[1] == seen[2]


def test_auto_starts_no_opencl_for_a_layer_it_would_hand_to_numpy(monkeypatch):
    # a 1x1 layer of one image runs NumPy's product on a CPU device's OpenCL backend:
    # however long NumPy takes, starting OpenCL for it buys nothing; a GPU device runs
    # it in its kernels and is started as before
    x = np.empty((1, 2048, 44, 44), np.float32)
    w = np.zeros((2048, 2048, 1, 1), np.float32)
    spec = make_spec(x, w, None)
    monkeypatch.setattr(backends, "started_opencl", lambda device=None: None)
    monkeypatch.setattr(build_index, "is_built", lambda key: True)
    monkeypatch.setattr(build_index, "load_device", lambda device=None: _record(is_cpu=True))
    assert choice.numpy_first(spec, w, None, "auto")
    monkeypatch.setattr(build_index, "load_device", lambda device=None: _record(is_cpu=False))
    assert not choice.numpy_first(spec, w, None, "auto")
    # a forced algorithm runs the device's GEMM kernels: OpenCL as before
    monkeypatch.setattr(build_index, "load_device", lambda device=None: _record(is_cpu=True))
    assert not choice.numpy_first(spec, w, None, "gemm")
