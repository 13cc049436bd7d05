"""convcli against torch 2.13 itself: a seeded randomised sweep and the invalid arguments.

The sweep draws a few hundred configurations over every parameter (kernel sizes incl.
even ones, stride, int/pair/'valid'/'same' padding, dilation, groups incl. depthwise
with a multiplier, bias, torch's four padding modes near their size limits, batched,
unbatched and empty batches, float32/float64/complex64). Each runs through
``torch.nn.Conv2d`` (or ``F.conv2d``) in float64/complex128 and through convcli on every
backend: where torch raises, convcli must raise ConvValueError/ConvTypeError with the
same key words; elsewhere shapes and dtypes must match and values lie within conftest's
``RTOL`` of the output's magnitude.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from conftest import assert_close

from convcli import Conv2d, ConvTypeError, ConvValueError, conv2d

torch = pytest.importorskip("torch")

MODES = ("zeros", "reflect", "replicate", "circular")
DTYPES = ("float32", "float64", "complex64")
WIDE = {"float32": torch.float64, "float64": torch.float64, "complex64": torch.complex128}
N_CONFIGS = 300
SEED = 20260
# OpenCL builds one program per kernel geometry (0.3-1.5 s each on a cold PoCL cache,
# and nearly every configuration is a new geometry): it runs every third configuration,
# NumPy all of them; CONVCLI_FULL_SWEEP=1 runs all of them on OpenCL too.
OPENCL_EVERY = 1 if os.environ.get("CONVCLI_FULL_SWEEP") else 3
SWEEP = [("numpy", i) for i in range(N_CONFIGS)] + [
    ("opencl", i) for i in range(0, N_CONFIGS, OPENCL_EVERY)
]

# Phrases of torch's messages that ours must repeat when torch's message has them.
KEY_PHRASES = (
    "non-positive stride",
    "dilation should be greater than zero",
    "non-positive groups",
    "negative padding is not supported",
    "padding='same' is not supported for strided convolutions",
    "invalid padding string",
    "padding_mode must be one of",
    "padding size should be less than the corresponding input dimension",
    "wrapping around more than once",
    "kernel size can't be greater than actual input size",
    "expected weight to be divisible by",
    "channels, but got",
    "expected 3d (unbatched) or 4d (batched) input",
    "expected bias to be 1-dimensional",
    "should be the same",
)


def _random(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    values = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        values = values + 1j * rng.standard_normal(shape)
    return values.astype(dtype)


# torch.nn.functional.conv2d's defaults, and Conv2d's padding_mode
_DEFAULTS = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "padding_mode": "zeros"}


def _random_config(seed: int, dtype: str, xshape, wshape, keywords: dict) -> dict:
    """A config for :func:`torch_conv` / :func:`ours`: the defaults, ``keywords``, and
    random input, weight and bias of ``dtype``."""
    rng = np.random.default_rng(seed)
    return {
        **_DEFAULTS,
        **keywords,
        "dtype": dtype,
        "x": _random(rng, xshape, dtype),
        "weight": _random(rng, wshape, dtype),
        "bias": _random(rng, (wshape[0],), dtype),
    }


def _pair_or_int(rng: np.random.Generator, low: int, high: int) -> int | tuple[int, int]:
    if rng.random() < 0.5:
        return int(rng.integers(low, high + 1))
    return (int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1)))


def make_config(index: int) -> dict:
    """One random configuration; about one in eight is invalid for torch."""
    rng = np.random.default_rng([SEED, index])
    dtype = DTYPES[index % len(DTYPES)]
    if rng.random() < 0.3:  # depthwise with multiplier K
        groups = int(rng.integers(1, 5))
        cin_g, cout_g = 1, int(rng.integers(1, 4))
    else:
        groups = int(rng.choice([1, 1, 2, 3]))
        cin_g, cout_g = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    kh, kw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    stride = _pair_or_int(rng, 1, 3) if rng.random() < 0.6 else 1
    dilation = _pair_or_int(rng, 1, 3) if rng.random() < 0.4 else 1
    roll = rng.random()
    if roll < 0.2:
        padding: int | tuple[int, int] | str = "same"
        if rng.random() < 0.9:
            stride = 1  # else torch refuses: strided 'same'
    elif roll < 0.3:
        padding = "valid"
    else:
        padding = _pair_or_int(rng, 0, 4)
    mode = MODES[int(rng.integers(0, len(MODES)))]
    batched = rng.random() < 0.7
    n = 0 if rng.random() < 0.06 else int(rng.integers(1, 4))
    if not batched:
        n = 1
    h, w = int(rng.integers(1, 13)), int(rng.integers(1, 13))
    xshape = (n, cin_g * groups, h, w) if batched else (cin_g * groups, h, w)
    return {
        "dtype": dtype,
        "x": _random(rng, xshape, dtype),
        "weight": _random(rng, (cout_g * groups, cin_g, kh, kw), dtype),
        "bias": _random(rng, (cout_g * groups,), dtype) if rng.random() < 0.7 else None,
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "groups": groups,
        "padding_mode": mode,
    }


def torch_conv(config: dict) -> np.ndarray:
    """torch's output in float64/complex128; raises what torch raises."""
    wide = WIDE[config["dtype"]]
    x = torch.from_numpy(config["x"]).to(wide)
    weight = torch.from_numpy(config["weight"]).to(wide)
    bias = None if config["bias"] is None else torch.from_numpy(config["bias"]).to(wide)
    keywords = {k: config[k] for k in ("stride", "padding", "dilation", "groups")}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notes on 'same' with even kernels
        if config["padding_mode"] == "zeros" and weight.shape[0] % 2:
            # the functional form too (it takes the same keywords, no padding_mode)
            return torch.nn.functional.conv2d(x, weight, bias, **keywords).numpy()
        c_out, cin_g, kh, kw = weight.shape
        layer = torch.nn.Conv2d(
            cin_g * config["groups"],
            c_out,
            (kh, kw),
            **keywords,
            bias=bias is not None,
            padding_mode=config["padding_mode"],
            dtype=wide,
        )
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
        return layer(x).numpy()


