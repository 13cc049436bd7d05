"""Where a 24 MP JPEG's time goes, and the least time a Python process can take for it.

Issue 12 asks for the 24 MP JPEG with a Gaussian (the files suite's F1) at 1.0x the
faster of an OpenCV script and ``vips gaussblur``. This prints what each part of
convcli's run costs on this machine, measured on its own, and the floor they add up to:

- whole processes (spawned, interleaved rounds; wall and CPU = user + system): the bare
  interpreter, ``import numpy``, ``import numpy, pyvips``, every module convcli imports
  before its first strip is decoded, ``vips avg`` (libvips' sequential JPEG decode),
  ``vips copy`` (decode + JPEG encode), the peers and convcli itself;
- one thread in this process: a libvips decode in strips (convcli's reader), a whole
  decode by simplejpeg (same samples), a JPEG encode at convcli's settings (quality 95,
  the input's chroma subsampling, as convcli keeps it), the native-depth filter on
  OpenCL (started, program built) and on NumPy;
- OpenCL's start in a fresh process (pyopencl's import, the context, the cached program).

The floor, from CPU times (a busy machine stretches wall times, hardly CPU times): the
imports before the first decode run one after another (one core), then everything
else, at best spread over the machine's cores, and never shorter than the sequential
decode::

    python benchmarks/photo_floor.py                       # 24 MP, 7 rounds
    python benchmarks/photo_floor.py --mp 12 --rounds 11 --workdir /tmp/floor
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# the modules `convcli apply photo.jpg -o out.jpg --preset gaussian:sigma=3 -q` has
# imported when its first strip is decoded (python -X importtime of such a run)
_RUN_IMPORTS = (
    "import convcli.cli, convcli.batch, convcli.pipeline, convcli.io.sources, "
    "convcli.io.sinks, convcli.native, convcli.presets, pyvips, imagecodecs"
)
_OPENCL_START = """
import sys, time, resource
import numpy as np
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
t0, c0 = time.perf_counter(), cpu()
from convcli import native
g = np.exp(-0.5 * (np.arange(-11, 12) / 3.0) ** 2)
k = np.outer(g, g) / np.outer(g, g).sum()
native.prepare(np.zeros((118, int(sys.argv[1]) + 22, 3), np.uint8), top=255.0,
               kernel=k.astype(np.float32), backend="opencl")
print(time.perf_counter() - t0, cpu() - c0)
"""


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _spawned(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of ``argv`` run to completion.

    Spawned from this process and reaped with ``wait4`` (its CPU alone; no wrapper
    interpreter: one started with ``-I -S`` to skip the site hooks found no
    site-packages on some interpreters, and a child's failure then said nothing)."""
    with tempfile.TemporaryFile() as err:
        actions = [(os.POSIX_SPAWN_DUP2, err.fileno(), 2),
                   (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)]  # fmt: skip
        t0 = time.perf_counter()
        pid = os.posix_spawnp(argv[0], argv, env, file_actions=actions)
        _, status, usage = os.wait4(pid, 0)
        wall = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            lines = err.read().decode(errors="replace").strip().splitlines()
            raise SystemExit(f"failed: {' '.join(argv)}: {lines[-1] if lines else 'no message'}")
    return wall, usage.ru_utime + usage.ru_stime


