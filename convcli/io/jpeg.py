"""A JPEG's markers up to its frame header or first scan: one walker for the bytes
already read (:mod:`convcli.small`) and for a file read marker by marker, skipping the
contents nobody asks for (:func:`convcli.io.images.read_jpeg_subsampling`).

A forged file must not cost seconds: the walker reads at most :data:`MARKERS_READ`
markers, and at most as many fill bytes (``0xFF`` padding, read one at a time) before
each; past that it gives up (None), as on a marker cut short or a scan before any frame
header. None means "no JPEG this walker reads"; the general reader then says what is
wrong with the file, or the caller falls back to its default.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from typing import BinaryIO, Literal

SOI = b"\xff\xd8"
# frame headers (SOFn): every 0xC0-0xCF but DHT (C4), JPG (C8) and DAC (CC)
SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# markers read before the frame header (or the scan) at most (a camera file has a dozen
# or two), and fill bytes before one marker at most
MARKERS_READ = 1000
_EXIF = b"Exif\x00\x00"
_XMP = b"http://ns.adobe.com/xap/1.0/\x00"
# the luma component's sampling factors (h, v) when both chroma components have 1x1
_LUMA_FACTORS = {(1, 1): "444", (2, 1): "422", (2, 2): "420"}


@dataclass(frozen=True)
class JpegHeader:
    """What a JPEG's markers say, up to its frame header or its first scan."""

    height: int
    width: int
    channels: int
    precision: int
    frame: int  # the SOF marker's second byte (0xC0 baseline, 0xC2 progressive, ...)
    sampling: tuple[tuple[int, int], ...]  # each component's factors (h, v), in order
    exif: bytes | None = None  # the APP1 Exif payload (TIFF header on), if any
    xmp: bytes | None = None
    adobe: bool = False  # an APP14 Adobe marker (colour transform flags)

    @property
    def subsampling(self) -> str | None:
        """``"444"``, ``"422"`` or ``"420"`` for three components whose chroma
        components are sampled 1x1, else None (grey, CMYK, 4:4:0, 4:1:1 and other
        factors)."""
        if len(self.sampling) != 3 or self.sampling[1:] != ((1, 1), (1, 1)):
            return None
        return _LUMA_FACTORS.get(self.sampling[0])


def _frame(marker: int, body: bytes) -> JpegHeader | None:
    """The frame an SOF segment's ``body`` describes (None: shorter than it says)."""
    if len(body) < 6:
        return None
    precision, height, width, channels = struct.unpack_from(">BHHB", body)
    components = body[6 : 6 + 3 * channels]  # (id, factors, table) each
    if len(components) != 3 * channels:
        return None
    sampling = tuple((f >> 4, f & 15) for f in components[1::3])
    return JpegHeader(height, width, channels, precision, marker, sampling)


def read_header(
    src: bytes | BinaryIO, *, until: Literal["scan", "frame"] = "scan"
) -> JpegHeader | None:
    """The frame header of the JPEG in ``src`` (its bytes, or a binary file at the
    JPEG's start), or None where it is no JPEG this walker reads: no SOI, a marker cut
    short, no frame header before the scan or the end, or more markers or fill bytes
    than :data:`MARKERS_READ`.

    ``until="scan"`` walks every marker up to the first scan (which must be complete)
    and keeps the metadata the frame needs (EXIF, XMP, an Adobe marker); ``"frame"``
    stops at the frame header, whose sampling factors are all it is read for. Bodies
    other than those are skipped (a file: seeked over, not read).
    """
    fh = io.BytesIO(src) if isinstance(src, (bytes, bytearray, memoryview)) else src
    start = fh.tell()
    size = fh.seek(0, os.SEEK_END)
    fh.seek(start)
    if fh.read(2) != SOI:
        return None
    exif = xmp = None
    adobe = False
    frame: JpegHeader | None = None
    for _ in range(MARKERS_READ):
        head = fh.read(4)
        for _ in range(MARKERS_READ):  # fill bytes before a marker
            if len(head) < 2 or head[0] != 0xFF or head[1] != 0xFF:
                break
            head = head[1:] + fh.read(1)
        if len(head) < 4 or head[0] != 0xFF or head[1] in (0xD9, 0xFF):
            return None  # cut short, no marker, the end, or fill past the cap
        marker = head[1]
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length
            fh.seek(-2, os.SEEK_CUR)
            continue
        (length,) = struct.unpack_from(">H", head, 2)
        if length < 2:
            return None
        if marker in SOF_MARKERS or (until == "scan" and marker in (0xE1, 0xEE)):
            body = fh.read(length - 2)
            if len(body) != length - 2:
                return None
        else:  # skipped: only whether it is all there counts
            if fh.seek(length - 2, os.SEEK_CUR) > size:
                return None
            body = b""
        if marker == 0xDA:  # start of scan: the header is complete
            return None if frame is None else _with_metadata(frame, exif, xmp, adobe)
        if marker in SOF_MARKERS:
            frame = _frame(marker, body)
            if frame is None:
                return None
            if until == "frame":
                return frame
        elif marker == 0xE1 and body.startswith(_EXIF):
            exif = body[len(_EXIF) :]
        elif marker == 0xE1 and body.startswith(_XMP):
            xmp = body[len(_XMP) :]
        elif marker == 0xEE and body.startswith(b"Adobe"):
            adobe = True
    return None


def _with_metadata(
    frame: JpegHeader, exif: bytes | None, xmp: bytes | None, adobe: bool
) -> JpegHeader:
    return JpegHeader(frame.height, frame.width, frame.channels, frame.precision, frame.frame,
                      frame.sampling, exif, xmp, adobe)  # fmt: skip
