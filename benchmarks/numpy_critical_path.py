"""The NumPy backend's conv layers as an idle machine would time them, measured on a busy
one: per layer, the CPU time of the work on all threads and of its critical path.

Wall times on a shared machine measure the other processes as much as the code; CPU
times do not, but one thread's CPU time hides what the threads gain or lose. This runs
every layer through ``conv2d`` with the backend's own threads and reads, per call, the
calling thread's CPU time outside the thread pool's jobs (the serial part: padding,
allocations, Python) plus the time its threads would take over the jobs' CPU times
starting together, each taking the next job as it comes free, i.e. the wall time the
call would take with a CPU for each thread and nothing else running. It leaves out
waking the pool's threads (some 30-50 us a call) and waits for the GIL or memory, so it
is a lower bound, comparable between checkouts (run each with its own ``PYTHONPATH``)::

    PYTHONPATH=. python benchmarks/numpy_critical_path.py --net convnext_tiny --batch 8
    PYTHONPATH=/tmp/base python /tmp/base/benchmarks/numpy_critical_path.py ...

``--only dw`` times the depthwise layers only; ``--settings '{"dw_rows_group": 1}'``
changes the backend's settings for the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

if "PYTHONPATH" not in os.environ:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from convcli import backends, conv2d
from convcli.backends.numpy import depthwise, gemm
from convcli.bench_cnn import load_networks

_CALL: dict[str, float] = {}


def _counting(run_jobs):
    """``run_jobs`` that adds to ``_CALL``, per call: the calling thread's CPU time in
    the whole pool call, the jobs' CPU time, and the time ``threads`` threads starting
    together would take over the jobs, each taking the next job as it comes free (as
    the pool's threads do; on a busy machine a late thread takes fewer, so the jobs'
    spread over the threads as they ran says more about the machine than the code)."""

    def wrapper(job, args, threads, settings, spec=None):
        took: list[float] = []
        lock = threading.Lock()

        def timed(*a):
            t0 = time.thread_time()
            job(*a)
            with lock:
                took.append(time.thread_time() - t0)

        t0 = time.thread_time()
        run_jobs(timed, args, threads, settings, spec)
        _CALL["pool"] = _CALL.get("pool", 0.0) + time.thread_time() - t0
        free = [0.0] * max(1, min(threads, len(args)))
        for t in took:  # in the order the jobs started
            free[free.index(min(free))] += t
        _CALL["busiest"] = _CALL.get("busiest", 0.0) + max(free)
        _CALL["work"] = _CALL.get("work", 0.0) + sum(took)

    return wrapper


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--net", action="append", help="network (repeatable); default: all")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--only", choices=["dw"], help="dw: depthwise layers only")
    ap.add_argument("--settings", default="{}", help="JSON: NumPy backend settings to change")
    args = ap.parse_args(argv)
    backend = backends.get_backend("numpy")
    backend.settings = dataclasses.replace(backend.settings, **json.loads(args.settings))
    for module in (depthwise, gemm):
        module.run_jobs = _counting(module.run_jobs)
    networks, _ = load_networks()
    for name in args.net or list(networks):
        counts, layers = {}, {}
        for layer in networks[name]:
            counts[layer.key] = counts.get(layer.key, 0) + 1
            layers[layer.key] = layer
        total_path = total_work = 0.0
        for key, layer in layers.items():
            opts = layer.options()
            if args.only == "dw" and not (opts["groups"] == layer.c_in == layer.c_out > 1):
                continue
            x, w, b = layer.arrays(args.batch)
            conv2d(x, w, b, backend="numpy", **opts)  # warm-up
            paths, works = [], []
            for _ in range(args.rounds):
                _CALL.clear()
                t0 = time.thread_time()
                conv2d(x, w, b, backend="numpy", **opts)
                caller = time.thread_time() - t0
                serial = caller - _CALL.get("pool", 0.0)
                paths.append((serial + _CALL.get("busiest", 0.0)) * 1e3)
                works.append((serial + _CALL.get("work", 0.0)) * 1e3)
            path, work = statistics.median(paths), statistics.median(works)
            total_path += path * counts[key]
            total_work += work * counts[key]
            print(
                f"{name} N={args.batch} {layer.describe():28s} x{counts[key]:<2d} "
                f"critical path {path:8.3f} (min {min(paths):.3f})  work {work:8.3f} ms",
                flush=True,
            )
        print(
            f"{name} N={args.batch} TOTAL critical path {total_path:.2f} ms, "
            f"work {total_work:.2f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
