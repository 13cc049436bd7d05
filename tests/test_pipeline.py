"""The strip pipeline (convcli.pipeline through convcli.batch.run_tasks) against the
whole-image path it replaced: the same output files, bit for bit."""

from __future__ import annotations

import threading
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import opencl_available

from convcli import batch as cbatch
from convcli import io as cio
from convcli import pipeline, pixels
from convcli.io import stream
from convcli.presets import get_preset
from convcli.spec import source_index

MODES = ("zeros", "reflect", "replicate", "circular", "symmetric")
_KEPT = ("premultiply", "premultiply-keep", "keep")


# ------------------------------------------------------------------ the old whole path
def _old_map(data: np.ndarray, out: cbatch.Output, *, alpha: bool) -> np.ndarray:
    """batch._map as it was before the strips (whole image, one min/max)."""
    if not alpha or data.shape[0] < 2:
        return pixels.map_output(data, out.out_map, scale=out.scale, offset=out.offset)
    a = pixels.map_output(data[-1:], "clip")
    if out.out_map != "normalize":
        colour = pixels.map_output(data[:-1], out.out_map, scale=out.scale, offset=out.offset)
        return np.concatenate([colour, a])
    colour = pixels.map_output(data[:-1], "clip", scale=out.scale, offset=out.offset, clip=False)
    shown = colour * a
    finite = shown[np.isfinite(shown) & (a > 0)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if hi > lo:
        colour = pixels.map_output(colour, "clip", scale=1 / (hi - lo), offset=-lo / (hi - lo))
    else:
        colour = np.zeros_like(colour)
    return np.concatenate([colour, a])


def old_path(src: Path, dst: Path, filt, engine, out: cbatch.Output) -> None:
    """What run_tasks did before the strips: decode whole, one conv2d call on the float
    image, alpha, mapping, write_image."""
    image = cio.read_image(src, max_pixels=None)
    alpha = out.alpha
    conv_filt, colour_bias = filt, None
    if image.has_alpha:
        alpha, _ = cbatch.alpha_rule(filt, image.channels, alpha)
        conv_filt, colour_bias = filt.split_bias(image.channels, alpha)  # the colour's bias
    channels, kept = pixels.prepare_alpha(image, alpha)
    result = cbatch.apply_filter(np.ascontiguousarray(channels, np.float32), conv_filt, engine)
    if kept is not None:
        kept = cbatch.sample_alpha(kept, filt)
    data = pixels.finish_alpha(
        result, kept, alpha, has_alpha=image.has_alpha, colour_bias=colour_bias
    )
    suffix = dst.suffix.lower()
    plain = out.out_map == "clip" and out.scale == 1.0 and out.offset == 0.0
    if (suffix == ".npy" and not out.raw_npy) or (suffix != ".npy" and not plain):
        data = _old_map(data, out, alpha=image.has_alpha and alpha in _KEPT)
    elif suffix != ".npy":  # a plain clip: write_image rounds, but keeps float32 as it is
        data = np.clip(np.nan_to_num(data, nan=0.0), 0, 1)
    depth = out.bit_depth or cbatch.default_bit_depth(image.bit_depth, suffix)
    # the last channel is alpha where the input's is carried into the result; JPEG and
    # BMP drop only that one, and refuse a last channel nothing calls alpha
    carried = image.has_alpha and (
        alpha in _KEPT or (alpha == "filter" and result.shape[0] == image.channels)
    )
    has_alpha = True if carried else False if suffix in (".jpg", ".bmp") else None
    cio.write_image(dst, data, bit_depth=depth, quality=out.quality, has_alpha=has_alpha)


def _stored(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path)
    return cio.read_image(path, max_pixels=None).data


def _new(src, dst, filt, engine, out, **kw) -> cbatch.BatchResult:
    kw.setdefault("small_bytes", 0)  # through the strips (small images run whole)
    res = cbatch.run_tasks([cbatch.Task(src, dst)], filt, engine=engine, output=out, **kw)
    assert res.ok, [f.reason for f in res.failed]
    return res


# ------------------------------------------------------------------ random cases
def _random_input(rng: np.random.Generator, folder: Path, i: int) -> Path:
    kind = rng.choice(["png8", "png16", "tif8", "tif16", "tif32", "npy", "npy8"])
    channels = int(rng.choice([1, 2, 3, 4]))
    h, w = int(rng.integers(9, 40)), int(rng.integers(9, 40))
    data = rng.random((channels, h, w)).astype(np.float32)
    if channels in (2, 4) and rng.random() < 0.4:
        data[-1] = np.where(rng.random((h, w)) < 0.3, 0, data[-1])  # transparent holes
    path = folder / f"in{i}.{kind[:3]}"
    if kind == "npy":
        np.save(path, data)
    elif kind == "npy8":
        np.save(path, (data * 255).astype(np.uint8))
    else:
        depth = int(kind[3:])
        cio.write_image(path, data, bit_depth=depth)
    return path


def _random_filter(rng: np.random.Generator, channels: int) -> cbatch.Filter:
    stride = int(rng.choice([1, 1, 2, 3]))
    dilation = int(rng.choice([1, 1, 2]))
    kh, kw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    mode = str(rng.choice(MODES))
    bias = None
    if rng.random() < 0.3:
        bias = np.array([rng.normal() * 0.1], np.float32)
    if rng.random() < 0.3 and channels > 1:  # a 4-D weight over every channel
        c_out = int(rng.choice([channels, 1, 3]))
        weight = rng.normal(size=(c_out, channels, kh, kw)).astype(np.float32) / (kh * kw)
        if bias is not None:
            bias = rng.normal(size=c_out).astype(np.float32) * 0.1
    else:
        weight = rng.random((kh, kw)).astype(np.float32)
        if rng.random() < 0.7:
            weight /= weight.sum()  # a blur: alpha filtered with the colour
        else:
            weight -= weight.mean()  # an edge kernel: alpha kept
    padding = None
    if stride == 1 and rng.random() < 0.4:
        padding = str(rng.choice(["same", "valid"]))
    elif rng.random() < 0.3:
        padding = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
    return cbatch.Filter(weight=weight, bias=bias, stride=stride, padding=padding,
                         dilation=dilation, padding_mode=mode)  # fmt: skip


def _random_output(rng: np.random.Generator) -> tuple[cbatch.Output, str]:
    suffix = str(rng.choice([".png", ".tif", ".npy", ".npy", ".jpg", ".bmp"]))
    out = cbatch.Output(
        out_map=str(rng.choice(pixels.OUT_MAPS)),
        scale=float(rng.choice([1.0, 1.0, 0.5, 3.0])),
        offset=float(rng.choice([0.0, 0.0, 0.25, -0.1])),
        bit_depth=rng.choice([None, None, 8, 16, 32]) if suffix == ".tif" else None,
        alpha=str(rng.choice(pixels.ALPHA_MODES)),
        raw_npy=bool(rng.random() < 0.5),
    )
    return out, suffix


def _fits(filt: cbatch.Filter, src: Path, alpha: str) -> bool:
    image = cio.read_image(src)
    channels = image.channels
    if image.has_alpha:
        mode, _ = cbatch.alpha_rule(filt, channels, alpha)
        if mode in ("keep", "drop"):
            channels -= 1
    try:
        spec = filt.spec_for((channels, *image.size))
    except ValueError:
        return False
    return spec.h_out > 0 and spec.w_out > 0


def _same_file(new: Path, old: Path, exact: bool, msg: str) -> None:
    got, want = _stored(new), _stored(old)
    if exact:
        np.testing.assert_array_equal(got, want, err_msg=msg)
        return
    # BLAS-based paths (a weight over several channels) block a strip's matrices
    # differently from the whole image's: float32 within an ulp or two, so a stored
    # level at most one apart
    levels = {".png": 65535, ".tif": 65535}.get(new.suffix, 255)
    atol = 2e-6 if new.suffix == ".npy" else 1.01 / levels
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=atol, err_msg=msg)


