"""convcli.io.stream: sources of native rows and streamed writers, against
read_image / write_image and independent decoders (Pillow, tifffile, NumPy)."""

from __future__ import annotations

import io
import sys
import tracemalloc
import zlib
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

from convcli import io as cio
from convcli.errors import InputError
from convcli.io import images as cimages
from convcli.io import sinks
from convcli.io.publish import publish
from convcli.io.stream import ArraySource, Target, open_source, sink_bytes, write_rows

tifffile = pytest.importorskip("tifffile")

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
try:
    import pyvips  # noqa: F401

    HAVE_VIPS = True
except Exception:
    HAVE_VIPS = False
vips_only = pytest.mark.skipif(not HAVE_VIPS, reason="pyvips does not load here")


@pytest.fixture
def opened():
    """open_source, with every source closed at the end of the test."""
    sources = []

    def open_(path, max_pixels=None):
        src = open_source(path, max_pixels=max_pixels)
        sources.append(src)
        return src

    yield open_
    for src in sources:
        src.close()


def crop(name: str, w: int = 61, h: int = 45, mode: str = "RGB") -> PILImage.Image:
    with PILImage.open(SAMPLES / name) as im:
        return im.convert(mode).crop((120, 90, 120 + w, 90 + h))


def rows_of(path: Path, step: int, **kw) -> tuple[np.ndarray, object]:
    src = open_source(path, max_pixels=kw.get("max_pixels"))
    info = src.info
    blocks = [src.read_rows(y, min(y + step, info.height)) for y in range(0, info.height, step)]
    src.close()
    return np.concatenate(blocks), src


def assert_same(path: Path, kind: str | None = None, steps=(1, 7, 300)) -> object:
    """open_source rows, divided by ``top`` (float64 quotient rounded to float32, not
    the reader's own float32 division), are read_image's data, for every strip height."""
    ref = cio.read_image(path, max_pixels=None)
    for step in steps:
        rows, src = rows_of(path, step)
        info = src.info
        assert (info.channels, info.height, info.width) == ref.data.shape
        assert (info.mode, info.bit_depth, info.has_alpha) == (
            ref.mode,
            ref.bit_depth,
            ref.has_alpha,
        )
        assert info.notes == ref.notes
        assert rows.dtype == info.dtype and rows.shape == (info.height, info.width, info.channels)
        if info.top is None:
            assert info.dtype.kind == "f"
            values = rows.astype(np.float32)
        else:
            assert info.dtype in (np.uint8, np.uint16, np.uint32, np.int32)
            values = (rows.astype(np.float64) / info.top).astype(np.float32)
        np.testing.assert_array_equal(np.moveaxis(values, -1, 0), ref.data)
        if kind is not None:
            assert type(src).__name__ == kind
    return src


# ----------------------------------------------------------------- PNG, JPEG, WebP


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLES.glob("*.png")))
def test_samples_identical(name):
    assert_same(SAMPLES / name, "VipsSource" if HAVE_VIPS else "ArraySource")


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("bits", [8, 16])
def test_png_depths_and_modes(tmp_path, channels, bits):
    x = np.random.default_rng(channels + bits).random((channels, 37, 29)).astype(np.float32)
    path = cio.write_image(tmp_path / "x.png", x, bit_depth=bits)
    src = assert_same(path, "VipsSource" if HAVE_VIPS else "ArraySource")
    assert src.info.dtype == (np.uint8 if bits == 8 else np.uint16)
    assert src.info.top == (255 if bits == 8 else 65535)


@pytest.mark.parametrize(
    "variant", ["palette", "palette-trns", "gray-trns", "rgb-trns", "1bit", "animated"]
)
def test_png_variants(tmp_path, variant):
    rgb = crop("coffee.png")
    path = tmp_path / "v.png"
    if variant.startswith("palette"):
        pal = rgb.quantize(16)
        pal.save(path, **({"transparency": 0} if variant.endswith("trns") else {}))
    elif variant == "gray-trns":
        rgb.convert("L").save(path, transparency=17)
    elif variant == "rgb-trns":
        rgb.save(path, transparency=(1, 2, 3))
    elif variant == "animated":  # the first frame, and a note about the others
        rgb.save(path, save_all=True, append_images=[rgb.rotate(180)])
    else:
        rgb.convert("1").save(path)
    src = assert_same(path)
    assert ("2 frames" in " ".join(src.info.notes)) == (variant == "animated")


@vips_only
@pytest.mark.parametrize("quality", [95, 75])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_jpeg_identical_to_pillow(tmp_path, quality, mode):
    """libvips decodes JPEG bit for bit as Pillow (4:4:4 at 95, 4:2:0 at 75)."""
    path = tmp_path / "x.jpg"
    crop("astronaut.png", 203, 131, mode).save(path, quality=quality)
    assert_same(path, "VipsSource", steps=(1, 16, 100, 1000))


