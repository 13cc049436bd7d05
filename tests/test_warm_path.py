"""The warm path's caches (validated specs, packed weights, Conv2d's frozen weights) never
change an answer: a repeated call validates what it must and sees changed weights.

No timing is asserted (the overhead is measured by benchmarks/call_overhead.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, opencl_available
from naive import naive_conv2d

import convcli
from convcli import api
from convcli.errors import ConvTypeError, ConvValueError
from convcli.plan import frozen_copy, is_frozen

BACKENDS = ["numpy", pytest.param("opencl", marks=pytest.mark.skipif(
    not opencl_available(), reason="no OpenCL device"))]  # fmt: skip


def _ref(x, w, b=None, pad=1):
    return naive_conv2d(x, w, b, (1, 1), (pad, pad, pad, pad))


def _late_check_layer(monkeypatch, seed, x_shape, w_shape, pad):
    """Random float32 ``(x, w)`` of these shapes, with the OpenCL runtime that runs them
    comparing no key first (an earlier test's failed late check would make it compare
    before the launches)."""
    from convcli.backends import get_backend

    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    rt = get_backend("opencl").runtime_for(convcli.spec.make_spec(x, w, None, padding=pad))
    monkeypatch.setattr(rt, "_compare_first", set())
    return x, w


def test_cached_spec_still_rejects_what_validation_rejects():
    x = np.zeros((1, 2, 5, 5), np.float32)
    w = np.zeros((3, 2, 3, 3), np.float32)
    convcli.conv2d(x, w, stride=1, padding=1, backend="numpy")  # now cached
    # True == 1 and hashes alike, but a bool is not a stride
    with pytest.raises(ConvTypeError, match="stride"):
        convcli.conv2d(x, w, stride=True, padding=1, backend="numpy")
    with pytest.raises(ConvTypeError, match="stride"):
        convcli.conv2d(x, w, stride=(1, True), padding=1, backend="numpy")
    with pytest.raises(ConvTypeError, match="weight type"):
        convcli.conv2d(x, w.astype(np.float64), padding=1, backend="numpy")
    with pytest.raises(ConvValueError, match="channels"):
        convcli.conv2d(np.zeros((1, 3, 5, 5), np.float32), w, padding=1, backend="numpy")
    # lists and numpy integers are validated afresh, with the same outcome
    y = convcli.conv2d(x, w, stride=[1, 1], padding=np.int64(1), backend="numpy")
    assert y.shape == (1, 3, 5, 5)


def test_cached_spec_matches_a_fresh_one():
    x = np.zeros((2, 4, 9, 7), np.float32)
    w = np.zeros((6, 2, 3, 2), np.float32)
    opts = {"stride": 2, "padding": "valid", "dilation": 1, "groups": 2, "padding_mode": "zeros"}
    first = api._cached_spec(x, w, None, opts)
    again = api._cached_spec(x, w, None, opts)
    assert again is first  # from the cache
    assert first == convcli.spec.make_spec(x, w, None, **opts)
    # another shape or dtype is another entry
    other = api._cached_spec(x[:1], w, None, opts)
    assert other.n == 1 and other is not first
    assert api._cached_spec(x, w, np.zeros(6, np.float32), opts).has_bias


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("c", [8, 96])  # weights under and over the memcmp size
def test_in_place_weight_change_is_seen(backend, c):
    rng = np.random.default_rng(c)
    x = rng.standard_normal((1, c, 6, 6)).astype(np.float32)
    w = rng.standard_normal((c, c, 3, 3)).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    y0 = convcli.conv2d(x, w, b, padding=1, backend=backend)
    assert_close(y0, _ref(x, w, b), "float32")
    w[0, 0, 1, 1] += 1.0  # one value, in place
    b[-1] -= 2.0
    y1 = convcli.conv2d(x, w, b, padding=1, backend=backend)
    assert_close(y1, _ref(x, w, b), "float32")
    assert not np.allclose(y0, y1)


def test_frozen_copies():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    f = frozen_copy(a)
    assert is_frozen(f) and not is_frozen(a) and np.array_equal(f, a)
    a[0, 0] = 7  # the copy is its own memory
    assert f[0, 0] == 0
    with pytest.raises(ValueError, match="read-only"):
        f[0, 0] = 1
    assert not is_frozen(f[:1])  # a view is not the frozen array
    # it cannot be thawed: made writable, changed and frozen again between two calls,
    # a weight was used with the packed copy of its old values
    with pytest.raises(ValueError, match="WRITEABLE"):
        f.flags.writeable = True
    assert is_frozen(f) and f.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert is_frozen(frozen_copy(np.zeros((0, 3), np.complex64)))
    held = frozen_copy(np.zeros(2, object))  # no bytes hold objects: read-only, not frozen
    assert not held.flags.writeable and not is_frozen(held)


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv2d_layer_weights_are_frozen_and_assignment_is_seen(backend):
    layer = convcli.Conv2d(16, 16, 3, padding=1, seed=3)
    x = np.random.default_rng(0).standard_normal((1, 16, 8, 8)).astype(np.float32)
    assert is_frozen(layer.weight) and is_frozen(layer.bias)
    with pytest.raises(ValueError, match="read-only"):
        layer.weight[0, 0, 0, 0] = 1.0
    y0 = layer(x, backend=backend)
    assert_close(y0, _ref(x, layer.weight, layer.bias), "float32")
    new = layer.weight * 2
    layer.weight = new
    new[...] = 0  # the layer keeps a copy
    y1 = layer(x, backend=backend)
    assert_close(y1, _ref(x, layer.weight, layer.bias), "float32")
    assert np.abs(layer.weight).max() > 0
    layer.bias = None
    y2 = layer(x, backend=backend)
    assert_close(y2, _ref(x, layer.weight), "float32")


@pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")
def test_conv2d_layer_keeps_its_packed_weights():
    """The packed-weight cache holds the layer's frozen weight itself (no copy to compare
    with); the weight cannot be thawed, and an assigned one is packed again."""
    from convcli import backends

    layer = convcli.Conv2d(32, 32, 3, padding=1, seed=4)
    x = np.random.default_rng(1).standard_normal((1, 32, 8, 8)).astype(np.float32)
    layer(x, backend="opencl")
    spec = convcli.spec.make_spec(x, layer.weight, layer.bias, padding=1)
    packed = backends.get_backend("opencl").runtime_for(spec)._packed
    assert any(entry[1] is layer.weight for entry in packed)
    w = layer.weight
    with pytest.raises(ValueError, match="WRITEABLE"):
        w.flags.writeable = True
    assert_close(layer(x, backend="opencl"), _ref(x, w, layer.bias), "float32")
    layer.weight = -w
    assert_close(layer(x, backend="opencl"), _ref(x, -w, layer.bias), "float32")


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeated_small_call_skips_the_planning_but_not_under_max_memory(backend, monkeypatch):
    from convcli import backends

    be = backends.get_backend(backend)
    planned = []
    plan_algo = be.plan_algo
    monkeypatch.setattr(be, "plan_algo", lambda spec, w: planned.append(spec) or plan_algo(spec, w))
    monkeypatch.setattr(api, "_UNTILED", set())
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 5, 11, 13)).astype(np.float32)
    w = rng.standard_normal((6, 5, 3, 3)).astype(np.float32)
    first = convcli.conv2d(x, w, padding=1, backend=backend)
    again = convcli.conv2d(x, w, padding=1, backend=backend)
    assert len(planned) == 1  # the repeat skipped the memory checks and the plan
    assert_close(again, _ref(x, w))
    np.testing.assert_array_equal(again, first)
    convcli.conv2d(x, w, padding=1, backend=backend, max_memory=2**30)
    assert len(planned) == 2  # a memory limit is checked at every call
    w2 = rng.standard_normal((6, 5, 3, 3)).astype(np.float32)
    assert_close(convcli.conv2d(x, w2, padding=1, backend=backend), _ref(x, w2))


@pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")
def test_opencl_plan_follows_the_weights_values():
    # a depthwise 5x5 layer is separable or not by its values: the plans remembered per
    # shape must not keep the first one
    from convcli.runinfo import RunInfo

    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 3, 40, 48)).astype(np.float32)
    t = np.exp(-((np.arange(5) - 2.0) ** 2) / 2)
    gauss = np.tile(np.outer(t, t)[None, None], (3, 1, 1, 1)).astype(np.float32)
    noise = rng.standard_normal((3, 1, 5, 5)).astype(np.float32)
    for w, algo in [
        (gauss, "separable"),
        (gauss, "separable"),
        (noise, "direct"),
        (gauss, "separable"),
    ]:
        info = RunInfo()
        y = convcli.conv2d(x, w, padding=2, groups=3, backend="opencl", info=info)
        assert info.algo == algo
        ref = naive_conv2d(x, w, None, (1, 1), (2, 2, 2, 2), (1, 1), 3)
        assert_close(y, ref)


@pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")
def test_repeated_depthwise_call_skips_the_planning(monkeypatch):
    # a depthwise layer's FFT would need a large workspace, but the plan that runs it
    # (dw_channels) does not depend on the weights: its repeats skip the checks too
    from convcli import backends

    be = backends.get_backend("opencl")
    planned = []
    plan_algo = be.plan_algo
    monkeypatch.setattr(be, "plan_algo", lambda spec, w: planned.append(spec) or plan_algo(spec, w))
    monkeypatch.setattr(api, "_UNTILED", set())
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 96, 9, 9)).astype(np.float32)
    w = rng.standard_normal((96, 1, 7, 7)).astype(np.float32)
    for _ in range(3):
        y = convcli.conv2d(x, w, padding=3, groups=96, backend="opencl")
    assert len(planned) == 1
    assert_close(y, naive_conv2d(x, w, None, (1, 1), (3, 3, 3, 3), (1, 1), 96))


@pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")
def test_last_value_of_a_large_weight_changed_in_place_is_seen():
    # over the size compared with bytes: the whole weight is compared, to its last value
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 64, 5, 5)).astype(np.float32)
    w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    assert w.nbytes > 1 << 16
    y0 = convcli.conv2d(x, w, padding=1, backend="opencl")
    w[-1, -1, -1, -1] += 3.0
    y1 = convcli.conv2d(x, w, padding=1, backend="opencl")
    assert_close(y1, _ref(x, w), "float32")
    assert not np.allclose(y0[0, -1], y1[0, -1])
    # a new array with the old values, and the old one changed back: both seen
    w2 = w.copy()
    w[-1, -1, -1, -1] -= 3.0
    assert_close(convcli.conv2d(x, w2, padding=1, backend="opencl"), y1, "float32")
    assert_close(convcli.conv2d(x, w, padding=1, backend="opencl"), y0, "float32")


@pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")
@pytest.mark.parametrize("groups", [1, 16])  # dense_gemm, and a depthwise kernel
def test_one_kernel_launched_with_other_sizes_in_turn(groups):
    # the image sizes are kernel arguments whose types are told once per kernel: each
    # launch must still get its own values, and no shape reuses another's plan
    from convcli.runinfo import RunInfo

    rng = np.random.default_rng(9)
    w = rng.standard_normal((16, 16 // groups, 3, 3)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    shapes = [(1, 16, 7, 7), (2, 16, 9, 5), (1, 16, 7, 7), (3, 16, 4, 11), (2, 16, 9, 5)]
    for shape in shapes:
        x = rng.standard_normal(shape).astype(np.float32)
        info = RunInfo()
        y = convcli.conv2d(x, w, b, padding=1, groups=groups, backend="opencl", info=info)
        ref = naive_conv2d(x, w, b, (1, 1), (1, 1, 1, 1), (1, 1), groups)
        assert y.shape == ref.shape
        assert_close(y, ref, "float32")
        assert info.backend == "opencl" and info.algo
        assert info.timings["compute"] > 0 and info.timings["download"] >= 0


def test_spec_hash_is_remembered_but_not_pickled():
    import pickle

    opts = {"stride": 1, "padding": 1, "dilation": 1, "groups": 1, "padding_mode": "zeros"}
    x = np.zeros((1, 2, 5, 5), np.float32)
    w = np.zeros((3, 2, 3, 3), np.float32)
    spec = convcli.spec.make_spec(x, w, None, **opts)
    again = convcli.spec.make_spec(x, w, None, **opts)
    assert spec == again and hash(spec) == hash(again)
    assert hash(spec) == hash(tuple(getattr(spec, f) for f in convcli.spec._FIELDS))
    copy = pickle.loads(pickle.dumps(spec))
    assert "_hash" not in copy.__dict__  # another process hashes its strings otherwise
    assert copy == spec and hash(copy) == hash(spec)
    assert spec.with_batch(2) != spec and hash(spec.with_batch(2)) != hash(spec)


@pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")
def test_a_warm_opencl_run_replays_its_launch_and_a_failed_replay_is_dropped(monkeypatch):
    from convcli import backends
    from convcli.backends.opencl import gemm
    from convcli.backends.opencl import plan as opencl_plan
    from convcli.errors import BackendError
    from convcli.runinfo import RunInfo

    be = backends.get_backend("opencl")
    rng = np.random.default_rng(10)
    x = rng.standard_normal((1, 8, 7, 6)).astype(np.float32)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    spec = convcli.spec.make_spec(x, w, None, padding=1)
    assert opencl_plan.for_device(spec, w, cpu=be.is_cpu, settings=be.settings)[0].kernel == (
        "dense_gemm"
    )
    planned = []
    real = gemm.dense_defines
    monkeypatch.setattr(gemm, "dense_defines", lambda *a: planned.append(1) or real(*a))
    rt = be.runtime_for(spec)  # this device's, or the inline one for a small layer
    rt.replays.pop((spec, "auto"), None)
    y0 = be.run(x, w, None, spec, info=RunInfo())
    assert len(planned) == 1 and (spec, "auto") in rt.replays
    info = RunInfo()
    w2 = -w
    y1 = be.run(x, w2, None, spec, info=info)
    assert len(planned) == 1  # replayed: nothing planned, the new weights packed
    assert info.algo == "gemm" and info.timings["compute"] > 0
    assert_close(y0, _ref(x, w), "float32")
    assert_close(y1, _ref(x, w2), "float32")
    # a run in float16 converts the arrays first: it plans, and keeps no launch for them
    h = x.astype(np.float16), w.astype(np.float16)
    spec16 = convcli.spec.make_spec(*h, None, padding=1)
    be.run(*h, None, spec16, info=RunInfo())
    assert (spec16, "auto") not in be.runtime_for(spec16).replays
    # a replay that fails is dropped (the next run plans afresh) and the error passes
    monkeypatch.setenv("CONVCLI_FAULT", "build")
    with pytest.raises(BackendError, match="BUILD_PROGRAM_FAILURE"):
        be.run(x, w, None, spec, info=RunInfo())
    assert (spec, "auto") not in rt.replays
    monkeypatch.delenv("CONVCLI_FAULT")
    assert_close(be.run(x, w, None, spec, info=RunInfo()), y0, "float32")
    assert (spec, "auto") in rt.replays


@pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")
def test_kept_output_buffers_are_bounded_and_results_right(monkeypatch):
    # outputs up to SMALL_OUTPUT_BYTES are copied out of a device buffer kept per size;
    # past SMALL_KEPT_BYTES the least recently used go, and every result stays right
    from convcli import backends
    from convcli.backends.opencl import runtime

    be = backends.get_backend("opencl")
    monkeypatch.setattr(runtime, "SMALL_KEPT_BYTES", 40_000)
    rng = np.random.default_rng(11)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    for hw in [(30, 31), (12, 9), (33, 40), (30, 31), (5, 70), (12, 9)]:
        x = rng.standard_normal((1, 4, *hw)).astype(np.float32)
        y = convcli.conv2d(x, w, padding=1, backend="opencl")
        assert_close(y, _ref(x, w), "float32")
        rt = be.runtime_for(convcli.spec.make_spec(x, w, None, padding=1))
        assert rt._small and (sum(rt._small) <= 40_000 or len(rt._small) == 1)


def test_auto_keeps_its_numpy_first_decision_until_the_index_changes(tmp_path, monkeypatch):
    from convcli import backends
    from convcli.backends import build_index, choice
    from convcli.spec import make_spec

    monkeypatch.setenv("CONVCLI_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.delenv("CONVCLI_FAULT", raising=False)
    monkeypatch.setattr(backends, "started_opencl", lambda device=None: None)
    monkeypatch.setattr(choice, "_DECIDED", {})
    x = np.zeros((1, 8, 7, 7), np.float32)
    w = np.ones((8, 8, 3, 3), np.float32)
    spec = make_spec(x, w, None, padding=1)
    priced = []
    real = choice._numpy_seconds

    def counted(*args):
        priced.append(1)
        return real(*args)

    monkeypatch.setattr(choice, "_numpy_seconds", counted)
    # a tiny layer: NumPy finishes before OpenCL would have started (no index: 0.3 s)
    assert choice.numpy_first(spec, w, None, "auto")
    assert choice.numpy_first(spec, w, None, "auto")
    assert len(priced) == 1  # the second call was answered by the kept decision
    # another index folder: priced afresh
    monkeypatch.setenv("CONVCLI_CACHE_DIR", str(tmp_path / "b"))
    assert choice.numpy_first(spec, w, None, "auto")
    assert len(priced) == 2
    # a write to the index (a start-up measured at 0 s): priced afresh (still NumPy:
    # the layer's programs cost more to fetch than OpenCL would save)
    build_index._store(None, build_index.DeviceRecord("dev", "dev", True, 65536, 0.0))
    assert choice.numpy_first(spec, w, None, "auto")
    assert len(priced) == 3
    # injected faults still go to OpenCL, whatever was kept
    monkeypatch.setenv("CONVCLI_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("CONVCLI_FAULT", "build")
    assert not choice.numpy_first(spec, w, None, "auto")


def test_auto_does_not_keep_a_decision_that_read_the_weights(tmp_path, monkeypatch):
    from convcli import backends
    from convcli.backends import choice
    from convcli.spec import make_spec

    monkeypatch.setenv("CONVCLI_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("CONVCLI_FAULT", raising=False)
    monkeypatch.setattr(backends, "started_opencl", lambda device=None: None)
    monkeypatch.setattr(choice, "_DECIDED", {})
    # a 7x7 depthwise layer on a large map: NumPy's choice looks for rank-1 kernels
    x = np.zeros((1, 4, 64, 64), np.float32)
    w = np.ones((4, 1, 7, 7), np.float32)
    spec = make_spec(x, w, None, padding=3, groups=4)
    assert choice._numpy_seconds(spec, w, "auto")[1]
    choice.numpy_first(spec, w, None, "auto")
    assert choice._DECIDED == {}


@pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")
@pytest.mark.parametrize(
    ("shape", "k", "kernel", "replayed"),
    [
        ((1, 4, 12, 40), 3, "dw_direct", True),  # 9 taps: the plan never reads values
        ((2, 4, 10, 56), 3, "dw_wide", True),
        ((1, 4, 12, 40), 5, "dw_direct", False),  # 25 taps: the rank-1 test decides
    ],
)
def test_a_depthwise_launch_is_replayed_where_its_plan_ignores_the_values(
    shape, k, kernel, replayed
):
    from convcli import backends
    from convcli.backends.opencl import plan as opencl_plan
    from convcli.runinfo import RunInfo

    be = backends.get_backend("opencl")
    if not be.is_cpu:
        pytest.skip("dw_wide runs on CPU devices")
    rng = np.random.default_rng(11)
    c, pad = shape[1], k // 2
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((c, 1, k, k)).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    spec = convcli.spec.make_spec(x, w, b, padding=pad, groups=c)
    plan = opencl_plan.for_device(spec, w, cpu=True, settings=be.settings)[0]
    assert plan.kernel == kernel
    rt = be.runtime_for(spec)
    rt.replays.pop((spec, "auto"), None)

    def ref(w):
        return naive_conv2d(x, w, b, (1, 1), (pad,) * 4, (1, 1), c)

    assert_close(be.run(x, w, b, spec, info=RunInfo()), ref(w), "float32")
    assert ((spec, "auto") in rt.replays) == replayed
    # the weights changed in place: the replay packs them again
    w *= -0.5
    info = RunInfo()
    assert_close(be.run(x, w, b, spec, info=info), ref(w), "float32")
    assert info.algo == "direct" and info.timings["compute"] > 0


@pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")
@pytest.mark.parametrize("n", [1, 8])
def test_a_one_pixel_1x1_layer_runs_as_a_host_matrix_product(n):
    # squeeze-and-excitation's fully connected layers: a launch costs more than them
    from convcli.runinfo import RunInfo

    rng = np.random.default_rng(12)
    x = rng.standard_normal((n, 144, 1, 1)).astype(np.float32)
    layer = convcli.Conv2d(144, 576, 1, seed=3)
    info = RunInfo()
    y = layer(x, backend="opencl", info=info)
    assert info.backend == "opencl" and "matrix product on the host" in info.notices[0]
    assert "compute" in info.timings
    want = naive_conv2d(x, np.array(layer.weight), np.array(layer.bias), (1, 1), (0,) * 4)
    assert_close(y, want, "float32")
    # a 1x1 layer on a larger map stays on the device, but on a CPU device (up to 8
    # images: host_pointwise_max_batch); padded, it stays on the device
    from convcli import backends

    host = backends.get_backend("opencl").is_cpu
    for shape, pad, on_host in (((n, 144, 2, 1), 0, host), ((n, 144, 1, 1), 1, False)):
        info = RunInfo()
        xs = rng.standard_normal(shape).astype(np.float32)
        convcli.conv2d(xs, layer.weight, layer.bias, padding=pad, backend="opencl", info=info)
        assert info.timings["compute"] > 0
        assert bool(info.notices) == on_host
        assert not on_host or "needs no launch" in info.notices[0]


@pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")
@pytest.mark.parametrize("shape", [(48, 48, 3, 3), (160, 128, 1, 1)])
def test_weights_compared_in_full_after_the_launches(monkeypatch, shape):
    # large weights met again are served on a sample's match and compared in full
    # while the kernels run (after the last launch is queued); a change the sample
    # misses is still seen: the run is done again with the weights packed afresh
    from convcli.backends.opencl import runtime

    _, cin, k, _ = shape
    n = 9 if k == 1 else 2  # a 1x1 layer of up to 8 images runs on the host on a CPU
    pad = k // 2
    x, w = _late_check_layer(monkeypatch, 7, (n, cin, 9, 11), shape, pad)
    assert w.nbytes > 1 << 16
    convcli.conv2d(x, w, padding=pad, backend="opencl")
    order = []
    real_enqueue, real_same = runtime.Runtime.enqueue, runtime.same_values

    def enqueue(self, *args, **kwargs):
        order.append("launch")
        return real_enqueue(self, *args, **kwargs)

    def same(kept, given):
        order.append("compare")
        return real_same(kept, given)

    monkeypatch.setattr(runtime.Runtime, "enqueue", enqueue)
    monkeypatch.setattr(runtime, "same_values", same)
    out = convcli.conv2d(x, w, padding=pad, backend="opencl")
    assert_close(out, _ref(x, w, pad=pad), "float32")
    assert "launch" in order and order[-1] == "compare" and order.count("compare") == 1
    # one value that the 64-value sample skips (index 1), in place
    w.reshape(-1)[1] += 3.0
    order.clear()
    out = convcli.conv2d(x, w, padding=pad, backend="opencl")
    assert_close(out, _ref(x, w, pad=pad), "float32")
    launches = order.count("launch")
    assert launches >= 2 and launches % 2 == 0  # the run, then the run again
    again = convcli.conv2d(x, w, padding=pad, backend="opencl")
    np.testing.assert_array_equal(again, out)


@pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")
@pytest.mark.parametrize(
    "n, cin, cout, groups, bias",
    [(1, 96, 24, 1, True), (3, 10, 6, 2, False), (8, 440, 110, 1, True)],  # N=8: BLAS on one
)
def test_a_host_matrix_product_is_replayed_exactly(numpy_settings, n, cin, cout, groups, bias):
    # a 1x1 layer on 1x1 maps keeps its host matrix product as the warm replay: the same
    # bits as NumPy's backend, in-place changes of the weights and bias seen, NumPy's
    # settings honoured
    from convcli import backends
    from convcli.backends.opencl import plan as opencl_plan
    from convcli.runinfo import RunInfo

    be = backends.get_backend("opencl")
    rng = np.random.default_rng(n + cin)
    x = rng.standard_normal((n, cin, 1, 1)).astype(np.float32)
    w = rng.standard_normal((cout, cin // groups, 1, 1)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32) if bias else None
    spec = convcli.spec.make_spec(x, w, b, groups=groups)
    assert opencl_plan.for_device(spec, w, settings=be.settings)[0].kernel == "host_gemm"
    rt = be.runtime_for(spec)
    rt.replays.pop((spec, "auto"), None)

    def check():
        info = RunInfo()
        y = convcli.conv2d(x, w, b, groups=groups, backend="opencl", info=info)
        want = convcli.conv2d(x, w, b, groups=groups, backend="numpy")
        assert y.dtype == np.float32 and y.shape == (n, cout, 1, 1)
        assert np.array_equal(y, want)  # the same matmul: the same bits
        assert_close(y, naive_conv2d(x, w, b, (1, 1), (0,) * 4, (1, 1), groups), "float32")
        assert info.algo == "gemm" and "matrix product on the host" in info.notices[0]
        assert info.timings["compute"] > 0

    check()
    assert (spec, "auto") in rt.replays  # kept by the first call
    check()  # the replay
    w[-1, 0, 0, 0] += 1.5  # in place
    if b is not None:
        b[0] -= 1.0
    check()
    numpy_settings(quiet_blas_macs=0)  # NumPy's own path again (another BLAS switch)
    check()


@pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")
def test_a_fetch_on_another_thread_leaves_the_deferred_check_to_its_run(monkeypatch):
    # a native strip fetches from the same runtime outside the lock a conv2d run holds
    # (convcli.native._opencl_strip): while that run has large weights served on a
    # sample's match, the strip's fetch must not take the run's pending comparison
    # (the run's own check then found none left and returned the stale result)
    import threading
    import time

    from convcli.backends import get_backend
    from convcli.backends.opencl import runtime

    be = get_backend("opencl")
    x, w = _late_check_layer(monkeypatch, 11, (2, 128, 9, 11), (128, 128, 3, 3), 1)
    convcli.conv2d(x, w, padding=1, backend="opencl")  # packs w
    w.reshape(-1)[1] += 3.0  # in place, where the 64-value sample does not look
    queued, fetched = threading.Event(), threading.Event()
    real_enqueue, real_same = runtime.Runtime.enqueue, runtime.same_values

    def enqueue(self, *args, **kwargs):
        event = real_enqueue(self, *args, **kwargs)
        if threading.current_thread().name == "layer" and not queued.is_set():
            queued.set()
            fetched.wait(10)  # the strip's fetch happens now, mid-run
        return event

    def same(kept, given):
        if threading.current_thread().name == "strip":
            fetched.set()
            time.sleep(0.3)  # the comparison still under way when the run checks
        return real_same(kept, given)

    monkeypatch.setattr(runtime.Runtime, "enqueue", enqueue)
    monkeypatch.setattr(runtime, "same_values", same)
    strip_out, strip_buf = be.output((64, 64), np.float32)
    got = {}

    def strip():
        try:
            queued.wait(10)
            be.fetch(strip_out, strip_buf)
        finally:
            fetched.set()

    def layer():
        got["out"] = convcli.conv2d(x, w, padding=1, backend="opencl")

    threads = [threading.Thread(target=strip, name="strip"),
               threading.Thread(target=layer, name="layer")]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert queued.is_set()
    assert_close(got["out"], _ref(x, w), "float32")


@pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")
def test_weights_the_sample_cannot_tell_apart_run_once_a_call(monkeypatch):
    # two weights of one shape that agree on the 64 sampled values (they differ at
    # every odd index): once a late comparison has found one served for the other,
    # that shape's weights are compared in full before the launches, not run twice
    # (and packed afresh) at every call
    from convcli.backends.opencl import runtime

    x, w1 = _late_check_layer(monkeypatch, 12, (1, 64, 8, 8), (64, 64, 3, 3), 1)
    w2 = w1.copy()
    w2.reshape(-1)[1::2] *= -1
    launches = []
    real_enqueue = runtime.Runtime.enqueue

    def enqueue(self, *args, **kwargs):
        launches.append(1)
        return real_enqueue(self, *args, **kwargs)

    monkeypatch.setattr(runtime.Runtime, "enqueue", enqueue)
    convcli.conv2d(x, w1, padding=1, backend="opencl")
    once = len(launches)
    per_call = []
    for w in (w2, w1, w2, w1, w2):
        launches.clear()
        out = convcli.conv2d(x, w, padding=1, backend="opencl")
        assert_close(out, _ref(x, w), "float32")
        per_call.append(len(launches))
    # the first w2 call: served w1's buffers on the sample, found them stale, ran again
    assert per_call == [2 * once] + [once] * 4


@pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")
def test_a_host_products_replay_follows_blas_threads(numpy_settings, monkeypatch):
    # a 1x1 layer large enough for NumPy's threads, kept as a one-thread replay while
    # BLAS was held at one thread (a caller's threadpool_limits), runs NumPy's threaded
    # path once BLAS has its threads back, as NumPy's backend would
    import os

    from convcli import backends
    from convcli.backends.numpy import gemm as np_gemm
    from convcli.backends.numpy import threads as np_threads
    from convcli.runinfo import RunInfo

    be = backends.get_backend("opencl")
    if not be.is_cpu or not np_threads.ONE_THREAD_BLAS.available:
        pytest.skip("the host route is for CPU devices; NumPy's threads need threadpoolctl")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("NumPy's backend runs one thread here")
    # this small layer is "large"
    numpy_settings(threads=None, threaded_min_flops=1, pointwise_threaded_min_flops=1)
    numpy = backends.get_backend("numpy")
    rng = np.random.default_rng(31)
    x = rng.standard_normal((2, 24, 9, 7)).astype(np.float32)
    w = rng.standard_normal((40, 24, 1, 1)).astype(np.float32)
    spec = convcli.spec.make_spec(x, w, None)
    rt = be.runtime_for(spec)
    rt.replays.pop((spec, "auto"), None)
    monkeypatch.setattr(np_threads.ONE_THREAD_BLAS, "threads", lambda: 1)
    assert np_gemm.pointwise_threads(spec, numpy.settings) == 1
    convcli.conv2d(x, w, backend="opencl")
    assert (spec, "auto") in rt.replays  # kept: NumPy ran one matmul
    monkeypatch.setattr(np_threads.ONE_THREAD_BLAS, "threads", lambda: 2)
    assert np_gemm.pointwise_threads(spec, numpy.settings) == 2
    jobs = []
    real = np_threads.run_jobs

    def counted(job, args, threads, settings, spec=None):
        jobs.append(threads)
        return real(job, args, threads, settings, spec)

    monkeypatch.setattr("convcli.backends.numpy.gemm.run_jobs", counted)
    info = RunInfo()
    y = convcli.conv2d(x, w, backend="opencl", info=info)
    assert jobs == [2]  # NumPy's pieces on two threads, not the kept one-thread matmul
    assert "on the host (NumPy)" in info.notices[0]
    assert_close(y, naive_conv2d(x, w, None, (1, 1), (0,) * 4), "float32")


@pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")
@pytest.mark.parametrize("pointwise_threaded", [True, False])
def test_a_host_products_replay_asks_pointwise_thread_rule(
    numpy_settings, monkeypatch, pointwise_threaded
):
    # NumPy's 1x1 products take its threads by their own threshold
    # (pointwise_threaded_min_flops), not the gathering paths' (threaded_min_flops): the
    # host route keeps its one-thread replay exactly where that rule gives one thread
    import os

    from convcli import backends
    from convcli.backends.numpy import gemm as np_gemm
    from convcli.backends.numpy import threads as np_threads

    be = backends.get_backend("opencl")
    if not be.is_cpu or not np_threads.ONE_THREAD_BLAS.available:
        pytest.skip("the host route is for CPU devices; NumPy's threads need threadpoolctl")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("NumPy's backend runs one thread here")
    big = 10**15
    numpy_settings(
        threads=None,
        threaded_min_flops=big if pointwise_threaded else 1,
        pointwise_threaded_min_flops=1 if pointwise_threaded else big,
    )
    monkeypatch.setattr(np_threads.ONE_THREAD_BLAS, "threads", lambda: 2)
    numpy = backends.get_backend("numpy")
    rng = np.random.default_rng(37)
    x = rng.standard_normal((2, 24, 9, 7)).astype(np.float32)
    w = rng.standard_normal((40, 24, 1, 1)).astype(np.float32)
    spec = convcli.spec.make_spec(x, w, None)
    assert np_gemm.pointwise_threads(spec, numpy.settings) == (2 if pointwise_threaded else 1)
    assert np_threads.gemm_threads(spec, numpy.settings) == (1 if pointwise_threaded else 2)
    rt = be.runtime_for(spec)
    rt.replays.pop((spec, "auto"), None)
    for _ in range(2):
        y = convcli.conv2d(x, w, backend="opencl")
        assert_close(y, naive_conv2d(x, w, None, (1, 1), (0,) * 4), "float32")
    assert ((spec, "auto") in rt.replays) == (not pointwise_threaded)
