"""Issue 11 items 5, 6, 8, 9 and 12: unreadable folders, interrupt exit codes, real
messages instead of "internal error", one escaped line per problem, library warnings as
``convcli: warning:`` lines and report notes, multi-frame images, integer TIFF scaling.

Subprocess tests run ``python -m convcli`` with this checkout first on PYTHONPATH. The
permission tests need a process that cannot bypass file modes: as root they drop to
``nobody`` in the child or, where nobody cannot run this Python, drop the two
capabilities that let root ignore modes; they skip only when neither works.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from convcli import batch as cbatch
from convcli import io as cio
from convcli import notes as cnotes
from convcli.cli import cli, safe_text
from convcli.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
CONVCLI = [sys.executable, "-m", "convcli"]


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def image(path: Path, seed: int = 0, size=(24, 32), mode: str = "RGB") -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    c = {"RGB": 3, "L": 1}[mode]
    arr = rng.integers(0, 256, (*size, c), dtype=np.uint8)
    Image.fromarray(arr[..., 0] if c == 1 else arr).save(path)
    return path


# ---------------------------------------------------------------- item 5: folders
def _child_cannot_bypass_modes() -> Callable[[], None] | None:
    """A preexec_fn that leaves the child unable to read a mode-000 folder (None when
    this process already cannot), or skip the test."""
    if os.geteuid() != 0:
        return None

    def as_nobody() -> None:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)

    libc = ctypes.CDLL(None, use_errno=True)

    def without_dac_caps() -> None:
        # root reads anything through CAP_DAC_OVERRIDE (1) and CAP_DAC_READ_SEARCH (2);
        # dropped from the bounding set, the exec'd child no longer has them
        for cap in (1, 2):
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    locked = Path(tempfile.mkdtemp())
    try:
        locked.chmod(0)
        probe = [sys.executable, "-c", f"import os, convcli; os.listdir({str(locked)!r})"]
        for fn in (as_nobody, without_dac_caps):
            try:
                r = subprocess.run(probe, preexec_fn=fn, env=ENV, capture_output=True, text=True)
            except (OSError, subprocess.SubprocessError):
                continue
            if r.returncode != 0 and "PermissionError" in r.stderr:
                return fn
    finally:
        locked.chmod(0o700)
        locked.rmdir()
    pytest.skip("cannot start a child that file modes apply to (not nobody, no prctl)")


@pytest.fixture
def open_tmp():
    """A scratch folder any user may enter (pytest's tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="convcli-perm-"))
    base.chmod(0o777)
    yield base
    for folder, dirs, _ in os.walk(base):
        for d in dirs:
            (Path(folder) / d).chmod(0o777)
    shutil.rmtree(base)


def _tree(base: Path) -> Path:
    src = base / "in"
    for folder in (src, src / "ok", src / "locked", src / "locked" / "deep"):
        folder.mkdir()
        folder.chmod(0o755)
    for i, rel in enumerate(("a.png", "ok/b.png", "locked/c.png", "locked/deep/d.png")):
        image(src / rel, seed=i).chmod(0o644)
    return src


def test_unreadable_sub_folder_is_a_failure_naming_it(open_tmp):
    preexec = _child_cannot_bypass_modes()
    src = _tree(open_tmp)
    (src / "locked").chmod(0)
    report = open_tmp / "report.json"
    cmd = [*CONVCLI, "batch", src, open_tmp / "out", "-r", "--preset", "box", "-q",
           "--backend", "numpy", "--report", report]  # fmt: skip
    r = subprocess.run([str(c) for c in cmd], preexec_fn=preexec, env=ENV, cwd=open_tmp,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 1, r.stderr
    err = lines(r.stderr)
    assert err[0] == (
        f"convcli: error: {src / 'locked'}: cannot read the folder: permission denied; "
        "the images in it were not processed"
    )
    assert err[1].startswith("convcli: summary: 2 done, 0 skipped, 1 failed")
    assert len(err) == 2, r.stderr
    rep = json.loads(report.read_text())
    assert rep["failures"] == [
        {"file": str(src / "locked"), "reason": err[0][16:].split(": ", 1)[1]}
    ]
    assert sorted(p.name for p in (open_tmp / "out").rglob("*.png")) == ["a.png", "b.png"]


def test_unreadable_input_folder_is_an_error(open_tmp):
    preexec = _child_cannot_bypass_modes()
    src = _tree(open_tmp)
    src.chmod(0)
    for extra in ([], ["-r"]):
        cmd = [*CONVCLI, "batch", src, open_tmp / "out", *extra, "--preset", "box"]
        r = subprocess.run([str(c) for c in cmd], preexec_fn=preexec, env=ENV, cwd=open_tmp,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
        assert r.returncode == 1, r.stderr
        assert lines(r.stderr) == [
            f"convcli: error: {src}: cannot read the folder: permission denied"
        ]
    assert not (open_tmp / "out").exists()


def test_walk_reports_unreadable_folders_and_keeps_the_listing_rules(tmp_path, monkeypatch):
    src = tmp_path / "in"
    for rel in ("a.png", "b.JPG", ".hidden.png", "notes.txt", "sub/c.png", "sub/.cache/x.png",
                "sub/deeper/d.tif", "blocked/e.png", "out/o.png"):  # fmt: skip
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(b"x")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "f.png").write_bytes(b"x")
    (src / "link.png").symlink_to(outside / "f.png")  # a link to a file is an input
    (src / "linkdir").symlink_to(outside)  # links to folders are not followed
    (src / "sub" / "loop").symlink_to(src)  # (so no loop either)
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name == "blocked":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(cbatch.os, "scandir", scandir)
    errors: list[cbatch.Failure] = []
    found = cbatch.list_inputs(src, recursive=True, exclude=[src / "out"], errors=errors)
    rel = [p.relative_to(src).as_posix() for p in found]
    assert rel == ["a.png", "b.JPG", "link.png", "sub/c.png", "sub/deeper/d.tif"]
    assert [(e.path, e.reason.split(";")[0]) for e in errors] == [
        (src / "blocked", "cannot read the folder: permission denied")
    ]
    with pytest.raises(InputError, match="blocked: cannot read the folder"):
        cbatch.list_inputs(src, recursive=True)
    top = cbatch.list_inputs(src, errors=errors)
    assert [p.name for p in top] == ["a.png", "b.JPG", "link.png"]
    # patterns: relative to IN_DIR, components matched level by level, ** leads
    globbed = cbatch.list_inputs(src, glob="sub/*.png", errors=[])
    assert [p.relative_to(src).as_posix() for p in globbed] == ["sub/c.png"]
    deep = cbatch.list_inputs(src, glob="**/*.png", exclude=[src / "out"], errors=[])
    assert [p.relative_to(src).as_posix() for p in deep] == ["a.png", "link.png", "sub/c.png"]


@pytest.mark.parametrize(
    ("pattern", "needle"),
    [
        ("/abs/path/*.png", "is an absolute path"),
        ("../*.png", "leaves the input folder"),
        ("", "the file pattern is empty"),
        ("a/**/b.png", "'**' (any sub-folder) may only lead"),
    ],
)
def test_bad_glob_is_a_usage_error_not_an_internal_error(tmp_path, pattern, needle):
    (tmp_path / "in").mkdir()
    image(tmp_path / "in" / "a.png")
    r = run("batch", tmp_path / "in", tmp_path / "out", "--glob", pattern, "--preset", "box")
    assert r.exit_code == 2
    (line,) = lines(r.stderr)
    assert line.startswith("convcli: error: Invalid value for '--glob': ") and needle in line


# ---------------------------------------------------------------- item 6: signals
def _slow_apply(tmp_path: Path, inputs: list[Path], out: str, **popen) -> subprocess.Popen:
    """``convcli apply`` in a child that writes START to stderr as each convolution (of
    a strip; these images are one strip each) begins and then waits 0.5 s inside it, so
    a signal sent on START lands while that image is being convolved, however fast the
    machine."""
    kernel = np.random.default_rng(1).random((31, 31)).astype(np.float32) / 400
    np.save(tmp_path / "k.npy", kernel)
    script = (
        "import os, sys, time, convcli.pipeline as p\n"
        "f = p.conv2d\n"
        "def marked(*a, **k):\n"
        "    os.write(2, b'START\\n')\n"
        "    time.sleep(0.5)\n"
        "    return f(*a, **k)\n"
        "p.conv2d = marked\n"
        "from convcli.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    args = ["apply", *map(str, inputs), "-o", out, "--weights", "k.npy", "--backend", "numpy",
            "--algo", "direct", "-q"]  # fmt: skip
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)  # fmt: skip


def _wait_for_start(proc: subprocess.Popen, starts: int = 1) -> list[str]:
    seen: list[str] = []
    while sum(ln == "START\n" for ln in seen) < starts:
        line = proc.stderr.readline()
        assert line, f"child ended before a convolution started: {''.join(seen)}"
        seen.append(line)
    return seen


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]
)
def test_signal_during_the_only_image_exits_128_plus_signal(tmp_path, signum, code):
    big = tmp_path / "big.npy"
    data = np.random.default_rng(0).random((1, 600, 600), dtype=np.float32)
    np.save(big, data)
    proc = _slow_apply(tmp_path, [big], "o.npy")
    _wait_for_start(proc)
    proc.send_signal(signum)
    out, rest = proc.communicate(timeout=300)
    err = [ln for ln in lines(rest) if ln != "START"]
    assert proc.returncode == code, rest
    assert err[0].startswith("convcli: stopping after the current image")
    assert "convcli: summary: interrupted; 1 of 1 outputs written" in err
    assert all(ln.startswith("convcli: ") for ln in err), rest
    # the current image was finished and written whole (documented): spot-check pixels
    res = np.load(tmp_path / "o.npy")
    assert res.shape == data.shape and out == ""  # -q: no output paths
    k = np.load(tmp_path / "k.npy").astype(np.float64)
    pad = np.pad(data[0].astype(np.float64), 15, mode="edge")
    for y, x in ((0, 0), (299, 17), (599, 599), (40, 550)):
        assert res[0, y, x] == pytest.approx((pad[y : y + 31, x : x + 31] * k).sum(), rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGINT])
