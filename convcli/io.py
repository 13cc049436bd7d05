"""Files <-> arrays: images, weight files, bit depths, alpha and atomic writes.

Dtype policy: every image becomes a ``(C, H, W)`` float32 array. 8-bit samples are
divided by 255, 16-bit samples by 65535, float TIFF/``.npy`` data is kept as it is.
Writing rounds ``[0, 1]`` data to the requested bit depth (8 or 16; 32 = float TIFF).

Pillow reads and writes what it can hold without loss. Pillow truncates 16-bit colour
PNG and TIFF to 8 bits and cannot write them at all, so those are decoded and encoded
here with ``zlib`` and NumPy (:func:`_read_png16`, :func:`_write_png`, :func:`_read_tiff`,
:func:`_write_tiff`).

Every problem with a user's file raises :class:`convcli.errors.InputError` with one line
that starts with the file name; no Pillow or NumPy exception escapes for bad input.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import re
import secrets
import struct
import threading
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from convcli.errors import InputError

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
OutMap = Literal["clip", "abs", "normalize", "offset"]
OUT_MAPS: tuple[str, ...] = ("clip", "abs", "normalize", "offset")

# Largest weight file we parse as text/JSON; bigger ones belong in .npy.
_MAX_TEXT_BYTES = 64 * 1024 * 1024
# Largest number of kernel elements a weight file may hold (1 GiB of float32).
_MAX_WEIGHT_ELEMENTS = 1 << 28

_PIL_LOCK = threading.Lock()


@dataclass
class Image:
    """A decoded image.

    Attributes
    ----------
    data : numpy.ndarray
        ``(C, H, W)`` float32, scaled to [0, 1] for integer formats.
    mode : str
        ``"L"``, ``"LA"``, ``"RGB"``, ``"RGBA"``, ``"F"`` (float gray) or ``"F<C>"``
        for a float array of C channels (``.npy``, float TIFF).
    bit_depth : int
        8, 16, or 32 for float data; the default output bit depth.
    has_alpha : bool
        Whether the last channel is alpha (LA, RGBA).
    path : pathlib.Path or None
        Where it was read from.
    notes : list of str
        Things worth telling the user that did not stop the read (Pillow warnings such
        as corrupt EXIF, an orientation that could not be applied).
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


# --------------------------------------------------------------------------- reading


