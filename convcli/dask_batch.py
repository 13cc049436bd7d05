"""A batch on a Dask cluster: the local plan and per-file work, run on many machines.

The client plans as a local batch does (:func:`convcli.batch.plan_batch`: the same
inputs, refusals and outputs) and decides about existing outputs before anything is
sent. Files then go to the cluster as Dask tasks of one file, or a few while there is
plenty of work (a task costs Dask about as much CPU as a small file), and a worker runs
the local per-file path (:func:`convcli.batch.run_tasks` on one file) on each:

- by default the task gets the input's bytes, not its path: the worker writes them into
  a private temporary folder, converts them there, and returns the encoded output's
  bytes with the file's notes, timings and failure reason. Workers need not see the
  client's files. The client publishes the bytes with the local guarantees
  (:func:`convcli.io.publish.write_bytes`: complete or absent, created only where the
  name is free unless ``existing='replace'``).
- with ``shared_fs`` the task gets the paths, and the worker reads the input and
  publishes the output itself through the same local path (an HPC cluster's shared
  filesystem).

A worker that dies takes no file with it: the scheduler runs its tasks elsewhere (and
``retries`` reruns a task that raised), and a file that fails on a worker is a failure
line in the result, as it is locally. The client keeps a bounded number of files in
flight (twice the cluster's threads in tasks of at most :data:`GROUP_FILES` files, and
a cap on the input bytes held), so a folder of 100,000 files never sits in the scheduler
at once. Stopping (``stop``) cancels the files in flight: only complete files are ever
published, and a rerun with ``existing='skip'`` completes the rest.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future as ThreadFuture
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convcli import batch as cbatch
from convcli import io as cio
from convcli.errors import ConvcliError, InputError, LimitError, OutputExistsError
from convcli.filters import Filter
from convcli.io._common import reason as io_reason
from convcli.io.publish import write_bytes
from convcli.runinfo import RunInfo

LOCAL = "local"
# reruns of a task that raised (a worker that dies is handled by the scheduler itself)
DEFAULT_RETRIES = 2
CONNECT_TIMEOUT_S = 10.0
# tasks in flight per worker thread: one running, one waiting on the worker
IN_FLIGHT_PER_THREAD = 2
# input bytes held in flight (default mode), beyond which no further file is sent
# while another is on its way (one file always goes, however large)
IN_FLIGHT_BYTES = 1 << 30
# files per Dask task at most (see group_size in run_tasks), and their input bytes
GROUP_FILES = 4
GROUP_BYTES = 64 << 20
# groups only while more than this many tasks per thread are left to send
GROUP_SPREAD = 8
# how often the client asks the scheduler how many threads the cluster has (it grows
# and shrinks under adaptive deployments)
_THREADS_EVERY_S = 1.0
_POLL_S = 0.005
_FATAL_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EIO}
)
# schemes distributed's comm layer knows; HOST:PORT alone means tcp
_SCHEMES = ("tcp", "tls", "ucx", "ws", "wss", "inproc")
# A LocalCluster started for one batch shows no dashboard, and its workers run one file
# at a time each: Dask's diagnostics (the workers' statistical profiler sampling every
# thread, a tick in every process, system and memory monitors) and work stealing would
# take CPU the files need, on the machine the files run on.
_LOCAL_CLUSTER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.scheduler.work-stealing": False,
    "distributed.admin.tick.interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "1s",
    # Dask sets MALLOC_TRIM_THRESHOLD_ in its workers to hand memory back often; setting
    # it also stops glibc from raising its mmap threshold, so every image-sized array
    # would be mapped and faulted in afresh (system time on every file)
    "distributed.nanny.pre-spawn-environ": {
        "OMP_NUM_THREADS": 1,
        "MKL_NUM_THREADS": 1,
        "OPENBLAS_NUM_THREADS": 1,
    },
}
# a scheduler or worker without convcli (or another version of it)
_ENVIRONMENT_RE = re.compile(
    r"deserializ|No module named '?convcli|ModuleNotFoundError|cannot import name", re.I
)
_ADDRESS_RE = re.compile(
    r"(?:(?P<scheme>[a-z]+)://)?(?P<host>\[[^\]]+\]|[^\s:/\[\]]+):(?P<port>\d+)"
)


_ENGINE = cbatch.Engine()
_OUTPUT = cbatch.Output()


class ClusterError(ConvcliError):
    """Dask is not installed, an address is malformed, or the scheduler is unreachable."""


# ---------------------------------------------------------------------------- where
@dataclass(frozen=True)
class Cluster:
    """Where a batch runs: a scheduler's address, or a LocalCluster started here.

    ``address`` None starts a LocalCluster of ``n_workers`` worker processes (None:
    one per CPU), one thread each, on loopback; it is closed when the batch ends.
    """

    address: str | None = None
    n_workers: int | None = None

    @property
    def label(self) -> str:
        if self.address is not None:
            return self.address
        return LOCAL if self.n_workers is None else f"{LOCAL}:{self.n_workers}"


def parse_cluster(text: str | None) -> Cluster:
    """``local``, ``local:N``, ``SCHEME://HOST:PORT`` or ``HOST:PORT``; empty or None:
    the address Dask is configured with (``DASK_SCHEDULER_ADDRESS`` or the
    ``scheduler-address`` setting).

    Raises
    ------
    ClusterError
        For a malformed address, a worker count below 1 or above 4 per CPU (at least
        8), or no address configured.
    """
    text = (text or "").strip()
    if not text:
        configured = _configured_address()
        if not configured:
            raise ClusterError(
                "no Dask scheduler address: give one (tcp://HOST:PORT or local[:N]) or set "
                "DASK_SCHEDULER_ADDRESS"
            )
        text = configured
    if text == LOCAL or text.startswith(LOCAL + ":"):
        count = text[len(LOCAL) + 1 :]
        if not count:
            return Cluster()
        if not count.isdigit() or int(count) < 1:
            raise ClusterError(
                f"Dask cluster {text!r}: local:N takes a number of worker processes >= 1"
            )
        most = max(8, 4 * (os.cpu_count() or 1))
        if int(count) > most:
            # each worker is a Python process of its own (about 100 MB before any image):
            # local:100000 would take the machine down before the first file
            raise ClusterError(
                f"Dask cluster {text!r}: local:N starts N worker processes on this machine; "
                f"at most {most} (4 per CPU)"
            )
        return Cluster(n_workers=int(count))
    match = _ADDRESS_RE.fullmatch(text)
    if match is None or (match["scheme"] or "tcp") not in _SCHEMES or int(match["port"]) > 65535:
        raise ClusterError(
            f"Dask scheduler address {text!r} is not one: give SCHEME://HOST:PORT "
            "(e.g. tcp://10.0.0.5:8786) or local[:N]"
        )
    return Cluster(address=text if match["scheme"] else f"tcp://{text}")


def _configured_address() -> str | None:
    try:
        import dask.config
    except ImportError:
        return os.environ.get("DASK_SCHEDULER_ADDRESS") or None
    return dask.config.get("scheduler-address", None) or None


def require_dask() -> Any:
    """The ``distributed`` module, or ClusterError saying how to install it."""
    try:
        import distributed
    except ImportError:
        raise ClusterError(
            "a batch on Dask needs dask and distributed: pip install 'convcli[dask]'"
        ) from None
    return distributed


@contextmanager
def connect(cluster: Cluster | str | None, *, timeout: float = CONNECT_TIMEOUT_S) -> Iterator[Any]:
    """A ``distributed.Client`` for ``cluster`` (see :func:`parse_cluster`); a
    LocalCluster started for it is closed on exit.

    Raises
    ------
    ClusterError
        Dask missing, a malformed address, or no scheduler answering in ``timeout`` s
        (default :data:`CONNECT_TIMEOUT_S`).
    """
    timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
    if not isinstance(cluster, Cluster):
        cluster = parse_cluster(cluster)
    distributed = require_dask()
    import dask.config

    if cluster.address is None:
        with dask.config.set(_LOCAL_CLUSTER_CONFIG):
            try:
                # worker logs (a restarted worker, a lost connection) would break the
                # one-line output; what matters reaches the result as a failure or a
                # fatal reason
                local = distributed.LocalCluster(
                    n_workers=cluster.n_workers or os.cpu_count() or 1,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address="127.0.0.1:0",  # 8787 may be taken: no warning
                    silence_logs=logging.CRITICAL,
                    # imported as each worker starts, as the client's own convcli is
                    # before its batch starts (not during the first file)
                    preload=["convcli.dask_batch"],
                )
            except (OSError, RuntimeError, TimeoutError) as exc:
                raise ClusterError(f"cannot start a local Dask cluster: {_one_line(exc)}") from None
            with local, distributed.Client(local) as client:
                yield client
        return
    try:
        client = distributed.Client(cluster.address, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        why = _one_line(exc)
        if not why or "timed out" in why.lower():
            why = f"no answer in {timeout:g} s"
        where = cluster.address
        raise ClusterError(f"cannot reach the Dask scheduler at {where} ({why})") from None
    except ValueError as exc:
        raise ClusterError(
            f"Dask scheduler address {cluster.address!r}: {_one_line(exc)}"
        ) from None
    with client:
        yield client


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _reason(exc: BaseException) -> str:
    # kept as it is (a file name may hold any character); the CLI escapes what it prints
    return str(exc).strip() or type(exc).__name__


# ---------------------------------------------------------------------------- worker side
@dataclass(frozen=True)
class _Setup:
    """What every file of the batch shares (sent with each task: a filter is small)."""

    filt: Filter
    engine: cbatch.Engine
    output: cbatch.Output
    max_pixels: int | None
    existing: cbatch.Existing


@dataclass(frozen=True)
class _Job:
    """One file for a worker: its bytes and names (default), or its paths (shared_fs).

    Without ``shared_fs`` the client's paths are not sent: the worker cannot open them
    by mistake, and needs no access to them.
    """

    name: str  # the input's file name: the temporary input keeps it (and its suffix)
    out_name: str  # the output's file name: its suffix picks the format
    data: bytes | None = None
    src: str | None = None  # shared_fs only
    dst: str | None = None  # shared_fs only


@dataclass
class _Outcome:
    """What a worker returns for one file."""

    kind: str  # done, skipped or failed
    worker: str
    seconds: float  # the task's wall time on the worker
    data: bytes | None = None  # the encoded output (default mode, done)
    reason: str = ""
    fatal: str | None = None
    notes: tuple[str, ...] = ()
    megapixels: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    info: RunInfo = field(default_factory=RunInfo)
    limit: dict[str, Any] | None = None  # a LimitError's fields (rebuilt on the client)
    names: tuple[str, str] | None = None  # the worker's temporary input and output paths


def _job(task: cbatch.Task, shared_fs: bool) -> _Job:
    """The job for one task: its paths (``shared_fs``), else its bytes and file names."""
    if shared_fs:
        return _Job(task.src.name, task.dst.name, src=str(task.src), dst=str(task.dst))
    try:
        data = task.src.read_bytes()
    except OSError as exc:
        raise InputError(f"{task.src}: cannot read: {io_reason(exc)}") from None
    return _Job(task.src.name, task.dst.name, data=data)


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return "local"


def _scratch(size: int) -> str | None:
    """Where a task keeps its files: memory (``/dev/shm``) when it has room for them,
    else the temporary folder. Each output is published with an fsync, which on a disk
    leaves a one-thread worker idle for milliseconds per file; the client's publish is
    the one that must reach the disk."""
    shm = "/dev/shm"
    try:
        room = shutil.disk_usage(shm).free
    except OSError:
        return None
    # the input, the output (a float .npy is 4 bytes a sample: up to ~16x a JPEG)
    return shm if os.access(shm, os.W_OK) and room > 32 * size + (256 << 20) else None


def _work(job: _Job, setup: _Setup) -> _Outcome:
    """Run the local per-file path on one file (in a worker)."""
    t0 = time.perf_counter()
    if job.data is None:
        assert job.src is not None and job.dst is not None
        outcome = _convert(cbatch.Task(Path(job.src), Path(job.dst)), setup, setup.existing)
    else:
        scratch = _scratch(len(job.data))
        try:
            outcome = _in_folder(job, setup, scratch) if scratch is not None else None
        except OSError:
            outcome = None
        if outcome is None or outcome.fatal is not None:
            # no room in memory (or an output far larger than its input): on disk
            outcome = _in_folder(job, setup, None)
    outcome.seconds = time.perf_counter() - t0
    return outcome


def _in_folder(job: _Job, setup: _Setup, scratch: str | None) -> _Outcome:
    # a private folder per file: two files of one worker never share a name
    assert job.data is not None
    with tempfile.TemporaryDirectory(prefix="convcli-dask-", dir=scratch) as tmp:
        src = Path(tmp, "in", job.name)
        dst = Path(tmp, "out", job.out_name)
        src.parent.mkdir()
        dst.parent.mkdir()
        src.write_bytes(job.data)
        outcome = _convert(cbatch.Task(src, dst), setup, "fail")
        if outcome.kind == "done":
            outcome.data = dst.read_bytes()
        outcome.names = (str(src), str(dst))
    return outcome


def _work_group(jobs: tuple[_Job, ...], setup: _Setup) -> list[_Outcome]:
    """:func:`_work` on each of a few files, in one Dask task."""
    return [_work(job, setup) for job in jobs]


def _convert(task: cbatch.Task, setup: _Setup, existing: cbatch.Existing) -> _Outcome:
    events: list[cbatch.Event] = []
    result = cbatch.run_tasks(
        [task],
        setup.filt,
        engine=setup.engine,
        output=setup.output,
        max_pixels=setup.max_pixels,
        existing=existing,
        workers=1,
        on_event=events.append,
    )
    outcome = _Outcome(
        kind=events[-1].kind if events else "failed",
        worker=_worker_name(),
        seconds=0.0,
        fatal=result.fatal,
        megapixels=result.megapixels,
        timings=dict(result.timings),
        info=result.info,
    )
    if events:
        event = events[-1]
        outcome.notes = tuple(event.notes)
        outcome.reason = event.reason
        if isinstance(event.error, LimitError):
            e = event.error
            outcome.limit = {
                "problem": e.problem,
                "argument": e.argument,
                "value": e.value,
                "name": e.name,
                "need": e.need,
            }
    elif result.failed:
        outcome.reason = result.failed[-1].reason
    else:
        outcome.reason = result.fatal or "not processed"
    return outcome


# ---------------------------------------------------------------------------- client side
@dataclass
class WorkerCount:
    """What one worker did: files, megapixels and the seconds its tasks ran."""

    done: int = 0
    failed: int = 0
    skipped: int = 0
    megapixels: float = 0.0
    busy_s: float = 0.0

    def record(self) -> dict[str, Any]:
        rate = self.done / self.busy_s if self.busy_s > 0 else None
        return {
            "done": self.done,
            "failed": self.failed,
            "skipped": self.skipped,
            "megapixels": round(self.megapixels, 6),
            "busy_s": round(self.busy_s, 6),
            "images_per_s": None if rate is None else round(rate, 3),
        }


@dataclass
class ClusterResult(cbatch.BatchResult):
    """A :class:`convcli.batch.BatchResult` with the cluster's part: where it ran, its
    threads, the Dask tasks sent (files go one to a few a task), the seconds it took to
    start or reach (not in ``timings['total']``), and per-worker counts (keyed by worker
    address; a restarted worker has a new one)."""

    cluster: str = ""
    start_s: float = 0.0
    threads: int = 0
    tasks: int = 0
    workers: dict[str, WorkerCount] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        record = super().summary()
        record["cluster"] = {
            "scheduler": self.cluster,
            "threads": self.threads,
            "tasks": self.tasks,
            "start_s": round(self.start_s, 6),
        }
        record["workers"] = {name: c.record() for name, c in sorted(self.workers.items())}
        return record

    def worker_lines(self) -> list[str]:
        """One line per worker: ``worker ADDRESS: N done, M failed (R images/s busy)``,
        the rate over the seconds its tasks ran."""
        lines = []
        for name, c in sorted(self.workers.items()):
            rate = c.done / c.busy_s if c.busy_s > 0 else 0.0
            line = f"worker {name}: {c.done} done, {c.failed} failed ({rate:.1f} images/s busy)"
            lines.append(line)
        return lines


def _fatal_write(exc: BaseException, dst: Path) -> str | None:
    """The reason to stop when publishing failed in a way every later file would."""
    err: BaseException | None = exc
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno is not None:
            break
        err = err.__cause__ or err.__context__
    if not isinstance(err, OSError) or err.errno not in _FATAL_ERRNOS:
        return None
    code = err.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"{dst.parent}: no space left on the device; stopped (no partial file written)"
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{dst.parent}: output folder is not writable ({os.strerror(code)}); stopped"
    return f"{dst}: {os.strerror(code)}; stopped"


def _publish(task: cbatch.Task, data: bytes, existing: cbatch.Existing) -> float:
    t0 = time.perf_counter()
    folder = task.dst.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        blocker = next((p for p in [folder, *folder.parents] if p.is_file()), folder)
        raise InputError(f"cannot create the output folder {folder}: {blocker} is a file") from exc
    write_bytes(task.dst, data, mode="replace" if existing == "replace" else "create")
    return time.perf_counter() - t0


def run_tasks(
    tasks: Sequence[cbatch.Task],
    filt: Filter,
    *,
    cluster: Cluster | str | Any = None,
    shared_fs: bool = False,
    engine: cbatch.Engine = _ENGINE,
    output: cbatch.Output = _OUTPUT,
    max_pixels: int | None = cio.DEFAULT_MAX_PIXELS,
    existing: cbatch.Existing = "replace",
    in_flight: int | None = None,
    retries: int = DEFAULT_RETRIES,
    timeout: float | None = None,
    stop: threading.Event | None = None,
    on_event: Callable[[cbatch.Event], None] | None = None,
    **_local: Any,
) -> ClusterResult:
    """Run tasks on a Dask cluster as :func:`convcli.batch.run_tasks` runs them here.

    Parameters
    ----------
    tasks, filt, engine, output, max_pixels, existing, stop, on_event
        As for :func:`convcli.batch.run_tasks` (``on_event`` is called in the calling
        thread as files finish on the cluster).
    cluster : Cluster, str, distributed.Client or None
        Where to run: a :class:`Cluster`, its text (:func:`parse_cluster`), or a
        connected client (left open). None: Dask's configured scheduler address.
    shared_fs : bool
        Workers read the inputs and publish the outputs themselves (they must see the
        same paths); by default bytes travel and the client publishes.
    in_flight : int, optional
        Files sent to the cluster and not yet back, one per task (default: twice its
        threads in tasks, each of up to :data:`GROUP_FILES` files).
    retries : int
        Reruns of a task that raised on a worker.
    timeout : float, optional
        Seconds to wait for a scheduler to answer (default :data:`CONNECT_TIMEOUT_S`).
    **_local
        Options of the local run that have no meaning here (``workers``, ``on_rows``).

    Returns
    -------
    ClusterResult

    Raises
    ------
    ClusterError
        Dask missing, a malformed address, an unreachable scheduler.
    """
    stop = stop or threading.Event()
    t_connect = time.perf_counter()
    if cluster is not None and not isinstance(cluster, (Cluster, str)):
        return _run(
            cluster, tasks, filt, shared_fs, engine, output, max_pixels, existing,
            in_flight, retries, stop, on_event, 0.0,
        )  # fmt: skip
    with connect(cluster, timeout=timeout) as client:
        start_s = time.perf_counter() - t_connect
        return _run(
            client, tasks, filt, shared_fs, engine, output, max_pixels, existing,
            in_flight, retries, stop, on_event, start_s,
        )  # fmt: skip


def _run(
    client: Any,
    tasks: Sequence[cbatch.Task],
    filt: Filter,
    shared_fs: bool,
    engine: cbatch.Engine,
    output: cbatch.Output,
    max_pixels: int | None,
    existing: cbatch.Existing,
    in_flight: int | None,
    retries: int,
    stop: threading.Event,
    on_event: Callable[[cbatch.Event], None] | None,
    start_s: float,
) -> ClusterResult:
    from distributed import as_completed

    t_start = time.perf_counter()
    result = ClusterResult(cluster=str(client.scheduler.address), start_s=start_s)
    setup = _Setup(filt, engine, output, max_pixels, existing)
    stage_keys = ("read", "write", "convolve", "upload", "build", "compute", "download")
    timings = dict.fromkeys(stage_keys, 0.0)
    timings["publish"] = 0.0
    pending = deque(tasks)
    flight: dict[Any, tuple[cbatch.Task, int]] = {}  # dask future -> task, bytes held
    held = 0
    writes: deque[tuple[cbatch.Task, ThreadFuture, _Outcome]] = deque()
    ac = as_completed(with_results=True, raise_errors=False)
    run_id = secrets.token_hex(4)
    submitted = 0
    threads_at = -_THREADS_EVERY_S
    cap = 2

    def emit(event: cbatch.Event) -> None:
        if on_event is not None:
            on_event(event)

    def count(outcome: _Outcome | None, kind: str) -> None:
        if outcome is None:  # lost on the way: no worker returned it
            return
        c = result.workers.setdefault(outcome.worker, WorkerCount())
        c.busy_s += outcome.seconds
        if kind == "done":
            c.done += 1
            c.megapixels += outcome.megapixels
        elif kind == "skipped":
            c.skipped += 1
        else:
            c.failed += 1

    def fail(task: cbatch.Task, reason: str, *, quiet=False, error=None) -> None:
        failure = cbatch.Failure(task.src, reason, task.dst)
        result.failed.append(failure)
        emit(cbatch.Event("failed", task, "" if quiet else failure.line(), error=error))

    def skip(task: cbatch.Task) -> None:
        result.skipped.append(task)
        emit(cbatch.Event("skipped", task, "output exists"))

    def should_skip(task: cbatch.Task) -> bool:
        # as the local run decides, before a byte is sent
        if not os.path.lexists(task.dst):
            return False
        if task.dst.is_dir():
            fail(task, f"output {task.dst} is a folder")
        elif existing == "skip":
            skip(task)
        elif existing == "fail":
            fail(
                task,
                f"output {task.dst} exists (pass existing='replace' to replace it, "
                "existing='skip' to keep it)",
            )
        else:
            return False
        return True

    def refresh_cap() -> None:
        nonlocal threads_at, cap
        now = time.perf_counter()
        if in_flight is not None:
            cap = max(1, in_flight)
        elif now - threads_at >= _THREADS_EVERY_S and connected():
            threads_at = now
            threads = sum(client.nthreads().values())
            result.threads = max(result.threads, threads)
            cap = max(2, IN_FLIGHT_PER_THREAD * threads)

    def connected() -> bool:
        """False (and the run stops) once the client has lost the scheduler: every file
        in flight is lost with it, and no other file can be sent."""
        if client.status == "running":
            return True
        if result.fatal is None:
            result.fatal = f"lost the Dask scheduler at {result.cluster}; stopped"
        return False

    def group_size() -> int:
        """Files per task: up to GROUP_FILES while there is work for every thread many
        times over (a task costs Dask milliseconds of CPU on the client and the worker;
        a file about as much as the task), one at a time at the end, so that no thread
        waits on another's last group."""
        if in_flight is not None:
            return 1  # the caller counts files
        spread = GROUP_SPREAD * max(1, result.threads)
        return max(1, min(GROUP_FILES, len(pending) // spread))

    def fill() -> None:
        nonlocal held, submitted
        refresh_cap()
        while pending and len(flight) < cap and not stop.is_set() and result.fatal is None:
            if flight and held >= IN_FLIGHT_BYTES:
                return
            group: list[cbatch.Task] = []
            jobs: list[_Job] = []
            size, most = 0, group_size()
            while pending and len(group) < most and size < GROUP_BYTES:
                task = pending.popleft()
                if should_skip(task):
                    continue
                try:
                    job = _job(task, shared_fs)
                except InputError as exc:
                    fail(task, str(exc))
                    continue
                group.append(task)
                jobs.append(job)
                size += len(job.data or b"")
            if not group:
                continue
            fut = client.submit(
                _work_group, tuple(jobs), setup, key=f"convcli-{run_id}-{submitted}",
                retries=retries,
            )  # fmt: skip
            submitted += 1
            result.tasks = submitted
            held += size
            flight[fut] = (group, size)
            ac.add(fut)

    def mend(outcome: _Outcome, task: cbatch.Task, text: str) -> str:
        """The worker's temporary paths in a message, named as the client's files."""
        if outcome.names is None:
            return text
        src, dst = outcome.names
        return text.replace(dst, str(task.dst)).replace(src, str(task.src))

    def finished(fut: Any, value: Any) -> None:
        nonlocal held
        group, size = flight.pop(fut)
        held -= size
        if isinstance(value, list) and len(value) == len(group):
            for task, outcome in zip(group, value, strict=True):
                finished_file(fut, task, outcome)
        else:
            for task in group:
                finished_file(fut, task, value)

    def finished_file(fut: Any, task: cbatch.Task, value: Any) -> None:
        if not isinstance(value, _Outcome):
            # the task never returned: its workers died (KilledWorker) or it was lost
            count(None, "failed")
            if not connected():
                fail(task, "", quiet=True)
                return
            why = _cluster_reason(fut, value)
            if _ENVIRONMENT_RE.search(why):
                # every file would fail the same way: say it once, and stop
                result.fatal = (
                    f"the Dask cluster at {result.cluster} cannot run convcli's tasks ({why}); "
                    "install this convcli version where the scheduler and workers run"
                )
                fail(task, "", quiet=True)
                return
            fail(task, f"{task.src}: lost on the cluster: {why}")
            return
        for key in stage_keys:
            timings[key] += value.timings.get(key, 0.0)
        result.info.add(value.info)
        if value.fatal is not None:
            count(value, "failed")
            if result.fatal is None:
                result.fatal = mend(value, task, value.fatal)
            fail(task, mend(value, task, value.reason or value.fatal), quiet=True)
            return
        if value.kind == "failed":
            count(value, "failed")
            error = None
            if value.limit is not None:
                fields = dict(value.limit)
                if fields["name"] is not None:
                    fields["name"] = mend(value, task, fields["name"])
                error = LimitError(fields.pop("problem"), **fields)
            fail(task, mend(value, task, value.reason), error=error)
            return
        if value.kind == "skipped":
            count(value, "skipped")
            skip(task)
            return
        if value.data is None:  # shared_fs: the worker published it
            done(task, value)
            return
        writes.append((task, writer.submit(_publish, task, value.data, existing), value))
        value.data = None  # the writer holds the bytes

    def done(task: cbatch.Task, outcome: _Outcome) -> None:
        count(outcome, "done")
        result.done.append(task)
        result.megapixels += outcome.megapixels
        notes = tuple(mend(outcome, task, n) for n in outcome.notes)
        result.notes.extend((task.src, n) for n in notes)
        emit(cbatch.Event("done", task, megapixels=outcome.megapixels, notes=notes))

    def finish_write(task: cbatch.Task, job: ThreadFuture, outcome: _Outcome) -> None:
        try:
            timings["publish"] += job.result()
        except OutputExistsError:  # another process wrote it while we worked
            count(outcome, "skipped" if existing == "skip" else "failed")
            if existing == "skip":
                skip(task)
            else:
                fail(
                    task, f"output {task.dst} exists: another run wrote it meanwhile; not replaced"
                )
            return
        except Exception as exc:  # every failure becomes a report line
            count(outcome, "failed")
            fatal = _fatal_write(exc, task.dst)
            if fatal is not None and result.fatal is None:
                result.fatal = fatal
            fail(task, fatal or _reason(exc), quiet=fatal is not None)
            return
        done(task, outcome)

    def take() -> int:
        """Handle the files back from the cluster; returns how many. (The futures are
        released on return: the scheduler forgets a file as soon as it is handled.)"""
        if not ac.has_ready():
            return 0
        ready = ac.next_batch(block=False)
        for fut, value in ready:
            if fut in flight:
                finished(fut, value)
        return len(ready)

    def drain_writes(block_over: int) -> None:
        while writes and (len(writes) > block_over or writes[0][1].done()):
            finish_write(*writes.popleft())

    # publishing is file I/O and an fsync per file: threads keep it off the loop
    with ThreadPoolExecutor(4, thread_name_prefix="convcli-publish") as writer:
        try:
            fill()
            while (flight or writes) and not stop.is_set() and result.fatal is None:
                if not connected():
                    break
                got = take()
                drain_writes(block_over=cap)
                fill()
                if not got:
                    if not flight and writes:
                        drain_writes(block_over=0)
                    else:
                        stop.wait(_POLL_S)
        finally:
            # stopped, a fatal failure, or an abort: files in flight are dropped (nothing
            # of theirs was published); results already back are published, each whole
            if result.fatal is None:
                take()
            if flight and client.status == "running":
                client.cancel(list(flight))
                flight.clear()
            drain_writes(block_over=0)
    finished_n = len(result.done) + len(result.skipped) + len(result.failed)
    result.interrupted = stop.is_set() and finished_n < len(tasks)
    timings["total"] = time.perf_counter() - t_start
    result.timings = timings
    return result


def _cluster_reason(fut: Any, value: Any) -> str:
    exc = value if isinstance(value, BaseException) else None
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], BaseException):
        exc = value[1]  # (type, exception, traceback) from an errored task
    if exc is None:
        try:
            exc = fut.exception(timeout=0)
        except Exception as err:  # cancelled, or the client lost the scheduler
            exc = err
    text = _one_line(exc) if exc is not None else ""
    return f"{type(exc).__name__}: {text}" if exc is not None and text else (text or "unknown")
