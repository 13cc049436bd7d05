"""Weight files <-> arrays: .npy, .npz, .safetensors, torch checkpoints, text and JSON."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from convcli import notes as cnotes
from convcli.budget import check_kernel_shape
from convcli.errors import InputError
from convcli.io._common import check_file, name_of, reason

# Largest weight file we parse as text/JSON; bigger ones belong in .npy.
_MAX_TEXT_BYTES = 64 * 1024 * 1024

# ------------------------------------------------------------------ weight files


def load_weights(
    path: str | os.PathLike[str], *, key: str | None = None, notes: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Load a convolution weight (and optional bias) from a file.

    Parameters
    ----------
    path : str or os.PathLike
        ``.npy`` (weight), ``.npz`` (``weight`` + optional ``bias``), ``.safetensors``
        and torch ``.pt``/``.pth`` state dicts (``key`` picks a prefix: ``conv1`` reads
        ``conv1.weight`` and ``conv1.bias``), ``.txt``/``.csv`` (a matrix: rows on lines,
        values split by commas or spaces, or the kernel-text syntax of
        :func:`convcli.presets.parse_kernel_text`), ``.json`` (a nested list, or an
        object with ``weight`` and optional ``bias``).
    key : str or None
        Tensor name or prefix inside ``.npz``/``.safetensors``/``.pt``.
    notes : list of str, optional
        Receives one line per thing worth telling the user that did not stop the load
        (what torch or NumPy warned about while reading the file).

    Returns
    -------
    (weight, bias)
        float32 arrays; ``weight`` is 2-D ``(kH, kW)`` or 4-D
        ``(C_out, C_in/groups, kH, kW)``; ``bias`` is 1-D or None.

    Raises
    ------
    InputError
        Unreadable file, missing tensor, wrong rank, empty, NaN/Inf or non-numbers.
    """
    path = Path(path)
    caught: list[warnings.WarningMessage] = []
    with cnotes.collect(caught):
        weight, bias = _load_weights(path, key)
    if notes is not None:
        notes.extend(cnotes.text(w) for w in caught)
    return weight, bias


