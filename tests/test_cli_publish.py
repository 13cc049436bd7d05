"""The CLI's file-safety rules (issue 11 items 1, 3, 4), through the real command:
side files never clobber inputs, outputs or existing files; two batches into one folder
never both claim a file; a killed run leaves no temporary file, or the next run removes
it. Outputs are checked against the naive reference."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from naive import naive_conv2d

from convcli import io as cio
from convcli.cli import cli
from convcli.io import publish as cpub
from convcli.presets import get_preset

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
ENV.pop(cpub.NO_TMPFILE_ENV, None)
LEVEL = 1 / 255 + 1e-6


def convcli(*args: object, env=None, **kwargs) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "convcli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env or ENV, timeout=300,
                          **kwargs)  # fmt: skip


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def error_line(stderr: str, *needles: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("convcli: error: ") and "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def image(seed: int, size=(24, 32)) -> np.ndarray:
    """A crop of a real sample, varied per seed, as (3, H, W) floats."""
    from PIL import Image

    names = ["astronaut.png", "coffee.png", "camera.png", "horse.png"]
    with Image.open(ROOT / "samples" / names[seed % 4]) as im:
        h, w = size
        x0, y0 = 10 + 13 * seed % 150, 20 + 7 * seed % 100
        arr = np.asarray(im.convert("RGB").crop((x0, y0, x0 + w, y0 + h)), np.float32) / 255
    return np.moveaxis(arr, -1, 0)


def make_inputs(folder: Path, count: int, size=(24, 32)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [cio.write_image(folder / f"m{i:03d}.png", image(i, size)) for i in range(count)]


def reference(src: Path, kernel: np.ndarray) -> np.ndarray:
    """'same' padding, replicate border, every channel, clipped: the CLI's defaults."""
    x = cio.read_image(src).data.astype(np.float64)
    k = np.asarray(kernel, np.float64)
    th, tw = k.shape[0] - 1, k.shape[1] - 1
    pad = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    w = np.broadcast_to(k, (x.shape[0], 1, *k.shape))
    y = naive_conv2d(x[None], w, None, (1, 1), pad, (1, 1), x.shape[0], "replicate")[0]
    return np.clip(y.real, 0, 1)


def matches(dst: Path, src: Path, kernel: np.ndarray) -> bool:
    return float(np.max(np.abs(cio.read_image(dst).data - reference(src, kernel)))) <= LEVEL


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ------------------------------------------------------------------ item 1: side files
def test_side_file_naming_an_input_is_refused_and_the_input_kept(tmp_path):
    src = tmp_path / "in"
    photo, photo2 = make_inputs(src, 2)
    before = snapshot(tmp_path)
    res = convcli("apply", photo, "--preset", "box", "-o", tmp_path / "x.png",
                  "--timings", photo, "--backend", "numpy")  # fmt: skip
    assert res.returncode == 2, res.stderr
    error_line(res.stderr, str(photo), "--timings names an input of this run")
    res = convcli("batch", src, tmp_path / "out", "--preset", "box",
                  "--report", photo2, "--backend", "numpy")  # fmt: skip
    assert res.returncode == 2, res.stderr
    error_line(res.stderr, str(photo2), "--report names an input of this run")
    assert snapshot(tmp_path) == before  # inputs as they were, no output, no report


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_side_file_linked_to_an_input_is_refused(tmp_path, link):
    (photo,) = make_inputs(tmp_path / "in", 1)
    alias = tmp_path / "alias.json"
    alias.symlink_to(photo) if link == "symlink" else os.link(photo, alias)
    before = photo.read_bytes()
    for overwrite in ([], ["--overwrite"]):  # --overwrite never allows an input
        res = run("batch", tmp_path / "in", tmp_path / "out", "--preset", "box",
                  "--report", alias, "--backend", "numpy", *overwrite)  # fmt: skip
        assert res.exit_code == 2
        error_line(res.stderr, "alias.json", "names an input")
    assert photo.read_bytes() == before and not (tmp_path / "out").exists()


