"""The benchmark harness: the quick suite runs, every row is checked, JSON/CSV are sound.

No timing is asserted (speed is what ``convcli bench`` reports, not what tests check).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json

import numpy as np
import pytest
from naive import naive_conv2d

from convcli import bench, conv2d


@pytest.fixture(scope="module")
def quick_rows() -> list[bench.BenchRow]:
    messages: list[str] = []
    rows = bench.run_suite(
        suite="quick",
        backends=("opencl", "numpy"),
        compare=("torch", "opencv", "scipy"),
        repeat=1,
        progress=lambda *args: messages.append(" ".join(map(str, args))),
    )
    assert messages  # progress is reported through the callback only
    return rows


def test_standard_suite_is_issue_5():
    suite = {w.id: w for w in bench.SUITES["standard"]}
    assert list(suite) == [f"W{i}" for i in range(1, 10)]
    w1, w2, w4 = suite["W1"], suite["W2"], suite["W4"]
    assert w1.x_shape == (1, 3, 2048, 2048) and w1.w_shape == (3, 1, 3, 3) and w1.padding == 1
    assert w2.padding == "same" and w2.padding_mode == "reflect" and w2.w_shape[2:] == (5, 5)
    assert suite["W3"].padding_mode == "replicate" and suite["W3"].padding == 7
    assert w4.w_shape == (3, 1, 31, 31) and w4.padding == 15 and w4.padding_mode == "zeros"
    w7 = suite["W7"]
    assert (w7.x_shape, w7.w_shape) == ((4, 64, 64, 64), (128, 16, 3, 3))
    assert (w7.stride, w7.dilation, w7.groups, w7.padding) == (2, 2, 4, 2)
    assert suite["W8"].w_shape == (256, 128, 1, 1) and suite["W8"].x_shape[0] == 8
    assert suite["W9"].x_shape == (1, 3, 1024, 1024) and suite["W9"].stride == 2
    for w in suite.values():
        x, weight = w.arrays()
        assert x.dtype == weight.dtype == np.float32
        assert weight.shape == w.w_shape


def test_image_kernels_are_what_the_descriptions_say():
    _, w2 = bench.SUITES["quick"][1].arrays()
    _, w3 = bench.SUITES["quick"][2].arrays()
    np.testing.assert_allclose(w2[0, 0].sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(w3, 1 / 225, rtol=1e-6)
    assert np.linalg.matrix_rank(bench.SUITES["quick"][0].arrays()[1][0, 0]) == 2


def test_quick_suite_rows(quick_rows):
    by = {(r.workload, r.system, r.mode): r for r in quick_rows}
    ids = [f"W{i}" for i in range(1, 10)]
    for wid in ids:
        numpy_row = by[(wid, "convcli-numpy", "end-to-end")]
        assert numpy_row.ok and numpy_row.max_rel_err <= bench.TOLERANCE
        assert numpy_row.note.startswith("algo=")
    for r in quick_rows:
        assert r.mode in ("end-to-end", "kernel")
        assert r.median_ms > 0 and r.min_ms > 0 and r.min_ms <= r.median_ms + 1e-9
        assert r.ok, r  # every system agrees with the NumPy reference
        assert r.gflops is not None and r.gflops > 0
        if r.system in bench.PEERS:
            assert r.ratio is None
        if r.mode == "kernel":
            assert r.system == "convcli-opencl"
    # peers: torch everywhere, OpenCV and SciPy only on the image filters
    if importlib.util.find_spec("torch") is not None:
        assert all((wid, "torch", "end-to-end") in by for wid in ids)
    for peer in ("opencv", "scipy"):
        present = {r.workload for r in quick_rows if r.system == peer}
        assert present <= {"W1", "W2", "W3", "W4"}
    # ratios: the best correct peer's time over ours
    for wid in ids:
        peers = [r.median_ms for r in quick_rows if r.workload == wid and r.system in bench.PEERS]
        row = by[(wid, "convcli-numpy", "end-to-end")]
        if peers:
            assert row.ratio == pytest.approx(min(peers) / row.median_ms)


def test_gflops_counts_direct_multiply_adds(quick_rows):
    row = next(r for r in quick_rows if r.workload == "W5" and r.system == "convcli-numpy")
    wl = bench.SUITES["quick"][4]
    n, _, h, w = wl.x_shape
    macs = n * 64 * h * w * 64 * 9
    assert row.gflops == pytest.approx(2 * macs / (row.median_ms * 1e-3) / 1e9)


def test_json_and_csv_shape(quick_rows):
    names = [f.name for f in bench.fields(bench.BenchRow)]
    data = json.loads(bench.rows_to_json(quick_rows))
    assert len(data) == len(quick_rows) and all(list(d) == names for d in data)
    assert data[0]["workload"] == quick_rows[0].workload
    parsed = list(csv.DictReader(io.StringIO(bench.rows_to_csv(quick_rows))))
    assert len(parsed) == len(quick_rows) and list(parsed[0]) == names
    peer = next(p for p in parsed if p["system"] in bench.PEERS)
    assert peer["ratio"] == ""  # None is an empty cell
    assert float(parsed[0]["median_ms"]) == pytest.approx(quick_rows[0].median_ms)


def test_wrong_peer_result_is_flagged(monkeypatch):
    """A system whose result disagrees with the reference is shown, with ok=False."""

    def broken_torch(wl, x, w, spec):
        return (lambda info: np.zeros(spec.out_shape, np.float32) + 1.0), "broken"

    monkeypatch.setattr(bench, "_torch", broken_torch)
    monkeypatch.setattr(bench, "SUITES", {"quick": bench.SUITES["quick"][4:5]})
    rows = bench.run_suite("quick", backends=("numpy",), compare=("torch",), repeat=1)
    peer = next(r for r in rows if r.system == "torch")
    assert not peer.ok and peer.max_rel_err > bench.TOLERANCE
    # a failing peer is not the one convcli is compared with
    assert next(r for r in rows if r.system == "convcli-numpy").ratio is None


def test_reference_is_right():
    """The bench's reference (NumPy direct) itself matches the naive loops."""
    wl = bench.SUITES["quick"][6]  # W7: stride, dilation, groups
    x, w = wl.arrays()
    x = x[:, :, :12, :12]
    from convcli import conv2d

    ref = naive_conv2d(x, w, None, (2, 2), (2, 2, 2, 2), (2, 2), 4)
    y = conv2d(x, w, backend="numpy", algo="direct", **wl.options())
    np.testing.assert_allclose(y, ref, atol=1e-5 * np.abs(ref).max())


