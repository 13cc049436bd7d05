"""``batch`` on a Dask cluster: a real scheduler and worker processes on loopback,
checked file by file against a local batch of the same plan."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

distributed = pytest.importorskip("distributed")

from convcli import batch as cbatch  # noqa: E402
from convcli import dask_batch  # noqa: E402
from convcli import io as cio  # noqa: E402
from convcli.cli import cli  # noqa: E402
from convcli.filters import Filter  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHILD_ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
BOX3 = Filter(weight=np.full((3, 3), 1 / 9, np.float32))


def _cluster(n: int = 2):
    return distributed.LocalCluster(
        n_workers=n,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=50,
    )


@pytest.fixture(scope="module")
def client():
    with _cluster() as cluster, distributed.Client(cluster) as c:
        yield c


def real_image(seed: int, shape=(3, 24, 32)) -> np.ndarray:
    from PIL import Image

    names = ["astronaut.png", "coffee.png", "camera.png", "horse.png"]
    with Image.open(ROOT / "samples" / names[seed % 4]) as im:
        im = im.convert("RGB" if shape[0] == 3 else "L")
        h, w = shape[1:]
        x0, y0 = 20 + 7 * seed % 200, 30 + 5 * seed % 150
        arr = np.asarray(im.crop((x0, y0, x0 + w, y0 + h)), np.float32) / 255
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)


def make_tree(root: Path) -> None:
    """Good images of several kinds (8/16-bit, gray, RGBA, JPEG, GIF) and broken files."""
    (root / "sub").mkdir(parents=True)
    cio.write_image(root / "a.png", real_image(0))
    cio.write_image(root / "b.jpg", real_image(1), quality=95)
    cio.write_image(root / "gray.png", real_image(2, (1, 20, 18)))
    cio.write_image(root / "sub" / "c16.png", real_image(3), bit_depth=16)
    rgba = np.concatenate([real_image(4), np.linspace(0, 1, 32, dtype=np.float32)[None, None]
                           .repeat(24, 1)])  # fmt: skip
    cio.write_image(root / "sub" / "rgba.png", rgba)
    from PIL import Image

    Image.fromarray((real_image(5)[0] * 255).astype(np.uint8)).save(root / "g.gif")
    png = (root / "a.png").read_bytes()
    (root / "empty.png").write_bytes(b"")
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "sub" / "text.jpg").write_text("this is not a JPEG\n")


def plan(tmp_path: Path, out: str, n: int | None = None) -> list[cbatch.Task]:
    src = tmp_path / "in"
    if n is not None and not src.exists():
        src.mkdir()
        for i in range(n):
            cio.write_image(src / f"{i:03d}.png", real_image(i, (3, 40, 48)))
    return cbatch.plan_batch(src, tmp_path / out, recursive=True).tasks


def names(items) -> set[str]:
    return {Path(getattr(t, "src", getattr(t, "path", t))).name for t in items}


def assert_same_outputs(a: cbatch.BatchResult, b: cbatch.BatchResult) -> None:
    """Same files done, each within one level of its output's bit depth."""
    assert names(a.done) == names(b.done)
    for ta, tb in zip(sorted(a.done, key=str), sorted(b.done, key=str), strict=True):
        ia, ib = cio.read_image(ta.dst), cio.read_image(tb.dst)
        assert ta.dst.name == tb.dst.name
        assert (ia.data.shape, ia.bit_depth, ia.mode) == (ib.data.shape, ib.bit_depth, ib.mode)
        level = 1 / (2**ia.bit_depth - 1) + 1e-6
        assert float(np.max(np.abs(ia.data - ib.data))) <= level, ta.dst


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob(".*") if p.is_file()]


# ---------------------------------------------------------------------------- addresses
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("local", dask_batch.Cluster()),
        ("local:3", dask_batch.Cluster(n_workers=3)),
        ("tcp://10.0.0.5:8786", dask_batch.Cluster("tcp://10.0.0.5:8786")),
        ("sched.example.org:8786", dask_batch.Cluster("tcp://sched.example.org:8786")),
        ("tls://[::1]:8786", dask_batch.Cluster("tls://[::1]:8786")),
    ],
)
def test_cluster_addresses(text, expected):
    assert dask_batch.parse_cluster(text) == expected


