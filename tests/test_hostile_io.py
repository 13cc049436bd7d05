"""Hostile image files: data that ends early behind a valid header (a forged IDAT, a
JPEG cut short with an EOI marker put back, a JPEG strip of a TIFF cut short) is an
error naming the file, for whole-image and streamed reads, never zero- or grey-filled
pixels. And the readers that replaced Pillow for PNG give Pillow's pixels."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageOps

from convcli import io as cio
from convcli.errors import InputError
from convcli.io.stream import open_source

try:
    import pyvips  # noqa: F401

    HAVE_VIPS = True
except Exception:
    HAVE_VIPS = False


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(
    rows: np.ndarray, w: int, depth: int, colour: int, *, keep: float = 1.0, extra: bytes = b""
) -> bytes:
    """A PNG ``w`` pixels wide of ``rows`` (samples, or packed bytes below 8 bits;
    filter 0) whose IDAT holds only the first ``keep`` of its rows in a complete zlib
    stream: every chunk and CRC is valid."""
    h = rows.shape[0]
    big = rows.astype(">u2" if depth == 16 else np.uint8)
    raw = b"".join(b"\x00" + big[y].tobytes() for y in range(int(h * keep)))
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + extra
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def read_all(path: Path) -> np.ndarray:
    src = open_source(path, max_pixels=None)
    try:
        return src.read_rows(0, src.info.height)
    finally:
        src.close()


READERS = {"whole": cio.read_image, "streamed": read_all}


# ------------------------------------------------------------------------ PNG


@pytest.mark.parametrize("how", sorted(READERS))
@pytest.mark.parametrize(
    "depth,colour", [(8, 0), (8, 2), (8, 4), (8, 6), (16, 2), (16, 6), (8, 3), (4, 0)]
)
def test_png_with_rows_missing_from_its_idat(tmp_path, how, depth, colour):
    """Pillow returned such a file with the missing rows zero-filled, without a word."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    rng = np.random.default_rng(depth + colour)
    w = 24
    if depth < 8:  # packed samples: bytes of 8 // depth pixels each
        rows = rng.integers(0, 256, (32, w * channels * depth // 8))
    else:
        rows = rng.integers(0, 2**depth, (32, w * channels))
    extra = chunk(b"PLTE", bytes(range(256)) * 3) if colour == 3 else b""
    path = tmp_path / "forged.png"
    path.write_bytes(png(rows, w, depth, colour, keep=0.5, extra=extra))
    with pytest.raises(InputError, match=rf"^{path}: truncated image data$"):
        READERS[how](path)
    # the same file with every row: read, the rows as written
    path.write_bytes(png(rows, w, depth, colour, extra=extra))
    if depth >= 8 and colour != 3:
        im = cio.read_image(path)
        top = 2**depth - 1
        expect = rows.reshape(32, w, channels).transpose(2, 0, 1) / top
        np.testing.assert_array_equal(im.data, expect.astype(np.float32))


def _pil_png() -> PILImage.Image:
    rgb = np.random.default_rng(7).integers(0, 256, (21, 29, 3), dtype=np.uint8)
    return PILImage.fromarray(rgb)


def _xmp(orientation: int) -> bytes:
    return (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/'
        b'02/22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/"'
        b' tiff:Orientation="%d"/></rdf:RDF></x:xmpmeta>' % orientation
    )


def _layouts() -> dict[str, tuple[PILImage.Image, dict]]:
    from PIL import PngImagePlugin

    base = _pil_png()
    exif = PILImage.Exif()
    exif[0x0112] = 6
    raw_profile = PngImagePlugin.PngInfo()
    body = exif.tobytes()
    raw_profile.add_text("Raw profile type exif", f"\nexif\n{len(body)}\n{body.hex()}\n")
    xmp = PngImagePlugin.PngInfo()
    xmp.add_itxt("XML:com.adobe.xmp", _xmp(8).decode())
    return {
        "L": (base.convert("L"), {}),
        "LA": (base.convert("LA"), {}),
        "RGB": (base, {}),
        "RGBA": (base.convert("RGBA"), {}),
        "1-bit": (base.convert("1"), {}),
        "P": (base.convert("P"), {}),
        "P-4bit": (base.convert("P", palette=PILImage.ADAPTIVE, colors=16), {"bits": 4}),
        "P-tRNS": (base.convert("P"), {"transparency": 3}),
        "L-key": (base.convert("L"), {"transparency": 7}),
        "RGB-key": (base, {"transparency": (1, 2, 3)}),
        "eXIf-6": (base, {"exif": exif}),
        "raw-profile-6": (base, {"pnginfo": raw_profile}),
        "xmp-8": (base, {"pnginfo": xmp}),
        "animated": (base, {"save_all": True, "append_images": [base.convert("L").convert("RGB")]}),
    }


@pytest.mark.parametrize("layout", sorted(_layouts()))
def test_png_reads_as_pillow_decodes_it(tmp_path, layout):
    """libpng replaced Pillow for 8-bit PNG: the same samples (EXIF/XMP orientation
    applied, palettes expanded, a gray or RGB colour key as the alpha Pillow's
    conversion makes of it) and the same frame count."""
    pim, options = _layouts()[layout]
    path = tmp_path / "x.png"
    pim.save(path, **options)
    with PILImage.open(path) as ref:
        frames = getattr(ref, "n_frames", 1)
        ref.load()
        expect = ImageOps.exif_transpose(ref)
        if expect.mode in ("1", "P"):
            has_alpha = "transparency" in expect.info and expect.mode == "P"
            expect = expect.convert("RGBA" if has_alpha else "RGB" if expect.mode == "P" else "L")
        elif expect.info.get("transparency") is not None:  # a colour key: alpha 0 there
            expect = expect.convert(expect.mode + "A")
    im = cio.read_image(path)
    a = np.asarray(expect)
    a = a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)
    assert im.mode == expect.mode and im.bit_depth == 8
    np.testing.assert_array_equal(im.data, a.astype(np.float32) / 255)
    assert any("2 frames" in n for n in im.notes) == (frames == 2)
    assert (layout == "animated") == (frames == 2)


def test_interlaced_8bit_png_reads_as_pillow(tmp_path):
    a = np.random.default_rng(3).integers(0, 256, (19, 23, 3), dtype=np.uint8)
    path = tmp_path / "i.png"
    # Pillow writes no interlaced PNG: libpng through imagecodecs does not either, so
    # the file is built here (Adam7 passes, filter 0)
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4)]
    passes += [(1, 0, 2, 2), (0, 1, 1, 2)]
    raw = b""
    for x0, y0, dx, dy in passes:
        sub = a[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\x00" + row.tobytes() for row in sub)
    ihdr = struct.pack(">IIBBBBB", 23, 19, 8, 2, 0, 0, 1)
    blob = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
    path.write_bytes(blob + chunk(b"IEND", b""))
    with PILImage.open(path) as ref:
        expect = np.asarray(ref.convert("RGB"))
    np.testing.assert_array_equal(expect, a)  # the encoder above is right
    im = cio.read_image(path)
    np.testing.assert_array_equal(im.data, np.moveaxis(a, -1, 0).astype(np.float32) / 255)
    cut = raw[: len(raw) * 3 // 4]
    blob = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(cut))
    path.write_bytes(blob + chunk(b"IEND", b""))
    with pytest.raises(InputError, match=rf"^{path}: truncated image data$"):
        cio.read_image(path)
    # libvips' reason for an interlaced file is vaguer
    with pytest.raises(InputError, match=rf"^{path}: (truncated image data|cannot decode image)"):
        read_all(path)


# ----------------------------------------------------------------------- JPEG


def _jpeg(progressive: bool, size=(96, 80)) -> bytes:
    rgb = np.random.default_rng(5).integers(0, 256, (*size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, "JPEG", quality=90, progressive=progressive)
    return buf.getvalue()


@pytest.mark.skipif(not HAVE_VIPS, reason="Pillow hides libjpeg's warnings; libvips reports them")
@pytest.mark.parametrize("how", sorted(READERS))
@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_jpeg_cut_short_with_its_eoi_put_back(tmp_path, how, progressive, keep):
    """libjpeg warns 'premature end of data segment' and fills the rest grey; Pillow
    and a default libvips load return that grey as the image."""
    blob = _jpeg(progressive)
    sos = blob.index(b"\xff\xda")
    path = tmp_path / "cut.jpg"
    path.write_bytes(blob[: sos + int((len(blob) - 2 - sos) * keep)] + b"\xff\xd9")
    with pytest.raises(InputError, match=rf"^{path}: truncated image data$"):
        READERS[how](path)


@pytest.mark.parametrize("how", sorted(READERS))
def test_jpeg_padded_between_scans_reads_as_pillow(tmp_path, how):
    """Bytes between two scans of a progressive JPEG: libjpeg warns ('extraneous bytes
    before marker') and loses nothing; the file reads, Pillow's pixels."""
    blob = _jpeg(True)
    second = blob.index(b"\xff\xda", blob.index(b"\xff\xda") + 2)
    path = tmp_path / "padded.jpg"
    path.write_bytes(blob[:second] + b"\x00\x00\x00" + blob[second:])
    with PILImage.open(path) as ref:
        expect = np.asarray(ref.convert("RGB"))
    got = READERS[how](path)
    got = np.moveaxis(got.data, 0, -1) * 255 if how == "whole" else got
    np.testing.assert_array_equal(np.rint(got), expect)


# ----------------------------------------------------------------------- TIFF


@pytest.mark.parametrize("how", sorted(READERS))
@pytest.mark.parametrize("layout", ["strips", "tiles"])
def test_jpeg_tiff_segment_cut_short(tmp_path, how, layout):
    """A JPEG-compressed strip or tile whose byte count stops before its end (the file
    is whole, its table says less): libjpeg through imagecodecs filled the rest grey."""
    tifffile = pytest.importorskip("tifffile")
    rgb = np.random.default_rng(9).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    path = tmp_path / "j.tif"
    options = {"rowsperstrip": 16} if layout == "strips" else {"tile": (16, 16)}
    tifffile.imwrite(path, rgb, photometric="rgb", compression="jpeg", **options)
    good = READERS[how](path)  # read whole: every segment ends in its EOI
    assert (good.data.shape if how == "whole" else good.shape)[-2:] in ((64, 48), (48, 3))
    tag = "StripByteCounts" if layout == "strips" else "TileByteCounts"
    with tifffile.TiffFile(path, mode="r+b") as tif:
        counts = list(tif.pages[0].tags[tag].value)
        counts[-1] //= 2
        tif.pages[0].tags[tag].overwrite(counts)
    with pytest.raises(InputError, match=rf"^{path}: truncated image data$"):
        READERS[how](path)


# -------------------------------------------------------------------- writing


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".bmp"])
def test_library_refuses_float32_into_an_integer_format(tmp_path, suffix):
    """write_image(bit_depth=32) into a PNG wrote 16-bit samples without a word (only
    the command line refused); the library refuses, naming the file and the formats
    that hold float32, and no file is left."""
    x = np.random.default_rng(1).random((3, 8, 9))
    path = tmp_path / f"x{suffix}"
    fmt = {".png": "PNG", ".jpg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}[suffix]
    with pytest.raises(InputError, match=rf"^{path}: {fmt} holds .*integer samples, not 32-bit "
                       r"float ones: write \.tif or \.npy for float32") as err:  # fmt: skip
        cio.write_image(path, x, bit_depth=32)
    assert "--" not in str(err.value)  # no command-line flag in a library message
    assert list(tmp_path.iterdir()) == []
    # float32 where the format holds it; 16 bits in a PNG as before
    tif = cio.write_image(tmp_path / "x.tif", x, bit_depth=32)
    np.testing.assert_array_equal(cio.read_image(tif).data, x.astype(np.float32))
    png16 = cio.read_image(cio.write_image(tmp_path / "x16.png", x, bit_depth=16))
    assert png16.bit_depth == 16


def test_pipeline_target_refuses_float32_png(tmp_path):
    from convcli.pipeline import target_for

    with pytest.raises(InputError, match=r"PNG holds 8- or 16-bit integer samples"):
        target_for(tmp_path / "o.png", 3, 4, 5, 32, 95)


@pytest.mark.parametrize("default_is_frame", [True, False])
@pytest.mark.parametrize("frames", [1, 3])
def test_apng_frame_count_as_pillow_counts_it(tmp_path, frames, default_is_frame):
    """acTL with or without an fcTL before IDAT (the default image a frame of the
    animation, or one of its own): the note counts the frames Pillow counts."""
    rgb = np.random.default_rng(8).integers(0, 256, (6, 5 * 3))
    still = png(rgb, 5, 8, 2)
    head, rest = still[:33], still[33:]  # signature + IHDR, then IDAT and IEND
    actl = chunk(b"acTL", struct.pack(">II", frames, 0))
    fctl = chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, 5, 6, 0, 0, 1, 1, 0, 0))
    path = tmp_path / "a.png"
    path.write_bytes(head + actl + (fctl if default_is_frame else b"") + rest)
    with PILImage.open(path) as ref:
        expect = ref.n_frames
    notes = cio.read_image(path).notes
    assert any(f"{expect} frames" in n for n in notes) == (expect > 1), (expect, notes)
