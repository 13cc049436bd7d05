"""PoCL's basic device beside its threaded one: small layers run in the calling thread
(``OpenCLBackend.runtime_for``), the device stays out of listings and indices, and the
caller's environment is left as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convcli import RunInfo, conv2d
from convcli.backends.opencl import device as dev
from convcli.spec import make_spec
from tests.conftest import assert_close
from tests.naive import naive_conv2d

ROOT = Path(__file__).resolve().parents[1]


def _vendors(tmp_path: Path, **files: str) -> str:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return str(tmp_path)


def test_a_pocl_registered_beside_pyopencls_own_keeps_its_devices(tmp_path):
    # a system PoCL may have GPU drivers that a device list would hide
    with_pocl = _vendors(tmp_path, **{"mesa.icd": "libMesaOpenCL.so.1", "p.icd": "libpocl.so.2"})
    assert not dev._only_bundled_pocl({"OCL_ICD_VENDORS": with_pocl})
    assert not dev._only_bundled_pocl({"OCL_ICD_VENDORS": "/usr/lib/libpocl.so.2"})
    assert not dev._only_bundled_pocl({"OCL_ICD_VENDORS": str(tmp_path / "p.icd")})
    # the loader told of a library by name (another PoCL, maybe)
    assert not dev._only_bundled_pocl({"OCL_ICD_FILENAMES": "/opt/pocl/lib/libpocl.so"})


def test_only_pocl_releases_whose_device_names_are_known_get_it(monkeypatch):
    monkeypatch.setattr(dev, "_inline", {"asked": False, "set": False, "devices": {}})
    monkeypatch.delenv("POCL_DEVICES", raising=False)
    monkeypatch.setattr(dev, "_only_bundled_pocl", lambda: True)
    monkeypatch.setattr(dev, "_bundled_pocl_major", lambda: "6")  # "cpu-minimal" names
    assert not dev._ask_inline_device() and "POCL_DEVICES" not in os.environ


def test_other_vendors_leave_the_inline_device_in(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    folder = _vendors(other, **{"mesa.icd": "libMesaOpenCL.so.1", "r.icd": "libRusticl.so.1"})
    assert dev._only_bundled_pocl({"OCL_ICD_VENDORS": folder})
    assert dev._only_bundled_pocl({"OCL_ICD_VENDORS": str(tmp_path / "none")})


_CHILD = """
import json, os, subprocess, sys
import numpy as np
from convcli import conv2d
from convcli.backends import get_backend
from convcli.backends.opencl.device import list_devices
be = get_backend("opencl")
x = np.ones((1, 8, 7, 7), np.float32)
w = np.ones((8, 8, 3, 3), np.float32)
y = conv2d(x, w, padding=1, backend="opencl")
child = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('POCL_DEVICES'))"],
                       capture_output=True, text=True).stdout.strip()
