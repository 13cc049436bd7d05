"""convcli.presets: ImageMagick-compatible kernels, the kernel-text parser, user presets."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convcli import presets as cp
from convcli.errors import InputError
from convcli.resources import data_dir

S2 = math.sqrt(2.0)

# ImageMagick's Laplacian:type kernels as its documentation and source list them.
IM_LAPLACIAN = {
    0: [[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]],
    1: [[0, -1, 0], [-1, 4, -1], [0, -1, 0]],
    2: [[-2, 1, -2], [1, 4, 1], [-2, 1, -2]],
    3: [[1, -2, 1], [-2, 4, -2], [1, -2, 1]],
    5: [
        [-4, -1, 0, -1, -4],
        [-1, 2, 3, 2, -1],
        [0, 3, 4, 3, 0],
        [-1, 2, 3, 2, -1],
        [-4, -1, 0, -1, -4],
    ],
    7: [
        [-10, -5, -2, -1, -2, -5, -10],
        [-5, 0, 3, 4, 3, 0, -5],
        [-2, 3, 6, 7, 6, 3, -2],
        [-1, 4, 7, 8, 7, 4, -1],
        [-2, 3, 6, 7, 6, 3, -2],
        [-5, 0, 3, 4, 3, 0, -5],
        [-10, -5, -2, -1, -2, -5, -10],
    ],
    15: [
        [0, 0, -1, 0, 0],
        [0, -1, -2, -1, 0],
        [-1, -2, 16, -2, -1],
        [0, -1, -2, -1, 0],
        [0, 0, -1, 0, 0],
    ],
}


# ----------------------------------------------------------------- kernel text


@pytest.mark.parametrize(
    "text",
    [
        "1,2,1;2,4,2;1,2,1",
        "1 2 1\n2 4 2\n1 2 1",
        " 1, 2, 1 ; 2 4 2 ;1,2 ,1 ;",
        "3: 1,2,1 2,4,2 1,2,1",
        "3x3: 1 2 1 2 4 2 1 2 1",
        "3x3+1+1: 1,2,1, 2,4,2, 1,2,1",
    ],
)
def test_parse_kernel_text_forms(text):
    expect = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float64)
    got = cp.parse_kernel_text(text)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, expect)


def test_parse_kernel_text_im_forms():
    np.testing.assert_array_equal(cp.parse_kernel_text("3x1: -1,0,1"), [[-1, 0, 1]])
    np.testing.assert_array_equal(cp.parse_kernel_text("1x3: 1,0,-1"), [[1], [0], [-1]])
    np.testing.assert_array_equal(
        cp.parse_kernel_text("3: -,1,- 1,1,1 nan,1,-"), [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    )
    np.testing.assert_array_equal(cp.parse_kernel_text("2x2+0+0: 1 2 3 4"), [[1, 2], [3, 4]])
    np.testing.assert_array_equal(cp.parse_kernel_text("1e-1, -2.5E1, .5"), [[0.1, -25.0, 0.5]])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("  ; ;", "empty"),
        ("1,2;3", "different lengths"),
        ("1,x,3", "'x' is not a number"),
        ("1,nan", "NaN/Inf"),
        ("1,inf", "NaN/Inf"),
        ("1e999", "overflows"),
        ("3x3: 1,2,3", "needs 9 values, got 3"),
        ("3x3+0+0: 1 2 3 4 5 6 7 8 9", "not the centre"),
        ("3: 1 1 1 1 1 1 1 1 1; 3: 1 1 1 1 1 1 1 1 1", "several kernels"),
        ("2000x1: 1", "larger than"),
        ("9" * 5000, "'9{27}\\.\\.\\.' overflows"),  # was echoed whole: a 5000-char line
        ("1," + "x" * 5000, "'x{27}\\.\\.\\.' is not a number"),
    ],
)
def test_parse_kernel_text_errors(text, message):
    with pytest.raises(InputError, match=message) as info:
        cp.parse_kernel_text(text)
    assert str(info.value).startswith("kernel ") and "\n" not in str(info.value)
    assert len(str(info.value)) < 200


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("0123456789.,;: \n-+xeE nafi")), max_size=40))
def test_parse_kernel_text_fuzz(text):
    """Any text: a finite 2-D float64 array or InputError, nothing else."""
    try:
        k = cp.parse_kernel_text(text)
    except InputError as exc:
        assert "\n" not in str(exc)
        return
    assert k.ndim == 2 and k.size > 0 and np.isfinite(k).all()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.floats(-1e6, 1e6), min_size=3, max_size=3), min_size=1, max_size=4))
def test_parse_kernel_text_round_trip(rows):
    text = ";".join(",".join(repr(v) for v in row) for row in rows)
    np.testing.assert_array_equal(cp.parse_kernel_text(text), np.array(rows))


# ----------------------------------------------------------------- normalisation


def test_normalize_kernel():
    np.testing.assert_allclose(
        cp.normalize_kernel(np.array([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]])).sum(), 1.0
    )
    sob = cp.normalize_kernel(np.array([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]]))
    np.testing.assert_allclose(sob[sob > 0].sum(), 1.0)
    np.testing.assert_allclose(sob[sob < 0].sum(), -1.0)
    np.testing.assert_allclose(sob, np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]]) / 4)
    # IM divides by |sum|: a negative-sum kernel keeps its sign.
    np.testing.assert_allclose(cp.normalize_kernel(np.array([[-1.0, -3.0]])), [[-0.25, -0.75]])
    with pytest.raises(InputError):
        cp.normalize_kernel(np.zeros((3, 3)))


def test_is_separable():
    assert cp.is_separable(cp.get_preset("gaussian:sigma=1.5").kernel)
    assert cp.is_separable(cp.get_preset("sobel").kernel)
    assert not cp.is_separable(cp.get_preset("laplacian").kernel)
    assert not cp.is_separable(cp.get_preset("disk").kernel)


# ----------------------------------------------------------------- IM definitions


def im_gaussian(width: int, sigma: float) -> np.ndarray:
    """Closed form: sampled 2-D Gaussian, normalised to sum 1."""
    r = (width - 1) // 2
    x = np.arange(-r, r + 1)
    g = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma**2))
    return g / g.sum()


@pytest.mark.parametrize(
    ("spec", "width", "sigma"),
    [("gaussian:radius=3,sigma=1.5", 7, 1.5), ("Gaussian:2x0.8", 5, 0.8)],
)
def test_gaussian_closed_form(spec, width, sigma):
    np.testing.assert_allclose(cp.get_preset(spec).kernel, im_gaussian(width, sigma), rtol=1e-12)


def im_optimal_width_2d(sigma: float) -> int:
    """GetOptimalKernelWidth2D of ImageMagick (gem.c), written out loop by loop."""
    alpha = 1.0 / (2.0 * sigma * sigma)
    beta = 1.0 / (2.0 * math.pi * sigma * sigma)
    width = 5
    while True:
        j = (width - 1) // 2
        normalize = 0.0
        for v in range(-j, j + 1):
            for u in range(-j, j + 1):
                normalize += math.exp(-(u * u + v * v) * alpha) * beta
        value = math.exp(-(j * j) * alpha) * beta / normalize
        if value < 1.0 / 65535 or value < 1e-12:
            return width - 2
        width += 2


@pytest.mark.parametrize("sigma", [0.3, 0.5, 1.0, 2.0, 3.3])
def test_gaussian_auto_width_like_imagemagick(sigma):
    k = cp.get_preset(f"gaussian:sigma={sigma}").kernel
    w = im_optimal_width_2d(sigma)
    assert k.shape == (w, w)
    np.testing.assert_allclose(k, im_gaussian(w, sigma), rtol=1e-12)


def test_gaussian_sigma_zero_is_identity():
    assert cp.get_preset("gaussian:sigma=0").kernel.tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_blur_comet_rotation():
    b = cp.get_preset("blur:radius=3,sigma=1").kernel
    assert b.shape == (1, 7) and math.isclose(b.sum(), 1.0)
    np.testing.assert_allclose(b, b[:, ::-1])
    assert cp.get_preset("blur:radius=3,sigma=1,angle=90").kernel.shape == (7, 1)
    np.testing.assert_allclose(cp.get_preset("blur:radius=3,sigma=1,angle=180").kernel, b)
    c = cp.get_preset("comet:width=4,sigma=2").kernel
    assert c.shape == (1, 7) and np.all(c[0, :3] == 0) and c[0, 3] == c.max()
    np.testing.assert_allclose(cp.get_preset("comet:width=4,sigma=2,angle=180").kernel, c[:, ::-1])
    assert cp.get_preset("comet:width=4,sigma=2,angle=90").kernel.shape == (7, 1)


def test_dog_log():
    d = cp.get_preset("dog:radius=4,sigma1=1,sigma2=2").kernel
    r = np.arange(-4, 5)
    rr = r[:, None] ** 2 + r[None, :] ** 2
    raw = np.exp(-rr / 2) / (2 * math.pi) - np.exp(-rr / 8) / (8 * math.pi)
    expect = np.where(raw >= 0, raw / raw[raw > 0].sum(), raw / -raw[raw < 0].sum())
    np.testing.assert_allclose(d, expect, rtol=1e-12)
    lg = cp.get_preset("log:radius=4,sigma=1.4").kernel
    q = rr / (2 * 1.4**2)
    raw = (1 - q) * np.exp(-q)
    expect = np.where(raw >= 0, raw / raw[raw > 0].sum(), raw / -raw[raw < 0].sum())
    np.testing.assert_allclose(lg, expect, rtol=1e-12)


@pytest.mark.parametrize(("kind", "matrix"), sorted(IM_LAPLACIAN.items()))
def test_laplacian_types_match_imagemagick(kind, matrix):
    k = cp.get_preset(f"laplacian:type={kind}").kernel
    np.testing.assert_array_equal(k, matrix)
    np.testing.assert_array_equal(cp.get_preset(f"Laplacian:{kind}").kernel, matrix)


def test_laplacian_19():
    k = cp.get_preset("laplacian:19").kernel
    assert k.shape == (9, 9) and k[4, 4] == 40 and k.sum() == 0
    np.testing.assert_array_equal(k, k.T)
    np.testing.assert_array_equal(k, k[::-1, ::-1])


def test_sobel_and_rotations():
    s0 = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]])
    np.testing.assert_array_equal(cp.get_preset("sobel").kernel, s0)
    # IM rotates clockwise: 90 puts the left column on top, 180 negates, 45 shifts the ring.
    np.testing.assert_array_equal(
        cp.get_preset("sobel:angle=90").kernel, [[1, 2, 1], [0, 0, 0], [-1, -2, -1]]
    )
    np.testing.assert_array_equal(cp.get_preset("sobel:180").kernel, -s0)
    np.testing.assert_array_equal(
        cp.get_preset("sobel:45").kernel, [[2, 1, 0], [1, 0, -1], [0, -1, -2]]
    )
    np.testing.assert_array_equal(
        cp.get_preset("sobel:angle=-90").kernel, cp.get_preset("sobel:270").kernel
    )
    np.testing.assert_array_equal(
        cp.get_preset("sobel:100").kernel, cp.get_preset("sobel:90").kernel
    )


def test_fixed_kernels_values():
    np.testing.assert_array_equal(
        cp.get_preset("roberts").kernel, [[0, 0, 0], [1, -1, 0], [0, 0, 0]]
    )
    np.testing.assert_array_equal(cp.get_preset("prewitt").kernel, [[1, 0, -1]] * 3)
    np.testing.assert_array_equal(
        cp.get_preset("compass").kernel, [[1, 1, -1], [1, -2, -1], [1, 1, -1]]
    )
    np.testing.assert_array_equal(
        cp.get_preset("kirsch").kernel, [[5, -3, -3], [5, 0, -3], [5, -3, -3]]
    )
    np.testing.assert_allclose(
        cp.get_preset("frei-chen").kernel, [[1, 0, -1], [S2, 0, -S2], [1, 0, -1]]
    )
    np.testing.assert_allclose(
        cp.get_preset("FreiChen:type=15").kernel, [[0, -0.5, 0], [0.5, 0, 0.5], [0, -0.5, 0]]
    )
    np.testing.assert_allclose(cp.get_preset("freichen:19").kernel, np.full((3, 3), 1 / 3))
    np.testing.assert_array_equal(
        cp.get_preset("scharr:90").kernel, [[3, 10, 3], [0, 0, 0], [-3, -10, -3]]
    )
    assert cp.get_preset("outline").name == "edge"
    assert cp.get_preset("emboss").kernel.sum() == 1


def test_shapes_match_imagemagick():
    assert (
        cp.get_preset("diamond").kernel.tolist()
        == (np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]]) / 5).tolist()
    )
    assert (cp.get_preset("square:2").kernel == 1 / 25).all()
    # IM: octagon radius 2 is a 5x5 diamond with |x|+|y| <= 3.
    oc = cp.get_preset("octagon").kernel
    assert oc.shape == (5, 5) and np.count_nonzero(oc) == 21
    # IM's "Disk:1.5" equals "Square", "Disk:2" equals "Diamond:2".
    np.testing.assert_array_equal(cp.get_preset("disk:1.5").kernel, cp.get_preset("square").kernel)
    np.testing.assert_array_equal(cp.get_preset("disk:2").kernel, cp.get_preset("diamond:2").kernel)
    assert cp.get_preset("disk").kernel.shape == (9, 9)
    plus = cp.get_preset("plus").kernel
    assert np.count_nonzero(plus) == 9 and plus[2].all() and plus[:, 2].all()
    cross = cp.get_preset("cross:1").kernel
    assert (cross > 0).tolist() == [[True, False, True], [False, True, False], [True, False, True]]
    assert cp.get_preset("rectangle:width=5,height=3").kernel.shape == (3, 5)
    ring = cp.get_preset("ring").kernel
    assert ring.shape == (7, 7) and ring[3, 3] == 0 and np.count_nonzero(ring) == 16  # r^2 in 8..10
    for name in ("diamond", "square", "octagon", "disk", "plus", "cross", "rectangle", "ring"):
        p = cp.get_preset(name)
        assert p.normalized and math.isclose(p.kernel.sum(), 1.0)


def test_photo_filters():
    np.testing.assert_allclose(cp.get_preset("box:size=3").kernel, np.full((3, 3), 1 / 9))
    np.testing.assert_array_equal(
        cp.get_preset("sharpen").kernel, [[0, -1, 0], [-1, 5, -1], [0, -1, 0]]
    )
    u = cp.get_preset("unsharp:radius=2,sigma=1,amount=0.5").kernel
    delta = np.zeros((5, 5))
    delta[2, 2] = 1
    np.testing.assert_allclose(u, 1.5 * delta - 0.5 * im_gaussian(5, 1.0), atol=1e-15)
    hp = cp.get_preset("high-pass:radius=2,sigma=1").kernel
    np.testing.assert_allclose(hp, delta - im_gaussian(5, 1.0), atol=1e-15)
    np.testing.assert_allclose(cp.get_preset("motion-blur:length=5").kernel, np.full((1, 5), 0.2))
    np.testing.assert_allclose(
        cp.get_preset("motion-blur:length=5,angle=90").kernel, np.full((5, 1), 0.2)
    )
    diag = cp.get_preset("motion-blur:length=7,angle=45").kernel
    np.testing.assert_allclose(diag, diag[::-1, ::-1])  # centred: symmetric through the middle
    assert diag[1, -2] > 0 and diag[-2, 1] > 0 and diag[1, 1] == 0  # rises to the right
    assert math.isclose(diag.sum(), 1.0)


# ----------------------------------------------------------------- spec parsing


def test_every_preset_is_finite_and_applicable():
    from convcli import conv2d

    x = np.random.default_rng(0).random((1, 1, 16, 16)).astype(np.float32)
    names = [p.name for p in cp.list_presets()]
    for required in (
        "unity",
        "gaussian",
        "blur",
        "comet",
        "dog",
        "log",
        "binomial",
        "laplacian",
        "sobel",
        "roberts",
        "prewitt",
        "compass",
        "kirsch",
        "frei-chen",
        "diamond",
        "square",
        "octagon",
        "disk",
        "plus",
        "cross",
        "rectangle",
        "ring",
        "box",
        "sharpen",
        "unsharp",
        "emboss",
        "edge",
        "motion-blur",
        "scharr",
        "high-pass",
    ):
        assert required in names
    for p in cp.list_presets():
        k = p.kernel
        assert k.ndim == 2 and np.isfinite(k).all() and k.dtype == np.float64, p.name
        out = conv2d(x, k[None, None].astype(np.float32), padding="same", backend="numpy")
        assert out.shape == x.shape and np.isfinite(out).all(), p.name
        assert p.description and "\n" not in p.description


def test_param_errors():
    with pytest.raises(InputError, match="did you mean gaussian"):
        cp.get_preset("gausian:sigma=2")
    with pytest.raises(
        InputError, match=r"unknown parameter 'sigmaa'; gaussian accepts radius=0.0 .*sigma=1.0"
    ):
        cp.get_preset("gaussian:sigmaa=2")
    with pytest.raises(InputError, match=r"sigma='-1' is invalid"):
        cp.get_preset("gaussian:sigma=-1")
    with pytest.raises(InputError, match=r"one of 0, 1, 2, 3, 5, 7, 15, 19"):
        cp.get_preset("laplacian:type=4")
    with pytest.raises(InputError, match="given twice"):
        cp.get_preset("box:size=3,size=5")
    with pytest.raises(InputError, match=r"larger than|wider than"):
        cp.get_preset("gaussian:radius=100000")
    with pytest.raises(InputError, match="4 values for 2 parameters"):
        cp.get_preset("gaussian:1,2,3,4")
    with pytest.raises(InputError, match="90 degree steps"):
        cp.get_preset("blur:radius=3,angle=45")


def test_spec_forms_and_names():
    assert cp.get_preset("MotionBlur:length=3").name == "motion-blur"
    assert cp.get_preset("DoG:0,1,2").params == {"radius": 0.0, "sigma1": 1.0, "sigma2": 2.0}
    assert cp.get_preset("gaussian:0x2").params == {"radius": 0.0, "sigma": 2.0}
    assert cp.get_preset("Blur:0x1+90").params == {"radius": 0.0, "sigma": 1.0, "angle": 90.0}
    assert cp.get_preset("comet:5x2-90").params["angle"] == -90.0
    with pytest.raises(InputError, match="is invalid"):
        cp.get_preset("gaussian:0xabc")
    assert cp.get_preset(" gaussian : sigma = 2 ").params["sigma"] == 2.0


@pytest.mark.parametrize(
    ("spec", "params"),
    [
        ("gaussian:3", {"radius": 3.0, "sigma": 0.0}),
        ("gaussian:x2", {"radius": 0.0, "sigma": 2.0}),
        ("blur:3", {"radius": 3.0, "sigma": 0.0, "angle": 0.0}),
        ("comet:3", {"width": 3.0, "sigma": 0.0, "angle": 0.0}),
        ("dog:3,1", {"radius": 3.0, "sigma1": 1.0, "sigma2": 0.0}),
        ("log:3", {"radius": 3.0, "sigma": 0.0}),
        ("rectangle:5", {"width": 5, "height": 5}),
        ("rectangle:x4", {"width": 4, "height": 4}),
        ("ring:2", {"radius1": 2.0, "radius2": 0.0}),
        # the key=value form and the bare name keep convcli's defaults
        ("gaussian:radius=3", {"radius": 3.0, "sigma": 1.0}),
        ("rectangle:width=5", {"width": 5, "height": 3}),
        ("ring", {"radius1": 2.5, "radius2": 3.5}),
    ],
)
def test_imagemagick_geometry_leaves_out_what_imagemagick_does(spec, params):
    """IM's geometry form gives a value left out IM's meaning (0; a rectangle's other
    side), not convcli's default: ``gaussian:3`` took sigma 1 where IM's Gaussian:3 is
    the identity, ``rectangle:5`` was 5x3 where IM's is 5x5 (test_imagemagick runs IM
    on these strings)."""
    assert cp.get_preset(spec).params == params
    p = cp.get_preset("motion-blur:length=15,angle=30")
    assert p.params == {"length": 15.0, "angle": 30.0} and p.normalized


_NAMES = [p.name for p in cp.list_presets()]


@pytest.mark.parametrize("radius", ["1.3407807929942597e+154", "1e200", "1e300"])
def test_huge_radii_are_input_errors(radius):
    # found by the fuzz test below: radius**2 overflowed before the width was checked
    with pytest.raises(InputError, match="wider than"):
        cp.get_preset(f"disk:radius={radius}")
    with pytest.raises(InputError, match="wider than"):
        cp.get_preset(f"ring:radius1=1,radius2={radius}")


@settings(max_examples=400, deadline=None)
@given(
    name=st.sampled_from([*_NAMES, "nosuch", "Gaussian", "FREI-CHEN"]),
    args=st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "radius",
                    "sigma",
                    "angle",
                    "type",
                    "size",
                    "length",
                    "amount",
                    "width",
                    "height",
                    "radius1",
                    "radius2",
                    "sigma1",
                    "sigma2",
                    "scale",
                    "bogus",
                    "",
                ]
            ),
            st.one_of(
                st.floats(allow_nan=True, allow_infinity=True).map(repr),
                st.integers(-(10**6), 10**6).map(str),
                st.sampled_from(["", "x", "1e400", "-0", "3.", ".5", "nan"]),
            ),
        ),
        max_size=3,
    ),
    positional=st.booleans(),
)
def test_preset_param_fuzz(name, args, positional):
    """Any spec: a finite 2-D kernel or InputError (never a crash or a huge allocation)."""
    if positional:
        spec = name + ":" + ",".join(v for _, v in args)
    else:
        spec = name + ":" + ",".join(f"{k}={v}" for k, v in args)
    try:
        p = cp.get_preset(spec)
    except InputError as exc:
        assert "\n" not in str(exc)
        return
    assert p.kernel.ndim == 2 and np.isfinite(p.kernel).all()
    assert max(p.kernel.shape) <= cp.MAX_KERNEL_SIZE


# ----------------------------------------------------------------- user presets


def test_builtin_files_are_one_per_preset():
    for path in data_dir("presets").glob("*.toml"):
        assert cp.get_preset(path.stem).name == path.stem


def test_user_preset_from_path_and_env(tmp_path, monkeypatch):
    f = tmp_path / "my-blur.toml"
    f.write_text('name = "my-blur"\ndescription = "mine"\nkernel = [[1, 2, 1]]\nscale = 0.25\n')
    p = cp.get_preset(str(f))
    assert p.name == "my-blur" and p.normalized and p.source == str(f)
    np.testing.assert_allclose(p.kernel, [[0.25, 0.5, 0.25]])
    other = tmp_path / "more"
    other.mkdir()
    (other / "ridge.toml").write_text(
        'description = "r"\nrotatable = true\nkernel = [[0, 0, 0], [1, 1, 1], [0, 0, 0]]\n'
    )
    monkeypatch.setenv("CONVCLI_PRESET_PATH", f"{tmp_path}{__import__('os').pathsep}{other}")
    assert {"my-blur", "ridge"} <= {q.name for q in cp.list_presets()}
    np.testing.assert_array_equal(cp.get_preset("ridge:angle=90").kernel, [[0, 1, 0]] * 3)
    with pytest.raises(InputError, match="unknown parameter"):
        cp.get_preset("my-blur:sigma=2")
    # A broken file is left out of the list (and reported), and raises when asked for.
    (other / "broken.toml").write_text("kernel = [[1, 2], [3]]\n")
    assert "broken" not in {q.name for q in cp.list_presets()}
    assert any("broken.toml" in e for e in cp.preset_errors())
    with pytest.raises(InputError, match=r"broken\.toml: kernel must be"):
        cp.get_preset("broken")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kernel = [[1, 2], [3]]", "equal-length rows"),
        ("kernel = [[nan]]", "NaN or Inf"),
        ("description = 'x'", "needs 'kernel'"),
        ("kernel = [[1]", "not a valid preset TOML"),
        ('name = "other"\nkernel = [[1]]', "must equal the file stem"),
        # these were internal errors (TypeError, ValueError, KeyError) or silently wrong
        ("aliases = 5\nkernel = [[1]]", "aliases must be a list of names"),
        ('aliases = "abc"\nkernel = [[1]]', "aliases must be a list of names"),
        ('rotatable = "no"\nkernel = [[1]]', "rotatable must be true or false"),
        ('default_type = "abc"\n[variants]\n1 = [[1]]', r"default_type must be one of .*\(1\)"),
        ("default_type = 7\n[variants]\n1 = [[1]]", "default_type must be one of"),
        ("default_type = 1.5\n[variants]\n1 = [[1]]", "default_type must be one of"),
        ("scale = 1e308\nkernel = [[10]]", "kernel x scale overflows"),
        ("[variants]\n1 = {scale = 1e308, kernel = [[10]]}", "kernel x scale overflows"),
    ],
)
def test_user_preset_errors(tmp_path, text, message):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(InputError, match=message) as info:
        cp.get_preset(str(f))
    assert str(f) in str(info.value)
    with pytest.raises(InputError, match="no such preset file"):
        cp.get_preset(str(tmp_path / "missing.toml"))
    (tmp_path / "folder.toml").mkdir(exist_ok=True)  # was "no such preset file" too
    with pytest.raises(InputError, match=r"folder\.toml' is a folder, not a preset file"):
        cp.get_preset(str(tmp_path / "folder.toml"))


def test_a_broken_user_preset_breaks_neither_the_list_nor_other_presets(tmp_path, monkeypatch):
    # aliases = 5 raised TypeError while every user preset was loaded: every --preset
    # (built-in ones too) and `presets list` failed with an internal error
    (tmp_path / "bad.toml").write_text("aliases = 5\nkernel = [[1]]\n")
    (tmp_path / "huge.toml").write_text("scale = 1e308\nkernel = [[10]]\n")
    (tmp_path / "good.toml").write_text('aliases = ["fine"]\nkernel = [[2]]\n')
    monkeypatch.setenv("CONVCLI_PRESET_PATH", str(tmp_path))
    np.testing.assert_array_equal(cp.get_preset("box:size=1").kernel, [[1.0]])
    assert cp.get_preset("fine").kernel.tolist() == [[2.0]]
    names = {p.name for p in cp.list_presets()}
    assert "good" in names and "bad" not in names and "huge" not in names
    errors = cp.preset_errors()
    assert any("bad.toml: aliases must be" in e for e in errors)
    assert any("huge.toml: kernel x scale overflows" in e for e in errors)


def test_a_preset_file_that_is_no_regular_file_or_too_large_is_left_out(tmp_path, monkeypatch):
    """A FIFO named *.toml in CONVCLI_PRESET_PATH blocked every --preset (built-in ones
    too) for ever, and a link to /dev/zero read until memory ran out."""
    import os

    os.mkfifo(tmp_path / "fifo.toml")
    os.symlink("/dev/zero", tmp_path / "zero.toml")
    (tmp_path / "big.toml").write_text("kernel = [[1]]\n#" + "x" * cp.PRESET_FILE_MAX_BYTES)
    (tmp_path / "good.toml").write_text("kernel = [[2]]\n")
    monkeypatch.setenv("CONVCLI_PRESET_PATH", str(tmp_path))
    assert cp.get_preset("good").kernel.tolist() == [[2.0]]
    assert cp.get_preset("box:size=1").kernel.tolist() == [[1.0]]
    errors = sorted(cp.preset_errors())
    assert [e.split(": ", 1)[1] for e in errors] == [
        f"{cp.PRESET_FILE_MAX_BYTES + 16} bytes, more than a preset file may hold "
        f"({cp.PRESET_FILE_MAX_BYTES})",
        "not a regular file",
        "not a regular file",
    ]


def test_a_preset_name_wins_over_another_presets_alias(tmp_path, monkeypatch):
    """A user preset's alias 'sharp' took the place of the user preset named 'sharp',
    and a user 'outline' was listed but never reached (the built-in edge's alias)."""
    (tmp_path / "alpha.toml").write_text('kernel = [[0, 0], [0, 1]]\naliases = ["sharp"]\n')
    (tmp_path / "sharp.toml").write_text("kernel = [[0, -1, 0], [-1, 5, -1], [0, -1, 0]]\n")
    (tmp_path / "outline.toml").write_text("kernel = [[3]]\n")
    monkeypatch.setenv("CONVCLI_PRESET_PATH", str(tmp_path))
    assert cp.get_preset("sharp").kernel[1].tolist() == [-1.0, 5.0, -1.0]
    assert cp.get_preset("outline").kernel.tolist() == [[3.0]]
    monkeypatch.delenv("CONVCLI_PRESET_PATH")
    assert cp.get_preset("outline").kernel.shape == (3, 3)  # the built-in edge's alias


# ----------------------------------------------------------------- against ImageMagick


def _imagemagick() -> list[str] | None:
    """A command that prints IM kernels (IM7 `magick` or IM6 `convert`), or None."""
    import shutil
    import subprocess

    for exe in ("magick", "convert-im6.q16", "convert"):
        path = shutil.which(exe)
        if not path:
            continue
        try:
            out = subprocess.run(
                [path, "-version"], capture_output=True, text=True, timeout=20
            ).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        if "ImageMagick" in out:
            return [path]
    return None


def _im_kernel(cmd: list[str], spec: str) -> np.ndarray:
    import re
    import subprocess

    args = ["xc:", "-precision", "17", "-define", "morphology:showkernel=1"]
    args += ["-morphology", "Convolve:0", spec, "null:"]
    err = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60).stderr
    size = re.search(r"of size (\d+)x(\d+)", err)
    assert size, err
    h = int(size.group(2))
    rows = [m.group(1).split() for m in re.finditer(r"^\s*\d+:\s+(.*)$", err, re.M)]
    return np.array([[float(v) for v in r] for r in rows[:h]])


