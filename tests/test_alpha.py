"""Alpha under the default ``--alpha premultiply``, for every preset (issue 11, item 10).

The rule: colour is always filtered premultiplied (colour x alpha) and divided by the
result's alpha; alpha is filtered with the colour only by filters that sum to 1, and
kept (sampled at each output pixel's kernel centre) otherwise. References here are
``scipy.ndimage.correlate`` and ``tests/naive.py``, not convcli's code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from naive import naive_conv2d
from scipy import ndimage

from convcli import batch as cbatch
from convcli import io as cio
from convcli import presets as cpresets

ROOT = Path(__file__).resolve().parent.parent
LEVEL = 1 / 255 + 1e-6  # one 8-bit level
ZERO_SUM = ["sobel", "laplacian", "dog", "log", "edge", "high-pass"]


def _cutout(h: int = 30, w: int = 36, seed: int = 4) -> np.ndarray:
    """An RGBA cut-out: an opaque ellipse with a soft edge, fully transparent outside,
    and bright green hidden under the transparent pixels (it must never show)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot((yy - h / 2) / (h * 0.4), (xx - w / 2) / (w * 0.4))
    alpha = np.clip((1 - r) * 6, 0, 1)
    colour = rng.random((3, h, w))
    colour[:, alpha == 0] = np.array([0.0, 1.0, 0.0])[:, None]
    return np.concatenate([colour, alpha[None]]).astype(np.float32)


def _cli(*args: object) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "convcli", *map(str, args)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def _correlate(plane: np.ndarray, k: np.ndarray) -> np.ndarray:
    # replicate padding = scipy's "nearest"; odd kernels are centred in both
    return ndimage.correlate(plane.astype(np.float64), k, mode="nearest")


@pytest.mark.parametrize("preset", ZERO_SUM)
def test_zero_sum_presets_keep_alpha_and_show_the_edges(tmp_path, preset):
    """`convcli apply rgba.png --preset sobel -o out.png`: before, alpha was 0 on
    almost every pixel (an invisible image). Now the alpha is the input's and the
    colour is the edge image of the premultiplied colour, divided by that alpha."""
    src, out = tmp_path / "rgba.png", tmp_path / "out.png"
    cio.write_image(src, _cutout())
    res = _cli("apply", src, "--preset", preset, "-o", out, "--backend", "numpy", "-q")
    assert res.returncode == 0, res.stderr
    assert res.stderr.splitlines() == [
        f"convcli: warning: {src}: alpha kept unfiltered (the kernel sums to 0, not 1)"
    ]
    x = cio.read_image(src).data.astype(np.float64)  # the 8-bit values convcli read
    got = cio.read_image(out)
    assert got.mode == "RGBA"
    np.testing.assert_array_equal(got.data[3], x[3])  # alpha untouched
    a = x[3]
    k = cpresets.get_preset(preset).kernel
    y = np.stack([_correlate(c * a, k) for c in x[:3]])
    ref = np.clip(np.where(a > 0, y / np.where(a > 0, a, 1), 0), 0, 1)
    np.testing.assert_allclose(got.data[:3], ref, atol=LEVEL)
    opaque = a == 1
    assert got.data[:3][:, opaque].max() > 0.2  # a visible edge image, not black
    assert (got.data[:3][:, a == 0] == 0).all()  # nothing under the transparency


def test_blur_on_rgba_still_filters_alpha_without_bleeding(tmp_path):
    src, out = tmp_path / "rgba.png", tmp_path / "out.png"
    cio.write_image(src, _cutout())
    res = _cli("apply", src, "--preset", "gaussian", "-o", out, "--backend", "numpy", "-q")
    assert res.returncode == 0 and res.stderr == "", res.stderr
    x = cio.read_image(src).data.astype(np.float64)
    got = cio.read_image(out).data
    k = cpresets.get_preset("gaussian").kernel
    a = _correlate(x[3], k)
    np.testing.assert_allclose(got[3], a, atol=LEVEL)
    assert (got[3] > x[3] + 0.05).any()  # the alpha was blurred, not kept
    y = np.stack([_correlate(c * x[3], k) for c in x[:3]])
    ref = np.clip(np.where(a > 0, y / np.where(a > 0, a, 1), 0), 0, 1)
    visible = got[3] > 0.05  # where 8-bit rounding of alpha leaves colour meaningful
    np.testing.assert_allclose(got[:3][:, visible], ref[:, visible], atol=3 * LEVEL)


