"""Exception types raised by convcli.

User mistakes raise subclasses of the built-in ``ValueError`` / ``TypeError`` so that
callers can catch either the precise type or the built-in one.
"""

from __future__ import annotations


class ConvcliError(Exception):
    """Base class of every error convcli raises on purpose."""


class ConvValueError(ConvcliError, ValueError):
    """An argument has the right type but a wrong value (torch would raise RuntimeError)."""


class ConvTypeError(ConvcliError, TypeError):
    """An argument has the wrong type or dtype."""


class BackendError(ConvcliError, RuntimeError):
    """A backend could not be initialised or failed while running."""


class BackendUnavailable(BackendError):
    """The requested backend or device does not exist on this machine."""


class InputError(ConvcliError, ValueError):
    """A file given by the user cannot be read or used (names the file)."""


class OutputExistsError(InputError):
    """A file to be created exists: it was there already, or another process created it
    while this one was writing (the write is then discarded, the file left as it is)."""
