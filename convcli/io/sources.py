"""The readers behind :func:`convcli.io.stream.open_source`: which decoder reads a file
by rows, and how.

- JPEG, 8/16-bit PNG and WebP: libvips (``pyvips`` with the ``pyvips-binary`` wheel),
  opened for sequential access and read strip by strip (``crop`` + ``write_to_memory``,
  which decodes on libvips' threads; faster and smaller than ``Region.fetch``, see
  docs/IO-LIBRARIES.md). libvips and Pillow run the same libjpeg-turbo, libpng and
  libwebp decoders with the same settings: the samples are the ones
  :func:`convcli.io.read_image` gives, bit for bit.
- Striped and tiled TIFF, BigTIFF, chunky or planar: tifffile, decoding only the strips
  or tiles that overlap the rows asked for (random access).
- ``.npy``: a memory map, random access.
- Everything else, files libvips cannot open, and the odd variants (palette, CMYK,
  rotated, premultiplied, animated...): :func:`convcli.io.images.read_native` decodes the
  whole image at its stored depth into an :class:`~convcli.io.stream.ArraySource`.
  Only these whole-image decodes are held to ``max_pixels`` (decompression bombs);
  a streamed image of any size is allowed.

pyvips, tifffile and imagecodecs are imported when a file needs them.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from convcli import notes as cnotes
from convcli.errors import InputError
from convcli.io import images as _im
from convcli.io._common import check_file, codec_pool, codec_reason, name_of, reason
from convcli.io.stream import ArraySource, ImageInfo, Source

_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
_JPEG_SIG = b"\xff\xd8\xff"
_WEBP = (b"RIFF", b"WEBP")


@contextlib.contextmanager
def _noted(notes: list[str]) -> Iterator[None]:
    """What the codecs log or warn while they work becomes ``notes`` (never stderr)."""
    caught: list[Any] = []
    try:
        with _im._codec_notes(notes), cnotes.collect(caught):
            yield
    finally:
        notes.extend(cnotes.text(w) for w in caught)


def open_source(path: str | Path, *, max_pixels: int | None, whole: bool = True) -> Source | None:
    """See :func:`convcli.io.stream.open_source`."""
    path = Path(path)
    name = name_of(path)
    check_file(path)
    if path.suffix.lower() == ".npy":
        return _open_npy(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {reason(exc)}") from None
    source: Source | None = None
    if head[:4] in _im._TIFF_MAGIC:
        source = _open_tiff(path, max_pixels)
    elif head.startswith(_JPEG_SIG):
        source = _open_vips(path, "jpeg", max_pixels, decode=whole)
    elif head.startswith(_im._PNG_SIG):
        source = _open_png(path, max_pixels, whole)
    elif head[:4] == _WEBP[0] and head[8:12] == _WEBP[1]:
        source = _open_vips(path, "webp", max_pixels, decode=whole)
    if source is not None or not whole:
        return source
    native = _im.read_native(path, max_pixels=max_pixels)
    return _array_source(native)


def _array_source(native: _im.Native) -> ArraySource:
    height, width, channels = native.samples.shape
    info = ImageInfo(
        height,
        width,
        channels,
        native.samples.dtype,
        native.top,
        native.bit_depth,
        native.mode,
        native.has_alpha,
        native.notes,
    )
    return ArraySource(native.samples, info)


# ------------------------------------------------------------------------- libvips


def _pyvips() -> Any | None:
    """pyvips with libvips loaded, or None where it is not installed or will not load
    (then the whole-image readers do the work)."""
    try:
        import pyvips
    except Exception:  # ImportError, or OSError/cffi errors from loading libvips
        return None
    if not getattr(_pyvips, "configured", False):
        # libvips caches opened files by name: a file rewritten between two reads in
        # one process would come back stale
        pyvips.cache_set_max(0)
        _pyvips.configured = True  # type: ignore[attr-defined]
    return pyvips


def _vips_load(pyvips: Any, path: Path, **options: Any) -> Any:
    """``pyvips.Image.new_from_file`` for any file name. libvips takes a name as UTF-8
    text and reads load options from one that ends in ``[...]``: a name that is not
    UTF-8 (bytes that are no text, on Linux) failed to encode, and ``a.jpg[shrink=2]``
    loaded ``a.jpg`` at half size. Such names are opened here and handed to libvips
    as a descriptor (which libvips duplicates, so ours is closed at once)."""
    name = os.fspath(path)
    try:
        plain = not name.endswith("]") and bool(name.encode("utf-8"))
    except UnicodeEncodeError:
        plain = False
    if plain:
        return pyvips.Image.new_from_file(name, **options)
    try:  # the callers turn a pyvips.Error into their own message
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise pyvips.Error("cannot open", reason(exc)) from None
    try:
        source = pyvips.Source.new_from_descriptor(fd)
    finally:
        os.close(fd)
    return pyvips.Image.new_from_source(source, "", **options)


def _png_layout(path: Path) -> tuple[int, int, bool, bool, bool] | None:
    """A PNG's bit depth, colour type, and whether it has a tRNS chunk, is interlaced,
    is animated, from the chunks before the first IDAT (no pixels read)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(8)
            depth = colour = -1
            trns = interlaced = animated = False
            while True:
                head = fh.read(8)
                if len(head) < 8:
                    return None
                size, kind = int.from_bytes(head[:4], "big"), head[4:]
                if kind == b"IHDR":
                    body = fh.read(13)
                    if len(body) < 13:
                        return None
                    depth, colour, interlaced = body[8], body[9], body[12] != 0
                    fh.seek(size - 13 + 4, 1)
                    continue
                if kind == b"IDAT":
                    return depth, colour, trns, interlaced, animated
                trns |= kind == b"tRNS"
                animated |= kind == b"acTL"
                fh.seek(size + 4, 1)
    except OSError:
        return None


