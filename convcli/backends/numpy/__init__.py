"""The NumPy backend: the reference implementation and the fallback, with fast paths.

Algorithms (``algo=``; ``"auto"`` picks one with :func:`.cost.choose_algo`'s cost model):

``direct``
    Every output from the kernel taps, no transform of the kernel. Dense layers use
    :func:`.reference.conv2d_direct`, the reference im2col + matmul per group (the
    column matrix is a gathered ``(pixels, C_in/groups*kH*kW)`` copy). Depthwise layers
    (``C_in/groups == 1``: image filters, mobile networks) run as small GEMMs against
    banded tap matrices where output rows are long enough, else accumulate ``weight[tap]
    * shifted input`` in cache-sized pieces (channels innermost for many channels); see
    :mod:`.depthwise`.
``gemm``
    The convolution as one matrix product over (channels x taps) per group, without the
    reference's gather (:mod:`.gemm`: stride phases, strided tap views, shared rows for
    wide outputs with few channels, pointwise and non-overlapping patch layers as plain
    matmuls). Layers of 0.1 GFLOP or more run as chunks of bands on a small thread
    pool, each thread on its own CPU for the call, with BLAS held at one thread (through
    ``threadpoolctl``; see :mod:`.threads`); smaller ones leave the threading to BLAS.
    (``direct`` on dense layers is also a GEMM; ``gemm`` names the formulation whose
    cost is dominated by the matrix product rather than by the gather.)
``separable``
    Rank-1 kernels (:func:`convcli.plan.separable_factors`: Gaussian, box, Sobel) as two
    1-D passes, each one GEMM per band of rows against slabs of a banded Toeplitz
    matrix, so a 31-tap pass runs at BLAS speed; image filters (one kernel for every
    channel) put all planes side by side in the same GEMMs. Works for every padding
    mode, stride, dilation and groups.
``fft``
    Large non-separable kernels: overlap-save by bands of output rows (memory bounded),
    ``numpy.fft.rfft2`` in float32 for float32 input (``fft2`` for complex), the kernel
    dilated with zeros and flipped (correlation), the stride applied by subsampling.

Every algorithm gathers padding through the index maps of
:func:`convcli.spec.source_index` by bands of output rows, so no padded copy of a whole
large input is made and memory stays within tens of MB (``Settings.chunk_bytes``)
whatever the image size. float16 is computed in float32 and rounded once at the end (torch's CPU
behaviour); complex inputs use the weight as is (no conjugation).

Files: ``reference`` (the im2col reference), ``gather`` (padding by index maps, stride
phases), ``threads`` (pool, CPU placement, one-thread BLAS, scratch), ``gemm``,
``depthwise``, ``separable``, ``fft``, ``cost`` (estimates and choice), ``packed``
(weights prepared for a path, kept while the weight array holds the same values),
``settings`` (tuning values, held by the backend as ``backend.settings``) and
``backend``.
"""

from __future__ import annotations

from convcli.backends.numpy.backend import NumpyBackend
from convcli.backends.numpy.gather import compute_dtype, gather_padded, gather_rows
from convcli.backends.numpy.reference import conv2d_direct
from convcli.backends.numpy.settings import DEFAULT, Settings

__all__ = [
    "DEFAULT",
    "NumpyBackend",
    "Settings",
    "compute_dtype",
    "conv2d_direct",
    "gather_padded",
    "gather_rows",
]
