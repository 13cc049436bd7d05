"""Batch throughput on Dask: ``convcli batch`` against ``convcli batch --dask local:N``.

Issue 14 asks that a batch on a 4-worker LocalCluster keeps at least 0.8x the images/s
of a local ``convcli batch`` on the same machine. This script makes a folder of
one-megapixel JPEGs (the same deterministic images as ``batch_vs_mogrify.py``, outside
the repository), then runs, each in a fresh process as a user runs it::

    python -m convcli batch IN OUT --preset gaussian:sigma=2 --quality 90 -q \\
        --report R.json [--dask local:N]

The images/s of a run are ``done / timings_s.total`` from its own ``--report``: the
batch from its first file sent to its last file written. For ``--dask`` that leaves out
starting the LocalCluster (``cluster.start_s``, shown beside it), as a batch sent to a
running scheduler would not pay it; ``wall_s`` is the whole process, start included.
The configurations run interleaved, ``--repeat`` rounds, and the median is reported (the
machine may be shared). Usage::

    python benchmarks/dask_batch.py [--images 200] [--repeat 3] [--workers 4,2]

Prints a JSON summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch_vs_mogrify import make_images

ROOT = Path(__file__).resolve().parent.parent


def run_once(src: Path, work: Path, dask: str | None) -> dict[str, float]:
    out, report = work / "out", work / "report.json"
    shutil.rmtree(out, ignore_errors=True)
    report.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "convcli", "batch", str(src), str(out), "--preset",
           "gaussian:sigma=2", "--quality", "90", "-q", "--report", str(report)]  # fmt: skip
    if dask:
        cmd += ["--dask", dask]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    wall = time.perf_counter() - t0
    record = json.loads(report.read_text())
    total = record["timings_s"]["total"]
    return {
        "images_per_s": record["done"] / total,
        "batch_s": total,
        "wall_s": wall,
        "start_s": (record.get("cluster") or {}).get("start_s", 0.0),
        "done": record["done"],
        "workers": len(record.get("workers") or {}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", default="4,2", help="LocalCluster sizes to run")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "convcli-dask")
    args = ap.parse_args()
    src = args.work / f"jpegs-{args.images}"
    make_images(src, args.images)
    configs = [None, *(f"local:{n}" for n in args.workers.split(",") if n)]
    runs: dict[str, list[dict[str, float]]] = {c or "local batch": [] for c in configs}
    for _ in range(args.repeat):
        for config in configs:
            runs[config or "local batch"].append(run_once(src, args.work, config))
    summary = {}
    base = statistics.median(r["images_per_s"] for r in runs["local batch"])
    for name, rows in runs.items():
        rate = statistics.median(r["images_per_s"] for r in rows)
        summary[name] = {
            "images_per_s": round(rate, 2),
            "vs_local": round(rate / base, 3),
            "batch_s": round(statistics.median(r["batch_s"] for r in rows), 3),
            "wall_s": round(statistics.median(r["wall_s"] for r in rows), 3),
            "cluster_start_s": round(statistics.median(r["start_s"] for r in rows), 3),
            "runs_images_per_s": [round(r["images_per_s"], 2) for r in rows],
        }
    print(
        json.dumps(
            {"images": args.images, "cpus": os.cpu_count(), "repeat": args.repeat, **summary},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
