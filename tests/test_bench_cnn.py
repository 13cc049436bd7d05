"""The cnn suite: layer data, worker processes, rows, totals, ratios, exactness, CLI.

A made-up network of three small layers keeps it fast; no timing is asserted.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from naive import naive_conv2d

from convcli import bench_cnn
from convcli.bench import TOLERANCE
from convcli.bench_cnn import CnnLayer
from convcli.cli import cli
from convcli.spec import make_spec

HAS_TORCH = importlib.util.find_spec("torch") is not None

TINY = [
    CnnLayer(4, 8, 3, 3, (1, 1), (1, 1), (1, 1), 1, 9, 9, True, "conv1"),
    CnnLayer(8, 8, 3, 3, (2, 2), (1, 1), (1, 1), 8, 9, 9, False, "dw"),
    CnnLayer(8, 8, 3, 3, (2, 2), (1, 1), (1, 1), 8, 9, 9, False, "dw again"),
]


def _systems() -> tuple[str, ...]:
    return bench_cnn.SYSTEMS if HAS_TORCH else bench_cnn.SYSTEMS[1:]


@pytest.fixture(scope="module")
def tiny() -> bench_cnn.CnnResult:
    messages: list[str] = []
    result = bench_cnn.run_cnn_suite(
        {"tiny": TINY},
        batches=(1, 2),
        systems=_systems(),
        repeat=3,
        rounds=2,
        progress=messages.append,
    )
    assert messages
    return result


def test_layer_file_holds_the_networks():
    nets, source = bench_cnn.load_networks()
    assert "torchvision" in source
    counts = {name: len(layers) for name, layers in nets.items()}
    # conv layers of torchvision's definitions (Conv2d modules, counted by hand from the
    # architectures: resnet18 = stem + 16 block convs + 3 downsample 1x1s)
    assert counts["resnet18"] == 20 and counts["resnet50"] == 53
    assert counts["mobilenet_v3_small"] == 52 and counts["efficientnet_b0"] == 81
    assert counts["convnext_tiny"] == 22 and counts["regnet_y_400mf"] == 85
    assert counts["shufflenet_v2_x1_0"] == 56
    stem = nets["resnet18"][0]
    assert (stem.c_in, stem.c_out, stem.kh, stem.stride, stem.padding) == (3, 64, 7, (2, 2), (3, 3))
    assert (stem.h, stem.w, stem.bias) == (224, 224, False)
    # convnext: a 4x4 stride-4 stem, then 7x7 depthwise layers on 56^2 .. 7^2
    dw = [layer for layer in nets["convnext_tiny"] if layer.kh == 7]
    assert {(d.c_in, d.h) for d in dw} == {(96, 56), (192, 28), (384, 14), (768, 7)}
    assert all(d.groups == d.c_in == d.c_out and d.padding == (3, 3) for d in dw)
    for layers in nets.values():
        for layer in layers:  # every layer is a valid convolution of its input
            x = np.empty((1, layer.c_in, layer.h, layer.w), np.float32)
            make_spec(x, np.empty(layer.w_shape(), np.float32), None, **layer.options())


def test_rows_totals_and_ratios(tiny):
    systems = [s for s in _systems() if s not in tiny.skipped]
    assert list(tiny.workers) == systems
    for batch in (1, 2):
        for s in systems:
            mine = [r for r in tiny.rows if (r.batch, r.system) == (batch, s)]
            # the repeated depthwise layer is timed once and counted twice
            assert [(r.layer, r.count) for r in mine] == [(0, 1), (1, 2)]
            assert all(r.ok and 0 < r.min_ms <= r.median_ms for r in mine), mine
            total = next(t for t in tiny.totals if (t.batch, t.system) == (batch, s))
            assert total.layer is None and total.count == 3 and total.ok
            assert total.median_ms == pytest.approx(sum(r.median_ms * r.count for r in mine))
            assert total.min_ms == pytest.approx(sum(r.min_ms * r.count for r in mine))
            if "torch" in systems and s != "torch":
                ref = next(t for t in tiny.totals if (t.batch, t.system) == (batch, "torch"))
                assert total.ratio == pytest.approx(ref.median_ms / total.median_ms)
                layer_ref = next(
                    r for r in tiny.rows if (r.batch, r.system, r.layer) == (batch, "torch", 1)
                )
                assert mine[1].ratio == pytest.approx(layer_ref.median_ms / mine[1].median_ms)
            else:
                assert total.ratio is None
    checks = tiny.target_checks()
    if "torch" in systems:
        assert {(c.system, c.target) for c in checks} >= {("convcli-numpy", 0.5)}
        for c in checks:
            t = next(t for t in tiny.totals if (t.batch, t.system) == (c.batch, c.system))
            assert c.ratio == pytest.approx(t.ratio) and c.met == (c.ratio >= c.target)


def test_layers_the_opencl_backend_ran_on_the_host_are_counted():
    # a 1x1 layer of up to 8 images runs on the host on a CPU device; its row and its
    # network's total say so, a larger batch's does not
    from conftest import opencl_available

    from convcli import backends

    if not opencl_available() or not backends.get_backend("opencl").is_cpu:
        pytest.skip("the host route is for CPU OpenCL devices")
    one = [CnnLayer(16, 24, 1, 1, (1, 1), (0, 0), (1, 1), 1, 9, 9, True, "1x1")]
    result = bench_cnn.run_cnn_suite(
        {"one": one}, batches=(1, 9), systems=("convcli-opencl",), repeat=1, rounds=1
    )
    notes = {r.batch: r.note for r in result.rows}
    assert bench_cnn.HOST_NOTE in notes[1] and bench_cnn.HOST_NOTE not in notes[9]
    described = {t.batch: t.description for t in result.totals}
    assert described == {1: "1 conv layers, 1 on the host", 9: "1 conv layers"}
    from convcli.cli.bench_cnn import _on_host  # the totals table's column

    assert _on_host(result.rows, "one", 1, "convcli-opencl") == "1 (100%)"
    assert _on_host(result.rows, "one", 9, "convcli-opencl") == "0"
    assert all(r.ok for r in result.rows)


def test_every_system_ran_in_a_process_of_its_own(tiny):
    pids = list(tiny.workers.values())
    assert len(set(pids)) == len(pids) and os.getpid() not in pids
    for pid in pids:  # and the workers have ended
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads /proc")
def test_the_systems_kept_out_of_each_others_way(tiny):
    """Each worker waited for the others' threads to go idle: while a system's calls were
    timed, the other workers used (next to) no CPU; and every row says how long its
    worker's threads waited for a CPU."""
    for r in [*tiny.rows, *tiny.totals]:
        assert r.others_cpu_ms is not None and 0 <= r.others_cpu_ms < 0.5, r
        assert r.queued_pct is not None and r.queued_pct >= 0, r


