"""Generate the golden Conv2d outputs in ``tests/golden/`` with torch (the test oracle).

The cases are the Conv2d configurations torch's own test suite uses:

* ``torch/testing/_internal/common_nn.py``: the ``module_tests`` / ``new_module_tests``
  entries for ``Conv2d`` (plain, strided, padding, dilated, no_bias, zero_batch, groups,
  pad_valid, pad_same, pad_same_dilated, the depthwise family, and the generated
  ``{reflect,circular,replicate,zeros}_stride2_pad2`` padding-mode tests);
* ``common_methods_invocations.py``: ``sample_inputs_conv2d`` (functional form, each
  batched and unbatched);
* ``common_modules.py``: ``module_inputs_torch_nn_ConvNd`` for N=2 (with and without
  ``padding='same'``, batched and unbatched);
* ``test/nn/test_convolution.py``: ``test_conv2d_same_padding`` (even kernels with
  dilation: the asymmetric 'same' split);

plus 'same' with even kernels and dilation under each non-zero padding mode. Every case
is stored for float16, float32, float64, complex64 and complex128 inputs.

Inputs come from NumPy's seeded generator (not torch's, so that the files do not depend
on torch's RNG), torch runs single-threaded and deterministic, and the ``.npz`` files are
written with fixed zip timestamps: re-running the script reproduces them byte for byte.

Layout of ``tests/golden/conv2d_<dtype>.npz``: for each case name ``c``,

* ``c/args``: a JSON string: ``api`` ("module" or "functional"), the conv2d keywords
  (``stride``, ``padding``, ``dilation``, ``groups``, ``padding_mode``; pairs as lists),
  for modules also ``in_channels``, ``out_channels``, ``kernel_size``, ``bias``, and the
  ``source`` in torch's tests;
* ``c/x``, ``c/weight``, ``c/bias`` (absent without bias): the inputs in the case dtype;
* ``c/out``: torch's output in the case dtype;
* ``c/out64``: torch's output computed in float64 (complex128) from the same values.

Usage: ``python tools/make_golden.py [--out tests/golden]``.
"""

from __future__ import annotations

import argparse
import io
import json
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

DTYPES = ("float16", "float32", "float64", "complex64", "complex128")
WIDE = {
    "float16": "float64",
    "float32": "float64",
    "float64": "float64",
    "complex64": "complex128",
    "complex128": "complex128",
}

# (name, source, api, input shape, weight shape, has bias, keywords)
# For module cases the constructor is Conv2d(C_in, C_out, kernel, **keywords, bias=...).
_NN = "common_nn.module_tests"
_NEW = "common_nn.new_module_tests"
_SI = "common_methods_invocations.sample_inputs_conv2d"
_MI = "common_modules.module_inputs_torch_nn_ConvNd(N=2)"
_TC = "test_convolution.test_conv2d_same_padding"