def test_a_signal_ignored_at_start_stays_ignored(tmp_path, signum):
    """`nohup convcli batch ...` ignores SIGHUP, a shell's background job SIGINT: the
    run was asked to go on through them. It stopped (exit 129) when the terminal closed."""
    big = tmp_path / "big.npy"
    data = np.random.default_rng(0).random((1, 200, 200), dtype=np.float32)
    np.save(big, data)
    ignore = functools.partial(signal.signal, signum, signal.SIG_IGN)
    proc = _slow_apply(tmp_path, [big], "o.npy", preexec_fn=ignore)
    _wait_for_start(proc)
    proc.send_signal(signum)
    _, rest = proc.communicate(timeout=300)
    assert proc.returncode == 0, rest
    assert [ln for ln in lines(rest) if ln != "START"] == []
    assert np.load(tmp_path / "o.npy").shape == data.shape


@pytest.mark.slow
def test_signal_during_the_last_image_exits_130(tmp_path):
    small = image(tmp_path / "small.png", size=(8, 8))
    big = tmp_path / "big.npy"
    np.save(big, np.random.default_rng(0).random((1, 300, 300), dtype=np.float32))
    proc = _slow_apply(tmp_path, [small, big], "outs/")
    _wait_for_start(proc, starts=2)
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=300)
    assert proc.returncode == 130, rest
    assert "convcli: summary: interrupted; 2 of 2 outputs written" in rest
    assert sorted(os.listdir(tmp_path / "outs")) == ["big.npy", "small.png"]


