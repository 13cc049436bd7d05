"""convcli.io: image and weight files <-> arrays, against independent decoders."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import stat
import struct
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

from convcli import io as cio
from convcli import pixels
from convcli.errors import InputError
from convcli.io import images as cimages
from convcli.io.publish import publish

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def sample(name: str, size: tuple[int, int] = (48, 40)) -> PILImage.Image:
    """A crop of a real sample image (natural statistics, small and fast)."""
    with PILImage.open(SAMPLES / name) as im:
        im.load()
        return im.crop((100, 100, 100 + size[0], 100 + size[1]))


def chw(im: PILImage.Image) -> np.ndarray:
    a = np.asarray(im)
    return a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)


def quantized(x: np.ndarray, bits: int) -> np.ndarray:
    top = (1 << bits) - 1
    return np.rint(np.clip(x.astype(np.float64), 0, 1) * top) / top


def smooth(c: int, h: int = 33, w: int = 47, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    planes = [0.5 + 0.45 * np.sin(6 * xx * (i + 1) + 4 * yy + rng.random()) for i in range(c)]
    return np.stack(planes).astype(np.float32)


# ----------------------------------------------------------------- read, real files


def test_read_sample_png_matches_pillow():
    im = cio.read_image(SAMPLES / "astronaut.png")
    ref = chw(PILImage.open(SAMPLES / "astronaut.png").convert("RGB")).astype(np.float32) / 255
    assert im.mode == "RGB" and im.bit_depth == 8 and not im.has_alpha
    assert im.data.dtype == np.float32 and im.data.shape == ref.shape
    np.testing.assert_array_equal(im.data, ref)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_png_tiff_round_trip_exact(tmp_path, channels, bits, suffix):
    x = np.random.default_rng(channels * bits).random((channels, 29, 31)).astype(np.float32)
    path = cio.write_image(tmp_path / f"x{suffix}", x, bit_depth=bits)
    im = cio.read_image(path)
    assert im.bit_depth == bits
    assert im.mode == {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    assert im.has_alpha == (channels in (2, 4))
    np.testing.assert_array_equal(im.data.astype(np.float64), quantized(x, bits).astype(np.float32))


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_matches_opencv(tmp_path, suffix, channels):
    """16-bit files against an independent codec (OpenCV: libpng, libtiff), both ways:
    OpenCV files use adaptive PNG filters (Sub/Up/Average/Paeth) and LZW TIFF."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(channels)
    a = (rng.random((41, 57, channels)) * 65535).astype(np.uint16)
    a[:20] = np.linspace(0, 65535, 57)[None, :, None].astype(np.uint16)  # smooth rows
    ext = tmp_path / f"cv{suffix}"
    assert cv2.imwrite(str(ext), a[..., 0] if channels == 1 else a)
    im = cio.read_image(ext)
    assert im.bit_depth == 16 and im.mode == {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    rgb = a[..., [2, 1, 0, 3][:channels]] if channels > 1 else a  # OpenCV stores BGR(A)
    np.testing.assert_array_equal(np.rint(im.data * 65535), rgb.transpose(2, 0, 1))
    ours = cio.write_image(tmp_path / f"ours{suffix}", im.data, bit_depth=16)
    back = cv2.imread(str(ours), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(back, a[..., 0] if channels == 1 else a)


def test_lzw_rgba16_tiff_from_opencv(tmp_path):
    """OpenCV's LZW + horizontal-predictor 16-bit RGBA TIFF (undeclared alpha)."""
    cv2 = pytest.importorskip("cv2")
    a = (np.random.default_rng(7).random((23, 37, 4)) * 65535).astype(np.uint16)
    a[:10] = 1234
    assert cv2.imwrite(str(tmp_path / "lzw.tif"), a)
    im = cio.read_image(tmp_path / "lzw.tif")
    assert im.mode == "RGBA" and im.bit_depth == 16 and im.has_alpha
    expect = a[..., [2, 1, 0, 3]].transpose(2, 0, 1)
    np.testing.assert_array_equal(np.rint(im.data * 65535), expect)


def test_png_paeth_and_average_rows(tmp_path):
    """Hand-made 16-bit RGBA PNG using every filter type, decoded by our unfilter."""
    rng = np.random.default_rng(2)
    h, w, bpp = 9, 13, 8
    pix = rng.integers(0, 256, (h, w * bpp), dtype=np.int64)
    rows = []
    for y in range(h):
        kind = y % 5
        prev = pix[y - 1] if y else np.zeros(w * bpp, np.int64)
        out = []
        for i in range(w * bpp):
            a = pix[y, i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            paeth = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            pred = [0, a, b, (a + b) // 2, paeth][kind]
            out.append((pix[y, i] - pred) % 256)
        rows.append(bytes([kind]) + bytes(out))

    def chunk(t: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + t + body + struct.pack(">I", zlib.crc32(t + body))

    blob = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 6, 0, 0, 0))
    blob += chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b"")
    path = tmp_path / "filters.png"
    path.write_bytes(blob)
    im = cio.read_image(path)
    expect = pix.astype(np.uint8).view(">u2").reshape(h, w, 4).transpose(2, 0, 1)
    np.testing.assert_array_equal(np.rint(im.data * 65535), expect)


def png16(samples: np.ndarray, *, interlace: bool) -> bytes:
    """An independent minimal 16-bit PNG encoder (filter 0), optionally Adam7-interlaced:
    each pass is the sub-image starting at (x0, y0) with steps (dx, dy)."""
    h, w = samples.shape[:2]
    channels = 1 if samples.ndim == 2 else samples.shape[2]
    big = samples.reshape(h, w, channels).astype(">u2")
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2)]
    passes = [*passes, (0, 1, 1, 2)] if interlace else [(0, 0, 1, 1)]
    raw = b""
    for x0, y0, dx, dy in passes:
        sub = big[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\x00" + row.tobytes() for row in sub)

    def chunk(t: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + t + body + struct.pack(">I", zlib.crc32(t + body))

    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    ihdr = struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, int(interlace))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("interlace", [False, True])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16bit_png_every_colour_type(tmp_path, channels, interlace):
    """Gray, gray + alpha, RGB, RGBA, plain and Adam7-interlaced: all 16 bits kept."""
    a = (np.random.default_rng(channels).random((19, 23, channels)) * 65535).astype(np.uint16)
    path = tmp_path / "i.png"
    path.write_bytes(png16(a if channels > 1 else a[..., 0], interlace=interlace))
    im = cio.read_image(path)
    assert im.bit_depth == 16 and im.notes == []
    assert im.mode == {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    np.testing.assert_array_equal(np.rint(im.data * 65535), a.transpose(2, 0, 1))


def test_16bit_png_without_alpha_refused(tmp_path):
    with pytest.raises(InputError, match=r"x\.png: 2 channels without alpha"):
        cio.write_image(tmp_path / "x.png", smooth(2), bit_depth=16, has_alpha=False)
    assert list(tmp_path.iterdir()) == []


def test_gray16_png_written_by_pillow(tmp_path):
    a = (np.random.default_rng(3).random((20, 30)) * 65535).astype(np.uint16)
    PILImage.fromarray(a).save(tmp_path / "g.png")
    im = cio.read_image(tmp_path / "g.png")
    assert im.bit_depth == 16 and im.mode == "L"
    np.testing.assert_array_equal(np.rint(im.data[0] * 65535), a)


def test_jpeg_close_and_alpha_dropped(tmp_path):
    x = smooth(4)
    path = cio.write_image(tmp_path / "x.jpg", x, quality=95)
    im = cio.read_image(path)
    assert im.mode == "RGB" and im.bit_depth == 8 and im.data.shape == (3, 33, 47)
    assert np.abs(im.data - x[:3]).mean() < 0.01


def test_jpeg_gray(tmp_path):
    x = smooth(1)
    im = cio.read_image(cio.write_image(tmp_path / "x.jpeg", x))
    assert im.mode == "L" and np.abs(im.data - x).max() < 0.05


@pytest.mark.parametrize("suffix", [".webp", ".bmp"])
def test_other_formats(tmp_path, suffix):
    x = smooth(3)
    im = cio.read_image(cio.write_image(tmp_path / f"x{suffix}", x, quality=100))
    assert im.data.shape == x.shape
    assert np.abs(im.data - x).mean() < 0.02


def test_exif_orientation_applied(tmp_path):
    base = sample("astronaut.png", (40, 24)).convert("RGB")
    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rot.jpg"
    base.save(path, quality=98, exif=exif)
    im = cio.read_image(path)
    assert im.data.shape == (3, 40, 24)
    expect = chw(base.transpose(PILImage.Transpose.ROTATE_270)).astype(np.float32) / 255
    assert np.abs(im.data - expect).mean() < 0.02


def test_palette_and_transparency(tmp_path):
    rgb = sample("coffee.png").convert("RGB")
    pal = rgb.quantize(16)
    pal.save(tmp_path / "p.png")
    im = cio.read_image(tmp_path / "p.png")
    assert im.mode == "RGB" and im.data.shape[0] == 3
    np.testing.assert_array_equal(im.data, chw(pal.convert("RGB")) / np.float32(255))
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pt.png", transparency=0)
    im = cio.read_image(tmp_path / "pt.png")
    assert im.mode == "RGBA" and im.has_alpha


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_a_png_colour_key_is_alpha_at_every_depth(tmp_path, mode, bits):
    """A tRNS colour key on gray or RGB is transparency, as libvips, OpenCV and
    ImageMagick read it: at 8 bits it was dropped (16 bits kept it), so `apply` wrote
    the keyed pixels opaque."""
    rng = np.random.default_rng(5)
    top = 255 if bits == 8 else 65535
    dtype = np.uint8 if bits == 8 else np.uint16
    shape = (6, 7) if mode == "L" else (6, 7, 3)
    a = rng.integers(0, top + 1, shape).astype(dtype)
    key = (9,) * (1 if mode == "L" else 3)
    a[1, 2] = a[4, 5] = key[0] if mode == "L" else key
    keyed = (a == np.array(key, dtype)).reshape(6, 7, -1).all(axis=2)
    # the file written by libpng itself, with its tRNS chunk
    import imagecodecs

    blob = bytearray(imagecodecs.png_encode(a))
    chunk = b"".join(int(v).to_bytes(2, "big") for v in key)
    crc = zlib.crc32(b"tRNS" + chunk).to_bytes(4, "big")
    at = blob.index(b"IDAT") - 4
    blob[at:at] = len(chunk).to_bytes(4, "big") + b"tRNS" + chunk + crc
    path = tmp_path / "k.png"
    path.write_bytes(bytes(blob))
    im = cio.read_image(path)
    assert im.mode == mode + "A" and im.has_alpha and im.bit_depth == bits
    np.testing.assert_array_equal(im.data[-1] == 0, keyed)
    assert (im.data[-1][~keyed] == 1).all()
    colours = a.reshape(6, 7, -1).transpose(2, 0, 1).astype(np.float32) / top
    np.testing.assert_array_equal(im.data[:-1], colours)


def test_cmyk_and_la(tmp_path):
    rgb = sample("coffee.png").convert("RGB")
    cmyk = rgb.convert("CMYK")
    cmyk.save(tmp_path / "c.tif")
    im = cio.read_image(tmp_path / "c.tif")
    assert im.mode == "RGB"
    np.testing.assert_array_equal(im.data, chw(cmyk.convert("RGB")) / np.float32(255))
    la = rgb.convert("LA")
    la.save(tmp_path / "la.png")
    im = cio.read_image(tmp_path / "la.png")
    assert im.mode == "LA" and im.has_alpha and im.data.shape[0] == 2


def test_float_tiff_and_npy(tmp_path):
    f = (np.random.default_rng(4).random((12, 14)) * 3 - 1).astype(np.float32)
    PILImage.fromarray(f, "F").save(tmp_path / "f.tif")
    im = cio.read_image(tmp_path / "f.tif")
    assert im.mode == "F" and im.bit_depth == 32
    np.testing.assert_array_equal(im.data[0], f)
    np.save(tmp_path / "a.npy", f)
    np.testing.assert_array_equal(cio.read_image(tmp_path / "a.npy").data, f[None])
    x3 = np.stack([f, f * 2, -f])
    path = cio.write_image(tmp_path / "f3.tif", x3, bit_depth=32)
    np.testing.assert_array_equal(cio.read_image(path).data, x3)


def test_npy_write_is_raw(tmp_path):
    x = np.array([[[-2.5, 0.5, 7.0]]], np.float32)
    path = cio.write_image(tmp_path / "r.npy", x)
    np.testing.assert_array_equal(np.load(path), x)


def test_int32_image_scaled(tmp_path):
    a = np.array([[0, 70000, 2**31 - 1]], np.int32)
    PILImage.fromarray(a, "I").save(tmp_path / "i.tif")
    im = cio.read_image(tmp_path / "i.tif")
    np.testing.assert_allclose(im.data[0, 0], a[0] / (2**31 - 1), rtol=1e-6)


# ----------------------------------------------------------------- bad inputs


def test_missing_and_empty(tmp_path):
    with pytest.raises(InputError, match=r"nope\.png: no such file"):
        cio.read_image(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.png: empty file"):
        cio.read_image(tmp_path / "empty.png")


def test_text_as_png(tmp_path):
    (tmp_path / "notes.png").write_text("this is not an image\n")
    with pytest.raises(InputError, match=r"^.*notes\.png: not an image"):
        cio.read_image(tmp_path / "notes.png")


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated(tmp_path, suffix):
    full = tmp_path / f"full{suffix}"
    sample("astronaut.png", (120, 90)).convert("RGB").save(full)
    blob = full.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(InputError, match=rf"cut\{suffix}: truncated image data"):
        cio.read_image(cut)


def test_truncated_16bit_png(tmp_path):
    path = cio.write_image(tmp_path / "x.png", smooth(3), bit_depth=16)
    blob = path.read_bytes()
    (tmp_path / "cut.png").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(InputError, match=r"cut\.png: truncated"):
        cio.read_image(tmp_path / "cut.png")


def test_decompression_bomb(tmp_path):
    path = cio.write_image(tmp_path / "big.png", smooth(3, 30, 40))
    with pytest.raises(
        InputError,
        match=r"big\.png: 1200 pixels exceeds the limit of 1000 \(raise max_pixels\)",
    ):
        cio.read_image(path, max_pixels=1000)
    assert cio.read_image(path, max_pixels=1200).data.shape == (3, 30, 40)
    assert cio.read_image(path, max_pixels=None).data.shape == (3, 30, 40)
    p16 = cio.write_image(tmp_path / "big16.png", smooth(3, 30, 40), bit_depth=16)
    with pytest.raises(InputError, match="exceeds the limit"):
        cio.read_image(p16, max_pixels=1000)


def test_bomb_header_beyond_pillow_limit(tmp_path):
    """A PNG header claiming 100000 x 100000 pixels is refused before any decoding,
    without Pillow's own warning or error leaking out."""
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    idat = zlib.compress(b"\x00" * 64)
    chunk += struct.pack(">I", len(idat)) + b"IDAT" + idat
    chunk += struct.pack(">I", zlib.crc32(b"IDAT" + idat)) + b"\x00\x00\x00\x00IEND\xaeB`\x82"
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk)
    with pytest.raises(InputError, match=r"bomb\.png: 10000000000 pixels exceeds"):
        cio.read_image(tmp_path / "bomb.png")


def test_bad_npy(tmp_path):
    np.save(tmp_path / "c.npy", np.zeros((2, 3, 4, 5)))
    with pytest.raises(InputError, match=r"c\.npy: .npy image must be"):
        cio.read_image(tmp_path / "c.npy")
    np.save(tmp_path / "n.npy", np.array([[np.nan, 1.0]]))
    with pytest.raises(InputError, match="NaN"):
        cio.read_image(tmp_path / "n.npy")
    (tmp_path / "junk.npy").write_bytes(b"junk")
    with pytest.raises(InputError, match=r"junk\.npy: not a readable"):
        cio.read_image(tmp_path / "junk.npy")


# ----------------------------------------------------------------- writing


def test_channels_no_mode_holds(tmp_path):
    x = np.zeros((5, 4, 4), np.float32)
    with pytest.raises(InputError, match=r"x\.png: 5 channels.*\.npy or \.tif"):
        cio.write_image(tmp_path / "x.png", x)
    with pytest.raises(InputError, match=r"x\.jpg: 2 channels|x\.jpg: 5 channels"):
        cio.write_image(tmp_path / "x.jpg", x)
    assert cio.read_image(cio.write_image(tmp_path / "x.tif", x)).data.shape == (5, 4, 4)
    assert not list(tmp_path.glob(".*tmp"))


def test_overwrite_refused(tmp_path):
    path = cio.write_image(tmp_path / "o.png", smooth(1))
    before = path.read_bytes()
    with pytest.raises(InputError, match=r"o\.png: already exists"):
        cio.write_image(path, smooth(3), overwrite=False)
    assert path.read_bytes() == before


def test_unknown_suffix(tmp_path):
    with pytest.raises(InputError, match=r"x\.xyz: unknown output format"):
        cio.write_image(tmp_path / "x.xyz", smooth(1))


def test_atomic_write_failure_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "keep.png"
    cio.write_image(target, smooth(3))
    before = target.read_bytes()

    def boom(fh, *args, **kwargs):
        fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cimages, "_write_png", boom)  # fails after writing part of the file
    with pytest.raises(InputError, match=r"keep\.png: cannot write: no space left on device"):
        cio.write_image(target, smooth(3, seed=9))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]
    with pytest.raises(InputError, match="cannot write"):
        cio.write_image(tmp_path / "new.png", smooth(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]


def test_atomic_write_interrupt_cleans_up(tmp_path):
    def interrupted(fh) -> None:
        fh.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        publish(tmp_path / "x.bin", interrupted)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores modes")
def test_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(InputError, match=r"x\.png: cannot write: permission denied"):
            cio.write_image(folder / "x.png", smooth(1))
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(stat.S_IRWXU)


@pytest.mark.parametrize("no_tmpfile", ["0", "1"])
def test_read_only_folder_simulated(tmp_path, monkeypatch, no_tmpfile):
    """As root the folder mode is ignored, so simulate the OS refusing the temp file
    (unnamed O_TMPFILE or named)."""
    monkeypatch.setenv("CONVCLI_NO_TMPFILE", no_tmpfile)
    real_open = os.open
    creating = os.O_CREAT | getattr(os, "O_TMPFILE", 0)

    def deny(path, flags, mode=0o777, *a, **k):
        if flags & creating:
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, mode, *a, **k)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(InputError, match=r"x\.png: cannot write: permission denied"):
        cio.write_image(tmp_path / "x.png", smooth(1))
    assert list(tmp_path.iterdir()) == []