@pytest.mark.parametrize("seed", range(8))
def test_random_cases_give_the_whole_image_files(tmp_path, seed):
    """Every option (alpha modes, out_map, scale/offset, depths, raw .npy, stride,
    dilation, padding and its modes, 'same' with even kernels, 4-D weights, bias) and
    strips of 1 to 100 rows: the file the whole-image path wrote. Bit for bit where a
    kernel goes over each channel alone (the tap accumulation of NumPy's direct path)."""
    rng = np.random.default_rng(seed)
    engine = cbatch.Engine("numpy", algo="direct")
    checked = 0
    for i in range(12):
        src = _random_input(rng, tmp_path, i)
        channels = cio.read_image(src).channels
        filt = _random_filter(rng, channels)
        out, suffix = _random_output(rng)
        if not _fits(filt, src, out.alpha):
            continue
        old, new = tmp_path / f"old{i}{suffix}", tmp_path / f"new{i}{suffix}"
        try:
            old_path(src, old, filt, engine, out)
        except ValueError:  # a result the format cannot hold: the new path says so too
            res = cbatch.run_tasks([cbatch.Task(src, new)], filt, engine=engine, output=out,
                                   small_bytes=0)  # fmt: skip
            assert res.failed and not new.exists()
            continue
        rows = int(rng.choice([1, 2, 3, 5, 100]))
        _new(src, new, filt, engine, out, strip_rows=rows)
        _same_file(new, old, filt.depthwise, f"{filt} {out} {rows}")
        checked += 1
    assert checked >= 4


@pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")
def test_opencl_strips_give_the_whole_image_file(tmp_path):
    rng = np.random.default_rng(5)
    src = tmp_path / "in.png"
    cio.write_image(src, rng.random((4, 70, 53)).astype(np.float32))
    engine = cbatch.Engine("opencl")
    for kernel in (np.full((5, 5), 1 / 25, np.float32), rng.random((4, 3)).astype(np.float32)):
        filt = cbatch.Filter(weight=kernel, padding_mode="reflect")
        old_path(src, tmp_path / "old.png", filt, engine, cbatch.Output())
        for rows in (1, 7, 64):
            _new(src, tmp_path / "new.png", filt, engine, cbatch.Output(), strip_rows=rows)
            np.testing.assert_array_equal(
                _stored(tmp_path / "new.png"), _stored(tmp_path / "old.png")
            )