def _open_png(path: Path, max_pixels: int | None, decode: bool) -> Source | None:
    layout = _png_layout(path)
    if layout is None:
        return None
    depth, colour, trns, interlaced, animated = layout
    if animated:
        return None  # the whole-image reader notes the frames it leaves out
    if colour == 3:  # palette: RGB, or RGBA with a tRNS chunk, as Pillow converts it
        pass
    elif depth not in (8, 16) or trns or colour not in (0, 2, 4, 6):
        return None  # low bit depths, colour keys: the whole-image readers' rules
    # an interlaced PNG is decoded whole, and held to max_pixels like the others
    return _open_vips(path, "png", max_pixels, whole=interlaced, decode=decode)


# A sequential libvips load decodes in strips of a fixed height (16 rows by default) and
# refuses a request that starts inside a strip it has passed; requests that start on a
# multiple of this (a multiple of every such height) never do.
_VIPS_ALIGN = 256
# Runs :meth:`VipsSource.read_ahead` decodes at most in one call: each call is Python
# around libvips, and while OpenCL starts beside it (what reading ahead is for) every
# return to Python waits for the other thread's hold on the interpreter lock.
_AHEAD_RUNS = 4


class VipsSource:
    """Rows from a sequential libvips load: each row decoded once, top to bottom.

    Rows are decoded in runs that start on multiples of ``_VIPS_ALIGN`` (``crop`` +
    ``write_to_memory``, on libvips' threads); the rows of a run beyond the ones asked
    for are kept for the next call, in the run's own buffer: rows within one run are
    handed out as a view, rows across runs as one copy of those rows.
    :meth:`read_ahead` decodes the next run before it is asked for."""

    sequential = True
    #: a JPEG opened to fail on libjpeg's warnings: opens it again to fail only on
    #: errors, for a file whose warnings all lose nothing (see _HARMLESS_JPEG)
    _lenient: Any = None
    #: (kind, path) of a JPEG or PNG, to ask its codec again where libvips' message
    #: is lost (see _decode)
    _recheck: tuple[str, Path] | None = None

    def __init__(
        self, image: Any, info: ImageInfo, name: str, mirror: bool, interlaced: bool = False
    ) -> None:
        self._image = image
        self.info = info
        self._name = name
        self._mirror = mirror
        self._next = 0  # the first row the caller may still ask for
        row = info.width * info.channels * info.dtype.itemsize
        # the run being decoded, the one kept, and the carried rows joined to them; a
        # progressive JPEG's decoder holds the whole image's coefficients
        rows = info.height if interlaced else min(info.height, 3 * _VIPS_ALIGN)
        self.held_bytes = rows * row
        self._row_bytes = row
        # decoded runs not given out whole yet: (first row, rows), in order, contiguous
        self._runs: deque[tuple[int, np.ndarray]] = deque()
        self._decoded = 0  # the row after the last one decoded

    def _decode(self, y0: int, y1: int) -> np.ndarray:
        import pyvips

        info = self.info
        try:
            with _noted(info.notes):
                data = self._image.crop(0, y0, info.width, y1 - y0).write_to_memory()
        except pyvips.Error as exc:
            problem = _vips_problem(exc)
            harmless = self._lenient is not None and _harmless_jpeg(exc)
            detail = str(getattr(exc, "detail", "") or "").lower()
            if self._recheck is not None and not any(t in detail for t in ("jpeg", "png")):
                # libvips keeps its messages in one buffer for the whole process: a
                # call on another thread (a batch decodes several files at once) can
                # take this one's, leaving "unable to write to memory"; the codec says
                # again, here, what is wrong
                kind, path = self._recheck
                if kind == "jpeg":
                    warning = _jpeg_warning(path)
                    if warning is not None:
                        harmless = any(h in warning.lower() for h in _HARMLESS_JPEG)
                        problem = _problem_of(warning)
                elif info.height * info.width <= _RECHECK_PIXELS:
                    problem = _png_problem(path) or problem
            if self._lenient is not None and harmless:
                # the same rows (libjpeg skips what it warned about), decoded again
                # from the top by a load that does not stop at the warning
                self._image, self._lenient = self._lenient(), None
                return self._decode(y0, y1)
            raise InputError(f"{self._name}: {problem}") from None
        except MemoryError:
            raise InputError(f"{self._name}: not enough memory to decode this image") from None
        return np.frombuffer(data, info.dtype).reshape(y1 - y0, info.width, info.channels)

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        info = self.info
        if not 0 <= y0 <= y1 <= info.height:
            raise ValueError(f"rows {y0}:{y1} outside 0:{info.height}")
        if y0 < self._next:
            raise ValueError(
                f"sequential source: rows {y0}:{y1} asked for after row {self._next} "
                "(keep the rows needed again)"
            )
        runs = self._runs
        if y1 > self._decoded:
            start = max(self._decoded, y0 - y0 % _VIPS_ALIGN)  # skip whole runs not asked for
            end = min(-(-y1 // _VIPS_ALIGN) * _VIPS_ALIGN, info.height)
            if start > self._decoded:
                runs.clear()
            runs.append((start, self._decode(start, end)))
            self._decoded = end
        while runs and runs[0][0] + runs[0][1].shape[0] <= y0:
            runs.popleft()
        pieces = []
        for r0, run in runs:
            if r0 >= y1:
                break
            pieces.append(run[max(y0 - r0, 0) : y1 - r0])
        while runs and runs[0][0] + runs[0][1].shape[0] <= y1:
            runs.popleft()
        self._next = y1
        if len(pieces) == 1:
            rows = pieces[0]
        elif pieces:
            rows = np.concatenate(pieces)
        else:
            rows = np.empty((0, info.width, info.channels), info.dtype)
        return rows[:, ::-1] if self._mirror else rows

    def read_ahead(self, most_bytes: int) -> bool:
        """Decode the next runs of rows (a few) now, before they are asked for, as far
        as the runs held stay within ``most_bytes``; False where there is none left to
        decode or no room."""
        info = self.info
        if self._image is None or self._decoded >= info.height:
            return False
        held = sum(run.nbytes for _, run in self._runs)
        runs = min(_AHEAD_RUNS, (most_bytes - held) // (_VIPS_ALIGN * self._row_bytes))
        if runs < 1:
            return False
        end = min(self._decoded + runs * _VIPS_ALIGN, info.height)
        self._runs.append((self._decoded, self._decode(self._decoded, end)))
        self._decoded = end
        return True

    def close(self) -> None:
        self._image = None
        self._runs.clear()


# libjpeg warnings after which every pixel is still decoded: bytes between markers (some
# encoders pad between the scans of a progressive file), odd header fields.
_HARMLESS_JPEG = (
    "extraneous bytes before marker",
    "unknown jfif revision",
    "invalid sos parameters for sequential jpeg",
    "unknown adobe color transform",
)


def _harmless_jpeg(exc: Any) -> bool:
    lines = [ln.lower() for ln in str(getattr(exc, "detail", "") or "").splitlines()]
    warned = [ln for ln in lines if "vipsjpeg:" in ln]
    return bool(warned) and all(any(h in ln for h in _HARMLESS_JPEG) for ln in warned)


def _problem_of(detail: str) -> str:
    """A decoder's message as the one-line problem a reader reports."""
    detail = " ".join(detail.split())
    low = detail.lower()
    if any(w in low for w in ("premature", "truncated", "end of", "read error", "out of data")):
        return "truncated image data"
    return f"cannot decode image ({detail[:200]})"


def _vips_problem(exc: Any) -> str:
    detail = " ".join(str(getattr(exc, "detail", "") or exc).split())
    return _problem_of(detail) if detail else f"cannot decode image ({reason(exc)})"


# a PNG whose libvips message was lost is decoded whole again by libpng to learn why,
# up to this many pixels (on the error path of a file priced for strips; beyond it the
# message stays libvips' own)
_RECHECK_PIXELS = 2**26


def _png_problem(path: Path) -> str | None:
    """What libpng (the whole-image reader) says is wrong with the PNG at ``path``, or
    None when it reads it."""
    try:
        _im._read_png(path, None)
    except InputError as exc:
        text = str(exc)
        return text.split(": ", 1)[1] if ": " in text else text
    except Exception:
        return None
    return None


def _jpeg_warning(path: Path) -> str | None:
    """libjpeg's first warning or error on the JPEG at ``path`` (its entropy-coded data
    decoded at 1/8 scale, which reads all of it), or None when it has none or cannot
    be asked (simplejpeg missing, the file unreadable)."""
    try:
        import simplejpeg
    except ImportError:
        return None
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    try:
        simplejpeg.decode_jpeg(blob, colorspace="GRAY", min_factor=8, strict=True)
    except Exception as exc:  # the message is what we want
        return str(exc) or type(exc).__name__
    return None


def _check_exif(blob: bytes, notes: list[str]) -> None:
    """Parse an EXIF block as Pillow does, for what it warns about (within
    :func:`_noted`, the warnings become notes); a block it cannot parse at all is
    a note too."""
    from PIL import Image as PILImage

    try:
        exif = PILImage.Exif()
        exif.load(blob)
        exif.get_ifd(0x8769)  # the Exif sub-IFD, which Pillow reads with the orientation
    except Exception as exc:
        notes.append(f"EXIF data ignored ({reason(exc)})")


def _vips_orientation(image: Any, fields: set[str]) -> int:
    """The orientation Pillow's ``exif_transpose`` applies: the EXIF tag as stored
    (libvips' ``orientation`` clamps 0 or 9 to 1..8, Pillow leaves those unrotated),
    else a ``tiff:Orientation`` in the XMP packet."""
    if "exif-ifd0-Orientation" in fields:
        # "6 (Right-top, Short, 1 components, 2 bytes)"
        text = str(image.get("exif-ifd0-Orientation")).split(" ", 1)[0]
        value = int(text) if text.isdigit() else 1
        return value if 1 <= value <= 8 else 1
    if "xmp-data" in fields:
        match = re.search(rb'tiff:Orientation(="|>)([0-9])', bytes(image.get("xmp-data")))
        if match:
            value = int(match[2])
            return value if 1 <= value <= 8 else 1
    return 1


def _open_vips(
    path: Path, kind: str, max_pixels: int | None, *, whole: bool = False, decode: bool = True
):
    """A :class:`VipsSource` for a JPEG, PNG or WebP file; None where libvips is missing
    or cannot open the file, or for layouts whose reading the whole-image readers
    define (CMYK JPEG, animated WebP), which then read it. An image libvips decodes
    whole (WebP, ``whole``, a rotation) becomes an :class:`ArraySource`, or None
    without ``decode``."""
    pyvips = _pyvips()
    if pyvips is None:
        return None
    name = name_of(path)
    notes: list[str] = []
    try:
        with _noted(notes):
            # JPEG: fail on libjpeg's warnings too. Data that ends early behind an EOI
            # marker (a cut file 'repaired' by appending one) is only a warning ("Corrupt
            # JPEG data: premature end of data segment") after which libjpeg fills the
            # rest grey; a warning in the header (an odd JFIF version) makes this open
            # fail, and the whole-image reader reads the file as Pillow does.
            fail_on = "warning" if kind == "jpeg" else "truncated"
            image = _vips_load(pyvips, path, access="sequential", fail_on=fail_on)
            fields = set(image.get_fields())
            if kind == "png":
                # as the whole-image reader finds it (libvips reads no orientation from
                # ImageMagick's "Raw profile type exif" text)
                orientation = _im._png_exif_orientation(_im.png_head(path), notes)
            else:
                orientation = _vips_orientation(image, fields)
            if "exif-data" in fields and kind != "png":  # (a PNG's was parsed above)
                # Pillow's parse of the same block: its warnings about a corrupt one
                # become notes, as the whole-image reader gives them
                _check_exif(bytes(image.get("exif-data")), notes)
            pages = image.get("n-pages") if "n-pages" in fields else 1
            interlaced = bool(image.get("interlaced")) if "interlaced" in fields else False
    except pyvips.Error:
        return None  # the whole-image readers say what is wrong with it
    bands, fmt = image.bands, image.format
    dtype = {"uchar": np.uint8, "ushort": np.uint16}.get(fmt)
    if dtype is None or bands not in _MODES or pages > 1:
        return None
    if kind == "jpeg" and bands not in (1, 3):
        return None
    if interlaced:
        # a progressive JPEG or interlaced PNG is decoded through a buffer of the
        # whole image (libjpeg's coefficients): held to max_pixels (bombs)
        _im._check_pixels(name, image.width * image.height, max_pixels)
    depth = 16 if dtype == np.uint16 else 8
    info = ImageInfo(
        image.height,
        image.width,
        bands,
        np.dtype(dtype),
        65535.0 if depth == 16 else 255.0,
        depth,
        _MODES[bands],
        bands in (2, 4),
        notes,
    )
    source = VipsSource(image, info, name, orientation == 2, interlaced)
    if kind in ("jpeg", "png"):
        source._recheck = (kind, path)
    if fail_on == "warning":
        source._lenient = lambda: _vips_load(pyvips, path, access="sequential", fail_on="truncated")
    if kind == "webp" or whole or orientation not in (1, 2):
        # decoded whole (WebP always is; a rotation needs every row): held to
        # max_pixels like the other whole-image decodes
        if not decode:
            return None
        _im._check_pixels(name, image.width * image.height, max_pixels)
        samples = source.read_rows(0, image.height)
        source.close()
        samples = _im._oriented(samples, orientation if orientation != 2 else 1)
        native = _im.Native(samples, info.top, info.mode, depth, info.has_alpha, notes)
        return _array_source(native)
    return source


# --------------------------------------------------------------------------- .npy


class NpySource:
    """Rows of a ``(C, H, W)`` or ``(H, W)`` ``.npy`` array through a memory map."""

    sequential = False

    def __init__(self, arr: np.ndarray, info: ImageInfo, name: str) -> None:
        self._arr = arr
        self.info = info
        self._name = name
        # a memory map: pages of the file, not memory of ours, and one block's copy
        self.held_bytes = info.width * info.channels * info.dtype.itemsize

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        block = np.moveaxis(self._arr[:, y0:y1], 0, -1)
        out = np.empty(block.shape, self.info.dtype)
        try:
            np.copyto(out, block, casting="unsafe")
        except OSError as exc:  # the file shrank under the map
            raise InputError(f"{self._name}: cannot read: {reason(exc)}") from None
        if self.info.top is None and not np.isfinite(out).all():
            raise InputError(f"{self._name}: .npy image contains NaN or Inf")
        return out

    def close(self) -> None:
        self._arr = None  # type: ignore[assignment]


def _open_npy(path: Path) -> NpySource:
    """The checks and the scaling of :func:`convcli.io.read_image` (uint8 / uint16
    samples divided by 255 / 65535, every other real type taken as float32 values),
    the NaN check strip by strip."""
    name = name_of(path)
    arr = _im.open_npy_image(path)
    channels, height, width = map(int, arr.shape)
    if arr.dtype.kind == "u" and arr.dtype.itemsize in (1, 2):
        depth, top = 8 * arr.dtype.itemsize, float(256**arr.dtype.itemsize - 1)
        dtype = np.dtype(np.uint8 if depth == 8 else np.uint16)
    else:
        depth, top, dtype = 32, None, np.dtype(np.float32)
    mode = "F" if channels == 1 else f"F{channels}"
    info = ImageInfo(height, width, channels, dtype, top, depth, mode, False)
    return NpySource(arr, info, name)


# ---------------------------------------------------------------------------- TIFF


class TiffSource:
    """Rows of a striped or tiled TIFF page, decoding only the strips or tiles that
    overlap them (the last band of strips/tiles is kept for the next, overlapping ask)."""

    sequential = False

    def __init__(self, tif: Any, page: Any, info: ImageInfo, name: str, invert: bool) -> None:
        self._tif = tif
        self._page = page
        self.info = info
        self._name = name
        self._invert = invert
        self._lock = threading.Lock()
        planes, _, _, _, self._contig = (int(v) for v in page.shaped)
        self._planes = planes
        if page.is_tiled:
            self._band_h, self._tile_w = int(page.tilelength), int(page.tilewidth)
        else:
            self._band_h, self._tile_w = min(int(page.rowsperstrip), info.height), info.width
        self._across = -(-info.width // self._tile_w)
        # the band being decoded and the one kept for the next strip's halo
        row = info.width * info.channels * np.dtype(page.dtype).itemsize
        self.held_bytes = 2 * min(self._band_h, info.height) * row
        self._down = -(-info.height // self._band_h)
        self._stored = np.dtype(page.dtype)
        self._cache: dict[int, np.ndarray] = {}

    def _bands(self, ks: list[int]) -> dict[int, np.ndarray]:
        """Bands ``ks`` (rows of strips or tiles), their segments decoded together on
        the codec threads."""
        page, info = self._page, self.info
        bands: dict[int, np.ndarray] = {}
        wanted = []
        for k in ks:
            rows = min(self._band_h, info.height - k * self._band_h)
            bands[k] = np.zeros((rows, info.width, info.channels), self._stored)
            for p in range(self._planes):
                for j in range(self._across):
                    index = p * self._down * self._across + k * self._across + j
                    offset = int(page.dataoffsets[index])
                    count = int(page.databytecounts[index])
                    if offset and count:  # an empty segment reads as 0, as tifffile fills it
                        wanted.append((k, p, j, index, offset, count))
        fh = self._tif.filehandle
        with self._lock:
            chunks = []
            for *_, offset, count in wanted:
                fh.seek(offset)
                chunks.append(fh.read(count))
        tables = page.jpegtables
        jpeg = int(page.compression) == _im._JPEG

        def place(item: tuple[tuple[int, ...], bytes]) -> None:
            (k, p, j, index, _, _), data = item
            if jpeg and not _im.jpeg_complete(data):
                raise InputError(f"{self._name}: truncated image data")
            segment = page.decode(data, index, jpegtables=tables)[0]
            if segment is None:
                return
            band = bands[k]
            x = j * self._tile_w
            w = min(self._tile_w, info.width - x)
            block = segment[0, : band.shape[0], :w]
            if self._planes > 1:
                band[:, x : x + w, p] = block[..., 0]
            else:
                band[:, x : x + w] = block

        items = list(zip(wanted, chunks, strict=True))
        if len(items) > 1:
            list(codec_pool().map(place, items))
        else:
            for item in items:
                place(item)
        return bands

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        info = self.info
        if not 0 <= y0 <= y1 <= info.height:
            raise ValueError(f"rows {y0}:{y1} outside 0:{info.height}")
        out = np.empty((y1 - y0, info.width, info.channels), self._stored)
        ks = list(range(y0 // self._band_h, -(-y1 // self._band_h)))
        cache = self._cache  # one snapshot: another thread may replace it
        try:
            with _noted(info.notes):
                bands = self._bands([k for k in ks if k not in cache])
        except InputError:
            raise
        except MemoryError:
            raise InputError(f"{self._name}: not enough memory to decode this image") from None
        except Exception as exc:  # tifffile and imagecodecs raise many types on bad data
            raise InputError(f"{self._name}: cannot decode image ({codec_reason(exc)})") from None
        bands.update((k, band) for k, band in cache.items() if k in ks)
        for k in ks:
            top = k * self._band_h
            band = bands[k]
            a, b = max(y0, top), min(y1, top + band.shape[0])
            out[a - y0 : b - y0] = band[a - top : b - top]
        if ks:  # the next strip asked for usually starts in the last band (a halo)
            self._cache = {ks[-1]: bands[ks[-1]]}
        if self._invert:  # MinIsWhite: 0 is white (the gray channel only)
            out[..., 0] = np.asarray(info.top, out.dtype) - out[..., 0]
        if out.dtype.kind == "f":
            if out.dtype != info.dtype:
                with np.errstate(over="ignore"):
                    out = out.astype(info.dtype)
            if not np.isfinite(out).all():
                raise InputError(f"{self._name}: float image contains NaN or Inf")
        return out

    def close(self) -> None:
        self._cache = {}
        if self._tif is not None:
            self._tif.close()
            self._tif = None


# compression schemes whose segments tifffile decodes one at a time without the
# whole-page context (old-style JPEG, 6, needs it)
_OJPEG = 6


def _open_tiff(path: Path, max_pixels: int | None) -> Source | None:
    """A :class:`TiffSource` for the first page of a TIFF whose samples read_image would
    only divide (gray/RGB with or without unassociated alpha, any channel count, 8/16-bit
    unsigned, uint32/int32, float), upright; None for the rest (the whole-image readers
    convert them)."""
    import tifffile

    name = name_of(path)
    notes: list[str] = []
    tif = None
    try:
        with _noted(notes):
            tif = tifffile.TiffFile(path)
            if not len(tif.pages):
                raise InputError(f"{name}: truncated or corrupt TIFF (no image directory)")
            page = tif.pages[0]
            source = _tiff_source(tif, page, name, notes, max_pixels)
            if source is None:
                tif.close()
            return source
    except InputError:
        if tif is not None:
            tif.close()
        raise
    except Exception:  # a bad file: the whole-image reader says what is wrong
        if tif is not None:
            tif.close()
        return None


def _tiff_source(
    tif: Any, page: Any, name: str, notes: list[str], max_pixels: int | None
) -> TiffSource | None:
    photometric = int(page.photometric)
    extra = tuple(int(e) for e in page.extrasamples)
    tag = page.tags.get(_im._ORIENTATION)
    orientation = int(tag.value) if tag is not None else 1
    dtype = page.dtype
    bits = int(page.bitspersample)
    if (
        dtype is None
        or orientation != 1
        or int(page.compression) == _OJPEG
        or page.axes not in ("YX", "YXS", "SYX")
        or int(page.shaped[1]) != 1
        or (extra and extra[0] == 1)  # premultiplied: divided out in float
    ):
        return None
    dtype = np.dtype(dtype)
    if photometric == _im._YCBCR:
        if int(page.compression) != _im._JPEG:
            return None
    elif photometric not in (_im._MINISBLACK, _im._MINISWHITE, _im._RGB):
        return None
    kind = dtype.kind
    if kind == "u" and dtype.itemsize in (1, 2) and bits == 8 * dtype.itemsize:
        top: float | None = float((1 << bits) - 1)
        depth = bits
    elif dtype in (np.dtype(np.uint32), np.dtype(np.int32)) and bits == 32:
        top = float(np.iinfo(dtype).max)
        declared = page.tags.get(_im._MAX_SAMPLE_VALUE)
        if kind == "u" and declared is not None:
            stated = int(np.max(np.atleast_1d(declared.value)))
            if 0 < stated < top:
                top = float(stated)
        depth = 32
    elif kind == "f" and dtype.itemsize in (2, 4, 8):
        top, depth = None, 32
    else:
        return None
    if photometric == _im._MINISWHITE and kind != "u":
        return None
    if not int(page.imagelength) or not int(page.imagewidth):
        return None  # the whole-image reader says what is wrong
    # what is decoded at once (one strip, or a row of tiles) is held to max_pixels: a
    # file of one strip is a whole-image decode
    if page.is_tiled:
        band = int(page.tilelength) * max(int(page.imagewidth), int(page.tilewidth))
    else:
        band = min(int(page.rowsperstrip), int(page.imagelength)) * int(page.imagewidth)
    _im._check_pixels(name, band, max_pixels)
    size = tif.filehandle.size
    ends = np.asarray(page.dataoffsets, np.int64) + np.asarray(page.databytecounts, np.int64)
    if ends.size and int(ends.max()) > size:
        raise InputError(f"{name}: truncated image data")
    channels = int(page.shaped[0]) * int(page.shaped[4])
    colour = 1 if photometric in (_im._MINISWHITE, _im._MINISBLACK) else 3
    has_alpha = channels == colour + 1 and (not extra or extra[0] in (1, 2))
    if depth == 32:
        mode = "F" if channels == 1 else f"F{channels}"
    else:
        modes = {(1, False): "L", (2, True): "LA", (3, False): "RGB", (4, True): "RGBA"}
        mode = modes.get((channels, has_alpha), f"I{channels}")
    frames = _im._tiff_frames(tif)
    if frames > 1:
        notes.append(_im._frames_note(frames, "pages"))
    out_dtype = np.dtype(np.float32) if kind == "f" else dtype
    info = ImageInfo(
        int(page.imagelength),
        int(page.imagewidth),
        channels,
        out_dtype,
        top,
        depth,
        mode,
        has_alpha,
        notes,
    )
    return TiffSource(tif, page, info, name, photometric == _im._MINISWHITE)
