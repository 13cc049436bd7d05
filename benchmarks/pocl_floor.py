"""The OpenCL driver's own floor for one small call: what a warm ``conv2d`` on OpenCL cannot
go below, measured without convcli.

Each variant runs a tiny kernel (one work-group writes 392 floats, a 1x8x7x7 output)
``--calls`` times after a warm-up and prints the median and minimum microseconds per
call::

    python benchmarks/pocl_floor.py [--calls 1000] [--device <substring>]

Variants: an enqueue of an empty kernel and its wait, through ``kernel(queue, ...)``,
``cl.enqueue_nd_range_kernel`` after ``set_args`` and a bare enqueue of a kernel whose
arguments stay set; with and without a profiling queue; a kernel with the copy in and
out (``enqueue_copy`` blocking, or non-blocking and one ``finish``); a kernel on
``USE_HOST_PTR`` / ``ALLOC_HOST_PTR`` buffers with a map and unmap of the result; and the
Python side alone (``set_args`` and argument packing without an enqueue).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pyopencl as cl

SRC = """
__kernel void empty(__global float *out) { }
__kernel void copy(__global const float *x, __global float *out, int n) {
    int i = get_global_id(0);
    if (i < n) out[i] = x[i] * 2.0f;
}
"""


def timed(fn, calls: int) -> tuple[float, float]:
    for _ in range(50):
        fn()
    t = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return statistics.median(t) * 1e6, min(t) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--device", default="")
    args = parser.parse_args()
    devices = [d for p in cl.get_platforms() for d in p.get_devices()]
    dev = next(d for d in devices if args.device.lower() in d.name.lower())
    ctx = cl.Context([dev])
    prof = cl.CommandQueue(ctx, dev, properties=cl.command_queue_properties.PROFILING_ENABLE)
    plain = cl.CommandQueue(ctx, dev)
    prg = cl.Program(ctx, SRC).build()
    empty, copy = prg.empty, prg.copy
    copy.set_scalar_arg_dtypes([None, None, np.int32])
    mf = cl.mem_flags
    n = 392
    x = np.ones(n, np.float32)
    out = np.empty(n, np.float32)
    xbuf = cl.Buffer(ctx, mf.READ_ONLY, x.nbytes)
    obuf = cl.Buffer(ctx, mf.READ_WRITE, out.nbytes)
    g, lsz = (n,), (n,)
    print(f"device: {dev.name} ({dev.platform.name}); type {cl.device_type.to_string(dev.type)}")
    rows = []

    for qname, q in (("profiling", prof), ("plain", plain)):
        rows.append(
            (f"empty kernel(q,...) + wait [{qname}]", lambda q=q: empty(q, g, lsz, obuf).wait())
        )
        rows.append(
            (
                f"empty kernel(q,...) + finish [{qname}]",
                lambda q=q: (empty(q, g, lsz, obuf), q.finish()),
            )
        )

    empty.set_args(obuf)

    def bare_enqueue() -> None:
        cl.enqueue_nd_range_kernel(prof, empty, g, lsz).wait()

    rows.append(("empty enqueue_nd_range_kernel, args kept + wait", bare_enqueue))
    rows.append(
        (
            "copy kernel(q, ...) args each call + wait",
            lambda: copy(prof, g, lsz, xbuf, obuf, np.int32(n)).wait(),
        )
    )

    def write_kernel_read(blocking: bool) -> None:
        cl.enqueue_copy(prof, xbuf, x, is_blocking=blocking)
        copy(prof, g, lsz, xbuf, obuf, np.int32(n))
        cl.enqueue_copy(prof, out, obuf, is_blocking=blocking)
        if not blocking:
            prof.finish()

    rows.append(("write + kernel + read, blocking copies", lambda: write_kernel_read(True)))
    rows.append(("write + kernel + read, non-blocking + finish", lambda: write_kernel_read(False)))

    def kernel_read() -> None:
        copy(prof, g, lsz, xbuf, obuf, np.int32(n))
        cl.enqueue_copy(prof, out, obuf, is_blocking=True)

    rows.append(("kernel + blocking read (input kept on device)", kernel_read))

    def wrapped_input_read() -> None:
        b = cl.Buffer(ctx, mf.READ_ONLY | mf.USE_HOST_PTR, hostbuf=x)
        copy(prof, g, lsz, b, obuf, np.int32(n))
        cl.enqueue_copy(prof, out, obuf, is_blocking=True)

    rows.append(("USE_HOST_PTR input (new buffer) + kernel + read", wrapped_input_read))

    host_out = np.empty(n + 1024, np.float32)[:n]

    def use_host_map() -> None:
        b = cl.Buffer(ctx, mf.READ_ONLY | mf.USE_HOST_PTR, hostbuf=x)
        o = cl.Buffer(ctx, mf.WRITE_ONLY | mf.USE_HOST_PTR, hostbuf=host_out)
        copy(prof, g, lsz, b, o, np.int32(n))
        m, _ = cl.enqueue_map_buffer(
            prof, o, cl.map_flags.READ, 0, (n,), np.float32, is_blocking=True
        )
        m.base.release(prof)

    rows.append(("USE_HOST_PTR in + out (new buffers) + kernel + map/unmap", use_host_map))

    kept_o = cl.Buffer(ctx, mf.WRITE_ONLY | mf.USE_HOST_PTR, hostbuf=host_out)

    def use_host_kept_map() -> None:
        copy(prof, g, lsz, xbuf, kept_o, np.int32(n))
        m, _ = cl.enqueue_map_buffer(
            prof, kept_o, cl.map_flags.READ, 0, (n,), np.float32, is_blocking=True
        )
        m.base.release(prof)

    rows.append(("kept USE_HOST_PTR out + kernel + map/unmap", use_host_kept_map))

    def use_host_kept_finish() -> None:
        copy(prof, g, lsz, xbuf, kept_o, np.int32(n)).wait()

    rows.append(("kept USE_HOST_PTR out + kernel + wait (no map)", use_host_kept_finish))

    alloc_o = cl.Buffer(ctx, mf.READ_WRITE | mf.ALLOC_HOST_PTR, n * 4)

    def alloc_host_map() -> None:
        copy(prof, g, lsz, xbuf, alloc_o, np.int32(n))
        m, _ = cl.enqueue_map_buffer(
            prof, alloc_o, cl.map_flags.READ, 0, (n,), np.float32, is_blocking=True
        )
        out[...] = m
        m.base.release(prof)

    rows.append(("ALLOC_HOST_PTR out + kernel + map/copy/unmap", alloc_host_map))

    rows.append(("python: copy.set_args(...) only", lambda: copy.set_args(xbuf, obuf, np.int32(n))))
    rows.append(
        (
            "python: cl.Buffer(USE_HOST_PTR) only",
            lambda: cl.Buffer(ctx, mf.READ_ONLY | mf.USE_HOST_PTR, hostbuf=x),
        )
    )
    rows.append(("python: np.empty(392) only", lambda: np.empty(n, np.float32)))

    width = max(len(r[0]) for r in rows)
    for name, fn in rows:
        med, low = timed(fn, args.calls)
        print(f"{name:{width}s}  median {med:7.1f} us  min {low:7.1f} us")


if __name__ == "__main__":
    main()
