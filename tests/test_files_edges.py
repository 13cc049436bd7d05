"""Files in, files out at the edges the formats set: what an encoder cannot store is one
error line naming the file, found before any work, and nothing is written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import imagecodecs
import numpy as np
import pytest

from convcli import io as cio
from convcli import pipeline, pixels, small
from convcli.errors import InputError
from convcli.io import stream

REPO = Path(__file__).resolve().parents[1]


def convcli(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "convcli", *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_result_too_wide_for_jpeg_or_webp_is_one_error_line(tmp_path):
    """A 70000-pixel-wide result as JPEG printed libjpeg's own line ("Maximum supported
    image dimension is 65500 pixels") and then "cannot write: broken data stream when
    writing image file", once the whole image was computed; as WebP the file's name and
    "cannot write" came twice. Now both are refused before the work, in one line, and
    an image that fits (the other file, a stride that halves the width) is written."""
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "wide.png").write_bytes(
        imagecodecs.png_encode(rng.integers(0, 256, (2, 70000, 3), dtype=np.uint8))
    )
    (tmp_path / "in" / "small.png").write_bytes(
        imagecodecs.png_encode(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8))
    )
    res = convcli("batch", "in", "out", "--kernel", "1", "--format", "jpg", "-q", cwd=tmp_path)
    assert res.returncode == 1
    lines = res.stderr.splitlines()
    assert lines[0] == (
        "convcli: error: out/wide.jpg: JPEG holds images of at most 65500 pixels a side, "
        "not 70000x2; write .png or .tif instead"
    ), res.stderr
    assert len(lines) == 2 and lines[1].startswith("convcli: summary: 1 done, 0 skipped, 1 failed")
    assert sorted(os.listdir(tmp_path / "out")) == ["small.jpg"]

    res = convcli("apply", "in/wide.png", "-o", "w.webp", "--kernel", "1", "-q", cwd=tmp_path)
    assert res.returncode == 1
    assert res.stderr == (
        "convcli: error: w.webp: WEBP holds images of at most 16383 pixels a side, "
        "not 70000x2; write .png or .tif instead\n"
    )
    assert not (tmp_path / "w.webp").exists()
    res = convcli("apply", "in/wide.png", "-o", "w.jpg", "--kernel", "1", "--stride", "2", "-q",
                  cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert imagecodecs.jpeg8_decode((tmp_path / "w.jpg").read_bytes()).shape == (1, 35000, 3)


@pytest.mark.parametrize("suffix", [".jpg", ".webp"])
def test_write_image_refuses_a_side_the_format_cannot_hold(tmp_path, suffix):
    most = cio.images.MAX_SIDE["JPEG" if suffix == ".jpg" else "WEBP"]
    x = np.zeros((1, most + 1, 2), np.float32)
    with pytest.raises(InputError, match=rf"at most {most} pixels a side, not 2x{most + 1}"):
        cio.write_image(tmp_path / f"x{suffix}", x)
    assert list(tmp_path.iterdir()) == []
    cio.write_image(tmp_path / f"y{suffix}", x[:, :most])  # the largest side it holds


@pytest.mark.parametrize("encode", [pipeline.encode, small.encode], ids=["strips", "small"])
def test_an_encoder_refusal_names_the_file_once(tmp_path, encode):
    """An InputError from the sink (it names the file already) was wrapped again:
    "x.webp: cannot write: x.webp: WEBP holds 8-bit samples, not uint16"."""
    dst = tmp_path / "x.webp"
    target = stream.Target("WEBP", 3, 4, 3, np.dtype(np.uint16), False, 95)
    samples = np.zeros((3, 4, 3), np.uint16)
    arg = iter([samples]) if encode is pipeline.encode else samples
    with pytest.raises(InputError) as err:
        encode(dst, target, arg, replace=True)
    assert str(err.value) == f"{dst}: WEBP holds 8-bit samples, not uint16"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("small_bytes", [None, 0], ids=["default", "strips"])
@pytest.mark.parametrize("alpha", [False, True])
def test_float_tiff_output_is_clipped_like_every_image_format(tmp_path, small_bytes, alpha):
    """The default mapping is a clip to [0, 1]; only .npy keeps the raw result. A float
    TIFF out of a float input kept values from -0.5 to 1.5 under the default (a plain
    clip skipped the mapping, as the integer formats' rounding clips) but clipped them
    with --scale 1.0000001: two near-identical runs, two ranges."""
    from convcli import Filter
    from convcli import batch as cbatch

    rng = np.random.default_rng(3)
    x = (rng.random((4 if alpha else 1, 9, 11)) * 2 - 0.5).astype(np.float32)
    src = cio.write_image(tmp_path / "f.tif", x, bit_depth=32)
    filt = Filter.from_text("1")
    outs = {}
    for name, output in [
        ("plain.tif", cbatch.Output(alpha="filter")),
        ("scaled.tif", cbatch.Output(alpha="filter", scale=1.0000001)),
        ("raw.npy", cbatch.Output(alpha="filter")),
    ]:
        engine = cbatch.Engine(backend="numpy")
        task = cbatch.Task(src, tmp_path / name)
        res = cbatch.run_tasks([task], filt, output=output, engine=engine, small_bytes=small_bytes)
        assert res.ok, [f.reason for f in res.failed]
        outs[name] = cio.read_image(tmp_path / name, max_pixels=None).data
    np.testing.assert_array_equal(outs["raw.npy"], x)
    np.testing.assert_array_equal(outs["plain.tif"], np.clip(x, 0, 1))
    np.testing.assert_allclose(outs["scaled.tif"], np.clip(x * 1.0000001, 0, 1), atol=1e-6)


@pytest.mark.parametrize("dtype", ["<u2", ">u2", "u1", ">i2", ">f4"])
def test_npy_samples_read_alike_whole_and_streamed_in_either_byte_order(tmp_path, dtype):
    """read_image divided a big-endian uint16 .npy by nothing (``dtype == np.uint16``
    is False for '>u2') while the strip reader divided it by 65535: the library gave
    values up to 65535 for what the command line read as [0, 1]."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256 if dtype == "u1" else 30000, (2, 5, 7)).astype(dtype)
    np.save(tmp_path / "a.npy", arr)
    top = {"<u2": 65535, ">u2": 65535, "u1": 255}.get(dtype, 1)
    want = arr.astype(np.float64) / top
    whole = cio.read_image(tmp_path / "a.npy")
    np.testing.assert_allclose(whole.data, want, rtol=1e-6)
    assert whole.bit_depth == {65535: 16, 255: 8}.get(top, 32)
    src = stream.open_source(tmp_path / "a.npy", max_pixels=None)
    try:
        rows = src.read_rows(0, 5)
        streamed = np.moveaxis(rows, -1, 0) / (src.info.top or 1)
        assert src.info.bit_depth == whole.bit_depth
    finally:
        src.close()
    np.testing.assert_array_equal(whole.data, streamed.astype(np.float32))


def _old_ome(path: Path, data: np.ndarray, axes: list | None) -> None:
    """An OME-Zarr group of the versions before 0.4: no axes (0.1, 0.2) or axes as
    names (0.3), no coordinate transformations."""
    zarr = pytest.importorskip("zarr")
    fmt = {"zarr_format": 2} if int(zarr.__version__.split(".")[0]) >= 3 else {}
    group = zarr.open_group(str(path), mode="w", **fmt)
    entry: dict = {"version": "0.2" if axes is None else "0.3", "datasets": [{"path": "0"}]}
    if axes is not None:
        entry["axes"] = axes
    group.attrs["multiscales"] = [entry]
    z = zarr.open_array(store=str(path), path="0", mode="w", shape=data.shape, chunks=(1, 8, 8),
                        dtype=data.dtype, **fmt)  # fmt: skip
    z[...] = data


@pytest.mark.parametrize("axes", [None, ["c", "y", "x"]], ids=["0.2", "0.3"])
def test_ome_zarr_without_axis_objects_is_convolved(tmp_path, axes):
    """An OME-Zarr 0.1/0.2 group (no axes) failed once level 0 was convolved, writing
    the output's metadata: "internal error: TypeError: 'NoneType' object is not
    iterable"."""
    pytest.importorskip("dask.array")
    import zarr

    import convcli

    data = np.random.default_rng(0).random((2, 19, 23)).astype(np.float32)
    _old_ome(tmp_path / "in.zarr", data, axes)
    w = np.random.default_rng(1).random((2, 1, 3, 3)).astype(np.float32)
    opts = dict(padding="same", groups=2, padding_mode="reflect")
    convcli.zarr_conv2d(tmp_path / "in.zarr", tmp_path / "out.zarr", w, backend="numpy", **opts)
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    want = convcli.conv2d(data, w, backend="numpy", **opts)
    np.testing.assert_allclose(group["0"][...], want, rtol=0, atol=2e-6)
    entry = dict(group.attrs)["multiscales"][0]
    assert [d["path"] for d in entry["datasets"]] == ["0"]
    assert not entry["datasets"][0].get("coordinateTransformations")
    assert entry.get("axes") == axes


def test_ome_zarr_axes_that_do_not_match_level0_are_one_error(tmp_path):
    pytest.importorskip("dask.array")
    import convcli

    _old_ome(tmp_path / "in.zarr", np.zeros((2, 9, 9), np.float32), ["y", "x"])
    match = r"in\.zarr: OME-Zarr names 2 axes but level 0 \(0\) has 3$"
    with pytest.raises(InputError, match=match):
        convcli.zarr_conv2d(tmp_path / "in.zarr", tmp_path / "out.zarr", np.ones((1, 1, 1, 1)))
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize("side", [24, 2400])  # the small-image path and the strip pipeline
def test_a_tiff_channel_declared_not_alpha_is_not_written_as_alpha(tmp_path, side):
    """RGB + an extra channel whose ExtraSamples says "unspecified" is read without
    alpha and filtered as a channel, but was written as alpha: a PNG or WebP came out
    transparent where that channel is 0, a TIFF's ExtraSamples became 2, a JPEG
    dropped the channel without a word. A TIFF now keeps the declaration, and formats
    that hold no such channel refuse it in one line, writing nothing."""
    import tifffile

    a = np.random.default_rng(side).integers(0, 256, (side, side + 7, 4), dtype=np.uint8)
    a[..., 3] = 0
    tifffile.imwrite(tmp_path / "rgbx.tif", a, photometric="rgb", extrasamples=[0])
    res = convcli("apply", "rgbx.tif", "--kernel", "1", "-o", "out.tif", "-q", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert tuple(int(e) for e in tif.pages[0].extrasamples) == (0,)
        np.testing.assert_array_equal(tif.asarray(), a)
    for suffix, line in [
        ("png", "4 channels without alpha fit no PNG image mode"),
        ("webp", "4 channels without alpha fit no WEBP image mode"),
        ("jpg", "4 channels cannot be stored as JPEG"),
    ]:
        res = convcli("apply", "rgbx.tif", "--kernel", "1", "-o", f"out.{suffix}", cwd=tmp_path)
        assert res.returncode == 1
        assert res.stderr == (
            f"convcli: error: out.{suffix}: {line}; write .npy or .tif instead\n"
        ), res.stderr
        assert not (tmp_path / f"out.{suffix}").exists()
    # an image with alpha, and an RGB image through a layer making 4 channels, keep
    # ending in alpha
    rgba = a.copy()
    rgba[..., 3] = 200
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=[2])
    res = convcli("apply", "rgba.tif", "--kernel", "1", "--alpha", "filter", "-o", "a.png",
                  cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert cio.read_image(tmp_path / "a.png").mode == "RGBA"


@pytest.mark.parametrize("c_out", [2, 4])
@pytest.mark.parametrize("suffix", ["jpg", "bmp"])
def test_a_computed_channel_is_not_dropped_into_jpeg_or_bmp(tmp_path, c_out, suffix):
    """A layer making 2 or 4 channels of an RGB image wrote a JPEG or BMP of 1 or 3,
    the last computed channel dropped as if it were alpha, exit 0 and no word (a
    5-channel result was refused). Now refused alike; PNG keeps taking such a last
    channel as alpha (LA, RGBA), as write_image does."""
    rng = np.random.default_rng(c_out)
    (tmp_path / "a.png").write_bytes(
        imagecodecs.png_encode(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    )
    np.save(tmp_path / "w.npy", rng.random((c_out, 3, 3, 3)).astype(np.float32) / 27)
    res = convcli("apply", "a.png", "--weights", "w.npy", "-o", f"o.{suffix}", cwd=tmp_path)
    kind = "JPEG" if suffix == "jpg" else "BMP"
    assert res.returncode == 1
    assert res.stderr == (
        f"convcli: error: o.{suffix}: {c_out} channels cannot be stored as {kind}; "
        "write .npy or .tif instead\n"
    ), res.stderr
    assert not (tmp_path / f"o.{suffix}").exists()
    res = convcli("apply", "a.png", "--weights", "w.npy", "-o", "o.png", "-q", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert cio.read_image(tmp_path / "o.png").mode == ("LA" if c_out == 2 else "RGBA")


@pytest.mark.parametrize("out_map", ["clip", "normalize"])
def test_a_scale_past_float32_is_one_warning_of_ours(tmp_path, out_map):
    """--scale 1e38 on a result of ~1e38 printed NumPy's 'overflow encountered in
    multiply' (twice under normalize, whose range is measured in a first pass); now one
    line saying what overflowed, and the image is still written."""
    (tmp_path / "a.png").write_bytes(
        imagecodecs.png_encode(np.random.default_rng(1).integers(1, 256, (6, 7, 3), np.uint8))
    )
    res = convcli("apply", "a.png", "--kernel", "1e38", "--scale", "1e38", "--out-map", out_map,
                  "-o", "n.png", "-q", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    ours = (  # (the fused 8-bit step of a plain clip counts it as the result's overflow)
        "convcli: warning: a.png: the result overflowed float32: some values are inf or NaN "
        "(image formats clip them, .npy keeps them); scale the kernel down\n"
        if out_map == "clip"
        else "convcli: warning: a.png: scale 1e+38 and offset 0 take some values past "
        "float32's range: they became inf or NaN\n"
    )
    assert res.stderr == ours
    assert (tmp_path / "n.png").exists()
    with pytest.warns(RuntimeWarning, match="offset 3e\\+38 take some values past float32"):
        got = pixels.map_output(np.ones((1, 2, 2), np.float32), scale=3e38, offset=3e38)
    assert got.tolist() == [[[1.0, 1.0], [1.0, 1.0]]]
