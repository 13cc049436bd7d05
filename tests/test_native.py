"""The native-depth strip filter against an independent float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import opencl_available, run_twice_with_one_pocl_cache

from convcli import native
from convcli.native import filter_strip

# Levels may differ from the float64 result by one where the float32 value lies within
# float32 rounding of a half level. For 8-bit output that is rare; for 16-bit output a
# float32 value near 1 is only 2**-24 * 65535 = 0.004 levels fine, so up to about 1 %
# of random 16-bit samples may land one level off (the float path does the same).
EXACT = {255: 0.999, 65535: 0.99}

_g = np.exp(-(np.arange(-3, 4) ** 2) / 4.0)
KERNELS = {
    "gaussian": np.outer(_g, _g) / np.outer(_g, _g).sum(),  # rank 1, 7x7
    "box": np.full((5, 5), 1 / 25),  # rank 1
    "box3": np.full((3, 3), 1 / 9),  # rank 1, direct on OpenCL
    "sharpen": np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]]),
    "emboss": np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]),
    "edge": np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]]),
    "random5": np.random.default_rng(5).normal(0, 0.2, (5, 5)),  # not rank 1
}


def reference(strip, top, kernel, stride=(1, 1), dilation=(1, 1), bias=0.0, scale=1.0,
              offset=0.0, out_map="clip", out_top=255):  # fmt: skip
    """Naive float64 'valid' cross-correlation, mapping and rounding, in levels."""
    x = strip.astype(np.float64) / top
    k = np.asarray(kernel, np.float64)
    kh, kw = k.shape
    (sh, sw), (dh, dw) = stride, dilation
    ho = (x.shape[0] - dh * (kh - 1) - 1) // sh + 1
    wo = (x.shape[1] - dw * (kw - 1) - 1) // sw + 1
    acc = np.zeros((ho, wo, x.shape[2]))
    for i in range(kh):
        for j in range(kw):
            view = x[i * dh :: sh][:ho, j * dw :: sw][:, :wo]
            acc += k[i, j] * view
    v = (acc + bias) * scale + offset
    if out_map == "abs":
        v = np.abs(v)
    elif out_map == "offset":
        v = v + 0.5
    return np.rint(np.clip(v, 0, 1) * out_top)


def check(result, expected, out_top):
    assert result is not None
    assert result.shape == expected.shape
    assert result.dtype == (np.uint8 if out_top == 255 else np.uint16)
    diff = np.abs(result.astype(np.int64) - expected.astype(np.int64))
    assert diff.max() <= 1
    assert (diff == 0).mean() >= EXACT[out_top], (diff > 0).mean()


@pytest.fixture(params=["numpy", "opencl"])
def be(request) -> str:
    if request.param == "opencl" and not opencl_available():
        pytest.skip("no OpenCL device")
    return request.param


def _strip(shape, dtype, seed=0):
    top = np.iinfo(dtype).max
    rng = np.random.default_rng(seed)
    # smooth content plus noise: values across the range, like a photo
    rows, cols, c = shape
    yy, xx = np.mgrid[0:rows, 0:cols]
    base = (np.sin(yy / 7.0)[..., None] + np.cos(xx[..., None] / 5.0 + np.arange(c))) * 0.25 + 0.5
    noisy = base + rng.normal(0, 0.15, shape)
    return np.clip(np.rint(noisy * top), 0, top).astype(dtype), float(top)


@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_kernels_match_float64(be, name, dtype):
    strip, top = _strip((70, 101, 3), dtype)
    k = KERNELS[name]
    out_top = int(top)
    got = filter_strip(strip, top=top, kernel=k, bias=0.01, out_top=out_top, backend=be)
    check(got, reference(strip, top, k, bias=0.01, out_top=out_top), out_top)


@pytest.mark.parametrize("name", ["gaussian", "sharpen"])
@pytest.mark.parametrize("stride,dilation", [((2, 3), (2, 1)), ((1, 2), (1, 3)), ((3, 1), (1, 1))])
def test_stride_and_dilation(be, name, stride, dilation):
    strip, top = _strip((61, 83, 3), np.uint8, seed=1)
    k = KERNELS[name]
    got = filter_strip(strip, top=top, kernel=k, stride=stride, dilation=dilation, backend=be)
    check(got, reference(strip, top, k, stride, dilation), 255)


# Scales and offsets that put no exact result on a half level: there the float64
# reference's own rounding decides, and a box filter of integers hits such ties often.
@pytest.mark.parametrize(
    "out_map,scale,offset", [("clip", 2.03, -0.2987), ("abs", 3.07, 0.0), ("offset", 1.53, 0.1037)]
)
@pytest.mark.parametrize("name", ["edge", "box"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_output_maps(be, out_map, scale, offset, name, dtype):
    strip, top = _strip((40, 57, 3), dtype, seed=2)
    k = KERNELS[name]
    kw = dict(bias=-0.0213, scale=scale, offset=offset, out_map=out_map)
    for out_top in (255, 65535):  # the output depth need not be the input's
        got = filter_strip(strip, top=top, kernel=k, out_top=out_top, backend=be, **kw)
        want = reference(strip, top, k, out_top=out_top, **kw)
        check(got, want, out_top)
        # the mapping matters: the plain result differs
        assert not np.array_equal(want, reference(strip, top, k, out_top=out_top))


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("name", ["gaussian", "emboss"])
@pytest.mark.parametrize("size", [(7, 12), (9, 30), (20, 7), (31, 133)])
def test_odd_sizes(be, channels, name, size):
    # 1-row and 1-column outputs (7 rows or columns for the 7x7 kernel), widths whose
    # W_out * C is not a multiple of 8
    strip, top = _strip((*size, channels), np.uint8, seed=channels)
    k = KERNELS[name]
    got = filter_strip(strip, top=top, kernel=k, backend=be)
    check(got, reference(strip, top, k), 255)


def test_writes_into_out(be):
    strip, top = _strip((30, 40, 3), np.uint16, seed=3)
    k = KERNELS["gaussian"]
    out = np.zeros((24, 34, 3), np.uint16)
    got = filter_strip(strip, top=top, kernel=k, out=out, out_top=65535, backend=be)
    assert got is out
    check(out, reference(strip, top, k, out_top=65535), 65535)


def test_non_contiguous_strip(be):
    # a strip cut out of a larger padded image is a view with a longer row pitch
    image, top = _strip((40, 90, 3), np.uint8, seed=4)
    strip = image[5:30, 10:70]
    k = KERNELS["box"]
    got = filter_strip(strip, top=top, kernel=k, backend=be)
    check(got, reference(strip, top, k), 255)


def test_full_range_and_saturation(be):
    # constant white and black, and a sharpen that overshoots both ends
    strip = np.zeros((9, 20, 3), np.uint8)
    strip[:, 10:] = 255
    got = filter_strip(strip, top=255.0, kernel=KERNELS["sharpen"], backend=be)
    assert got[:, :7].max() == 0 and got[:, 10:].min() == 255
    check(got, reference(strip, 255.0, KERNELS["sharpen"]), 255)


@pytest.mark.parametrize(
    "change",
    [
        dict(strip=np.zeros((9, 9, 3), np.float32)),  # float samples
        dict(strip=np.zeros((9, 9), np.uint8)),  # no channel axis
        dict(out_map="normalize"),  # needs the whole image
        dict(out_top=1023),
        dict(kernel=np.full((3, 3), np.nan)),
        dict(kernel=np.ones((2, 3, 3))),  # one kernel per channel
        dict(strip=np.zeros((2, 9, 3), np.uint8)),  # fewer rows than the kernel
        dict(scale=float("inf")),
        dict(out=np.zeros((7, 7, 3), np.uint16)),  # wrong output dtype
    ],
)
def test_returns_none_for_what_it_does_not_cover(be, change):
    args = dict(strip=np.zeros((9, 9, 3), np.uint8), top=255.0, kernel=np.ones((3, 3)) / 9)
    args.update(change)
    assert filter_strip(**args, backend=be) is None


def test_numpy_leaves_large_non_separable_kernels():
    k = np.random.default_rng(0).normal(size=(9, 9))
    strip = np.zeros((20, 20, 1), np.uint8)
    assert filter_strip(strip, top=255.0, kernel=k, backend="numpy") is None
    # a rank-1 kernel of the same size is covered
    assert filter_strip(strip, top=255.0, kernel=np.ones((9, 9)) / 81, backend="numpy") is not None


def test_numpy_threads_give_the_same_levels(numpy_settings):
    strip, top = _strip((150, 700, 3), np.uint8, seed=6)
    results = []
    for threads in (1, 2):
        numpy_settings(threads=threads)
        results.append(filter_strip(strip, top=top, kernel=KERNELS["gaussian"], backend="numpy"))
    np.testing.assert_array_equal(results[0], results[1])
    check(results[1], reference(strip, top, KERNELS["gaussian"]), 255)


def test_auto_takes_numpy_for_a_tiny_strip_without_a_built_program():
    strip, top = _strip((12, 12, 3), np.uint8)
    plan = native._plan(strip, top, KERNELS["box3"], (1, 1), (1, 1), 0.0, 1.0, 0.0, "clip",
                        255, None)  # fmt: skip
    assert native.choose_backend(plan, strips=1) == "numpy"


def test_opencl_program_from_pocl_cache(tmp_path):
    # PoCL's disk cache has returned programs without kernels: build in one process,
    # load in a second, both must filter
    if not opencl_available():
        pytest.skip("no OpenCL device")
    script = (
        "import numpy as np\n"
        "from convcli.native import filter_strip\n"
        "s = (np.arange(20 * 30 * 3) % 251).astype(np.uint8).reshape(20, 30, 3)\n"
        "k = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0\n"
        "a = filter_strip(s, top=255.0, kernel=k, backend='opencl')\n"
        "b = filter_strip(s, top=255.0, kernel=[[0, -1, 0], [-1, 5, -1], [0, -1, 0]],\n"
        "                 backend='opencl')\n"
        "print(int(a.astype(np.int64).sum()), int(b.astype(np.int64).sum()))\n"
    )
    first, second = run_twice_with_one_pocl_cache(script, tmp_path)
    assert first == second and first.strip() != ""


def test_auto_takes_opencl_for_a_large_strip_once_built():
    if not opencl_available():
        pytest.skip("no OpenCL device")
    k = np.outer(_g, _g)
    small = np.zeros((20, 20, 3), np.uint8)
    assert filter_strip(small, top=255.0, kernel=k, backend="opencl") is not None  # builds
    big = np.zeros((262, 3006, 3), np.uint8)
    plan = native._plan(big, 255.0, k, (1, 1), (1, 1), 0.0, 1.0, 0.0, "clip", 255, None)
    assert native.choose_backend(plan, strips=1) == "opencl"


def test_twelve_bit_input_to_eight_bit_output(be):
    # a 12-bit image held in uint16 samples: top is 4095, not the dtype's maximum
    strip, _ = _strip((30, 41, 3), np.uint16, seed=7)
    strip >>= 4
    k = KERNELS["gaussian"]
    got = filter_strip(strip, top=4095.0, kernel=k, out_top=255, backend=be)
    check(got, reference(strip, 4095.0, k), 255)
    assert got.max() > 200  # the range is used: 4095 maps to 255


@pytest.mark.parametrize("name", ["gaussian", "emboss"])
def test_strips_are_seamless(be, name):
    # the image filtered whole and as two strips (each with its halo) gives the same
    # levels, within the one-level rounding rule
    image, top = _strip((90, 77, 3), np.uint8, seed=8)
    k = KERNELS[name]
    halo = k.shape[0] - 1
    whole = filter_strip(image, top=top, kernel=k, backend=be)
    cut = 37
    parts = [
        filter_strip(image[: cut + halo], top=top, kernel=k, backend=be),
        filter_strip(image[cut:], top=top, kernel=k, backend=be),
    ]
    joined = np.concatenate(parts)
    assert joined.shape == whole.shape
    diff = np.abs(joined.astype(np.int64) - whole)
    assert diff.max() <= 1 and (diff == 0).mean() >= 0.999
    check(joined, reference(image, top, k), 255)


def test_info_records_backend_algorithm_and_times(be):
    from convcli.runinfo import RunInfo

    strip, top = _strip((40, 50, 3), np.uint8)
    for name, algo in (("gaussian", "native-separable"), ("emboss", "native-direct")):
        info = RunInfo()
        assert filter_strip(strip, top=top, kernel=KERNELS[name], backend=be, info=info) is not None
        assert (info.backend, info.algo) == (be, algo)
        assert info.timings["compute"] > 0 and info.timings["total"] >= info.timings["compute"]


def test_shared_kernel_accepts_only_one_kernel_for_every_channel():
    k = np.arange(6.0).reshape(2, 3)
    got = native.shared_kernel(np.repeat(k[None, None], 4, axis=0), np.full(4, 0.5), 4, 4)
    assert got is not None and np.array_equal(got[0], k) and got[1] == 0.5
    assert native.shared_kernel(k, None, None, 3)[1] == 0.0
    differ = np.repeat(k[None, None], 4, axis=0)
    differ[2] += 1
    assert native.shared_kernel(differ, None, 4, 4) is None  # one kernel per channel
    assert native.shared_kernel(np.ones((4, 4, 3, 3)), None, 1, 4) is None  # dense
    assert native.shared_kernel(k, np.array([0.0, 1.0, 0.0]), None, 3) is None  # biases
    assert native.shared_kernel(k, None, 1, 3) is None  # 2-D kernel but groups 1


def test_auto_prices_a_program_the_build_index_has_as_a_cache_load(monkeypatch):
    """Before OpenCL starts, a program with a marker in the build index costs a load
    from the driver's cache, one without it a compile (as conv2d's choice prices)."""
    from convcli.backends import build_index, choice

    record = build_index.DeviceRecord("fp", "", True, 65536, 0.25)
    monkeypatch.setattr(build_index, "load_device", lambda device: record)
    monkeypatch.setattr(build_index, "driver_cache_off", lambda: False)
    plan = native._plan(np.zeros((262, 3006, 3), np.uint8), 255.0, np.outer(_g, _g), (1, 1),
                        (1, 1), 0.0, 1.0, 0.0, "clip", 255, None)  # fmt: skip
    monkeypatch.setattr(build_index, "is_built", lambda key: True)
    assert native._opencl_once(plan, None, None) == pytest.approx(0.25 + choice.CACHED_BUILD_S)
    monkeypatch.setattr(build_index, "is_built", lambda key: False)
    # without a marker: a compile with the chance the device's record has seen, else a
    # load from the driver's cache (the pricing of conv2d's programs, one function)
    record = build_index.DeviceRecord("fp", "", True, 65536, 0.25, 0.8, 1, 8, 2)  # chance 3/10
    compile_ = 0.3 * 0.8 + 0.7 * choice.CACHED_BUILD_S
    assert native._opencl_once(plan, None, None) == pytest.approx(0.25 + compile_)
    needed = [("native_filter", native._defines(plan))]
    assert choice.opencl_once(needed, None, None) == pytest.approx(0.25 + compile_)
    assert choice.opencl_once(needed, None, None, most=0.2) == pytest.approx(0.25)


# ------------------------------------------------------------ padding inside the step
PAD_MODES = ["zeros", "reflect", "replicate", "circular", "symmetric"]


def _kernel_names(monkeypatch, be: str) -> list[str]:
    """The OpenCL kernels filter_strip fetches from now on (none on NumPy)."""
    names: list[str] = []
    if be == "opencl":
        from convcli import backends

        ocl = backends.get_backend("opencl")
        real = ocl.kernel

        def spy(*args, **kwargs):
            names.append(kwargs.get("kernel_name"))
            return real(*args, **kwargs)

        monkeypatch.setattr(ocl, "kernel", spy)
    return names


@pytest.mark.parametrize("mode", PAD_MODES)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 3])
def test_pad_gives_the_padded_copys_levels_exactly(be, monkeypatch, mode, dtype, channels):
    """filter_strip(image, pad=...) against filter_strip(pad_samples(image)): the same
    levels, bit for bit, for kernel sizes 1..9 (rank 1: OpenCL's two-pass kernels,
    which read the image through the padding's maps), symmetric and lopsided padding,
    odd sizes and images smaller than the padding."""
    rng = np.random.default_rng(channels * 7 + len(mode))
    names = _kernel_names(monkeypatch, be)
    top = float(np.iinfo(dtype).max)
    mapped = 0
    for h, w in [(1, 1), (2, 3), (6, 5), (19, 43)]:
        image = rng.integers(0, int(top) + 1, (h, w, channels)).astype(dtype)
        for kh, kw in [(1, 3), (3, 1), (5, 5), (7, 3), (3, 9), (9, 9)]:
            k = np.outer(rng.uniform(0.1, 1, kh), rng.uniform(0.1, 1, kw))
            k /= k.sum()
            for pad in [(kh // 2, (kh - 1) // 2, kw // 2, (kw - 1) // 2),
                        (kh - 1, 0, 0, kw - 1), (4, 1, 2, 6)]:  # fmt: skip
                want = filter_strip(native.pad_samples(image, pad, mode), top=top, kernel=k,
                                    backend=be)  # fmt: skip
                names.clear()
                got = filter_strip(image, pad=pad, padding_mode=mode, top=top, kernel=k,
                                   backend=be)  # fmt: skip
                assert (got is None) == (want is None), (h, w, kh, kw, pad)
                if want is None:
                    continue
                assert got.dtype == want.dtype
                assert np.array_equal(got, want), (h, w, kh, kw, pad)
                # the maps did the padding wherever OpenCL's two-pass kernels ran (in one
                # launch, the fused kernel: stride 1 here; in two where the device's
                # local memory is too small for its tile)
                two_pass = be == "opencl" and kh > 1 and kw > 1 and kh * kw > 2 * (kh + kw)
                read_mapped = "native_filter_fused" in names or "native_filter_vmap" in names
                assert read_mapped == two_pass, (h, w, kh, kw, pad)
                mapped += two_pass
    assert mapped >= (0 if be == "numpy" else 30)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "circular"])
def test_pad_with_stride_dilation_and_mappings(be, mode):
    rng = np.random.default_rng(11)
    image = rng.integers(0, 256, (23, 37, 4)).astype(np.uint8)
    k = np.outer(rng.normal(size=5), rng.normal(size=4))
    # (each geometry and mapping is a program build: two of them)
    for stride, dilation, (out_map, scale, offset) in [
        ((2, 3), (1, 2), ("abs", 2.0, 0.1)),
        ((3, 1), (2, 1), ("offset", 1.5, -0.2)),
    ]:
        args = dict(top=255.0, kernel=k, stride=stride, dilation=dilation, bias=0.05,
                    scale=scale, offset=offset, out_map=out_map, out_top=65535,
                    backend=be)  # fmt: skip
        pad = (3, 5, 0, 4)
        want = filter_strip(native.pad_samples(image, pad, mode), **args)
        got = filter_strip(image, pad=pad, padding_mode=mode, **args)
        assert np.array_equal(got, want), (stride, dilation, out_map)
        # and the float64 reference of the padded image
        ref = reference(native.pad_samples(image, pad, mode), 255.0, k, stride, dilation,
                        0.05, scale, offset, out_map, 65535)  # fmt: skip
        check(got, ref, 65535)


def test_pad_samples_follows_numpys_pad():
    x = np.arange(4 * 6 * 2, dtype=np.uint16).reshape(4, 6, 2)
    for mode, np_mode in [("zeros", "constant"), ("reflect", "reflect"),
                          ("replicate", "edge"), ("circular", "wrap"),
                          ("symmetric", "symmetric")]:  # fmt: skip
        want = np.pad(x, ((2, 3), (5, 1), (0, 0)), mode=np_mode)
        np.testing.assert_array_equal(native.pad_samples(x, (2, 3, 5, 1), mode), want)


def test_pad_refuses_bad_arguments():
    image = np.zeros((5, 5, 1), np.uint8)
    k = np.ones((3, 3)) / 9
    with pytest.raises(ValueError, match="padding_mode"):
        filter_strip(image, pad=(1, 1, 1, 1), padding_mode="mirror", top=255.0, kernel=k)
    for pad in [(1, 1, 1), (1, -1, 1, 1), "abcd"]:
        with pytest.raises(ValueError, match="pad must be"):
            filter_strip(image, pad=pad, top=255.0, kernel=k)


@pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_fused_two_pass_matches_two_launches_and_float64(monkeypatch, dtype):
    """native_filter_fused (both passes in one launch, the vertical sums in local
    memory) gives the two-launch path's levels bit for bit and the float64 result's
    within one level: padded strips and unpadded images read through the maps, ragged
    ends, images narrower than a work-group's tile or than the kernel's halo, the
    largest halo that fits (17 taps at dilation 8 on 4 channels: 64 vectors, as many as
    a work-group has items) and one past it (the two launches then), row strides and
    dilations, and every output map."""
    from convcli import backends

    names = _kernel_names(monkeypatch, "opencl")
    # the cases' tiles take up to 32 KiB of local memory: a device with less (Oclgrind
    # with a GPU's 16 KiB) runs some of them in two launches
    roomy = backends.get_backend("opencl").limits.local_mem_bytes >= native.CL_FUSED_LOCAL_BYTES
    top = float(np.iinfo(dtype).max)
    rng = np.random.default_rng(11)
    k7 = KERNELS["gaussian"]
    k17 = np.outer(np.hanning(19)[1:-1], np.hanning(19)[1:-1] * 0.5)
    k17 /= k17.sum()
    cases = [
        # (rows, cols, channels), kernel, stride, dilation, map, pad, fused
        ((40, 700, 3), k7, (1, 1), (1, 1), "clip", (3, 3, 3, 3), True),
        ((9, 5, 1), k7, (1, 1), (1, 1), "clip", (3, 3, 3, 3), True),
        ((33, 171, 4), KERNELS["box"], (2, 1), (1, 2), "abs", (4, 0, 1, 7), True),
        ((17, 150, 4), k17, (1, 1), (1, 8), "offset", (8, 8, 64, 64), True),
        ((9, 150, 4), k17, (1, 1), (1, 9), "clip", (8, 8, 72, 72), False),
        ((30, 64, 2), k7, (3, 1), (2, 1), "clip", None, True),
    ]
    for shape, kernel, stride, dilation, out_map, pad, fusable in cases:
        image, _ = _strip(shape, dtype, seed=int(rng.integers(1000)))
        scale, bias = (1.5, -0.3) if out_map == "abs" else (1.0, 0.0)
        kw = dict(top=top, kernel=kernel, stride=stride, dilation=dilation, out_map=out_map,
                  scale=scale, bias=bias, out_top=int(top), backend="opencl")  # fmt: skip
        padded = image if pad is None else native.pad_samples(image, pad, "reflect")
        want = reference(padded, top, kernel, stride, dilation, bias, scale, 0.0, out_map,
                         int(top))  # fmt: skip
        runs = []
        for fused in (True, False):
            monkeypatch.setattr(native, "CL_FUSED", fused)
            names.clear()
            if pad is None:
                got = filter_strip(padded, **kw)
            else:
                got = filter_strip(image, pad=pad, padding_mode="reflect", **kw)
            if roomy:
                assert ("native_filter_fused" in names) == (fused and fusable), (shape, names)
            check(got, want, int(top))
            runs.append(got)
        assert np.array_equal(runs[0], runs[1]), shape


@pytest.mark.skipif(not opencl_available(), reason="no OpenCL device")
def test_fused_only_where_the_devices_local_memory_holds_its_tile(monkeypatch):
    """native_filter_fused's tile is a static local array (16.5 KiB for a 7x7 Gaussian on
    one channel): a device with less local memory (an embedded profile; Oclgrind with a
    GPU's 16 KiB in CI) refuses every launch of it at any work-group size, so there the
    two launches run, and give the same levels."""
    from dataclasses import replace

    from convcli import backends

    ocl = backends.get_backend("opencl")
    names = _kernel_names(monkeypatch, "opencl")
    strip, top = _strip((12, 30, 1), np.uint8, seed=4)
    k = KERNELS["gaussian"]
    want = reference(strip, top, k)
    # ROWS rows of 8 * LX values and one vector of halo (6 values): 16640 bytes
    need = 4 * native.CL_ROWS_V * (8 * native.CL_LOCAL[0] + 8)
    real = ocl.limits.local_mem_bytes
    for local_mem, fused in ((real, real >= need), (need - 1, False)):
        monkeypatch.setattr(ocl, "limits", replace(ocl.limits, local_mem_bytes=local_mem))
        names.clear()
        got = filter_strip(strip, top=top, kernel=k, backend="opencl")
        assert ("native_filter_fused" in names) == fused, (local_mem, names)
        assert ("native_filter_h" in names) == (not fused), (local_mem, names)
        check(got, want, 255)


def test_opencl_start_seconds_is_none_where_auto_takes_numpy():
    """No OpenCL start is priced for a case auto filters on NumPy (a tiny image once) or
    that the fused step does not cover (float samples); nothing is started."""
    from convcli.backends import started_opencl

    before = started_opencl(None)
    kernel = np.full((3, 3), 1 / 9, np.float32)
    tiny = np.full((3, 3, 1), 7, np.uint8)
    assert native.opencl_start_seconds(tiny, top=255.0, kernel=kernel, strips=1) is None
    floats = np.zeros((40, 40, 1), np.float32)
    assert native.opencl_start_seconds(floats, top=1.0, kernel=kernel, strips=100) is None
    assert started_opencl(None) is before


@pytest.mark.parametrize("preset", ["gaussian:sigma=1", "gaussian:sigma=3", "box:size=11"])
def test_a_float32_blur_keeps_the_separable_native_plan(preset):
    """The fused step asked whether the kernel is rank 1 after converting it to float64,
    so a float32 blur (rank 1 to ~6e-8) met float64's tolerance and lost its two 1-D
    passes: kernels of more than 49 taps lost the fused step altogether."""
    from convcli.filters import Filter
    from convcli.presets import is_separable

    weight = Filter.from_preset(preset).for_channels(3)[0]
    kernel = np.asarray(weight)[0, 0]
    assert kernel.dtype == np.float32 and is_separable(kernel)
    strip = np.zeros((kernel.shape[0] + 4, kernel.shape[1] + 4, 3), np.uint8)
    plan = native._plan(strip, 255, kernel, 1, 1, 0.0, 1.0, 0.0, "clip", 255, None)
    assert plan is not None and plan.col is not None and plan.row is not None
