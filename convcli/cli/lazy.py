"""Modules the CLI imports on first use, so that ``convcli --help`` and usage errors
answer without NumPy, the backends and the image codecs (each CLI module names the
ones it uses under ``if TYPE_CHECKING``, for the type checker)."""

from __future__ import annotations

import importlib
from typing import Any


class OnFirstUse:
    """A module imported when one of its attributes is first read."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)