def test_written_file_mode_follows_umask(tmp_path):
    path = cio.write_image(tmp_path / "m.png", smooth(1))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


# ----------------------------------------------------------------- alpha, mapping


def test_premultiply_round_trip_and_no_bleed():
    rgb = np.stack([np.full((4, 4), 1.0), np.zeros((4, 4)), np.zeros((4, 4))])
    alpha = np.zeros((1, 4, 4))
    alpha[:, :, :2] = 1.0
    image = cio.Image(np.concatenate([rgb, alpha]).astype(np.float32), "RGBA", 8, True)
    image.data[1, :, 2:] = 1.0  # hidden green under transparent pixels
    ch, kept = cio.prepare_alpha(image, "premultiply")
    assert kept is None and ch.shape == (4, 4, 4)
    assert float(ch[1].max()) == 0.0  # the invisible green is gone
    blurred = (ch + np.roll(ch, 1, axis=2)) / 2  # average with the left neighbour
    out = cio.finish_alpha(blurred, None, "premultiply", has_alpha=True)
    # Where alpha > 0 the colour is pure red: no green bled in from transparent pixels.
    visible = out[3] > 0
    np.testing.assert_allclose(out[0][visible], 1.0)
    np.testing.assert_allclose(out[1][visible], 0.0)


def test_alpha_keep_filter_drop():
    data = np.random.default_rng(5).random((4, 3, 5)).astype(np.float32)
    image = cio.Image(data, "RGBA", 8, True)
    ch, kept = cio.prepare_alpha(image, "keep")
    assert ch.shape == (3, 3, 5) and kept is not None
    np.testing.assert_array_equal(cio.finish_alpha(ch, kept, "keep", has_alpha=True), data)
    with pytest.raises(InputError, match="the result is 3x2 but the kept alpha is 5x3"):
        cio.finish_alpha(ch[:, ::2, ::2], kept, "keep", has_alpha=True)
    ch, kept = cio.prepare_alpha(image, "filter")
    np.testing.assert_array_equal(ch, data)
    ch, kept = cio.prepare_alpha(image, "drop")
    assert ch.shape[0] == 3 and kept is None
    gray = cio.Image(data[:1], "L", 8, False)
    assert cio.prepare_alpha(gray, "premultiply")[0] is gray.data


