"""``convcli batch`` and the library runner (convcli.batch): bad files, trees, resume,
interrupts, faults. Outputs are checked through the API against the naive reference."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from naive import naive_conv2d

import convcli
from convcli import batch as cbatch
from convcli import io as cio
from convcli import pipeline, small
from convcli.cli import cli
from convcli.errors import ConvValueError, InputError

ROOT = Path(__file__).resolve().parent.parent
LEVEL = 1 / 255 + 1e-6
BOX3 = np.full((3, 3), 1 / 9)


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def real_image(seed: int, shape=(3, 24, 32)) -> np.ndarray:
    """A crop of a real sample (varied per seed) as float data in [0, 1]."""
    from PIL import Image

    names = ["astronaut.png", "coffee.png", "camera.png", "horse.png"]
    with Image.open(ROOT / "samples" / names[seed % 4]) as im:
        im = im.convert("RGB" if shape[0] == 3 else "L")
        h, w = shape[1:]
        x0, y0 = 20 + 7 * seed % 200, 30 + 5 * seed % 150
        arr = np.asarray(im.crop((x0, y0, x0 + w, y0 + h)), np.float32) / 255
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)


def make_tree(root: Path) -> dict[str, Path]:
    """Good images (png, jpg, 16-bit png, gray) and broken files side by side."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub" / "deeper").mkdir(parents=True)
    good = {
        "a.png": root / "a.png",
        "b.jpg": root / "b.jpg",
        "gray.png": root / "gray.png",
        "sub/c16.png": root / "sub" / "c16.png",
        "sub/deeper/d.tif": root / "sub" / "deeper" / "d.tif",
    }
    cio.write_image(good["a.png"], real_image(0))
    cio.write_image(good["b.jpg"], real_image(1), quality=95)
    cio.write_image(good["gray.png"], real_image(2, (1, 20, 18)))
    cio.write_image(good["sub/c16.png"], real_image(3), bit_depth=16)
    cio.write_image(good["sub/deeper/d.tif"], real_image(4))
    png = (root / "a.png").read_bytes()
    (root / "empty.png").write_bytes(b"")
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "text.jpg").write_text("this is not a JPEG\n")
    (root / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)
    (root / "notes.txt").write_text("ignored: not an image suffix\n")
    (root / ".hidden.png").write_bytes(png)
    return good


def reference(path: Path, kernel=BOX3, mode="replicate") -> np.ndarray:
    x = cio.read_image(path).data.astype(np.float64)
    c = x.shape[0]
    k = np.asarray(kernel, np.float64)
    th, tw = k.shape[0] - 1, k.shape[1] - 1
    pad = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    w = np.broadcast_to(k, (c, 1, *k.shape))
    return np.clip(naive_conv2d(x[None], w, None, (1, 1), pad, (1, 1), c, mode)[0].real, 0, 1)


def check_output(src: Path, dst: Path, kernel=BOX3, tol=LEVEL) -> None:
    out = cio.read_image(dst)
    ref = reference(src, kernel)
    assert out.data.shape == ref.shape
    assert float(np.max(np.abs(out.data - ref))) <= tol, dst


# ---------------------------------------------------------------------------- CLI batches
def test_batch_with_broken_files_mixed_in(tmp_path):
    good = make_tree(tmp_path / "in")
    out, report = tmp_path / "out", tmp_path / "report.json"
    res = run("batch", tmp_path / "in", out, "--preset", "box", "--report", report,
              "--backend", "numpy")  # fmt: skip
    assert res.exit_code == 1
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("convcli: error:")]
    assert len(errors) == 3
    for name in ("empty.png", "truncated.png", "text.jpg"):
        assert sum(name in ln for ln in errors) == 1, (name, errors)
    assert "Traceback" not in res.output
    assert "3 done, 0 skipped, 3 failed" in res.stderr
    for name in ("a.png", "b.jpg", "gray.png"):
        check_output(good[name], out / name, tol=LEVEL if name != "b.jpg" else 3 / 255)
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.jpg", "gray.png"]
    data = json.loads(report.read_text())
    assert data["done"] == 3 and data["failed"] == 3 and data["skipped"] == 0
    assert sorted(Path(f["file"]).name for f in data["failures"]) == [
        "empty.png", "text.jpg", "truncated.png",
    ]  # fmt: skip
    assert all(f["reason"] for f in data["failures"])


