"""Running a plan of images for ``apply`` and ``batch``: the progress bar (rich only
when it is shown), the stop signals (finish the current image, a second one aborts),
one line per failed file and per remark, the timing table and record, and the exit
code.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from convcli.cli.messages import (
    PROG,
    conv_hint,
    echo_line,
    limit_line,
    message_line,
    one_line,
    rich_console,
    safe_text,
)
from convcli.cli.sidefiles import write_record_file
from convcli.errors import ConvValueError, LimitError

if TYPE_CHECKING:
    from convcli import batch as cbatch
else:
    from convcli.cli.lazy import OnFirstUse

    cbatch = OnFirstUse("convcli.batch")


_STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


@contextmanager
def _signals(stop: threading.Event, received: list[int], notify: Callable[[str], None]):
    """SIGINT/SIGTERM/SIGHUP set ``stop`` (finish the current image); a second one
    aborts. One that the process ignores when the run starts (``nohup``) stays ignored."""

    def handler(signum, frame):
        received.append(signum)
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        notify("stopping after the current image (press Ctrl-C again to abort now)")

    with _installed(handler, stop.is_set):
        yield


@contextmanager
def _installed(handler: Callable, stopping: Callable[[], bool]):
    """``handler`` for SIGINT, SIGTERM and SIGHUP while the block runs; after it, the
    handlers before, or SIG_IGN where ``stopping()``. Only the main thread can set
    handlers: elsewhere the block runs without them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # SIGHUP too: a closed terminal or a dropped ssh session ends the run as cleanly.
    # A signal ignored when we start stays ignored: `nohup convcli batch ...` (SIGHUP)
    # and a shell's background job (SIGINT) were asked to run on through it.
    saved = {
        s: signal.signal(s, handler) for s in _STOP_SIGNALS if signal.getsignal(s) != signal.SIG_IGN
    }
    try:
        yield
    finally:
        # once stopping, the run is over and we only report: a late second signal must
        # not kill the process mid-summary (exit status -2 instead of 130), nor cut a
        # cleanup short
        ignore = stopping()
        for s, h in saved.items():
            signal.signal(s, signal.SIG_IGN if ignore else h)


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by :func:`stop_now_signals`' handler."""


@contextmanager
def stop_now_signals(received: list[int]):
    """SIGINT/SIGTERM/SIGHUP stop at once: the first raises :class:`Interrupted` in the
    main thread (so the work's own cleanup runs, as for Ctrl-C); later ones are only
    recorded, so that cleanup is never cut short. For one piece of work that cannot
    stop between items (a zarr store): SIGTERM and SIGHUP killed the process and left
    its temporary store behind. Signals ignored when the run starts stay ignored."""

    def handler(signum, frame):
        received.append(signum)
        if len(received) == 1:
            raise Interrupted

    with _installed(handler, lambda: bool(received)):
        yield


class _PlainConsole:
    """What the run prints through a progress bar's console, without rich: one line at
    a time on stderr (a hidden bar draws nothing else)."""

    @staticmethod
    def print(text: object, **_: Any) -> None:
        click.echo(str(text), err=True)


class _NoProgress:
    """A progress bar that is never shown (``-q``, or stderr is not a terminal): the
    interface :func:`run_plan` uses, without importing rich (about 40 ms of start-up)."""

    console = _PlainConsole()

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None

    def advance(self, *args: Any, **kwargs: Any) -> None:
        return None

    def stop(self) -> None:
        return None


def _stderr_may_be_terminal() -> bool:
    """Whether rich could take stderr for a terminal (else its bar would be disabled
    anyway): a tty, or the variables that make rich treat any stream as one."""
    if os.environ.get("TTY_COMPATIBLE") == "1" or os.environ.get("FORCE_COLOR"):
        return True
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except (OSError, ValueError):
        return False


def _progress(total: int, quiet: bool):
    if quiet or not _stderr_may_be_terminal():
        return _NoProgress()
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

    console = rich_console()
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


