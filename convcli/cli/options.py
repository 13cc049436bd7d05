"""The options the commands share and what they turn into: the value parsers
(``parse_bytes`` and peers, as click callbacks), the kernel and output options of
``apply`` and ``batch`` (one decorator), and :func:`build_run`, which builds the
filter, engine and output of a run before any file is read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from convcli.cli.messages import (
    conv_hint,
    echo_line,
    limit_line,
    report_preset_warnings,
)
from convcli.errors import ConvValueError, LimitError
from convcli.names import ALGOS, DEFAULT_MAX_PIXELS, PADDING_MODES

if TYPE_CHECKING:
    import numpy as np

    from convcli import batch as cbatch
    from convcli import filters as cfilters
else:
    from convcli.cli.lazy import OnFirstUse

    np = OnFirstUse("numpy")
    cbatch = OnFirstUse("convcli.batch")
    cfilters = OnFirstUse("convcli.filters")


ALPHA_MODES = ("premultiply", "keep", "filter", "drop")
OUT_MAPS = ("clip", "abs", "normalize", "offset")
FORMATS = ("png", "jpg", "jpeg", "tif", "tiff", "webp", "bmp", "npy")
DEFAULT_PADDING_MODE = "replicate"


def not_empty(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Refuse an empty path: Path('') is '.', so `-o ""` wrote into the current folder
    and `batch "" out` filtered every image there."""
    for v in value if isinstance(value, tuple) else (value,):
        if v is not None and str(v) == "":
            raise click.BadParameter("an empty path; give a file or folder name")
    return value


def _workers_at_most(ctx: click.Context, param: click.Parameter, value: int | None):
    """Refuse more threads than the machine can use: each holds an image (read ahead,
    small images whole), so ``--workers 100000`` over a large folder decoded every image
    at once until memory ran out."""
    from convcli.batch import most_workers

    if value is not None and value > most_workers():
        raise click.BadParameter(
            f"{value} threads: at most {most_workers()} (4 per CPU); each one holds an "
            "image in memory"
        )
    return value


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
    notes: list[str] | None = None,
) -> cfilters.Filter:
    """The filter of exactly one of --preset / --kernel / --weights: one
    :class:`~convcli.filters.Filter` constructor each (the library checks the kernel).

    The one place apply and batch turn kernel options into a filter. ``notes``
    receives what the weight file's readers warned about.
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
    options: dict[str, Any] = {
        "normalize_kernel": normalize_kernel,
        "flip": flip,
        "bias": bias,
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "groups": groups,
        "padding_mode": padding_mode,
    }
    if preset is not None:
        return cfilters.Filter.from_preset(preset, **options)
    if kernel is not None:
        return cfilters.Filter.from_text(kernel, **options)
    return cfilters.Filter.from_file(weights, key=key, notes=notes, **options)


def kernel_options(f: Callable) -> Callable:
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
            callback=not_empty,
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
            help="Divide the kernel by |its sum|: sum 1 (-1 for a negative sum); zero-sum "
            "kernels: positives sum to 1, negatives to -1 (ImageMagick's '!').",
        ),
        click.option(
            "--flip",
            is_flag=True,
            help="Rotate the kernel 180 degrees: true convolution (ImageMagick's "
            "-morphology Convolve) instead of torch's cross-correlation (Correlate).",
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
            help="Memory the run may use for its images, results and work arrays, "
            "e.g. 512M or 2G (default: what the machine has free); the convolution runs "
            "in tiles to fit (same result), a file that cannot fit is refused.",
        ),
        click.option(
            "--max-pixels",
            metavar="N",
            default=str(DEFAULT_MAX_PIXELS),
            show_default=True,
            callback=_callback(parse_count),
            help="Refuse images that must be decoded whole (a WebP, a progressive JPEG, "
            "a TIFF strip or row of tiles), and results larger than their input, with "
            "more pixels (decompression bombs, absurd padding), e.g. 500M; 'none' (or 0) for "
            "no limit. Images read by strips stream whatever their size.",
        ),
        click.option(
            "--alpha",
            type=click.Choice(ALPHA_MODES),
            default="premultiply",
            show_default=True,
            help="Alpha channel: premultiply (transparent pixels do not bleed; alpha "
            "filtered by kernels that sum to 1, else kept), keep (unfiltered), filter "
            "(as a plain channel), drop.",
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
            help="Output bits per channel (default: the input's where the format holds it); "
            "32 is float32, for .tif and .npy.",
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
            "--subsampling",
            type=click.Choice(["auto", "444", "422", "420"]),
            default="auto",
            show_default=True,
            help="JPEG chroma subsampling. auto: a JPEG input's own (4:4:4, 4:2:2 or "
            "4:2:0), else none from quality 90 up and 4:2:0 below.",
        ),
        click.option(
            "--workers",
            type=click.IntRange(min=1),
            callback=_workers_at_most,
            help="Threads reading and writing images (default: CPU count, min 2; at most 4 "
            "per CPU).",
        ),
        click.option(
            "--timings",
            metavar="FILE.json",
            callback=not_empty,
            help="Write the timing summary as JSON (a new file; --overwrite replaces one).",
        ),
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


def build_run(opts: dict[str, Any], ctx: click.Context):
    """Options -> (Filter, Engine, Output); argument mistakes fail before any file is read."""
    if opts["device"] is not None and opts["backend"] == "numpy":
        raise click.UsageError("--device picks an OpenCL device; --backend numpy uses none")
    notes: list[str] = []
    filt = build_filter(**{k: opts[k] for k in _FILTER_KEYS}, notes=notes)
    # (file, note) pairs for --report; shown now, even with -q, like a file's notes
    ctx.meta["convcli.notes"] = [(Path(opts["weights"]), n) for n in notes]
    for note in notes:
        echo_line(f"{opts['weights']}: {note}", "warning")
    try:
        filt.check(max_memory=opts["max_memory"], max_pixels=opts["max_pixels"], budget=True)
    except LimitError as exc:
        raise click.ClickException(limit_line(exc, opts)) from None
    except ConvValueError as exc:
        raise click.ClickException(str(exc) + conv_hint(str(exc), opts)) from None
    # after the build: a broken file that is the preset asked for is the error itself
    if opts["preset"] is not None:
        report_preset_warnings("notice")
    backend, device = opts["backend"], opts["device"]
    if device is not None and backend == "auto":
        # a job NumPy finishes first never starts OpenCL, so a mistyped device would pass
        # unseen: the device the user named is looked for now (pyopencl's start, ~0.2 s)
        from convcli.backends.opencl.device import find_device
        from convcli.errors import BackendError

        try:
            find_device(device)
        except BackendError as exc:
            echo_line(f"OpenCL unavailable ({exc}); using NumPy", "notice")
            backend, device = "numpy", None
    engine = cbatch.Engine(
        backend=backend,
        device=device,
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
        subsampling=opts["subsampling"],
        alpha=opts["alpha"],
        raw_npy=not explicit_map,
    )
    return filt, engine, output