# ------------------------------------------------------------------ strips and padding
def _photo(path: Path, h: int = 61, w: int = 37, channels: int = 3, seed: int = 0) -> Path:
    data = np.random.default_rng(seed).random((channels, h, w)).astype(np.float32)
    cio.write_image(path, data, bit_depth=16)
    return path


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("algo", ["direct", "separable", "fft"])
def test_every_strip_height_gives_the_same_file(tmp_path, mode, algo):
    """1 row (shorter than the 8-row halo), a few, and the whole image: every padding
    mode at the top and bottom of the image lands in the right strips."""
    src = _photo(tmp_path / "in.png")
    kernel = np.outer(np.arange(1, 8), np.arange(1, 4)).astype(np.float32)  # rank 1
    filt = cbatch.Filter(weight=kernel / kernel.sum(), dilation=(2, 1), padding_mode=mode)
    engine = cbatch.Engine("numpy", algo=algo)
    old_path(src, tmp_path / "old.npy", filt, engine, cbatch.Output())
    want = np.load(tmp_path / "old.npy")
    # independent check of the padding: the float64 correlation of the padded image
    x = cio.read_image(src).data.astype(np.float64)
    ri, rv = source_index(61, 6, 6, mode)
    ci, cv = source_index(37, 1, 1, mode)
    padded = x[:, ri][:, :, ci] * (rv[:, None] & cv[None, :])
    ref = sum(
        kernel[a, b] / kernel.sum() * padded[:, 2 * a : 2 * a + 61, b : b + 37]
        for a in range(7)
        for b in range(3)
    )
    np.testing.assert_allclose(want, ref, rtol=0, atol=1e-5)
    for rows in (1, 2, 5, 16, 33, 61):
        _new(src, tmp_path / "new.npy", filt, engine, cbatch.Output(), strip_rows=rows)
        got = np.load(tmp_path / "new.npy")
        if algo == "fft":  # a strip's last band has its own FFT size: an ulp apart
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=str(rows))
        else:
            np.testing.assert_array_equal(got, want, err_msg=str(rows))


class SequentialSource:
    """A source that decodes once from top to bottom: reads must go forward."""

    sequential = True

    def __init__(self, inner: stream.Source, log: list) -> None:
        self.inner, self.info, self.log, self.next = inner, inner.info, log, 0

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        assert y0 >= self.next and y1 > y0, (y0, y1, self.next)
        self.next = y1
        self.log.append((y0, y1))
        return self.inner.read_rows(y0, y1)

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_sequential_source_is_read_once_forward(tmp_path, monkeypatch, mode):
    """Halo rows are kept, not read again; circular padding at the top needs the last
    rows first: a second opening fetches them."""
    src = _photo(tmp_path / "in.png", h=45, w=20)
    filt = cbatch.Filter(weight=np.full((9, 3), 1 / 27, np.float32), padding_mode=mode)
    engine = cbatch.Engine("numpy", algo="direct")
    old_path(src, tmp_path / "old.png", filt, engine, cbatch.Output())
    opened: list[list] = []
    real = stream.open_source

    def sequential(path, **kw):
        opened.append([])
        return SequentialSource(real(path, **kw), opened[-1])

    monkeypatch.setattr(stream, "open_source", sequential)
    _new(src, tmp_path / "new.png", filt, engine, cbatch.Output(), strip_rows=4)
    np.testing.assert_array_equal(_stored(tmp_path / "new.png"), _stored(tmp_path / "old.png"))
    main = opened[-1] if mode != "circular" else opened[0]
    covered = sum(y1 - y0 for y0, y1 in main)
    assert covered == 45 and len(main) > 5  # every row once, in many reads
    assert len(opened) == (2 if mode == "circular" else 1)


@pytest.mark.parametrize("mode", ["reflect", "circular"])
def test_a_stride_past_the_kernel_skips_rows_of_a_sequential_source(tmp_path, monkeypatch, mode):
    """Stride 5 over a 2-row kernel: the rows between windows are never gathered (one
    output row a strip), and a sequential source is still read forward."""
    src = _photo(tmp_path / "in.png", h=47, w=23)
    filt = cbatch.Filter(weight=np.full((2, 3), 1 / 6, np.float32), stride=(5, 2),
                         padding=(3, 1), padding_mode=mode)  # fmt: skip
    engine = cbatch.Engine("numpy", algo="direct")
    old_path(src, tmp_path / "old.npy", filt, engine, cbatch.Output())
    opened: list[list] = []
    real = stream.open_source

    def sequential(path, **kw):
        opened.append([])
        return SequentialSource(real(path, **kw), opened[-1])

    monkeypatch.setattr(stream, "open_source", sequential)
    _new(src, tmp_path / "new.npy", filt, engine, cbatch.Output())
    np.testing.assert_array_equal(np.load(tmp_path / "new.npy"), np.load(tmp_path / "old.npy"))
    assert sum(y1 - y0 for y0, y1 in opened[-1]) < 47  # gaps skipped


