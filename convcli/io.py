"""Files <-> arrays: images, weight files, bit depths and alpha (files are written through
:func:`convcli.publish.publish`).

Dtype policy: every image becomes a ``(C, H, W)`` float32 array. 8-bit samples are
divided by 255, 16-bit samples by 65535 (other integer TIFF depths by 2**bits - 1),
float TIFF/``.npy`` data is kept as it is. Writing rounds ``[0, 1]`` data to the
requested bit depth (8 or 16; 32 = float TIFF).

Codecs: Pillow truncates 16-bit colour PNG and TIFF to 8 bits and cannot write them, so
16-bit PNG is decoded and every PNG encoded by libpng (through ``imagecodecs``), and
TIFF is read and written by ``tifffile`` (every compression through ``imagecodecs``;
any channel count; strips or tiles, chunky or planar). Pillow reads everything else
(8-bit PNG, JPEG, WebP, BMP, GIF...), writes JPEG, WebP and BMP, and parses EXIF.

Every problem with a user's file raises :class:`convcli.errors.InputError` with one line
that starts with the file name; no codec exception escapes for bad input, and what the
codecs log about odd but readable files becomes :attr:`Image.notes`, not stderr lines.
"""

from __future__ import annotations

import contextlib
import io as _stdio
import json
import logging
import math
import os
import re
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

import numpy as np

from convcli import notes as cnotes
from convcli.budget import check_kernel_shape
from convcli.errors import InputError, OutputExistsError
from convcli.publish import PublishMode, publish

if TYPE_CHECKING:
    from convcli.budget import FileShape

# Pillow's own decompression-bomb limit (89478485) warns and 2x that raises; we use a
# single limit of that 2x value, adjustable per call (``--max-pixels``).
DEFAULT_MAX_PIXELS: int = 178_956_970

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

AlphaMode = Literal["premultiply", "keep", "filter", "drop"]
ALPHA_MODES: tuple[str, ...] = ("premultiply", "keep", "filter", "drop")
# What prepare_alpha/finish_alpha do: the modes, plus "premultiply-keep", the form
# premultiply takes for a kernel that does not sum to 1 (see filters_alpha).
ALPHA_STEPS: tuple[str, ...] = (*ALPHA_MODES, "premultiply-keep")
OutMap = Literal["clip", "abs", "normalize", "offset"]
OUT_MAPS: tuple[str, ...] = ("clip", "abs", "normalize", "offset")

# Largest weight file we parse as text/JSON; bigger ones belong in .npy.
_MAX_TEXT_BYTES = 64 * 1024 * 1024

_PIL_LOCK = threading.Lock()

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF

# PNG encoding: zlib level 2, every row Up-filtered. On 2048x1536 RGB photos (8- and
# 16-bit) that is 5-8x faster than level 6 with adaptive filters (Pillow's default)
# for files 4-25% larger; level 1 saves little more time, level 3 costs 1.5-2x.
_PNG_LEVEL = 2
# TIFF: Deflate level 1 with the horizontal (floats: floating-point) predictor. The
# predictor makes Deflate both faster and 20-45% smaller than level 6 without one.
_TIFF_DEFLATE_LEVEL = 1
# Values per block when rounding to integer levels (512 KiB of float64: stays in cache).
_QUANTIZE_BLOCK = 1 << 16

# Loggers through which imagecodecs and tifffile report odd but readable files.
_CODEC_LOGGERS = ("imagecodecs", "tifffile")
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