@vips_only
def test_progressive_jpeg(tmp_path):
    path = tmp_path / "p.jpg"
    crop("coffee.png", 90, 70).save(path, quality=85, progressive=True)
    assert_same(path, "VipsSource")


def test_cmyk_jpeg_falls_back(tmp_path):
    path = tmp_path / "c.jpg"
    crop("coffee.png").convert("CMYK").save(path, quality=95)
    assert_same(path, "ArraySource")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_exif_orientation(tmp_path, orientation):
    base = crop("astronaut.png", 40, 24)
    exif = PILImage.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.jpg"
    base.save(path, quality=95, exif=exif)
    streamed = "VipsSource" if HAVE_VIPS and orientation in (1, 2) else "ArraySource"
    src = assert_same(path, streamed)
    assert (src.info.height, src.info.width) == ((24, 40) if orientation < 5 else (40, 24))


@pytest.mark.parametrize("where", ["exif-0", "exif-9", "xmp-6", "xmp-under-exif-1"])
def test_orientation_as_pillow_reads_it(tmp_path, where):
    """An EXIF orientation out of 1-8 is ignored; an XMP tiff:Orientation counts when
    the EXIF has none (Pillow's exif_transpose)."""
    base = crop("astronaut.png", 40, 24)
    exif = PILImage.Exif()
    options = {}
    if where.startswith("exif"):
        exif[0x0112] = int(where[-1])
    elif where == "xmp-under-exif-1":
        exif[0x0112] = 1
    if where.startswith("xmp"):
        options["xmp"] = (
            b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/'
            b'02/22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/"'
            b' tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
        )
    path = tmp_path / "o.jpg"
    base.save(path, quality=95, exif=exif, **options)
    src = assert_same(path)
    assert src.info.height == (40 if where == "xmp-6" else 24)


@vips_only
def test_png_exif_orientation(tmp_path):
    base = crop("coffee.png", 30, 20)
    exif = PILImage.Exif()
    exif[0x0112] = 6
    base.save(tmp_path / "o.png", exif=exif)
    src = assert_same(tmp_path / "o.png")
    assert (src.info.height, src.info.width) == (30, 20)


@vips_only
@pytest.mark.parametrize("orientation", [3, 6])
@pytest.mark.parametrize("bits", [8, 16])
def test_png_raw_profile_orientation(tmp_path, orientation, bits):
    """ImageMagick's "Raw profile type exif" text holds the orientation Pillow applies:
    the streaming reader (libvips, which reads no orientation there) turns the image as
    the whole-image reader does."""
    from PIL import PngImagePlugin

    exif = PILImage.Exif()
    exif[0x0112] = orientation
    body = exif.tobytes()
    text = PngImagePlugin.PngInfo()
    text.add_text("Raw profile type exif", f"\nexif\n{len(body):8d}\n{body.hex()}\n", zip=True)
    a = np.random.default_rng(orientation).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    path = tmp_path / "o.png"
    if bits == 8:
        PILImage.fromarray(a).save(path, pnginfo=text)
    else:  # Pillow writes no 16-bit colour: libpng's file, the text chunk put before IDAT
        cio.write_image(path, np.moveaxis(a, -1, 0) / 255.0, bit_depth=16)
        with PILImage.open(tmp_path / "o.png") as im:
            im.save(tmp_path / "t.png", pnginfo=text)  # only to get the chunk's bytes
        chunks = (tmp_path / "t.png").read_bytes()
        start = chunks.index(b"zTXt") - 4
        end = start + 12 + int.from_bytes(chunks[start : start + 4], "big")
        blob = path.read_bytes()
        at = blob.index(b"IDAT") - 4
        path.write_bytes(blob[:at] + chunks[start:end] + blob[at:])
    src = assert_same(path)
    assert (src.info.height, src.info.width) == ((30, 20) if orientation >= 5 else (20, 30))


