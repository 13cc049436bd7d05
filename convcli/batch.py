"""Run one convolution over many image files: plan the outputs, then read, convolve, write.

This is the library side of ``convcli apply`` and ``convcli batch``. It prints nothing:
it returns a :class:`BatchResult` and reports progress through an optional callback.

Pipeline: a small image (:data:`convcli.small.SMALL_BYTES` of samples at most) that the
fused native-depth step filters runs whole, decode to publish in one worker thread, as
many images at once as there are cores plus one (:mod:`convcli.small`). Every other
image flows through :mod:`convcli.pipeline` in strips of rows (decoded, convolved and
encoded on three threads, a few strips in memory); the next images are opened (and, for
formats decoded whole, decoded) ahead while the calling thread convolves the current
one, and a pool of writers finishes encoding results while the next image is convolved.
Outcomes are reported in the calling thread, in order. Every output is published
atomically (:func:`convcli.io.publish.publish`), so an error or an interrupt never
leaves a partial file.

Rules that keep data safe (see README "Safety rules"):

- Inputs are listed before anything is written, and files under the output folder are
  never inputs, so outputs are never picked up again.
- An output path equal to its input is refused, except in ``apply`` with
  ``--overwrite`` (the user named that file and asked to replace it). ``batch`` never
  replaces an input.
- In ``batch`` an existing output is a failure unless ``skip_existing`` (left untouched)
  or ``overwrite`` (replaced) says what to do; ``apply`` replaces outputs it is told to
  write, like ``cp``. Without ``overwrite`` an output is created only if its name is
  free, in one atomic step (:func:`convcli.io.publish.publish`): when two runs write into
  one folder, each file is reported done by the run that wrote it, and a failure (or a
  skip) by the other.
- A full disk or a read-only/unwritable output folder stops the run (it would fail for
  every file) with one clear message.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import queue
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from convcli import io as cio
from convcli import notes as cnotes
from convcli import pipeline, pixels
from convcli.api import conv2d
from convcli.budget import (
    STRIP_INPUTS,
    STRIP_RESULTS,
    budget_text,
    check_call,
    conv_need,
    file_need,
    format_bytes,
    largest_fit,
    memory_budget,
    opencl_reserve,
    process_bytes,
    release_freed_memory,
)
from convcli.errors import (
    BackendError,
    ConvcliError,
    ConvTypeError,
    ConvValueError,
    InputError,
    LimitError,
    OutputExistsError,
)
from convcli.filters import Filter, check_out_pixels
from convcli.io import stream
from convcli.io._common import reason as one_line_reason
from convcli.io._common import resolved
from convcli.io.jpeg import JpegHeader
from convcli.io.publish import special_kind
from convcli.runinfo import RunInfo
from convcli.spec import (
    ConvSpec,
    source_index,
)

Existing = Literal["fail", "skip", "replace"]

# Suffixes picked up by ``batch`` when no --glob is given (what read_image decodes).
IMAGE_SUFFIXES: frozenset[str] = frozenset(cio.IMAGE_SUFFIXES)
# Suffixes write_image encodes; other inputs (gif) default to PNG outputs.
WRITABLE_SUFFIXES: frozenset[str] = frozenset(cio.WRITE_FORMATS)
# Formats that only hold 8 bits per channel.
_EIGHT_BIT_SUFFIXES = frozenset({".jpg", ".jpeg", ".webp", ".bmp"})
# Alpha modes after which the result's last channel is the image's alpha.
_ALPHA_KEPT_OR_FILTERED = frozenset({"premultiply", "premultiply-keep", "keep"})
# errnos that will fail for every later output too: stop instead of failing each file.
_FATAL_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EIO}
)


# ---------------------------------------------------------------------------- the filter
@dataclass(frozen=True)
class Engine:
    """Where and how conv2d runs (its keyword-only arguments)."""

    backend: str = "auto"
    device: str | None = None
    algo: str = "auto"
    max_memory: int | None = None


def _alpha_taps(filt: Filter, channels: int) -> float | None:
    """Sum of the taps and bias of the filter making the last output channel (the
    alpha) of a ``channels``-channel image; None when the filter does not fit the image
    (the convolution then says why). A 2-D kernel's bias goes to the colour only
    (:meth:`Filter.split_bias`); a 4-D weight's last bias value is alpha's."""
    w = filt.weight
    if filt.depthwise:
        groups = filt.groups if filt.groups is not None else channels
        if groups <= 0 or channels % groups:
            return None
        c_out = channels
        total = (channels // groups) * float(w.sum(dtype=np.float64))
    else:
        c_out = int(w.shape[0])
        total = float(w[-1].sum(dtype=np.float64))
    if filt.bias is not None and not filt.depthwise:  # a 2-D kernel's bias: colour only
        b = np.asarray(filt.bias, dtype=np.float64).ravel()
        if b.size not in (1, c_out):
            return None
        total += float(b[-1])
    return total


def _sum_rule(filt: Filter, channels: int, what: str) -> tuple[str, str | None]:
    total = _alpha_taps(filt, channels)
    if total is None or pixels.filters_alpha(total):
        return "premultiply", None
    shown = "0" if abs(total) < 1e-6 else f"{total:.4g}"  # float rounding of a zero sum
    return (
        "premultiply-keep",
        f"alpha kept unfiltered ({what} sums to {shown}, not 1)",
    )


def alpha_rule(filt: Filter, channels: int, alpha: str) -> tuple[str, str | None]:
    """The alpha mode to use for an image with alpha, and a note when it differs.

    Under ``premultiply`` the colour is always multiplied by alpha before the
    convolution (transparent pixels add nothing) and divided by the result's alpha
    after it. Which alpha that is depends on the filter that makes the alpha channel:

    - its taps (and bias) sum to 1 (blurs, sharpen, unsharp, emboss, motion blur; see
      :func:`convcli.io.filters_alpha`): alpha is filtered with the colour
      (``premultiply``);
    - any other sum (0 for edge kernels, Laplacians, DoG, LoG, high-pass): filtering
      would make alpha 0 wherever the image is opaque, so the original alpha is kept
      (``premultiply-keep``), sampled at each output pixel's kernel centre.

    For a 2-D kernel that filter is the kernel (times the channels per group); for a
    4-D weight it is the weight's last output channel, all its taps. A 4-D weight that
    changes the channel count has no alpha output:

    - the weight takes the colour channels only (``channels - 1``): alpha is not
      convolved; it is kept unfiltered (``keep``) when the result has the colour
      channels, otherwise dropped;
    - the weight takes every channel but changes their count: alpha is filtered as a
      plain channel (``filter``), as the weight's author meant it.

    Parameters
    ----------
    filt : Filter
    channels : int
        The image's channels, alpha included.
    alpha : str
        The requested mode (:data:`convcli.io.ALPHA_MODES`); only ``premultiply``
        is adapted.

    Returns
    -------
    (mode, note)
        The mode for :func:`convcli.io.prepare_alpha` and ``finish_alpha`` (one of
        :data:`convcli.io.ALPHA_STEPS`), and a one-line note for the user when alpha
        is not filtered as the colour is (else None).
    """
    if alpha != "premultiply" or channels < 2:
        return alpha, None
    if filt.depthwise:
        return _sum_rule(filt, channels, "the kernel")
    w = filt.weight
    c_out, per = int(w.shape[0]), int(w.shape[1])

    def takes(n: int) -> bool:
        groups = filt.groups if filt.groups is not None else (n // per if n % per == 0 else 0)
        return groups > 0 and per * groups == n and c_out % groups == 0

    if takes(channels) and c_out == channels:
        return _sum_rule(filt, channels, "the weight's alpha output channel")
    if takes(channels - 1):
        colour = channels - 1
        if c_out == colour:
            return (
                "keep",
                f"alpha kept unfiltered (the weight takes the {colour} colour channels only)",
            )
        return "drop", f"alpha dropped (the weight maps the {colour} colour channels to {c_out})"
    if takes(channels):
        return "filter", (
            f"alpha filtered as a plain channel (the weight maps {channels} channels to "
            f"{c_out}, so there is no alpha to divide by)"
        )
    return alpha, None  # the weight does not fit: for_channels says why


def sample_alpha(alpha: np.ndarray, filt: Filter) -> np.ndarray:
    """The ``(1, H, W)`` alpha at each output pixel of ``filt``: the input pixel under
    the kernel's centre tap (origin ``((kH-1)//2, (kW-1)//2)``), through the padding.

    The alpha itself where the output keeps the input's size with stride 1 (``'same'``
    or the symmetric padding that keeps the size); a subsampled or padded alpha for
    other strides and paddings. The filter must fit a 1-channel image of that size
    (the geometry does not depend on the channels).
    """
    h, w = alpha.shape[-2:]
    # a 2-D kernel of the weight's size on one channel: the same output geometry
    probe = replace(
        filt, weight=np.zeros(filt.weight.shape[-2:], np.float32), bias=None, groups=None
    )
    conv = probe.spec_for((1, h, w))
    rows = _centre_index(h, conv.pad[0], conv.pad[1], conv.kh, conv.dilation[0],
                         conv.stride[0], conv.h_out, conv.padding_mode)  # fmt: skip
    cols = _centre_index(w, conv.pad[2], conv.pad[3], conv.kw, conv.dilation[1],
                         conv.stride[1], conv.w_out, conv.padding_mode)  # fmt: skip
    (ri, rok), (ci, cok) = rows, cols
    if (
        rok.all()
        and cok.all()
        and np.array_equal(ri, np.arange(h))
        and np.array_equal(ci, np.arange(w))
    ):
        return alpha
    out = alpha[:, ri][:, :, ci]
    if not (rok.all() and cok.all()):
        out = out * (rok[:, None] & cok[None, :])
    return np.ascontiguousarray(out, dtype=alpha.dtype)


def _centre_index(
    size: int, before: int, after: int, k: int, dil: int, stride: int, n_out: int, mode: str
) -> tuple[np.ndarray, np.ndarray]:
    index, valid = source_index(size, before, after, mode)
    at = dil * ((k - 1) // 2) + stride * np.arange(n_out)
    return index[at], valid[at]


def apply_filter(
    x: np.ndarray,
    filt: Filter,
    engine: Engine = Engine(),
    info: RunInfo | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Convolve one ``(C, H, W)`` float32 image with ``filt`` through :func:`conv2d`.

    ``progress(done, total)`` goes to :func:`conv2d` (output rows of this image).
    """
    weight, bias, groups = filt.for_channels(x.shape[0])
    return conv2d(
        x,
        weight,
        bias,
        **filt.conv_options(groups),
        backend=engine.backend,
        device=engine.device,
        algo=engine.algo,
        max_memory=engine.max_memory,
        info=info,
        progress=progress,
    )


