"""Locate the data folders shipped with convcli, installed or in a checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """Return the folder ``name`` (``"kernels_cl"`` or ``"presets"``).

    In a wheel the folders are installed inside the package; in a checkout (and an
    editable install) they sit beside the package at the repository root.
    """
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"convcli data folder {name!r} not found beside {_PACKAGE}")
