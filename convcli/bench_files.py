"""Files in, files out: ``convcli bench --suite files`` (issue 12, item 7).

Whole processes are timed, from start to output file written, for convcli and for the
tools a user would otherwise run, on images generated once per run into a temporary
folder (deterministic):

* convcli: ``python -m convcli apply`` (``batch`` for the folder workload);
* an OpenCV script (``cv2.imread``, ``GaussianBlur`` / ``blur``, ``cv2.imwrite``; for
  the folder a loop on 2 threads);
* libvips: the ``vips`` command (``gaussblur``, ``conv``), or a pyvips script where
  the command is missing (always pyvips for the folder: one process for all images);
* ImageMagick: ``convert`` for the small PNG, ``mogrify`` for the folder (on large images
  it takes tens of seconds and is left out).

Each system runs in a process of its own, the systems taking turns (A B C A B C ...); the
first run of each is a warm-up unless it took over ``WARMUP_MAX_S``, then ``repeat`` timed
runs (median and minimum). Peak memory is the largest ``ru_maxrss`` that ``wait4`` reports
for the child (the largest process of its tree; every system here is one process), the
maximum over all runs. Peers are optional and found at run time; none is a dependency.

Exactness: every convcli output is compared with a float64 reference of the same kernel
(``same`` size, replicate border, clipped, at the output's depth): ``max_err`` must be at
most ``EXACT_LEVELS``. Lossy outputs (JPEG) are checked through one extra untimed run
that writes TIFF instead (for a folder: the whole folder, as timed, so that the batch
takes the same paths; its first, middle and last images are compared). Peers use their
own approximations of the filters (OpenCV's and libvips' Gaussians are shorter, libvips
rounds to integers on 8-bit input) and their JPEG encoders; their outputs are compared
roughly (``mean_err`` at most ``PEER_MEAN_LEVELS`` means "the same kind of blur", nothing
more).

A library module: it prints nothing; progress goes to an optional callback.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from convcli import bench
from convcli.errors import InputError

# A first run quicker than this is a warm-up (page cache, imports); a slower one counts.
WARMUP_MAX_S = 5.0
# A system whose run takes longer than this is not run again on the workload.
SLOW_S = 60.0
# convcli's results: within this many output levels of the float64 reference.
EXACT_LEVELS = 1.0
# Peers' results: mean absolute difference from the reference, in 8-bit levels (scaled
# for 16-bit), below which they count as the same kind of filter.
PEER_MEAN_LEVELS = 4.0
# Pillow's decompression-bomb limit, convcli's default --max-pixels.
_DEFAULT_MAX_PIXELS = 178956970

PEERS = ("opencv", "vips", "imagemagick")

Progress = Callable[..., Any]


# --------------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class Sizes:
    """The images of the suite: (height, width) of each, and the folder's count."""

    photos: tuple[tuple[int, int], ...] = ((3000, 4000), (5760, 8640))  # 12 MP, 50 MP
    tiff16: tuple[int, int] = (4000, 6000)  # 24 MP
    tiled: tuple[int, int] = (10000, 10000)  # 100 MP
    folder_count: int = 200
    folder_image: tuple[int, int] = (1000, 1000)
    png: tuple[int, int] = (512, 512)

    @classmethod
    def with_tiled_megapixels(cls, megapixels: float) -> Sizes:
        """The default sizes with a square tiled TIFF of about ``megapixels`` MP."""
        return cls().scaled(tiled_mp=megapixels)

    def scaled(
        self, *, tiled_mp: float | None = None, photo_mp: Sequence[float] | None = None
    ) -> Sizes:
        """These sizes with a square tiled TIFF of about ``tiled_mp`` MP and 3:2 photos
        of about ``photo_mp`` MP each (sides multiples of 16)."""
        sizes = self
        if tiled_mp is not None:
            side = max(256, round(math.sqrt(tiled_mp * 1e6) / 16) * 16)
            sizes = replace(sizes, tiled=(side, side))
        if photo_mp is not None:
            photos = []
            for mp in photo_mp:
                h = max(16, round(math.sqrt(mp * 1e6 / 1.5) / 16) * 16)
                photos.append((h, max(16, round(h * 1.5 / 16) * 16)))
            sizes = replace(sizes, photos=tuple(photos))
        return sizes


TINY = Sizes(
    photos=((96, 128),),
    tiff16=(64, 80),
    tiled=(300, 280),
    folder_count=3,
    folder_image=(48, 64),
    png=(40, 48),
)


# ------------------------------------------------------------------------------- results
@dataclass
class FilesRow:
    """One system on one workload, whole processes timed."""

    workload: str
    kind: str  # "photo", "tiff16", "tiled", "folder", "png"
    description: str
    system: str
    command: str
    median_s: float
    min_s: float
    runs: int
    peak_mib: float  # largest ru_maxrss of the child over all runs
    megapixels: float  # per image
    decoded_mib: float  # one input image decoded at its native depth
    images: int
    images_per_s: float
    ratio: float | None  # convcli rows: the fastest correct peer's median / ours
    max_err: float | None  # output levels from the float64 reference
    mean_err: float | None
    ok: bool
    note: str = ""


