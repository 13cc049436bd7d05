"""Images as rows of native samples: what the streaming pipeline reads and writes.

A :class:`Source` hands out rows of an image's samples as they are stored (uint8,
uint16, float32...), channels last, in blocks the pipeline asks for; a sink
(:func:`write_rows`) takes the final samples to store, block by block in order, and
encodes them into an open file (the caller publishes it atomically).

Readers that decode by strips (libvips for JPEG/PNG, tifffile for striped and tiled
TIFF, ``.npy`` through a memory map) keep memory at a few strips; a format that can only
be decoded whole becomes an :class:`ArraySource` over its native-depth samples.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

import numpy as np

if TYPE_CHECKING:
    from convcli.budget import FileShape
    from convcli.io.jpeg import JpegHeader


@dataclass
class ImageInfo:
    """What a :class:`Source` holds.

    Attributes
    ----------
    height, width, channels : int
        The image after EXIF orientation (what :meth:`Source.read_rows` returns).
    dtype : numpy.dtype
        The samples :meth:`Source.read_rows` returns: uint8, uint16, uint32, int32,
        float32 or float64.
    top : float or None
        Integer samples are divided by this to give [0, 1] (255, 65535, a TIFF's
        ``2**bits - 1`` or MaxSampleValue); None for float samples, used as they are.
    bit_depth : int
        8, 16, or 32 for float data: the default output bit depth
        (as :attr:`convcli.io.Image.bit_depth`).
    mode : str
        As :attr:`convcli.io.Image.mode`.
    has_alpha : bool
        Whether the last channel is alpha.
    notes : list of str
        What the decoder warned about that did not stop the read.
    jpeg : JpegHeader or None
        A JPEG's header where the reader parsed it (its chroma subsampling then needs
        no second read of the file), else None; not compared (the same samples are
        the same image however they were read).
    """

    height: int
    width: int
    channels: int
    dtype: np.dtype
    top: float | None
    bit_depth: int
    mode: str
    has_alpha: bool
    notes: list[str] = field(default_factory=list)
    jpeg: JpegHeader | None = field(default=None, compare=False)


class Source(Protocol):
    """Rows of one image, native samples, channels last."""

    info: ImageInfo
    #: True: :meth:`read_rows` must be called with increasing, non-overlapping ranges
    #: (a decoder that runs once from top to bottom); the caller keeps the rows it
    #: needs again (a kernel's halo).
    sequential: bool
    #: Bytes the source holds while rows are read (a few runs of rows for a reader
    #: by strips, the samples for an image decoded whole): what a budget prices. A
    #: source without it is priced as holding the whole image.
    held_bytes: int

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0 <= y < y1`` as a ``(y1 - y0, W, C)`` array of ``info.dtype``.

        The array may be read-only, a strided view (a mirrored or planar image) and
        share memory with the source: copy it before changing it.

        Raises InputError naming the file for a file that turns out to be bad."""
        ...

    def close(self) -> None: ...


class ArraySource:
    """A :class:`Source` over samples already in memory ``(H, W, C)``."""

    sequential = False

    def __init__(self, samples: np.ndarray, info: ImageInfo) -> None:
        if samples.ndim == 2:
            samples = samples[..., None]
        self.samples = samples
        self.info = info
        self.held_bytes = samples.nbytes

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        return self.samples[y0:y1]

    def close(self) -> None:
        self.samples = None  # type: ignore[assignment]


def open_source(path: str | Path, *, max_pixels: int | None, whole: bool = True) -> Source | None:
    """Open an image file for reading by rows.

    JPEG, 8/16-bit PNG and WebP are read through libvips when ``pyvips`` loads
    (sequential), striped and tiled TIFF through tifffile and ``.npy`` through a memory
    map (random access); other files and variants are decoded whole at their stored
    depth (:func:`convcli.io.images.read_native`). Rows divided by ``info.top`` are
    :func:`convcli.io.read_image`'s data, value for value. ``max_pixels`` (against
    decompression bombs) applies to what is decoded at once: images decoded whole,
    progressive JPEG and interlaced PNG, a TIFF's strip or row of tiles; a streamed
    image may have any size.

    With ``whole=False`` a file that would be decoded whole is left unread: None is
    returned (a caller prices it from its header first, then opens it again). A file
    read by strips is opened once either way, reading its header only.

    Raises
    ------
    InputError
        Missing, empty, truncated or unsupported file, or too many pixels for a format
        that must be decoded whole.
    """
    from convcli.io.sources import open_source as _open

    return _open(path, max_pixels=max_pixels, whole=whole)