def ours(config: dict, backend: str) -> np.ndarray:
    keywords = {k: config[k] for k in ("stride", "padding", "dilation", "groups", "padding_mode")}
    return conv2d(config["x"], config["weight"], config["bias"], **keywords, backend=backend)


def assert_raises_like_torch(torch_error: Exception, call) -> None:
    """``call`` raises our ValueError/TypeError repeating torch's key phrases."""
    with pytest.raises((ConvValueError, ConvTypeError)) as caught:
        call()
    theirs, mine = str(torch_error).lower(), str(caught.value).lower()
    assert mine.strip()
    for phrase in KEY_PHRASES:
        if phrase in theirs:
            assert phrase in mine, (phrase, str(torch_error), str(caught.value))


def _describe(index: int) -> str:
    c = make_config(index)
    return (
        f"{index}-{c['dtype']}-x{'x'.join(map(str, c['x'].shape))}"
        f"-w{'x'.join(map(str, c['weight'].shape))}-{c['padding_mode']}"
    )


@pytest.mark.parametrize(
    ("backend", "index"),
    SWEEP,
    indirect=["backend"],
    ids=[f"{backend}-{_describe(index)}" for backend, index in SWEEP],
)
def test_sweep_matches_torch(backend, index):
    config = make_config(index)
    try:
        expected = torch_conv(config)
    except (RuntimeError, ValueError, TypeError) as exc:
        assert_raises_like_torch(exc, lambda: ours(config, backend))
        return
    y = ours(config, backend)
    assert y.dtype == np.dtype(config["dtype"])
    assert_close(y, expected, config["dtype"])


def test_sweep_covers_every_parameter():
    """The sweep's draws reach every value the issue lists (and some invalid ones)."""
    configs = [make_config(i) for i in range(N_CONFIGS)]
    seen = {
        "modes": {c["padding_mode"] for c in configs},
        "dtypes": {c["dtype"] for c in configs},
        "padding": {type(c["padding"]).__name__ for c in configs}
        | {c["padding"] for c in configs if isinstance(c["padding"], str)},
        "even_kernel_same": any(
            c["padding"] == "same" and c["weight"].shape[2] % 2 == 0 for c in configs
        ),
        "same_dilated": any(
            c["padding"] == "same" and c["dilation"] not in (1, (1, 1)) for c in configs
        ),
        "depthwise_multiplier": any(
            c["groups"] > 1 and c["weight"].shape[1] == 1 and c["weight"].shape[0] > c["groups"]
            for c in configs
        ),
        "zero_batch": any(c["x"].ndim == 4 and c["x"].shape[0] == 0 for c in configs),
        "unbatched": any(c["x"].ndim == 3 for c in configs),
        "no_bias": any(c["bias"] is None for c in configs),
    }
    assert seen["modes"] == set(MODES)
    assert seen["dtypes"] == set(DTYPES)
    assert seen["padding"] >= {"int", "tuple", "same", "valid"}
    assert all(v for k, v in seen.items() if not isinstance(v, set))
    invalid = 0
    for c in configs:
        try:
            torch_conv(c)
        except (RuntimeError, ValueError):
            invalid += 1
    assert 10 <= invalid <= N_CONFIGS // 3


