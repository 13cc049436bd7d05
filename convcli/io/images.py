"""Files <-> arrays: images, weight files, bit depths and alpha (files are written through
:func:`convcli.io.publish.publish`).

Dtype policy: every image becomes a ``(C, H, W)`` float32 array. 8-bit samples are
divided by 255, 16-bit samples by 65535 (other integer TIFF depths by 2**bits - 1),
float TIFF/``.npy`` data is kept as it is. Writing rounds ``[0, 1]`` data to the
requested bit depth (8 or 16; 32 = float TIFF).

Codecs: Pillow truncates 16-bit colour PNG and TIFF to 8 bits and cannot write them,
and fills the rows of a PNG whose image data ends early with zeros without a word, so
every PNG is decoded and encoded by libpng (through ``imagecodecs``), and TIFF is read
and written by ``tifffile`` (every compression through ``imagecodecs``; any channel
count; strips or tiles, chunky or planar). Pillow reads everything else (JPEG, WebP,
BMP, GIF...), writes JPEG, WebP and BMP, and parses EXIF.

Every problem with a user's file raises :class:`convcli.errors.InputError` with one line
that starts with the file name; no codec exception escapes for bad input, and what the
codecs log about odd but readable files becomes :attr:`Image.notes`, not stderr lines.
"""

from __future__ import annotations

import contextlib
import io as _stdio
import logging
import os
import threading
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from convcli import notes as cnotes
from convcli.errors import ConvValueError, InputError, OutputExistsError
from convcli.io._common import check_file, codec_reason, name_of, one_line, reason
from convcli.io.jpeg import read_header
from convcli.io.publish import PublishMode, publish
from convcli.names import DEFAULT_MAX_PIXELS
from convcli.pixels import quantize

if TYPE_CHECKING:
    from convcli.budget import FileShape


IMAGE_SUFFIXES: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".webp",
    ".bmp",
    ".gif",
    ".npy",
)
WRITE_FORMATS: dict[str, str] = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".npy": "NPY",
}

# Raster formats Pillow may open. Leaving out EPS/PDF-like plugins means a file with an
# image suffix can never make Pillow start Ghostscript or other external programs.
PIL_FORMATS: tuple[str, ...] = (
    "PNG",
    "JPEG",
    "TIFF",
    "WEBP",
    "BMP",
    "DIB",
    "GIF",
    "PPM",
    "TGA",
    "ICO",
    "PCX",
    "SGI",
    "QOI",
    "DDS",
    "PSD",
    "JPEG2000",
    "AVIF",
)

_PIL_LOCK = threading.Lock()

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_JPEG_SIG = b"\xff\xd8\xff"
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF

# PNG encoding: zlib level 2, every row Up-filtered. On 2048x1536 RGB photos (8- and
# 16-bit) that is 5-8x faster than level 6 with adaptive filters (Pillow's default)
# for files 4-25% larger; level 1 saves little more time, level 3 costs 1.5-2x.
_PNG_LEVEL = 2
# TIFF: Deflate level 1 with the horizontal (floats: floating-point) predictor. The
# predictor makes Deflate both faster and 20-45% smaller than level 6 without one.
_TIFF_DEFLATE_LEVEL = 1

# Loggers through which imagecodecs, tifffile and libvips report odd but readable files.
_CODEC_LOGGERS = ("imagecodecs", "tifffile", "pyvips")
# libpng warns on every interlaced image it is asked to read in one call, then
# de-interlaces it correctly: nothing to tell the user.
_QUIET_CODEC_MESSAGES = ("Interlace handling should be turned on",)


