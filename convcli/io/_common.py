"""What the readers and writers of :mod:`convcli.io` share: file names and one-line
reasons in messages, and the checks every input file gets first."""

from __future__ import annotations

import functools
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from convcli.errors import InputError

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor


def name_of(path: str | os.PathLike[str]) -> str:
    return os.fspath(path)


def resolved(path: str | os.PathLike[str], name: str | os.PathLike[str] | None = None) -> Path:
    """``Path(path).resolve()``, raising InputError naming ``name`` (default ``path``)
    where symbolic links loop (Python 3.11-3.12 raise RuntimeError there, later ones
    OSError)."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as exc:
        what = name_of(path if name is None else name)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise InputError(f"{what}: {reason(exc)}") from None
        raise InputError(f"{what}: too many levels of symbolic links") from None


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def reason(exc: BaseException) -> str:
    """A short one-line reason (libraries sometimes explain over several paragraphs)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower() if exc.strerror[:1].isupper() else exc.strerror
    text = re.sub(r"\x1b\[[0-9;]*m", "", one_line(exc)) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def codec_reason(exc: BaseException) -> str:
    """A codec's reason with its error type (``DeflateError: ...``): codec messages are
    terse, and a bare ``IndexError`` text may be just ``0``."""
    return f"{type(exc).__name__}: {reason(exc)}"


def check_file(path: Path, what: str = "an image file") -> None:
    name = name_of(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {reason(exc)}") from None
    if path.is_dir():
        raise InputError(f"{name}: is a folder, not {what}")
    if not stat.S_ISREG(st.st_mode):
        # a FIFO or a device has no size: it was reported as an "empty file"
        from convcli.io.publish import special_kind

        kind = special_kind(path, follow_symlinks=True) or "not a regular file"
        raise InputError(f"{name}: is {kind}, not {what}")
    if st.st_size == 0:
        raise InputError(f"{name}: empty file")


@functools.cache
def codec_pool() -> ThreadPoolExecutor:
    """Threads for the strips and tiles of one file (the codecs release the GIL).

    Its tasks are leaves (one decode or encode each): waiting on the pool from one of
    its own threads could deadlock, so readers and writers are called from elsewhere."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(
        max_workers=max(1, min(8, os.cpu_count() or 1)), thread_name_prefix="convcli-codec"
    )