@dataclass(frozen=True)
class FilesWorkload:
    """One files-in, files-out job and how each system runs it."""

    id: str
    kind: str  # "photo", "tiff16", "tiled", "folder", "png"
    description: str
    shape: tuple[int, int]
    preset: str  # convcli's --preset, also the reference kernel
    sigma: float = 0.0  # Gaussian workloads: what the peers are given
    box: int = 0  # box workloads: side
    count: int = 1  # images (folder)

    @property
    def suffix(self) -> str:
        return {"photo": ".jpg", "folder": ".jpg", "png": ".png"}.get(self.kind, ".tif")

    @property
    def depth(self) -> int:
        return 16 if self.kind == "tiff16" else 8

    @property
    def megapixels(self) -> float:
        return self.shape[0] * self.shape[1] / 1e6

    @property
    def decoded_mib(self) -> float:
        return self.shape[0] * self.shape[1] * 3 * self.depth / 8 / 2**20


def workloads(sizes: Sizes = Sizes()) -> list[FilesWorkload]:
    """F1...: photos (Gaussian sigma 3), a 16-bit TIFF (sigma 2), a tiled TIFF (box 9x9),
    a folder of JPEGs (5x5 binomial), a small PNG (sigma 2)."""
    out = []
    for i, (h, w) in enumerate(sizes.photos):
        mp = h * w / 1e6
        out.append(
            FilesWorkload(
                f"F{i + 1}", "photo", f"{mp:.0f} MP JPEG ({w}x{h}), Gaussian sigma 3",
                (h, w), "gaussian:sigma=3", sigma=3.0,
            )
        )  # fmt: skip
    n = len(out)
    h, w = sizes.tiff16
    out.append(
        FilesWorkload(
            f"F{n + 1}", "tiff16", f"{h * w / 1e6:.0f} MP 16-bit RGB TIFF ({w}x{h}), "
            "Gaussian sigma 2", (h, w), "gaussian:sigma=2", sigma=2.0,
        )
    )  # fmt: skip
    h, w = sizes.tiled
    out.append(
        FilesWorkload(
            f"F{n + 2}", "tiled", f"{h * w / 1e6:.0f} MP tiled TIFF ({w}x{h}, 256x256 tiles), "
            "box 9x9", (h, w), "box:size=9", box=9,
        )
    )  # fmt: skip
    h, w = sizes.folder_image
    out.append(
        FilesWorkload(
            f"F{n + 3}", "folder", f"{sizes.folder_count} JPEGs of {h * w / 1e6:.1f} MP "
            f"({w}x{h}), 5x5 binomial", (h, w), "binomial:radius=2",
            count=sizes.folder_count,
        )
    )  # fmt: skip
    h, w = sizes.png
    out.append(
        FilesWorkload(
            f"F{n + 4}", "png", f"one {w}x{h} PNG, Gaussian sigma 2", (h, w),
            "gaussian:sigma=2", sigma=2.0,
        )
    )  # fmt: skip
    return out