def test_recursive_mirrors_tree_and_keeps_formats(tmp_path):
    good = make_tree(tmp_path / "in")
    out = tmp_path / "out"
    res = run("batch", tmp_path / "in", out, "--recursive", "--kernel", "1,1,1;1,1,1;1,1,1",
              "--normalize-kernel", "--backend", "numpy", "-q")  # fmt: skip
    assert res.exit_code == 1  # the broken files
    assert "broken.jpg" in res.stderr
    for rel, src in good.items():
        dst = out / rel
        assert dst.exists(), rel
        check_output(src, dst, tol=LEVEL if not rel.endswith("jpg") else 3 / 255)
    assert cio.read_image(out / "sub" / "c16.png").bit_depth == 16
    assert not (out / ".hidden.png").exists() and not (out / "notes.txt").exists()


def test_glob_and_format(tmp_path):
    make_tree(tmp_path / "in")
    out = tmp_path / "out"
    res = run("batch", tmp_path / "in", out, "--glob", "*.png", "--format", "tif",
              "--preset", "gaussian", "--backend", "numpy", "-q")  # fmt: skip
    assert res.exit_code == 1  # empty.png and truncated.png still fail
    assert sorted(p.name for p in out.iterdir()) == ["a.tif", "gray.tif"]


def test_output_inside_input_is_not_read_back(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    cio.write_image(src / "a.png", real_image(0))
    cio.write_image(src / "b.png", real_image(1))
    out = src / "out"
    for _ in range(2):  # the second run must not pick up out/a.png as an input
        res = run("batch", src, out, "--recursive", "--preset", "box", "--overwrite",
                  "--backend", "numpy", "-q")  # fmt: skip
        assert res.exit_code == 0, res.output
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["a.png", "b.png"]


def test_same_folder_is_refused(tmp_path):
    cio.write_image(tmp_path / "a.png", real_image(0))
    before = (tmp_path / "a.png").read_bytes()
    res = run("batch", tmp_path, tmp_path, "--preset", "box", "--overwrite")
    assert res.exit_code == 1
    assert "output folder must differ" in res.stderr
    assert (tmp_path / "a.png").read_bytes() == before


def test_existing_outputs_skip_overwrite_or_fail(tmp_path):
    make_tree(tmp_path / "in")
    out = tmp_path / "out"
    run("batch", tmp_path / "in", out, "--preset", "box", "--backend", "numpy", "-q")
    files = sorted(out.iterdir())
    stamps = {p: p.stat().st_mtime_ns for p in files}
    old = 1_000_000_000
    for p in files:
        os.utime(p, ns=(old, old))
    res = run("batch", tmp_path / "in", out, "--preset", "sharpen", "--skip-existing",
              "--backend", "numpy")  # fmt: skip
    assert "0 done, 3 skipped, 3 failed" in res.stderr
    assert all(p.stat().st_mtime_ns == old for p in files)
    res = run("batch", tmp_path / "in", out, "--preset", "box", "--backend", "numpy")
    assert res.exit_code == 1 and "exists" in res.stderr
    assert all(p.stat().st_mtime_ns == old for p in files)
    res = run("batch", tmp_path / "in", out, "--preset", "box", "--overwrite",
              "--backend", "numpy")  # fmt: skip
    assert all(p.stat().st_mtime_ns != old for p in files)
    assert stamps  # outputs were there to begin with
    both = run("batch", tmp_path / "in", out, "--preset", "box", "--overwrite",
               "--skip-existing")  # fmt: skip
    assert both.exit_code == 2


def test_max_pixels_refuses_large_images_decoded_whole(tmp_path):
    """max_pixels guards the formats decoded whole (WebP here: decompression bombs);
    a PNG read by strips streams whatever its size."""
    src = tmp_path / "in"
    src.mkdir()
    cio.write_image(src / "small.webp", real_image(0, (3, 10, 10)))
    cio.write_image(src / "large.webp", real_image(1, (3, 40, 40)))
    cio.write_image(src / "streamed.png", real_image(2, (3, 40, 40)))
    res = run("batch", src, tmp_path / "out", "--preset", "box", "--max-pixels", "500",
              "--backend", "numpy", "-q")  # fmt: skip
    assert res.exit_code == 1
    assert "large.webp" in res.stderr and "--max-pixels" in res.stderr
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["small.webp", "streamed.png"]


def test_max_memory_tiles_give_the_same_result(tmp_path, monkeypatch):
    # --max-memory counts the whole process; pinned to 0 here (this one is pytest), the
    # 64M leave the convolution less than its whole need, so it runs in tiles
    monkeypatch.setattr(cbatch, "process_bytes", lambda: 0)
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)  # larger than the samples: a smooth random image
    smooth = np.cumsum(np.cumsum(rng.random((3, 1200, 1000)), axis=1), axis=2)
    cio.write_image(src / "a.png", (smooth / smooth.max()).astype(np.float32))
    run("batch", src, tmp_path / "whole", "--preset", "gaussian:sigma=2", "-q", "--backend",
        "numpy")  # fmt: skip
    res = run("batch", src, tmp_path / "tiled", "--preset", "gaussian:sigma=2", "--backend",
              "numpy", "--max-memory", "64M", "--timings", tmp_path / "t.json", "-q")  # fmt: skip
    assert res.exit_code == 0
    assert json.loads((tmp_path / "t.json").read_text())["tiles"] > 1
    whole = cio.read_image(tmp_path / "whole" / "a.png").data
    tiled = cio.read_image(tmp_path / "tiled" / "a.png").data
    assert np.array_equal(whole, tiled)