def test_map_output_modes():
    x = np.array([[[-0.5, 0.0, 0.25, 2.0]]], np.float32)
    np.testing.assert_array_equal(cio.map_output(x, "clip"), [[[0, 0, 0.25, 1]]])
    np.testing.assert_array_equal(cio.map_output(x, "abs"), [[[0.5, 0, 0.25, 1]]])
    np.testing.assert_array_equal(cio.map_output(x, "offset"), [[[0, 0.5, 0.75, 1]]])
    np.testing.assert_allclose(cio.map_output(x, "normalize"), [[[0, 0.2, 0.3, 1]]])
    np.testing.assert_allclose(
        cio.map_output(x, "clip", scale=0.5, offset=0.25), [[[0, 0.25, 0.375, 1]]]
    )
    np.testing.assert_array_equal(
        cio.map_output(np.ones((1, 2, 2)), "normalize"), np.zeros((1, 2, 2))
    )
    with pytest.raises(InputError):
        cio.map_output(x, "wrap")


# ----------------------------------------------------------------- weights


K3 = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]], np.float32)
W4 = np.arange(2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3) / 10
B2 = np.array([0.5, -1.0], np.float32)


def _check(got, weight, bias=None):
    w, b = got
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w, weight)
    if bias is None:
        assert b is None
    else:
        np.testing.assert_array_equal(b, bias)