def _f(*shape: int, dtype: str = "float32") -> np.ndarray:
    return np.random.default_rng(len(shape)).standard_normal(shape).astype(dtype)


# (id, x, weight, bias, keywords, our exception type, key phrase of our message; where
# the phrase is one of KEY_PHRASES torch's message must have it too)
_S = "padding size should be less than the corresponding input dimension"
_K = "kernel size can't be greater than actual input size"
_R = "expected 3d (unbatched) or 4d (batched) input to conv2d"
INVALID = [
    (
        "stride0",
        _f(1, 1, 4, 4),
        _f(1, 1, 2, 2),
        None,
        {"stride": 0},
        ConvValueError,
        "non-positive stride",
    ),
    (
        "stride_neg",
        _f(1, 1, 4, 4),
        _f(1, 1, 2, 2),
        None,
        {"stride": (-1, 1)},
        ConvValueError,
        "non-positive stride",
    ),
    (
        "dilation0",
        _f(1, 1, 4, 4),
        _f(1, 1, 2, 2),
        None,
        {"dilation": 0},
        ConvValueError,
        "dilation should be greater than zero",
    ),
    (
        "groups0",
        _f(1, 1, 4, 4),
        _f(1, 1, 2, 2),
        None,
        {"groups": 0},
        ConvValueError,
        "non-positive groups",
    ),
    (
        "groups_neg",
        _f(1, 2, 4, 4),
        _f(2, 2, 1, 1),
        None,
        {"groups": -1},
        ConvValueError,
        "non-positive groups",
    ),
    (
        "groups_cout",
        _f(1, 4, 4, 4),
        _f(3, 2, 2, 2),
        None,
        {"groups": 2},
        ConvValueError,
        "expected weight to be divisible by",
    ),
    (
        "groups_cin",
        _f(1, 3, 4, 4),
        _f(4, 2, 2, 2),
        None,
        {"groups": 2},
        ConvValueError,
        "channels, but got",
    ),
    ("channels", _f(1, 3, 4, 4), _f(4, 2, 2, 2), None, {}, ConvValueError, "channels, but got"),
    (
        "channels_unbatched",
        _f(3, 4, 4),
        _f(4, 2, 2, 2),
        None,
        {},
        ConvValueError,
        "channels, but got",
    ),
    (
        "negative_padding",
        _f(1, 1, 4, 4),
        _f(1, 1, 2, 2),
        None,
        {"padding": -1},
        ConvValueError,
        "negative padding is not supported",
    ),
    (
        "negative_padding_pair",
        _f(1, 1, 6, 6),
        _f(1, 1, 3, 3),
        None,
        {"padding": (1, -1)},
        ConvValueError,
        "negative padding is not supported",
    ),
    (
        "same_strided",
        _f(1, 1, 4, 4),
        _f(1, 1, 2, 2),
        None,
        {"padding": "same", "stride": 2},
        ConvValueError,
        "padding='same' is not supported for strided convolutions",
    ),
    (
        "same_strided_w",
        _f(1, 1, 4, 4),
        _f(1, 1, 2, 2),
        None,
        {"padding": "same", "stride": (1, 2)},
        ConvValueError,
        "padding='same' is not supported for strided convolutions",
    ),
    (
        "padding_string",
        _f(1, 1, 4, 4),
        _f(1, 1, 2, 2),
        None,
        {"padding": "full"},
        ConvValueError,
        "invalid padding string",
    ),
    (
        "padding_mode",
        _f(1, 1, 4, 4),
        _f(1, 1, 2, 2),
        None,
        {"padding_mode": "mirror"},
        ConvValueError,
        "padding_mode must be one of",
    ),
    (
        "reflect_too_big",
        _f(1, 1, 4, 4),
        _f(1, 1, 3, 3),
        None,
        {"padding": 4, "padding_mode": "reflect"},
        ConvValueError,
        _S,
    ),
    (
        "reflect_equal",
        _f(1, 1, 6, 4),
        _f(1, 1, 3, 3),
        None,
        {"padding": (1, 4), "padding_mode": "reflect"},
        ConvValueError,
        _S,
    ),
    (
        "reflect_h1",
        _f(1, 1, 1, 4),
        _f(1, 1, 1, 1),
        None,
        {"padding": 1, "padding_mode": "reflect"},
        ConvValueError,
        _S,
    ),
    (
        "circular_too_big",
        _f(1, 1, 4, 4),
        _f(1, 1, 3, 3),
        None,
        {"padding": 5, "padding_mode": "circular"},
        ConvValueError,
        "wrapping around more than once",
    ),
    ("kernel_too_big", _f(1, 1, 4, 4), _f(1, 1, 6, 2), None, {}, ConvValueError, _K),
    ("kernel_dilated", _f(1, 1, 4, 4), _f(1, 1, 3, 2), None, {"dilation": 2}, ConvValueError, _K),
    (
        "kernel_after_reflect",
        _f(1, 1, 3, 3),
        _f(1, 1, 6, 1),
        None,
        {"padding": 1, "padding_mode": "reflect"},
        ConvValueError,
        _K,
    ),
    ("input_rank2", _f(4, 4), _f(1, 1, 2, 2), None, {}, ConvValueError, _R),
    ("input_rank5", _f(1, 1, 1, 4, 4), _f(1, 1, 2, 2), None, {}, ConvValueError, _R),
    ("weight_rank3", _f(1, 1, 4, 4), _f(1, 2, 2), None, {}, ConvValueError, "weight"),
    (
        "bias_length",
        _f(1, 1, 4, 4),
        _f(2, 1, 2, 2),
        _f(3),
        {},
        ConvValueError,
        "expected bias to be 1-dimensional",
    ),
    (
        "bias_2d",
        _f(1, 1, 4, 4),
        _f(2, 1, 2, 2),
        _f(2, 1),
        {},
        ConvValueError,
        "expected bias to be 1-dimensional",
    ),
    (
        "weight_dtype",
        _f(1, 1, 4, 4),
        _f(2, 1, 2, 2, dtype="float64"),
        None,
        {},
        ConvTypeError,
        "type",
    ),
    (
        "bias_dtype",
        _f(1, 1, 4, 4),
        _f(2, 1, 2, 2),
        _f(2, dtype="float64"),
        {},
        ConvTypeError,
        "should be the same",
    ),
    (
        "complex_weight",
        _f(1, 1, 4, 4),
        _f(2, 1, 2, 2, dtype="complex64"),
        None,
        {},
        ConvTypeError,
        "type",
    ),
    ("zero_out_channels", _f(1, 1, 4, 4), _f(0, 1, 1, 1), None, {}, ConvValueError, "weight"),
    ("zero_kernel", _f(1, 1, 4, 4), _f(1, 1, 0, 1), None, {}, ConvValueError, "weight"),
    ("zero_height", _f(1, 1, 0, 4), _f(2, 1, 1, 1), None, {}, ConvValueError, "size"),
    (
        "zero_width_padded",
        _f(1, 1, 4, 0),
        _f(2, 1, 1, 1),
        None,
        {"padding": 1},
        ConvValueError,
        "size",
    ),
    (
        "negative_crops_too_much",
        _f(1, 1, 6, 6),
        _f(1, 1, 3, 3),
        None,
        {"padding": -3, "padding_mode": "replicate"},
        ConvValueError,
        "size",
    ),
]


