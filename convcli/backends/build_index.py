"""What ``backend='auto'`` knows about OpenCL before starting it: an on-disk index.

Starting OpenCL costs a context (0.1-0.3 s on PoCL, more with pyopencl's import), and
every program a run needs is either fetched from the driver's binary cache (PoCL's
kernel cache, pyopencl's for other drivers: tens of ms) or compiled (PoCL about 1.5 s a
kernel here, Mesa's rusticl 10 s and more). Neither can be asked without importing
pyopencl and opening the device, which is what a small job must not pay. So the OpenCL
backend writes down what it learns, and the cost model (:mod:`convcli.backends.choice`)
reads it:

- ``devices/<request>.json``: for a device request (the ``device`` argument and the
  environment that picks a device), the device it resolved to: a fingerprint (platform,
  device, driver versions), whether it is a CPU, its local memory, how long start-up and
  a compile took, and how many programs built without a marker were compiled rather
  than loaded from the driver's cache (a cache filled before the index, after an upgrade
  for instance: the model then learns that a missing marker rarely means a compile);
- ``built/<key>``: an empty marker per program built on a device, keyed by the device's
  fingerprint, the program's complete source and its build options, so a marker is
  found exactly when the driver's cache holds that binary (unless the driver's cache was
  emptied or is off: then one build happens that the model did not count, once).

The folder is ``$CONVCLI_CACHE_DIR``, else ``$XDG_CACHE_HOME/convcli``, else
``~/.cache/convcli``. Nothing here imports pyopencl; every failure to read or write the
index is silent (the model then assumes a cold start).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

CACHE_ENV = "CONVCLI_CACHE_DIR"
# what picks the device when none is named (see convcli.backends.opencl.device) and
# which drivers are visible
_REQUEST_ENV = ("CONVCLI_DEVICE", "PYOPENCL_CTX", "OCL_ICD_VENDORS", "OCL_ICD_FILENAMES")
_VERSION = "1"  # bump when the meaning of a key changes
# what the index's answers in this process depend on: the environment that picks its
# folder and the device, and a count of this process's writes (see :func:`state`)
_STATE_ENV = ("CONVCLI_CACHE_DIR", "XDG_CACHE_HOME", "HOME", *_REQUEST_ENV)
_writes = 0
# os.environ.get of an unset name raises and catches a KeyError inside (5 us for the
# seven names); CPython's environ keeps its encoded items in a plain dict, read directly
# where it is there (writes through os.environ, monkeypatch's included, update it)
_ENV_ITEMS = getattr(os.environ, "_data", None)
_ENV_KEYS = None
if isinstance(_ENV_ITEMS, dict) and hasattr(os.environ, "encodekey"):
    _ENV_KEYS = tuple(os.environ.encodekey(k) for k in _STATE_ENV)


def state() -> tuple:
    """What this process's answers from the index depend on: equal states give equal
    answers (a decision made from them can be kept), a write here changes the state."""
    if _ENV_KEYS is not None:
        return (_writes, *map(_ENV_ITEMS.get, _ENV_KEYS))
    return (_writes, *map(os.environ.get, _STATE_ENV))


def _wrote() -> None:
    global _writes
    _writes += 1


def cache_dir() -> Path:
    """The index folder (not created here)."""
    own = os.environ.get(CACHE_ENV)
    if own:
        return Path(own)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "convcli"


def _digest(*parts: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in (_VERSION, *parts):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


def request_key(device: str | None) -> str:
    """The device request: the ``device`` argument and the environment that resolves it."""
    env = [f"{k}={os.environ.get(k, '')}" for k in _REQUEST_ENV]
    return _digest(str(device), *env)


@dataclass(frozen=True)
class DeviceRecord:
    """What a device request resolved to, and what starting and building cost there."""

    fingerprint: str
    label: str
    is_cpu: bool
    local_mem: int
    startup_s: float | None  # None: not measured (not the process's first start)
    build_s: float | None = None  # mean of the compiles seen, None: none seen
    builds: int = 0  # how many went into build_s
    # programs built without a marker, and how many of those the driver compiled (the
    # rest came from its cache, filled before this index knew of them): the chance that
    # a program without a marker needs a compile
    unmarked: int = 0
    compiled: int = 0

    def compile_chance(self) -> float:
        """Chance that a program without a marker is compiled (Laplace's rule)."""
        return (self.compiled + 1) / (self.unmarked + 2)


def _device_path(request: str) -> Path:
    return cache_dir() / "devices" / f"{request}.json"


# records read in this process, by (folder, request): a small call must not read a file
_READ: dict[tuple[Path, str], DeviceRecord | None] = {}


def load_device(device: str | None) -> DeviceRecord | None:
    """The record of the device ``device`` (and the environment) resolved to last time
    (read once per process; this process's own updates are seen)."""
    where = (cache_dir(), request_key(device))
    if where in _READ:
        return _READ[where]
    try:
        data = json.loads(_device_path(where[1]).read_text(encoding="utf-8"))
        record = DeviceRecord(**data)
    except (OSError, ValueError, TypeError):
        record = None
    _READ[where] = record
    return record


def _store(device: str | None, record: DeviceRecord) -> None:
    request = request_key(device)
    _READ[(cache_dir(), request)] = record
    _wrote()
    _write_atomic(_device_path(request), json.dumps(asdict(record)))


def _write_atomic(path: Path, text: str) -> None:
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)


