"""``convcli presets list|show|export``: the named kernels as a table or JSON, one
kernel's grid and properties, and a kernel written to a weight file."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from convcli.cli.group import cli
from convcli.cli.messages import cli_words, report_preset_warnings, rich_console, safe_text
from convcli.cli.options import not_empty
from convcli.cli.sidefiles import check_side_files, preset_file_of, write_json_file, write_text_file

if TYPE_CHECKING:
    import numpy as np

    from convcli import filters as cfilters
    from convcli import pixels
    from convcli.io import publish as cpublish
else:
    from convcli.cli.lazy import OnFirstUse

    np = OnFirstUse("numpy")
    pixels = OnFirstUse("convcli.pixels")
    cpublish = OnFirstUse("convcli.io.publish")
    cfilters = OnFirstUse("convcli.filters")


@cli.group()
def presets() -> None:
    """List, show and export named kernels."""


@presets.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def presets_list(as_json: bool) -> None:
    """Table of presets: name, size, parameters (defaults), description."""
    from convcli import presets as cpresets

    items = cpresets.list_presets()
    report_preset_warnings()
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
    rich_console(stdout=True).print(table)


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
    about = cli_words(p.description)  # a user preset may have none: no dangling ': '
    click.echo(f"{p.name} ({k.shape[1]}x{k.shape[0]})" + (f": {about}" if about else ""))
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
    callback=not_empty,
    help="weights.npy (2-D float32), .npz (weight), .json or .txt.",
)
@click.option("--overwrite", is_flag=True, help="Replace FILE if it exists.")
def presets_export(spec: str, output: str, overwrite: bool) -> None:
    """Write a preset's kernel to a weight file usable with --weights."""
    path = Path(output)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz", ".json", ".txt"):
        raise click.UsageError(f"{output}: use a .npy, .npz, .json or .txt file")
    preset_file = preset_file_of(spec)
    check_side_files(
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
        write_json_file(path, k.astype(np.float64).tolist(), overwrite=overwrite)
    else:
        text = "\n".join(" ".join(f"{v:.9g}" for v in row) for row in k) + "\n"
        write_text_file(path, text, overwrite=overwrite)
    click.echo(safe_text(path))