def _check_file(path: Path) -> None:
    name = _name(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {_reason(exc)}") from None
    if path.is_dir():
        raise InputError(f"{name}: is a folder, not an image file")
    if st.st_size == 0:
        raise InputError(f"{name}: empty file")


def _check_pixels(name: str, pixels: int, max_pixels: int | None) -> None:
    if max_pixels is not None and pixels > max_pixels:
        raise InputError(
            f"{name}: {pixels} pixels exceeds the limit of {max_pixels} "
            "(raise it with --max-pixels)"
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
        spaces RGB, 16-bit gray and colour keep 16 bits, 32-bit integer images are
        scaled by 65535 when they fit 16 bits (16-bit PNGs Pillow opens as "I") or by
        2**31 - 1 otherwise.

    Raises
    ------
    InputError
        Missing, empty, truncated or unsupported file, or too many pixels.
    """
    path = Path(path)
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
    notes: list[str] = []
    is_tiff = head[:4] in (b"II*\x00", b"MM\x00*")
    if head.startswith(_PNG_SIG) and _png_needs_own_decoder(head):
        special = _read_png16(path, max_pixels)
        if special is not None:
            return special
    elif head.startswith(_PNG_SIG) and len(head) >= 29 and head[24] == 16 and head[28]:
        if head[25] in (2, 4, 6):
            notes.append("interlaced 16-bit colour PNG: read with 8-bit precision")
    elif is_tiff:
        special = _read_tiff(path, max_pixels, notes)
        if special is not None:
            return special
    image = _read_with_pil(path, max_pixels, tiff=is_tiff)
    image.notes[:0] = notes
    return image


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


@contextlib.contextmanager
def _pil_no_bomb_limit():
    """Let our own limit decide: Pillow's global one would refuse or warn first."""
    from PIL import Image as PILImage

    with _PIL_LOCK:
        saved = PILImage.MAX_IMAGE_PIXELS
        PILImage.MAX_IMAGE_PIXELS = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
                yield
        finally:
            PILImage.MAX_IMAGE_PIXELS = saved


_STDERR_LOCK = threading.RLock()  # re-entrant: a nested capture must not deadlock
# libtiff reports through its C error handler straight to file descriptor 2 as
# "Module: message" lines (ZIPDecode, LZWDecode, TIFFReadDirectory, <file>.tif, ...).
_LIBTIFF_LINE = re.compile(
    rb"^(?:_?TIFF\w*|\w*(?:Decode|Encode|Fax3|JPEG|LZMA|ZSTD|WebP|Deflate)\w*|[^\x1b:]*\.tiff?)"
    rb": ",
    re.IGNORECASE,
)


@contextlib.contextmanager
def _libtiff_messages(messages: list[str]):
    """Collect libtiff's C-level stderr lines so a broken TIFF gives one line of ours
    (with libtiff's reason in it) instead of extra unprefixed lines. Anything else
    written to stderr meanwhile (another thread, a progress bar) is passed through."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to protect
        yield
        return
    import sys
    import tempfile

    with _STDERR_LOCK, tempfile.TemporaryFile() as cap:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            sys.stderr.flush()
        os.dup2(cap.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(AttributeError, OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            cap.seek(0)
            passthrough = []
            for line in cap.read().splitlines(keepends=True):
                if _LIBTIFF_LINE.match(line):
                    messages.append(line.decode("utf-8", "replace").strip())
                else:
                    passthrough.append(line)
            if passthrough:
                with contextlib.suppress(OSError):
                    os.write(2, b"".join(passthrough))


def _read_with_pil(path: Path, max_pixels: int | None, *, tiff: bool = False) -> Image:
    from PIL import Image as PILImage
    from PIL import ImageOps, UnidentifiedImageError

    name = _name(path)
    messages: list[str] = []
    notes: list[str] = []
    quiet = _libtiff_messages(messages) if tiff else contextlib.nullcontext()
    try:
        with quiet:
            with _pil_no_bomb_limit():
                # Only the header is parsed here (Pillow's bomb check runs in open()),
                # so the lock around the global limit is held briefly, not for decoding.
                PILImage.init()
                formats = [f for f in PIL_FORMATS if f in PILImage.OPEN]
                opened = PILImage.open(path, formats=formats)
            with opened as im, warnings.catch_warnings(record=True) as caught:
                # Pillow warns about e.g. corrupt EXIF on images that decode fine: keep
                # those as notes instead of printing (or failing under -W error).
                warnings.simplefilter("always")
                _check_pixels(name, im.size[0] * im.size[1], max_pixels)
                im.load()  # decode fully inside the try: truncation shows up here
                try:
                    # in place: no copy of the (possibly huge) decoded image
                    ImageOps.exif_transpose(im, in_place=True)
                except Exception as exc:  # a broken EXIF block must not lose the pixels
                    notes.append(f"EXIF orientation ignored ({_reason(exc)})")
        notes.extend(_one_line(w.message) for w in caught)
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
        if messages:
            text = f"{text}; libtiff: {_one_line(messages[0])}"
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
        arr = np.asarray(im).astype(np.float32)
        arr /= np.float32(65535)
        return Image(arr[None], "L", 16, False, path)
    if mode == "I":
        raw = np.asarray(im)
        if raw.size and raw.min() >= 0 and raw.max() <= 65535:
            arr = raw.astype(np.float32) / np.float32(65535)
            return Image(arr[None], "L", 16, False, path)
        arr = (raw.astype(np.float64) / (2**31 - 1)).astype(np.float32)
        return Image(arr[None], "F", 32, False, path)
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
    arr = np.asarray(im, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    data = arr.astype(np.float32)  # (C, H, W) copy, then scaled in place
    data /= np.float32(255)
    return Image(data, im.mode, 8, im.mode in ("LA", "RGBA"), path)


# ---------------------------------------------------------------- 16-bit PNG decoder

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_MODES = {0: "L", 2: "RGB", 4: "LA", 6: "RGBA"}


def _png_needs_own_decoder(head: bytes) -> bool:
    # IHDR: width, height, bit depth, colour type, ..., interlace (bytes 16..29).
    return len(head) >= 29 and head[24] == 16 and head[25] in (2, 4, 6) and head[28] == 0


def _png_chunks(blob: bytes, name: str):
    pos = 8
    while pos + 8 <= len(blob):
        length, ctype = struct.unpack(">I4s", blob[pos : pos + 8])
        body = blob[pos + 8 : pos + 8 + length]
        if len(body) < length:
            raise InputError(f"{name}: truncated image data")
        yield ctype, body
        pos += 12 + length
        if ctype == b"IEND":
            return
    raise InputError(f"{name}: truncated image data")


def _read_png16(path: Path, max_pixels: int | None) -> Image | None:
    """Decode 16-bit LA/RGB/RGBA PNGs (Pillow would truncate them); None = not ours."""
    name = _name(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {_reason(exc)}") from None
    if len(blob) < 33 or blob[12:16] != b"IHDR":
        return None
    width, height, depth, ctype, _comp, _filt, interlace = struct.unpack(">IIBBBBB", blob[16:29])
    if depth != 16 or ctype not in (2, 4, 6) or interlace != 0:
        return None  # Pillow reads these without loss (or 8-bit interlaced colour)
    if width == 0 or height == 0:
        raise InputError(f"{name}: image has no pixels ({width}x{height})")
    _check_pixels(name, width * height, max_pixels)
    idat = []
    for ctype_, body in _png_chunks(blob, name):
        if ctype_ == b"IDAT":
            idat.append(body)
    mode = _PNG_MODES[ctype]
    channels = len(mode)
    bpp = 2 * channels
    stride = width * bpp
    try:
        raw = zlib.decompressobj().decompress(b"".join(idat), height * (stride + 1))
    except zlib.error:
        raise InputError(f"{name}: corrupt image data (zlib)") from None
    if len(raw) < height * (stride + 1):
        raise InputError(f"{name}: truncated image data")
    rows = np.frombuffer(raw, np.uint8, height * (stride + 1)).reshape(height, stride + 1)
    filters = rows[:, 0]
    if filters.max(initial=0) > 4:
        raise InputError(f"{name}: corrupt image data (bad PNG row filter)")
    pixels = _png_unfilter(rows[:, 1:], filters, bpp)
    data = pixels.view(">u2").reshape(height, width, channels).astype(np.float32)
    data = np.moveaxis(data / np.float32(65535), -1, 0)
    image = Image(np.ascontiguousarray(data), mode, 16, mode in ("LA", "RGBA"), path)
    return _apply_png_orientation(image, blob, name)


def _png_unfilter(filt: np.ndarray, types: np.ndarray, bpp: int) -> np.ndarray:
    """Undo PNG row filters. Rows of type None/Sub/Up are vectorised per row; the
    sequential Average/Paeth rows are solved along anti-diagonals of pixels, where every
    pixel's left, upper and upper-left neighbours are already known."""
    height, stride = filt.shape
    width = stride // bpp
    out = np.zeros((height, stride), np.uint8)
    zero = np.zeros(stride, np.uint8)
    y = 0
    while y < height:
        t = int(types[y])
        if t in (3, 4):
            end = y
            while end < height and int(types[end]) in (3, 4):
                end += 1
            prev = out[y - 1] if y else zero
            out[y:end] = _unfilter_block(filt[y:end], types[y:end], prev, bpp, width)
            y = end
            continue
        prev = out[y - 1] if y else zero
        row = filt[y]
        if t == 0:
            out[y] = row
        elif t == 2:
            out[y] = row + prev
        else:  # Sub: a running sum (mod 256) over each byte lane of the pixel
            lanes = row.reshape(width, bpp)
            out[y] = np.cumsum(lanes, axis=0, dtype=np.uint8).reshape(-1)
        y += 1
    return out


def _unfilter_block(
    filt: np.ndarray, types: np.ndarray, prev: np.ndarray, bpp: int, width: int
) -> np.ndarray:
    rows = filt.shape[0]
    f = filt.reshape(rows, width, bpp).astype(np.int16)
    # Padded result: row 0 is the row above the block, column 0 the zero left border.
    rec = np.zeros((rows + 1, width + 1, bpp), np.int16)
    rec[0, 1:] = prev.reshape(width, bpp)
    kinds = types.astype(np.int16)
    for d in range(rows + width - 1):
        y0 = max(0, d - width + 1)
        y1 = min(rows, d + 1)
        ys = np.arange(y0, y1)
        xs = d - ys
        a = rec[ys + 1, xs]  # left
        b = rec[ys, xs + 1]  # up
        c = rec[ys, xs]  # up-left
        kind = kinds[ys][:, None]
        avg = (a + b) >> 1
        p = a + b - c
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        pred = np.where(kind == 3, avg, np.where(kind == 4, paeth, 0))
        # Rows of other types can sit inside a block only through the caller; guard.
        pred = np.where(kind == 1, a, np.where(kind == 2, b, pred))
        rec[ys + 1, xs + 1] = (f[ys, xs] + pred) & 0xFF
    return rec[1:, 1:].astype(np.uint8).reshape(rows, width * bpp)


def _apply_png_orientation(image: Image, blob: bytes, name: str) -> Image:
    """PNG may carry an eXIf chunk; apply its orientation like ImageOps.exif_transpose."""
    for ctype, body in _png_chunks(blob, name):
        if ctype == b"eXIf":
            return _orient(image, _exif_orientation(body))
    return image


def _exif_orientation(exif: bytes) -> int:
    try:
        from PIL import Image as PILImage

        ex = PILImage.Exif()
        ex.load(exif)
        return int(ex.get(0x0112, 1))
    except Exception:  # a broken EXIF block must not stop us reading the pixels
        return 1


def _orient(image: Image, orientation: int) -> Image:
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


# ------------------------------------------------------------------- TIFF (ours)

_TIFF_TYPES = {1: "B", 2: "s", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 11: "f", 12: "d", 16: "Q"}


def _tiff_ifd(blob: bytes, name: str) -> tuple[str, dict[int, tuple[Any, ...]]]:
    endian = "<" if blob[:2] == b"II" else ">"
    try:
        (offset,) = struct.unpack(endian + "I", blob[4:8])
        (count,) = struct.unpack(endian + "H", blob[offset : offset + 2])
        tags: dict[int, tuple[Any, ...]] = {}
        for i in range(count):
            entry = blob[offset + 2 + 12 * i : offset + 14 + 12 * i]
            tag, typ, n = struct.unpack(endian + "HHI", entry[:8])
            fmt = _TIFF_TYPES.get(typ)
            if fmt is None or fmt == "s":
                continue
            size = struct.calcsize(fmt) * n
            if size > len(blob):  # a corrupt count must not build a huge format string
                raise InputError(f"{name}: corrupt TIFF directory")
            if size <= 4:
                raw = entry[8 : 8 + size]
            else:
                (ptr,) = struct.unpack(endian + "I", entry[8:12])
                raw = blob[ptr : ptr + size]
            if len(raw) < size:
                raise InputError(f"{name}: truncated image data")
            tags[tag] = struct.unpack(endian + fmt * n, raw)
    except struct.error:
        raise InputError(f"{name}: truncated image data") from None
    return endian, tags


def _decode_strips_with_libtiff(
    chunks: list[bytes], row_bytes: int, height: int, rows_per_strip: int, compression: int
) -> bytes | None:
    """Decompress TIFF strips with Pillow's libtiff by presenting them as an 8-bit gray
    image ``row_bytes`` wide: the compressed byte stream is the same, and Pillow keeps
    8-bit gray exactly. Predictors are undone by the caller. None if that fails."""
    import io as _stdio

    from PIL import Image as PILImage

    entries = [
        (256, 4, [row_bytes]),
        (257, 4, [height]),
        (258, 3, [8]),
        (259, 3, [compression]),
        (262, 3, [1]),
        (277, 3, [1]),
        (278, 4, [rows_per_strip]),
        (284, 3, [1]),
    ]
    try:
        with (
            _libtiff_messages([]),
            _pil_no_bomb_limit(),
            PILImage.open(_stdio.BytesIO(_tiff_bytes(chunks, entries))) as im,
        ):
            im.load()
            if im.mode != "L" or im.size != (row_bytes, height):
                return None
            return np.asarray(im, dtype=np.uint8).tobytes()
    except Exception:  # any libtiff/Pillow failure: the pure-Python decoder decides
        return None


def _lzw_decode(data: bytes, name: str) -> bytes:
    """TIFF LZW (MSB-first codes of 9-12 bits, early change). Pure Python: Pillow only
    decodes LZW through libtiff, into 8-bit samples for 16-bit colour."""
    table: list[bytes] = [bytes([i]) for i in range(256)] + [b"", b""]
    out = bytearray()
    nbits = 9
    pos = 0
    total = len(data) * 8
    padded = data + b"\x00\x00\x00"
    prev = b""
    while pos + nbits <= total:
        i = pos >> 3
        window = (padded[i] << 16) | (padded[i + 1] << 8) | padded[i + 2]
        code = (window >> (24 - (pos & 7) - nbits)) & ((1 << nbits) - 1)
        pos += nbits
        if code == 256:  # clear
            del table[258:]
            nbits = 9
            prev = b""
            continue
        if code == 257:  # end of information
            break
        if code < len(table):
            entry = table[code]
            if prev:
                table.append(prev + entry[:1])
        elif code == len(table) and prev:
            entry = prev + prev[:1]
            table.append(entry)
        else:
            raise InputError(f"{name}: corrupt image data (LZW)")
        out += entry
        prev = entry
        if len(table) >= (1 << nbits) - 1 and nbits < 12:
            nbits += 1
    return bytes(out)


def _read_tiff(path: Path, max_pixels: int | None, notes: list[str]) -> Image | None:
    """Decode TIFFs Pillow would truncate: 16-bit or float colour / extra channels.

    Handles strip-organised, chunky, uncompressed or Deflate data with or without the
    horizontal predictor (what :func:`write_image` and most tools write). Anything else
    returns None and goes to Pillow.
    """
    name = _name(path)
    try:
        # Memory-mapped: only the IFD (and, if it is ours to decode, the strips) is
        # read, not a whole large TIFF that Pillow will decode anyway.
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as blob:
            return _read_tiff_blob(path, blob, max_pixels, notes)
    except InputError:
        raise
    except (OSError, ValueError) as exc:
        raise InputError(f"{name}: cannot read: {_reason(exc)}") from None


def _read_tiff_blob(
    path: Path, blob: Any, max_pixels: int | None, notes: list[str]
) -> Image | None:
    name = _name(path)
    if len(blob) < 8:
        raise InputError(f"{name}: truncated image data")
    endian, tags = _tiff_ifd(blob, name)
    try:
        width, height = tags[256][0], tags[257][0]
    except KeyError:
        raise InputError(f"{name}: TIFF without image size") from None
    spp = tags.get(277, (1,))[0]
    bits = tags.get(258, (1,))
    fmt = tags.get(339, (1,))[0]
    photometric = tags.get(262, (1,))[0]
    compression = tags.get(259, (1,))[0]
    predictor = tags.get(317, (1,))[0]
    planar = tags.get(284, (1,))[0]
    uniform = len(set(bits)) == 1
    depth = bits[0]
    # Pillow keeps 8-bit L/LA/RGB/RGBA and 16-bit/float gray; everything else is ours.
    lossy_in_pil = spp > 4 or (spp > 1 and depth in (16, 32))
    if not (uniform and lossy_in_pil and depth in (8, 16, 32)):
        return None
    if (
        fmt not in (1, 3)
        or (fmt == 3) != (depth == 32)
        or compression not in (1, 5, 8, 32773, 32946, 34925, 50000)
        or planar != 1
        or 273 not in tags
        or photometric not in (0, 1, 2)
    ):
        # Tiled, planar, JPEG-compressed...: Pillow decodes it, at 8 bits for colour.
        notes.append(f"{depth}-bit {spp}-channel TIFF layout not decoded here: read by Pillow")
        return None
    _check_pixels(name, width * height, max_pixels)
    offsets, counts = tags[273], tags.get(279, ())
    if len(counts) != len(offsets):
        raise InputError(f"{name}: corrupt TIFF (strip tables differ in length)")
    chunks = []
    for off, cnt in zip(offsets, counts, strict=True):
        chunk = blob[off : off + cnt]
        if len(chunk) < cnt:
            raise InputError(f"{name}: truncated image data")
        chunks.append(chunk)
    row_bytes = width * spp * (depth // 8)
    rows_per_strip = min(tags.get(278, (height,))[0], height)
    parts = []
    if compression not in (1, 8, 32946):  # LZW, PackBits, LZMA, Zstd: libtiff's job
        decoded = _decode_strips_with_libtiff(
            chunks, row_bytes, height, rows_per_strip, compression
        )
        if decoded is not None:
            parts = [decoded]
        elif compression == 5:
            parts = [_lzw_decode(c, name) for c in chunks]
        else:
            return None
    else:
        for chunk in chunks:
            if compression != 1:
                try:
                    chunk = zlib.decompress(chunk)
                except zlib.error:
                    raise InputError(f"{name}: corrupt image data (zlib)") from None
            parts.append(chunk)
    raw = b"".join(parts)
    itemsize = depth // 8
    need = width * height * spp * itemsize
    if len(raw) < need:
        raise InputError(f"{name}: truncated image data")
    dtype = np.dtype(endian + {8: "u1", 16: "u2", 32: "f4"}[depth])
    arr = np.frombuffer(raw, dtype, width * height * spp).reshape(height, width, spp)
    if predictor == 2 and fmt == 1:
        native = np.uint8 if depth == 8 else np.uint16
        arr = np.cumsum(arr.astype(native), axis=1, dtype=native)
    elif predictor not in (1, 2):
        return None
    data = np.moveaxis(arr.astype(np.float32), -1, 0)
    top = np.float32((1 << depth) - 1) if fmt == 1 else np.float32(1)
    if photometric == 0 and fmt == 1:
        data = top - data
    extra = tags.get(338, ())
    # Alpha: declared (ExtraSamples 1 or 2) or, as writers like OpenCV leave it out, a
    # 2nd/4th channel with no declaration at all. ExtraSamples=0 means "not alpha".
    has_alpha = spp in (2, 4) and (not extra or extra[0] in (1, 2))
    if fmt == 1:
        data = data / top
        mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}.get(spp, f"I{spp}")
        if spp in (2, 4) and not has_alpha:
            mode = f"I{spp}"
        bit_depth = depth
    else:
        if not np.isfinite(data).all():
            raise InputError(f"{name}: float image contains NaN or Inf")
        mode = "F" if spp == 1 else f"F{spp}"
        bit_depth = 32
    if extra and extra[0] == 1 and has_alpha and fmt == 1:
        # Associated (premultiplied) alpha: store straight colour like Pillow does.
        alpha = data[-1:]
        data[:-1] = np.where(alpha > 0, data[:-1] / np.maximum(alpha, 1e-30), 0)
    image = Image(np.ascontiguousarray(data, np.float32), mode, bit_depth, has_alpha, path)
    return _orient(image, tags.get(274, (1,))[0])


# ------------------------------------------------------------------------- alpha


def prepare_alpha(image: Image, alpha: str = "premultiply") -> tuple[np.ndarray, np.ndarray | None]:
    """Split an image into the channels to convolve and the alpha to re-attach.

    Parameters
    ----------
    image : Image
    alpha : {"premultiply", "keep", "filter", "drop"}
        ``premultiply`` (default): colour times alpha, and alpha itself is filtered
        too, so transparent pixels do not bleed into the result. ``keep``: filter the
        colour only and keep the original alpha. ``filter``: alpha is a plain channel.
        ``drop``: remove alpha. Images without alpha are returned unchanged.

    Returns
    -------
    (channels, kept_alpha)
        ``channels`` is ``(C', H, W)`` float32; ``kept_alpha`` is ``(1, H, W)`` for
        ``keep`` and None otherwise.
    """
    if alpha not in ALPHA_MODES:
        raise InputError(f"alpha must be one of {list(ALPHA_MODES)}, got {alpha!r}")
    data = image.data
    if not image.has_alpha or data.shape[0] < 2:
        return data, None
    colour, a = data[:-1], data[-1:]
    if alpha == "premultiply":
        return np.concatenate([colour * a, a]).astype(np.float32, copy=False), None
    if alpha == "keep":
        return np.ascontiguousarray(colour), a.copy()
    if alpha == "drop":
        return np.ascontiguousarray(colour), None
    return data, None


def finish_alpha(
    result: np.ndarray, kept_alpha: np.ndarray | None, alpha: str, *, has_alpha: bool
) -> np.ndarray:
    """Undo :func:`prepare_alpha` on a convolution result.

    ``premultiply``: divide colour by the filtered alpha where it is > 0 (0 elsewhere).
    ``keep``: append the original alpha; only possible when the result has the input's
    spatial size (stride/padding that change it raise :class:`InputError`).
    """
    if not has_alpha or alpha in ("filter", "drop"):
        return result
    if alpha == "premultiply":
        if result.shape[0] < 2:
            return result
        colour, a = result[:-1], result[-1:]
        safe = np.where(a > 0, a, 1).astype(result.dtype)
        colour = np.where(a > 0, colour / safe, 0)
        return np.concatenate([colour, a]).astype(result.dtype, copy=False)
    if alpha == "keep":
        if kept_alpha is None:
            return result
        if kept_alpha.shape[1:] != result.shape[1:]:
            raise InputError(
                f"--alpha keep: the result is {result.shape[2]}x{result.shape[1]} but the "
                f"original alpha is {kept_alpha.shape[2]}x{kept_alpha.shape[1]}; alpha is "
                "not resampled, use --alpha premultiply, filter or drop with this "
                "stride/padding"
            )
        return np.concatenate([result, kept_alpha.astype(result.dtype)])
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
    gray); finally clip to [0, 1] unless ``clip=False``.

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
        np.nan_to_num(out, copy=False, nan=0.0)
        np.clip(out, 0.0, 1.0, out=out)
    return out


# ------------------------------------------------------------------------ writing


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Create ``path`` atomically: ``write(tmp)`` into a temporary file beside it, then
    ``os.replace``. On any failure (including KeyboardInterrupt) the temporary file is
    removed and ``path`` is untouched; OS errors (disk full, read-only folder) become
    :class:`InputError` naming ``path`` and the reason.
    """
    path = Path(path)
    name = _name(path)
    folder = path.parent
    if not folder.is_dir():
        raise InputError(f"{name}: cannot write: folder {_name(folder)} does not exist")
    tmp = folder / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        # O_EXCL: never clobber a file; mode 0o666 so the umask applies as for open().
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.close(fd)
    except OSError as exc:
        raise InputError(f"{name}: cannot write: {_reason(exc)}") from None
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise InputError(f"{name}: cannot write: {_reason(exc)}") from None
        raise
    return path


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
        Already mapped to [0, 1] (see :func:`map_output`); values outside are clipped.
        1 channel = gray, 2 = gray + alpha, 3 = RGB, 4 = RGBA. TIFF and ``.npy`` hold any
        number of channels.
    bit_depth : {8, 16, 32}
        16 for PNG and TIFF (gray and colour); 32 writes float32 TIFF. JPEG, WebP and BMP
        are always 8-bit. Other formats fall back to 8 bits.
    overwrite : bool
        False: refuse an existing ``path``.
    quality : int
        JPEG/WebP quality (1-100).
    has_alpha : bool or None
        Whether the last channel of a 2- or 4-channel array is alpha (default: yes).
        JPEG and BMP do not keep alpha: it is dropped.

    Returns
    -------
    pathlib.Path
        The written file, created atomically (see :func:`atomic_write`).
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
    if not overwrite and path.exists():
        raise InputError(f"{name}: already exists (use --overwrite to replace it)")
    arr = np.asarray(data)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or 0 in arr.shape:
        raise InputError(f"{name}: cannot write an array of shape {tuple(arr.shape)} as an image")
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{name}: cannot write {arr.dtype} data as an image")
    if fmt == "NPY":
        out = np.ascontiguousarray(arr, np.float32)
        return atomic_write(path, lambda tmp: _save_npy(tmp, out))
    if bit_depth not in (8, 16, 32):
        raise InputError(f"{name}: bit depth must be 8, 16 or 32, got {bit_depth}")
    channels = arr.shape[0]
    if fmt in ("JPEG", "BMP"):
        if channels in (2, 4) and has_alpha is not False:
            # JPEG has no alpha; BMP alpha is not read back by most programs (Pillow too)
            arr = arr[:-1]
            channels -= 1
        if channels not in (1, 3):
            raise InputError(
                f"{name}: {channels} channels cannot be stored as {fmt}; write .npy or .tif instead"
            )
    elif fmt != "TIFF" and channels > 4:
        raise InputError(
            f"{name}: {channels} channels fit no {fmt} image mode; write .npy or .tif instead"
        )
    if fmt == "TIFF":
        depth = bit_depth
        tiff_alpha = has_alpha if has_alpha is not None else channels in (2, 4)
        return atomic_write(path, lambda tmp: _write_tiff(tmp, arr, depth, tiff_alpha))
    if fmt == "PNG" and bit_depth in (16, 32):
        q16 = _quantize(arr, 16)
        return atomic_write(path, lambda tmp: _write_png(tmp, q16))
    if has_alpha is False and channels in (2, 4):
        raise InputError(
            f"{name}: {channels} channels without alpha fit no {fmt} image mode; "
            "write .npy or .tif instead"
        )
    q8 = _quantize(arr, 8)

    def save(tmp: Path) -> None:
        try:
            _save_pil(tmp, q8, fmt, quality)
        except (ValueError, TypeError, KeyError) as exc:  # e.g. WebP's 16383 px limit
            raise InputError(f"{name}: cannot write: {_reason(exc)}") from None

    return atomic_write(path, save)


def _save_npy(tmp: Path, arr: np.ndarray) -> None:
    with open(tmp, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)


def _quantize(arr: np.ndarray, bits: int) -> np.ndarray:
    """Round [0, 1] data to integer levels, in float64 so the nearest level is exact."""
    top = (1 << bits) - 1
    work = np.array(arr, dtype=np.float64)
    np.nan_to_num(work, copy=False, nan=0.0)
    np.clip(work, 0.0, 1.0, out=work)
    work *= top
    np.rint(work, out=work)
    return work.astype(np.uint8 if bits == 8 else np.uint16)


def _save_pil(tmp: Path, q8: np.ndarray, fmt: str, quality: int) -> None:
    from PIL import Image as PILImage

    if fmt == "WEBP" and q8.shape[0] == 2:  # WebP has no gray + alpha mode
        q8 = np.concatenate([q8[:1], q8[:1], q8[:1], q8[1:]])
    hwc = np.ascontiguousarray(np.moveaxis(q8, 0, -1))
    # uint8 (H, W) -> L, (H, W, 2/3/4) -> LA/RGB/RGBA: Pillow infers the mode.
    im = PILImage.fromarray(hwc[..., 0] if hwc.shape[-1] == 1 else hwc)
    options: dict[str, Any] = {}
    if fmt in ("JPEG", "WEBP"):
        options["quality"] = int(min(max(quality, 1), 100))
    if fmt == "JPEG" and quality >= 90:
        options["subsampling"] = 0  # 4:4:4 at high quality, as ImageMagick does
    im.save(tmp, format=fmt, **options)


def _png_chunk(ctype: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body))
        + ctype
        + body
        + struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF)
    )


def _write_png(tmp: Path, q16: np.ndarray) -> None:
    """16-bit PNG of 1-4 channels, rows filtered with Up (cheap and a good predictor)."""
    channels, height, width = q16.shape
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = np.ascontiguousarray(np.moveaxis(q16, 0, -1)).astype(">u2")
    rows = rows.view(np.uint8).reshape(height, width * channels * 2)
    up = rows.copy()
    up[1:] -= rows[:-1]  # uint8 arithmetic wraps, exactly PNG's modulo-256 filter
    body = np.empty((height, up.shape[1] + 1), np.uint8)
    body[:, 0] = 2
    body[0, 0] = 0
    body[:, 1:] = up
    body[0, 1:] = rows[0]
    ihdr = struct.pack(">IIBBBBB", width, height, 16, ctype, 0, 0, 0)
    with open(tmp, "wb") as fh:
        fh.write(_PNG_SIG)
        fh.write(_png_chunk(b"IHDR", ihdr))
        fh.write(_png_chunk(b"IDAT", zlib.compress(body.tobytes(), 6)))
        fh.write(_png_chunk(b"IEND", b""))


def _write_tiff(tmp: Path, arr: np.ndarray, bit_depth: int, has_alpha: bool) -> None:
    """Little-endian baseline TIFF, one Deflate strip per 64 rows, any channel count.

    8/16-bit unsigned or 32-bit float samples; gray (1-2 channels) or RGB (3+), extra
    channels flagged unassociated alpha (2, 4 channels with alpha) or unspecified.
    """
    channels, height, width = arr.shape
    if bit_depth == 32:
        samples = np.nan_to_num(np.asarray(arr, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        sample_format, bits = 3, 32
    else:
        samples = _quantize(arr, bit_depth)
        sample_format, bits = 1, bit_depth
    hwc = np.ascontiguousarray(np.moveaxis(samples, 0, -1)).astype(samples.dtype.newbyteorder("<"))
    photometric = 1 if channels < 3 else 2
    colour = 1 if channels < 3 else 3
    extra = channels - colour
    rows_per_strip = max(1, min(height, 64))
    strips = []
    for y in range(0, height, rows_per_strip):
        strips.append(zlib.compress(hwc[y : y + rows_per_strip].tobytes(), 6))
    entries: list[tuple[int, int, list[int]]] = [
        (256, 4, [width]),
        (257, 4, [height]),
        (258, 3, [bits] * channels),
        (259, 3, [8]),
        (262, 3, [photometric]),
        (277, 3, [channels]),
        (278, 4, [rows_per_strip]),
        (284, 3, [1]),
        (339, 3, [sample_format] * channels),
    ]
    if extra:
        kind = 2 if has_alpha and channels in (2, 4) else 0
        entries.append((338, 3, [kind] + [0] * (extra - 1)))
    with open(tmp, "wb") as fh:
        fh.write(_tiff_bytes(strips, entries))


def _tiff_bytes(strips: list[bytes], entries: list[tuple[int, int, list[int]]]) -> bytes:
    """A little-endian TIFF: header, the strips, then one IFD (StripOffsets and
    StripByteCounts are added here) with its out-of-line values."""
    out = bytearray(b"II*\x00\x00\x00\x00\x00")
    strip_offsets = []
    for s in strips:
        strip_offsets.append(len(out))
        out += s
        if len(out) % 2:
            out += b"\x00"
    entries = sorted([*entries, (273, 4, strip_offsets), (279, 4, [len(s) for s in strips])])
    ifd_offset = len(out)
    struct.pack_into("<I", out, 4, ifd_offset)
    data_area = ifd_offset + 2 + 12 * len(entries) + 4
    ifd = bytearray(struct.pack("<H", len(entries)))
    extra_data = bytearray()
    for tag, typ, values in entries:
        fmt = "H" if typ == 3 else "I"
        packed = struct.pack("<" + fmt * len(values), *values)
        if len(packed) <= 4:
            ifd += struct.pack("<HHI", tag, typ, len(values)) + packed.ljust(4, b"\x00")
        else:
            ifd += struct.pack("<HHII", tag, typ, len(values), data_area + len(extra_data))
            extra_data += packed
            if len(extra_data) % 2:
                extra_data += b"\x00"
    ifd += struct.pack("<I", 0)
    return bytes(out + ifd + extra_data)


# ------------------------------------------------------------------ weight files


def load_weights(
    path: str | os.PathLike[str], *, key: str | None = None
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
    name = _name(path)
    _check_file(path)
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
    if w.size > _MAX_WEIGHT_ELEMENTS:
        raise InputError(f"{name}: weight has {w.size} elements, more than convcli accepts")
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
        return np.load(path, allow_pickle=False)
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
        raise InputError(
            f"{_name(path)}: not a readable .safetensors file ({_reason(exc)})"
        ) from None


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
    raise InputError(f"{name}: holds several tensors, pick one with --key; found: {available}")


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
        if isinstance(t, torch.Tensor):
            if t.is_complex():
                return t.detach().cpu().numpy()
            return t.detach().cpu().to(torch.float64).numpy()
        return t

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
    try:
        obj = json.loads(_read_text(path))
    except (json.JSONDecodeError, RecursionError) as exc:
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