def _name(path: str | os.PathLike[str]) -> str:
    return os.fspath(path)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _reason(exc: BaseException) -> str:
    """A short one-line reason (libraries sometimes explain over several paragraphs)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower() if exc.strerror[:1].isupper() else exc.strerror
    text = re.sub(r"\x1b\[[0-9;]*m", "", _one_line(exc)) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _codec_reason(exc: BaseException) -> str:
    """A codec's reason with its error type (``DeflateError: ...``): codec messages are
    terse, and a bare ``IndexError`` text may be just ``0``."""
    return f"{type(exc).__name__}: {_reason(exc)}"


# --------------------------------------------------------------------------- reading


def _check_file(path: Path, what: str = "an image file") -> None:
    name = _name(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {_reason(exc)}") from None
    if path.is_dir():
        raise InputError(f"{name}: is a folder, not {what}")
    if st.st_size == 0:
        raise InputError(f"{name}: empty file")


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
    caught: list[warnings.WarningMessage] = []
    with cnotes.collect(caught):
        image = _read_image(path, max_pixels)
    image.notes.extend(cnotes.text(w) for w in caught)
    return image


def _read_image(path: Path, max_pixels: int | None) -> Image:
    name = _name(path)
    _check_file(path)
    if path.suffix.lower() == ".npy":
        data, depth = _read_npy_image(path, max_pixels)
        mode = "F" if data.shape[0] == 1 else f"F{data.shape[0]}"
        return Image(data, mode, depth, False, path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(32)
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {_reason(exc)}") from None
    if head.startswith(_PNG_SIG) and len(head) > 24 and head[24] == 16:
        return _read_png16(path, max_pixels)
    if head[:4] in _TIFF_MAGIC:
        image = _read_tiff(path, max_pixels)
        if image is not None:
            return image
    return _read_with_pil(path, max_pixels)


def probe_image(path: str | os.PathLike[str]) -> FileShape | None:
    """What the header of an image file says, read without decoding its pixels.

    Returns the channels, size, native sample size and the reader :func:`read_image`
    will use (for :func:`convcli.budget.file_need`), or None when the header cannot be
    read (:func:`read_image` then says why).
    """
    from convcli.budget import FileShape

    path = Path(path)
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
            kind = "png16" if depth == 16 else "pil"
            return FileShape(channels, height, width, 2 if depth == 16 else 1, kind, size)
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


def _read_npy_image(path: Path, max_pixels: int | None) -> tuple[np.ndarray, int]:
    """A ``.npy`` image and its bit depth: uint8/uint16 arrays are scaled like image
    samples (/255, /65535), every other real dtype is taken as float values."""
    name = _name(path)
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except Exception as exc:  # numpy raises ValueError/OSError/EOFError/UnpicklingError
        raise InputError(f"{name}: not a readable .npy array ({_reason(exc)})") from None
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
    _check_pixels(name, int(arr.shape[1]) * int(arr.shape[2]), max_pixels)
    try:
        data = np.ascontiguousarray(arr, dtype=np.float32)
    except (ValueError, OSError) as exc:
        raise InputError(f"{name}: truncated .npy data ({_reason(exc)})") from None
    if not np.isfinite(data).all():
        raise InputError(f"{name}: .npy image contains NaN or Inf")
    if arr.dtype == np.uint8:
        return data / np.float32(255), 8
    if arr.dtype == np.uint16:
        return data / np.float32(65535), 16
    return data, 32


def _scaled(samples: np.ndarray, top: float, *, channels_last: bool = True) -> np.ndarray:
    """Integer samples ``(H, W)``, ``(H, W, C)`` (or ``(C, H, W)``) -> ``(C, H, W)``
    float32 divided by ``top``, in one pass. Up to 16 bits the division is float32, so
    level k becomes the float32 nearest to k / top; wider integers divide in float64."""
    if samples.ndim == 2:
        chw = samples[None]
    else:
        chw = np.moveaxis(samples, -1, 0) if channels_last else samples
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
        text = _one_line(record.getMessage())
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


def _read_with_pil(path: Path, max_pixels: int | None) -> Image:
    from PIL import Image as PILImage
    from PIL import ImageOps, UnidentifiedImageError

    name = _name(path)
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
                notes.append(f"EXIF orientation ignored ({_reason(exc)})")
        image = _from_pil(im, path)
        image.notes.extend(notes)
        return image
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image file (or a format Pillow cannot read)") from None
    except (OSError, SyntaxError, EOFError) as exc:
        text = _reason(exc)
        if "truncated" in text or isinstance(exc, EOFError):
            raise InputError(f"{name}: truncated image data") from None
        raise InputError(f"{name}: cannot decode image ({text})") from None
    except MemoryError:
        raise InputError(f"{name}: not enough memory to decode this image") from None
    except Exception as exc:  # Pillow plugins raise many types on corrupt data
        raise InputError(f"{name}: cannot decode image ({_reason(exc)})") from None


def _from_pil(im: Any, path: Path) -> Image:
    """Convert a loaded Pillow image to our float layout, keeping its bit depth."""
    name = _name(path)
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return Image(_scaled(np.asarray(im), 65535), "L", 16, False, path)
    if mode == "I":
        raw = np.asarray(im)
        if raw.size and raw.min() >= 0 and raw.max() <= 65535:
            return Image(_scaled(raw, 65535), "L", 16, False, path)
        return Image(_scaled(raw, 2**31 - 1), "F", 32, False, path)
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise InputError(f"{name}: float image contains NaN or Inf")
        return Image(arr[None].copy(), "F", 32, False, path)
    if mode == "1":
        im = im.convert("L")
    elif mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
    elif mode == "La":
        im = im.convert("LA")
    elif mode in ("RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGBA" if mode == "RGBa" else "RGB")
    if im.mode not in ("L", "LA", "RGB", "RGBA"):
        raise InputError(f"{name}: unsupported image mode {mode!r}")
    data = _scaled(np.asarray(im, dtype=np.uint8), 255)
    return Image(data, im.mode, 8, im.mode in ("LA", "RGBA"), path)


def _orient(image: Image, orientation: int) -> Image:
    """Apply an EXIF/TIFF orientation (1-8) like Pillow's ``ImageOps.exif_transpose``."""
    d = image.data
    ops = {
        2: lambda a: a[:, :, ::-1],
        3: lambda a: a[:, ::-1, ::-1],
        4: lambda a: a[:, ::-1, :],
        5: lambda a: np.swapaxes(a, 1, 2),
        6: lambda a: np.swapaxes(a[:, ::-1, :], 1, 2),
        7: lambda a: np.swapaxes(a[:, ::-1, :], 1, 2)[:, ::-1, :],
        8: lambda a: np.swapaxes(a, 1, 2)[:, ::-1, :],
    }
    if orientation in ops:
        image.data = np.ascontiguousarray(ops[orientation](d))
    return image


# ---------------------------------------------------------------------- 16-bit PNG


