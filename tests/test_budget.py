"""Size limits and the memory budget (convcli.budget): refusals before allocating, the
estimates against real allocations, one kernel cap for every source, and the FFT the
cost model picks for huge kernels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import RTOL, opencl_available

from convcli import RunInfo, conv2d
from convcli import batch as cbatch
from convcli import io as cio
from convcli.backends.numpy import threads as numpy_threads
from convcli.batch import Filter
from convcli.budget import (
    MAX_KERNEL_SIDE,
    call_need,
    check_kernel_shape,
    format_bytes,
    smallest_need,
)
from convcli.errors import ConvValueError, InputError, LimitError
from convcli.presets import get_preset
from convcli.spec import make_spec

ROOT = Path(__file__).resolve().parents[1]
# what a refused run may reach at most (a bare run of the CLI is 40-60 MB); the runs
# these cases used to make grew to tens of GB
MAX_RSS_KB = 200 * 1024

# runs the CLI and prints the child's peak RSS (KB) on its last stdout line
_MEASURE = """
import resource, subprocess, sys
p = subprocess.run([sys.executable, "-m", "convcli", *sys.argv[1:]], capture_output=True,
                   text=True)
sys.stderr.write(p.stderr)
sys.stdout.write(p.stdout)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(p.returncode)
"""


def cli(*args: object) -> tuple[int, str, str, int]:
    """(exit code, stdout, stderr, peak RSS in KB) of a convcli run in a subprocess."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    *out, rss = proc.stdout.splitlines()
    return proc.returncode, "\n".join(out), proc.stderr, int(rss)


