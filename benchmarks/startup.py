"""One small image, process start to file written: convcli against ImageMagick.

Runs each command ``--runs`` times, interleaved (so a busy moment of the machine hits
both), and prints the best and median wall time and the best CPU time (user + system of
the child) of each. The input is the bench suite's F6 image (``convcli bench --suite
files``): a 512x512 photo-like PNG, blurred with a Gaussian of sigma 2::

    python benchmarks/startup.py                      # convcli apply ... -q vs convert
    python benchmarks/startup.py --runs 20 --repo /path/to/other/checkout
    python benchmarks/startup.py --help-only          # convcli --help, nothing else

``--repo`` adds a second convcli (another checkout, e.g. before a change) as its own row.
Compiled bytecode is allowed (``PYTHONDONTWRITEBYTECODE`` is dropped): an installed
convcli has its ``.pyc`` files, and compiling every module would dominate the time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _time(cmd: list[str], env: dict[str, str], out: Path | None) -> tuple[float, float]:
    if out is not None and out.exists():
        out.unlink()
    t0 = time.perf_counter()
    # in the scratch folder: ``python -m`` puts the working folder first on sys.path, and
    # a checkout there would shadow PYTHONPATH's
    proc = subprocess.Popen(
        cmd, env=env, cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--repo", type=Path, default=None, help="a second convcli checkout")
    parser.add_argument("--help-only", action="store_true")
    args = parser.parse_args()

    from convcli import bench_files as bf

    work = Path(tempfile.mkdtemp(prefix="convcli-startup-"))
    try:
        (wl,) = [w for w in bf.workloads() if w.kind == "png"]
        src = bf.make_inputs(wl, work)
        env = dict(os.environ)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        rows: dict[str, tuple[list[str], dict[str, str], Path | None]] = {}
        convert = shutil.which("convert-im6.q16") or shutil.which("convert")
        if convert and not args.help_only:
            out = work / "im.png"
            cmd = [convert, str(src), "-morphology", "Convolve", "Gaussian:0x2", str(out)]
            rows["convert"] = (cmd, env, out)
        for name, repo in (("convcli", ROOT), ("convcli (--repo)", args.repo)):
            if repo is None:
                continue
            renv = dict(env, PYTHONPATH=str(Path(repo).resolve()))
            out = work / f"{len(rows)}.png"
            run = [sys.executable, "-m", "convcli", "apply", str(src), "-o", str(out)]
            run += ["--preset", wl.preset, "-q"]
            if not args.help_only:
                rows[name] = (run, renv, out)
            rows[f"{name} --help"] = ([sys.executable, "-m", "convcli", "--help"], renv, None)
        for cmd, renv, out in rows.values():  # warm: bytecode, page cache
            _time(cmd, renv, out)
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in rows}
        for _ in range(args.runs):
            for name, (cmd, renv, out) in rows.items():
                times[name].append(_time(cmd, renv, out))
        for name, got in times.items():
            walls = [w for w, _ in got]
            cpu = min(c for _, c in got)
            print(
                f"{name:22s} wall best {min(walls):.3f} s, median {statistics.median(walls):.3f}"
                f" s; cpu best {cpu:.3f} s ({len(got)} runs)"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