# ---------------------------------------------------------------- item 8: messages
def test_weight_files_that_used_to_be_internal_errors(tmp_path):
    src = image(tmp_path / "a.png")
    digits = "7" * 5000
    cases = {
        "big.json": (f"[[{digits}, 1], [1, 1]]", "weight contains NaN or Inf"),
        "huge.json": ("[[1e5000]]", "weight contains NaN or Inf"),
    }
    for name, (text, needle) in cases.items():
        (tmp_path / name).write_text(text)
        r = run("apply", src, "-o", tmp_path / "o.png", "--weights", tmp_path / name)
        assert r.exit_code == 1
        (line,) = lines(r.stderr)
        assert line == f"convcli: error: {tmp_path / name}: {needle} (or values beyond float32)"
    # a big integer that is a float32 still works (json no longer refuses 4300+ digits)
    (tmp_path / "ok.json").write_text("[[" + "1" + "0" * 30 + "]]")
    assert cio.load_weights(tmp_path / "ok.json")[0][0, 0] == np.float32(1e30)


def test_torch_files_that_used_to_be_internal_errors(tmp_path):
    torch = pytest.importorskip("torch")
    src = image(tmp_path / "a.png")
    torch.save({"weight": torch.eye(3).to_sparse()}, tmp_path / "sparse.pt")
    torch.save({"weight": torch.ones(3, 3)}, tmp_path / "p5.pt", pickle_protocol=5)
    for name, needle in (
        ("sparse.pt", "holds a sparse_coo tensor; save it dense"),
        ("p5.pt", "pickle protocol that torch's safe loader cannot read"),
    ):
        r = run("apply", src, "-o", tmp_path / "o.png", "--weights", tmp_path / name)
        assert r.exit_code == 1
        (line,) = lines(r.stderr)
        assert line.startswith(f"convcli: error: {tmp_path / name}: ") and needle in line
        assert "internal error" not in line


