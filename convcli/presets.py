"""Named and parametric kernels, and the inline kernel-text parser.

Presets follow ImageMagick's built-in kernels (``AcquireKernelBuiltIn`` in
MagickCore/morphology.c): the same parameters in the same order and the same values, so
``gaussian:radius=0,sigma=2`` (or ``Gaussian:0x2``) equals IM's ``Gaussian:0x2`` (tests
compare them with an installed ImageMagick). Shape kernels (diamond, disk, ring...) and
binomial are normalised to sum 1 here, so they average. Kernels are given as IM shows
them with ``-define morphology:showKernel=1``; convcli applies them like torch, as
cross-correlation, which is IM's ``-morphology Correlate <name>:<args>``; IM's
``-morphology Convolve`` rotates the kernel 180° (convcli's ``--flip``), which mirrors
asymmetric kernels (sobel, emboss, comet). :meth:`Preset.imagemagick_args` gives the IM
arguments for each preset.

Fixed kernels are data files (``presets/<name>.toml``, one per preset); parametric
families (Gaussian, DoG, shapes, motion blur...) are generated here. User presets use the
same TOML format, from a path given as the spec or from the folders listed in the
environment variable ``CONVCLI_PRESET_PATH`` (``os.pathsep`` separated).

TOML format::

    name = "sobel"                      # must equal the file stem
    description = "Sobel edge, left minus right"
    kernel = [[1, 0, -1], [2, 0, -2], [1, 0, -1]]
    scale = 1.0                         # optional factor applied to the values
    rotatable = true                    # optional: adds an `angle` param (IM rotation)
    aliases = ["outline"]               # optional other names
    imagemagick = "Sobel"               # optional: IM's kernel with these values; the
                                        # parameters follow in order (Sobel:angle)
    # or, for a fixed family selected by an integer `type` (laplacian, frei-chen):
    [variants.0]
    kernel = [[...]]
    scale = 0.5
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from convcli.budget import MAX_KERNEL_SIDE, check_kernel_shape
from convcli.errors import InputError
from convcli.plan import separable_factors
from convcli.resources import data_dir

# Kernels wider than this (per side) are refused, whatever their source: one rule for
# presets, kernel text and weight files (convcli.budget.check_kernel_shape).
MAX_KERNEL_SIZE = MAX_KERNEL_SIDE
# ImageMagick's GetOptimalKernelWidth stops when the edge weight drops below one 16-bit
# level (QuantumScale of a Q16 build) or below MagickEpsilon.
_QUANTUM_SCALE = 1.0 / 65535.0
_MAGICK_EPSILON = 1.0e-12

ParamValue = float | int | str


@dataclass(frozen=True)
class Preset:
    """A named kernel.

    Attributes
    ----------
    name : str
        Canonical lowercase name with ``-`` (``motion-blur``).
    description : str
        One line.
    params : dict
        Parameter values used for ``kernel`` (the documented defaults when listed).
    kernel : numpy.ndarray
        2-D ``(kH, kW)`` float64, centred (origin at ``((kH-1)//2, (kW-1)//2)``).
    normalized : bool
        The kernel already sums to 1.
    source : str
        ``"built-in"`` or the path of a user preset file.
    im_kernel : str
        The ImageMagick kernel that has these values: a built-in (``Sobel:0``,
        ``Gaussian:0,2``) where one matches, else the values as IM's ``"WxH: v,..."``
        text. Empty for a preset built without one.
    im_scale : str or None
        IM's ``convolve:scale`` define that turns the built-in into these values
        (``!`` for our normalised shapes, ``a,1`` for sharpen's identity + a x
        Laplacian), or None.
    """

    name: str
    description: str
    params: dict[str, ParamValue]
    kernel: np.ndarray = field(repr=False)
    normalized: bool
    source: str = "built-in"
    im_kernel: str = ""
    im_scale: str | None = None

    @property
    def size(self) -> tuple[int, int]:
        return int(self.kernel.shape[0]), int(self.kernel.shape[1])

    @property
    def symmetric(self) -> bool:
        """The kernel equals itself rotated by 180 degrees: flipping it (true
        convolution, ImageMagick's ``Convolve``) changes nothing."""
        k = self.kernel
        return bool(np.allclose(k, k[::-1, ::-1], rtol=0, atol=1e-12 * np.abs(k).max(initial=0)))

    def imagemagick_args(self, method: str = "Correlate") -> list[str]:
        """ImageMagick arguments applying this kernel: ``method="Correlate"`` gives
        convcli's result (torch's cross-correlation, no flip), ``"Convolve"`` rotates
        the kernel by 180 degrees like convcli's flip. Border handling: IM's default
        ``-virtual-pixel edge`` is convcli's default ``replicate`` padding.

        >>> get_preset("sobel").imagemagick_args()
        ['-morphology', 'Correlate', 'Sobel:0']
        >>> get_preset("disk:radius=2").imagemagick_args("Convolve")
        ['-define', 'convolve:scale=!', '-morphology', 'Convolve', 'Disk:2']
        """
        kernel = self.im_kernel or _im_values(self.kernel)
        define = ["-define", f"convolve:scale={self.im_scale}"] if self.im_scale else []
        return [*define, "-morphology", method, kernel]


# ------------------------------------------------------------------- kernel text

_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_IM_HEADER = re.compile(
    r"^\s*(?P<w>\d+)(?:\s*[xX]\s*(?P<h>\d+))?(?P<origin>\s*[+-]\s*\d+\s*[+-]\s*\d+)?\s*:(?P<rest>.*)$",
    re.S,
)
_MAX_TEXT_ELEMENTS = MAX_KERNEL_SIZE * MAX_KERNEL_SIZE
# minus sign, hyphen, figure dash, en/em dash, small and full-width hyphen-minus
_DASHES = "\u2212\u2010\u2011\u2012\u2013\u2014\ufe63\uff0d"


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _label(text: str) -> str:
    return f"kernel {_shorten(text, 60)!r}"


def _parse_number(token: str, text: str, *, missing_ok: bool) -> float:
    low = token.lower()
    if missing_ok and low in ("nan", "-"):
        return 0.0  # IM: not part of the neighbourhood; for a convolution that is 0
    if not _NUMBER.match(token):
        if low in ("nan", "inf", "+inf", "-inf", "infinity", "-infinity"):
            raise InputError(f"{_label(text)}: NaN/Inf value {token!r} is not allowed")
        # a token is the user's text: a 5000-character one is not echoed whole
        hint = ""
        dash = next((c for c in token if c in _DASHES), None)
        if dash is not None:  # pasted from a web page or a word processor: looks like '-'
            hint = f" (it holds U+{ord(dash):04X}, a dash that is not the ASCII minus '-')"
        raise InputError(f"{_label(text)}: {_shorten(token, 30)!r} is not a number{hint}")
    value = float(token)
    if not math.isfinite(value):
        raise InputError(f"{_label(text)}: value {_shorten(token, 30)!r} overflows")
    return value


def _split_values(row: str) -> list[str]:
    return [t for t in re.split(r"[,\s]+", row.strip()) if t]


def parse_kernel_text(text: str) -> np.ndarray:
    """Parse an inline kernel matrix.

    Two forms:

    * rows separated by ``;`` or newlines, values by ``,`` and/or spaces:
      ``"1,2,1; 2,4,2; 1,2,1"``;
    * ImageMagick's ``"WxH: v,v,..."`` (or ``"N: ..."`` for N x N), values in row order,
      optionally with the origin ``"WxH+X+Y:"`` (only the centred origin,
      ``X = (W-1)//2, Y = (H-1)//2``, matches torch's ``'same'`` padding). There ``nan``
      or ``-`` mark pixels outside the neighbourhood; they become 0.

    Parameters
    ----------
    text : str

    Returns
    -------
    numpy.ndarray
        2-D float64 ``(kH, kW)``.

    Raises
    ------
    InputError
        Empty text, ragged rows, non-numbers, NaN/Inf, a wrong value count for the
        ImageMagick size, an off-centre origin, or more than one kernel.

    Examples
    --------
    >>> parse_kernel_text("1,2,1;2,4,2;1,2,1").sum()
    np.float64(16.0)
    >>> parse_kernel_text("3x1: -1,0,1").tolist()
    [[-1.0, 0.0, 1.0]]
    """
    if not isinstance(text, str):
        raise InputError(f"kernel must be text, got {type(text).__name__}")
    if not text.strip():
        raise InputError(f"{_label(text)}: empty kernel")
    header = _IM_HEADER.match(text)
    if header:
        return _parse_im_kernel(text, header)
    rows = [r for r in re.split(r"[;\n\r]+", text) if r.strip()]
    if not rows:
        raise InputError(f"{_label(text)}: empty kernel")
    values: list[list[float]] = []
    for row in rows:
        tokens = _split_values(row)
        if not tokens:  # a row of only separators (",") holds nothing
            continue
        if len(values) * (len(tokens) or 1) > _MAX_TEXT_ELEMENTS:
            raise InputError(f"{_label(text)}: kernel too large")
        values.append([_parse_number(t, text, missing_ok=False) for t in tokens])
    if not values:
        raise InputError(f"{_label(text)}: empty kernel")
    widths = {len(r) for r in values}
    if len(widths) != 1:
        lengths = ", ".join(str(len(r)) for r in values[:10])
        raise InputError(f"{_label(text)}: rows have different lengths ({lengths})")
    arr = np.array(values, dtype=np.float64)
    _check_size(arr.shape, text)
    return arr


def _parse_im_kernel(text: str, header: re.Match[str]) -> np.ndarray:
    w = int(header["w"])
    h = int(header["h"]) if header["h"] else w
    if w < 1 or h < 1:
        raise InputError(f"{_label(text)}: kernel size {w}x{h} must be at least 1x1")
    _check_size((h, w), text)
    if header["origin"]:
        nums = re.findall(r"[+-]\s*\d+", header["origin"])
        x, y = (int(n.replace(" ", "")) for n in nums)
        cx, cy = (w - 1) // 2, (h - 1) // 2
        if (x, y) != (cx, cy):
            raise InputError(
                f"{_label(text)}: origin +{x}+{y} is not the centre +{cx}+{cy}; only "
                "centred kernels are supported (pad the kernel with zeros instead)"
            )
    rest = header["rest"]
    if ";" in rest:
        raise InputError(f"{_label(text)}: several kernels (';') are not supported, give one")
    tokens = _split_values(rest.replace("\n", " "))
    if len(tokens) != w * h:
        raise InputError(f"{_label(text)}: {w}x{h} needs {w * h} values, got {len(tokens)}")
    values = [_parse_number(t, text, missing_ok=True) for t in tokens]
    return np.array(values, dtype=np.float64).reshape(h, w)


def _check_size(shape: tuple[int, ...], what: str) -> None:
    check_kernel_shape(shape, _label(what))


# ------------------------------------------------------------------ normalisation


def normalize_kernel(k: np.ndarray) -> np.ndarray:
    """Scale a kernel like ImageMagick's ``!`` normalisation.

    A kernel whose sum is not (nearly) zero is divided by ``|sum|`` (sum 1 for the
    usual positive-sum kernels). A zero-sum kernel (edge, Laplacian, DoG) has its
    positive values scaled to sum 1 and its negative values to sum -1.

    >>> normalize_kernel(np.array([[1.0, 2.0, 1.0]])).tolist()
    [[0.25, 0.5, 0.25]]
    >>> normalize_kernel(np.array([[-1.0, 0.0, 1.0]])).tolist()
    [[-1.0, 0.0, 1.0]]
    """
    k = np.asarray(k, dtype=np.float64)
    if k.size == 0 or not np.isfinite(k).all():
        raise InputError("cannot normalise an empty kernel or one with NaN/Inf")
    with np.errstate(over="ignore"):
        pos = float(k[k > 0].sum())
        neg = float(-k[k < 0].sum())
    if not math.isfinite(pos + neg):
        # values near the float64 limit: their sum overflowed to Inf, which would scale
        # every value to 0; the result does not depend on the kernel's scale
        k = k / float(np.abs(k).max())
        pos = float(k[k > 0].sum())
        neg = float(-k[k < 0].sum())
    total = pos - neg
    if pos == 0 and neg == 0:
        raise InputError("cannot normalise a kernel whose values are all zero")
    if abs(total) > 1e-12 * (pos + neg):
        return k / abs(total)
    return np.where(k > 0, k / (pos or 1.0), k / (neg or 1.0))


def is_separable(k: np.ndarray) -> bool:
    """True when the 2-D kernel is an outer product (rank 1): two 1-D passes suffice."""
    k = np.asarray(k)  # its own dtype: a float32 kernel is rank 1 within float32
    return separable_factors(k[None, None]) is not None


# ------------------------------------------------------------- IM kernel helpers


def _im_rotate(k: np.ndarray, angle: float, kind: str = "") -> np.ndarray:
    """ImageMagick's RotateKernelInfo: 45° steps for 3x3 kernels, 90° otherwise.

    Angles are binned like IM: within 22.5° of a multiple of 45 counts as it. ``kind``
    ``"blur"`` only rotates by 90 (a 180° turn is a no-op for a symmetric blur).
    """
    angle = math.fmod(float(angle), 360.0)
    if angle < 0:
        angle += 360.0
    if angle > 337.5 or angle <= 22.5:
        return k
    if kind == "blur":
        if 135.0 < angle <= 225.0:
            return k
        if 225.0 < angle <= 315.0:
            angle -= 180.0
    k = np.array(k, dtype=np.float64)
    if 22.5 < math.fmod(angle, 90.0) <= 67.5:
        if k.shape != (3, 3):
            raise InputError(
                f"angle {angle:g}: only 3x3 kernels rotate in 45 degree steps, "
                f"a {k.shape[0]}x{k.shape[1]} one in 90 degree steps"
            )
        # Each value moves one place clockwise around the centre.
        ring = [(0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0)]
        old = [k[p] for p in ring]
        for i, p in enumerate(ring):
            k[p] = old[i - 1]
        angle = math.fmod(angle + 315.0, 360.0)
    if 45.0 < math.fmod(angle, 180.0) <= 135.0:
        if 1 in k.shape:
            k = k.T.copy()
            angle = math.fmod(angle + (270.0 if k.shape[1] == 1 else 90.0), 360.0)
        elif k.shape[0] == k.shape[1]:
            k = np.rot90(k, -1).copy()  # clockwise, as IM's in-place square rotate
            angle = math.fmod(angle + 270.0, 360.0)
        else:
            raise InputError("a non-square 2-D kernel can only rotate by 180 degrees")
    if 135.0 < angle <= 225.0:
        k = k[::-1, ::-1].copy()
    return k


def _check_sigma_fits(sigma: float) -> None:
    """A sigma of MAX_KERNEL_SIZE or more keeps edge weights near 1 at any allowed width
    (and a huge one overflows the width search's arithmetic): refuse it up front."""
    if abs(sigma) >= MAX_KERNEL_SIZE:
        raise InputError(f"sigma={sigma:g} needs a kernel larger than {MAX_KERNEL_SIZE}")


def _optimal_width_2d(radius: float, sigma: float) -> int:
    """IM's GetOptimalKernelWidth2D: widen until the edge weight is below 1/65535."""
    if radius > _MAGICK_EPSILON:
        return int(2.0 * math.ceil(radius) + 1.0)
    gamma = abs(sigma)
    if gamma <= _MAGICK_EPSILON:
        return 3
    _check_sigma_fits(sigma)
    alpha = 1.0 / (2.0 * gamma * gamma)
    beta = 1.0 / (2.0 * math.pi * gamma * gamma)
    width = 5
    while True:
        j = (width - 1) // 2
        u = np.arange(-j, j + 1, dtype=np.float64)
        e = np.exp(-(u * u) * alpha)
        normalize = float(np.outer(e, e).sum()) * beta
        value = math.exp(-(j * j) * alpha) * beta / normalize
        if value < _QUANTUM_SCALE or value < _MAGICK_EPSILON:
            break
        width += 2
        if width > MAX_KERNEL_SIZE + 2:
            raise InputError(f"sigma={sigma:g} needs a kernel larger than {MAX_KERNEL_SIZE}")
    return width - 2


def _optimal_width_1d(radius: float, sigma: float) -> int:
    """IM's GetOptimalKernelWidth1D."""
    if radius > _MAGICK_EPSILON:
        return int(2.0 * math.ceil(radius) + 1.0)
    gamma = abs(sigma)
    if gamma <= _MAGICK_EPSILON:
        return 3
    _check_sigma_fits(sigma)
    alpha = 1.0 / (2.0 * gamma * gamma)
    beta = 1.0 / (math.sqrt(2.0 * math.pi) * gamma)
    width = 5
    while True:
        j = (width - 1) // 2
        i = np.arange(-j, j + 1, dtype=np.float64)
        normalize = float(np.exp(-(i * i) * alpha).sum()) * beta
        value = math.exp(-(j * j) * alpha) * beta / normalize
        if value < _QUANTUM_SCALE or value < _MAGICK_EPSILON:
            break
        width += 2
        if width > MAX_KERNEL_SIZE + 2:
            raise InputError(f"sigma={sigma:g} needs a kernel larger than {MAX_KERNEL_SIZE}")
    return width - 2


def _width_from_radius(radius: float, auto: Callable[[], int]) -> int:
    # IM: a radius >= 1 fixes the width at int(radius)*2+1, otherwise it is derived.
    width = int(radius) * 2 + 1 if radius >= 1.0 else auto()
    if width > MAX_KERNEL_SIZE:
        raise InputError(f"radius={radius:g} gives a kernel wider than {MAX_KERNEL_SIZE}")
    return width


def _correlate_normalize(k: np.ndarray) -> np.ndarray:
    """IM's CorrelateNormalize ('^'): positives sum to 1, negatives to -1."""
    pos = float(k[k > 0].sum())
    neg = float(-k[k < 0].sum())
    pos_scale = pos if abs(pos) > _MAGICK_EPSILON else 1.0
    neg_scale = neg if abs(neg) > _MAGICK_EPSILON else 1.0
    return np.where(k >= 0, k / pos_scale, k / neg_scale)


def _grid(width: int) -> tuple[np.ndarray, np.ndarray]:
    r = (width - 1) // 2
    v, u = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
    return v, u


def _gaussian_2d(width: int, sigma: float) -> np.ndarray:
    v, u = _grid(width)
    if sigma > _MAGICK_EPSILON:
        return np.exp(-(u * u + v * v) / (2.0 * sigma * sigma)) / (2.0 * math.pi * sigma * sigma)
    k = np.zeros((width, width))
    k[width // 2, width // 2] = 1.0
    return k


def _unity(width: int) -> np.ndarray:
    k = np.zeros((width, width))
    k[width // 2, width // 2] = 1.0
    return k


# ------------------------------------------------------------- parametric families


def _k_unity(p: Mapping[str, Any]) -> np.ndarray:
    return np.array([[float(p["scale"])]])


def _k_gaussian(p: Mapping[str, Any]) -> np.ndarray:
    sigma = abs(p["sigma"])
    width = _width_from_radius(p["radius"], lambda: _optimal_width_2d(p["radius"], sigma))
    return _correlate_normalize(_gaussian_2d(width, sigma))


def _k_dog(p: Mapping[str, Any]) -> np.ndarray:
    s1, s2 = abs(p["sigma1"]), abs(p["sigma2"])
    width = _width_from_radius(p["radius"], lambda: _optimal_width_2d(p["radius"], max(s1, s2)))
    k = _gaussian_2d(width, s1)
    k = k - _gaussian_2d(width, s2) if s2 > _MAGICK_EPSILON else k - _unity(width)
    return _correlate_normalize(k)


def _k_log(p: Mapping[str, Any]) -> np.ndarray:
    sigma = abs(p["sigma"])
    width = _width_from_radius(p["radius"], lambda: _optimal_width_2d(p["radius"], sigma))
    if sigma <= _MAGICK_EPSILON:
        return _unity(width)
    v, u = _grid(width)
    r = (u * u + v * v) / (2.0 * sigma * sigma)
    k = (1.0 - r) * np.exp(-r) / (math.pi * sigma**4)
    return _correlate_normalize(k)


def _blur_1d(width: int, sigma: float) -> np.ndarray:
    """IM's BlurKernel values: a Gaussian sampled 3x finer and binned (KernelRank 3)."""
    k = np.zeros(width)
    if sigma > _MAGICK_EPSILON:
        rank = 3
        v = (width * rank - 1) // 2
        s = sigma * rank
        u = np.arange(-v, v + 1)
        vals = np.exp(-(u * u) / (2.0 * s * s)) / (math.sqrt(2.0 * math.pi) * s)
        np.add.at(k, (u + v) // rank, vals)
    else:
        k[(width - 1) // 2] = 1.0
    return k / k.sum()


def _k_blur(p: Mapping[str, Any]) -> np.ndarray:
    sigma = abs(p["sigma"])
    width = _width_from_radius(p["radius"], lambda: _optimal_width_1d(p["radius"], sigma))
    return _im_rotate(_blur_1d(width, sigma)[None, :], p["angle"], "blur")


def _k_comet(p: Mapping[str, Any]) -> np.ndarray:
    sigma = abs(p["sigma"])
    if p["width"] < 1.0:
        width = (_optimal_width_1d(p["width"], sigma) - 1) // 2 + 1
    else:
        width = int(p["width"])
    if 2 * width - 1 > MAX_KERNEL_SIZE:
        raise InputError(f"width={p['width']:g} gives a kernel wider than {MAX_KERNEL_SIZE}")
    k = np.zeros(width)
    if sigma > _MAGICK_EPSILON:
        rank = 3
        s = sigma * rank
        u = np.arange(width * rank)
        np.add.at(k, u // rank, np.exp(-(u * u) / (2.0 * s * s)))
    else:
        k[0] = 1.0
    k = k / k.sum()
    # IM's comet has its origin on its first value; centre it by padding the far side.
    centred = np.concatenate([np.zeros(width - 1), k])[None, :]
    return _im_rotate(centred, p["angle"])


def _k_binomial(p: Mapping[str, Any]) -> np.ndarray:
    n = int(p["radius"]) * 2 + 1
    if n > MAX_KERNEL_SIZE:
        raise InputError(f"radius={p['radius']} gives a kernel wider than {MAX_KERNEL_SIZE}")
    row = np.array([math.comb(n - 1, i) for i in range(n)], dtype=np.float64)
    row /= row.sum()  # IM's integer Pascal values, normalised (see the description)
    return np.outer(row, row)


def _shape(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(np.float64)
    return m / m.sum()


def _shape_width(radius: float, default: int) -> int:
    width = default if radius < 1.0 else int(radius) * 2 + 1
    if width > MAX_KERNEL_SIZE:
        raise InputError(f"radius={radius:g} gives a kernel wider than {MAX_KERNEL_SIZE}")
    return width


def _k_diamond(p: Mapping[str, Any]) -> np.ndarray:
    width = _shape_width(p["radius"], 3)
    v, u = _grid(width)
    return _shape(np.abs(u) + np.abs(v) <= (width - 1) // 2)


def _k_square(p: Mapping[str, Any]) -> np.ndarray:
    width = 3 if p["radius"] < 1.0 else int(2 * p["radius"] + 1)
    if width > MAX_KERNEL_SIZE:
        raise InputError(f"radius={p['radius']:g} gives a kernel wider than {MAX_KERNEL_SIZE}")
    return _shape(np.ones((width, width), bool))


def _k_octagon(p: Mapping[str, Any]) -> np.ndarray:
    width = _shape_width(p["radius"], 5)
    r = (width - 1) // 2
    v, u = _grid(width)
    return _shape(np.abs(u) + np.abs(v) <= r + r // 2)


def _k_disk(p: Mapping[str, Any]) -> np.ndarray:
    radius = abs(p["radius"])
    if p["radius"] < 0.4:
        width, limit = 9, 18
    else:
        width = int(radius) * 2 + 1
        # checked before squaring: radius**2 overflows to inf for radius > 1.3e154
        if width > MAX_KERNEL_SIZE:
            raise InputError(f"radius={radius:g} gives a kernel wider than {MAX_KERNEL_SIZE}")
        limit = int(radius * radius)
    v, u = _grid(width)
    return _shape(u * u + v * v <= limit)


def _k_plus(p: Mapping[str, Any]) -> np.ndarray:
    width = _shape_width(p["radius"], 5)
    v, u = _grid(width)
    return _shape((u == 0) | (v == 0))


def _k_cross(p: Mapping[str, Any]) -> np.ndarray:
    width = _shape_width(p["radius"], 5)
    v, u = _grid(width)
    return _shape((u == v) | (u == -v))


def _k_rectangle(p: Mapping[str, Any]) -> np.ndarray:
    w, h = int(p["width"]), int(p["height"])
    if max(w, h) > MAX_KERNEL_SIZE:
        raise InputError(f"rectangle {w}x{h} is larger than {MAX_KERNEL_SIZE}")
    return _shape(np.ones((h, w), bool))


def _k_ring(p: Mapping[str, Any]) -> np.ndarray:
    r1, r2 = p["radius1"], p["radius2"]
    lo, hi = min(r1, r2), max(r1, r2)
    width = int(hi) * 2 + 1
    # checked before squaring, as in _k_disk (radii are >= 0, so lo <= hi bounds both)
    if width > MAX_KERNEL_SIZE:
        raise InputError(f"radius={hi:g} gives a kernel wider than {MAX_KERNEL_SIZE}")
    limit1, limit2 = int(lo * lo), int(hi * hi)
    if limit2 <= 0:
        width, limit1, limit2 = 7, 7, 11
    v, u = _grid(width)
    d = u * u + v * v
    mask = (limit1 < d) & (d <= limit2)
    if not mask.any():
        raise InputError(f"ring radius1={r1:g}, radius2={r2:g} contains no pixel")
    return _shape(mask)


def _k_box(p: Mapping[str, Any]) -> np.ndarray:
    n = int(p["size"])
    if n > MAX_KERNEL_SIZE:
        raise InputError(f"size={n} is larger than {MAX_KERNEL_SIZE}")
    return np.full((n, n), 1.0 / (n * n))


def _k_sharpen(p: Mapping[str, Any]) -> np.ndarray:
    a = float(p["amount"])
    return np.array([[0.0, -a, 0.0], [-a, 1.0 + 4.0 * a, -a], [0.0, -a, 0.0]])


def _k_unsharp(p: Mapping[str, Any]) -> np.ndarray:
    g = _k_gaussian({"radius": p["radius"], "sigma": p["sigma"]})
    a = float(p["amount"])
    return (1.0 + a) * _unity(g.shape[0]) - a * g


def _k_high_pass(p: Mapping[str, Any]) -> np.ndarray:
    g = _k_gaussian({"radius": p["radius"], "sigma": p["sigma"]})
    return _unity(g.shape[0]) - g


def _k_motion_blur(p: Mapping[str, Any]) -> np.ndarray:
    """A line of ``length`` pixels through the centre at ``angle`` (degrees counter-
    clockwise from the +x axis, y pointing up on screen), anti-aliased by the pixel's
    distance to the line; normalised. ``angle=0`` and an odd length give a 1 x length
    box exactly."""
    length = float(p["length"])
    theta = math.radians(float(p["angle"]))
    half = length / 2.0
    if length > MAX_KERNEL_SIZE:
        raise InputError(f"length={length:g} is larger than {MAX_KERNEL_SIZE}")
    r = math.ceil(half) + 1  # the working grid: the line and a pixel of margin around it
    v, u = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
    up = -v  # rows grow downwards, angles count upwards
    along = u * math.cos(theta) + up * math.sin(theta)
    perp = -u * math.sin(theta) + up * math.cos(theta)
    w = np.clip(1.0 - np.abs(perp), 0.0, 1.0) * np.clip(half + 0.5 - np.abs(along), 0.0, 1.0)
    w[np.abs(w) < 1e-12] = 0.0
    # Trim empty borders symmetrically so the kernel stays centred.
    while w.shape[0] > 1 and not w[0].any() and not w[-1].any():
        w = w[1:-1]
    while w.shape[1] > 1 and not w[:, 0].any() and not w[:, -1].any():
        w = w[:, 1:-1]
    # the trimmed kernel is what must fit, not the grid (length=1001 at angle 0 is 1x1001)
    check_kernel_shape(w.shape, f"length={length:g}, angle={float(p['angle']):g}")
    return w / w.sum()


def _im_num(v: float) -> str:
    """Shortest text that reads back as ``v`` (``1`` for 1.0, ``0.1``, ``-2.5e-07``)."""
    text = repr(float(v))
    return text[:-2] if text.endswith(".0") else text


def _im_values(k: np.ndarray) -> str:
    """IM's user kernel text ``"WxH: v,v,..."`` (origin at its default, the centre,
    ``((W-1)/2, (H-1)/2)`` rounded down, as ours)."""
    h, w = k.shape
    return f"{w}x{h}: " + ",".join(_im_num(v) for v in k.ravel())


# What a family is in ImageMagick: (kernel, convolve:scale define or None) for the
# parameters, or None where no built-in has these values (the values are spelt out).
ImSpec = Callable[[Mapping[str, Any]], "tuple[str, str | None] | None"]


def _im(name: str, *keys: str, scale: str | None = None, sep: str = ",") -> ImSpec:
    """A built-in taking our parameters ``keys`` in IM's order, e.g. ``DoG:0,1,1.6``."""

    def spec(p: Mapping[str, Any]) -> tuple[str, str | None]:
        args = sep.join(_im_num(p[k]) for k in keys)
        return (f"{name}:{args}" if keys else name), scale

    return spec


def _im_unity(p: Mapping[str, Any]) -> tuple[str, str | None]:
    return "Unity", None if p["scale"] == 1 else _im_num(p["scale"])


def _im_box(p: Mapping[str, Any]) -> tuple[str, str | None]:
    return f"Rectangle:{int(p['size'])}x{int(p['size'])}", "!"


def _im_sharpen(p: Mapping[str, Any]) -> tuple[str, str | None]:
    # identity + amount x Laplacian:1 = IM scale "amount,1" (scale, then add unity)
    return "Laplacian:1", f"{_im_num(p['amount'])},1"


def _im_unsharp(p: Mapping[str, Any]) -> tuple[str, str | None]:
    a = float(p["amount"])
    return (
        f"Gaussian:{_im_num(p['radius'])},{_im_num(p['sigma'])}",
        f"{_im_num(-a)},{_im_num(1 + a)}",
    )


def _im_high_pass(p: Mapping[str, Any]) -> tuple[str, str | None]:
    return f"Gaussian:{_im_num(p['radius'])},{_im_num(p['sigma'])}", "-1,1"


def _im_zeros(*names: str) -> Callable[[Mapping[str, ParamValue]], Mapping[str, ParamValue]]:
    """``im_missing`` for parameters that ImageMagick's geometry form sets to 0 when
    left out (``Gaussian:3`` is a 7x7 identity: sigma 0)."""
    return lambda given: dict.fromkeys(names, 0.0)


def _im_rectangle_missing(given: Mapping[str, ParamValue]) -> Mapping[str, ParamValue]:
    # IM: "Rectangle:5" is 5x5 and "Rectangle:x4" 4x4 (a missing side is the other)
    side = given.get("width", given.get("height"))
    return {} if side is None else {"width": side, "height": side}


@dataclass(frozen=True)
class _Param:
    name: str
    default: ParamValue
    kind: type
    check: Callable[[Any], bool] = lambda v: True
    rule: str = ""
    choices: tuple[Any, ...] = ()


@dataclass(frozen=True)
class _Family:
    name: str
    description: str
    params: tuple[_Param, ...]
    build: Callable[[Mapping[str, Any]], np.ndarray]
    normalized: bool
    aliases: tuple[str, ...] = ()
    source: str = "built-in"
    imagemagick: ImSpec | None = None
    # ImageMagick's values for the parameters its geometry form ("gaussian:3") leaves
    # out, where they differ from ours: IM takes 0 for a missing number (a sigma of 0 is
    # its identity), and a missing rectangle side equal to the other
    im_missing: Callable[[Mapping[str, ParamValue]], Mapping[str, ParamValue]] | None = None


def _nonneg(v: float) -> bool:
    return v >= 0


# Larger sigmas change no float32 weight of any allowed kernel size (the Gaussian is flat
# to 1e-7 across 1001 pixels) but overflow sigma^2 in the formulas: refused.
MAX_SIGMA = 1e6


def _sigma(v: float) -> bool:
    return 0 <= v <= MAX_SIGMA


def _pos(v: float) -> bool:
    return v > 0


def _angle() -> _Param:
    return _Param("angle", 0.0, float, lambda v: math.isfinite(v), "degrees, finite")


_RADIUS_AUTO = "pixels, 0 = derived from sigma like ImageMagick"

_FAMILIES: tuple[_Family, ...] = (
    _Family(
        "unity",
        "Identity kernel (1x1) times scale; ImageMagick Unity",
        (_Param("scale", 1.0, float, math.isfinite, "finite"),),
        _k_unity,
        False,
        imagemagick=_im_unity,
    ),
    _Family(
        "gaussian",
        "2-D Gaussian blur, normalised; ImageMagick Gaussian:radius x sigma",
        (
            _Param("radius", 0.0, float, _nonneg, _RADIUS_AUTO),
            _Param("sigma", 1.0, float, _sigma, ">= 0, <= 1e6, 0 = identity"),
        ),
        _k_gaussian,
        True,
        imagemagick=_im("Gaussian", "radius", "sigma"),
        im_missing=_im_zeros("sigma"),
    ),
    _Family(
        "blur",
        "1-D Gaussian blur (row; angle=90 gives a column), normalised; ImageMagick Blur",
        (
            _Param("radius", 0.0, float, _nonneg, _RADIUS_AUTO),
            _Param("sigma", 1.0, float, _sigma, ">= 0, <= 1e6"),
            _angle(),
        ),
        _k_blur,
        True,
        imagemagick=_im("Blur", "radius", "sigma", "angle"),
        im_missing=_im_zeros("sigma"),
    ),
    _Family(
        "comet",
        "Half a 1-D Gaussian: blur trailing one way (a comet tail); ImageMagick Comet",
        (
            _Param("width", 0.0, float, _nonneg, "pixels, 0 = derived from sigma"),
            _Param("sigma", 1.0, float, _sigma, ">= 0, <= 1e6"),
            _angle(),
        ),
        _k_comet,
        True,
        im_missing=_im_zeros("sigma"),
    ),
    _Family(
        "dog",
        "Difference of Gaussians sigma1 - sigma2, zero-sum (positives 1, negatives -1); "
        "ImageMagick DoG",
        (
            _Param("radius", 0.0, float, _nonneg, _RADIUS_AUTO),
            _Param("sigma1", 1.0, float, _sigma, ">= 0, <= 1e6"),
            _Param("sigma2", 1.6, float, _sigma, ">= 0, <= 1e6"),
        ),
        _k_dog,
        False,
        imagemagick=_im("DoG", "radius", "sigma1", "sigma2"),
        im_missing=_im_zeros("sigma1", "sigma2"),
    ),
    _Family(
        "log",
        "Laplacian of Gaussian (Mexican hat), zero-sum; ImageMagick LoG",
        (
            _Param("radius", 0.0, float, _nonneg, _RADIUS_AUTO),
            _Param("sigma", 1.4, float, _sigma, ">= 0, <= 1e6"),
        ),
        _k_log,
        False,
        imagemagick=_im("LoG", "radius", "sigma"),
        im_missing=_im_zeros("sigma"),
    ),
    _Family(
        "binomial",
        "Pascal's-triangle blur (ImageMagick Binomial divided by its sum, 4^(2r))",
        (_Param("radius", 1, int, _pos, ">= 1"),),
        _k_binomial,
        True,
        imagemagick=_im("Binomial", "radius", scale="!"),
    ),
    _Family(
        "diamond",
        "Diamond (|x|+|y| <= r) averaging kernel: ImageMagick's shape, normalised",
        (_Param("radius", 1.0, float, _nonneg, "pixels (< 1 = 1)"),),
        _k_diamond,
        True,
        imagemagick=_im("Diamond", "radius", scale="!"),
    ),
    _Family(
        "square",
        "Square (2r+1)^2 averaging kernel: ImageMagick's shape, normalised",
        (_Param("radius", 1.0, float, _nonneg, "pixels (< 1 = 1)"),),
        _k_square,
        True,
        imagemagick=_im("Square", "radius", scale="!"),
    ),
    _Family(
        "octagon",
        "Octagon averaging kernel: ImageMagick's shape, normalised",
        (_Param("radius", 2.0, float, _nonneg, "pixels (< 1 = 2)"),),
        _k_octagon,
        True,
        imagemagick=_im("Octagon", "radius", scale="!"),
    ),
    _Family(
        "disk",
        "Disk (x^2+y^2 <= int(r^2)) averaging kernel: ImageMagick's shape, normalised",
        (_Param("radius", 4.3, float, _nonneg, "pixels, may be fractional"),),
        _k_disk,
        True,
        imagemagick=_im("Disk", "radius", scale="!"),
    ),
    _Family(
        "plus",
        "Plus-shaped averaging kernel with arms of radius: ImageMagick's shape, normalised",
        (_Param("radius", 2.0, float, _nonneg, "pixels (< 1 = 2)"),),
        _k_plus,
        True,
        imagemagick=_im("Plus", "radius", scale="!"),
    ),
    _Family(
        "cross",
        "Diagonal-cross averaging kernel: ImageMagick's shape, normalised",
        (_Param("radius", 2.0, float, _nonneg, "pixels (< 1 = 2)"),),
        _k_cross,
        True,
        imagemagick=_im("Cross", "radius", scale="!"),
    ),
    _Family(
        "rectangle",
        "Rectangle width x height averaging kernel: ImageMagick's shape, normalised",
        (
            _Param("width", 3, int, _pos, ">= 1"),
            _Param("height", 3, int, _pos, ">= 1"),
        ),
        _k_rectangle,
        True,
        imagemagick=_im("Rectangle", "width", "height", scale="!", sep="x"),
        im_missing=_im_rectangle_missing,
    ),
    _Family(
        "ring",
        "Ring between radius1 and radius2, averaging: ImageMagick's shape, normalised",
        (
            _Param("radius1", 2.5, float, _nonneg, "pixels"),
            _Param("radius2", 3.5, float, _nonneg, "pixels"),
        ),
        _k_ring,
        True,
        imagemagick=_im("Ring", "radius1", "radius2", scale="!"),
        im_missing=_im_zeros("radius2"),
    ),
    _Family(
        "box",
        "Box blur: size x size mean",
        (_Param("size", 3, int, _pos, ">= 1"),),
        _k_box,
        True,
        imagemagick=_im_box,
    ),
    _Family(
        "sharpen",
        "Sharpen: identity + amount x 4-neighbour Laplacian (sum 1)",
        (_Param("amount", 1.0, float, math.isfinite, "finite"),),
        _k_sharpen,
        True,
        imagemagick=_im_sharpen,
    ),
    _Family(
        "unsharp",
        "Unsharp mask: (1+amount) identity - amount x Gaussian (sum 1)",
        (
            _Param("radius", 0.0, float, _nonneg, _RADIUS_AUTO),
            _Param("sigma", 1.0, float, _sigma, ">= 0, <= 1e6"),
            _Param("amount", 1.0, float, math.isfinite, "finite"),
        ),
        _k_unsharp,
        True,
        imagemagick=_im_unsharp,
    ),
    _Family(
        "high-pass",
        "High-pass: identity - Gaussian, zero-sum (use out_map='offset' to view)",
        (
            _Param("radius", 0.0, float, _nonneg, _RADIUS_AUTO),
            _Param("sigma", 2.0, float, _sigma, ">= 0, <= 1e6"),
        ),
        _k_high_pass,
        False,
        ("highpass",),
        imagemagick=_im_high_pass,
    ),
    _Family(
        "motion-blur",
        "Linear motion blur: a line of length pixels at angle (degrees, counter-clockwise)",
        (
            _Param("length", 9.0, float, lambda v: 1 <= v <= MAX_KERNEL_SIZE, "1..1001 pixels"),
            _angle(),
        ),
        _k_motion_blur,
        True,
        ("motion",),
    ),
)


# ----------------------------------------------------------- fixed (data) presets


def _key(name: str) -> str:
    """Name comparison ignores case and separators: FreiChen == frei-chen."""
    return re.sub(r"[-_\s]", "", name.lower())


def _toml_matrix(value: Any, where: str) -> np.ndarray:
    try:
        arr = np.array(value, dtype=np.float64)
    except (ValueError, TypeError):
        raise InputError(
            f"{where}: kernel must be a list of equal-length rows of numbers"
        ) from None
    if arr.ndim != 2 or arr.size == 0:
        raise InputError(f"{where}: kernel must be a non-empty 2-D list of rows")
    if not np.isfinite(arr).all():
        raise InputError(f"{where}: kernel contains NaN or Inf")
    _check_size(arr.shape, where)
    return arr


def _scaled(k: np.ndarray, scale: float, where: str) -> np.ndarray:
    with np.errstate(over="ignore"):
        k = k * float(scale)
    if not np.isfinite(k).all():  # 1e308 x 10: refused here, not when the preset is used
        raise InputError(f"{where}: kernel x scale overflows")
    return k


# A preset file's largest size: a 201x201 kernel written out in full is about 1 MB.
PRESET_FILE_MAX_BYTES = 4 << 20


def _family_from_toml(path: Path, source: str) -> _Family:
    import tomllib  # only where a file is read: most runs name a built-in

    where = os.fspath(path)
    try:
        # a FIFO blocked every --preset for ever, and /dev/zero (or a huge file) was
        # read until memory ran out: only regular files, of a preset's size
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{where}: not a regular file")
        if st.st_size > PRESET_FILE_MAX_BYTES:
            raise InputError(
                f"{where}: {st.st_size} bytes, more than a preset file may hold "
                f"({PRESET_FILE_MAX_BYTES})"
            )
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{where}: not a valid preset TOML file ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{where}: cannot read preset ({exc})") from None
    name = str(doc.get("name", path.stem))
    if _key(name) != _key(path.stem):
        raise InputError(f"{where}: preset name {name!r} must equal the file stem {path.stem!r}")
    description = str(doc.get("description", "")).replace("\n", " ")
    scale = doc.get("scale", 1.0)
    if not isinstance(scale, int | float) or not math.isfinite(scale):
        raise InputError(f"{where}: scale must be a finite number")
    im_name = doc.get("imagemagick")
    if im_name is not None and (not isinstance(im_name, str) or not im_name.strip()):
        raise InputError(f"{where}: imagemagick must be the name of an ImageMagick kernel")
    rotatable = doc.get("rotatable", False)
    if not isinstance(rotatable, bool):  # bool("no") is True
        raise InputError(f"{where}: rotatable must be true or false")
    aliases = doc.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        # tuple("abc") would be three one-letter aliases
        raise InputError(f"{where}: aliases must be a list of names")
    aliases = tuple(aliases)
    params: list[_Param] = []
    variants: dict[int, np.ndarray] = {}
    if "variants" in doc:
        table = doc["variants"]
        if not isinstance(table, dict) or not table:
            raise InputError(f"{where}: [variants] must be a non-empty table")
        for key, entry in table.items():
            try:
                index = int(key)
            except ValueError:
                raise InputError(f"{where}: variant key {key!r} is not an integer") from None
            if isinstance(entry, dict):
                k = _toml_matrix(entry.get("kernel"), f"{where} [variants.{key}]")
                s = entry.get("scale", 1.0)
                if not isinstance(s, int | float) or not math.isfinite(s):
                    raise InputError(f"{where}: [variants.{key}] scale must be finite")
                k = _scaled(k, s, f"{where} [variants.{key}]")
            else:
                k = _toml_matrix(entry, f"{where} [variants.{key}]")
            variants[index] = _scaled(k, scale, f"{where} [variants.{key}]")
        default = doc.get("default_type", min(variants))
        if isinstance(default, bool) or not isinstance(default, int) or default not in variants:
            raise InputError(
                f"{where}: default_type must be one of the variants "
                f"({', '.join(str(v) for v in sorted(variants))})"
            )
        choices = tuple(sorted(variants))
        params.append(_Param("type", default, int, lambda v: v in variants, "", choices))
    elif "kernel" in doc:
        base = _scaled(_toml_matrix(doc["kernel"], where), scale, where)
    else:
        raise InputError(f"{where}: a preset needs 'kernel' or [variants]")
    if rotatable:
        params.append(_angle())

    def build(p: Mapping[str, Any]) -> np.ndarray:
        k = variants[p["type"]] if variants else base
        if rotatable:
            k = _im_rotate(k, p["angle"])
        return k

    probe = build({q.name: q.default for q in params})
    normalized = bool(abs(probe.sum() - 1.0) < 1e-9)
    im = _im(im_name.strip(), *(q.name for q in params)) if im_name else None
    return _Family(
        _canonical(name), description, tuple(params), build, normalized, aliases, source, im
    )


def _canonical(name: str) -> str:
    # "FreiChen" -> "frei-chen": split CamelCase, lowercase, '-' between words.
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", name.strip())
    return re.sub(r"[_\s]+", "-", spaced).lower()


@lru_cache(maxsize=1)
def _builtin_families() -> dict[str, _Family]:
    families: dict[str, _Family] = {}
    for fam in _FAMILIES:
        families[fam.name] = fam
    folder = data_dir("presets")
    for path in sorted(folder.glob("*.toml")):
        fam = _family_from_toml(path, "built-in")
        families[fam.name] = fam
    return families


def _user_folders() -> list[Path]:
    raw = os.environ.get("CONVCLI_PRESET_PATH", "")
    return [Path(p) for p in raw.split(os.pathsep) if p.strip()]


def _user_families() -> tuple[dict[str, _Family], dict[str, InputError]]:
    """User presets by name, and the errors of broken files by their stem's key."""
    families: dict[str, _Family] = {}
    broken: dict[str, InputError] = {}
    for folder in _user_folders():
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            try:
                fam = _family_from_toml(path, os.fspath(path))
            except InputError as exc:
                broken.setdefault(_key(path.stem), exc)
                continue
            families.setdefault(fam.name, fam)  # earlier folders win, like PATH
    return families, broken


def _all_families() -> dict[str, _Family]:
    families = dict(_builtin_families())
    families.update(_user_families()[0])  # a user preset replaces a built-in of that name
    return families


def preset_errors() -> list[str]:
    """One line per user preset file (``CONVCLI_PRESET_PATH``) that cannot be loaded;
    :func:`list_presets` leaves those out, :func:`get_preset` raises their error."""
    return [str(exc) for exc in _user_families()[1].values()]


def _lookup(name: str, families: Mapping[str, _Family]) -> _Family:
    """The family named ``name``, else the one with that alias: a preset's own name wins
    over another's alias (a user's ``sharp`` over an alias ``sharp`` of theirs or ours)."""
    wanted = _key(name)
    for fam in families.values():
        if _key(fam.name) == wanted:
            return fam
    for fam in families.values():
        if any(_key(a) == wanted for a in fam.aliases):
            return fam
    import difflib

    names = sorted(families)
    close = difflib.get_close_matches(name.lower(), names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise InputError(f"preset {name!r}: unknown preset{hint} (see `convcli presets list`)")


# ------------------------------------------------------------------ param parsing


def _describe_params(fam: _Family) -> str:
    if not fam.params:
        return f"{fam.name} takes no parameters"
    parts = []
    for p in fam.params:
        text = f"{p.name}={p.default}"
        if p.choices:
            text += f" (one of {', '.join(str(c) for c in p.choices)})"
        elif p.rule:
            text += f" ({p.rule})"
        parts.append(text)
    return f"{fam.name} accepts {', '.join(parts)}"


def _convert(param: _Param, raw: str, spec: str, fam: _Family) -> ParamValue:
    text = raw.strip()
    dash = next((c for c in text if c in _DASHES), None)
    hint = "" if dash is None else f" (it holds U+{ord(dash):04X}, not the ASCII minus '-')"
    bad = f"preset {spec!r}: {param.name}={text!r} is invalid{hint}; {_describe_params(fam)}"
    if param.kind is str:
        return text
    if not _NUMBER.match(text):
        raise InputError(bad)
    value = float(text)
    if not math.isfinite(value):
        raise InputError(bad)
    if param.kind is int:
        if value != int(value) or abs(value) > 1e9:
            raise InputError(bad)
        result: ParamValue = int(value)
    else:
        result = value
    if param.choices and result not in param.choices:
        raise InputError(bad)
    if not param.check(result):
        raise InputError(bad)
    return result


def _parse_args(spec: str, args: str, fam: _Family) -> dict[str, ParamValue]:
    values: dict[str, ParamValue] = {p.name: p.default for p in fam.params}
    if not args.strip():
        return values
    by_key = {_key(p.name): p for p in fam.params}
    if "=" not in args:
        # ImageMagick geometry style: "gaussian:0x2", "laplacian:5", "dog:0,1,2",
        # "blur:0x1+90" (IM's RxS+X+Y: values in the family's parameter order), with
        # IM's values for those left out ("gaussian:3": sigma 0; "gaussian:x2": no
        # radius), so that the same string gives IM's kernel
        number = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
        items = re.findall(number, args)
        leftover = re.sub(number, "", args)
        if re.sub(r"[xX,\s]", "", leftover):  # ImageMagick takes "0X2" too
            items = [t for t in re.split(r"[,xX]", args) if t.strip()]
        first = 1 if args.lstrip()[:1] in ("x", "X", ",") else 0  # no first value
        if first + len(items) > len(fam.params):
            raise InputError(
                f"preset {spec!r}: {first + len(items)} values for {len(fam.params)} "
                f"parameters; {_describe_params(fam)}"
            )
        given = {
            param.name: _convert(param, raw, spec, fam)
            for param, raw in zip(fam.params[first:], items, strict=False)
        }
        if fam.im_missing is not None:
            values.update(fam.im_missing(given))
        values.update(given)  # what was given wins over both defaults
        return values
    seen: set[str] = set()
    for item in args.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise InputError(
                f"preset {spec!r}: {item.strip()!r} is not key=value; {_describe_params(fam)}"
            )
        k, raw = item.split("=", 1)
        param = by_key.get(_key(k))
        if param is None:
            raise InputError(
                f"preset {spec!r}: unknown parameter {k.strip()!r}; {_describe_params(fam)}"
            )
        if param.name in seen:
            raise InputError(f"preset {spec!r}: {param.name} given twice")
        seen.add(param.name)
        values[param.name] = _convert(param, raw, spec, fam)
    return values


def _make(fam: _Family, values: dict[str, ParamValue], spec: str) -> Preset:
    try:
        kernel = np.asarray(fam.build(values), dtype=np.float64)
    except InputError as exc:
        raise InputError(f"preset {spec!r}: {exc}") from None
    if kernel.ndim != 2 or kernel.size == 0 or not np.isfinite(kernel).all():
        raise InputError(f"preset {spec!r}: the parameters give no usable kernel")
    normalized = fam.normalized and bool(abs(kernel.sum() - 1.0) < 1e-9)
    im = fam.imagemagick(values) if fam.imagemagick is not None else None
    im_kernel, im_scale = im if im is not None else (_im_values(kernel), None)
    return Preset(
        fam.name, fam.description, dict(values), kernel, normalized, fam.source, im_kernel, im_scale
    )


def _split_spec(spec: str) -> tuple[str, str]:
    name, _, args = spec.partition(":")
    return name.strip(), args


def get_preset(spec: str) -> Preset:
    """Build a preset from ``NAME[:key=value,...]`` (or a path to a user TOML file).

    ImageMagick's positional form is accepted too (``gaussian:0x2``, ``laplacian:5``,
    ``sobel:90``), with ImageMagick's meaning for the values it leaves out (0, so that
    ``gaussian:3`` is IM's 7x7 identity, sigma 0; ``rectangle:5`` is 5x5), and names
    ignore case and separators (``FreiChen``, ``DoG``).

    Raises
    ------
    InputError
        Unknown name (with close matches), unknown or invalid parameter (listing the
        accepted ones and their defaults), or a kernel that would be too large.

    Examples
    --------
    >>> get_preset("box:size=2").kernel.tolist()
    [[0.25, 0.25], [0.25, 0.25]]
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InputError("preset name is empty (see `convcli presets list`)")
    lowered = spec.lower()
    cut = lowered.rfind(".toml")
    if cut >= 0 and (cut + 5 == len(spec) or spec[cut + 5] == ":"):
        file_path, args = Path(spec[: cut + 5]), spec[cut + 6 :]
        if file_path.is_dir():
            where = os.fspath(file_path)
            raise InputError(f"preset {spec!r}: {where!r} is a folder, not a preset file")
        if not file_path.is_file():
            raise InputError(f"preset {spec!r}: no such preset file {os.fspath(file_path)!r}")
        fam = _family_from_toml(file_path, os.fspath(file_path))
        return _make(fam, _parse_args(spec, args, fam), spec)
    name, args = _split_spec(spec)
    if not name:
        raise InputError(f"preset {spec!r}: missing name before ':'")
    families, broken = _user_families()
    if _key(name) in broken and not any(_key(f) == _key(name) for f in families):
        raise broken[_key(name)]
    fam = None if families else _python_family(name)
    if fam is None:
        fam = _lookup(name, {**_builtin_families(), **families})
    return _make(fam, _parse_args(spec, args, fam), spec)


def _python_family(name: str) -> _Family | None:
    """The family defined in this module that :func:`_lookup` finds for ``name`` among
    the built-ins, when no built-in TOML file can take its place (a file replaces the
    family of its stem's name, in that family's place): then no file is parsed, which
    saves a one-image run about 10 ms."""
    wanted = _key(name)
    stems = None
    for fam in _FAMILIES:
        if stems is None:
            stems = {_key(p.stem) for p in data_dir("presets").glob("*.toml")}
            if wanted in stems:
                return None  # a file of that very name wins over any alias here
        if _key(fam.name) in stems:
            return None  # a file replaces this family, and with it maybe its aliases
        if _key(fam.name) == wanted or any(_key(a) == wanted for a in fam.aliases):
            return fam
    return None


def list_presets() -> list[Preset]:
    """Every built-in and user preset at its default parameters, sorted by name."""
    out = []
    for fam in sorted(_all_families().values(), key=lambda f: f.name):
        out.append(_make(fam, {p.name: p.default for p in fam.params}, fam.name))
    return out


def preset_params_help(name: str) -> str:
    """``"gaussian accepts radius=0.0 (...), sigma=1.0 (...)"`` for a preset name."""
    return _describe_params(_lookup(name, _all_families()))