@vips_only
def test_png16_exif_orientation(tmp_path):
    """An eXIf chunk in a 16-bit PNG (read_image: libpng + Pillow's EXIF parser)."""
    path = cio.write_image(
        tmp_path / "o.png", np.random.default_rng(3).random((3, 10, 16)), bit_depth=16
    )
    blob = path.read_bytes()
    exif = PILImage.Exif()
    exif[0x0112] = 8
    body = exif.tobytes()
    body = body[6:] if body.startswith(b"Exif\x00\x00") else body
    chunk = len(body).to_bytes(4, "big") + b"eXIf" + body
    chunk += zlib.crc32(b"eXIf" + body).to_bytes(4, "big")
    at = blob.index(b"IDAT") - 4
    (tmp_path / "r.png").write_bytes(blob[:at] + chunk + blob[at:])
    src = assert_same(tmp_path / "r.png")
    assert (src.info.height, src.info.width, src.info.dtype) == (16, 10, np.uint16)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_webp(tmp_path, mode):
    im = crop("horse.png", mode=mode) if mode == "RGBA" else crop("coffee.png")
    im.save(tmp_path / "x.webp", quality=80)
    assert_same(tmp_path / "x.webp")
    im.save(tmp_path / "l.webp", lossless=True)
    assert_same(tmp_path / "l.webp")


@pytest.mark.parametrize("suffix", [".bmp", ".gif"])
def test_other_formats_whole(tmp_path, suffix):
    crop("coffee.png").save(tmp_path / f"x{suffix}")
    assert_same(tmp_path / f"x{suffix}", "ArraySource")


def test_without_pyvips_everything_still_reads(tmp_path, monkeypatch):
    crop("astronaut.png").save(tmp_path / "x.jpg", quality=90)
    cio.write_image(tmp_path / "x.png", np.random.default_rng(1).random((3, 9, 8)), bit_depth=16)
    monkeypatch.setitem(sys.modules, "pyvips", None)  # as installed without it
    assert_same(tmp_path / "x.jpg", "ArraySource")
    assert_same(tmp_path / "x.png", "ArraySource")


@vips_only
def test_sequential_contract(opened, tmp_path):
    path = tmp_path / "s.png"
    crop("coffee.png", 50, 300).save(path)
    src = opened(path)
    assert src.sequential
    first = src.read_rows(0, 10).copy()
    with pytest.raises(ValueError, match="sequential"):
        src.read_rows(5, 20)
    skipped = src.read_rows(270, 300)  # forward skips are fine
    ref = np.asarray(PILImage.open(path))
    np.testing.assert_array_equal(first, ref[:10])
    np.testing.assert_array_equal(skipped, ref[270:300])


@vips_only
@pytest.mark.parametrize("orientation", [1, 2])
def test_rows_decoded_ahead_are_the_rows_read(opened, tmp_path, orientation):
    """read_ahead between reads (several runs of rows held, within the byte bound it is
    given) changes no row read_rows returns, within a run or across runs, and forward
    skips still work."""
    from convcli.io import sources

    h, w = 3 * sources._VIPS_ALIGN + 77, 24
    rng = np.random.default_rng(3)
    base = PILImage.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8))
    exif = PILImage.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "tall.jpg"
    base.save(path, quality=90, exif=exif)
    want = cio.read_image(path, max_pixels=None).data
    run = sources._VIPS_ALIGN * w * 3
    src = opened(path)
    assert type(src).__name__ == "VipsSource"
    got = [src.read_rows(0, 5)]
    assert src.read_ahead(2 * run)  # rows 256-511, the first run held as well
    assert not src.read_ahead(2 * run)  # no room for a third
    assert sum(r.nbytes for _, r in src._runs) <= 2 * run
    got.append(src.read_rows(5, 300))  # across the two runs
    assert src.read_ahead(10 * run)  # the rest
    assert not src.read_ahead(10 * run)  # nothing left to decode
    got.append(src.read_rows(300, 310))
    got.append(np.zeros((520 - 310, w, 3), np.uint8))  # skipped
    got.append(src.read_rows(520, h))
    rows = np.concatenate(got).astype(np.float64) / 255
    values = np.moveaxis(rows.astype(np.float32), -1, 0)
    np.testing.assert_array_equal(values[:, :310], want[:, :310])
    np.testing.assert_array_equal(values[:, 520:], want[:, 520:])