def _spinner(seconds: float) -> subprocess.Popen:
    """A process that burns one CPU for ``seconds`` once it reads a line, then sleeps."""
    code = (
        "import sys, time\n"
        "sys.stdin.readline()\n"
        f"t = time.perf_counter() + {seconds}\n"
        "while time.perf_counter() < t: pass\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, text=True)
    time.sleep(0.2)  # started and waiting
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()
    assert proc.stdin is not None
    proc.stdin.close()


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads /proc")
def test_wait_idle_waits_for_a_busy_process_and_not_longer():
    proc = _spinner(0.3)
    try:
        cpu0 = bench_cnn._cpu_ns([proc.pid])
        # idle: the wait ends after the quiet window
        assert bench_cnn._wait_idle([proc.pid], 2.0) < 0.15
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        waited = bench_cnn._wait_idle([proc.pid], 2.0)
        burnt = bench_cnn._cpu_ns([proc.pid]) - cpu0
        # it waited through the (wall-clock) spin, which the CPU clock saw, and then the
        # process was idle
        assert 0.25 <= waited < 1.5 and burnt / 1e9 >= 0.02, (waited, burnt)
        cpu1 = bench_cnn._cpu_ns([proc.pid])
        time.sleep(0.05)
        assert bench_cnn._cpu_ns([proc.pid]) - cpu1 < 1e6
        # a limit is a limit; no pids, no wait
        proc2 = _spinner(1.0)
        try:
            assert proc2.stdin is not None
            proc2.stdin.write("go\n")
            proc2.stdin.flush()
            assert 0.1 <= bench_cnn._wait_idle([proc2.pid], 0.1) < 0.3
        finally:
            _stop(proc2)
        assert bench_cnn._wait_idle([], 1.0) == 0.0
    finally:
        _stop(proc)


def test_results_are_exact(tiny):
    """Every system agrees with the reference (torch's result, or NumPy direct)."""
    for r in tiny.rows:
        assert r.max_rel_err is not None and r.max_rel_err <= TOLERANCE, r
    # the workers' inputs: the same seeded arrays, whose convolution the naive loops give
    layer = TINY[1]
    x, w, b = layer.arrays(2)
    assert b is None and x.shape == (2, 8, 9, 9) and w.shape == (8, 1, 3, 3)
    x2, w2, _ = layer.arrays(2)
    assert np.array_equal(x, x2) and np.array_equal(w, w2)
    ref = naive_conv2d(x, w, None, (2, 2), (1, 1, 1, 1), (1, 1), 8)
    got = bench_cnn._reference(layer, 2)
    assert np.max(np.abs(got - ref)) <= 1e-5 * np.max(np.abs(ref))
    if HAS_TORCH:
        import torch

        y = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), None, 2, 1, 1, 8)
        assert np.max(np.abs(y.numpy() - ref)) <= 1e-5 * np.max(np.abs(ref))


