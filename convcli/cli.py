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
import os
import re
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import numpy as np

from convcli import __version__
from convcli import batch as cbatch
from convcli import io as cio
from convcli.api import ALGOS
from convcli.errors import ConvcliError, InputError
from convcli.spec import PADDING_MODES

PROG = "convcli"
ALPHA_MODES = ("premultiply", "keep", "filter", "drop")
OUT_MAPS = ("clip", "abs", "normalize", "offset")
FORMATS = ("png", "jpg", "jpeg", "tif", "tiff", "webp", "bmp", "npy")
DEFAULT_PADDING_MODE = "replicate"


# ---------------------------------------------------------------------------- output
def _console(stdout: bool = False):
    """A rich console on stderr or stdout, looked up at call time (CliRunner swaps them).

    Piped output gets a wide virtual terminal so tables are not folded at 80 columns.
    """
    from rich.console import Console

    stream = sys.stdout if stdout else sys.stderr
    console = Console(file=stream)
    if not console.is_terminal:
        console = Console(file=stream, width=200)
    return console


def _err(message: str, kind: str = "error") -> None:
    click.echo(f"{PROG}: {kind}: {message}", err=True)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _write_json(path: str | Path, data: object) -> None:
    """Write JSON atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------- errors
_DEBUG_HINT = " (set CONVCLI_DEBUG=1 to see the traceback)"
# click >= 8.2 raises this usage error for a group called without a command
_NO_ARGS_IS_HELP: type[Exception] | tuple[()] = getattr(click.exceptions, "NoArgsIsHelpError", ())


class _Group(click.Group):
    """The command group; its ``main`` is the one place errors become one line."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name or PROG, complete_var, False, **extra)
        except _NO_ARGS_IS_HELP as exc:  # bare `convcli` / `convcli presets`: the help
            click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
            sys.exit(0)
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            _err(_one_line(exc.format_message()) + hint)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            _err(_one_line(exc.format_message()))
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            _err("aborted")
            sys.exit(130)
        except ConvcliError as exc:
            _err(_one_line(exc))
            sys.exit(1)
        except KeyboardInterrupt:
            _err("interrupted")
            sys.exit(130)
        except BrokenPipeError:  # `convcli presets list | head`: the reader left, no fuss
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(1)
        except OSError as exc:  # e.g. --timings into a folder we cannot write
            name = f"{exc.filename}: " if exc.filename else ""
            _err(_one_line(f"{name}{exc.strerror or exc}"))
            sys.exit(1)
        except Exception as exc:  # a bug: still one line, the traceback on request
            if os.environ.get("CONVCLI_DEBUG"):
                raise
            _err(_one_line(f"internal error: {type(exc).__name__}: {exc}") + _DEBUG_HINT)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


