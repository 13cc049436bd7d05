"""The ``convcli`` command through click's CliRunner, checked through the Python API.

Outputs are read back with :func:`convcli.io.read_image` and compared with an
independent reference (tests/naive.py, torch where importable) on the same float image,
within one 8-bit level (1/255) plus rounding.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import example, given
from hypothesis import strategies as st
from naive import naive_conv2d

from convcli import __version__
from convcli import io as cio
from convcli.cli import cli
from convcli.io import stream

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
LEVEL = 1 / 255 + 1e-6  # one 8-bit level


# ---------------------------------------------------------------------------- helpers
def run(*args: object, ok: bool = True):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, (result.exit_code, result.output)
    return result


def sample(tmp_path: Path, name: str = "astronaut.png", *, size=(40, 32), mode=None,
           suffix=".png", bits=8) -> Path:  # fmt: skip
    """A small crop of a real sample image, saved as ``suffix`` (16-bit via io)."""
    from PIL import Image

    with Image.open(SAMPLES / name) as im:
        w, h = size
        im = im.crop((150, 120, 150 + w, 120 + h))
        if mode:
            im = im.convert(mode)
        im.load()
    stem = Path(name).stem + (f"_{mode}" if mode else "")
    out = tmp_path / f"{stem}{suffix}"
    if bits == 16:
        data = np.asarray(im, np.float32) / 255
        data = data[None] if data.ndim == 2 else np.moveaxis(data, -1, 0)
        # spread to 16-bit values that 8 bits cannot hold
        data = np.clip(data + np.linspace(0, 1 / 300, data.shape[-1], dtype=np.float32), 0, 1)
        cio.write_image(out, data, bit_depth=16)
    else:
        im.save(out, quality=95) if suffix in (".jpg", ".jpeg") else im.save(out)
    return out


def same_pad(k: tuple[int, int], dilation=(1, 1)) -> tuple[int, int, int, int]:
    th, tw = dilation[0] * (k[0] - 1), dilation[1] * (k[1] - 1)
    return (th // 2, th - th // 2, tw // 2, tw - tw // 2)


def reference(path: Path, kernel: np.ndarray, *, stride=(1, 1), pad=None, dilation=(1, 1),
              mode="replicate", bias=None, clip=True) -> np.ndarray:  # fmt: skip
    """Depthwise 2-D kernel on every channel, by the naive reference, clipped to [0, 1]."""
    x = cio.read_image(path).data.astype(np.float64)
    c = x.shape[0]
    k = np.asarray(kernel, np.float64)
    w = np.broadcast_to(k, (c, 1, *k.shape))
    b = None if bias is None else np.full(c, bias)
    pad = same_pad(k.shape, dilation) if pad is None else pad
    y = naive_conv2d(x[None], w, b, stride, pad, dilation, c, mode)[0].real
    return np.clip(y, 0, 1) if clip else y


def assert_image(path: Path, expected: np.ndarray, tol: float = LEVEL) -> cio.Image:
    img = cio.read_image(path)
    assert img.data.shape == expected.shape
    err = float(np.max(np.abs(img.data - expected)))
    assert err <= tol, f"{path.name}: max error {err * 255:.2f} levels"
    return img


def one_error_line(result, *needles: str) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("convcli: error: "), line
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in line, (needle, line)
    return line


BOX3 = np.full((3, 3), 1 / 9)
BINOMIAL = np.outer([1, 2, 1], [1, 2, 1]) / 16


# ---------------------------------------------------------------------------- apply
def test_version():
    assert run("--version").output.strip() == f"convcli {__version__}"


def test_help_lists_commands():
    out = run("--help").output
    for name in ("apply", "batch", "presets", "devices", "bench"):
        assert name in out


def test_apply_rgb_weights_file_matches_reference(tmp_path):
    src = sample(tmp_path)
    k = np.arange(15, dtype=np.float32).reshape(3, 5) / 105
    np.save(tmp_path / "k.npy", k)
    out = tmp_path / "out.png"
    res = run("apply", src, "--weights", tmp_path / "k.npy", "-o", out, "--backend", "numpy")
    assert res.stdout.strip() == str(out)
    assert_image(out, reference(src, k))


def test_apply_default_backend_on_gray_matches_reference(tmp_path):
    src = sample(tmp_path, "camera.png")
    np.save(tmp_path / "k.npy", BINOMIAL.astype(np.float32))
    out = tmp_path / "out.png"
    run("apply", src, "--weights", tmp_path / "k.npy", "-o", out, "-q")
    img = assert_image(out, reference(src, BINOMIAL))
    assert img.mode == "L"


def test_apply_matches_torch(tmp_path):
    torch = pytest.importorskip("torch")
    src = sample(tmp_path, "coffee.png")
    k = np.random.default_rng(3).uniform(-0.2, 0.4, (5, 5)).astype(np.float32)
    np.save(tmp_path / "k.npy", k)
    out = tmp_path / "out.png"
    run("apply", src, "--weights", tmp_path / "k.npy", "-o", out, "--padding-mode", "reflect",
        "--dilation", "1,2", "--backend", "numpy")  # fmt: skip
    x = torch.from_numpy(cio.read_image(src).data)[None]
    layer = torch.nn.Conv2d(3, 3, 5, padding="same", dilation=(1, 2), groups=3, bias=False,
                            padding_mode="reflect")  # fmt: skip
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(np.broadcast_to(k, (3, 1, 5, 5)).copy()))
        y = layer(x)[0].numpy()
    assert_image(out, np.clip(y, 0, 1))


def test_sixteen_bit_in_sixteen_bit_out(tmp_path):
    src = sample(tmp_path, "coffee.png", bits=16)
    assert cio.read_image(src).bit_depth == 16
    np.save(tmp_path / "k.npy", BOX3.astype(np.float32))
    out = tmp_path / "out.png"
    run("apply", src, "--weights", tmp_path / "k.npy", "-o", out, "--backend", "numpy")
    img = assert_image(out, reference(src, BOX3), tol=2 / 65535 + 1e-6)
    assert img.bit_depth == 16


def test_jpeg_in_tiff_out_with_stride_and_padding(tmp_path):
    src = sample(tmp_path, suffix=".jpg")
    np.save(tmp_path / "k.npy", BINOMIAL.astype(np.float32))
    out = tmp_path / "out.tif"
    run("apply", src, "--weights", tmp_path / "k.npy", "-o", out, "--stride", "2",
        "--padding", "1,0", "--padding-mode", "zeros", "--backend", "numpy")  # fmt: skip
    assert_image(out, reference(src, BINOMIAL, stride=(2, 2), pad=(1, 1, 0, 0), mode="zeros"))


def test_stride_without_padding_defaults_to_centred_halo(tmp_path):
    src = sample(tmp_path)
    np.save(tmp_path / "k.npy", BOX3.astype(np.float32))
    out = tmp_path / "out.png"
    run("apply", src, "--weights", tmp_path / "k.npy", "-o", out, "--stride", "2",
        "--backend", "numpy")  # fmt: skip
    assert_image(out, reference(src, BOX3, stride=(2, 2), pad=(1, 1, 1, 1)))


def test_npy_output_is_raw_and_bias_applies(tmp_path):
    src = sample(tmp_path, "camera.png")
    k = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
    np.save(tmp_path / "k.npy", k)
    out = tmp_path / "out.npy"
    run("apply", src, "--weights", tmp_path / "k.npy", "--bias", "0.25", "-o", out,
        "--backend", "numpy")  # fmt: skip
    got = np.load(out)
    ref = reference(src, k, bias=0.25, clip=False)
    assert got.min() < 0 < got.max()  # not clipped
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_per_channel_bias_with_a_2d_kernel(tmp_path):
    # the budget check before any file is read sized the weight for one channel
    # with the three-value bias still attached: every per-channel --bias failed
    src = sample(tmp_path)  # RGB
    k = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / 16
    np.save(tmp_path / "k.npy", k)
    out = tmp_path / "out.npy"
    run("apply", src, "--weights", tmp_path / "k.npy", "--bias", "0.1,-0.2,0.3", "-o", out,
        "--backend", "numpy")  # fmt: skip
    got = np.load(out)
    ref = reference(src, k, clip=False) + np.array([0.1, -0.2, 0.3])[:, None, None]
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_out_map_abs_and_flip(tmp_path):
    src = sample(tmp_path, "camera.png")
    k = np.array([[1, 2, 3], [0, 0, 0], [-3, -2, -1]], np.float32)
    np.save(tmp_path / "k.npy", k)
    out = tmp_path / "out.png"
    run("apply", src, "--weights", tmp_path / "k.npy", "--flip", "--out-map", "abs",
        "-o", out, "--backend", "numpy")  # fmt: skip
    ref = reference(src, k[::-1, ::-1], clip=False)
    assert_image(out, np.clip(np.abs(ref), 0, 1))


def test_four_d_weight_infers_groups_and_rejects_png_for_odd_channels(tmp_path):
    src = sample(tmp_path)
    rng = np.random.default_rng(0)
    w = rng.uniform(-0.3, 0.3, (5, 3, 3, 3)).astype(np.float32)
    b = rng.uniform(0, 0.1, 5).astype(np.float32)
    np.savez(tmp_path / "w.npz", weight=w, bias=b)
    bad = tmp_path / "out.png"
    res = run("apply", src, "--weights", tmp_path / "w.npz", "-o", bad, "--backend", "numpy",
              ok=False)  # fmt: skip
    assert res.exit_code == 1
    line = one_error_line(res, ".npy")
    assert ".tif" in line
    assert not bad.exists()
    out = tmp_path / "out.npy"
    run("apply", src, "--weights", tmp_path / "w.npz", "-o", out, "--backend", "numpy")
    x = cio.read_image(src).data.astype(np.float64)[None]
    ref = naive_conv2d(x, w, b, (1, 1), (1, 1, 1, 1), (1, 1), 1, "replicate")[0].real
    np.testing.assert_allclose(np.load(out), ref, atol=1e-5)


def test_rgba_premultiplied_alpha_does_not_bleed(tmp_path):
    data = np.zeros((4, 8, 8), np.float32)
    data[0, :, :4] = 1.0  # red, opaque on the left; "green" hidden under alpha 0 right
    data[1, :, 4:] = 1.0
    data[3, :, :4] = 1.0
    src = tmp_path / "rgba.png"
    cio.write_image(src, data)
    np.save(tmp_path / "k.npy", BOX3.astype(np.float32))
    out = tmp_path / "out.png"
    run("apply", src, "--weights", tmp_path / "k.npy", "-o", out, "--backend", "numpy")
    img = cio.read_image(out)
    assert img.mode == "RGBA"
    visible = img.data[3] > 0
    assert np.all(img.data[1][visible] < LEVEL)  # no green bled into visible pixels


def test_several_inputs_go_to_a_folder(tmp_path):
    a, b = sample(tmp_path), sample(tmp_path, "camera.png")
    np.save(tmp_path / "k.npy", BOX3.astype(np.float32))
    res = run("apply", a, b, "--weights", tmp_path / "k.npy", "-o", tmp_path / "out",
              "--format", "jpg", "--backend", "numpy")  # fmt: skip
    outs = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in outs] == ["astronaut.jpg", "camera.jpg"]
    assert sorted(res.stdout.split()) == [str(p) for p in outs]


def test_timings_json_and_quiet(tmp_path):
    src = sample(tmp_path)
    np.save(tmp_path / "k.npy", BOX3.astype(np.float32))
    res = run("apply", src, "--weights", tmp_path / "k.npy", "-o", tmp_path / "o.png", "-q",
              "--timings", tmp_path / "t.json", "--backend", "numpy")  # fmt: skip
    assert res.stderr == "" and res.stdout == ""
    t = json.loads((tmp_path / "t.json").read_text())
    for stage in ("read", "upload", "build", "compute", "download", "write", "total"):
        assert stage in t["timings_s"]
    assert t["backend"] == "numpy" and t["done"] == 1
    assert t["megapixels"] == pytest.approx(40 * 32 / 1e6)
    assert t["megapixels_per_s"] > 0


def test_timing_summary_on_stderr(tmp_path):
    src = sample(tmp_path)
    np.save(tmp_path / "k.npy", BOX3.astype(np.float32))
    res = run("apply", src, "--weights", tmp_path / "k.npy", "-o", tmp_path / "o.png",
              "--backend", "numpy")  # fmt: skip
    for word in ("read", "compute", "write", "total", "megapixels/s", "GFLOP/s", "numpy"):
        assert word in res.stderr
    assert res.stdout.strip() == str(tmp_path / "o.png")


def test_output_equal_to_input_needs_overwrite(tmp_path):
    src = sample(tmp_path)
    before = src.read_bytes()
    np.save(tmp_path / "k.npy", BOX3.astype(np.float32))
    res = run("apply", src, "--weights", tmp_path / "k.npy", "-o", src, "--backend", "numpy",
              ok=False)  # fmt: skip
    assert res.exit_code == 1
    one_error_line(res, str(src), "--overwrite")
    assert src.read_bytes() == before
    run("apply", src, "--weights", tmp_path / "k.npy", "-o", src, "--overwrite",
        "--backend", "numpy")  # fmt: skip
    assert src.read_bytes() != before


# ---------------------------------------------------------------------------- presets
def _preset_names() -> list[str]:
    data = json.loads(run("presets", "list", "--json").stdout)
    return [p["name"] for p in data]


def test_presets_list_table_and_json():
    names = _preset_names()
    assert len(names) >= 30
    for expected in ("gaussian", "sobel", "laplacian", "unsharp", "motion-blur", "box"):
        assert expected in names
    table = run("presets", "list").stdout
    for name in names:
        assert name in table


def test_every_preset_applies_to_a_real_image(tmp_path):
    from convcli.presets import get_preset

    src = sample(tmp_path, size=(24, 20))
    for name in _preset_names():
        out = tmp_path / f"{name}.png"
        run("apply", src, "--preset", name, "-o", out, "--backend", "numpy", "-q")
        k = np.asarray(get_preset(name).kernel, np.float64)
        assert_image(out, reference(src, k))


def test_show_of_a_preset_without_description_has_no_dangling_colon(tmp_path):
    f = tmp_path / "plain.toml"
    f.write_text("kernel = [[1, 2, 1]]\n")
    assert run("presets", "show", str(f)).stdout.splitlines()[0] == "plain (3x1)"


def test_preset_parameters_and_show(tmp_path):
    from convcli.presets import get_preset

    res = run("presets", "show", "gaussian:sigma=2")
    k = np.asarray(get_preset("gaussian:sigma=2").kernel)
    assert "separable: yes" in res.stdout
    assert re.search(r"sum: 1\b", res.stdout)
    assert len([ln for ln in res.stdout.splitlines() if ln.startswith("  ")]) == k.shape[0]
    shown = json.loads(run("presets", "show", "gaussian:sigma=2", "--json").stdout)
    np.testing.assert_allclose(shown["kernel"], k)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".json", ".txt"])
def test_export_then_weights_equals_preset(tmp_path, suffix):
    src = sample(tmp_path, size=(24, 20))
    weights = tmp_path / f"w{suffix}"
    run("presets", "export", "motion-blur:length=5,angle=30", "-o", weights)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    run("apply", src, "--preset", "motion-blur:length=5,angle=30", "-o", a, "--backend",
        "numpy")  # fmt: skip
    run("apply", src, "--weights", weights, "-o", b, "--backend", "numpy")
    assert np.array_equal(cio.read_image(a).data, cio.read_image(b).data)


@pytest.mark.parametrize("as_json", [False, True])
@pytest.mark.parametrize("spec", ["unity:scale=1e39", "sharpen:amount=1e38", "USER"])
def test_show_refuses_what_apply_refuses(tmp_path, monkeypatch, spec, as_json):
    # show printed 1e+39 (exit 0) for a kernel that apply then refused
    if spec == "USER":  # a user preset file whose values float32 cannot hold
        (tmp_path / "huge.toml").write_text('name = "huge"\nkernel = [[1, 5e38, 1]]\n')
        monkeypatch.setenv("CONVCLI_PRESET_PATH", str(tmp_path))
        spec = "huge"
    src = sample(tmp_path)
    applied = run("apply", src, "--preset", spec, "-o", tmp_path / "a.png", ok=False)
    shown = run("presets", "show", spec, *(["--json"] if as_json else []), ok=False)
    assert applied.exit_code == shown.exit_code == 1 and shown.stdout == ""
    line = one_error_line(shown, f"preset {spec!r}", "finite float32")
    assert line == one_error_line(applied)
    # the largest kernel that fits is shown and applied alike
    ok = "unity:scale=3e38"
    assert "3e+38" in run("presets", "show", ok).stdout
    run("apply", src, "--preset", ok, "-o", tmp_path / "b.png", "--backend", "numpy")


@pytest.mark.parametrize("suffix", [".npy", ".json", ".txt"])
def test_export_refuses_what_apply_refuses(tmp_path, suffix):
    # unity:scale=1e39 is inf in float32: export wrote JSON 'Infinity' (or an inf .npy)
    # with NumPy's raw "overflow encountered in cast" warning, and exit 0
    out = tmp_path / f"u{suffix}"
    res = run("presets", "export", "unity:scale=1e39", "-o", out, ok=False)
    assert res.exit_code == 1 and not out.exists() and res.stdout == ""
    one_error_line(res, "unity:scale=1e39", "finite float32")
    res = run("apply", sample(tmp_path), "--preset", "unity:scale=1e39", "-o", tmp_path / "a.png",
              ok=False)  # fmt: skip
    one_error_line(res, "finite float32")
    run("presets", "export", "unity:scale=3e38", "-o", out)  # the largest that fits
    assert float(np.ravel(cio.load_weights(out)[0])[0]) == np.float32(3e38)


@pytest.mark.parametrize(
    "args",
    [
        ["apply", "{src}", "--preset", "box", "-o", ""],  # wrote ./NAME.png
        ["apply", "", "--preset", "box", "-o", "{tmp}/o.png"],
        ["batch", "", "{tmp}/o", "--preset", "box"],  # filtered every image in '.'
        ["batch", "{tmp}/in", "", "--preset", "box"],
        ["apply", "{src}", "--weights", "", "-o", "{tmp}/o.png"],
        ["apply", "{src}", "--preset", "box", "-o", "{tmp}/o.png", "--timings", ""],
        ["batch", "{tmp}/in", "{tmp}/o", "--preset", "box", "--report", ""],
        ["presets", "export", "box", "-o", ""],
        ["bench", "--json", ""],
    ],
)
def test_an_empty_path_is_a_usage_error(tmp_path, monkeypatch, args):
    # Path("") is ".": an empty argument meant the current folder
    (tmp_path / "in").mkdir()
    src = sample(tmp_path / "in")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    res = run(*[a.format(src=src, tmp=tmp_path) for a in args], ok=False)
    assert res.exit_code == 2
    one_error_line(res, "an empty path")
    assert list(cwd.iterdir()) == [] and not (tmp_path / "o").exists()


def test_inline_kernel_and_normalize(tmp_path):
    src = sample(tmp_path, "camera.png")
    out = tmp_path / "out.png"
    run("apply", src, "--kernel", "1,2,1;2,4,2;1,2,1", "--normalize-kernel", "-o", out,
        "--backend", "numpy")  # fmt: skip
    assert_image(out, reference(src, BINOMIAL))


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("case", "needle", "code"),
    [
        ("missing", "missing.png", 1),
        ("not-an-image", "notes.png", 1),
        ("empty", "empty.png", 1),
        ("bad-kernel", "1,2;3", 1),
        ("unknown-preset", "no-such-preset", 1),
        ("same-with-stride", "same", 1),
        ("two-kernels", "--preset", 2),
        ("no-kernel", "--weights", 2),
        ("bad-stride", "stride", 2),
        ("nan-weights", "nan.npy", 1),
        ("bad-max-memory", "max-memory", 2),
    ],
)
def test_bad_input_one_line_no_output(tmp_path, case, needle, code):
    src = sample(tmp_path)
    (tmp_path / "notes.png").write_text("just some text, not a PNG\n")
    (tmp_path / "empty.png").write_bytes(b"")
    np.save(tmp_path / "nan.npy", np.array([[1, np.nan], [0, 1]], np.float32))
    out = tmp_path / "out.png"
    args = {
        "missing": [tmp_path / "missing.png", "--preset", "box"],
        "not-an-image": [tmp_path / "notes.png", "--kernel", "1"],
        "empty": [tmp_path / "empty.png", "--kernel", "1"],
        "bad-kernel": [src, "--kernel", "1,2;3"],
        "unknown-preset": [src, "--preset", "no-such-preset"],
        "same-with-stride": [src, "--kernel", "1,1;1,1", "--padding", "same", "--stride", "2"],
        "two-kernels": [src, "--preset", "box", "--kernel", "1"],
        "no-kernel": [src],
        "bad-stride": [src, "--kernel", "1", "--stride", "two"],
        "nan-weights": [src, "--weights", tmp_path / "nan.npy"],
        "bad-max-memory": [src, "--kernel", "1", "--max-memory", "lots"],
    }[case]
    res = run("apply", *args, "-o", out, "--backend", "numpy", ok=False)
    assert res.exit_code == code, res.output
    one_error_line(res, needle)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_unknown_option_is_a_usage_error():
    res = run("apply", "x.png", "--no-such-option", ok=False)
    assert res.exit_code == 2
    one_error_line(res, "--no-such-option")


# ---------------------------------------------------------------------------- devices, bench
def test_devices_lists_or_says_none():
    res = run("devices")
    data = json.loads(run("devices", "--json").stdout)
    if data:
        assert sum(d["default"] for d in data) == 1
        for d in data:
            assert d["name"] in res.stdout or d["name"][:20] in res.stdout
    else:
        assert "NumPy" in res.stderr


@pytest.mark.parametrize("env", [{"CONVCLI_DEVICE": "9:9"}, {"PYOPENCL_CTX": "7"}])
def test_devices_says_why_none_is_marked(monkeypatch, env):
    # a device setting that names no device: auto uses NumPy, and the table marked
    # nothing without a word (as if auto's pick were not shown)
    data = json.loads(run("devices", "--json").stdout)
    if not data:
        pytest.skip("no OpenCL device")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for args in (["devices"], ["devices", "--json"]):
        res = run(*args)
        assert res.exit_code == 0
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, lines
        assert lines[0].startswith("convcli: notice: no OpenCL")
        assert repr(next(iter(env.values())))[1:-1] in lines[0]
        assert lines[0].endswith("; --backend auto uses NumPy")
    assert not any(d["default"] for d in json.loads(res.stdout))
    monkeypatch.delenv(next(iter(env)))
    assert run("devices").stderr.strip() == ""


def test_bench_renders_rows(monkeypatch, tmp_path):
    cbench = pytest.importorskip("convcli.bench")

    row_type = cbench.BenchRow
    rows = [
        row_type(workload="W1", description="RGB 2048^2 dw 3x3", system="convcli-opencl",
                 mode="end-to-end", median_ms=12.5, min_ms=12.0, gflops=6.0, ratio=1.1,
                 max_rel_err=1e-7, ok=True, note=""),
        row_type(workload="W1", description="RGB 2048^2 dw 3x3", system="opencv",
                 mode="end-to-end", median_ms=13.7, min_ms=13.0, gflops=5.5, ratio=None,
                 max_rel_err=2e-7, ok=True, note="filter2D"),
    ]  # fmt: skip
    seen = {}

    def fake_run_suite(**kwargs):
        seen.update(kwargs)
        return rows

    monkeypatch.setattr(cbench, "run_suite", fake_run_suite)
    res = run("bench", "--suite", "standard", "--compare", "opencv", "--repeat", "2",
              "--json", tmp_path / "b.json", "--csv", tmp_path / "b.csv")  # fmt: skip
    assert seen["suite"] == "standard" and seen["repeat"] == 2
    assert tuple(seen["compare"]) == ("opencv",)
    assert "convcli-opencl" in res.stdout and "12.50" in res.stdout and "1.10" in res.stdout
    # the targets table: OpenCL W1 against OpenCV, 13.7 / 12.5 = 1.10 >= 1.0
    targets = res.stdout[res.stdout.index("issue 5 targets") :]
    assert "opencv" in targets and "1.10" in targets and "yes" in targets
    assert json.loads((tmp_path / "b.json").read_text())
    assert "W1" in (tmp_path / "b.csv").read_text()
    # the quick suite's sizes have no targets: no targets table
    quick = run("bench", "--suite", "quick", "--compare", "opencv", "--repeat", "1")
    assert "convcli-opencl" in quick.stdout and "issue 5 targets" not in quick.stdout


# ---------------------------------------------------------------------------- docs, script
def _commands_and_options():
    import click

    found = []

    def walk(cmd: click.Command, path: list[str]):
        found.append((" ".join(path), None))
        for param in cmd.params:
            if isinstance(param, click.Option):
                found.append((" ".join(path), max(param.opts, key=len)))
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])

    walk(cli, ["convcli"])
    return found


def test_readme_documents_every_command_and_option():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = []
    for command, option in _commands_and_options():
        if option is None:
            if command not in readme:
                missing.append(command)
        elif option not in ("--help",) and not re.search(re.escape(option) + r"\b", readme):
            missing.append(f"{command} {option}")
    assert not missing, f"README.md does not mention: {missing}"


def test_installed_console_script(tmp_path):
    exe = shutil.which("convcli")
    if exe is None:
        pytest.skip("convcli is not installed on PATH")
    out = tmp_path / "camera_blur.png"
    proc = subprocess.run(
        [exe, "apply", str(SAMPLES / "camera.png"), "--preset", "gaussian:sigma=1.5", "-o",
         str(out), "--backend", "numpy", "-q"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    from convcli.presets import get_preset

    k = np.asarray(get_preset("gaussian:sigma=1.5").kernel)
    assert_image(out, reference(SAMPLES / "camera.png", k))
    ver = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert ver.stdout.strip() == f"convcli {__version__}"


def test_readme_presets_table_matches_list_presets():
    import importlib.util

    spec = importlib.util.spec_from_file_location("mri", ROOT / "tools" / "make_readme_images.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert tool.readme_with_table(text) == text, "run tools/make_readme_images.py"
    for stem, *_ in tool.PICTURES:
        assert (ROOT / "docs" / "images" / f"astronaut_{stem}.jpg").is_file()


@pytest.mark.parametrize(
    ("preset", "bits"), [("gaussian:sigma=2", 16), ("sharpen", 8), ("motion-blur:length=7", 8)]
)
def test_default_backend_matches_reference(tmp_path, preset, bits):
    """The path a new user takes: --backend auto (OpenCL where a device works)."""
    from convcli.presets import get_preset

    src = sample(tmp_path, "coffee.png", size=(64, 48), bits=bits)
    out = tmp_path / "out.png"
    run("apply", src, "--preset", preset, "-o", out, "-q")
    k = np.asarray(get_preset(preset).kernel, np.float64)
    tol = LEVEL if bits == 8 else 2 / 65535 + 1e-5
    assert assert_image(out, reference(src, k), tol=tol).bit_depth == bits


def test_bare_group_prints_help():
    for args in ((), ("presets",)):
        res = run(*args)
        assert res.stdout.startswith("Usage:") and "Commands:" in res.stdout


# ---------------------------------------------------------------------------- option parsers
@given(st.integers(1, 10**6), st.sampled_from(["", "K", "M", "G", "k", "MB", "MiB", "GB"]))
def test_parse_bytes_units(n, unit):
    import click

    from convcli.cli import parse_bytes

    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[unit[:1].upper()]
    assert parse_bytes(f"{n}{unit}") == n * scale
    with pytest.raises(click.BadParameter):
        parse_bytes(f"{n}{unit}x")


@given(st.text(max_size=12))
@example("1E100")  # float32 overflow in --bias (was a RuntimeWarning)
@example("9" * 400)  # int(inf) in --max-memory / --max-pixels (was OverflowError)
def test_option_parsers_never_crash(text):
    """Any text either parses or raises click's BadParameter (a usage error, exit 2)."""
    import click

    from convcli.cli import parse_bytes, parse_count, parse_floats, parse_pair

    for parse in (parse_bytes, parse_count, parse_floats, parse_pair):
        with contextlib.suppress(click.BadParameter):
            parse(text)