# ------------------------------------------------------------------------------ inputs
def _photo(h: int, w: int, seed: int) -> np.ndarray:
    """A photo-like RGB uint8 image: smooth colour fields at two scales (bicubic from a
    coarse grid), plus film grain, so codecs see photo-like entropy."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = (rng.random((max(2, h // 96), max(2, w // 96), 3)) * 255).astype(np.uint8)
    fine = (rng.random((max(2, h // 12), max(2, w // 12), 3)) * 255).astype(np.uint8)
    a = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.uint8)
    b = np.asarray(Image.fromarray(fine).resize((w, h), Image.BICUBIC), np.uint8)
    out = np.empty((h, w, 3), np.uint8)
    for y in range(0, h, 512):  # by strips: no full-size float copy
        s = slice(y, y + 512)
        mix = a[s].astype(np.int16) * 3 // 4 + b[s].astype(np.int16) // 4
        mix += np.round(rng.normal(0, 3, mix.shape)).astype(np.int16)
        out[s] = np.clip(mix, 0, 255)
    return out


def _tiles(h: int, w: int, tile: int = 256) -> Iterator[np.ndarray]:
    """The tiles of an ``h x w`` RGB image, row by row, cut from a 2048x2048 photo (so a
    gigapixel image is made in a few MB)."""
    base = _photo(2048, 2048, seed=7)
    per = 2048 // tile
    for ty in range(-(-h // tile)):
        for tx in range(-(-w // tile)):
            y0, x0 = (ty % per) * tile, ((tx + ty // per) % per) * tile
            yield base[y0 : y0 + tile, x0 : x0 + tile]


def make_inputs(wl: FilesWorkload, folder: Path) -> Path:
    """Write ``wl``'s input (a file, or a folder of files) under ``folder``; returns it."""
    import tifffile
    from PIL import Image

    h, w = wl.shape
    seed = sum(map(ord, wl.id))
    if wl.kind == "folder":
        path = folder / f"{wl.id}-in"
        path.mkdir(parents=True, exist_ok=True)
        for i in range(wl.count):
            Image.fromarray(_photo(h, w, seed + i)).save(path / f"img_{i:03d}.jpg", quality=90)
        return path
    path = folder / f"{wl.id}-in{wl.suffix}"
    if wl.kind == "photo":
        Image.fromarray(_photo(h, w, seed)).save(path, quality=92)
    elif wl.kind == "png":
        Image.fromarray(_photo(h, w, seed)).save(path)
    elif wl.kind == "tiff16":
        a = _photo(h, w, seed).astype(np.uint16) * 257
        a += np.random.default_rng(seed).integers(0, 257, a.shape, dtype=np.uint16)
        tifffile.imwrite(path, a, photometric="rgb", compression="zlib", predictor=True)
    elif wl.kind == "tiled":
        tifffile.imwrite(
            path, _tiles(h, w), shape=(h, w, 3), dtype=np.uint8, photometric="rgb",
            tile=(256, 256), compression="zlib", predictor=True,
            bigtiff=h * w * 3 > 2**31,
        )  # fmt: skip
    return path


# --------------------------------------------------------------------------- references
def read_pixels(path: Path) -> np.ndarray:
    """An image file as ``(H, W, C)`` at its native depth (TIFF by tifffile, the rest by
    Pillow), independent of convcli's reader."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        a = tifffile.imread(path)
    else:
        from PIL import Image

        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # our own test images
        try:
            with Image.open(path) as im:
                a = np.asarray(im.convert("RGB") if im.mode not in ("RGB", "I;16") else im)
        finally:
            Image.MAX_IMAGE_PIXELS = limit
    return a[..., None] if a.ndim == 2 else a


def compare_to_reference(
    out: np.ndarray, src: np.ndarray, kernel: np.ndarray, strip: int = 256
) -> tuple[float, float]:
    """Max and mean absolute difference, in output levels, between ``out`` and the float64
    cross-correlation of ``src`` with ``kernel`` ('same' size, edge pixels repeated, as
    convcli's default), clipped to the range and scaled to ``out``'s depth.

    Works by strips of ``strip`` rows, so a large image needs no full float64 copy.
    """
    if out.shape != src.shape:
        return math.inf, math.inf
    src_max = 65535.0 if src.dtype == np.uint16 else 255.0
    out_max = 65535.0 if out.dtype == np.uint16 else 255.0
    k = np.asarray(kernel, np.float64)
    kh, kw = k.shape
    top, left = (kh - 1) // 2, (kw - 1) // 2
    u, s, vt = np.linalg.svd(k)
    separable = s.size < 2 or s[1] <= 1e-12 * s[0]
    col, row = u[:, 0] * math.sqrt(s[0]), vt[0] * math.sqrt(s[0])
    h, w = src.shape[:2]
    xs = np.clip(np.arange(-left, w + kw - 1 - left), 0, w - 1)
    worst, total = 0.0, 0.0
    for y0 in range(0, h, strip):
        y1 = min(h, y0 + strip)
        n = y1 - y0
        ys = np.clip(np.arange(y0 - top, y1 + kh - 1 - top), 0, h - 1)
        block = src[ys][:, xs].astype(np.float64) / src_max
        if separable:
            tmp = sum(col[i] * block[i : i + n] for i in range(kh))
            res = sum(row[j] * tmp[:, j : j + w] for j in range(kw))
        else:
            res = sum(k[i, j] * block[i : i + n, j : j + w] for i in range(kh) for j in range(kw))
        ref = np.clip(res, 0.0, 1.0) * out_max
        d = np.abs(out[y0:y1].astype(np.float64) - ref)
        worst = max(worst, float(d.max()))
        total += float(d.sum())
    return worst, total / out.size


# ------------------------------------------------------------------------------ systems
_OPENCV_ONE = """
import sys, cv2
src, dst, kind, p = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
im = cv2.imread(src, cv2.IMREAD_UNCHANGED)
if kind == "box":
    out = cv2.blur(im, (int(p), int(p)), borderType=cv2.BORDER_REPLICATE)
else:
    out = cv2.GaussianBlur(im, (0, 0), p, borderType=cv2.BORDER_REPLICATE)
params = []
if dst.endswith(".jpg"):
    params = [cv2.IMWRITE_JPEG_QUALITY, 95]
elif dst.endswith(".tif"):  # what convcli writes: Deflate level 1, horizontal predictor
    params = [cv2.IMWRITE_TIFF_COMPRESSION, cv2.IMWRITE_TIFF_COMPRESSION_ADOBE_DEFLATE,
              cv2.IMWRITE_TIFF_COMPRESSION_LEVEL, 1,
              cv2.IMWRITE_TIFF_PREDICTOR, cv2.IMWRITE_TIFF_PREDICTOR_HORIZONTAL]
if not cv2.imwrite(dst, out, params):
    sys.exit("cv2.imwrite failed")
"""

_OPENCV_FOLDER = """
import sys, os, cv2
from concurrent.futures import ThreadPoolExecutor
src, dst = sys.argv[1], sys.argv[2]
def one(name):
    im = cv2.imread(os.path.join(src, name), cv2.IMREAD_UNCHANGED)
    # ksize 5 with sigma 0: OpenCV's fixed 5-tap kernel, [1 4 6 4 1] / 16 (binomial)
    out = cv2.GaussianBlur(im, (5, 5), 0, borderType=cv2.BORDER_REPLICATE)
    cv2.imwrite(os.path.join(dst, name), out, [cv2.IMWRITE_JPEG_QUALITY, 95])
cv2.setNumThreads(1)
with ThreadPoolExecutor(2) as pool:
    list(pool.map(one, sorted(os.listdir(src))))
"""

_PYVIPS_ONE = """
import sys, pyvips
src, dst, kind, p, opts = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]
im = pyvips.Image.new_from_file(src, access="sequential")
if kind == "box":
    mask = pyvips.Image.new_from_array([[1] * int(p)] * int(p), scale=int(p) ** 2)
    out = im.conv(mask, precision="float").rint().cast(im.format)