CASES: list[tuple[str, str, str, tuple, tuple, bool, dict]] = [
    ("nn_plain", _NN, "module", (2, 3, 7, 5), (4, 3, 3, 2), True, {}),
    ("nn_strided", _NN, "module", (2, 3, 6, 6), (4, 3, 3, 3), True, {"stride": (2, 2)}),
    (
        "nn_padding",
        _NN,
        "module",
        (2, 3, 6, 6),
        (4, 3, 3, 3),
        True,
        {"stride": (2, 2), "padding": (1, 1)},
    ),
    (
        "nn_dilated",
        _NN,
        "module",
        (2, 3, 8, 8),
        (2, 3, 3, 3),
        True,
        {"stride": (2, 2), "padding": (1, 1), "dilation": (2, 2)},
    ),
    ("nn_no_bias", _NN, "module", (2, 3, 6, 5), (4, 3, 3, 2), False, {}),
    ("nn_zero_batch", _NN, "module", (0, 3, 7, 5), (4, 3, 3, 2), True, {}),
    ("nn_groups", _NN, "module", (2, 4, 6, 5), (6, 2, 3, 2), True, {"groups": 2}),
    ("nn_pad_valid", _NN, "module", (2, 2, 6, 5), (4, 2, 3, 4), True, {"padding": "valid"}),
    ("nn_pad_same", _NN, "module", (2, 2, 6, 5), (4, 2, 3, 4), True, {"padding": "same"}),
    (
        "nn_pad_same_dilated",
        _NN,
        "module",
        (2, 2, 6, 5),
        (4, 2, 3, 4),
        True,
        {"padding": "same", "dilation": 2},
    ),
    ("nn_depthwise", _NN, "module", (2, 4, 6, 6), (4, 1, 3, 3), True, {"groups": 4}),
    (
        "nn_depthwise_with_multiplier",
        _NN,
        "module",
        (2, 4, 6, 6),
        (8, 1, 3, 3),
        True,
        {"groups": 4},
    ),
    (
        "nn_depthwise_strided",
        _NN,
        "module",
        (2, 4, 6, 6),
        (4, 1, 3, 3),
        True,
        {"stride": (2, 2), "groups": 4},
    ),
    (
        "nn_depthwise_padded",
        _NN,
        "module",
        (2, 4, 6, 6),
        (4, 1, 3, 3),
        True,
        {"padding": (1, 1), "groups": 4},
    ),
    (
        "nn_depthwise_dilated",
        _NN,
        "module",
        (2, 4, 5, 5),
        (4, 1, 2, 2),
        True,
        {"dilation": (2, 2), "groups": 4},
    ),
    *[
        (
            f"nn_{mode}_stride2_pad2",
            _NEW,
            "module",
            (2, 2, 4, 4),
            (3, 2, 3, 3),
            True,
            {"stride": 2, "padding": (1, 2), "padding_mode": mode},
        )
        for mode in ("reflect", "circular", "replicate", "zeros")
    ],
    *[
        (
            f"{tag}_{name}",
            _SI,
            "functional",
            shape if tag == "si" else shape[1:],
            wshape,
            bias,
            kw,
        )
        for tag in ("si", "si_unbatched")
        for name, shape, wshape, bias, kw in [
            ("s0", (1, 3, 4, 4), (3, 3, 3, 3), True, {"stride": (2, 2), "padding": 2}),
            (
                "s1",
                (2, 4, 8, 8),
                (2, 2, 3, 3),
                True,
                {"stride": (3, 2), "padding": (2, 1), "groups": 2, "dilation": (4, 4)},
            ),
            (
                "s2",
                (1, 4, 5, 5),
                (1, 4, 2, 3),
                True,
                {"stride": 2, "padding": 1, "dilation": (2, 3)},
            ),
            ("s4", (1, 2, 4, 3), (4, 2, 3, 4), False, {"stride": 2, "padding": 1}),
            ("s5_valid", (1, 4, 5, 5), (1, 4, 2, 3), True, {"stride": 2, "padding": "valid"}),
            ("s6_same_dil3", (1, 4, 5, 5), (1, 4, 2, 3), True, {"padding": "same", "dilation": 3}),
            (
                "dw_stride32",
                (2, 4, 6, 6),
                (4, 1, 3, 3),
                True,
                {"groups": 4, "stride": (3, 2)},
            ),
            ("dw_mult_nobias", (2, 4, 6, 6), (8, 1, 3, 3), False, {"groups": 4}),
            ("defaults", (1, 4, 5, 5), (3, 4, 3, 3), False, {}),
        ]
    ],
    ("mi_plain", _MI, "module", (2, 4, 3, 4), (5, 4, 3, 3), True, {}),
    ("mi_plain_unbatched", _MI, "module", (4, 3, 4), (5, 4, 3, 3), True, {}),
    ("mi_same", _MI, "module", (2, 4, 3, 4), (5, 4, 3, 3), True, {"padding": "same"}),
    ("mi_same_unbatched", _MI, "module", (4, 3, 4), (5, 4, 3, 3), True, {"padding": "same"}),
    ("tc_same_even", _TC, "functional", (1, 1, 10, 11), (1, 1, 4, 5), False, {"padding": "same"}),
    (
        "tc_same_dil2",
        _TC,
        "functional",
        (1, 1, 10, 11),
        (1, 1, 3, 4),
        False,
        {"padding": "same", "dilation": 2},
    ),
    (
        "tc_same_even_dil3",
        _TC,
        "functional",
        (1, 1, 10, 11),
        (1, 1, 4, 4),
        False,
        {"padding": "same", "dilation": 3},
    ),
    *[
        (
            f"same_even_{mode}",
            "convcli: 'same' asymmetric split under each padding mode",
            "module",
            (1, 2, 7, 8),
            (3, 2, 4, 3),
            True,
            {"padding": "same", "dilation": (1, 2), "padding_mode": mode},
        )
        for mode in ("reflect", "replicate", "circular")
    ],
]

