"""The written-down semantics of ``convcli.spec``: output size, the 'same' split, the
padding index maps of every mode (against ``np.pad``), and every validation message."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from convcli.errors import ConvTypeError, ConvValueError
from convcli.spec import (
    PADDING_MODES,
    TORCH_PADDING_MODES,
    make_spec,
    out_size,
    resolve_padding,
    source_index,
)

NP_MODE = {
    "zeros": "constant",
    "reflect": "reflect",
    "replicate": "edge",
    "circular": "wrap",
    "symmetric": "symmetric",
}


def _a(*shape: int, dtype: str = "float32") -> np.ndarray:
    return np.zeros(shape, dtype=dtype)


# --- output size -------------------------------------------------------------------


def test_out_size_counts_window_positions():
    """torch's formula == the number of strided windows that fit the padded axis."""
    grid = itertools.product([1, 2, 5, 8], [0, 1, 3], [1, 2, 3], [1, 2, 3], [1, 2, 3])
    for size, total_pad, dilation, k, stride in grid:
        span = dilation * (k - 1) + 1
        padded = size + total_pad
        if padded < span:
            continue  # make_spec rejects these (tested below)
        starts = range(0, padded - span + 1, stride)
        assert out_size(size, total_pad, dilation, k, stride) == len(starts)