@dataclass
class Image:
    """A decoded image.

    Attributes
    ----------
    data : numpy.ndarray
        ``(C, H, W)`` float32, scaled to [0, 1] for integer formats.
    mode : str
        ``"L"``, ``"LA"``, ``"RGB"``, ``"RGBA"``, ``"F"`` (float gray), ``"F<C>"`` for a
        float array of C channels (``.npy``, float TIFF) or ``"I<C>"`` for C integer
        channels that are no gray/RGB(A) mode (multi-channel TIFF).
    bit_depth : int
        8, 16, or 32 for float data; the default output bit depth.
    has_alpha : bool
        Whether the last channel is alpha (LA, RGBA).
    path : pathlib.Path or None
        Where it was read from.
    notes : list of str
        Things worth telling the user that did not stop the read (codec warnings such
        as corrupt EXIF or odd TIFF tags, an orientation that could not be applied).
    """

    data: np.ndarray
    mode: str
    bit_depth: int
    has_alpha: bool
    path: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return int(self.data.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)``."""
        return int(self.data.shape[1]), int(self.data.shape[2])


# Integer sample types a reader hands out as they are; rarer ones (int8, int16, 64-bit)
# become float32 divided by their top, as read_image gives them.
_NATIVE_INTS = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.uint32), np.dtype(np.int32))


@dataclass
class Native:
    """A decoded image at the depth it is stored in: what :func:`read_native` returns.

    Attributes
    ----------
    samples : numpy.ndarray
        ``(H, W, C)``: uint8, uint16, uint32 or int32 samples, or float32 values.
    top : float or None
        Integer samples divided by this are :attr:`Image.data` (255, 65535, a TIFF's
        ``2**bits - 1`` or MaxSampleValue...); None for float32 samples, used as they are.
    mode, bit_depth, has_alpha, notes
        As :class:`Image`.
    """

    samples: np.ndarray
    top: float | None
    mode: str
    bit_depth: int
    has_alpha: bool
    notes: list[str] = field(default_factory=list)

    def as_float(self) -> np.ndarray:
        """The ``(C, H, W)`` float32 data :func:`read_image` returns."""
        if self.top is None:
            return np.ascontiguousarray(np.moveaxis(self.samples, -1, 0), dtype=np.float32)
        return scaled(self.samples, self.top)


def _native(
    samples: np.ndarray,
    top: float | None,
    mode: str,
    bit_depth: int,
    has_alpha: bool,
    *,
    channels_last: bool = True,
) -> Native:
    """``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` samples as a :class:`Native`: bool
    samples become uint8, rare integer types float32 already divided by ``top``."""
    if samples.ndim == 2:
        samples = samples[..., None]
    elif not channels_last:
        samples = np.moveaxis(samples, 0, -1)
    if top is None:
        return Native(samples, None, mode, bit_depth, has_alpha)
    if samples.dtype == np.bool_:
        samples = samples.view(np.uint8)
    elif not samples.dtype.isnative:
        samples = samples.astype(samples.dtype.newbyteorder("="))
    if samples.dtype not in _NATIVE_INTS:
        data = scaled(samples, top)
        return Native(np.moveaxis(data, 0, -1), None, mode, bit_depth, has_alpha)
    return Native(samples, float(top), mode, bit_depth, has_alpha)


def _check_pixels(name: str, pixels: int, max_pixels: int | None) -> None:
    if max_pixels is not None and pixels > max_pixels:
        raise InputError(
            f"{name}: {pixels} pixels exceeds the limit of {max_pixels} (raise max_pixels)"
        )


def read_image(
    path: str | os.PathLike[str], *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Image:
    """Read an image (or a ``.npy`` array) as a ``(C, H, W)`` float32 array.

    Parameters
    ----------
    path : str or os.PathLike
        PNG, JPEG, TIFF, WebP, BMP, GIF (first frame) or any other format Pillow reads;
        ``.npy`` holding a real ``(C, H, W)`` or ``(H, W)`` array.
    max_pixels : int or None
        Refuse images whose header claims more pixels (decompression bombs); None
        disables the check.

    Returns
    -------
    Image
        EXIF orientation applied; palette images become RGB(A), CMYK and other colour
        spaces RGB, 16-bit gray and colour keep 16 bits (PNG: interlaced too; TIFF:
        every compression, strips or tiles, any channel count). Integer TIFF samples
        wider than 16 bits, or signed, are divided by their declared type's largest
        value (uint32: 2**32 - 1, int32: 2**31 - 1; a smaller MaxSampleValue tag wins),
        whatever the values. Pillow's 32-bit mode "I" from other formats (e.g. 16-bit
        PGM), which does not say its range, is divided by 65535 when its values fit 16
        bits, else by 2**31 - 1. Multi-frame files (animated GIF/WebP/PNG, multi-page
        TIFF) give their first frame, with a note saying how many there are.

    Raises
    ------
    InputError
        Missing, empty, truncated or unsupported file, or too many pixels.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        check_file(path)
        data, depth = _read_npy_image(path, max_pixels)
        mode = "F" if data.shape[0] == 1 else f"F{data.shape[0]}"
        return Image(data, mode, depth, False, path)
    native = read_native(path, max_pixels=max_pixels)
    data = native.as_float()
    native.samples = None  # type: ignore[assignment]  # freed before the caller's next step
    return Image(data, native.mode, native.bit_depth, native.has_alpha, path, native.notes)


def read_native(
    path: str | os.PathLike[str], *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Native:
    """Decode a whole image file (not ``.npy``) at its stored depth.

    :func:`read_image` is this plus the division by :attr:`Native.top`; the same
    readers, rules, notes and errors.
    """
    path = Path(path)
    caught: list[warnings.WarningMessage] = []
    with cnotes.collect(caught):
        native = _read_native(path, max_pixels)
    native.notes.extend(cnotes.text(w) for w in caught)
    if native.samples.ndim != 3 or 0 in native.samples.shape:  # a corrupt header
        raise InputError(f"{name_of(path)}: the image has no pixels (corrupt header?)")
    return native


def _read_native(path: Path, max_pixels: int | None) -> Native:
    name = name_of(path)
    check_file(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(32)
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {reason(exc)}") from None
    if head.startswith(_PNG_SIG):
        return _read_png(path, max_pixels)
    if head.startswith(_JPEG_SIG):
        native = _read_jpeg_vips(path, max_pixels)
        if native is not None:
            return native
    if head[:4] in _TIFF_MAGIC:
        native = _read_tiff(path, max_pixels)
        if native is not None:
            return native
    return _read_with_pil(path, max_pixels)


def _read_jpeg_vips(path: Path, max_pixels: int | None) -> Native | None:
    """A JPEG decoded whole by libvips, which fails on what libjpeg warns about while it
    decodes: Pillow hides libjpeg's warnings, so a JPEG cut short with an EOI marker put
    back reads there as an image whose missing part is grey. The same samples as Pillow
    (the same libjpeg-turbo and settings). None where libvips is missing or leaves the
    file to Pillow (CMYK, a warning in the header), and for a multi-picture (MPO) file,
    whose frames Pillow counts."""
    from convcli.io import sources

    try:
        with open(path, "rb") as fh:
            if b"MPF\x00" in fh.read(1 << 16):
                return None
    except OSError:
        return None  # Pillow's read says why
    source = sources._open_vips(path, "jpeg", max_pixels, whole=True)
    if source is None:
        return None
    info = source.info
    return Native(source.samples, info.top, info.mode, info.bit_depth, info.has_alpha, info.notes)


def probe_image(path: str | os.PathLike[str]) -> FileShape | None:
    """What the header of an image file says, read without decoding its pixels.

    Returns the channels, size, native sample size and the reader :func:`read_image`
    will use (for :func:`convcli.budget.file_need`: a file decoded whole), or None when
    the header cannot be read (:func:`read_image` then says why). A file read by strips
    is priced from its opened source instead (:func:`convcli.io.stream.source_shape`).
    """
    return _probe_header(Path(path))


def _probe_header(path: Path) -> FileShape | None:
    from convcli.budget import FileShape

    try:
        size = path.stat().st_size
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False, mmap_mode="r")
            shape = (1, *arr.shape) if arr.ndim == 2 else tuple(arr.shape)
            if len(shape) != 3:
                return None
            return FileShape(*map(int, shape), max(4, arr.dtype.itemsize), "npy", size)
        with open(path, "rb") as fh:
            head = fh.read(32)
        if head.startswith(_PNG_SIG) and len(head) > 25 and head[12:16] == b"IHDR":
            width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
            depth, colour = head[24], head[25]
            channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(colour, 4)
            return FileShape(channels, height, width, 2 if depth == 16 else 1, "png", size)
        if head[:4] in _TIFF_MAGIC:
            import tifffile

            with _codec_notes([]), cnotes.collect([]), tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                bits = int(page.bitspersample)
                return FileShape(
                    int(page.samplesperpixel),
                    int(page.imagelength),
                    int(page.imagewidth),
                    max(1, -(-bits // 8)),
                    "tiff",
                    size,
                )
        from PIL import Image as PILImage

        # what Pillow warns about while parsing (corrupt EXIF) is reported by the read
        # that follows, with the file's name: the probe keeps it to itself
        with _pil_no_bomb_limit(), cnotes.collect([]):
            PILImage.init()
            formats = [f for f in PIL_FORMATS if f in PILImage.OPEN]
            with PILImage.open(path, formats=formats) as im:
                bands = len(im.getbands()) + (1 if im.mode == "P" else 0)
                sample = 4 if im.mode in ("I", "F") else 2 if im.mode.startswith("I;16") else 1
                return FileShape(max(bands, 1), im.size[1], im.size[0], sample, "pil", size)
    except Exception:  # the decoder reports a bad file with the right words
        return None


def open_npy_image(path: Path) -> np.ndarray:
    """A ``.npy`` image memory-mapped as ``(C, H, W)`` (a 2-D array gets one channel),
    after the checks every reader of it makes: readable, a real dtype, 2-D or 3-D, not
    empty. Raises InputError naming the file."""
    name = name_of(path)
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except Exception as exc:  # numpy raises ValueError/OSError/EOFError/UnpicklingError
        raise InputError(f"{name}: not a readable .npy array ({reason(exc)})") from None
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{name}: .npy dtype {arr.dtype} is not a real number type")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputError(
            f"{name}: .npy image must be (C, H, W) or (H, W), got shape {tuple(arr.shape)}"
        )
    if 0 in arr.shape:
        raise InputError(f"{name}: .npy image is empty (shape {tuple(arr.shape)})")
    return arr


def _read_npy_image(path: Path, max_pixels: int | None) -> tuple[np.ndarray, int]:
    """A ``.npy`` image and its bit depth: uint8/uint16 arrays are scaled like image
    samples (/255, /65535), every other real dtype is taken as float values."""
    name = name_of(path)
    arr = open_npy_image(path)
    _check_pixels(name, int(arr.shape[1]) * int(arr.shape[2]), max_pixels)
    try:
        data = np.ascontiguousarray(arr, dtype=np.float32)
    except (ValueError, OSError) as exc:
        raise InputError(f"{name}: truncated .npy data ({reason(exc)})") from None
    if not np.isfinite(data).all():
        raise InputError(f"{name}: .npy image contains NaN or Inf")
    if arr.dtype.kind == "u" and arr.dtype.itemsize in (1, 2):  # either byte order
        depth = 8 * arr.dtype.itemsize
        return data / np.float32((1 << depth) - 1), depth
    return data, 32


def scaled(
    samples: np.ndarray,
    top: float,
    *,
    channels_last: bool = True,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Integer samples ``(H, W)``, ``(H, W, C)`` (or ``(C, H, W)``) -> ``(C, H, W)``
    float32 divided by ``top``, in one pass (into ``out`` when given: a strip's reused
    buffer). Up to 16 bits the division is float32, so level k becomes the float32
    nearest to k / top; wider integers divide in float64."""
    if samples.ndim == 2:
        chw = samples[None]
    else:
        chw = np.moveaxis(samples, -1, 0) if channels_last else samples
    if out is None:
        out = np.empty(chw.shape, np.float32)
    # dtype= fixes the loop: NumPy < 2 would pick one from the divisor's value (float16).
    loop = np.float32 if chw.dtype.itemsize <= 2 else np.float64
    np.divide(chw, top, out=out, dtype=loop, casting="same_kind")
    return out


class _NoteHandler(logging.Handler):
    """Collects one thread's codec log records (a batch decodes in several threads)."""

    def __init__(self, notes: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.notes = notes
        self.thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread:
            return
        text = one_line(record.getMessage())
        if not any(quiet in text for quiet in _QUIET_CODEC_MESSAGES):
            self.notes.append(text)


@contextlib.contextmanager
def _codec_notes(notes: list[str]) -> Iterator[None]:
    """imagecodecs and tifffile report odd but readable files through ``logging``; with
    no handler configured Python prints those to stderr. Keep them as notes instead."""
    handler = _NoteHandler(notes)
    loggers = [logging.getLogger(name) for name in _CODEC_LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


@contextlib.contextmanager
def _pil_no_bomb_limit():
    """Let our own limit decide: Pillow's global one would refuse or warn first."""
    from PIL import Image as PILImage

    with _PIL_LOCK:
        saved = PILImage.MAX_IMAGE_PIXELS
        PILImage.MAX_IMAGE_PIXELS = None
        try:  # with no limit Pillow neither warns nor raises about the size
            yield
        finally:
            PILImage.MAX_IMAGE_PIXELS = saved


def _read_with_pil(path: Path, max_pixels: int | None) -> Native:
    from PIL import Image as PILImage
    from PIL import ImageOps, UnidentifiedImageError

    name = name_of(path)
    notes: list[str] = []
    try:
        with _pil_no_bomb_limit():
            # Only the header is parsed here (Pillow's bomb check runs in open()), so
            # the lock around the global limit is held briefly, not for decoding.
            PILImage.init()
            formats = [f for f in PIL_FORMATS if f in PILImage.OPEN]
            opened = PILImage.open(path, formats=formats)
        # Pillow warns about e.g. corrupt EXIF on images that decode fine (while opening
        # and decoding): read_image keeps those as notes instead of printing them.
        with opened as im:
            _check_pixels(name, im.size[0] * im.size[1], max_pixels)
            frames = int(getattr(im, "n_frames", 1) or 1)  # animated GIF/WebP/PNG, TIFF
            if frames > 1:
                notes.append(_frames_note(frames, "frames"))
            im.load()  # decode fully inside the try: truncation shows up here
            try:
                # in place: no copy of the (possibly huge) decoded image
                ImageOps.exif_transpose(im, in_place=True)
            except Exception as exc:  # a broken EXIF block must not lose the pixels
                notes.append(f"EXIF orientation ignored ({reason(exc)})")
        native = _from_pil(im, path)
        native.notes.extend(notes)
        return native
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image file (or a format Pillow cannot read)") from None
    except (OSError, SyntaxError, EOFError) as exc:
        text = reason(exc)
        if "truncated" in text or isinstance(exc, EOFError):
            raise InputError(f"{name}: truncated image data") from None
        raise InputError(f"{name}: cannot decode image ({text})") from None
    except MemoryError:
        raise InputError(f"{name}: not enough memory to decode this image") from None
    except Exception as exc:  # Pillow plugins raise many types on corrupt data
        raise InputError(f"{name}: cannot decode image ({reason(exc)})") from None


def _from_pil(im: Any, path: Path) -> Native:
    """A loaded Pillow image as samples at its bit depth."""
    name = name_of(path)
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return _native(np.asarray(im), 65535, "L", 16, False)
    if mode == "I":
        raw = np.asarray(im)
        if raw.size and raw.min() >= 0 and raw.max() <= 65535:
            return _native(raw, 65535, "L", 16, False)
        return _native(raw, 2**31 - 1, "F", 32, False)
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise InputError(f"{name}: float image contains NaN or Inf")
        return _native(arr.copy(), None, "F", 32, False)
    if mode == "1":
        im = im.convert("L")
    elif mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
    elif mode == "La":
        im = im.convert("LA")
    elif mode in ("L", "RGB") and im.info.get("transparency") is not None:
        im = im.convert(mode + "A")  # a colour key: alpha 0 where a pixel has its value
    elif mode in ("RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGBA" if mode == "RGBa" else "RGB")
    if im.mode not in ("L", "LA", "RGB", "RGBA"):
        raise InputError(f"{name}: unsupported image mode {mode!r}")
    return _native(np.asarray(im, dtype=np.uint8), 255, im.mode, 8, im.mode in ("LA", "RGBA"))


def _orient(image: Image, orientation: int) -> Image:
    """Apply an EXIF/TIFF orientation (1-8) like Pillow's ``ImageOps.exif_transpose``."""
    upright = _oriented(np.moveaxis(image.data, 0, -1), orientation)
    image.data = np.ascontiguousarray(np.moveaxis(upright, -1, 0))
    return image


def _oriented(samples: np.ndarray, orientation: int) -> np.ndarray:
    """``(H, W, ...)`` samples in EXIF/TIFF orientation ``orientation`` (1-8) turned
    upright, as Pillow's ``ImageOps.exif_transpose`` does (a contiguous copy)."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1, :],
        5: lambda a: np.swapaxes(a, 0, 1),
        6: lambda a: np.swapaxes(a[::-1, :], 0, 1),
        7: lambda a: np.swapaxes(a[::-1, :], 0, 1)[::-1, :],
        8: lambda a: np.swapaxes(a, 0, 1)[::-1, :],
    }
    if orientation in ops:
        return np.ascontiguousarray(ops[orientation](samples))
    return samples


def _orient_native(native: Native, orientation: int) -> Native:
    native.samples = _oriented(native.samples, orientation)
    return native


# ----------------------------------------------------------------------------- PNG


def _png_frames(blob: bytes) -> int:
    """The frames Pillow counts, from the chunks before the first IDAT: 1 for a still
    PNG; an APNG's acTL count, plus the default image when no fcTL comes before IDAT,
    which is then a frame of its own. 1 for a broken chunk list (libpng then says what
    is wrong)."""
    frames, control_first = None, False
    pos = 8
    while pos + 8 <= len(blob):
        size, kind = int.from_bytes(blob[pos : pos + 4], "big"), blob[pos + 4 : pos + 8]
        if kind == b"IDAT" or pos + 12 + size > len(blob):
            break  # image data, or a chunk cut short (libpng says so)
        if kind == b"acTL" and size >= 8:
            count = int.from_bytes(blob[pos + 8 : pos + 12], "big")
            frames = count if 0 < count <= 0x80000000 else None  # Pillow ignores others
        elif kind == b"fcTL":
            control_first = True
        pos += 12 + size
    return 1 if frames is None else frames + (not control_first)


def _read_png(path: Path, max_pixels: int | None) -> Native:
    """Any PNG (1- to 16-bit gray, gray + alpha, RGB, RGBA, palette; interlaced or not;
    an animated PNG's default image) through libpng, which reports image data that ends
    before the last row: Pillow fills the missing rows with zeros, without a word, when
    the IDAT stream ends early. Pillow would also truncate 16-bit colour to 8 bits.

    Palette images become RGB, or RGBA with a tRNS chunk; gray below 8 bits is scaled to
    0-255, as Pillow does. A tRNS colour key on gray or RGB becomes an alpha channel (0
    where a pixel has the key's value), at every bit depth, as libvips, OpenCV and
    ImageMagick read it (Pillow leaves it in ``info`` and the pixels opaque)."""
    import imagecodecs

    name = name_of(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {reason(exc)}") from None
    if blob[12:16] == b"IHDR":  # the header's size, before anything is decoded
        width, height = int.from_bytes(blob[16:20], "big"), int.from_bytes(blob[20:24], "big")
        _check_pixels(name, width * height, max_pixels)
    frames = _png_frames(blob)
    notes: list[str] = []
    try:
        with _codec_notes(notes):
            samples = imagecodecs.png_decode(blob)
    except MemoryError:
        raise InputError(f"{name}: not enough memory to decode this image") from None
    except Exception as exc:  # PngError (libpng's message) or ValueError
        text = reason(exc)
        if "too small" in text or "not enough image data" in text.lower():
            raise InputError(f"{name}: truncated image data") from None
        raise InputError(f"{name}: cannot decode image ({codec_reason(exc)})") from None
    if samples.ndim == 2:
        samples = samples[..., None]
    channels = samples.shape[2]
    if channels not in (1, 2, 3, 4) or samples.dtype not in (np.uint8, np.uint16):
        raise InputError(f"{name}: unsupported PNG layout ({samples.dtype}, {channels} channels)")
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    bits = 16 if samples.dtype == np.uint16 else 8
    native = _native(samples, 65535 if bits == 16 else 255, mode, bits, channels in (2, 4))
    native.notes = notes
    if frames > 1:
        native.notes.append(_frames_note(frames, "frames"))
    return _orient_native(native, _png_exif_orientation(blob, notes))


def png_head(path: Path) -> bytes:
    """A PNG file's signature and chunks up to its first IDAT (what Pillow parses when
    it opens the file), read without the image data, and then an empty IDAT chunk for
    a parser to stop at; stops early at a broken chunk."""
    parts = []
    with open(path, "rb") as fh:
        parts.append(fh.read(8))
        while True:
            head = fh.read(8)
            if len(head) < 8 or head[4:8] == b"IDAT":
                break
            body = fh.read(int.from_bytes(head[:4], "big") + 4)  # data and CRC
            parts += (head, body)
    return b"".join(parts) + b"\0\0\0\0IDAT" + zlib.crc32(b"IDAT").to_bytes(4, "big")


def _png_exif_orientation(blob: bytes, notes: list[str]) -> int:
    """The orientation Pillow's ``exif_transpose`` finds in a PNG: an eXIf chunk, else
    ImageMagick's "Raw profile type exif" text, else an XMP ``tiff:Orientation``, from
    the chunks before the first IDAT (which Pillow parses when it opens the file; no
    pixels are decoded). 1 when there is none, or a value out of 1-8."""
    if not any(tag in blob for tag in (b"eXIf", b"Raw profile type exif", b"tiff:Orientation")):
        return 1
    from PIL import Image as PILImage

    try:
        with _pil_no_bomb_limit():
            opened = PILImage.open(_stdio.BytesIO(blob), formats=["PNG"])
        with opened as im:  # warnings become notes (read_image collects them)
            # the base class's getexif: the PNG plugin's would decode the pixels first
            value = int(PILImage.Image.getexif(im).get(0x0112, 1))
        return value if 1 <= value <= 8 else 1
    except Exception as exc:  # a broken EXIF block must not lose the pixels
        notes.append(f"EXIF orientation ignored ({reason(exc)})")
        return 1


# ---------------------------------------------------------------------------- TIFF

# TIFF tag values (names as in the TIFF 6.0 specification).
_MINISWHITE, _MINISBLACK, _RGB, _PALETTE, _SEPARATED, _YCBCR = 0, 1, 2, 3, 5, 6
_JPEG = 7
_ORIENTATION = 274
_MAX_SAMPLE_VALUE = 281
# NewSubfileType bit 0: a reduced-resolution copy (thumbnail, pyramid level), not a frame
_REDUCED = 1


def _read_tiff(path: Path, max_pixels: int | None) -> Native | None:
    """The first image of a TIFF through tifffile, at its full bit depth.

    Returns None for colour spaces left to Pillow (YCbCr other than in JPEG, CIE L*a*b*,
    CMYK with extra inks...), which converts them to RGB at 8 bits.
    """
    import tifffile

    name = name_of(path)
    notes: list[str] = []
    try:
        with _codec_notes(notes), tifffile.TiffFile(path) as tif:
            if not len(tif.pages):
                raise InputError(f"{name}: truncated or corrupt TIFF (no image directory)")
            page = tif.pages[0]
            _check_pixels(name, int(page.imagelength) * int(page.imagewidth), max_pixels)
            frames = _tiff_frames(tif)
            if not _tiff_for_tifffile(page):
                return None
            size = tif.filehandle.size
            extents = list(zip(page.dataoffsets, page.databytecounts, strict=False))
            if any(offset + count > size for offset, count in extents):
                raise InputError(f"{name}: truncated image data")
            if int(page.compression) == _JPEG and not _jpeg_segments_end(tif, extents):
                raise InputError(f"{name}: truncated image data")
            samples = page.asarray()
            native = _tiff_native(page, samples, name)
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"{name}: not enough memory to decode this image") from None
    except Exception as exc:  # tifffile and imagecodecs raise many types on bad files
        raise InputError(f"{name}: cannot decode image ({codec_reason(exc)})") from None
    native.notes.extend(notes)
    if frames > 1:
        native.notes.append(_frames_note(frames, "pages"))
    tag = page.tags.get(_ORIENTATION)
    return _orient_native(native, int(tag.value) if tag is not None else 1)


def jpeg_complete(segment: bytes) -> bool:
    """Whether a JPEG stream (a JPEG-compressed TIFF's strip or tile) ends in its EOI
    marker, zero padding allowed. libjpeg decodes one that was cut short as far as it
    goes and fills the rest grey, with only a warning that imagecodecs keeps to itself."""
    return bytes(segment[-4096:]).rstrip(b"\x00").endswith(b"\xff\xd9")


def _jpeg_segments_end(tif: Any, extents: list[tuple[int, int]]) -> bool:
    """:func:`jpeg_complete` for every segment of a page, reading only their ends."""
    fh = tif.filehandle
    for offset, count in extents:
        if offset and count:  # an empty segment reads as 0, as tifffile fills it
            fh.seek(offset + max(count - 4096, 0))
            if not jpeg_complete(fh.read(min(count, 4096))):
                return False
    return True


def _tiff_frames(tif: Any) -> int:
    """Full-resolution pages of a TIFF (thumbnails and pyramid levels left out); a
    broken chain of later pages ends the count (the first page is what is read)."""
    count = 0
    with contextlib.suppress(Exception):
        for page in tif.pages:
            subfile = int(getattr(page, "subfiletype", 0) or 0)
            count += not subfile & _REDUCED
    return max(count, 1)


def _frames_note(frames: int, what: str) -> str:
    return f"{frames} {what}; only the first is filtered (the others are not in the output)"


def _tiff_for_tifffile(page: Any) -> bool:
    """Whether we convert this page's colour space (else Pillow does)."""
    photometric = int(page.photometric)
    if photometric in (_MINISWHITE, _MINISBLACK, _RGB, _PALETTE):
        return True
    if photometric == _YCBCR:  # JPEG-compressed YCbCr decodes to RGB
        return int(page.compression) == _JPEG
    extra = len(page.extrasamples)
    return photometric == _SEPARATED and int(page.samplesperpixel) - extra == 4


def _tiff_native(page: Any, samples: np.ndarray, name: str) -> Native:
    """Decoded TIFF samples (tifffile's layout) -> our ``(H, W, C)`` samples."""
    axes = page.axes
    if axes == "YX":
        chw = samples[None]
    elif axes == "YXS":
        chw = np.moveaxis(samples, -1, 0)
    elif axes == "SYX":  # planar (separate) configuration
        chw = samples
    else:
        raise InputError(f"{name}: unsupported TIFF layout (axes {axes})")
    photometric = int(page.photometric)
    extra = tuple(int(e) for e in page.extrasamples)
    kind = chw.dtype.kind
    bits = int(page.bitspersample)
    if kind not in "biuf":
        raise InputError(f"{name}: unsupported TIFF sample type {chw.dtype}")
    if photometric == _PALETTE:
        return _tiff_palette(page, chw[0], name)
    if photometric == _SEPARATED:
        return _tiff_cmyk(chw, bits, extra)
    colour = 1 if photometric in (_MINISWHITE, _MINISBLACK) else 3
    channels = chw.shape[0]
    # Alpha: declared (ExtraSamples 1 = associated, 2 = unassociated) or, as writers like
    # OpenCV leave it out, one undeclared extra channel. ExtraSamples 0 means "not alpha".
    has_alpha = channels == colour + 1 and (not extra or extra[0] in (1, 2))
    if kind == "f":
        with np.errstate(over="ignore"):
            data = np.ascontiguousarray(chw, dtype=np.float32)
        if not np.isfinite(data).all():
            raise InputError(f"{name}: float image contains NaN or Inf")
        if photometric == _MINISWHITE:  # 0 is white, 1 black (the gray channel only)
            data = data if data.flags.writeable and data is not chw else data.copy()
            data[0] = 1 - data[0]
        mode = "F" if channels == 1 else f"F{channels}"
        return _native(data, None, mode, 32, has_alpha, channels_last=False)
    if kind in "bu" and bits <= 16:
        top = (1 << bits) - 1
        if bits not in (1, 8, 16) and chw.max(initial=0) > top:
            top = np.iinfo(chw.dtype).max  # a writer that declared too few bits
        if photometric == _MINISWHITE:  # 0 is white: invert the gray channel only
            chw = chw.copy()
            chw[0] = ~chw[0] if kind == "b" else top - chw[0]
        depth = 8 if bits <= 8 else 16
    else:
        # Wider or signed integers: divided by the largest value of the type the file
        # declares (SampleFormat, BitsPerSample): 2**32 - 1 for uint32, 2**31 - 1 for
        # int32 (negatives stay negative), or by a smaller MaxSampleValue when the file
        # states one. Never by the values found: one bright pixel must not rescale the
        # whole image (it did, by 32768x, when 16-bit-range data "fit" 16 bits).
        top = float(np.iinfo(chw.dtype).max)
        declared = page.tags.get(_MAX_SAMPLE_VALUE)
        if kind == "u" and declared is not None:
            stated = int(np.max(np.atleast_1d(declared.value)))
            if 0 < stated < top:
                top = float(stated)
        if photometric == _MINISWHITE:  # 0 is white, top black (the gray channel only)
            chw = chw.astype(np.float64)
            chw[0] = top - chw[0]
        if bits > 16:
            mode = "F" if channels == 1 else f"F{channels}"
            return _native(chw, top, mode, 32, has_alpha, channels_last=False)
        depth = 8 if bits <= 8 else 16
    modes = {(1, False): "L", (2, True): "LA", (3, False): "RGB", (4, True): "RGBA"}
    mode = modes.get((channels, has_alpha), f"I{channels}")
    if has_alpha and extra and extra[0] == 1:
        # Associated (premultiplied) alpha: store straight colour like Pillow does
        # (float results: no stored depth holds them).
        data = scaled(chw, top, channels_last=False)
        alpha = data[-1:]
        data[:-1] = np.where(alpha > 0, data[:-1] / np.maximum(alpha, 1e-30), 0)
        return _native(data, None, mode, depth, has_alpha, channels_last=False)
    return _native(chw, top, mode, depth, has_alpha, channels_last=False)


def _tiff_palette(page: Any, index: np.ndarray, name: str) -> Native:
    """Palette TIFF -> RGB. The colour map holds 16-bit values; maps of 8-bit levels
    (v * 257, or v * 256 as Pillow writes them: both read back as v = value // 256, as
    Pillow does; or writers that stored 0-255 as they are) stay 8-bit."""
    cmap = page.colormap
    if cmap is None:
        raise InputError(f"{name}: palette TIFF without a colour map")
    cmap = np.asarray(cmap, np.uint16)[:3]
    depth = 16
    if cmap.max(initial=0) < 256:
        depth = 8
    elif not (cmap % 256).any() or not (cmap % 257).any():
        cmap, depth = cmap // 256, 8
    if depth == 8:
        cmap = cmap.astype(np.uint8)
    rgb = np.take(cmap.T, index, axis=0, mode="clip")  # (H, W, 3)
    return _native(rgb, 255 if depth == 8 else 65535, "RGB", depth, False)


def _tiff_cmyk(chw: np.ndarray, bits: int, extra: tuple[int, ...]) -> Native:
    """CMYK -> RGB as Pillow converts it: R = (1 - C)(1 - K), rounded to the sample
    depth (bit-exact with Pillow at 8 bits)."""
    top = float((1 << bits) - 1) if chw.dtype.kind in "bu" else 1.0
    cmy, k = chw[:3].astype(np.float64), chw[3:4].astype(np.float64)
    rgb = (top - cmy) * (top - k) / top
    has_alpha = chw.shape[0] == 5 and bool(extra) and extra[0] in (1, 2)
    mode = "RGBA" if has_alpha else "RGB"
    depth = 32 if top == 1.0 else 8 if bits <= 8 else 16
    if chw.dtype in (np.uint8, np.uint16) and bits in (8, 16):
        # rint(rgb) fits the sample type: divided by top, the same float32 values as the
        # float64 quotient rounded to float32
        parts = [np.rint(rgb).astype(chw.dtype)]
        if has_alpha:
            parts.append(chw[4:5])
        return _native(np.concatenate(parts), top, mode, depth, has_alpha, channels_last=False)
    parts = [np.rint(rgb) if top > 1 else rgb]
    if has_alpha:
        parts.append(chw[4:5].astype(np.float64))
    data = (np.concatenate(parts) / top).astype(np.float32)
    return _native(data, None, mode, depth, has_alpha, channels_last=False)


# ------------------------------------------------------------------------- alpha


# ------------------------------------------------------------------------ writing


def output_format(path: Path) -> str:
    """The format (a value of :data:`WRITE_FORMATS`) ``path``'s suffix names; InputError
    naming the file for a suffix convcli does not write."""
    fmt = WRITE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(
            f"{name_of(path)}: unknown output format {path.suffix or '(no suffix)'!r}; use "
            f"one of {', '.join(sorted(WRITE_FORMATS))}"
        )
    return fmt


def stored_channels(
    name: str, fmt: str, channels: int, has_alpha: bool | None = None
) -> tuple[int, bool]:
    """The channels a PNG, JPEG, WebP or BMP file stores of ``channels``, and whether the
    last one (alpha) is dropped: JPEG has no alpha, and BMP's is not read back by most
    programs (Pillow too). ``has_alpha`` None or True: 2 and 4 channels end in alpha.

    Raises InputError for a count no image mode of ``fmt`` holds."""
    drop = False
    if fmt in ("JPEG", "BMP"):
        if channels in (2, 4) and has_alpha is not False:
            drop = True
            channels -= 1
        if channels not in (1, 3):
            raise InputError(
                f"{name}: {channels} channels cannot be stored as {fmt}; write .npy or .tif instead"
            )
    elif channels > 4:
        raise InputError(
            f"{name}: {channels} channels fit no {fmt} image mode; write .npy or .tif instead"
        )
    if has_alpha is False and channels in (2, 4):
        raise InputError(
            f"{name}: {channels} channels without alpha fit no {fmt} image mode; "
            "write .npy or .tif instead"
        )
    return channels, drop


# Chroma subsamplings a JPEG is written with: 4:4:4 (none), 4:2:2 (half the columns),
# 4:2:0 (half the columns and rows); "auto" keeps a JPEG input's.
JPEG_SUBSAMPLINGS: tuple[str, ...] = ("444", "422", "420")


def jpeg_subsampling(quality: int, subsampling: str | None = None) -> str:
    """The chroma subsampling a colour JPEG of ``quality`` is written with:
    ``subsampling`` where given (one of :data:`JPEG_SUBSAMPLINGS`), else (None or
    ``"auto"``, as :class:`convcli.batch.Output` says it) none (4:4:4) from quality 90
    up and 4:2:0 below, ImageMagick's rule for an image that was not a JPEG
    (``coders/jpeg.c``; a JPEG input keeps its own, see :func:`read_jpeg_subsampling`).

    >>> jpeg_subsampling(95), jpeg_subsampling(75, "auto"), jpeg_subsampling(95, "420")
    ('444', '420', '420')
    """
    if subsampling is None or subsampling == "auto":
        return "444" if quality >= 90 else "420"
    if subsampling not in JPEG_SUBSAMPLINGS:
        raise ConvValueError(
            f"subsampling must be 'auto' or one of {list(JPEG_SUBSAMPLINGS)}, got {subsampling!r}"
        )
    return subsampling


def read_jpeg_subsampling(path: str | os.PathLike[str]) -> str | None:
    """The chroma subsampling of the JPEG at ``path`` (as
    :attr:`convcli.io.jpeg.JpegHeader.subsampling` says it), or None where ``path`` is
    no colour JPEG with one of those samplings or its markers cannot be read up to the
    frame header (the reader says what is wrong with it). Reads the markers only,
    skipping their contents."""
    try:
        with open(path, "rb") as fh:
            head = read_header(fh, until="frame")
    except OSError:
        return None
    return None if head is None else head.subsampling


# The largest side each format's encoder writes (libjpeg's JPEG_MAX_DIMENSION, WebP's
# 14-bit sizes); the others hold any size convcli makes.
MAX_SIDE: dict[str, int] = {"JPEG": 65500, "WEBP": 16383}


def check_size(name: str, fmt: str, height: int, width: int) -> None:
    """Refuse a ``height`` x ``width`` image ``fmt`` cannot store, as InputError naming
    the file, before any work: the encoders fail only once the whole result is
    computed, libjpeg with a line of its own on stderr and Pillow's "broken data
    stream"."""
    most = MAX_SIDE.get(fmt)
    if most is not None and max(height, width) > most:
        raise InputError(
            f"{name}: {fmt} holds images of at most {most} pixels a side, not "
            f"{width}x{height}; write .png or .tif instead"
        )


def check_bit_depth(name: str, fmt: str, bit_depth: int) -> None:
    """Refuse a bit depth ``fmt`` (a value of :data:`WRITE_FORMATS`) cannot store, as
    InputError naming the file: anything but 8, 16 or 32, and 32 (float32 samples)
    for the formats of integer samples. 16 for JPEG, WebP and BMP is stored at 8 bits
    (lossy or 8-bit formats by choice), as 32 in PNG was stored at 16 without a word:
    float32 is another kind of sample, not a finer integer depth."""
    if bit_depth not in (8, 16, 32):
        raise InputError(f"{name}: bit depth must be 8, 16 or 32, got {bit_depth}")
    if bit_depth == 32 and fmt not in ("TIFF", "NPY"):
        deepest = "8- or 16-bit" if fmt == "PNG" else "8-bit"
        raise InputError(
            f"{name}: {fmt} holds {deepest} integer samples, not 32-bit float ones: "
            f"write .tif or .npy for float32, or a bit depth of {16 if fmt == 'PNG' else 8}"
        )


def write_image(
    path: str | os.PathLike[str],
    data: np.ndarray,
    *,
    bit_depth: int = 8,
    overwrite: bool = True,
    quality: int = 95,
    subsampling: str | None = None,
    has_alpha: bool | None = None,
) -> Path:
    """Write a ``(C, H, W)`` (or ``(H, W)``) float array in [0, 1] as an image.

    Parameters
    ----------
    path : str or os.PathLike
        The format comes from the suffix: ``.png``, ``.jpg``/``.jpeg``, ``.tif``/
        ``.tiff``, ``.webp``, ``.bmp`` or ``.npy`` (raw float32, no clipping).
    data : numpy.ndarray
        Already mapped to [0, 1] (see :func:`map_output`); values outside are clipped,
        NaN becomes 0. 1 channel = gray, 2 = gray + alpha, 3 = RGB, 4 = RGBA. TIFF and
        ``.npy`` hold any number of channels.
    bit_depth : {8, 16, 32}
        16 for PNG and TIFF (gray and colour); 32 writes float32 TIFF. JPEG, WebP
        and BMP are always 8-bit (16 is stored at 8). 32 for PNG, JPEG, WebP or BMP is
        refused (InputError): they hold no float samples.
    overwrite : bool
        True: replace an existing ``path`` in one step. False: create ``path`` only
        if it does not exist, in one step: when another process creates it meanwhile,
        that file is kept and :class:`~convcli.errors.OutputExistsError` is raised.
    quality : int
        JPEG/WebP quality (1-100).
    subsampling : {"auto", "444", "422", "420"}, optional
        A colour JPEG's chroma subsampling (default, or ``"auto"``: none from quality
        90 up, 4:2:0 below; see :func:`jpeg_subsampling`).
    has_alpha : bool or None
        Whether the last channel of a 2- or 4-channel array is alpha (default: yes).
        JPEG and BMP do not keep alpha: it is dropped.

    Returns
    -------
    pathlib.Path
        The written file, published atomically (see :func:`convcli.io.publish.publish`):
        it appears complete or not at all, whatever happens while writing. PNG is
        zlib level 2 with the Up filter, TIFF Deflate level 1 with a predictor.
    """
    path = Path(path)
    name = name_of(path)
    fmt = output_format(path)
    mode: PublishMode = "replace" if overwrite else "create"
    if not overwrite and os.path.lexists(path):  # before the encoding work
        raise OutputExistsError(f"{name}: already exists")
    arr = np.asarray(data)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or 0 in arr.shape:
        raise InputError(f"{name}: cannot write an array of shape {tuple(arr.shape)} as an image")
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{name}: cannot write {arr.dtype} data as an image")
    if fmt == "NPY":
        out = np.ascontiguousarray(arr, np.float32)
        return publish(path, lambda fh: _save_npy(fh, out), mode=mode)
    check_bit_depth(name, fmt, bit_depth)
    check_size(name, fmt, arr.shape[1], arr.shape[2])
    channels = arr.shape[0]
    if fmt == "TIFF":
        tiff_alpha = has_alpha if has_alpha is not None else channels in (2, 4)
        return publish(path, lambda fh: _write_tiff(fh, arr, bit_depth, tiff_alpha), mode=mode)
    channels, drop = stored_channels(name, fmt, channels, has_alpha)
    if drop:
        arr = arr[:-1]
    if fmt == "PNG":
        samples = quantize(arr, bit_depth)
        return publish(path, lambda fh: _write_png(fh, samples), mode=mode)
    q8 = quantize(arr, 8)
    sampling = jpeg_subsampling(quality, subsampling)  # a bad value: before any file

    def save(fh: BinaryIO) -> None:
        try:
            _save_pil(fh, q8, fmt, quality, sampling)
        except (ValueError, TypeError, KeyError) as exc:  # e.g. WebP's 16383 px limit
            raise InputError(f"{name}: cannot write: {reason(exc)}") from None

    return publish(path, save, mode=mode)


def _save_npy(fh: BinaryIO, arr: np.ndarray) -> None:
    """``np.save`` through a plain file write: NumPy's ``tofile`` reports a full disk as
    a bare OSError ("480000 requested and 40928 written") without its errno, which the
    file object's own write keeps (ENOSPC: "no space left on device")."""
    arr = np.ascontiguousarray(arr)
    _write_npy_header(fh, arr.shape, arr.dtype)
    fh.write(memoryview(arr.reshape(-1)).cast("B"))


def _write_npy_header(fh: BinaryIO, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """The header ``np.save`` writes for a C-ordered array of ``shape`` and ``dtype``."""
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": tuple(int(n) for n in shape),
    }
    start = fh.tell()
    try:
        np.lib.format.write_array_header_1_0(fh, header)  # what np.save writes
    except ValueError:  # a header over 64 KiB (thousands of dimensions)
        fh.seek(start)
        fh.truncate()
        np.lib.format.write_array_header_2_0(fh, header)


def _write_png(fh: BinaryIO, samples: np.ndarray) -> None:
    """PNG of 1-4 channels, 8 or 16 bits, through libpng (see ``_PNG_LEVEL``)."""
    import imagecodecs

    if samples.shape[-1] == 1:
        samples = samples[..., 0]
    encoded = imagecodecs.png_encode(samples, level=_PNG_LEVEL, filter=imagecodecs.PNG.FILTER.UP)
    fh.write(encoded)


def _write_tiff(fh: BinaryIO, arr: np.ndarray, bit_depth: int, has_alpha: bool) -> None:
    """TIFF of any channel count through tifffile: 8/16-bit unsigned or 32-bit float
    samples, chunky strips, Deflate with a predictor. Gray for 1-2 channels, RGB for 3 or
    more; extra channels are marked unassociated alpha (2 and 4 channels with alpha) or
    unspecified."""
    if bit_depth == 32:
        samples = np.ascontiguousarray(np.moveaxis(arr, 0, -1), dtype=np.float32)
        np.nan_to_num(samples, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    else:
        samples = quantize(arr, bit_depth)
    _write_tiff_samples(fh, samples, has_alpha)


def _write_tiff_samples(fh: BinaryIO, samples: np.ndarray, has_alpha: bool) -> None:
    """:func:`_write_tiff` of ``(H, W, C)`` samples already in their stored type."""
    import tifffile

    from convcli.io.sinks import tiff_bigtiff

    channels = samples.shape[-1]
    tifffile.imwrite(
        fh,
        samples[..., 0] if channels == 1 else samples,
        bigtiff=tiff_bigtiff(*samples.shape, samples.dtype.itemsize),
        **_tiff_tags(channels, has_alpha),
    )


def _tiff_tags(channels: int, has_alpha: bool) -> dict[str, Any]:
    """tifffile's arguments for convcli's TIFF of ``channels`` samples."""
    colour = 1 if channels < 3 else 3
    extra = channels - colour
    extrasamples = None
    if extra:
        first = 2 if has_alpha and channels in (2, 4) else 0
        extrasamples = [first] + [0] * (extra - 1)
    return {
        "photometric": "minisblack" if colour == 1 else "rgb",
        "planarconfig": "contig" if channels > 1 else None,
        "extrasamples": extrasamples,
        "compression": "zlib",
        "compressionargs": {"level": _TIFF_DEFLATE_LEVEL},
        "predictor": True,  # horizontal differencing; floating-point for float32
        "metadata": None,  # no tifffile JSON description
    }


def _save_pil(
    fh: BinaryIO, q8: np.ndarray, fmt: str, quality: int, subsampling: str | None = None
) -> None:
    """JPEG, WebP or BMP from ``(H, W, C)`` uint8 samples through Pillow (a JPEG's
    chroma subsampling: :func:`jpeg_subsampling`)."""
    from PIL import Image as PILImage

    if fmt == "WEBP" and q8.shape[-1] == 2:  # WebP has no gray + alpha mode
        q8 = q8[..., [0, 0, 0, 1]]
    # uint8 (H, W) -> L, (H, W, 2/3/4) -> LA/RGB/RGBA: Pillow infers the mode.
    im = PILImage.fromarray(q8[..., 0] if q8.shape[-1] == 1 else q8)
    options: dict[str, Any] = {}
    if fmt in ("JPEG", "WEBP"):
        options["quality"] = int(min(max(quality, 1), 100))
    if fmt == "JPEG":
        sampling = jpeg_subsampling(quality, subsampling)
        options["subsampling"] = {"444": 0, "422": 1, "420": 2}[sampling]
    im.save(fh, format=fmt, **options)
