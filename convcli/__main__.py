"""``python -m convcli``: the same command as the ``convcli`` script."""

from __future__ import annotations

from convcli.cli import console_main

if __name__ == "__main__":
    console_main()