else:
    out = im.gaussblur(p)
out.write_to_file(dst + opts)
"""

_PYVIPS_FOLDER = """
import sys, os, pyvips
src, dst = sys.argv[1], sys.argv[2]
mask = pyvips.Image.new_from_array([[1, 4, 6, 4, 1]], scale=16)
for name in sorted(os.listdir(src)):
    im = pyvips.Image.new_from_file(os.path.join(src, name), access="sequential")
    im.convsep(mask, precision="integer").write_to_file(os.path.join(dst, name) + "[Q=95]")
"""


def _magick(tool: str) -> list[str] | None:
    """ImageMagick's ``convert`` or ``mogrify``: IM7's ``magick TOOL``, else IM6's binary
    (the versioned name first: it is the program itself, never a wrapper)."""
    if shutil.which("magick"):
        return ["magick", tool] if tool == "mogrify" else ["magick"]
    for name in (f"{tool}-im6.q16", f"{tool}-im6", tool):
        found = shutil.which(name)
        if found:
            return [found]
    return None


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _pythonpath_env() -> dict[str, str]:
    """The environment for ``python -m convcli``: this convcli package first on the path."""
    here = str(Path(__file__).resolve().parent.parent)
    paths = [here, os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


@dataclass
class _System:
    name: str
    argv: list[str]
    output: Path  # file or folder the run writes
    env: dict[str, str] | None = None
    note: str = ""
    times: list[float] = field(default_factory=list)
    peak_kib: int = 0
    error: str = ""
    slow: bool = False


def _convcli_argv(
    wl: FilesWorkload, src: Path, dst: Path, backend: str, lossless_check: bool = False
) -> list[str]:
    cmd = [sys.executable, "-m", "convcli"]
    if wl.kind == "folder":
        cmd += ["batch", str(src), str(dst), "--preset", wl.preset, "--overwrite"]
        cmd += ["--format", "tif"] if lossless_check else ["--quality", "95"]
    else:
        cmd += ["apply", str(src), "-o", str(dst), "--preset", wl.preset, "--overwrite"]
        if dst.suffix == ".jpg":
            cmd += ["--quality", "95"]
    if wl.megapixels * 1e6 > _DEFAULT_MAX_PIXELS:
        cmd += ["--max-pixels", "none"]
    if backend != "auto":
        cmd += ["--backend", backend]
    return [*cmd, "-q"]


def _systems(
    wl: FilesWorkload, src: Path, work: Path, backends: Sequence[str], peers: Sequence[str]
) -> tuple[list[_System], list[str]]:
    """The systems that run ``wl`` here, and a note for each peer skipped."""
    systems: list[_System] = []
    skipped: list[str] = []
    out = work / f"{wl.id}-out"
    ext = wl.suffix
    for b in backends:
        name = "convcli" if b == "auto" else f"convcli-{b}"
        dst = out / f"{name}" if wl.kind == "folder" else out / f"{name}{ext}"
        systems.append(_System(name, _convcli_argv(wl, src, dst, b), dst, _pythonpath_env()))
    kind, param = ("box", str(wl.box)) if wl.box else ("gauss", str(wl.sigma))
    for peer in peers:
        if peer == "opencv":
            if not _has_module("cv2"):
                skipped.append("opencv: cv2 not importable")
                continue
            if wl.kind == "folder":
                dst = out / "opencv"
                argv = [sys.executable, "-c", _OPENCV_FOLDER, str(src), str(dst)]
                note = "GaussianBlur 5x5 sigma 0 (= binomial), 2 threads"
            else:
                dst = out / f"opencv{ext}"
                argv = [sys.executable, "-c", _OPENCV_ONE, str(src), str(dst), kind, param]
                note = f"cv2.blur {param}x{param}" if wl.box else f"GaussianBlur sigma {param}"
            systems.append(_System("opencv", argv, dst, note=note))
        elif peer == "vips":
            vips, has_pyvips = shutil.which("vips"), _has_module("pyvips")
            # TIFF as convcli writes it (Deflate level 1, horizontal predictor): libvips
            # 8.14's tiffsave ignores the level for Deflate, so TIFF goes through pyvips
            # where it is installed
            opts = {".jpg": "[Q=95]", ".tif": "[compression=deflate,level=1]"}.get(ext, "")
            if wl.kind == "tiled":
                opts = "[tile,compression=deflate,level=1]"
            dst = out / f"vips{ext}"
            if vips and (wl.kind in ("photo", "png") or (wl.kind == "tiff16" and not has_pyvips)):
                argv = [vips, "gaussblur", str(src), str(dst) + opts, param]
                note = f"vips gaussblur {param}"
            elif has_pyvips and wl.kind == "folder":
                dst = out / "vips"
                argv = [sys.executable, "-c", _PYVIPS_FOLDER, str(src), str(dst)]
                note = "pyvips loop, convsep [1 4 6 4 1]/16 integer"
            elif has_pyvips:
                argv = [sys.executable, "-c", _PYVIPS_ONE, str(src), str(dst), kind, param, opts]
                note = "pyvips " + ("conv float, rint, cast" if wl.box else f"gaussblur {param}")
            elif vips and wl.kind == "tiled":
                mask = work / f"box{wl.box}.mat"
                rows = "\n".join(" ".join(["1"] * wl.box) for _ in range(wl.box))
                mask.write_text(f"{wl.box} {wl.box} {wl.box * wl.box} 0\n{rows}\n")
                argv = [vips, "conv", str(src), str(dst) + opts, str(mask), "--precision", "float"]
                note = "vips conv --precision float (float TIFF out)"
            else:
                skipped.append("vips: neither the vips command nor pyvips")
                continue
            systems.append(_System("vips", argv, dst, note=note))
        elif peer == "imagemagick":
            if wl.kind == "folder":
                mog = _magick("mogrify")
                if mog is None:
                    skipped.append("imagemagick: mogrify not found")
                    continue
                dst = out / "imagemagick"
                files = sorted(str(p) for p in src.iterdir())
                argv = [*mog, "-path", str(dst), "-quality", "95", "-define", "convolve:scale=!"]
                argv += ["-morphology", "Convolve", "Binomial:2", *files]
                systems.append(_System("imagemagick", argv, dst, note="mogrify Binomial:2"))
            elif wl.kind == "png":
                conv = _magick("convert")
                if conv is None:
                    skipped.append("imagemagick: convert not found")
                    continue
                dst = out / f"imagemagick{ext}"
                argv = [*conv, str(src), "-morphology", "Convolve", f"Gaussian:0x{param}"]
                note = f"convert Gaussian:0x{param}"
                systems.append(_System("imagemagick", [*argv, str(dst)], dst, note=note))
            else:
                skipped.append("imagemagick: not run on large images (tens of seconds each)")
        else:
            raise ValueError(f"unknown peer {peer!r}; peers are {list(PEERS)}")
    return systems, skipped


# Runs the command given in its arguments and prints its wall time, peak RSS (KiB) and
# exit code. A child's ru_maxrss starts from the RSS of the process it was forked from
# (the kernel carries the old address space's high-water mark over exec): spawned from
# this harness, every peer would read at least the harness's size. Spawned from this
# small interpreter, the floor is about 10 MiB.
_SPAWN = """
import os, sys, time
t0 = time.perf_counter()
pid = os.posix_spawnp(sys.argv[1], sys.argv[1:], os.environ)
_, status, usage = os.wait4(pid, 0)
print(time.perf_counter() - t0, usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def measure_process(
    argv: Sequence[str], env: dict[str, str] | None = None, stderr: Any = None
) -> tuple[float, int, int]:
    """(wall seconds, peak RSS in KiB, exit code) of ``argv`` run to completion.

    Linux: ``ru_maxrss`` from ``wait4``, the largest process of the command's tree that
    it waited for.
    """
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _SPAWN, *argv],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, env=env, check=False,
    )  # fmt: skip
    parts = proc.stdout.split()
    if proc.returncode != 0 or len(parts) != 3:
        return math.nan, 0, proc.returncode or 1
    return float(parts[0]), int(parts[1]), int(parts[2])


