"""After ``apply`` or ``batch`` ran its files here, the process skips the interpreter's
teardown (``os._exit`` in :func:`convcli.cli.console_main`, after the ``atexit`` handlers):
every output, the report, the timings file, stdout and stderr must be complete all the
same, and the exit code the one the command returned. The child holds an object whose
finaliser prints a marker when the interpreter tears its modules down: its absence
shows the fast exit was taken, so these tests check that path and not the usual one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
# the console script's main(), with a marker only the interpreter's teardown prints,
# and one the atexit handlers print (they still run)
SCRIPT = (
    "import atexit, sys\n"
    "class Marker:\n"
    "    def __del__(self):\n"
    "        sys.stderr.write('TEARDOWN\\n')\n"
    "marker = Marker()\n"
    "atexit.register(lambda: sys.stderr.write('ATEXIT\\n'))\n"
    "from convcli.cli import console_main\n"
    "console_main()\n"
)


def _convcli(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, *map(str, args)], capture_output=True, text=True,
        env=ENV, cwd=cwd, timeout=300,
    )  # fmt: skip


def _images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    paths = []
    for i in range(count):
        path = folder / f"im{i:02d}.png"
        PILImage.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_a_batch_ends_at_once_with_everything_written(tmp_path):
    _images(tmp_path / "in", 12)
    (tmp_path / "in" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    r = _convcli("batch", "in", "out", "--preset", "box", "--report", "r.json",
                 "--timings", "t.json", "--backend", "numpy", cwd=tmp_path)  # fmt: skip
    assert "TEARDOWN" not in r.stderr  # the fast exit was taken
    assert r.returncode == 1  # one file failed
    lines = r.stderr.strip().splitlines()
    assert lines.pop() == "ATEXIT"  # after everything the command printed
    assert any(ln.startswith("convcli: error: ") and "bad.png" in ln for ln in lines), lines
    assert "12 done, 0 skipped, 1 failed" in lines[-1]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["done"] == 12 and report["failed"] == 1
    assert json.loads((tmp_path / "t.json").read_text())["done"] == 12
    outs = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in outs] == [f"im{i:02d}.png" for i in range(12)]
    for p in outs:  # complete files
        with PILImage.open(p) as im:
            assert np.asarray(im).shape == (24, 32, 3)


def test_apply_prints_every_output_before_it_ends(tmp_path):
    inputs = _images(tmp_path / "in", 30)
    r = _convcli("apply", *inputs, "-o", "out/", "--preset", "box", "--backend", "numpy",
                 cwd=tmp_path)  # fmt: skip
    assert "TEARDOWN" not in r.stderr and r.stderr.endswith("ATEXIT\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [str(Path("out") / p.name) for p in inputs]