def _read_png16(path: Path, max_pixels: int | None) -> Image:
    """16-bit PNG (gray, gray + alpha, RGB, RGBA; interlaced or not) through libpng:
    Pillow would truncate colour to 8 bits. A tRNS colour key becomes an alpha channel."""
    import imagecodecs

    name = _name(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {_reason(exc)}") from None
    if blob[12:16] == b"IHDR":  # the header's size, before anything is decoded
        width, height = int.from_bytes(blob[16:20], "big"), int.from_bytes(blob[20:24], "big")
        _check_pixels(name, width * height, max_pixels)
    notes: list[str] = []
    try:
        with _codec_notes(notes):
            samples = imagecodecs.png_decode(blob)
    except MemoryError:
        raise InputError(f"{name}: not enough memory to decode this image") from None
    except Exception as exc:  # PngError (libpng's message) or ValueError
        text = _reason(exc)
        if "too small" in text or "not enough image data" in text.lower():
            raise InputError(f"{name}: truncated image data") from None
        raise InputError(f"{name}: cannot decode image ({_codec_reason(exc)})") from None
    channels = 1 if samples.ndim == 2 else samples.shape[2]
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    image = Image(_scaled(samples, 65535), mode, 16, channels in (2, 4), path, notes)
    if b"eXIf" in blob:
        _orient(image, _png_exif_orientation(blob, notes))
    return image


def _png_exif_orientation(blob: bytes, notes: list[str]) -> int:
    """The orientation in a PNG's eXIf chunk. Pillow parses the chunks before the first
    IDAT (where eXIf belongs) when it opens the file; no pixels are decoded."""
    from PIL import Image as PILImage

    try:
        with _pil_no_bomb_limit():
            opened = PILImage.open(_stdio.BytesIO(blob), formats=["PNG"])
        with opened as im:  # warnings become notes (read_image collects them)
            raw = im.info.get("exif")
            exif = PILImage.Exif()
            if raw:
                exif.load(raw)
        return int(exif.get(0x0112, 1))
    except Exception as exc:  # a broken EXIF block must not lose the pixels
        notes.append(f"EXIF orientation ignored ({_reason(exc)})")
        return 1


# ---------------------------------------------------------------------------- TIFF

# TIFF tag values (names as in the TIFF 6.0 specification).
_MINISWHITE, _MINISBLACK, _RGB, _PALETTE, _SEPARATED, _YCBCR = 0, 1, 2, 3, 5, 6
_JPEG = 7
_ORIENTATION = 274
_MAX_SAMPLE_VALUE = 281
# NewSubfileType bit 0: a reduced-resolution copy (thumbnail, pyramid level), not a frame
_REDUCED = 1


def _read_tiff(path: Path, max_pixels: int | None) -> Image | None:
    """The first image of a TIFF through tifffile, at its full bit depth.

    Returns None for colour spaces left to Pillow (YCbCr other than in JPEG, CIE L*a*b*,
    CMYK with extra inks...), which converts them to RGB at 8 bits.
    """
    import tifffile

    name = _name(path)
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
            extents = zip(page.dataoffsets, page.databytecounts, strict=False)
            if any(offset + count > size for offset, count in extents):
                raise InputError(f"{name}: truncated image data")
            samples = page.asarray()
            image = _tiff_image(page, samples, name)
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"{name}: not enough memory to decode this image") from None
    except Exception as exc:  # tifffile and imagecodecs raise many types on bad files
        raise InputError(f"{name}: cannot decode image ({_codec_reason(exc)})") from None
    image.path = path
    image.notes.extend(notes)
    if frames > 1:
        image.notes.append(_frames_note(frames, "pages"))
    tag = page.tags.get(_ORIENTATION)
    return _orient(image, int(tag.value) if tag is not None else 1)


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


def _tiff_image(page: Any, samples: np.ndarray, name: str) -> Image:
    """Decoded TIFF samples (tifffile's layout) -> our ``(C, H, W)`` float image."""
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
        return Image(data, "F" if channels == 1 else f"F{channels}", 32, has_alpha)
    if kind in "bu" and bits <= 16:
        top = (1 << bits) - 1
        if bits not in (1, 8, 16) and chw.max(initial=0) > top:
            top = np.iinfo(chw.dtype).max  # a writer that declared too few bits
        if photometric == _MINISWHITE:  # 0 is white: invert the gray channel only
            chw = chw.copy()
            chw[0] = ~chw[0] if kind == "b" else top - chw[0]
        data = _scaled(chw, top, channels_last=False)
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
        data = _scaled(chw, top, channels_last=False)
        if bits > 16:
            return Image(data, "F" if channels == 1 else f"F{channels}", 32, has_alpha)
        depth = 8 if bits <= 8 else 16
    if has_alpha and extra and extra[0] == 1:
        # Associated (premultiplied) alpha: store straight colour like Pillow does.
        alpha = data[-1:]
        data[:-1] = np.where(alpha > 0, data[:-1] / np.maximum(alpha, 1e-30), 0)
    modes = {(1, False): "L", (2, True): "LA", (3, False): "RGB", (4, True): "RGBA"}
    mode = modes.get((channels, has_alpha), f"I{channels}")
    return Image(data, mode, depth, has_alpha)


def _tiff_palette(page: Any, index: np.ndarray, name: str) -> Image:
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
    rgb = np.take(cmap, index, axis=1, mode="clip")
    return Image(
        _scaled(rgb, 255 if depth == 8 else 65535, channels_last=False), "RGB", depth, False
    )


