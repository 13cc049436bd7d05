"""The ``convcli`` command: a thin click layer over :mod:`convcli.batch` and the API.

Every option maps to an API keyword with the same name (``--padding-mode`` ->
``padding_mode``). Library errors become one line on stderr (``convcli: error: ...``,
exit 1; usage errors exit 2) in one place, :meth:`_Group.main`. Results and JSON go to
stdout; progress, notices, the timing summary and errors to stderr. ``click`` and
``rich`` are imported only here.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from convcli.cli.messages import (
    _console,
    _err,
    _preset_warnings,
    cli_words,
    flag_for,
    safe_text,
)
from convcli.cli.options import (
    _not_empty,
    parse_bytes,
    parse_count,
    parse_floats,
    parse_pair,
)

__all__ = [
    "cli",
    "cli_words",
    "console_main",
    "flag_for",
    "main",
    "parse_bytes",
    "parse_count",
    "parse_floats",
    "parse_pair",
    "safe_text",
]

from convcli.cli import apply  # noqa: F401 (registers apply and batch)
from convcli.cli.group import cli, console_main, main
from convcli.cli.sidefiles import (
    _check_side_files,
    _preset_file,
    _write_json,
    _write_text,
)

if TYPE_CHECKING:
    import numpy as np

    from convcli import batch as cbatch
    from convcli import filters as cfilters
    from convcli import io as cio
    from convcli import pixels
    from convcli.io import publish as cpublish
else:
    from convcli.cli.lazy import OnFirstUse

    np = OnFirstUse("numpy")
    cbatch = OnFirstUse("convcli.batch")
    cio = OnFirstUse("convcli.io")
    pixels = OnFirstUse("convcli.pixels")
    cpublish = OnFirstUse("convcli.io.publish")
    cfilters = OnFirstUse("convcli.filters")


# ---------------------------------------------------------------------------- parsing
def _megapixels(text: str) -> list[float]:
    """``--photo-mp 24,192`` as numbers; a usage error names the bad item."""
    values = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            value = math.nan
        if not (0.01 <= value <= 10_000):
            raise click.BadParameter(f"{item.strip()!r} is not a size in megapixels (0.01-10000)")
        values.append(value)
    return values


# ---------------------------------------------------------------------------- presets
@cli.group()
def presets() -> None:
    """List, show and export named kernels."""


@presets.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def presets_list(as_json: bool) -> None:
    """Table of presets: name, size, parameters (defaults), description."""
    from convcli import presets as cpresets

    items = cpresets.list_presets()
    _preset_warnings()
    if as_json:
        click.echo(json.dumps([_preset_record(p) for p in items], indent=2))
        return
    from rich.table import Table

    table = Table(title="presets (NAME or NAME:key=value,...)", title_justify="left")
    for col in ("name", "size", "parameters", "description"):
        table.add_column(col, overflow="fold")
    for p in items:
        rec = _preset_record(p)
        table.add_row(rec["name"], rec["size"], _params_text(p.params), rec["description"])
    _console(stdout=True).print(table)


def _params_text(params: Any) -> str:
    if not params:
        return "-"
    if isinstance(params, dict):
        return ", ".join(f"{k}={v}" for k, v in params.items())
    return ", ".join(str(p) for p in params)


def _preset_record(p: Any) -> dict[str, Any]:
    k = np.asarray(p.kernel, dtype=np.float64)
    total = float(k.sum())
    return {
        "name": p.name,
        "size": f"{k.shape[1]}x{k.shape[0]}",
        "parameters": dict(p.params) if isinstance(p.params, dict) else list(p.params or []),
        "description": cli_words(p.description),
        "normalized": bool(p.normalized),
        "sum": total,
        # under --alpha premultiply (the default) on images with alpha
        "alpha": "filtered" if pixels.filters_alpha(total) else "kept",
        "convention": "correlate",
        "symmetric": p.symmetric,
        "imagemagick": shlex.join(p.imagemagick_args("Correlate")),
        "imagemagick_flip": shlex.join(p.imagemagick_args("Convolve")),
    }


def _sum_text(total: float) -> str:
    return "0" if abs(total) < 1e-12 else f"{total:.6g}"


def _format_kernel(k: np.ndarray) -> list[str]:
    cells = [[f"{v:.6g}" for v in row] for row in k]
    width = max((len(c) for row in cells for c in row), default=1)
    return ["  ".join(c.rjust(width) for c in row) for row in cells]


@presets.command("show")
@click.argument("spec", metavar="NAME[:key=value,...]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def presets_show(spec: str, as_json: bool) -> None:
    """Print a preset's kernel grid, its sum and whether it is separable."""
    from convcli import presets as cpresets

    # the kernel apply would use, with apply's checks: show refuses what apply refuses
    cfilters.Filter.from_preset(spec)
    p = cpresets.get_preset(spec)
    k = np.asarray(p.kernel, dtype=np.float64)
    separable = bool(cpresets.is_separable(k))
    rec = _preset_record(p)
    if as_json:
        rec |= {"kernel": k.tolist(), "separable": separable}
        click.echo(json.dumps(rec, indent=2))
        return
    click.echo(f"{p.name} ({k.shape[1]}x{k.shape[0]}): {cli_words(p.description)}")
    if p.params:
        click.echo(f"parameters: {_params_text(p.params)}")
    for line in _format_kernel(k):
        click.echo("  " + line)
    total = _sum_text(rec["sum"])
    click.echo(f"sum: {total}")
    click.echo(f"separable: {'yes' if separable else 'no'}")
    if rec["alpha"] == "filtered":
        click.echo("alpha: filtered (sums to 1; with --alpha premultiply, the default)")
    else:
        click.echo(f"alpha: kept (sum {total}, not 1; with --alpha premultiply, the default)")
    click.echo(f"convention: correlate (torch's; no flip), as ImageMagick {rec['imagemagick']}")
    if rec["symmetric"]:
        click.echo("symmetric: yes (--flip changes nothing)")
    else:
        click.echo(
            f"symmetric: no (mirrored by --flip, which gives ImageMagick {rec['imagemagick_flip']})"
        )
    if k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0:
        click.echo("even size: ImageMagick's Convolve also moves the origin, one pixel off --flip")


