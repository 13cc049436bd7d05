"""The ``convcli`` command: a thin click layer over :mod:`convcli.batch` and the API.

Every option maps to an API keyword with the same name (``--padding-mode`` ->
``padding_mode``). Library errors become one line on stderr (``convcli: error: ...``,
exit 1; usage errors exit 2) in one place, :meth:`convcli.cli.group._Group.main`.
Results and JSON go to stdout; progress, notices, the timing summary and errors to
stderr. ``click`` and ``rich`` are imported only in this package.

- :mod:`~convcli.cli.group`: the command group and the entry points (``main``,
  ``console_main``).
- :mod:`~convcli.cli.options`: the shared options, their parsers, and what a run builds
  from them (filter, engine, output).
- :mod:`~convcli.cli.messages`: the one-line messages and the library's words spelled as
  flags.
- :mod:`~convcli.cli.sidefiles`: the ``--report``/``--timings``/``--json``/``--csv``
  files: their checks and their writers.
- :mod:`~convcli.cli.run`: running a plan of images: progress, signals, timings, exit
  code.
- :mod:`~convcli.cli.apply` (apply, batch), :mod:`~convcli.cli.presets`,
  :mod:`~convcli.cli.devices`, :mod:`~convcli.cli.bench` (and
  :mod:`~convcli.cli.bench_cnn`): the commands, which register on the group when this
  package imports them.
- :mod:`~convcli.cli.lazy`: the modules imported on first use (``--help`` answers
  without NumPy or the backends).
"""

from __future__ import annotations

from convcli.cli import apply, bench, devices, presets  # noqa: F401 (registers the commands)
from convcli.cli.group import cli, console_main, main
from convcli.cli.messages import cli_words, flag_for, safe_text
from convcli.cli.options import parse_bytes, parse_count, parse_floats, parse_pair

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