@pytest.mark.parametrize("alpha", pixels.ALPHA_MODES)
def test_normalize_takes_two_passes_and_the_whole_range(tmp_path, monkeypatch, alpha):
    src = tmp_path / "in.png"
    rng = np.random.default_rng(3)
    data = rng.random((4, 50, 30)).astype(np.float32)
    data[:, :10] *= 0.1  # the strips' ranges differ
    cio.write_image(src, data, bit_depth=16)
    sobel = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float32)
    filt = cbatch.Filter(weight=sobel)
    out = cbatch.Output(out_map="normalize", alpha=alpha, scale=2.0)
    engine = cbatch.Engine("numpy")
    old_path(src, tmp_path / "old.png", filt, engine, out)
    opened = []
    real = stream.open_source
    monkeypatch.setattr(stream, "open_source", lambda p, **kw: opened.append(p) or real(p, **kw))
    _new(src, tmp_path / "new.png", filt, engine, out, strip_rows=7)
    assert len(opened) == 2  # the second pass reads the file again
    got = _stored(tmp_path / "new.png")
    np.testing.assert_array_equal(got, _stored(tmp_path / "old.png"))
    colour = got[:3] if alpha != "drop" else got
    assert colour.max() == 1.0  # stretched over the whole image, not per strip


def test_an_interrupt_in_the_middle_of_an_image_leaves_no_file(tmp_path, monkeypatch):
    src = _photo(tmp_path / "in.png", h=80, w=30)
    dst = tmp_path / "out.png"
    calls = []
    real = pipeline.conv2d

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)  # pragma: no cover (the native step runs this image)

    monkeypatch.setattr(pipeline, "conv2d", interrupted)
    from convcli import native

    real_native = native.filter_strip

    def interrupted_native(*a, **k):  # the fused native-depth step computes this image
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_native(*a, **k)

    monkeypatch.setattr(native, "filter_strip", interrupted_native)
    filt = cbatch.Filter(weight=np.full((3, 3), 1 / 9, np.float32))
    with pytest.raises(KeyboardInterrupt):
        cbatch.run_tasks([cbatch.Task(src, dst)], filt, engine=cbatch.Engine("numpy"),
                         strip_rows=8)  # fmt: skip
    assert len(calls) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]  # no file, no temp
    assert not [t for t in threading.enumerate() if t.name.startswith("convcli-strips")]


def test_a_failing_encoder_stops_the_convolution_and_leaves_no_file(tmp_path, monkeypatch):
    src = _photo(tmp_path / "in.png", h=200, w=30)
    dst = tmp_path / "out.png"
    calls = []
    real = pipeline.conv2d
    monkeypatch.setattr(pipeline, "conv2d", lambda *a, **k: calls.append(1) or real(*a, **k))

    def failing(fh, rows, target, *, name):
        next(iter(rows))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(stream, "write_rows", failing)
    filt = cbatch.Filter(weight=np.full((3, 3), 1 / 9, np.float32))
    res = cbatch.run_tasks([cbatch.Task(src, dst)], filt, engine=cbatch.Engine("numpy"),
                           strip_rows=2)  # fmt: skip
    assert res.fatal is not None and "no space left" in res.fatal
    assert len(calls) < 100  # it gave up early (100 strips)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


# ------------------------------------------------------------------ memory
class MemmapSource:
    """A source over a memory-mapped ``(H, W, C)`` uint8 ``.npy`` (what the streaming
    readers provide): rows come from the page cache, not the heap."""

    sequential = False

    def __init__(self, path: Path) -> None:
        self.arr = np.load(path, mmap_mode="r")
        h, w, c = self.arr.shape
        self.info = stream.ImageInfo(h, w, c, self.arr.dtype, 255.0, 8, "RGB", False)

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        return self.arr[y0:y1]

    def close(self) -> None:
        self.arr = None