def test_weights_npy_npz(tmp_path):
    np.save(tmp_path / "k.npy", K3.astype(np.float64))
    _check(cio.load_weights(tmp_path / "k.npy"), K3)
    np.savez(tmp_path / "w.npz", weight=W4, bias=B2)
    _check(cio.load_weights(tmp_path / "w.npz"), W4, B2)
    np.savez(tmp_path / "named.npz", **{"conv1.weight": W4, "conv1.bias": B2, "x.weight": K3})
    _check(cio.load_weights(tmp_path / "named.npz", key="conv1"), W4, B2)
    with pytest.raises(InputError, match=r"named\.npz: holds several tensors.*key=NAME"):
        cio.load_weights(tmp_path / "named.npz")
    with pytest.raises(InputError, match=r"no tensor 'conv9'"):
        cio.load_weights(tmp_path / "named.npz", key="conv9")


def test_weights_safetensors(tmp_path):
    st_numpy = pytest.importorskip("safetensors.numpy")
    st_numpy.save_file({"conv1.weight": W4, "conv1.bias": B2}, str(tmp_path / "w.safetensors"))
    _check(cio.load_weights(tmp_path / "w.safetensors", key="conv1"), W4, B2)
    _check(cio.load_weights(tmp_path / "w.safetensors"), W4, B2)  # the only .weight
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(InputError, match=r"bad\.safetensors: not a readable"):
        cio.load_weights(tmp_path / "bad.safetensors")


def _bf16_safetensors(path: Path, values: np.ndarray) -> None:
    """A .safetensors file of one BF16 tensor, written by hand (no torch needed)."""
    bits = (values.astype(np.float32).view(np.uint32) >> 16).astype("<u2")
    header = {"weight": {"dtype": "BF16", "shape": list(values.shape),
                         "data_offsets": [0, bits.nbytes]}}  # fmt: skip
    head = json.dumps(header).encode()
    path.write_bytes(len(head).to_bytes(8, "little") + head + bits.tobytes())


def test_weights_safetensors_bf16(tmp_path, monkeypatch):
    # BF16 (most published weights) was "not a readable .safetensors file (data type
    # 'bfloat16' not understood)": NumPy has no bfloat16, torch reads it
    pytest.importorskip("safetensors.numpy")
    k = np.array([[1.0, -2.0, 0.5], [0.25, 3.0, -0.125], [8.0, 0.0, 1.5]], np.float32)
    path = tmp_path / "w.safetensors"
    _bf16_safetensors(path, k)  # every value exact in bfloat16
    if importlib.util.find_spec("torch") is not None:
        _check(cio.load_weights(path), k)
    monkeypatch.setitem(sys.modules, "torch", None)  # as installed without torch
    with pytest.raises(InputError, match=r"w\.safetensors: holds BF16 tensors, which NumPy "):
        cio.load_weights(path)


def test_weights_safetensors_reads_only_the_tensors_it_picks(tmp_path, monkeypatch):
    # Every tensor was read (and BF16 ones widened to float64) to pick one layer: a
    # large BF16 checkpoint took 4x its size in memory, and without torch a float32
    # layer next to a BF16 one could not be read at all.
    pytest.importorskip("safetensors.numpy")
    w = np.arange(9, dtype=np.float32).reshape(3, 3)
    other = np.ones((4, 4), np.float32)
    bits = (other.view(np.uint32) >> 16).astype("<u2")
    header = {
        "conv1.weight": {"dtype": "F32", "shape": [3, 3], "data_offsets": [0, w.nbytes]},
        "big.weight": {"dtype": "BF16", "shape": [4, 4],
                       "data_offsets": [w.nbytes, w.nbytes + bits.nbytes]},
    }  # fmt: skip
    head = json.dumps(header).encode()
    path = tmp_path / "m.safetensors"
    path.write_bytes(len(head).to_bytes(8, "little") + head + w.tobytes() + bits.tobytes())
    monkeypatch.setitem(sys.modules, "torch", None)  # the BF16 tensor cannot be read
    _check(cio.load_weights(path, key="conv1"), w)
    with pytest.raises(InputError, match=r"m\.safetensors: holds BF16 tensors, which NumPy "):
        cio.load_weights(path, key="big")


def test_weights_npz_reads_only_the_arrays_it_picks(tmp_path):
    # every array was read to pick one: an archive with an object array beside the
    # weight could not be read at all (and a large archive was read whole)
    path = tmp_path / "mix.npz"
    np.savez(path, weight=K3, notes=np.array([None, "x"], dtype=object))
    _check(cio.load_weights(path), K3)
    with pytest.raises(InputError, match=r"mix\.npz: not a readable .npz archive \(Object"):
        cio.load_weights(path, key="notes")


