"""The ``convcli`` command group and its entry points. :meth:`_Group.main` is the one
place where an error becomes one line on stderr and an exit code; :func:`console_main`
(the ``convcli`` script, ``python -m convcli``) ends the process as soon as the command
is done. The commands register on :data:`cli` from their own modules.
"""

from __future__ import annotations

import os
import sys
import threading

import click

from convcli import __version__
from convcli import notes as cnotes
from convcli.cli.messages import PROG, echo_line, one_line, report_warning
from convcli.errors import ConvcliError

_DEBUG_HINT = " (set CONVCLI_DEBUG=1 to see the traceback)"
# click >= 8.2 raises this usage error for a group called without a command
_NO_ARGS_IS_HELP: type[Exception] | tuple[()] = getattr(click.exceptions, "NoArgsIsHelpError", ())


class _Group(click.Group):
    """The command group; its ``main`` is the one place errors become one line."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            with cnotes.collect(report_warning, every_thread=True):
                rv = super().main(args, prog_name or PROG, complete_var, False, **extra)
        except _NO_ARGS_IS_HELP as exc:  # bare `convcli` / `convcli presets`: the help
            click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
            sys.exit(0)
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            echo_line(one_line(exc.format_message()) + hint)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            echo_line(one_line(exc.format_message()))
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            echo_line("aborted")
            sys.exit(130)
        except ConvcliError as exc:  # one line: echo_line escapes a newline in a file name
            echo_line(str(exc).strip())
            sys.exit(1)
        except KeyboardInterrupt:
            echo_line("interrupted")
            sys.exit(130)
        except BrokenPipeError:  # `convcli presets list | head`: the reader left, no fuss
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(1)
        except OSError as exc:  # e.g. --timings into a folder we cannot write
            name = f"{exc.filename}: " if exc.filename else ""
            echo_line(f"{name}{one_line(exc.strerror or exc)}")
            sys.exit(1)
        except Exception as exc:  # a bug: still one line, the traceback on request
            if os.environ.get("CONVCLI_DEBUG"):
                raise
            echo_line(one_line(f"internal error: {type(exc).__name__}: {exc}") + _DEBUG_HINT)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name=PROG, message="%(prog)s %(version)s")
def cli() -> None:
    """Torch-exact 2D convolution of images and arrays, on OpenCL or NumPy.

    \b
    convcli apply samples/astronaut.png --preset gaussian:sigma=2 -o blur.png
    convcli batch photos/ out/ --recursive --preset sharpen --skip-existing
    convcli presets list
    """


def main(argv: list[str] | None = None) -> None:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); ends in ``SystemExit``
    with the exit code, as click's commands do."""
    cli.main(args=argv, prog_name=PROG)


# OpenBLAS starts its threads when NumPy loads and each spins for 2**28 cycles (about
# 0.1 s here) waiting for work before it sleeps: a core busy through the command's
# start-up, for a file filter that calls no BLAS at all. 2**23 cycles (a few ms) keeps
# them awake between the calls of a BLAS-heavy convolution all the same.
BLAS_SPIN = ("OPENBLAS_THREAD_TIMEOUT", "23")


def console_main() -> None:
    """Console-script entry point (``convcli`` and ``python -m convcli``): the process
    ends with the command (see :func:`_leave`)."""
    os.environ.setdefault(*BLAS_SPIN)  # read by OpenBLAS when NumPy is first imported
    try:
        main()
    except SystemExit as exc:
        _leave(exc.code)
        raise


def _leave(code: object) -> None:
    """End the process once the command has finished, skipping the interpreter's
    teardown.

    Everything a normal exit does that anyone can observe is done first, in its order:
    non-daemon threads are joined (and thread pools shut down), the ``atexit`` handlers
    run, stdout and stderr are flushed. What is skipped is freeing every module and
    object and the C libraries' own teardown (PoCL's, libvips', OpenBLAS'), which
    nobody sees: 0.1-0.2 s after a large image was written. Where any step is
    missing or fails, the caller's ``raise`` exits the usual way."""
    if threading.current_thread() is not threading.main_thread():
        return  # joining every other thread would wait for this one
    if code is None:
        code = 0
    if not isinstance(code, int) or isinstance(code, bool):
        return  # a message to print: the usual exit prints it
    if "distributed" in sys.modules:
        return  # a Dask cluster's processes and connections close in the usual exit
    shutdown = getattr(threading, "_shutdown", None)
    run_exitfuncs = getattr(__import__("atexit"), "_run_exitfuncs", None)
    if shutdown is None or run_exitfuncs is None:
        return
    try:
        shutdown()
        run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except BaseException:  # e.g. stdout's reader gone: the usual exit reports it
        return
    os._exit(code & 0xFF)
