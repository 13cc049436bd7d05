"""``convcli batch`` on hostile inputs: forged image files fail one by one, named, and
the run goes on; file names that are not UTF-8 are read, written and reported."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_hostile_io import HAVE_VIPS, _jpeg, png

from convcli import io as cio
from convcli.cli import cli


def run(*args: object):
    return CliRunner().invoke(cli, [os.fspath(a) for a in args], catch_exceptions=False)


def errors_of(res) -> list[str]:
    return [ln for ln in res.stderr.splitlines() if ln.startswith("convcli: error:")]


def forged_tree(root: Path) -> tuple[list[str], list[str]]:
    """Good files and forged ones (valid headers, data that ends early)."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(2)
    cio.write_image(root / "good.png", rng.random((3, 20, 24)))
    cio.write_image(root / "good.jpg", rng.random((3, 20, 24)))
    rows = rng.integers(0, 256, (20, 24 * 3))
    (root / "forged.png").write_bytes(png(rows, 24, 8, 2, keep=0.5))
    forged = ["forged.png"]
    if HAVE_VIPS:
        blob = _jpeg(False)
        sos = blob.index(b"\xff\xda")
        (root / "forged.jpg").write_bytes(blob[: sos + (len(blob) - sos) // 2] + b"\xff\xd9")
        forged.append("forged.jpg")
    return ["good.jpg", "good.png"], sorted(forged)


def test_batch_reports_forged_files_and_goes_on(tmp_path):
    good, forged = forged_tree(tmp_path / "in")
    out, report = tmp_path / "out", tmp_path / "report.json"
    res = run("batch", tmp_path / "in", out, "--preset", "box", "--backend", "numpy",
              "--report", report)  # fmt: skip
    assert res.exit_code == 1
    assert "Traceback" not in res.output
    assert sorted(errors_of(res)) == [
        f"convcli: error: {tmp_path / 'in' / name}: truncated image data" for name in forged
    ]
    # the good files are written, nothing of the forged ones (no partial or temp file)
    assert sorted(p.name for p in out.iterdir()) == good
    data = json.loads(report.read_text())
    assert data["done"] == len(good) and data["failed"] == len(forged)
    assert sorted(Path(f["file"]).name for f in data["failures"]) == forged


@pytest.mark.skipif(sys.platform != "linux", reason="names that are not UTF-8: Linux")
def test_batch_with_names_that_are_not_utf8(tmp_path):
    """b'\\xff.png' decodes to a lone surrogate in Python. libvips takes names as UTF-8,
    so such a file failed with "'utf-8' codec can't encode character '\\udcff'"; it is
    read, written under the same bytes, and the report keeps the exact name."""
    src, out, report = tmp_path / "in", tmp_path / "out", tmp_path / "report.json"
    src.mkdir()
    x = np.random.default_rng(4).random((3, 12, 16))
    raw = [b"\xff.png", b"caf\xe9.jpg", b"ok.png"]
    names = [os.fsdecode(n) for n in raw]
    for name in names:
        cio.write_image(src / name, x)
    (src / os.fsdecode(b"bad\xfe.png")).write_bytes(b"not a png")
    res = run("batch", src, out, "--preset", "box", "--backend", "numpy", "--report", report)
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    # stderr: one line, the undecodable byte escaped
    assert errors_of(res) == [
        f"convcli: error: {tmp_path}/in/bad\\xfe.png: not an image file (or a format "
        "Pillow cannot read)"
    ]
    assert sorted(os.listdir(os.fsencode(out))) == sorted(raw)
    for name in names:
        expect = cio.read_image(src / name).data.shape
        assert cio.read_image(out / name).data.shape == expect
    # the report: ASCII JSON, the names as Python's surrogateescape spells them, so
    # that os.fsencode gives the exact bytes back
    text = report.read_bytes()
    assert text.isascii()
    data = json.loads(text)
    assert data["done"] == len(raw) and data["failed"] == 1
    assert sorted(os.fsencode(Path(p).name) for p in data["outputs"]) == sorted(raw)
    assert os.fsencode(data["failures"][0]["file"]) == os.fsencode(src) + b"/bad\xfe.png"


def test_apply_reads_the_file_named_not_a_libvips_option(tmp_path):
    """libvips reads load options from a name ending in [...]: ``a.jpg[shrink=2]`` was
    read as a.jpg, another file, at half size."""
    rng = np.random.default_rng(6)
    cio.write_image(tmp_path / "a.jpg", rng.random((3, 10, 12)))
    named = tmp_path / "a.jpg[shrink=2]"
    cio.write_image(tmp_path / "b.jpg", rng.random((3, 40, 30)))
    (tmp_path / "b.jpg").rename(named)
    res = run("apply", named, "--preset", "box", "--backend", "numpy", "-q",
              "-o", tmp_path / "o.png")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert cio.read_image(tmp_path / "o.png").data.shape == (3, 40, 30)
    assert cio.read_image(named).data.shape == (3, 40, 30)


@pytest.mark.skipif(not HAVE_VIPS, reason="libvips reads these by strips")
@pytest.mark.parametrize("name", ["forged.jpg", "forged.png"])
def test_a_lost_libvips_message_is_asked_again(tmp_path, name):
    """libvips keeps its error messages in one buffer for the process: a call on
    another thread can take a failing read's, leaving 'unable to write to memory'. The
    reader then asks the file's codec on its own thread and still says the data ends
    early."""
    import pyvips

    from convcli.errors import InputError
    from convcli.io import stream

    forged_tree(tmp_path / "in")
    source = stream.open_source(tmp_path / "in" / name, max_pixels=None)

    class Lost:
        def crop(self, *args):
            return self

        def write_to_memory(self):
            raise pyvips.Error("unable to write to memory", "unable to write to memory")

    source._image, source._lenient = Lost(), None
    with pytest.raises(InputError, match=f"{name}: truncated image data"):
        source.read_rows(0, source.info.height)


@pytest.mark.parametrize("suffix", [".png", ".npy"])
def test_negative_padding_on_image_files_is_one_clear_refusal(tmp_path, suffix):
    """conv2d crops with a negative padding under replicate/reflect (as torch does), the
    strips of image files cannot: a PNG said "pad must be (top, bottom, left, right),
    all >= 0", a .npy NumPy's "non-broadcastable output operand", once per file."""
    src = tmp_path / "a.png"
    cio.write_image(src, np.random.default_rng(5).random((3, 12, 16)))
    out = tmp_path / f"o{suffix}"
    for padding, mode in (("-1", "replicate"), ("-1,0", "reflect")):
        res = run("apply", src, "-o", out, "--preset", "box", f"--padding={padding}",
                  "--padding-mode", mode, "--backend", "numpy")  # fmt: skip
        assert res.exit_code == 1
        assert errors_of(res) == [
            "convcli: error: negative padding is not supported for image files (it crops "
            "arrays and zarr stores under padding modes other than zeros) "
            f"(--padding {padding})"
        ]
        assert res.stderr.count("\n") == 1
    res = run("batch", tmp_path, tmp_path / "out", "--preset", "box", "--padding=-1")
    assert res.exit_code == 1 and len(errors_of(res)) == 1
    assert sorted(os.listdir(tmp_path)) == ["a.png"]
    # the library: every task fails with that reason, nothing is written
    from convcli import batch as cbatch
    from convcli.filters import Filter

    filt = Filter.from_preset("box", padding=(0, -1), padding_mode="circular")
    plan = cbatch.plan_files([src], out)
    result = cbatch.run_tasks(plan.tasks, filt, engine=cbatch.Engine(backend="numpy"))
    assert [f.reason for f in result.failed] == [cbatch.file_filter_problem(filt)]
    assert "negative padding" in result.failed[0].reason and not result.done
    assert sorted(os.listdir(tmp_path)) == ["a.png"]


def test_opencl_runs_where_home_cannot_hold_a_cache(tmp_path, ocl):
    """HOME where no ~/.cache can be made (read-only, missing, a file): pyopencl's first
    kernel call failed with "convcli: error: .../.cache: No such file or directory" (its
    pytools invoker cache), even under --backend opencl with PoCL's cache elsewhere."""
    import subprocess

    src = tmp_path / "a.png"
    x = np.random.default_rng(6).random((3, 12, 16))
    cio.write_image(src, x)
    (tmp_path / "file").write_text("not a folder")
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "PYOPENCL_NO_CACHE")}
    env.update(
        HOME=str(tmp_path / "file" / "home"),
        POCL_CACHE_DIR=str(tmp_path / "pocl"),
        CONVCLI_CACHE_DIR=str(tmp_path / "convcli"),
        PYTHONPATH=str(Path(__file__).resolve().parent.parent),
    )
    res = subprocess.run(
        [sys.executable, "-m", "convcli", "apply", str(src), "-o", str(tmp_path / "o.npy"),
         "--preset", "box", "--backend", "opencl", "--algo", "direct", "-q"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    got = np.load(tmp_path / "o.npy")
    ref = cio.read_image(src).data.astype(np.float64)  # as the file stores it
    pad = np.pad(ref, ((0, 0), (1, 1), (1, 1)), mode="edge")
    want = sum(pad[:, i : i + 12, j : j + 16] for i in range(3) for j in range(3)) / 9
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_no_device_for_lack_of_a_pocl_cache_folder_says_so(tmp_path):
    """PoCL lists no device when it cannot make its kernel cache folder; that was a bare
    "no OpenCL platform or device found", with nothing to point at HOME."""
    import subprocess

    (tmp_path / "file").write_text("not a folder")
    drop = ("XDG_CACHE_HOME", "POCL_CACHE_DIR", "CONVCLI_CACHE_DIR")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(HOME=str(tmp_path / "file" / "home"), CONVCLI_CACHE_DIR=str(tmp_path / "c"),
               PYTHONPATH=str(Path(__file__).resolve().parent.parent))  # fmt: skip
    res = subprocess.run([sys.executable, "-m", "convcli", "devices"], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    if "OpenCL devices" in res.stdout:
        pytest.skip("a platform other than PoCL has devices here")
    cache = tmp_path / "file" / "home" / ".cache" / "pocl" / "kcache"
    assert res.returncode == 0 and res.stdout == ""
    assert res.stderr == (
        "convcli: notice: no OpenCL platform or device found (PoCL lists none when it "
        f"cannot make its cache folder {cache}: set POCL_CACHE_DIR to a writable folder); "
        "convcli uses the NumPy backend\n"
    )


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_or_device_as_input_says_what_it_is(tmp_path):
    """A FIFO named like an image, /dev/zero or /dev/urandom as input was "empty file"
    (their size is 0), a wrong lead; in a batch a FIFO is no input at all."""
    fifo = tmp_path / "p.png"
    os.mkfifo(fifo)
    out = tmp_path / "o.png"
    for src, kind in ((fifo, "a FIFO (named pipe)"), (Path("/dev/zero"), "a character device")):
        if not src.exists():
            continue
        res = run("apply", src, "-o", out, "--preset", "box")
        assert res.exit_code == 1
        assert errors_of(res) == [f"convcli: error: {src}: is {kind}, not an image file"]
        res = run("apply", tmp_path / "x.png", "-o", out, "--weights", src)
        assert res.exit_code == 1
        assert errors_of(res) == [f"convcli: error: {src}: is {kind}, not a weight file"]
    assert sorted(os.listdir(tmp_path)) == ["p.png"]


def test_workers_beyond_four_per_cpu_are_refused(tmp_path):
    """`--workers 100000` over a large folder read that many images ahead at once, each
    held whole, until memory ran out; the library keeps at most most_workers() threads."""
    from convcli.batch import most_workers

    assert most_workers() == max(8, 4 * (os.cpu_count() or 1))
    src = tmp_path / "in"
    src.mkdir()
    np.save(src / "a.npy", np.zeros((4, 4), np.float32))
    too_many = str(most_workers() + 1)
    for args in (
        ["batch", str(src), str(tmp_path / "out")],
        ["apply", str(src / "a.npy"), "-o", str(tmp_path / "b.npy")],
    ):
        r = CliRunner().invoke(cli, [*args, "--preset", "box", "--workers", too_many])
        assert r.exit_code == 2, r.output
        assert f"at most {most_workers()} (4 per CPU)" in r.output
        assert r.output.count("\n") == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "b.npy").exists()
    args = ["batch", str(src), str(tmp_path / "out"), "--preset", "box", "--backend", "numpy"]
    r = CliRunner().invoke(cli, [*args, "--workers", str(most_workers()), "-q"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out" / "a.npy").exists()


def test_a_device_that_does_not_exist_is_named_under_auto(tmp_path):
    """Under --backend auto a small image that NumPy finishes first never started
    OpenCL, so `--device nvidai` (a typo) ran on NumPy without a word; the named device
    is now looked for first, and its absence is a notice before NumPy runs the job."""
    from PIL import Image

    src, out = tmp_path / "a.png", tmp_path / "b.png"
    x = np.random.default_rng(0).integers(0, 256, (9, 11), dtype=np.uint8)
    Image.fromarray(x).save(src)
    args = ["apply", str(src), "-o", str(out), "--preset", "box", "-q"]
    r = CliRunner().invoke(cli, [*args, "--device", "no-such-device-xyz"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("convcli: notice: OpenCL unavailable")
    assert "'no-such-device-xyz'" in lines[0] and lines[0].endswith("using NumPy")
    # the box blur (3x3 mean, edges repeated), rounded to 8 bits
    padded = np.pad(x.astype(np.float64), 1, mode="edge")
    ref = sum(padded[i : i + 9, j : j + 11] for i in range(3) for j in range(3)) / 9
    got = np.asarray(Image.open(out), dtype=np.float64)
    assert np.abs(got - ref).max() <= 1


@pytest.mark.parametrize(
    "args, named",
    [
        (["apply", "l1.png", "--preset", "box", "-o", "o.png"], "l1.png"),
        (["apply", "a.png", "--preset", "box", "-o", "l1.png"], "l1.png"),
        (["apply", "a.png", "--preset", "box", "-o", "d1/"], "d1"),
        (["batch", "in", "d1", "--preset", "box"], "d1"),
    ],
)
def test_a_symbolic_link_loop_is_named_not_an_internal_error(tmp_path, monkeypatch, args, named):
    """Path.resolve() raises RuntimeError on a link loop (Python 3.11-3.12): the CLI
    said "internal error: RuntimeError: Symlink loop from ...". Now one line naming the
    path as given, exit 1, nothing written."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    cio.write_image(tmp_path / "a.png", np.random.default_rng(0).random((3, 6, 5)))
    cio.write_image(tmp_path / "in" / "b.png", np.random.default_rng(1).random((3, 6, 5)))
    for a, b in [("l1.png", "l2.png"), ("l2.png", "l1.png"), ("d1", "d2"), ("d2", "d1")]:
        os.symlink(b, tmp_path / a)
    before = sorted(os.listdir(tmp_path))
    res = run(*args, "-q")
    assert res.exit_code == 1
    assert errors_of(res) == [f"convcli: error: {named}: too many levels of symbolic links"]
    assert sorted(os.listdir(tmp_path)) == before