def _open_paths() -> set[str]:
    fds = Path("/proc/self/fd")
    return {os.path.realpath(fds / fd) for fd in os.listdir(fds)}


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_weights_npz_is_closed_after_loading_or_refusing(tmp_path):
    # the archive stayed open until garbage collection: a ResourceWarning at some later,
    # unrelated moment (it failed another test in CI), and one open file per loaded weight
    named = tmp_path / "named.npz"
    np.savez(named, **{"a.weight": K3, "b.weight": K3})
    _check(cio.load_weights(named, key="a"), K3)
    # a refusal's traceback keeps the loader's frames (and what they hold) alive
    with pytest.raises(InputError, match="holds several tensors") as several:
        cio.load_weights(named)
    with pytest.raises(InputError, match=r"not a readable \.npz archive") as unreadable:
        cio.load_weights(_object_npz(tmp_path), key="o")
    assert several.traceback and unreadable.traceback
    assert not {p for p in _open_paths() if p.startswith(str(tmp_path.resolve()))}


def _object_npz(tmp_path: Path) -> Path:
    path = tmp_path / "obj.npz"
    np.savez(path, o=np.array([None], dtype=object))
    return path


def test_weights_torch_checkpoint_is_mapped_not_read_whole(tmp_path, monkeypatch):
    """A zip checkpoint (torch.save's format) is loaded with mmap=True: picking one
    layer of a large checkpoint read every tensor (a 528 MB file: 725 MB peak RSS, 221
    mapped). The legacy format cannot be mapped and still loads."""
    torch = pytest.importorskip("torch")
    calls: list[dict] = []
    real = torch.load

    @functools.wraps(real)  # its signature: convcli asks it whether mmap= exists
    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    sd = {"big.weight": torch.ones(64, 64, 3, 3), "conv1.weight": torch.tensor(W4)}
    sd["conv1.bias"] = torch.tensor(B2)
    torch.save(sd, tmp_path / "zip.pt")
    _check(cio.load_weights(tmp_path / "zip.pt", key="conv1"), W4, B2)
    assert calls[-1].get("mmap") is True
    torch.save(sd, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    _check(cio.load_weights(tmp_path / "legacy.pt", key="conv1"), W4, B2)
    assert not calls[-1].get("mmap")


def test_weights_torch_quantized_and_meta(tmp_path):
    torch = pytest.importorskip("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates quantized tensors (still loads)
        q = torch.quantize_per_tensor(torch.tensor(K3), 0.5, 0, torch.qint8)
        torch.save({"weight": q}, tmp_path / "q.pt")
        # was "a torch.qint8 tensor that cannot be read as numbers"
        _check(cio.load_weights(tmp_path / "q.pt"), q.dequantize().numpy())
    torch.save(torch.empty(3, 3, device="meta"), tmp_path / "meta.pt")
    with pytest.raises(InputError, match=r"meta\.pt: holds a meta tensor"):
        cio.load_weights(tmp_path / "meta.pt")


def test_weights_torch(tmp_path):
    torch = pytest.importorskip("torch")
    conv = torch.nn.Conv2d(3, 2, 3)
    torch.save({"conv1." + k: v for k, v in conv.state_dict().items()}, tmp_path / "m.pt")
    w, b = cio.load_weights(tmp_path / "m.pt", key="conv1")
    np.testing.assert_array_equal(w, conv.weight.detach().numpy())
    np.testing.assert_array_equal(b, conv.bias.detach().numpy())
    torch.save(torch.tensor(K3), tmp_path / "t.pt")
    _check(cio.load_weights(tmp_path / "t.pt"), K3)
    torch.save(torch.nn.Sequential(conv), tmp_path / "model.pt")  # a pickled module
    with pytest.raises(InputError, match=r"model\.pt: holds more than tensors.*state_dict"):
        cio.load_weights(tmp_path / "model.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(InputError, match=r"junk\.pt: not a readable torch file"):
        cio.load_weights(tmp_path / "junk.pt")


def test_weights_text_and_json(tmp_path):
    (tmp_path / "k.txt").write_text("# sobel\n1 2 1\n0 0 0\n-1 -2 -1\n")
    _check(cio.load_weights(tmp_path / "k.txt"), K3)
    (tmp_path / "k.csv").write_text("1,2,1\n0,0,0\n-1,-2,-1\n")
    _check(cio.load_weights(tmp_path / "k.csv"), K3)
    (tmp_path / "im.txt").write_text("3x3: 1,2,1\n 0,0,0\n -1,-2,-1\n")
    _check(cio.load_weights(tmp_path / "im.txt"), K3)
    (tmp_path / "k.json").write_text(json.dumps(K3.tolist()))
    _check(cio.load_weights(tmp_path / "k.json"), K3)
    (tmp_path / "w.json").write_text(json.dumps({"weight": W4.tolist(), "bias": B2.tolist()}))
    _check(cio.load_weights(tmp_path / "w.json"), W4, B2)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("nan.npy", np.array([[1.0, np.nan]]), "NaN or Inf"),
        ("inf.npy", np.array([[1.0, np.inf]]), "NaN or Inf"),
        ("big.npy", np.array([[1e39]]), "beyond float32"),
        ("3d.npy", np.zeros((2, 3, 3)), "3-D weight .* is ambiguous"),
        ("1d.npy", np.zeros(3), "must be 2-D"),
        ("empty.npy", np.zeros((0, 3)), "empty"),
        ("str.npy", np.array([["a"]]), "not a numeric array"),
        ("cplx.npy", np.ones((2, 2), np.complex64), "complex"),
        ("nan.txt", "1 nan\n2 3\n", "NaN/Inf"),
        ("ragged.txt", "1 2 3\n4 5\n", "different lengths"),
        ("words.csv", "a,b\n", "not a number"),
        ("ragged.json", "[[1, 2], [3]]", "not a rectangular array"),
        ("obj.json", '{"w": 1}', "must be 2-D"),
        ("two.json", '{"a": [[1]], "b": [[2]]}', "holds several tensors"),
        ("bad.json", "{", "not valid JSON"),
        ("nanb.json", '{"weight": [[1]], "bias": [NaN]}', "bias contains NaN"),
        ("bias.npz", {"weight": W4, "bias": np.zeros(3)}, "bias has 3 values"),
        ("k.xyz", "1", "unknown weight file type"),
    ],
)
def test_weights_rejected(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, dict):
        np.savez(path, **content)
    elif isinstance(content, np.ndarray):
        np.save(path, content)
    else:
        path.write_text(content)
    with pytest.raises(InputError, match=message) as info:
        cio.load_weights(path)
    assert str(info.value).startswith(str(path))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("3x3: 1,2\n", "3x3 needs 9 values, got 2"),
        ("3x3+0+0: 1,2,3,4,5,6,7,8,9\n", "origin +0+0 is not the centre +1+1;"),
        ("a: b\n", "'a:' is not a number"),
    ],
)
def test_weights_text_error_keeps_the_parsers_reason_whole(tmp_path, content, reason):
    # The parser's label quotes the kernel text; cutting it at the first ": " cut inside
    # an ImageMagick "WxH: ..." text and left "1,2': 3x3 needs ..." after the file name.
    path = tmp_path / "k.txt"
    path.write_text(content)
    with pytest.raises(InputError) as info:
        cio.load_weights(path)
    assert str(info.value).startswith(f"{path}: {reason}")


