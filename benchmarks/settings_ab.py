"""Shared by the ``*_ab.py`` scripts: their common options, one layer timed under two
or more settings of a backend in one process, alternating, and the per-network sums of
such medians.

Not a script: ``python benchmarks/winograd_ab.py`` and its kind import it from beside
them.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import convcli


def parser(doc: str, batch: int) -> argparse.ArgumentParser:
    """The scripts' parser (described by the first paragraph of ``doc``) with their
    common options: ``--batch`` (default ``batch``), ``--rounds`` and ``--calls``."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=batch)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=5)
    return ap


def alternate(
    be: Any,
    modes: Mapping[str, Any],
    layer: Any,
    batch: int,
    rounds: int,
    calls: int,
    backend: str = "opencl",
) -> dict[str, float]:
    """Median ms per call of ``conv2d(..., backend=backend)`` on ``layer`` at ``batch``
    under each of ``modes`` (name -> settings of backend object ``be``, which may be
    another than the one called: NumPy's settings under OpenCL's host route), the modes
    taking turns ``rounds`` times, each turn a warm-up and ``calls`` timed calls;
    ``be.settings`` is restored after."""
    x, w, b = layer.arrays(batch)
    times: dict[str, list[float]] = defaultdict(list)
    base = be.settings
    try:
        for _ in range(rounds):
            for mode, settings in modes.items():
                be.settings = settings
                convcli.conv2d(x, w, b, backend=backend, **layer.options())
                for _ in range(calls):
                    t0 = time.perf_counter()
                    convcli.conv2d(x, w, b, backend=backend, **layer.options())
                    times[mode].append(time.perf_counter() - t0)
    finally:
        be.settings = base
    return {mode: statistics.median(times[mode]) * 1e3 for mode in modes}


def distinct_layers(
    nets: Mapping[str, Sequence[Any]], keep: Callable[[Any], bool]
) -> dict[tuple, Any]:
    """The layers of ``nets`` that ``keep`` accepts, one per layer key (the first met),
    in the order the networks run them."""
    found: dict[tuple, Any] = {}
    for layers in nets.values():
        for layer in layers:
            if layer.key not in found and keep(layer):
                found[layer.key] = layer
    return found


def network_totals(
    nets: Mapping[str, Sequence[Any]], medians: Mapping[tuple, Sequence[float]]
) -> dict[str, list[float]]:
    """Per network, the sums of the layers' ``medians`` (by layer key, one value per
    mode), each layer counted as often as the network runs it; networks none of whose
    layers were timed are left out."""
    totals = {}
    for name, layers in nets.items():
        timed = [medians[layer.key] for layer in layers if layer.key in medians]
        if timed:
            totals[name] = [sum(values) for values in zip(*timed, strict=True)]
    return totals
