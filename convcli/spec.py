"""Argument normalisation and validation for 2D convolution, with torch's semantics.

Everything below the API receives a frozen :class:`ConvSpec` of plain ints and tuples;
all validation and its messages live here. Messages follow torch's wording so that a
torch user recognises them.

Semantics written down (and tested in ``tests/test_spec.py``):

* cross-correlation, no kernel flip;
* ``H_out = floor((H + pad_top + pad_bottom - dilation*(kH-1) - 1) / stride) + 1``;
* ``padding='same'`` pads ``dilation*(k-1)`` in total per axis, ``total // 2`` before and
  the rest (the odd extra pixel) after, i.e. right/bottom, and needs stride 1;
* a non-zero ``padding_mode`` means "pad the input with that mode, then convolve with
  zero padding", with torch's limits (reflect: padding < input size; circular:
  padding <= input size);
* ``symmetric`` (beyond torch) mirrors including the edge pixel (scipy ``reflect``,
  OpenCV ``BORDER_REFLECT``) and accepts any padding size.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np

from convcli.errors import ConvTypeError, ConvValueError
from convcli.names import PADDING_MODES

PaddingMode = Literal["zeros", "reflect", "replicate", "circular", "symmetric"]
TORCH_PADDING_MODES: tuple[str, ...] = ("zeros", "reflect", "replicate", "circular")

SUPPORTED_DTYPES: tuple[np.dtype, ...] = tuple(
    np.dtype(t) for t in ("float16", "float32", "float64", "complex64", "complex128")
)

_TORCH_DTYPE_NAMES = {
    "float16": "Half",
    "float32": "Float",
    "float64": "Double",
    "complex64": "ComplexFloat",
    "complex128": "ComplexDouble",
}

IntPair = int | tuple[int, int] | Sequence[int]
Padding = int | tuple[int, int] | Sequence[int] | str


@dataclass(frozen=True)
class ConvSpec:
    """A fully validated, normalised convolution problem (batched layout).

    Attributes are plain ints/tuples; ``pad`` is ``(top, bottom, left, right)``.
    """

    n: int
    c_in: int
    h: int
    w: int
    c_out: int
    kh: int
    kw: int
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pad: tuple[int, int, int, int]
    groups: int
    padding_mode: str
    has_bias: bool
    dtype: str
    batched: bool

    def __hash__(self) -> int:
        # remembered: a warm call hashes its spec several times (the caches of the
        # untiled calls, of plans, of the backend choice), each a 15-field tuple's hash
        found = self.__dict__.get("_hash")
        if found is None:
            found = hash(tuple(getattr(self, f) for f in _FIELDS))
            self.__dict__["_hash"] = found
        return found

    def __getstate__(self) -> dict:
        # a str's hash differs between processes: a pickled spec hashes afresh
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}

    @property
    def cin_g(self) -> int:
        """Input channels per group."""
        return self.c_in // self.groups

    @property
    def cout_g(self) -> int:
        """Output channels per group."""
        return self.c_out // self.groups

    # cached: the warm path reads them a dozen times per call (the instance's __dict__
    # takes the value; equality, hashing and replace() see only the fields)
    @functools.cached_property
    def h_out(self) -> int:
        return out_size(
            self.h, self.pad[0] + self.pad[1], self.dilation[0], self.kh, self.stride[0]
        )

    @functools.cached_property
    def w_out(self) -> int:
        return out_size(
            self.w, self.pad[2] + self.pad[3], self.dilation[1], self.kw, self.stride[1]
        )

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Output shape as the caller sees it (without the batch axis if unbatched)."""
        shape = (self.n, self.c_out, self.h_out, self.w_out)
        return shape if self.batched else shape[1:]

    @property
    def macs(self) -> int:
        """Multiply-adds of the direct convolution."""
        return self.n * self.c_out * self.h_out * self.w_out * self.cin_g * self.kh * self.kw

    @property
    def is_depthwise(self) -> bool:
        """One input channel per group (image filters, depthwise layers)."""
        return self.cin_g == 1

    def with_rows(self, h: int, pad_top: int, pad_bottom: int) -> ConvSpec:
        """The same problem on a band of ``h`` input rows with new vertical padding."""
        return _replace(self, h=h, pad=(pad_top, pad_bottom, self.pad[2], self.pad[3]))

    def with_batch(self, n: int) -> ConvSpec:
        return _replace(self, n=n)


_FIELDS = tuple(f.name for f in fields(ConvSpec))


def _replace(spec: ConvSpec, **changes: object) -> ConvSpec:
    from dataclasses import replace

    return replace(spec, **changes)


