"""A bias on an image with alpha under ``--alpha premultiply``: it is the colour's,
added once alpha is divided out (as ``--alpha keep`` adds it), never divided by alpha
and, for a 2-D kernel, never added to alpha. References: ``tests/naive.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from naive import naive_conv2d

from convcli import io as cio
from convcli.cli import cli
from convcli.errors import ConvValueError
from convcli.filters import Filter

BOX3 = np.full((3, 3), 1 / 9)
SOBEL = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float64)


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def rgba(tmp_path: Path, channels: int = 4) -> tuple[Path, np.ndarray]:
    """A 16-bit image whose alpha runs from 0.1 to 1 (no fully transparent pixel)."""
    rng = np.random.default_rng(channels)
    x = rng.random((channels, 14, 18))
    x[-1] = 0.1 + 0.9 * rng.random((14, 18))
    path = cio.write_image(tmp_path / "in.png", x, bit_depth=16)
    return path, cio.read_image(path).data.astype(np.float64)


def conv(planes: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Each plane by ``k`` with the default padding ('same', replicate)."""
    c = planes.shape[0]
    w = np.broadcast_to(k, (c, 1, *k.shape))
    return naive_conv2d(planes[None], w, pad=(1, 1, 1, 1), groups=c, padding_mode="replicate")[0]


def apply_npy(tmp_path: Path, src: Path, *args: object) -> np.ndarray:
    out = tmp_path / "out.npy"
    res = run("apply", src, *args, "--backend", "numpy", "-q", "-o", out, "--overwrite")
    assert res.exit_code == 0, res.output
    return np.load(out)


@pytest.mark.parametrize("bias", ["0.25", "0.1,-0.2,0.3"])
def test_blur_bias_is_added_to_the_colour_not_divided_by_alpha(tmp_path, bias):
    """Before: the bias went into the premultiplied colour and came out divided by
    alpha (x10 where alpha is 0.1), and into alpha too (which was then kept)."""
    src, x = rgba(tmp_path)
    b = np.broadcast_to(np.array(bias.split(","), np.float64), (3,))
    got = apply_npy(tmp_path, src, "--preset", "box", "--bias", bias)
    a = conv(x[3:], BOX3)
    colour = conv(x[:3] * x[3], BOX3) / a + b[:, None, None]
    np.testing.assert_allclose(got, np.concatenate([colour, a]), rtol=1e-5, atol=1e-5)


def test_edge_kernel_bias_with_the_alpha_kept(tmp_path):
    """A zero-sum kernel keeps alpha; its bias (an offset to see the edges) is the
    colour's: sobel(colour x alpha) / alpha + 0.5."""
    src, x = rgba(tmp_path)
    got = apply_npy(tmp_path, src, "--kernel", "1,0,-1;2,0,-2;1,0,-1", "--bias", "0.5")
    colour = conv(x[:3] * x[3], SOBEL) / x[3] + 0.5
    np.testing.assert_allclose(got, np.concatenate([colour, x[3:]]), rtol=1e-5, atol=1e-5)


def test_gray_alpha_takes_one_bias_value(tmp_path):
    src, x = rgba(tmp_path, channels=2)
    got = apply_npy(tmp_path, src, "--preset", "box", "--bias", "-0.125")
    a = conv(x[1:], BOX3)
    expect = np.concatenate([conv(x[:1] * x[1], BOX3) / a - 0.125, a])
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-5)


def test_a_bias_for_alpha_too_is_refused_with_the_counts(tmp_path):
    """One value per channel, alpha included, was taken and divided by alpha; three
    (the colour channels) were refused. The colour's count is the rule now."""
    src, _ = rgba(tmp_path)
    res = run("apply", src, "--preset", "box", "--bias", "0.1,0.2,0.3,0", "--backend", "numpy",
              "-o", tmp_path / "o.png")  # fmt: skip
    assert res.exit_code != 0
    assert res.stderr == (
        f"convcli: error: {src}: bias has 4 values but the image has 3 colour channels and "
        "alpha, which takes no bias: give 1 or 3 values, or --alpha filter to make alpha a "
        "plain channel that takes one (--bias 0.1,0.2,0.3,0)\n"
    )
    assert not (tmp_path / "o.png").exists()
    box = Filter(weight=BOX3.astype(np.float32), bias=np.ones(4, np.float32))
    with pytest.raises(ConvValueError, match=r"alpha='filter' to make alpha a plain channel"):
        box.split_bias(4, "premultiply")
    # alpha as a plain channel takes a fourth value, as before
    got = apply_npy(tmp_path, src, "--preset", "box", "--bias", "0.1,0.2,0.3,0.4",
                    "--alpha", "filter")  # fmt: skip
    x = cio.read_image(src).data.astype(np.float64)
    expect = conv(x, BOX3) + np.array([0.1, 0.2, 0.3, 0.4])[:, None, None]
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-5)


def test_weight_keeping_rgba_adds_its_colour_biases_after_the_division(tmp_path):
    """A 4-D RGBA -> RGBA weight: its last output channel makes alpha (bias included);
    its colour biases are the colour's, added once alpha is divided out."""
    src, x = rgba(tmp_path)
    rng = np.random.default_rng(11)
    w = rng.random((4, 4, 3, 3)) * 0.1
    w[3] = 0
    w[3, 3] = BOX3 * 0.9  # alpha's filter: 0.9 of a box, plus a bias of 0.1 sums to 1
    b = np.array([0.05, -0.1, 0.2, 0.1])
    np.savez(tmp_path / "w.npz", weight=w.astype(np.float32), bias=b.astype(np.float32))
    got = apply_npy(tmp_path, src, "--weights", tmp_path / "w.npz")
    pre = np.concatenate([x[:3] * x[3], x[3:]])
    y = naive_conv2d(pre[None], w.astype(np.float32), pad=(1, 1, 1, 1),
                     padding_mode="replicate")[0]  # fmt: skip
    a = y[3] + b[3]
    colour = y[:3] / a + b[:3, None, None]
    np.testing.assert_allclose(got, np.concatenate([colour, a[None]]), rtol=1e-4, atol=1e-5)