def _tiff_cmyk(chw: np.ndarray, bits: int, extra: tuple[int, ...]) -> Image:
    """CMYK -> RGB as Pillow converts it: R = (1 - C)(1 - K), rounded to the sample
    depth (bit-exact with Pillow at 8 bits)."""
    top = float((1 << bits) - 1) if chw.dtype.kind in "bu" else 1.0
    cmy, k = chw[:3].astype(np.float64), chw[3:4].astype(np.float64)
    rgb = (top - cmy) * (top - k) / top
    has_alpha = chw.shape[0] == 5 and bool(extra) and extra[0] in (1, 2)
    parts = [np.rint(rgb) if top > 1 else rgb]
    if has_alpha:
        parts.append(chw[4:5].astype(np.float64))
    data = (np.concatenate(parts) / top).astype(np.float32)
    depth = 32 if top == 1.0 else 8 if bits <= 8 else 16
    return Image(data, "RGBA" if has_alpha else "RGB", depth, has_alpha)


# ------------------------------------------------------------------------- alpha


# The sum of the taps (and bias) of the filter that makes the alpha channel, within
# this of 1: the filter averages (or sharpens) and an opaque area stays opaque, so alpha
# is filtered with the colour. Other sums (0 for edge kernels) would make alpha 0 where
# the image is opaque: alpha is kept instead. Float32 rounding of a normalised kernel
# stays far below this; a kernel typed with three decimals (0.111 x 9) does not.
ALPHA_SUM_TOLERANCE = 1e-4


def filters_alpha(total: float) -> bool:
    """Whether ``premultiply`` filters alpha with a filter whose taps sum to ``total``.

    True for sums of 1 (blurs, sharpen, unsharp, emboss, motion blur): an opaque area
    stays opaque. Other sums (0: edge, Laplacian, DoG, LoG, high-pass; or a scaled
    kernel) would turn alpha into an edge map, mostly 0 (an invisible image), so alpha
    is kept as it is and only the premultiplied colour is filtered.

    >>> filters_alpha(1.0), filters_alpha(0.0), filters_alpha(3.0)
    (True, False, False)
    """
    return bool(abs(float(total) - 1.0) <= ALPHA_SUM_TOLERANCE)


def prepare_alpha(image: Image, alpha: str = "premultiply") -> tuple[np.ndarray, np.ndarray | None]:
    """Split an image into the channels to convolve and the alpha to re-attach.

    Parameters
    ----------
    image : Image
    alpha : {"premultiply", "premultiply-keep", "keep", "filter", "drop"}
        ``premultiply`` (default): colour times alpha, and alpha itself is filtered
        too, so transparent pixels do not bleed into the result. ``premultiply-keep``:
        the same channels (colour times alpha, then alpha), but the original alpha is
        returned to replace the filtered one (for kernels that do not sum to 1, see
        :func:`filters_alpha`). ``keep``: filter the colour only and keep the original
        alpha. ``filter``: alpha is a plain channel. ``drop``: remove alpha. Images
        without alpha are returned unchanged.

    Returns
    -------
    (channels, kept_alpha)
        ``channels`` is ``(C', H, W)`` float32; ``kept_alpha`` is ``(1, H, W)`` for
        ``keep`` and ``premultiply-keep``, None otherwise.
    """
    if alpha not in ALPHA_STEPS:
        raise InputError(f"alpha must be one of {list(ALPHA_MODES)}, got {alpha!r}")
    data = image.data
    if not image.has_alpha or data.shape[0] < 2:
        return data, None
    colour, a = data[:-1], data[-1:]
    if alpha in ("premultiply", "premultiply-keep"):
        channels = np.concatenate([colour * a, a]).astype(np.float32, copy=False)
        return channels, (a.copy() if alpha == "premultiply-keep" else None)
    if alpha == "keep":
        return np.ascontiguousarray(colour), a.copy()
    if alpha == "drop":
        return np.ascontiguousarray(colour), None
    return data, None