@given(st.integers(0, 99), st.integers(0, 99))
def test_parse_pair_values(a, b):
    from convcli.cli import parse_pair

    assert parse_pair(str(a)) == a
    assert parse_pair(f"{a}, {b}") == (a, b)
    assert parse_pair(" Same ", words=("same", "valid")) == "same"


@pytest.mark.parametrize(("alpha", "mode"), [("keep", "RGBA"), ("drop", "RGB"), ("filter", "RGBA")])
def test_alpha_modes(tmp_path, alpha, mode):
    rng = np.random.default_rng(5)
    data = rng.random((4, 12, 10)).astype(np.float32)
    src = tmp_path / "rgba.png"
    cio.write_image(src, data)
    np.save(tmp_path / "k.npy", BOX3.astype(np.float32))
    out = tmp_path / "out.png"
    run("apply", src, "--weights", tmp_path / "k.npy", "-o", out, "--alpha", alpha,
        "--backend", "numpy")  # fmt: skip
    img = cio.read_image(out)
    assert img.mode == mode
    x = cio.read_image(src).data.astype(np.float64)
    c = 4 if alpha == "filter" else 3
    w = np.broadcast_to(BOX3, (c, 1, 3, 3))
    ref = np.clip(naive_conv2d(x[None, :c], w, None, (1, 1), (1, 1, 1, 1), (1, 1), c,
                               "replicate")[0].real, 0, 1)  # fmt: skip
    if alpha == "keep":
        ref = np.concatenate([ref, x[3:]])
    assert float(np.max(np.abs(img.data - ref))) <= LEVEL


