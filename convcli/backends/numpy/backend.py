"""The NumPy backend object: settings, the algorithm choice and the dispatch."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator

import numpy as np

from convcli.backends.numpy import cost
from convcli.backends.numpy.depthwise import direct_depthwise
from convcli.backends.numpy.fft import fft_conv
from convcli.backends.numpy.gather import compute_dtype
from convcli.backends.numpy.gemm import gemm, gemm_adds_bias
from convcli.backends.numpy.reference import conv2d_direct
from convcli.backends.numpy.separable import separable
from convcli.backends.numpy.settings import DEFAULT, Settings
from convcli.backends.numpy.threads import worker_count
from convcli.errors import ConvValueError
from convcli.plan import separable_factors
from convcli.runinfo import RunInfo
from convcli.spec import ConvSpec


class NumpyBackend:
    """Runs convolutions with NumPy on the host.

    ``algo`` is one of ``auto``, ``direct``, ``separable``, ``fft`` and ``gemm`` (see the
    package docstring); ``auto`` takes the cheapest by :meth:`estimate_seconds`. A forced
    algorithm that cannot apply raises :class:`~convcli.errors.ConvValueError` with the
    reason.
    """

    name = "numpy"
    device_name = "host CPU (NumPy)"

    def __init__(self, settings: Settings = DEFAULT) -> None:
        self.settings = settings

    @contextlib.contextmanager
    def using(self, settings: Settings | None = None, /, **changes: object) -> Iterator[Settings]:
        """Run with ``settings`` (default: the current ones) with ``changes`` applied, as
        ``dataclasses.replace`` takes them; the previous settings come back on exit.

        For tests and A/B runs: ``with backend.using(threads=1): ...``. The settings are
        the backend's, so this is not for concurrent calls with different values.
        """
        saved = self.settings
        self.settings = dataclasses.replace(settings or saved, **changes)
        try:
            yield self.settings
        finally:
            self.settings = saved

    def threads(self) -> int:
        """Worker threads of the fast paths (``settings.threads`` or the usable CPUs)."""
        return worker_count(self.settings)

    def estimate_seconds(self, spec: ConvSpec, algo: str) -> float:
        """Rough time of ``algo`` on ``spec`` (comparable between algorithms only)."""
        return cost.estimate_seconds(spec, algo, self.settings)

    def algo_reason(self, spec: ConvSpec, algo: str, factors: object = True) -> str | None:
        """Why ``algo`` cannot run ``spec`` here, or None (``factors``: the rank-1 check)."""
        return cost.algo_reason(spec, algo, self.settings, factors)

    def choose_algo(self, spec: ConvSpec, weight: np.ndarray) -> tuple[str, object]:
        """The algorithm ``auto`` runs and the rank-1 factors (None unless separable)."""
        return cost.choose_algo(spec, weight, self.settings)

    def supports(self, spec: ConvSpec) -> str | None:
        """Reason why ``spec`` cannot run here, or None (NumPy runs everything)."""
        return None

    def plan_algo(self, spec: ConvSpec, weight: np.ndarray) -> str:
        """The algorithm ``algo="auto"`` runs for ``spec`` (tiles reuse the whole's)."""
        return "direct" if spec.n == 0 else self.choose_algo(spec, weight)[0]

    def fixed_plan(self, spec: ConvSpec) -> str | None:
        """What :meth:`plan_algo` answers for ``spec`` whatever the weights' values, or
        None where a rank-1 test of the weights decides."""
        if spec.n == 0:
            return "direct"
        best, separable = cost.cheapest(spec, self.settings, self.threads())
        return None if separable else best

    def run(
        self,
        x: np.ndarray,
        weight: np.ndarray,
        bias: np.ndarray | None,
        spec: ConvSpec,
        *,
        algo: str = "auto",
        info: RunInfo,
    ) -> np.ndarray:
        """Convolve batched ``x``; returns the result in the compute dtype.

        Records the algorithm used in ``info.algo`` and its time under
        ``info.timings["compute"]``.
        """
        t0 = time.perf_counter()
        work = compute_dtype(spec.dtype)
        factors = None
        if spec.n == 0:
            algo = "direct" if algo == "auto" else algo
        elif algo == "auto":
            algo, factors = self.choose_algo(spec, weight)
        else:
            if algo == "separable":
                factors = separable_factors(weight)
            reason = self.algo_reason(spec, algo, factors)
            if reason is not None:
                raise ConvValueError(reason)
        b = None if bias is None else np.asarray(bias, dtype=work)
        if algo == "gemm" and spec.n > 0 and gemm_adds_bias(spec):
            out = gemm(
                np.asarray(x, dtype=work),
                np.asarray(weight, dtype=work),
                spec,
                work,
                self.settings,
                b,
            )
        else:
            out = self._run(x, weight, spec, algo, work, factors)
            if b is not None:
                out += b[None, :, None, None]
        info.algo = algo
        info.timings["compute"] = info.timings.get("compute", 0.0) + time.perf_counter() - t0
        return out

    def _run(self, x, weight, spec, algo, work, factors) -> np.ndarray:
        settings = self.settings
        if spec.n == 0:
            return np.empty((0, spec.c_out, spec.h_out, spec.w_out), dtype=work)
        xw = np.asarray(x, dtype=work)
        ww = np.asarray(weight, dtype=work)
        if algo == "direct":
            if spec.cin_g == 1:
                return direct_depthwise(xw, ww, spec, work, settings)
            return conv2d_direct(xw, ww, None, spec, settings=settings)
        if algo == "gemm":
            return gemm(xw, ww, spec, work, settings)
        if algo == "separable":
            return separable(xw, ww, spec, work, factors, settings)
        return fft_conv(xw, ww, spec, work)