def out_size(size: int, total_pad: int, dilation: int, k: int, stride: int) -> int:
    """torch's output-size formula for one axis."""
    return (size + total_pad - dilation * (k - 1) - 1) // stride + 1


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _pair(value: object, name: str, *, allow_zero: bool = False) -> tuple[int, int]:
    if isinstance(value, bool):
        raise ConvTypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int | np.integer):
        pair = (int(value), int(value))
    elif isinstance(value, Sequence) and not isinstance(value, str):
        items = list(value)
        if len(items) == 1:
            items = items * 2
        if len(items) != 2 or not all(
            isinstance(v, int | np.integer) and not isinstance(v, bool) for v in items
        ):
            raise ConvTypeError(
                f"{name} must be an int or a pair of ints (height, width), got {value!r}"
            )
        pair = (int(items[0]), int(items[1]))
    else:
        raise ConvTypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if not all(_INT64_MIN <= v <= _INT64_MAX for v in pair):
        # torch's own limit (its C++ takes int64); the backends' index arithmetic
        # overflowed past it (an OverflowError from deep inside NumPy)
        raise ConvValueError(f"{name} {value!r} does not fit in a 64-bit integer")
    return pair


def normalize_stride(stride: IntPair) -> tuple[int, int]:
    pair = _pair(stride, "stride")
    if min(pair) <= 0:
        raise ConvValueError("non-positive stride is not supported")
    return pair


def normalize_dilation(dilation: IntPair) -> tuple[int, int]:
    pair = _pair(dilation, "dilation")
    if min(pair) <= 0:
        raise ConvValueError("dilation should be greater than zero")
    return pair


def normalize_kernel_size(kernel_size: IntPair) -> tuple[int, int]:
    pair = _pair(kernel_size, "kernel_size")
    if min(pair) <= 0:
        raise ConvValueError(f"kernel_size must be positive, got {pair}")
    return pair


def normalize_groups(groups: object) -> int:
    if isinstance(groups, bool) or not isinstance(groups, int | np.integer):
        raise ConvTypeError(f"groups must be an int, got {groups!r}")
    if groups <= 0:
        raise ConvValueError("non-positive groups is not supported")
    if groups > _INT64_MAX:
        raise ConvValueError(f"groups {groups!r} does not fit in a 64-bit integer")
    return int(groups)


def normalize_padding_mode(padding_mode: str) -> str:
    if padding_mode not in PADDING_MODES:
        raise ConvValueError(
            f"padding_mode must be one of {list(PADDING_MODES)}, "
            f"but got padding_mode='{padding_mode}'"
        )
    return padding_mode