@pytest.mark.parametrize("text", ["local:0", "local:x", "foo", "http://h:1", "tcp://h", "h:99999"])
def test_bad_cluster_addresses_are_refused(text):
    with pytest.raises(dask_batch.ClusterError, match="local"):
        dask_batch.parse_cluster(text)


def test_a_local_cluster_of_absurd_size_is_refused(monkeypatch):
    """local:99999999999999999999 began starting worker processes (each a Python
    interpreter) until killed; the count is capped at 4 per CPU, at least 8."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert dask_batch.parse_cluster("local:8") == dask_batch.Cluster(n_workers=8)
    for text in ("local:9", "local:99999999999999999999"):
        with pytest.raises(dask_batch.ClusterError, match=r"at most 8 \(4 per CPU\)"):
            dask_batch.parse_cluster(text)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert dask_batch.parse_cluster("local:64") == dask_batch.Cluster(n_workers=64)


def test_no_address_takes_the_one_dask_is_configured_with():
    import dask

    with dask.config.set({"scheduler-address": "tcp://127.0.0.9:8786"}):
        assert dask_batch.parse_cluster(None) == dask_batch.Cluster("tcp://127.0.0.9:8786")
    with (
        dask.config.set({"scheduler-address": None}),
        pytest.raises(dask_batch.ClusterError, match="DASK_SCHEDULER_ADDRESS"),
    ):
        dask_batch.parse_cluster("")


# ---------------------------------------------------------------------------- results
def test_same_results_as_a_local_batch(client, tmp_path):
    make_tree(tmp_path / "in")
    tasks = plan(tmp_path, "local")
    opts = {"engine": cbatch.Engine("numpy"), "output": cbatch.Output(bit_depth=16)}
    local = cbatch.run_tasks(tasks, BOX3, **opts)
    events: list[cbatch.Event] = []
    remote = dask_batch.run_tasks(
        plan(tmp_path, "dask"), BOX3, cluster=client, on_event=events.append, **opts
    )  # fmt: skip
    assert len(local.done) == 6 and len(local.failed) == 3
    assert_same_outputs(local, remote)
    assert names(local.failed) == names(remote.failed)
    # reasons and notes name the client's files, not a worker's temporary copy
    local_reasons = sorted(f.line().replace("/local/", "/OUT/") for f in local.failed)
    assert local_reasons == sorted(f.line().replace("/dask/", "/OUT/") for f in remote.failed)
    assert sorted((p.name, n) for p, n in local.notes) == sorted(
        (p.name, n) for p, n in remote.notes
    )
    assert any("JPEG holds 8 bits" in n for _, n in remote.notes)
    # one event per file, in the calling thread; per-worker counts add up
    assert len(events) == len(tasks) and {e.kind for e in events} == {"done", "failed"}
    summary = remote.summary()
    workers = summary["workers"]
    assert sum(w["done"] for w in workers.values()) == 6
    assert sum(w["failed"] for w in workers.values()) == 3
    assert set(workers) <= set(client.nthreads())
    assert summary["cluster"]["threads"] == 2
    assert remote.megapixels == pytest.approx(local.megapixels)
    assert no_temp_files(tmp_path / "dask")


def test_files_in_groups_are_the_same(client, tmp_path):
    """Many small files go a few per task; each is still its own result."""
    tasks = plan(tmp_path, "dask", 60)
    remote = dask_batch.run_tasks(tasks, BOX3, cluster=client)
    local = cbatch.run_tasks(plan(tmp_path, "local"), BOX3)
    assert remote.tasks < 60 and remote.summary()["cluster"]["tasks"] == remote.tasks
    assert_same_outputs(local, remote)
    assert sum(w["done"] for w in remote.summary()["workers"].values()) == 60


def test_shared_fs_mode_is_the_same(client, tmp_path):
    make_tree(tmp_path / "in")
    local = cbatch.run_tasks(plan(tmp_path, "local"), BOX3, engine=cbatch.Engine("numpy"))
    remote = dask_batch.run_tasks(
        plan(tmp_path, "dask"), BOX3, cluster=client, shared_fs=True,
        engine=cbatch.Engine("numpy"),
    )  # fmt: skip
    assert_same_outputs(local, remote)
    assert sorted(f.line().replace("/local/", "/X/") for f in local.failed) == sorted(
        f.line().replace("/dask/", "/X/") for f in remote.failed
    )


@pytest.mark.parametrize("existing", ["skip", "fail", "replace"])
def test_existing_outputs_as_a_local_batch(client, tmp_path, existing):
    tasks = plan(tmp_path, "out", 5)
    old = b"not an image, but somebody's file"
    for t in tasks[:2]:
        t.dst.parent.mkdir(exist_ok=True)
        t.dst.write_bytes(old)
    res = dask_batch.run_tasks(tasks, BOX3, cluster=client, existing=existing)
    kept = [t.dst.read_bytes() == old for t in tasks[:2]]
    if existing == "skip":
        assert names(res.skipped) == names(tasks[:2]) and all(kept)
        assert names(res.done) == names(tasks[2:])
    elif existing == "fail":
        assert names(res.failed) == names(tasks[:2]) and all(kept)
        assert all("exists" in f.reason for f in res.failed)
    else:
        assert names(res.done) == names(tasks) and not any(kept)
        assert cio.read_image(tasks[0].dst).data.shape == (3, 40, 48)


def test_workers_that_cannot_read_the_input_folder(client, tmp_path):
    """An audit hook in every worker refuses to open anything under the input folder:
    the default mode still works (bytes travel), the shared-filesystem mode cannot."""
    tasks = plan(tmp_path, "out", 4)
    forbidden = str(tmp_path / "in")

    def forbid(prefix):
        import builtins

        blocked = builtins.__dict__.setdefault("_convcli_test_forbidden", [])
        if not blocked:

            def hook(event, args):
                if event in ("open", "os.scandir", "os.listdir") and args and args[0]:
                    path = os.fsdecode(args[0]) if not isinstance(args[0], int) else ""
                    if any(os.path.abspath(path).startswith(p) for p in blocked):
                        raise PermissionError(13, "blocked by the test", path)

            sys.addaudithook(hook)
        blocked.append(prefix)

    client.run(forbid, forbidden)
    res = dask_batch.run_tasks(tasks, BOX3, cluster=client)
    assert names(res.done) == names(tasks) and not res.failed
    shared = dask_batch.run_tasks(plan(tmp_path, "shared"), BOX3, cluster=client, shared_fs=True)
    assert not shared.done and len(shared.failed) == 4
    assert all("blocked by the test" in f.reason for f in shared.failed)


def test_jobs_do_not_carry_the_clients_paths(tmp_path):
    """What a worker gets by default: file names and bytes, never the client's path."""
    import pickle

    task = plan(tmp_path, "out", 1)[0]
    sent = pickle.dumps(dask_batch._job(task, shared_fs=False))
    assert str(tmp_path).encode() not in sent and task.src.read_bytes() in sent
    assert str(task.src).encode() in pickle.dumps(dask_batch._job(task, shared_fs=True))