def _run_once(system: _System) -> None:
    """Run ``system`` once, fresh output, adding its wall time and peak RSS (KiB)."""
    if system.output.exists():
        shutil.rmtree(system.output) if system.output.is_dir() else system.output.unlink()
    if system.output.suffix == "":  # a folder of outputs
        system.output.mkdir(parents=True)
    else:
        system.output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile() as err:
        elapsed, peak_kib, code = measure_process(system.argv, system.env, err)
        if code != 0:
            err.seek(0)
            lines = err.read().decode(errors="replace").strip().splitlines()
            system.error = f"exit {code}: " + (lines[-1] if lines else "")
            return
    system.times.append(elapsed)
    system.peak_kib = max(system.peak_kib, peak_kib)
    system.slow = system.slow or elapsed > SLOW_S


def _time_systems(systems: list[_System], repeat: int, say: Progress, wid: str) -> None:
    """Warm-up round, then rounds in which the systems take turns until each has
    ``repeat`` timed runs (or failed, or was too slow to run again)."""
    for s in systems:
        say(f"{wid} {s.name}: warm-up ...")
        _run_once(s)
        if s.times and s.times[0] <= WARMUP_MAX_S:
            s.times.clear()
    for k in range(repeat):
        for s in systems:
            if s.error or len(s.times) >= repeat or (s.slow and s.times):
                continue
            say(f"{wid} {s.name}: run {k + 1}/{repeat} ...")
            _run_once(s)


