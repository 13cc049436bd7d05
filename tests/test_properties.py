"""Property tests (hypothesis): every backend agrees with the independent naive reference
(``tests/naive.py``: explicit ``np.pad`` + loops over taps) and with the other backend,
over random shapes, parameters and padding modes, including ``symmetric`` with padding
of any size. Tolerances are conftest's ``RTOL``.

The examples are derandomized by default so that CI is reproducible; set
``HYPOTHESIS_PROFILE=explore`` to draw fresh ones.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import numpy as np
import pytest
from conftest import assert_close, band_budget, opencl_available
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from naive import naive_conv2d

from convcli import conv2d

with warnings.catch_warnings():
    # hypothesis imports libcst to print a patch after a failure; libcst's import warns
    # (mypy_extensions.TypedDict), which filterwarnings=error turns into an INTERNALERROR
    # that hides the failing example. Import it once here, quietly.
    warnings.simplefilter("ignore", DeprecationWarning)
    with contextlib.suppress(ImportError):
        import hypothesis.extra._patching  # noqa: F401

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    print_blob=True,
    # OpenCL's first call per kernel geometry builds a program: slow, and expected
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "explore",
    parent=settings.get_profile("ci"),
    derandomize=False,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DTYPES = ("float32", "float64", "complex64", "complex128", "float16")
MODES = ("zeros", "reflect", "replicate", "circular", "symmetric")


def _random(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    values = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        values = values + 1j * rng.standard_normal(shape)
    return values.astype(dtype)


def _same_split(k: int, d: int) -> tuple[int, int]:
    # torch: total d*(k-1), the odd extra pixel after (bottom/right)
    total = d * (k - 1)
    return total // 2, total - total // 2


def _pad_limit(mode: str, size: int) -> int:
    """Largest padding torch (or symmetric's definition) allows on an axis of ``size``."""
    return {"reflect": size - 1, "circular": size}.get(mode, 3 * size + 2)


@st.composite
def problems(draw, dtypes: tuple[str, ...] = DTYPES) -> dict:
    """A valid convolution problem: arrays, conv2d keywords and the explicit padding."""
    dtype = draw(st.sampled_from(dtypes))
    mode = draw(st.sampled_from(MODES))
    groups = draw(st.integers(1, 3))
    cin_g = draw(st.integers(1, 3))
    cout_g = draw(st.integers(1, 3))
    batched = draw(st.booleans())
    n = draw(st.integers(0, 2)) if batched else 1
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    kind = draw(st.sampled_from(["int", "pair", "same", "valid"]))
    limits = (_pad_limit(mode, h), _pad_limit(mode, w))
    if kind == "int":
        both = draw(st.integers(0, min(4, *limits)))
        amounts = (both, both)
    elif kind == "pair":
        amounts = (draw(st.integers(0, min(4, limits[0]))), draw(st.integers(0, min(4, limits[1]))))
    else:
        amounts = (0, 0)
    kernel, pad = [], []
    for axis, size in enumerate((h, w)):
        d = dilation[axis]
        if kind == "same":
            # the largest kernel whose 'same' padding, ceil(d*(k-1)/2), the mode allows
            k = draw(st.integers(1, max(1, min(6, (2 * limits[axis]) // d + 1))))
            before, after = _same_split(k, d)
        else:
            before = after = amounts[axis]
            # the kernel must fit the padded input
            k = draw(st.integers(1, max(1, min(6, (size + 2 * before - 1) // d + 1))))
        kernel.append(k)
        pad += [before, after]
    padding: object = {"int": amounts[0], "pair": amounts, "same": "same", "valid": "valid"}[kind]
    if kind == "same":
        stride = (1, 1)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    c_in, c_out = cin_g * groups, cout_g * groups
    xshape = (n, c_in, h, w) if batched else (c_in, h, w)
    has_bias = draw(st.booleans())
    return {
        "dtype": dtype,
        "x": _random(rng, xshape, dtype),
        "weight": _random(rng, (c_out, cin_g, *kernel), dtype),
        "bias": _random(rng, (c_out,), dtype) if has_bias else None,
        "keywords": {
            "stride": stride,
            "padding": padding,
            "dilation": dilation,
            "groups": groups,
            "padding_mode": mode,
        },
        "pad": tuple(pad),
    }


def naive(problem: dict) -> np.ndarray:
    kw = problem["keywords"]
    x = problem["x"]
    ref = naive_conv2d(
        x if x.ndim == 4 else x[None],
        problem["weight"],
        problem["bias"],
        kw["stride"],
        problem["pad"],
        kw["dilation"],
        kw["groups"],
        kw["padding_mode"],
    )
    return ref if x.ndim == 4 else ref[0]


def run(problem: dict, backend: str, **options) -> np.ndarray:
    return conv2d(
        problem["x"],
        problem["weight"],
        problem["bias"],
        **problem["keywords"],
        backend=backend,
        **options,
    )


def keywords(problem: dict) -> dict:
    return {**problem["keywords"], "bias": problem["bias"]}


def _check(y: np.ndarray, problem: dict) -> None:
    assert y.dtype == np.dtype(problem["dtype"])
    ref = naive(problem)
    if problem["dtype"] == "float16":
        # torch's float16 result is the float32 sum rounded once: compare in float64
        y = y.astype(np.float64)
    assert_close(y, ref, problem["dtype"])


# Examples per test and backend. OpenCL builds one program per kernel geometry (0.3-0.8 s
# each on a cold PoCL cache, and nearly every example is a new geometry): fewer there.
EXAMPLES = {
    "matches_naive": {"numpy": 80, "opencl": 25},
    "agree": {"opencl": 10},
    "tiling": {"numpy": 25, "opencl": 8},
    "symmetric": {"numpy": 40, "opencl": 12},
}


def test_backend_matches_naive(backend):
    @settings(max_examples=EXAMPLES["matches_naive"][backend])
    @given(problem=problems())
    def check(problem):
        _check(run(problem, backend), problem)

    check()


def test_backends_agree():
    if not opencl_available():
        pytest.skip("no OpenCL device")

    @settings(max_examples=EXAMPLES["agree"]["opencl"])
    @given(problem=problems())
    def check(problem):
        a = run(problem, "numpy")
        b = run(problem, "opencl")
        assert a.shape == b.shape and a.dtype == b.dtype
        if problem["dtype"] == "float16":
            a, b = a.astype(np.float64), b.astype(np.float64)
        assert_close(b, a.astype(np.complex128), problem["dtype"])

    check()


def test_tiling_does_not_change_results(backend):
    """A small ``max_memory`` splits the work into tiles with the same result."""

    @settings(max_examples=EXAMPLES["tiling"][backend])
    @given(problem=problems(dtypes=("float32", "float64", "complex64")), data=st.data())
    def check(problem, data):
        whole = run(problem, backend)
        # from the least the call can run in (one output row) to the whole call
        least = band_budget(
            problem["x"], problem["weight"], 1, backend=backend, **keywords(problem)
        )
        most = band_budget(
            problem["x"], problem["weight"], 10**9, backend=backend, **keywords(problem)
        )
        budget = data.draw(st.integers(least, max(least, most)), label="max_memory")
        tiled = run(problem, backend, max_memory=budget)
        assert tiled.shape == whole.shape and tiled.dtype == whole.dtype
        assert_close(tiled, whole.astype(np.complex128), problem["dtype"])
        assert_close(tiled, naive(problem), problem["dtype"])

    check()


def test_symmetric_any_padding(backend):
    """``symmetric`` (edge-inclusive mirror) accepts padding many times the input size."""

    @settings(max_examples=EXAMPLES["symmetric"][backend])
    @given(
        size=st.integers(1, 6),
        pad=st.integers(2, 20),  # with k <= 4 the kernel always fits
        k=st.integers(1, 4),
        dtype=st.sampled_from(["float32", "float64"]),
    )
    def check(size, pad, k, dtype):
        rng = np.random.default_rng(size * 1000 + pad * 31 + k)
        x = _random(rng, (2, size, size + 1), dtype)
        w = _random(rng, (3, 2, k, k), dtype)
        y = conv2d(x, w, padding=pad, padding_mode="symmetric", backend=backend)
        ref = naive_conv2d(x[None], w, pad=(pad, pad, pad, pad), padding_mode="symmetric")[0]
        assert_close(y, ref, dtype)

    check()