# ---------------------------------------------------------------------------- failures
def test_a_killed_worker_loses_no_file(client, tmp_path, monkeypatch):
    """SIGKILL a worker process while it runs a file: its files run elsewhere, every
    output is written whole and equals the local result. Files go in groups, so that a
    lost task holds several."""
    monkeypatch.setattr(dask_batch, "GROUP_SPREAD", 1)
    tasks = plan(tmp_path, "dask", 12)
    for t in tasks:  # about 0.1 s a file: the batch is still running when the kill lands
        cio.write_image(t.src, real_image(int(t.src.stem), (3, 120, 150)))
    slow = Filter(weight=np.random.default_rng(0).random((11, 11)).astype(np.float32) / 60)
    engine = cbatch.Engine("numpy", algo="direct")
    killed: list[int] = []
    pids = client.run(os.getpid)

    def on_event(event):
        busy = [w for w, keys in client.processing().items() if keys]
        if event.kind == "done" and busy and not killed:
            os.kill(pids[busy[0]], signal.SIGKILL)
            killed.append(pids[busy[0]])

    res = dask_batch.run_tasks(tasks, slow, cluster=client, engine=engine, on_event=on_event)
    client.wait_for_workers(2, timeout=60)  # the nanny restarts it (for the next tests)
    after = set(client.run(os.getpid).values())
    assert killed and killed[0] not in after
    assert res.tasks < len(tasks)
    assert not res.failed and names(res.done) == names(tasks), [f.line() for f in res.failed]
    local = cbatch.run_tasks(plan(tmp_path, "local"), slow, engine=engine)
    assert_same_outputs(local, res)
    assert no_temp_files(tmp_path / "dask")


