"""Library warnings as notes about the file being worked on.

NumPy, Pillow, torch and the codecs report odd but workable input through Python's
``warnings`` module, which prints raw multi-line text on stderr. While convcli works on a
file it collects those warnings instead, so they become one-line notes about that file
(:attr:`convcli.io.Image.notes`, the batch's notes) that the CLI prints as
``convcli: warning: <file>: ...``.

``warnings.catch_warnings`` swaps process-wide state and is not safe when a batch
decodes in several threads at once (one thread's exit restores what another changed), so
collection here is per thread: :func:`collect` installs one dispatcher while any
collector is active, and each warning goes to the collector of the thread that raised
it, else to the innermost collector that takes every thread (a convolution's helper
threads), else to where it would have gone without convcli.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import warnings
from collections.abc import Callable, Iterator

Sink = Callable[[warnings.WarningMessage], None]

_LOCK = threading.Lock()
_LOCAL = threading.local()
_EVERY_THREAD: list[Sink] = []
_ACTIVE = 0
_SAVED_SHOW: Callable | None = None
# While collecting, every warning is shown (to a collector), not only its first
# occurrence: each file of a batch gets its own note.
_ALWAYS = ("always", None, Warning, None, 0)


def text(w: warnings.WarningMessage) -> str:
    """One line: the warning's message with its whitespace collapsed."""
    return " ".join(str(w.message).split()) or w.category.__name__


def _filters_changed() -> None:
    # the registries of "already shown" warnings are keyed on a filters version
    bump = getattr(warnings, "_filters_mutated", None) or getattr(
        warnings, "_filters_mutated_lock_held", None
    )
    if bump is not None:
        bump()


# Warnings Python hides by default (they speak to developers, not users): dropped while
# collecting, as the "always" filter would otherwise show them.
_HIDDEN = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def _show(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, _HIDDEN):
        return
    sink = getattr(_LOCAL, "sink", None)
    if sink is None and _EVERY_THREAD:
        sink = _EVERY_THREAD[-1]
    if sink is None:
        show = _SAVED_SHOW or getattr(warnings, "_showwarning_orig", None)
        if show is None or show is _show:  # a stale copy of our hook: print as Python does
            text = warnings.formatwarning(message, category, filename, lineno, line)
            with contextlib.suppress(Exception):
                (file or sys.stderr).write(text)
            return
        show(message, category, filename, lineno, file, line)
        return
    sink(warnings.WarningMessage(message, category, filename, lineno, file, line))


@contextlib.contextmanager
def collect(sink: Sink | list, *, every_thread: bool = False) -> Iterator[None]:
    """Send the warnings raised in this thread (``every_thread``: in threads that have
    no collector of their own) to ``sink`` (a callable, or a list to append to)."""
    global _ACTIVE, _SAVED_SHOW
    put = sink.append if isinstance(sink, list) else sink
    with _LOCK:
        if _ACTIVE == 0:
            _SAVED_SHOW = warnings.showwarning
            warnings.showwarning = _show
            warnings.filters.insert(0, _ALWAYS)
            _filters_changed()
        _ACTIVE += 1
    if every_thread:
        _EVERY_THREAD.append(put)
    else:
        outer = getattr(_LOCAL, "sink", None)
        _LOCAL.sink = put
    try:
        yield
    finally:
        if every_thread:
            _EVERY_THREAD.remove(put)
        else:
            _LOCAL.sink = outer
        with _LOCK:
            _ACTIVE -= 1
            if _ACTIVE == 0:
                if warnings.showwarning is _show:
                    warnings.showwarning = _SAVED_SHOW
                with contextlib.suppress(ValueError):
                    warnings.filters.remove(_ALWAYS)
                _filters_changed()
                _SAVED_SHOW = None