def test_a_key_for_a_file_with_one_unnamed_kernel_is_refused(tmp_path):
    # As for .npy: a JSON list or a bare torch tensor has nothing to pick, and a key
    # meant for another file was silently ignored.
    (tmp_path / "k.json").write_text("[[1, 2], [3, 4]]")
    _check(cio.load_weights(tmp_path / "k.json"), [[1, 2], [3, 4]])
    with pytest.raises(InputError, match=r"k\.json: holds one unnamed kernel.*key='conv1'"):
        cio.load_weights(tmp_path / "k.json", key="conv1")
    torch = pytest.importorskip("torch")
    torch.save(torch.ones(3, 3), tmp_path / "t.pt")
    _check(cio.load_weights(tmp_path / "t.pt"), np.ones((3, 3)))
    with pytest.raises(InputError, match=r"t\.pt: holds one unnamed tensor.*key='conv1'"):
        cio.load_weights(tmp_path / "t.pt", key="conv1")


def test_weights_json_that_cannot_be_read_is_not_called_invalid_json(tmp_path):
    # _read_text's InputError is a ValueError: it was reported as "not valid JSON (...)"
    path = tmp_path / "k.json"
    path.write_bytes(b"\xff\xfe\x00[[1]]\x80")
    with pytest.raises(InputError) as info:
        cio.load_weights(path)
    assert str(info.value) == f"{path}: not a text file (not UTF-8)"
    folder = tmp_path / "dir.json"
    folder.mkdir()
    with pytest.raises(InputError) as info:
        cio.load_weights(folder)
    assert "JSON" not in str(info.value) and str(info.value).startswith(f"{folder}: ")


def test_weights_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"w\.npy: no such file"):
        cio.load_weights(tmp_path / "w.npy")


# ----------------------------------------------------------------- property tests


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    blob=st.binary(max_size=400),
    suffix=st.sampled_from([".npy", ".npz", ".json", ".txt", ".csv", ".pt", ".safetensors"]),
)
def test_load_weights_fuzz(tmp_path, blob, suffix):
    """Arbitrary bytes: a valid float32 array or InputError, never anything else."""
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(blob)
    try:
        w, _ = cio.load_weights(path)
    except InputError as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc)
        return
    assert w.dtype == np.float32 and w.ndim in (2, 4) and np.isfinite(w).all()


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(
        st.lists(
            st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5)),
            min_size=0,
            max_size=4,
        ),
        min_size=0,
        max_size=4,
    )
)
def test_load_weights_json_fuzz(tmp_path, rows):
    path = tmp_path / "fuzz.json"
    path.write_text(json.dumps(rows))
    try:
        w, _ = cio.load_weights(path)
    except InputError:
        return
    assert w.ndim == 2 and np.isfinite(w).all()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    blob=st.binary(min_size=1, max_size=300),
    suffix=st.sampled_from([".png", ".jpg", ".tif", ".npy", ".bmp"]),
)
def test_read_image_fuzz(tmp_path, blob, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(blob)
    try:
        im = cio.read_image(path)
    except InputError as exc:
        assert str(exc).startswith(str(path))
        return
    assert im.data.dtype == np.float32 and im.data.ndim == 3


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cut=st.integers(0, 2000),
    bits=st.sampled_from([8, 16]),
    suffix=st.sampled_from([".png", ".tif"]),
)
def test_read_corrupted_real_files(tmp_path, cut, bits, suffix):
    """Real files cut or with a flipped byte: decoded or InputError, never a crash."""
    src = tmp_path / f"src{bits}{suffix}"
    if not src.exists():
        cio.write_image(src, smooth(3, 24, 30), bit_depth=bits)
    blob = bytearray(src.read_bytes())
    pos = cut % len(blob)
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(
        bytes(blob[:pos])
        if cut % 2
        else bytes(blob[:pos]) + bytes([blob[pos] ^ 0x5A]) + bytes(blob[pos + 1 :])
    )
    try:
        cio.read_image(bad)
    except InputError as exc:
        assert str(exc).startswith(str(bad))


def test_exif_orientation_16bit_png(tmp_path):
    """Our own 16-bit PNG decoder honours an eXIf chunk like Pillow's exif_transpose."""
    x = smooth(3, 10, 16)
    path = cio.write_image(tmp_path / "o.png", x, bit_depth=16)
    blob = path.read_bytes()
    exif = PILImage.Exif()
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise to display
    body = exif.tobytes()
    body = body[6:] if body.startswith(b"Exif\x00\x00") else body
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body
    chunk += struct.pack(">I", zlib.crc32(b"eXIf" + body))
    at = blob.index(b"IDAT") - 4
    (tmp_path / "r.png").write_bytes(blob[:at] + chunk + blob[at:])
    im = cio.read_image(tmp_path / "r.png")
    expect = np.rot90(quantized(x, 16), 1, axes=(1, 2))
    np.testing.assert_array_equal(im.data, expect.astype(np.float32))


def test_big_endian_16bit_gray_tiff(tmp_path):
    a = (np.random.default_rng(8).random((5, 6)) * 65535).astype(np.uint16)
    PILImage.frombytes("I;16B", (6, 5), a.astype(">u2").tobytes()).save(tmp_path / "be.tif")
    im = cio.read_image(tmp_path / "be.tif")
    assert im.mode == "L" and im.bit_depth == 16
    np.testing.assert_array_equal(np.rint(im.data[0] * 65535), a)


def test_bmp_drops_alpha(tmp_path):
    x = smooth(4)
    im = cio.read_image(cio.write_image(tmp_path / "x.bmp", x))
    assert im.mode == "RGB"
    np.testing.assert_array_equal(im.data, quantized(x[:3], 8).astype(np.float32))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow(orientation):
    from PIL import ImageOps

    a = np.random.default_rng(orientation).integers(0, 256, (5, 7), dtype=np.uint8)
    pim = PILImage.fromarray(a)
    exif = pim.getexif()
    exif[0x0112] = orientation
    pim.info["exif"] = exif.tobytes()
    expect = np.asarray(ImageOps.exif_transpose(pim))
    got = cimages._orient(cio.Image(a[None].astype(np.float32), "L", 8, False), orientation)
    np.testing.assert_array_equal(got.data[0], expect)