def _outputs(system: _System) -> list[Path]:
    if system.output.is_dir():
        return sorted(system.output.iterdir())
    return [system.output] if system.output.exists() else []


def _check(
    wl: FilesWorkload, system: _System, src: Path, kernel: np.ndarray, work: Path
) -> tuple[float | None, float | None, str]:
    """(max_err, mean_err, note) of one system's output (a folder's first, middle and
    last images); convcli's lossy outputs go through an untimed run writing TIFF (a
    folder's run on the whole folder, so that it takes the timed run's paths)."""
    outs = _outputs(system)
    if not outs:
        return None, None, "no output"
    sources = sorted(src.iterdir()) if src.is_dir() else [src]
    # a folder: its first image, one from the middle and its last (a batch may filter its
    # first images on NumPy while OpenCL starts, and the rest on OpenCL)
    picks = sorted({0, len(sources) // 2, len(sources) - 1})
    targets = [outs[0]] if len(outs) == 1 else [outs[i] for i in picks if i < len(outs)]
    note = ""
    if system.name.startswith("convcli") and targets[0].suffix == ".jpg":
        check = work / f"{wl.id}-check-{system.name}"
        shutil.rmtree(check, ignore_errors=True)
        if wl.kind == "folder":
            # the whole folder, as timed: the batch takes the same paths (backend, small
            # path) for the same number of images
            dst = check
            argv = _convcli_argv(wl, src, dst, _backend_of(system), lossless_check=True)
        else:
            check.mkdir()
            dst = check / "out.tif"
            argv = _convcli_argv(wl, src, dst, _backend_of(system))
        proc = subprocess.run(argv, capture_output=True, text=True, env=system.env, check=False)
        if proc.returncode != 0:
            return None, None, f"check run failed: {proc.stderr.strip()[-200:]}"
        written = [dst] if dst.is_file() else sorted(dst.iterdir())
        targets = [written[0]] if len(written) == 1 else [written[i] for i in picks]
        note = "checked on a TIFF run"
    worst, total = 0.0, 0.0
    for i, target in zip(picks, targets, strict=False):
        err, mean = compare_to_reference(read_pixels(target), read_pixels(sources[i]), kernel)
        worst, total = max(worst, err), total + mean
    return worst, total / len(targets), note


def _backend_of(system: _System) -> str:
    return system.name.split("-", 1)[1] if "-" in system.name else "auto"


def _run_workload(
    wl: FilesWorkload,
    work: Path,
    backends: Sequence[str],
    peers: Sequence[str],
    repeat: int,
    say: Progress,
) -> list[FilesRow]:
    from convcli.presets import get_preset

    say(f"{wl.id}: making {wl.description} ...")
    src = make_inputs(wl, work)
    kernel = get_preset(wl.preset).kernel
    systems, skipped = _systems(wl, src, work, backends, peers)
    for note in skipped:
        say(f"{wl.id} skipped {note}")
    _time_systems(systems, repeat, say, wl.id)
    rows = []
    for s in systems:
        is_ours = s.name.startswith("convcli")
        if s.error or not s.times:
            rows.append(
                FilesRow(
                    wl.id, wl.kind, wl.description, s.name, _display(s.argv), math.nan, math.nan, 0,
                    s.peak_kib / 1024, wl.megapixels, wl.decoded_mib, wl.count, math.nan,
                    None, None, None, False, s.error or "no timed run",
                )
            )  # fmt: skip
            continue
        worst, mean, note = _check(wl, s, src, kernel, work)
        if is_ours:
            ok = worst is not None and worst <= EXACT_LEVELS
        else:  # in 8-bit levels whatever the depth
            ok = mean is not None and mean / (257 if wl.depth == 16 else 1) <= PEER_MEAN_LEVELS
        notes = [n for n in (s.note, note) if n]
        if s.slow and repeat > 1:
            notes.append(f"1 run (> {SLOW_S:.0f} s)")
        med = statistics.median(s.times)
        rows.append(
            FilesRow(
                workload=wl.id,
                kind=wl.kind,
                description=wl.description,
                system=s.name,
                command=_display(s.argv),
                median_s=med,
                min_s=min(s.times),
                runs=len(s.times),
                peak_mib=s.peak_kib / 1024,
                megapixels=wl.megapixels,
                decoded_mib=wl.decoded_mib,
                images=wl.count,
                images_per_s=wl.count / med if med > 0 else math.nan,
                ratio=None,
                max_err=worst,
                mean_err=mean,
                ok=ok,
                note="; ".join(notes),
            )
        )
        say(f"{wl.id} {s.name}: {med:.2f} s, {s.peak_kib / 1024:.0f} MiB")
    peer_times = [r.median_s for r in rows if r.system in PEERS and r.ok]
    if peer_times:
        for r in rows:
            if r.system.startswith("convcli") and r.ok and r.median_s > 0:
                r.ratio = min(peer_times) / r.median_s
    for s in systems:  # outputs can be large (a gigapixel TIFF each)
        for p in (s.output,):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return rows


def _display(argv: Sequence[str]) -> str:
    """The command as a user would type it: ``convcli ...`` / ``python -c <script>``,
    long file lists shortened."""
    argv = list(argv)
    if argv[:3] == [sys.executable, "-m", "convcli"]:
        argv = ["convcli", *argv[3:]]
    elif argv[:2] == [sys.executable, "-c"]:
        argv = ["python", "<script>", *argv[3:]]
    if len(argv) > 12:
        argv = [*argv[:10], f"... ({len(argv) - 10} more)"]
    return " ".join(argv)


def run_files_suite(
    sizes: Sizes = Sizes(),
    backends: Sequence[str] = ("auto",),
    compare: Sequence[str] = PEERS,
    repeat: int = 3,
    work_dir: str | os.PathLike[str] | None = None,
    only: Sequence[str] = (),
    progress: Progress | None = None,
) -> list[FilesRow]:
    """Time files-in, files-out workloads on convcli and the peers found here.

    Parameters
    ----------
    sizes : Sizes
        The images (default: 12 and 50 MP photos, a 24 MP 16-bit TIFF, a 100 MP tiled
        TIFF, 200 one-megapixel JPEGs, a 512x512 PNG).
    backends : sequence of {'auto', 'opencl', 'numpy'}
        convcli's ``--backend`` values, each a system of its own (``auto``: "convcli").
    compare : sequence of {'opencv', 'vips', 'imagemagick'}
        Peers, each run where installed and where it applies (ImageMagick: the PNG and the
        folder only).
    repeat : int
        Timed runs per system (after a warm-up run), the systems taking turns.
    work_dir : path, optional
        Where inputs and outputs go (a temporary folder, removed afterwards, if None):
        a new or empty folder, or one an earlier run made (its inputs are reused).
    only : sequence of str
        Workloads to run, by id (``F3``) or kind (``photo``, ``tiff16``, ``tiled``,
        ``folder``, ``png``: ids move with the number of photo sizes); all if empty.
    progress : callable, optional
        Called with one-line messages as the suite runs.

    Returns
    -------
    list of FilesRow
        Per workload: convcli rows, then peers. ``ratio`` on convcli rows is the fastest
        correct peer's median time over ours (above 1 = convcli faster).

    Raises
    ------
    InputError
        If ``work_dir`` holds files an earlier run did not make, or cannot be made.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    for b in backends:
        if b not in ("auto", "opencl", "numpy"):
            raise ValueError(f"backends must be 'auto', 'opencl' or 'numpy', got {b!r}")
    for p in compare:
        if p not in PEERS:
            raise ValueError(f"unknown peer {p!r}; peers are {list(PEERS)}")
    say = progress or (lambda *args: None)
    chosen = [wl for wl in workloads(sizes) if not only or {wl.id, wl.kind} & set(only)]
    if work_dir is None:
        with tempfile.TemporaryDirectory(prefix="convcli-bench-files-") as tmp:
            return _run_all(chosen, Path(tmp), backends, compare, repeat, say)
    work = Path(work_dir)
    _claim_work_dir(work)
    return _run_all(chosen, work, backends, compare, repeat, say)


# names the suite itself writes in a work folder (inputs kept, outputs replaced and
# removed): a folder it did not make may hold the user's files under the same names
_WORK_MARK = ".convcli-bench-files"


def _claim_work_dir(work: Path) -> None:
    """Make ``work`` (or take one this suite made before, kept inputs and all); refuse
    a folder with other files in it, whose names the suite's own could be."""
    try:
        work.mkdir(parents=True, exist_ok=True)
        mark = work / _WORK_MARK
        if not mark.is_file() and any(work.iterdir()):
            raise InputError(
                f"{work}: the work folder holds files this suite did not make (it writes "
                "and removes files of its own names there); give a new or empty folder"
            )
        mark.touch()
    except OSError as exc:
        raise InputError(f"{work}: cannot use as the work folder ({exc.strerror})") from None


def _run_all(
    chosen: list[FilesWorkload],
    work: Path,
    backends: Sequence[str],
    compare: Sequence[str],
    repeat: int,
    say: Progress,
) -> list[FilesRow]:
    rows: list[FilesRow] = []
    for wl in chosen:
        rows += _run_workload(wl, work, tuple(backends), tuple(compare), repeat, say)
    return rows


# ------------------------------------------------------------------------------- targets
@dataclass
class FilesTarget:
    """One of issue 12's targets read off a run."""

    workload: str
    system: str
    measure: str  # what is compared, in words
    target: float
    at_most: bool  # the value must be <= target (memory), else >= (speed ratios)
    value: float
    met: bool


def _fastest(rows: list[FilesRow], names: Sequence[str]) -> FilesRow | None:
    ok = [r for r in rows if r.system in names and r.ok]
    return min(ok, key=lambda r: r.median_s) if ok else None


def target_checks(rows: Sequence[FilesRow]) -> list[FilesTarget]:
    """Issue 12's targets, for every convcli row whose peers the run holds.

    * photos below 100 MP (the 24 MP target): time at least 1.0x the faster of the
      OpenCV script and libvips;
    * photos of 100 MP and more (the 192 MP target): peak memory at most 2x the decoded
      8-bit image, time at least 0.5x libvips;
    * the tiled TIFF (the gigapixel target): peak memory at most 512 MiB, time at least
      0.5x libvips;
    * the PNG: at least 1.0x ImageMagick ``convert``; the folder: at least 1.0x the
      2-thread OpenCV loop in images/s;
    * every convcli output within 1 level of the float64 result.
    """
    checks: list[FilesTarget] = []
    by_wl: dict[str, list[FilesRow]] = {}
    for r in rows:
        by_wl.setdefault(r.workload, []).append(r)
    for group in by_wl.values():
        for ours in (r for r in group if r.system.startswith("convcli")):
            checks += _checks_of(ours, group)
    return checks


def _checks_of(ours: FilesRow, group: list[FilesRow]) -> list[FilesTarget]:
    out: list[FilesTarget] = []

    def speed(peers: Sequence[str], goal: float, label: str) -> None:
        peer = _fastest(group, peers)
        if peer is None or not ours.median_s > 0:
            return
        ratio = peer.median_s / ours.median_s
        what = f"{label}: time / ours ({peer.system})"
        out.append(
            FilesTarget(
                ours.workload, ours.system, what, goal, False, ratio, ratio >= goal and ours.ok
            )
        )

    def memory(limit: float, label: str, value: float) -> None:
        out.append(
            FilesTarget(ours.workload, ours.system, label, limit, True, value, value <= limit)
        )

    if ours.kind == "photo" and ours.megapixels < 100:
        speed(("opencv", "vips"), 1.0, "faster of OpenCV, libvips")
    elif ours.kind == "photo":
        memory(2.0, "peak memory / decoded 8-bit image", ours.peak_mib / ours.decoded_mib)
        speed(("vips",), 0.5, "libvips")
    elif ours.kind == "tiled":
        memory(512.0, "peak memory, MiB", ours.peak_mib)
        speed(("vips",), 0.5, "libvips")
    elif ours.kind == "png":
        speed(("imagemagick",), 1.0, "ImageMagick convert")
    elif ours.kind == "folder":
        speed(("opencv",), 1.0, "OpenCV 2-thread loop")
    if ours.max_err is not None:
        memory(EXACT_LEVELS, "max error, output levels", ours.max_err)
    return out


rows_to_json = bench.rows_to_json  # keys are the FilesRow fields


def rows_to_csv(rows: Sequence[FilesRow]) -> str:
    """Rows as CSV with a header line (empty cells for None)."""
    return bench.rows_to_csv(rows, FilesRow)