def _unpremultiply(colour: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Colour divided by alpha where alpha > 0, 0 where it is not."""
    safe = np.where(a > 0, a, 1).astype(colour.dtype)
    return np.where(a > 0, colour / safe, 0).astype(colour.dtype, copy=False)


def finish_alpha(
    result: np.ndarray, kept_alpha: np.ndarray | None, alpha: str, *, has_alpha: bool
) -> np.ndarray:
    """Undo :func:`prepare_alpha` on a convolution result.

    ``premultiply``: divide colour by the filtered alpha where it is > 0 (0 elsewhere).
    ``premultiply-keep``: the result's last channel is replaced by ``kept_alpha`` and
    the colour divided by it, so the premultiplied colour a viewer shows is the filtered
    premultiplied colour, over the original coverage.
    ``keep``: append the original alpha.
    Both ``kept_alpha`` must have the result's height and width (the caller samples it
    at the output pixels when stride or padding change the size); else
    :class:`InputError`.
    """
    if not has_alpha or alpha in ("filter", "drop"):
        return result
    if alpha == "premultiply":
        if result.shape[0] < 2:
            return result
        colour, a = result[:-1], result[-1:]
        return np.concatenate([_unpremultiply(colour, a), a]).astype(result.dtype, copy=False)
    if alpha in ("keep", "premultiply-keep"):
        if kept_alpha is None:
            return result
        if kept_alpha.shape[1:] != result.shape[1:]:
            raise InputError(
                f"the result is {result.shape[2]}x{result.shape[1]} but the kept alpha is "
                f"{kept_alpha.shape[2]}x{kept_alpha.shape[1]}"
            )
        a = kept_alpha.astype(result.dtype, copy=False)
        if alpha == "keep":
            return np.concatenate([result, a])
        colour = _unpremultiply(result[:-1], a)
        return np.concatenate([colour, a]).astype(result.dtype, copy=False)
    raise InputError(f"alpha must be one of {list(ALPHA_MODES)}, got {alpha!r}")


# ------------------------------------------------------------------ output mapping


def map_output(
    data: np.ndarray,
    out_map: str = "clip",
    *,
    scale: float = 1.0,
    offset: float = 0.0,
    clip: bool = True,
) -> np.ndarray:
    """Map a convolution result to the [0, 1] range an image file holds.

    ``data * scale + offset`` first, then ``out_map``: ``clip`` (nothing more), ``abs``
    (magnitude, for edge kernels), ``normalize`` (min..max stretched to 0..1 over the
    whole image), ``offset`` (adds 0.5, ImageMagick's bias 50%, so zero maps to mid
    gray); finally clip to [0, 1] (NaN to 0) unless ``clip=False``.

    Works in float32 (the dtype of every decoded image), float64 only for float64 data:
    the result is rounded to at most 16 bits, far coarser than float32's 24.

    >>> map_output(np.array([[[-0.5, 0.25, 2.0]]]), "offset").tolist()
    [[[0.0, 0.75, 1.0]]]
    """
    if out_map not in OUT_MAPS:
        raise InputError(f"out_map must be one of {list(OUT_MAPS)}, got {out_map!r}")
    if not (math.isfinite(scale) and math.isfinite(offset)):
        raise InputError(f"scale and offset must be finite, got {scale} and {offset}")
    out = np.asarray(data)
    work = np.float64 if out.dtype == np.float64 else np.float32
    out = out.astype(work, copy=True)
    if scale != 1.0:
        out *= work(scale)
    if offset != 0.0:
        out += work(offset)
    if out_map == "abs":
        np.abs(out, out=out)
    elif out_map == "offset":
        out += work(0.5)
    elif out_map == "normalize" and out.size:
        finite = out[np.isfinite(out)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        out = (out - work(lo)) / work(hi - lo) if hi > lo else np.zeros_like(out)
    if clip:
        # fmax/fmin ignore NaN, so NaN becomes 0 in the same two passes as the clip.
        np.fmax(out, 0, out=out)
        np.fmin(out, 1, out=out)
    return out


# ------------------------------------------------------------------------ writing


def write_image(
    path: str | os.PathLike[str],
    data: np.ndarray,
    *,
    bit_depth: int = 8,
    overwrite: bool = True,
    quality: int = 95,
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
        16 for PNG and TIFF (gray and colour); 32 writes float32 TIFF (16-bit PNG).
        JPEG, WebP and BMP are always 8-bit.
    overwrite : bool
        True: replace an existing ``path`` in one step. False: create ``path`` only
        if it does not exist, in one step: when another process creates it meanwhile,
        that file is kept and :class:`~convcli.errors.OutputExistsError` is raised.
    quality : int
        JPEG/WebP quality (1-100).
    has_alpha : bool or None
        Whether the last channel of a 2- or 4-channel array is alpha (default: yes).
        JPEG and BMP do not keep alpha: it is dropped.

    Returns
    -------
    pathlib.Path
        The written file, published atomically (see :func:`convcli.publish.publish`):
        it appears complete or not at all, whatever happens while writing. PNG is
        zlib level 2 with the Up filter, TIFF Deflate level 1 with a predictor.
    """
    path = Path(path)
    name = _name(path)
    suffix = path.suffix.lower()
    fmt = WRITE_FORMATS.get(suffix)
    if fmt is None:
        raise InputError(
            f"{name}: unknown output format {path.suffix or '(no suffix)'!r}; use one of "
            f"{', '.join(sorted(WRITE_FORMATS))}"
        )
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
    if bit_depth not in (8, 16, 32):
        raise InputError(f"{name}: bit depth must be 8, 16 or 32, got {bit_depth}")
    channels = arr.shape[0]
    if fmt == "TIFF":
        tiff_alpha = has_alpha if has_alpha is not None else channels in (2, 4)
        return publish(path, lambda fh: _write_tiff(fh, arr, bit_depth, tiff_alpha), mode=mode)
    if fmt in ("JPEG", "BMP"):
        if channels in (2, 4) and has_alpha is not False:
            # JPEG has no alpha; BMP alpha is not read back by most programs (Pillow too)
            arr = arr[:-1]
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
    if fmt == "PNG":
        samples = _quantize(arr, 16 if bit_depth in (16, 32) else 8)
        return publish(path, lambda fh: _write_png(fh, samples), mode=mode)
    q8 = _quantize(arr, 8)

    def save(fh: BinaryIO) -> None:
        try:
            _save_pil(fh, q8, fmt, quality)
        except (ValueError, TypeError, KeyError) as exc:  # e.g. WebP's 16383 px limit
            raise InputError(f"{name}: cannot write: {_reason(exc)}") from None

    return publish(path, save, mode=mode)


