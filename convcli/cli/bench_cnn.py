"""``convcli bench --suite cnn``: runs :func:`convcli.bench_cnn.run_cnn_suite` and renders
its result (network totals, issue 15's targets, the layers that lose most against torch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import click


def run(
    backends: Sequence[str],
    peers: Sequence[str],
    repeat: int,
    json_file: str | None,
    csv_file: str | None,
    progress: Callable[..., None],
    console: Any,
    write: Callable[[str, str], None],
    networks: Sequence[str] | None = None,
    layer_file: str | None = None,
) -> int:
    """Run the suite with the bench command's options; returns the exit code.

    ``write(path, text)`` publishes a ``--json``/``--csv`` file under the side-file rules
    the bench command checked before the run; ``networks`` (default: all) come from
    ``--only``, from ``layer_file`` (``--layers``; default: the shipped file)."""
    from convcli import bench_cnn as cnn

    systems = [f"convcli-{b}" for b in backends]
    if "torch" in peers:
        systems.insert(0, "torch")
    result = cnn.run_cnn_suite(
        networks=networks,
        systems=systems,
        repeat=repeat,
        progress=progress,
        layer_file=layer_file,
    )
    for target, render in ((json_file, result.to_json), (csv_file, result.to_csv)):
        if target == "-":
            click.echo(render())
        elif target:
            write(target, render())
    if "-" not in (json_file, csv_file):
        _print_result(result, console)
    return 0 if all(r.ok for r in result.rows) else 1


def _ms(v: float) -> str:
    return "-" if v != v else f"{v:.2f}"


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _on_host(rows: Sequence[Any], net: str, batch: int, system: str) -> str:
    """How many of the network's layers ``system`` ran on the host, and their share of
    its total time: ``"40 (64%)"``."""
    from convcli.bench import HOST_NOTE

    mine = [r for r in rows if (r.network, r.batch, r.system) == (net, batch, system)]
    total = sum(r.median_ms * r.count for r in mine)
    host = [r for r in mine if HOST_NOTE in r.note]
    if not host:
        return "0"
    share = sum(r.median_ms * r.count for r in host) / total if total > 0 else float("nan")
    return f"{sum(r.count for r in host)} ({share:.0%})"


def _disturbance(result: Any, systems: Sequence[str]) -> list[str]:
    """What could have disturbed the timed calls: the other workers' CPU time (the
    systems' own interference) and the share of time each worker's threads waited for a
    CPU (the machine's other load)."""
    others = [r.others_cpu_ms for r in result.rows if r.others_cpu_ms is not None]
    notes = []
    if others:
        notes.append(
            f"CPU the other workers used during a layer's timed calls: at most {max(others):.2f} ms"
        )
    queued = []
    for s in systems:
        mine = [(t.queued_pct, t.median_ms) for t in result.totals if t.system == s]
        if mine and all(q is not None for q, _ in mine):
            weight = sum(m for _, m in mine) or 1.0
            queued.append(f"{s} {sum(q * m for q, m in mine) / weight:.0f}%")
    if queued:
        notes.append("time a worker's threads waited for a CPU: " + ", ".join(queued))
    return notes


def _print_result(result: Any, console: Any) -> None:
    """Tables on ``console`` (a rich Console on stdout)."""
    from rich.table import Table

    systems = list(result.workers)
    totals = Table(
        title="convcli bench --suite cnn: conv-layer totals per network (ms, sum of per-layer "
        "medians; ratio = torch's time / ours)",
        title_justify="left",
    )
    totals.add_column("network")
    totals.add_column("N", justify="right")
    totals.add_column("layers", justify="right")
    for s in systems:
        totals.add_column(s, justify="right")
        if s != "torch":
            totals.add_column("ratio", justify="right")
    ocl = "convcli-opencl"
    if ocl in systems:
        totals.add_column("OpenCL's on host", justify="right")
    by = {(t.network, t.batch, t.system): t for t in result.totals}
    for net, batch in dict.fromkeys((t.network, t.batch) for t in result.totals):
        cells = [net, str(batch)]
        first = by[(net, batch, systems[0])]
        cells.append(str(first.count))
        for s in systems:
            t = by[(net, batch, s)]
            cells.append(_ms(t.median_ms) + ("" if t.ok else " FAILED"))
            if s != "torch":
                cells.append(_ratio(t.ratio))
        if ocl in systems:
            cells.append(_on_host(result.rows, net, batch, ocl))
        totals.add_row(*cells)
    notes = [f"layers: {result.source}", "workers: " + ", ".join(
        f"{s} pid {p}" for s, p in result.workers.items())]  # fmt: skip
    notes += [f"{s} skipped: {why}" for s, why in result.skipped.items()]
    notes += _disturbance(result, systems)
    if ocl in systems:
        notes.append(
            "OpenCL's on host: layers the OpenCL backend ran as NumPy on the host, where "
            "that needs no launch on a CPU device (squeeze-and-excitation products, unpadded "
            "ungrouped 1x1 layers of up to 8 images and 16 MiB of output, one image when "
            "strided; FFTs too wide for its tiles), and their share of its total"
        )
    totals.caption = "; ".join(notes)
    totals.caption_justify = "left"
    console.print(totals)

    checks = result.target_checks()
    if checks:
        table = Table(
            title="issue 15 targets (network totals; ratio = torch's time / ours)",
            title_justify="left",
        )
        for col in ("network", "N", "system", "target", "ratio", "ratio of mins", "met"):
            table.add_column(col, justify="right" if col in ("N", "target", "ratio") else "left")
        for c in checks:
            table.add_row(
                c.network,
                str(c.batch),
                c.system,
                f"{c.target:.1f}",
                f"{c.ratio:.2f}",
                f"{c.ratio_of_mins:.2f}",
                "yes" if c.met else "no",
            )
        console.print(table)

    if "torch" not in systems:
        return
    by_layer = {(r.network, r.batch, r.layer, r.system): r for r in result.rows}
    for s in systems:
        if s == "torch":
            continue
        table = Table(
            title=f"{s}: the layers that lose most time against torch, per network "
            "(x count = occurrences)",
            title_justify="left",
        )
        cols = ("network", "N", "layer", "x", "torch ms", "ours ms", "ratio", "lost ms", "note")
        for col in cols:
            left = col in ("network", "layer", "note")
            table.add_column(col, justify="left" if left else "right")
        for r in result.slowest(s):
            ref = by_layer[(r.network, r.batch, r.layer, "torch")]
            lost = (r.median_ms - ref.median_ms) * r.count
            table.add_row(
                r.network,
                str(r.batch),
                r.description,
                str(r.count),
                _ms(ref.median_ms),
                _ms(r.median_ms),
                _ratio(r.ratio),
                _ms(lost),
                r.note if r.ok else f"FAILED {r.note}",
            )
        console.print(table)
