"""NumPy's 1x1 products on one thread or two, per 1x1 layer of a layer file, in one
process, alternating: the data behind ``pointwise_threaded_min_flops``.

Every distinct unpadded, unstrided, ungrouped 1x1 layer (on maps larger than 1x1) whose
flops at ``--batch`` lie in ``[--min-mflop, --max-mflop)`` runs through ``--backend``
(``opencl``: the OpenCL backend's host route, which runs NumPy's product; ``numpy``)
with NumPy's ``pointwise_threaded_min_flops`` at ``--low`` and at ``--high`` MFLOP in
turns, ``--rounds`` times ``--calls`` calls each. Each line gives both medians; the last
line the totals and on how many layers ``--low`` was faster::

    python benchmarks/pointwise_threads_ab.py --layers benchmarks/cnn_layers_more.json
"""

from __future__ import annotations

import dataclasses

import settings_ab

from convcli import bench_cnn
from convcli.backends import get_backend
from convcli.spec import make_spec


def main() -> None:
    ap = settings_ab.parser(__doc__, batch=1)
    ap.add_argument("--low", type=float, default=30.0, help="MFLOP (default 30)")
    ap.add_argument("--high", type=float, default=100.0, help="MFLOP (default 100)")
    ap.add_argument("--min-mflop", type=float, default=20.0)
    ap.add_argument("--max-mflop", type=float, default=100.0)
    ap.add_argument("--backend", choices=("opencl", "numpy"), default="opencl")
    ap.add_argument(
        "--layers", action="append", default=None,
        help="a layer file (repeatable; default: the shipped one)",
    )  # fmt: skip
    args = ap.parse_args()
    nets = {}
    for path in args.layers or [None]:
        nets.update(bench_cnn.load_networks(path)[0])
    numpy = get_backend("numpy")
    base = numpy.settings
    modes = {
        "low": dataclasses.replace(base, pointwise_threaded_min_flops=int(args.low * 1e6)),
        "high": dataclasses.replace(base, pointwise_threaded_min_flops=int(args.high * 1e6)),
    }
    layers = {}
    for layers_of in nets.values():
        for layer in layers_of:
            flat = (layer.kh, layer.kw, layer.groups, layer.padding, layer.stride)
            if flat == (1, 1, 1, (0, 0), (1, 1)) and layer.h > 1:
                x, w, b = layer.arrays(args.batch)
                mflop = 2 * make_spec(x, w, b, **layer.options()).macs / 1e6
                if args.min_mflop <= mflop < args.max_mflop:
                    layers.setdefault(layer.key, (layer, mflop))
    totals = [0.0, 0.0]
    wins = 0
    for layer, mflop in layers.values():
        got = settings_ab.alternate(
            numpy, modes, layer, args.batch, args.rounds, args.calls, backend=args.backend
        )
        low, high = got["low"], got["high"]
        totals[0] += low
        totals[1] += high
        wins += low < high
        print(
            f"{layer.describe():28s} {mflop:6.1f} MFLOP  low {low:.3f} ms  "
            f"high {high:.3f} ms  low/high {low / high:.2f}",
            flush=True,
        )
    print(
        f"{len(layers)} layers: low {totals[0]:.2f} ms, high {totals[1]:.2f} ms; "
        f"low faster on {wins}"
    )


if __name__ == "__main__":
    main()