def _hwc_rows(fh, rows, target, *, name):
    """A sink that writes rows as they come, as an ``(H, W, C)`` float32 ``.npy``."""
    shape = (target.height, target.width, target.channels)
    np.lib.format.write_array_header_1_0(
        fh, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    for block in rows:
        fh.write(np.ascontiguousarray(block, "<f4").tobytes())


def test_peak_memory_is_strips_not_whole_images(tmp_path, monkeypatch):
    """4000x2500 RGB 8-bit in, float32 out: one float copy of the image is 120 MB; the
    pipeline's peak (tracemalloc: every NumPy array) is a few strips and the
    convolution's workspace."""
    h, w = 2500, 4000
    src = tmp_path / "big.npy"
    ramp = np.arange(w, dtype=np.uint8)[None, :] + np.arange(h, dtype=np.uint8)[:, None]
    np.save(src, np.stack([ramp, ramp[::-1], ramp.T[:h, :w] if h >= w else ramp * 3], -1))
    monkeypatch.setattr(stream, "open_source", lambda path, **kw: MemmapSource(path))
    monkeypatch.setattr(stream, "write_rows", _hwc_rows)
    dst = tmp_path / "out.npy"
    filt = cbatch.Filter(weight=np.full((5, 5), 1 / 25, np.float32))
    engine = cbatch.Engine("numpy", algo="direct")  # the tap loop: the fastest here
    tracemalloc.start()
    try:
        res = cbatch.run_tasks([cbatch.Task(src, dst)], filt, engine=engine)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert res.ok, res.failed
    assert peak < h * w * 3 * 4 / 5, peak  # a fifth of one float copy (measured: 14 %)
    got = np.load(dst, mmap_mode="r")
    x = np.load(src, mmap_mode="r")
    for y, xx in ((0, 0), (1500, 2000), (2499, 3999), (3, 3998)):
        ys = np.clip(np.arange(y - 2, y + 3), 0, h - 1)
        xs = np.clip(np.arange(xx - 2, xx + 3), 0, w - 1)
        want = x[np.ix_(ys, xs)].astype(np.float64).mean(axis=(0, 1)) / 255
        np.testing.assert_allclose(got[y, xx], want, rtol=0, atol=1e-6)


def test_strips_are_short_under_a_memory_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(cbatch, "process_bytes", lambda: 0)
    src = _photo(tmp_path / "in.png", h=600, w=500)
    filt = cbatch.Filter(weight=np.full((3, 3), 1 / 9, np.float32))
    task = cbatch.Task(src, tmp_path / "o.png")
    free = cbatch.check_file(task, filt, cbatch.Engine("numpy"), cbatch.Output(), None)
    tight = cbatch.check_file(
        task, filt, cbatch.Engine("numpy", max_memory=40 * 2**20), cbatch.Output(), None
    )
    assert free.strip_rows is None and tight.strip_rows is not None
    assert 1 <= tight.strip_rows < 600
    whole = replace(cbatch.Engine("numpy"))
    old_path(src, tmp_path / "old.png", filt, whole, cbatch.Output())
    _new(src, tmp_path / "o.png", filt, cbatch.Engine("numpy", max_memory=40 * 2**20),
         cbatch.Output())  # fmt: skip
    np.testing.assert_array_equal(_stored(tmp_path / "o.png"), _stored(tmp_path / "old.png"))


def test_a_result_no_larger_than_its_input_is_not_refused_by_max_pixels(tmp_path):
    """The reader guards the input (a format decoded whole, against max_pixels); the
    result goes out by strips: only a result larger than its input (a huge padding) is
    refused from the header."""
    src = _photo(tmp_path / "in.png", h=100, w=80)
    task = cbatch.Task(src, tmp_path / "o.png")
    box = cbatch.Filter(weight=np.full((3, 3), 1 / 9, np.float32))
    assert cbatch.check_file(task, box, cbatch.Engine("numpy"), cbatch.Output(), 5000)
    padded = replace(box, padding=40)
    with pytest.raises(cbatch.LimitError, match="more than the limit of 5000 pixels"):
        cbatch.check_file(task, padded, cbatch.Engine("numpy"), cbatch.Output(), 5000)


def test_a_file_that_breaks_while_streaming_is_one_failure_and_no_file(tmp_path, monkeypatch):
    """A decoder that fails in the middle (a truncated JPEG read by strips): its message
    is the file's failure, the next file is done, no partial output."""
    bad, good = _photo(tmp_path / "bad.png", h=60), _photo(tmp_path / "good.png", seed=1)
    real = stream.open_source

    class Breaks:
        sequential = False

        def __init__(self, inner):
            self.inner, self.info = inner, inner.info

        def read_rows(self, y0, y1):
            if y1 > 30:
                raise cbatch.InputError(f"{bad}: truncated image data")
            return self.inner.read_rows(y0, y1)

        def close(self):
            self.inner.close()

    def opener(path, **kw):
        source = real(path, **kw)
        return Breaks(source) if Path(path) == bad else source

    monkeypatch.setattr(stream, "open_source", opener)
    tasks = [
        cbatch.Task(bad, tmp_path / "o" / "bad.png"),
        cbatch.Task(good, tmp_path / "o" / "good.png"),
    ]
    filt = cbatch.Filter(weight=np.full((3, 3), 1 / 9, np.float32))
    res = cbatch.run_tasks(tasks, filt, engine=cbatch.Engine("numpy"), strip_rows=8)
    assert [f.reason for f in res.failed] == [f"{bad}: truncated image data"]
    assert res.done == tasks[1:]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["good.png"]


@pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")
def test_auto_goes_on_with_numpy_when_opencl_fails_mid_image(tmp_path, monkeypatch):
    src = _photo(tmp_path / "in.png", h=40, w=30)
    real = pipeline.conv2d
    seen = []

    def flaky(*a, backend, **k):
        seen.append(backend)
        if backend == "opencl" and len(seen) == 2:
            raise pipeline.BackendError("device lost")
        return real(*a, backend=backend, **k)

    monkeypatch.setattr(pipeline, "conv2d", flaky)
    # auto as for an image worth OpenCL's start-up (the cost model keeps one this small
    # on NumPy from the start)
    monkeypatch.setattr("convcli.backends.choice.numpy_first", lambda *a, **k: False)
    filt = cbatch.Filter(weight=np.full((3, 3), 1 / 9, np.float32))
    res = _new(src, tmp_path / "o.npy", filt, cbatch.Engine("auto"), cbatch.Output(), strip_rows=10)
    assert seen == ["opencl", "opencl", "numpy", "numpy", "numpy"]
    assert "OpenCL failed (device lost); using NumPy" in res.info.notices
    old_path(src, tmp_path / "old.npy", filt, cbatch.Engine("numpy"), cbatch.Output())
    np.testing.assert_allclose(
        np.load(tmp_path / "o.npy"), np.load(tmp_path / "old.npy"), atol=1e-6
    )


@pytest.mark.parametrize("backend", ["numpy", "opencl"])
def test_native_depth_step_gives_the_float_path_within_one_level(tmp_path, backend):
    """Integer images without alpha, one kernel for every channel, into 8 or 16 bits:
    the fused native-depth step computes them (info says so), within one stored level
    of the whole-image float path, for the mappings, strides and padding modes it
    takes; what it does not take (normalize, alpha) runs the float path exactly."""
    if backend == "opencl" and not opencl_available():
        pytest.skip("no OpenCL device")
    rng = np.random.default_rng(11)
    kernels = [
        np.asarray(get_preset("gaussian:sigma=2").kernel, np.float32),
        np.full((5, 5), 1 / 25, np.float32),
        np.asarray(get_preset("sharpen").kernel, np.float32),
        rng.normal(size=(3, 4)).astype(np.float32),
    ]
    checked = 0
    for i in range(10):
        depth = int(rng.choice([8, 16]))
        channels = int(rng.choice([1, 3]))
        src = tmp_path / f"in{i}.{rng.choice(['png', 'tif'])}"
        cio.write_image(src, rng.random((channels, 41, 67)).astype(np.float32), bit_depth=depth)
        filt = cbatch.Filter(weight=kernels[i % len(kernels)], stride=int(rng.choice([1, 2])),
                             padding_mode=str(rng.choice(MODES)))  # fmt: skip
        # sharpen's integer taps times 0.7 land on exact half levels (ties, which
        # float32 rounding noise breaks either way in both paths): a few percent of
        # such values may round apart, never by more than one level
        out = cbatch.Output(out_map=str(rng.choice(["clip", "abs", "offset"])),
                            scale=float(rng.choice([1.0, 0.7, 3.0])),
                            offset=float(rng.choice([0.0, 0.23])))  # fmt: skip
        suffix = str(rng.choice([".png", ".tif", ".jpg"]))
        old, new = tmp_path / f"old{i}{suffix}", tmp_path / f"new{i}{suffix}"
        old_path(src, old, filt, cbatch.Engine("numpy"), out)
        res = _new(src, new, filt, cbatch.Engine(backend), out, strip_rows=int(rng.choice([3, 16])))
        assert res.info.algo.startswith("native"), res.info.algo
        if suffix == ".jpg":  # lossy: the decoded pixels of two near-equal images
            assert np.abs(_stored(new) - _stored(old)).max() <= 3 / 255
        else:
            levels = 65535 if depth == 16 and suffix != ".jpg" else 255
            diff = np.abs(np.rint(_stored(new) * levels) - np.rint(_stored(old) * levels))
            assert diff.max() <= 1 and (diff > 0).mean() < 0.03, (i, (diff > 0).mean())
        checked += 1
    assert checked == 10


def test_a_batch_spreads_opencls_start_over_the_images_still_to_come(tmp_path, monkeypatch):
    """The native step's auto weighs OpenCL's start-up against every image of the batch
    still to come (a folder of small photos pays it once), not one image's strips."""
    from convcli import native

    seen = []
    real = native.choose_backend

    def spy(plan, device=None, strips=1):
        seen.append(strips)
        return real(plan, device, strips)

    monkeypatch.setattr(native, "choose_backend", spy)
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        cio.write_image(src / f"{i}.png", rng.random((3, 20, 30)).astype(np.float32))
    plan = cbatch.plan_batch(src, tmp_path / "out")
    filt = cbatch.Filter(weight=np.full((3, 3), 1 / 9, np.float32))
    res = cbatch.run_tasks(plan.tasks, filt, engine=cbatch.Engine("auto"), workers=1,
                           small_bytes=0)  # fmt: skip
    assert len(res.done) == 3
    # one strip each: the images still to come (each image is priced once on the thread
    # that would start OpenCL beside its read, then again by its strip: the same count)
    assert list(dict.fromkeys(seen)) == [3, 2, 1], seen


def _warm_case(tmp_path: Path, monkeypatch) -> tuple[Path, cbatch.Filter]:
    """A 16-bit photo read in strips, a Gaussian through the native step, and ``auto``
    as in a fresh process with a job worth OpenCL's start-up."""
    src = _photo(tmp_path / "in.png", h=60, w=40)
    filt = cbatch.Filter(weight=np.asarray(get_preset("gaussian:sigma=1.5").kernel, np.float32))
    monkeypatch.setattr(pipeline, "started_opencl", lambda device=None: None)
    from convcli import native

    monkeypatch.setattr(native, "choose_backend", lambda plan, device=None, strips=1: "opencl")
    return src, filt


@pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")
def test_opencl_starts_on_a_thread_while_the_first_strips_are_read(tmp_path, monkeypatch):
    """The native step's OpenCL start-up and program build run beside the reading of the
    first strips (they no longer hold the reader back), and change no result."""
    from convcli import native

    src, filt = _warm_case(tmp_path, monkeypatch)
    read = threading.Event()
    seen = []
    real_strip, real_prepare = pipeline.RowReader.strip, native.prepare

    def strip(self, k, out):
        real_strip(self, k, out)
        read.set()

    def prepare(*a, **k):
        seen.append(threading.current_thread().name)
        # the start-up waits here for the reader: it cannot come first any more
        seen.append(read.wait(10))
        return real_prepare(*a, **k)

    monkeypatch.setattr(pipeline.RowReader, "strip", strip)
    monkeypatch.setattr(native, "prepare", prepare)
    out = cbatch.Output(bit_depth=16)
    res = _new(src, tmp_path / "new.png", filt, cbatch.Engine("auto"), out, strip_rows=16)
    assert seen == ["convcli-opencl", True]
    assert res.info.backend == "opencl" and res.info.algo == "native-separable"
    _new(src, tmp_path / "cl.png", filt, cbatch.Engine("opencl"), out, strip_rows=16)
    assert (tmp_path / "new.png").read_bytes() == (tmp_path / "cl.png").read_bytes()


def test_an_opencl_start_that_fails_on_its_thread_leaves_numpy_and_says_so(tmp_path, monkeypatch):
    from convcli import native

    src, filt = _warm_case(tmp_path, monkeypatch)

    def broken(*a, **k):
        raise pipeline.BackendError("no device")

    monkeypatch.setattr(native, "_run_opencl", broken)
    out = cbatch.Output(bit_depth=16)
    res = _new(src, tmp_path / "new.png", filt, cbatch.Engine("auto"), out, strip_rows=16)
    assert "OpenCL failed (no device); using NumPy" in res.info.notices
    assert res.info.backend == "numpy"
    _new(src, tmp_path / "np.png", filt, cbatch.Engine("numpy"), out, strip_rows=16)
    assert (tmp_path / "new.png").read_bytes() == (tmp_path / "np.png").read_bytes()
    # asked for by name, the failure is the file's error
    res = cbatch.run_tasks([cbatch.Task(src, tmp_path / "cl.png")], filt,
                           engine=cbatch.Engine("opencl"), output=out)  # fmt: skip
    assert [f.reason for f in res.failed] and "no device" in res.failed[0].reason
    assert not (tmp_path / "cl.png").exists()


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif"])
def test_a_file_read_by_strips_is_opened_once(tmp_path, monkeypatch, suffix):
    """The budget prices the opened source (its headers read once, what it holds): no
    header probe through Pillow, no second opening to learn whether it streams."""
    import pyvips
    import tifffile
    from PIL import Image as PILImage

    src = tmp_path / f"in{suffix}"
    x = np.random.default_rng(5).random((3, 50, 40)).astype(np.float32)
    cio.write_image(src, x, bit_depth=8)
    counts = {"vips": 0, "pil": 0, "tiff": 0}
    real_vips, real_pil, real_tiff = (
        pyvips.Image.new_from_file, PILImage.open, tifffile.TiffFile.__init__
    )  # fmt: skip

    def vips(*a, **k):
        counts["vips"] += 1
        return real_vips(*a, **k)

    def pil(*a, **k):
        counts["pil"] += 1
        return real_pil(*a, **k)

    def tiff(self, *a, **k):
        counts["tiff"] += 1
        real_tiff(self, *a, **k)

    monkeypatch.setattr(pyvips.Image, "new_from_file", vips)
    monkeypatch.setattr(PILImage, "open", pil)
    monkeypatch.setattr(tifffile.TiffFile, "__init__", tiff)
    filt = cbatch.Filter(weight=np.full((3, 3), 1 / 9, np.float32))
    from convcli.budget import process_bytes

    # the budget is checked (a limit above what this test process already holds)
    engine = cbatch.Engine("numpy", max_memory=process_bytes() + 2**30)
    _new(src, tmp_path / "out.png", filt, engine, cbatch.Output())
    want = (
        {"vips": 0, "pil": 0, "tiff": 1} if suffix == ".tif" else {"vips": 1, "pil": 0, "tiff": 0}
    )
    assert counts == want


def test_a_file_decoded_whole_is_priced_before_it_is_decoded(tmp_path, monkeypatch):
    """A BMP has no reader by strips: its header prices it (no source yet), then it is
    decoded, once."""
    from convcli.io import images

    src = tmp_path / "in.bmp"
    cio.write_image(src, np.random.default_rng(6).random((3, 30, 40)).astype(np.float32))
    events = []
    real_read, real_check = images.read_native, cbatch.check_file

    def read(*a, **k):
        events.append("decode")
        return real_read(*a, **k)

    def check(*a, **k):
        events.append(("check", a[5] if len(a) > 5 else k.get("source")))
        return real_check(*a, **k)

    monkeypatch.setattr(images, "read_native", read)
    monkeypatch.setattr(cbatch, "check_file", check)
    filt = cbatch.Filter(weight=np.full((3, 3), 1 / 9, np.float32))
    _new(src, tmp_path / "out.png", filt, cbatch.Engine("numpy"), cbatch.Output())
    assert events == [("check", None), "decode"]


@pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")
def test_native_strips_on_opencl_are_not_held_to_numpys_block_count(tmp_path, monkeypatch):
    """NumPy's rank-1 pass wants strips of 8 blocks (here 8 x 16 rows); OpenCL computes
    each row alone, so its native strips are shorter (NATIVE_OPENCL_ROWS, above the
    byte target here) and hold less in flight. Both keep NumPy's block alignment; the
    files agree within a level."""
    monkeypatch.setattr(pipeline, "STRIP_BYTES", 2**12)  # a few rows of this width
    monkeypatch.setattr(pipeline, "NATIVE_OPENCL_ROWS", 40)  # not a whole number of blocks
    src = _photo(tmp_path / "in.png", h=300, w=90)
    filt = cbatch.Filter(weight=np.full((9, 9), 1 / 81, np.float32))
    heights = {}
    real = pipeline.plan_geometry
    for backend in ("opencl", "numpy", "auto"):

        def spy(spec, rows, backend=backend):
            heights[backend] = rows
            return real(spec, rows)

        monkeypatch.setattr(pipeline, "plan_geometry", spy)
        _new(src, tmp_path / f"{backend}.png", filt, cbatch.Engine(backend), cbatch.Output())
    assert heights["numpy"] == 128
    assert heights["opencl"] == heights["auto"] == 48  # 40 rows, rounded up to 16-row blocks
    want = _stored(tmp_path / "numpy.png").astype(int)
    for backend in ("opencl", "auto"):  # auto: NumPy may run this small image
        assert np.abs(_stored(tmp_path / f"{backend}.png") - want).max() <= 1


@pytest.mark.parametrize("limited", [False, True])
def test_the_source_decodes_ahead_while_opencl_starts(tmp_path, monkeypatch, limited):
    """While OpenCL starts on its thread, a sequential source goes on decoding (within
    pipeline.READ_AHEAD_BYTES) instead of waiting for the strip buffers to come back;
    not under a memory limit (the budget prices a few runs of rows). The file is the
    one the same filter writes without any start to wait for."""
    from convcli import native
    from convcli.io import sources

    if sources._pyvips() is None:
        pytest.skip("pyvips does not load here")
    src = _photo(tmp_path / "in.png", h=3 * sources._VIPS_ALIGN + 40, w=20)
    filt = cbatch.Filter(weight=np.asarray(get_preset("gaussian:sigma=1.5").kernel, np.float32))
    monkeypatch.setattr(pipeline, "started_opencl", lambda device=None: None)
    monkeypatch.setattr(native, "choose_backend", lambda plan, device=None, strips=1: "numpy")
    ahead = []
    real_ahead = sources.VipsSource.read_ahead

    def read_ahead(self, most_bytes):
        done = real_ahead(self, most_bytes)
        ahead.append(self._decoded)
        return done

    def prepare(*a, **k):  # OpenCL's start: done once the reader has gone ahead
        for _ in range(200):
            if ahead and ahead[-1] == src_h:
                break
            threading.Event().wait(0.01)
        return "numpy"

    src_h = 3 * sources._VIPS_ALIGN + 40
    monkeypatch.setattr(sources.VipsSource, "read_ahead", read_ahead)
    monkeypatch.setattr(native, "prepare", prepare)
    out = cbatch.Output(bit_depth=16)
    from convcli.budget import process_bytes

    # a limit this process (the whole test session's, perhaps) does not already exceed
    limit = process_bytes() + 2**30 if limited else None
    engine = cbatch.Engine("auto", max_memory=limit)
    _new(src, tmp_path / "new.png", filt, engine, out, strip_rows=16)
    if limited:
        assert ahead == []
    else:
        assert ahead and ahead[-1] == src_h  # every row decoded while the start ran
    monkeypatch.undo()
    _new(src, tmp_path / "np.png", filt, cbatch.Engine("numpy"), out, strip_rows=16)
    assert (tmp_path / "new.png").read_bytes() == (tmp_path / "np.png").read_bytes()