def test_out_map_offset_leaves_kept_alpha_alone(tmp_path):
    """The edge presets suggest --out-map offset; it used to add 0.5 to alpha too,
    making the transparent outside half opaque."""
    src, out = tmp_path / "rgba.png", tmp_path / "out.png"
    cio.write_image(src, _cutout())
    res = _cli("apply", src, "--preset", "edge", "--out-map", "offset", "-o", out,
               "--backend", "numpy", "-q")  # fmt: skip
    assert res.returncode == 0, res.stderr
    x = cio.read_image(src).data.astype(np.float64)
    got = cio.read_image(out).data
    np.testing.assert_array_equal(got[3], x[3])
    a = x[3]
    k = cpresets.get_preset("edge").kernel
    y = np.stack([_correlate(c * a, k) for c in x[:3]])
    ref = np.clip(np.where(a > 0, y / np.where(a > 0, a, 1), 0) + 0.5, 0, 1)
    np.testing.assert_allclose(got[:3], ref, atol=LEVEL)


def test_every_preset_gives_a_visible_result_on_rgba(tmp_path):
    """All presets at their defaults, through the library: alpha filtered exactly when
    the kernel sums to 1, kept otherwise; no NaN; never an invisible image."""
    data = _cutout()
    src = tmp_path / "rgba.png"
    cio.write_image(src, data)
    x = cio.read_image(src).data.astype(np.float64)
    tasks, kernels = [], {}
    for p in cpresets.list_presets():
        kernels[p.name] = p.kernel
        tasks.append(cbatch.Task(src, tmp_path / f"{p.name}.npy"))
    filters = {
        p: cbatch.Filter(weight=np.ascontiguousarray(k, np.float32)) for p, k in kernels.items()
    }
    for task in tasks:
        name = task.dst.stem
        res = cbatch.run_tasks([task], filters[name], engine=cbatch.Engine("numpy"))
        assert res.ok, res.failed
        out = np.load(task.dst)  # the raw float result
        assert np.isfinite(out).all(), name
        k = kernels[name]
        if abs(k.sum() - 1) < 1e-4:
            if k.shape[0] % 2 and k.shape[1] % 2:  # scipy centres odd kernels as we do
                np.testing.assert_allclose(out[3], _correlate(x[3], k), atol=1e-5, err_msg=name)
            assert not res.notes, name
        else:
            np.testing.assert_array_equal(out[3], x[3], err_msg=name)
            assert [n for _, n in res.notes] == [
                "alpha kept unfiltered (the kernel sums to 0, not 1)"
                if abs(k.sum()) < 1e-6
                else f"alpha kept unfiltered (the kernel sums to {k.sum():.4g}, not 1)"
            ], name
        shown = np.clip(out[3], 0, 1)
        assert shown.mean() > 0.8 * x[3].mean(), name  # visible