def _load_weights(path: Path, key: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    name = name_of(path)
    check_file(path, "a weight file")
    suffix = path.suffix.lower()
    if key and suffix in (".npy", ".txt", ".csv", ".tsv", ".kernel"):
        # one unnamed kernel: a key meant for another file must not pass unnoticed
        raise InputError(
            f"{name}: a {suffix} file holds one unnamed kernel; key={key!r} picks a tensor "
            "in .npz, .safetensors, .pt or .json files"
        )
    if suffix == ".npy":
        weight, bias = _load_npy_weight(path), None
    elif suffix == ".npz":
        with _load_npz(path) as tensors:  # closes the archive, also on a refusal
            weight, bias = _pick(tensors, key, name)
    elif suffix == ".safetensors":
        with _load_safetensors(path) as tensors:
            weight, bias = _pick(tensors, key, name)
    elif suffix in (".pt", ".pth", ".bin"):
        weight, bias = _load_torch(path, key)
    elif suffix in (".txt", ".csv", ".tsv", ".kernel"):
        weight, bias = _load_text(path), None
    elif suffix == ".json":
        weight, bias = _load_json(path, key)
    else:
        raise InputError(
            f"{name}: unknown weight file type {path.suffix or '(no suffix)'!r}; use .npy, "
            ".npz, .safetensors, .pt, .txt, .csv or .json"
        )
    return _check_weight(weight, bias, name)


def _unnamed_with_key(name: str, what: str, key: str) -> InputError:
    """A key given for a file with nothing to pick: it must not pass unnoticed."""
    return InputError(
        f"{name}: holds one unnamed {what}; key={key!r} picks a named tensor in .npz, "
        ".safetensors, .pt or .json files"
    )


def _as_real_array(value: Any, name: str, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(f"{name}: {what} is not a numeric array ({reason(exc)})") from None
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        if arr.dtype.kind == "c":
            raise InputError(f"{name}: {what} is complex; only real weights are supported")
        raise InputError(f"{name}: {what} is not a numeric array (dtype {arr.dtype})")
    return arr


def _check_weight(weight: Any, bias: Any, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    w = _as_real_array(weight, name, "weight")
    if w.size == 0:
        raise InputError(f"{name}: weight is empty (shape {tuple(w.shape)})")
    check_kernel_shape(w.shape, name)
    if w.ndim == 3:
        raise InputError(
            f"{name}: 3-D weight of shape {tuple(w.shape)} is ambiguous; save it as 2-D "
            "(kH, kW) to apply one kernel to every channel, or 4-D "
            "(C_out, C_in/groups, kH, kW) in torch's layout"
        )
    if w.ndim not in (2, 4):
        raise InputError(
            f"{name}: weight must be 2-D (kH, kW) or 4-D (C_out, C_in/groups, kH, kW), "
            f"got shape {tuple(w.shape)}"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        w32 = w.astype(np.float32)
    if not np.isfinite(w32).all():
        raise InputError(f"{name}: weight contains NaN or Inf (or values beyond float32)")
    b32 = None
    if bias is not None:
        b = _as_real_array(bias, name, "bias")
        if b.ndim == 0:
            b = b.reshape(1)
        if b.ndim != 1:
            raise InputError(f"{name}: bias must be 1-D, got shape {tuple(b.shape)}")
        if w.ndim == 4 and b.shape[0] != w.shape[0]:
            raise InputError(
                f"{name}: bias has {b.shape[0]} values but the weight has "
                f"{w.shape[0]} output channels"
            )
        with np.errstate(over="ignore", invalid="ignore"):
            b32 = b.astype(np.float32)
        if not np.isfinite(b32).all():
            raise InputError(f"{name}: bias contains NaN or Inf (or values beyond float32)")
    return np.ascontiguousarray(w32), b32


def _load_npy_weight(path: Path) -> np.ndarray:
    try:
        # the header first: a kernel over the size cap is refused before it is read
        head = np.load(path, allow_pickle=False, mmap_mode="r")
        if head.ndim >= 2:
            check_kernel_shape(head.shape, name_of(path))
        del head
        return np.load(path, allow_pickle=False)
    except InputError:
        raise
    except Exception as exc:  # ValueError, OSError, EOFError, UnpicklingError...
        raise InputError(f"{name_of(path)}: not a readable .npy array ({reason(exc)})") from None


def _load_npz(path: Path) -> _LazyTensors:
    name = name_of(path)
    archive = None
    try:
        archive = np.load(path, allow_pickle=False)
        names = list(archive.files)
    except Exception as exc:
        if archive is not None:
            archive.close()
        raise InputError(f"{name}: not a readable .npz archive ({reason(exc)})") from None

    def read(key: str) -> np.ndarray:  # only the picked arrays are read
        try:
            return archive[key]
        except Exception as exc:
            raise InputError(f"{name}: not a readable .npz archive ({reason(exc)})") from None

    return _LazyTensors(names, read, archive.close)


class _LazyTensors(Mapping[str, Any]):
    """Tensors by name, each read only when asked for: picking one layer of a large
    checkpoint must not read (and, for BF16, widen to float64) every other tensor.
    Used as a context manager, it closes the file it reads from on leaving."""

    def __init__(
        self, names: list[str], read: Callable[[str], Any], close: Callable[[], Any] | None = None
    ) -> None:
        self._names = names
        self._known = set(names)
        self._read = read
        self._close = close

    def __enter__(self) -> _LazyTensors:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._close is not None:
            self._close()

    def __getitem__(self, name: str) -> Any:
        if name not in self._known:
            raise KeyError(name)
        return self._read(name)

    def __contains__(self, name: object) -> bool:  # Mapping's would read the tensor
        return name in self._known

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _load_safetensors(path: Path) -> _LazyTensors:
    name = name_of(path)
    try:
        from safetensors import safe_open
    except ImportError:
        raise InputError(
            f"{name}: reading .safetensors needs the safetensors package "
            "(pip install 'convcli[safetensors]')"
        ) from None
    try:
        handle = safe_open(os.fspath(path), framework="numpy")
        names = list(handle.keys())
    except Exception as exc:  # safetensors raises its own SafetensorError and others
        raise InputError(f"{name}: not a readable .safetensors file ({reason(exc)})") from None

    def read(key: str) -> Any:
        try:
            return handle.get_tensor(key)
        except Exception as exc:
            odd = _safetensors_dtypes(path, key) & _NO_NUMPY_DTYPES
            if not odd:
                raise InputError(
                    f"{name}: not a readable .safetensors file ({reason(exc)})"
                ) from None
        # BF16 (most published model weights) and FP8 have no NumPy dtype: torch reads them
        kinds = ", ".join(sorted(odd))
        try:
            import torch
        except ImportError:
            raise InputError(
                f"{name}: holds {kinds} tensors, which NumPy cannot hold; install torch "
                "to read them, or save the weights as float32"
            ) from None
        try:
            with safe_open(os.fspath(path), framework="pt") as fh:
                return fh.get_tensor(key).to(torch.float64).numpy()
        except Exception as exc:
            raise InputError(f"{name}: not a readable .safetensors file ({reason(exc)})") from None

    return _LazyTensors(names, read, lambda: handle.__exit__(None, None, None))


# safetensors dtypes that safetensors.numpy cannot load (no NumPy dtype)
_NO_NUMPY_DTYPES = frozenset({"BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2"})


def _safetensors_dtypes(path: Path, key: str | None = None) -> set[str]:
    """The dtypes a .safetensors header names, all or ``key``'s (empty when the header
    is unreadable)."""
    try:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 0 < size <= 100 * 2**20:
                return set()
            header = json.loads(fh.read(size))
        entries = header.values() if key is None else [header.get(key)]
        return {str(v.get("dtype")) for v in entries if isinstance(v, dict)}
    except (OSError, ValueError, AttributeError):
        return set()


def _pick(tensors: Mapping[str, Any], key: str | None, name: str) -> tuple[Any, Any]:
    """Find weight and bias in a name -> tensor mapping (``key`` = name or prefix)."""
    available = ", ".join(sorted(tensors)[:12]) + (" ..." if len(tensors) > 12 else "")
    if key:
        if f"{key}.weight" in tensors:
            return tensors[f"{key}.weight"], tensors.get(f"{key}.bias")
        if key in tensors:
            return tensors[key], None
        raise InputError(f"{name}: no tensor {key!r} or {key + '.weight'!r}; found: {available}")
    if "weight" in tensors:
        return tensors["weight"], tensors.get("bias")
    weights = [k for k in tensors if k.endswith(".weight")]
    if len(weights) == 1:
        prefix = weights[0][: -len(".weight")]
        return tensors[weights[0]], tensors.get(f"{prefix}.bias")
    if len(tensors) == 1:
        return next(iter(tensors.values())), None
    if not tensors:
        raise InputError(f"{name}: holds no tensors")
    raise InputError(f"{name}: holds several tensors, pick one with key=NAME; found: {available}")


def _torch_maps() -> bool:
    """Whether this torch's ``torch.load`` can map a file (``mmap=``, torch 2.1+)."""
    import inspect

    import torch

    return "mmap" in inspect.signature(torch.load).parameters


def _load_torch(path: Path, key: str | None) -> tuple[Any, Any]:
    name = name_of(path)
    try:
        import torch
    except ImportError:
        raise InputError(
            f"{name}: reading torch files needs torch installed; save the weight as "
            ".npy, .npz or .safetensors instead"
        ) from None
    import zipfile

    is_zip = zipfile.is_zipfile(path)  # torch.save writes zip archives since 1.6
    try:
        # a zip archive is mapped, not read: picking one layer of a large checkpoint
        # reads that layer's tensors only (a 528 MB file: 725 MB peak read whole, 221
        # mapped); the legacy format cannot be mapped and is read whole
        mapped = {"mmap": True} if is_zip and _torch_maps() else {}
        obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True, **mapped)
    except Exception as exc:  # pickle, zip and torch errors of every kind
        text = reason(exc)
        if not is_zip:
            raise InputError(f"{name}: not a readable torch file (not a zip archive)") from None
        if "unsupported operand" in str(exc).lower():  # e.g. FRAME (149) of protocol >= 4
            raise InputError(
                f"{name}: written with a pickle protocol that torch's safe loader cannot "
                "read (4 or newer); save it with torch.save(..., pickle_protocol=2) or as "
                ".safetensors"
            ) from None
        if "weights only load failed" in text.lower():
            # A pickled whole model: unpickling it could run arbitrary code.
            raise InputError(
                f"{name}: holds more than tensors (a pickled model?); save its state_dict "
                "(torch.save(model.state_dict(), ...)) and load that"
            ) from None
        raise InputError(f"{name}: not a readable torch file ({text})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]

    def to_numpy(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        if t.layout != torch.strided:  # sparse COO/CSR..., which numpy cannot hold
            raise InputError(
                f"{name}: holds a {str(t.layout).removeprefix('torch.')} tensor; save it "
                "dense (tensor.to_dense()) and load that"
            )
        if t.is_meta:
            raise InputError(
                f"{name}: holds a meta tensor (a shape with no values); save the real one"
            )
        if t.is_nested:
            raise InputError(
                f"{name}: holds a nested tensor (several sizes); save one plain tensor"
            )
        if t.is_quantized:  # its real values: what the quantized layer computes with
            t = t.dequantize()
        try:
            if t.is_complex():
                return t.detach().cpu().numpy()
            return t.detach().cpu().to(torch.float64).numpy()
        except Exception as exc:  # quantized, meta or other tensors with no plain values
            raise InputError(
                f"{name}: a {t.dtype} tensor that cannot be read as numbers ({reason(exc)})"
            ) from None

    if isinstance(obj, torch.Tensor):
        if key:
            raise _unnamed_with_key(name, "tensor", key)
        return to_numpy(obj), None
    if isinstance(obj, dict):
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        weight, bias = _pick(tensors, key, name)
        return to_numpy(weight), to_numpy(bias) if bias is not None else None
    raise InputError(f"{name}: holds a {type(obj).__name__}, not a tensor or state_dict")


def _read_text(path: Path) -> str:
    name = name_of(path)
    try:
        if path.stat().st_size > _MAX_TEXT_BYTES:
            raise InputError(f"{name}: text weight file too large; use .npy")
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{name}: not a text file (not UTF-8)") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {reason(exc)}") from None


def _load_text(path: Path) -> np.ndarray:
    from convcli.presets import _label, parse_kernel_text

    name = name_of(path)
    lines = []
    for line in _read_text(path).splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    if not lines:
        raise InputError(f"{name}: no numbers in the file")
    text = "\n".join(lines)
    try:
        return parse_kernel_text(text)
    except InputError as exc:
        # Re-label: the file name first, then the parser's reason. Cut the parser's own
        # label whole: the quoted kernel text may itself hold ": " ("3x3: 1,2").
        message, label = str(exc), _label(text) + ": "
        reason = message[len(label) :] if message.startswith(label) else message
        raise InputError(f"{name}: {reason}") from None


def _load_json(path: Path, key: str | None) -> tuple[Any, Any]:
    name = name_of(path)
    # read outside the try: its InputError ("cannot read: permission denied", "not
    # UTF-8") is a ValueError, and is not a JSON syntax error
    text = _read_text(path)
    try:
        # integers as floats: Python refuses to convert those of over 4300 digits, and a
        # kernel value is a float anyway (a huge one is then reported as beyond float32)
        obj = json.loads(text, parse_int=float)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise InputError(f"{name}: not valid JSON ({reason(exc)})") from None
    if isinstance(obj, dict):
        return _pick(obj, key, name)
    if isinstance(obj, list):
        if key:
            raise _unnamed_with_key(name, "kernel (a JSON list)", key)
        return _json_array(obj, name), None
    raise InputError(f"{name}: JSON must be a nested list or an object with 'weight'")


def _json_array(value: Any, name: str) -> np.ndarray:
    try:
        arr = np.array(value, dtype=np.float64)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(
            f"{name}: weight is not a rectangular array of numbers ({reason(exc)})"
        ) from None
    return arr