# ---------------------------------------------------------------------------- parsing
_SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(text: str) -> int:
    """``"512M"`` -> 536870912; K/M/G/T are powers of 1024, ``B``/``iB`` optional."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise click.BadParameter(f"{text!r} is not a size like 512M, 2G or 1000000")
    number = float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()]
    if not math.isfinite(number):  # 400 digits: int(inf) would raise OverflowError
        raise click.BadParameter(f"{text!r} is too large")
    value = int(number)
    if value <= 0:
        raise click.BadParameter("must be positive")
    return value


def parse_count(text: str) -> int | None:
    """A pixel count: ``"50M"`` -> 50_000_000 (decimal), ``none`` -> no limit."""
    if str(text).strip().lower() in ("none", "0", "off"):
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMG]?)\s*", str(text), re.IGNORECASE)
    if not m:
        raise click.BadParameter(f"{text!r} is not a count like 200M or 1000000")
    number = float(m.group(1)) * {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}[m.group(2).upper()]
    if not math.isfinite(number):
        raise click.BadParameter(f"{text!r} is too large")
    return int(number)


def parse_pair(text: str, *, words: tuple[str, ...] = ()) -> int | tuple[int, int] | str:
    """``"2"`` -> 2, ``"2,1"`` -> (2, 1) (height, width); ``words`` pass through."""
    text = str(text).strip()
    if text.lower() in words:
        return text.lower()
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        allowed = " or ".join(["N", "H,W", *words])
        raise click.BadParameter(f"{text!r} is not {allowed}") from None
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return (values[0], values[1])
    raise click.BadParameter(f"{text!r}: give one value or two (H,W)")


def parse_floats(text: str) -> np.ndarray:
    """``"0.5"`` or ``"0.1,0.2,0.3"`` -> float32 array."""
    try:
        values = [float(v) for v in str(text).replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a number or a comma-separated list") from None
    big = float(np.finfo(np.float32).max)  # results are float32: larger values overflow
    if not values or not all(np.isfinite(v) and abs(v) <= big for v in values):
        raise click.BadParameter(f"{text!r} must be finite float32 numbers")
    return np.asarray(values, dtype=np.float32)


def _finite32(ctx, param, value: float) -> float:
    """--scale / --offset: results are float32, so larger values (or NaN) cannot work."""
    if not (math.isfinite(value) and abs(value) <= float(np.finfo(np.float32).max)):
        raise click.BadParameter(f"{value!r} must be a finite float32 number")
    return value


def _callback(fn: Callable[[str], Any]) -> Callable:
    def convert(ctx, param, value):
        return None if value is None else fn(value)

    return convert


# ---------------------------------------------------------------------------- filter
def build_filter(
    *,
    preset: str | None = None,
    kernel: str | None = None,
    weights: str | None = None,
    key: str | None = None,
    normalize_kernel: bool = False,
    flip: bool = False,
    bias: np.ndarray | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str | None = None,
    dilation: int | tuple[int, int] = 1,
    groups: int | None = None,
    padding_mode: str = DEFAULT_PADDING_MODE,
) -> cbatch.Filter:
    """Assemble the filter from exactly one of --preset / --kernel / --weights.

    The one place apply and batch turn kernel options into a :class:`batch.Filter`.
    """
    given = [
        name
        for name, v in (("--preset", preset), ("--kernel", kernel), ("--weights", weights))
        if v is not None
    ]
    if len(given) != 1:
        raise click.UsageError(
            "give exactly one of --preset, --kernel or --weights"
            + (f" (got {', '.join(given)})" if given else "")
        )
    if key is not None and weights is None:
        raise click.UsageError("--key picks a tensor in a --weights file")
    file_bias = None
    if preset is not None:
        from convcli import presets as cpresets

        w = np.asarray(cpresets.get_preset(preset).kernel, dtype=np.float64)
    elif kernel is not None:
        from convcli import presets as cpresets

        w = np.asarray(cpresets.parse_kernel_text(kernel), dtype=np.float64)
    else:
        w, file_bias = cio.load_weights(weights, key=key)
        w = np.asarray(w, dtype=np.float64)
    if normalize_kernel:
        from convcli import presets as cpresets

        if w.ndim == 2:
            w = np.asarray(cpresets.normalize_kernel(w), dtype=np.float64)
        else:  # each output channel's whole filter sums to 1
            flat = [np.asarray(cpresets.normalize_kernel(f.reshape(-1, w.shape[-1]))) for f in w]
            w = np.stack(flat).reshape(w.shape)
    if flip:  # true convolution = correlation with the kernel rotated by 180 degrees
        w = w[..., ::-1, ::-1]
    big = float(np.finfo(np.float32).max)
    if not np.all(np.isfinite(w)) or np.abs(w).max(initial=0.0) > big:
        source = given[0] + (f" {weights}" if weights is not None else "")
        raise InputError(
            f"{source}: kernel values must be finite float32 numbers (|v| <= {big:.4g})"
        )
    if bias is None and file_bias is not None:
        bias = np.asarray(file_bias, dtype=np.float32)
    return cbatch.Filter(
        weight=np.ascontiguousarray(w, dtype=np.float32),
        bias=bias,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        padding_mode=padding_mode,
    )


# ---------------------------------------------------------------------------- options
def _kernel_options(f: Callable) -> Callable:
    options = [
        click.option(
            "--preset",
            metavar="SPEC",
            help="Named kernel, NAME or NAME:key=value,... (see 'convcli presets "
            "list'), e.g. gaussian:sigma=2.",
        ),
        click.option(
            "--kernel",
            metavar="TEXT",
            help="Inline kernel: rows by ';', values by ',' (\"1,2,1;2,4,2;1,2,1\") "
            'or ImageMagick\'s "WxH: v,v,...".',
        ),
        click.option(
            "--weights",
            metavar="FILE",
            help="Weight file: .npy, .npz (weight, bias), .safetensors, .pt, text or "
            "JSON. 2-D = one kernel for every channel; 4-D = torch layout.",
        ),
        click.option(
            "--key",
            metavar="PREFIX",
            help="Tensor name or prefix inside a --weights file (safetensors, .pt).",
        ),
        click.option(
            "--normalize-kernel",
            is_flag=True,
            help="Scale the kernel to sum 1 (zero-sum kernels: positives sum to 1).",
        ),
        click.option(
            "--flip",
            is_flag=True,
            help="Rotate the kernel 180 degrees: true convolution instead of torch's "
            "cross-correlation.",
        ),
        click.option(
            "--bias",
            metavar="B[,B...]",
            callback=_callback(parse_floats),
            help="Added to every output channel (one value) or per output channel.",
        ),
        click.option(
            "--stride",
            default="1",
            show_default=True,
            metavar="S|SH,SW",
            callback=_callback(parse_pair),
            help="Stride, H,W or one value.",
        ),
        click.option(
            "--padding",
            metavar="P|PH,PW|same|valid",
            callback=_callback(lambda t: parse_pair(t, words=("same", "valid"))),
            help="Padding on each side. Default: 'same' (the image keeps its size); "
            "with --stride > 1, dilation*(k-1)//2 on each side.",
        ),
        click.option(
            "--dilation",
            default="1",
            show_default=True,
            metavar="D|DH,DW",
            callback=_callback(parse_pair),
            help="Dilation, H,W or one value.",
        ),
        click.option(
            "--groups",
            type=click.IntRange(min=1),
            help="Groups; default inferred: image channels for a 2-D kernel, "
            "C_in / weight.shape[1] for a 4-D weight.",
        ),
        click.option(
            "--padding-mode",
            type=click.Choice(PADDING_MODES),
            default=DEFAULT_PADDING_MODE,
            show_default=True,
            help="Border handling. replicate repeats the edge pixels (ImageMagick's "
            "default edge); torch's default is zeros; symmetric mirrors with the "
            "edge (scipy's reflect).",
        ),
        click.option(
            "--backend",
            type=click.Choice(["auto", "opencl", "numpy"]),
            default="auto",
            show_default=True,
            help="auto: OpenCL when a device works, else NumPy (with a notice).",
        ),
        click.option(
            "--device",
            metavar="SPEC",
            help="OpenCL device: 'P:D' index or name substring (see 'convcli devices').",
        ),
        click.option(
            "--algo",
            type=click.Choice(ALGOS),
            default="auto",
            show_default=True,
            help="Algorithm; auto lets the cost model choose.",
        ),
        click.option(
            "--max-memory",
            metavar="SIZE",
            callback=_callback(parse_bytes),
            help="Memory one piece of work may use, e.g. 512M or 2G; larger images "
            "run in tiles (same result).",
        ),
        click.option(
            "--max-pixels",
            metavar="N",
            default=str(cio.DEFAULT_MAX_PIXELS),
            show_default=True,
            callback=_callback(parse_count),
            help="Refuse images with more pixels (decompression bombs), e.g. 500M; "
            "'none' for no limit.",
        ),
        click.option(
            "--alpha",
            type=click.Choice(ALPHA_MODES),
            default="premultiply",
            show_default=True,
            help="Alpha channel: premultiply (transparent pixels do not bleed), keep "
            "(unfiltered), filter (as a plain channel), drop.",
        ),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(FORMATS, case_sensitive=False),
            help="Output format (default: the output suffix, else the input's).",
        ),
        click.option(
            "--bit-depth",
            type=click.Choice(["8", "16", "32"]),
            help="Output bits per channel (default: the input's where the format holds it).",
        ),
        click.option(
            "--out-map",
            type=click.Choice(OUT_MAPS),
            default="clip",
            show_default=True,
            help="Map results to [0, 1]: clip, abs, normalize (min..max), offset "
            "(+0.5, like ImageMagick's bias 50%). .npy gets the raw result "
            "unless this, --scale or --offset is given.",
        ),
        click.option(
            "--scale",
            type=float,
            default=1.0,
            callback=_finite32,
            show_default=True,
            help="Multiply results before mapping.",
        ),
        click.option(
            "--offset",
            type=float,
            default=0.0,
            callback=_finite32,
            show_default=True,
            help="Add to results before mapping.",
        ),
        click.option(
            "--quality",
            type=click.IntRange(1, 100),
            default=95,
            show_default=True,
            help="JPEG/WebP quality.",
        ),
        click.option(
            "--workers",
            type=click.IntRange(min=1),
            help="Threads reading and writing images (default: CPU count, min 2).",
        ),
        click.option("--timings", metavar="FILE.json", help="Write the timing summary as JSON."),
        click.option(
            "-q",
            "--quiet",
            is_flag=True,
            help="No progress bar, output paths or timing summary. Errors, warnings "
            "(e.g. a file read at 8 bits) and notices (e.g. OpenCL failed, NumPy used) "
            "still show.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


_FILTER_KEYS = (
    "preset",
    "kernel",
    "weights",
    "key",
    "normalize_kernel",
    "flip",
    "bias",
    "stride",
    "padding",
    "dilation",
    "groups",
    "padding_mode",
)


def _preset_warnings(kind: str = "warning") -> None:
    """One line per user preset file (CONVCLI_PRESET_PATH) that could not be loaded."""
    from convcli import presets as cpresets

    for line in cpresets.preset_errors():
        _err(_one_line(line) + " (left out of the presets)", kind)


def _setup(opts: dict[str, Any], ctx: click.Context):
    """Options -> (Filter, Engine, Output); argument mistakes fail before any file is read."""
    filt = build_filter(**{k: opts[k] for k in _FILTER_KEYS})
    filt.check()
    # after the build: a broken file that is the preset asked for is the error itself
    if opts["preset"] is not None:
        _preset_warnings("notice")
    engine = cbatch.Engine(
        backend=opts["backend"],
        device=opts["device"],
        algo=opts["algo"],
        max_memory=opts["max_memory"],
    )
    src = ctx.get_parameter_source
    explicit_map = any(
        src(name) not in (None, click.core.ParameterSource.DEFAULT)
        for name in ("out_map", "scale", "offset")
    )
    output = cbatch.Output(
        out_map=opts["out_map"],
        scale=opts["scale"],
        offset=opts["offset"],
        bit_depth=int(opts["bit_depth"]) if opts["bit_depth"] else None,
        quality=opts["quality"],
        alpha=opts["alpha"],
        raw_npy=not explicit_map,
    )
    return filt, engine, output


# ---------------------------------------------------------------------------- running
@contextmanager
def _signals(stop: threading.Event, received: list[int], notify: Callable[[str], None]):
    """SIGINT/SIGTERM set ``stop`` (finish the current image); a second one aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        received.append(signum)
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        notify("stopping after the current image (press Ctrl-C again to abort now)")

    saved = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        # once stopping, the run is over and we only report: a late second signal must
        # not kill the process mid-summary (exit status -2 instead of 130)
        for s, h in saved.items():
            signal.signal(s, signal.SIG_IGN if stop.is_set() else h)


