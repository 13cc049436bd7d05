"""The one place where convcli creates files: :func:`publish`.

Every file convcli writes (images, ``.npy`` results, reports, timings, benchmark rows,
exported kernels) appears under its name complete or not at all:

- ``mode="create"`` makes the file only if the name is free, in one atomic step; when
  another process takes the name first, :class:`~convcli.errors.OutputExistsError` is
  raised and that process's file is left as it is.
- ``mode="replace"`` swaps a complete new file in for the old one (``rename``), so a
  reader sees either the old or the new content.

How (Linux): the content is written to an unnamed ``O_TMPFILE`` file in the destination
folder, flushed to disk, then given its name with ``linkat(AT_SYMLINK_FOLLOW)`` through
``/proc/self/fd``, which fails with ``EEXIST`` when the name exists. A process killed at
any moment leaves nothing behind: an unnamed file disappears with its last descriptor.
``replace`` links the file under a temporary name first, then renames it over the old
one. Elsewhere (no ``O_TMPFILE`` in this kernel or filesystem, no ``/proc``, another OS,
or ``CONVCLI_NO_TMPFILE=1``) the content goes to a named temporary file beside the
destination, ``.NAME.convcli-HOST-PID-RANDOM.tmp``, then ``link`` (create; the temporary
name is removed after) or ``rename`` (replace).

A process killed while it holds such a named temporary file leaves it behind. The next
:func:`publish` into that folder (once per folder and process) removes the ones whose
writer is gone (:func:`remove_stale_temps`). Temporary files of earlier convcli versions
(``.NAME.XXXXXXXX.tmp``) are never removed: that name is too plain to be sure it is ours.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import os
import re
import secrets
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Literal

from convcli.errors import InputError, OutputExistsError

PublishMode = Literal["create", "replace"]
PUBLISH_MODES: tuple[str, ...] = ("create", "replace")

# "1" makes every publish use named temporary files (tests; a filesystem whose O_TMPFILE
# support is broken).
NO_TMPFILE_ENV = "CONVCLI_NO_TMPFILE"

# open(O_TMPFILE) fails with these where the kernel or the filesystem lacks it (old
# kernels see O_DIRECTORY | O_RDWR: EISDIR).
_NO_TMPFILE_ERRNOS = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.EISDIR, errno.EINVAL})
# link() fails with these on filesystems without hard links (FAT, some network shares).
_NO_LINK_ERRNOS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})

# Our temporary names: .NAME.convcli-HOST-PID-RANDOM.tmp (NAME cut to 40 characters, so
# that a long file name still leaves room for the rest under the 255-byte limit).
_TEMP_RE = re.compile(
    r"\.(?P<stem>.*)\.convcli-(?P<host>[0-9a-f]{6})-(?P<pid>[0-9]{1,10})-[0-9a-f]{8}\.tmp",
    re.DOTALL,
)
_STEM_CHARS = 40
# A temporary file of another host or PID namespace (a shared or network folder) cannot
# be checked by its PID; it is stale once nothing has written to it for this long.
FOREIGN_STALE_S = 24 * 3600

_swept: set[str] = set()
_swept_lock = threading.Lock()


class _Unsupported(Exception):
    """The unnamed-file path does not work here: use a named temporary file."""


def _name(path: str | os.PathLike[str]) -> str:
    return os.fspath(path)


def _reason(exc: OSError) -> str:
    text = exc.strerror or str(exc) or type(exc).__name__
    return text.lower() if text[:1].isupper() else text


@functools.cache
def _host_tag() -> str:
    """Six hex digits naming this host, boot and PID namespace: a PID in a temporary
    name is only checked by a process that sees the same PIDs (cloned machines share a
    host name, and containers may share the host's with PIDs of their own)."""
    namespace = boot = ""
    with contextlib.suppress(OSError):
        namespace = os.readlink("/proc/self/ns/pid")
    with contextlib.suppress(OSError), open("/proc/sys/kernel/random/boot_id") as fh:
        boot = fh.read().strip()
    text = f"{socket.gethostname()}\0{namespace}\0{boot}".encode(errors="surrogateescape")
    return hashlib.sha256(text).hexdigest()[:6]


def temp_name(path: str | os.PathLike[str]) -> str:
    """A fresh temporary name (no folder) for a file to be published as ``path``."""
    stem = Path(path).name[:_STEM_CHARS]
    return f".{stem}.convcli-{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}.tmp"


def _pid_alive(pid: int) -> bool:
    """False only when no process ``pid`` exists (unknown means alive: keep the file)."""
    if os.name != "posix" or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # EPERM: another user's process
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary files left in ``folder`` by :func:`publish` calls that died.

    A file is removed only when its name has our exact pattern
    (``.NAME.convcli-HOST-PID-RANDOM.tmp``), it is a regular file, and either it was made
    on this host and PID namespace by a process that no longer exists, or it comes from
    elsewhere and has not been written for :data:`FOREIGN_STALE_S` seconds. Files that
    cannot be listed or removed are left alone.

    Returns
    -------
    list of pathlib.Path
        The files removed.
    """
    removed: list[Path] = []
    try:
        with os.scandir(folder) as it:
            entries = [e for e in it if _TEMP_RE.fullmatch(e.name)]
    except OSError:
        return removed
    tag, now = _host_tag(), time.time()
    for entry in entries:
        match = _TEMP_RE.fullmatch(entry.name)
        assert match is not None
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        if match["host"] == tag:
            if _pid_alive(int(match["pid"])):
                continue
        elif now - st.st_mtime < FOREIGN_STALE_S:
            continue
        try:
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed


def _sweep_once(folder: Path) -> None:
    key = os.path.realpath(folder)
    with _swept_lock:
        if key in _swept:
            return
        _swept.add(key)
    remove_stale_temps(folder)


def _tmpfile_usable() -> bool:
    return (
        sys.platform.startswith("linux")
        and hasattr(os, "O_TMPFILE")
        and os.environ.get(NO_TMPFILE_ENV, "") in ("", "0")
        and os.path.isdir("/proc/self/fd")
    )


def _write_to(fd: int, path: Path, write: Callable[[BinaryIO], None]) -> None:
    # closefd=False: the descriptor outlives the file object (linked after the write)
    raw = io.FileIO(fd, "r+", closefd=False)
    raw.name = _name(path)  # writers that want a name (tifffile) get a string, not fd
    with io.BufferedRandom(raw) as fh:
        write(fh)
    os.fsync(fd)


def _exists(path: Path) -> OutputExistsError:
    return OutputExistsError(f"{_name(path)}: exists (another run wrote it?); not replaced")


def _publish_unnamed(path: Path, write: Callable[[BinaryIO], None], mode: str) -> None:
    folder = path.parent
    try:
        fd = os.open(folder, os.O_TMPFILE | os.O_RDWR, 0o666)  # the umask applies
    except OSError as exc:
        if exc.errno in _NO_TMPFILE_ERRNOS:
            raise _Unsupported from exc
        raise
    try:
        _write_to(fd, path, write)
        src = f"/proc/self/fd/{fd}"
        # a folder descriptor makes os.link call linkat(), which follows the magic link
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            target = path.name if mode == "create" else temp_name(path)
            try:
                os.link(src, target, dst_dir_fd=dir_fd, follow_symlinks=True)
            except FileExistsError:
                raise _exists(path) from None
            except OSError as exc:
                # EXDEV: link() did not follow the magic link; ENOENT: /proc is not
                # this process's (some containers). A named file still works there.
                if exc.errno in _NO_LINK_ERRNOS or exc.errno in (errno.EXDEV, errno.ENOENT):
                    raise _Unsupported from exc
                raise
            if mode == "replace":
                try:
                    os.replace(target, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(target, dir_fd=dir_fd)
                    raise
        finally:
            os.close(dir_fd)
    finally:
        os.close(fd)


def _publish_named(path: Path, write: Callable[[BinaryIO], None], mode: str) -> None:
    tmp = path.parent / temp_name(path)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, 0o666)  # O_EXCL: never reuse a name; the umask applies
    try:
        try:
            _write_to(fd, path, write)
        finally:
            os.close(fd)
        if mode == "replace":
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)  # fails if the name exists, in one step
        except FileExistsError:
            raise _exists(path) from None
        except OSError as exc:
            if exc.errno not in _NO_LINK_ERRNOS:
                raise
            # No hard links on this filesystem. Windows' rename refuses an existing name;
            # elsewhere check, then rename: not atomic, the best such a filesystem allows.
            if os.name != "nt" and os.path.lexists(path):
                raise _exists(path) from None
            try:
                os.rename(tmp, path)
            except FileExistsError:
                raise _exists(path) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # after link(); gone already after a rename


_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def special_kind(path: str | os.PathLike[str], *, follow_symlinks: bool = False) -> str | None:
    """What ``path`` is when it exists and is neither a regular file, a folder nor a
    symbolic link (``follow_symlinks``: the file a link points to): ``"a FIFO (named
    pipe)"``, ``"a character device"`` (``/dev/null``), ... ; None otherwise.

    A link into ``/proc`` (``/dev/stdout``, ``/dev/stderr``) is one too, whatever the
    stream is now: replacing it with a file would break it for every process.
    """
    try:
        mode = os.stat(path, follow_symlinks=follow_symlinks).st_mode
        if os.path.islink(path) and os.readlink(path).startswith("/proc/"):
            return "a link to a process's open file (a standard stream)"
    except (OSError, ValueError):
        return None
    return next((kind for test, kind in _SPECIAL_KINDS if test(mode)), None)


def publish(
    path: str | os.PathLike[str],
    write: Callable[[BinaryIO], None],
    *,
    mode: PublishMode = "create",
) -> Path:
    """Write a file so that it appears complete or not at all.

    Parameters
    ----------
    path : str or os.PathLike
        The file to publish; its folder must exist. A symbolic link at ``path`` is
        never followed: ``create`` treats it as an existing file, ``replace`` replaces
        the link itself.
    write : callable
        ``write(fh)`` writes the content to ``fh``, a seekable binary file open for
        reading and writing at offset 0. It must not close the underlying descriptor
        by other means; closing ``fh`` itself is harmless.
    mode : {'create', 'replace'}
        ``create``: the file must not exist, and if another process creates it while
        ``write`` runs, that file wins and :class:`OutputExistsError` is raised.
        ``replace``: an existing file is replaced in one step.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    OutputExistsError
        ``create`` and the name is taken (before the write, or by another process
        during it).
    InputError
        The folder does not exist, ``path`` is a FIFO, a device or a socket (never
        replaced: :func:`special_kind`), or an OS error (full disk, read-only folder,
        permission) while writing; the message names ``path`` and the reason, and the
        ``OSError`` is chained as ``__cause__`` (its ``errno`` tells a full disk).

    Whatever happens (an exception from ``write``, KeyboardInterrupt, a full disk),
    nothing is left under ``path`` or a temporary name, and an existing file is
    untouched. The first call for a folder also removes stale temporary files there
    (:func:`remove_stale_temps`).
    """
    path = Path(path)
    if mode not in PUBLISH_MODES:
        raise ValueError(f"mode must be one of {list(PUBLISH_MODES)}, got {mode!r}")
    name = _name(path)
    folder = path.parent
    if not folder.is_dir():
        raise InputError(f"{name}: cannot write: folder {_name(folder)} does not exist")
    if mode == "create" and os.path.lexists(path):
        raise OutputExistsError(f"{name}: already exists")
    kind = special_kind(path)
    if kind is not None:
        # a rename would put a regular file in place of /dev/null or a pipe a reader
        # waits on (as root, for every process of the machine)
        raise InputError(f"{name}: cannot write: it is {kind}, not a regular file; not replaced")
    _sweep_once(folder)
    try:
        if _tmpfile_usable():
            try:
                _publish_unnamed(path, write, mode)
                return path
            except _Unsupported:
                pass
        _publish_named(path, write, mode)
    except OSError as exc:
        raise InputError(f"{name}: cannot write: {_reason(exc)}") from exc
    return path


def write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: PublishMode = "create") -> Path:
    """:func:`publish` ``data`` as the whole content of ``path``."""
    return publish(path, lambda fh: fh.write(data), mode=mode)
