"""``convcli apply`` (images or one zarr store) and ``convcli batch`` (a folder of
images, locally or on Dask): each plans the files, checks the side files, then runs
the plan (:func:`convcli.cli.run.run_plan`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from convcli.cli.group import cli
from convcli.cli.messages import conv_hint, echo_line, flag_for, limit_line, safe_text
from convcli.cli.options import build_run, kernel_options, not_empty
from convcli.cli.run import exit_code_of, run_plan, stop_now_signals
from convcli.cli.sidefiles import (
    check_kernel_outputs,
    check_side_files,
    file_identity,
    kernel_files,
    write_record_file,
)
from convcli.errors import ConvValueError, InputError, LimitError

if TYPE_CHECKING:
    from convcli import batch as cbatch
else:
    from convcli.cli.lazy import OnFirstUse

    cbatch = OnFirstUse("convcli.batch")


# formats that hold integer samples only, and their deepest
_INTEGER_DEPTHS = {".png": 16, ".jpg": 8, ".jpeg": 8, ".webp": 8, ".bmp": 8}


def _check_float_output(plan: cbatch.Plan, bit_depth: str | None) -> None:
    """Refuse ``--bit-depth 32`` into a format that cannot hold float32 samples.

    The writer would round to the format's deepest integer samples (PNG 16 bits) with
    no word. 32 is not a finer integer depth but another kind of sample (unrounded
    floats), so no PNG or JPEG can honour it: refuse before any file is read, and name
    the formats that can. (16 into JPEG stays a note: that format is lossy by choice.)
    """
    if bit_depth != "32":
        return
    for task in plan.tasks:
        deepest = _INTEGER_DEPTHS.get(task.dst.suffix.lower())
        if deepest is not None:
            kind = task.dst.suffix.lstrip(".").upper().replace("JPG", "JPEG")
            raise click.UsageError(
                f"--bit-depth 32 writes float32 samples, which {kind} cannot hold "
                f"({safe_text(task.dst)}): write .tif or .npy, or pass --bit-depth {deepest}"
            )


def _check_file_filter(filt: cbatch.Filter, opts: dict[str, Any]) -> None:
    """Refuse, once and before any file is read, a filter no image file can take."""
    problem = cbatch.file_filter_problem(filt)
    if problem is not None:
        raise click.ClickException(problem + conv_hint(problem, opts))


def _same_format(name: str) -> str:
    """A format's one name: ``jpeg`` is ``jpg``, ``tiff`` is ``tif`` (either suffix)."""
    name = name.lower()
    return {"jpeg": "jpg", "tiff": "tif"}.get(name, name)


def _existing_policy(skip_existing: bool, overwrite: bool) -> cbatch.Existing:
    if skip_existing and overwrite:
        raise click.UsageError("--skip-existing and --overwrite exclude each other")
    return "skip" if skip_existing else "replace" if overwrite else "fail"


def _dask_option(f):
    """``--dask [ADDRESS]``: batch's folders and apply's zarr stores on a Dask cluster."""
    return click.option(
        "--dask",
        "dask_at",
        is_flag=False,
        flag_value="",
        metavar="ADDRESS",
        help="Run on a Dask cluster: its scheduler (tcp://HOST:PORT), or local[:N] to start "
        "N worker processes here (default: one per CPU); bare --dask (last, or as --dask=) "
        "takes DASK_SCHEDULER_ADDRESS. apply: zarr stores only (the workers must see both "
        "stores' paths). Needs convcli[dask].",
    )(f)