_IM_CASES = (
    [
        ("unity", "Unity"),
        ("gaussian:radius=3,sigma=1.5", "Gaussian:3x1.5"),
        ("gaussian:sigma=2", "Gaussian:0x2"),
        ("gaussian:sigma=0.5", "Gaussian:0x0.5"),
        ("blur:sigma=1.5", "Blur:0x1.5"),
        ("blur:radius=4,sigma=1,angle=90", "Blur:4x1+90"),
        ("comet:sigma=2", "Comet:0x2"),
        ("comet:width=6,sigma=2,angle=90", "Comet:6x2+90"),
        ("dog", "DoG:0x1+1.6"),
        ("dog:radius=4,sigma1=2,sigma2=1", "DoG:4x2+1"),
        ("log", "LoG:0x1.4"),
        ("log:radius=3,sigma=1", "LoG:3x1"),
        ("binomial:2", "Binomial:2"),
        ("diamond:3", "Diamond:3"),
        ("square:2", "Square:2"),
        ("octagon", "Octagon"),
        ("octagon:4", "Octagon:4"),
        ("disk", "Disk"),
        ("plus:3", "Plus:3"),
        ("cross", "Cross"),
        ("rectangle:width=5,height=3", "Rectangle:5x3"),
        ("ring", "Ring"),
    ]
    + [(f"laplacian:{t}", f"Laplacian:{t}") for t in (0, 1, 2, 3, 5, 7, 15, 19)]
    + [
        (f"{name.lower()}:{a}", f"{name}:{a}")
        for name in ("Sobel", "Roberts", "Prewitt", "Compass", "Kirsch")
        for a in (45, 90, 135, 180, 270)
    ]
    + [
        (f"frei-chen:type={t},angle={a}", f"FreiChen:{t},{a}")
        for t in (0, 1, 2, 11, 12, 13, 14, 15, 16, 17, 18, 19)
        for a in (0, 90)
    ]
)