@presets.command("export")
@click.argument("spec", metavar="NAME[:key=value,...]")
@click.option(
    "-o",
    "--output",
    required=True,
    metavar="FILE",
    callback=_not_empty,
    help="weights.npy (2-D float32), .npz (weight), .json or .txt.",
)
@click.option("--overwrite", is_flag=True, help="Replace FILE if it exists.")
def presets_export(spec: str, output: str, overwrite: bool) -> None:
    """Write a preset's kernel to a weight file usable with --weights."""
    path = Path(output)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz", ".json", ".txt"):
        raise click.UsageError(f"{output}: use a .npy, .npz, .json or .txt file")
    preset_file = _preset_file(spec)
    _check_side_files(
        {"-o": output}, inputs=[preset_file] if preset_file else [], overwrite=overwrite
    )
    # the kernel --preset uses, refused as --preset refuses it (a value past float32
    # would be written as inf: a JSON 'Infinity' that no JSON reader accepts)
    k = cfilters.Filter.from_preset(spec).weight
    if suffix in (".npy", ".npz"):

        def save(fh: Any) -> None:
            if suffix == ".npy":
                np.save(fh, k, allow_pickle=False)
            else:
                np.savez(fh, weight=k)

        path.parent.mkdir(parents=True, exist_ok=True)
        cpublish.publish(path, save, mode="replace" if overwrite else "create")
    elif suffix == ".json":
        _write_json(path, k.astype(np.float64).tolist(), overwrite=overwrite)
    else:
        text = "\n".join(" ".join(f"{v:.9g}" for v in row) for row in k) + "\n"
        _write_text(path, text, overwrite=overwrite)
    click.echo(safe_text(path))


# ---------------------------------------------------------------------------- devices
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--check",
    is_flag=True,
    help="Run a self-test on each device: a few small convolutions against NumPy.",
)
def devices(as_json: bool, check: bool) -> int:
    """List OpenCL platforms and devices; the one 'auto' picks is marked.

    With --check, each device also runs a self-test (one small convolution per kernel
    family, compared with NumPy); the exit code is 1 when any device fails it.
    """
    try:
        from convcli.backends.opencl.device import check_devices, list_devices

        found = list_devices()
    except ImportError as exc:
        found, why = [], f"pyopencl is not importable ({exc})"
    else:
        why = "no OpenCL platform or device found"
    checks = {c.index: c for c in check_devices()} if check and found else {}
    if as_json:
        records = [_device_record(d, checks.get(d.index)) for d in found]
        click.echo(json.dumps(records, indent=2))
        return _checks_exit(checks)
    if not found:
        _err(f"{why}; convcli uses the NumPy backend", "notice")
        return 0
    from rich.table import Table

    table = Table(title="OpenCL devices (* = used by --backend auto)", title_justify="left")
    columns = ["", "index", "platform", "device", "type", "CUs", "memory", "max alloc"]
    columns += ["local mem", "work-group", "fp64", "fp16"]
    if checks:
        columns += ["self-test", "build s"]
    for col in columns:
        table.add_column(col, overflow="fold")
    for d in found:
        row = [
            "*" if d.default else "",
            d.index,
            d.platform,
            d.name,
            f"{d.type} ({d.kind})" if d.kind else d.type,
            str(d.compute_units),
            _human_bytes(d.global_mem_bytes),
            _human_bytes(d.max_alloc_bytes),
            _human_bytes(d.local_mem_bytes),
            f"{d.max_work_group_size} ({' x '.join(map(str, d.max_work_item_sizes))})",
            "yes" if d.fp64 else "no",
            "yes" if d.fp16 else "no",
        ]
        c = checks.get(d.index)
        if c is not None:
            verdict = "pass" if c.ok else "FAIL"
            row += [f"{verdict} {c.passed}/{c.total}", f"{c.build_seconds:.1f}"]
        table.add_row(*row)
    _console(stdout=True).print(table)
    for c in checks.values():
        for failure in c.failures:
            _err(f"device {c.index}: {failure}", "notice")
    return _checks_exit(checks)