@cli.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...", callback=not_empty)
@click.option(
    "-o",
    "--output",
    required=True,
    metavar="OUTPUT",
    callback=not_empty,
    help="Output file for one input; a folder for several (created).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Allow OUTPUT to be the input file itself (replaced atomically), and replace "
    "an existing --timings file.",
)
@_dask_option
@kernel_options
@click.pass_context
def apply(
    ctx: click.Context,
    inputs: tuple[str, ...],
    output: str,
    overwrite: bool,
    dask_at: str | None,
    **opts,
):
    """Convolve INPUT image(s) and write OUTPUT.

    The kernel comes from exactly one of --preset, --kernel or --weights. A 2-D kernel is
    applied to every channel; the default padding keeps the image size ('same') and the
    border repeats the edge pixels (--padding-mode replicate). Output paths go to stdout.
    A zarr store as the one INPUT is convolved into a zarr store (-o NAME.zarr) as
    float32, chunk by chunk (needs convcli[dask]), on a Dask cluster with --dask.
    """
    filt, engine, out = build_run(opts, ctx)
    if len(inputs) == 1 and _is_zarr(inputs[0]):
        try:
            return _apply_zarr(ctx, inputs[0], output, overwrite, filt, engine, opts, dask_at)
        except LimitError as exc:
            raise click.ClickException(limit_line(exc, opts)) from None
        except ConvValueError as exc:
            raise click.ClickException(str(exc) + conv_hint(str(exc), opts)) from None
    if dask_at is not None:
        raise click.UsageError(
            "--dask with apply takes one zarr store as the input; for a folder of images "
            "use convcli batch IN_DIR OUT_DIR --dask"
        )
    _check_file_filter(filt, opts)
    fmt = opts["fmt"]
    out_suffix = Path(output).suffix.lower().lstrip(".")
    single_file = len(inputs) == 1 and out_suffix and not Path(output).is_dir()
    if fmt and single_file and _same_format(out_suffix) != _same_format(fmt):
        raise click.UsageError(f"--format {fmt} disagrees with the output suffix of {output}")
    several = len(inputs) > 1 and not Path(output).is_dir()
    if several and (Path(output).exists() or f".{out_suffix}" in cbatch.WRITABLE_SUFFIXES):
        # `-o out.png` with two inputs would create a folder named out.png
        raise click.UsageError(
            f"-o {output}: several inputs need an output folder (e.g. -o {Path(output).stem}/)"
        )
    plan = cbatch.plan_files(inputs, output, fmt=fmt, overwrite=overwrite)
    check_kernel_outputs((task.dst for task in plan.tasks), opts)
    _check_float_output(plan, opts["bit_depth"])
    check_side_files(
        {"--timings": opts["timings"]},
        inputs=[*inputs, *kernel_files(opts)],
        outputs=[task.dst for task in plan.tasks],
        overwrite=overwrite,
        records=("--timings",),
    )
    label = Path(inputs[0]).name if len(inputs) == 1 else "images"
    result, signum = run_plan(
        plan, filt, engine, out, opts, existing="replace", label=label, overwrite=overwrite
    )
    for task in result.done:
        if not opts["quiet"]:
            click.echo(safe_text(task.dst))
    if result.interrupted or signum is not None:
        echo_line(f"interrupted; {len(result.done)} of {len(inputs)} outputs written", "summary")
    return exit_code_of(result, signum)


# options about image files that have no meaning for a zarr store (written as float32)
_IMAGE_ONLY = ("alpha", "fmt", "bit_depth", "out_map", "scale", "offset", "quality")
_IMAGE_ONLY += ("max_pixels", "timings", "subsampling")


def _is_zarr(path: str) -> bool:
    p = Path(path)
    return p.is_dir() and any((p / n).exists() for n in (".zarray", ".zgroup", "zarr.json"))


def _apply_zarr(ctx, src, output, overwrite, filt, engine, opts, dask_at=None) -> int:
    """``apply in.zarr -o out.zarr``: the dask path, in bounded memory (convcli[dask]);
    on the cluster ``dask_at`` names (see :func:`convcli.dask_batch.parse_cluster`)
    unless None (threads here)."""
    from convcli.zarr_store import open_image, zarr_conv2d

    cluster = None
    if dask_at is not None:
        from convcli import dask_batch

        cluster = dask_batch.parse_cluster(dask_at)  # before any work
        dask_batch.require_dask()

    for name in _IMAGE_ONLY:
        source = ctx.get_parameter_source(name)
        if source not in (None, click.core.ParameterSource.DEFAULT):
            raise click.UsageError(
                f"{flag_for(name)} does not apply to a zarr store (written as float32)"
            )
    if Path(output).suffix.lower() != ".zarr":
        raise click.UsageError(f"-o {output}: a zarr input writes a zarr store (-o NAME.zarr)")
    from convcli.io._common import resolved

    same = resolved(output) == resolved(src)
    if same and not overwrite:
        raise InputError(f"{output}: the output would replace its own input (add --overwrite)")
    # (a store that holds the input, or one inside it, zarr_conv2d refuses itself)
    if not same and os.path.lexists(output) and not _is_zarr(output):
        # apply replaces an earlier result, not a folder (or file) that holds other data
        raise InputError(f"{output}: exists and is not a zarr store; not replaced")
    x, _, _ = open_image(src)
    weight, bias, groups = filt.for_channels(x.shape[0])
    # a cluster's workers need not share this process's folder: absolute paths for them
    where = (src, output) if cluster is None else (os.path.abspath(src), os.path.abspath(output))
    run = functools.partial(
        zarr_conv2d,
        *where,
        weight,
        bias,
        **filt.conv_options(groups),
        overwrite=True,  # apply replaces an existing output, as it does image files
        backend=engine.backend,
        device=engine.device,
        algo=engine.algo,
        max_memory=engine.max_memory,
    )
    from convcli.zarr_store import sweep_stale

    sweep_stale(Path(output))  # first: what it puts back is the output "before"
    before = file_identity(output)  # did the new store replace it?
    received: list[int] = []
    try:
        with stop_now_signals(received):
            if cluster is None:
                run(num_workers=opts["workers"])
            else:
                import logging

                # a lost connection or a restarted worker is logged with tracebacks; a
                # failure that matters reaches the call as an exception (one line)
                logging.getLogger("distributed").setLevel(logging.CRITICAL)
                with dask_batch.connect(cluster) as client:
                    run(scheduler=client)
    except KeyboardInterrupt:
        # zarr_conv2d has removed its temporary store and left an existing output as it
        # was, unless the signal came once the new store was in place
        if not received:
            raise
        after = file_identity(output)
        if after is None or after == before:
            kept = "the existing one is unchanged" if before else "no partial store left"
            echo_line(f"interrupted; {output} not written ({kept})", "summary")
            return 128 + received[0]
    if not opts["quiet"]:
        click.echo(output)
    if received:  # the signal came as the finished store was put in place
        echo_line(f"interrupted; {output} was complete and is written", "summary")
        return 128 + received[0]
    return 0