def test_bad_arguments():
    with pytest.raises(ValueError, match="suite"):
        bench.run_suite("huge")
    with pytest.raises(ValueError, match="repeat"):
        bench.run_suite("quick", repeat=0)


def _row(wid, system, median, low, ok=True):
    return bench.BenchRow(wid, "", system, "end-to-end", median, low, None, None, 0.0, ok)


def test_targets_use_each_targets_own_peer():
    # NumPy on image filters is held against SciPy, not the faster OpenCV
    rows = [
        _row("W2", "convcli-opencl", 10.0, 9.0),
        _row("W2", "convcli-numpy", 100.0, 90.0),
        _row("W2", "opencv", 15.0, 14.0),
        _row("W2", "scipy", 200.0, 180.0),
        _row("W7", "convcli-opencl", 2.0, 1.0),
        _row("W7", "torch", 1.0, 0.9),
        _row("W7", "convcli-numpy", 1.0, 1.0, ok=False),
    ]
    got = {(c.workload, c.system): c for c in bench.target_checks(rows)}
    assert set(got) == {
        ("W2", "convcli-opencl"),
        ("W2", "convcli-numpy"),
        ("W7", "convcli-opencl"),
        ("W7", "convcli-numpy"),
    }
    numpy_w2 = got[("W2", "convcli-numpy")]
    assert numpy_w2.peer == "scipy" and numpy_w2.ratio == pytest.approx(2.0) and numpy_w2.met
    assert got[("W2", "convcli-opencl")].ratio == pytest.approx(1.5)
    w7 = got[("W7", "convcli-opencl")]
    assert w7.target == 0.8 and w7.ratio == pytest.approx(0.5) and not w7.met
    assert w7.ratio_of_mins == pytest.approx(0.9)
    assert not got[("W7", "convcli-numpy")].met  # fast but wrong is not met


def test_systems_take_turns_in_rounds(monkeypatch):
    """Each system's runs are spread over rounds in which the systems alternate, so a
    slow spell of the machine cannot fall on one system only."""
    calls: list[str] = []
    real = bench._convcli

    def convcli(backend, wl, x, w):
        fn = real(backend, wl, x, w)
        return lambda info: (calls.append(backend), fn(info))[1]

    def torch(wl, x, w, spec):
        ref = conv2d(x, w, backend="numpy", **wl.options())
        return (lambda info: (calls.append("torch"), ref)[1]), "recorded"

    monkeypatch.setattr(bench, "_convcli", convcli)
    monkeypatch.setattr(bench, "_torch", torch)
    monkeypatch.setattr(bench, "SUITES", {"quick": bench.SUITES["quick"][4:5]})
    monkeypatch.setattr(bench, "ROUNDS", 3)
    rows = bench.run_suite("quick", backends=("numpy",), compare=("torch",), repeat=4)
    assert bench._rounds(4) == [2, 1, 1] and bench._rounds(7) == [3, 2, 2]
    assert bench._rounds(1) == [1]
    # a probe, then per round one warm-up and the round's runs, system after system
    runs = ["numpy"] + ["numpy"] * 3 + ["torch"] * 3 + (["numpy"] * 2 + ["torch"] * 2) * 2
    assert calls == runs
    monkeypatch.setattr(bench, "ROUNDS", 7)
    assert bench._rounds(7) == [1] * 7 and bench._rounds(9) == [2, 2, 1, 1, 1, 1, 1]
    assert [r.system for r in rows] == ["convcli-numpy", "torch"]


def test_opencl_rows_run_on_the_host_say_so(monkeypatch):
    # a 1x1 layer of a few images runs NumPy's product on a CPU device: the OpenCL row's
    # note says so and no "kernel" row claims OpenCL profiling events for it; a layer
    # on the device keeps its kernel row
    from conftest import opencl_available

    from convcli import backends

    if not opencl_available() or not backends.get_backend("opencl").is_cpu:
        pytest.skip("the host route is for CPU OpenCL devices")
    suite = [
        bench.Workload("P1", "N=2 16->24 12^2 1x1", (2, 16, 12, 12), (24, 16, 1, 1)),
        bench.Workload("D3", "N=2 8->8 12^2 3x3", (2, 8, 12, 12), (8, 8, 3, 3), padding=1),
    ]
    monkeypatch.setattr(bench, "SUITES", {"quick": suite})
    rows = bench.run_suite("quick", backends=("opencl",), compare=(), repeat=1)
    by = {(r.workload, r.mode): r for r in rows}
    assert by[("P1", "end-to-end")].note.endswith(bench.HOST_NOTE)
    assert ("P1", "kernel") not in by
    assert bench.HOST_NOTE not in by[("D3", "end-to-end")].note and ("D3", "kernel") in by
    assert all(r.ok for r in rows)