def _inproc(fn, rounds: int) -> tuple[float, float]:
    fn()
    best = (np.inf, np.inf)
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), _cpu()
        fn()
        best = min(best, (time.perf_counter() - t0, _cpu() - c0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mp", type=float, default=24.0, help="megapixels of the 3:2 photo")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    from convcli import bench_files as bf

    w = round((args.mp * 1e6 * 1.5) ** 0.5 / 16) * 16
    h = round(w / 1.5 / 16) * 16
    work = args.workdir or Path(tempfile.mkdtemp(prefix="photo-floor-"))
    work.mkdir(parents=True, exist_ok=True)
    wl = bf.FilesWorkload("F1", "photo", "", (h, w), "gaussian:sigma=3", sigma=3.0)
    src = bf.make_inputs(wl, work)
    out = work / "out.jpg"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "convcli")], check=True)
    py = sys.executable
    procs = {
        "python -I -S -c pass": [py, "-I", "-S", "-c", "pass"],
        "python -c pass (site)": [py, "-c", "pass"],
        "import numpy": [py, "-c", "import numpy"],
        "import numpy, pyvips": [py, "-c", "import numpy, pyvips"],
        "convcli's imports before decoding": [py, "-c", _RUN_IMPORTS],
    }
    vips = shutil.which("vips")
    if vips:
        procs["vips avg (decode)"] = [vips, "avg", str(src)]
        procs["vips copy (decode + encode)"] = [vips, "copy", str(src), f"{out}[Q=95]"]
        procs["vips gaussblur 3"] = [vips, "gaussblur", str(src), f"{out}[Q=95]", "3"]
    try:
        import cv2  # noqa: F401

        procs["OpenCV script"] = [py, "-c", bf._OPENCV_ONE, str(src), str(out), "gauss", "3"]
    except ImportError:
        pass
    procs["convcli apply -q"] = [py, "-m", "convcli", "apply", str(src), "-o", str(out),
                                 "--preset", "gaussian:sigma=3", "--overwrite",
                                 "--quality", "95", "-q"]  # fmt: skip
    procs["OpenCL start (fresh process)"] = [py, "-c", _OPENCL_START, str(w)]
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in procs}
    for _ in range(args.rounds):
        for name, argv in procs.items():
            times[name].append(_spawned(argv, env))
    # the OpenCL start's own figures: printed by the child, wall and CPU after numpy
    start = subprocess.run([py, "-c", _OPENCL_START, str(w)], env=env, capture_output=True,
                           text=True, check=True).stdout.split()  # fmt: skip
    print(f"{args.mp:.0f} MP JPEG {w}x{h}, Gaussian sigma 3, {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"{'process':44s} {'wall min':>8s} {'wall med':>8s} {'CPU min':>8s}")
    for name, got in times.items():
        walls, cpus = [t[0] for t in got], [t[1] for t in got]
        print(f"{name:44s} {min(walls):8.3f} {statistics.median(walls):8.3f} {min(cpus):8.3f}")
    print(f"{'OpenCL start after numpy (one run, in-process)':44s} {float(start[0]):8.3f} "
          f"{'':8s} {float(start[1]):8.3f}")  # fmt: skip

    import imagecodecs
    import pyvips
    import simplejpeg

    from convcli import native
    from convcli.io import read_jpeg_subsampling
    from convcli.runinfo import RunInfo

    pyvips.cache_set_max(0)
    blob = src.read_bytes()

    def vips_strips() -> None:
        im = pyvips.Image.new_from_file(str(src), access="sequential", fail_on="warning")
        for y in range(0, im.height, 256):
            im.crop(0, y, im.width, min(256, im.height - y)).write_to_memory()

    samples = simplejpeg.decode_jpeg(blob)
    sub = read_jpeg_subsampling(src) or "444"  # what convcli writes: the input's
    g = np.exp(-0.5 * (np.arange(-11, 12) / 3.0) ** 2)
    k = (np.outer(g, g) / np.outer(g, g).sum()).astype(np.float32)
    strip = np.ascontiguousarray(np.pad(samples[: 96 + 22], ((0, 0), (11, 11), (0, 0)), "edge"))
    strips = -(-h // 96)

    def filt(backend: str):
        return lambda: native.filter_strip(strip, top=255.0, kernel=k, backend=backend,
                                           info=RunInfo())  # fmt: skip

    parts = {
        "decode: libvips in 256-row strips": _inproc(vips_strips, args.rounds),
        "decode: simplejpeg whole (same samples)": _inproc(
            lambda: simplejpeg.decode_jpeg(blob), args.rounds
        ),
        f"encode: libjpeg-turbo q95 {sub} whole": _inproc(
            lambda: imagecodecs.jpeg8_encode(samples, level=95, subsampling=sub, optimize=False),
            args.rounds,
        ),
    }
    for backend in ("opencl", "numpy"):
        wall, cpu = _inproc(filt(backend), max(3, args.rounds))
        parts[f"filter: native {backend}, {strips} strips of 96 rows"] = (
            wall * strips,
            cpu * strips,
        )
    print(f"\n{'one thread, this process (best of rounds)':44s} {'wall':>8s} {'':8s} {'CPU':>8s}")
    for name, (wall, cpu) in parts.items():
        print(f"{name:44s} {wall:8.3f} {'':8s} {cpu:8.3f}")

    def best(name: str) -> float:
        return min(t[0] for t in times[name])

    def cpu(name: str) -> float:
        return min(t[1] for t in times[name])

    # the imports run on one thread: on an idle machine their wall time is their CPU
    # time (a busy machine stretches the wall time, not the CPU time)
    prefix = cpu("convcli's imports before decoding")
    decode = parts["decode: libvips in 256-row strips"][1]
    encode = parts[f"encode: libjpeg-turbo q95 {sub} whole"][1]
    ocl = float(start[1]) + parts[f"filter: native opencl, {strips} strips of 96 rows"][1]
    npy = parts[f"filter: native numpy, {strips} strips of 96 rows"][1]
    rest = decode + encode + min(ocl, npy)
    cores = os.cpu_count() or 1
    path = "OpenCL start + filter" if ocl <= npy else "NumPy filter"
    # any schedule: every CPU second spread over every core, and the imports and the
    # sequential decode one after the other
    strict = max((prefix + rest) / cores, prefix + decode)
    # the imports hold one core; the rest spreads over all of them after
    floor = prefix + max(decode, rest / cores)
    print(f"\nCPU: imports before decoding {prefix:.3f}, decode {decode:.3f}, encode "
          f"{encode:.3f}, filter {min(ocl, npy):.3f} ({path}; the other "
          f"{max(ocl, npy):.3f}): {prefix + rest:.3f} s in all")  # fmt: skip
    print(f"floor, any schedule: max((all CPU) / {cores} cores, imports + decode) = "
          f"{strict:.3f} s")  # fmt: skip
    print(f"floor, imports first: imports + max(decode, (the rest) / {cores} cores) = "
          f"{floor:.3f} s")  # fmt: skip
    print(f"libvips' gaussblur: {cpu('vips gaussblur 3'):.3f} CPU s in all")
    peers = [best(n) for n in ("vips gaussblur 3", "OpenCV script") if n in times]
    if peers:
        ours = best("convcli apply -q")
        print(f"faster peer {min(peers):.3f} s (best run): the floors allow at most "
              f"{min(peers) / strict:.2f}x and {min(peers) / floor:.2f}x; convcli's best run "
              f"{ours:.3f} s, {min(peers) / ours:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