def test_json_and_csv(tiny):
    data = json.loads(tiny.to_json())
    assert {"totals", "layers", "targets", "workers", "source"} <= set(data)
    assert len(data["layers"]) == len(tiny.rows) and data["totals"][0]["layer"] is None
    parsed = list(csv.DictReader(io.StringIO(tiny.to_csv())))
    assert len(parsed) == len(tiny.totals) + len(tiny.rows)
    assert parsed[0]["layer"] == "" and float(parsed[0]["median_ms"]) == pytest.approx(
        tiny.totals[0].median_ms
    )


def test_slowest_layers_are_worst_first(tiny):
    if "torch" not in tiny.workers:
        pytest.skip("needs torch")
    by = {(r.batch, r.layer, r.system): r for r in tiny.rows}
    worst = tiny.slowest("convcli-numpy", per_network=2)
    assert len(worst) == 4  # 2 per (network, batch)

    def lost(r):
        return (r.median_ms - by[(r.batch, r.layer, "torch")].median_ms) * r.count

    for batch in (1, 2):
        mine = [r for r in worst if r.batch == batch]
        assert lost(mine[0]) >= lost(mine[1])


def test_bad_arguments():
    with pytest.raises(ValueError, match="repeat"):
        bench_cnn.run_cnn_suite({"tiny": TINY}, repeat=0)
    with pytest.raises(ValueError, match="unknown network"):
        bench_cnn.run_cnn_suite(["lenet"])
    with pytest.raises(ValueError, match="systems"):
        bench_cnn.run_cnn_suite({"tiny": TINY}, systems=("tensorflow",))


def test_cli_renders_the_suite(monkeypatch, tiny):
    calls = []

    def fake(**kwargs):
        calls.append(kwargs)
        return tiny

    monkeypatch.setattr(bench_cnn, "run_cnn_suite", fake)
    res = CliRunner().invoke(cli, ["bench", "--suite", "cnn", "--repeat", "2", "-q"])
    assert res.exit_code == 0, res.output
    assert calls[0]["repeat"] == 2
    assert "conv-layer totals" in res.output and "tiny" in res.output
    if "torch" in tiny.workers:
        assert "issue 15 targets" in res.output and "lose most time" in res.output
    res = CliRunner().invoke(cli, ["bench", "--suite", "cnn", "--json", "-", "-q"])
    assert res.exit_code == 0
    assert math.isclose(json.loads(res.output)["totals"][0]["median_ms"], tiny.totals[0].median_ms)


def test_cli_only_picks_networks(monkeypatch, tiny):
    calls = []

    def fake(networks=None, **kwargs):
        calls.append(networks)
        return tiny

    monkeypatch.setattr(bench_cnn, "run_cnn_suite", fake)
    res = CliRunner().invoke(cli, ["bench", "--suite", "cnn", "--only", "resnet18", "-q"])
    assert res.exit_code == 0, res.output
    assert calls == [("resnet18",)]
    res = CliRunner().invoke(cli, ["bench", "--suite", "cnn", "--only", "lenet", "-q"])
    assert res.exit_code == 2 and "lenet not in" in res.output and "resnet18" in res.output
    assert calls == [("resnet18",)]  # nothing ran


def _layer_file(path, networks):
    body = {n: [layer.to_dict() for layer in layers] for n, layers in networks.items()}
    path.write_text(json.dumps({"source": "made in a test", "networks": body}))
    return path