@cli.command()
@click.argument("in_dir", metavar="IN_DIR", callback=not_empty)
@click.argument("out_dir", metavar="OUT_DIR", callback=not_empty)
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
    "--overwrite",
    is_flag=True,
    help="Replace outputs, and a --report or --timings file, that exist (inputs are never "
    "replaced).",
)
@click.option(
    "--report",
    metavar="FILE.json",
    callback=not_empty,
    help="Write counts and every failure (file + reason) as JSON (a new file; --overwrite "
    "replaces one).",
)
@_dask_option
@click.option(
    "--shared-fs",
    is_flag=True,
    help="With --dask: workers read inputs and write outputs themselves (they see the same "
    "paths); by default the bytes travel and outputs are written here.",
)
@kernel_options
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
    dask_at: str | None,
    shared_fs: bool,
    **opts,
):
    """Convolve every image in IN_DIR into OUT_DIR (same kernel options as apply).

    Bad files get one line each and the batch goes on; the exit code is 1 if anything
    failed. Outputs are written atomically; an existing output is an error unless
    --skip-existing or --overwrite says what to do; Ctrl-C, SIGTERM or SIGHUP stops after
    the current image (exit 130/143/129), and a rerun with --skip-existing completes the
    rest.
    """
    existing = _existing_policy(skip_existing, overwrite)
    opts["run_tasks"] = _dask_runner(dask_at, shared_fs)
    if glob is not None:
        try:
            cbatch.check_pattern(glob)
        except InputError as exc:
            raise click.BadParameter(str(exc), param_hint="'--glob'") from None
    filt, engine, out = build_run(opts, ctx)
    _check_file_filter(filt, opts)
    plan = cbatch.plan_batch(in_dir, out_dir, recursive=recursive, glob=glob, fmt=opts["fmt"])
    check_kernel_outputs((task.dst for task in plan.tasks), opts)
    _check_float_output(plan, opts["bit_depth"])
    check_side_files(
        {"--report": report, "--timings": opts["timings"]},
        inputs=[
            *(task.src for task in plan.tasks),
            *(failure.path for failure in plan.refused),
            *kernel_files(opts),
        ],
        outputs=[task.dst for task in plan.tasks],
        folders={"input folder": in_dir, "output folder": out_dir},
        overwrite=overwrite,
        exists_hint="name a new file: --skip-existing keeps existing files"
        if skip_existing
        else "pass --overwrite to replace it",
        records=("--report", "--timings"),
    )
    if not plan.tasks and not plan.refused:
        what = f"no files matching {glob!r}" if glob else "no images"
        deeper = not recursive and any(p.is_dir() for p in Path(in_dir).iterdir())
        hint = " (sub-folders are read with --recursive)" if deeper else ""
        echo_line(f"{what} found in {in_dir}{hint}", "notice")
        if report:
            write_record_file(report, cbatch.BatchResult().summary(), overwrite=overwrite)
        return 0
    result, signum = run_plan(
        plan, filt, engine, out, opts, existing=existing, label="batch", overwrite=overwrite
    )
    result.notes[:0] = ctx.meta.get("convcli.notes", [])
    summary = result.summary()
    if report:
        write_record_file(report, summary, overwrite=overwrite)
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
    elif signum is not None:  # the signal came during the last image, which was finished
        line += "; interrupted during the last image, which was finished"
    if not opts["quiet"] or not result.ok or signum is not None:
        echo_line(line, "summary")
    if not opts["quiet"]:  # a batch on Dask: what each worker did
        for worker in getattr(result, "worker_lines", list)():
            echo_line(worker, "summary")
    return exit_code_of(result, signum)


def _dask_runner(address: str | None, shared_fs: bool) -> Callable[..., Any] | None:
    """``run_tasks`` for ``batch --dask`` (None: the local one); the address and Dask's
    presence are checked before any file is read."""
    if address is None:
        if shared_fs:
            raise click.UsageError("--shared-fs goes with --dask")
        return None
    import logging

    from convcli import dask_batch

    cluster = dask_batch.parse_cluster(address)
    dask_batch.require_dask()
    # Dask logs a lost connection or a restarted worker with tracebacks; what matters
    # reaches the result (a failure line, a fatal reason), one line each
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    return functools.partial(dask_batch.run_tasks, cluster=cluster, shared_fs=shared_fs)
