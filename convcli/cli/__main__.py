"""``python -m convcli.cli``: the same command as the ``convcli`` script (it ran so when
the CLI was the module ``convcli/cli.py``)."""

from __future__ import annotations

from convcli.cli import console_main

if __name__ == "__main__":
    console_main()