@pytest.mark.parametrize(("ours", "im_spec"), _IM_CASES)
def test_matches_installed_imagemagick(ours, im_spec):
    """Kernel values equal `convert -define morphology:showkernel=1` where IM exists.

    (Fractional shape radii are left out: IM 6.9 sizes those kernels one pixel too wide
    and fills the extra row with uninitialised memory; we follow IM 7's source.)"""
    cmd = _imagemagick()
    if cmd is None:
        pytest.skip("ImageMagick not installed")
    ref = np.nan_to_num(_im_kernel(cmd, im_spec), nan=0.0)  # nan: outside the shape
    k = cp.get_preset(ours).kernel
    if ours.startswith("comet"):  # IM's origin is the first value; ours is centred
        k = k[:, (k.shape[1] - 1) // 2 :] if k.shape[0] == 1 else k[(k.shape[0] - 1) // 2 :]
    if cp.get_preset(ours).normalized and ours.split(":")[0] not in ("gaussian", "blur", "comet"):
        ref = ref / ref.sum()  # our shapes and binomial are normalised on purpose
    assert k.shape == ref.shape
    np.testing.assert_allclose(k, ref, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize(("text", "code"), [("\u22121,0,1", "2212"), ("3x1: 1,0,\u20131", "2013")])
def test_a_pasted_unicode_minus_is_named_in_the_error(text, code):
    # "'−1' is not a number" shows the user a token that looks exactly like -1
    with pytest.raises(InputError, match=rf"is not a number \(it holds U\+{code}, a dash"):
        cp.parse_kernel_text(text)


@pytest.mark.parametrize("spec", ["sobel:angle=\u221245", "sobel:\u221245"])
def test_a_unicode_minus_in_a_preset_parameter_is_named(spec):
    with pytest.raises(InputError, match=r"angle='.45' is invalid \(it holds U\+2212, not"):
        cp.get_preset(spec)


def test_imagemagick_geometry_takes_a_capital_x_as_imagemagick_does():
    # `convert -morphology Convolve "3X1: 1,2,3"` and "Gaussian:0X2" work in IM; here
    # they were "'3X1:' is not a number" and "radius='0X2' is invalid"
    assert cp.parse_kernel_text("3X1: 1,2,3").tolist() == [[1.0, 2.0, 3.0]]
    assert cp.parse_kernel_text("1X2: 4 5").tolist() == [[4.0], [5.0]]
    np.testing.assert_array_equal(
        cp.get_preset("gaussian:0X2").kernel, cp.get_preset("gaussian:sigma=2").kernel
    )
    assert cp.get_preset("rectangle:5X3").kernel.shape == (3, 5)


@pytest.mark.parametrize(("angle", "shape"), [(0, (1, 1001)), (90, (1001, 1))])
def test_motion_blur_takes_the_longest_length_its_rule_states(angle, shape):
    # the rule says 1..1001, but the working grid (one pixel of margin each side) was
    # checked against the cap: "length=1001 is larger than 1001"
    k = cp.get_preset(f"motion-blur:length=1001,angle={angle}").kernel
    np.testing.assert_allclose(k, np.full(shape, 1 / 1001), rtol=1e-12)
    assert (
        k.shape[0] <= 1001
        and cp.get_preset("motion-blur:length=1001,angle=45").kernel.shape[0] <= 1001
    )


@pytest.mark.parametrize(
    "spec",
    ["dog:sigma1=5.3489414707557125e+153", "gaussian:radius=3,sigma=1e200", "log:sigma=1e300"],
)
def test_huge_sigma_is_a_clear_error(spec):
    # found by the fuzz test: sigma^2 overflowed (division by zero, a zero kernel)
    with pytest.raises(InputError, match="<= 1e6"):
        cp.get_preset(spec)


def test_largest_sigma_gives_a_flat_normalised_kernel():
    k = cp.get_preset("gaussian:radius=3,sigma=1e6").kernel
    np.testing.assert_allclose(k, np.full((7, 7), 1 / 49), rtol=1e-9)
    with pytest.raises(InputError, match="larger than"):
        cp.get_preset("blur:sigma=2000")  # no radius: the derived width cannot fit


@pytest.mark.parametrize("shape", [(2, 2), (5, 5), (3, 5)])
def test_a_45_degree_turn_of_a_kernel_not_3x3_names_its_size(shape):
    """A 2x2 kernel was said to be 'larger than 3x3'."""
    with pytest.raises(InputError, match=f"a {shape[0]}x{shape[1]} one in 90 degree steps"):
        cp._im_rotate(np.ones(shape), 45)
    assert cp._im_rotate(np.arange(4.0).reshape(2, 2), 90).shape == (2, 2)