# ---------------------------------------------------------------- item 9: one line
def test_safe_text_escapes_what_breaks_a_line():
    assert safe_text("a\nconvcli: summary: 99 done") == "a\\nconvcli: summary: 99 done"
    assert safe_text("x\r\t\x1b[31m\x7f\x85\u2028é.png") == "x\\r\\t\\x1b[31m\\x7f\\x85\\u2028é.png"
    assert safe_text(os.fsdecode(b"bad\xff.png")) == "bad\\xff.png"


def test_crafted_names_stay_on_one_line(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    fake = "x\nconvcli: summary: 99 done\x1b[2K.png"
    (src / fake).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    image(src / "good\r.png")
    report = tmp_path / "r.json"
    r = run("batch", src, tmp_path / "out", "--preset", "box", "-q", "--report", report)
    assert r.exit_code == 1
    err = lines(r.stderr)
    assert len(err) == 2 and err[1].startswith("convcli: summary: 1 done, 0 skipped, 1 failed")
    assert err[0].startswith(f"convcli: error: {src}/x\\nconvcli: summary: 99 done\\x1b[2K.png: ")
    rep = json.loads(report.read_text())  # the report keeps the exact names
    assert rep["failures"][0]["file"] == str(src / fake)
    assert rep["outputs"] == [str(tmp_path / "out" / "good\r.png")]
    r = run("apply", src / "good\r.png", "-o", tmp_path / "o\n.png", "--preset", "box")
    assert r.exit_code == 0 and r.stdout == f"{tmp_path}/o\\n.png\n"
    assert (tmp_path / "o\n.png").is_file()


def test_names_print_as_they_are_not_as_rich_markup_or_emoji(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "b:smile:[bold]x[red].png").write_bytes(b"not an image")
    r = run("batch", src, tmp_path / "out", "--preset", "box", "-q")
    assert r.exit_code == 1
    assert lines(r.stderr)[0].startswith(f"convcli: error: {src}/b:smile:[bold]x[red].png: ")


def _jpeg_with_corrupt_exif(path: Path, seed: int = 0) -> Path:
    import io
    import struct

    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG")
    data = buf.getvalue()
    # an IFD claiming 50 entries in a block that holds less than one
    exif = b"Exif\x00\x00II*\x00" + struct.pack("<IH", 8, 50) + b"\xff" * 20
    path.write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + data[2:])
    return path