def _save_npy(fh: BinaryIO, arr: np.ndarray) -> None:
    """``np.save`` through a plain file write: NumPy's ``tofile`` reports a full disk as
    a bare OSError ("480000 requested and 40928 written") without its errno, which the
    file object's own write keeps (ENOSPC: "no space left on device")."""
    arr = np.ascontiguousarray(arr)
    header = np.lib.format.header_data_from_array_1_0(arr)
    start = fh.tell()
    try:
        np.lib.format.write_array_header_1_0(fh, header)  # what np.save writes
    except ValueError:  # a header over 64 KiB (thousands of dimensions)
        fh.seek(start)
        fh.truncate()
        np.lib.format.write_array_header_2_0(fh, header)
    fh.write(memoryview(arr.reshape(-1)).cast("B"))


def _quantize(arr: np.ndarray, bits: int) -> np.ndarray:
    """Round ``(C, H, W)`` data in [0, 1] to integer levels, as ``(H, W, C)`` samples
    (the layout every encoder takes). NaN becomes 0, values outside [0, 1] are clipped.

    The product x * top is exact in float64 but not in float32, where about 0.1% of
    random float32 inputs land one 16-bit level off (those within 2**-9 of a half
    level), so the rounding stays float64; done in blocks of ``_QUANTIZE_BLOCK``
    values that stay in cache, it costs what a whole-image float32 pass would.
    """
    top = (1 << bits) - 1
    channels, height, width = arr.shape
    out = np.empty((height, width, channels), np.uint8 if bits == 8 else np.uint16)
    src = np.moveaxis(arr, 0, -1)
    rows = max(1, _QUANTIZE_BLOCK // (width * channels))
    buf = np.empty((min(rows, height), width, channels), np.float64)
    for y in range(0, height, rows):
        work = buf[: min(rows, height - y)]
        np.multiply(src[y : y + rows], top, out=work, dtype=np.float64)
        np.fmax(work, 0, out=work)  # NaN -> 0 (fmax ignores NaN), -inf -> 0
        np.fmin(work, top, out=work)
        np.rint(work, out=work)
        out[y : y + rows] = work
    return out


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
    import tifffile

    channels = arr.shape[0]
    if bit_depth == 32:
        samples = np.ascontiguousarray(np.moveaxis(arr, 0, -1), dtype=np.float32)
        np.nan_to_num(samples, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    else:
        samples = _quantize(arr, bit_depth)
    colour = 1 if channels < 3 else 3
    extra = channels - colour
    extrasamples = None
    if extra:
        first = 2 if has_alpha and channels in (2, 4) else 0
        extrasamples = [first] + [0] * (extra - 1)
    tifffile.imwrite(
        fh,
        samples[..., 0] if channels == 1 else samples,
        photometric="minisblack" if colour == 1 else "rgb",
        planarconfig="contig" if channels > 1 else None,
        extrasamples=extrasamples,
        compression="zlib",
        compressionargs={"level": _TIFF_DEFLATE_LEVEL},
        predictor=True,  # horizontal differencing; floating-point for float32
        metadata=None,  # no tifffile JSON description
    )


def _save_pil(fh: BinaryIO, q8: np.ndarray, fmt: str, quality: int) -> None:
    """JPEG, WebP or BMP from ``(H, W, C)`` uint8 samples through Pillow."""
    from PIL import Image as PILImage

    if fmt == "WEBP" and q8.shape[-1] == 2:  # WebP has no gray + alpha mode
        q8 = q8[..., [0, 0, 0, 1]]
    # uint8 (H, W) -> L, (H, W, 2/3/4) -> LA/RGB/RGBA: Pillow infers the mode.
    im = PILImage.fromarray(q8[..., 0] if q8.shape[-1] == 1 else q8)
    options: dict[str, Any] = {}
    if fmt in ("JPEG", "WEBP"):
        options["quality"] = int(min(max(quality, 1), 100))
    if fmt == "JPEG" and quality >= 90:
        options["subsampling"] = 0  # 4:4:4 at high quality, as ImageMagick does
    im.save(fh, format=fmt, **options)


# ------------------------------------------------------------------ weight files


def load_weights(
    path: str | os.PathLike[str], *, key: str | None = None, notes: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Load a convolution weight (and optional bias) from a file.

    Parameters
    ----------
    path : str or os.PathLike
        ``.npy`` (weight), ``.npz`` (``weight`` + optional ``bias``), ``.safetensors``
        and torch ``.pt``/``.pth`` state dicts (``key`` picks a prefix: ``conv1`` reads
        ``conv1.weight`` and ``conv1.bias``), ``.txt``/``.csv`` (a matrix: rows on lines,
        values split by commas or spaces, or the kernel-text syntax of
        :func:`convcli.presets.parse_kernel_text`), ``.json`` (a nested list, or an
        object with ``weight`` and optional ``bias``).
    key : str or None
        Tensor name or prefix inside ``.npz``/``.safetensors``/``.pt``.
    notes : list of str, optional
        Receives one line per thing worth telling the user that did not stop the load
        (what torch or NumPy warned about while reading the file).

    Returns
    -------
    (weight, bias)
        float32 arrays; ``weight`` is 2-D ``(kH, kW)`` or 4-D
        ``(C_out, C_in/groups, kH, kW)``; ``bias`` is 1-D or None.

    Raises
    ------
    InputError
        Unreadable file, missing tensor, wrong rank, empty, NaN/Inf or non-numbers.
    """
    path = Path(path)
    caught: list[warnings.WarningMessage] = []
    with cnotes.collect(caught):
        weight, bias = _load_weights(path, key)
    if notes is not None:
        notes.extend(cnotes.text(w) for w in caught)
    return weight, bias


def _load_weights(path: Path, key: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    name = _name(path)
    _check_file(path, "a weight file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        weight, bias = _load_npy_weight(path), None
    elif suffix == ".npz":
        weight, bias = _pick(_load_npz(path), key, name)
    elif suffix == ".safetensors":
        weight, bias = _pick(_load_safetensors(path), key, name)
    elif suffix in (".pt", ".pth", ".bin"):
        weight, bias = _load_torch(path, key)
    elif suffix in (".txt", ".csv", ".tsv", ".kernel"):
        weight, bias = _load_text(path), None
    elif suffix == ".json":
        weight, bias = _load_json(path, key)
    else:
        raise InputError(
            f"{name}: unknown weight file type {path.suffix or '(no suffix)'!r}; use .npy, "
            ".npz, .safetensors, .pt, .txt, .csv or .json"
        )
    return _check_weight(weight, bias, name)


def _as_real_array(value: Any, name: str, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(f"{name}: {what} is not a numeric array ({_reason(exc)})") from None
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        if arr.dtype.kind == "c":
            raise InputError(f"{name}: {what} is complex; only real weights are supported")
        raise InputError(f"{name}: {what} is not a numeric array (dtype {arr.dtype})")
    return arr


def _check_weight(weight: Any, bias: Any, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    w = _as_real_array(weight, name, "weight")
    if w.size == 0:
        raise InputError(f"{name}: weight is empty (shape {tuple(w.shape)})")
    check_kernel_shape(w.shape, name)
    if w.ndim == 3:
        raise InputError(
            f"{name}: 3-D weight of shape {tuple(w.shape)} is ambiguous; save it as 2-D "
            "(kH, kW) to apply one kernel to every channel, or 4-D "
            "(C_out, C_in/groups, kH, kW) in torch's layout"
        )
    if w.ndim not in (2, 4):
        raise InputError(
            f"{name}: weight must be 2-D (kH, kW) or 4-D (C_out, C_in/groups, kH, kW), "
            f"got shape {tuple(w.shape)}"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        w32 = w.astype(np.float32)
    if not np.isfinite(w32).all():
        raise InputError(f"{name}: weight contains NaN or Inf (or values beyond float32)")
    b32 = None
    if bias is not None:
        b = _as_real_array(bias, name, "bias")
        if b.ndim == 0:
            b = b.reshape(1)
        if b.ndim != 1:
            raise InputError(f"{name}: bias must be 1-D, got shape {tuple(b.shape)}")
        if w.ndim == 4 and b.shape[0] != w.shape[0]:
            raise InputError(
                f"{name}: bias has {b.shape[0]} values but the weight has "
                f"{w.shape[0]} output channels"
            )
        with np.errstate(over="ignore", invalid="ignore"):
            b32 = b.astype(np.float32)
        if not np.isfinite(b32).all():
            raise InputError(f"{name}: bias contains NaN or Inf (or values beyond float32)")
    return np.ascontiguousarray(w32), b32


def _load_npy_weight(path: Path) -> np.ndarray:
    try:
        # the header first: a kernel over the size cap is refused before it is read
        head = np.load(path, allow_pickle=False, mmap_mode="r")
        if head.ndim >= 2:
            check_kernel_shape(head.shape, _name(path))
        del head
        return np.load(path, allow_pickle=False)
    except InputError:
        raise
    except Exception as exc:  # ValueError, OSError, EOFError, UnpicklingError...
        raise InputError(f"{_name(path)}: not a readable .npy array ({_reason(exc)})") from None


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:
        raise InputError(f"{_name(path)}: not a readable .npz archive ({_reason(exc)})") from None


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise InputError(
            f"{_name(path)}: reading .safetensors needs the safetensors package "
            "(pip install 'convcli[safetensors]')"
        ) from None
    try:
        return dict(load_file(os.fspath(path)))
    except Exception as exc:  # safetensors raises its own SafetensorError and others
        odd = _safetensors_dtypes(path) & _NO_NUMPY_DTYPES
        if not odd:
            raise InputError(
                f"{_name(path)}: not a readable .safetensors file ({_reason(exc)})"
            ) from None
    # BF16 (most published model weights) and FP8 have no NumPy dtype: torch reads them
    kinds = ", ".join(sorted(odd))
    try:
        import torch
        from safetensors.torch import load_file as load_torch
    except ImportError:
        raise InputError(
            f"{_name(path)}: holds {kinds} tensors, which NumPy cannot hold; install torch "
            "to read them, or save the weights as float32"
        ) from None
    try:
        return {k: v.to(torch.float64).numpy() for k, v in load_torch(os.fspath(path)).items()}
    except Exception as exc:
        raise InputError(
            f"{_name(path)}: not a readable .safetensors file ({_reason(exc)})"
        ) from None


# safetensors dtypes that safetensors.numpy cannot load (no NumPy dtype)
_NO_NUMPY_DTYPES = frozenset({"BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2"})


def _safetensors_dtypes(path: Path) -> set[str]:
    """The dtypes a .safetensors header names (empty when the header is unreadable)."""
    try:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 0 < size <= 100 * 2**20:
                return set()
            header = json.loads(fh.read(size))
        return {str(v.get("dtype")) for v in header.values() if isinstance(v, dict)}
    except (OSError, ValueError, AttributeError):
        return set()


def _pick(tensors: dict[str, Any], key: str | None, name: str) -> tuple[Any, Any]:
    """Find weight and bias in a name -> tensor mapping (``key`` = name or prefix)."""
    available = ", ".join(sorted(tensors)[:12]) + (" ..." if len(tensors) > 12 else "")
    if key:
        if f"{key}.weight" in tensors:
            return tensors[f"{key}.weight"], tensors.get(f"{key}.bias")
        if key in tensors:
            return tensors[key], None
        raise InputError(f"{name}: no tensor {key!r} or {key + '.weight'!r}; found: {available}")
    if "weight" in tensors:
        return tensors["weight"], tensors.get("bias")
    weights = [k for k in tensors if k.endswith(".weight")]
    if len(weights) == 1:
        prefix = weights[0][: -len(".weight")]
        return tensors[weights[0]], tensors.get(f"{prefix}.bias")
    if len(tensors) == 1:
        return next(iter(tensors.values())), None
    if not tensors:
        raise InputError(f"{name}: holds no tensors")
    raise InputError(f"{name}: holds several tensors, pick one with key=NAME; found: {available}")


def _load_torch(path: Path, key: str | None) -> tuple[Any, Any]:
    name = _name(path)
    try:
        import torch
    except ImportError:
        raise InputError(
            f"{name}: reading torch files needs torch installed; save the weight as "
            ".npy, .npz or .safetensors instead"
        ) from None
    try:
        obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors of every kind
        text = _reason(exc)
        import zipfile

        if not zipfile.is_zipfile(path):  # torch.save writes zip archives since 1.6
            raise InputError(f"{name}: not a readable torch file (not a zip archive)") from None
        if "unsupported operand" in str(exc).lower():  # e.g. FRAME (149) of protocol >= 4
            raise InputError(
                f"{name}: written with a pickle protocol that torch's safe loader cannot "
                "read (4 or newer); save it with torch.save(..., pickle_protocol=2) or as "
                ".safetensors"
            ) from None
        if "weights only load failed" in text.lower():
            # A pickled whole model: unpickling it could run arbitrary code.
            raise InputError(
                f"{name}: holds more than tensors (a pickled model?); save its state_dict "
                "(torch.save(model.state_dict(), ...)) and load that"
            ) from None
        raise InputError(f"{name}: not a readable torch file ({text})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]

    def to_numpy(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        if t.layout != torch.strided:  # sparse COO/CSR..., which numpy cannot hold
            raise InputError(
                f"{name}: holds a {str(t.layout).removeprefix('torch.')} tensor; save it "
                "dense (tensor.to_dense()) and load that"
            )
        if t.is_meta:
            raise InputError(
                f"{name}: holds a meta tensor (a shape with no values); save the real one"
            )
        if t.is_nested:
            raise InputError(
                f"{name}: holds a nested tensor (several sizes); save one plain tensor"
            )
        if t.is_quantized:  # its real values: what the quantized layer computes with
            t = t.dequantize()
        try:
            if t.is_complex():
                return t.detach().cpu().numpy()
            return t.detach().cpu().to(torch.float64).numpy()
        except Exception as exc:  # quantized, meta or other tensors with no plain values
            raise InputError(
                f"{name}: a {t.dtype} tensor that cannot be read as numbers ({_reason(exc)})"
            ) from None

    if isinstance(obj, torch.Tensor):
        return to_numpy(obj), None
    if isinstance(obj, dict):
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        weight, bias = _pick(tensors, key, name)
        return to_numpy(weight), to_numpy(bias) if bias is not None else None
    raise InputError(f"{name}: holds a {type(obj).__name__}, not a tensor or state_dict")


def _read_text(path: Path) -> str:
    name = _name(path)
    try:
        if path.stat().st_size > _MAX_TEXT_BYTES:
            raise InputError(f"{name}: text weight file too large; use .npy")
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{name}: not a text file (not UTF-8)") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {_reason(exc)}") from None


def _load_text(path: Path) -> np.ndarray:
    from convcli.presets import parse_kernel_text

    name = _name(path)
    lines = []
    for line in _read_text(path).splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    if not lines:
        raise InputError(f"{name}: no numbers in the file")
    try:
        return parse_kernel_text("\n".join(lines))
    except InputError as exc:
        # Re-label: the file name first, then the parser's reason.
        reason = str(exc).split(": ", 1)[-1]
        raise InputError(f"{name}: {reason}") from None


def _load_json(path: Path, key: str | None) -> tuple[Any, Any]:
    name = _name(path)
    # read outside the try: its InputError ("cannot read: permission denied", "not
    # UTF-8") is a ValueError, and is not a JSON syntax error
    text = _read_text(path)
    try:
        # integers as floats: Python refuses to convert those of over 4300 digits, and a
        # kernel value is a float anyway (a huge one is then reported as beyond float32)
        obj = json.loads(text, parse_int=float)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise InputError(f"{name}: not valid JSON ({_reason(exc)})") from None
    if isinstance(obj, dict):
        return _pick(obj, key, name)
    if isinstance(obj, list):
        return _json_array(obj, name), None
    raise InputError(f"{name}: JSON must be a nested list or an object with 'weight'")


def _json_array(value: Any, name: str) -> np.ndarray:
    try:
        arr = np.array(value, dtype=np.float64)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(
            f"{name}: weight is not a rectangular array of numbers ({_reason(exc)})"
        ) from None
    return arr
