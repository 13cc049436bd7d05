"""The start of a folder job (issue 12's F5): a per-thread timeline, and A/B runs in
quiet moments.

``timeline`` runs ``convcli batch`` once under a tracer and prints, from process start:
the imports that took more than a few ms (which thread), the spans of the batch's steps
per thread (decode, plan, filter, OpenCL start: pyopencl's import, device discovery, the
program, encode, publish), and each thread's CPU per 25 ms from ``/proc`` (PoCL's
threads included), so it shows when the second core is idle::

    python benchmarks/folder_start.py timeline /tmp/fbw/F5-in --until 0.8

``ab`` runs whole processes, alternating: checkouts of convcli (``NAME=PATH``, imported
through PYTHONPATH; ``NAME=PATH:VAR~VALUE`` adds an environment variable) and ``opencv``
(the files suite's 2-thread OpenCV loop). On a machine shared with other work a run's
wall time says little, so each run waits (at most 20 s) until the machine has been idle
for 0.3 s and records the CPU the other processes used meanwhile; the summary keeps the
runs where they used less than 10 % of one core::

    python benchmarks/folder_start.py ab /tmp/fbw/F5-in old=/tmp/base new=. opencv --rounds 12

The folder: ``convcli bench --suite files --only F5 --workdir /tmp/fbw`` leaves it in
``/tmp/fbw/F5-in`` (200 one-megapixel JPEGs). Compile the checkouts first
(``python -m compileall -q convcli``) where PYTHONDONTWRITEBYTECODE is set.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESET = "binomial:radius=2"

# Run in the traced child: wraps the batch's steps as their modules load, samples every
# thread's CPU (schedstat, ns) every 5 ms, writes both as JSON at exit.
_TRACER = r"""
import atexit, functools, importlib.abc, json, os, sys, threading, time
T0 = float(os.environ["FOLDER_START_T0"])
EVENTS, IMPORTS, SAMPLES, NAMES = [], [], [], {}
def now():
    return time.time() - T0
def timed(label, f):
    @functools.wraps(f)
    def w(*a, **k):
        s = now()
        try:
            return f(*a, **k)
        finally:
            EVENTS.append((threading.current_thread().name, label, s, now()))
    return w
WRAP = {
    "convcli.small": ["read_small", "encode"],
    "convcli.native": ["filter_strip"],
    "convcli.batch": ["plan_batch", "run_tasks"],
    "convcli.io.publish": ["publish"],
    "convcli.backends.opencl.device": ["_all_devices", "import_cl"],
}
METHODS = {
    "convcli.batch": ("_SmallPath", ["_plan", "_filter"]),
    "convcli.backends.opencl.runtime": ("Runtime", ["_build"]),
}
class Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        for f in sys.meta_path:
            if f is self or not hasattr(f, "find_spec"):
                continue
            spec = f.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module
        def exec_module(module):
            s = now()
            try:
                run(module)
            finally:
                IMPORTS.append((threading.current_thread().name, name, s, now()))
                for fn in WRAP.get(name, ()):
                    setattr(module, fn, timed(fn, getattr(module, fn)))
                if name in METHODS:
                    cls = getattr(module, METHODS[name][0])
                    for m in METHODS[name][1]:
                        setattr(cls, m, timed(f"{cls.__name__}.{m}", getattr(cls, m)))
                if name == "convcli.backends.opencl.backend":
                    create = module.OpenCLBackend.create.__func__
                    module.OpenCLBackend.create = classmethod(
                        timed("OpenCLBackend.create", create))
        loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, Finder())
stop = threading.Event()
def sample():
    while not stop.is_set():
        t, row = now(), {}
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/schedstat") as fh:
                    row[tid] = int(fh.read().split()[0])
            except OSError:
                pass
        SAMPLES.append((t, row))
        time.sleep(0.005)
sampler = threading.Thread(target=sample, daemon=True, name="sampler")
sampler.start()
run_thread = threading.Thread.run
def named_run(self):
    NAMES[str(threading.get_native_id())] = self.name
    return run_thread(self)
threading.Thread.run = named_run
NAMES[str(threading.get_native_id())] = "MainThread"
NAMES[str(sampler.native_id)] = "sampler"
def dump():
    stop.set()
    with open(os.environ["FOLDER_START_OUT"], "w") as fh:
        json.dump({"events": EVENTS, "imports": IMPORTS, "samples": SAMPLES,
                   "names": NAMES}, fh)