def test_broken_tiff_is_one_line_of_ours(tmp_path, capfd):
    """A corrupt Deflate strip: one line of ours with the codec's reason, no stderr."""
    tifffile = pytest.importorskip("tifffile")
    path = cio.write_image(tmp_path / "x.tif", smooth(3, 40, 50))
    with tifffile.TiffFile(path) as tif:
        strip = tif.pages[0].dataoffsets[0]
    blob = bytearray(path.read_bytes())
    blob[strip + 10] ^= 0xFF  # inside the Deflate strip
    (tmp_path / "bad.tif").write_bytes(bytes(blob))
    capfd.readouterr()
    with pytest.raises(InputError, match=r"^\S*bad\.tif: cannot decode image \(\w+: .+\)$") as info:
        cio.read_image(tmp_path / "bad.tif")
    assert "\n" not in str(info.value)
    assert capfd.readouterr().err == ""


def test_codec_log_messages_become_notes(tmp_path):
    """tifffile logs odd tags through ``logging``; with no logging configured Python
    would print them on stderr. They become notes, and the pixels still decode."""
    tifffile = pytest.importorskip("tifffile")
    a = (np.random.default_rng(9).random((6, 7, 3)) * 65535).astype(np.uint16)
    path = tmp_path / "odd.tif"
    tifffile.imwrite(path, a, photometric="rgb", software="convcli test", metadata=None)
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags[305]  # Software, an ASCII tag stored out of line
        where = tag.valueoffset
    blob = bytearray(path.read_bytes())
    blob[where : where + 4] = b"\xff\xfe\x80\x81"  # not ASCII: tifffile warns
    path.write_bytes(bytes(blob))
    code = (
        "import sys, numpy as np\n"
        "from convcli import io\n"
        "im = io.read_image(sys.argv[1])\n"
        "print(len(im.notes), im.bit_depth, int(np.rint(im.data * 65535).sum()))\n"
    )
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    notes, depth, total = run.stdout.split()
    assert run.stderr == ""
    assert int(notes) >= 1 and int(depth) == 16 and int(total) == int(a.astype(np.int64).sum())


def test_integer_npy_scaled_like_images(tmp_path):
    np.save(tmp_path / "u8.npy", np.array([[0, 51, 255]], np.uint8))
    im = cio.read_image(tmp_path / "u8.npy")
    assert im.bit_depth == 8
    np.testing.assert_allclose(im.data, [[[0, 0.2, 1]]])
    np.save(tmp_path / "u16.npy", np.array([[[0, 65535]]], np.uint16))
    im = cio.read_image(tmp_path / "u16.npy")
    assert im.bit_depth == 16 and im.data.tolist() == [[[0.0, 1.0]]]


def test_pillow_value_errors_become_input_errors(tmp_path):
    with pytest.raises(InputError, match=r"wide\.webp: .*16383"):
        cio.write_image(tmp_path / "wide.webp", np.zeros((3, 2, 17000), np.float32))
    with pytest.raises(InputError, match=r"x\.png: 2 channels without alpha"):
        cio.write_image(tmp_path / "x.png", np.zeros((2, 2, 2)), has_alpha=False)
    assert list(tmp_path.iterdir()) == []


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    channels=st.sampled_from([2, 4]),
)
def test_premultiply_identity_round_trip(seed, channels):
    """An identity filter through premultiply/unpremultiply returns the colour wherever
    alpha > 0 (and 0 colour where alpha is 0), and the alpha unchanged."""
    rng = np.random.default_rng(seed)
    data = rng.random((channels, 6, 7)).astype(np.float32)
    data[-1][rng.random((6, 7)) < 0.3] = 0.0
    image = cio.Image(data, {2: "LA", 4: "RGBA"}[channels], 8, True)
    ch, kept = cio.prepare_alpha(image, "premultiply")
    out = cio.finish_alpha(ch.copy(), kept, "premultiply", has_alpha=True)
    alpha = data[-1]
    np.testing.assert_array_equal(out[-1], alpha)
    visible = alpha > 0
    np.testing.assert_allclose(out[:-1][:, visible], data[:-1][:, visible], rtol=1e-6)
    assert (out[:-1][:, ~visible] == 0).all()


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=20),
    out_map=st.sampled_from(cio.OUT_MAPS),
    scale=st.floats(-10, 10, allow_nan=False),
    offset=st.floats(-2, 2, allow_nan=False),
)
def test_map_output_always_in_unit_range(values, out_map, scale, offset):
    x = np.array(values, np.float32)[None, None]
    y = cio.map_output(x, out_map, scale=scale, offset=offset)
    assert y.shape == x.shape and (y >= 0).all() and (y <= 1).all()


def test_atomic_write_non_os_error_cleans_up(tmp_path):
    def broken(fh) -> None:
        fh.write(b"x")
        raise InputError("something else")

    with pytest.raises(InputError, match="something else"):
        publish(tmp_path / "y.bin", broken)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------- TIFF layouts


def tiff_16bit(tmp_path: Path, name: str, a: np.ndarray, **options) -> Path:
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / name
    tifffile.imwrite(path, a, metadata=None, **options)
    return path


@pytest.mark.parametrize(
    "options",
    [
        {"photometric": "rgb", "tile": (16, 16), "compression": "zlib"},
        {"photometric": "rgb", "planarconfig": "contig", "compression": "lzw"},
        {"photometric": "rgb", "compression": "packbits", "byteorder": ">"},
        {"photometric": "rgb", "compression": "zstd", "predictor": True},
        {"photometric": "rgb", "compression": "lzma", "rowsperstrip": 3},
        {"photometric": "rgb", "bigtiff": True},
    ],
    ids=["tiled", "lzw", "big-endian-packbits", "zstd", "lzma", "bigtiff"],
)
def test_16bit_tiff_layouts_exact(tmp_path, options):
    """Layouts the old own decoder handed to Pillow (which truncated them to 8 bits)."""
    a = (np.random.default_rng(11).random((37, 45, 3)) * 65535).astype(np.uint16)
    im = cio.read_image(tiff_16bit(tmp_path, "t.tif", a, **options))
    assert im.mode == "RGB" and im.bit_depth == 16 and im.notes == []
    np.testing.assert_array_equal(np.rint(im.data * 65535), a.transpose(2, 0, 1))


def test_16bit_planar_tiff_exact(tmp_path):
    """Planar (separate) configuration: one plane per channel."""
    a = (np.random.default_rng(16).random((4, 37, 45)) * 65535).astype(np.uint16)
    path = tiff_16bit(
        tmp_path, "p.tif", a, photometric="rgb", planarconfig="separate", compression="lzw"
    )
    im = cio.read_image(path)
    assert im.mode == "RGBA" and im.bit_depth == 16 and im.notes == []
    np.testing.assert_array_equal(np.rint(im.data * 65535), a)