def test_empty_folder_is_not_an_error(tmp_path):
    (tmp_path / "in").mkdir()
    res = run("batch", tmp_path / "in", tmp_path / "out", "--preset", "box")
    assert res.exit_code == 0
    assert "no images found" in res.stderr


def test_missing_input_folder(tmp_path):
    res = run("batch", tmp_path / "nope", tmp_path / "out", "--preset", "box")
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope" in lines[0] and lines[0].startswith("convcli: error:")


# ---------------------------------------------------------------------------- library
def test_filter_for_channels_infers_groups():
    f = cbatch.Filter(weight=np.ones((3, 3), np.float32), bias=np.array([0.5], np.float32))
    w, b, g = f.for_channels(4)
    assert w.shape == (4, 1, 3, 3) and g == 4 and b.tolist() == [0.5] * 4
    f4 = cbatch.Filter(weight=np.ones((6, 1, 3, 3), np.float32))
    assert f4.for_channels(3)[2] == 3
    with pytest.raises(ConvValueError, match="2 channels"):
        cbatch.Filter(weight=np.ones((6, 3, 3, 3), np.float32)).for_channels(2)
    with pytest.raises(ConvValueError, match="bias has 2 values"):
        cbatch.Filter(weight=np.ones((3, 3), np.float32), bias=np.ones(2)).for_channels(3)
    assert cbatch.Filter(weight=np.ones((3, 5)), stride=2).resolved_padding() == (1, 2)
    assert cbatch.Filter(weight=np.ones((3, 5))).resolved_padding() == "same"


def test_plan_files_refuses_input_and_duplicates(tmp_path):
    a = tmp_path / "a.png"
    cio.write_image(a, real_image(0))
    plan = cbatch.plan_files([a], a)
    assert not plan.tasks and "overwrite=True" in plan.refused[0].reason
    assert cbatch.plan_files([a], a, overwrite=True).tasks[0].dst == a
    (tmp_path / "x").mkdir()
    cio.write_image(tmp_path / "x" / "a.jpg", real_image(1))
    plan = cbatch.plan_files([a, tmp_path / "x" / "a.jpg"], tmp_path / "out", fmt="png")
    assert len(plan.tasks) == 1 and "already written" in plan.refused[0].reason


def _tasks(tmp_path: Path, n: int) -> list[cbatch.Task]:
    (tmp_path / "in").mkdir(exist_ok=True)
    tasks = []
    for i in range(n):
        src = tmp_path / "in" / f"{i:02d}.png"
        cio.write_image(src, real_image(i))
        tasks.append(cbatch.Task(src, tmp_path / "out" / src.name))
    return tasks


def test_stop_event_finishes_current_image_only(tmp_path):
    tasks = _tasks(tmp_path, 8)
    stop = threading.Event()

    def on_event(event):
        if event.kind == "done":
            stop.set()

    filt = cbatch.Filter(weight=BOX3.astype(np.float32))
    result = cbatch.run_tasks(tasks, filt, engine=cbatch.Engine(backend="numpy"), stop=stop,
                              on_event=on_event, workers=2)  # fmt: skip
    assert result.interrupted
    assert 1 <= len(result.done) < 8 and not result.failed
    written = sorted((tmp_path / "out").iterdir())
    assert written == sorted(t.dst for t in result.done)
    for task in result.done:
        check_output(task.src, task.dst)


def test_full_disk_stops_the_batch(tmp_path, monkeypatch):
    tasks = _tasks(tmp_path, 6)
    real_publish = pipeline.publish
    calls = []

    def failing_publish(path, write, **kw):
        calls.append(path)
        if len(calls) >= 2:
            raise InputError(f"{path}: cannot write: no space left on device")
        return real_publish(path, write, **kw)

    monkeypatch.setattr(pipeline, "publish", failing_publish)
    monkeypatch.setattr(small, "publish", failing_publish)  # whole small images
    filt = cbatch.Filter(weight=BOX3.astype(np.float32))
    result = cbatch.run_tasks(tasks, filt, engine=cbatch.Engine(backend="numpy"), workers=2)
    assert result.fatal is not None and "no space left" in result.fatal
    assert not result.ok
    assert len(result.done) + len(result.failed) < 6  # stopped early
    assert sorted((tmp_path / "out").iterdir()) == sorted(t.dst for t in result.done)


