"""A JPEG output's chroma subsampling: a JPEG input keeps its own (ImageMagick's rule:
``convert in.jpg -blur 0x1 out.jpg`` writes the input's 4:4:4, 4:2:2 or 4:2:0 whatever
the quality), any other input gets none from quality 90 up and 4:2:0 below, and
``Output(subsampling=...)`` / ``--subsampling`` forces one. The same in every writer:
the small path's encoder, the strip pipeline's banded encoder and ``write_image``.

The sampling factors are read back by Pillow (``JpegImagePlugin.get_sampling``: 0 is
4:4:4, 1 is 4:2:2, 2 is 4:2:0, -1 a grey image), not by convcli's header parser."""

from __future__ import annotations

import io
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image as PILImage
from PIL import JpegImagePlugin

from convcli import batch as cbatch
from convcli import io as cio
from convcli.cli import cli
from convcli.errors import ConvValueError
from convcli.io import sinks
from convcli.io.stream import Target, write_rows

ROOT = Path(__file__).resolve().parent.parent
SAMPLING = {"444": 0, "422": 1, "420": 2}
PIL_SUBSAMPLING = {"444": 0, "422": 1, "420": 2}
BINOMIAL = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]).astype(np.float32) / 256


def _photo(h: int = 40, w: int = 56) -> np.ndarray:
    with PILImage.open(ROOT / "samples" / "astronaut.png") as im:
        return np.asarray(im.convert("RGB").crop((30, 20, 30 + w, 20 + h)), np.uint8)


def _sampling(path_or_bytes) -> int:
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with PILImage.open(src) as im:
        assert im.format == "JPEG"
        return JpegImagePlugin.get_sampling(im)


