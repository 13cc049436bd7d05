"""Winograd against the direct GEMM kernels, per 3x3 layer of a layer file, in one
process, alternating: the data behind ``winograd.pays``' rule.

Every distinct layer Winograd applies to (3x3, stride equal to dilation) runs at
``--batch`` with ``settings.winograd`` forced on and then off (dense_gemm or
dense_flat), ``--rounds`` times ``--calls`` calls each. Each line gives both medians,
the form Winograd takes (split, fused, whole), what the rule picks and whether that was
the faster::

    python benchmarks/winograd_ab.py --batch 1 [--layers other.json] [--only densenet121]
"""

from __future__ import annotations

import dataclasses

import settings_ab

from convcli import bench_cnn
from convcli.backends import get_backend
from convcli.backends.opencl import winograd
from convcli.spec import make_spec


def main() -> None:
    ap = settings_ab.parser(__doc__, batch=1)
    ap.add_argument("--layers", default=None, help="a layer file (default: the shipped one)")
    ap.add_argument("--only", default="", help="networks, comma-separated (default: all)")
    args = ap.parse_args()
    nets, _ = bench_cnn.load_networks(args.layers)
    if args.only:
        only = args.only.split(",")
        unknown = [n for n in only if n not in nets]
        if unknown:  # a misspelt name timed nothing: "0 of 0"
            ap.error(f"--only: {', '.join(unknown)} not in {', '.join(nets)}")
        nets = {k: v for k, v in nets.items() if k in only}
    be = get_backend("opencl")
    base = be.settings
    modes = {
        "wino": dataclasses.replace(base, winograd=True),
        "dense": dataclasses.replace(base, winograd=False),
    }

    def multi_channel_winograd(layer) -> bool:
        spec = make_spec(*layer.arrays(1), **layer.options())
        return winograd.applies(spec) and spec.cin_g > 1

    layers = settings_ab.distinct_layers(nets, multi_channel_winograd)
    medians = {}
    wrong = 0
    for key, layer in layers.items():
        got = settings_ab.alternate(be, modes, layer, args.batch, args.rounds, args.calls)
        wi, de = got["wino"], got["dense"]
        medians[key] = (wi, de)
        x, w, b = layer.arrays(args.batch)
        spec = make_spec(x, w, b, **layer.options())
        form = (
            "whole"
            if winograd.whole(spec, be.is_cpu, base)
            else "fused"
            if winograd.fused(spec, be.is_cpu, base)
            else "split"
        )
        picks = winograd.pays(spec, base)
        good = picks == (wi < de)
        wrong += not good
        print(
            f"{layer.describe():28s} {2 * spec.macs / 1e6:7.1f} MFLOP {form:5s} "
            f"wino {wi:7.3f} ms  dense {de:7.3f} ms  wino/dense {wi / de:.2f}  rule: "
            f"{'wino ' if picks else 'dense'}{'' if good else '  (slower pick)'}",
            flush=True,
        )
    for name, (wi, de) in settings_ab.network_totals(nets, medians).items():
        print(f"{name}: winograd {wi:.2f} ms, dense {de:.2f} ms")
    print(f"layers where the rule picks the slower path: {wrong} of {len(medians)}")


if __name__ == "__main__":
    main()