print(json.dumps({
    "devices": [(d.index, d.name) for d in list_devices()],
    "env": os.environ.get("POCL_DEVICES"), "child": child,
    "inline": None if be._inline is None else be._inline.device.name,
    "centre": float(y[0, 0, 3, 3]),
}))
"""


def _child(env_changes: dict[str, str | None]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for k, v in env_changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _bundled_pocl_only() -> bool:
    return dev._only_bundled_pocl() and "POCL_DEVICES" not in os.environ


@pytest.mark.skipif(not _bundled_pocl_only(), reason="PoCL's devices chosen or a system PoCL")
def test_the_inline_device_is_hidden_and_the_environment_restored(ocl):
    if "Portable Computing Language" not in ocl.platform.name:
        pytest.skip("not PoCL")
    seen = _child({"POCL_DEVICES": None})
    names = [name for _, name in seen["devices"]]
    assert not any(n.startswith("basic-") for n in names), names
    assert seen["env"] is None and seen["child"] == "None"
    assert seen["inline"] is not None and seen["inline"].startswith("basic-")
    assert seen["centre"] == 72.0  # 8 channels x 9 taps of ones
    # the user's choice of PoCL's devices is theirs: nothing added, nothing hidden
    chosen = _child({"POCL_DEVICES": "pthread"})
    assert chosen["inline"] is None and chosen["env"] == "pthread" == chosen["child"]


def _inline_or_skip(ocl):
    if ocl._inline_device is None:
        pytest.skip("no inline device (not PoCL's bundled CPU device, or POCL_DEVICES set)")


def test_small_layers_run_inline_with_the_threaded_devices_values(ocl, tune):
    _inline_or_skip(ocl)
    # whatever the machine's CPU count; the 1x1 layer on the device, not the host's
    # matrix product (host_pointwise_max_batch)
    tune(ocl, inline_max_macs=4_000_000, host_pointwise_max_batch=0)
    rng = np.random.default_rng(5)
    cases = [
        ((1, 16, 14, 14), (32, 16, 3, 3), 1),  # dense_gemm
        ((1, 96, 14, 14), (96, 1, 5, 5), 96),  # depthwise across channels
        ((1, 24, 28, 28), (24, 1, 3, 3), 24),  # depthwise direct taps
        ((1, 128, 32, 32), (16, 128, 1, 1), 1),  # pointwise
    ]
    for xs, ws, groups in cases:
        x = rng.standard_normal(xs).astype(np.float32)
        w = rng.standard_normal(ws).astype(np.float32)
        b = rng.standard_normal(ws[0]).astype(np.float32)
        pad = ws[2] // 2
        spec = make_spec(x, w, b, padding=pad, groups=groups)
        assert spec.macs <= ocl.inline_max_macs()
        rt = ocl.runtime_for(spec)
        assert rt is not ocl and rt.device.name.startswith("basic-")
        assert rt.settings is ocl.settings
        info = RunInfo()
        inline = conv2d(x, w, b, padding=pad, groups=groups, backend="opencl", info=info)
        assert info.device == ocl.device_name and info.timings["compute"] > 0
        assert not info.notices  # the device's kernels, not a host route
        assert_close(inline, naive_conv2d(x, w, b, pad=(pad,) * 4, groups=groups), "float32")
        tune(ocl, inline_max_macs=0)
        assert ocl.runtime_for(spec) is ocl
        threaded = conv2d(x, w, b, padding=pad, groups=groups, backend="opencl")
        # the same compiler and kernel: the same values
        np.testing.assert_array_equal(inline, threaded)
        tune(ocl, inline_max_macs=4_000_000)


def test_large_layers_stay_on_the_threaded_device(ocl):
    _inline_or_skip(ocl)
    limit = ocl.inline_max_macs()
    x = np.zeros((1, 64, 56, 56), np.float32)
    w = np.zeros((64, 64, 3, 3), np.float32)
    spec = make_spec(x, w, None, padding=1)
    assert spec.macs > limit
    assert ocl.runtime_for(spec) is ocl
    assert ocl.runtime_for(spec.with_batch(1)) is ocl
    small = make_spec(x[:, :8, :8, :8], w[:8, :8], None, padding=1)
    assert ocl.runtime_for(small) is not ocl


def test_depthwise_layers_count_inline_dw_weight_times_against_the_limit(ocl, tune):
    # shufflenet's 116-channel 3x3 on 14^2 at N=8 (1.64M multiply-adds) ran faster inline
    # than threaded; depthwise layers count 1.5x, not 2x, against inline_max_macs
    _inline_or_skip(ocl)
    assert ocl.settings.inline_dw_weight == 1.5
    rng = np.random.default_rng(11)
    # odd sizes, stride 2, bias: the fused dw_blocks route
    x = rng.standard_normal((3, 20, 13, 11)).astype(np.float32)
    w = rng.standard_normal((20, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(20).astype(np.float32)
    spec = make_spec(x, w, b, stride=2, padding=1, groups=20)
    tune(ocl, inline_max_macs=int(spec.macs * 1.75))
    rt = ocl.runtime_for(spec)
    assert rt is not ocl and rt.device.name.startswith("basic-")
    inline = conv2d(x, w, b, stride=2, padding=1, groups=20, backend="opencl")
    assert_close(inline, naive_conv2d(x, w, b, stride=(2, 2), pad=(1,) * 4, groups=20), "float32")
    tune(ocl, inline_dw_weight=2.0)  # the old count: over the limit
    assert ocl.runtime_for(spec) is ocl
    threaded = conv2d(x, w, b, stride=2, padding=1, groups=20, backend="opencl")
    np.testing.assert_array_equal(inline, threaded)
    # a dense layer of as many multiply-adds counts them once
    dense = make_spec(x[:, :4], w[:5].repeat(4, axis=1), None, stride=2, padding=1)
    assert dense.macs == spec.macs
    assert ocl.runtime_for(dense) is not ocl


def test_1x1_layers_count_a_share_of_their_multiply_adds(ocl, tune):
    """A 1x1 GEMM (stride 1, no padding) counts ``inline_1x1_share`` of its multiply-adds
    against the inline limit; a 3x3 layer or a strided or padded 1x1 one of as many
    counts them all, and so does a 1x1 layer on a map larger than ``inline_1x1_pixels``.
    Inline, a grouped 1x1 layer with bias and odd channel counts at
    batch 2 gives the reference's values."""
    _inline_or_skip(ocl)
    tune(ocl, inline_max_macs=1_000_000, inline_1x1_share=0.5, inline_1x1_pixels=40 * 45)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 42, 39, 45)).astype(np.float32)  # 6 groups of 7
    w = rng.standard_normal((66, 7, 1, 1)).astype(np.float32)  # 11 outputs a group
    b = rng.standard_normal(66).astype(np.float32)
    spec = make_spec(x, w, b, groups=6)
    assert 1_000_000 < spec.macs <= 2_000_000
    rt = ocl.runtime_for(spec)
    assert rt is not ocl and rt.device.name.startswith("basic-")
    got = conv2d(x, w, b, groups=6, backend="opencl")
    assert_close(got, naive_conv2d(x, w, b, pad=(0,) * 4, groups=6), "float32")
    # padded or strided 1x1 layers, and 3x3 ones, count every multiply-add
    padded = make_spec(x, w, b, groups=6, padding=1)
    assert padded.macs > 1_000_000 and ocl.runtime_for(padded) is ocl
    x2 = rng.standard_normal((2, 42, 78, 90)).astype(np.float32)
    strided = make_spec(x2, w, b, groups=6, stride=2)
    assert strided.macs > 1_000_000 and ocl.runtime_for(strided) is ocl
    x3 = rng.standard_normal((1, 16, 24, 24)).astype(np.float32)
    w3 = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    dense = make_spec(x3, w3, None, padding=1)
    assert 1_000_000 < dense.macs <= 2_000_000
    assert ocl.runtime_for(dense) is ocl
    # a map larger than inline_1x1_pixels counts them all
    tune(ocl, inline_1x1_pixels=39 * 45 - 1)
    assert ocl.runtime_for(spec) is ocl
    tune(ocl, inline_1x1_pixels=39 * 45)
    assert ocl.runtime_for(spec) is not ocl
    # share 1: the 1x1 layer goes back to the threaded device
    tune(ocl, inline_1x1_share=1.0)
    assert ocl.runtime_for(spec) is ocl
