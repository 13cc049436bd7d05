"""Image I/O libraries for the streaming pipeline (issue 12, item 3), measured.

Decode and encode of the formats convcli reads and writes, by each candidate library, each
measurement in a process of its own:

* wall time of the operation (minimum and median of up to ``--repeat`` runs, at most
  ``--budget`` seconds per measurement), imports and input preparation excluded;
* peak RSS of the process during the single-threaded runs (VmHWM, reset after setup), and
  the RSS before the first run (imports and, for encoders, the input array), so that
  ``peak - base`` is what the operation itself held at its peak;
* whether the GIL is released: the same operation on two threads at once (2-thread
  speedup over running them one after the other, 2.0 = fully parallel on 2 cores), and
  the progress of a pure-Python loop on the main thread while the operation runs on
  another (``py%``: iterations per second relative to an idle loop; near 100 % = the
  GIL is free, near 0 = held). Both read low when other processes hold the CPUs; so
  also the longest wait of a thread for the GIL during one run (``GIL wait``: about the
  run's time if the library holds the GIL throughout, a few ms if it releases it).

Then streaming probes (``--streaming``): strip-wise reads and writes that never hold
the whole image, with their peak RSS:

* pyvips: sequential read of a JPEG / PNG / TIFF strip by strip (``Region.fetch``);
* pyvips: encode JPEG / PNG / TIFF from strips produced in Python, fed as an
  uncompressed PNG stream through ``pyvips.SourceCustom`` (libvips pulls the strips as
  its encoder needs them);
* tifffile: tiles of a tiled TIFF decoded one by one (``TiffPage.segments``) and read by
  region through the zarr store (``imread(aszarr=True)``); a tiled TIFF written from
  an iterator of tiles (``imwrite(data=iterator, shape=..., tile=...)``).

Usage::

    python benchmarks/io_libraries.py [--work /tmp/convcli-iolib] [--repeat 3]
        [--only jpeg24,png512] [--libs pillow,pyvips] [--streaming] [--json FILE]

Prints a Markdown report on stdout (the tables of docs/IO-LIBRARIES.md); ``--json``
keeps the raw rows. Test images are generated once into ``--work`` (deterministic).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

# name -> (file name, description); sizes are the issue's
IMAGES: dict[str, tuple[str, str]] = {
    "jpeg24": ("photo24.jpg", "24 MP RGB JPEG (6000x4000, q92)"),
    "jpeg192": ("photo192.jpg", "192 MP RGB JPEG (16000x12000, q92)"),
    "tiff16": ("photo24_16bit.tif", "24 MP RGB 16-bit TIFF (strips, deflate+predictor)"),
    "tiled": ("tiled100.tif", "100 MP RGB 8-bit tiled TIFF (10000x10000, 256x256, deflate)"),
    "png512": ("astronaut.png", "512x512 RGB PNG"),
    "png24": ("photo24.png", "24 MP RGB PNG (6000x4000)"),
}
SHAPES = {
    "jpeg24": (4000, 6000),
    "jpeg192": (12000, 16000),
    "tiff16": (4000, 6000),
    "tiled": (10000, 10000),
    "png24": (4000, 6000),
}


# ------------------------------------------------------------------------------ images
def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A photo-like RGB uint8 image: the sample photos as a 2x2 mosaic, upscaled bicubic,
    with film grain (normal noise, sigma 3 levels) so JPEG and PNG see photo entropy."""
    from PIL import Image

    tiles = [Image.open(p).convert("RGB") for p in sorted((ROOT / "samples").glob("*.png"))][:4]
    tiles = [t.resize((512, 512), Image.BICUBIC) for t in tiles]
    mosaic = Image.new("RGB", (1024, 1024))
    for i, t in enumerate(tiles):
        mosaic.paste(t, (512 * (i % 2), 512 * (i // 2)))
    big = np.asarray(mosaic.resize((w, h), Image.BICUBIC)).copy()
    rng = np.random.default_rng(seed)
    for y in range(0, h, 500):  # noise by strips: a float64 copy of 192 MP would be 4.6 GB
        strip = big[y : y + 500].astype(np.int16)
        strip += np.round(rng.normal(0, 3, strip.shape)).astype(np.int16)
        big[y : y + 500] = np.clip(strip, 0, 255)
    return big


def make_images(work: Path, only: set[str]) -> None:
    import tifffile
    from PIL import Image

    work.mkdir(parents=True, exist_ok=True)
    for key in only:
        name, _ = IMAGES[key]
        path = work / name
        if path.exists():
            continue
        tmp = path.with_suffix(".part" + path.suffix)
        if key == "png512":
            Image.open(ROOT / "samples" / "astronaut.png").convert("RGB").save(tmp)
        elif key in ("jpeg24", "jpeg192"):
            Image.fromarray(photo(*SHAPES[key])).save(tmp, quality=92)
        elif key == "png24":
            Image.fromarray(photo(*SHAPES[key])).save(tmp, compress_level=6)
        elif key == "tiff16":
            a = photo(*SHAPES[key]).astype(np.uint16) * 257
            a += np.random.default_rng(1).integers(0, 257, a.shape, dtype=np.uint16)
            tifffile.imwrite(tmp, a, photometric="rgb", compression="zlib", predictor=True)
        elif key == "tiled":
            a = photo(*SHAPES[key])
            tifffile.imwrite(
                tmp, a, photometric="rgb", tile=(256, 256), compression="zlib", predictor=True
            )
        os.replace(tmp, path)


# --------------------------------------------------------------------------- operations
# Encoders write what convcli writes: JPEG quality 95 without chroma subsampling, PNG
# zlib level 2 with the Up filter where the library lets us choose, TIFF Deflate level 1
# with the horizontal predictor.
PNG_LEVEL = 2

# Each factory takes (input path, work folder) and returns a no-argument callable doing
# the operation once; encoders get their input array decoded beforehand (by tifffile or
# Pillow), so it counts in the base RSS, not in the operation.


def _load_array(path: Path) -> np.ndarray:
    if path.suffix == ".tif":
        import tifffile

        return tifffile.imread(path)
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _dec_pillow(path: Path, out: Path) -> Callable[[], Any]:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None

    def run() -> Any:
        with Image.open(path) as im:
            return np.asarray(im)

    return run


def _dec_pyvips(path: Path, out: Path) -> Callable[[], Any]:
    import pyvips

    def run() -> Any:
        return pyvips.Image.new_from_file(str(path), access="sequential").numpy()

    return run


def _dec_opencv(path: Path, out: Path) -> Callable[[], Any]:
    import cv2

    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(2**40))

    def run() -> Any:
        a = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if a is None:
            raise RuntimeError("cv2.imread returned None")
        return a

    return run


def _dec_imagecodecs(path: Path, out: Path) -> Callable[[], Any]:
    import imagecodecs

    fn = {".jpg": imagecodecs.jpeg8_decode, ".png": imagecodecs.png_decode}[path.suffix]

    def run() -> Any:
        return fn(path.read_bytes())

    return run


def _dec_simplejpeg(path: Path, out: Path) -> Callable[[], Any]:
    import simplejpeg

    def run() -> Any:
        return simplejpeg.decode_jpeg(path.read_bytes(), colorspace="RGB")

    return run


def _dec_turbojpeg(path: Path, out: Path) -> Callable[[], Any]:
    from turbojpeg import TJPF_RGB, TurboJPEG

    tj = TurboJPEG()

    def run() -> Any:
        return tj.decode(path.read_bytes(), pixel_format=TJPF_RGB)

    return run


def _dec_tifffile(path: Path, out: Path) -> Callable[[], Any]:
    import tifffile

    def run() -> Any:
        return tifffile.imread(path, maxworkers=1)

    return run


def _dec_tifffile_mt(path: Path, out: Path) -> Callable[[], Any]:
    import tifffile

    def run() -> Any:
        return tifffile.imread(path)  # tiles/strips decoded on a thread pool

    return run


def _encoder(lib: str, fmt: str, src: Path, out: Path) -> Callable[[], Any]:
    a = _load_array(src)
    dst = out / f"enc-{lib}-{fmt}-{os.getpid()}{'.jpg' if fmt == 'jpeg' else '.' + fmt[:3]}"
    if fmt in ("tiff", "tiled"):
        dst = dst.with_suffix(".tif")
    tiled = fmt == "tiled"
    if lib == "pillow":
        from PIL import Image

        if a.dtype != np.uint8:
            raise RuntimeError("Pillow cannot write 16-bit RGB")
        im = Image.fromarray(a)
        kw = {
            "jpeg": {"quality": 95, "subsampling": 0},
            "png": {"compress_level": PNG_LEVEL},  # adaptive filters: no other choice
            "tiff": {"compression": "tiff_adobe_deflate"},
        }
        if tiled:  # checked: Pillow 13 accepts tile=(256, 256) and writes strips
            raise RuntimeError("Pillow writes no tiled TIFF")
        opts = kw[fmt]
        return lambda: im.save(dst, **opts)
    if lib == "pyvips":
        import pyvips

        def run() -> Any:
            im = pyvips.Image.new_from_array(a)
            if a.dtype == np.uint16:
                im = im.copy(interpretation="rgb16")
            if fmt == "jpeg":
                im.jpegsave(str(dst), Q=95, subsample_mode="off")
            elif fmt == "png":
                im.pngsave(str(dst), compression=PNG_LEVEL, filter="up")
            else:
                im.tiffsave(
                    str(dst), compression="deflate", predictor="horizontal", level=1,
                    tile=tiled, tile_width=256, tile_height=256,
                )  # fmt: skip

        return run
    if lib == "opencv":
        import cv2

        bgr = np.ascontiguousarray(a[..., ::-1])
        if tiled:
            raise RuntimeError("cv2.imwrite writes no tiled TIFF")
        params = {
            "jpeg": [
                cv2.IMWRITE_JPEG_QUALITY,
                95,
                cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
            ],
            "png": [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL],
            "tiff": [cv2.IMWRITE_TIFF_COMPRESSION, 8],  # 8 = deflate
        }[fmt]
        return lambda: cv2.imwrite(str(dst), bgr, params)
    if lib == "imagecodecs":
        import imagecodecs

        if fmt == "jpeg":
            return lambda: dst.write_bytes(imagecodecs.jpeg8_encode(a, level=95, subsampling="444"))
        if fmt == "png":  # what convcli writes PNG with
            up = imagecodecs.PNG.FILTER.UP
            return lambda: dst.write_bytes(imagecodecs.png_encode(a, level=PNG_LEVEL, filter=up))
        raise RuntimeError("TIFF goes through tifffile")
    if lib == "simplejpeg":
        import simplejpeg

        if fmt != "jpeg":
            raise RuntimeError("JPEG only")
        return lambda: dst.write_bytes(simplejpeg.encode_jpeg(a, quality=95, colorspace="RGB"))
    if lib == "turbojpeg":
        from turbojpeg import TJPF_RGB, TJSAMP_444, TurboJPEG

        if fmt != "jpeg":
            raise RuntimeError("JPEG only")
        tj = TurboJPEG()
        return lambda: dst.write_bytes(
            tj.encode(a, quality=95, pixel_format=TJPF_RGB, jpeg_subsample=TJSAMP_444)
        )
    if lib in ("tifffile", "tifffile-mt"):
        import tifffile

        if not fmt.startswith(("tif", "tiled")):
            raise RuntimeError("TIFF only")
        kw: dict[str, Any] = {"photometric": "rgb", "compression": "zlib", "predictor": True}
        kw["compressionargs"] = {"level": 1}  # convcli's TIFF writer
        kw["maxworkers"] = None if lib == "tifffile-mt" else 1
        if tiled:
            kw["tile"] = (256, 256)
        else:
            kw["rowsperstrip"] = 64  # strips of ~1 MB compress in parallel too
        return lambda: tifffile.imwrite(dst, a, **kw)
    raise RuntimeError(f"unknown library {lib}")


DECODERS: dict[str, Callable[[Path, Path], Callable[[], Any]]] = {
    "pillow": _dec_pillow,
    "pyvips": _dec_pyvips,
    "opencv": _dec_opencv,
    "imagecodecs": _dec_imagecodecs,
    "simplejpeg": _dec_simplejpeg,
    "turbojpeg": _dec_turbojpeg,
    "tifffile": _dec_tifffile,
    "tifffile-mt": _dec_tifffile_mt,
}
# which libraries apply to which image
DECODE_LIBS = {
    "jpeg": ["pillow", "pyvips", "opencv", "imagecodecs", "simplejpeg", "turbojpeg"],
    "png": ["pillow", "pyvips", "opencv", "imagecodecs"],
    "tiff": ["pillow", "pyvips", "opencv", "tifffile", "tifffile-mt"],
}
ENCODE_LIBS = DECODE_LIBS
KIND = {
    "jpeg24": "jpeg",
    "jpeg192": "jpeg",
    "tiff16": "tiff",
    "tiled": "tiff",
    "png512": "png",
    "png24": "png",
}


# ------------------------------------------------------------------------ child process
def _rss_mb() -> float:
    """Peak RSS of this process since it started (VmHWM). Not ``ru_maxrss``: that
    carries over the high-water mark of the process this one was forked from (the
    parent made the test images and held 2 GB; every child read 2172 MB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _busy_loop(stop: threading.Event) -> float:
    """Iterations per second of a pure-Python loop until ``stop`` is set."""
    count, t0 = 0, time.perf_counter()
    while not stop.is_set():
        count += 1
    return count / (time.perf_counter() - t0)


def _repeated(run: Callable[[], Any], times: int) -> Callable[[], None]:
    def go() -> None:
        for _ in range(times):
            run()

    return go


def _gil_probes(run: Callable[[], Any], one_s: float) -> dict[str, float]:
    """2-thread speedup, and the Python loop's progress while ``run`` works (both over
    at least ~0.3 s of work, so that short operations are not lost in thread start-up)."""
    k = max(1, round(0.3 / max(one_s, 1e-4)))
    threads = [threading.Thread(target=_repeated(run, k)) for _ in range(2)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    speedup = 2 * k * one_s / (time.perf_counter() - t0)
    idle = threading.Event()
    threading.Timer(0.3, idle.set).start()
    idle_rate = _busy_loop(idle)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (_repeated(run, k)(), done.set()))
    worker.start()
    busy_rate = _busy_loop(done)
    worker.join()
    return {
        "speedup_2t": speedup,
        "py_progress": busy_rate / idle_rate,
        "gil_wait_s": _gil_wait(run),
    }


def _gil_wait(run: Callable[[], Any]) -> float:
    """The longest a Python thread waited for the GIL while ``run`` worked on the main
    thread: a thread sleeping 1 ms at a time measures how late it wakes. Near the whole
    operation's time: the GIL was held throughout; a few ms: released. Unlike the
    speedups, this does not need idle CPUs."""
    done = threading.Event()
    worst = 0.0

    def ticker() -> None:
        nonlocal worst
        while not done.is_set():
            t0 = time.perf_counter()
            time.sleep(0.001)
            worst = max(worst, time.perf_counter() - t0 - 0.001)

    t = threading.Thread(target=ticker)
    t.start()
    time.sleep(0.01)
    run()
    done.set()
    t.join()
    return worst


def child(spec: dict[str, Any]) -> dict[str, Any]:
    path, work = Path(spec["path"]), Path(spec["work"])
    lib, op, fmt = spec["lib"], spec["op"], spec["fmt"]
    if op == "decode":
        run = DECODERS[lib](path, work)
    elif op == "encode":
        run = _encoder(lib, fmt, path, work)
    else:
        run = STREAMING[lib](path, work)
    base = _current_rss_mb()
    # forget the setup's peak (decoding an encoder's input): the kernel resets VmHWM to
    # the current RSS when "5" is written to clear_refs (Linux 4.0+)
    Path("/proc/self/clear_refs").write_text("5")
    times: list[float] = []
    deadline = time.perf_counter() + spec["budget"]
    result = None
    while len(times) < spec["repeat"] and (not times or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - t0)
    peak = _rss_mb()
    row: dict[str, Any] = {"min_s": min(times), "median_s": statistics.median(times)}
    row.update(runs=len(times), base_mb=base, peak_mb=peak)
    if isinstance(result, np.ndarray):
        row["result"] = f"{result.shape} {result.dtype}"
    elif isinstance(result, dict):
        row.update(result)
    outs = sorted(work.glob(f"enc-{lib}-{fmt}-{os.getpid()}.*"))
    if outs:
        row["out_bytes"] = outs[0].stat().st_size
    if op in ("decode", "encode") and spec["gil"]:
        row.update(_gil_probes(run, statistics.median(times)))
    for p in outs:
        p.unlink()
    return row


# ----------------------------------------------------------------------- streaming probes
STRIP = 256


def _vips_strips(path: Path, out: Path) -> Callable[[], Any]:
    """Strips of STRIP rows fetched in order from a sequential libvips read: the decoder
    runs only as far as the strips asked for."""
    import pyvips

    def run() -> Any:
        im = pyvips.Image.new_from_file(str(path), access="sequential")
        region = pyvips.Region.new(im)
        total = 0
        for y in range(0, im.height, STRIP):
            h = min(STRIP, im.height - y)
            buf = region.fetch(0, y, im.width, h)
            total += len(buf)
        return {"result": f"{im.height // STRIP + 1} strips, {total / 2**20:.0f} MiB in all"}

    return run


def _png_stream_source(shape: tuple[int, int, int], dtype: np.dtype, strips: Any) -> Any:
    """A pyvips source reading an uncompressed PNG (deflate "stored" blocks, filter 0)
    whose rows come from ``strips`` (an iterator of uint8/uint16 arrays), made only as
    libvips reads. PNG because every libvips build streams it (the PPM loader that would
    be simpler is missing from the pyvips-binary wheels); stored blocks cost a copy and
    a checksum, no compression."""
    import struct
    import zlib

    import pyvips

    h, w, c = shape
    depth = 16 if dtype == np.uint16 else 8
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[c]

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    def stream() -> Any:
        yield b"\x89PNG\r\n\x1a\n" + chunk(
            b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
        )
        z = zlib.compressobj(0)
        for strip in strips:
            a = strip.astype(">u2" if depth == 16 else np.uint8, copy=False).reshape(len(strip), -1)
            rows = np.zeros((a.shape[0], 1 + a.shape[1] * a.itemsize), np.uint8)  # filter 0
            rows[:, 1:] = a.view(np.uint8).reshape(a.shape[0], -1)
            yield chunk(b"IDAT", z.compress(rows.tobytes()))
        yield chunk(b"IDAT", z.flush()) + chunk(b"IEND", b"")

    parts = stream()
    buf, pos = b"", 0

    def read(size: int) -> bytes:
        # a short read is fine: libvips asks again (slicing a whole pending strip per
        # call made this quadratic: 70 s for 192 MP)
        nonlocal buf, pos
        while pos >= len(buf):
            part = next(parts, None)
            if part is None:
                return b""
            buf, pos = part, 0
        out = buf[pos : pos + size]
        pos += len(out)
        return out

    source = pyvips.SourceCustom()
    source.on_read(read)
    return source


def _vips_stream_encode(suffix: str, opts: str) -> Callable[[Path, Path], Callable[[], Any]]:
    def factory(path: Path, out: Path) -> Callable[[], Any]:
        import pyvips

        dst = out / f"stream-{os.getpid()}{suffix}"

        def run() -> Any:
            # decode strips with libvips, "compute" them in Python (invert), encode them
            # with libvips: no stage holds the whole image
            src = pyvips.Image.new_from_file(str(path), access="sequential")
            region = pyvips.Region.new(src)
            dtype = np.uint16 if src.format == "ushort" else np.uint8
            h, w, c = src.height, src.width, src.bands

            def strips() -> Any:
                for y in range(0, h, STRIP):
                    n = min(STRIP, h - y)
                    a = np.frombuffer(region.fetch(0, y, w, n), dtype).reshape(n, w, c)
                    yield np.iinfo(dtype).max - a

            im = pyvips.Image.new_from_source(
                _png_stream_source((h, w, c), dtype, strips()), "", access="sequential"
            )
            im.write_to_file(str(dst) + opts)
            size = dst.stat().st_size
            dst.unlink()
            return {"result": f"{w}x{h}x{c} {np.dtype(dtype).name} -> {suffix}, {size >> 20} MiB"}

        return run

    return factory


def _tifffile_segments(path: Path, out: Path) -> Callable[[], Any]:
    import tifffile

    def run() -> Any:
        n = 0
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            for seg, _index, _shape in page.segments(maxworkers=1):
                n += 1 if seg is not None else 0
        return {"result": f"{n} tiles decoded one by one"}

    return run


def _tifffile_zarr(path: Path, out: Path) -> Callable[[], Any]:
    import tifffile
    import zarr

    def run() -> Any:
        store = tifffile.imread(path, aszarr=True)
        z = zarr.open(store, mode="r")
        total = 0
        for y in range(0, z.shape[0], STRIP):
            total += z[y : y + STRIP].nbytes
        store.close()
        return {"result": f"strips of {STRIP} rows by zarr, {total >> 20} MiB in all"}

    return run


def _tifffile_write_tiles(path: Path, out: Path) -> Callable[[], Any]:
    import tifffile

    dst = out / f"stream-{os.getpid()}.tif"

    def run() -> Any:
        # the tiles of a 10000x10000 RGB image, made one by one (row-major order)
        h = w = 10000
        rng = np.random.default_rng(0)
        noise = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)

        def tiles() -> Any:
            for ty in range(0, h, 256):
                for tx in range(0, w, 256):
                    yield noise ^ np.uint8((ty + tx) // 256 % 255)

        tifffile.imwrite(
            dst, tiles(), shape=(h, w, 3), dtype=np.uint8, photometric="rgb",
            tile=(256, 256), compression="zlib", maxworkers=1,
        )  # fmt: skip
        size = dst.stat().st_size
        dst.unlink()
        return {"result": f"10000x10000x3 uint8 from a tile iterator, {size >> 20} MiB"}

    return run


STREAMING = {
    "pyvips-strips": _vips_strips,
    "pyvips-stream-jpeg": _vips_stream_encode(".jpg", "[Q=95]"),
    "pyvips-stream-png": _vips_stream_encode(".png", "[compression=6]"),
    "pyvips-stream-tiff": _vips_stream_encode(".tif", "[compression=deflate,tile]"),
    "tifffile-segments": _tifffile_segments,
    "tifffile-zarr": _tifffile_zarr,
    "tifffile-write-tiles": _tifffile_write_tiles,
}
STREAM_PLAN = [
    ("pyvips-strips", "jpeg192"),
    ("pyvips-strips", "png24"),
    ("pyvips-strips", "tiled"),
    ("pyvips-strips", "tiff16"),
    ("pyvips-stream-jpeg", "jpeg192"),
    ("pyvips-stream-png", "png24"),
    ("pyvips-stream-tiff", "tiled"),
    ("pyvips-stream-tiff", "tiff16"),
    ("tifffile-segments", "tiled"),
    ("tifffile-zarr", "tiled"),
    ("tifffile-write-tiles", "tiled"),
]


# ------------------------------------------------------------------------------- parent
def measure(spec: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    row = {k: spec[k] for k in ("lib", "op", "fmt", "image")}
    if proc.returncode != 0:
        row["error"] = (err.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:120]
        return row
    row.update(json.loads(out.strip().splitlines()[-1]))
    return row


def versions() -> dict[str, str]:
    v: dict[str, str] = {"python": platform.python_version(), "numpy": np.__version__}
    for mod, attr in (
        ("PIL", "__version__"),
        ("cv2", "__version__"),
        ("imagecodecs", "__version__"),
        ("tifffile", "__version__"),
        ("simplejpeg", "__version__"),
        ("turbojpeg", "__version__"),
        ("zarr", "__version__"),
    ):
        try:
            v[mod] = getattr(__import__(mod), attr)
        except Exception as exc:  # a missing candidate is reported
            v[mod] = f"unavailable ({type(exc).__name__})"
    try:
        import pyvips

        v["pyvips"] = f"{pyvips.__version__} (libvips {pyvips.version(0)}.{pyvips.version(1)})"
    except Exception as exc:
        v["pyvips"] = f"unavailable ({type(exc).__name__})"
    try:
        import imagecodecs

        v["libjpeg (imagecodecs)"] = imagecodecs.jpeg8_version()
    except Exception:
        pass
    return v


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1e3:.0f} ms" if s < 1 else f"{s:.2f} s"


def report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"Measured {meta['date']} on {meta['machine']}; {meta['load']}.", ""]
    lines += ["Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()), ""]
    for op in ("decode", "encode"):
        for image in IMAGES:
            sel = [r for r in rows if r["op"] == op and r["image"] == image]
            if not sel:
                continue
            lines += [f"#### {op}: {IMAGES[image][1]}", ""]
            lines += [
                "| library | min | median | peak RSS | peak - base | 2 threads | py% | GIL wait "
                "| note |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
            ]
            for r in sorted(sel, key=lambda r: r.get("min_s", 1e9)):
                if "error" in r:
                    lines.append(f"| {r['lib']} | - | - | - | - | - | - | - | {r['error']} |")
                    continue
                note = r.get("result", "")
                if "out_bytes" in r:
                    note = f"{r['out_bytes'] / 2**20:.1f} MiB file"
                lines.append(
                    f"| {r['lib']} | {_fmt_s(r['min_s'])} | {_fmt_s(r['median_s'])} "
                    f"| {r['peak_mb']:.0f} MB | {r['peak_mb'] - r['base_mb']:.0f} MB "
                    f"| {r.get('speedup_2t', float('nan')):.2f}x "
                    f"| {100 * r.get('py_progress', float('nan')):.0f} % "
                    f"| {_fmt_s(r.get('gil_wait_s'))} | {note} |"
                )
            lines.append("")
    sel = [r for r in rows if r["op"] == "stream"]
    if sel:
        lines += ["#### streaming probes", ""]
        lines += ["| probe | image | time | peak RSS | what |", "| --- | --- | ---: | ---: | --- |"]
        for r in sel:
            if "error" in r:
                lines.append(f"| {r['lib']} | {r['image']} | - | - | {r['error']} |")
                continue
            lines.append(
                f"| {r['lib']} | {r['image']} | {_fmt_s(r['min_s'])} "
                f"| {r['peak_mb']:.0f} MB | {r.get('result', '')} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/convcli-iolib")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--budget", type=float, default=6.0, help="seconds per measurement")
    ap.add_argument("--only", default=",".join(IMAGES), help="images, comma-separated")
    ap.add_argument("--libs", default="", help="libraries, comma-separated (default: all)")
    ap.add_argument("--ops", default="decode,encode", help="decode,encode ('' for none)")
    ap.add_argument("--streaming", action="store_true", help="also the streaming probes")
    ap.add_argument("--no-gil", action="store_true", help="skip the GIL probes")
    ap.add_argument("--json", help="write the raw rows here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    work = Path(args.work)
    only = [k for k in args.only.split(",") if k]
    needed = set(only) | ({"jpeg192", "png24", "tiled", "tiff16"} if args.streaming else set())
    make_images(work, needed)
    libs = set(filter(None, args.libs.split(",")))
    ops = [o for o in args.ops.split(",") if o]
    rows = []
    for image in only:
        kind = KIND[image]
        fmt = "tiled" if image == "tiled" else kind
        for op in ops:
            for lib in (DECODE_LIBS if op == "decode" else ENCODE_LIBS)[kind]:
                if libs and lib not in libs:
                    continue
                if op == "encode" and (lib, kind) in (("imagecodecs", "tiff"),):
                    continue
                spec = {"lib": lib, "op": op, "fmt": fmt, "image": image}
                spec.update(path=str(work / IMAGES[image][0]), work=str(work))
                spec.update(repeat=args.repeat, budget=args.budget, gil=not args.no_gil)
                print(f"{op} {image} {lib} ...", file=sys.stderr, flush=True)
                rows.append(measure(spec))
    if args.streaming:
        for probe, image in STREAM_PLAN:
            spec = {"lib": probe, "op": "stream", "fmt": KIND[image], "image": image}
            spec.update(path=str(work / IMAGES[image][0]), work=str(work))
            spec.update(repeat=1, budget=0, gil=False)
            print(f"stream {image} {probe} ...", file=sys.stderr, flush=True)
            rows.append(measure(spec))
    load = Path("/proc/loadavg").read_text().split()[:3]
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} vCPUs, {platform.machine()}",
        "load": f"load average {' '.join(load)} at the end (other jobs were running)",
        "versions": versions(),
        "command": "python benchmarks/io_libraries.py " + " ".join(argv or sys.argv[1:]),
    }
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(report(rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