def test_read_notes_show_as_warnings_even_with_quiet(tmp_path, monkeypatch):
    src = sample(tmp_path)
    real_open = stream.open_source

    def open_with_note(path, **kw):
        source = real_open(path, **kw)
        if source is not None:  # None: a file decoded whole, opened after its pricing
            source.info.notes.append("interlaced 16-bit colour PNG:\n read with 8-bit precision")
        return source

    monkeypatch.setattr(stream, "open_source", open_with_note)
    out = tmp_path / "out.png"
    res = run("apply", src, "--preset", "box", "-o", out, "-q", "--backend", "numpy")
    assert res.stdout == ""  # -q: no output path
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines == [
        f"convcli: warning: {src}: interlaced 16-bit colour PNG: read with 8-bit precision"
    ]
    assert_image(out, reference(src, np.full((3, 3), 1 / 9)))


def test_broken_user_preset_files_are_reported(tmp_path, monkeypatch):
    folder = tmp_path / "presets"
    folder.mkdir()
    (folder / "broken.toml").write_text("this = = not toml\n")
    monkeypatch.setenv("CONVCLI_PRESET_PATH", str(folder))
    res = run("presets", "list", "--json")
    names = [p["name"] for p in json.loads(res.stdout)]
    assert "broken" not in names and "gaussian" in names
    (line,) = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert line.startswith("convcli: warning: ") and "broken.toml" in line
    src = sample(tmp_path)
    res = run("apply", src, "--preset", "box", "-o", tmp_path / "o.png", "--backend", "numpy")
    assert "convcli: notice: " in res.stderr and "broken.toml" in res.stderr
    res = run("apply", src, "--preset", "box", "-o", tmp_path / "o.png", "-q")
    assert res.stdout == "" and "broken.toml" in res.stderr  # -q keeps notices
    res = run("apply", src, "--preset", "broken", "-o", tmp_path / "b.png", ok=False)
    assert res.exit_code == 1 and "broken.toml" in one_error_line(res)
    assert not (tmp_path / "b.png").exists()