@vips_only
@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_mid_stream(opened, tmp_path, suffix):
    """The header is fine, the data stops: read_rows says so, naming the file."""
    full = tmp_path / f"full{suffix}"
    PILImage.open(SAMPLES / "astronaut.png").convert("RGB").save(full)
    blob = full.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(blob[: len(blob) // 2])
    src = opened(cut)
    with pytest.raises(InputError, match=rf"^{cut}: truncated image data$"):
        for y in range(0, src.info.height, 64):
            src.read_rows(y, min(y + 64, src.info.height))


def test_not_an_image(tmp_path):
    (tmp_path / "t.jpg").write_text("not a jpeg at all\n")
    with pytest.raises(InputError, match=r"t\.jpg: not an image"):
        open_source(tmp_path / "t.jpg", max_pixels=None)
    with pytest.raises(InputError, match=r"nope\.png: no such file"):
        open_source(tmp_path / "nope.png", max_pixels=None)


def test_max_pixels_only_for_whole_decodes(opened, tmp_path):
    crop("coffee.png", 40, 30).save(tmp_path / "x.bmp")
    crop("coffee.png", 40, 30).save(tmp_path / "x.webp")
    tifffile.imwrite(tmp_path / "x.tif", np.zeros((30, 40, 3), np.uint8), rowsperstrip=8)
    for whole in ("x.bmp", "x.webp"):
        with pytest.raises(InputError, match=r"1200 pixels exceeds the limit of 1000"):
            opened(tmp_path / whole, max_pixels=1000)
    assert opened(tmp_path / "x.tif", max_pixels=1000).info.height == 30
    # a TIFF of one strip is decoded whole
    tifffile.imwrite(tmp_path / "one.tif", np.zeros((30, 40), np.uint8), rowsperstrip=30)
    with pytest.raises(InputError, match=r"one\.tif: 1200 pixels exceeds the limit of 1000"):
        opened(tmp_path / "one.tif", max_pixels=1000)
    if HAVE_VIPS:
        crop("coffee.png", 40, 30).save(tmp_path / "x.jpg")
        assert opened(tmp_path / "x.jpg", max_pixels=1000).info.width == 40
        # progressive: libjpeg holds the whole image's coefficients
        crop("coffee.png", 40, 30).save(tmp_path / "p.jpg", progressive=True)
        with pytest.raises(InputError, match=r"p\.jpg: 1200 pixels exceeds the limit of 1000"):
            opened(tmp_path / "p.jpg", max_pixels=1000)
        assert opened(tmp_path / "p.jpg", max_pixels=1200).info.width == 40


# ---------------------------------------------------------------------------- TIFF


def tiff(tmp_path: Path, a: np.ndarray, **options) -> Path:
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, a, metadata=None, **options)
    return path


@pytest.mark.parametrize(
    "options",
    [
        {"rowsperstrip": 3, "compression": "zlib", "predictor": True},
        {"tile": (16, 32), "compression": "zlib"},
        {"planarconfig": "separate", "rowsperstrip": 5, "compression": "lzw"},
        {"planarconfig": "separate", "tile": (16, 16)},
        {"bigtiff": True, "rowsperstrip": 8, "byteorder": ">"},
        {"compression": "zstd"},
    ],
    ids=["strips", "tiles", "planar-strips", "planar-tiles", "bigtiff-be", "one-strip"],
)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_tiff_layouts_segment_by_segment(tmp_path, options, dtype):
    rng = np.random.default_rng(3)
    a = (rng.random((37, 45, 4)) * (1 if dtype == np.float32 else np.iinfo(dtype).max)).astype(
        dtype
    )
    if options.get("planarconfig") == "separate":
        a = np.ascontiguousarray(np.moveaxis(a, -1, 0))
    path = tiff(tmp_path, a, photometric="rgb", **options)
    src = assert_same(path, "TiffSource")
    assert not src.sequential


@pytest.mark.parametrize("channels", [1, 2, 5])
def test_tiff_channel_counts(tmp_path, channels):
    a = np.random.default_rng(channels).integers(0, 65536, (21, 17, channels), dtype=np.uint16)
    path = tiff(
        tmp_path,
        a[..., 0] if channels == 1 else a,
        photometric="minisblack",
        planarconfig=None if channels == 1 else "contig",
        tile=(16, 16),
    )
    assert_same(path, "TiffSource")


def test_tiff_random_access_any_order(opened, tmp_path):
    a = np.random.default_rng(4).integers(0, 256, (70, 33, 3), dtype=np.uint8)
    path = tiff(tmp_path, a, photometric="rgb", tile=(16, 16), compression="zlib")
    src = opened(path)
    for y0, y1 in [(50, 70), (0, 5), (3, 40), (39, 41), (10, 10), (0, 70)]:
        np.testing.assert_array_equal(src.read_rows(y0, y1), a[y0:y1])


@pytest.mark.parametrize(
    "case", ["miniswhite", "palette", "cmyk", "orientation", "12bit", "int32", "uint32-max",
             "jpeg", "associated", "float64", "pages"]
)  # fmt: skip
def test_tiff_variants(tmp_path, case):
    rng = np.random.default_rng(5)
    u16 = rng.integers(0, 65536, (19, 23, 3), dtype=np.uint16)
    u8 = rng.integers(0, 256, (19, 23, 3), dtype=np.uint8)
    if case == "miniswhite":
        path = tiff(tmp_path, u16[..., :2], photometric="miniswhite", extrasamples=[2])
        kind = "TiffSource"
    elif case == "palette":
        crop("coffee.png").quantize(16).save(tmp_path / "t.tif")
        path, kind = tmp_path / "t.tif", "ArraySource"
    elif case == "cmyk":
        crop("coffee.png").convert("CMYK").save(tmp_path / "t.tif")
        path, kind = tmp_path / "t.tif", "ArraySource"
    elif case == "orientation":
        path = tiff(tmp_path, u16, photometric="rgb", extratags=[(274, 3, 1, 6, True)])
        kind = "ArraySource"
    elif case == "12bit":
        try:
            path = tiff(tmp_path, u16[..., 0] >> 4, photometric="minisblack", bitspersample=12)
        except NotImplementedError:
            pytest.skip("this imagecodecs cannot write 12-bit TIFF")
        kind = "ArraySource"
    elif case == "int32":
        path = tiff(
            tmp_path, (u16[..., 0].astype(np.int32) - 30000) * 9999, photometric="minisblack"
        )
        kind = "TiffSource"
    elif case == "uint32-max":
        path = tiff(
            tmp_path,
            u16.astype(np.uint32) * 3,
            photometric="rgb",
            extratags=[(281, 4, 1, 200000, True)],
        )
        kind = "TiffSource"
    elif case == "jpeg":
        path, kind = tiff(tmp_path, u8, photometric="rgb", compression="jpeg"), "TiffSource"
    elif case == "associated":
        rgba = np.concatenate([u16, u16[..., :1]], -1)
        path, kind = tiff(tmp_path, rgba, photometric="rgb", extrasamples=[1]), "ArraySource"
    elif case == "float64":
        path = tiff(tmp_path, rng.random((19, 23)) * 5 - 2, photometric="minisblack", tile=(16, 16))
        kind = "TiffSource"
    else:
        path = tmp_path / "t.tif"
        with tifffile.TiffWriter(path) as tw:
            tw.write(u8, photometric="rgb", metadata=None)
            tw.write(u8[::-1], photometric="rgb", metadata=None)
        kind = "TiffSource"
    src = assert_same(path, kind)
    if case == "pages":
        assert src.info.notes and "2 pages" in src.info.notes[0]


def test_tiff_float_nan_found_by_strip(opened, tmp_path):
    f = np.zeros((40, 8), np.float32)
    f[33, 2] = np.nan
    path = tiff(tmp_path, f, photometric="minisblack", rowsperstrip=8)
    src = opened(path)
    assert src.read_rows(0, 30).shape == (30, 8, 1)
    with pytest.raises(InputError, match=r"t\.tif: float image contains NaN or Inf"):
        src.read_rows(30, 40)


def test_truncated_and_corrupt_tiff(opened, tmp_path):
    path = cio.write_image(
        tmp_path / "x.tif", np.random.default_rng(6).random((3, 60, 70)), bit_depth=16
    )
    blob = path.read_bytes()
    (tmp_path / "cut.tif").write_bytes(blob[:-100])
    with pytest.raises(InputError, match=r"cut\.tif: truncated image data"):
        opened(tmp_path / "cut.tif")
    with tifffile.TiffFile(path) as tif:
        strip = tif.pages[0].dataoffsets[0]
    bad = bytearray(blob)
    bad[strip + 10] ^= 0xFF
    (tmp_path / "bad.tif").write_bytes(bytes(bad))
    src = opened(tmp_path / "bad.tif")
    with pytest.raises(InputError, match=r"^\S*bad\.tif: cannot decode image \(\w+: .+\)$"):
        src.read_rows(0, 60)


# ---------------------------------------------------------------------------- .npy


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64, np.int32])
@pytest.mark.parametrize("shape", [(2, 13, 9), (13, 9)])
def test_npy_source(tmp_path, dtype, shape):
    rng = np.random.default_rng(7)
    a = (rng.random(shape) * (200 if dtype != np.float32 else 1)).astype(dtype)
    np.save(tmp_path / "a.npy", a)
    src = assert_same(tmp_path / "a.npy", "NpySource")
    assert src.info.top == {np.uint8: 255, np.uint16: 65535}.get(dtype)


