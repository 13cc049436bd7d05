"""Shared fixtures: backends, tolerances and the naive reference."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from convcli import backends
from convcli.errors import BackendError

# Tolerances, stated once: relative to max|reference| of the output.
RTOL = {
    "float16": 2e-3,
    "float32": 2e-5,
    "float64": 1e-10,
    "complex64": 2e-5,
    "complex128": 1e-10,
}


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--opencl-icd",
        default=None,
        help="run the OpenCL tests on this implementation only: an .icd file or a driver "
        "library (sets OCL_ICD_VENDORS, which pyopencl's bundled loader honours)",
    )
    parser.addoption(
        "--opencl-as-cpu",
        action="store_true",
        help="count every OpenCL device as a CPU, so that the CPU-only routes (dw_blocks, "
        "dw_groups, ...) run on a GPU-type device such as Oclgrind",
    )


def pytest_configure(config) -> None:
    # backend='auto' reads and writes a build index (backends/build_index.py): one per
    # session, so the user's index neither steers the tests nor fills with theirs
    if "CONVCLI_CACHE_DIR" not in os.environ:
        index = tempfile.mkdtemp(prefix="convcli-index-")
        os.environ["CONVCLI_CACHE_DIR"] = index
        config.add_cleanup(lambda: shutil.rmtree(index, ignore_errors=True))
    icd = config.getoption("--opencl-icd")
    if icd:
        # before pyopencl is first imported (convcli imports it lazily); child processes
        # of the tests inherit it
        os.environ["OCL_ICD_VENDORS"] = str(Path(icd).resolve())
    if config.getoption("--opencl-as-cpu"):
        from convcli.backends.opencl import device

        device.DeviceLimits.is_cpu = property(lambda self: True)


def pytest_report_header(config) -> str:
    limits = opencl_limits()
    if limits is None:
        return "OpenCL: no device (OpenCL tests skip)"
    be = backends.get_backend("opencl")
    return (
        f"OpenCL: {be.device_name}, {limits.type} {limits.kind}, fp64 {limits.fp64}, "
        f"local memory {limits.local_mem_bytes} B, work-group <= {limits.max_work_group_size}, "
        f"items <= {limits.max_work_item_sizes}"
    )


def opencl_available() -> bool:
    try:
        backends.get_backend("opencl")
    except (BackendError, ImportError):
        return False
    return True


def opencl_limits():
    """The default OpenCL device's :class:`DeviceLimits`, or None without a device."""
    if not opencl_available():
        return None
    return backends.get_backend("opencl").limits


_FP64 = ("float64", "complex128")


def require_device(
    *, dtype: str | None = None, fp64: bool = False, local_mem: int = 0, cpu: bool = False
) -> None:
    """Skip the calling test, saying why, where the OpenCL device lacks what it needs:
    fp64 (also implied by a float64/complex128 ``dtype``), ``local_mem`` bytes of local
    memory, or a CPU device (tests of CPU-only choices and PoCL behaviour)."""
    limits = opencl_limits()
    if limits is None:
        pytest.skip("no OpenCL device")
    if (fp64 or str(np.dtype(dtype) if dtype else "") in _FP64) and not limits.fp64:
        pytest.skip(f"the OpenCL device has no fp64 (needed for {dtype or 'this test'})")
    if local_mem > limits.local_mem_bytes:
        pytest.skip(
            f"needs {local_mem} bytes of local memory, the OpenCL device has "
            f"{limits.local_mem_bytes}"
        )
    if cpu and not limits.is_cpu:
        pytest.skip(f"needs a CPU device, the OpenCL device is a {limits.type}")


@pytest.fixture(scope="module")
def ocl():
    """The default OpenCL device's backend (as ``backend="opencl"`` uses); skips where
    there is no OpenCL device. A test file may define its own (another instance, a CPU
    device only)."""
    if not opencl_available():
        pytest.skip("no OpenCL device")
    return backends.get_backend("opencl")


@pytest.fixture
def gpu(ocl, tune):
    """The GPU-shaped kernels on whatever device the tests run on (the default backend's
    settings, changed for one test); 1x1 layers of one image stay on the device on a CPU
    too (not the host's matrix product)."""
    tune(ocl, gpu_kernels=True, host_pointwise_max_batch=0)


@pytest.fixture
def tune():
    """Change an OpenCL backend's tuning for one test: ``tune(be, winograd=True)`` (``be``
    None: the default device's backend, as ``conv2d(..., backend="opencl")`` uses)
    replaces ``be.settings`` with ``dataclasses.replace(be.settings, ...)`` and returns
    ``be``; every change is undone after the test."""
    import dataclasses

    changed = []

    def apply(be=None, **changes):
        if be is None:
            be = backends.get_backend("opencl")
        changed.append((be, be.settings))
        be.settings = dataclasses.replace(be.settings, **changes)
        return be

    yield apply
    for be, settings in reversed(changed):
        be.settings = settings


@pytest.fixture
def numpy_settings(monkeypatch):
    """Changes the NumPy backend's tuning for one test: ``numpy_settings(threads=2)``
    replaces ``backend.settings`` by a ``dataclasses.replace`` copy and returns it; the
    backend's own settings come back after the test."""
    be = backends.get_backend("numpy")

    def change(**changes):
        monkeypatch.setattr(be, "settings", dataclasses.replace(be.settings, **changes))
        return be.settings

    return change


@pytest.fixture(params=["numpy", "opencl"])
def backend(request) -> str:
    """Every backend; OpenCL tests skip only where no OpenCL device exists."""
    if request.param == "opencl" and not opencl_available():
        pytest.skip("no OpenCL device")
    return request.param


def assert_close(actual: np.ndarray, expected: np.ndarray, dtype: str | None = None) -> None:
    """Shapes and dtypes equal; values within RTOL of the reference's magnitude."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    dtype = dtype or str(actual.dtype)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    err = float(np.max(np.abs(actual.astype(np.complex128) - expected))) if expected.size else 0.0
    assert err <= RTOL[dtype] * max(scale, 1e-30) + 1e-30, (
        f"max abs error {err:.3g} > {RTOL[dtype]} x {scale:.3g}"
    )


def run_twice_with_one_pocl_cache(script: str, tmp_path: Path) -> tuple[str, str]:
    """Run ``script`` (Python source) in two fresh processes sharing one empty PoCL
    cache; returns both stdouts. The first builds, the second loads PoCL's cached
    binaries (which have come back without kernels for some programs)."""
    path = tmp_path / "run.py"
    path.write_text(script)
    env = dict(os.environ, POCL_CACHE_DIR=str(tmp_path / "kcache"))
    root = Path(__file__).resolve().parents[1]
    outs = []
    for _ in range(2):
        r = subprocess.run(
            [sys.executable, str(path)],
            env=env,
            cwd=root,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout)
    return outs[0], outs[1]


def band_budget(x, w, rows: int, **conv_kwargs) -> int:
    """A ``max_memory`` under which conv2d runs bands of ``rows`` output rows of one
    image (the whole output plus such a band, by convcli.budget's estimate)."""
    from convcli.budget import call_need
    from convcli.spec import make_spec

    kw = {k: v for k, v in conv_kwargs.items() if k not in ("backend", "device", "algo")}
    backend = conv_kwargs.get("backend", "numpy")
    xb = x if x.ndim == 4 else x[None]
    spec = make_spec(xb, w, kw.pop("bias", None), **kw)
    be = backends.get_backend(backend)
    algo = conv_kwargs.get("algo", "auto")
    planned = be.plan_algo(spec, w) if algo == "auto" else algo
    return call_need(spec, planned, be.name, rows=rows, images=1, tiled=True).total
