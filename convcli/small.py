"""Small images whole: one thread decodes, filters and encodes an image from end to end.

The strip pipeline (:mod:`convcli.pipeline`) bounds memory for images of any size, but
for an image of a megapixel its set-up (a reader thread, a strip thread, a writer's
queue, libvips' per-image pipeline) costs as much as the work. A batch of small images
runs faster with each image in one thread from start to finish and several images at
once, one per core: the codecs and the filter release the GIL, so the images overlap.

This module holds the steps of that path that differ from the strip pipeline's:

- :func:`read_small`: the file decoded whole, or None for an image too large for this
  path (the strip pipeline reads it). A plain JPEG (baseline or progressive, 8-bit grey
  or YCbCr, no EXIF or XMP rotation, complete up to its end marker) is decoded from its
  bytes by libjpeg-turbo through simplejpeg, the same decoder libvips and Pillow run
  with the same settings (the same samples, bit for bit), which stops on libjpeg's
  warnings: data that ends early behind a restored end marker is refused, not filled
  grey (imagecodecs' decoder fills it without a word); such a file, and everything
  else, goes through :func:`convcli.io.stream.open_source`, read whole, whose reader
  says what is wrong.
- :func:`encode`: the samples published atomically; JPEG through imagecodecs with the
  settings of the strip pipeline's encoder (quality, the target's chroma subsampling,
  baseline, standard Huffman tables), which decode back to the same pixels.

The batch (:func:`convcli.batch.run_tasks`) decides which images take this path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import BinaryIO

import numpy as np

from convcli.errors import InputError, OutputExistsError
from convcli.io import stream
from convcli.io._common import name_of
from convcli.io._common import reason as one_line_reason
from convcli.io.jpeg import JpegHeader, read_header
from convcli.io.publish import publish

# Native samples of an image this path takes (decoded whole in each worker thread, with
# its padded copy and its result): a few megapixels.
SMALL_BYTES = 16 * 2**20

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
# Huffman-coded frames libjpeg decodes at 8 bits: baseline, extended, progressive
_PLAIN_SOF = frozenset({0xC0, 0xC1, 0xC2})
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')


def _orientation(head: JpegHeader) -> int | None:
    """The orientation :mod:`convcli.io.sources` applies (the EXIF tag, else an XMP
    ``tiff:Orientation``; 1 outside 1-8), or None where the EXIF block does not parse
    cleanly (the general reader then says what it makes of it)."""
    if head.exif is not None:
        import warnings

        from PIL import Image as PILImage

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                exif = PILImage.Exif()
                exif.load(head.exif)
                exif.get_ifd(0x8769)
                value = exif.get(0x0112)
        except Exception:  # a warning or any failure: the general reader
            return None
        if value is not None:
            try:
                value = int(value)
            except (TypeError, ValueError):
                return None
            return value if 1 <= value <= 8 else 1
    if head.xmp is not None:
        match = _XMP_ORIENTATION.search(head.xmp)
        if match:
            value = int(match[2])
            return value if 1 <= value <= 8 else 1
    return 1


def _plain_jpeg(blob: bytes, max_pixels: int | None) -> JpegHeader | None:
    """The header of a JPEG imagecodecs decodes as the general reader would, else None."""
    head = read_header(blob)
    if head is None or head.frame not in _PLAIN_SOF or head.precision != 8:
        return None
    if head.channels not in (1, 3) or 0 in (head.height, head.width):
        return None
    # a file cut short: libvips stops with "truncated", libjpeg through imagecodecs
    # would fill the missing rows in grey; the general reader says so
    if not blob.endswith(_JPEG_EOI):
        return None
    if head.frame == 0xC2 and max_pixels is not None and head.height * head.width > max_pixels:
        return None  # a progressive JPEG is held to max_pixels: the general reader says so
    if (head.exif is not None or head.xmp is not None) and _orientation(head) != 1:
        return None
    return head


def read_small(
    path: Path, *, max_pixels: int | None, limit: int = SMALL_BYTES
) -> stream.ArraySource | None:
    """The image at ``path`` decoded whole when its native samples take at most
    ``limit`` bytes, else None (and None where its header cannot be read: the strip
    pipeline's reader says what is wrong with it).

    Raises
    ------
    InputError
        As :func:`convcli.io.stream.open_source` does, for a file it opened here.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    if path.suffix.lower() == ".npy" or st.st_size == 0 or st.st_size > limit:
        return None  # .npy: a memory map needs no decode
    try:
        with open(path, "rb") as fh:
            blob = fh.read()
    except OSError:
        return None
    if blob.startswith(_JPEG_SOI):
        head = _plain_jpeg(blob, max_pixels)
        if head is not None:
            if head.height * head.width * head.channels > limit:
                return None
            return _decode_jpeg(blob, head)
    from convcli import io as cio

    shape = cio.probe_image(path)
    if shape is None:
        return None
    if shape.height * shape.width * shape.channels * shape.sample_bytes > limit:
        return None
    source = stream.open_source(path, max_pixels=max_pixels)
    try:
        info = source.info
        if info.height * info.width * info.channels * info.dtype.itemsize > limit:
            return None
        if isinstance(source, stream.ArraySource):
            samples = source.samples
        else:
            samples = np.array(source.read_rows(0, info.height))
            if samples.shape[0] != info.height:
                raise InputError(f"{name_of(path)}: truncated image data")
        return stream.ArraySource(samples, info)
    finally:
        if not isinstance(source, stream.ArraySource):
            source.close()


def _decode_jpeg(blob: bytes, head: JpegHeader) -> stream.ArraySource | None:
    try:
        import simplejpeg
    except ImportError:
        return None  # the general reader decodes it
    try:
        # strict: a libjpeg warning ("premature end of data segment": a cut file given
        # its end marker back) is an error, as the general reader's libvips load makes it
        samples = simplejpeg.decode_jpeg(
            blob, colorspace="GRAY" if head.channels == 1 else "RGB", strict=True
        )
    except Exception:  # the general reader words the failure (or reads harmless warnings)
        return None
    if samples.ndim == 2:
        samples = samples[..., None]
    if samples.shape != (head.height, head.width, head.channels) or samples.dtype != np.uint8:
        return None
    info = stream.ImageInfo(
        head.height,
        head.width,
        head.channels,
        np.dtype(np.uint8),
        255.0,
        8,
        "RGB" if head.channels == 3 else "L",
        False,
        [],
        head,
    )
    return stream.ArraySource(samples, info)


def encode(dst: Path, target: stream.Target, samples: np.ndarray, *, replace: bool) -> None:
    """Publish ``dst`` holding ``samples`` ``(H, W, C)`` as ``target`` says (atomic: an
    error leaves no file; ``replace`` False never replaces an existing file)."""
    name = name_of(dst)
    if not replace and os.path.lexists(dst):  # before the encoding work
        raise OutputExistsError(f"{name}: already exists")
    data = _jpeg(samples, target) if target.fmt == "JPEG" else None

    def write(fh: BinaryIO) -> None:
        if data is not None:
            fh.write(data)
            return
        try:
            stream.write_rows(fh, [samples], target, name=str(dst))
        except InputError:
            raise  # names the file and says what is wrong already
        except (ValueError, TypeError, KeyError) as exc:  # an encoder's own refusal
            raise InputError(f"{name}: cannot write: {one_line_reason(exc)}") from None

    publish(dst, write, mode="replace" if replace else "create")


def _jpeg(samples: np.ndarray, target: stream.Target) -> bytes | None:
    """JPEG bytes as the strip pipeline's encoder writes them, or None where the sink
    should (samples it checks and refuses, such as alpha or 16 bits)."""
    if samples.dtype != np.uint8 or samples.ndim != 3 or samples.shape[2] not in (1, 3):
        return None
    if target.has_alpha or samples.shape[2] != target.channels:
        return None
    import imagecodecs

    from convcli.io.sinks import jpeg_settings

    quality, subsampling = jpeg_settings(target)
    image = samples[..., 0] if samples.shape[2] == 1 else samples
    try:
        return bytes(
            imagecodecs.jpeg8_encode(
                np.ascontiguousarray(image),
                level=quality,
                subsampling=subsampling,
                optimize=False,
            )
        )
    except Exception:  # the sink's encoder says what is wrong
        return None
