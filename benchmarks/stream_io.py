"""convcli's strip readers and writers (convcli.io.stream), timed in this process.

Reads a file by strips of ``--rows`` rows through ``open_source`` / ``read_rows``, or
copies it strip by strip into a TIFF through ``write_rows``, and prints the time the
reading (or copying) took. Run it under ``/usr/bin/time -v`` for the process's wall time
and peak RSS (docs/IO-LIBRARIES.md, "What convcli uses")::

    python benchmarks/io_libraries.py --only jpeg192,tiled --repeat 1   # makes the images
    W=/tmp/convcli-iolib
    /usr/bin/time -v python benchmarks/stream_io.py read $W/photo192.jpg
    /usr/bin/time -v python benchmarks/stream_io.py read $W/tiled100.tif
    /usr/bin/time -v python benchmarks/stream_io.py copy $W/tiled100.tif /tmp/out.tif
    /usr/bin/time -v python benchmarks/stream_io.py whole $W/photo192.jpg   # read_image
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from convcli.io import read_image
from convcli.io.publish import publish
from convcli.io.stream import Target, open_source, write_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["read", "copy", "whole"])
    parser.add_argument("path")
    parser.add_argument("out", nargs="?", help="copy: the TIFF to write (replaced)")
    parser.add_argument("--rows", type=int, default=256, help="strip height (default 256)")
    args = parser.parse_args()
    start = time.perf_counter()
    if args.mode == "whole":
        image = read_image(args.path, max_pixels=None)
        what = f"read_image {image.data.shape} {image.data.dtype}"
    else:
        src = open_source(args.path, max_pixels=None)
        info = src.info
        strips = (
            src.read_rows(y, min(y + args.rows, info.height))
            for y in range(0, info.height, args.rows)
        )
        if args.mode == "read":
            checksum = sum(int(rows[:1].sum(dtype=np.int64)) for rows in strips)
            size = f"{info.height}x{info.width}x{info.channels}"
            what = f"{type(src).__name__} {size} {info.dtype} ({checksum})"
        else:
            target = Target(
                "TIFF", info.height, info.width, info.channels, info.dtype, info.has_alpha
            )
            publish(
                args.out, lambda fh: write_rows(fh, strips, target, name=args.out), mode="replace"
            )
            what = f"{type(src).__name__} -> TIFF {info.height}x{info.width}x{info.channels}"
        src.close()
    print(f"{args.mode}: {what}: {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