@pytest.mark.parametrize("step", ["build", "alloc", "run"])
def test_opencl_fault_falls_back_under_auto_and_fails_under_opencl(tmp_path, monkeypatch, step):
    pytest.importorskip("pyopencl")
    from convcli.backends.opencl.device import list_devices

    if not list_devices():
        pytest.skip("no OpenCL device")
    monkeypatch.setenv("CONVCLI_FAULT", step)
    src = sample(tmp_path, "camera.png", mode="L")
    out = tmp_path / "auto.png"
    res = run("apply", src, "--preset", "sharpen", "-o", out, "--backend", "auto", "-q")
    assert res.stdout == ""
    # auto may run NumPy from the start (a small image: no OpenCL opened, nothing to
    # say); where it tried OpenCL, it says it fell back
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) <= 1
    for line in lines:
        assert line.startswith("convcli: notice: OpenCL failed") and "using NumPy" in line
    from convcli.presets import get_preset

    k = np.asarray(get_preset("sharpen").kernel)
    assert_image(out, reference(src, k))
    bad = tmp_path / "opencl.png"
    res = run("apply", src, "--preset", "sharpen", "-o", bad, "--backend", "opencl", ok=False)
    assert res.exit_code == 1 and res.stdout == ""
    one_error_line(res, "OpenCL")
    assert not bad.exists() and not list(tmp_path.glob(".*.tmp"))