def test_stop_then_resume(client, tmp_path):
    """A stop leaves only whole outputs; a rerun that skips existing outputs finishes."""
    tasks = plan(tmp_path, "out", 12)
    stop = threading.Event()

    def on_event(event):
        if event.kind == "done":
            stop.set()

    first = dask_batch.run_tasks(tasks, BOX3, cluster=client, stop=stop, on_event=on_event)
    assert first.interrupted and 1 <= len(first.done) < 12
    written = sorted((tmp_path / "out").iterdir())
    assert names(written) == names(first.done) and no_temp_files(tmp_path / "out")
    second = dask_batch.run_tasks(tasks, BOX3, cluster=client, existing="skip")
    assert names(second.skipped) == names(first.done)
    assert names(second.done) | names(first.done) == names(tasks) and second.ok
    local = cbatch.run_tasks(plan(tmp_path, "local"), BOX3)
    merged = cbatch.BatchResult(done=[*first.done, *second.done])
    assert_same_outputs(local, merged)


def test_a_full_disk_on_the_client_stops_the_run(client, tmp_path, monkeypatch):
    """Publishing fails for every file alike: one fatal reason, nothing partial."""
    import errno

    from convcli.errors import InputError

    tasks = plan(tmp_path, "out", 8)

    def full(path, data, **kw):
        raise InputError(f"{path}: cannot write") from OSError(errno.ENOSPC, "no space")

    monkeypatch.setattr(dask_batch, "write_bytes", full)
    res = dask_batch.run_tasks(tasks, BOX3, cluster=client)
    assert res.fatal is not None and "no space left" in res.fatal
    assert not res.done and 1 <= len(res.failed) < 8 + 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


class _MaxTasks(distributed.diagnostics.plugin.SchedulerPlugin):
    """Counts the batch's tasks the scheduler holds at once."""

    name = "convcli-max-tasks"

    def __init__(self):
        self.most = 0

    async def start(self, scheduler):
        self.scheduler = scheduler

    def transition(self, key, start, finish, *args, **kwargs):
        held = sum(1 for k in self.scheduler.tasks if str(k).startswith("convcli-"))
        self.most = max(self.most, held)


def test_backpressure_bounds_the_files_in_the_scheduler(client, tmp_path):
    tasks = plan(tmp_path, "out", 30)

    def install(dask_scheduler):
        dask_scheduler.add_plugin(_MaxTasks(), name=_MaxTasks.name)
        dask_scheduler.plugins[_MaxTasks.name].scheduler = dask_scheduler

    def most(dask_scheduler):
        return dask_scheduler.plugins.pop(_MaxTasks.name).most

    client.run_on_scheduler(install)
    res = dask_batch.run_tasks(tasks, BOX3, cluster=client, in_flight=3)
    held = client.run_on_scheduler(most)
    assert names(res.done) == names(tasks)
    # a handled file lingers in the scheduler until the client's release reaches it
    assert 3 <= held <= 2 * 3, held


