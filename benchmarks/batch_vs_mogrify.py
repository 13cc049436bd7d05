"""Batch throughput: ``convcli batch`` against ImageMagick's ``mogrify`` on 100 JPEGs.

Issue 5 asks for at least 1.5x the images/second of ``mogrify -morphology Convolve`` with
a 5x5 Gaussian on a folder of 100 one-megapixel JPEGs. This script makes that folder
(resized, cropped, flipped and rotated variants of ``samples/``, 1000x1000 RGB, outside
the repository: the images are never committed), then times both tools as a user runs
them, a fresh process each, output JPEG quality 90 for both:

* ``mogrify -path OUT -quality 90 -morphology Convolve Gaussian:2x1 IN/*.jpg``
  (radius 2 = 5x5, sigma 1; ImageMagick's default virtual pixels repeat the edge);
* ``python -m convcli batch IN OUT --preset gaussian:radius=2,sigma=1 --quality 90
  --overwrite -q`` (the same kernel: convcli's presets follow ImageMagick's built-ins;
  the batch default padding mode is ``replicate``, ImageMagick's edge).

It also compares one output pair (mean and max absolute difference in 8-bit levels) to
show that both computed the same blur. Usage::

    python benchmarks/batch_vs_mogrify.py [--work /tmp/convcli-batch] [--repeat 3]

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
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
SIDE = 1000  # 1000 x 1000 = one megapixel


def make_images(folder: Path, count: int, quality: int = 90) -> list[Path]:
    """``count`` 1000x1000 RGB JPEGs made from the sample images (deterministic)."""
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(folder.glob("img_*.jpg"))
    if len(existing) == count:
        return existing
    for p in existing:
        p.unlink()
    rng = np.random.default_rng(0)
    sources = [Image.open(p).convert("RGB") for p in sorted((ROOT / "samples").glob("*.png"))]
    paths = []
    for i in range(count):
        src = sources[i % len(sources)]
        w, h = src.size
        # a random crop of 60-100 % of the shorter side, resized up to 1000x1000
        side = int(min(w, h) * rng.uniform(0.6, 1.0))
        x0 = int(rng.integers(0, w - side + 1))
        y0 = int(rng.integers(0, h - side + 1))
        img = src.crop((x0, y0, x0 + side, y0 + side)).resize((SIDE, SIDE), Image.BICUBIC)
        if i % 2:
            img = ImageOps.mirror(img)
        img = img.rotate(90 * (i // 2 % 4))
        path = folder / f"img_{i:03d}.jpg"
        img.save(path, quality=quality)
        paths.append(path)
    return paths


def _timed(cmd: list[str]) -> float:
    # PYTHONPATH: `python -m convcli` works from a checkout without installing
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}... failed ({proc.returncode}):\n{proc.stderr}")
    return elapsed


def _fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/convcli-batch", help="folder for images/outputs")
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backend", default="auto", help="convcli --backend")
    args = ap.parse_args(argv)
    if shutil.which("mogrify") is None:
        raise SystemExit("mogrify not found: apt-get install -y imagemagick")
    work = Path(args.work)
    images = make_images(work / "in", args.count)
    mog_out, cc_out = work / "out_mogrify", work / "out_convcli"
    inputs = [str(p) for p in images]
    mogrify = ["mogrify", "-path", str(mog_out), "-quality", "90"]
    mogrify += ["-morphology", "Convolve", "Gaussian:2x1", *inputs]
    convcli = [sys.executable, "-m", "convcli", "batch", str(work / "in"), str(cc_out)]
    convcli += ["--preset", "gaussian:radius=2,sigma=1", "--quality", "90", "--overwrite"]
    convcli += ["-q", "--backend", args.backend]
    env_note = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "(unset)")}
    times: dict[str, list[float]] = {"mogrify": [], "convcli": []}
    for _ in range(args.repeat):  # alternate, so that load changes hit both alike
        _fresh(mog_out)
        times["mogrify"].append(_timed(mogrify))
        _fresh(cc_out)
        times["convcli"].append(_timed(convcli))
    a = np.asarray(Image.open(mog_out / images[0].name), dtype=np.float64)
    b = np.asarray(Image.open(cc_out / images[0].name), dtype=np.float64)
    med = {k: statistics.median(v) for k, v in times.items()}
    summary = {
        "images": len(images),
        "image_size": f"{SIDE}x{SIDE} RGB JPEG",
        "seconds": times,
        "median_s": med,
        "images_per_s": {k: len(images) / v for k, v in med.items()},
        "speedup_convcli_over_mogrify": med["mogrify"] / med["convcli"],
        "mogrify": " ".join(mogrify[:8]) + " IN/*.jpg",
        "convcli": " ".join(["convcli", *convcli[3:]]),
        "output_diff_8bit": {
            "mean": float(np.abs(a - b).mean()),
            "max": float(np.abs(a - b).max()),
        },
        "imagemagick": subprocess.run(
            ["mogrify", "-version"], capture_output=True, text=True, check=False
        ).stdout.splitlines()[0],
        "env": env_note,
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