def test_npy_nan_found_by_strip(opened, tmp_path):
    a = np.zeros((1, 20, 4))
    a[0, 15, 1] = np.inf
    np.save(tmp_path / "n.npy", a)
    src = opened(tmp_path / "n.npy")
    src.read_rows(0, 10)
    with pytest.raises(InputError, match=r"n\.npy: .npy image contains NaN or Inf"):
        src.read_rows(10, 20)


def test_array_source_is_native(opened):
    src = opened(SAMPLES / "camera.png")
    assert src.info.dtype == np.uint8 and src.info.channels == 1
    whole = ArraySource(np.zeros((4, 5), np.uint16), src.info)
    assert whole.read_rows(1, 3).shape == (2, 5, 1)


# ------------------------------------------------------------------------ writers


def blocks_of(a: np.ndarray, step: int):
    return (a[y : y + step] for y in range(0, a.shape[0], step))


def written(target: Target, a: np.ndarray, step: int = 5) -> bytes:
    fh = io.BytesIO()
    write_rows(fh, blocks_of(a, step), target, name="out")
    return fh.getvalue()


@pytest.mark.parametrize("channels", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_tiff_streamed_is_the_whole_image_file(channels, dtype):
    """Strips encoded as the blocks come: the whole-image writer's file, byte for byte."""
    rng = np.random.default_rng(channels)
    top = 1 if dtype == np.float32 else np.iinfo(dtype).max
    a = (rng.random((157, 61, channels)) * top).astype(dtype)
    a[:40] = a[:1]  # smooth rows: the predictor matters
    whole = io.BytesIO()
    cimages._write_tiff_samples(whole, a, channels in (2, 4))
    target = Target("TIFF", 157, 61, channels, np.dtype(dtype), channels in (2, 4))
    for step in (1, 3, 157):
        assert written(target, a, step) == whole.getvalue()
    back = tifffile.imread(io.BytesIO(whole.getvalue()))
    np.testing.assert_array_equal(back.reshape(a.shape), a)


def test_bigtiff_when_large(monkeypatch, tmp_path):
    monkeypatch.setattr(sinks, "_BIGTIFF_BYTES", 1000)
    a = np.random.default_rng(8).integers(0, 256, (30, 20, 3), dtype=np.uint8)
    data = written(Target("TIFF", 30, 20, 3, np.dtype(np.uint8), False), a)
    (tmp_path / "b.tif").write_bytes(data)
    with tifffile.TiffFile(tmp_path / "b.tif") as tif:
        assert tif.is_bigtiff
    assert_same(tmp_path / "b.tif", "TiffSource")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "b.tif"), a)