def test_progress_bars_have_an_eta_for_one_image_and_for_many(monkeypatch):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # what a terminal gets (rich's switch)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TaskProgressColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from convcli.cli.run import _progress

    one = {type(c) for c in _progress(1, quiet=False).columns}
    many = {type(c) for c in _progress(5, quiet=False).columns}
    # one image: a percentage of its rows (conv2d reports tiles of a large image)
    assert {BarColumn, TaskProgressColumn, TimeElapsedColumn, TimeRemainingColumn} <= one
    assert {BarColumn, MofNCompleteColumn, TimeElapsedColumn, TimeRemainingColumn} <= many


@pytest.mark.parametrize(("option", "value"), [("--scale", "1e39"), ("--offset", "nan"),
                                               ("--scale", "-inf")])  # fmt: skip
def test_scale_and_offset_must_be_finite_float32(tmp_path, option, value):
    out = tmp_path / "o.png"
    res = run("apply", sample(tmp_path), "--preset", "box", option, value, "-o", out, ok=False)
    assert res.exit_code == 2
    one_error_line(res, option, "finite float32")
    assert not out.exists()


def test_kernel_beyond_float32_is_one_error_line(tmp_path):
    out = tmp_path / "o.png"
    res = run("apply", sample(tmp_path), "--kernel", "1,1e39,1", "-o", out, ok=False)
    assert res.exit_code == 1
    # the library's words, as kernel text's other mistakes: the value names the source
    one_error_line(res, "kernel '1,1e39,1': kernel values must be finite float32")
    assert not out.exists()