def save_device(device: str | None, record: DeviceRecord) -> None:
    """Remember what ``device`` resolved to (keeping the build time learnt before on the
    same device)."""
    old = load_device(device)
    if old is not None and old.fingerprint == record.fingerprint:
        learnt = ["build_s", "builds", "unmarked", "compiled"]
        if record.startup_s is None:
            learnt.append("startup_s")
        record = DeviceRecord(**{**asdict(record), **{k: getattr(old, k) for k in learnt}})
    _store(device, record)


def note_build(device: str | None, fingerprint: str, seconds: float, compiled: bool) -> None:
    """Count a build of a program without a marker; a ``compiled`` one's ``seconds`` go
    into the record's mean build time."""
    old = load_device(device)
    if old is None or old.fingerprint != fingerprint:
        return
    new = asdict(old)
    new["unmarked"] += 1
    if compiled:
        n = min(old.builds, 19)  # a running mean over about the last 20 compiles
        new["build_s"] = seconds if old.build_s is None else (old.build_s * n + seconds) / (n + 1)
        new["builds"] += 1
        new["compiled"] += 1
    _store(device, DeviceRecord(**new))


def program_key(fingerprint: str, source: str, options: list[str] | tuple[str, ...]) -> str:
    """The key of a program: device fingerprint, complete source, build options."""
    return _digest(fingerprint, hashlib.blake2b(source.encode()).hexdigest(), *options)


def _marker(key: str) -> Path:
    return cache_dir() / "built" / key[:2] / key[2:]


def driver_cache_off() -> bool:
    """Whether the driver's binary cache is switched off: every process compiles."""
    return os.environ.get("POCL_KERNEL_CACHE") == "0" or bool(os.environ.get("PYOPENCL_NO_CACHE"))


def is_built(key: str) -> bool:
    """Whether a program with ``key`` was built on this machine (its binary cached)."""
    if driver_cache_off():
        return False
    return _marker(key).exists()


def mark_built(key: str) -> None:
    """Record that the program ``key`` was built (its binary is in the driver's cache)."""
    path = _marker(key)
    _wrote()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def regret_key(keys: list[str]) -> str:
    """The account of a set of uncached programs (see :mod:`convcli.backends.choice`)."""
    return _digest(*sorted(keys))


def _regret_path(account: str) -> Path:
    return cache_dir() / "regret" / account


def add_regret(account: str, seconds: float) -> float:
    """Add ``seconds`` to ``account``; returns the new total (0 after a failed read)."""
    path = _regret_path(account)
    try:
        total = float(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        total = 0.0
    total += max(0.0, seconds)
    _write_atomic(path, repr(total))
    return total


def clear_regret(account: str) -> None:
    """Close ``account`` (its programs are being built)."""
    with contextlib.suppress(OSError):
        _regret_path(account).unlink(missing_ok=True)
