"""NaN and inf in weights and inputs: calls finish and give torch's values.

torch computes the direct sum, so a NaN or inf reaches exactly the outputs whose window
holds it. The reference here is the naive sum (``tests/naive.py``).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from naive import naive_conv2d

from convcli import conv2d
from convcli.plan import _separable_factors


def _reference(x, w, **keywords) -> np.ndarray:
    """The naive sum in float64, quietly (inf - inf is NaN, as in torch)."""
    with np.errstate(all="ignore"):
        return naive_conv2d(x.astype(np.float64), w.astype(np.float64), **keywords)


def _rank1_depthwise(channels: int = 3, k: int = 5) -> np.ndarray:
    taps = np.arange(1, k + 1, dtype=np.float32)
    return np.outer(taps, taps)[None, None].repeat(channels, 0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_rank1_test_of_a_nonfinite_kernel_returns(bad):
    """The rank-1 test ran LAPACK's SVD on the kernel: it raised LinAlgError on NaN and
    never returned on inf (a hung call)."""
    w = _rank1_depthwise().astype(np.float64)
    w[1, 0, 0, 0] = bad
    found: list[object] = []
    worker = threading.Thread(target=lambda: found.append(_separable_factors(w)), daemon=True)
    worker.start()
    worker.join(20)
    assert found == [None]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_rank1_kernel_gives_torchs_values(backend, bad):
    """A rank-1 5x5 depthwise kernel with one NaN or inf tap: auto takes the rank-1
    test's path on both backends; the outputs are NaN/inf exactly where torch's are."""
    w = _rank1_depthwise()
    w[0, 0, 2, 2] = bad
    x = np.random.default_rng(0).standard_normal((1, 3, 24, 24)).astype(np.float32)
    y = conv2d(x, w, groups=3, padding=2, backend=backend)
    ref = _reference(x, w, groups=3, pad=(2, 2, 2, 2))
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(ref))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(
        y[finite], ref[finite], rtol=0, atol=2e-5 * np.abs(ref[finite]).max()
    )


def _torch_placement(y: np.ndarray, ref: np.ndarray) -> None:
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(ref))
    finite = np.isfinite(ref)
    scale = np.abs(ref[finite]).max()
    np.testing.assert_allclose(y[finite], ref[finite], rtol=0, atol=2e-5 * scale)


NONFINITE_INPUTS = [
    # id, input shape, weight shape, groups, pad, algo: the paths whose arithmetic mixed
    # values the direct sum keeps apart (FFT; banded matrices; Winograd tiles)
    ("depthwise_direct", (1, 3, 40, 40), (3, 1, 5, 5), 3, 2, "direct"),
    ("depthwise_separable", (1, 3, 30, 30), (3, 1, 5, 5), 3, 2, "separable"),
    ("large_kernel_fft", (1, 1, 60, 60), (1, 1, 17, 17), 1, 0, "fft"),
    ("dense_3x3", (1, 16, 20, 20), (32, 16, 3, 3), 1, 1, "gemm"),
]


@pytest.mark.parametrize(
    ("xs", "ws", "groups", "pad", "algo"),
    [case[1:] for case in NONFINITE_INPUTS],
    ids=[case[0] for case in NONFINITE_INPUTS],
)
@pytest.mark.parametrize("forced", [False, True])
def test_nan_and_inf_in_the_input_reach_only_their_windows(
    backend, xs, ws, groups, pad, algo, forced
):
    """torch's sum puts a NaN (or an inf) of the input only in the outputs whose window
    holds it; FFTs spread it to the whole image, banded matrices along their band and
    Winograd through its tile (and inf became NaN there)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal(xs).astype(np.float32)
    x[0, 0, 7, 9] = np.nan
    x[0, -1, xs[2] - 5, 4] = np.inf
    w = rng.standard_normal(ws).astype(np.float32)
    if algo == "separable":
        w = np.einsum("ci,cj->cij", w[:, 0, :, 0], w[:, 0, 0, :])[:, None]
    try:
        y = conv2d(
            x, w, groups=groups, padding=pad, backend=backend, algo=algo if forced else "auto"
        )
    except ValueError:
        pytest.skip(f"{backend} has no forced {algo} for this layer")
    ref = _reference(x, w, groups=groups, pad=(pad,) * 4)
    _torch_placement(y, ref)


@pytest.mark.parametrize("algo", ["gemm", "direct"])
def test_inf_gives_no_numpy_warnings_on_the_worker_threads(numpy_settings, algo):
    """NumPy warned "invalid value encountered" on an inf input (an error under
    ``-W error``, as pytest runs here) where torch returns quietly: the calling thread's
    errstate now reaches the backend's worker threads too."""
    numpy_settings(threads=2, threaded_min_flops=0)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 8, 24, 24)).astype(np.float32)
    x[:, :, 5, 6] = np.inf  # in every image: each thread's share meets one
    x[:, :, 20, 20] = -np.inf
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    y = conv2d(x, w, padding=1, backend="numpy", algo=algo)
    _torch_placement(y, _reference(x, w, pad=(1, 1, 1, 1)))


def test_float16_overflow_is_inf_without_a_warning(backend):
    """float16 results past 65504 are inf, as torch's; the cast warned "overflow"."""
    x = np.full((1, 1, 4, 4), 300, np.float16)
    w = np.full((1, 1, 2, 2), 300, np.float16)
    y = conv2d(x, w, backend=backend)
    assert y.dtype == np.float16
    assert np.isposinf(y).all()


def test_complex_inf_gives_torchs_nan(backend):
    """torch's complex convolution gives nan+nanj where an inf of the input meets a
    weight (so does NumPy's matmul); OpenCL's complex product gave a complex infinity."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((1, 4, 3, 3)) + 1j * rng.standard_normal((1, 4, 3, 3))).astype(
        np.complex64
    )
    w = (rng.standard_normal((2, 4, 1, 1)) + 1j * rng.standard_normal((2, 4, 1, 1))).astype(
        np.complex64
    )
    x[0, 1, 1, 1] = np.inf
    y = conv2d(x, w, backend=backend)
    assert np.isnan(y[0, :, 1, 1].real).all() and np.isnan(y[0, :, 1, 1].imag).all()
    assert np.isfinite(np.delete(y.reshape(2, 9), 4, axis=1)).all()


def test_the_finiteness_check_keeps_blas_on_one_thread(monkeypatch):
    """The check's product with a vector of ones is a BLAS call that OpenBLAS threads from
    ~9K values; its idle threads then spun for ~0.1 s against the caller's next work
    (convnext's depthwise layers on NumPy at N=8 ran 1.5 -> 4.2 ms a call)."""
    import convcli.api as api

    entered = []

    class Recorder:
        def __enter__(self):
            entered.append(True)

        def __exit__(self, *exc):
            return None

    monkeypatch.setattr(api, "ONE_THREAD_BLAS", Recorder())
    y = np.zeros((2, 8, 64, 65), np.float32)  # 16 rows of 4096 and a tail of 1024
    assert api._all_finite(y) and len(entered) == 1
    y[1, 7, 63, 60] = np.nan  # in the tail past the last whole row of 4096
    y[0, 0, 0, 0] = np.inf
    assert not api._all_finite(y)
    y[0, 0, 0, 0] = 0
    assert not api._all_finite(y)