def _checks_exit(checks: dict[str, Any]) -> int:
    """The exit code of ``devices``: 1 when a device failed its self-test."""
    return 1 if any(not c.ok for c in checks.values()) else 0


def _device_record(d: Any, check: Any = None) -> dict[str, Any]:
    keys = (
        "index",
        "platform",
        "name",
        "type",
        "kind",
        "compute_units",
        "global_mem_bytes",
        "max_alloc_bytes",
        "local_mem_bytes",
        "max_work_group_size",
        "max_work_item_sizes",
        "fp64",
        "fp16",
        "default",
    )
    record = {k: getattr(d, k) for k in keys}
    record["max_work_item_sizes"] = list(d.max_work_item_sizes)
    if check is not None:
        record["check"] = {
            "ok": check.ok,
            "passed": check.passed,
            "total": check.total,
            "build_seconds": round(check.build_seconds, 3),
            "seconds": round(check.seconds, 3),
            "failures": list(check.failures),
        }
    return record


def _human_bytes(n: int | None) -> str:
    from convcli.budget import format_bytes

    return format_bytes(n) if n else "-"


# ---------------------------------------------------------------------------- bench
def _csv_list(text: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (text or "").split(",") if v.strip())


def _cnn_networks() -> list[str]:
    """The networks of the cnn suite's shipped layer file."""
    from convcli import bench_cnn

    return list(bench_cnn.load_networks()[0])


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
    type=click.FloatRange(min=0.1),
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
    help="files suite: keep inputs and outputs here instead of a temporary folder.",
)
@click.option(
    "--only",
    metavar="IDS",
    help="files suite: workloads to run by id or kind, e.g. F3,folder,png; cnn suite: "
    "networks, e.g. resnet18,convnext_tiny (default: all).",
)
@click.option(
    "--json", "json_file", metavar="FILE", callback=_not_empty,
    help="Write rows as JSON ('-': stdout).",
)  # fmt: skip
@click.option(
    "--csv", "csv_file", metavar="FILE", callback=_not_empty,
    help="Write rows as CSV ('-': stdout).",
)  # fmt: skip
@click.option("--overwrite", is_flag=True, help="Replace --json/--csv files that exist.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def bench(
    suite: str,
    backend: str | None,
    compare: str | None,
    repeat: int | None,
    tiled_mp: float,
    photo_mp: str,
    workdir: str | None,
    only: str | None,
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
    if json_file == "-" and csv_file == "-":
        # both on stdout: JSON then CSV, which no reader of either can parse
        raise click.UsageError("--json - and --csv - both write to stdout; give one a file")
    sizes = None
    if files:
        sizes = cbench.Sizes().scaled(tiled_mp=tiled_mp, photo_mp=_megapixels(photo_mp))
    if only is not None:
        if not files and suite != "cnn":
            raise click.UsageError("--only picks workloads of --suite files or cnn")
        if suite == "cnn":
            known = _cnn_networks()
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
    _check_side_files(
        {"--json": json_file, "--csv": csv_file}, overwrite=overwrite, dash_is_stdout=True
    )
    console = _console()

    def progress(*args: Any) -> None:
        if not quiet:
            console.print(" ".join(str(a) for a in args), markup=False, highlight=False)

    if suite == "cnn":
        from convcli import cli_cnn

        out = _console(stdout=True)
        return cli_cnn.bench_cnn(
            backends,
            peers,
            repeat or 5,
            json_file,
            csv_file,
            progress,
            out,
            write=lambda target, text: _write_text(target, text, overwrite=overwrite),
            networks=_csv_list(only) if only is not None else None,
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
            _write_text(target, render(rows), overwrite=overwrite)
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
    _console(stdout=True).print(table)


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
    _console(stdout=True).print(table)


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
    _console(stdout=True).print(table)


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
    _console(stdout=True).print(table)