def test_bad_channel_count_is_one_failure(tmp_path):
    tasks = _tasks(tmp_path, 2)
    gray = tmp_path / "in" / "gray.png"
    cio.write_image(gray, real_image(2, (1, 16, 16)))
    tasks.append(cbatch.Task(gray, tmp_path / "out" / "gray.png"))
    filt = cbatch.Filter(weight=np.full((3, 3, 3, 3), 1 / 27, np.float32))  # RGB only
    result = cbatch.run_tasks(tasks, filt, engine=cbatch.Engine(backend="numpy"))
    assert len(result.done) == 2
    assert len(result.failed) == 1 and "has 1 channel" in result.failed[0].reason


# ---------------------------------------------------------------------------- signals
_CHILD_ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _start_slow_batch(tmp_path, images: int, *extra: str) -> tuple[subprocess.Popen, Path, Path]:
    """A 9x9 box-blur batch of ``images`` PNGs in a subprocess, returned once its first
    output exists (or it ended): (process, input folder, output folder)."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(images):
        cio.write_image(src / f"img{i:02d}.png", real_image(i, (3, 160, 200)))
    cmd = [sys.executable, "-m", "convcli", "batch", str(src), str(out), "--kernel",
           ";".join([",".join(["1"] * 9)] * 9), "--normalize-kernel", "--algo", "direct",
           "--backend", "numpy", "--workers", "2", *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_CHILD_ENV, cwd=tmp_path)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and any(p.suffix == ".png" for p in out.iterdir()):
            break
        time.sleep(0.01)
    return proc, src, out


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_then_resume_with_skip_existing(tmp_path, signum, code):
    proc, src, out = _start_slow_batch(tmp_path, 40)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert "Traceback" not in stderr
    done = sorted(p for p in out.iterdir() if not p.name.startswith("."))
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    if proc.returncode == 0:  # finished before the signal landed: nothing to resume
        assert len(done) == 40
    else:
        assert proc.returncode == code, stderr
        assert "interrupted" in stderr and "--skip-existing" in stderr
        assert 1 <= len(done) < 40
    kernel = np.full((9, 9), 1 / 81)
    for p in done:  # every output written before the stop is complete and right
        check_output(src / p.name, p, kernel)
    stamps = {p: p.stat().st_mtime_ns for p in done}
    again = subprocess.run([*proc.args, "--skip-existing"], capture_output=True, text=True,
                           env=_CHILD_ENV, timeout=300, cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert f"{40 - len(done)} done, {len(done)} skipped, 0 failed" in again.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    final = sorted(out.iterdir())
    assert len(final) == 40
    for p in final[:: max(1, len(final) // 8)]:
        check_output(src / p.name, p, kernel)


def test_full_disk_message_through_the_cli(tmp_path, monkeypatch):
    _tasks(tmp_path, 5)

    def no_space(path, write, **kw):
        raise InputError(f"{path}: cannot write: no space left on device")

    monkeypatch.setattr(pipeline, "publish", no_space)
    monkeypatch.setattr(small, "publish", no_space)
    res = run("batch", tmp_path / "in", tmp_path / "out", "--preset", "box", "--backend",
              "numpy", "--workers", "2")  # fmt: skip
    assert res.exit_code == 1
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("convcli: error:")]
    assert len(errors) == 1 and "no space left" in errors[0], res.stderr
    assert "stopped" in res.stderr and "not processed" in res.stderr
    assert not any((tmp_path / "out").rglob("*.png"))


def _rgba(seed: int = 3, size=(14, 11)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.random((4, *size)).astype(np.float32)
    data[3, :, : size[1] // 2] = 0.0  # a transparent half
    return data


@pytest.mark.parametrize(
    ("shape", "stride", "mode", "note"),
    [
        ((4, 4, 3, 3), 1, "premultiply", None),
        ((4, 4, 3, 3), 2, "premultiply", None),
        ((4, 4, 3, 3), 1, "premultiply-keep", "alpha kept unfiltered (the weight's alpha"),
        ((4, 4, 3, 3), 2, "premultiply-keep", "alpha kept unfiltered (the weight's alpha"),
        ((4, 1, 3, 3), 1, "premultiply-keep", "alpha kept unfiltered (the weight's alpha"),
        ((3, 4, 3, 3), 1, "filter", "alpha filtered as a plain channel"),
        ((1, 4, 3, 3), 1, "filter", "alpha filtered as a plain channel"),
        ((3, 3, 3, 3), 1, "keep", "alpha kept unfiltered (the weight takes"),
        ((3, 3, 3, 3), 2, "keep", "alpha kept unfiltered (the weight takes"),
        ((1, 3, 3, 3), 1, "drop", "alpha dropped"),
        ((2, 2, 3, 3), 1, "filter", "alpha filtered as a plain channel"),
    ],
)
def test_alpha_rule_for_4d_weights(tmp_path, shape, stride, mode, note):
    """RGBA image, 4-D weight: the rule picked, its note, and the written result.

    Random weights: the alpha output's taps sum to about 0.5 (kept); for the
    ``premultiply`` cases they are scaled to sum 1 (filtered)."""
    rng = np.random.default_rng(7)
    w = (rng.random(shape) / np.prod(shape[1:])).astype(np.float32)
    if mode == "premultiply":
        w[-1] /= w[-1].sum(dtype=np.float64)
    filt = cbatch.Filter(weight=w, stride=stride, padding_mode="reflect")
    got_mode, got_note = cbatch.alpha_rule(filt, 4, "premultiply")
    assert got_mode == mode
    assert (got_note is None) if note is None else got_note.startswith(note), got_note
    src, dst = tmp_path / "in.png", tmp_path / "out.npy"
    cio.write_image(src, _rgba())
    x = cio.read_image(src).data.astype(np.float64)
    events = []
    res = cbatch.run_tasks(
        [cbatch.Task(src, dst)], filt, engine=cbatch.Engine("numpy"), on_event=events.append
    )
    assert res.ok, res.failed
    assert events[0].notes == (() if note is None else (got_note,))
    assert res.summary()["file_notes"] == (
        [] if note is None else [{"file": str(src), "note": got_note}]
    )
    groups = (
        4 // shape[1] if mode in ("premultiply", "premultiply-keep", "filter") else 3 // shape[1]
    )

    def conv(inp):
        return naive_conv2d(
            inp[None], w.astype(np.float64), None, (stride, stride), (1, 1, 1, 1), (1, 1),
            groups, "reflect",
        )[0].real  # fmt: skip

    # the kernel's centre over the input: with padding 1 that is every stride-th pixel
    kept = x[3:, ::stride, ::stride]
    premultiplied = np.concatenate([x[:3] * x[3:], x[3:]])
    if mode == "premultiply":
        y = conv(premultiplied)
        a = y[3:]
        ref = np.concatenate([np.where(a > 0, y[:3] / np.where(a > 0, a, 1), 0), a])
    elif mode == "premultiply-keep":
        y = conv(premultiplied)
        colour = np.where(kept > 0, y[:3] / np.where(kept > 0, kept, 1), 0)
        ref = np.concatenate([colour, kept])
    elif mode == "filter":
        ref = conv(x)
    elif mode == "keep":
        ref = np.concatenate([conv(x[:3]), kept])
    else:
        ref = conv(x[:3])
    np.testing.assert_allclose(np.load(dst), ref, rtol=1e-5, atol=1e-5)


def test_alpha_rule_for_2d_kernels_and_explicit_modes():
    box = cbatch.Filter(weight=BOX3.astype(np.float32))
    assert cbatch.alpha_rule(box, 4, "premultiply") == ("premultiply", None)
    assert cbatch.alpha_rule(box, 2, "premultiply") == ("premultiply", None)
    # a 2-D kernel's bias is the colour's (alpha takes none): box + 0.5 filters alpha
    biased = cbatch.Filter(weight=BOX3.astype(np.float32), bias=np.float32(0.5))
    assert cbatch.alpha_rule(biased, 4, "premultiply") == ("premultiply", None)
    # groups=1: every output sums the 4 channels, so the alpha's filter sums to 4
    assert cbatch.alpha_rule(replace(box, groups=1), 4, "premultiply") == (
        "premultiply-keep",
        "alpha kept unfiltered (the kernel sums to 4, not 1)",
    )
    sobel = cbatch.Filter(weight=np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float32))
    assert cbatch.alpha_rule(sobel, 4, "premultiply") == (
        "premultiply-keep",
        "alpha kept unfiltered (the kernel sums to 0, not 1)",
    )
    assert cbatch.alpha_rule(sobel, 1, "premultiply") == ("premultiply", None)
    w = np.ones((3, 4, 3, 3), np.float32)
    for alpha in ("keep", "filter", "drop"):
        assert cbatch.alpha_rule(cbatch.Filter(weight=w), 4, alpha) == (alpha, None)
        assert cbatch.alpha_rule(sobel, 4, alpha) == (alpha, None)


def test_eight_bit_formats_warn_about_what_they_lose(tmp_path):
    src = tmp_path / "in.png"
    cio.write_image(src, _rgba())
    filt = cbatch.Filter(weight=BOX3.astype(np.float32))
    events = []
    tasks = [cbatch.Task(src, tmp_path / "o.jpg"), cbatch.Task(src, tmp_path / "o.png")]
    res = cbatch.run_tasks(
        tasks,
        filt,
        engine=cbatch.Engine("numpy"),
        output=cbatch.Output(bit_depth=16),
        on_event=events.append,
    )
    assert res.ok
    notes = {e.task.dst.suffix: e.notes for e in events}
    assert notes[".png"] == ()
    assert [n.split(":")[0] for n in notes[".jpg"]] == [
        "JPEG holds 8 bits per channel",
        "JPEG has no alpha channel",
    ]
    assert cio.read_image(tmp_path / "o.jpg").mode == "RGB"
    assert cio.read_image(tmp_path / "o.png").bit_depth == 16
    events.clear()
    cbatch.run_tasks(
        tasks[:1],
        filt,
        engine=cbatch.Engine("numpy"),
        output=cbatch.Output(alpha="drop"),
        existing="replace",
        on_event=events.append,
    )
    assert events[0].kind == "done" and events[0].notes == ()


@pytest.mark.slow
def test_second_interrupt_aborts_at_once_without_partial_files(tmp_path):
    proc, src, out = _start_slow_batch(tmp_path, 30, "-q")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert "Traceback" not in stderr
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    done = sorted(p for p in out.iterdir() if not p.name.startswith("."))
    if proc.returncode == 130 and "aborted" in stderr:
        assert "convcli: summary: aborted" in stderr and "--skip-existing" in stderr
        assert [ln for ln in stderr.splitlines() if not ln.strip()] == []  # no blank line
    else:  # the first stop finished before the second signal landed
        assert proc.returncode in (0, 130), stderr
    kernel = np.full((9, 9), 1 / 81)
    for p in done:
        check_output(src / p.name, p, kernel)


def test_nothing_found_says_why(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    cio.write_image(tmp_path / "in" / "sub" / "a.png", real_image(0))
    res = run("batch", tmp_path / "in", tmp_path / "out", "--preset", "box")
    assert res.exit_code == 0
    assert "no images found" in res.stderr and "--recursive" in res.stderr
    res = run(
        "batch", tmp_path / "in", tmp_path / "out", "--preset", "box", "-r", "--glob", "*.jpg"
    )
    assert res.exit_code == 0 and "no files matching '*.jpg'" in res.stderr
    assert "--recursive" not in res.stderr
    assert not (tmp_path / "out").exists()


def test_alpha_set_aside_is_named_when_the_weight_wants_it(tmp_path):
    src = tmp_path / "in.png"
    cio.write_image(src, _rgba())
    filt = cbatch.Filter(weight=np.full((3, 4, 3, 3), 1 / 36, np.float32))
    task = cbatch.Task(src, tmp_path / "o.png")
    engine, output = cbatch.Engine("numpy"), cbatch.Output(alpha="keep")
    res = cbatch.run_tasks([task], filt, engine=engine, output=output)
    (failure,) = res.failed
    assert "has 3 channels" in failure.reason and "alpha='keep' sets alpha aside" in failure.reason
    assert not (tmp_path / "o.png").exists()


def test_a_file_where_the_output_folder_should_be(tmp_path):
    _tasks(tmp_path, 2)
    blocker = tmp_path / "out"
    blocker.write_text("not a folder")
    res = run("batch", tmp_path / "in", blocker, "--preset", "box")
    assert res.exit_code == 1
    assert res.stderr.strip() == f"convcli: error: {blocker}: the output folder is a file"
    src = tmp_path / "in" / "00.png"
    res = run("apply", src, "--preset", "box", "-o", blocker / "x.png", "--backend", "numpy")
    assert res.exit_code == 1
    (line,) = res.stderr.strip().splitlines()
    assert (
        line
        == f"convcli: error: {src}: cannot create the output folder {blocker}: {blocker} is a file"
    )
    assert blocker.read_text() == "not a folder"


def test_run_tasks_reports_rows_of_a_large_single_image(tmp_path, monkeypatch):
    import convcli.api

    monkeypatch.setattr(convcli.api, "PROGRESS_MIN_FLOPS", 1)  # treat it as large
    src = tmp_path / "in.png"
    rgb = np.random.default_rng(0).integers(0, 255, (120, 90, 3), dtype=np.uint8)
    cio.write_image(src, rgb.transpose(2, 0, 1) / 255.0)
    filt = cbatch.Filter(weight=BOX3.astype(np.float32))
    tasks = cbatch.plan_files([src], tmp_path / "out.png").tasks
    rows: list[tuple[int, int]] = []
    # strips of 16 rows: the progress comes strip by strip (the native-depth step) or
    # from conv2d's bands within them
    result = cbatch.run_tasks(tasks, filt, on_rows=lambda *a: rows.append(a), strip_rows=16)
    assert len(result.done) == 1 and len(rows) > 4
    assert rows[-1] == (120, 120)
    back = cio.read_image(tmp_path / "out.png").data
    ref = naive_conv2d(rgb.transpose(2, 0, 1)[:, None] / 255.0, BOX3[None, None],
                       pad=(1, 1, 1, 1), padding_mode="replicate")[:, 0]  # fmt: skip
    assert np.abs(back - ref).max() <= LEVEL


@pytest.mark.parametrize(
    "make",
    [
        lambda: cbatch.Output(out_map="clamp"),
        lambda: cbatch.Output(alpha="premultiplied"),
        lambda: cbatch.Output(bit_depth=12),
        lambda: cbatch.Output(quality=0),
        lambda: cbatch.Output(quality=500),
    ],
)
def test_output_refuses_bad_values_at_once(make) -> None:
    # a mistake in Output is one exception naming the argument, not a failure per file
    # (quality=500 was written silently, Pillow clamping it)
    with pytest.raises(ConvValueError, match=r"out_map|alpha|bit_depth|quality"):
        make()


@pytest.mark.parametrize("kw", [{"existing": "overwrite"}, {"workers": 0}, {"workers": -2}])
def test_run_tasks_refuses_bad_arguments(tmp_path: Path, kw) -> None:
    # existing='overwrite' used to run as 'fail', each file failing with "another run wrote
    # it meanwhile", and workers=0 / -2 ran with the default: both are caller mistakes
    src = tmp_path / "in.png"
    cio.write_image(src, real_image(1))
    (tmp_path / "out.png").write_bytes(b"mine")
    plan = cbatch.plan_files([src], tmp_path / "out.png")
    from convcli import Filter

    with pytest.raises(ConvValueError, match=next(iter(kw))):
        cbatch.run_tasks(plan.tasks, Filter.from_array(BOX3), **kw)
    assert (tmp_path / "out.png").read_bytes() == b"mine"


def test_a_missing_device_is_one_notice(tmp_path: Path, monkeypatch, ocl) -> None:
    # a device that does not exist: the small-image step said "OpenCL failed (...)" and
    # conv2d "OpenCL unavailable (...)", two notice lines for one cause in one batch
    # (auto's choice is forced: whether it starts OpenCL depends on the machine's load)
    from convcli import native
    from convcli.runinfo import RunInfo

    monkeypatch.setattr(native, "choose_backend", lambda *a, **k: "opencl")
    strip = np.random.default_rng(5).integers(0, 256, (12, 16, 3), np.uint8)
    info = RunInfo()
    got = native.filter_strip(strip, top=255.0, kernel=BOX3.astype(np.float32),
                              backend="auto", device="9:9", info=info)  # fmt: skip
    assert len(info.notices) == 1
    assert info.notices[0].startswith("OpenCL unavailable (no OpenCL device matches '9:9'")
    call = RunInfo()
    convcli.conv2d(np.zeros((1, 1, 8, 8), np.float32), np.ones((1, 1, 3, 3), np.float32),
                   backend="auto", device="9:9", algo="direct", info=call)  # fmt: skip
    if call.notices:  # the same cause through conv2d: the same line, merged into one
        assert call.notices == info.notices
    x = (strip / 255.0).transpose(2, 0, 1)[None]
    w = np.broadcast_to(BOX3, (3, 1, 3, 3))
    ref = naive_conv2d(x, w, None, (1, 1), (0, 0, 0, 0), (1, 1), 3, "zeros")[0].real
    assert got is not None
    assert np.abs(got.transpose(2, 0, 1) - np.round(ref * 255)).max() <= 1


def test_run_tasks_on_a_plan_reports_its_refused_inputs(tmp_path: Path) -> None:
    # README's library example passed plan.tasks: an input the plan refused (its output
    # is the input; two inputs for one output) vanished, and result.ok was True
    from convcli import Filter

    src = tmp_path / "in"
    src.mkdir()
    cio.write_image(src / "a.png", real_image(2))
    cio.write_image(src / "b.png", real_image(3))
    cio.write_image(src / "b.tif", real_image(4))
    filt = Filter.from_array(BOX3)
    lib = cbatch.run_tasks(cbatch.plan_batch(src, tmp_path / "lib", fmt="png"), filt,
                           existing="fail")  # fmt: skip
    assert not lib.ok
    assert [(f.path.name, "already written from" in f.reason) for f in lib.failed] == [
        ("b.tif", True)
    ]
    res = run("batch", src, tmp_path / "cli", "--preset", "box:size=3", "--format", "png",
              "--report", tmp_path / "r.json", "-q")  # fmt: skip
    assert res.exit_code == 1
    report = json.loads((tmp_path / "r.json").read_text())
    got = lib.summary()
    assert (got["done"], got["failed"]) == (report["done"], report["failed"]) == (2, 1)
    same = [{**f, "reason": f["reason"].replace("/cli/", "/lib/")} for f in report["failures"]]
    assert got["failures"] == same
    for name in ("a.png", "b.png"):
        check_output(src / name, tmp_path / "lib" / name)
        assert (tmp_path / "lib" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes()
    missing = cbatch.run_tasks(cbatch.plan_files([src / "a.png"], src / "a.png"), filt)
    assert not missing.ok and "output is the input file" in missing.failed[0].reason


@pytest.mark.parametrize("mode", ["fail", "skip", "replace"])
def test_a_link_to_the_input_where_its_output_goes_is_an_existing_output(tmp_path, mode):
    # README: a link where an output goes counts as an existing file, never followed;
    # --overwrite replaces the link itself. A link to the input's own file was refused as
    # "output would replace the input", a failure even under --skip-existing (a resume
    # never exited 0)
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    cio.write_image(src / "a.png", real_image(6))
    before = (src / "a.png").read_bytes()
    (out / "a.png").symlink_to(src / "a.png")
    flag = {"fail": [], "skip": ["--skip-existing"], "replace": ["--overwrite"]}[mode]
    res = run("batch", src, out, "--preset", "box:size=3", "-q", *flag)
    assert (src / "a.png").read_bytes() == before  # the input is never written
    if mode == "fail":
        assert res.exit_code == 1 and "exists" in res.stderr
        assert (out / "a.png").is_symlink()
    elif mode == "skip":
        assert res.exit_code == 0, res.stderr
        assert (out / "a.png").is_symlink()
    else:
        assert res.exit_code == 0, res.stderr
        assert not (out / "a.png").is_symlink()
        check_output(src / "a.png", out / "a.png")


@pytest.mark.parametrize("reverse", [False, True])
def test_an_output_needing_a_folder_where_another_is_a_file_is_refused_when_planned(
    tmp_path: Path, reverse: bool
) -> None:
    """in/a.jpg -> out/a.png and in/a.png/b.png -> out/a.png/b.png: one of the two
    failed while running, which one depending on the threads, sometimes as "another run
    wrote it meanwhile" (false). Now the plan refuses the one that needs the folder,
    naming the input that writes the file, whatever order the inputs come in."""
    src, out = tmp_path / "in", tmp_path / "out"
    (src / "a.png").mkdir(parents=True)
    cio.write_image(src / "a.png" / "b.png", real_image(2))
    cio.write_image(src / "a.jpg", real_image(3))
    tasks = [
        cbatch.Task(src / "a.jpg", out / "a.png"),
        cbatch.Task(src / "a.png" / "b.png", out / "a.png" / "b.png"),
    ]
    plan = cbatch.Plan()
    cbatch._dedupe(tasks[::-1] if reverse else tasks, plan)
    assert plan.tasks == tasks[:1]
    assert [(f.path, f.reason) for f in plan.refused] == [
        (src / "a.png" / "b.png",
         f"output {out / 'a.png' / 'b.png'} needs a folder where {src / 'a.jpg'} writes a "
         "file; not written"),
    ]  # fmt: skip
    res = run("batch", src, tmp_path / "cli", "-r", "--preset", "box", "--format", "png", "-q")
    assert res.exit_code == 1
    assert res.stderr.splitlines()[0] == (
        f"convcli: error: {src / 'a.png' / 'b.png'}: output "
        f"{tmp_path / 'cli' / 'a.png' / 'b.png'} needs a folder where {src / 'a.jpg'} "
        "writes a file; not written"
    )
    assert (tmp_path / "cli" / "a.png").is_file()