@dataclass(frozen=True)
class Output:
    """How results become files.

    ``out_map`` / ``scale`` / ``offset`` go to :func:`convcli.io.map_output`; for ``.npy``
    outputs they apply only when ``raw_npy`` is False (the raw float result is written by
    default). ``bit_depth`` None keeps the input's where the format holds it.
    ``subsampling`` is a colour JPEG output's chroma subsampling: ``"auto"`` keeps a
    JPEG input's (4:4:4, 4:2:2 or 4:2:0) as ImageMagick does, and otherwise writes none
    from ``quality`` 90 up and 4:2:0 below; ``"444"``, ``"422"`` or ``"420"`` for
    every output.
    """

    out_map: str = "clip"
    scale: float = 1.0
    offset: float = 0.0
    bit_depth: int | None = None
    quality: int = 95
    alpha: str = "premultiply"
    raw_npy: bool = True
    subsampling: str = "auto"

    def __post_init__(self) -> None:
        # checked here, once, so that a mistake is one exception, not a failure per file
        if self.out_map not in cio.OUT_MAPS:
            raise ConvValueError(
                f"out_map must be one of {list(cio.OUT_MAPS)}, got {self.out_map!r}"
            )
        if self.alpha not in cio.ALPHA_MODES:
            raise ConvValueError(
                f"alpha must be one of {list(cio.ALPHA_MODES)}, got {self.alpha!r}"
            )
        if self.bit_depth not in (None, 8, 16, 32):
            raise ConvValueError(f"bit_depth must be None, 8, 16 or 32, got {self.bit_depth!r}")
        if not 1 <= self.quality <= 100:
            raise ConvValueError(f"quality must be between 1 and 100, got {self.quality!r}")
        if self.subsampling not in ("auto", *cio.JPEG_SUBSAMPLINGS):
            raise ConvValueError(
                f"subsampling must be 'auto' or one of {list(cio.JPEG_SUBSAMPLINGS)}, "
                f"got {self.subsampling!r}"
            )

    def subsampling_for(self, src: Path, dst: Path, header: JpegHeader | None = None) -> str | None:
        """The chroma subsampling of ``dst`` written from the image at ``src`` (None:
        by quality, or no JPEG output); ``header``, where the reader parsed ``src``'s
        JPEG header already, saves reading it again."""
        if cio.WRITE_FORMATS.get(dst.suffix.lower()) != "JPEG":
            return None
        if self.subsampling != "auto":
            return self.subsampling
        if header is not None:
            return header.subsampling
        return cio.read_jpeg_subsampling(src)


def default_bit_depth(input_depth: int, suffix: str) -> int:
    """The input's bit depth where the output format holds it, else the closest one."""
    suffix = suffix.lower()
    if suffix in _EIGHT_BIT_SUFFIXES:
        return 8
    if suffix == ".png":
        return min(input_depth, 16)
    return input_depth


# ---------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class Task:
    """One input file and the output it becomes (strings are taken as paths)."""

    src: Path
    dst: Path

    def __post_init__(self) -> None:
        for name in ("src", "dst"):
            value = getattr(self, name)
            if not isinstance(value, Path):
                if not isinstance(value, str | os.PathLike):
                    raise ConvTypeError(f"Task.{name} must be a path, got {value!r}")
                object.__setattr__(self, name, Path(value))


@dataclass(frozen=True)
class Failure:
    """A file that could not be processed, and why (one line)."""

    path: Path
    reason: str
    output: Path | None = None

    def line(self) -> str:
        """``path: reason`` (the reason alone when it already names the file)."""
        names = [str(p) for p in (self.path, self.output) if p is not None]
        if any(name in self.reason for name in names):
            return self.reason
        return f"{self.path}: {self.reason}"


@dataclass
class Plan:
    """Tasks to run, plus inputs refused while planning."""

    tasks: list[Task] = field(default_factory=list)
    refused: list[Failure] = field(default_factory=list)


def _suffix_for(src: Path, fmt: str | None) -> str:
    if fmt:
        return "." + fmt.lower().lstrip(".")
    # keep the input's spelling (IMG_0001.JPG -> IMG_0001.JPG) where we can write it
    return src.suffix if src.suffix.lower() in WRITABLE_SUFFIXES else ".png"


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


class _Resolver:
    """``Path.resolve()`` for many files in a few folders: each folder is resolved once
    (resolve walks every component of every path: planning 200 files cost 600 walks),
    and a file's own name is followed only where it is a symbolic link."""

    def __init__(self) -> None:
        self._folders: dict[Path, Path] = {}

    def __call__(self, path: Path) -> Path:
        name = path.name
        if name in ("", ".", ".."):
            return resolved(path)
        folder = self._folders.get(path.parent)
        if folder is None:
            folder = self._folders[path.parent] = resolved(path.parent)
        full = folder / name
        return resolved(full, path) if os.path.islink(full) else full