def _progress(total: int, quiet: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = _console()
    # One image: the bar counts output rows, which conv2d reports as the tiles of a
    # large image finish (a small image is one step); several: the bar counts images.
    columns = [
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn() if total == 1 else MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    return Progress(
        *columns,
        console=console,
        transient=True,
        disable=quiet or not console.is_terminal,
    )


def _run(
    plan: cbatch.Plan,
    filt: cbatch.Filter,
    engine: cbatch.Engine,
    output: cbatch.Output,
    opts: dict[str, Any],
    *,
    existing: cbatch.Existing,
    label: str,
) -> tuple[cbatch.BatchResult, int | None]:
    """Run the plan with progress, signals and the summary; returns (result, signal)."""
    quiet = opts["quiet"]
    stop = threading.Event()
    received: list[int] = []
    progress = _progress(len(plan.tasks), quiet)
    single = len(plan.tasks) == 1
    for failure in plan.refused:
        _err(failure.line())
    with progress:
        bar = progress.add_task(label, total=len(plan.tasks))

        def on_event(event: cbatch.Event) -> None:
            if event.kind == "failed" and event.reason:
                progress.console.print(
                    f"{PROG}: error: {event.reason}", markup=False, highlight=False, soft_wrap=True
                )
            # remarks about a file's result (read at 8 bits, alpha dropped) show even
            # with -q: the output differs from what the user may expect
            for note in event.notes:
                progress.console.print(
                    f"{PROG}: warning: {event.task.src}: {_one_line(note)}",
                    markup=False,
                    highlight=False,
                    soft_wrap=True,
                )
            if single:
                progress.update(bar, completed=1)
            else:
                progress.advance(bar)

        def on_rows(done: int, total: int) -> None:
            # the single image's bar runs from 0 to 1: its rows as a fraction
            progress.update(bar, completed=done / total)

        def notify(text: str) -> None:
            progress.console.print(f"{PROG}: {text}", markup=False, highlight=False)

        try:
            with _signals(stop, received, notify):
                result = cbatch.run_tasks(
                    plan.tasks,
                    filt,
                    engine=engine,
                    output=output,
                    max_pixels=opts["max_pixels"],
                    existing=existing,
                    workers=opts["workers"],
                    stop=stop,
                    on_event=on_event,
                    on_rows=on_rows if single else None,
                )
        except KeyboardInterrupt:  # a second signal: stop now (writes are atomic)
            progress.stop()
            _err(
                "aborted; outputs already written are complete, no partial file "
                "(rerun with --skip-existing to finish)",
                "summary",
            )
            code = 128 + (received[-1] if received else signal.SIGINT)
            raise click.exceptions.Exit(code) from None
    result.failed[:0] = plan.refused
    # notices say the run went differently than asked (an OpenCL fault, NumPy used):
    # shown even with -q, which silences only what the user asked to see
    for note in result.info.notices:
        _err(_one_line(note), "notice")
    if result.fatal:
        _err(result.fatal)
    # the table is for runs that did something; an error stays the only line
    if not quiet and result.done and (len(plan.tasks) > 1 or not result.failed):
        _timing_table(result)
    if opts["timings"]:
        _write_json(opts["timings"], _timings_record(result))
    return result, (received[0] if received else None)


def _timings_record(result: cbatch.BatchResult) -> dict[str, Any]:
    s = result.summary()
    keys = (
        "backend",
        "device",
        "algo",
        "tiles",
        "notices",
        "timings_s",
        "megapixels",
        "megapixels_per_s",
        "gflops",
        "gflops_per_s",
        "done",
        "skipped",
        "failed",
    )
    return {k: s[k] for k in keys}


def _timing_table(result: cbatch.BatchResult) -> None:
    from rich.table import Table

    s = result.summary()
    t = result.timings
    table = Table(title="timings", title_justify="left", show_header=True, box=None)
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for stage in ("read", "upload", "build", "compute", "download", "write", "total"):
        table.add_row(stage, f"{t.get(stage, 0.0):.3f}")
    mps = s["megapixels_per_s"]
    gfs = s["gflops_per_s"]
    table.add_row("megapixels/s", "-" if mps is None else f"{mps:.2f}")
    table.add_row("GFLOP/s", "-" if gfs is None else f"{gfs:.2f}")
    if result.info.tiles > max(1, len(result.done)):
        table.add_row("tiles", str(result.info.tiles))
    console = _console()
    console.print(table)
    # long device names go below the table so the numbers stay in a narrow column
    where = f"backend {s['backend'] or '-'}, device {s['device'] or '-'}, algo {s['algo'] or '-'}"
    console.print(f" {where}", markup=False, highlight=False, soft_wrap=True)


def _exit_code(result: cbatch.BatchResult, signum: int | None) -> int:
    if result.interrupted and signum is not None:
        return 128 + signum
    return 0 if result.ok else 1


def _existing_policy(skip_existing: bool, overwrite: bool) -> cbatch.Existing:
    if skip_existing and overwrite:
        raise click.UsageError("--skip-existing and --overwrite exclude each other")
    return "skip" if skip_existing else "replace" if overwrite else "fail"


# ---------------------------------------------------------------------------- commands
@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name=PROG, message="%(prog)s %(version)s")
def cli() -> None:
    """Torch-exact 2D convolution of images and arrays, on OpenCL or NumPy.

    \b
    convcli apply samples/astronaut.png --preset gaussian:sigma=2 -o blur.png
    convcli batch photos/ out/ --recursive --preset sharpen --skip-existing
    convcli presets list
    """


@cli.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option(
    "-o",
    "--output",
    required=True,
    metavar="OUTPUT",
    help="Output file for one input; a folder for several (created).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Allow OUTPUT to be the input file itself (replaced atomically).",
)
@_kernel_options
@click.pass_context
def apply(ctx: click.Context, inputs: tuple[str, ...], output: str, overwrite: bool, **opts):
    """Convolve INPUT image(s) and write OUTPUT.

    The kernel comes from exactly one of --preset, --kernel or --weights. A 2-D kernel is
    applied to every channel; the default padding keeps the image size ('same') and the
    border repeats the edge pixels (--padding-mode replicate). Output paths go to stdout.
    """
    filt, engine, out = _setup(opts, ctx)
    fmt = opts["fmt"]
    out_suffix = Path(output).suffix.lower().lstrip(".")
    single_file = len(inputs) == 1 and out_suffix and not Path(output).is_dir()
    if fmt and single_file and out_suffix != fmt.lower():
        raise click.UsageError(f"--format {fmt} disagrees with the output suffix of {output}")
    several = len(inputs) > 1 and not Path(output).is_dir()
    if several and (Path(output).exists() or f".{out_suffix}" in cbatch.WRITABLE_SUFFIXES):
        # `-o out.png` with two inputs would create a folder named out.png
        raise click.UsageError(
            f"-o {output}: several inputs need an output folder (e.g. -o {Path(output).stem}/)"
        )
    plan = cbatch.plan_files(inputs, output, fmt=fmt, overwrite=overwrite)
    label = Path(inputs[0]).name if len(inputs) == 1 else "images"
    result, signum = _run(plan, filt, engine, out, opts, existing="replace", label=label)
    for task in result.done:
        if not opts["quiet"]:
            click.echo(str(task.dst))
    if result.interrupted:
        _err(f"interrupted; {len(result.done)} of {len(inputs)} outputs written", "summary")
    return _exit_code(result, signum)


@cli.command()
@click.argument("in_dir", metavar="IN_DIR")
@click.argument("out_dir", metavar="OUT_DIR")
@click.option("--recursive", "-r", is_flag=True, help="Include sub-folders, mirrored in OUT_DIR.")
@click.option(
    "--glob", metavar="PAT", help="Input file pattern, e.g. '*.jpg' (default: every image suffix)."
)
@click.option(
    "--skip-existing",
    is_flag=True,
    help="Leave outputs that exist untouched (resume an interrupted batch).",
)
@click.option(
    "--overwrite", is_flag=True, help="Replace outputs that exist (inputs are never replaced)."
)
@click.option(
    "--report", metavar="FILE.json", help="Write counts and every failure (file + reason) as JSON."
)
@_kernel_options
@click.pass_context
def batch(
    ctx: click.Context,
    in_dir: str,
    out_dir: str,
    recursive: bool,
    glob: str | None,
    skip_existing: bool,
    overwrite: bool,
    report: str | None,
    **opts,
):
    """Convolve every image in IN_DIR into OUT_DIR (same kernel options as apply).

    Bad files get one line each and the batch goes on; the exit code is 1 if anything
    failed. Outputs are written atomically; an existing output is an error unless
    --skip-existing or --overwrite says what to do; Ctrl-C or SIGTERM stops after the
    current image (exit 130/143), and a rerun with --skip-existing completes the rest.
    """
    existing = _existing_policy(skip_existing, overwrite)
    filt, engine, out = _setup(opts, ctx)
    plan = cbatch.plan_batch(in_dir, out_dir, recursive=recursive, glob=glob, fmt=opts["fmt"])
    if not plan.tasks and not plan.refused:
        what = f"no files matching {glob!r}" if glob else "no images"
        deeper = not recursive and any(p.is_dir() for p in Path(in_dir).iterdir())
        hint = " (sub-folders are read with --recursive)" if deeper else ""
        _err(f"{what} found in {in_dir}{hint}", "notice")
        if report:
            _write_json(report, cbatch.BatchResult().summary())
        return 0
    result, signum = _run(plan, filt, engine, out, opts, existing=existing, label="batch")
    summary = result.summary()
    if report:
        _write_json(report, summary)
    total = result.timings.get("total", 0.0)
    rate = len(result.done) / total if total > 0 else 0.0
    line = (
        f"{len(result.done)} done, {len(result.skipped)} skipped, {len(result.failed)} failed"
        f" in {total:.2f} s ({rate:.1f} images/s)"
    )
    # result.failed includes the inputs refused while planning
    seen = len(result.done) + len(result.skipped) + len(result.failed)
    not_run = len(plan.tasks) + len(plan.refused) - seen
    if result.interrupted or result.fatal:
        why = "interrupted" if result.interrupted else "stopped"
        line += f"; {why}, {not_run} not processed (rerun with --skip-existing to finish)"
    if not opts["quiet"] or not result.ok:
        _err(line, "summary")
    return _exit_code(result, signum)


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
    k = np.asarray(p.kernel)
    return {
        "name": p.name,
        "size": f"{k.shape[1]}x{k.shape[0]}",
        "parameters": dict(p.params) if isinstance(p.params, dict) else list(p.params or []),
        "description": p.description,
        "normalized": bool(p.normalized),
    }


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

    p = cpresets.get_preset(spec)
    k = np.asarray(p.kernel, dtype=np.float64)
    separable = bool(cpresets.is_separable(k))
    if as_json:
        rec = _preset_record(p) | {
            "kernel": k.tolist(),
            "sum": float(k.sum()),
            "separable": separable,
        }
        click.echo(json.dumps(rec, indent=2))
        return
    click.echo(f"{p.name} ({k.shape[1]}x{k.shape[0]}): {p.description}")
    if p.params:
        click.echo(f"parameters: {_params_text(p.params)}")
    for line in _format_kernel(k):
        click.echo("  " + line)
    click.echo(f"sum: {k.sum():.6g}")
    click.echo(f"separable: {'yes' if separable else 'no'}")


@presets.command("export")
@click.argument("spec", metavar="NAME[:key=value,...]")
@click.option(
    "-o",
    "--output",
    required=True,
    metavar="FILE",
    help="weights.npy (2-D float32), .npz (weight), .json or .txt.",
)
def presets_export(spec: str, output: str) -> None:
    """Write a preset's kernel to a weight file usable with --weights."""
    from convcli import presets as cpresets

    k = np.asarray(cpresets.get_preset(spec).kernel, dtype=np.float32)
    path = Path(output)
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        # through a file handle: np.save/np.savez would append a suffix to the temp name
        def save(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                if suffix == ".npy":
                    np.save(fh, k, allow_pickle=False)
                else:
                    np.savez(fh, weight=k)

        cio.atomic_write(path, save)
    elif suffix == ".json":
        _write_json(path, k.astype(np.float64).tolist())
    elif suffix == ".txt":
        text = "\n".join(" ".join(f"{v:.9g}" for v in row) for row in k) + "\n"
        cio.atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    else:
        raise click.UsageError(f"{output}: use a .npy, .npz, .json or .txt file")
    click.echo(str(path))


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
        from convcli.backends.opencl_backend import check_devices, list_devices

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
    if not n:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# ---------------------------------------------------------------------------- bench
def _csv_list(text: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (text or "").split(",") if v.strip())


@cli.command()
@click.option(
    "--suite",
    type=click.Choice(["quick", "standard"]),
    default="standard",
    show_default=True,
    help="Workloads to time (quick: small, a smoke test).",
)
@click.option(
    "--backend",
    default="opencl,numpy",
    show_default=True,
    metavar="LIST",
    help="convcli backends to time, comma-separated.",
)
@click.option(
    "--compare",
    default="torch,opencv,scipy",
    show_default=True,
    metavar="LIST",
    help="Peers to time when importable; '' for none.",
)
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Timed runs per system, in up to 7 interleaved rounds (median and min reported).",
)
@click.option("--json", "json_file", metavar="FILE", help="Write rows as JSON ('-': stdout).")
@click.option("--csv", "csv_file", metavar="FILE", help="Write rows as CSV ('-': stdout).")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def bench(
    suite: str,
    backend: str,
    compare: str,
    repeat: int,
    json_file: str | None,
    csv_file: str | None,
    quiet: bool,
) -> int:
    """Time the benchmark suite against the peers and print a table.

    GFLOP/s counts 2 x multiply-adds of the direct convolution; ratio is the peer's time
    over ours against the best peer (above 1 = convcli faster). A second table reads off
    issue 5's targets, each against its own peer (NumPy W1-W4 against SciPy).
    """
    from convcli import bench as cbench

    backends, peers = _csv_list(backend), _csv_list(compare)
    for names, allowed, option in (
        (backends, ("opencl", "numpy"), "--backend"),
        (peers, ("torch", "opencv", "scipy"), "--compare"),
    ):
        unknown = [n for n in names if n not in allowed]
        if unknown:
            raise click.BadParameter(
                f"{', '.join(unknown)} not in {', '.join(allowed)}", param_hint=option
            )
    console = _console()

    def progress(*args: Any) -> None:
        if not quiet:
            console.print(" ".join(str(a) for a in args), markup=False, highlight=False)

    rows = cbench.run_suite(
        suite=suite,
        backends=backends,
        compare=peers,
        repeat=repeat,
        progress=progress,
    )
    for target, render in ((json_file, cbench.rows_to_json), (csv_file, cbench.rows_to_csv)):
        if target == "-":
            click.echo(render(rows))
        elif target:
            text = render(rows)
            cio.atomic_write(Path(target), lambda tmp, t=text: Path(tmp).write_text(t))
    if "-" not in (json_file, csv_file):
        _bench_table(rows)
        if suite == "standard":  # the targets are set for the standard sizes
            _targets_table(cbench.target_checks(rows))
    return 0 if all(r.ok for r in rows) else 1


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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name=PROG)


if __name__ == "__main__":  # pragma: no cover
    main()