atexit.register(dump)
sys.argv = ["convcli", *sys.argv[1:]]
from convcli.cli import console_main
console_main()
"""


def _batch_argv(folder: Path, out: Path) -> list[str]:
    return ["batch", str(folder), str(out), "--preset", PRESET, "--overwrite",
            "--quality", "95", "-q"]  # fmt: skip


def timeline(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="folder-start-") as tmp:
        record = Path(tmp) / "trace.json"
        env = dict(os.environ, FOLDER_START_OUT=str(record))
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(args.checkout), env.get("PYTHONPATH")])
        )
        argv = [sys.executable, "-c", _TRACER, *_batch_argv(args.folder, Path(tmp) / "out")]
        env["FOLDER_START_T0"] = repr(time.time())
        t0 = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, env)
        _, status, usage = os.wait4(pid, 0)
        wall = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit("the traced run failed")
        data = json.loads(record.read_text())
    until = args.until
    print(f"wall {wall:.3f} s, process CPU {usage.ru_utime + usage.ru_stime:.3f} s")
    print("imports over 4 ms (top two levels), from process start:")
    for thread, name, s, e in sorted(data["imports"], key=lambda r: r[2]):
        if e - s > 0.004 and name.count(".") <= 1 and s < until:
            print(f"  {s:6.3f}-{e:6.3f} {1e3 * (e - s):6.1f} ms  {thread[:16]:16s} {name}")
    print("steps:")
    for thread, label, s, e in sorted(data["events"], key=lambda r: r[2]):
        if s < until:
            print(f"  {s:6.3f}-{e:6.3f} {1e3 * (e - s):6.1f} ms  {thread[:16]:16s} {label}")
    names, samples = data["names"], data["samples"]
    sampler = {k for k, v in names.items() if v == "sampler"}
    tids = sorted({tid for _, row in samples for tid in row} - sampler, key=int)
    step = 0.025
    buckets = [[0.0] * len(tids) for _ in range(int(until / step) + 1)]
    last: dict[str, int] = {}
    for t, row in samples:
        for i, tid in enumerate(tids):
            if tid in row:
                if tid in last and t < until:
                    buckets[int(t / step)][i] += (row[tid] - last[tid]) / 1e6
                last[tid] = row[tid]
    print(f"CPU ms per {int(step * 1e3)} ms (unnamed threads: PoCL's, BLAS'):")
    print("   from " + " ".join(f"{names.get(t, t)[-10:]:>10s}" for t in tids) + "   total")
    for b, row in enumerate(buckets):
        if any(row):
            print(
                f"  {b * step:5.3f} " + " ".join(f"{v:10.1f}" for v in row) + f"  {sum(row):6.1f}"
            )


def _idle_share() -> float:
    def busy() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            v = [int(x) for x in fh.readline().split()[1:]]
        return sum(v) - v[3] - v[4], sum(v)

    b0, a0 = busy()
    time.sleep(0.3)
    b1, a1 = busy()
    return 1 - (b1 - b0) / max(1, a1 - a0)


def _cpu_ticks() -> int:
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:]]
    return sum(v) - v[3] - v[4]


def ab(args: argparse.Namespace) -> None:
    from convcli.bench_files import _OPENCV_FOLDER

    hz = os.sysconf("SC_CLK_TCK")
    runs: dict[str, list[tuple[float, float, float]]] = {s: [] for s in args.systems}
    work = Path(tempfile.mkdtemp(prefix="folder-ab-"))
    try:
        for r in range(args.rounds):
            for system in args.systems:
                name, _, where = system.partition("=")
                out = work / name
                shutil.rmtree(out, ignore_errors=True)
                env = dict(os.environ)
                if name == "opencv" and not where:
                    out.mkdir()
                    argv = [sys.executable, "-c", _OPENCV_FOLDER, str(args.folder), str(out)]
                else:
                    path, *extra = where.split(":")
                    env["PYTHONPATH"] = str(Path(path).resolve())
                    env.update(e.split("~", 1) for e in extra)
                    argv = [sys.executable, "-m", "convcli", *_batch_argv(args.folder, out)]
                deadline = time.time() + 20
                while _idle_share() < 0.92 and time.time() < deadline:
                    pass
                ticks, t0 = _cpu_ticks(), time.perf_counter()
                pid = os.posix_spawn(argv[0], argv, env)
                _, status, usage = os.wait4(pid, 0)
                wall = time.perf_counter() - t0
                ours = usage.ru_utime + usage.ru_stime
                others = (_cpu_ticks() - ticks) / hz - ours
                if os.waitstatus_to_exitcode(status) != 0:
                    sys.exit(f"{name} failed")
                runs[system].append((wall, ours, others))
                line = f"round {r + 1} {name}: {wall:.3f} s, CPU {ours:.3f} s"
                print(f"{line}, others {others:+.2f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("system      all runs: wall median, min; CPU median | quiet runs: n, wall median, min")
    for system, rows in runs.items():
        walls, cpus = [w for w, _, _ in rows], [c for _, c, _ in rows]
        quiet = [w for w, _, o in rows if o < 0.1 * w]
        q = f"{len(quiet)}, {statistics.median(quiet):.3f}, {min(quiet):.3f}" if quiet else "0"
        print(f"{system.partition('=')[0]:10s}  {statistics.median(walls):.3f}, {min(walls):.3f}; "
              f"{statistics.median(cpus):.3f} | {q}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("timeline", help="one traced run")
    t.add_argument("folder", type=Path)
    t.add_argument("--checkout", type=Path, default=ROOT, help="convcli checkout (this one)")
    t.add_argument("--until", type=float, default=0.8, help="seconds shown from the start")
    a = sub.add_parser("ab", help="alternating runs in quiet moments")
    a.add_argument("folder", type=Path)
    a.add_argument("systems", nargs="+", help="NAME=PATH[:VAR~VALUE...] or opencv")
    a.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    args.folder = args.folder.resolve()
    timeline(args) if args.command == "timeline" else ab(args)


if __name__ == "__main__":
    main()