def test_several_inputs_with_an_image_file_name_is_a_usage_error(tmp_path):
    a, b = sample(tmp_path), sample(tmp_path, "camera.png")
    res = run("apply", a, b, "--preset", "box", "-o", tmp_path / "out.png", ok=False)
    assert res.exit_code == 2
    one_error_line(res, "several inputs need an output folder")
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize(
    ("library", "shown"),
    [
        ("output is the input file; pass overwrite=True to replace it",
         "output is the input file; pass --overwrite to replace it"),
        ("exists (pass existing='replace' to replace it, existing='skip' to keep it)",
         "exists (pass --overwrite to replace it, --skip-existing to keep it)"),
        ("(alpha='keep' sets alpha aside; alpha='filter' passes it to the weight)",
         "(--alpha keep sets alpha aside; --alpha filter passes it to the weight)"),
        ("exceeds the limit of 1000 (raise max_pixels)",
         "exceeds the limit of 1000 (raise --max-pixels)"),
        ("pick one with key=NAME; found: a, b", "pick one with --key NAME; found: a, b"),
        ("(recursive=True mirrors the sub-folders)", "(--recursive mirrors the sub-folders)"),
        ("the alpha key and the keys stay words", "the alpha key and the keys stay words"),
    ],
)  # fmt: skip
def test_library_words_become_flags_on_the_command_line(library, shown):
    """The library names arguments in API words; the CLI shows its flags (one place)."""
    from convcli.cli import cli_words

    assert cli_words(library) == shown


