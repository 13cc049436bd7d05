"""Committed golden outputs from torch 2.13 (``tools/make_golden.py``) on every backend.

The cases are the Conv2d configurations of torch's own test suite, each for float16,
float32, float64, complex64 and complex128 inputs. Outputs are compared with torch's
result computed in float64/complex128 from the same input values, within conftest's
``RTOL`` of the output's magnitude (float32/complex64 2e-5, float64/complex128 1e-10:
stricter than the issue's 2e-4 and 1e-9; float16 2e-3); shapes and dtypes must equal
torch's.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from conftest import assert_close

from convcli import Conv2d, conv2d

GOLDEN_DIR = Path(__file__).parent / "golden"
DTYPES = ("float16", "float32", "float64", "complex64", "complex128")


class Case(NamedTuple):
    args: dict
    x: np.ndarray
    weight: np.ndarray
    bias: np.ndarray | None
    out: np.ndarray
    out64: np.ndarray


def _tupled(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


def load_golden(dtype: str) -> dict[str, Case]:
    """The cases of ``conv2d_<dtype>.npz`` by name, in generation order."""
    cases = {}
    with np.load(GOLDEN_DIR / f"conv2d_{dtype}.npz", allow_pickle=False) as data:
        names = sorted({key.split("/")[0] for key in data.files})
        for name in names:
            args = {k: _tupled(v) for k, v in json.loads(str(data[f"{name}/args"])).items()}
            bias = data[f"{name}/bias"] if f"{name}/bias" in data.files else None
            cases[name] = Case(
                args,
                data[f"{name}/x"],
                data[f"{name}/weight"],
                bias,
                data[f"{name}/out"],
                data[f"{name}/out64"],
            )
    return dict(sorted(cases.items(), key=lambda item: item[1].args["index"]))


GOLDEN = {dtype: load_golden(dtype) for dtype in DTYPES}
ALL_CASES = [(dtype, name) for dtype in DTYPES for name in GOLDEN[dtype]]
MODULE_CASES = [(d, n) for d, n in ALL_CASES if GOLDEN[d][n].args["api"] == "module"]


def _conv_kwargs(args: dict) -> dict:
    keys = ("stride", "padding", "dilation", "groups", "padding_mode")
    return {k: args[k] for k in keys}


def _check(y: np.ndarray, case: Case, dtype: str) -> None:
    assert y.dtype == case.out.dtype == np.dtype(dtype)
    assert y.shape == case.out.shape
    assert_close(y, case.out64, dtype)


def test_golden_files_cover_torch_suite():
    """Every family of torch's Conv2d tests is present for every dtype."""
    for dtype in DTYPES:
        names = set(GOLDEN[dtype])
        assert len(names) >= 40
        for needed in (
            "nn_plain",
            "nn_strided",
            "nn_dilated",
            "nn_no_bias",
            "nn_zero_batch",
            "nn_groups",
            "nn_pad_same_dilated",
            "nn_depthwise_with_multiplier",
            "nn_reflect_stride2_pad2",
            "nn_circular_stride2_pad2",
            "nn_replicate_stride2_pad2",
            "si_unbatched_s1",
            "tc_same_even_dil3",
        ):
            assert needed in names, (dtype, needed)
    total = sum(p.stat().st_size for p in GOLDEN_DIR.glob("*.npz"))
    assert total < 2 * 2**20


@pytest.mark.parametrize(("dtype", "name"), ALL_CASES, ids=[f"{d}-{n}" for d, n in ALL_CASES])
def test_torch_itself_within_tolerance(dtype, name):
    """torch's own output in the case dtype meets the tolerance we impose on ours."""
    case = GOLDEN[dtype][name]
    _check(case.out, case, dtype)


@pytest.mark.parametrize(("dtype", "name"), ALL_CASES, ids=[f"{d}-{n}" for d, n in ALL_CASES])
def test_conv2d_matches_golden(backend, dtype, name):
    case = GOLDEN[dtype][name]
    y = conv2d(case.x, case.weight, case.bias, **_conv_kwargs(case.args), backend=backend)
    _check(y, case, dtype)


@pytest.mark.parametrize(("dtype", "name"), MODULE_CASES, ids=[f"{d}-{n}" for d, n in MODULE_CASES])
def test_conv2d_class_on_golden_weights(backend, dtype, name, tmp_path):
    case = GOLDEN[dtype][name]
    args = case.args
    layer = Conv2d(
        args["in_channels"],
        args["out_channels"],
        args["kernel_size"],
        **_conv_kwargs(args),
        bias=args["bias"],
        dtype=dtype,
        seed=0,
    )
    assert layer.weight.shape == case.weight.shape
    assert layer.weight.dtype == np.dtype(dtype)
    assert (layer.bias is None) == (case.bias is None)
    if layer.bias is not None:
        assert layer.bias.shape == case.bias.shape
    layer.weight, layer.bias = case.weight, case.bias
    _check(layer(case.x, backend=backend), case, dtype)
    # the saved weights and configuration give the same layer back
    layer.save(tmp_path / "layer.npz")
    again = Conv2d.load(tmp_path / "layer.npz")
    _check(again(case.x, backend=backend), case, dtype)


def test_generator_reproduces_files():
    """``tools/make_golden.py`` regenerates the committed inputs and outputs."""
    pytest.importorskip("torch")
    path = Path(__file__).parents[1] / "tools" / "make_golden.py"
    spec = importlib.util.spec_from_file_location("make_golden", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_golden"] = module
    try:
        spec.loader.exec_module(module)
        for dtype in DTYPES:
            fresh = module.make_cases(dtype)
            with np.load(GOLDEN_DIR / f"conv2d_{dtype}.npz", allow_pickle=False) as data:
                assert sorted(fresh) == sorted(data.files)
                for key, value in fresh.items():
                    if key.endswith(("/out", "/out64")):
                        # another torch build may round differently in the last bits
                        assert_close(data[key], value, dtype)
                    else:
                        np.testing.assert_array_equal(data[key], value, err_msg=key)
    finally:
        del sys.modules["make_golden"]
