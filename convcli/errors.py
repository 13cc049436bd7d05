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


class LimitError(ConvValueError):
    """A call refused by a size or memory limit before anything was allocated.

    ``argument`` names, in API words (``padding``, ``dilation``, ``kernel_size``,
    ``groups``, ``max_memory``, ``max_pixels``), what to change, and ``value`` its value
    as shown; ``problem`` is the rest of the message and ``name`` the file, if any. The
    message reads ``[name: ][argument=value: ]problem``, so a front end can put its own
    spelling of the argument (a command-line flag) in its place. ``need`` is the bytes
    the refused work needed, where known.
    """

    def __init__(
        self,
        problem: str,
        *,
        argument: str | None = None,
        value: object = None,
        name: str | None = None,
        need: int | None = None,
    ) -> None:
        self.problem = problem
        self.argument = argument
        self.value = value
        self.name = name
        self.need = need  # bytes the refused work needed, where known
        super().__init__(self.render())

    def render(self, argument: str | None = None) -> str:
        """The message, with ``argument`` (e.g. ``--padding 9``) in place of
        ``argument=value`` when given."""
        head = f"{self.name}: " if self.name else ""
        if self.argument is not None:
            head += f"{argument or f'{self.argument}={self.value}'}: "
        return head + self.problem

    def with_name(self, name: str) -> LimitError:
        """The same refusal naming the file it is about."""
        return LimitError(
            self.problem, argument=self.argument, value=self.value, name=name, need=self.need
        )