@pytest.mark.parametrize("channels", [1, 3])
def test_npy_streamed_into_a_published_file(tmp_path, channels):
    a = np.random.default_rng(9).random((41, 17, channels)).astype(np.float32) * 3 - 1
    target = Target("NPY", 41, 17, channels, np.dtype(np.float32), False)
    path = publish(
        tmp_path / "o.npy", lambda fh: write_rows(fh, blocks_of(a, 4), target, name="o.npy")
    )
    expect = io.BytesIO()
    np.save(expect, np.ascontiguousarray(np.moveaxis(a, -1, 0)))
    assert path.read_bytes() == expect.getvalue()


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("bits", [8, 16])
def test_png_written_as_write_image(tmp_path, channels, bits):
    x = np.random.default_rng(channels).random((channels, 23, 31)).astype(np.float32)
    ref = cio.write_image(tmp_path / "ref.png", x, bit_depth=bits)
    q = cimages.quantize(x, bits)
    data = written(Target("PNG", 23, 31, channels, q.dtype, channels in (2, 4)), q)
    assert data == ref.read_bytes()


@pytest.mark.parametrize("quality", [95, 90, 89, 40])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_jpeg_decodes_as_write_image(tmp_path, quality, channels):
    """Same quality, same sampling (4:4:4 from 90 up): the same pixels decode back
    (JPEG drops alpha)."""
    x = np.moveaxis(np.asarray(crop("astronaut.png", 83, 57, "RGBA"), np.float32) / 255, -1, 0)
    x = x[:channels] if channels != 4 else x
    ref = cio.write_image(tmp_path / "ref.jpg", x, quality=quality)
    q = cimages.quantize(x, 8)
    data = written(Target("JPEG", 57, 83, channels, np.dtype(np.uint8), channels == 4, quality), q)
    np.testing.assert_array_equal(
        np.asarray(PILImage.open(io.BytesIO(data))), np.asarray(PILImage.open(ref))
    )


@pytest.mark.parametrize("quality", [95, 60])
@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("band_bytes", [1, 3000])
def test_jpeg_in_bands_decodes_as_the_whole_image(tmp_path, monkeypatch, quality, channels,
                                                  band_bytes):  # fmt: skip
    """Bands of one MCU row (8 rows at 4:4:4, 16 at 4:2:0) or several, a short last one,
    a width that is no multiple of the MCU, blocks that straddle the bands: joined by
    restart markers, the pixels of the whole image's encoding decode back."""
    monkeypatch.setattr(sinks, "_JPEG_BAND_BYTES", band_bytes)
    x = np.moveaxis(np.asarray(crop("astronaut.png", 83, 75, "RGBA"), np.float32) / 255, -1, 0)
    x = x[:channels] if channels != 4 else x
    ref = cio.write_image(tmp_path / "ref.jpg", x, quality=quality)
    q = cimages.quantize(x, 8)
    target = Target("JPEG", 75, 83, channels, np.dtype(np.uint8), channels == 4, quality)
    rows, _ = sinks._jpeg_bands(target)
    assert rows < 75 and rows % (16 if quality < 90 and channels > 1 else 8) == 0
    data = written(target, q, step=7)
    assert b"\xff\xdd" in data and b"\xff\xd0" in data  # a restart interval, its markers
    expect = np.asarray(PILImage.open(ref))
    np.testing.assert_array_equal(np.asarray(PILImage.open(io.BytesIO(data))), expect)
    decoded = imagecodecs.jpeg8_decode(data)  # libjpeg-turbo, not through Pillow
    np.testing.assert_array_equal(decoded.reshape(expect.shape), expect)