def test_side_file_naming_an_output_or_another_side_file_is_refused(tmp_path):
    make_inputs(tmp_path / "in", 2)
    out = tmp_path / "out"
    common = ("batch", tmp_path / "in", out, "--preset", "box", "--backend", "numpy")
    cases = [
        (["--report", out / "m001.png"], "--report names an output of this run"),
        (["--timings", out / "m000.png", "--overwrite"], "--timings names an output"),
        (["--report", tmp_path / "r.json", "--timings", tmp_path / "r.json"],
         "--report and --timings name the same file"),
        (["--report", out], "--report names the output folder"),
        (["--report", tmp_path / "in"], "--report names the input folder"),
        (["--timings", tmp_path / "in" / "m000.png" / "t.json"], "m000.png is a file, not a"),
    ]  # fmt: skip
    for extra, needle in cases:
        res = run(*common, *extra)
        assert res.exit_code == 2, res.output
        error_line(res.stderr, needle)
    assert not out.exists() and not (tmp_path / "r.json").exists()
    # apply: --timings equal to -o, or to the --weights file
    (photo, _) = sorted((tmp_path / "in").iterdir())
    np.save(tmp_path / "w.npy", np.full((3, 3), 1 / 9, np.float32))
    res = run("apply", photo, "--preset", "box", "-o", tmp_path / "o.png",
              "--timings", tmp_path / "o.png")  # fmt: skip
    assert res.exit_code == 2
    error_line(res.stderr, "--timings names an output of this run")
    res = run("apply", photo, "--weights", tmp_path / "w.npy", "-o", tmp_path / "o.png",
              "--timings", tmp_path / "w.npy", "--overwrite")  # fmt: skip
    assert res.exit_code == 2
    error_line(res.stderr, "--timings names an input of this run")
    assert not (tmp_path / "o.png").exists()