def _torch_call(x, weight, bias, keywords) -> None:
    config = {**_DEFAULTS, **keywords}
    tx, tw = torch.from_numpy(x), torch.from_numpy(weight)
    tb = None if bias is None else torch.from_numpy(bias)
    conv_keywords = {k: config[k] for k in ("stride", "padding", "dilation", "groups")}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if config["padding_mode"] == "zeros":
            torch.nn.functional.conv2d(tx, tw, tb, **conv_keywords)
        else:
            layer = torch.nn.Conv2d(
                tx.shape[-3],
                tw.shape[0],
                tuple(tw.shape[2:]),
                **conv_keywords,
                bias=tb is not None,
                padding_mode=config["padding_mode"],
            )
            layer(tx)


@pytest.mark.parametrize(
    ("x", "weight", "bias", "keywords", "error", "phrase"),
    [case[1:] for case in INVALID],
    ids=[case[0] for case in INVALID],
)
def test_invalid_arguments_raise_like_torch(backend, x, weight, bias, keywords, error, phrase):
    with pytest.raises((RuntimeError, ValueError, TypeError)) as theirs:
        _torch_call(x, weight, bias, keywords)
    with pytest.raises(error) as caught:
        conv2d(x, weight, bias, **keywords, backend=backend)
    assert phrase in str(caught.value).lower(), str(caught.value)
    if phrase in KEY_PHRASES:
        assert phrase in str(theirs.value).lower(), str(theirs.value)