def test_a_library_hint_reaches_the_user_as_a_flag(tmp_path):
    src, weights = tmp_path / "a.png", tmp_path / "two.npz"
    cio.write_image(src, np.full((1, 8, 8), 0.5, np.float32))
    np.savez(weights, a=np.ones((3, 3)), b=np.ones((3, 3)))
    res = CliRunner().invoke(
        cli, ["apply", str(src), "--weights", str(weights), "-o", str(tmp_path / "o.png")]
    )
    assert res.exit_code == 1
    assert res.output == (
        f"convcli: error: {weights}: holds several tensors, pick one with --key NAME; found: a, b\n"
    )


@pytest.mark.parametrize(
    ("args", "weight", "line"),
    [
        (["--groups", "3"], (4, 2, 3, 3),
         "Given groups=3, expected weight to be divisible by 3 at dimension 0, but got weight "
         "of size [4, 2, 3, 3] instead (--groups 3)"),
        ([], (4, 2, 3, 3),
         "{src}: the weight takes groups x 2 input channels (shape (4, 2, 3, 3)), but the "
         "image has 3 channels (see --groups)"),
        (["--preset", "box", "--stride", "2", "--padding", "same"], None,
         "padding='same' is not supported for strided convolutions (--padding same, --stride 2)"),
        (["--preset", "box", "--stride", "0"], None,
         "non-positive stride is not supported (--stride 0)"),
        (["--preset", "box", "--dilation", "0,1"], None,
         "dilation should be greater than zero (--dilation 0,1)"),
        (["--preset", "box", "--padding-mode", "reflect", "--padding", "40"], None,
         "{src}: Padding size should be less than the corresponding input dimension, but got: "
         "padding (40, 40) at dimension 2 of input [1, 3, 32, 40] "
         "(--padding 40, --padding-mode reflect)"),
        (["--preset", "box", "--padding", "valid", "--dilation", "20"], None,
         "{src}: Calculated padded input size per channel: (32 x 40). Kernel size: (41 x 41). "
         "Kernel size can't be greater than actual input size (--padding valid, --dilation 20)"),
        (["--preset", "box", "--groups", "2"], None,
         "{src}: groups=2 does not divide the image's 3 channels (--groups 2)"),
        (["--preset", "box", "--bias", "0.5,1.5"], None,
         "{src}: bias has 2 values but the convolution has 3 output channels (--bias 0.5,1.5)"),
    ],
)  # fmt: skip
def test_a_convolution_refusal_names_the_options_it_is_about(tmp_path, args, weight, line):
    # torch's wording (and the channel checks') named no option: exit 1 and no hint
    src, out = sample(tmp_path), tmp_path / "o.png"
    if weight is not None:
        np.save(tmp_path / "w.npy", np.ones(weight, np.float32))
        args = ["--weights", tmp_path / "w.npy", *args]
    res = run("apply", src, *args, "-o", out, "--backend", "numpy", ok=False)
    assert res.exit_code == 1 and not out.exists()
    assert one_error_line(res) == "convcli: error: " + line.format(src=src)


def test_a_bias_from_the_weight_file_is_not_blamed_on_bias(tmp_path):
    """A .npz's own bias of the wrong size said "(see --bias)", an option not given."""
    src, out, w = sample(tmp_path), tmp_path / "o.png", tmp_path / "w.npz"
    np.savez(w, weight=np.ones((3, 3), np.float32) / 9, bias=np.zeros(5, np.float32))
    res = run("apply", src, "--weights", w, "-o", out, "--backend", "numpy", ok=False)
    assert res.exit_code == 1 and not out.exists()
    assert one_error_line(res) == (
        f"convcli: error: {src}: bias has 5 values but the convolution has 3 output channels "
        f"(the bias in --weights {w})"
    )


def test_flags_are_the_library_words_with_dashes():
    from convcli.cli import flag_for

    assert flag_for("padding_mode") == "--padding-mode"
    assert flag_for("padding_mode", "reflect") == "--padding-mode reflect"
    assert flag_for("dilation", (2, 1)) == "--dilation 2,1"
    assert flag_for("bias", np.array([0.5, 2], np.float32)) == "--bias 0.5,2"
    assert flag_for("fmt", "png") == "--format png"
    assert flag_for("overwrite", True) == "--overwrite"


def test_library_messages_name_no_command_line_flag():
    """Messages raised or warned by the library use API words; only the CLI modules
    (and the bench that runs the CLI as a peer) spell flags."""
    import ast

    flag_like = re.compile(r"(?<![\w-])--[a-z]")
    cli_package = ROOT / "convcli" / "cli"
    skip = {"bench_files.py"}
    found = []
    for path in sorted((ROOT / "convcli").rglob("*.py")):
        if path.name in skip or path.is_relative_to(cli_package):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) or (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("warn", "append", "notice")
            ):
                found += [
                    f"{path.name}:{sub.lineno}: {sub.value!r}"
                    for sub in ast.walk(node)
                    if isinstance(sub, ast.Constant)
                    and isinstance(sub.value, str)
                    and flag_like.search(sub.value)
                ]
    assert found == []


