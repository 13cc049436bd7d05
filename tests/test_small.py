"""Small images run whole (convcli.small through convcli.batch.run_tasks): the same
pixels as the strip pipeline and the float64 reference, the path taken where it should
be, and batch's guarantees (bad files, no clobbering, skip, full disk, interrupts)."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
from naive import naive_conv2d
from PIL import Image as PILImage

from convcli import batch as cbatch
from convcli import io as cio
from convcli import native, pipeline, small
from convcli import notes as cnotes
from convcli.errors import InputError
from convcli.io import stream
from convcli.presets import get_preset

ROOT = Path(__file__).resolve().parent.parent
BINOMIAL = np.asarray(get_preset("binomial:radius=2").kernel, np.float32)


def _photo(seed: int, h: int = 37, w: int = 53, channels: int = 3) -> np.ndarray:
    """A crop of a real sample as (H, W, C) uint8 (C 1 or 3)."""
    names = ["astronaut.png", "coffee.png", "camera.png", "horse.png"]
    with PILImage.open(ROOT / "samples" / names[seed % 4]) as im:
        im = im.convert("RGB" if channels == 3 else "L")
        x0, y0 = 10 + 9 * seed, 20 + 7 * seed
        arr = np.asarray(im.crop((x0, y0, x0 + w, y0 + h)), np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def _save_jpeg(path: Path, samples: np.ndarray, **options) -> Path:
    image = samples[..., 0] if samples.shape[2] == 1 else samples
    PILImage.fromarray(image).save(path, "JPEG", **{"quality": 90, **options})
    return path


def _reference(src: Path, kernel: np.ndarray, mode: str = "replicate") -> np.ndarray:
    """The float64 'same' cross-correlation of the decoded input, clipped, (C, H, W)."""
    x = cio.read_image(src).data.astype(np.float64)
    k = np.asarray(kernel, np.float64)
    th, tw = k.shape[0] - 1, k.shape[1] - 1
    pad = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    c = x.shape[0]
    w = np.broadcast_to(k, (c, 1, *k.shape))
    return np.clip(naive_conv2d(x[None], w, None, (1, 1), pad, (1, 1), c, mode)[0].real, 0, 1)


def _levels(path: Path) -> np.ndarray:
    image = cio.read_image(path)
    top = 65535 if image.bit_depth == 16 else 255
    return np.rint(image.data.astype(np.float64) * top)


def _folder(root: Path) -> list[Path]:
    """RGB and grey JPEGs (4:2:0, 4:4:4, progressive, EXIF orientation 1), 8- and
    16-bit PNGs and a TIFF."""
    root.mkdir(parents=True, exist_ok=True)
    exif = PILImage.Exif()
    exif[0x0112] = 1
    files = [
        _save_jpeg(root / "rgb420.jpg", _photo(0)),
        _save_jpeg(root / "rgb444.jpg", _photo(1), quality=95, subsampling=0),
        _save_jpeg(root / "grey.jpg", _photo(2, channels=1)),
        _save_jpeg(root / "progressive.jpg", _photo(3), progressive=True),
        _save_jpeg(root / "upright.jpg", _photo(4), exif=exif),
    ]
    cio.write_image(root / "a.png", np.moveaxis(_photo(5), -1, 0) / np.float32(255))
    cio.write_image(root / "b16.png", np.moveaxis(_photo(6), -1, 0) / np.float32(255),
                    bit_depth=16)  # fmt: skip
    cio.write_image(root / "c.tif", np.moveaxis(_photo(7), -1, 0) / np.float32(255))
    return [*files, root / "a.png", root / "b16.png", root / "c.tif"]


# ---------------------------------------------------------------------------- decoding
def test_jpegs_decode_to_the_general_readers_samples(tmp_path):
    """The fast JPEG decode gives the samples libvips gives, bit for bit."""
    for path in _folder(tmp_path / "in")[:5]:
        fast = small.read_small(path, max_pixels=None)
        assert fast is not None, path
        general = stream.open_source(path, max_pixels=None)
        want = np.asarray(general.read_rows(0, general.info.height))
        general.close()
        assert fast.info == general.info, path
        np.testing.assert_array_equal(fast.samples, want)


@pytest.mark.parametrize("cut", ["part", "end-marker"])
def test_a_truncated_jpeg_is_refused_as_the_general_reader_refuses_it(tmp_path, cut):
    """libjpeg through imagecodecs would fill a cut file's missing rows with grey: the
    file goes to the general reader, which refuses it."""
    good = _save_jpeg(tmp_path / "good.jpg", _photo(0, h=64, w=96))
    data = good.read_bytes()
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(data[: len(data) * 3 // 4] if cut == "part" else data[:-2])
    with pytest.raises(InputError, match=r"cut\.jpg: truncated image data$"):
        small.read_small(bad, max_pixels=None)


@pytest.mark.parametrize("orientation", [3, 6])
def test_a_rotated_jpeg_is_read_upright(tmp_path, orientation):
    exif = PILImage.Exif()
    exif[0x0112] = orientation
    path = _save_jpeg(tmp_path / "r.jpg", _photo(0, h=20, w=30), exif=exif)
    source = small.read_small(path, max_pixels=None)
    want = cio.read_image(path).data
    assert source.samples.shape == (want.shape[1], want.shape[2], 3)
    np.testing.assert_array_equal(np.moveaxis(source.samples, -1, 0) / np.float32(255), want)


def test_large_images_are_left_to_the_strips(tmp_path):
    path = _save_jpeg(tmp_path / "big.jpg", _photo(0, h=40, w=50))
    assert small.read_small(path, max_pixels=None, limit=40 * 50 * 3) is not None
    assert small.read_small(path, max_pixels=None, limit=40 * 50 * 3 - 1) is None
    png = tmp_path / "big.png"
    cio.write_image(png, np.zeros((3, 40, 50), np.float32))
    assert small.read_small(png, max_pixels=None, limit=40 * 50 * 3 - 1) is None
    np.save(tmp_path / "a.npy", np.zeros((3, 4, 5), np.float32))
    assert small.read_small(tmp_path / "a.npy", max_pixels=None) is None  # a memory map


@pytest.mark.parametrize("quality", [95, 75])
@pytest.mark.parametrize("channels", [3, 1])
def test_jpeg_encoding_decodes_as_the_strip_encoders_output(quality, channels):
    """Same quality and chroma subsampling as the strip pipeline's encoder: the two
    files decode to the same pixels."""
    samples = _photo(1, h=48, w=64, channels=channels)
    target = stream.Target("JPEG", 48, 64, channels, np.dtype(np.uint8), False, quality)
    ours = small._jpeg(samples, target)
    theirs = io.BytesIO()
    stream.write_rows(theirs, [samples], target, name="x.jpg")
    a = np.asarray(PILImage.open(io.BytesIO(ours)))
    b = np.asarray(PILImage.open(io.BytesIO(theirs.getvalue())))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - samples.squeeze().astype(int)).mean() < 3  # a real image


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_pad_follows_the_padding_mode(mode):
    x = np.arange(5 * 7 * 2, dtype=np.uint16).reshape(5, 7, 2)
    filt = cbatch.Filter(weight=np.ones((3, 5), np.float32), padding_mode=mode)
    spec = filt.spec_for((2, 5, 7))
    np_mode = {"zeros": "constant", "replicate": "edge", "circular": "wrap"}.get(mode, mode)
    want = np.pad(x, ((1, 1), (2, 2), (0, 0)), mode=np_mode)
    np.testing.assert_array_equal(native.pad_samples(x, spec.pad, spec.padding_mode), want)


# ---------------------------------------------------------------------------- the batch
@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_opencl_pads_through_maps_with_the_padded_copys_levels(tmp_path, monkeypatch, mode):
    """On OpenCL the small path makes no padded copy (the two-pass kernels read the
    image through the padding's maps) and writes, bit for bit, the levels of filtering
    the padded copy; within one level of the float64 result. An even kernel side pads
    lopsidedly ('same': the odd pixel right and bottom)."""
    from conftest import opencl_available

    if not opencl_available():
        pytest.skip("no OpenCL device")
    root = tmp_path / "in"
    root.mkdir()
    files = [_save_jpeg(root / "rgb.jpg", _photo(0, h=29, w=41)),
             _save_jpeg(root / "grey.jpg", _photo(1, h=23, w=37, channels=1))]  # fmt: skip
    cio.write_image(root / "c16.png", np.moveaxis(_photo(2, h=17, w=31), -1, 0) / np.float32(255),
                    bit_depth=16)  # fmt: skip
    files.append(root / "c16.png")
    kernel = np.outer(BINOMIAL[:, 0], [1, 3, 3, 1]).astype(np.float32)
    kernel /= kernel.sum()  # 5x4, rank 1: two passes on OpenCL
    filt = cbatch.Filter(weight=kernel, padding_mode=mode)
    copies: list = []
    real = native.pad_samples
    monkeypatch.setattr(native, "pad_samples", lambda *a: copies.append(a) or real(*a))
    plan = cbatch.plan_batch(root, tmp_path / "out", fmt="png")
    res = cbatch.run_tasks(plan.tasks, filt, engine=cbatch.Engine("opencl"))
    assert res.ok and len(res.done) == 3, res.failed
    assert copies == []
    for src in files:
        decoded = small.read_small(src, max_pixels=None)
        samples, top = decoded.samples, decoded.info.top
        spec = filt.spec_for((samples.shape[2], *samples.shape[:2]))
        assert spec.pad == (2, 2, 1, 2)
        out_top = 65535 if samples.dtype == np.uint16 else 255
        want = native.filter_strip(real(samples, spec.pad, mode), top=top, kernel=kernel,
                                   out_top=out_top, backend="opencl")  # fmt: skip
        got = _levels(tmp_path / "out" / (src.stem + ".png"))
        np.testing.assert_array_equal(got, np.moveaxis(want, -1, 0), err_msg=src.name)
        ref = np.rint(_reference(src, kernel, mode) * out_top)
        assert np.abs(got - ref).max() <= 1, src.name


def _spy(monkeypatch) -> list[Path]:
    """The sources of the images the strip pipeline convolved."""
    seen: list[Path] = []
    real = pipeline.ImageJob.convolve_strips

    def spy(self, **kw):
        seen.append(self.src)
        return real(self, **kw)

    monkeypatch.setattr(pipeline.ImageJob, "convolve_strips", spy)
    return seen


@pytest.mark.parametrize("backend", ["numpy", "auto"])
def test_small_images_give_the_strip_pipelines_pixels(tmp_path, monkeypatch, backend):
    """Every format through the small path: within one level of the float64 reference
    and of the strip pipeline (JPEG outputs checked as decoded pixels, within the
    codec's error); none of them went through the strips."""
    files = _folder(tmp_path / "in")
    filt = cbatch.Filter(weight=BINOMIAL)
    plan = cbatch.plan_batch(tmp_path / "in", tmp_path / "whole")
    seen = _spy(monkeypatch)
    res = cbatch.run_tasks(plan.tasks, filt, engine=cbatch.Engine(backend))
    assert res.ok and len(res.done) == len(files), res.failed
    assert seen == []
    assert res.info.algo.startswith("native")
    strips = cbatch.plan_batch(tmp_path / "in", tmp_path / "strips")
    res = cbatch.run_tasks(strips.tasks, filt, engine=cbatch.Engine(backend), small_bytes=0)
    assert res.ok and len(seen) == len(files)
    for src in files:
        name = src.name
        whole, strip = tmp_path / "whole" / name, tmp_path / "strips" / name
        lossy = src.suffix == ".jpg"
        assert np.abs(_levels(whole) - _levels(strip)).max() <= (2 if lossy else 1), name
        ref = _reference(src, BINOMIAL)
        top = 65535 if "16" in name else 255
        err = np.abs(_levels(whole) - np.rint(ref * top))
        if lossy:  # the JPEG encoder's own error (exactness: the lossless test below)
            assert err.max() <= 8 and err.mean() < 1, (name, err.max(), err.mean())
        else:
            assert err.max() <= 1, (name, err.max())


def test_lossless_outputs_of_the_small_path_are_within_one_level(tmp_path):
    """JPEG inputs into TIFF: every pixel within one level of the float64 result."""
    files = _folder(tmp_path / "in")
    kernel = np.asarray(get_preset("gaussian:sigma=1.5").kernel, np.float32)
    plan = cbatch.plan_batch(tmp_path / "in", tmp_path / "out", fmt="tif")
    res = cbatch.run_tasks(plan.tasks, cbatch.Filter(weight=kernel), engine=cbatch.Engine())
    assert res.ok
    for src in files:
        got = cio.read_image(tmp_path / "out" / (src.stem + ".tif"))
        top = 65535 if got.bit_depth == 16 else 255
        ref = np.rint(_reference(src, kernel) * top)
        assert np.abs(np.rint(got.data.astype(np.float64) * top) - ref).max() <= 1, src


def test_large_images_and_the_float_path_take_the_strips(tmp_path, monkeypatch):
    """An image over the limit, and one the fused step does not filter (alpha), go
    through the strips; the small ones beside them do not."""
    root = tmp_path / "in"
    root.mkdir()
    _save_jpeg(root / "small.jpg", _photo(0, h=20, w=30))
    _save_jpeg(root / "large.jpg", _photo(1, h=40, w=60))
    rgba = np.concatenate([np.moveaxis(_photo(2, h=20, w=30), -1, 0) / np.float32(255),
                           np.full((1, 20, 30), 0.5, np.float32)])  # fmt: skip
    cio.write_image(root / "alpha.png", rgba)
    seen = _spy(monkeypatch)
    plan = cbatch.plan_batch(root, tmp_path / "out")
    res = cbatch.run_tasks(plan.tasks, cbatch.Filter(weight=BINOMIAL),
                           engine=cbatch.Engine("numpy"), small_bytes=20 * 30 * 4)  # fmt: skip
    assert res.ok and len(res.done) == 3
    assert sorted(p.name for p in seen) == ["alpha.png", "large.jpg"]
    for name in ("small.jpg", "large.jpg"):
        ref = np.rint(_reference(root / name, BINOMIAL) * 255)
        err = np.abs(_levels(tmp_path / "out" / name) - ref)
        assert err.max() <= 8 and err.mean() < 1
    got = cio.read_image(tmp_path / "out" / "alpha.png")
    assert got.has_alpha and got.data.shape == (4, 20, 30)


def test_bad_files_fail_one_line_each_and_the_batch_goes_on(tmp_path):
    """The small path reports what the strip pipeline reports, file by file."""
    root = tmp_path / "in"
    root.mkdir()
    good = _save_jpeg(root / "good.jpg", _photo(0, h=64, w=96))
    data = good.read_bytes()
    (root / "cut.jpg").write_bytes(data[: len(data) * 3 // 4])
    (root / "text.jpg").write_text("this is not a JPEG\n")
    (root / "empty.png").write_bytes(b"")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)
    filt = cbatch.Filter(weight=BINOMIAL)
    reasons = {}
    for limit in (None, 0):
        plan = cbatch.plan_batch(root, tmp_path / f"out{limit}")
        events: list[cbatch.Event] = []
        res = cbatch.run_tasks(plan.tasks, filt, engine=cbatch.Engine("numpy"),
                               on_event=events.append, small_bytes=limit)  # fmt: skip
        assert [t.src.name for t in res.done] == ["good.jpg"]
        assert sorted(e.task.src.name for e in events) == sorted(p.name for p in root.iterdir())
        reasons[limit] = {f.path.name: f.reason for f in res.failed}
        assert all("\n" not in r for r in reasons[limit].values())
        assert sorted(p.name for p in (tmp_path / f"out{limit}").iterdir()) == ["good.jpg"]
    assert reasons[None] == {k: v.replace("out0", "outNone") for k, v in reasons[0].items()}
    assert reasons[None]["cut.jpg"] == f"{root / 'cut.jpg'}: truncated image data"


def test_existing_outputs_are_never_clobbered(tmp_path, monkeypatch):
    files = _folder(tmp_path / "in")[:3]
    out = tmp_path / "out"
    out.mkdir()
    (out / files[0].name).write_bytes(b"mine")
    filt = cbatch.Filter(weight=BINOMIAL)
    engine = cbatch.Engine("numpy")
    plan = cbatch.plan_files(files, out)
    res = cbatch.run_tasks(plan.tasks, filt, engine=engine, existing="fail")
    assert [f.path.name for f in res.failed] == [files[0].name]
    assert "exists" in res.failed[0].reason
    assert (out / files[0].name).read_bytes() == b"mine"
    res = cbatch.run_tasks(plan.tasks, filt, engine=engine, existing="skip")
    assert sorted(t.src.name for t in res.skipped) == sorted(p.name for p in files)
    assert (out / files[0].name).read_bytes() == b"mine"
    # another run creates an output while this one decodes it: that file wins
    (out / files[1].name).unlink()
    real = small.read_small

    def racing(path, **kw):
        if path.name == files[1].name:
            (out / path.name).write_bytes(b"theirs")
        return real(path, **kw)

    monkeypatch.setattr(small, "read_small", racing)
    res = cbatch.run_tasks(plan.tasks, filt, engine=engine, existing="skip")
    assert sorted(t.src.name for t in res.skipped) == sorted(p.name for p in files)
    assert (out / files[1].name).read_bytes() == b"theirs"
    (out / files[1].name).unlink()
    res = cbatch.run_tasks(plan.tasks, filt, engine=engine, existing="fail")
    assert (out / files[1].name).read_bytes() == b"theirs"
    failed = {f.path.name: f.reason for f in res.failed}
    assert "another run wrote it meanwhile" in failed[files[1].name]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in files)  # no temps


def test_a_full_disk_stops_the_small_path(tmp_path, monkeypatch):
    root = tmp_path / "in"
    root.mkdir()
    for i in range(12):
        _save_jpeg(root / f"{i:02d}.jpg", _photo(i, h=16, w=20))
    calls = []
    real = small.publish

    def failing(path, write, **kw):
        calls.append(path)
        if len(calls) >= 3:
            raise InputError(f"{path}: cannot write: no space left on device")
        return real(path, write, **kw)

    monkeypatch.setattr(small, "publish", failing)
    plan = cbatch.plan_batch(root, tmp_path / "out")
    res = cbatch.run_tasks(plan.tasks, cbatch.Filter(weight=BINOMIAL),
                           engine=cbatch.Engine("numpy"), workers=2)  # fmt: skip
    assert res.fatal is not None and "no space left" in res.fatal
    assert len(res.done) + len(res.failed) < 12
    assert sorted((tmp_path / "out").iterdir()) == sorted(t.dst for t in res.done)


def test_a_stop_writes_what_is_running_and_reports_it(tmp_path, monkeypatch):
    root = tmp_path / "in"
    root.mkdir()
    for i in range(16):
        _save_jpeg(root / f"{i:02d}.jpg", _photo(i, h=16, w=20))
    stop = threading.Event()
    real = small.read_small

    def reading(path, **kw):
        if path.name == "03.jpg":
            stop.set()
        return real(path, **kw)

    monkeypatch.setattr(small, "read_small", reading)
    plan = cbatch.plan_batch(root, tmp_path / "out")
    res = cbatch.run_tasks(plan.tasks, cbatch.Filter(weight=BINOMIAL),
                           engine=cbatch.Engine("numpy"), stop=stop, workers=2)  # fmt: skip
    assert res.interrupted and not res.failed
    assert 1 <= len(res.done) < 16
    # every file written is reported, none is left half-written
    assert sorted((tmp_path / "out").iterdir()) == sorted(t.dst for t in res.done)


def test_the_summary_counts_the_small_images(tmp_path):
    files = _folder(tmp_path / "in")
    plan = cbatch.plan_batch(tmp_path / "in", tmp_path / "out")
    res = cbatch.run_tasks(plan.tasks, cbatch.Filter(weight=BINOMIAL),
                           engine=cbatch.Engine("numpy"))  # fmt: skip
    summary = res.summary()
    assert summary["done"] == len(files) and summary["failed"] == 0
    assert summary["backend"] == "numpy" and summary["algo"] == "native-separable"
    assert summary["tiles"] == len(files)
    assert summary["megapixels"] == pytest.approx(len(files) * 37 * 53 / 1e6)
    assert sorted(summary["outputs"]) == sorted(str(t.dst) for t in plan.tasks)


def test_every_image_keeps_its_notes(tmp_path, monkeypatch):
    """What the reader notes reaches each image's done event and the summary, also for
    the images after the first of a size (whose plan is kept)."""
    root = tmp_path / "in"
    root.mkdir()
    for i in range(3):
        cio.write_image(root / f"{i}.png", np.moveaxis(_photo(i), -1, 0) / np.float32(255))
    real_open = stream.open_source

    def open_with_note(path, **kw):
        source = real_open(path, **kw)
        source.info.notes.append(f"odd header in\n {Path(path).name}")
        return source

    monkeypatch.setattr(stream, "open_source", open_with_note)
    events: list[cbatch.Event] = []
    plan = cbatch.plan_batch(root, tmp_path / "out", fmt="jpg")
    res = cbatch.run_tasks(plan.tasks, cbatch.Filter(weight=BINOMIAL),
                           engine=cbatch.Engine("numpy"), on_event=events.append,
                           output=cbatch.Output(bit_depth=16))  # fmt: skip
    assert res.ok
    for event in events:
        name = event.task.src.name
        assert event.notes == (
            f"odd header in {name}",
            "JPEG holds 8 bits per channel: written at 8 bits, not 16",
        ), event.notes
    assert len(res.notes) == 6


@pytest.mark.parametrize(
    "expected, most, waits",
    [
        (None, None, False),  # auto would not start OpenCL for these images
        (5.0, None, False),  # a long start expected (a program to build)
        (0.05, None, True),  # a short start: the others wait for it
        (0.05, 0.1, False),  # ... but not past START_WAIT_MOST after it began
    ],
)
def test_images_run_on_numpy_while_opencl_starts(tmp_path, monkeypatch, expected, most, waits):
    """Under auto, one image starts OpenCL; the others wait for it where the cost model
    expects a short start, else are filtered on NumPy meanwhile, and the batch reports
    the backend that ran once started."""
    import time

    asked: list[int] = []

    def start_seconds(strip, **kw):
        asked.append(kw["strips"])
        return expected

    monkeypatch.setattr(native, "opencl_start_seconds", start_seconds)
    if most is not None:
        monkeypatch.setattr(cbatch, "START_WAIT_MOST", most)

    root = tmp_path / "in"
    root.mkdir()
    for i in range(8):
        _save_jpeg(root / f"{i}.jpg", _photo(i, h=16, w=20))
    started: list[object] = []
    monkeypatch.setattr("convcli.backends.started_opencl", lambda device=None: started[-1:] or None)
    real = native.filter_strip
    calls: list[str] = []

    def fake(strip, *, backend, info, **kw):
        calls.append(backend)
        result = real(strip, backend="numpy", info=info, **kw)
        if backend == "auto":  # "OpenCL": its first call starts it
            if not started:
                time.sleep(0.5)
                started.append(object())
            info.backend, info.device = "opencl", "a fake device"
        return result

    monkeypatch.setattr(native, "filter_strip", fake)
    real_read = small.read_small

    def read(path, **kw):  # the first image is filtered while another starts OpenCL
        if path.name == "0.jpg":
            time.sleep(0.2)
        return real_read(path, **kw)

    monkeypatch.setattr(small, "read_small", read)
    plan = cbatch.plan_batch(root, tmp_path / "out")
    res = cbatch.run_tasks(plan.tasks, cbatch.Filter(weight=BINOMIAL), engine=cbatch.Engine(),
                           workers=2)  # fmt: skip
    assert res.ok and len(res.done) == 8
    if waits:
        assert calls == ["auto"] * 8
    else:
        assert calls[0] == "auto" and "numpy" in calls and calls.count("numpy") < 8
    assert asked and all(n >= 1 for n in asked)  # priced once per plan, for the images ahead
    summary = res.summary()
    assert summary["backend"] == "opencl" and summary["device"] == "a fake device"
    assert summary["notices"] == [] and summary["tiles"] == 8


def test_warnings_from_numpys_threads_name_their_image(tmp_path):
    """NumPy filters an image on helper threads: what they warn about (an overflow of a
    huge scale) is a note of that image, not of another one running beside it."""
    root = tmp_path / "in"
    root.mkdir()
    for i in range(4):  # large enough for NumPy's threads (values x taps >= 2e6)
        _save_jpeg(root / f"{i}.jpg", _photo(i, h=160, w=440))
    (root / "tame.jpg").write_bytes((root / "0.jpg").read_bytes())
    events: list[cbatch.Event] = []
    plan = cbatch.plan_batch(root, tmp_path / "out")
    stray: list = []
    with cnotes.collect(stray, every_thread=True):  # as the CLI collects what is left
        res = cbatch.run_tasks(plan.tasks, cbatch.Filter(weight=BINOMIAL),
                               engine=cbatch.Engine("numpy"), output=cbatch.Output(scale=1e38),
                               on_event=events.append, workers=2)  # fmt: skip
    assert res.ok and len(events) == 5
    for event in events:
        assert any("overflow" in n for n in event.notes), (event.task.src.name, event.notes)
    assert [str(w.message) for w in stray] == []


def test_blas_stays_at_one_thread_while_numpy_filters_and_is_given_back(tmp_path, monkeypatch):
    """Several images filtered on NumPy at once: BLAS is held at one thread for the run
    (flipping it per call made its threads spin), and given back afterwards."""
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas_threads() -> list[int]:
        return [i["num_threads"] for i in threadpoolctl.threadpool_info()
                if i["user_api"] == "blas"]  # fmt: skip

    before = blas_threads()
    if not before:
        pytest.skip("no BLAS library found by threadpoolctl")
    root = tmp_path / "in"
    root.mkdir()
    for i in range(4):
        _save_jpeg(root / f"{i}.jpg", _photo(i, h=16, w=20))
    seen: list[list[int]] = []
    real = native.filter_strip

    def spy(*a, **k):
        seen.append(blas_threads())
        return real(*a, **k)

    monkeypatch.setattr(native, "filter_strip", spy)
    plan = cbatch.plan_batch(root, tmp_path / "out")
    res = cbatch.run_tasks(plan.tasks, cbatch.Filter(weight=BINOMIAL),
                           engine=cbatch.Engine("numpy"))  # fmt: skip
    assert res.ok and len(seen) == 4
    assert all(threads == [1] * len(before) for threads in seen), seen
    assert blas_threads() == before