def run_plan(
    plan: cbatch.Plan,
    filt: cbatch.Filter,
    engine: cbatch.Engine,
    output: cbatch.Output,
    opts: dict[str, Any],
    *,
    existing: cbatch.Existing,
    label: str,
    overwrite: bool,
) -> tuple[cbatch.BatchResult, int | None]:
    """Run the plan with progress, signals and the summary; returns (result, signal).

    ``overwrite``: an existing ``--timings`` file may be replaced (checked before by
    :func:`~convcli.cli.sidefiles.check_side_files`; the write itself creates the file
    only if it is absent).
    """
    quiet = opts["quiet"]
    stop = threading.Event()
    received: list[int] = []
    progress = _progress(len(plan.tasks), quiet)
    single = len(plan.tasks) == 1
    for failure in plan.refused:
        echo_line(failure.line())
    repeats: dict[str, int] = {}  # note text -> files that had it
    with progress:
        bar = progress.add_task(label, total=len(plan.tasks))

        def on_event(event: cbatch.Event) -> None:
            # file names print as they are: no markup, no highlighting, no :emoji: codes
            if event.kind == "failed" and event.reason:
                reason = event.reason
                if isinstance(event.error, LimitError):
                    reason = limit_line(event.error, opts)
                    if event.error.name is None:
                        reason = f"{event.task.src}: {reason}"
                elif event.error is None or isinstance(event.error, ConvValueError):
                    # run_tasks reports a failed convolution by its reason text alone
                    reason += conv_hint(reason, opts)
                progress.console.print(
                    message_line(reason), markup=False, highlight=False, emoji=False, soft_wrap=True
                )
            # remarks about a file's result (read at 8 bits, alpha dropped) show even
            # with -q: the output differs from what the user may expect. A remark that
            # recurs (the same kernel on every RGBA file) prints for the first few
            # files, then is counted; the --report keeps every file's notes.
            for note in event.notes:
                text = one_line(note)
                repeats[text] = repeats.get(text, 0) + 1
                if repeats[text] > _NOTE_REPEATS:
                    continue
                progress.console.print(
                    message_line(f"{event.task.src}: {text}", "warning"),
                    markup=False,
                    emoji=False,
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
            progress.console.print(
                f"{PROG}: {safe_text(text)}", markup=False, highlight=False, soft_wrap=True
            )

        # a batch on Dask runs the same tasks through convcli.dask_batch (see apply.batch)
        run_tasks = opts.get("run_tasks") or cbatch.run_tasks
        try:
            with _signals(stop, received, notify):
                result = run_tasks(
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
            echo_line(
                "aborted; outputs already written are complete, no partial file "
                "(rerun with --skip-existing to finish)",
                "summary",
            )
            code = 128 + (received[-1] if received else signal.SIGINT)
            raise click.exceptions.Exit(code) from None
    result.failed[:0] = plan.refused
    for text, count in repeats.items():
        if count > _NOTE_REPEATS:
            more = count - _NOTE_REPEATS
            files = "file" if more == 1 else "files"
            echo_line(f"the same for {more} more {files}: {text}", "warning")
    # notices say the run went differently than asked (an OpenCL fault, NumPy used):
    # shown even with -q, which silences only what the user asked to see
    for note in result.info.notices:
        echo_line(one_line(note), "notice")
    if result.fatal:
        echo_line(result.fatal)
    # the table is for runs that did something; an error stays the only line
    if not quiet and result.done and (len(plan.tasks) > 1 or not result.failed):
        _timing_table(result)
    if opts["timings"]:
        write_record_file(opts["timings"], _timings_record(result), overwrite=overwrite)
    return result, (received[0] if received else None)


# a per-file remark prints for this many files, then only a count follows the run
_NOTE_REPEATS = 3


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
    console = rich_console()
    console.print(table)
    # long device names go below the table so the numbers stay in a narrow column
    where = f"backend {s['backend'] or '-'}, device {s['device'] or '-'}, algo {s['algo'] or '-'}"
    console.print(f" {where}", markup=False, highlight=False, soft_wrap=True)


def exit_code_of(result: cbatch.BatchResult, signum: int | None) -> int:
    """128 + the signal when SIGINT/SIGTERM/SIGHUP arrived, even during the last image (which
    is still finished and written): the caller asked to stop and must be able to tell."""
    if signum is not None:
        return 128 + signum
    return 0 if result.ok else 1