def test_jpeg_bands_only_where_a_restart_interval_and_the_format_allow():
    def bands(height, width, channels=3, dtype=np.uint8, quality=95):
        return sinks._jpeg_bands(Target("JPEG", height, width, channels, np.dtype(dtype),
                                        channels in (2, 4), quality))  # fmt: skip

    assert bands(4000, 6000) == (56, 750 * 7)  # 7 MCU rows of 750 MCUs, about 1 MB
    assert bands(4000, 6000, quality=80)[0] % 16 == 0  # 4:2:0: MCUs of 16 rows
    assert bands(10, 65000) is not None and bands(10, 65000)[1] <= 65535
    assert bands(70000, 10) is None and bands(10, 70000) is None  # too large for JPEG
    assert bands(10, 10, dtype=np.uint16) is None and bands(10, 10, channels=5) is None


def test_a_jpeg_that_fails_mid_stream_leaves_no_file(tmp_path, monkeypatch):
    """Bands already written to the temporary file are thrown away with it."""
    monkeypatch.setattr(sinks, "_JPEG_BAND_BYTES", 1)
    a = np.random.default_rng(4).integers(0, 256, (200, 40, 3), dtype=np.uint8)

    def blocks():
        yield from blocks_of(a[:150], 10)
        raise OSError(28, "No space left on device")

    target = Target("JPEG", 200, 40, 3, np.dtype(np.uint8), False)
    with pytest.raises(InputError, match=r"o\.jpg: cannot write: no space left"):
        publish(tmp_path / "o.jpg", lambda fh: write_rows(fh, blocks(), target, name="o.jpg"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["WEBP", "BMP"])
def test_webp_bmp_written_as_write_image(tmp_path, fmt):
    x = np.random.default_rng(2).random((3, 20, 24)).astype(np.float32)
    ref = cio.write_image(tmp_path / f"ref.{fmt.lower()}", x, quality=80)
    q = cimages.quantize(x, 8)
    data = written(Target(fmt, 20, 24, 3, np.dtype(np.uint8), False, 80), q)
    np.testing.assert_array_equal(
        np.asarray(PILImage.open(io.BytesIO(data))), np.asarray(PILImage.open(ref))
    )


def test_wrong_rows_refused():
    target = Target("TIFF", 10, 4, 1, np.dtype(np.uint8), False)
    with pytest.raises(InputError, match="out: got 8 rows"):
        written(target, np.zeros((8, 4, 1), np.uint8))
    with pytest.raises(InputError, match="out: got a block of shape"):
        written(target, np.zeros((10, 5, 1), np.uint8))
    with pytest.raises(InputError, match="out: got uint16 rows"):
        written(target, np.zeros((10, 4, 1), np.uint16))
    with pytest.raises(InputError, match="out: 2 channels without alpha fit no PNG"):
        written(Target("PNG", 3, 4, 2, np.dtype(np.uint8), False), np.zeros((3, 4, 2), np.uint8))
    with pytest.raises(InputError, match="out: 5 channels fit no PNG"):
        written(Target("PNG", 3, 4, 5, np.dtype(np.uint8), False), np.zeros((3, 4, 5), np.uint8))
    with pytest.raises(InputError, match=r"out: \.npy output holds float32 samples"):
        written(Target("NPY", 3, 4, 1, np.dtype(np.uint8), False), np.zeros((3, 4, 1), np.uint8))


@pytest.mark.parametrize("fmt", ["TIFF", "NPY", "JPEG"])
def test_streamed_writer_memory_is_a_strip(tmp_path, fmt):
    """A 24 MB image written from 16-row blocks made on the fly: the writer holds about
    a strip (tracemalloc counts NumPy buffers and the encoded strips)."""
    height, width = 4000, 2000
    dtype = np.dtype(np.float32 if fmt == "NPY" else np.uint8)
    channels = 1 if fmt == "NPY" else 3
    size = height * width * channels * dtype.itemsize

    ramp = np.arange(16)[:, None, None] * 7 + np.arange(width)[None, :, None] * 3
    pattern = ((ramp + np.arange(channels)) % 251).astype(dtype)

    def blocks():
        for k in range(height // 16):
            yield pattern + dtype.type(k % 5)

    target = Target(fmt, height, width, channels, dtype, False)
    path = tmp_path / f"big.{fmt.lower()}"
    tracemalloc.start()
    try:
        publish(path, lambda fh: write_rows(fh, blocks(), target, name=str(path)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < size / 4, f"peak {peak} bytes for a {size}-byte image"
    if fmt == "JPEG":  # the budget's price of the bands (budget.file_need takes it)
        assert peak <= max(sink_bytes(target)) + 4 * pattern.nbytes < size / 2
    expect = np.concatenate(list(blocks()))
    if fmt == "JPEG":  # lossy: near the samples, and the whole image's pixels exactly
        back = np.asarray(PILImage.open(path))
        assert np.abs(back.astype(int) - expect).mean() < 2
        whole = cio.write_image(tmp_path / "whole.jpg", np.moveaxis(expect, -1, 0) / 255)
        np.testing.assert_array_equal(back, np.asarray(PILImage.open(whole)))
        return
    back = tifffile.imread(path) if fmt == "TIFF" else np.moveaxis(np.load(path), 0, -1)
    np.testing.assert_array_equal(back.reshape(expect.shape), expect)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cut=st.integers(0, 4000),
    suffix=st.sampled_from([".png", ".jpg", ".tif", ".webp", ".npy"]),
    bits=st.sampled_from([8, 16]),
)
def test_corrupted_files_give_input_errors(tmp_path, cut, suffix, bits):
    """Real files cut short or with a flipped byte: rows, or InputError naming the
    file (from open_source or read_rows), never another exception."""
    src_path = tmp_path / f"src{bits}{suffix}"
    if not src_path.exists():
        x = np.random.default_rng(bits).random((3, 40, 50)).astype(np.float32)
        if suffix in (".jpg", ".webp"):
            cio.write_image(src_path, x, quality=90)
        else:
            cio.write_image(src_path, x, bit_depth=bits)
    blob = bytearray(src_path.read_bytes())
    pos = cut % len(blob)
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(
        bytes(blob[:pos])
        if cut % 2
        else bytes(blob[:pos]) + bytes([blob[pos] ^ 0x5A]) + bytes(blob[pos + 1 :])
    )
    try:
        src = open_source(bad, max_pixels=None)
        try:
            for y in range(0, src.info.height, 16):
                rows = src.read_rows(y, min(y + 16, src.info.height))
                assert rows.shape[1:] == (src.info.width, src.info.channels)
        finally:
            src.close()
    except InputError as exc:
        assert str(exc).startswith(str(bad)) and "\n" not in str(exc)


def test_header_without_pixels(tmp_path):
    """A TIFF whose header says 0 columns: one line, not an empty array (read_image
    returned data of shape (0,) for it)."""
    path = cio.write_image(tmp_path / "z.tif", np.zeros((3, 40, 50)))
    with tifffile.TiffFile(path) as tif:
        where = tif.pages[0].tags[256].valueoffset  # ImageWidth
    blob = bytearray(path.read_bytes())
    blob[where : where + 4] = bytes(4)
    path.write_bytes(bytes(blob))
    with pytest.raises(InputError, match=r"z\.tif: the image has no pixels"):
        cio.read_image(path)
    with pytest.raises(InputError, match=r"z\.tif: the image has no pixels"):
        open_source(path, max_pixels=None)


@vips_only
def test_a_corrupt_png_exif_block_is_one_note_as_read_image_gives_it(tmp_path):
    """The streaming reader parsed a PNG's eXIf block twice (for the orientation, then
    for its warnings), and a corrupt one gave the same note twice."""
    cio.write_image(tmp_path / "o.png", np.random.default_rng(3).random((3, 10, 16)))
    blob = (tmp_path / "o.png").read_bytes()
    body = b"MM\x00\x2a\x00\x00\x00\x08\x00\x05\x01\x12\x00\x03"  # 5 entries, 1 begun
    chunk = len(body).to_bytes(4, "big") + b"eXIf" + body
    chunk += zlib.crc32(b"eXIf" + body).to_bytes(4, "big")
    at = blob.index(b"IDAT") - 4
    (tmp_path / "r.png").write_bytes(blob[:at] + chunk + blob[at:])
    ref = cio.read_image(tmp_path / "r.png")
    assert len(ref.notes) == 1 and "EXIF" in ref.notes[0], ref.notes
    assert_same(tmp_path / "r.png")  # the same notes, once