def test_a_layer_file_of_other_networks_is_loaded_and_run(tmp_path):
    path = _layer_file(tmp_path / "other.json", {"tiny": TINY, "pair": TINY[:2]})
    nets, source = bench_cnn.load_networks(path)
    assert source == "made in a test" and list(nets) == ["tiny", "pair"]
    assert nets["pair"] == TINY[:2]
    result = bench_cnn.run_cnn_suite(
        ["pair"], batches=(1,), systems=("convcli-numpy",), repeat=1, layer_file=path
    )
    assert {r.network for r in result.rows} == {"pair"}
    assert result.totals[0].description == "2 conv layers"
    assert result.source == "made in a test (other.json)"  # which file, in the results


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "not a layer file"),
        ('{"networks": 3}', "not a layer file"),
        ('{"nets": {}}', "make_cnn_layers.py (no 'networks')"),
        ('{"networks": {"a": [{"c_in": 3}]}}', "make_cnn_layers.py (no 'c_out')"),
        # JSON's 1e400 is float infinity: int() raises OverflowError
        ('{"networks": {"a": [{"c_in": 1e400}]}}', "(cannot convert float infinity"),
        ('{"networks": {}}', "lists no network"),
        ('{"networks": {"a": []}}', "or an empty one"),
        # deeper than the parser's recursion limit: was "internal error: RecursionError"
        pytest.param(
            "[" * 100_000 + "]" * 100_000, "(maximum recursion depth exceeded", id="deeply-nested"
        ),
    ],
)
def test_a_bad_layer_file_is_named_with_its_problem(tmp_path, text, problem):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"^.*bad\.json: ") as err:
        bench_cnn.load_networks(path)
    assert problem in str(err.value)
    with pytest.raises(ValueError, match="cannot read the layer file"):
        bench_cnn.load_networks(tmp_path / "missing.json")