def test_existing_side_files_need_overwrite(tmp_path):
    (photo,) = make_inputs(tmp_path / "in", 1)
    report, timings = tmp_path / "report.json", tmp_path / "t.json"
    report.write_text("mine")
    timings.write_text("mine too")
    res = run("batch", tmp_path / "in", tmp_path / "out", "--preset", "box", "--report", report)
    assert res.exit_code == 2
    error_line(res.stderr, str(report), "--report file exists (pass --overwrite")
    res = run("apply", photo, "--preset", "box", "-o", tmp_path / "o.png", "--timings", timings)
    assert res.exit_code == 2
    error_line(res.stderr, str(timings), "--timings file exists")
    assert report.read_text() == "mine" and timings.read_text() == "mine too"
    assert not (tmp_path / "out").exists() and not (tmp_path / "o.png").exists()
    res = run("batch", tmp_path / "in", tmp_path / "out", "--preset", "box", "--report",
              report, "--overwrite", "--backend", "numpy", "-q")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(report.read_text())["outputs"] == [str(tmp_path / "out" / "m000.png")]
    res = run("apply", photo, "--preset", "box", "-o", tmp_path / "o.png", "--timings",
              timings, "--overwrite", "--backend", "numpy", "-q")  # fmt: skip
    assert res.exit_code == 0 and json.loads(timings.read_text())["done"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_rerun_replaces_its_own_report_but_not_other_json(tmp_path):
    """The README's resume command (--skip-existing --report r.json) works twice: a
    record convcli wrote is replaced; a user's JSON, even a near miss, is not."""
    make_inputs(tmp_path / "in", 2)
    report, timings = tmp_path / "r.json", tmp_path / "t.json"
    args = ("batch", tmp_path / "in", tmp_path / "out", "--preset", "box", "--backend",
            "numpy", "-q", "--skip-existing", "--report", report, "--timings", timings)  # fmt: skip
    assert run(*args).exit_code == 0
    assert json.loads(report.read_text())["done"] == 2
    res = run(*args)
    assert res.exit_code == 0, res.output
    second = json.loads(report.read_text())
    assert (second["done"], second["skipped"]) == (0, 2)
    assert json.loads(timings.read_text())["skipped"] == 2
    near_miss = {"done": 1, "failed": 0}  # no timings_s: not a record we wrote
    for content in (json.dumps(near_miss), "[1, 2]", "{not json"):
        report.write_text(content)
        res = run(*args)
        assert res.exit_code == 2
        error_line(res.stderr, str(report), "--report file exists")
        assert report.read_text() == content


def test_bench_and_presets_export_refuse_existing_files(tmp_path):
    rows = tmp_path / "rows.json"
    rows.write_text("keep")
    res = run("bench", "--suite", "quick", "--json", rows)  # refused before any timing
    assert res.exit_code == 2
    error_line(res.stderr, str(rows), "--json file exists")
    res = run("bench", "--suite", "quick", "--json", tmp_path / "r", "--csv", tmp_path / "r")
    assert res.exit_code == 2
    error_line(res.stderr, "--json and --csv name the same file")
    assert rows.read_text() == "keep" and not (tmp_path / "r").exists()

    kernel = tmp_path / "k.npy"
    kernel.write_bytes(b"mine")
    res = run("presets", "export", "box", "-o", kernel)
    assert res.exit_code == 2
    error_line(res.stderr, str(kernel), "-o file exists")
    assert kernel.read_bytes() == b"mine"
    assert run("presets", "export", "box", "-o", kernel, "--overwrite").exit_code == 0
    np.testing.assert_array_equal(np.load(kernel), np.float32(get_preset("box").kernel))
    toml = tmp_path / "my.toml"
    toml.write_text('description = "mine"\nkernel = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]\n')
    before = toml.read_bytes()
    alias = tmp_path / "alias.txt"  # -o takes no .toml: reach the preset file by a link
    alias.symlink_to(toml)
    res = run("presets", "export", str(toml), "-o", alias, "--overwrite")
    assert res.exit_code == 2
    error_line(res.stderr, "-o names an input of this run")
    assert toml.read_bytes() == before


def test_an_output_that_is_another_input_is_refused_even_with_overwrite(tmp_path):
    # apply a/sub/x.png a/x.png -o a --overwrite replaced a/x.png with sub/x.png's
    # result, then failed a/x.png itself: that input was lost
    box = np.asarray(get_preset("box").kernel)
    (tmp_path / "a" / "sub").mkdir(parents=True)
    top = cio.write_image(tmp_path / "a" / "x.png", image(0))
    sub = cio.write_image(tmp_path / "a" / "sub" / "x.png", image(1))
    expected, sub_bytes = reference(top, box), sub.read_bytes()  # x.png's own result
    res = convcli("apply", sub, top, "-o", tmp_path / "a", "--overwrite", "--preset", "box",
                  "--backend", "numpy", "-q")  # fmt: skip
    assert res.returncode == 1
    error_line(res.stderr, str(sub), f"output {top} is another input of this run")
    assert sub.read_bytes() == sub_bytes
    # replaced in place (--overwrite) from its own data, not from sub/x.png's
    assert float(np.max(np.abs(cio.read_image(top).data - expected))) <= LEVEL


def test_batch_into_a_folder_that_holds_in_dir(tmp_path):
    # the output folder excluded everything under it, in_dir included: "no images
    # found", exit 0, nothing done
    box = np.asarray(get_preset("box").kernel)
    in_dir = tmp_path / "in"
    make_inputs(in_dir, 2)
    make_inputs(in_dir / "in", 1)  # in/in/m000.png -> in/m000.png with -r: an input
    before = snapshot(in_dir)
    res = convcli("batch", in_dir, tmp_path, "--preset", "box", "--backend", "numpy", "-q")
    assert res.returncode == 0, res.stderr
    for name in ("m000.png", "m001.png"):
        assert matches(tmp_path / name, in_dir / name, box)
    res = convcli("batch", in_dir, tmp_path, "-r", "--overwrite", "--preset", "box",
                  "--backend", "numpy", "-q")  # fmt: skip
    assert res.returncode == 1
    error_line(res.stderr.split("convcli: summary:")[0], "in/in/m000.png: output",
               "is another input of this run")  # fmt: skip
    assert snapshot(in_dir) == before


def test_a_side_file_in_a_folder_we_cannot_write_is_refused_before_the_run(tmp_path, monkeypatch):
    # found only after the whole run (a bench suite, a batch), which was then lost
    src = tmp_path / "in"
    make_inputs(src, 2)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: deny as the kernel would for a user
        real_access = os.access
        monkeypatch.setattr(
            os, "access", lambda p, mode, **kw: Path(p) != locked and real_access(p, mode, **kw)
        )
    try:
        for args in (
            ["batch", src, tmp_path / "out", "--preset", "box", "--report", locked / "r.json"],
            ["apply", src / "m000.png", "--preset", "box", "-o", tmp_path / "o.png",
             "--timings", locked / "t.json"],
            ["presets", "export", "box", "-o", locked / "k.npy"],
        ):  # fmt: skip
            res = run(*args)
            assert res.exit_code == 2, res.output
            error_line(res.stderr, f"no permission to write in {locked}", "nothing was done")
        assert not (tmp_path / "out").exists() and not (tmp_path / "o.png").exists()
    finally:
        locked.chmod(0o755)


# ------------------------------------------------------ item 3: two batches, one folder
@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_two_batches_into_one_folder_claim_each_file_once(tmp_path, policy):
    srcs = make_inputs(tmp_path / "in", 24, size=(64, 64))
    out = tmp_path / "out"
    presets = {"a": "box:size=5", "b": "sharpen"}
    kernels = {k: np.asarray(get_preset(v).kernel) for k, v in presets.items()}
    extra = ["--skip-existing"] if policy == "skip" else []

    def start(k: str, preset: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "convcli", "batch", str(tmp_path / "in"), str(out),
               "--preset", preset, "--backend", "numpy", "--workers", "2", "-q",
               "--report", str(tmp_path / f"{k}.json"), *extra]  # fmt: skip
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=ENV)  # fmt: skip

    procs = {k: start(k, preset) for k, preset in presets.items()}
    results = {k: p.communicate(timeout=300) for k, p in procs.items()}
    reports = {k: json.loads((tmp_path / f"{k}.json").read_text()) for k in presets}
    claimed = {k: set(r["outputs"]) for k, r in reports.items()}
    assert not claimed["a"] & claimed["b"]  # never both 'done'
    assert claimed["a"] | claimed["b"] == {str(out / s.name) for s in srcs}
    for k, outputs in claimed.items():  # each file holds the result of the run claiming it
        for dst in outputs:
            assert matches(Path(dst), tmp_path / "in" / Path(dst).name, kernels[k]), (k, dst)
        others = len(srcs) - len(outputs)
        stderr = results[k][1]
        assert "Traceback" not in stderr
        if policy == "skip":
            assert procs[k].returncode == 0, stderr
            assert (reports[k]["skipped"], reports[k]["failed"]) == (others, 0)
        else:
            assert procs[k].returncode == (1 if others else 0), stderr
            assert (reports[k]["skipped"], reports[k]["failed"]) == (0, others)
            assert all("exists" in f["reason"] for f in reports[k]["failures"])
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