def source_shape(source: Source, path: str | Path) -> FileShape:
    """What an opened source tells a budget (:func:`source_bytes`): its size, samples
    and the bytes it holds."""
    from convcli.budget import FileShape

    info = source.info
    try:
        size = Path(path).stat().st_size
    except OSError:
        size = 0
    held = getattr(source, "held_bytes", None)
    if held is None:
        held = info.height * info.width * info.channels * info.dtype.itemsize
    return FileShape(info.channels, info.height, info.width, info.dtype.itemsize, "stream",
                     size, held=held)  # fmt: skip


def source_bytes(shape: FileShape) -> tuple[int, int]:
    """Bytes :func:`open_source` takes for a file: (its peak while opening, what the
    source holds while rows are read). An opened source says what it holds
    (``shape.held``: a few strips for a reader by strips); a file priced from its
    header is decoded whole and holds the native samples."""
    if shape.held is not None:
        return shape.held, shape.held
    row = shape.channels * shape.width * shape.sample_bytes
    native = shape.height * row
    if shape.kind == "pil":
        return 2 * native, native  # Pillow's image and its samples as an array
    if shape.kind == "png":  # libpng: the file in memory and the samples
        return shape.file_bytes + native, native
    return native, native


def sink_bytes(target: Target) -> tuple[int, int]:
    """Bytes :func:`write_rows` holds besides the block it is given: (while blocks
    come in, at its end). TIFF, ``.npy`` and JPEG are written by strips or bands (a
    few raw and encoded ones in flight); PNG, WebP and BMP gather the samples, then
    hold them and the encoded file (at most about the samples' size again)."""
    row = target.width * target.channels * np.dtype(target.dtype).itemsize
    samples = target.height * row
    if target.fmt in ("TIFF", "NPY"):
        from convcli.io.sinks import _STRIP_BYTES

        strips = 4 * max(_STRIP_BYTES, row)  # raw and encoded strips on the codec pool
        return strips, strips
    if target.fmt == "JPEG":
        from convcli.io.sinks import _jpeg_bands, codec_pool

        bands = _jpeg_bands(target)
        if bands is not None:
            # the band being filled, the ones on the codec threads and one waiting
            # for its turn, each with its encoded data (smaller than the raw band)
            held = 2 * (codec_pool()._max_workers + 2) * bands[0] * row
            return held, held
    return samples, 2 * samples


@dataclass(frozen=True)
class Target:
    """What an output file will hold: its format and the samples written to it."""

    fmt: str  # a value of convcli.io.WRITE_FORMATS: PNG, JPEG, TIFF, WEBP, BMP, NPY
    height: int
    width: int
    channels: int
    dtype: np.dtype  # uint8, uint16 or float32 (NPY and 32-bit TIFF)
    has_alpha: bool
    quality: int = 95
    #: a colour JPEG's chroma subsampling ("444", "422", "420"); None: by quality
    #: (:func:`convcli.io.images.jpeg_subsampling`)
    subsampling: str | None = None


def write_rows(fh: BinaryIO, rows: Iterable[np.ndarray], target: Target, *, name: str) -> None:
    """Encode ``rows`` (``(n, W, C)`` blocks of ``target.dtype``, top to bottom,
    ``target.height`` rows in all) into ``fh`` as ``target.fmt``.

    ``.npy`` is written as the ``(C, H, W)`` array of the samples. TIFF, ``.npy`` and
    JPEG are written as the blocks arrive (memory: a strip, or a few JPEG bands); PNG,
    WebP and BMP gather the rows into one buffer of the stored samples, then encode it.
    The files are the ones :func:`convcli.io.write_image` writes for the same samples;
    a JPEG has the same encoder settings and decodes to the same pixels (its bands are
    joined by restart markers).

    Raises
    ------
    InputError
        A format that cannot hold the samples (its message names ``name``).
    """
    from convcli.io.sinks import write_rows as _write

    _write(fh, rows, target, name=name)