def _same_file(a: Path, b: Path, resolve: _Resolver | None = None) -> bool:
    resolve = resolve or _Resolver()
    if resolve(a) == resolve(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _file_key(path: Path, resolve: _Resolver) -> object:
    """What identifies a file: device and inode when it exists (hard links, symbolic
    links and other spellings agree), else its resolved path."""
    try:
        st = os.stat(path)
    except OSError:
        return resolve(path)
    return (st.st_dev, st.st_ino)


def _dedupe(
    tasks: Iterable[Task],
    plan: Plan,
    *,
    flattened: bool = False,
    resolve: _Resolver | None = None,
) -> None:
    """Refuse an output that is another input of the run, a second input that would
    write the same output as an earlier one, and outputs in a format we cannot write
    (before any time is spent on them). ``flattened``: sub-folders' files were put in
    one folder (a batch's ``**`` pattern without ``recursive``), which a collision of
    files from different folders then points to."""
    claimed: dict[Path, Path] = {}
    keyed: list[tuple[Task, Path]] = []  # the tasks kept, with their resolved outputs
    tasks = list(tasks)
    resolve = resolve or _Resolver()
    inputs = {_file_key(task.src, resolve): task.src for task in tasks}
    for task in tasks:
        other = inputs.get(_file_key(task.dst, resolve))
        if other is not None and _file_key(other, resolve) != _file_key(task.src, resolve):
            # another input of this run (apply a/sub/x.png a/x.png -o a, or a batch into
            # a parent of IN_DIR): replacing it would lose that input, whatever --overwrite
            plan.refused.append(
                Failure(task.src, f"output {task.dst} is another input of this run; not written")
            )
            continue
        if task.dst.suffix.lower() not in WRITABLE_SUFFIXES:
            plan.refused.append(
                Failure(
                    task.src,
                    f"output {task.dst}: unknown format {task.dst.suffix or '(no suffix)'!r}; "
                    f"use one of {', '.join(sorted(WRITABLE_SUFFIXES))}",
                    task.dst,
                )
            )
            continue
        key = resolve(task.dst)
        if key in claimed:
            hint = ""
            if flattened and claimed[key].parent != task.src.parent:
                hint = " (recursive=True mirrors the sub-folders)"
            plan.refused.append(
                Failure(task.src, f"output {task.dst} is already written from {claimed[key]}{hint}")
            )
            continue
        claimed[key] = task.src
        plan.tasks.append(task)
        keyed.append((task, key))
    # an output that needs a folder where another output is a file (a.png from a.jpg,
    # and a.png/b.png from the folder a.png): the file is written, this one refused.
    # Each distinct output folder is looked up once (a batch has many files, few folders).
    blocked: dict[Path, Path | None] = {}
    for folder in {key.parent for key in claimed}:
        blocked[folder] = next((p for p in (folder, *folder.parents) if p in claimed), None)
    if any(blocked.values()):
        kept = []
        for task, key in keyed:
            file = blocked[key.parent]
            if file is None:
                kept.append(task)
                continue
            plan.refused.append(
                Failure(
                    task.src,
                    f"output {task.dst} needs a folder where {claimed[file]} writes a file; "
                    "not written",
                )
            )
        plan.tasks[len(plan.tasks) - len(keyed) :] = kept


def check_pattern(glob: str) -> tuple[str, ...]:
    """The components of a file pattern, checked: relative to the input folder, with no
    ``..`` and ``**`` only in front (any depth).

    Raises
    ------
    InputError
        For an empty or absolute pattern, ``..``, or ``**`` after another component.
    """
    if not glob.strip():
        raise InputError("the file pattern is empty; give one like '*.png'")
    if os.path.isabs(glob):
        raise InputError(
            f"file pattern {glob!r} is an absolute path; patterns are matched inside the "
            "input folder (e.g. '*.png' or 'sub/*.png')"
        )
    parts = tuple(p for p in glob.split("/") if p not in ("", "."))
    if ".." in parts:
        raise InputError(f"file pattern {glob!r} leaves the input folder ('..')")
    lead = 0
    while lead < len(parts) and parts[lead] == "**":
        lead += 1
    if "**" in parts[lead:] or lead == len(parts):
        raise InputError(
            f"file pattern {glob!r}: '**' (any sub-folder) may only lead the pattern and "
            "must be followed by a file pattern, e.g. '**/*.png'"
        )
    return parts


def _matches(rel: tuple[str, ...], parts: tuple[str, ...], any_depth: bool) -> bool:
    """Whether a file's path below the input folder matches the pattern's components:
    all of them (one level each), or its last ones (``any_depth``, like ``rglob``)."""
    if len(rel) < len(parts) or (not any_depth and len(rel) != len(parts)):
        return False
    tail = rel[len(rel) - len(parts) :]
    return all(fnmatch.fnmatchcase(name, pat) for name, pat in zip(tail, parts, strict=True))


def list_inputs(
    in_dir: str | Path,
    *,
    recursive: bool = False,
    glob: str | None = None,
    exclude: Sequence[str | Path] = (),
    errors: list[Failure] | None = None,
) -> list[Path]:
    """Input files of a batch, sorted, listed before anything is written.

    Without ``glob`` the files with an image suffix (:data:`IMAGE_SUFFIXES`) are taken;
    with it every file matching it (see :func:`check_pattern`; ``recursive`` matches its
    last components at any depth, as :meth:`pathlib.Path.rglob` does). Hidden files and
    folders (name starting with ``.``, e.g. macOS ``._IMG.JPG`` companions and our own
    temporary files) are skipped, and so is everything under ``exclude`` (the output
    folder when it lies inside ``in_dir``). Symbolic links to files are inputs; links to
    folders are not followed (no loops, no walking out of ``in_dir``).

    A sub-folder that cannot be read is appended to ``errors`` as a :class:`Failure`
    (raised as InputError when ``errors`` is None): its images would be missing from
    the batch without a word.

    Raises
    ------
    InputError
        If ``in_dir`` is not a folder or cannot be read, or for a bad ``glob``.
    """
    root = Path(in_dir)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    parts = check_pattern(glob) if glob is not None else ("*",)
    any_depth = recursive or parts[0] == "**"
    parts = tuple(p for p in parts if p != "**")
    # only what lies inside in_dir: an output folder that holds in_dir (batch photos .)
    # would otherwise exclude every input ("no images found", exit 0)
    top = resolved(root)
    excluded = [e for e in (resolved(p) for p in exclude) if _is_within(e, top)]
    files: list[Path] = []

    def walk(folder: Path, rel: tuple[str, ...]) -> None:
        try:
            with os.scandir(folder) as entries:
                found = list(entries)
        except OSError as exc:
            reason = f"cannot read the folder: {one_line_reason(exc)}"
            if not rel:
                raise InputError(f"{folder}: {reason}") from None
            if errors is None:
                raise InputError(f"{folder}: {reason}") from None
            errors.append(Failure(folder, f"{reason}; the images in it were not processed"))
            return
        for entry in found:
            if entry.name.startswith("."):
                continue
            path, sub = folder / entry.name, (*rel, entry.name)
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                is_file = not is_dir and entry.is_file()  # a link to a file is an input
            except OSError:
                continue
            if is_dir:
                deeper = any_depth or len(sub) < len(parts)
                if deeper and not any(_is_within(resolved(path), ex) for ex in excluded):
                    walk(path, sub)
                continue
            if not is_file or not _matches(sub, parts, any_depth):
                continue
            if glob is None and path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if excluded and any(_is_within(resolved(path), ex) for ex in excluded):
                continue
            files.append(path)

    walk(root, ())
    return sorted(files)


def plan_batch(
    in_dir: str | Path,
    out_dir: str | Path,
    *,
    recursive: bool = False,
    glob: str | None = None,
    fmt: str | None = None,
) -> Plan:
    """Map every input under ``in_dir`` to its output under ``out_dir``.

    ``recursive`` mirrors the sub-folders; the output keeps the input's stem and takes
    ``fmt`` as suffix (default: the input's, PNG for formats we do not write). Outputs
    that would replace their input are refused (``batch`` never replaces an input).

    Raises
    ------
    InputError
        If ``in_dir`` is not a folder or ``out_dir`` is the same folder.
    """
    src_root, dst_root = Path(in_dir), Path(out_dir)
    if src_root.is_dir() and resolved(dst_root) == resolved(src_root):
        raise InputError(
            f"{dst_root}: the output folder must differ from the input folder "
            "(outputs would mix with inputs)"
        )
    if dst_root.exists() and not dst_root.is_dir():
        raise InputError(f"{dst_root}: the output folder is a file")
    plan = Plan()
    inputs = list_inputs(
        src_root, recursive=recursive, glob=glob, exclude=[dst_root], errors=plan.refused
    )
    tasks = []
    resolve = _Resolver()
    for src in inputs:
        rel = src.relative_to(src_root) if recursive else Path(src.name)
        dst = dst_root / rel.with_suffix(_suffix_for(src, fmt))
        # a link where an output goes is never followed: replaced under existing='replace',
        # kept under 'skip', a failure under 'fail'; the input it points to is not touched
        if not dst.is_symlink() and _same_file(src, dst, resolve):
            plan.refused.append(Failure(src, "output would replace the input; not written"))
            continue
        tasks.append(Task(src, dst))
    _dedupe(tasks, plan, flattened=not recursive, resolve=resolve)
    return plan


def plan_files(
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    fmt: str | None = None,
    overwrite: bool = False,
) -> Plan:
    """Outputs for ``apply``: ``output`` is a file for one input, a folder for several.

    ``output`` is a folder when there are several inputs, when it is an existing folder,
    or when it ends with a path separator. A file output's format comes from its suffix
    (``fmt`` is used when it has none). An output equal to its input is refused unless
    ``overwrite`` is True.

    Raises
    ------
    InputError
        If ``output`` is a FIFO, a device or a socket (``/dev/null``).
    """
    if isinstance(inputs, str | os.PathLike):  # each character became an input
        raise ConvTypeError(f"inputs must be a list of paths, got one path {inputs!r}")
    out = Path(output)
    text = str(output)
    kind = special_kind(out, follow_symlinks=True)
    if kind is not None:
        # /dev/null has no suffix: the image would go to a new /dev/null.png
        raise InputError(f"{out}: is {kind}, not an image file or a folder; nothing was written")
    as_folder = len(inputs) > 1 or out.is_dir() or text.endswith(("/", os.sep))
    tasks = []
    plan = Plan()
    for item in inputs:
        src = Path(item)
        if as_folder:
            dst = out / (src.stem + _suffix_for(src, fmt))
        elif out.suffix:
            dst = out
        else:
            dst = out.with_suffix(_suffix_for(src, fmt))
        if _same_file(src, dst) and not overwrite:
            plan.refused.append(
                Failure(src, "output is the input file; pass overwrite=True to replace it")
            )
            continue
        tasks.append(Task(src, dst))
    _dedupe(tasks, plan)
    return plan


# ---------------------------------------------------------------------------- running
EventKind = Literal["done", "skipped", "failed"]


@dataclass(frozen=True)
class Event:
    """Progress report for one finished task (sent from the calling thread).

    ``reason`` is the one-line failure message; empty for a failure that stopped the
    run (reported once as :attr:`BatchResult.fatal`). ``notes`` (done events) are
    one-line remarks about this file's result: what :attr:`convcli.io.Image.notes`
    said while reading (e.g. a 16-bit file read at 8 bits) and alpha rules applied.
    """

    kind: EventKind
    task: Task
    reason: str = ""
    megapixels: float = 0.0
    notes: tuple[str, ...] = ()
    error: BaseException | None = None  # what failed, for a front end's own wording


@dataclass
class BatchResult:
    """What a run did.

    ``notes`` pairs each file with a remark about its result (see :class:`Event`).
    ``timings`` holds seconds: ``read`` and ``write`` summed over worker threads,
    ``upload``/``build``/``compute``/``download`` from conv2d, ``convolve`` (conv2d wall
    time) and ``total`` (wall time of the run; stages overlap, so they may sum to more).
    """

    done: list[Task] = field(default_factory=list)
    skipped: list[Task] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    notes: list[tuple[Path, str]] = field(default_factory=list)
    fatal: str | None = None
    interrupted: bool = False
    info: RunInfo = field(default_factory=RunInfo)
    timings: dict[str, float] = field(default_factory=dict)
    megapixels: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and self.fatal is None and not self.interrupted

    def summary(self) -> dict[str, object]:
        """A JSON-ready record of the run (also the ``--report`` file's content)."""
        total = self.timings.get("total", 0.0)
        compute = self.timings.get("compute", 0.0) or self.timings.get("convolve", 0.0)
        return {
            "done": len(self.done),
            "skipped": len(self.skipped),
            "failed": len(self.failed),
            "interrupted": self.interrupted,
            "fatal": self.fatal,
            "failures": [{"file": str(f.path), "reason": f.reason} for f in self.failed],
            "file_notes": [{"file": str(p), "note": n} for p, n in self.notes],
            "outputs": [str(t.dst) for t in self.done],
            "backend": self.info.backend,
            "device": self.info.device,
            "algo": self.info.algo,
            "tiles": self.info.tiles,
            "notices": list(self.info.notices),
            "timings_s": {k: round(v, 6) for k, v in self.timings.items()},
            "megapixels": round(self.megapixels, 6),
            "megapixels_per_s": round(self.megapixels / total, 3) if total > 0 else None,
            "gflops": round(self.info.flops / 1e9, 6),
            "gflops_per_s": round(self.info.flops / compute / 1e9, 3) if compute > 0 else None,
        }


def _reason(exc: BaseException) -> str:
    # kept as it is (a file name may hold any character); the CLI escapes what it prints
    return str(exc).strip() or type(exc).__name__


def _oserror(exc: BaseException) -> OSError | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _fatal_errno(exc: BaseException) -> int | None:
    err = _oserror(exc)
    if err is not None:
        return err.errno if err.errno in _FATAL_ERRNOS else None
    # publish() re-raises OS errors as InputError("<path>: cannot write: <strerror>")
    text = str(exc).lower()
    if "cannot write" not in text:
        return None
    for code in _FATAL_ERRNOS:
        if os.strerror(code).lower() in text:
            return code
    return None


def _fatal_write(exc: BaseException, dst: Path) -> str | None:
    code = _fatal_errno(exc)
    if code is None:
        return None
    folder = dst.parent
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"{folder}: no space left on the device; stopped (no partial file written)"
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{folder}: output folder is not writable ({os.strerror(code)}); stopped"
    return f"{dst}: {os.strerror(code)}; stopped"


def _out_sample_bytes(out: Output, suffix: str, input_bytes: int) -> int:
    if suffix.lower() == ".npy":
        return 4
    return (out.bit_depth or default_bit_depth(8 * input_bytes, suffix)) // 8


_HEADROOM = 8  # an eighth of max_memory is kept free
_PEAK_MARGIN = 16  # a sixteenth of the estimate...
_PEAK_SLACK = 8 * 2**20  # ...and 8 MiB on top


@dataclass(frozen=True)
class FileBudget:
    """What :func:`check_file` allows a file: the bytes conv2d may allocate per strip
    (None: no max_memory, conv2d checks the machine itself), the output rows per strip
    (None: the pipeline's default) and the backend to use instead of the engine's
    (None: the engine's), with a note saying why."""

    conv_memory: int | None = None
    backend: str | None = None
    note: str | None = None
    strip_rows: int | None = None


def _strip_bytes(spec, rows: int) -> tuple[int, int]:
    """Float32 bytes of one input strip (halo and padding included) and its result."""
    rows = max(1, min(rows, spec.h_out))
    rows_in = (rows - 1) * spec.stride[0] + spec.dilation[0] * (spec.kh - 1) + 1
    padded_w = spec.w + spec.pad[2] + spec.pad[3]
    return spec.c_in * rows_in * padded_w * 4, spec.c_out * rows * spec.w_out * 4


def check_file(
    task: Task,
    filt: Filter,
    engine: Engine,
    output: Output,
    max_pixels: int | None,
    source: stream.Source | None = None,
) -> FileBudget:
    """Refuse a file, from its header, before decoding it; returns what the convolution
    may use. ``source``: the file opened for reading by strips (priced from what it
    holds), or None for a file decoded whole (priced from its header).

    Under ``engine.max_memory`` the whole process counts: the bytes it holds already
    (:func:`convcli.budget.process_bytes`: interpreter, modules, a started runtime) and
    the room an OpenCL runtime not started yet will take
    (:func:`convcli.budget.opencl_reserve`) come off the limit. With ``backend='auto'``
    a file that fits only without that runtime runs on NumPy.

    The result counts against ``max_pixels`` like an input does, and the file's peak
    through the strips (:func:`convcli.budget.file_need`: the reader, the strips in
    flight with one strip's convolution, the encoder) against the budget. Under
    ``max_memory`` the strips are made as short as the limit needs (down to one output
    row); a reader that decodes by strips holds no whole image, so a huge image runs
    in little memory.

    Raises
    ------
    LimitError
        Naming the file and the argument to change.
    """
    name = str(task.src)
    if source is not None:
        shape = stream.source_shape(source, task.src)
    else:
        shape = cio.probe_image(task.src)
    if shape is None:
        return FileBudget()
    try:
        # the bias changes no size (its count is checked when the file is opened)
        spec = replace(filt, bias=None).spec_for((shape.channels, shape.height, shape.width))
    except (ConvcliError, ValueError, TypeError):
        return FileBudget()  # e.g. channels the weight does not take: conv2d says so
    reserve = own = 0
    try:
        # a result no larger than its input passes: the reader guards the input (a
        # format decoded whole against max_pixels; one read by strips needs no guard),
        # and the result goes out by strips too. A larger one (a huge padding) is
        # refused past max_pixels.
        if max_pixels is not None and spec.h_out * spec.w_out > shape.height * shape.width:
            check_out_pixels(spec, max_pixels, filt.resolved_padding())
        room = memory_budget(engine.max_memory)
        if room is None:
            return FileBudget()
        if engine.max_memory is not None:
            # an eighth of the limit is headroom for what no estimate sees (allocator
            # pages, BLAS and thread buffers): measured peaks ran up to 10 % over
            own = process_bytes()
            room -= own + engine.max_memory // _HEADROOM
            if engine.backend in ("auto", "opencl"):
                reserve = opencl_reserve(engine.device)
        weight = filt.weight_bytes(shape.channels)
        opening, held = stream.source_bytes(shape)
        suffix = task.dst.suffix.lower()
        sample = _out_sample_bytes(output, suffix, shape.sample_bytes)
        target = stream.Target(
            cio.WRITE_FORMATS.get(suffix, "PNG"),
            spec.h_out,
            spec.w_out,
            spec.c_out,
            np.dtype({1: np.uint8, 2: np.uint16}.get(sample, np.float32)),
            False,
            output.quality,
            output.subsampling_for(task.src, task.dst),  # a JPEG's bands: 8 or 16 rows
        )
        sink = stream.sink_bytes(target)
        align = pipeline.strip_alignment(spec, "numpy", "separable")

        def stages(rows: int) -> dict[str, int]:
            strip_in, strip_out = _strip_bytes(spec, rows)
            conv = conv_need(spec, "least", "numpy", rows=rows, images=1)
            return file_need(opening, held + weight, sink, conv, strip_in=strip_in,
                             strip_out=strip_out)  # fmt: skip

        def peak_of(rows: int) -> int:
            # measured peaks ran up to 6 % over the stages' sum (allocator slack, thread
            # stacks, encoder buffers): the limit holds only with that margin
            peak = max(stages(rows).values())
            return peak + peak // _PEAK_MARGIN + _PEAK_SLACK

        least_rows = pipeline.strip_least(spec, "numpy", "separable")
        most = pipeline.strip_rows(spec, align=align, least=least_rows)
        least = min(most, align)
        rows = most
        if engine.max_memory is not None and peak_of(most) > room:
            # shorter strips: the largest multiple of the alignment that fits
            steps = largest_fit(lambda k: peak_of(k * align) <= room, max(1, most // align))
            rows = steps * align if steps else least
        peak = peak_of(rows)
        if peak > room:
            # an argument that makes the convolution absurd is named first
            try:
                check_call(
                    spec,
                    "least",
                    "numpy",
                    padding=filt.resolved_padding(),
                    max_memory=engine.max_memory,
                    budget=max(0, room - held - weight),
                )
            except LimitError as exc:
                if exc.argument not in (None, "max_memory"):
                    raise
    except LimitError as exc:
        raise exc.with_name(name) from None
    backend = note = None
    if reserve and peak + reserve > room and peak <= room and engine.backend == "auto":
        backend = "numpy"
        note = (
            f"NumPy used: the OpenCL runtime (about {format_bytes(reserve)}) does not fit "
            f"max_memory beside this image"
        )
        reserve = 0
    if peak + reserve > room:
        parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in stages(rows).items())
        if reserve:
            parts += f"; the OpenCL runtime about {format_bytes(reserve)} more"
        if own:
            parts += f"; convcli itself holds {format_bytes(own)}"
        raise LimitError(
            f"filtering this {shape.width}x{shape.height} image needs about "
            f"{format_bytes(peak)} at its peak ({parts}), more than "
            + ("this limit" if engine.max_memory is not None else budget_text(room, None)),
            argument="max_memory" if engine.max_memory is not None else None,
            value=format_bytes(room),
            name=name,
        )
    if engine.max_memory is None:
        return FileBudget()
    strip_in, strip_out = _strip_bytes(spec, rows)
    others = held + weight + sink[0] + STRIP_INPUTS * strip_in + STRIP_RESULTS * strip_out
    return FileBudget(room - reserve - others, backend, note, rows)


def _write_notes(
    task: Task, out: Output, alpha: str, c_out: int, channels: int, has_alpha: bool
) -> list[str]:
    """What the output format will lose, said before it is written (``c_out``: the
    convolution's output channels; ``channels``, ``has_alpha``: the input's)."""
    suffix = task.dst.suffix.lower()
    if suffix not in _EIGHT_BIT_SUFFIXES:
        return []
    notes = []
    kind = suffix.lstrip(".").upper().replace("JPG", "JPEG")
    if out.bit_depth is not None and out.bit_depth > 8:
        notes.append(f"{kind} holds 8 bits per channel: written at 8 bits, not {out.bit_depth}")
    carries_alpha = alpha in _ALPHA_KEPT_OR_FILTERED or (alpha == "filter" and c_out == channels)
    if has_alpha and carries_alpha and suffix != ".webp":
        notes.append(
            f"{kind} has no alpha channel: alpha dropped after filtering (write .png to "
            "keep it, or pass alpha='drop' to filter the colour alone and silence this)"
        )
    return notes


def _make_folder(folder: Path) -> None:
    """mkdir -p with a message that names what is in the way (not '[Errno 17]')."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        blocker = next((p for p in [folder, *folder.parents] if p.is_file()), folder)
        raise InputError(f"cannot create the output folder {folder}: {blocker} is a file") from exc


def _map(data: np.ndarray, out: Output, *, alpha: bool) -> np.ndarray:
    """The output mapping of a whole result (see :func:`convcli.pixels.map_result`)."""
    span = None
    if out.out_map == "normalize":
        span = pixels.result_span(data, scale=out.scale, offset=out.offset, alpha=alpha)
    return pixels.map_result(
        data, out.out_map, scale=out.scale, offset=out.offset, alpha=alpha, span=span
    )


def _is_overflow(w: warnings.WarningMessage) -> bool:
    return issubclass(w.category, RuntimeWarning) and "overflow" in str(w.message)


def _overflow_note(bad: int, size: int) -> str | None:
    """A note when ``bad`` of the result's ``size`` values are inf or NaN: inputs and
    weights are finite, so the sums overflowed float32."""
    if not bad:
        return None
    return (
        f"the result overflowed float32: {bad} of {size} values are inf or NaN "
        "(image formats clip them, .npy keeps them); scale the kernel down"
    )


def _convolve_notes(bad: int, size: int, caught: list) -> list[str]:
    """Notes about one convolution: an overflow, and what the backend warned about
    (NumPy's own overflow warnings say less than the overflow note). Where the values
    were not counted (``size`` 0: the fused native-depth step writes samples, not
    floats), NumPy's overflow warning still becomes the overflow note, without counts."""
    note = _overflow_note(bad, size)
    if note is None and not size and any(_is_overflow(w) for w in caught):
        note = (
            "the result overflowed float32: some values are inf or NaN (image formats "
            "clip them, .npy keeps them); scale the kernel down"
        )
    notes = [note] if note else []
    for w in caught:
        if note and issubclass(w.category, RuntimeWarning):
            continue
        text = cnotes.text(w)
        if text not in notes:
            notes.append(text)
    return notes


def _job(
    task: Task, filt: Filter, engine: Engine, output: Output, max_pixels: int | None
) -> pipeline.ImageJob:
    return pipeline.ImageJob(
        task.src,
        task.dst,
        filt,
        alpha=output.alpha,
        alpha_rule=alpha_rule,
        max_pixels=max_pixels,
        check=lambda source: check_file(task, filt, engine, output, max_pixels, source),
    )


def _result_channels(c_out: int, channels: int, has_alpha: bool, alpha: str) -> int:
    """Channels after :func:`convcli.pixels.finish_alpha`."""
    if has_alpha and channels >= 2 and alpha == "keep":
        return c_out + 1
    return c_out


def _result_alpha(src: Path, info: stream.ImageInfo, c_out: int, alpha: str) -> bool | None:
    """Whether the result's last channel is the image's alpha (``target_for``'s
    ``alpha``): True where the input's alpha is carried into it; False where the result
    is an image file's own channels and the reader found no alpha among them (a TIFF's
    extra channel declared not alpha); None where nothing says (an .npy, or a layer
    that makes other channels than it takes)."""
    if info.has_alpha:
        carried = alpha in _ALPHA_KEPT_OR_FILTERED
        return True if carried or (alpha == "filter" and c_out == info.channels) else None
    if c_out == info.channels and src.suffix.lower() != ".npy":
        return False
    return None


def _conv_reason(exc: BaseException, job: pipeline.ImageJob, engine: Engine) -> str | BaseException:
    """What a failed convolution reports (the exception itself for a LimitError, so
    the front end can word it)."""
    allowed = job.allowed
    if isinstance(exc, LimitError):
        conv_memory = getattr(allowed, "conv_memory", None)
        if exc.argument == "max_memory" and exc.need and conv_memory:
            # conv2d saw only what the image left of max_memory: say so
            return LimitError(
                f"the convolution needs at least {format_bytes(exc.need)} even "
                f"one output row at a time, more than the "
                f"{format_bytes(conv_memory)} left of max_memory "
                f"({format_bytes(engine.max_memory)}) once the image is held",
                argument="max_memory",
                value=format_bytes(engine.max_memory),
                need=exc.need,
            )
        return exc
    reason = _reason(exc)
    source = job.source
    alpha = getattr(job, "alpha", None)
    if alpha in ("keep", "drop") and source is not None and source.info.has_alpha:
        # the user sees an RGBA file; say where the alpha channel went
        reason += f" (alpha={alpha!r} sets alpha aside; alpha='filter' passes it to the weight)"
    return reason


def _process(
    task: Task,
    job: pipeline.ImageJob,
    filt: Filter,
    engine: Engine,
    out: Output,
    existing: Existing,
    writers: ThreadPoolExecutor,
    on_rows: Callable[[int, int], None] | None,
) -> tuple[Task, Future, float, tuple[str, ...]]:
    """Convolve one opened image strip by strip while a writer encodes it; returns what
    ``finish_write`` takes. Raises what the convolution raises (no file is left)."""
    allowed = job.allowed if isinstance(job.allowed, FileBudget) else FileBudget()
    if allowed.note:
        job.run.read_notes.append(allowed.note)
    job.prepare()
    info = job.source.info
    conv_memory = None if allowed.conv_memory is None else max(1, allowed.conv_memory)
    if allowed.strip_rows is not None and job.strip_request is None:
        job.strip_request = allowed.strip_rows
    backend = allowed.backend or engine.backend
    spec = job.spec
    suffix = task.dst.suffix.lower()
    alpha = job.alpha
    has_alpha = info.has_alpha
    channels = _result_channels(spec.c_out, info.channels, has_alpha, alpha)
    depth = out.bit_depth or default_bit_depth(info.bit_depth, suffix)
    plain_clip = out.out_map == "clip" and out.scale == 1.0 and out.offset == 0.0
    map_it = (suffix == ".npy" and not out.raw_npy) or (suffix != ".npy" and not plain_clip)
    alpha_in_result = has_alpha and alpha in _ALPHA_KEPT_OR_FILTERED
    target, bits, drop = pipeline.target_for(
        task.dst,
        channels,
        spec.h_out,
        spec.w_out,
        depth,
        out.quality,
        out.subsampling_for(task.src, task.dst, info.jpeg),
        _result_alpha(task.src, info, spec.c_out, alpha),
    )
    overflow = [0, 0]  # values that are inf or NaN, values

    def finish(result: np.ndarray, kept: np.ndarray | None) -> np.ndarray:
        return pixels.finish_alpha(
            result, kept, alpha, has_alpha=has_alpha, colour_bias=job.colour_bias
        )

    def count(result: np.ndarray) -> None:
        overflow[1] += result.size
        # a float64 sum of float32 values cannot overflow: it is finite iff every value is
        if not np.isfinite(np.sum(result, dtype=np.float64)):
            overflow[0] += int(result.size - np.count_nonzero(np.isfinite(result)))

    caught: list = []
    span = None
    if map_it and out.out_map == "normalize":
        # the whole result's range first (results dropped), then a second pass writes
        spans: list = []

        def measure(r0: int, r1: int, result: np.ndarray, kept: np.ndarray | None) -> None:
            data = finish(result, kept)
            spans.append(pixels.result_span(data, scale=out.scale, offset=out.offset,
                                            alpha=alpha_in_result))  # fmt: skip

        with cnotes.collect(caught, every_thread=True):
            job.convolve_strips(engine=engine, conv_memory=conv_memory, backend=backend,
                                on_strip=measure)  # fmt: skip
        for part in spans:
            span = pixels.join_spans(span, part)
        job.reopen()
    if span is None and not drop:
        # an image filter into 8 or 16 bits: converted, convolved, mapped and rounded
        # in one fused step on the native samples (None: the float path below)
        job.native = pipeline.native_step(
            job,
            out_map=out.out_map if map_it else "clip",
            scale=out.scale if map_it else 1.0,
            offset=out.offset if map_it else 0.0,
            bits=bits,
            algo=engine.algo,
        )
    results: queue.Queue = queue.Queue(pipeline.RESULTS_QUEUED)

    def strips() -> Iterator[np.ndarray]:
        while True:
            item = job.stop.get(results)
            if item is _STRIPS_END:
                return
            if job.native is not None:  # the samples, rounded already
                yield item[0]
                continue
            t0 = time.perf_counter()
            result, kept = item
            data = finish(result, kept)
            if map_it:
                data = pixels.map_result(data, out.out_map, scale=out.scale, offset=out.offset,
                                         alpha=alpha_in_result, span=span)  # fmt: skip
            samples = pipeline.to_samples(data, bits, drop, target.fmt)
            spent[0] += time.perf_counter() - t0
            yield samples

    spent = [0.0]

    def write() -> tuple[float, list[str]]:
        t0 = time.perf_counter()
        wait = [0.0]
        notes: list = []
        try:
            with cnotes.collect(notes):
                _make_folder(task.dst.parent)
                pipeline.encode(task.dst, target, _timed(strips(), wait),
                                replace=existing == "replace")  # fmt: skip
        except BaseException:
            job.stop.event.set()  # the convolution gives up too
            raise
        # its own work: the mapping and encoding, not the waits for strips
        seconds = time.perf_counter() - t0 - wait[0] + spent[0]
        return seconds, list(dict.fromkeys(cnotes.text(w) for w in notes))

    job_write = writers.submit(write)

    def send(r0: int, r1: int, result: np.ndarray, kept: np.ndarray | None) -> None:
        if job.native is None:
            count(result)
        job.stop.put(results, (result, kept))

    try:
        # the backend's helper threads warn here too (they have no collector)
        with cnotes.collect(caught, every_thread=True):
            job.convolve_strips(engine=engine, conv_memory=conv_memory, backend=backend,
                                on_strip=send, on_rows=on_rows)  # fmt: skip
        job.stop.put(results, _STRIPS_END)
    except pipeline.Aborted:
        # the writer failed: its error is the file's (reported by finish_write)
        pass
    except BaseException:
        job.stop.event.set()
        _wait_quietly(job_write)
        raise
    notes = list(job.run.read_notes)
    notes.extend(_convolve_notes(*overflow, caught))
    notes.extend(_write_notes(task, out, alpha, spec.c_out, info.channels, has_alpha))
    return task, job_write, info.height * info.width / 1e6, tuple(notes)


_STRIPS_END = object()


# ------------------------------------------------------------------------ small images
@dataclass
class _SmallOutcome:
    """What :meth:`_SmallPath.run` did with one image, for the calling thread to report.

    ``job`` set: the image did not take the small path (too large, or a filter or
    mapping the fused step does not cover); the strip pipeline runs ``job`` (its source
    already decoded when ``job.source`` is set). Else one of ``read_error`` (the file
    could not be read), ``conv_error`` (the convolution failed) or ``write`` (a done
    future of the encode and publish, as ``finish_write`` takes it)."""

    run: pipeline.ImageRun
    job: pipeline.ImageJob | None = None
    read_error: BaseException | None = None
    conv_error: BaseException | None = None
    reason_job: pipeline.ImageJob | None = None
    write: Future | None = None
    megapixels: float = 0.0
    notes: tuple[str, ...] = ()
    cancelled: bool = False


@dataclass(frozen=True)
class _SmallPlan:
    """What the images of one size and format share on the small path."""

    spec: ConvSpec
    step: pipeline.NativeStep
    target: stream.Target
    alpha: str


# Under auto, images wait for an OpenCL start the cost model expects to take at most
# START_WAIT_EXPECTED seconds (a cached program), up to START_WAIT_MOST seconds after it
# began (measured: 0.45-0.75 s for 1 MP images on 2 busy cores, priced at about 0.2 s)
START_WAIT_EXPECTED = 0.5
START_WAIT_MOST = 1.5

_STRIPS = object()  # the strip pipeline takes the image, decoded already
# marks (and is taken off) the info of an image filtered on NumPy while OpenCL started
_MEANTIME = "filtered on NumPy while OpenCL started"
_FRESH = object()  # the strip pipeline takes the image from its file (check_file first)


class _SmallPath:
    """Images small enough to be decoded whole (:mod:`convcli.small`) run from decode
    to publish in one worker thread each, several images at once (``run_tasks`` runs
    :meth:`run` on a pool of ``workers + 1`` threads).

    OpenCL starts once: the first image that wants it starts it; under ``auto`` the
    images filtered while it starts wait for it when the start is expected to be short
    (a cached program), else run on NumPy meanwhile (see :meth:`_start_wait`)."""

    def __init__(
        self,
        filt: Filter,
        engine: Engine,
        output: Output,
        existing: Existing,
        max_pixels: int | None,
        stop: threading.Event,
        limit: int,
    ) -> None:
        self.filt, self.engine, self.output = filt, engine, output
        self.limit = limit
        self.existing, self.max_pixels, self.stop = existing, max_pixels, stop
        #: set when the run stops for good (a full disk): images not written yet are
        #: dropped, as the strip pipeline drops the reads it has not used
        self.halt = threading.Event()
        self._starting = threading.Lock()
        self._start_began: float | None = None  # when the first image began the start
        self._start_expected: dict[tuple, float] = {}  # -1: auto takes NumPy
        self._pricing = threading.Lock()
        self._plans: dict[tuple, object] = {}
        self._blas = contextlib.ExitStack()
        self._blas_lock = threading.Lock()
        self._blas_held = engine.backend == "opencl"  # no NumPy filtering to guard

    def close(self) -> None:
        """Give BLAS its threads back (see :meth:`_one_thread_blas`)."""
        self._blas.close()

    def _one_thread_blas(self) -> None:
        """Hold BLAS at one thread until :meth:`close`, once NumPy may filter.

        Why: NumPy's filter holds BLAS at one thread while a call runs and gives its
        threads back when the last concurrent call leaves; with several images filtered
        on NumPy at once, BLAS flipped between one thread and all of them, and its
        threads spun: 200 one-megapixel images took 5-67 s (CPU 6-59 s) against a
        steady 3.6 s with BLAS held at one thread for the run."""
        if self._blas_held:
            return
        with self._blas_lock:
            if self._blas_held:
                return
            try:
                from threadpoolctl import threadpool_limits
            except ImportError:  # a dependency, but the batch must work without it
                self._blas_held = True
                return
            self._blas.enter_context(threadpool_limits(1, user_api="blas"))
            self._blas_held = True  # only now: the others must not filter before it

    def run(self, task: Task, images_ahead: int) -> _SmallOutcome:
        from convcli import small

        if self.stop.is_set() or self.halt.is_set():
            return _SmallOutcome(pipeline.ImageRun(), cancelled=True)
        filt, engine, out, max_pixels = self.filt, self.engine, self.output, self.max_pixels
        job = _job(task, filt, engine, out, max_pixels)
        job.images_ahead = images_ahead
        run = job.run
        t0 = time.perf_counter()
        caught: list = []
        try:
            with cnotes.collect(caught):
                source = small.read_small(task.src, max_pixels=max_pixels, limit=self.limit)
        except Exception as exc:  # the file's report line
            return _SmallOutcome(run, read_error=exc)
        finally:
            run.read += time.perf_counter() - t0
            read_notes = [cnotes.text(w) for w in caught]
            run.read_notes.extend(read_notes)
        if source is None:  # too large, or a header the strip pipeline's reader words
            fresh = _job(task, filt, engine, out, max_pixels)
            fresh.images_ahead = images_ahead
            return _SmallOutcome(pipeline.ImageRun(), job=fresh)
        job.adopt(source)
        info = source.info

        def declined() -> _SmallOutcome:
            # the strip pipeline, on the samples decoded here (a fresh job: it prepares
            # the image again, notes and all)
            fresh = _job(task, filt, engine, out, max_pixels)
            fresh.images_ahead = images_ahead
            fresh.adopt(source)
            fresh.run.read = run.read
            fresh.run.read_notes.extend(read_notes)
            return _SmallOutcome(pipeline.ImageRun(), job=fresh)

        t1 = time.perf_counter()
        conv_caught: list = []
        try:
            plan = self._plan(job, task, info)
            if plan is _FRESH:
                # a result larger than its input: check_file weighs it before decoding
                fresh = _job(task, filt, engine, out, max_pixels)
                fresh.images_ahead = images_ahead
                return _SmallOutcome(pipeline.ImageRun(), job=fresh)
            if plan is _STRIPS:
                return declined()
            spec, step, target, alpha = plan.spec, plan.step, plan.target, plan.alpha
            part = RunInfo()
            with cnotes.collect(conv_caught):
                samples = self._filter(source.samples, info.top, step, spec, images_ahead,
                                       part, conv_caught)  # fmt: skip
            if samples is None:
                return declined()
            part.tiles += 1
            run.info.add(part)
        except Exception as exc:  # reported as the strip pipeline's convolution would be
            return _SmallOutcome(run, conv_error=exc, reason_job=job)
        finally:
            run.convolve += time.perf_counter() - t1
        job.close()
        # what the reader noted, as ImageJob.prepare puts it (the plan may be a kept one)
        notes = [" ".join(str(n).split()) for n in info.notes] + read_notes
        notes.extend(_convolve_notes(0, 0, conv_caught))
        notes.extend(_write_notes(task, out, alpha, spec.c_out, info.channels, False))
        if self.halt.is_set():
            return _SmallOutcome(pipeline.ImageRun(), cancelled=True)
        write: Future = Future()
        t2 = time.perf_counter()
        written: list = []
        try:
            with cnotes.collect(written):
                _make_folder(task.dst.parent)
                small.encode(task.dst, target, samples, replace=self.existing == "replace")
        except Exception as exc:  # finish_write reports it
            if _fatal_errno(exc) is not None:
                self.halt.set()  # a full disk: the images after this one write nothing
            write.set_exception(exc)
        else:
            seconds = time.perf_counter() - t2
            write.set_result((seconds, list(dict.fromkeys(cnotes.text(w) for w in written))))
        mp = info.height * info.width / 1e6
        return _SmallOutcome(run, write=write, megapixels=mp, notes=tuple(notes))

    def _plan(self, job: pipeline.ImageJob, task: Task, info: stream.ImageInfo) -> object:
        """How this image is filtered and written: a :class:`_SmallPlan`, or
        :data:`_STRIPS` / :data:`_FRESH` where the strip pipeline takes it. The same
        for every image of the same size, format and output suffix: worked out once."""
        out = self.output
        suffix = task.dst.suffix.lower()
        sampling = out.subsampling_for(task.src, task.dst, info.jpeg)
        key = (info.height, info.width, info.channels, info.dtype.str, info.top,
               info.bit_depth, info.has_alpha, suffix, sampling)  # fmt: skip
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        if info.has_alpha:  # the fused step takes no alpha
            self._plans[key] = _STRIPS
            return _STRIPS
        job.prepare()
        spec = job.spec
        if spec.h_out * spec.w_out > info.height * info.width:
            return _FRESH
        channels = _result_channels(spec.c_out, info.channels, False, job.alpha)
        depth = out.bit_depth or default_bit_depth(info.bit_depth, suffix)
        plain_clip = out.out_map == "clip" and out.scale == 1.0 and out.offset == 0.0
        map_it = (suffix == ".npy" and not out.raw_npy) or (suffix != ".npy" and not plain_clip)
        # raises (a format that cannot hold the result) for every file: not kept
        target, bits, drop = pipeline.target_for(
            task.dst, channels, spec.h_out, spec.w_out, depth, out.quality, sampling,
            _result_alpha(task.src, info, spec.c_out, job.alpha),
        )  # fmt: skip
        step = None
        if not drop and not (map_it and out.out_map == "normalize"):
            step = pipeline.native_step(
                job,
                out_map=out.out_map if map_it else "clip",
                scale=out.scale if map_it else 1.0,
                offset=out.offset if map_it else 0.0,
                bits=bits,
                algo=self.engine.algo,
            )
        plan = _STRIPS if step is None else _SmallPlan(spec, step, target, job.alpha)
        self._plans[key] = plan
        return plan

    def _filter(
        self,
        image: np.ndarray,
        top: float,
        step: pipeline.NativeStep,
        spec,
        images_ahead: int,
        part: RunInfo,
        caught: list,
    ) -> np.ndarray | None:
        """The fused native step on the whole image, padded as ``spec`` says (see
        :func:`convcli.native.filter_strip`: OpenCL's two-pass kernels read the image
        through the padding's maps, without a padded copy); what it warns about goes to
        ``caught``.

        NumPy filters an image on helper threads, whose warnings (an overflow) only a
        collector for every thread receives: a call sent to NumPy runs under one, so
        nothing reaches the run's catch-all without a file name. Two images on NumPy at
        once may swap such warnings (their own thread's stay theirs); taking them one at
        a time cost 10 % more CPU under auto and 5x the time on NumPy alone."""
        from convcli import native
        from convcli.backends import started_opencl

        backend = self.engine.backend
        device = self.engine.device
        self._one_thread_blas()

        def call(backend: str) -> np.ndarray | None:
            return native.filter_strip(
                image, pad=spec.pad, padding_mode=spec.padding_mode, top=top,
                kernel=step.kernel, stride=spec.stride, dilation=spec.dilation,
                bias=step.bias, scale=step.scale, offset=step.offset, out_map=step.out_map,
                out_top=step.out_top, backend=backend, device=device, strips=images_ahead,
                info=part,
            )  # fmt: skip

        def on_numpy(backend: str) -> np.ndarray | None:
            with cnotes.collect(caught, every_thread=True):
                return call(backend)

        if backend == "numpy":
            return on_numpy(backend)
        if started_opencl(device) is not None:
            return call(backend)
        # OpenCL not started yet: one image starts it (get_backend is not for two
        # threads at once); the others wait for it, or under auto run on NumPy meanwhile
        # where the start is expected to be long
        got = self._starting.acquire(blocking=False)
        if not got:
            wait = -1.0
            if backend == "auto":
                wait = self._start_wait(image, top, step, spec, images_ahead)
            got = wait != 0.0 and self._starting.acquire(timeout=wait)
        if got:
            if started_opencl(device) is not None:  # it started (or failed) meanwhile
                self._starting.release()
                return call(backend)
            try:
                if self._start_began is None:
                    self._start_began = time.perf_counter()
                return call(backend)
            finally:
                self._starting.release()
        part.notices.append(_MEANTIME)
        return on_numpy("numpy")

    def _start_wait(
        self, image: np.ndarray, top: float, step: pipeline.NativeStep, spec, images_ahead: int
    ) -> float:
        """How long an image waits under auto for the OpenCL start another image began
        (0: it runs on NumPy now).

        Why wait: the start (pyopencl's import, device discovery, a cached program) is
        mostly Python holding the interpreter lock, and an image filtered on NumPy
        meanwhile (15-28 ms of CPU a megapixel against 2-3 ms on OpenCL) slows it down:
        200 one-megapixel JPEGs took 2.70 s of CPU waiting (median of 10 runs on 2 busy
        cores; 2.78 s wall) against 2.88 s (2.91 s) filtering the first images on NumPy.
        A start expected to be long (a program to build) is not waited for, nor one
        running past START_WAIT_MOST."""
        from convcli import native

        began = self._start_began
        if began is None:  # the image that holds the start has not noted its time yet
            began = time.perf_counter()
        key = (image.shape, image.dtype.str, top, id(step))
        # priced by one image, the others waiting for it: each pricing holds the
        # interpreter lock some 15 ms that the start is waiting for
        with self._pricing:
            expected = self._start_expected.get(key)
            if expected is None:
                found = native.opencl_start_seconds(
                    image, pad=spec.pad, padding_mode=spec.padding_mode, top=top,
                    kernel=step.kernel, stride=spec.stride, dilation=spec.dilation,
                    bias=step.bias, scale=step.scale, offset=step.offset,
                    out_map=step.out_map, out_top=step.out_top, device=self.engine.device,
                    strips=images_ahead,
                )  # fmt: skip
                expected = -1.0 if found is None else found
                self._start_expected[key] = expected
        if expected < 0 or expected > START_WAIT_EXPECTED:
            return 0.0
        return max(0.0, began + START_WAIT_MOST - time.perf_counter())


def _timed(items: Iterator[np.ndarray], wait: list[float]) -> Iterator[np.ndarray]:
    """``items``, adding the time spent waiting for each to ``wait[0]`` (what a stage
    waits for another is not its own work)."""
    while True:
        t0 = time.perf_counter()
        try:
            item = next(items)
        except StopIteration:
            return
        finally:
            wait[0] += time.perf_counter() - t0
        yield item


def _wait_quietly(fut: Future) -> None:
    # the writer gave up because the convolution did: its error says nothing new
    with contextlib.suppress(BaseException):
        fut.result()


def file_filter_problem(filt: Filter) -> str | None:
    """Why no image file can be filtered with ``filt`` (None: files can).

    A negative padding crops under padding modes other than zeros (torch's ``F.pad``);
    :func:`convcli.conv2d` and zarr stores do that, the strips of image files do not.
    (Under zero padding :meth:`Filter.check` and conv2d refuse it, as torch does.)
    """
    pad = filt.resolved_padding()
    if isinstance(pad, str) or min(np.ravel(pad)) >= 0:
        return None
    return (
        "negative padding is not supported for image files (it crops arrays and zarr "
        "stores under padding modes other than zeros)"
    )


def most_workers() -> int:
    """The most threads :func:`run_tasks` takes: 4 per CPU, at least 8. Each holds an
    image (read ahead, or a small image whole), so more only add memory."""
    return max(8, 4 * (os.cpu_count() or 1))


def _task_list(tasks: object) -> list:
    if isinstance(tasks, str | os.PathLike) or not isinstance(tasks, Iterable):
        return [tasks]  # not a list of tasks: named by the check
    return list(tasks)


def run_tasks(
    tasks: Sequence[Task] | Plan,
    filt: Filter,
    *,
    engine: Engine = Engine(),
    output: Output = Output(),
    max_pixels: int | None = cio.DEFAULT_MAX_PIXELS,
    existing: Existing = "replace",
    workers: int | None = None,
    stop: threading.Event | None = None,
    on_event: Callable[[Event], None] | None = None,
    on_rows: Callable[[int, int], None] | None = None,
    strip_rows: int | None = None,
    small_bytes: int | None = None,
) -> BatchResult:
    """Read, convolve and write every task; failures are recorded, not raised.

    Parameters
    ----------
    tasks : Plan or sequence of Task
        A :class:`Plan` from :func:`plan_batch` or :func:`plan_files` (its ``refused``
        inputs lead ``failed``, as in ``batch``'s summary and report), or its ``tasks``
        alone (then the caller reports ``refused``).
    filt, engine, output
        The convolution, where it runs, and how results become files.
    max_pixels : int, optional
        Images whose header claims more pixels are refused (decompression bombs).
    existing : {'fail', 'skip', 'replace'}
        What to do with an output file that already exists.
    workers : int, optional
        Writer threads; default: CPU count, at least 2; at most :func:`most_workers`.
        ``workers + 1`` images are opened ahead, each in a thread of its own (one when
        ``engine.max_memory`` is set: one file at a time); small images run
        ``workers + 1`` at once.
    stop : threading.Event, optional
        Set it (e.g. from a signal handler) to stop after the image being convolved:
        reads not yet used are dropped, results already computed are written, and the
        result has ``interrupted=True``.
    on_event : callable, optional
        Called in the calling thread with an :class:`Event` per finished task.
    on_rows : callable, optional
        ``on_rows(done, total)``: output rows of the image being convolved, as its tiles
        finish (large images only; see :func:`convcli.conv2d`'s ``progress``).
    strip_rows : int, optional
        Output rows per strip (see :mod:`convcli.pipeline`; rounded up to what the
        algorithm needs to give the whole image's values). Default: about
        :data:`convcli.pipeline.STRIP_BYTES` of input per strip, shorter where
        ``engine.max_memory`` needs it.
    small_bytes : int, optional
        Images whose native samples take at most this many bytes (default
        :data:`convcli.small.SMALL_BYTES`) and that the fused native-depth step filters
        run whole, each in one worker thread from decode to publish, ``workers + 1`` at
        once (:mod:`convcli.small`); 0 sends every image through the strips, as do
        ``strip_rows`` and ``engine.max_memory``.

    Returns
    -------
    BatchResult
        Done, skipped and failed files, a fatal reason if the run stopped early, the
        summed :class:`RunInfo` and stage timings.
    """
    if existing not in ("fail", "skip", "replace"):
        raise ConvValueError(f"existing must be 'fail', 'skip' or 'replace', got {existing!r}")
    if not isinstance(filt, Filter):
        raise ConvTypeError(f"filt must be a convcli.Filter, got {type(filt).__name__}")
    if not isinstance(tasks, Plan):
        tasks = _task_list(tasks)  # (a generator is read once, here)
    listed = tasks.tasks if isinstance(tasks, Plan) else tasks
    wrong = next((t for t in listed if not isinstance(t, Task)), None)
    if wrong is not None:
        raise ConvTypeError(
            f"tasks must be a Plan or Task objects (plan_batch, plan_files), got "
            f"{type(wrong).__name__} {wrong!r}"
        )
    if workers is not None and workers < 1:
        raise ConvValueError(f"workers must be at least 1, got {workers!r}")
    t_start = time.perf_counter()
    result = BatchResult()
    if isinstance(tasks, Plan):
        # an input the plan refused (its output is the input, two inputs for one output)
        # is a failure of the run, not a file silently left out
        result.failed.extend(tasks.refused)
        tasks = tasks.tasks
    workers = min(max(2, workers or os.cpu_count() or 2), most_workers())
    stop = stop or threading.Event()
    timings = {"read": 0.0, "write": 0.0, "convolve": 0.0}
    # Decoded images waiting for the convolution. Under a memory cap (max_memory) one
    # file at a time goes through read, convolve and write, so the cap holds for the
    # whole process (check_file prices one file).
    sequential = engine.max_memory is not None
    lookahead = 1 if sequential else workers + 1
    pending = deque(tasks)
    reads: deque[tuple[Task, Future]] = deque()
    writes: deque[tuple[Task, Future, float, tuple[str, ...]]] = deque()

    def emit(event: Event) -> None:
        if on_event is not None:
            on_event(event)

    def fail(task: Task, exc: BaseException | str, *, quiet: bool = False) -> None:
        reason = exc if isinstance(exc, str) else _reason(exc)
        failure = Failure(task.src, reason, task.dst)
        result.failed.append(failure)
        # a fatal failure is reported once, by ``result.fatal``, not also per file
        error = exc if isinstance(exc, BaseException) else None
        emit(Event("failed", task, "" if quiet else failure.line(), error=error))

    def should_skip(task: Task) -> bool:
        """Decide about an existing output before spending a read on it. Only a saving:
        with ``fail`` and ``skip`` the write itself creates the file only if the name is
        still free, so an output that another process creates meanwhile is never
        replaced, nor reported as done here (see ``finish_write``)."""
        if not os.path.lexists(task.dst):
            return False
        if task.dst.is_dir():
            fail(task, f"output {task.dst} is a folder")
            return True
        if existing == "skip":
            result.skipped.append(task)
            emit(Event("skipped", task, "output exists"))
            return True
        if existing == "fail":
            fail(
                task,
                f"output {task.dst} exists (pass existing='replace' to replace it, "
                "existing='skip' to keep it)",
            )
            return True
        return False

    problem = file_filter_problem(filt)
    if problem is not None:  # no image file can take this filter: each fails, named
        for task in pending:
            fail(task, problem)
        pending.clear()

    def finish_write(task: Task, fut: Future, mp: float, notes: tuple[str, ...]) -> None:
        try:
            seconds, write_notes = fut.result()
            timings["write"] += seconds
            notes = tuple(dict.fromkeys((*notes, *write_notes)))  # normalize maps twice
        except OutputExistsError:  # another process wrote it while we worked
            if existing == "skip":
                result.skipped.append(task)
                emit(Event("skipped", task, "output exists"))
            else:
                fail(
                    task, f"output {task.dst} exists: another run wrote it meanwhile; not replaced"
                )
            return
        except Exception as exc:  # every failure becomes a report line
            fatal = _fatal_write(exc, task.dst)
            if fatal is not None and result.fatal is None:
                result.fatal = fatal
            fail(task, fatal or exc, quiet=fatal is not None)
            return
        result.done.append(task)
        result.megapixels += mp
        result.notes.extend((task.src, n) for n in notes)
        emit(Event("done", task, megapixels=mp, notes=notes))

    def drain_writes(block_over: int) -> None:
        while writes and (len(writes) > block_over or writes[0][1].done()):
            finish_write(*writes.popleft())

    # Small images run whole, one per worker thread (see _SmallPath); under a memory
    # cap, or with strips asked for, every image goes through the strips.
    small_path = None
    meantime: list[RunInfo] = []
    if small_bytes is None:
        from convcli.small import SMALL_BYTES as small_bytes
    if not sequential and strip_rows is None and small_bytes > 0:
        small_path = _SmallPath(filt, engine, output, existing, max_pixels, stop, small_bytes)
        # images queued for the workers: enough to keep them busy while an image ahead
        # of them takes long (the one starting OpenCL); an outcome holds no samples
        # unless the strips take the image over
        lookahead = 4 * (workers + 1)

    def take_small(task: Task, outcome: _SmallOutcome) -> pipeline.ImageJob | None:
        """Report a small image's outcome; the job to run through the strips when it
        did not take the small path."""
        if outcome.cancelled:
            return None
        run = outcome.run
        timings["read"] += run.read
        timings["convolve"] += run.convolve
        info = run.info
        if _MEANTIME in info.notices:
            # the batch's backend is the one that runs it once started, not NumPy's
            # stand-in for its first images
            info.notices.remove(_MEANTIME)
            meantime.append(info)
            info = replace(info, backend="", device="", algo="")
        result.info.add(info)
        if outcome.job is not None:
            return outcome.job
        if outcome.read_error is not None:
            fail(task, outcome.read_error)
            return None
        exc = outcome.conv_error
        if isinstance(exc, BackendError):
            result.fatal = _reason(exc)
            fail(task, exc, quiet=True)
            return None
        if isinstance(exc, ConvcliError | ValueError | MemoryError):
            fail(task, _conv_reason(exc, outcome.reason_job, engine))
            return None
        if exc is not None:
            raise exc
        writes.append((task, outcome.write, outcome.megapixels, outcome.notes))
        drain_writes(block_over=workers)
        return None

    def run_job(task: Task, job: pipeline.ImageJob) -> None:
        """One image through the strips (the calling thread convolves it)."""
        try:
            job.wait_open()
        except Exception as exc:  # a bad file is a report line
            timings["read"] += job.run.read
            fail(task, exc)
            return
        try:
            write = _process(task, job, filt, engine, output, existing, writers, on_rows)
        except BackendError as exc:
            # the device is gone or refused: every later file would fail the same way
            result.fatal = _reason(exc)
            fail(task, exc, quiet=True)
            return
        except (ConvcliError, ValueError, MemoryError) as exc:
            fail(task, _conv_reason(exc, job, engine))
            return
        finally:
            job.close()
            timings["read"] += job.run.read
            timings["convolve"] += job.run.convolve
            result.info.add(job.run.info)
        writes.append(write)
        drain_writes(block_over=0 if sequential else workers)
        if sequential:
            release_freed_memory()

    small_pool = (
        # one more thread than cores: a thread waiting for its file to reach the disk
        # (publish's fsync) or for the OpenCL queue leaves its core to another
        ThreadPoolExecutor(workers + 1, thread_name_prefix="convcli-small")
        if small_path is not None
        else contextlib.nullcontext()
    )
    with (
        ThreadPoolExecutor(workers, thread_name_prefix="convcli-write") as writers,
        small_pool as smalls,
    ):

        def fill() -> None:
            while pending and len(reads) < lookahead and not stop.is_set() and not result.fatal:
                task = pending.popleft()
                if should_skip(task):
                    continue
                # images of this batch still to come, this one included: what a
                # backend started for this image serves too
                ahead = len(pending) + 1
                if small_path is not None:
                    reads.append((task, smalls.submit(small_path.run, task, ahead)))
                    continue
                job = _job(task, filt, engine, output, max_pixels)
                job.strip_request = strip_rows
                job.images_ahead = ahead
                job.start()
                reads.append((task, job))

        try:
            fill()
            while reads and not stop.is_set() and result.fatal is None:
                task, item = reads.popleft()
                if not sequential and not isinstance(item, Future):
                    fill()  # the next reads overlap this image's convolution
                if isinstance(item, Future):
                    job = take_small(task, item.result())
                    if result.fatal is not None:
                        small_path.halt.set()
                    if job is None:
                        fill()
                        continue
                    job.strip_request = strip_rows
                else:
                    job = item
                run_job(task, job)
                if result.fatal is not None and small_path is not None:
                    small_path.halt.set()
                fill()
        finally:
            # Interrupted or stopped: drop reads not yet used (they wrote nothing) and
            # finish the writes of results already computed (each is atomic). A small
            # image already running finishes, and is reported.
            if small_path is not None and result.fatal is not None:
                small_path.halt.set()
            for task, item in reads:
                if not isinstance(item, Future):
                    item.cancel()
                elif not item.cancel():
                    job = take_small(task, item.result())
                    if job is not None:
                        job.close()
            drain_writes(block_over=0)
    if small_path is not None:
        small_path.close()
    if not result.info.backend and meantime:  # OpenCL never ran after all
        first = meantime[0]
        result.info.backend, result.info.device = first.backend, first.device
        result.info.algo = first.algo
    # interrupted = stopped with work left (a stop after the last image changes nothing)
    finished = len(result.done) + len(result.skipped) + len(result.failed)
    result.interrupted = stop.is_set() and finished < len(tasks)
    for key in ("upload", "build", "compute", "download"):
        timings[key] = result.info.timings.get(key, 0.0)
    timings["total"] = time.perf_counter() - t_start
    result.timings = timings
    return result