@pytest.fixture
def img64(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "img64.png"
    cio.write_image(path, rng.random((3, 64, 64)).astype(np.float32), bit_depth=8)
    return path


@pytest.mark.parametrize(
    "options, flag",
    [
        (["--padding", "1000000000"], "--padding 1000000000"),
        (["--padding", "1000000000", "--max-pixels", "none"], "--padding 1000000000"),
        (["--dilation", "1000000000"], "--dilation 1000000000"),
        (["--dilation", "1000000000", "--padding", "0"], "--dilation 1000000000"),
        (["--groups", "1000000000"], "--groups 1000000000"),
        # past NumPy's largest dimension (was: internal error: ValueError)
        (["--groups", "1" + "0" * 22], "--groups 1" + "0" * 22),
        (["--padding", "50000"], "--padding 50000"),  # the result's pixels
        (["--padding", "3000", "--max-memory", "64M"], "--padding 3000"),
        (["--max-memory", "10K"], "--max-memory 10K"),
        (["--padding", "20", "--max-pixels", "10000"], "--padding 20"),
    ],
)
def test_absurd_sizes_are_refused_before_allocating(tmp_path, img64, options, flag):
    out = tmp_path / "o.png"
    code, stdout, stderr, rss = cli(
        "apply", img64, "--preset", "box", "--backend", "numpy", "-o", out, *options
    )
    assert code in (1, 2)
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("convcli: error: "), stderr
    assert flag + ":" in lines[0]
    assert "internal error" not in stderr and "=" not in lines[0]  # flags, not API words
    assert not out.exists() and stdout == ""
    assert rss < MAX_RSS_KB


def test_huge_stride_runs_in_little_memory(tmp_path, img64):
    out = tmp_path / "o.npy"
    code, _, stderr, rss = cli(
        "apply", img64, "--preset", "box", "--backend", "numpy", "-q", "-o", out,
        "--stride", "1000000000",
    )  # fmt: skip
    assert code == 0, stderr
    # one output pixel: the box average of the 3x3 replicate-padded corner
    x = cio.read_image(img64).data
    corner = np.pad(x[:, :2, :2], ((0, 0), (1, 0), (1, 0)), mode="edge").mean(axis=(1, 2))
    np.testing.assert_allclose(np.load(out)[:, 0, 0], corner, rtol=1e-6)
    assert rss < MAX_RSS_KB


def test_max_memory_refuses_a_file_it_cannot_hold(tmp_path):
    # a 1000x800 RGB image: about 10 MB of float32, more than 4 MB in every stage
    rng = np.random.default_rng(1)
    src = tmp_path / "big.png"
    cio.write_image(src, rng.random((3, 800, 1000)).astype(np.float32), bit_depth=8)
    out = tmp_path / "o.png"
    code, _, stderr, rss = cli("apply", src, "--preset", "box", "-o", out, "--max-memory", "4M")
    assert code == 1 and not out.exists()
    (line,) = stderr.splitlines()
    assert line.startswith(f"convcli: error: {src}: --max-memory 4M: filtering this 1000x800")
    assert "decode" in line and "encode" in line
    assert rss < MAX_RSS_KB


def test_max_memory_that_holds_the_file_tiles_it_with_the_same_result(tmp_path, monkeypatch):
    """What the file leaves of max_memory makes the strips shorter (more conv2d calls,
    each bounded): same values. (The process's own size is pinned to 0 here, so the
    numbers do not depend on it.)"""
    rng = np.random.default_rng(2)
    src = tmp_path / "a.png"
    cio.write_image(src, rng.random((3, 1200, 1000)).astype(np.float32), bit_depth=8)
    monkeypatch.setattr(cbatch, "process_bytes", lambda: 0)
    filt = cbatch.Filter(weight=get_preset("gaussian:sigma=2").kernel.astype(np.float32))
    results = {}
    for name, limit in (("whole", None), ("tiled", 32 * 2**20)):
        task = cbatch.Task(src, tmp_path / f"{name}.npy")
        res = cbatch.run_tasks(
            [task], filt, engine=cbatch.Engine(backend="numpy", max_memory=limit)
        )
        assert res.ok, res.failed
        results[name] = (np.load(task.dst), res.info.tiles)
    assert results["tiled"][1] > results["whole"][1] >= 1
    np.testing.assert_allclose(results["tiled"][0], results["whole"][0], rtol=0, atol=1e-6)


def _photo(path: Path, size: int) -> Path:
    rng = np.random.default_rng(size)
    cio.write_image(path, rng.random((3, size, size)).astype(np.float32), bit_depth=8)
    return path


def test_max_memory_bounds_the_whole_process_numpy_and_auto(tmp_path):
    """--max-memory 200M: the interpreter and modules count too, and an OpenCL runtime
    (about 264 MiB on PoCL) cannot fit beside the image, so auto runs NumPy and says so;
    the child's peak stays under the limit."""
    src = _photo(tmp_path / "p.png", 1500)
    for backend in ("numpy", "auto"):
        out = tmp_path / f"{backend}.png"
        code, _, stderr, rss = cli("apply", src, "--preset", "gaussian:sigma=2", "--backend",
                                   backend, "--max-memory", "200M", "-q", "-o", out)  # fmt: skip
        assert code == 0, stderr
        assert rss <= 200 * 1024, (backend, rss)
        if backend == "auto":
            assert stderr.splitlines() == [
                f"convcli: warning: {src}: NumPy used: the OpenCL runtime (about 264.0 MiB) "
                "does not fit --max-memory beside this image"
            ]
    # both ran NumPy, in tiles cut from what each process left of the limit: NumPy's
    # BLAS passes may round a tile's float32 by an ulp, so within one 8-bit level
    np.testing.assert_allclose(
        cio.read_image(tmp_path / "numpy.png").data,
        cio.read_image(tmp_path / "auto.png").data,
        rtol=0,
        atol=1 / 255 + 1e-6,
    )


def test_max_memory_refuses_opencl_when_its_runtime_cannot_fit(tmp_path):
    src = _photo(tmp_path / "p.png", 1500)
    code, _, stderr, rss = cli("apply", src, "--preset", "box", "--backend", "opencl",
                               "--max-memory", "200M", "-o", tmp_path / "o.png")  # fmt: skip
    assert code == 1 and not (tmp_path / "o.png").exists()
    (line,) = stderr.splitlines()
    assert line.startswith(f"convcli: error: {src}: --max-memory 200M: filtering this 1500x1500")
    assert "the OpenCL runtime about 264.0 MiB more" in line and "convcli itself holds" in line
    assert rss < MAX_RSS_KB


def test_a_batch_under_max_memory_holds_one_file_at_a_time(tmp_path):
    """Three files in a row under 160M: the result of one must not live on through the
    next file's convolution (it did: 547 MB under 512M)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        _photo(folder / f"p{i}.png", 1400 + i)
    code, _, stderr, rss = cli("batch", folder, tmp_path / "out", "--preset", "sobel",
                               "--backend", "numpy", "--max-memory", "160M", "-q")  # fmt: skip
    assert code == 0, stderr
    assert len(list((tmp_path / "out").iterdir())) == 3
    assert rss <= 160 * 1024


# ------------------------------------------------------------------------ library
def test_library_errors_name_the_argument_in_api_words():
    x = np.zeros((1, 3, 64, 64), np.float32)
    w = np.ones((3, 1, 3, 3), np.float32)
    cases = [
        (dict(padding=10**9), "padding"),
        (dict(padding="same", dilation=10**9), "dilation"),
        (dict(padding=(0, 3 * 10**6), max_memory=64 * 2**20), "padding"),
        (dict(padding=1, max_memory=1000), "max_memory"),
    ]
    for options, argument in cases:
        with pytest.raises(LimitError) as err:
            conv2d(x, w, groups=3, backend="numpy", **options)
        assert err.value.argument == argument
        assert str(err.value).startswith(f"{argument}=") and "--" not in str(err.value)


def test_groups_are_checked_without_building_the_weight():
    filt = Filter(weight=np.ones((3, 3), np.float32), groups=10**9)
    filt.check()  # shapes only (was: MemoryError broadcasting a 36 GB weight)
    with pytest.raises(LimitError) as err:
        filt.check(budget=True, max_memory=2**30)
    assert err.value.argument == "groups" and "1000000000 channels" in str(err.value)


def test_groups_past_numpy_dimensions_are_refused_with_conv2d_words():
    # was ValueError "Maximum allowed dimension exceeded" from np.broadcast_to
    depthwise = Filter(weight=np.ones((3, 3), np.float32), groups=10**22)
    with pytest.raises(LimitError) as err:
        depthwise.check(budget=True, max_memory=2**30)
    assert err.value.argument == "groups" and f"{10**22} channels" in str(err.value)
    full = Filter(weight=np.ones((3, 1, 3, 3), np.float32), groups=10**22)
    with pytest.raises(ConvValueError, match=r"groups=10{22}, expected weight to be divisible"):
        full.check(budget=True)


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 2**60) == "3.0 EiB"


@pytest.mark.parametrize(
    "x_shape, w_shape, options",
    [
        ((1, 3, 200, 150), (3, 1, 9, 9), dict(padding=4, groups=3)),
        ((2, 8, 64, 48), (16, 8, 3, 3), dict(padding=1)),
        ((1, 3, 120, 100), (3, 1, 31, 31), dict(padding=15, groups=3, padding_mode="replicate")),
        ((1, 3, 300, 90), (3, 1, 7, 7), dict(padding=(40, 3), groups=3, stride=2)),
        ((1, 4, 50, 60), (4, 2, 5, 5), dict(groups=2, dilation=3, padding=6)),
    ],
)
@pytest.mark.parametrize("algo", ["direct", "gemm", "separable", "fft"])
def test_estimate_bounds_what_numpy_allocates(x_shape, w_shape, options, algo):
    rng = np.random.default_rng(3)
    x = rng.random(x_shape).astype(np.float32)
    w = np.ones(w_shape, np.float32) if algo == "separable" else rng.random(w_shape, np.float32)
    spec = make_spec(x, w, None, **options)
    numpy_threads.clear_scratch()  # buffers kept from earlier calls hide allocations
    tracemalloc.start()
    try:
        conv2d(x, w, **options, backend="numpy", algo=algo)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    estimate = call_need(spec, algo, "numpy").total
    assert peak <= estimate <= 6 * peak + 16 * 2**20


def test_tiles_fit_the_budget_they_were_cut_for():
    rng = np.random.default_rng(4)
    x = rng.random((1, 3, 400, 100)).astype(np.float32)
    w = rng.random((3, 1, 15, 15)).astype(np.float32)
    spec = make_spec(x, w, None, padding=7, groups=3)
    budget = smallest_need(spec, "direct", "numpy").total * 2
    numpy_threads.clear_scratch()
    info = RunInfo()
    tracemalloc.start()
    try:
        y = conv2d(x, w, padding=7, groups=3, algo="direct", backend="numpy", info=info,
                   max_memory=budget)  # fmt: skip
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.tiles > 4 and peak <= budget
    whole = conv2d(x, w, padding=7, groups=3, algo="direct", backend="numpy")
    # the bands take the depthwise GEMM's column blocks, the whole its shifted rows (too
    # large a copy for a band that fits): the 225 products summed in another order
    np.testing.assert_allclose(y, whole, rtol=1e-6, atol=1e-5)


# ------------------------------------------------------------------------ kernel cap
def _save(path: Path, w: np.ndarray) -> Path:
    suffix = path.suffix
    if suffix == ".npy":
        np.save(path, w)
    elif suffix == ".npz":
        np.savez(path, weight=w)
    elif suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file({"weight": w}, str(path))
    elif suffix == ".pt":
        torch = pytest.importorskip("torch")
        torch.save({"weight": torch.from_numpy(w)}, path)
    elif suffix == ".json":
        path.write_text(json.dumps(w.tolist()))
    else:
        path.write_text("\n".join(",".join(f"{v:g}" for v in row) for row in w))
    return path


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".safetensors", ".pt", ".json", ".txt"])
def test_one_kernel_cap_for_every_weight_file(tmp_path, suffix):
    side = MAX_KERNEL_SIDE
    ok = _save(tmp_path / f"ok{suffix}", np.zeros((1, side), np.float32))
    assert cio.load_weights(ok)[0].shape == (1, side)
    big = _save(tmp_path / f"big{suffix}", np.zeros((1, side + 1), np.float32))
    with pytest.raises(InputError, match=f"{big}: kernel {side + 1}x1 .* {side}x{side}"):
        cio.load_weights(big)


def test_one_kernel_cap_for_presets_text_and_arrays():
    from convcli import presets

    side = MAX_KERNEL_SIDE
    with pytest.raises(InputError, match=f"{side}x{side} convcli accepts"):
        presets.parse_kernel_text(f"{side + 1}x1: " + ",".join(["1"] * (side + 1)))
    with pytest.raises(InputError, match=str(side)):
        presets.get_preset(f"box:size={side + 2}")
    assert presets.get_preset(f"box:size={side}").kernel.shape == (side, side)
    with pytest.raises(InputError, match="weight: kernel"):
        Filter(weight=np.zeros((2, side + 1), np.float32))
    with pytest.raises(InputError, match="values, more than"):
        check_kernel_shape((4096, 4096, 3, 3), "w.npy")


def test_a_5000x5000_npy_is_refused_in_one_line_without_loading_it(tmp_path, img64):
    k = tmp_path / "k5000.npy"
    np.lib.format.open_memmap(k, mode="w+", dtype=np.float32, shape=(5000, 5000)).flush()
    out = tmp_path / "o.png"
    code, _, stderr, rss = cli("apply", img64, "--weights", k, "-o", out)
    assert code == 1 and not out.exists()
    assert stderr.splitlines() == [
        f"convcli: error: {k}: kernel 5000x5000 (width x height) is larger than the "
        f"{MAX_KERNEL_SIDE}x{MAX_KERNEL_SIDE} convcli accepts"
    ]
    assert rss < MAX_RSS_KB  # the 100 MB file was not read


# ------------------------------------------------------------------------ huge kernels
def _reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """float64 correlation of every channel with its kernel ('same', replicate) by
    scipy's FFT: independent of the backends' code."""
    from scipy.signal import correlate

    kh, kw = w.shape[-2:]
    pads = ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2)
    out = []
    for c in range(x.shape[0]):
        xp = np.pad(x[c].astype(np.float64), pads, mode="edge")
        out.append(correlate(xp, w[c, 0].astype(np.float64), mode="valid", method="fft"))
    return np.stack(out)


@pytest.mark.parametrize("backend", ["numpy", "opencl"])
def test_auto_runs_huge_kernels_by_fft(backend):
    if backend == "opencl" and not opencl_available():
        pytest.skip("no OpenCL device")
    rng = np.random.default_rng(5)
    x = rng.random((3, 200, 180)).astype(np.float32)
    # wider than OpenCL's FFT tiles (128 pixels across), not separable
    w = rng.random((3, 1, 131, 129)).astype(np.float32) / (131 * 129)
    info = RunInfo()
    y = conv2d(x, w, padding="same", groups=3, padding_mode="replicate", backend=backend,
               info=info)  # fmt: skip
    assert info.algo == "fft"
    ref = _reference(x, w)
    assert np.abs(y - ref).max() <= RTOL["float32"] * np.abs(ref).max()


def test_progress_of_a_huge_kernel_comes_in_bands_no_shorter_than_its_overlap(monkeypatch):
    import convcli.api

    monkeypatch.setattr(convcli.api, "PROGRESS_MIN_FLOPS", 1)
    rng = np.random.default_rng(6)
    x = rng.random((1, 600, 60)).astype(np.float32)
    w = rng.random((1, 1, 129, 129)).astype(np.float32) / 129**2
    seen: list[tuple[int, int]] = []
    info = RunInfo()
    kw = dict(padding="same", padding_mode="replicate", backend="numpy")
    y = conv2d(x, w, info=info, progress=lambda *a: seen.append(a), **kw)
    # 16 steps would be 38-row bands, each redoing 128 rows of overlap
    assert info.algo == "fft" and info.tiles == len(seen) == 5
    assert seen[-1] == (600, 600)
    np.testing.assert_allclose(y, conv2d(x, w, **kw), rtol=0, atol=1e-5)


def test_a_large_non_separable_kernel_skips_the_svd(monkeypatch):
    from convcli import plan

    calls = []
    monkeypatch.setattr(plan.np.linalg, "svd", lambda *a, **k: calls.append(1))
    w = np.random.default_rng(7).random((1, 1, 301, 301))
    assert plan.separable_factors(w) is None and not calls


def test_opencl_leaves_strides_beyond_32_bits_to_numpy():
    if not opencl_available():
        pytest.skip("no OpenCL device")
    from convcli.errors import BackendError

    rng = np.random.default_rng(8)
    x = rng.random((1, 3, 20, 20)).astype(np.float32)
    w = rng.random((3, 1, 3, 3)).astype(np.float32)
    kw = dict(stride=3 * 10**9, padding=1, groups=3)
    # int32 in the kernels: the stride wrapped negative and the kernel ran for minutes
    with pytest.raises(BackendError, match="32-bit"):
        conv2d(x, w, backend="opencl", **kw)
    info = RunInfo()
    y = conv2d(x, w, backend="auto", info=info, **kw)
    assert info.backend == "numpy" and y.shape == (1, 3, 1, 1)
    ref = (np.pad(x[0, :, :2, :2], ((0, 0), (1, 0), (1, 0))) * w[:, 0]).sum(axis=(1, 2))
    np.testing.assert_allclose(y[0, :, 0, 0], ref, rtol=1e-6)