# Limits where torch does *not* raise: convcli must not either, and must agree.
VALID_EDGES = [
    ("circular_equal", (1, 2, 4, 4), (3, 2, 3, 3), {"padding": 4, "padding_mode": "circular"}),
    ("circular_width1", (1, 1, 1, 4), (1, 1, 1, 1), {"padding": 1, "padding_mode": "circular"}),
    ("replicate_huge", (1, 1, 4, 4), (1, 1, 3, 3), {"padding": 9, "padding_mode": "replicate"}),
    (
        "reflect_size_minus_1",
        (1, 1, 4, 5),
        (2, 1, 3, 3),
        {"padding": (3, 4), "padding_mode": "reflect"},
    ),
    ("reflect_negative", (1, 1, 6, 6), (1, 1, 3, 3), {"padding": -1, "padding_mode": "reflect"}),
    (
        "replicate_negative_pair",
        (1, 1, 6, 6),
        (1, 1, 3, 3),
        {"padding": (-1, 2), "padding_mode": "replicate"},
    ),
    (
        "circular_negative_pair",
        (2, 1, 6, 7),
        (1, 1, 3, 3),
        {"padding": (2, -1), "padding_mode": "circular"},
    ),
    ("padding_one_tuple", (1, 1, 4, 4), (1, 1, 2, 2), {"padding": (1,)}),
    ("zeros_huge_padding", (1, 1, 2, 2), (1, 1, 3, 3), {"padding": 7}),
    ("kernel_equals_input", (1, 2, 5, 4), (3, 2, 5, 4), {}),
    (
        "same_dilated_even_reflect",
        (1, 2, 9, 9),
        (2, 2, 4, 2),
        {"padding": "same", "dilation": 3, "padding_mode": "reflect"},
    ),
    ("same_kernel_bigger_than_input", (1, 1, 3, 3), (1, 1, 5, 5), {"padding": "same"}),
    ("zero_batch_reflect", (0, 2, 4, 4), (3, 2, 3, 3), {"padding": 1, "padding_mode": "reflect"}),
    ("zero_batch_circular", (0, 2, 4, 4), (3, 2, 3, 3), {"padding": 2, "padding_mode": "circular"}),
    ("stride_bigger_than_input", (1, 1, 3, 3), (1, 1, 1, 1), {"stride": 5}),
]


