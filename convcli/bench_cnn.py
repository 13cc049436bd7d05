"""The ``cnn`` suite of ``convcli bench``: the conv layers of public networks, one by one.

A library module: it prints nothing and imports neither click nor rich. The layer shapes
are data (``convcli/data/cnn_layers.json``, made by ``tools/make_cnn_layers.py`` from
torchvision's model definitions); every layer runs as a new user would run it, one
``conv2d`` call per layer, at batch 1 and 8 by default.

Method:

* every system (torch, convcli's OpenCL backend, convcli's NumPy backend) runs in a
  **process of its own**, a worker started with ``python -m convcli.bench_cnn`` and
  driven over a pipe, one request at a time: the thread pools of one system (torch's
  OpenMP, PoCL's workers, NumPy's) never share a process with another's, and a worker
  waits on its pipe while the others run;
* identical layers (the repeated blocks of a network, and layers two networks share)
  are timed once per batch size and count as often as they occur;
* per layer, the systems take turns in ``rounds`` rounds (a slow spell of the machine
  then falls on every system alike); each round is one untimed warm-up call and then
  timed calls; a row gives the median and the minimum of all timed calls;
* before its turn a worker waits until the other workers' threads are idle (none of
  them, read from ``/proc``, has run or waited to run for :data:`IDLE_WINDOW_S`):
  torch's OpenMP threads spin for about 10 ms after its calls return. Each
  row then states what could still have disturbed its timed calls: ``others_cpu_ms``,
  the CPU time the other workers used while they ran (0 when the systems kept out of
  each other's way), and ``queued_pct``, how long the worker's own threads waited for a
  CPU (the load of everything else on the machine);
* every worker writes its first result of a layer to a scratch file; the parent compares
  it with torch's (or, without torch, with convcli's NumPy ``direct`` reference computed
  in the parent): ``max_rel_err = max|y - ref| / max|ref|``, ``ok`` within
  :data:`convcli.bench.TOLERANCE`;
* a network's total is the sum over its conv layers of the median times, each times the
  number of its occurrences; ``ratio`` is torch's time over ours (above 1: convcli is
  faster), per layer and per total.

Inputs and weights come from a seed derived from the layer's shape, so that every
worker builds the same arrays without passing them around.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from convcli.bench import HOST_NOTE, TOLERANCE, _max_rel_err, ran_on_host, rows_to_csv
from convcli.errors import BackendError, ConvTypeError, ConvValueError

DATA_FILE = Path(__file__).resolve().parent / "data" / "cnn_layers.json"
SYSTEMS = ("torch", "convcli-opencl", "convcli-numpy")
REFERENCE = "torch"
# The most seconds a worker waits, before its turn on a layer, for the other workers'
# threads to go idle (torch's OpenMP threads spin for ~10 ms after a call, OpenBLAS's for
# ~0.1 s); where their CPU time cannot be read (no /proc), it waits this long.
SETTLE_S = 0.1
# The other workers count as idle once none of their threads ran or waited to run for
# this long.
IDLE_WINDOW_S = 0.005
# issue 15's targets on every network's conv-layer total: (system, minimum torch/ours)
TARGETS: dict[str, float] = {"convcli-opencl": 1.0, "convcli-numpy": 0.5}

Progress = Callable[..., Any]


@dataclass(frozen=True)
class CnnLayer:
    """One conv layer of a network: torch.nn.Conv2d's arguments and its input size."""

    c_in: int
    c_out: int
    kh: int
    kw: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    h: int
    w: int
    bias: bool
    name: str = field(default="", compare=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CnnLayer:
        return cls(
            c_in=int(d["c_in"]),
            c_out=int(d["c_out"]),
            kh=int(d["kh"]),
            kw=int(d["kw"]),
            stride=_pair(d["stride"]),
            padding=_pair(d["padding"]),
            dilation=_pair(d["dilation"]),
            groups=int(d["groups"]),
            h=int(d["h"]),
            w=int(d["w"]),
            bias=bool(d["bias"]),
            name=str(d.get("name", "")),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def key(self) -> tuple:
        """The shape of the problem (the name left out): equal keys, equal work."""
        return tuple(v for f, v in asdict(self).items() if f != "name")

    def w_shape(self) -> tuple[int, int, int, int]:
        return (self.c_out, self.c_in // self.groups, self.kh, self.kw)

    def options(self) -> dict[str, Any]:
        return {
            "stride": self.stride,
            "padding": self.padding,
            "dilation": self.dilation,
            "groups": self.groups,
        }

    def arrays(self, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Input, weight and bias (float32) from a seed derived from the layer's shape."""
        rng = np.random.default_rng(zlib.crc32(repr((self.key, batch)).encode()))
        x = rng.uniform(-1, 1, (batch, self.c_in, self.h, self.w)).astype(np.float32)
        fan_in = self.c_in // self.groups * self.kh * self.kw
        bound = 1 / math.sqrt(fan_in)
        w = rng.uniform(-bound, bound, self.w_shape()).astype(np.float32)
        b = rng.uniform(-bound, bound, self.c_out).astype(np.float32) if self.bias else None
        return x, w, b

    def problem(self) -> str | None:
        """Why ``conv2d`` would refuse this layer (torch's wording), or None: checked
        where a layer file is read, not after the suite has timed the layers before it
        (a negative size stopped a worker with no word of the file or the layer)."""
        from convcli.spec import make_spec

        sizes = {"c_in": self.c_in, "c_out": self.c_out, "kh": self.kh, "kw": self.kw}
        sizes.update(groups=self.groups, h=self.h, w=self.w)
        for what, value in sizes.items():
            if value < 1:
                return f"{what} must be at least 1, got {value}"
        if self.c_in % self.groups:
            return f"c_in {self.c_in} is not divisible by groups {self.groups}"
        # arrays of the layer's shapes without their memory: only the shapes are read
        x = np.broadcast_to(np.float32(0), (1, self.c_in, self.h, self.w))
        w = np.broadcast_to(np.float32(0), self.w_shape())
        try:
            make_spec(x, w, None, **self.options())
        except (ConvValueError, ConvTypeError) as exc:
            return str(exc)
        return None

    def describe(self) -> str:
        """``96->96 dw 5x5 s2 p2 14^2``-style summary."""
        kind = ""
        if self.groups == self.c_in == self.c_out:
            kind = " dw"
        elif self.groups > 1:
            kind = f" g{self.groups}"
        parts = [f"{self.c_in}->{self.c_out}{kind} {self.kh}x{self.kw}"]
        if self.stride != (1, 1):
            parts.append(f"s{_short(self.stride)}")
        if self.padding != (0, 0):
            parts.append(f"p{_short(self.padding)}")
        if self.dilation != (1, 1):
            parts.append(f"d{_short(self.dilation)}")
        size = f"{self.h}^2" if self.h == self.w else f"{self.h}x{self.w}"
        return " ".join([*parts, size])


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


def _short(p: tuple[int, int]) -> str:
    return str(p[0]) if p[0] == p[1] else f"{p[0]}x{p[1]}"


def load_networks(path: str | Path | None = None) -> tuple[dict[str, list[CnnLayer]], str]:
    """The networks of a layer file made by ``tools/make_cnn_layers.py`` (default: the
    one shipped with convcli) and its ``source`` line (which torchvision and torch made
    it). Raises ConvValueError naming the file when it cannot be read as one."""
    where = DATA_FILE if path is None else Path(path)  # '' is not the shipped file
    try:
        data = json.loads(where.read_text())
        nets = {n: [CnnLayer.from_dict(d) for d in v] for n, v in data["networks"].items()}
    except OSError as exc:
        raise ConvValueError(f"{where}: cannot read the layer file: {exc.strerror}") from exc
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as exc:
        # RecursionError: JSON nested deeper than the parser's recursion limit
        what = f"no {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
        raise ConvValueError(
            f"{where}: not a layer file of tools/make_cnn_layers.py ({what})"
        ) from exc
    if not nets or any(not layers for layers in nets.values()):
        raise ConvValueError(f"{where}: the layer file lists no network or an empty one")
    for name, layers in nets.items():
        for i, layer in enumerate(layers):
            problem = layer.problem()
            if problem is not None:
                what = f" ({layer.name})" if layer.name else ""
                raise ConvValueError(f"{where}: {name} layer {i}{what}: {problem}")
    return nets, str(data.get("source", ""))


# ---------------------------------------------------------------------------------------
# results


@dataclass
class CnnRow:
    """One system on one layer of a network (``layer`` is None on a network's total)."""

    network: str
    batch: int
    layer: int | None  # index among the network's distinct layers, in forward order
    description: str
    count: int  # occurrences of the layer in the network (total: conv layers)
    system: str
    median_ms: float  # per call (total: sum of median x count)
    min_ms: float
    ratio: float | None  # torch's time / ours; None for torch and where torch is missing
    max_rel_err: float | None
    ok: bool
    note: str = ""
    # CPU ms the other systems' workers used while this row's calls were timed
    others_cpu_ms: float | None = None
    # the worker's threads' wait for a CPU during the timed calls, % of their wall time
    queued_pct: float | None = None


@dataclass
class CnnTargetCheck:
    """One issue-15 target read off a run: a network's total against torch's."""

    network: str
    batch: int
    system: str
    target: float
    ratio: float
    ratio_of_mins: float
    met: bool


@dataclass
class CnnResult:
    """What :func:`run_cnn_suite` measured: layer rows, network totals and the workers."""

    rows: list[CnnRow]
    totals: list[CnnRow]
    workers: dict[str, int]  # system -> pid of the process that timed it
    skipped: dict[str, str]  # system -> why it did not run
    source: str

    def slowest(self, system: str, per_network: int = 3) -> list[CnnRow]:
        """Per network and batch, the ``per_network`` layers of ``system`` that lose the
        most time against torch (median x count minus torch's), worst first."""
        by = {(r.network, r.batch, r.layer, r.system): r for r in self.rows}
        out = []
        for net, batch in dict.fromkeys((r.network, r.batch) for r in self.rows):
            mine = [r for r in self.rows if (r.network, r.batch, r.system) == (net, batch, system)]

            def lost(r: CnnRow) -> float:
                ref = by.get((r.network, r.batch, r.layer, REFERENCE))
                return (r.median_ms - ref.median_ms) * r.count if ref else -math.inf

            out += sorted(mine, key=lost, reverse=True)[:per_network]
        return out

    def target_checks(self) -> list[CnnTargetCheck]:
        """Issue 15's targets on every network total that has a torch total beside it."""
        by = {(r.network, r.batch, r.system): r for r in self.totals}
        checks = []
        for r in self.totals:
            goal = TARGETS.get(r.system)
            ref = by.get((r.network, r.batch, REFERENCE))
            if goal is None or ref is None or r.median_ms <= 0 or r.min_ms <= 0:
                continue
            ratio = ref.median_ms / r.median_ms
            low = ref.min_ms / r.min_ms
            met = ratio >= goal and r.ok and ref.ok
            checks.append(CnnTargetCheck(r.network, r.batch, r.system, goal, ratio, low, met))
        return checks

    def to_json(self) -> str:
        return json.dumps(
            {
                "source": self.source,
                "workers": self.workers,
                "skipped": self.skipped,
                "totals": [asdict(r) for r in self.totals],
                "targets": [asdict(c) for c in self.target_checks()],
                "layers": [asdict(r) for r in self.rows],
            },
            indent=2,
        )

    def to_csv(self) -> str:
        """Totals, then layer rows, one CSV table (``layer`` empty on totals)."""
        return rows_to_csv([*self.totals, *self.rows], CnnRow)


# ---------------------------------------------------------------------------------------
# the workers: one process per system


def _cpu_ns(pids: Sequence[int]) -> int | None:
    """CPU time of the processes ``pids`` (all their threads), ns, read from their CPU
    clocks (exact at any moment, unlike /proc's figures, which a running thread updates
    only at the scheduler's tick); None where the system has no such clocks."""
    if not sys.platform.startswith("linux"):
        return None
    total = 0
    for pid in pids:
        try:  # Linux's clock id of a process's CPU clock (CPUCLOCK_SCHED)
            total += time.clock_gettime_ns(((~pid) << 3) | 2)
        except (OSError, OverflowError, AttributeError):
            return None
    return total


def _queued_ns(pid: int) -> int | None:
    """Time the threads of ``pid`` have spent runnable but waiting for a CPU, ns (the
    second field of ``/proc/PID/task/TID/schedstat``); None without it."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as fh:
                total += int(fh.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return total


def _busy(pids: Sequence[int]) -> bool | None:
    """Whether a thread of ``pids`` is running or waiting for a CPU (state R: a spinning
    thread that the scheduler put aside is still busy) or in an uninterruptible wait;
    None where ``/proc`` cannot tell."""
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return None
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat", "rb") as fh:
                    state = fh.read().rpartition(b")")[2].split()[0]
            except (OSError, IndexError):
                continue  # a thread that ended meanwhile
            if state in (b"R", b"D"):
                return True
    return False


def _wait_idle(pids: Sequence[int], limit: float) -> float:
    """Wait until the threads of ``pids`` have been idle (see :func:`_busy`) for
    :data:`IDLE_WINDOW_S`, at most ``limit`` seconds; where ``/proc`` cannot tell, wait
    ``limit``. Returns the seconds waited."""
    t0 = time.perf_counter()
    if limit <= 0 or not pids:
        return 0.0
    quiet_since = t0
    while (now := time.perf_counter()) - t0 < limit:
        busy = _busy(pids)
        if busy is None:
            time.sleep(max(0.0, limit - (now - t0)))
            break
        if busy:
            quiet_since = now
        elif now - quiet_since >= IDLE_WINDOW_S:
            break
        time.sleep(0.0005)
    return time.perf_counter() - t0


class _Worker:
    """A system's process: ``python -m convcli.bench_cnn SYSTEM``, one JSON line per
    request and per reply."""

    def __init__(self, system: str, torch_threads: int | None) -> None:
        env = dict(os.environ)
        # this checkout's convcli, whatever is installed
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        cmd = [sys.executable, "-m", "convcli.bench_cnn", system]
        if torch_threads:
            cmd.append(str(torch_threads))
        self.system = system
        # a file, not a pipe: a worker's warnings cannot fill a pipe nobody reads
        self._log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed by close()
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
        )
        hello = self._read()
        self.pid = int(hello.get("pid", self.proc.pid))
        self.skip = hello.get("skip")

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self._log.seek(0)
            err = self._log.read()
            last = err.strip().splitlines()[-1] if err.strip() else "no output"
            raise BackendError(f"the {self.system} benchmark worker stopped: {last}")
        return json.loads(line)

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


def _system_runner(system: str, torch_threads: int | None):
    """(run(x, w, b, layer) -> (y, note), pid) for ``system`` in this process."""
    if system == "torch":
        import torch
        import torch.nn.functional as F

        if torch_threads:
            torch.set_num_threads(torch_threads)

        def run_torch(x, w, b, layer: CnnLayer):
            with torch.no_grad():
                tx, tw = torch.from_numpy(x), torch.from_numpy(w)
                tb = None if b is None else torch.from_numpy(b)
                y = F.conv2d(tx, tw, tb, layer.stride, layer.padding, layer.dilation, layer.groups)
            return y.numpy(), f"{torch.get_num_threads()} threads"

        return run_torch
    from convcli.api import conv2d
    from convcli.runinfo import RunInfo

    backend = system.removeprefix("convcli-")
    if backend == "opencl":
        from convcli import backends

        backends.get_backend("opencl")  # BackendUnavailable when no device

    def run_convcli(x, w, b, layer: CnnLayer):
        info = RunInfo()
        y = conv2d(x, w, b, backend=backend, info=info, **layer.options())
        note = f"algo={info.algo}" if info.algo else ""
        if ran_on_host(backend, info):
            # its row's note and its network's total say so
            note += " " + HOST_NOTE
        return y, note

    return run_convcli


def _worker_main(argv: Sequence[str]) -> int:
    """The loop of a worker process (see :class:`_Worker`)."""
    system = argv[0]
    threads = int(argv[1]) if len(argv) > 1 else None
    real_stdout = os.dup(1)
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the replies
    out = os.fdopen(real_stdout, "w")

    def reply(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    try:
        run = _system_runner(system, threads)
    except Exception as exc:  # ImportError, BackendUnavailable: the system is skipped
        reply({"pid": os.getpid(), "skip": f"{type(exc).__name__}: {exc}".splitlines()[0]})
        return 0
    reply({"pid": os.getpid()})
    cache: tuple[Any, ...] | None = None
    for line in sys.stdin:
        req = json.loads(line)
        layer = CnnLayer.from_dict(req["layer"])
        batch = int(req["batch"])
        if cache is None or cache[0] != (layer.key, batch):
            cache = ((layer.key, batch), *layer.arrays(batch))
        _, x, w, b = cache
        others = [int(p) for p in req.get("others", ())]
        _wait_idle(others, float(req.get("settle", 0.0)))
        try:
            y, note = run(x, w, b, layer)  # warm-up
            times = []
            cpu0, queued0 = _cpu_ns(others), _queued_ns(os.getpid())
            for _ in range(int(req["runs"])):
                t0 = time.perf_counter()
                y, note = run(x, w, b, layer)
                times.append(time.perf_counter() - t0)
            cpu1, queued1 = _cpu_ns(others), _queued_ns(os.getpid())
            if req.get("save"):
                np.save(req["save"], y)
            got: dict[str, Any] = {"times": times, "note": note}
            if cpu0 is not None and cpu1 is not None:
                got["others_cpu"] = max(0, cpu1 - cpu0) / 1e9
            if queued0 is not None and queued1 is not None:
                got["queued"] = (queued1 - queued0) / 1e9
            reply(got)
        except Exception as exc:  # one layer's failure is reported in its row
            reply({"error": f"{type(exc).__name__}: {exc}".splitlines()[0]})
    return 0


# ---------------------------------------------------------------------------------------
# the suite


def _split(repeat: int, rounds: int) -> list[int]:
    rounds = max(1, min(repeat, rounds))
    return [repeat // rounds + (1 if i < repeat % rounds else 0) for i in range(rounds)]


def _weighted(pairs: Sequence[tuple[float | None, float]]) -> float | None:
    """The mean of the values weighted by the weights; None if a value is missing."""
    if not pairs or any(v is None or w != w for v, w in pairs):
        return None
    weight = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / weight if weight else None  # type: ignore[operator]


def _reference(layer: CnnLayer, batch: int) -> np.ndarray:
    from convcli.api import conv2d

    x, w, b = layer.arrays(batch)
    return conv2d(x, w, b, backend="numpy", algo="direct", **layer.options())


def run_cnn_suite(
    networks: Sequence[str] | Mapping[str, Sequence[CnnLayer]] | None = None,
    batches: Sequence[int] = (1, 8),
    systems: Sequence[str] = SYSTEMS,
    repeat: int = 5,
    rounds: int = 3,
    torch_threads: int | None = 2,
    settle: float = SETTLE_S,
    progress: Progress | None = None,
    layer_file: str | Path | None = None,
) -> CnnResult:
    """Time the conv layers of ``networks`` on each system, each in a process of its own.

    Parameters
    ----------
    networks : sequence of str, or mapping of name to layers, optional
        Names from the shipped layer file (default: all of them), or the layers
        themselves (tests use a small made-up network).
    batches : sequence of int
        Batch sizes; every layer runs at each.
    systems : sequence of {'torch', 'convcli-opencl', 'convcli-numpy'}
        One that cannot start here (torch not importable, no OpenCL device) is skipped
        and named in ``CnnResult.skipped``.
    repeat : int
        Timed calls per system and layer, split over ``rounds`` rounds in which the
        systems take turns; each round starts with an untimed warm-up call.
    torch_threads : int or None
        ``torch.set_num_threads`` in torch's worker (None: torch's default).
    settle : float
        The most seconds a worker waits, before its turn on a layer, for the other
        workers' threads to go idle (where their CPU time cannot be read: the pause).
    progress : callable, optional
        Called with one-line messages as the suite runs.
    layer_file : str or Path, optional
        Where named ``networks`` come from: a file made by ``tools/make_cnn_layers.py``
        (other networks than the shipped ones); default: the shipped file.

    Returns
    -------
    CnnResult
    """
    if repeat < 1:
        raise ConvValueError(f"repeat must be >= 1, got {repeat}")
    if not batches or min(batches) < 1:
        raise ConvValueError(f"batch sizes must be >= 1, got {list(batches)}")
    for s in systems:
        if s not in SYSTEMS:
            raise ConvValueError(f"systems must be among {list(SYSTEMS)}, got {s!r}")
    say = progress or (lambda *args: None)
    source = "given layers"
    if networks is None or not isinstance(networks, Mapping):
        shipped, source = load_networks(layer_file)
        if layer_file is not None:  # the results say which file their networks came from
            source = f"{source} ({Path(layer_file).name})" if source else Path(layer_file).name
        names = list(shipped) if networks is None else list(networks)
        unknown = [n for n in names if n not in shipped]
        if unknown:
            raise ConvValueError(f"unknown network {unknown[0]!r}; known: {list(shipped)}")
        nets = {n: list(shipped[n]) for n in names}
    else:
        nets = {n: list(v) for n, v in networks.items()}

    # distinct layers per network (forward order) and the problems all networks share
    distinct: dict[str, list[tuple[CnnLayer, int]]] = {}
    for name, layers in nets.items():
        counts: dict[tuple, list] = {}
        for layer in layers:
            counts.setdefault(layer.key, [layer, 0])[1] += 1
        distinct[name] = [(layer, n) for layer, n in counts.values()]
    problems = list(
        dict.fromkeys((layer.key, b) for b in batches for v in distinct.values() for layer, _ in v)
    )
    layer_of = {layer.key: layer for v in distinct.values() for layer, _ in v}

    workers: dict[str, _Worker] = {}
    skipped: dict[str, str] = {}
    # (key, batch) -> system -> (times, note, err or None)
    timed: dict[tuple, dict[str, tuple[list[float], str, float | None]]] = {}
    # (key, batch) -> system -> [others' CPU s, own queued s] over its timed calls
    disturbed: dict[tuple, dict[str, list[float | None]]] = {}
    plan = _split(repeat, rounds)
    try:
        for system in dict.fromkeys(systems):
            wk = _Worker(system, torch_threads)
            if wk.skip:
                say(f"{system}: skipped ({wk.skip})")
                skipped[system] = wk.skip
                wk.close()
                continue
            say(f"{system}: worker process {wk.pid}")
            workers[system] = wk
        with tempfile.TemporaryDirectory(prefix="convcli-cnn-") as tmp:
            for i, (key, batch) in enumerate(problems):
                layer = layer_of[key]
                say(f"[{i + 1}/{len(problems)}] N={batch} {layer.describe()}")
                results: dict[str, tuple[list[float], str, float | None]] = {}
                files: dict[str, str] = {}
                errors: dict[str, str] = {}
                seen: dict[str, list[float | None]] = {}
                for k, runs in enumerate(plan):
                    for system, wk in workers.items():
                        if system in errors:
                            continue
                        save = os.path.join(tmp, f"{system}.npy") if k == 0 else None
                        reply = wk.ask(
                            {
                                "layer": layer.to_dict(),
                                "batch": batch,
                                "runs": runs,
                                "save": save,
                                "settle": settle,
                                "others": [w.pid for w in workers.values() if w is not wk],
                            }
                        )
                        if "error" in reply:
                            errors[system] = reply["error"]
                            continue
                        times, note, _ = results.get(system, ([], "", None))
                        results[system] = (times + reply["times"], reply["note"], None)
                        if save:
                            files[system] = save
                        acc = seen.setdefault(system, [0.0, 0.0])
                        for j, name in enumerate(("others_cpu", "queued")):
                            got = reply.get(name)
                            acc[j] = None if got is None or acc[j] is None else acc[j] + got
                ref = (
                    np.load(files[REFERENCE]).astype(np.float64)
                    if REFERENCE in files
                    else _reference(layer, batch).astype(np.float64)
                )
                for system, (times, note, _) in results.items():
                    err = _max_rel_err(np.load(files[system]), ref)
                    results[system] = (times, note, err)
                for system, msg in errors.items():
                    results[system] = ([], msg, None)
                for path in files.values():
                    os.unlink(path)
                timed[(key, batch)] = results
                disturbed[(key, batch)] = seen
    finally:
        for wk in workers.values():
            wk.close()

    rows: list[CnnRow] = []
    totals: list[CnnRow] = []
    for name, layers in distinct.items():
        for batch in batches:
            mine: list[CnnRow] = []
            for index, (layer, count) in enumerate(layers):
                results = timed[(layer.key, batch)]
                for system in workers:
                    times, note, err = results.get(system, ([], "not run", None))
                    ok = bool(times) and err is not None and err <= TOLERANCE
                    med = statistics.median(times) * 1e3 if times else math.nan
                    low = min(times) * 1e3 if times else math.nan
                    others, queued = disturbed[(layer.key, batch)].get(system, (None, None))
                    mine.append(
                        CnnRow(name, batch, index, layer.describe(), count, system, med, low,
                               None, err, ok, note,
                               None if others is None else others * 1e3,
                               None if queued is None or not times else
                               100 * queued / sum(times))
                    )  # fmt: skip
            by = {(r.layer, r.system): r for r in mine}
            for r in mine:
                ref = by.get((r.layer, REFERENCE))
                if r.system != REFERENCE and ref is not None and r.ok and ref.ok:
                    r.ratio = ref.median_ms / r.median_ms
            rows += mine
            for system in workers:
                sel = [r for r in mine if r.system == system]
                tot = sum(r.median_ms * r.count for r in sel)
                low = sum(r.min_ms * r.count for r in sel)
                errs = [r.max_rel_err for r in sel if r.max_rel_err is not None]
                ok = all(r.ok for r in sel)
                n_layers = sum(r.count for r in sel)
                on_host = sum(r.count for r in sel if HOST_NOTE in r.note)
                what = f"{n_layers} conv layers" + (f", {on_host} on the host" if on_host else "")
                others = [r.others_cpu_ms for r in sel]
                queued = [(r.queued_pct, r.median_ms * r.count) for r in sel]
                totals.append(
                    CnnRow(name, batch, None, what, n_layers, system, tot,
                           low, None, max(errs) if errs else None, ok,
                           "" if ok else "some layers failed",
                           None if None in others else sum(others),  # type: ignore[arg-type]
                           _weighted(queued))
                )  # fmt: skip
            tby = {t.system: t for t in totals if (t.network, t.batch) == (name, batch)}
            for system, t in tby.items():
                ref = tby.get(REFERENCE)
                if system != REFERENCE and ref is not None and t.ok and ref.ok and t.median_ms:
                    t.ratio = ref.median_ms / t.median_ms
    pids = {s: w.pid for s, w in workers.items()}
    return CnnResult(rows, totals, pids, skipped, source)


if __name__ == "__main__":  # a worker process (see _Worker)
    sys.exit(_worker_main(sys.argv[1:]))
