"""The Python side of ``kernels_cl/geometry.clh``: the kernel-geometry build defines.

A module of its own, importing nothing of OpenCL's, so the cost model can name a
program's defines (:func:`convcli.native._opencl_once`) without importing the runtime
for a job NumPy finishes first.
"""

from __future__ import annotations

from collections.abc import Sequence


def geometry_defines(
    kh: int, kw: int, stride: Sequence[int], dilation: Sequence[int]
) -> dict[str, int]:
    """The kernel-geometry build defines every direct kernel takes (``KH``, ``KW``,
    ``SH``, ``SW``, ``DH``, ``DW``; ``kernels_cl/geometry.clh`` requires them)."""
    return {
        "KH": kh,
        "KW": kw,
        "SH": stride[0],
        "SW": stride[1],
        "DH": dilation[0],
        "DW": dilation[1],
    }
