"""Time and peak memory of conv2d on one large array: NumPy in memory vs the dask path.

    python tools/bench_dask.py                      # all modes, 8000x8000, 1000 chunks, 9x9
    python tools/bench_dask.py --size 4000 --mode dask-zarr --backend auto

Each mode runs in its own process (peak RSS is per process); prints one JSON line per
mode with seconds (best of --repeat) and peak RSS in MiB:

* ``plain``: ``conv2d`` on the whole NumPy array;
* ``dask``: the same array as ``da.from_array(x, chunks)``, computed to NumPy on threads;
* ``dask-zarr``: :func:`convcli.zarr_conv2d` from a zarr store to a zarr store (input
  never whole in memory: the bounded-memory path). The store is written first, untimed.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("plain", "dask", "dask-zarr")


def _weight():
    import numpy as np

    return np.random.default_rng(1).standard_normal((1, 1, 9, 9), dtype=np.float32) / 81


def run_one(mode: str, size: int, chunk: int, backend: str, repeat: int, folder: Path) -> dict:
    import dask.array as da
    import numpy as np
    import zarr

    from convcli import conv2d, zarr_conv2d

    w = _weight()
    kw = {"padding": 4, "padding_mode": "reflect", "backend": backend}
    shape, chunks = (1, size, size), (1, chunk, chunk)
    if mode == "dask-zarr":
        # written chunk by chunk: the whole input is never in this process's memory
        src = folder / "in.zarr"
        xs = da.random.default_rng(0).standard_normal(shape, chunks=chunks, dtype=np.float32)
        z = zarr.open_array(store=str(src), mode="w", shape=shape, chunks=chunks, dtype="f4")
        da.store(xs, z, lock=False)
    else:
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    for i in range(repeat):
        t0 = time.perf_counter()
        if mode == "plain":
            out = conv2d(x, w, **kw)
        elif mode == "dask":
            out = conv2d(da.from_array(x, chunks=(1, chunk, chunk)), w, **kw).compute(
                scheduler="threads"
            )
        else:
            dst = folder / f"out{i}.zarr"
            zarr_conv2d(src, dst, w, **kw)
            out = None
        times.append(time.perf_counter() - t0)
        if out is not None:
            assert np.isfinite(out).all()
    return {
        "mode": mode,
        "size": size,
        "chunk": chunk,
        "backend": backend,
        "seconds": round(min(times), 3),
        "all_seconds": [round(t, 3) for t in times],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rss_before_mib": round(base),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8000)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--mode", choices=MODES, action="append")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = run_one(
            args.mode[0], args.size, args.chunk, args.backend, args.repeat, Path(args.folder)
        )
        print(json.dumps(result))
        return
    folder = Path(tempfile.mkdtemp(prefix="convcli-bench-dask-"))
    try:
        for mode in args.mode or MODES:
            cmd = [sys.executable, __file__, "--child", "--mode", mode, "--folder", str(folder)]
            cmd += ["--size", str(args.size), "--chunk", str(args.chunk)]
            cmd += ["--backend", args.backend, "--repeat", str(args.repeat)]
            print(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