def test_spec_fields_and_shapes():
    x = _a(2, 6, 11, 13)
    w = _a(9, 2, 3, 4)
    spec = make_spec(x, w, _a(9), stride=(2, 3), padding=(1, 2), dilation=(2, 1), groups=3)
    assert (spec.n, spec.c_in, spec.h, spec.w) == (2, 6, 11, 13)
    assert (spec.c_out, spec.kh, spec.kw, spec.groups) == (9, 3, 4, 3)
    assert (spec.cin_g, spec.cout_g) == (2, 3)
    assert spec.stride == (2, 3) and spec.dilation == (2, 1)
    assert spec.pad == (1, 1, 2, 2)
    assert spec.has_bias and spec.batched and spec.dtype == "float32"
    assert spec.padding_mode == "zeros"
    assert (spec.h_out, spec.w_out) == ((11 + 2 - 4 - 1) // 2 + 1, (13 + 4 - 3 - 1) // 3 + 1)
    assert spec.out_shape == (2, 9, spec.h_out, spec.w_out)
    assert spec.macs == 2 * 9 * spec.h_out * spec.w_out * 2 * 3 * 4
    assert not spec.is_depthwise
    band = spec.with_rows(5, 0, 1)
    assert (band.h, band.pad) == (5, (0, 1, 2, 2))
    assert spec.with_batch(7).n == 7
    with pytest.raises(AttributeError):
        spec.n = 3  # frozen: everything below the API sees fixed values


def test_unbatched_and_depthwise_spec():
    spec = make_spec(_a(4, 5, 6), _a(8, 1, 3, 3), None, groups=4, padding="same")
    assert not spec.batched and spec.n == 1 and not spec.has_bias
    assert spec.out_shape == (8, 5, 6)
    assert spec.is_depthwise


def test_zero_batch_spec():
    spec = make_spec(_a(0, 3, 7, 5), _a(4, 3, 3, 2), None)
    assert spec.out_shape == (0, 4, 5, 4)


def test_int_pair_and_one_tuple_arguments_are_normalised():
    a = make_spec(_a(1, 1, 9, 9), _a(1, 1, 3, 3), None, stride=2, padding=1, dilation=2)
    b = make_spec(
        _a(1, 1, 9, 9), _a(1, 1, 3, 3), None, stride=[2, 2], padding=(1,), dilation=np.int64(2)
    )
    assert a == b
    assert a.stride == (2, 2) and a.pad == (1, 1, 1, 1) and a.dilation == (2, 2)


# --- 'same' and 'valid' -------------------------------------------------------------


@pytest.mark.parametrize("k", range(1, 8))
@pytest.mark.parametrize("d", [1, 2, 3])
def test_same_split_puts_the_odd_pixel_after(k, d):
    top, bottom, left, right = resolve_padding("same", (k, k + 1), (1, 1), (d, d))
    for before, after, kk in ((top, bottom, k), (left, right, k + 1)):
        total = d * (kk - 1)
        assert before + after == total
        assert before == total // 2  # the odd extra pixel goes right/bottom
        assert after - before in (0, 1)


@pytest.mark.parametrize(("kh", "kw", "dh", "dw"), [(3, 4, 1, 1), (4, 4, 3, 3), (2, 5, 2, 1)])
def test_same_keeps_the_input_size(kh, kw, dh, dw):
    spec = make_spec(_a(1, 2, 10, 11), _a(3, 2, kh, kw), None, padding="same", dilation=(dh, dw))
    assert spec.out_shape == (1, 3, 10, 11)


def test_valid_is_no_padding():
    assert resolve_padding("valid", (3, 5), (2, 3), (1, 2)) == (0, 0, 0, 0)


def test_padding_pair_is_height_then_width():
    assert resolve_padding((1, 3), (3, 3), (1, 1), (1, 1)) == (1, 1, 3, 3)


# --- padding index maps -------------------------------------------------------------


def _limit(mode: str, size: int) -> int:
    return {"reflect": size - 1, "circular": size}.get(mode, 3 * size + 1)


@pytest.mark.parametrize("mode", PADDING_MODES)
@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_source_index_matches_np_pad(mode, size):
    """Every mode's index map equals ``np.pad`` applied to the positions themselves."""
    src = np.arange(size)
    for before, after in itertools.product(range(_limit(mode, size) + 1), repeat=2):
        idx, valid = source_index(size, before, after, mode)
        assert idx.shape == valid.shape == (size + before + after,)
        assert idx.min() >= 0 and idx.max() < size  # always a legal index
        if mode == "zeros":
            expected = np.pad(src, (before, after), mode="constant", constant_values=-1)
            np.testing.assert_array_equal(valid, expected >= 0)
            np.testing.assert_array_equal(idx[valid], expected[valid])
        else:
            assert valid.all()
            np.testing.assert_array_equal(idx, np.pad(src, (before, after), mode=NP_MODE[mode]))


def test_source_index_reflect_and_symmetric_differ_at_the_edge():
    # reflect mirrors about the edge pixel (torch), symmetric repeats it (scipy/OpenCV)
    np.testing.assert_array_equal(source_index(4, 2, 2, "reflect")[0], [2, 1, 0, 1, 2, 3, 2, 1])
    np.testing.assert_array_equal(source_index(4, 2, 2, "symmetric")[0], [1, 0, 0, 1, 2, 3, 3, 2])
    np.testing.assert_array_equal(source_index(3, 2, 2, "circular")[0], [1, 2, 0, 1, 2, 0, 1])
    np.testing.assert_array_equal(source_index(3, 2, 2, "replicate")[0], [0, 0, 0, 1, 2, 2, 2])


def test_symmetric_accepts_padding_larger_than_the_input():
    idx, valid = source_index(2, 7, 5, "symmetric")
    assert valid.all()
    np.testing.assert_array_equal(idx, np.pad(np.arange(2), (7, 5), mode="symmetric"))
    spec = make_spec(_a(1, 1, 2, 2), _a(1, 1, 3, 3), None, padding=9, padding_mode="symmetric")
    assert spec.out_shape == (1, 1, 18, 18)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular", "symmetric"])
def test_negative_padding_crops_outside_zeros_mode(mode):
    """As torch's F.pad: a negative amount removes pixels (only zeros mode refuses it)."""
    idx, valid = source_index(6, -1, -2, mode)
    assert valid.all()
    np.testing.assert_array_equal(idx, [1, 2, 3])
    spec = make_spec(_a(1, 1, 6, 6), _a(1, 1, 3, 3), None, padding=(-1, 2), padding_mode=mode)
    assert spec.pad == (-1, -1, 2, 2)
    assert spec.out_shape == (1, 1, 2, 8)


def test_torch_modes_are_a_subset():
    assert set(TORCH_PADDING_MODES) < set(PADDING_MODES)
    assert "symmetric" in PADDING_MODES and "symmetric" not in TORCH_PADDING_MODES


# --- validation: every check in the list, in torch's wording ----------------

ERRORS = [
    # id, x, weight, bias, keywords, exception, phrase
    ("groups_cout", _a(1, 4, 5, 5), _a(3, 2, 1, 1), None, {"groups": 2}, ConvValueError,
     "Given groups=2, expected weight to be divisible by 2 at dimension 0"),
    ("groups_cin", _a(1, 3, 5, 5), _a(4, 2, 1, 1), None, {"groups": 2}, ConvValueError,
     "expected input[1, 3, 5, 5] to have 4 channels, but got 3 channels instead"),
    ("weight_channels", _a(1, 3, 5, 5), _a(4, 2, 1, 1), None, {}, ConvValueError,
     "Given groups=1, weight of size [4, 2, 1, 1], expected input[1, 3, 5, 5] to have 2"),
    ("same_strided", _a(1, 1, 5, 5), _a(1, 1, 3, 3), None, {"padding": "same", "stride": 2},
     ConvValueError, "padding='same' is not supported for strided convolutions"),
    ("stride_zero", _a(1, 1, 5, 5), _a(1, 1, 3, 3), None, {"stride": 0}, ConvValueError,
     "non-positive stride is not supported"),
    ("stride_negative", _a(1, 1, 5, 5), _a(1, 1, 3, 3), None, {"stride": (1, -2)},
     ConvValueError, "non-positive stride is not supported"),
    ("dilation_zero", _a(1, 1, 5, 5), _a(1, 1, 3, 3), None, {"dilation": (0, 1)},
     ConvValueError, "dilation should be greater than zero"),
    ("dilation_negative", _a(1, 1, 5, 5), _a(1, 1, 3, 3), None, {"dilation": -1},
     ConvValueError, "dilation should be greater than zero"),
    ("groups_zero", _a(1, 1, 5, 5), _a(1, 1, 3, 3), None, {"groups": 0}, ConvValueError,
     "non-positive groups is not supported"),
    ("groups_negative", _a(1, 1, 5, 5), _a(1, 1, 3, 3), None, {"groups": -2}, ConvValueError,
     "non-positive groups is not supported"),
    ("negative_padding_zeros", _a(1, 1, 5, 5), _a(1, 1, 3, 3), None, {"padding": (0, -1)},
     ConvValueError, "negative padding is not supported"),
    ("padding_string", _a(1, 1, 5, 5), _a(1, 1, 3, 3), None, {"padding": "full"},
     ConvValueError, "Invalid padding string 'full'"),
    ("padding_mode", _a(1, 1, 5, 5), _a(1, 1, 3, 3), None, {"padding_mode": "mirror"},
     ConvValueError, "padding_mode must be one of"),
    ("reflect_too_large", _a(1, 1, 4, 6), _a(1, 1, 3, 3), None,
     {"padding": 4, "padding_mode": "reflect"}, ConvValueError,
     "Padding size should be less than the corresponding input dimension"),
    ("reflect_equal", _a(1, 1, 6, 3), _a(1, 1, 3, 3), None,
     {"padding": (1, 3), "padding_mode": "reflect"}, ConvValueError,
     "padding (3, 3) at dimension 3 of input [1, 1, 6, 3]"),
    ("circular_too_large", _a(1, 1, 4, 6), _a(1, 1, 3, 3), None,
     {"padding": (5, 0), "padding_mode": "circular"}, ConvValueError,
     "Padding value causes wrapping around more than once"),
    ("kernel_too_large", _a(1, 1, 4, 4), _a(1, 1, 5, 1), None, {}, ConvValueError,
     "Calculated padded input size per channel: (4 x 4). Kernel size: (5 x 1). "
     "Kernel size can't be greater than actual input size"),
    ("dilated_kernel_too_large", _a(1, 1, 6, 6), _a(1, 1, 2, 2), None,
     {"dilation": (1, 6), "padding": (0, 0)}, ConvValueError, "Kernel size: (2 x 7)"),
    ("input_rank_2", _a(5, 5), _a(1, 1, 3, 3), None, {}, ConvValueError,
     "Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of size: [5, 5]"),
    ("input_rank_5", _a(1, 1, 1, 5, 5), _a(1, 1, 3, 3), None, {}, ConvValueError,
     "but got input of size: [1, 1, 1, 5, 5]"),
    ("weight_rank", _a(1, 1, 5, 5), _a(1, 3, 3), None, {}, ConvValueError, "4D weight"),
    ("bias_length", _a(1, 1, 5, 5), _a(2, 1, 3, 3), _a(3), {}, ConvValueError,
     "expected bias to be 1-dimensional with 2 elements, but got bias of size [3] instead"),
    ("bias_rank", _a(1, 1, 5, 5), _a(2, 1, 3, 3), _a(2, 1), {}, ConvValueError,
     "but got bias of size [2, 1] instead"),
    ("weight_dtype", _a(1, 1, 5, 5), _a(1, 1, 3, 3, dtype="float64"), None, {}, ConvTypeError,
     "Input type (Float) and weight type (Double) should be the same"),
    ("bias_dtype", _a(1, 1, 5, 5), _a(1, 1, 3, 3), _a(1, dtype="complex64"), {},
     ConvTypeError, "Input type (Float) and bias type (ComplexFloat) should be the same"),
    ("input_dtype", _a(1, 1, 5, 5, dtype="int32"), _a(1, 1, 3, 3, dtype="int32"), None, {},
     ConvTypeError, "input has dtype int32"),
    ("empty_height", _a(1, 1, 0, 5), _a(1, 1, 1, 1), None, {}, ConvValueError,
     "Expected non-zero size for non-batch dimensions"),
    ("empty_weight", _a(1, 1, 5, 5), _a(0, 1, 1, 1), None, {}, ConvValueError,
     "weight must have non-zero sizes"),
    ("stride_float", _a(1, 1, 5, 5), _a(1, 1, 3, 3), None, {"stride": 1.5}, ConvTypeError,
     "stride must be an int or a pair of ints"),
    ("stride_bool", _a(1, 1, 5, 5), _a(1, 1, 3, 3), None, {"stride": True}, ConvTypeError,
     "stride must be an int"),
    ("padding_triple", _a(1, 1, 5, 5), _a(1, 1, 3, 3), None, {"padding": (1, 1, 1)},
     ConvTypeError, "padding must be an int or a pair of ints"),
    ("groups_float", _a(1, 1, 5, 5), _a(1, 1, 3, 3), None, {"groups": 1.0}, ConvTypeError,
     "groups must be an int"),
    ("input_list", [[[0.0]]], _a(1, 1, 1, 1), None, {}, ConvTypeError,
     "input must be a numpy.ndarray"),
    # torch's int64 limit: past it NumPy's index arithmetic raised OverflowError
    ("stride_int64", _a(1, 1, 5, 5), _a(1, 1, 3, 3), None, {"stride": 2**63}, ConvValueError,
     "stride 9223372036854775808 does not fit in a 64-bit integer"),
    ("stride_pair_int64", _a(1, 1, 5, 5), _a(1, 1, 3, 3), None, {"stride": (1, 2**64)},
     ConvValueError, "does not fit in a 64-bit integer"),
    ("padding_int64", _a(1, 1, 5, 5), _a(1, 1, 3, 3), None,
     {"padding": -(2**63) - 1, "padding_mode": "replicate"}, ConvValueError,
     "does not fit in a 64-bit integer"),
    ("dilation_int64", _a(1, 1, 5, 5), _a(1, 1, 3, 3), None, {"dilation": 2**63},
     ConvValueError, "dilation 9223372036854775808 does not fit in a 64-bit integer"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("x", "weight", "bias", "keywords", "error", "phrase"),
    [case[1:] for case in ERRORS],
    ids=[case[0] for case in ERRORS],
)
def test_validation_messages(x, weight, bias, keywords, error, phrase):
    with pytest.raises(error) as caught:
        make_spec(x, weight, bias, **keywords)
    assert phrase in str(caught.value)
    # our errors are the built-in kinds too, so callers may catch either
    assert isinstance(caught.value, ValueError if error is ConvValueError else TypeError)


@pytest.mark.parametrize("mode", ["reflect", "circular"])
def test_mode_limits_are_inclusive_where_torch_allows(mode):
    """reflect: padding < size passes; circular: padding <= size passes."""
    size = 4
    limit = size - 1 if mode == "reflect" else size
    ok = make_spec(_a(1, 1, size, size), _a(1, 1, 3, 3), None, padding=limit, padding_mode=mode)
    assert ok.out_shape == (1, 1, size + 2 * limit - 2, size + 2 * limit - 2)
    with pytest.raises(ConvValueError):
        make_spec(_a(1, 1, size, size), _a(1, 1, 3, 3), None, padding=limit + 1, padding_mode=mode)


def test_replicate_and_zeros_have_no_padding_limit():
    for mode in ("replicate", "zeros"):
        spec = make_spec(_a(1, 1, 2, 2), _a(1, 1, 1, 1), None, padding=10, padding_mode=mode)
        assert spec.out_shape == (1, 1, 22, 22)