@pytest.mark.parametrize(
    ("options", "expect"),
    [
        ({"stride": 2}, lambda a: a[:, ::2, ::2]),
        ({"stride": 3, "dilation": 2}, lambda a: a[:, ::3, ::3]),
        # padding 3 with zeros: outputs whose kernel centre lies in the padding get 0
        ({"padding": 3, "padding_mode": "zeros"}, lambda a: np.pad(a, ((0, 0), (2, 2), (2, 2)))),
        (
            {"padding": 3, "padding_mode": "replicate"},
            lambda a: np.pad(a, ((0, 0), (2, 2), (2, 2)), mode="edge"),
        ),
        ({"padding": 0}, lambda a: a[:, 1:-1, 1:-1]),
    ],
)
def test_kept_alpha_follows_stride_and_padding(tmp_path, options, expect):
    """The kept alpha is the input pixel under each output's kernel centre (3x3 sobel:
    centre offset 1), through the same padding as the colour."""
    src, dst = tmp_path / "rgba.png", tmp_path / "out.npy"
    cio.write_image(src, _cutout())
    x = cio.read_image(src).data.astype(np.float64)
    k = cpresets.get_preset("sobel").kernel
    filt = cbatch.Filter(weight=k.astype(np.float32), **options)
    res = cbatch.run_tasks([cbatch.Task(src, dst)], filt, engine=cbatch.Engine("numpy"))
    assert res.ok, res.failed
    out = np.load(dst)
    a = expect(x[3:])
    np.testing.assert_array_equal(out[3:], a)
    spec = filt.spec_for((4, *x.shape[1:]))
    w = np.broadcast_to(k, (4, 1, 3, 3))
    y = naive_conv2d(
        np.concatenate([x[:3] * x[3:], x[3:]])[None], w, None, spec.stride, spec.pad,
        spec.dilation, 4, spec.padding_mode,
    )[0].real  # fmt: skip
    colour = np.where(a > 0, y[:3] / np.where(a > 0, a, 1), 0)
    np.testing.assert_allclose(out[:3], colour, rtol=1e-5, atol=1e-5)


def test_alpha_keep_works_with_a_stride(tmp_path):
    """--alpha keep used to refuse outputs of another size; the alpha is now sampled."""
    src, out = tmp_path / "rgba.png", tmp_path / "out.png"
    cio.write_image(src, _cutout())
    res = _cli("apply", src, "--preset", "box", "--stride", "2", "--alpha", "keep", "-o", out,
               "--backend", "numpy", "-q")  # fmt: skip
    assert res.returncode == 0 and res.stderr == "", res.stderr
    x = cio.read_image(src).data
    got = cio.read_image(out).data
    np.testing.assert_array_equal(got[3], x[3, ::2, ::2])


def test_out_map_normalize_stretches_what_is_visible(tmp_path):
    """An edge kernel's colour divided by a nearly transparent alpha is huge; normalize
    used to stretch that range, leaving every visible pixel one flat grey. It stretches
    the range of colour x alpha (what a viewer sees) instead."""
    src, dst = tmp_path / "rgba.png", tmp_path / "out.png"
    cio.write_image(src, _cutout())
    x = cio.read_image(src).data.astype(np.float64)
    k = cpresets.get_preset("sobel").kernel
    filt = cbatch.Filter(weight=k.astype(np.float32))
    res = cbatch.run_tasks(
        [cbatch.Task(src, dst)], filt, engine=cbatch.Engine("numpy"),
        output=cbatch.Output(out_map="normalize"),
    )  # fmt: skip
    assert res.ok, res.failed
    got = cio.read_image(dst).data
    a = x[3]
    np.testing.assert_array_equal(got[3], a)
    y = np.stack([_correlate(c * a, k) for c in x[:3]])
    colour = np.where(a > 0, y / np.where(a > 0, a, 1), 0)
    shown = (colour * a)[:, a > 0]
    lo, hi = shown.min(), shown.max()
    ref = np.clip((colour - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(got[:3], ref, atol=LEVEL)
    opaque = got[:3][:, a == 1]
    assert opaque.max() - opaque.min() > 0.5  # a stretched edge image, not one grey


def test_a_note_every_file_shares_prints_once_then_a_count(tmp_path):
    """A batch of RGBA files under an edge kernel: a warning for each of the first
    three files and one line counting the others (not a line per file); the report
    keeps all."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        cio.write_image(folder / f"c{i}.png", _cutout(seed=i))
    report = tmp_path / "r.json"
    res = _cli("batch", folder, tmp_path / "out", "--preset", "sobel", "--backend", "numpy",
               "-q", "--report", report)  # fmt: skip
    assert res.returncode == 0, res.stderr
    note = "alpha kept unfiltered (the kernel sums to 0, not 1)"
    assert res.stderr.splitlines() == [
        *(f"convcli: warning: {folder / f'c{i}.png'}: {note}" for i in range(3)),
        f"convcli: warning: the same for 3 more files: {note}",
    ]
    import json

    notes = json.loads(report.read_text())["file_notes"]
    assert sorted(n["file"] for n in notes) == [str(folder / f"c{i}.png") for i in range(6)]