# ---------------------------------------------------------------------------- the CLI
def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_cli_errors_are_one_line(tmp_path, monkeypatch):
    plan(tmp_path, "x", 1)
    res = run("batch", tmp_path / "in", tmp_path / "out", "--preset", "box", "--dask", "nope")
    assert res.exit_code == 1 and res.stderr.count("\n") == 1
    assert res.stderr.startswith("convcli: error: Dask scheduler address 'nope'")
    res = run("batch", tmp_path / "in", tmp_path / "out", "--preset", "box", "--shared-fs")
    assert res.exit_code == 2 and "--shared-fs goes with --dask" in res.stderr
    monkeypatch.setitem(sys.modules, "distributed", None)
    res = run("batch", tmp_path / "in", tmp_path / "out", "--preset", "box", "--dask", "local")
    assert res.exit_code == 1 and "pip install 'convcli[dask]'" in res.stderr
    assert res.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_cli_unreachable_scheduler(tmp_path, monkeypatch):
    import socket

    plan(tmp_path, "x", 1)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(dask_batch, "CONNECT_TIMEOUT_S", 1.0)
    t0 = time.monotonic()
    res = run("batch", tmp_path / "in", tmp_path / "out", "--preset", "box",
              "--dask", f"tcp://127.0.0.1:{port}")  # fmt: skip
    assert res.exit_code == 1 and res.stderr.count("\n") == 1, res.stderr
    assert f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}" in res.stderr
    assert time.monotonic() - t0 < 20
    assert not (tmp_path / "out").exists()


def _batch_cmd(tmp_path: Path, out: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "convcli", "batch", str(tmp_path / "in"), str(tmp_path / out),
            "--kernel", ";".join([",".join(["1"] * 9)] * 9), "--normalize-kernel",
            "--backend", "numpy", "--algo", "direct", *extra]  # fmt: skip


@pytest.mark.slow
def test_cli_local_cluster_interrupt_resume_and_report(tmp_path):
    """`--dask local:2` end to end: SIGINT -> 130 with whole outputs only, a rerun with
    --skip-existing finishes, and the outputs equal a local batch's."""
    tasks = plan(tmp_path, "out", 40)
    for t in tasks:  # bigger images: the batch must still be running when SIGINT lands
        cio.write_image(t.src, real_image(int(t.src.stem), (3, 200, 240)))
    cmd = _batch_cmd(tmp_path, "out", "--dask", "local:2")
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=CHILD_ENV)
    out = tmp_path / "out"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and sum(p.suffix == ".png" for p in out.iterdir()) >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert "Traceback" not in stderr
    done = sorted(p.name for p in out.iterdir())
    assert no_temp_files(out)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and 2 <= len(done) < 40, stderr
    report = tmp_path / "report.json"
    again = subprocess.run([*cmd, "--skip-existing", "--report", str(report)],
                           capture_output=True, text=True, env=CHILD_ENV, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert f"{40 - len(done)} done, {len(done)} skipped, 0 failed" in again.stderr
    assert "worker tcp://127.0.0.1:" in again.stderr
    import json

    record = json.loads(report.read_text())
    assert sum(w["done"] for w in record["workers"].values()) == 40 - len(done)
    local = subprocess.run(_batch_cmd(tmp_path, "lo"), capture_output=True, text=True,
                           env=CHILD_ENV, timeout=300)  # fmt: skip
    assert local.returncode == 0, local.stderr
    a = cbatch.BatchResult(done=[cbatch.Task(p, p) for p in sorted((tmp_path / "lo").iterdir())])
    b = cbatch.BatchResult(done=[cbatch.Task(p, p) for p in sorted(out.iterdir())])
    assert_same_outputs(a, b)


def test_cli_dask_with_a_running_scheduler(client, tmp_path):
    """`--dask tcp://...` against a running scheduler; options work as locally."""
    plan(tmp_path, "x", 3)
    address = client.scheduler.address
    opts = ["--preset", "gaussian:sigma=1", "--format", "jpg", "--quality", "80", "--backend",
            "numpy"]  # fmt: skip
    res = run("batch", tmp_path / "in", tmp_path / "out", *opts, "--dask", address)
    assert res.exit_code == 0, res.stderr
    assert "3 done, 0 skipped, 0 failed" in res.stderr and "worker tcp://" in res.stderr
    local = run("batch", tmp_path / "in", tmp_path / "lo", *opts)
    assert local.exit_code == 0
    a = cbatch.BatchResult(done=[cbatch.Task(p, p) for p in sorted((tmp_path / "lo").iterdir())])
    b = cbatch.BatchResult(done=[cbatch.Task(p, p) for p in sorted((tmp_path / "out").iterdir())])
    assert_same_outputs(a, b)
    assert {p.suffix for p in (tmp_path / "out").iterdir()} == {".jpg"}
