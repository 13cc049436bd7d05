"""``convcli bench``: the timing suites of :mod:`convcli.bench` (quick, standard),
:mod:`convcli.bench_files` (files) and :mod:`convcli.bench_cnn` (cnn, rendered by
:mod:`convcli.cli.bench_cnn`), their tables and their ``--json``/``--csv`` rows."""

from __future__ import annotations

import math
from typing import Any

import click

from convcli.cli.group import cli
from convcli.cli.messages import rich_console
from convcli.cli.options import not_empty
from convcli.cli.sidefiles import check_side_files, write_text_file


def _megapixels(text: str) -> list[float]:
    """``--photo-mp 24,192`` as numbers; a usage error names the bad item."""
    values = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            value = math.nan
        if not (0.01 <= value <= 10_000):
            raise click.BadParameter(
                f"{item.strip()!r} is not a size in megapixels (0.01-10000)",
                param_hint="'--photo-mp'",  # parsed after click: it would not name the flag
            )
        values.append(value)
    return values


def _tiled_megapixels(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """``--tiled-mp``: finite, 0.1-100000 (inf reached an int() deep in the suite)."""
    if not (0.1 <= value <= 100_000):  # also NaN
        raise click.BadParameter(f"{value!r} is not a size in megapixels (0.1-100000)")
    return value


# options that only the files suite reads: given with another suite they would be
# dropped without a word
_FILES_ONLY = (("tiled_mp", "--tiled-mp"), ("photo_mp", "--photo-mp"), ("workdir", "--workdir"))


def _csv_list(text: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (text or "").split(",") if v.strip())


def _cnn_networks(layers: str | None) -> list[str]:
    """The networks of the cnn suite's layer file (``--layers``, else the shipped one)."""
    from convcli import bench_cnn
    from convcli.errors import ConvValueError

    try:
        return list(bench_cnn.load_networks(layers)[0])
    except ConvValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--layers") from exc


@cli.command()
@click.option(
    "--suite",
    type=click.Choice(["quick", "standard", "cnn", "files"]),
    default="standard",
    show_default=True,
    help="Workloads to time (quick: small, a smoke test; cnn: the conv layers of public "
    "networks, each system in a process of its own; files: whole processes, files in, "
    "files out).",
)
@click.option(
    "--backend",
    default=None,
    metavar="LIST",
    help="convcli backends to time, comma-separated. Default: opencl,numpy; files: auto.",
)
@click.option(
    "--compare",
    default=None,
    metavar="LIST",
    help="Peers to time when installed; '' for none. Default: torch,opencv,scipy; "
    "files: opencv,vips,imagemagick.",
)
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    default=None,
    help="Timed runs per system, in interleaved rounds (median and min reported). "
    "Default: 5; files: 3.",
)
@click.option(
    "--tiled-mp",
    type=float,
    callback=_tiled_megapixels,
    default=100.0,
    show_default=True,
    help="files suite: megapixels of the tiled TIFF (e.g. 1000 for a gigapixel).",
)
@click.option(
    "--photo-mp",
    metavar="LIST",
    default="12,50",
    show_default=True,
    help="files suite: megapixels of the JPEG photos, comma-separated (3:2), e.g. 24,192.",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    help="files suite: keep inputs and outputs here instead of a temporary folder (a new "
    "or empty folder, or one an earlier run made: its inputs are reused).",
)
@click.option(
    "--only",
    metavar="IDS",
    help="files suite: workloads to run by id or kind, e.g. F3,folder,png; cnn suite: "
    "networks, e.g. resnet18,convnext_tiny (default: all).",
)
@click.option(
    "--layers",
    "layer_file",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    callback=not_empty,
    help="cnn suite: the networks of this layer file (made by tools/make_cnn_layers.py "
    "--networks ...) instead of the shipped ones.",
)
@click.option(
    "--json", "json_file", metavar="FILE", callback=not_empty,
    help="Write rows as JSON ('-': stdout).",
)  # fmt: skip
@click.option(
    "--csv", "csv_file", metavar="FILE", callback=not_empty,
    help="Write rows as CSV ('-': stdout).",
)  # fmt: skip
@click.option("--overwrite", is_flag=True, help="Replace --json/--csv files that exist.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
@click.pass_context
def bench(
    ctx: click.Context,
    suite: str,
    backend: str | None,
    compare: str | None,
    repeat: int | None,
    tiled_mp: float,
    photo_mp: str,
    workdir: str | None,
    only: str | None,
    layer_file: str | None,
    json_file: str | None,
    csv_file: str | None,
    overwrite: bool,
    quiet: bool,
) -> int:
    """Time the benchmark suite against the peers and print a table.

    GFLOP/s counts 2 x multiply-adds of the direct convolution; ratio is the peer's time
    over ours against the best peer (above 1 = convcli faster). A second table reads off
    issue 5's targets, each against its own peer (NumPy W1-W4 against SciPy). The files
    suite times whole processes (start to file written) with their peak memory, and
    reads off issue 12's targets.
    """
    if suite == "files":
        from convcli import bench_files as cbench
    else:
        from convcli import bench as cbench  # type: ignore[no-redef]

    files = suite == "files"
    backends = _csv_list(backend if backend is not None else "auto" if files else "opencl,numpy")
    default_peers = ",".join(cbench.PEERS)
    peers = _csv_list(compare if compare is not None else default_peers)
    for names, allowed, option in (
        (backends, ("auto", "opencl", "numpy") if files else ("opencl", "numpy"), "--backend"),
        (peers, cbench.PEERS, "--compare"),
    ):
        unknown = [n for n in names if n not in allowed]
        if unknown:
            raise click.BadParameter(
                f"{', '.join(unknown)} not in {', '.join(allowed)}", param_hint=option
            )
    if not backends and not peers:
        # an empty table and exit 0 would read as a benchmark that ran
        raise click.UsageError("--backend and --compare are both empty: nothing to time")
    if json_file == "-" and csv_file == "-":
        # both on stdout: JSON then CSV, which no reader of either can parse
        raise click.UsageError("--json - and --csv - both write to stdout; give one a file")
    if layer_file is not None and suite != "cnn":
        raise click.UsageError("--layers gives the networks of --suite cnn")
    for name, flag in _FILES_ONLY:
        if not files and ctx.get_parameter_source(name) not in (
            None,
            click.core.ParameterSource.DEFAULT,
        ):
            raise click.UsageError(f"{flag} sets the files suite (--suite files)")
    sizes = None
    if files:
        sizes = cbench.Sizes().scaled(tiled_mp=tiled_mp, photo_mp=_megapixels(photo_mp))
    if only is not None:
        if not files and suite != "cnn":
            raise click.UsageError("--only picks workloads of --suite files or cnn")
        if suite == "cnn":
            known = _cnn_networks(layer_file)
        else:
            wls = cbench.workloads(sizes)
            known = [wl.id for wl in wls] + list(dict.fromkeys(wl.kind for wl in wls))
        unknown = [i for i in _csv_list(only) if i not in known]
        if unknown or not _csv_list(only):
            # an unknown ID ran nothing and exited 0 with an empty table
            raise click.BadParameter(
                f"{', '.join(unknown) or repr(only)} not in {', '.join(known)}",
                param_hint="--only",
            )
    check_side_files(
        {"--json": json_file, "--csv": csv_file},
        inputs=[layer_file] if layer_file else (),  # the cnn suite's layer file
        overwrite=overwrite,
        dash_is_stdout=True,
    )
    console = rich_console()

    def progress(*args: Any) -> None:
        if not quiet:
            console.print(" ".join(str(a) for a in args), markup=False, highlight=False)

    if suite == "cnn":
        from convcli.cli import bench_cnn

        out = rich_console(stdout=True)
        return bench_cnn.run(
            backends,
            peers,
            repeat or 5,
            json_file,
            csv_file,
            progress,
            out,
            write=lambda target, text: write_text_file(target, text, overwrite=overwrite),
            networks=_csv_list(only) if only is not None else _cnn_networks(layer_file),
            layer_file=layer_file,
        )
    if files:
        rows = cbench.run_files_suite(
            sizes=sizes,
            backends=backends,
            compare=peers,
            repeat=repeat or 3,
            work_dir=workdir,
            only=_csv_list(only),
            progress=progress,
        )
    else:
        rows = cbench.run_suite(
            suite=suite,
            backends=backends,
            compare=peers,
            repeat=repeat or 5,
            progress=progress,
        )
    for target, render in ((json_file, cbench.rows_to_json), (csv_file, cbench.rows_to_csv)):
        if target == "-":
            click.echo(render(rows))
        elif target:
            write_text_file(target, render(rows), overwrite=overwrite)
    if "-" not in (json_file, csv_file):
        if files:
            _files_table(rows)
            _files_targets_table(cbench.target_checks(rows))
        else:
            _bench_table(rows)
            if suite == "standard":  # the targets are set for the standard sizes
                _targets_table(cbench.target_checks(rows))
    if files:  # a peer that fails is shown, not an error of ours
        return 0 if all(r.ok for r in rows if r.system.startswith("convcli")) else 1
    return 0 if all(r.ok for r in rows) else 1


def _files_table(rows: list[Any]) -> None:
    from rich.table import Table

    table = Table(
        title="convcli bench --suite files (whole processes, median of runs)",
        title_justify="left",
    )
    for col in ("workload", "system", "s", "min s", "img/s", "peak MiB", "ratio", "max err",
                "mean err", "note"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("workload", "system", "note") else "right")
    described: dict[str, str] = {}
    for r in rows:
        described.setdefault(r.workload, r.description)
        timed = r.runs > 0
        table.add_row(
            r.workload,
            r.system,
            f"{r.median_s:.2f}" if timed else "-",
            f"{r.min_s:.2f}" if timed else "-",
            f"{r.images_per_s:.1f}" if timed and r.images > 1 else "-",
            f"{r.peak_mib:.0f}" if r.peak_mib else "-",
            f"{r.ratio:.2f}" if r.ratio is not None else "-",
            f"{r.max_err:.2f}" if r.max_err is not None else "-",
            f"{r.mean_err:.2f}" if r.mean_err is not None else "-",
            (r.note or "") if r.ok else f"FAILED {r.note or ''}",
        )
    table.caption = (
        "; ".join(f"{w}: {d}" for w, d in described.items())
        + ". ratio: the fastest correct peer's time / ours. err: output levels from the "
        "float64 result (peers: their own filters and encoders, a rough check)."
    )
    table.caption_justify = "left"
    rich_console(stdout=True).print(table)


def _files_targets_table(checks: list[Any]) -> None:
    if not checks:
        return
    from rich.table import Table

    table = Table(title="issue 12 targets", title_justify="left")
    for col in ("workload", "system", "measure", "target", "value", "met"):
        table.add_column(col, justify="right" if col in ("target", "value") else "left")
    for c in checks:
        table.add_row(
            c.workload,
            c.system,
            c.measure,
            f"{'<=' if c.at_most else '>='} {c.target:g}",
            f"{c.value:.2f}",
            "yes" if c.met else "no",
        )
    rich_console(stdout=True).print(table)


def _bench_table(rows: list[Any]) -> None:
    from rich.table import Table

    table = Table(title="convcli bench (float32, median of runs)", title_justify="left")
    for col, just in (
        ("workload", "left"),
        ("system", "left"),
        ("mode", "left"),
        ("ms", "right"),
        ("min ms", "right"),
        ("GFLOP/s", "right"),
        ("ratio", "right"),
        ("max rel err", "right"),
        ("note", "left"),
    ):
        table.add_column(col, justify=just)
    described: dict[str, str] = {}
    for r in rows:
        described.setdefault(r.workload, r.description)
        table.add_row(
            r.workload,
            r.system,
            r.mode,
            f"{r.median_ms:.2f}",
            f"{r.min_ms:.2f}",
            f"{r.gflops:.1f}" if r.gflops is not None else "-",
            f"{r.ratio:.2f}" if r.ratio is not None else "-",
            f"{r.max_rel_err:.1e}" if r.max_rel_err is not None else "-",
            (r.note or "") if r.ok else f"FAILED {r.note or ''}",
        )
    table.caption = "; ".join(f"{w}: {d}" for w, d in described.items())
    table.caption_justify = "left"
    rich_console(stdout=True).print(table)


def _targets_table(checks: list[Any]) -> None:
    if not checks:
        return
    from rich.table import Table

    table = Table(
        title="issue 5 targets (end-to-end; ratio = peer's time / ours)", title_justify="left"
    )
    for col in ("workload", "system", "vs", "target", "ratio", "ratio of mins", "met"):
        table.add_column(col, justify="right" if col.startswith(("target", "ratio")) else "left")
    for c in checks:
        table.add_row(
            c.workload,
            c.system,
            c.peer,
            f"{c.target:.1f}",
            f"{c.ratio:.2f}",
            f"{c.ratio_of_mins:.2f}",
            "yes" if c.met else "no",
        )
    rich_console(stdout=True).print(table)