def test_cli_layers_runs_the_networks_of_a_file(monkeypatch, tiny, tmp_path):
    calls = []

    def fake(networks=None, layer_file=None, **kwargs):
        calls.append((networks, layer_file))
        return tiny

    monkeypatch.setattr(bench_cnn, "run_cnn_suite", fake)
    path = str(_layer_file(tmp_path / "other.json", {"tiny": TINY, "pair": TINY[:2]}))
    res = CliRunner().invoke(cli, ["bench", "--suite", "cnn", "--layers", path, "-q"])
    assert res.exit_code == 0, res.output
    assert calls == [(["tiny", "pair"], path)]
    res = CliRunner().invoke(
        cli, ["bench", "--suite", "cnn", "--layers", path, "--only", "pair", "-q"]
    )
    assert res.exit_code == 0, res.output
    assert calls[-1] == (("pair",), path)
    res = CliRunner().invoke(
        cli, ["bench", "--suite", "cnn", "--layers", path, "--only", "resnet18", "-q"]
    )
    assert res.exit_code == 2 and "resnet18 not in tiny, pair" in res.output
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    res = CliRunner().invoke(cli, ["bench", "--suite", "cnn", "--layers", str(bad), "-q"])
    assert res.exit_code == 2 and "bad.json: not a layer file" in res.output
    assert "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["bench", "--suite", "files", "--layers", path, "-q"])
    assert res.exit_code == 2 and "--layers gives the networks of --suite cnn" in res.output
    # an empty name (an unset variable) ran the shipped networks as if none was given
    res = CliRunner().invoke(cli, ["bench", "--suite", "cnn", "--layers", "", "-q"])
    assert res.exit_code == 2 and "--layers" in res.output and "empty path" in res.output
    assert len(calls) == 2  # nothing else ran
    with pytest.raises(ValueError, match="cannot read the layer file"):
        bench_cnn.load_networks("")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"h": -8}, "h must be at least 1, got -8"),
        ({"c_out": 0}, "c_out must be at least 1, got 0"),
        ({"stride": [0, 1]}, "non-positive stride is not supported"),
        ({"dilation": [1, 0]}, "dilation should be greater than zero"),
        ({"padding": [-1, 0]}, "negative padding is not supported"),
        ({"groups": 3}, "c_in 8 is not divisible by groups 3"),
        ({"groups": 8}, "expected weight to be divisible by 8"),  # c_out 4
        ({"kh": 11, "padding": [0, 0]}, "Kernel size can't be greater than actual input size"),
    ],
)
def test_a_layer_conv2d_refuses_is_named_when_the_file_is_read(
    monkeypatch, tmp_path, change, problem
):
    """Checked before any worker starts: such a layer used to stop the suite after the
    layers before it had been timed (a negative size: 'the convcli-numpy benchmark worker
    stopped: ValueError: negative dimensions are not allowed', naming neither the file
    nor the layer)."""
    bad = {**TINY[0].to_dict(), "c_in": 8, "c_out": 4, **change}
    path = _layer_file(tmp_path / "odd.json", {"tiny": TINY})
    data = json.loads(path.read_text())
    data["networks"]["tiny"].insert(1, bad)
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"odd\.json: tiny layer 1 \(conv1\): ") as err:
        bench_cnn.load_networks(path)
    assert problem in str(err.value)
    with pytest.raises(ValueError, match="tiny layer 1"):
        bench_cnn.run_cnn_suite(["tiny"], systems=("convcli-numpy",), layer_file=path)

    monkeypatch.setattr(bench_cnn, "_Worker", None)  # nothing may start
    res = CliRunner().invoke(cli, ["bench", "--suite", "cnn", "--layers", str(path), "-q"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "odd.json: tiny layer 1 (conv1): " in res.output and problem in res.output


def _tool():
    from pathlib import Path

    path = Path(__file__).parents[1] / "tools" / "make_cnn_layers.py"
    spec = importlib.util.spec_from_file_location("make_cnn_layers", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


@pytest.mark.skipif(not HAS_TORCH, reason="the tool imports torch")
def test_make_cnn_layers_checks_its_networks_before_building_any(monkeypatch, tmp_path, capsys):
    """An unknown name was a traceback (AttributeError) after the names before it had
    been built; other networks without --out replaced the shipped layer file."""
    import types

    tool = _tool()
    built = []

    def resnet18(weights=None):
        built.append("resnet18")
        raise AssertionError("no model may be built")

    models = types.SimpleNamespace(list_models=lambda module=None: ["resnet18"], resnet18=resnet18)
    monkeypatch.setattr(tool, "_torchvision_models", lambda source: (models, "0.0"))
    out = tmp_path / "other.json"
    with pytest.raises(SystemExit) as err:
        tool.main(["--networks", "resnet18,nosuchnet", "--out", str(out)])
    assert "nosuchnet not among torchvision 0.0's classification models: resnet18" in str(
        err.value.code
    )
    shipped = tool.OUT.read_bytes()
    with pytest.raises(SystemExit) as err:
        tool.main(["--networks", "resnet18"])  # the default --out: the shipped file
    assert err.value.code == 2 and "need an --out other than" in capsys.readouterr().err
    assert built == [] and not out.exists() and tool.OUT.read_bytes() == shipped


def test_winograd_ab_refuses_an_unknown_network():
    """``--only`` with a misspelt name timed no layer and exited 0 ("0 of 0")."""
    from pathlib import Path

    root = Path(__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    script = root / "benchmarks" / "winograd_ab.py"
    res = subprocess.run(
        [sys.executable, str(script), "--only", "resnet18,resnet81"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2, res.stdout + res.stderr
    assert "--only: resnet81 not in mobilenet_v3_small" in res.stderr


@pytest.mark.parametrize("flag", ["--json", "--csv"])
@pytest.mark.parametrize("through_link", [False, True])
def test_a_result_file_that_is_the_layer_file_is_refused(tmp_path, monkeypatch, flag, through_link):
    """--json/--csv with --overwrite replaced the --layers file it was reading (also
    through a symbolic link): the layer file was lost. An input is never a side file."""
    monkeypatch.chdir(tmp_path)
    data = json.loads(Path(bench_cnn.DATA_FILE).read_text())
    first = dict(next(iter(data["networks"].values()))[0], h=8, w=8)
    data["networks"] = {"tiny": [first]}
    layers = tmp_path / "t.json"
    layers.write_text(json.dumps(data))
    given = "t.json"
    if through_link:
        os.symlink("t.json", tmp_path / "link.json")
        given = "link.json"
    before = layers.read_bytes()
    res = CliRunner().invoke(cli, ["bench", "--suite", "cnn", "--layers", given, flag, "t.json",
                                   "--overwrite", "--repeat", "1", "--compare", "",
                                   "--backend", "numpy", "-q"])  # fmt: skip
    assert res.exit_code == 2
    assert f"t.json: {flag} names an input of this run; nothing was done" in res.stderr
    assert layers.read_bytes() == before