@pytest.mark.parametrize(
    ("xshape", "wshape", "keywords"),
    [case[1:] for case in VALID_EDGES],
    ids=[case[0] for case in VALID_EDGES],
)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_valid_edges_match_torch(backend, xshape, wshape, keywords, dtype):
    config = _random_config(7, dtype, xshape, wshape, keywords)
    expected = torch_conv(config)
    y = ours(config, backend)
    assert y.dtype == np.dtype(dtype)
    assert_close(y, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_matches_torch_module(backend, dtype):
    """The Conv2d class with torch's module on the same weights (the issue's example)."""
    layer = Conv2d(
        16, 33, (3, 5), stride=(2, 1), padding=(4, 2), dilation=(3, 1), dtype=dtype, seed=0
    )
    x = _random(np.random.default_rng(3), (2, 16, 20, 24), dtype)
    config = {
        "dtype": dtype,
        "x": x,
        # writable copies: the layer's own arrays are read-only, which torch warns about
        "weight": np.array(layer.weight),
        "bias": None if layer.bias is None else np.array(layer.bias),
        "stride": (2, 1),
        "padding": (4, 2),
        "dilation": (3, 1),
        "groups": 1,
        "padding_mode": "zeros",
    }
    y = layer(x, backend=backend)
    assert y.dtype == np.dtype(dtype)
    assert_close(y, torch_conv(config), dtype)


LAYERS = [
    ((16, 33, (3, 5)), {"stride": (2, 1), "padding": (4, 2), "dilation": (3, 1)}),
    ((3, 8, 3), {"padding": "same", "padding_mode": "reflect", "bias": False}),
    ((4, 8, 3), {"groups": 4, "padding": 1}),
    ((2, 2, 1), {}),
    ((2, 4, (2, 3)), {"padding": "valid", "stride": 2}),
    ((2, 4, 3), {"padding_mode": "circular"}),
    ((6, 9, (4, 2)), {"groups": 3, "padding": "same", "dilation": 2, "padding_mode": "replicate"}),
]


@pytest.mark.parametrize(("args", "keywords"), LAYERS)
def test_layer_repr_and_init_like_torch(args, keywords):
    theirs = torch.nn.Conv2d(*args, **keywords)
    mine = Conv2d(*args, **keywords, seed=1)
    assert repr(mine) == repr(theirs)
    assert mine.weight.shape == tuple(theirs.weight.shape)
    assert (mine.bias is None) == (theirs.bias is None)
    # the same U(-b, b) bound: torch's kaiming_uniform(a=sqrt(5)) gives b = 1/sqrt(fan_in)
    in_channels, _, kernel = args
    kh, kw = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    bound = 1 / np.sqrt(in_channels // keywords.get("groups", 1) * kh * kw)
    for ours_, torch_ in ((mine.weight, theirs.weight), (mine.bias, theirs.bias)):
        if ours_ is None:
            continue
        assert np.abs(ours_).max() <= bound
        assert torch_.detach().abs().max().item() <= bound
        if ours_.size >= 50:  # many draws reach near the bound
            assert np.abs(ours_).max() > 0.8 * bound


@pytest.mark.parametrize(
    ("args", "keywords", "phrase"),
    [
        ((4, 6, 3), {"groups": 4}, "out_channels must be divisible by groups"),
        ((4, 6, 3), {"groups": 3}, "in_channels must be divisible by groups"),
        ((4, 6, 3), {"padding": "same", "stride": 2}, "padding='same' is not supported"),
        ((4, 6, 3), {"padding": "full"}, "Invalid padding string 'full'"),
        ((4, 6, 3), {"padding_mode": "mirror"}, "padding_mode must be one of"),
    ],
)
def test_layer_constructor_raises_like_torch(args, keywords, phrase):
    with pytest.raises(ValueError, match=phrase):
        torch.nn.Conv2d(*args, **keywords)
    with pytest.raises(ConvValueError, match=phrase):
        Conv2d(*args, **keywords)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_views_match_torch(backend, dtype):
    """Strided, reversed and Fortran-ordered arrays give torch's result for the values."""
    rng = np.random.default_rng(11)
    x = _random(rng, (2, 6, 9, 16), dtype)[:, ::2, ::-1, ::2]  # (2, 3, 9, 8), no copy
    weight = np.asfortranarray(_random(rng, (4, 3, 3, 2), dtype))
    bias = _random(rng, (8,), dtype)[::2]
    assert not (x.flags.c_contiguous or weight.flags.c_contiguous or bias.flags.c_contiguous)
    config = {
        "dtype": dtype,
        "x": np.ascontiguousarray(x),
        "weight": np.ascontiguousarray(weight),
        "bias": np.ascontiguousarray(bias),
        "stride": 1,
        "padding": (1, 2),
        "dilation": 1,
        "groups": 1,
        "padding_mode": "reflect",
    }
    y = conv2d(x, weight, bias, padding=(1, 2), padding_mode="reflect", backend=backend)
    assert y.dtype == np.dtype(dtype)
    assert_close(y, torch_conv(config), dtype)


# Larger than the sweep's: channel blocks with remainders, rows wider than a vector block.
MODERATE = [
    ("float32", (2, 8, 33, 37), (20, 8, 3, 3), {"padding": "same", "padding_mode": "reflect"}),
    ("float32", (1, 3, 64, 61), (16, 3, 7, 7), {"stride": 2, "padding": 3}),
    ("float32", (2, 12, 40, 45), (24, 1, 5, 5), {"groups": 12, "dilation": 2, "padding": 4,
                                                 "padding_mode": "circular"}),
    ("float32", (2, 16, 20, 20), (24, 16, 1, 1), {}),
    ("float64", (1, 6, 30, 29), (9, 2, 4, 3), {"groups": 3, "padding": "same", "dilation": (2, 1),
                                               "padding_mode": "replicate"}),
    ("complex64", (2, 4, 25, 27), (6, 4, 3, 5), {"stride": (1, 2), "padding": (1, 2)}),
]  # fmt: skip


@pytest.mark.parametrize(("dtype", "xshape", "wshape", "keywords"), MODERATE)
def test_moderate_sizes_match_torch(backend, dtype, xshape, wshape, keywords):
    config = _random_config(5, dtype, xshape, wshape, keywords)
    y = ours(config, backend)
    assert y.dtype == np.dtype(dtype)
    assert_close(y, torch_conv(config), dtype)
