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

from convcli.errors import InputError
from convcli.io._common import name_of

if TYPE_CHECKING:
    from convcli.budget import FileShape


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


class Source(Protocol):
    """Rows of one image, native samples, channels last."""

    info: ImageInfo
    #: True: :meth:`read_rows` must be called with increasing, non-overlapping ranges
    #: (a decoder that runs once from top to bottom); the caller keeps the rows it
    #: needs again (a kernel's halo).
    sequential: bool

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0 <= y < y1`` as a ``(y1 - y0, W, C)`` array of ``info.dtype``.

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

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        return self.samples[y0:y1]

    def close(self) -> None:
        self.samples = None  # type: ignore[assignment]


def open_source(path: str | Path, *, max_pixels: int | None) -> Source:
    """Open an image file for reading by rows.

    Raises
    ------
    InputError
        Missing, empty, truncated or unsupported file, or too many pixels for a format
        that must be decoded whole.
    """
    # first version: the whole-image readers, their float samples as the source
    from convcli.io.images import read_image

    image = read_image(path, max_pixels=max_pixels)
    channels, height, width = image.data.shape
    info = ImageInfo(
        height,
        width,
        channels,
        image.data.dtype,
        None,
        image.bit_depth,
        image.mode,
        image.has_alpha,
        list(image.notes),
    )
    return ArraySource(np.moveaxis(image.data, 0, -1), info)


def source_bytes(shape: FileShape) -> tuple[int, int]:
    """Bytes :func:`open_source` takes for a file of this header: (its peak while
    opening, what the source holds while rows are read). A reader that decodes by strips
    holds a few of them; one that decodes whole holds the image."""
    # first version: the whole-image readers, as convcli.budget priced them, then the
    # float32 image held
    pixels = shape.channels * shape.height * shape.width
    native = pixels * shape.sample_bytes
    as_float = pixels * 4
    if shape.kind == "pil":
        decode = 2 * native + as_float
    elif shape.kind == "png16":
        decode = shape.file_bytes + native + as_float
    else:
        decode = native + as_float
    return decode, as_float


def sink_bytes(target: Target) -> tuple[int, int]:
    """Bytes :func:`write_rows` holds besides the block it is given: (while blocks
    come in, at its end). An encoder that takes the whole image gathers the samples,
    then holds them and the encoded file; one that encodes by strips holds a few."""
    # first version: the blocks, then their concatenation and the encoder's buffers
    samples = target.height * target.width * target.channels * np.dtype(target.dtype).itemsize
    return samples, 3 * samples


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


def write_rows(fh: BinaryIO, rows: Iterable[np.ndarray], target: Target, *, name: str) -> None:
    """Encode ``rows`` (``(n, W, C)`` blocks of ``target.dtype``, top to bottom,
    ``target.height`` rows in all) into ``fh`` as ``target.fmt``.

    ``.npy`` is written as the ``(C, H, W)`` array of the samples.

    Raises
    ------
    InputError
        A format that cannot hold the samples (its message names ``name``).
    """
    # first version: gather the rows, then the whole-image encoders
    from convcli.io import images

    blocks = list(rows)
    samples = np.concatenate(blocks) if blocks else np.empty((0, target.width, target.channels))
    if samples.shape != (target.height, target.width, target.channels):
        raise InputError(f"{name_of(name)}: got rows of shape {samples.shape} for {target}")
    if target.fmt == "NPY":
        images._save_npy(fh, np.ascontiguousarray(np.moveaxis(samples, -1, 0), np.float32))
    elif target.fmt == "PNG":
        images._write_png(fh, samples)
    elif target.fmt == "TIFF":
        images._write_tiff_samples(fh, samples, target.has_alpha)
    else:
        images._save_pil(fh, samples, target.fmt, target.quality)