def resolve_padding(
    padding: Padding,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, int, int, int]:
    """Turn ``padding`` into ``(top, bottom, left, right)``.

    ``'same'`` gives ``total // 2`` before and the rest after on each axis. Negative
    amounts are returned as they are: torch rejects them only in ``zeros`` mode (the
    other modes crop, as ``F.pad`` does), which :func:`make_spec` checks.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ConvValueError("padding='same' is not supported for strided convolutions")
            out = []
            for d, k in zip(dilation, kernel_size, strict=True):
                total = d * (k - 1)
                out += [total // 2, total - total // 2]
            return (out[0], out[1], out[2], out[3])
        raise ConvValueError(
            f"Invalid padding string '{padding}', should be one of {{'valid', 'same'}}"
        )
    ph, pw = _pair(padding, "padding")
    return (ph, ph, pw, pw)


def _torch_size(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def check_dtype(array: np.ndarray, what: str) -> np.dtype:
    if array.dtype not in SUPPORTED_DTYPES:
        raise ConvTypeError(
            f"{what} has dtype {array.dtype}; supported dtypes are "
            "float16, float32, float64, complex64 and complex128"
        )
    return array.dtype


def _dtype_name(dtype: np.dtype) -> str:
    return _TORCH_DTYPE_NAMES.get(dtype.name, dtype.name)


def make_spec(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    *,
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> ConvSpec:
    """Validate a convolution call and return its normalised :class:`ConvSpec`.

    Raises
    ------
    ConvValueError, ConvTypeError
        With torch's wording, before any work is done.
    """
    for name, arr in (("input", x), ("weight", weight), ("bias", bias)):
        if (arr is not None or name != "bias") and not isinstance(arr, np.ndarray):
            raise ConvTypeError(f"{name} must be a numpy.ndarray, got {type(arr).__name__}")
    if x.ndim not in (3, 4):
        raise ConvValueError(
            "Expected 3D (unbatched) or 4D (batched) input to conv2d, "
            f"but got input of size: {_torch_size(x.shape)}"
        )
    if weight.ndim != 4:
        raise ConvValueError(
            "weight should have at least three dimensions: expected 4D weight "
            f"(out_channels, in_channels/groups, kH, kW), but got weight of size "
            f"{_torch_size(weight.shape)}"
        )
    check_dtype(x, "input")
    if weight.dtype != x.dtype:
        raise ConvTypeError(
            f"Input type ({_dtype_name(x.dtype)}) and weight type "
            f"({_dtype_name(weight.dtype)}) should be the same"
        )
    if bias is not None and bias.dtype != x.dtype:
        raise ConvTypeError(
            f"Input type ({_dtype_name(x.dtype)}) and bias type "
            f"({_dtype_name(bias.dtype)}) should be the same"
        )

    batched = x.ndim == 4
    n, c_in, h, w = x.shape if batched else (1, *x.shape)
    shape4 = (n, c_in, h, w)
    c_out, cin_g, kh, kw = weight.shape
    stride_t = normalize_stride(stride)
    dilation_t = normalize_dilation(dilation)
    groups_i = normalize_groups(groups)
    mode = normalize_padding_mode(padding_mode)
    pad = resolve_padding(padding, (kh, kw), stride_t, dilation_t)
    if mode == "zeros" and min(pad) < 0:
        # torch's padding modes go through F.pad, which crops on negative amounts
        raise ConvValueError("negative padding is not supported")

    if min(kh, kw, cin_g) <= 0 or c_out <= 0:
        raise ConvValueError(
            f"weight must have non-zero sizes, got weight of size {_torch_size(weight.shape)}"
        )
    if c_out % groups_i != 0:
        raise ConvValueError(
            f"Given groups={groups_i}, expected weight to be divisible by {groups_i} "
            f"at dimension 0, but got weight of size {_torch_size(weight.shape)} instead"
        )
    if c_in != cin_g * groups_i:
        shown = list(x.shape)
        raise ConvValueError(
            f"Given groups={groups_i}, weight of size {_torch_size(weight.shape)}, "
            f"expected input{_torch_size(shown)} to have {cin_g * groups_i} channels, "
            f"but got {c_in} channels instead"
        )
    if bias is not None and (bias.ndim != 1 or bias.shape[0] != c_out):
        raise ConvValueError(
            f"Given weight of size {_torch_size(weight.shape)}, expected bias to be "
            f"1-dimensional with {c_out} elements, but got bias of size "
            f"{_torch_size(bias.shape)} instead"
        )
    if h <= 0 or w <= 0 or c_in <= 0:
        raise ConvValueError(
            "Expected non-zero size for non-batch dimensions of the input, "
            f"but got input of size {_torch_size(x.shape)}"
        )

    if mode == "reflect":
        for axis, (before, after, size) in ((2, (pad[0], pad[1], h)), (3, (pad[2], pad[3], w))):
            if before >= size or after >= size:
                raise ConvValueError(
                    "Padding size should be less than the corresponding input dimension, "
                    f"but got: padding ({before}, {after}) at dimension {axis} of input "
                    f"{_torch_size(shape4)}"
                )
    elif mode == "circular" and (max(pad[0], pad[1]) > h or max(pad[2], pad[3]) > w):
        raise ConvValueError(
            "Padding value causes wrapping around more than once: "
            f"padding {pad} (top, bottom, left, right) on input {_torch_size(shape4)}"
        )

    hp = h + pad[0] + pad[1]
    wp = w + pad[2] + pad[3]
    ekh = dilation_t[0] * (kh - 1) + 1
    ekw = dilation_t[1] * (kw - 1) + 1
    if hp < ekh or wp < ekw:
        raise ConvValueError(
            f"Calculated padded input size per channel: ({hp} x {wp}). "
            f"Kernel size: ({ekh} x {ekw}). Kernel size can't be greater than actual input size"
        )

    return ConvSpec(
        n=n,
        c_in=c_in,
        h=h,
        w=w,
        c_out=c_out,
        kh=kh,
        kw=kw,
        stride=stride_t,
        dilation=dilation_t,
        pad=pad,
        groups=groups_i,
        padding_mode=mode,
        has_bias=bias is not None,
        dtype=x.dtype.name,
        batched=batched,
    )


def source_index(size: int, before: int, after: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Map padded positions ``-before .. size+after-1`` to source indices.

    Returns ``(index, valid)``: ``index`` is always a legal index into an axis of
    ``size``; ``valid`` is False where zero padding applies (mode ``zeros``).
    """
    p = np.arange(-before, size + after, dtype=np.int64)
    valid = np.ones(p.shape, dtype=bool)
    if mode == "zeros":
        valid = (p >= 0) & (p < size)
        idx = np.clip(p, 0, size - 1)
    elif mode == "replicate":
        idx = np.clip(p, 0, size - 1)
    elif mode == "circular":
        idx = np.mod(p, size)
    elif mode == "reflect":
        period = max(2 * size - 2, 1)
        q = np.mod(p, period)
        idx = np.where(q < size, q, period - q) if size > 1 else np.zeros_like(p)
    elif mode == "symmetric":
        q = np.mod(p, 2 * size)
        idx = np.where(q < size, q, 2 * size - 1 - q)
    else:  # pragma: no cover - normalize_padding_mode guards this
        raise ConvValueError(f"unknown padding_mode {mode!r}")
    return idx.astype(np.int64), valid
