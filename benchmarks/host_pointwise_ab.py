"""The OpenCL backend's 1x1 layers on the host (NumPy's matrix products) against the
device's kernels, in one process, alternating: the data behind the settings
``host_pointwise_max_batch`` and ``host_pointwise_max_out_bytes``.

Every distinct unpadded, ungrouped 1x1 layer of the cnn suite's networks (on maps larger
than 1x1), at the batch given, runs ``rounds`` rounds of one warm-up and ``calls`` timed
``conv2d(..., backend="opencl")`` calls with the route on for every batch, stride and
output size (``host``), then off (``device``). Prints the medians
per layer (host / device below 1: the host is faster) and the 1x1 totals per network.

    python benchmarks/host_pointwise_ab.py --batch 8
"""

from __future__ import annotations

import dataclasses

import settings_ab

from convcli import bench_cnn
from convcli.backends import get_backend
from convcli.spec import make_spec


def main() -> None:
    ap = settings_ab.parser(__doc__, batch=8)
    ap.add_argument("--layers", default=None, help="a layer file (default: the shipped one)")
    args = ap.parse_args()
    be = get_backend("opencl")
    if not be.is_cpu:
        raise SystemExit("the host route is for CPU OpenCL devices")
    base = be.settings
    modes = {
        "host": dataclasses.replace(
            base,
            host_pointwise_max_batch=1 << 30,
            host_pointwise_strided_max_batch=1 << 30,
            host_pointwise_max_out_bytes=1 << 62,
        ),
        "device": dataclasses.replace(base, host_pointwise_max_batch=0),
    }
    nets, _ = bench_cnn.load_networks(args.layers)
    layers = settings_ab.distinct_layers(
        nets,
        lambda layer: (
            (layer.kh, layer.kw, layer.groups, layer.padding) == (1, 1, 1, (0, 0)) and layer.h > 1
        ),
    )
    medians = {}
    for key, layer in layers.items():
        got = settings_ab.alternate(be, modes, layer, args.batch, args.rounds, args.calls)
        h, d = got["host"], got["device"]
        medians[key] = (h, d)
        x, w, b = layer.arrays(args.batch)
        spec = make_spec(x, w, b, **layer.options())
        out_mb = 4 * spec.n * spec.c_out * spec.h_out * spec.w_out / 2**20
        print(
            f"{layer.describe():28s} out {out_mb:6.1f} MiB  host {h:7.3f} ms  "
            f"device {d:7.3f} ms  host/device {h / d:.2f}",
            flush=True,
        )
    for name, (h, d) in settings_ab.network_totals(nets, medians).items():
        print(f"{name}: 1x1 layers host {h:.2f} ms, device {d:.2f} ms")


if __name__ == "__main__":
    main()
