"""The filter a run applies to every image: a kernel or weight, its bias, and
:func:`convcli.conv2d`'s convolution arguments, with the checks that need no image.

:class:`Filter` is built the way ``convcli apply`` builds it from ``--preset``,
``--kernel`` or ``--weights`` by :meth:`Filter.from_preset`, :meth:`Filter.from_text` and
:meth:`Filter.from_file` (normalisation, flip, value checks, a weight file's bias).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from convcli.budget import (
    budget_text,
    check_call,
    check_kernel_shape,
    format_bytes,
    memory_budget,
)
from convcli.errors import ConvValueError, InputError, LimitError
from convcli.spec import (
    ConvSpec,
    make_spec,
    normalize_dilation,
    normalize_padding_mode,
    normalize_stride,
    resolve_padding,
)


def n_channels_text(n: int) -> str:
    return f"{n} channel" if n == 1 else f"{n} channels"


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_weight_values(weight: np.ndarray, what: str = "weight") -> None:
    """Refuse NaN, Inf and values that float32 cannot hold (the convolution runs in
    float32: a larger value would become Inf there).

    Raises
    ------
    InputError
        Starting with ``what`` (a file name, ``preset 'NAME'``, ``kernel '...'``).
    """
    w = np.asarray(weight)
    if w.size == 0:
        return
    # min and max propagate NaN and need no temporary the size of the weight
    lo, hi = float(w.min()), float(w.max())
    if not (math.isfinite(lo) and math.isfinite(hi) and max(-lo, hi) <= _FLOAT32_MAX):
        raise InputError(
            f"{what}: kernel values must be finite float32 numbers (|v| <= {_FLOAT32_MAX:.4g})"
        )


@dataclass(frozen=True)
class Filter:
    """The convolution applied to every image, in :func:`convcli.conv2d`'s words.

    Parameters
    ----------
    weight : ndarray
        A 2-D ``(kH, kW)`` kernel applied to every channel (depthwise: weight
        ``(C, C/groups, kH, kW)`` filled with it, ``groups=C`` by default) or a 4-D weight
        in torch's layout ``(C_out, C_in/groups, kH, kW)`` used as it is.
    bias : ndarray, optional
        One value for every output channel, or one per output channel.
    stride, dilation : int or (int, int)
    padding : int, (int, int), 'same', 'valid' or None
        None means the image-filter default: ``'same'`` (the size is kept) when the
        stride is 1, otherwise ``dilation * (k - 1) // 2`` on each side (centred).
    groups : int, optional
        None infers it: ``C`` for a 2-D kernel, ``C_in / weight.shape[1]`` for 4-D.
    padding_mode : str
        One of :data:`convcli.PADDING_MODES`.
    """

    weight: np.ndarray
    bias: np.ndarray | None = None
    stride: int | tuple[int, int] = 1
    padding: int | tuple[int, int] | str | None = None
    dilation: int | tuple[int, int] = 1
    groups: int | None = None
    padding_mode: str = "replicate"

    def __post_init__(self) -> None:
        # every kernel source (preset, kernel text, weight file, a caller's array)
        # meets the one size cap and the one value rule here
        check_kernel_shape(np.shape(self.weight), "weight")
        check_weight_values(self.weight, "weight")
        if self.bias is not None:
            _check_bias(self.bias)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_array(
        cls,
        weight: Any,
        *,
        normalize_kernel: bool = False,
        flip: bool = False,
        label: str = "weight",
        **conv_options: Any,
    ) -> Filter:
        """A filter from a kernel or weight array, as the command line builds it.

        Parameters
        ----------
        weight : array_like
            A 2-D ``(kH, kW)`` kernel (applied to every channel) or a 4-D weight in
            torch's layout ``(C_out, C_in/groups, kH, kW)``.
        normalize_kernel : bool
            Scale the kernel to sum 1 (a kernel summing to zero: its positive values to
            sum 1 and its negative ones to sum -1), as ImageMagick's ``!`` does; for a
            4-D weight, each output channel's filter is scaled on its own.
        flip : bool
            Rotate the kernel by 180 degrees: true convolution (ImageMagick's
            ``-morphology Convolve``) instead of torch's cross-correlation.
        label : str
            What the messages call the weight (``preset 'box'``, a file name).
        **conv_options
            ``bias``, ``stride``, ``padding``, ``dilation``, ``groups`` and
            ``padding_mode``, as the :class:`Filter` fields of those names.

        Returns
        -------
        Filter
            With a C-contiguous float32 weight.

        Raises
        ------
        InputError
            A kernel that cannot be normalised (all zeros), values that float32 cannot
            hold (after normalisation), or a kernel over the size cap.

        Examples
        --------
        >>> f = Filter.from_array([[1.0, 3.0]], normalize_kernel=True, flip=True)
        >>> f.weight.tolist()
        [[0.75, 0.25]]
        """
        w = _real_float64(weight, label)
        if w.ndim not in (2, 4):
            raise InputError(
                f"{label}: a weight must be 2-D (kH, kW) or 4-D (C_out, C_in/groups, kH, kW), "
                f"got shape {tuple(w.shape)}"
            )
        check_kernel_shape(w.shape, label)  # before any work on an absurd shape
        if w.size == 0:
            raise InputError(f"{label}: the weight is empty (shape {tuple(w.shape)})")
        if normalize_kernel:
            w = _normalized(w, label)
        if flip:  # true convolution = correlation with the kernel rotated by 180 degrees
            w = w[..., ::-1, ::-1]
        check_weight_values(w, label)
        return cls(weight=np.ascontiguousarray(w, dtype=np.float32), **conv_options)

    @classmethod
    def from_preset(
        cls, spec: str, *, normalize_kernel: bool = False, flip: bool = False, **conv_options: Any
    ) -> Filter:
        """A filter from a named kernel, ``NAME[:key=value,...]`` (see
        :func:`convcli.presets.get_preset`); the command line's ``--preset``.

        Options as :meth:`from_array`.

        Raises
        ------
        InputError
            An unknown preset or parameter, or a kernel :meth:`from_array` refuses.

        Examples
        --------
        >>> Filter.from_preset("box:size=2", padding_mode="reflect").weight.tolist()
        [[0.25, 0.25], [0.25, 0.25]]
        """
        from convcli.presets import get_preset

        return cls.from_array(
            get_preset(spec).kernel,
            normalize_kernel=normalize_kernel,
            flip=flip,
            label=f"preset {spec!r}",
            **conv_options,
        )

    @classmethod
    def from_text(
        cls, text: str, *, normalize_kernel: bool = False, flip: bool = False, **conv_options: Any
    ) -> Filter:
        """A filter from kernel text: rows by ``;``, values by ``,`` (``"1,2,1;2,4,2;1,2,1"``)
        or ImageMagick's ``"WxH: v,v,..."`` (see :func:`convcli.presets.parse_kernel_text`);
        the command line's ``--kernel``.

        Options as :meth:`from_array`.

        Examples
        --------
        >>> Filter.from_text("1,2,1", normalize_kernel=True).weight.tolist()
        [[0.25, 0.5, 0.25]]
        """
        from convcli.presets import _label, parse_kernel_text

        return cls.from_array(
            parse_kernel_text(text),
            normalize_kernel=normalize_kernel,
            flip=flip,
            label=_label(text),
            **conv_options,
        )

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        key: str | None = None,
        notes: list[str] | None = None,
        normalize_kernel: bool = False,
        flip: bool = False,
        **conv_options: Any,
    ) -> Filter:
        """A filter from a weight file (see :func:`convcli.io.load_weights` for the
        formats); the command line's ``--weights``.

        Parameters
        ----------
        path : str or os.PathLike
        key : str, optional
            Tensor name or prefix inside the file (``conv1`` reads ``conv1.weight`` and
            ``conv1.bias``).
        notes : list of str, optional
            Receives one line per thing the file's readers warned about.
        normalize_kernel, flip, **conv_options
            As :meth:`from_array`. The file's bias is used unless ``bias`` is given
            (and not None).

        Raises
        ------
        InputError
            An unreadable file, a missing tensor, or a weight :meth:`from_array` refuses
            (the message starts with the file name).
        """
        from convcli.io import load_weights

        weight, file_bias = load_weights(path, key=key, notes=notes)
        if conv_options.get("bias") is None and file_bias is not None:
            conv_options["bias"] = np.asarray(file_bias, dtype=np.float32)
        return cls.from_array(
            weight,
            normalize_kernel=normalize_kernel,
            flip=flip,
            label=os.fspath(path),
            **conv_options,
        )

    @property
    def depthwise(self) -> bool:
        return self.weight.ndim == 2

    def resolved_padding(self) -> int | tuple[int, int] | str:
        """The padding passed to conv2d (the default made explicit)."""
        if self.padding is not None:
            return self.padding
        stride = normalize_stride(self.stride)
        if stride == (1, 1):
            return "same"
        dil = normalize_dilation(self.dilation)
        kh, kw = self.weight.shape[-2:]
        return (dil[0] * (kh - 1) // 2, dil[1] * (kw - 1) // 2)

    def for_channels(
        self, channels: int, *, view: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None, int]:
        """Weight, bias and groups for an image with ``channels`` channels.

        ``view=True`` returns zero-strided views instead of arrays (shape checks: no
        memory is touched, whatever ``groups`` or the channel count).

        Raises
        ------
        ConvValueError
            When the weight cannot take that many channels (the message says why).
        """
        w = self.weight
        if w.ndim == 2:
            groups = self.groups if self.groups is not None else channels
            if groups <= 0 or channels % groups:
                raise ConvValueError(
                    f"groups={groups} does not divide the image's {n_channels_text(channels)}"
                )
            full = np.broadcast_to(
                np.asarray(w, dtype=np.float32), (channels, channels // groups, *w.shape)
            )
            weight = full if view else np.ascontiguousarray(full)
        else:
            per = w.shape[1]
            if self.groups is not None:
                groups = self.groups
            elif channels % per == 0:
                groups = channels // per
            else:
                raise ConvValueError(
                    f"the weight takes groups x {per} input channels "
                    f"(shape {tuple(w.shape)}), but the image has {n_channels_text(channels)}"
                )
            if per * groups != channels:
                raise ConvValueError(
                    f"the weight with groups={groups} takes {per * groups} input channels "
                    f"(shape {tuple(w.shape)}), but the image has {n_channels_text(channels)}"
                )
            weight = np.asarray(w, dtype=np.float32)
            weight = weight if view else np.ascontiguousarray(weight)
        c_out = weight.shape[0]
        bias = None
        if self.bias is not None:
            b = np.asarray(self.bias, dtype=np.float32).ravel()
            if b.size == 1:
                bias = np.broadcast_to(b, (c_out,)) if view else np.full(c_out, b[0], np.float32)
            elif b.size == c_out:
                bias = b
            else:
                raise ConvValueError(
                    f"bias has {b.size} values but the convolution has {c_out} output channels"
                )
        return weight, bias, groups

    def split_bias(self, channels: int, alpha: str) -> tuple[Filter, np.ndarray | None]:
        """The filter to convolve an image with alpha with, and the bias to add to its
        colour once alpha is divided out (None: the bias stays in the convolution).

        Under ``premultiply`` (and ``premultiply-keep``) the convolution sees colour x
        alpha, and its colour is divided by the result's alpha: a bias added there would
        come out divided by alpha (ten times larger where alpha is 0.1) and, for a
        2-D kernel, shift alpha itself. So the bias goes to the colour channels, added
        after the division, as ``keep`` and ``drop`` add it:

        - a 2-D kernel: one value, or one per colour channel (``channels - 1``);
          alpha gets none (it is filtered when the kernel sums to 1, else kept);
        - a 4-D weight whose last output channel makes alpha: one value per output
          channel, as for any weight (or one for all); the colour ones are added after
          the division, alpha's stays in the filter that makes alpha.

        ``channels`` counts alpha; other modes and filters without a bias are
        returned as they are.

        Raises
        ------
        ConvValueError
            A bias whose count fits neither rule (the message says which counts fit).
        """
        if self.bias is None or channels < 2 or alpha not in ("premultiply", "premultiply-keep"):
            return self, None
        b = np.asarray(self.bias, dtype=np.float32).ravel()
        colour = channels - 1
        if self.depthwise:
            if b.size not in (1, colour):
                raise ConvValueError(
                    f"bias has {b.size} values but the image has {colour} colour channels "
                    f"and alpha, which takes no bias: give 1 or {colour} values, or "
                    "alpha='filter' to make alpha a plain channel that takes one"
                )
            return replace(self, bias=None), np.broadcast_to(b, (colour,)).copy()
        c_out = int(self.weight.shape[0])
        if c_out != channels or b.size not in (1, c_out):
            return self, None  # not an alpha-making weight; for_channels checks the count
        full = np.broadcast_to(b, (c_out,))
        conv_bias = np.zeros(c_out, np.float32)
        conv_bias[-1] = full[-1]
        return replace(self, bias=conv_bias), full[:-1].copy()

    def spec_for(self, shape: tuple[int, ...]) -> ConvSpec:
        """The validated :class:`ConvSpec` of this filter on a ``(C, H, W)`` image shape.

        Checks on zero-strided views, so no memory is touched whatever the shape.
        """
        weight, bias, groups = self.for_channels(shape[0], view=True)
        return make_spec(
            np.broadcast_to(np.float32(0), shape),
            weight,
            bias,
            **self.conv_options(groups),
        )

    def weight_bytes(self, channels: int) -> int:
        """Bytes of the float32 weight :meth:`for_channels` builds for ``channels``."""
        groups = self.groups if self.groups is not None else channels
        if self.depthwise and groups > 0 and channels % groups == 0:
            # counted, not broadcast: a channel count past NumPy's largest dimension
            # (--groups 10**22) is still a size to refuse, not a ValueError
            return channels * (channels // groups) * math.prod(self.weight.shape) * 4
        weight = self.for_channels(channels, view=True)[0]
        return int(np.prod(weight.shape, dtype=np.float64)) * 4

    def smallest_image(self, channels: int) -> tuple[int, int, int]:
        """The smallest ``(C, H, W)`` image this filter takes with ``channels`` (sizes
        from the kernel's extent and the padding alone: no image is built)."""
        kh, kw = self.weight.shape[-2:]
        stride = normalize_stride(self.stride)
        dilation = normalize_dilation(self.dilation)
        pad = resolve_padding(self.resolved_padding(), (kh, kw), stride, dilation)
        mode = normalize_padding_mode(self.padding_mode)
        sizes = []
        for k, d, before, after in ((kh, dilation[0], *pad[:2]), (kw, dilation[1], *pad[2:])):
            size = max(1, d * (k - 1) + 1 - before - after)
            if mode == "reflect":
                size = max(size, max(before, after) + 1)
            elif mode == "circular":
                size = max(size, max(before, after))
            sizes.append(size)
        return channels, sizes[0], sizes[1]

    def _check_weight(self, channels: int, max_memory: int | None) -> int:
        """The weight's bytes for ``channels``; LimitError when over the budget."""
        room = memory_budget(max_memory)
        weight = self.weight_bytes(channels)
        if room is not None and weight > room:
            culprit = "groups" if self.depthwise and channels > 1 else None
            raise LimitError(
                f"the weight for {n_channels_text(channels)} would need "
                f"{format_bytes(weight)}, more than {budget_text(room, max_memory)}",
                argument=culprit,
                value=channels,
            )
        return weight

    def conv_options(self, groups: int) -> dict[str, object]:
        """The convolution keywords of :func:`conv2d` (and ``make_spec``) for this filter."""
        return {
            "stride": self.stride,
            "padding": self.resolved_padding(),
            "dilation": self.dilation,
            "groups": groups,
            "padding_mode": self.padding_mode,
        }

    def check(
        self, *, max_memory: int | None = None, max_pixels: int | None = None, budget: bool = False
    ) -> None:
        """Validate the convolution arguments once, before any file is read.

        Uses a zero-strided image with as few channels as the weight takes, so that
        argument mistakes (``'same'`` with a stride, a bad padding mode) fail once
        instead of once per file; what depends on an image's channels is checked per file.
        With ``budget``, also refuses arguments that no image could be filtered with:
        the smallest image's result over ``max_pixels``, or its weight, output and index
        maps over the memory budget (``max_memory``, else the machine's free memory).

        Raises
        ------
        ConvValueError
            A bad argument; :class:`~convcli.errors.LimitError` naming the argument
            (``padding``, ``dilation``, ``kernel_size``, ``groups``, ``max_pixels`` or
            ``max_memory``) for a limit.
        """
        probe = self
        if self.depthwise:
            channels = self.groups or 1  # any multiple of groups is a valid image
            if self.bias is not None and np.asarray(self.bias).size > 1:
                probe = replace(self, bias=None)  # checked against each image's channels
        else:
            c_out = self.weight.shape[0]
            if self.groups is not None and c_out % self.groups:
                # conv2d's own check, before a probe image of weight.shape[1] * groups
                # channels that NumPy cannot describe (--groups 10**22)
                raise ConvValueError(
                    f"Given groups={self.groups}, expected weight to be divisible by "
                    f"{self.groups} at dimension 0, but got weight of size "
                    f"{list(map(int, self.weight.shape))} instead"
                )
            channels = self.weight.shape[1] * (self.groups or 1)
        smallest = probe.smallest_image(channels)
        if budget and self.depthwise and channels > 1:
            # a depthwise weight grows with the channel count: refuse an absurd --groups
            # before spec_for broadcasts it to a shape NumPy cannot describe
            self._check_weight(channels, max_memory)
        if budget and max_pixels is not None and smallest[1] * smallest[2] > max_pixels:
            dil = normalize_dilation(self.dilation)
            raise LimitError(
                f"the kernel spans {smallest[2]}x{smallest[1]} pixels: no image of at most "
                f"{max_pixels} pixels is large enough for it",
                argument="dilation" if max(dil) > 1 else "max_pixels",
                value=(dil[0] if dil[0] == dil[1] else dil) if max(dil) > 1 else max_pixels,
            )
        spec = probe.spec_for(smallest)  # the arguments' mistakes, as conv2d words them
        if not budget:
            return
        check_out_pixels(spec, max_pixels, self.resolved_padding())
        room = memory_budget(max_memory)
        if room is None:
            return
        weight = probe._check_weight(channels, max_memory)
        image = math.prod(smallest) * 4
        check_call(
            spec,
            "least",
            "numpy",
            padding=self.resolved_padding(),
            max_memory=max_memory,
            budget=max(0, room - weight - image),
        )


def _check_bias(bias: Any) -> None:
    """One number or a 1-D array of real numbers that float32 holds: a NaN or a 1e39
    bias would make every output pixel NaN or Inf without a word."""
    try:
        b = np.asarray(bias)
    except (ValueError, TypeError) as exc:
        raise InputError(f"bias: not an array of numbers ({exc})") from None
    if b.dtype.kind not in "biuf" or b.ndim > 1:
        raise InputError(
            f"bias: must be one number or a 1-D array of real numbers, got "
            f"{'shape ' + str(b.shape) if b.dtype.kind in 'biuf' else 'dtype ' + str(b.dtype)}"
        )
    if b.size:
        lo, hi = float(b.min()), float(b.max())
        if not (math.isfinite(lo) and math.isfinite(hi) and max(-lo, hi) <= _FLOAT32_MAX):
            raise InputError(
                f"bias: values must be finite float32 numbers (|v| <= {_FLOAT32_MAX:.4g})"
            )


def _real_float64(weight: Any, label: str) -> np.ndarray:
    """``weight`` as float64, refusing what is not real numbers with one clear message
    (as the weight files do): NumPy's own errors name no source, and a complex weight
    would lose its imaginary part with only a warning."""
    try:
        arr = np.asarray(weight)
        if arr.dtype.kind == "c":
            raise InputError(f"{label}: the weight is complex; only real weights are supported")
        return arr.astype(np.float64)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{label}: the weight is not an array of numbers ({exc})") from None


def _normalized(w: np.ndarray, label: str) -> np.ndarray:
    """``w`` scaled by :func:`convcli.presets.normalize_kernel`: a 2-D kernel as it is,
    a 4-D weight per output channel (each output channel's whole filter sums to 1)."""
    from convcli.presets import normalize_kernel

    try:
        if w.ndim == 2:
            return np.asarray(normalize_kernel(w), dtype=np.float64)
        flat = [np.asarray(normalize_kernel(f.reshape(-1, w.shape[-1]))) for f in w]
        return np.stack(flat).reshape(w.shape)
    except InputError as exc:
        raise InputError(f"{label}: {exc}") from None


def check_out_pixels(spec: ConvSpec, max_pixels: int | None, padding: object) -> None:
    """Refuse a result of more than ``max_pixels`` pixels per image (as input images).

    Blames ``padding`` when the result would fit without it, else ``max_pixels``.
    """
    pixels = spec.h_out * spec.w_out
    if max_pixels is None or pixels <= max_pixels:
        return
    unpadded = replace(spec, pad=(0, 0, 0, 0))
    blame_padding = not isinstance(padding, str) and unpadded.h_out * unpadded.w_out <= max_pixels
    raise LimitError(
        f"the result would have {pixels} pixels ({spec.w_out}x{spec.h_out}), more than the "
        f"limit of {max_pixels} pixels",
        argument="padding" if blame_padding else "max_pixels",
        value=padding if blame_padding else max_pixels,
    )
