"""The writers behind :func:`convcli.io.stream.write_rows`.

- TIFF: strips encoded as they arrive (Deflate level 1 with the predictor, as
  :func:`convcli.io.write_image` writes them) and handed to tifffile as encoded
  segments: memory is one strip, and the file is the one the whole-image writer gives.
  BigTIFF when the samples could make the file pass 4 GB.
- ``.npy``: the header, then each block's rows stored into the ``(C, H, W)`` planes
  where they belong: memory is one block.
- JPEG: bands of whole MCU rows encoded on the codec threads as they arrive
  (libjpeg-turbo through imagecodecs) and joined by restart markers into one baseline
  image: memory is a few bands, the encoding overlaps the filter and runs on every
  core, and the pixels decode to those of the whole image's encoding (see
  :func:`_write_jpeg_rows`).
- PNG, WebP, BMP (and JPEG where imagecodecs lacks libjpeg-turbo): encoders of whole
  images; the rows are gathered into one buffer of the output's samples (no list of
  blocks, no concatenated copy), then encoded once. PNG through libpng (imagecodecs),
  JPEG through libvips where pyvips loads (faster than Pillow; the same libjpeg-turbo
  with the same quantisation and sampling: the same pixels decode back), else Pillow;
  WebP and BMP through Pillow.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from convcli.errors import InputError
from convcli.io import images as _im
from convcli.io._common import codec_pool, name_of, reason

if TYPE_CHECKING:
    from convcli.io.stream import Target

# tifffile's default strip size for compressed data (rowsperstrip = 256 KiB // row):
# the streamed file is laid out as the whole-image writer's
_STRIP_BYTES = 262144
# tifffile's threshold for BigTIFF (4 GiB less 32 MiB for the directories)
_BIGTIFF_BYTES = 2**32 - 2**25


def write_rows(fh: BinaryIO, rows: Iterable[np.ndarray], target: Target, *, name: str) -> None:
    """See :func:`convcli.io.stream.write_rows`."""
    blocks = _blocks(rows, target, name)
    if target.fmt == "TIFF":
        _write_tiff_rows(fh, blocks, target)
    elif target.fmt == "NPY":
        _write_npy_rows(fh, blocks, target, name)
    elif target.fmt == "JPEG" and _jpeg_bands(target) is not None:
        _write_jpeg_rows(fh, blocks, target, name)
    elif target.fmt in ("PNG", "JPEG", "WEBP", "BMP"):
        samples = _gather(blocks, target)
        _encode_whole(fh, samples, target, name)
    else:
        raise InputError(f"{name_of(name)}: cannot write {target.fmt} files")


def _blocks(rows: Iterable[np.ndarray], target: Target, name: str) -> Iterator[np.ndarray]:
    """The blocks of ``rows``, checked against ``target`` (each ``(n, W, C)`` of its
    dtype, ``target.height`` rows in all)."""
    shape = (target.width, target.channels)
    dtype = np.dtype(target.dtype)
    done = 0
    for block in rows:
        block = np.asarray(block)
        if block.ndim != 3 or block.shape[1:] != shape or done + block.shape[0] > target.height:
            raise InputError(
                f"{name_of(name)}: got a block of shape {block.shape} at row {done} for {target}"
            )
        if block.dtype != dtype:
            raise InputError(f"{name_of(name)}: got {block.dtype} rows for {target}")
        done += block.shape[0]
        yield block
    if done != target.height:
        raise InputError(f"{name_of(name)}: got {done} rows for {target}")


# ---------------------------------------------------------------------------- TIFF


def _tiff_rowsperstrip(target: Target) -> int:
    row = target.width * target.channels * np.dtype(target.dtype).itemsize
    return min(max(_STRIP_BYTES // row, 1), target.height)


def tiff_bigtiff(height: int, width: int, channels: int, itemsize: int) -> bool:
    """Whether a Deflate TIFF of these samples is written as BigTIFF: when the samples
    exceed tifffile's threshold (compressed data can be as large; tifffile itself only
    switches for uncompressed data and would fail past 4 GB)."""
    return height * width * channels * itemsize > _BIGTIFF_BYTES


def _rebanded(
    blocks: Iterator[np.ndarray], rows: int, width: int, channels: int, dtype: np.dtype
) -> Iterator[np.ndarray]:
    """The rows of ``blocks`` (any heights) regrouped into bands of ``rows`` rows (the
    last one shorter) of their first ``channels`` channels, each band a new array: the
    one before may still be encoding."""
    band = np.empty((rows, width, channels), dtype)
    filled = 0
    for block in blocks:
        at = 0
        while at < block.shape[0]:
            n = min(rows - filled, block.shape[0] - at)
            band[filled : filled + n] = block[at : at + n, :, :channels]
            filled += n
            at += n
            if filled == rows:
                yield band
                band = np.empty_like(band)
                filled = 0
    if filled:
        yield band[:filled]


def _write_tiff_rows(fh: BinaryIO, blocks: Iterator[np.ndarray], target: Target) -> None:
    import tifffile

    dtype = np.dtype(target.dtype)
    rps = _tiff_rowsperstrip(target)
    predictor_tag = 3 if dtype.kind == "f" else 2
    predict = tifffile.TIFF.PREDICTORS[predictor_tag]
    compress = tifffile.TIFF.COMPRESSORS[8]  # Deflate (zlib)

    def encode(strip: np.ndarray) -> bytes:
        return compress(predict(strip, axis=-2), level=_im._TIFF_DEFLATE_LEVEL)

    def encoded() -> Iterator[bytes]:
        # strips encode on the codec threads, a few ahead, and are written in order
        pool = codec_pool()
        ahead = pool._max_workers + 1
        pending: deque[Future[bytes]] = deque()
        try:
            for strip in _rebanded(blocks, rps, target.width, target.channels, dtype):
                pending.append(pool.submit(encode, strip))
                if len(pending) >= ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()

    channels = target.channels
    shape = (
        (target.height, target.width) if channels == 1 else (target.height, target.width, channels)
    )
    bigtiff = tiff_bigtiff(target.height, target.width, channels, dtype.itemsize)
    tifffile.imwrite(
        fh,
        encoded(),
        shape=shape,
        dtype=dtype,
        rowsperstrip=rps,
        bigtiff=bigtiff,
        **_im._tiff_tags(channels, target.has_alpha),
    )


# ---------------------------------------------------------------------------- .npy


def _write_npy_rows(fh: BinaryIO, blocks: Iterator[np.ndarray], target: Target, name: str) -> None:
    """The ``(C, H, W)`` float32 array, each block's rows stored at their place in
    every channel plane (``fh`` must be seekable: a file, or :func:`publish`'s)."""
    dtype = np.dtype(np.float32)
    if np.dtype(target.dtype) != dtype:
        raise InputError(f"{name_of(name)}: .npy output holds float32 samples, not {target.dtype}")
    channels, height, width = target.channels, target.height, target.width
    _im._write_npy_header(fh, (channels, height, width), dtype)
    start = fh.tell()
    plane = height * width * dtype.itemsize
    row = width * dtype.itemsize
    fh.truncate(start + channels * plane)
    y = 0
    for block in blocks:
        n = block.shape[0]
        for c in range(channels):
            fh.seek(start + c * plane + y * row)
            fh.write(memoryview(np.ascontiguousarray(block[..., c])).cast("B"))
        y += n
    fh.seek(start + channels * plane)


# ---------------------------------------------------------------------------- JPEG
# Raw bytes of one JPEG band: a few dozen bands for a large photo (each band's encoder
# set-up is a fraction of a millisecond), a few in flight on the codec threads.
_JPEG_BAND_BYTES = 2**20
# A restart interval counts MCUs in 16 bits; libjpeg's largest image side.
_JPEG_MAX_INTERVAL = 65535
_JPEG_MAX_SIDE = 65500


def jpeg_settings(target: Target) -> tuple[int, str]:
    """The quality (clamped to 1-100) and chroma subsampling (``target.subsampling``,
    else by quality: :func:`convcli.io.images.jpeg_subsampling`) every JPEG encoder
    here writes ``target`` with."""
    quality = int(min(max(target.quality, 1), 100))
    return quality, _im.jpeg_subsampling(quality, target.subsampling)


# a colour MCU's (columns, rows) by chroma subsampling; grey and 4:4:4 MCUs are 8x8
_MCU = {"444": (8, 8), "422": (16, 8), "420": (16, 16)}


def _jpeg_bands(target: Target) -> tuple[int, int] | None:
    """(rows per band, MCUs per band) for a JPEG written in bands, or None where it is
    encoded whole: imagecodecs' libjpeg-turbo missing, samples JPEG cannot store (the
    whole-image encoder says why), or a row of MCUs too wide for a restart interval."""
    channels = target.channels - (1 if target.has_alpha and target.channels in (2, 4) else 0)
    if channels not in (1, 3) or np.dtype(target.dtype) != np.uint8:
        return None
    if max(target.height, target.width) > _JPEG_MAX_SIDE:
        return None  # the whole-image encoder says it cannot
    try:
        import imagecodecs

        if not imagecodecs.JPEG8.available:
            return None
    except Exception:  # ImportError, or a build without the codec
        return None
    _, subsampling = jpeg_settings(target)
    mcu_w, mcu_h = _MCU[subsampling] if channels == 3 else (8, 8)
    per_row = -(-target.width // mcu_w)  # MCUs across the image
    most = _JPEG_MAX_INTERVAL // per_row  # MCU rows a restart interval may hold
    if most < 1:
        return None
    want = _JPEG_BAND_BYTES // max(1, target.width * channels * mcu_h)
    mcu_rows = max(1, min(most, want, -(-target.height // mcu_h)))
    return mcu_rows * mcu_h, mcu_rows * per_row


def _jpeg_segments(data: bytes) -> tuple[list[tuple[int, bytes]], memoryview]:
    """A baseline JPEG's marker segments up to and including SOS, and its entropy-coded
    data (between the SOS header and EOI)."""
    view = memoryview(data)
    if bytes(view[:2]) != b"\xff\xd8" or bytes(view[-2:]) != b"\xff\xd9":
        raise ValueError("the JPEG encoder returned no complete image")
    at, segments = 2, []
    while True:
        marker, size = view[at + 1], int.from_bytes(view[at + 2 : at + 4], "big")
        segments.append((marker, bytes(view[at + 4 : at + 2 + size])))
        at += 2 + size
        if marker == 0xDA:
            return segments, view[at:-2]


def _write_jpeg_rows(fh: BinaryIO, blocks: Iterator[np.ndarray], target: Target, name: str) -> None:
    """A baseline JPEG encoded in bands of whole MCU rows on the codec threads as the
    rows arrive, joined by restart markers into one image.

    Each band is a JPEG of its own with the settings of :func:`_jpeg_vips` (the same
    libjpeg-turbo, quantisation tables, sampling and standard Huffman tables): its
    entropy-coded data starts from zero DC predictions and ends on a byte boundary, as
    the data after a restart marker does, so the bands' data joined by ``RSTn`` markers
    under one header (the full height, ``DRI`` = the MCUs of a band) decode to the very
    pixels the whole image's encoding decodes to. Memory: a few bands."""
    import imagecodecs

    rows, interval = _jpeg_bands(target)  # type: ignore[misc]
    quality, subsampling = jpeg_settings(target)
    channels = target.channels - (1 if target.has_alpha and target.channels in (2, 4) else 0)

    def encode(band: np.ndarray) -> bytes:
        data = band[..., 0] if channels == 1 else band
        return imagecodecs.jpeg8_encode(data, level=quality, subsampling=subsampling,
                                        optimize=False)  # fmt: skip

    def header(first: bytes) -> tuple[bytes, bytes]:
        """The whole image's header from the first band's, and the band header the
        others must have (their tables are the first one's)."""
        segments, _ = _jpeg_segments(first)
        parts, same = [b"\xff\xd8"], []
        for marker, body in segments:
            if marker == 0xC0:  # SOF0: precision, height, width, components
                body = body[:1] + target.height.to_bytes(2, "big") + body[3:]
            else:
                same.append(bytes([marker]) + body)
            if marker == 0xDA:
                parts.append(b"\xff\xdd\x00\x04" + interval.to_bytes(2, "big"))
            parts.append(bytes([0xFF, marker]) + (len(body) + 2).to_bytes(2, "big") + body)
        return b"".join(parts), b"".join(same)

    pool = codec_pool()
    ahead = pool._max_workers + 1
    pending: deque[Future[bytes]] = deque()
    done = [0]
    tables = [b""]

    def put(data: bytes) -> None:
        segments, entropy = _jpeg_segments(data)
        if done[0] == 0:
            head, tables[0] = header(data)
            fh.write(head)
        else:
            if b"".join(bytes([m]) + b for m, b in segments if m != 0xC0) != tables[0]:
                raise ValueError("JPEG bands were encoded with different tables")
            fh.write(bytes([0xFF, 0xD0 + (done[0] - 1) % 8]))
        fh.write(entropy)
        done[0] += 1

    try:
        for band in _rebanded(blocks, rows, target.width, channels, np.uint8):
            pending.append(pool.submit(encode, band))
            if len(pending) >= ahead:
                put(pending.popleft().result())
        while pending:
            put(pending.popleft().result())
    finally:
        for future in pending:
            future.cancel()
    fh.write(b"\xff\xd9")


# ------------------------------------------------------------- whole-image encoders


def _gather(blocks: Iterator[np.ndarray], target: Target) -> np.ndarray:
    """One ``(H, W, C)`` buffer of the samples the format stores (JPEG and BMP drop
    alpha), filled block by block."""
    channels = target.channels
    if target.fmt in ("JPEG", "BMP") and target.has_alpha and channels in (2, 4):
        channels -= 1
    samples = np.empty((target.height, target.width, channels), target.dtype)
    y = 0
    for block in blocks:
        samples[y : y + block.shape[0]] = block[..., :channels]
        y += block.shape[0]
    return samples


def _encode_whole(fh: BinaryIO, samples: np.ndarray, target: Target, name: str) -> None:
    fmt, channels = target.fmt, samples.shape[-1]
    # the samples are stored as given: a JPEG or BMP gets no alpha dropped here (the
    # caller drops it), so its samples count as having none
    has_alpha = False if fmt in ("JPEG", "BMP") else target.has_alpha
    _im.stored_channels(name_of(name), fmt, channels, has_alpha)
    if fmt != "PNG" and samples.dtype != np.uint8:
        raise InputError(f"{name_of(name)}: {fmt} holds 8-bit samples, not {samples.dtype}")
    if fmt == "PNG":
        _im._write_png(fh, samples)
        return
    quality, subsampling = jpeg_settings(target)
    if fmt == "JPEG" and _jpeg_vips(fh, samples, quality, subsampling):
        return
    try:
        _im._save_pil(fh, samples, fmt, quality, subsampling)
    except (ValueError, TypeError, KeyError) as exc:  # e.g. WebP's 16383 px limit
        raise InputError(f"{name_of(name)}: cannot write: {reason(exc)}") from None


def _jpeg_vips(fh: BinaryIO, q8: np.ndarray, quality: int, subsampling: str) -> bool:
    """JPEG through libvips with :func:`convcli.io.images._save_pil`'s settings
    (``quality`` 1-100, chroma ``subsampling``; baseline, standard Huffman tables);
    False where pyvips does not load, or for 4:2:2, which libvips does not write."""
    from convcli.io.sources import _pyvips

    if subsampling not in ("444", "420"):
        return False
    pyvips: Any = _pyvips()
    if pyvips is None:
        return False
    q8 = np.ascontiguousarray(q8)
    height, width, bands = q8.shape
    image = pyvips.Image.new_from_memory(q8.data, width, height, bands, "uchar")
    try:
        data = image.write_to_buffer(
            ".jpg",
            Q=quality,
            subsample_mode="off" if subsampling == "444" else "on",
            optimize_coding=False,
            interlace=False,
            keep="none",
        )
    except pyvips.Error:
        return False  # Pillow says what is wrong
    fh.write(data)
    return True
