"""OpenCL programs built from the device binary a process kept (``binaries/`` in the build
index folder): PoCL loads it several times faster than its own cached build of the
source, and it must compute the same."""

from __future__ import annotations

import numpy as np

from convcli import backends, native
from convcli.presets import get_preset


def test_a_kept_binary_builds_the_same_program_without_the_source(ocl, monkeypatch, tmp_path):
    """A fresh process's program comes from the binary an earlier build kept (PoCL loads
    it several times faster than its own cached build of the source) and computes the
    same; a damaged binary is dropped and the source is built again."""
    from convcli.backends import build_index
    from convcli.backends.opencl.backend import OpenCLBackend

    monkeypatch.setenv("CONVCLI_CACHE_DIR", str(tmp_path / "index"))
    kernel = np.asarray(get_preset("gaussian:sigma=1.5").kernel)
    rng = np.random.default_rng(3)
    strip = rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)
    expected = native.filter_strip(strip, top=255, kernel=kernel, backend="numpy")

    def fresh_run() -> tuple[np.ndarray, list[str]]:
        be = OpenCLBackend(ocl._cl, ocl.platform, ocl.device, ocl.ctx, ocl.queue)
        sources: list[str] = []
        real = be._build_once
        monkeypatch.setattr(be, "_build_once", lambda s, o: sources.append(s) or real(s, o))
        monkeypatch.setattr(backends, "_OPENCL", {None: be})
        out = native.filter_strip(strip, top=255, kernel=kernel, backend="opencl")
        return out, sources

    first, built = fresh_run()
    assert len(built) == 1
    kept = list((tmp_path / "index" / "binaries").rglob("*"))
    files = [p for p in kept if p.is_file()]
    assert len(files) == 1 and files[0].stat().st_size > 0
    second, built = fresh_run()
    assert built == []  # from the kept binary
    np.testing.assert_array_equal(first, second)
    assert np.abs(first.astype(int) - expected.astype(int)).max() <= 1
    files[0].write_bytes(b"not a binary")
    third, built = fresh_run()
    assert len(built) == 1
    np.testing.assert_array_equal(first, third)
    # the source's binary is kept again in place of the damaged one
    assert files[0].read_bytes() != b"not a binary"
    monkeypatch.setenv("POCL_KERNEL_CACHE", "0")  # caches off: nothing reused
    assert build_index.load_binary(files[0].parent.name + files[0].name) is None