DEFAULTS = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "padding_mode": "zeros"}


def _jsonable(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def _random(rng: np.random.Generator, shape: tuple, dtype: str) -> np.ndarray:
    values = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        values = values + 1j * rng.standard_normal(shape)
    return values.astype(dtype)


def _torch_conv(torch, api: str, x, weight, bias, kw: dict):
    """torch's output for one case, via nn.Conv2d (module) or F.conv2d (functional)."""
    if api == "functional":
        return torch.nn.functional.conv2d(
            x,
            weight,
            bias,
            stride=kw["stride"],
            padding=kw["padding"],
            dilation=kw["dilation"],
            groups=kw["groups"],
        )
    c_out, cin_g, kh, kw_ = weight.shape
    layer = torch.nn.Conv2d(
        cin_g * kw["groups"],
        c_out,
        (kh, kw_),
        stride=kw["stride"],
        padding=kw["padding"],
        dilation=kw["dilation"],
        groups=kw["groups"],
        bias=bias is not None,
        padding_mode=kw["padding_mode"],
        dtype=weight.dtype,
    )
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
        return layer(x)


def make_cases(dtype: str) -> dict[str, np.ndarray]:
    """All arrays of the golden file for ``dtype`` (keys ``case/part``)."""
    import torch

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        with warnings.catch_warnings():
            # torch notes that even kernels with 'same' copy the input; that is what we test
            warnings.filterwarnings("ignore", message="Using padding='same' with even kernel")
            return _make_cases(torch, dtype)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _make_cases(torch, dtype: str) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for index, (name, source, api, shape, wshape, has_bias, kw) in enumerate(CASES):
        # one seed per case and dtype, so adding a case leaves the others unchanged
        seed = zlib.crc32(f"{name}/{dtype}".encode())
        rng = np.random.default_rng(seed)
        x = _random(rng, shape, dtype)
        weight = _random(rng, wshape, dtype)
        bias = _random(rng, (wshape[0],), dtype) if has_bias else None
        args = {**DEFAULTS, **kw}
        with torch.no_grad():
            out = _torch_conv(
                torch,
                api,
                torch.from_numpy(x),
                torch.from_numpy(weight),
                None if bias is None else torch.from_numpy(bias),
                args,
            ).numpy()
            wide = WIDE[dtype]
            out64 = _torch_conv(
                torch,
                api,
                torch.from_numpy(x.astype(wide)),
                torch.from_numpy(weight.astype(wide)),
                None if bias is None else torch.from_numpy(bias.astype(wide)),
                args,
            ).numpy()
        meta = {"api": api, "source": source, "index": index}
        meta.update({k: _jsonable(v) for k, v in args.items()})
        if api == "module":
            meta.update(
                in_channels=wshape[1] * args["groups"],
                out_channels=wshape[0],
                kernel_size=list(wshape[2:]),
                bias=has_bias,
            )
        arrays[f"{name}/args"] = np.array(json.dumps(meta, sort_keys=True))
        arrays[f"{name}/x"] = x
        arrays[f"{name}/weight"] = weight
        if bias is not None:
            arrays[f"{name}/bias"] = bias
        arrays[f"{name}/out"] = np.ascontiguousarray(out)
        arrays[f"{name}/out64"] = np.ascontiguousarray(out64)
    return arrays


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed`` but byte-reproducible (fixed zip timestamps)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[key]), allow_pickle=False)
            zf.writestr(info, buf.getvalue())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "tests/golden")
    ns = parser.parse_args(argv)
    ns.out.mkdir(parents=True, exist_ok=True)
    for dtype in DTYPES:
        write_npz(ns.out / f"conv2d_{dtype}.npz", make_cases(dtype))


if __name__ == "__main__":
    main()