def _inputs(folder: Path) -> dict[str, str | None]:
    """Input files and the subsampling a JPEG output of each keeps under ``auto``
    (None: none of its own, the quality decides)."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = _photo()
    for name, ss in PIL_SUBSAMPLING.items():
        PILImage.fromarray(rgb).save(folder / f"in{name}.jpg", quality=90, subsampling=ss)
    PILImage.fromarray(rgb[..., 0]).save(folder / "grey.jpg", quality=90)
    PILImage.fromarray(rgb).save(folder / "plain.png")
    return {"in444.jpg": "444", "in422.jpg": "422", "in420.jpg": "420", "grey.jpg": None,
            "plain.png": None}  # fmt: skip


def test_the_inputs_subsampling_is_read_from_its_header(tmp_path):
    expect = _inputs(tmp_path)
    for name, want in expect.items():
        assert cio.read_jpeg_subsampling(tmp_path / name) == want, name
    # a large APP segment before the frame header is skipped, not read
    big = tmp_path / "exif.jpg"
    PILImage.fromarray(_photo()).save(big, quality=80, subsampling=1,
                                      icc_profile=b"\0" * 200_000)  # fmt: skip
    assert cio.read_jpeg_subsampling(big) == "422"
    # 4:4:0 (chroma halved vertically) is none of the three: the quality decides
    odd = io.BytesIO()
    PILImage.fromarray(_photo()).save(odd, "JPEG", quality=90, subsampling=0)
    data = bytearray(odd.getvalue())
    sof = data.index(b"\xff\xc0")
    assert data[sof + 11] == 0x11  # the luma component's factors, 1x1
    data[sof + 11] = 0x12  # 1 across, 2 down
    (tmp_path / "odd.jpg").write_bytes(bytes(data))
    assert cio.read_jpeg_subsampling(tmp_path / "odd.jpg") is None
    (tmp_path / "cut.jpg").write_bytes(bytes(data[: sof + 5]))
    assert cio.read_jpeg_subsampling(tmp_path / "cut.jpg") is None
    assert cio.read_jpeg_subsampling(tmp_path / "missing.jpg") is None


@pytest.mark.parametrize("strips", [False, True], ids=["small-path", "strip-path"])
@pytest.mark.parametrize("quality", [95, 80])
def test_auto_keeps_a_jpeg_inputs_subsampling(tmp_path, strips, quality):
    expect = _inputs(tmp_path / "in")
    plan = cbatch.plan_batch(tmp_path / "in", tmp_path / "out", fmt="jpg")
    res = cbatch.run_tasks(
        plan.tasks, cbatch.Filter(weight=BINOMIAL), engine=cbatch.Engine("numpy"),
        output=cbatch.Output(quality=quality), small_bytes=0 if strips else None,
    )  # fmt: skip
    assert res.ok and len(res.done) == len(expect), res.failed
    by_quality = "444" if quality >= 90 else "420"
    for name, want in expect.items():
        out = tmp_path / "out" / (Path(name).stem + ".jpg")
        if name == "grey.jpg":
            assert _sampling(out) == -1
        else:
            assert _sampling(out) == SAMPLING[want or by_quality], (name, quality)


@pytest.mark.parametrize("strips", [False, True], ids=["small-path", "strip-path"])
@pytest.mark.parametrize("forced", ["444", "422", "420"])
def test_a_forced_subsampling_applies_to_every_colour_output(tmp_path, strips, forced):
    expect = _inputs(tmp_path / "in")
    plan = cbatch.plan_batch(tmp_path / "in", tmp_path / "out", fmt="jpg")
    res = cbatch.run_tasks(
        plan.tasks, cbatch.Filter(weight=BINOMIAL), engine=cbatch.Engine("numpy"),
        output=cbatch.Output(subsampling=forced), small_bytes=0 if strips else None,
    )  # fmt: skip
    assert res.ok and len(res.done) == len(expect), res.failed
    for name in expect:
        out = tmp_path / "out" / (Path(name).stem + ".jpg")
        assert _sampling(out) == (-1 if name == "grey.jpg" else SAMPLING[forced]), name


def test_a_bad_subsampling_is_refused():
    with pytest.raises(ConvValueError, match=r"subsampling must be 'auto' or one of"):
        cbatch.Output(subsampling="411")
    with pytest.raises(ConvValueError, match=r"subsampling must be 'auto' or one of"):
        cio.write_image("never.jpg", np.zeros((3, 4, 4), np.float32), subsampling="411")
    assert not Path("never.jpg").exists()


@pytest.mark.parametrize("forced", [None, "444", "422", "420"])
@pytest.mark.parametrize("quality", [95, 75])
def test_write_image_takes_the_subsampling(tmp_path, forced, quality):
    x = np.moveaxis(_photo(), -1, 0) / np.float32(255)
    out = cio.write_image(tmp_path / "o.jpg", x, quality=quality, subsampling=forced)
    want = forced or ("444" if quality >= 90 else "420")
    assert _sampling(out) == SAMPLING[want]


@pytest.mark.parametrize("forced", ["444", "422", "420"])
@pytest.mark.parametrize("band_bytes", [1, 2**20])
def test_the_banded_encoder_decodes_as_the_whole_image(forced, band_bytes, monkeypatch):
    """Bands of whole MCU rows (8 rows at 4:4:4 and 4:2:2, 16 at 4:2:0) joined by
    restart markers decode to the pixels of the whole image encoded with the same
    settings, and carry the sampling asked for."""
    monkeypatch.setattr(sinks, "_JPEG_BAND_BYTES", band_bytes)
    a = _photo(75, 83)
    target = Target("JPEG", 75, 83, 3, np.dtype(np.uint8), False, 90, forced)
    rows, _ = sinks._jpeg_bands(target)
    assert rows % (16 if forced == "420" else 8) == 0
    fh = io.BytesIO()
    write_rows(fh, (a[y : y + 7] for y in range(0, 75, 7)), target, name="o.jpg")
    data = fh.getvalue()
    assert (b"\xff\xd0" in data) == (band_bytes == 1)
    assert _sampling(data) == SAMPLING[forced]
    whole = imagecodecs.jpeg8_encode(a, level=90, subsampling=forced, optimize=False)
    np.testing.assert_array_equal(
        np.asarray(PILImage.open(io.BytesIO(data))), np.asarray(PILImage.open(io.BytesIO(whole)))
    )


def test_the_cli_option(tmp_path):
    _inputs(tmp_path / "in")
    runner = CliRunner()
    args = ["batch", str(tmp_path / "in"), str(tmp_path / "out"), "--preset",
            "binomial:radius=2", "--format", "jpg", "--backend", "numpy", "-q"]  # fmt: skip
    res = runner.invoke(cli, [*args, "--subsampling", "422"])
    assert res.exit_code == 0, res.output
    assert _sampling(tmp_path / "out" / "in444.jpg") == 1
    assert _sampling(tmp_path / "out" / "plain.jpg") == 1
    res = runner.invoke(cli, [*args, "--subsampling", "411", "--overwrite"])
    assert res.exit_code == 2 and "--subsampling" in res.output


def test_write_image_takes_auto_as_output_does(tmp_path):
    from convcli.io.images import write_image

    rgb = np.random.default_rng(5).random((3, 16, 16), np.float32)
    write_image(tmp_path / "a.jpg", rgb, quality=95, subsampling="auto")
    assert cio.read_jpeg_subsampling(tmp_path / "a.jpg") == "444"


def test_a_forged_header_of_endless_fill_is_not_read_to_its_end(tmp_path):
    # fill bytes are read one at a time: a forged file of megabytes of them cost seconds,
    # so the reader gives up (None: the quality rule) after a bounded number
    sof = b"\xff\xc0\x00\x11\x08\x00\x10\x00\x10\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    near, far = tmp_path / "near.jpg", tmp_path / "far.jpg"
    near.write_bytes(b"\xff\xd8" + b"\xff" * 10 + sof)
    far.write_bytes(b"\xff\xd8" + b"\xff" * 100_000 + sof)
    assert cio.read_jpeg_subsampling(near) == "420"
    assert cio.read_jpeg_subsampling(far) is None
