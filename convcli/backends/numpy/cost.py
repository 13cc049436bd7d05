"""The NumPy backend's cost model: rough seconds per algorithm, and the choice.

The rates are :class:`~convcli.backends.numpy.settings.Settings` fields; the estimates
are comparable between algorithms only (choice.py scales them to compare with OpenCL).
"""

from __future__ import annotations

import functools

import numpy as np

from convcli.backends.numpy.fft import fft_plan
from convcli.backends.numpy.gather import compute_dtype
from convcli.backends.numpy.packed import prepared
from convcli.backends.numpy.separable import toeplitz_block
from convcli.backends.numpy.settings import Settings
from convcli.backends.numpy.threads import worker_count
from convcli.plan import separable_factors
from convcli.spec import ConvSpec

NUMPY_ALGOS: tuple[str, ...] = ("direct", "gemm", "separable", "fft")


def svd_seconds(spec: ConvSpec, settings: Settings) -> float:
    """Rough time of the rank-1 check's SVDs, one per kernel of the weight."""
    small, large = sorted((spec.kh, spec.kw))
    return spec.c_out * spec.cin_g * 22.0 * small * small * large / settings.svd_flops


def algo_reason(
    spec: ConvSpec, algo: str, settings: Settings, factors: object = True
) -> str | None:
    """Why ``algo`` cannot run ``spec`` on NumPy, or None (``factors``: the rank-1 check)."""
    if algo not in NUMPY_ALGOS:
        return f"unknown algo {algo!r}; NumPy runs {list(NUMPY_ALGOS)}"
    if algo == "separable" and factors is None:
        return "algo='separable' needs rank-1 kernels, but a kernel of this weight is not rank 1"
    if algo == "fft":
        kbytes = fft_plan(spec)[3]
        if kbytes > settings.fft_kernel_bytes:
            return (
                f"algo='fft' would hold {kbytes / 2**20:.0f} MiB of kernel spectra "
                f"({spec.c_out}x{spec.cin_g} kernels); use 'gemm' or 'direct'"
            )
    return None


def estimate_seconds(spec: ConvSpec, algo: str, settings: Settings) -> float:
    """Rough time of ``algo`` on ``spec`` (comparable between algorithms only)."""
    sh, sw = spec.stride
    ekh = spec.dilation[0] * (spec.kh - 1) + 1
    ekw = spec.dilation[1] * (spec.kw - 1) + 1
    taps = spec.kh * spec.kw
    wq = spec.w_out + (ekw - 1) // sw
    grid = spec.n * spec.h_out * wq  # outputs computed incl. junk columns
    item = compute_dtype(spec.dtype).itemsize
    inputs = spec.n * spec.c_in * spec.h * spec.w
    cplx = 4.0 if np.dtype(spec.dtype).kind == "c" else 1.0
    if algo == "gemm":
        flops = 2.0 * grid * spec.c_out * spec.cin_g * taps * cplx
        copies = grid * spec.c_in * taps * item * 2
        # every core works: bands on our threads, or BLAS's threads on fewer, larger GEMMs
        par = worker_count(settings)
        if spec.kh == spec.kw == 1 and spec.stride == (1, 1) and spec.pad == (0, 0, 0, 0):
            copies = 0
        # a matmul with one or two output rows per group runs at matrix-vector speed
        eff = min(1.0, spec.cout_g / 16) * min(1.0, spec.cin_g * taps / 32)
        whole = (
            flops / (settings.gemm_flops * max(eff, 0.02))
            + (copies + inputs * item) / settings.copy_bytes
        )
        return whole / min(par, spec.n * spec.h_out)
    if algo == "direct":
        if spec.cin_g == 1:
            return (
                2.0 * grid * spec.c_out * taps * cplx / settings.tap_elems
                + inputs * item / settings.copy_bytes
            )
        pix = spec.n * spec.h_out * spec.w_out
        return (
            2.0 * spec.macs * cplx / settings.gemm_flops
            + pix * spec.c_in * taps / settings.gather_elems
        )
    if algo == "separable":
        bv, bh = toeplitz_block(ekh), toeplitz_block(ekw)
        mv = -(-((bv - 1) * sh + ekh) // (bv * sh))
        mh = -(-((bh - 1) * sw + ekw) // (bh * sw))
        pairs = spec.n * spec.c_out * spec.cin_g
        wp = (spec.w_out - 1) * sw + ekw
        flops = 2.0 * pairs * spec.h_out * (wp * mv * bv * sh + spec.w_out * mh * bh * sw) * cplx
        passes = pairs * spec.h_out * wp * item * settings.separable_passes / settings.copy_bytes
        return flops / settings.toeplitz_flops + passes
    if algo == "fft":
        rows, fh, fw, _ = fft_plan(spec)
        bands = -(-spec.h_out // rows)
        size = fh * fw
        per = size * np.log2(size)
        ffts = spec.n * (spec.c_in + spec.c_out) * bands * per
        # the per-frequency channel sum (einsum on complex64) runs far below GEMM speed
        mults = spec.n * spec.c_out * spec.cin_g * bands * size * 8 / settings.fft_mac_flops
        return ffts / settings.fft_elems + mults
    raise ValueError(algo)


@functools.lru_cache(maxsize=1024)
def cheapest(spec: ConvSpec, settings: Settings, workers: int) -> tuple[str, bool]:
    """(cheapest algorithm but separable, whether separable would beat it) for ``spec``:
    what :func:`choose_algo` decides before it looks at the weights. Cached per spec,
    settings and worker count (the estimates took about a third of a small layer's
    call); pass ``worker_count(settings)``."""
    costs = {}
    for algo in ("gemm", "direct", "fft"):
        if algo == "direct" and spec.cin_g > 1:
            continue  # gemm computes the same products without the slow gather
        if algo == "gemm" and spec.cin_g == 1 and spec.cout_g < 4:
            continue  # a matrix-vector product over a copied column matrix: never pays
        if algo_reason(spec, algo, settings) is None:
            costs[algo] = estimate_seconds(spec, algo, settings)
    best = min(costs, key=costs.__getitem__)
    separable = spec.kh * spec.kw > 1 and (
        estimate_seconds(spec, "separable", settings) + svd_seconds(spec, settings) < costs[best]
    )
    return best, separable


def choose_algo(spec: ConvSpec, weight: np.ndarray, settings: Settings) -> tuple[str, object]:
    """The cheapest applicable algorithm by :func:`estimate_seconds`, and the factors.

    The rank-1 check (an SVD per kernel) runs only when ``separable`` would win, so that
    a 256x128 1x1 layer does not pay for 32768 tiny SVDs.
    """
    best, separable = cheapest(spec, settings, worker_count(settings))
    if separable:
        # kept beside the weight (a comparison) rather than looked up by the content hash
        # of plan's cache: hashing a 384x7x7 weight took 0.19 ms of a 0.9 ms layer
        factors = prepared(("separable_factors",), weight, lambda: separable_factors(weight))
        if factors is not None:
            return "separable", factors
    return best, None
