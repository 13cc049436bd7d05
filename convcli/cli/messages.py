"""What the command says and in which words: the rich console, the one-line errors,
warnings and notices (``convcli: error: ...``, control characters escaped), and the
translation of the library's words into the command line's (``overwrite=True`` ->
``--overwrite``; a limit or a convolution's refusal with the option to change).
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Any

import click

from convcli import notes as cnotes
from convcli.errors import LimitError

if TYPE_CHECKING:
    import numpy as np
else:
    from convcli.cli.lazy import OnFirstUse

    np = OnFirstUse("numpy")

PROG = "convcli"


def rich_console(stdout: bool = False):
    """A rich console on stderr or stdout, looked up at call time (CliRunner swaps them).

    Piped output gets a wide virtual terminal so tables are not folded at 80 columns.
    """
    from rich.console import Console

    stream = sys.stdout if stdout else sys.stderr
    console = Console(file=stream)
    if not console.is_terminal:
        console = Console(file=stream, width=200)
    return console


# Characters that would break a line or drive the terminal: C0 and C1 controls, DEL,
# Unicode line/paragraph separators, and the lone surrogates that stand for the bytes of
# a file name that is not valid UTF-8 (which would also fail to encode).
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    c = match.group()
    code = ord(c)
    if c in _ESCAPES:
        return _ESCAPES[c]
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for the byte code - 0xDC00
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(text: object) -> str:
    """``text`` with control characters escaped (``a\\nb.png`` for a newline), so that
    every line convcli prints is one line of its own, whatever a file name holds."""
    return _UNSAFE.sub(_escape, str(text))


def message_line(message: object, kind: str = "error") -> str:
    return f"{PROG}: {kind}: {safe_text(cli_words(str(message)))}"


# The library names what to change in its own words (``overwrite=True``,
# ``alpha='drop'``, ``existing='skip'``); the command line shows its flags instead.
_KEYWORD = re.compile(
    r"\b(overwrite|skip_existing|existing|alpha|out_map|key|max_pixels|max_memory|recursive)"
    r"(?:=('[^'\s]*'|True|[A-Z_]+)|\b)"
)
# library arguments whose flag is not their name with dashes (--name-like-this)
_FLAG_NAMES = {"fmt": "--format"}
# existing= takes values that are flags of their own
_EXISTING_FLAGS = {"'replace'": "--overwrite", "'skip'": "--skip-existing"}


def flag_for(argument: str, value: object = None) -> str:
    """The command line's spelling of a library argument (one vocabulary: the flag is
    the keyword with dashes): ``padding_mode`` -> ``--padding-mode``, with a value
    ``--padding-mode reflect``; ``(2, 1)`` shows as ``2,1``."""
    name = _FLAG_NAMES.get(argument, "--" + argument.replace("_", "-"))
    if value is None or value is True:
        return name
    if isinstance(value, tuple | list | np.ndarray):
        shown = ",".join(f"{v:g}" if isinstance(v, float | np.floating) else str(v) for v in value)
    else:
        shown = str(value)
    return f"{name} {shown}"


def cli_words(text: str) -> str:
    """``pass overwrite=True`` -> ``pass --overwrite``, ``alpha='drop'`` ->
    ``--alpha drop``, ``raise max_pixels`` -> ``raise --max-pixels``."""

    def spell(m: re.Match) -> str:
        name, value = m.group(1), m.group(2)
        if name == "existing":
            return _EXISTING_FLAGS.get(value or "", m.group(0))
        if value is None and name not in ("max_pixels", "max_memory"):
            return m.group(0)  # a plain word ("key", "alpha"), not an argument
        if value is None or value == "True":
            return flag_for(name)
        return flag_for(name, value.strip(chr(39)))

    return _KEYWORD.sub(spell, text)


def echo_line(message: object, kind: str = "error") -> None:
    click.echo(message_line(message, kind), err=True)


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def report_warning(w: Any) -> None:
    """A library warning raised outside any file's collector: still one convcli line."""
    echo_line(cnotes.text(w), "warning")


def report_preset_warnings(kind: str = "warning") -> None:
    """One line per user preset file (CONVCLI_PRESET_PATH) that could not be loaded."""
    from convcli import presets as cpresets

    for line in cpresets.preset_errors():
        echo_line(one_line(line) + " (left out of the presets)", kind)


def _size_text(n: int) -> str:
    for unit, size in (("T", 2**40), ("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def _option_text(argument: str, opts: dict[str, Any], fallback: object = None) -> str | None:
    """``--name value`` for a library argument, the value as the user gave it (else
    ``fallback``); ``kernel_size`` is the kernel's own option. None: no such option."""
    if argument == "kernel_size":
        source = next((k for k in ("preset", "kernel", "weights") if opts.get(k)), None)
        return None if source is None else flag_for(source, opts[source])
    if argument not in opts and fallback is None:
        return None
    value = opts.get(argument)
    if argument == "max_memory" and value is not None:
        return flag_for(argument, _size_text(value))
    return flag_for(argument, value if value is not None else fallback)


def limit_line(exc: LimitError, opts: dict[str, Any]) -> str:
    """A library limit refusal with the option to change spelled as a flag."""
    if exc.argument is None:
        return exc.render()
    return exc.render(_option_text(exc.argument, opts, exc.value))


# conv2d words its refusals like torch (searchable, and the same as torch's own), and
# the filter's channel checks speak of the weight and the image: neither names an
# option, so these are the options that each message is about.
_CONV_MESSAGES = (
    (re.compile(r"groups=\d+ does not divide the image's"), ("groups",)),
    (re.compile(r"the weight (takes groups x|with groups=\d+ takes)"), ("groups",)),
    (re.compile(r"bias has \d+ values but the (convolution|image) has"), ("bias",)),
    (re.compile(r"Given groups=\d+, expected weight"), ("groups",)),
    (re.compile(r"Given groups=\d+, weight of size"), ("groups",)),
    (re.compile(r"Given weight of size .* expected bias"), ("bias",)),
    (re.compile(r"non-positive stride"), ("stride",)),
    (re.compile(r"dilation should be greater than zero"), ("dilation",)),
    (re.compile(r"negative padding|Invalid padding string"), ("padding",)),
    (re.compile(r"padding='same' is not supported for strided"), ("padding", "stride")),
    (re.compile(r"Padding size should be less than"), ("padding", "padding_mode")),
    (re.compile(r"Kernel size can't be greater than actual input size"), ("padding", "dilation")),
)


def conv_hint(message: str, opts: dict[str, Any]) -> str:
    """`` (--groups 3)``: the options a convolution's refusal (:data:`_CONV_MESSAGES`) is
    about, as given (``(see --groups)`` when none was); empty for other messages."""
    for pattern, arguments in _CONV_MESSAGES:
        if pattern.search(message):
            if arguments == ("bias",) and opts.get("bias") is None and opts.get("weights"):
                # no --bias: the bias came with the weight file (.npz, .pt, JSON)
                return f" (the bias in {flag_for('weights', opts['weights'])})"
            given = [flag_for(a, opts[a]) for a in arguments if opts.get(a) is not None]
            if given:
                return f" ({', '.join(given)})"
            return f" (see {', '.join(flag_for(a) for a in arguments)})"
    return ""
