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


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_rank1_kernel_gives_torchs_values(backend, bad):
    """A rank-1 5x5 depthwise kernel with one NaN or inf tap: auto takes the rank-1
    test's path on both backends; the outputs are NaN/inf exactly where torch's are."""
    w = _rank1_depthwise()
    w[0, 0, 2, 2] = bad
    x = np.random.default_rng(0).standard_normal((1, 3, 24, 24)).astype(np.float32)
    y = conv2d(x, w, groups=3, padding=2, backend=backend)
    ref = naive_conv2d(x.astype(np.float64), w.astype(np.float64), groups=3, pad=(2, 2, 2, 2))
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(ref))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(
        y[finite], ref[finite], rtol=0, atol=2e-5 * np.abs(ref[finite]).max()
    )
