"""Side files: the ``--report``, ``--timings``, ``--json``/``--csv`` and kernel
(``presets export -o``) files a command writes beside its outputs. They follow the
outputs' rules, checked before any work (:func:`check_side_files`), and are published
in one step (:func:`write_text_file`), so a refusal or a failure leaves no half-written or
clobbered file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from convcli.io import publish as cpublish
else:
    from convcli.cli.lazy import OnFirstUse

    cpublish = OnFirstUse("convcli.io.publish")


def file_identity(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """Which file ``path`` is (device, inode; links followed), None where there is none:
    two spellings, links or hard links of one file agree."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino)


def write_text_file(path: str | Path, text: str, *, overwrite: bool) -> None:
    """Publish a side file (report, timings, rows, kernel) in one step: created when
    absent, replaced only with ``overwrite`` (see :func:`convcli.io.publish.publish`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cpublish.write_bytes(path, text.encode("utf-8"), mode="replace" if overwrite else "create")


def write_json_file(path: str | Path, data: object, *, overwrite: bool) -> None:
    write_text_file(path, json.dumps(data, indent=2) + "\n", overwrite=overwrite)


# keys every --report and --timings record holds (BatchResult.summary, _timings_record)
_RECORD_KEYS = frozenset({"done", "failed", "timings_s"})
_RECORD_MAX_BYTES = 64 * 2**20


def _is_own_record(path: str | Path) -> bool:
    """Whether ``path`` is a report or timings record that convcli wrote: a rerun (the
    resume of a batch with --skip-existing) replaces it without --overwrite. Any other
    file, JSON or not, is the user's and keeps the outputs' rule."""
    try:
        if not os.path.isfile(path) or os.path.islink(path):
            return False
        if os.path.getsize(path) > _RECORD_MAX_BYTES:
            return False
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.keys() >= _RECORD_KEYS


def write_record_file(path: str | Path, data: object, *, overwrite: bool) -> None:
    """A --report or --timings record: replaces an earlier record, else as write_json_file."""
    write_json_file(path, data, overwrite=overwrite or _is_own_record(path))


def kernel_files(opts: dict[str, Any]) -> list[Path]:
    """The files the kernel options read (inputs of the run, like the images)."""
    files = [Path(opts["weights"])] if opts.get("weights") else []
    preset_file = preset_file_of(opts.get("preset"))
    return files + ([preset_file] if preset_file else [])


def check_kernel_outputs(outputs: Iterable[str | os.PathLike[str]], opts: dict[str, Any]) -> None:
    """Refuse, before any work, an output that is the kernel's own file (``--weights``,
    a preset TOML): the result would replace an input of the run, which ``--overwrite``
    never allows. Matched by real path, or by device and inode (a hard link)."""
    kernels = kernel_files(opts)
    if not kernels:
        return

    real = {os.path.realpath(k): k for k in kernels}
    ids = {i: k for k in kernels if (i := file_identity(k)) is not None}
    flag = "--weights" if opts.get("weights") else "--preset"
    for out in outputs:
        kernel = real.get(os.path.realpath(out)) or ids.get(file_identity(out))  # type: ignore[arg-type]
        if kernel is not None:
            raise click.UsageError(
                f"{out}: the output would replace the {flag} file of this run ({kernel}); "
                "nothing was done"
            )


def preset_file_of(spec: str | None) -> Path | None:
    """The TOML file a ``--preset`` reads, if any (the rule of presets.get_preset)."""
    if not spec:
        return None
    cut = spec.lower().rfind(".toml")
    if cut >= 0 and (cut + 5 == len(spec) or spec[cut + 5] == ":"):
        return Path(spec[: cut + 5])
    return None


def check_side_files(
    files: dict[str, str | None],
    *,
    inputs: Iterable[str | os.PathLike[str]] = (),
    outputs: Iterable[str | os.PathLike[str]] = (),
    folders: dict[str, str | os.PathLike[str]] | None = None,
    overwrite: bool,
    dash_is_stdout: bool = False,
    exists_hint: str = "pass --overwrite to replace it",
    records: Iterable[str] = (),
) -> None:
    """Side files (``--report``, ``--timings``, ``--json``/``--csv``, ``-o``) follow the
    outputs' rules, checked before any work: never an input of the run (same path after
    symbolic links, or the same file through a hard link), never an output of it or a
    folder it writes into, never two of them the same file, and an existing file only
    with ``--overwrite``, except that the flags in ``records`` (``--report``,
    ``--timings``) replace a record convcli wrote before (:func:`_is_own_record`), so a
    rerun of the same command works. ``-`` is stdout, no file, where
    ``dash_is_stdout``. A refusal is a usage error (exit 2) naming the file and the
    problem.
    """
    records = frozenset(records)
    named = [
        (flag, Path(v))
        for flag, v in files.items()
        if v is not None and not (dash_is_stdout and v == "-")
    ]
    if not named:
        return

    def matcher(paths: Iterable[str | os.PathLike[str]]) -> Callable[[str, Path], bool]:
        paths = list(paths)
        real = {os.path.realpath(p) for p in paths}
        ids: set[tuple[int, int]] | None = None

        def hits(key: str, path: Path) -> bool:
            nonlocal ids
            if key in real:
                return True
            ident = file_identity(path)
            if ident is None:
                return False
            if ids is None:  # hard links: compared only when the side file exists
                ids = {i for i in map(file_identity, paths) if i is not None}
            return ident in ids

        return hits

    is_input, is_output = matcher(inputs), matcher(outputs)
    outs = list(outputs)
    # folders the outputs go into (a side file there would block them)
    out_folders = {os.path.realpath(Path(o).parent) for o in outs}
    out_folders |= {str(a) for f in list(out_folders) for a in Path(f).parents}
    folder_keys = {os.path.realpath(v): what for what, v in (folders or {}).items()}
    seen: list[tuple[str, tuple[int, int] | None, str]] = []
    for flag, path in named:
        key, ident = os.path.realpath(path), file_identity(path)

        def refuse(problem: str, path: Path = path) -> NoReturn:
            raise click.UsageError(f"{path}: {problem}; nothing was done")

        for other_key, other_ident, other in seen:
            if key == other_key or (ident is not None and ident == other_ident):
                refuse(f"{other} and {flag} name the same file")
        seen.append((key, ident, flag))
        if is_input(key, path):
            refuse(f"{flag} names an input of this run")
        if is_output(key, path):
            refuse(f"{flag} names an output of this run")
        if key in folder_keys:
            refuse(f"{flag} names the {folder_keys[key]}")
        if key in out_folders:
            refuse(f"{flag} names a folder this run writes into")
        if os.path.isdir(path):
            refuse(f"{flag} names a folder")
        kind = cpublish.special_kind(path, follow_symlinks=True)
        if kind is not None:  # /dev/null, /dev/stdout: never replaced by a file
            stdout = " ('-' is stdout)" if dash_is_stdout else ""
            refuse(f"{flag} names {kind}, not a regular file{stdout}")
        blocker = next((a for a in path.absolute().parents if os.path.exists(a)), None)
        if blocker is not None and not os.path.isdir(blocker):
            refuse(f"{flag} cannot be created: {blocker} is a file, not a folder")
        if blocker is not None and not os.access(blocker, os.W_OK | os.X_OK):
            # found now, not after the whole run (a bench suite, a batch) has been done
            refuse(f"{flag} cannot be written: no permission to write in {blocker}")
        if os.path.lexists(path) and not overwrite:
            if flag in records and _is_own_record(path):
                continue
            refuse(f"{flag} file exists ({exists_hint})")