def test_corrupt_exif_is_a_warning_line_and_a_report_note(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _jpeg_with_corrupt_exif(src / "bad.jpg")
    image(src / "fine.png")
    report = tmp_path / "r.json"
    r = subprocess.run([*CONVCLI, "batch", str(src), str(tmp_path / "out"), "--preset", "box",
                        "-q", "--report", str(report), "--backend", "numpy"],
                       env=ENV, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert lines(r.stderr) == [
        f"convcli: warning: {src / 'bad.jpg'}: Corrupt EXIF data. Expecting to read 12 bytes "
        "but only got 8."
    ]
    notes = json.loads(report.read_text())["file_notes"]
    assert notes == [{"file": str(src / "bad.jpg"), "note": lines(r.stderr)[0].split(": ", 3)[3]}]


def test_notes_go_to_the_thread_that_raised_them(tmp_path):
    """Eight threads read at once (as a batch does): each corrupt-EXIF file gets its own
    note, clean files none, and nothing reaches the warnings module's output."""
    paths = []
    for i in range(16):
        if i % 2:
            paths.append(_jpeg_with_corrupt_exif(tmp_path / f"{i}.jpg", seed=i))
        else:
            paths.append(image(tmp_path / f"{i}.png", seed=i))
    results: dict[Path, list[str]] = {}
    barrier = threading.Barrier(8)

    def work(chunk: list[Path]) -> None:
        barrier.wait()
        for _ in range(5):
            for p in chunk:
                results.setdefault(p, []).append(tuple(cio.read_image(p).notes))

    with warnings.catch_warnings(record=True) as leaked:
        warnings.simplefilter("always")
        threads = [threading.Thread(target=work, args=(paths[i::8],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert leaked == []
    for p, seen in results.items():
        want = ("Corrupt EXIF data. Expecting to read 12 bytes but only got 8.",)
        assert seen == [want if p.suffix == ".jpg" else ()] * 5, p


def test_warnings_outside_collectors_reach_the_saved_handler():
    with warnings.catch_warnings(record=True) as outer:
        warnings.simplefilter("always")
        inner: list = []
        with cnotes.collect(inner):
            warnings.warn("mine", UserWarning, stacklevel=1)
            t = threading.Thread(target=warnings.warn, args=("other thread", UserWarning))
            t.start()
            t.join()
        warnings.warn("after", UserWarning, stacklevel=1)
    assert [cnotes.text(w) for w in inner] == ["mine"]
    assert [str(w.message) for w in outer] == ["other thread", "after"]


@pytest.mark.parametrize("backend", ["numpy", "auto"])
def test_overflowing_kernel_says_so_once(tmp_path, backend):
    src = image(tmp_path / "a.png")
    np.save(tmp_path / "k.npy", np.full((5, 5), 3e38, np.float32))
    report = tmp_path / "r.json"
    r = subprocess.run([*CONVCLI, "batch", str(tmp_path), str(tmp_path / "out"), "--glob",
                        "a.png", "--weights", "k.npy", "--backend", backend, "-q", "--report",
                        str(report), "--format", "npy"],
                       env=ENV, cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    expected = (
        f"convcli: warning: {src}: the result overflowed float32: 2304 of 2304 values are inf "
        "or NaN (image formats clip them, .npy keeps them); scale the kernel down"
    )
    assert lines(r.stderr) == [expected]
    assert json.loads(report.read_text())["file_notes"][0]["note"].startswith(
        "the result overflowed float32"
    )
    assert np.isinf(np.load(tmp_path / "out" / "a.npy")).all()


def test_overflow_into_an_image_format_is_the_overflow_note(tmp_path):
    """A small image into PNG goes through the fused native-depth step, which writes
    samples, not floats: NumPy's raw "overflow encountered in matmul" was printed instead
    of the overflow note (the .npy output above counts the values)."""
    src = image(tmp_path / "a.png")
    r = subprocess.run([*CONVCLI, "apply", str(src), "-o", "o.png", "--kernel",
                        "3e38,3e38;3e38,3e38", "--backend", "numpy", "-q"],
                       env=ENV, cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert lines(r.stderr) == [
        f"convcli: warning: {src}: the result overflowed float32: some values are inf or NaN "
        "(image formats clip them, .npy keeps them); scale the kernel down"
    ]
    out = cio.read_image(tmp_path / "o.png")
    assert out.data.max() == 1.0  # clipped, as the note says


def test_weight_file_warnings_are_warning_lines_and_report_notes(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    real_load = torch.load

    def load(*args, **kwargs):
        warnings.warn("Detected pickle protocol 3 in the checkpoint", UserWarning, stacklevel=2)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    torch.save({"weight": torch.full((3, 3), 1 / 9)}, tmp_path / "w.pt", pickle_protocol=2)
    (tmp_path / "in").mkdir()
    image(tmp_path / "in" / "a.png")
    report = tmp_path / "r.json"
    r = run("batch", tmp_path / "in", tmp_path / "out", "--weights", tmp_path / "w.pt", "-q",
            "--report", report)  # fmt: skip
    assert r.exit_code == 0
    assert lines(r.stderr) == [
        f"convcli: warning: {tmp_path / 'w.pt'}: Detected pickle protocol 3 in the checkpoint"
    ]
    assert json.loads(report.read_text())["file_notes"] == [
        {"file": str(tmp_path / "w.pt"), "note": "Detected pickle protocol 3 in the checkpoint"}
    ]


def test_failed_opencl_build_prints_nothing(tmp_path):
    from conftest import opencl_available

    if not opencl_available():
        pytest.skip("no OpenCL device")
    src = image(tmp_path / "a.png", size=(64, 64))
    # dw_direct's build overflows int constants with this stride, fails and falls back
    r = subprocess.run([*CONVCLI, "apply", str(src), "-o", str(tmp_path / "o.png"), "--preset",
                        "box", "--stride", "1000000000", "--backend", "opencl", "-q"],
                       env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0 and r.stderr == ""
    assert cio.read_image(tmp_path / "o.png").size == (1, 1)


def test_short_npy_write_names_the_errno(tmp_path):
    """A write the file system cuts short (here the file size limit, any user can set
    it) keeps its errno: NumPy's tofile said "480000 requested and 40928 written"."""
    big = tmp_path / "big.npy"
    np.save(big, np.zeros((3, 200, 200), np.float32))
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100000, 100000))\n"
        "from convcli.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    r = subprocess.run([sys.executable, "-c", script, "apply", str(big), "-o", "o.npy",
                        "--preset", "box", "--backend", "numpy", "-q"],
                       env=ENV, cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert r.returncode == 1
    assert lines(r.stderr) == ["convcli: error: o.npy: cannot write: file too large"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.npy"]


def test_full_disk_npy_says_no_space(tmp_path):
    disk = tmp_path / "tiny"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs (needs root)")
    try:
        big = tmp_path / "big.npy"
        np.save(big, np.zeros((3, 200, 200), np.float32))
        r = subprocess.run([*CONVCLI, "apply", str(big), "-o", str(disk / "o.npy"), "--preset",
                            "box", "--backend", "numpy", "-q"],
                           env=ENV, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert r.returncode == 1
        assert lines(r.stderr) == [
            f"convcli: error: {disk}: no space left on the device; stopped (no partial file "
            "written)"
        ]
        assert os.listdir(disk) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# ---------------------------------------------------------------- item 12
def test_multi_frame_inputs_warn_that_only_the_first_is_filtered(tmp_path):
    import tifffile
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    frames = [Image.new("RGB", (16, 12), (40 * i, 90, 200 - 30 * i)) for i in range(4)]
    frames[0].save(src / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(src / "anim.webp", save_all=True, append_images=frames[1:], lossless=True)
    with tifffile.TiffWriter(src / "pages.tif") as w:
        for i in range(3):
            w.write(np.full((12, 16), 60 * i, np.uint8))
        w.write(np.zeros((3, 4), np.uint8), subfiletype=1)  # a thumbnail is not a frame
    image(src / "single.png")
    report = tmp_path / "r.json"
    r = run("batch", src, tmp_path / "out", "--preset", "box", "-q", "--report", report)
    assert r.exit_code == 0
    assert sorted(lines(r.stderr)) == [
        f"convcli: warning: {src / 'anim.gif'}: 4 frames; only the first is filtered (the "
        "others are not in the output)",
        f"convcli: warning: {src / 'anim.webp'}: 4 frames; only the first is filtered (the "
        "others are not in the output)",
        f"convcli: warning: {src / 'pages.tif'}: 3 pages; only the first is filtered (the "
        "others are not in the output)",
    ]
    assert len(json.loads(report.read_text())["file_notes"]) == 3
    first = cio.read_image(tmp_path / "out" / "anim.png").data  # frame 0's flat colour
    np.testing.assert_allclose(first[:, 5, 5], np.array([0, 90, 200]) / 255, atol=1 / 255)


def test_integer_tiff_scales_by_its_declared_type_whoever_wrote_it(tmp_path):
    import tifffile
    from PIL import Image

    a = (np.arange(48, dtype=np.int64).reshape(6, 8) * 1000).astype(np.int32)  # fits 16 bits
    tifffile.imwrite(tmp_path / "t.tif", a)
    Image.fromarray(a, "I").save(tmp_path / "p.tif")
    for name in ("t.tif", "p.tif"):
        np.testing.assert_array_equal(cio.read_image(tmp_path / name).data[0],
                                      (a / (2**31 - 1)).astype(np.float32))  # fmt: skip
    bright = a.copy()
    bright[0, 0] = 2**30  # one bright pixel rescaled the whole image before
    tifffile.imwrite(tmp_path / "b.tif", bright)
    np.testing.assert_array_equal(cio.read_image(tmp_path / "b.tif").data[0, 1:],
                                  cio.read_image(tmp_path / "t.tif").data[0, 1:])  # fmt: skip
    u = a.astype(np.uint32) * 4096
    tifffile.imwrite(tmp_path / "u.tif", u)
    np.testing.assert_array_equal(cio.read_image(tmp_path / "u.tif").data[0],
                                  (u / (2**32 - 1)).astype(np.float32))  # fmt: skip
    tifffile.imwrite(tmp_path / "m.tif", u, extratags=[(281, "I", 1, 200_000, True)])
    np.testing.assert_allclose(cio.read_image(tmp_path / "m.tif").data[0], u / 200_000, rtol=1e-6)
    neg = np.array([[-(2**31) + 1, -5, 0, 2**31 - 1]], np.int32)
    tifffile.imwrite(tmp_path / "n.tif", neg)
    np.testing.assert_allclose(cio.read_image(tmp_path / "n.tif").data[0], neg / (2**31 - 1))


def test_batch_that_finds_nothing_exits_0_with_a_notice(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("x")
    r = run("batch", tmp_path / "in", tmp_path / "out", "--preset", "box")
    assert r.exit_code == 0
    assert lines(r.stderr) == [f"convcli: notice: no images found in {tmp_path / 'in'}"]