# --------------------------------------------------- item 4: killed runs, temporary files
def _kill_mid_write(tmp_path: Path, env: dict[str, str]) -> tuple[Path, Path]:
    """Start a batch of large PNGs and SIGKILL it while it is writing an output (an
    unnamed file open in OUT, or a named temporary file there). Returns (in, out)."""
    src, out = tmp_path / "in", tmp_path / "out"
    make_inputs(src, 6, size=(384, 512))
    out.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "convcli", "batch", str(src), str(out), "--preset", "box",
         "--backend", "numpy", "--workers", "2", "-q", "--bit-depth", "16"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    fds = Path(f"/proc/{proc.pid}/fd")

    def writing() -> bool:
        if any(p.name.startswith(".") for p in out.iterdir()):
            return True  # a named temporary file
        for fd in list(fds.glob("*")) if fds.is_dir() else []:
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith(f"{out}/#") and target.endswith("(deleted)"):
                    return True  # an unnamed O_TMPFILE file in OUT
        return False

    deadline = time.monotonic() + 120
    caught = False
    while not caught and time.monotonic() < deadline and proc.poll() is None:
        if writing():
            proc.send_signal(signal.SIGSTOP)  # frozen: still writing after the check?
            caught = writing()
            if not caught:
                proc.send_signal(signal.SIGCONT)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert caught and proc.returncode == -signal.SIGKILL, "the batch ended before a write"
    return src, out


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not cpub._tmpfile_usable(),
    reason="unnamed files need Linux O_TMPFILE",
)
def test_sigkill_mid_write_leaves_no_temporary_file(tmp_path):
    src, out = _kill_mid_write(tmp_path, ENV)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    box = np.asarray(get_preset("box").kernel)
    for dst in out.iterdir():  # what is there is complete and right
        assert matches(dst, src / dst.name, box)


