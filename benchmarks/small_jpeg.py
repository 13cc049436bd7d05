"""Whole small JPEGs: decode and encode times per library, one thread (convcli.small).

A batch's small images are decoded and encoded whole, one image per thread: what counts
is each library's time per image, set-up included. Makes ``--count`` photo-like JPEGs
of ``--size`` (as ``convcli bench --suite files`` makes its folder), then times, per
image, the decode of the file's bytes and the encode at convcli's JPEG settings
(``--quality``, no chroma subsampling from 90 up, baseline, standard Huffman tables),
and checks that every decoder gives imagecodecs' samples and that every encoder's file
decodes to the pixels of imagecodecs' file::

    python benchmarks/small_jpeg.py                # 40 images of 1000x1000
    python benchmarks/small_jpeg.py --size 2000x1500 --count 10

Libraries that are not installed are left out (OpenCV is not a dependency).
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _decoders() -> dict[str, Callable[[bytes], np.ndarray]]:
    import imagecodecs
    from PIL import Image

    found: dict[str, Callable[[bytes], np.ndarray]] = {
        "imagecodecs": imagecodecs.jpeg8_decode,
        "pillow": lambda b: np.asarray(Image.open(io.BytesIO(b))),
    }
    try:
        import pyvips

        pyvips.cache_set_max(0)

        def vips(b: bytes) -> np.ndarray:
            im = pyvips.Image.new_from_buffer(b, "", access="sequential")
            return np.frombuffer(im.write_to_memory(), np.uint8).reshape(
                im.height, im.width, im.bands
            )

        found["pyvips"] = vips
    except ImportError:
        pass
    try:
        import simplejpeg

        found["simplejpeg"] = simplejpeg.decode_jpeg
    except ImportError:
        pass
    try:
        import cv2

        cv2.setNumThreads(1)
        found["opencv"] = lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)[
            ..., ::-1
        ]
    except ImportError:
        pass
    return found


def _encoders(quality: int) -> dict[str, Callable[[np.ndarray], bytes]]:
    import imagecodecs
    from PIL import Image

    sub = "444" if quality >= 90 else "420"

    def pillow(a: np.ndarray) -> bytes:
        out = io.BytesIO()
        Image.fromarray(a).save(out, "JPEG", quality=quality, subsampling=0 if sub == "444" else 2)
        return out.getvalue()

    found: dict[str, Callable[[np.ndarray], bytes]] = {
        "imagecodecs": lambda a: imagecodecs.jpeg8_encode(
            a, level=quality, subsampling=sub, optimize=False
        ),
        "pillow": pillow,
    }
    try:
        import pyvips

        def vips(a: np.ndarray) -> bytes:
            h, w, c = a.shape
            im = pyvips.Image.new_from_memory(a.data, w, h, c, "uchar")
            return im.write_to_buffer(
                ".jpg", Q=quality, subsample_mode="off" if sub == "444" else "on",
                optimize_coding=False, interlace=False, keep="none",
            )  # fmt: skip

        found["pyvips"] = vips
    except ImportError:
        pass
    try:
        import simplejpeg

        found["simplejpeg"] = lambda a: simplejpeg.encode_jpeg(a, quality, colorsubsampling=sub)
    except ImportError:
        pass
    return found


def _timed(fn: Callable, items: list) -> tuple[float, float, list]:
    times, results = [], []
    for item in items:
        t0 = time.perf_counter()
        results.append(fn(item))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1000x1000", help="WxH (default 1000x1000)")
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--quality", type=int, default=95, help="encoder quality (95)")
    args = parser.parse_args()
    from PIL import Image

    from convcli.bench_files import _photo

    w, h = map(int, args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        blobs = []
        for i in range(args.count):  # as the files suite's folder: quality 90, 4:2:0
            path = Path(tmp) / f"{i}.jpg"
            Image.fromarray(_photo(h, w, 100 + i)).save(path, quality=90)
            blobs.append(path.read_bytes())
    print(f"{args.count} JPEGs of {w}x{h}, one thread, ms per image (median, min)")
    reference = None
    for name, fn in _decoders().items():
        med, low, out = _timed(fn, blobs)
        reference = out if reference is None else reference
        same = all(np.array_equal(a, b) for a, b in zip(out, reference, strict=True))
        print(f"  decode {name:12s} {med * 1e3:7.2f} {low * 1e3:7.2f}  same samples: {same}")
    images = reference
    decode = _decoders()["imagecodecs"]
    base = None
    for name, fn in _encoders(args.quality).items():
        med, low, out = _timed(fn, images)
        pixels = [decode(bytes(b)) for b in out]
        base = pixels if base is None else base
        same = all(np.array_equal(a, b) for a, b in zip(pixels, base, strict=True))
        size = statistics.mean(len(b) for b in out) / 1024
        print(f"  encode {name:12s} {med * 1e3:7.2f} {low * 1e3:7.2f}  {size:.0f} KiB, "
              f"same pixels as imagecodecs' file: {same}")  # fmt: skip


if __name__ == "__main__":
    main()
