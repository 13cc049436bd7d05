"""Pixel maths between a decoded image and an encoded one, with no file I/O: alpha
(premultiply, keep, filter, drop), the output mapping of a convolution result to
[0, 1], and the rounding to integer levels."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Literal

import numpy as np

from convcli.errors import InputError

if TYPE_CHECKING:
    from convcli.io.images import Image

# Values per block when rounding to integer levels (512 KiB of float64: stays in cache).
_QUANTIZE_BLOCK = 1 << 16

AlphaMode = Literal["premultiply", "keep", "filter", "drop"]
ALPHA_MODES: tuple[str, ...] = ("premultiply", "keep", "filter", "drop")
# What prepare_alpha/finish_alpha do: the modes, plus "premultiply-keep", the form
# premultiply takes for a kernel that does not sum to 1 (see filters_alpha).
ALPHA_STEPS: tuple[str, ...] = (*ALPHA_MODES, "premultiply-keep")
OutMap = Literal["clip", "abs", "normalize", "offset"]
OUT_MAPS: tuple[str, ...] = ("clip", "abs", "normalize", "offset")

# The sum of the taps (and bias) of the filter that makes the alpha channel, within
# this of 1: the filter averages (or sharpens) and an opaque area stays opaque, so alpha
# is filtered with the colour. Other sums (0 for edge kernels) would make alpha 0 where
# the image is opaque: alpha is kept instead. Float32 rounding of a normalised kernel
# stays far below this; a kernel typed with three decimals (0.111 x 9) does not.
ALPHA_SUM_TOLERANCE = 1e-4


def filters_alpha(total: float) -> bool:
    """Whether ``premultiply`` filters alpha with a filter whose taps sum to ``total``.

    True for sums of 1 (blurs, sharpen, unsharp, emboss, motion blur): an opaque area
    stays opaque. Other sums (0: edge, Laplacian, DoG, LoG, high-pass; or a scaled
    kernel) would turn alpha into an edge map, mostly 0 (an invisible image), so alpha
    is kept as it is and only the premultiplied colour is filtered.

    >>> filters_alpha(1.0), filters_alpha(0.0), filters_alpha(3.0)
    (True, False, False)
    """
    return bool(abs(float(total) - 1.0) <= ALPHA_SUM_TOLERANCE)


def prepare_alpha(image: Image, alpha: str = "premultiply") -> tuple[np.ndarray, np.ndarray | None]:
    """Split an image into the channels to convolve and the alpha to re-attach.

    Parameters
    ----------
    image : Image
    alpha : {"premultiply", "premultiply-keep", "keep", "filter", "drop"}
        ``premultiply`` (default): colour times alpha, and alpha itself is filtered
        too, so transparent pixels do not bleed into the result. ``premultiply-keep``:
        the same channels (colour times alpha, then alpha), but the original alpha is
        returned to replace the filtered one (for kernels that do not sum to 1, see
        :func:`filters_alpha`). ``keep``: filter the colour only and keep the original
        alpha. ``filter``: alpha is a plain channel. ``drop``: remove alpha. Images
        without alpha are returned unchanged.

    Returns
    -------
    (channels, kept_alpha)
        ``channels`` is ``(C', H, W)`` float32; ``kept_alpha`` is ``(1, H, W)`` for
        ``keep`` and ``premultiply-keep``, None otherwise.
    """
    if alpha not in ALPHA_STEPS:
        raise InputError(f"alpha must be one of {list(ALPHA_MODES)}, got {alpha!r}")
    return split_alpha(image.data, alpha, has_alpha=image.has_alpha)


def split_alpha(
    data: np.ndarray, alpha: str, *, has_alpha: bool, in_place: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`prepare_alpha` on a ``(C, H, W)`` float32 array (a whole image or a strip
    of rows: every step is per pixel).

    ``in_place``: premultiply into ``data`` itself and return views of it (the kept
    alpha is then a view too: the caller copies what it keeps), so a strip costs no
    copy; the values are the same as the copying form's.
    """
    if alpha not in ALPHA_STEPS:
        raise InputError(f"alpha must be one of {list(ALPHA_MODES)}, got {alpha!r}")
    if not has_alpha or data.shape[0] < 2:
        return data, None
    colour, a = data[:-1], data[-1:]
    if in_place:
        if alpha in ("premultiply", "premultiply-keep"):
            np.multiply(colour, a, out=colour)
            return data, (a if alpha == "premultiply-keep" else None)
        if alpha in ("keep", "drop"):
            return colour, (a if alpha == "keep" else None)
        return data, None
    if alpha in ("premultiply", "premultiply-keep"):
        channels = np.concatenate([colour * a, a]).astype(np.float32, copy=False)
        return channels, (a.copy() if alpha == "premultiply-keep" else None)
    if alpha == "keep":
        return np.ascontiguousarray(colour), a.copy()
    if alpha == "drop":
        return np.ascontiguousarray(colour), None
    return data, None


def _unpremultiply(colour: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Colour divided by alpha where alpha > 0, 0 where it is not."""
    safe = np.where(a > 0, a, 1).astype(colour.dtype)
    return np.where(a > 0, colour / safe, 0).astype(colour.dtype, copy=False)


def _biased(colour: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """``colour`` (a fresh array) plus one bias value per channel, in place."""
    if bias is not None:
        colour += np.asarray(bias, colour.dtype).reshape(-1, 1, 1)
    return colour


def finish_alpha(
    result: np.ndarray,
    kept_alpha: np.ndarray | None,
    alpha: str,
    *,
    has_alpha: bool,
    colour_bias: np.ndarray | None = None,
) -> np.ndarray:
    """Undo :func:`prepare_alpha` on a convolution result.

    ``premultiply``: divide colour by the filtered alpha where it is > 0 (0 elsewhere).
    ``premultiply-keep``: the result's last channel is replaced by ``kept_alpha`` and
    the colour divided by it, so the premultiplied colour a viewer shows is the filtered
    premultiplied colour, over the original coverage.
    ``keep``: append the original alpha.
    ``colour_bias`` (premultiply modes, see :meth:`convcli.filters.Filter.split_bias`):
    one value per colour channel, added to the colour once alpha is divided out.
    Both ``kept_alpha`` must have the result's height and width (the caller samples it
    at the output pixels when stride or padding change the size); else
    :class:`InputError`.
    """
    if not has_alpha or alpha in ("filter", "drop"):
        return result
    if alpha == "premultiply":
        if result.shape[0] < 2:
            return result
        colour, a = result[:-1], result[-1:]
        colour = _biased(_unpremultiply(colour, a), colour_bias)
        return np.concatenate([colour, a]).astype(result.dtype, copy=False)
    if alpha in ("keep", "premultiply-keep"):
        if kept_alpha is None:
            return result
        if kept_alpha.shape[1:] != result.shape[1:]:
            raise InputError(
                f"the result is {result.shape[2]}x{result.shape[1]} but the kept alpha is "
                f"{kept_alpha.shape[2]}x{kept_alpha.shape[1]}"
            )
        a = kept_alpha.astype(result.dtype, copy=False)
        if alpha == "keep":
            return np.concatenate([result, a])
        colour = _biased(_unpremultiply(result[:-1], a), colour_bias)
        return np.concatenate([colour, a]).astype(result.dtype, copy=False)
    raise InputError(f"alpha must be one of {list(ALPHA_MODES)}, got {alpha!r}")


# ------------------------------------------------------------------ output mapping


def map_output(
    data: np.ndarray,
    out_map: str = "clip",
    *,
    scale: float = 1.0,
    offset: float = 0.0,
    clip: bool = True,
    span: tuple[float, float] | None = None,
) -> np.ndarray:
    """Map a convolution result to the [0, 1] range an image file holds.

    ``data * scale + offset`` first, then ``out_map``: ``clip`` (nothing more), ``abs``
    (magnitude, for edge kernels), ``normalize`` (min..max stretched to 0..1 over the
    whole image), ``offset`` (adds 0.5, ImageMagick's bias 50%, so zero maps to mid
    gray); finally clip to [0, 1] (NaN to 0) unless ``clip=False``. ``span`` gives
    ``normalize`` the ``(lo, hi)`` of the finite values of ``data * scale + offset``
    found over the whole image (:func:`finite_span`) when ``data`` is a strip of it.

    Works in float32 (the dtype of every decoded image), float64 only for float64 data:
    the result is rounded to at most 16 bits, far coarser than float32's 24.

    >>> map_output(np.array([[[-0.5, 0.25, 2.0]]]), "offset").tolist()
    [[[0.0, 0.75, 1.0]]]
    """
    if out_map not in OUT_MAPS:
        raise InputError(f"out_map must be one of {list(OUT_MAPS)}, got {out_map!r}")
    if not (math.isfinite(scale) and math.isfinite(offset)):
        raise InputError(f"scale and offset must be finite, got {scale} and {offset}")
    out = np.asarray(data)
    work = np.float64 if out.dtype == np.float64 else np.float32
    out = out.astype(work, copy=True)
    if scale != 1.0 or offset != 0.0:
        overflowed: list = []  # NumPy calls this instead of warning (no pass to look)
        with np.errstate(over="call", call=lambda *_: overflowed.append(True)):
            if scale != 1.0:
                out *= work(scale)
            if offset != 0.0:
                out += work(offset)
        if overflowed and np.isfinite(data).all():
            warnings.warn(
                f"scale {scale:g} and offset {offset:g} take some values past "
                f"{np.dtype(work).name}'s range: they became inf or NaN",
                RuntimeWarning,
                stacklevel=2,
            )
    if out_map == "abs":
        np.abs(out, out=out)
    elif out_map == "offset":
        out += work(0.5)
    elif out_map == "normalize" and out.size:
        lo, hi = span if span is not None else finite_span(out) or (0.0, 0.0)
        out = (out - work(lo)) / work(hi - lo) if hi > lo else np.zeros_like(out)
    if clip:
        # fmax/fmin ignore NaN, so NaN becomes 0 in the same two passes as the clip.
        np.fmax(out, 0, out=out)
        np.fmin(out, 1, out=out)
    return out


def finite_span(values: np.ndarray, where: np.ndarray | None = None) -> tuple[float, float] | None:
    """``(min, max)`` of the finite values (and ``where`` True), None when there are none."""
    keep = np.isfinite(values)
    if where is not None:
        keep &= where
    finite = values[keep]
    return (float(finite.min()), float(finite.max())) if finite.size else None


def join_spans(a: tuple[float, float] | None, b: tuple[float, float] | None):
    """The span covering both (either may be None: no finite value)."""
    if a is None or b is None:
        return a if b is None else b
    return (min(a[0], b[0]), max(a[1], b[1]))


def result_span(
    data: np.ndarray, *, scale: float = 1.0, offset: float = 0.0, alpha: bool = False
) -> tuple[float, float] | None:
    """What ``normalize`` stretches, over ``data`` (a strip or the whole result): the
    finite ``data * scale + offset``, or with ``alpha`` (the last channel is the image's
    alpha) the finite colour x alpha where alpha > 0 (see :func:`map_result`)."""
    if not alpha or data.shape[0] < 2:
        return finite_span(map_output(data, "clip", scale=scale, offset=offset, clip=False))
    a = map_output(data[-1:], "clip")
    colour = map_output(data[:-1], "clip", scale=scale, offset=offset, clip=False)
    shown = colour * a
    return finite_span(shown, np.broadcast_to(a > 0, shown.shape))


def map_result(
    data: np.ndarray,
    out_map: str = "clip",
    *,
    scale: float = 1.0,
    offset: float = 0.0,
    alpha: bool = False,
    span: tuple[float, float] | None = None,
) -> np.ndarray:
    """The output mapping of a result (or a strip of it); with ``alpha`` (the last
    channel is the image's alpha, kept or filtered with the colour) only the colour is
    mapped and alpha is clipped, so ``offset`` does not make transparent pixels half
    opaque.

    ``normalize`` stretches ``span`` (:func:`result_span` of the whole result; None:
    no finite value) to 0..1. With alpha that is the range of colour x alpha (what a
    viewer sees): an edge kernel's colour divided by a nearly transparent alpha can be
    huge, and its min..max would squeeze every visible pixel into one grey."""
    if out_map == "normalize" and span is None:
        span = (0.0, 0.0)
    if not alpha or data.shape[0] < 2:
        return map_output(data, out_map, scale=scale, offset=offset, span=span)
    a = map_output(data[-1:], "clip")
    if out_map != "normalize":
        colour = map_output(data[:-1], out_map, scale=scale, offset=offset)
        return np.concatenate([colour, a])
    colour = map_output(data[:-1], "clip", scale=scale, offset=offset, clip=False)
    lo, hi = span
    if hi > lo:
        colour = map_output(colour, "clip", scale=1 / (hi - lo), offset=-lo / (hi - lo))
    else:
        colour = np.zeros_like(colour)
    return np.concatenate([colour, a])


def quantize(arr: np.ndarray, bits: int) -> np.ndarray:
    """Round ``(C, H, W)`` data in [0, 1] to integer levels, as ``(H, W, C)`` samples
    (the layout every encoder takes). NaN becomes 0, values outside [0, 1] are clipped.

    The product x * top is exact in float64 but not in float32, where about 0.1% of
    random float32 inputs land one 16-bit level off (those within 2**-9 of a half
    level), so the rounding stays float64; done in blocks of ``_QUANTIZE_BLOCK``
    values that stay in cache, it costs what a whole-image float32 pass would.
    """
    top = (1 << bits) - 1
    channels, height, width = arr.shape
    out = np.empty((height, width, channels), np.uint8 if bits == 8 else np.uint16)
    src = np.moveaxis(arr, 0, -1)
    rows = max(1, _QUANTIZE_BLOCK // (width * channels))
    buf = np.empty((min(rows, height), width, channels), np.float64)
    for y in range(0, height, rows):
        work = buf[: min(rows, height - y)]
        np.multiply(src[y : y + rows], top, out=work, dtype=np.float64)
        np.fmax(work, 0, out=work)  # NaN -> 0 (fmax ignores NaN), -inf -> 0
        np.fmin(work, top, out=work)
        np.rint(work, out=work)
        out[y : y + rows] = work
    return out
