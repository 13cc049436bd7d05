"""Zarr stores in and out: convolve an image larger than memory, chunk by chunk.

:func:`zarr_conv2d` reads a zarr array (``(C, H, W)``, ``(H, W, C)`` or ``(H, W)``) or
level 0 of an OME-Zarr multiscale image, convolves it through the dask path
(:mod:`convcli.dask_array`: exact for every padding mode, whatever the chunks) and
writes a zarr store chunked as the result's blocks. The output is written into a
temporary store beside the destination and renamed into place when complete, so the
destination never holds a partial result and an existing one is never replaced unless
asked. Memory stays bounded: each task holds the window of one output block.

zarr 2 (>= 2.16) and zarr 3 both work; the output is written in the input's zarr format.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any, Literal

import numpy as np

from convcli.errors import ConvValueError, InputError
from convcli.io._common import codec_reason, reason, resolved
from convcli.io.publish import _host_tag, _pid_alive  # as image outputs' temporary files
from convcli.spec import IntPair, Padding

Layout = Literal["CHW", "HWC", "HW"]
LAYOUTS: tuple[str, ...] = ("CHW", "HWC", "HW")


def _import() -> tuple[Any, Any]:
    try:
        import dask.array as da
        import zarr
    except ImportError as exc:
        raise InputError(
            f"zarr stores need the dask extra (dask, zarr): {exc}; "
            "install it with pip install 'convcli[dask]'"
        ) from exc
    return da, zarr


def _zarr_major(zarr: Any) -> int:
    return int(str(zarr.__version__).split(".")[0])


def _format_of(zarr: Any, array: Any) -> int:
    """The zarr format (2 or 3) of an opened array."""
    if _zarr_major(zarr) < 3:
        return 2
    return int(array.metadata.zarr_format)


def _multiscales(attrs: dict) -> tuple[list | None, dict | None]:
    """OME-Zarr ``multiscales`` (v0.4: top level; v0.5: under ``ome``) and its parent."""
    if "multiscales" in attrs:
        return attrs["multiscales"], attrs
    ome = attrs.get("ome")
    if isinstance(ome, dict) and "multiscales" in ome:
        return ome["multiscales"], ome
    return None, None


def _axis_names(axes: list | None, ndim: int) -> list[str] | None:
    if not axes:
        return None
    names = [_axis_name(a) for a in axes]
    return names if len(names) == ndim else None


def _level0(src: Path, multiscales: Any) -> tuple[dict, list | None]:
    """The first multiscale image's level 0 dataset and its axes, checked, so that a
    malformed ``multiscales`` is one clear error naming ``src`` (not a KeyError)."""
    bad = f"{src}: malformed OME-Zarr multiscales metadata"
    if not isinstance(multiscales, list) or not isinstance(multiscales[0], dict):
        raise InputError(f"{bad} (expected a list of objects)")
    entry = multiscales[0]
    datasets = entry.get("datasets")
    if not isinstance(datasets, list) or not datasets or not isinstance(datasets[0], dict):
        raise InputError(f"{bad} (no datasets)")
    level0 = datasets[0]
    path = level0.get("path")
    if (
        not isinstance(path, str)
        or not path.strip("/")
        or path.startswith("/")
        or any(part in ("", ".", "..") for part in path.split("/"))
    ):
        # zarr itself refuses '..' with an error that names no store
        raise InputError(f"{src}: OME-Zarr level 0 path {path!r} is not a path inside the group")
    axes = entry.get("axes") or None  # none before OME-Zarr 0.3
    if axes is not None and not (
        isinstance(axes, list)
        and all(
            isinstance(a, str) or (isinstance(a, dict) and isinstance(a.get("name"), str))
            for a in axes
        )
    ):
        raise InputError(f"{bad} (axes must be names or objects with a name)")
    for transforms in (
        level0.get("coordinateTransformations"),
        entry.get("coordinateTransformations"),
    ):
        if transforms is not None and not _transforms_ok(transforms):
            raise InputError(f"{bad} (coordinateTransformations)")
    return level0, axes


def _transforms_ok(transforms: Any) -> bool:
    """A list of objects whose scale and translation, if any, are lists of numbers."""
    if not isinstance(transforms, list):
        return False
    for t in transforms:
        if not isinstance(t, dict):
            return False
        for key in ("scale", "translation"):
            values = t.get(key, [])
            if not isinstance(values, list) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in values
            ):
                return False
    return True


class _Reader:
    """A zarr array whose read errors name the store (a corrupt chunk raised a bare
    ``RuntimeError: Zstd decompression error``, which named no file)."""

    def __init__(self, array: Any, src: Path) -> None:
        self.array, self.src = array, src
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return np.asarray(self.array[key])
        except Exception as exc:  # codecs and stores raise many types
            raise InputError(f"{self.src}: cannot read its chunks ({codec_reason(exc)})") from None


def open_image(
    src: str | Path, layout: Layout | None = None, chunks: Any = None
) -> tuple[Any, str, dict]:
    """Open ``src`` as a lazy ``(C, H, W)`` dask array (read in ``chunks``, default the
    store's, given in the stored array's axis order).

    Returns ``(array, layout, meta)``: ``layout`` is how the stored array's axes map to
    C, H and W, and ``meta`` what :func:`zarr_conv2d` needs to write the output alike
    (zarr format; for OME-Zarr the multiscales entry and the axes squeezed away).

    Raises
    ------
    InputError
        Not a zarr array or group, a group without OME-Zarr multiscales (or with
        malformed ones), axes that cannot be read as an image, samples that are not real
        numbers (strings, dates, complex), or an empty image. A chunk that cannot be read
        raises it too, when the array is computed.
    """
    da, zarr = _import()
    src = Path(src)
    if not src.exists():
        raise InputError(f"{src}: no such zarr store")
    try:
        node = zarr.open(str(src), mode="r")
    except Exception as exc:  # zarr raises many types for a path that is not a store
        raise InputError(f"{src}: not a zarr array or group ({exc})") from exc
    meta: dict[str, Any] = {"ome": None}
    names = None
    if hasattr(node, "shape"):
        array = node
    else:
        multiscales, _ = _multiscales(dict(node.attrs))
        if not multiscales:
            raise InputError(
                f"{src}: a zarr group without OME-Zarr multiscales metadata; "
                "give the path of an array inside it"
            )
        level0, axes = _level0(src, multiscales)
        try:
            array = node[level0["path"]]
        except KeyError as exc:
            raise InputError(f"{src}: OME-Zarr level 0 ({level0['path']}) is missing") from exc
        except Exception as exc:  # unreadable metadata below the group
            raise InputError(
                f"{src}: OME-Zarr level 0 ({level0['path']}) cannot be read ({reason(exc)})"
            ) from exc
        if not hasattr(array, "shape"):
            raise InputError(f"{src}: OME-Zarr level 0 ({level0['path']}) is a group, not an array")
        names = _axis_names(axes, array.ndim)
        if axes is not None and names is None:
            raise InputError(
                f"{src}: OME-Zarr names {len(axes)} axes but level 0 "
                f"({level0['path']}) has {array.ndim}"
            )
        meta["ome"] = {"attrs": dict(node.attrs), "axes": axes}
        meta["ome"]["level0"] = level0
    if array.dtype.kind not in "biuf":
        # strings failed mid-run ("could not convert string to float"); dates and complex
        # numbers were silently converted (complex: the imaginary part dropped), which
        # .npy and TIFF images refuse too
        raise InputError(f"{src}: zarr dtype {array.dtype} is not a real number type")
    meta["zarr_format"] = _format_of(zarr, array)
    x = da.from_array(
        _Reader(array, src),
        chunks=chunks if chunks is not None else array.chunks,
        name="from-zarr-" + uuid.uuid4().hex,
        asarray=True,
        meta=np.empty((0,) * array.ndim, dtype=array.dtype),
    )
    if names is not None:
        if "y" not in names or "x" not in names:
            raise InputError(f"{src}: OME-Zarr axes {names} have no y and x")
        index = []
        for name, size in zip(names, array.shape, strict=True):
            if name in ("c", "y", "x"):
                index.append(slice(None))
            elif size == 1:
                index.append(0)
            else:
                raise InputError(
                    f"{src}: OME-Zarr axis {name!r} has {size} planes; "
                    "only images with one plane along axes other than c, y, x are supported"
                )
        x = x[tuple(index)]
        kept = [n for n in names if n in ("c", "y", "x")]
        meta["ome"]["kept"] = kept
        if kept not in (["c", "y", "x"], ["y", "x"]):
            raise InputError(f"{src}: OME-Zarr axes {names}: expected c (if any) before y, x")
        layout = "CHW" if "c" in kept else "HW"
    elif layout is None:
        if array.ndim not in (2, 3):
            raise InputError(
                f"{src}: a zarr array of shape {tuple(array.shape)} is not an image "
                "(C, H, W), (H, W, C) or (H, W)"
            )
        layout = _guess_layout(array.shape)
    if layout not in LAYOUTS:
        raise ConvValueError(f"layout must be one of {list(LAYOUTS)}, but got layout='{layout}'")
    if len(layout) != x.ndim:
        raise InputError(f"{src}: a zarr array of shape {tuple(x.shape)} is not {layout}")
    x = x[None] if layout == "HW" else x.transpose([layout.index(a) for a in "CHW"])
    if 0 in x.shape:
        raise InputError(f"{src}: the image is empty (shape {tuple(array.shape)})")
    return x, layout, meta


def _guess_layout(shape: tuple[int, ...]) -> str:
    """HW for 2-D; HWC when the last axis is a handful of channels and the first is not."""
    if len(shape) == 2:
        return "HW"
    return "HWC" if shape[2] <= 4 < shape[0] else "CHW"


def _out_layout(layout: str, channels: int) -> str:
    return ("CHW" if channels > 1 else "HW") if layout == "HW" else layout


def _regular(chunks: tuple[tuple[int, ...], ...]) -> tuple[int, ...]:
    """Zarr chunk shape for dask chunks that are regular (all equal but the last)."""
    return tuple(max(1, axis[0]) for axis in chunks)


def zarr_conv2d(
    src: str | Path,
    dst: str | Path,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    *,
    layout: Layout | None = None,
    chunks: Any = None,
    overwrite: bool = False,
    backend: str = "auto",
    device: str | None = None,
    algo: str = "auto",
    max_memory: int | None = None,
    scheduler: Any = "threads",
    num_workers: int | None = None,
) -> Path:
    """Convolve a zarr image into a new zarr store, in bounded memory.

    Parameters
    ----------
    src : path
        A zarr array or an OME-Zarr multiscale group (level 0 is read; axes other than
        c, y and x must have one plane).
    dst : path
        The zarr store to create: an array, or for OME-Zarr input a group with one level
        ``"0"`` and the input's axes (scale times the stride). It must not exist unless
        ``overwrite``.
    weight, bias, stride, padding, dilation, groups, padding_mode
        As :func:`convcli.conv2d`. The image is converted to ``weight``'s dtype (integer
        images to float values, not rescaled) and written in that dtype.
    layout : {'CHW', 'HWC', 'HW'}, optional
        How the stored array's axes map to channels, height and width. Default: from
        OME-Zarr axes; else 'HW' for 2-D arrays and for 3-D 'HWC' when the last axis has
        at most 4 entries and the first more, otherwise 'CHW'. The output has the same
        layout (an 'HW' image filtered to several channels is written 'CHW').
    chunks : optional
        Read chunks (``dask.array.from_zarr``'s ``chunks``, in the stored array's axis
        order); default the store's. Output chunks follow them (``ceil(chunk / stride)``).
    overwrite : bool
        Replace an existing ``dst``, even ``src`` itself: only once the new store is
        complete (every read of ``src`` is done by then).
    backend, device, algo, max_memory
        As :func:`convcli.conv2d`, for each block.
    scheduler, num_workers
        Passed to dask's ``compute``: threads here by default; ``None`` uses dask's
        default (a ``distributed.Client`` when one is active; its workers must then see
        ``src`` and ``dst``'s folder).

    Returns
    -------
    Path
        ``dst``.

    Raises
    ------
    InputError
        ``src`` is not a readable zarr image, ``dst`` exists (without ``overwrite``), or
        one store lies inside the other (replacing ``dst`` would delete ``src``).
    ConvValueError, ConvTypeError
        Invalid convolution arguments (before any work is done).
    """
    da, zarr = _import()
    from convcli.dask_array import conv2d

    src, dst = Path(src), Path(dst)
    src_real, dst_real = resolved(src), resolved(dst)
    if dst_real != src_real and src_real.is_relative_to(dst_real):
        # replacing dst would delete the input with it, even with overwrite
        raise InputError(
            f"{dst}: the output store holds the input {src}; replacing it would delete the input"
        )
    if dst_real != src_real and dst_real.is_relative_to(src_real):
        raise InputError(f"{dst}: the output would be written inside the input store {src}")
    sweep_stale(dst)  # before the checks: a killed run's moved-aside output is put back
    if (dst.exists() or dst.is_symlink()) and not overwrite:
        if dst_real == src_real:
            raise InputError(f"{dst}: the output would replace its own input")
        raise InputError(f"{dst}: already exists")
    x, in_layout, meta = open_image(src, layout, chunks)
    weight = np.asarray(weight)
    x = x.astype(weight.dtype) if x.dtype != weight.dtype else x
    y = conv2d(
        x,
        weight,
        bias,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        padding_mode=padding_mode,
        backend=backend,
        device=device,
        algo=algo,
        max_memory=max_memory,
    )
    out_layout = _out_layout(in_layout, y.shape[0])
    y = y[0] if out_layout == "HW" else y.transpose(["CHW".index(a) for a in out_layout])
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file where a folder of the path must be: one line
        blocker = next((q for q in (dst.parent, *dst.parent.parents) if q.is_file()), None)
        why = f"{blocker} is a file" if blocker is not None else (exc.strerror or str(exc))
        raise InputError(f"{dst}: cannot create its folder {dst.parent}: {why}") from exc
    tmp = _aside(dst, "tmp")
    guard = None
    try:
        target = _create(zarr, tmp, y, meta, out_layout, stride)
        if scheduler in _LOCAL_SCHEDULERS:
            guard = target = _Guarded(target)
        da.store(y, target, lock=False, scheduler=scheduler, num_workers=num_workers)
        _publish(tmp, dst, overwrite)
    except BaseException:
        if guard is not None:
            guard.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


# dask's local schedulers: their threads share this process (and its locks)
_LOCAL_SCHEDULERS = ("threads", "threading", "sync", "synchronous", "single-threaded")


class _Guarded:
    """A zarr array whose writes stop once :meth:`close` returns.

    When a task fails (or Ctrl-C), dask's threaded scheduler raises at once while tasks
    already running finish on its threads; their writes would land in the temporary
    store after it was removed. ``close`` waits for writes in progress and turns later
    ones into no-ops, so the removal is final.
    """

    def __init__(self, array: Any) -> None:
        self.array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self._cond = threading.Condition()
        self._writing = 0
        self._closed = False

    def __setitem__(self, key: Any, value: Any) -> None:
        with self._cond:
            if self._closed:
                return
            self._writing += 1
        try:
            self.array[key] = value
        finally:
            with self._cond:
                self._writing -= 1
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.wait_for(lambda: self._writing == 0)


def _create(zarr: Any, path: Path, y: Any, meta: dict, layout: str, stride: IntPair) -> Any:
    """An empty zarr array for ``y`` at ``path`` (level "0" of a group for OME input)."""
    fmt = {"zarr_format": meta["zarr_format"]} if _zarr_major(zarr) >= 3 else {}
    shape, chunks, dtype = tuple(y.shape), _regular(y.chunks), y.dtype
    ome = meta["ome"]
    if ome is None:
        return zarr.open_array(
            store=str(path), mode="w-", shape=shape, chunks=chunks, dtype=dtype, **fmt
        )
    group = zarr.open_group(str(path), mode="w-", **fmt)
    group.attrs.update(_ome_attrs(ome, layout, stride))
    return zarr.open_array(
        store=str(path), path="0", mode="w-", shape=shape, chunks=chunks, dtype=dtype, **fmt
    )


def _axis_name(axis: Any) -> str:
    return axis["name"] if isinstance(axis, dict) else str(axis)


def _transform(t: dict, names: list[str], kept: list[str], sh: int, sw: int) -> dict:
    """One coordinate transformation restricted to ``kept`` axes, scale times stride."""
    t = copy.deepcopy(t)
    for key, fill in (("scale", 1.0), ("translation", 0.0)):
        if len(t.get(key, [])) == len(names):
            values = dict(zip(names, t[key], strict=True))
            if key == "scale":
                values["y"], values["x"] = values["y"] * sh, values["x"] * sw
            t[key] = [values.get(n, fill) for n in kept]
    return t


def _ome_attrs(ome: dict, layout: str, stride: IntPair) -> dict:
    """The input's OME-Zarr attributes, for one level ``"0"`` in the output's axes.

    Axes with one plane that were dropped on reading are dropped here too; a channel
    axis is added where one input channel became several. Scales are multiplied by the
    stride; translations are kept as they are.
    """
    attrs = copy.deepcopy(ome["attrs"])
    multiscales, parent = _multiscales(attrs)
    entry = multiscales[0]
    if ome["axes"] is None:
        # OME-Zarr before 0.3 names no axes and has no transformations: one level "0"
        entry["datasets"] = [{"path": "0"}]
        parent["multiscales"] = [entry]
        return attrs
    axes = list(ome["axes"])
    names = [_axis_name(a) for a in axes]
    kept = ["c", "y", "x"] if layout == "CHW" else ["y", "x"]
    by_name = dict(zip(names, axes, strict=True))
    by_name.setdefault("c", {"name": "c", "type": "channel"})
    entry["axes"] = [by_name[n] for n in kept]
    sh, sw = (stride, stride) if isinstance(stride, int) else tuple(stride)
    level0 = ome["level0"].get("coordinateTransformations", [])
    entry["datasets"] = [
        {
            "path": "0",
            "coordinateTransformations": [_transform(t, names, kept, sh, sw) for t in level0],
        }
    ]
    if "coordinateTransformations" in entry:
        entry["coordinateTransformations"] = [
            _transform(t, names, kept, 1, 1) for t in entry["coordinateTransformations"]
        ]
    parent["multiscales"] = [entry]
    return attrs


def _publish(tmp: Path, dst: Path, overwrite: bool) -> None:
    """Move the finished store into place; an existing ``dst`` only with ``overwrite``.

    An exception at any point (a signal handler raising between two renames) leaves
    either the old ``dst`` or the new one in place, never neither: the rollback looks
    at what is on disk, not at how far the code got.
    """
    if dst.exists() or dst.is_symlink():
        if not overwrite:
            raise InputError(f"{dst}: already exists")
        old = _aside(dst, "old")
        try:
            os.rename(dst, old)
            os.rename(tmp, dst)
            _remove(old)
        except BaseException:
            if os.path.lexists(old):
                if os.path.lexists(dst):  # the new store is in place: the old one goes
                    _remove(old)
                else:
                    os.rename(old, dst)
            raise
        return
    os.rename(tmp, dst)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink()


def _aside(dst: Path, kind: Literal["tmp", "old"]) -> Path:
    """A hidden name beside ``dst`` that tells which process on which machine made it."""
    tag = f"{os.getpid()}-{_host_tag()}-{uuid.uuid4().hex[:12]}"
    return dst.with_name(f".{dst.name}.convcli-{tag}.{kind}")


def sweep_stale(dst: Path) -> None:
    """Remove what a killed run (SIGKILL, power loss) left beside ``dst``.

    Only names of our own pattern for this ``dst`` (see :func:`_aside`), made on this
    machine by a process that is gone: a run still going, here or on another machine
    sharing the folder, is never touched. A ``.tmp`` store is partial and is removed;
    an ``.old`` one is the previous output moved aside for the new one: removed when
    ``dst`` exists, else put back (the run died between the two renames).
    """
    pattern = re.compile(
        rf"\.{re.escape(dst.name)}\.convcli-(\d+)-{_host_tag()}-[0-9a-f]{{12}}\.(tmp|old)"
    )
    try:
        entries = list(os.scandir(dst.parent))
    except OSError:
        return
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        path = Path(entry.path)
        try:
            if m.group(2) == "old" and not os.path.lexists(dst):
                os.rename(path, dst)
            else:
                _remove(path)
        except OSError:  # someone else's cleanup won, or no right to: not ours to fail on
            pass
