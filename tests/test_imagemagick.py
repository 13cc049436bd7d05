"""Presets against ImageMagick's commands (issue 11, item 11).

Our presets correlate, like torch: that is IM's ``-morphology Correlate``; IM's
``-morphology Convolve`` rotates the kernel by 180 degrees, which is our ``--flip``.
``presets show`` / ``presets list --json`` name the IM command for each preset; the
tests here run it where ImageMagick is installed and compare the pixels (they skip
where it is not), and check the fields themselves everywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from convcli import batch as cbatch
from convcli import io as cio
from convcli import presets as cp
from convcli.cli import cli

ROOT = Path(__file__).resolve().parent.parent
LEVEL = 1 / 255 + 1e-6  # one 8-bit level


@lru_cache(maxsize=1)
def _imagemagick() -> tuple[list[str], str] | None:
    """A command that runs IM (IM7 ``magick`` or IM6 ``convert``) and its version line."""
    for exe in ("magick", "convert-im6.q16", "convert"):
        path = shutil.which(exe)
        if not path:
            continue
        try:
            out = subprocess.run(
                [path, "-version"], capture_output=True, text=True, timeout=20
            ).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        if "ImageMagick" in out:
            return [path], out.splitlines()[0]
    return None


def _need_im() -> list[str]:
    found = _imagemagick()
    if found is None:
        pytest.skip("ImageMagick not installed")
    return found[0]


def _magick(cmd: list[str], src: Path, args: list[str], dst: Path) -> np.ndarray:
    res = subprocess.run(
        [*cmd, str(src), "-virtual-pixel", "edge", *args, "-depth", "16", str(dst)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, (args, res.stderr)
    return cio.read_image(dst).data


def _ours(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    filt = cbatch.Filter(weight=np.ascontiguousarray(k, np.float32))
    return np.clip(cbatch.apply_filter(x, filt, cbatch.Engine("numpy")), 0, 1)


@pytest.fixture(scope="module")
def noise16(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A 16-bit RGB noise image (every pixel differs from its neighbours: a mirrored
    or shifted kernel cannot give the same result)."""
    src = tmp_path_factory.mktemp("im") / "in.png"
    rng = np.random.default_rng(11)
    cio.write_image(src, rng.random((3, 21, 23)).astype(np.float32), bit_depth=16)
    return src, cio.read_image(src).data


_CASES = [p.name for p in cp.list_presets() if p.source == "built-in"] + [
    "sobel:30",
    "kirsch:135",
    "emboss:angle=90",
    "frei-chen:type=2,angle=45",
    "laplacian:type=5",
    "blur:angle=-90",
    "comet:angle=90",
    "motion-blur:length=7,angle=30",
    "gaussian:radius=2,sigma=0.7",
    "dog:radius=3,sigma1=2,sigma2=1",
    "unsharp:amount=0.5",
    "sharpen:amount=2",
    "high-pass:sigma=1",
    "unity:scale=0.5",
    "box:size=4",
    "rectangle:width=4,height=2",
    "ring:radius1=2,radius2=4",
    "disk:radius=2",
]


@pytest.mark.parametrize("spec", _CASES)
def test_imagemagick_command_gives_our_result(spec, noise16, tmp_path):
    """``presets show``'s IM command (Correlate) equals our result, and IM's Convolve
    equals ``--flip``: within a 16-bit level (IM Q16 rounds, we use float32)."""
    cmd = _need_im()
    if spec == "ring" and " 6." in _imagemagick()[1]:
        pytest.skip("IM 6 sizes fractional-radius shapes one pixel too wide (a known IM 6 bug)")
    src, x = noise16
    p = cp.get_preset(spec)
    k = p.kernel
    got = _magick(cmd, src, p.imagemagick_args("Correlate"), tmp_path / "c.png")
    np.testing.assert_allclose(got, _ours(x, k), atol=1e-4, err_msg=spec)
    convolved = _magick(cmd, src, p.imagemagick_args("Convolve"), tmp_path / "v.png")
    if k.shape[0] % 2 and k.shape[1] % 2:  # IM also moves an even kernel's origin
        np.testing.assert_allclose(convolved, _ours(x, k[::-1, ::-1]), atol=1e-4, err_msg=spec)
    if not p.symmetric:  # the mirrored edge a Convolve user gets without --flip
        assert np.abs(convolved - _ours(x, k)).max() > 0.05, spec


_IM_NAMES = {"gaussian": "Gaussian", "blur": "Blur", "comet": "Comet", "dog": "DoG",
             "log": "LoG", "rectangle": "Rectangle", "ring": "Ring"}  # fmt: skip


@pytest.mark.parametrize(
    "spec",
    ["gaussian:3", "gaussian:2x0.8", "blur:3", "blur:4x1.5", "comet:3", "comet:4,1.5",
     "dog:3", "dog:3,1", "dog:0,1", "log:3", "log:0,1", "rectangle:5", "rectangle:x4",
     "rectangle:5x2", "ring:2", "ring:3,1.5"],
)  # fmt: skip
def test_imagemagick_geometry_string_gives_imagemagicks_kernel(spec, noise16, tmp_path):
    """The string a user types in IM's geometry form, given to IM itself, gives our
    result: parameters left out mean what IM takes for them."""
    cmd = _need_im()
    src, x = noise16
    p = cp.get_preset(spec)
    name, _, args = spec.partition(":")
    # IM's own shape kernels sum their ones; ours average (IM's "!" scale, as above)
    define = ["-define", "convolve:scale=!"] if name in ("rectangle", "ring") else []
    im_args = [*define, "-morphology", "Correlate", f"{_IM_NAMES[name]}:{args}"]
    got = _magick(cmd, src, im_args, tmp_path / "u.png")
    want = _ours(x, p.kernel)
    if got.shape[0] == 1:  # IM writes gray where the channels came out equal (dog:3: 0)
        got = np.broadcast_to(got, want.shape)
    np.testing.assert_allclose(got, want, atol=1e-4, err_msg=spec)


