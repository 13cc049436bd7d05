"""One JPEG marker walker (convcli.io.jpeg) for the bytes the small path read and for a
file read marker by marker: the frame's size, components and sampling factors as Pillow
reads them, bounded work on forged input, and the small path taking an input's chroma
subsampling from the header it parsed instead of opening the file again."""

from __future__ import annotations

import builtins
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import JpegImagePlugin

from convcli import batch as cbatch
from convcli import small
from convcli.io import jpeg

ROOT = Path(__file__).resolve().parent.parent
BINOMIAL = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]).astype(np.float32) / 256
# Pillow's get_sampling: 0 is 4:4:4, 1 is 4:2:2, 2 is 4:2:0, -1 grey (or none of them)
PIL_SAMPLING = {0: "444", 1: "422", 2: "420", -1: None}
# a 16x16 frame of three components, luma 2x2 (4:2:0), and a scan header
SOF = b"\xff\xc0\x00\x11\x08\x00\x10\x00\x10\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
SOS = b"\xff\xda\x00\x0c\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00"


def _photo(h: int = 40, w: int = 56) -> np.ndarray:
    with PILImage.open(ROOT / "samples" / "astronaut.png") as im:
        return np.asarray(im.convert("RGB").crop((30, 20, 30 + w, 20 + h)), np.uint8)


def _jpegs() -> dict[str, bytes]:
    rgb = _photo(37, 53)
    out = {}
    for name, image, options in [
        ("444", rgb, {"subsampling": 0}),
        ("422", rgb, {"subsampling": 1, "icc_profile": b"\0" * 70_000}),
        ("420", rgb, {"subsampling": 2, "progressive": True}),
        ("grey", rgb[..., 0], {}),
        ("cmyk", PILImage.fromarray(rgb).convert("CMYK"), {}),
    ]:
        fh = io.BytesIO()
        image = image if isinstance(image, PILImage.Image) else PILImage.fromarray(image)
        image.save(fh, "JPEG", quality=90, **options)
        out[name] = fh.getvalue()
    return out


class _Counting(io.BytesIO):
    """A file that counts the bytes read from it."""

    read_bytes = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.read_bytes += len(data)
        return data


def test_the_header_says_what_pillow_reads_from_bytes_and_from_a_file():
    for name, data in _jpegs().items():
        with PILImage.open(io.BytesIO(data)) as im:
            want = (im.height, im.width, len(im.getbands()), PIL_SAMPLING[
                JpegImagePlugin.get_sampling(im) if name != "cmyk" else -1])  # fmt: skip
            progressive = bool(im.info.get("progressive"))
            adobe = "adobe" in im.info
        for until in ("scan", "frame"):
            for src in (data, _Counting(data)):
                head = jpeg.read_header(src, until=until)
                assert head is not None, (name, until)
                got = (head.height, head.width, head.channels, head.subsampling)
                assert got == want, (name, until)
                assert head.frame == (0xC2 if progressive else 0xC0), name
                assert head.precision == 8 and len(head.sampling) == head.channels
                if until == "scan":
                    assert head.adobe == adobe, name


def test_a_file_is_read_up_to_its_frame_skipping_the_segments_before_it():
    data = _jpegs()["422"]  # 70 kB of ICC profile before the frame header
    exif = b"\xff\xe1\xea\x68" + b"Exif\0\0" + b"\0" * 60_000  # and 60 kB of EXIF
    data = data[:2] + exif + data[2:]
    fh = _Counting(data)
    assert jpeg.read_header(fh, until="frame").subsampling == "422"
    assert fh.read_bytes < 1000


def test_metadata_before_the_scan_is_kept():
    exif = PILImage.Exif()
    exif[0x0112] = 6
    fh = io.BytesIO()
    PILImage.fromarray(_photo()).save(fh, "JPEG", exif=exif)
    head = jpeg.read_header(fh.getvalue())
    assert head.exif is not None and head.exif.startswith((b"II*\0", b"MM\0*"))
    assert small._orientation(head) == 6


@pytest.mark.parametrize("until", ["scan", "frame"])
def test_bad_headers_give_none(until):
    good = b"\xff\xd8" + SOF + SOS + b"\0" * 8 + b"\xff\xd9"
    assert jpeg.read_header(good, until=until).subsampling == "420"
    bad = [
        b"",
        b"\x89PNG\r\n\x1a\n",
        b"\xff\xd8",
        b"\xff\xd8" + SOF[:10],  # the frame cut short
        b"\xff\xd8" + SOS + SOF,  # a scan before the frame
        b"\xff\xd8\xff\xd9" + SOF + SOS,  # the end before the frame
        b"\xff\xd8\xff\xfe\x00\x01" + SOF + SOS,  # a length below 2
        b"\xff\xd8\xff\xfe\x00\x40" + SOF,  # a segment longer than the file
        b"\xff\xd8\x00" + SOF + SOS,  # no marker
        b"\xff\xd8" + SOF[:3] + b"\x0e" + SOF[4:16] + SOS,  # fewer components than it says
    ]
    for data in bad:
        assert jpeg.read_header(data, until=until) is None, data
    if until == "scan":  # the scan header itself cut short
        assert jpeg.read_header(b"\xff\xd8" + SOF + SOS[:8]) is None


@pytest.mark.parametrize("until", ["scan", "frame"])
def test_forged_fill_and_markers_are_not_read_to_their_end(until):
    """Fill bytes are read one at a time and every marker costs a step: a forged header
    of megabytes of them cost the small path's walker seconds (it had no bound), so
    the walker gives up after :data:`convcli.io.jpeg.MARKERS_READ` of either."""
    cap = jpeg.MARKERS_READ
    comment = b"\xff\xfe\x00\x02"  # an empty COM segment
    near_fill = b"\xff\xd8" + b"\xff" * (cap - 1) + SOF + SOS
    far_fill = b"\xff\xd8" + b"\xff" * (cap + 1) + SOF + SOS
    near_markers = b"\xff\xd8" + comment * (cap - 2) + SOF + SOS
    far_markers = b"\xff\xd8" + comment * cap + SOF + SOS
    for data, found in [(near_fill, True), (far_fill, False), (near_markers, True),
                        (far_markers, False)]:  # fmt: skip
        for src in (data, io.BytesIO(data)):
            assert (jpeg.read_header(src, until=until) is not None) == found
    # and through the small path, which then leaves the file to the general reader
    assert small._plain_jpeg(b"\xff\xd8" + b"\xff" * 100_000 + SOF + SOS + b"\xff\xd9",
                             None) is None  # fmt: skip


def test_the_small_path_opens_a_jpeg_once(tmp_path, monkeypatch):
    """The small path decodes from the bytes it read and takes the input's chroma
    subsampling (4:2:2, which "auto" keeps) from the header it parsed there."""
    src = tmp_path / "in" / "a.jpg"
    src.parent.mkdir()
    PILImage.fromarray(_photo()).save(src, quality=90, subsampling=1)
    opened: list[Path] = []
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):
        if isinstance(file, (str, Path)) and Path(file) == src:
            opened.append(Path(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    plan = cbatch.plan_batch(tmp_path / "in", tmp_path / "out", fmt="jpg")
    filt, engine = cbatch.Filter(weight=BINOMIAL), cbatch.Engine("numpy")
    res = cbatch.run_tasks(plan.tasks, filt, engine=engine, output=cbatch.Output(quality=95))
    assert res.ok and len(res.done) == 1, res.failed
    monkeypatch.undo()
    assert len(opened) == 1
    with PILImage.open(tmp_path / "out" / "a.jpg") as im:
        assert JpegImagePlugin.get_sampling(im) == 1