@pytest.mark.skipif(os.name != "posix", reason="PIDs are checked with kill(pid, 0)")
def test_next_run_removes_temporary_files_of_a_killed_run(tmp_path):
    src, out = _kill_mid_write(tmp_path, {**ENV, cpub.NO_TMPFILE_ENV: "1"})
    stale = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert stale and all(".convcli-" in n for n in stale)
    live = out / f".z.png.convcli-{cpub._host_tag()}-{os.getpid()}-0123abcd.tmp"
    older = out / ".m000.png.1a2b3c4d.tmp"  # an earlier version's name: left alone
    live.write_bytes(b"still writing")
    older.write_bytes(b"?")
    res = convcli("batch", src, out, "--preset", "box", "--backend", "numpy", "-q",
                  "--skip-existing", "--bit-depth", "16")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == sorted(
        [live.name, older.name]
    )
    box = np.asarray(get_preset("box").kernel)
    assert sorted(p.name for p in out.glob("*.png")) == sorted(p.name for p in src.iterdir())
    for dst in out.glob("*.png"):
        assert matches(dst, src / dst.name, box)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_outputs_and_side_files_never_replace_a_fifo_or_a_stream_link(tmp_path):
    """`-o /dev/null` (no suffix) wrote a new /dev/null.png; `--timings /dev/null
    --overwrite` (as root) or a FIFO put a regular file in the special file's place, and
    `--timings /dev/stdout --overwrite` replaced the /dev/stdout link for the machine.
    A FIFO and a link into /proc stand in for them here."""
    (photo,) = make_inputs(tmp_path / "in", 1)
    fifo, link = tmp_path / "pipe", tmp_path / "stdout"
    os.mkfifo(fifo)
    link.symlink_to("/proc/self/fd/1")
    before = snapshot(tmp_path)
    for special, kind in ((fifo, "a FIFO"), (link, "a link to a process's open file")):
        res = run("apply", photo, "--preset", "box", "-o", special, "--backend", "numpy")
        assert res.exit_code == 1
        error_line(res.stderr, f"{special}: is {kind}", "nothing was written")
        res = run("apply", photo, "--preset", "box", "-o", tmp_path / "o.png",
                  "--timings", special, "--overwrite", "--backend", "numpy")  # fmt: skip
        assert res.exit_code == 2
        error_line(res.stderr, f"--timings names {kind}")
        res = run("bench", "--suite", "quick", "--json", special, "--overwrite")
        assert res.exit_code == 2
        error_line(res.stderr, f"--json names {kind}", "('-' is stdout)")
    # the FIFO kept its place; a FIFO or a link into /proc among a batch's outputs
    assert os.path.islink(link) and os.readlink(link) == "/proc/self/fd/1"
    os.mkfifo(tmp_path / "x.png")
    res = run("apply", photo, "--preset", "box", "-o", tmp_path / "x.png", "--backend", "numpy")
    assert res.exit_code == 1
    error_line(res.stderr, "x.png: is a FIFO")
    assert sorted(os.listdir(tmp_path)) == ["in", "pipe", "stdout", "x.png"]
    assert snapshot(tmp_path) == before
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / photo.name)
    res = run("batch", tmp_path / "in", out, "--preset", "box", "--overwrite",
              "--backend", "numpy")  # fmt: skip
    assert res.exit_code == 1
    assert f"{out / photo.name}: cannot write: it is a FIFO (named pipe)" in res.stderr
    assert sorted(os.listdir(out)) == [photo.name] and not (out / photo.name).is_file()


def test_an_output_never_replaces_the_weight_file(tmp_path):
    """`apply a.png -o k.npy --weights k.npy` wrote the result over the weight file, an
    input of the run, exit 0 and without --overwrite; a batch into the weight file's
    folder did the same for an image named like it."""
    (photo,) = make_inputs(tmp_path / "in", 1)
    kernel = tmp_path / "k.npy"
    np.save(kernel, np.full((3, 3), 1 / 9, np.float32))
    os.link(kernel, tmp_path / "hard.npy")
    (tmp_path / "soft.npy").symlink_to(kernel)
    before = snapshot(tmp_path)
    for out in ("k.npy", "hard.npy", "soft.npy"):
        for overwrite in ([], ["--overwrite"]):  # --overwrite never allows an input
            res = run("apply", photo, "-o", tmp_path / out, "--weights", kernel,
                      "--backend", "numpy", *overwrite)  # fmt: skip
            assert res.exit_code == 2
            error_line(res.stderr, f"{out}: the output would replace the --weights file")
    (tmp_path / "in" / "k.png").write_bytes(photo.read_bytes())
    res = run("batch", tmp_path / "in", tmp_path, "--weights", kernel, "--format", "npy",
              "--overwrite", "--backend", "numpy")  # fmt: skip
    assert res.exit_code == 2
    error_line(res.stderr, "k.npy: the output would replace the --weights file")
    after = snapshot(tmp_path)
    del after["in/k.png"]
    assert after == before