@pytest.mark.parametrize(("suffix", "kind", "deepest"), [(".png", "PNG", 16), (".jpg", "JPEG", 8)])
def test_bit_depth_32_into_an_integer_format_is_refused(tmp_path, suffix, kind, deepest):
    # PNG was written at 16 bits without a word, though 32 asks for float samples
    src, out = sample(tmp_path), tmp_path / f"o{suffix}"
    res = run("apply", src, "--preset", "box", "--bit-depth", "32", "-o", out, ok=False)
    assert res.exit_code == 2 and not out.exists() and res.stdout == ""
    one_error_line(res, f"--bit-depth 32 writes float32 samples, which {kind} cannot hold",
                   f"pass --bit-depth {deepest}")  # fmt: skip
    folder = tmp_path / "outs"
    res = run("batch", tmp_path, folder, "--glob", "*.png", "--format", suffix[1:],
              "--preset", "box", "--bit-depth", "32", ok=False)  # fmt: skip
    assert res.exit_code == 2 and not folder.exists()
    one_error_line(res, f"which {kind} cannot hold")


def test_bit_depth_32_writes_float32_where_the_format_holds_it(tmp_path):
    src, out = sample(tmp_path), tmp_path / "o.tif"
    run("apply", src, "--kernel", "0,1,0", "--bit-depth", "32", "-o", out, "--backend", "numpy")
    got = cio.read_image(out)
    assert got.bit_depth == 32
    # the identity kernel: the input's 8-bit levels, unrounded floats
    np.testing.assert_array_equal(got.data, cio.read_image(src).data)


def test_a_flattening_glob_never_lets_two_files_write_one_output(tmp_path):
    # '**/*.png' without -r puts every sub-folder's files in OUT_DIR: same names collide
    src = tmp_path / "in"
    for i, rel in enumerate(["a/x.png", "b/x.png", "x.png", "b/y.png"]):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        cio.write_image(src / rel, np.full((1, 6, 5), (i + 1) * 40 / 255, np.float32))
    out, report = tmp_path / "out", tmp_path / "r.json"
    res = run("batch", src, out, "--glob", "**/*.png", "--kernel", "1", "--report", report,
              "--backend", "numpy", "-q", ok=False)  # fmt: skip
    assert res.exit_code == 1
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["x.png", "y.png"]
    # the first in sorted order wrote x.png; its value, not another file's
    assert np.all(cio.read_image(out / "x.png").data == np.float32(40 / 255))
    assert np.all(cio.read_image(out / "y.png").data == np.float32(160 / 255))
    refused = {f["file"]: f["reason"] for f in json.loads(report.read_text())["failures"]}
    hint = "(--recursive mirrors the sub-folders)"
    for other in ("b/x.png", "x.png"):
        assert f"already written from {src / 'a/x.png'}" in refused[str(src / other)]
        assert f"{src / other}: output {out / 'x.png'} is already written" in res.stderr
    assert res.stderr.count(hint) == 2
    # with -r each keeps its folder: nothing refused
    run("batch", src, tmp_path / "mirrored", "--glob", "**/*.png", "-r", "--kernel", "1",
        "--backend", "numpy", "-q")  # fmt: skip
    assert len(list((tmp_path / "mirrored").rglob("*.png"))) == 4


def test_options_that_would_be_ignored_are_refused(tmp_path):
    """`--key` on a .npy or text kernel and `--device` with `--backend numpy` were
    dropped without a word: a key meant for a .pt file, a device that never ran."""
    src, out = sample(tmp_path), tmp_path / "o.png"
    np.save(tmp_path / "k.npy", np.ones((3, 3), np.float32) / 9)
    (tmp_path / "k.txt").write_text("1 1\n1 1\n")
    for name in ("k.npy", "k.txt"):
        res = run("apply", src, "-o", out, "--weights", tmp_path / name, "--key", "conv1",
                  "--backend", "numpy", ok=False)  # fmt: skip
        assert res.exit_code == 1
        suffix = name[1:]
        assert one_error_line(res) == (
            f"convcli: error: {tmp_path / name}: a {suffix} file holds one unnamed kernel; "
            "--key conv1 picks a tensor in .npz, .safetensors, .pt or .json files"
        )
    for command in (["apply", src, "-o", out], ["batch", tmp_path, tmp_path / "out"]):
        res = run(*command, "--preset", "box", "--backend", "numpy", "--device", "0", ok=False)
        assert res.exit_code == 2
        assert "--device picks an OpenCL device; --backend numpy uses none" in res.stderr
    assert not out.exists() and not (tmp_path / "out").exists()


def test_format_and_suffix_spellings_of_one_format_agree(tmp_path):
    """`--format jpeg -o x.jpg` and `--format tif -o x.tiff` were refused as
    disagreeing; a real disagreement still is."""
    src = sample(tmp_path)
    jpeg, tiff = b"\xff\xd8", b"II*\x00"
    cases = (("jpeg", "x.jpg", jpeg), ("jpg", "y.jpeg", jpeg), ("tif", "z.tiff", tiff),
             ("TIFF", "w.tif", tiff))  # fmt: skip
    for fmt, name, magic in cases:
        run("apply", src, "-o", tmp_path / name, "--format", fmt, "--preset", "box",
            "--backend", "numpy", "-q")  # fmt: skip
        assert (tmp_path / name).read_bytes()[:4].startswith(magic)
    res = run("apply", src, "-o", tmp_path / "v.jpg", "--format", "png", "--preset", "box",
              ok=False)  # fmt: skip
    assert res.exit_code == 2 and "--format png disagrees with the output suffix" in res.stderr
    assert not (tmp_path / "v.jpg").exists()