def test_jpeg_compressed_tiff(tmp_path):
    rgb = chw(sample("coffee.png", (64, 48)).convert("RGB")).transpose(1, 2, 0)
    path = tiff_16bit(tmp_path, "j.tif", rgb, photometric="rgb", compression="jpeg")
    im = cio.read_image(path)
    assert im.mode == "RGB" and im.bit_depth == 8
    assert np.abs(im.data - rgb.transpose(2, 0, 1) / 255).mean() < 0.02


def test_12bit_tiff_scaled_by_its_depth(tmp_path):
    a = np.random.default_rng(12).integers(0, 4096, (9, 11), dtype=np.uint16)
    try:
        path = tiff_16bit(tmp_path, "12.tif", a, photometric="minisblack", bitspersample=12)
    except NotImplementedError:  # older imagecodecs (2024.6.1) cannot pack 12-bit samples
        pytest.skip("this imagecodecs cannot write 12-bit TIFF")
    im = cio.read_image(path)
    assert im.mode == "L" and im.bit_depth == 16
    np.testing.assert_array_equal(im.data[0], (a / np.float32(4095)).astype(np.float32))


def test_miniswhite_tiff(tmp_path):
    w = np.random.default_rng(13).integers(0, 65536, (9, 11, 2), dtype=np.uint16)
    path = tiff_16bit(
        tmp_path, "w.tif", w, photometric="miniswhite", planarconfig="contig", extrasamples=[2]
    )
    im = cio.read_image(path)
    assert im.mode == "LA" and im.has_alpha
    # 0 is white: the gray channel is inverted, alpha is not
    np.testing.assert_array_equal(np.rint(im.data[0] * 65535), 65535 - w[..., 0])
    np.testing.assert_array_equal(np.rint(im.data[1] * 65535), w[..., 1])


@pytest.mark.parametrize("dtype", ["int16", "int32", "uint32", "float32", "float64"])
def test_miniswhite_tiff_of_every_sample_type(tmp_path, dtype):
    """0 is white for signed, wide and float samples too: each reads as the same file
    stored MinIsBlack, inverted (the largest value of the type, or 1.0, minus it)."""
    import tifffile

    g = np.random.default_rng(5).random((9, 11))
    a = g.astype(dtype) if dtype.startswith("f") else (g * np.iinfo(dtype).max).astype(dtype)
    tifffile.imwrite(tmp_path / "w.tif", a, photometric="miniswhite")
    tifffile.imwrite(tmp_path / "b.tif", a, photometric="minisblack")
    white, black = cio.read_image(tmp_path / "w.tif"), cio.read_image(tmp_path / "b.tif")
    assert white.mode == black.mode and white.data.shape == (1, 9, 11)
    np.testing.assert_allclose(white.data, 1 - black.data, rtol=0, atol=1e-6)
    assert white.data.min() < 0.2 and white.data.max() > 0.8


def test_palette_tiff(tmp_path):
    pal = sample("coffee.png").convert("RGB").quantize(16)
    pal.save(tmp_path / "p.tif")
    im = cio.read_image(tmp_path / "p.tif")
    assert im.mode == "RGB" and im.bit_depth == 8
    np.testing.assert_array_equal(im.data, chw(pal.convert("RGB")) / np.float32(255))


def test_tiff_orientation_tag(tmp_path):
    a = np.random.default_rng(14).integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    path = tiff_16bit(tmp_path, "o.tif", a, photometric="rgb", extratags=[(274, 3, 1, 6, True)])
    im = cio.read_image(path)
    expect = cimages._orient(
        cio.Image(a.transpose(2, 0, 1).astype(np.float32), "RGB", 16, False), 6
    )
    assert im.data.shape == (3, 7, 5)
    np.testing.assert_array_equal(np.rint(im.data * 65535), expect.data)


def test_float_planar_multichannel_tiff(tmp_path):
    f = (np.random.default_rng(15).random((5, 8, 9)) * 4 - 2).astype(np.float32)
    path = tiff_16bit(tmp_path, "f.tif", f, photometric="minisblack", planarconfig="separate")
    im = cio.read_image(path)
    assert im.mode == "F5" and im.bit_depth == 32 and not im.has_alpha
    np.testing.assert_array_equal(im.data, f)


def test_truncated_tiff(tmp_path):
    path = cio.write_image(tmp_path / "x.tif", smooth(3, 60, 70), bit_depth=16)
    blob = path.read_bytes()
    (tmp_path / "cut.tif").write_bytes(blob[: len(blob) - 100])
    with pytest.raises(InputError, match=r"cut\.tif: truncated image data"):
        cio.read_image(tmp_path / "cut.tif")


# ----------------------------------------------------------------- rounding, errno


def test_quantize_matches_float64_on_every_16bit_level():
    """Every 16-bit level as read_image gives it (float32 k / 65535) rounds back to k at
    16 bits, and to the float64-rounded value at 8 bits."""
    levels = np.arange(65536, dtype=np.uint16)
    x = (levels.astype(np.float32) / np.float32(65535)).reshape(1, 256, 256)
    np.testing.assert_array_equal(pixels.quantize(x, 16)[..., 0], levels.reshape(256, 256))
    ref8 = np.rint(x.astype(np.float64) * 255).astype(np.uint8)
    np.testing.assert_array_equal(pixels.quantize(x, 8)[..., 0], ref8[0])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), bits=st.sampled_from([8, 16]))
def test_quantize_matches_float64_everywhere(seed, bits):
    """Arbitrary float32 data, including values one ulp around half levels (where a
    float32 product would round the other way), NaN and out-of-range values."""
    rng = np.random.default_rng(seed)
    top = (1 << bits) - 1
    half = (rng.integers(0, top, 2000) + 0.5) / top
    x = np.concatenate(
        [
            rng.random(3000).astype(np.float32),
            np.nextafter(half.astype(np.float32), np.float32(0)),
            np.nextafter(half.astype(np.float32), np.float32(1)),
            np.array([np.nan, -np.inf, np.inf, -0.5, 1.5, 0, 1], np.float32),
        ]
    ).reshape(1, 1, -1)
    ref = np.rint(np.clip(np.nan_to_num(x.astype(np.float64), nan=0.0), 0, 1) * top)
    np.testing.assert_array_equal(pixels.quantize(x, bits)[0, :, 0], ref[0, 0])


def test_atomic_write_keeps_errno(tmp_path):
    """batch tells a full disk from other failures by the OSError's errno."""
    import errno

    def full(fh) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(InputError, match="no space left on device") as info:
        publish(tmp_path / "x.bin", full)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_a_weights_folder_is_named_as_a_folder_not_an_image(tmp_path):
    folder = tmp_path / "w.npy"
    folder.mkdir()
    with pytest.raises(InputError, match=r"w\.npy: is a folder, not a weight file$"):
        cio.load_weights(folder)