@pytest.mark.parametrize("preset", ["sobel", "emboss", "comet"])
def test_cli_matches_imagemagick_correlate_and_flip_matches_convolve(preset, tmp_path):
    """The user's view: `convcli apply` vs `convert ... -morphology Correlate NAME`
    (and --flip vs Convolve) on a real 8-bit photo crop, within one level."""
    cmd = _need_im()
    from PIL import Image

    src = tmp_path / "in.png"
    with Image.open(ROOT / "samples" / "astronaut.png") as im:
        im.crop((150, 120, 190, 152)).save(src)
    p = cp.get_preset(preset)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for method, flip in (("Correlate", []), ("Convolve", ["--flip"])):
        ours = tmp_path / f"ours_{method}.png"
        res = subprocess.run(
            [sys.executable, "-m", "convcli", "apply", str(src), "--preset", preset, *flip,
             "-o", str(ours), "--backend", "numpy", "-q"],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        theirs = tmp_path / f"im_{method}.png"
        subprocess.run(
            [*cmd, str(src), *p.imagemagick_args(method), str(theirs)], check=True, timeout=60
        )
        a, b = cio.read_image(ours).data, cio.read_image(theirs).data
        np.testing.assert_allclose(a, b, atol=LEVEL, err_msg=f"{preset} {method}")
    # and the two conventions really differ on these kernels
    a = cio.read_image(tmp_path / "ours_Correlate.png").data
    b = cio.read_image(tmp_path / "im_Convolve.png").data
    assert np.abs(a - b).max() > 0.05


# ------------------------------------------------------------- the fields themselves


def _json(*args: str):
    res = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_presets_show_json_names_the_convention_and_imagemagick():
    rec = _json("presets", "show", "sobel", "--json")
    assert rec["convention"] == "correlate"
    assert rec["imagemagick"] == "-morphology Correlate Sobel:0"
    assert rec["imagemagick_flip"] == "-morphology Convolve Sobel:0"
    assert rec["symmetric"] is False
    assert rec["alpha"] == "kept" and rec["sum"] == 0
    rec = _json("presets", "show", "disk:radius=2", "--json")
    assert rec["imagemagick"] == "-define 'convolve:scale=!' -morphology Correlate Disk:2"
    assert rec["symmetric"] is True and rec["alpha"] == "filtered"
    rec = _json("presets", "show", "emboss", "--json")  # no IM built-in: its values
    assert rec["imagemagick"] == "-morphology Correlate '3x3: -2,-1,0,-1,1,1,0,1,2'"
    assert rec["symmetric"] is False and rec["alpha"] == "filtered"
    rec = _json("presets", "show", "unsharp:amount=0.5", "--json")
    assert rec["imagemagick"] == (
        "-define convolve:scale=-0.5,1.5 -morphology Correlate Gaussian:0,1"
    )


def test_presets_show_text_states_alpha_and_mirroring():
    out = CliRunner().invoke(cli, ["presets", "show", "sobel"]).stdout
    assert "alpha: kept (sum 0, not 1; with --alpha premultiply, the default)" in out
    assert "as ImageMagick -morphology Correlate Sobel:0" in out
    assert "symmetric: no (mirrored by --flip, which gives ImageMagick " in out
    assert "-morphology Convolve Sobel:0" in out
    out = CliRunner().invoke(cli, ["presets", "show", "gaussian"]).stdout
    assert "alpha: filtered (sums to 1" in out
    assert "symmetric: yes (--flip changes nothing)" in out
    out = CliRunner().invoke(cli, ["presets", "show", "box:size=4"]).stdout
    assert "even size: ImageMagick's Convolve also moves the origin" in out


def test_presets_list_json_has_the_fields_for_every_preset():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run(
        [sys.executable, "-m", "convcli", "presets", "list", "--json"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    records = {r["name"]: r for r in json.loads(res.stdout)}
    assert len(records) >= 30
    for name, rec in records.items():
        p = cp.get_preset(name)
        k = p.kernel
        assert rec["convention"] == "correlate", name
        assert rec["symmetric"] == bool(np.allclose(k, k[::-1, ::-1], atol=1e-12)), name
        assert rec["imagemagick"].startswith(("-morphology Correlate ", "-define ")), name
        assert rec["imagemagick_flip"] == rec["imagemagick"].replace("Correlate", "Convolve")
        assert rec["alpha"] == ("filtered" if abs(k.sum() - 1) < 1e-4 else "kept"), name
    assert records["sobel"]["symmetric"] is False and records["gaussian"]["symmetric"] is True
    assert {n for n, r in records.items() if r["alpha"] == "kept"} >= set(
        ["sobel", "laplacian", "dog", "log", "edge", "high-pass", "prewitt", "kirsch"]
    )
