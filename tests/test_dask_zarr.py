"""zarr_conv2d: zarr arrays and OME-Zarr level 0 in, a chunk-aligned zarr store out,
values equal to the naive reference, never a partial or clobbered destination.
Skipped where dask or zarr is not installed."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import assert_close
from naive import naive_conv2d

from convcli import zarr_conv2d
from convcli.errors import ConvValueError, InputError

pytest.importorskip("dask.array")
zarr = pytest.importorskip("zarr")
ZARR3 = int(zarr.__version__.split(".")[0]) >= 3


def _fmt(version: int) -> dict:
    return {"zarr_format": version} if ZARR3 else {}


def _store(path, data, chunks, version=2 if not ZARR3 else 3, dtype=None):
    z = zarr.open_array(
        store=str(path),
        mode="w",
        shape=data.shape,
        chunks=chunks,
        dtype=dtype or data.dtype,
        **_fmt(version),
    )
    z[...] = data
    return z


def _read(path, component=None):
    node = zarr.open(str(path), mode="r")
    return node if component is None else node[component]


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".convcli-" in p.name)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_hwc_same_padding_keeps_chunks_and_layout(tmp_path, rng):
    img = rng.standard_normal((70, 61, 3)).astype("float32")
    _store(tmp_path / "in.zarr", img, (32, 24, 3))
    w = rng.standard_normal((3, 1, 7, 4)).astype("float32")
    out = zarr_conv2d(
        tmp_path / "in.zarr",
        tmp_path / "out.zarr",
        w,
        padding="same",
        groups=3,
        padding_mode="reflect",
        backend="numpy",
    )
    assert out == tmp_path / "out.zarr"
    z = _read(out)
    assert z.shape == (70, 61, 3) and z.chunks == (32, 24, 3) and z.dtype == np.float32
    # 'same' with kernel 7x4: (3, 3) rows, (1, 2) cols: the odd extra column on the right
    expected = naive_conv2d(
        img.transpose(2, 0, 1)[None], w, pad=(3, 3, 1, 2), groups=3, padding_mode="reflect"
    )[0].transpose(1, 2, 0)
    assert_close(z[...], expected)
    assert _leftovers(tmp_path) == []


def test_chw_strided_circular_with_read_chunks(tmp_path, rng):
    img = rng.standard_normal((2, 50, 45)).astype("float64")
    _store(tmp_path / "in.zarr", img, (2, 50, 45))  # one stored chunk, read in pieces
    w = rng.standard_normal((4, 2, 3, 3))
    b = rng.standard_normal(4)
    zarr_conv2d(
        tmp_path / "in.zarr",
        tmp_path / "out.zarr",
        w,
        b,
        stride=(2, 3),
        padding=4,
        padding_mode="circular",
        chunks=(2, 16, 13),
        backend="numpy",
    )
    z = _read(tmp_path / "out.zarr")
    expected = naive_conv2d(img[None], w, b, stride=(2, 3), pad=(4,) * 4, padding_mode="circular")
    assert z.chunks == (4, 8, 5)  # ceil(16/2), ceil(13/3)
    assert_close(z[...], expected[0])


def test_hw_to_several_channels_and_integer_input(tmp_path, rng):
    img = rng.integers(0, 65535, (40, 33), dtype=np.uint16)
    _store(tmp_path / "in.zarr", img, (16, 16))
    w = rng.standard_normal((2, 1, 3, 3)).astype("float32")
    zarr_conv2d(tmp_path / "in.zarr", tmp_path / "out.zarr", w, padding=1, backend="numpy")
    z = _read(tmp_path / "out.zarr")
    assert z.shape == (2, 40, 33) and z.dtype == np.float32  # HW in, CHW out
    assert_close(z[...], naive_conv2d(img[None, None].astype("float64"), w, pad=(1,) * 4)[0])
    # one output channel stays HW
    zarr_conv2d(tmp_path / "in.zarr", tmp_path / "one.zarr", w[:1], padding=1, backend="numpy")
    assert _read(tmp_path / "one.zarr").shape == (40, 33)


def _ome(path, data, version, axes, scale):
    """An OME-Zarr image: level 0 ``data``, level 1 a decoy of another shape."""
    group = zarr.open_group(str(path), mode="w", **_fmt(version))
    multiscales = [
        {
            "version": "0.4" if version == 2 else "0.5",
            "axes": [
                {"name": a, "type": {"c": "channel", "t": "time"}.get(a, "space")} for a in axes
            ],
            "datasets": [
                {"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": scale}]},
                {"path": "s1", "coordinateTransformations": [{"type": "scale", "scale": scale}]},
            ],
        }
    ]
    if version == 2:
        group.attrs["multiscales"] = multiscales
    else:
        group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
    for name, arr in (("s0", data), ("s1", data[..., ::2, ::2])):
        z = zarr.open_array(
            store=str(path),
            path=name,
            mode="w",
            shape=arr.shape,
            chunks=(1,) * (arr.ndim - 2) + (24, 24),
            dtype=arr.dtype,
            **_fmt(version),
        )
        z[...] = arr


@pytest.mark.parametrize("version", [2, 3])
def test_ome_zarr_level0(tmp_path, rng, version):
    if version == 3 and not ZARR3:
        pytest.skip("zarr 3 writes format 3")
    data = rng.standard_normal((1, 2, 1, 60, 50)).astype("float32")
    _ome(tmp_path / "img.zarr", data, version, "tczyx", [1.0, 1.0, 2.0, 0.5, 0.25])
    w = rng.standard_normal((2, 1, 5, 5)).astype("float32")
    zarr_conv2d(
        tmp_path / "img.zarr",
        tmp_path / "out.zarr",
        w,
        stride=2,
        padding=2,
        groups=2,
        padding_mode="symmetric",
        backend="numpy",
    )
    group = _read(tmp_path / "out.zarr")
    attrs = dict(group.attrs)
    ms = attrs["multiscales"] if version == 2 else attrs["ome"]["multiscales"]
    assert [a["name"] for a in ms[0]["axes"]] == ["c", "y", "x"]
    assert ms[0]["datasets"] == [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 0.5]}]}
    ]
    out = group["0"]
    expected = naive_conv2d(
        data[:, :, 0], w, stride=(2, 2), pad=(2,) * 4, groups=2, padding_mode="symmetric"
    )[0]
    assert out.shape == expected.shape == (2, 30, 25)
    assert_close(out[...], expected)


def test_ome_axis_with_several_planes_is_refused(tmp_path, rng):
    data = rng.standard_normal((3, 20, 20)).astype("float32")
    _ome(tmp_path / "img.zarr", data, 2, "zyx", [1.0, 1.0, 1.0])
    w = np.ones((1, 1, 3, 3), dtype="float32")
    with pytest.raises(InputError, match="axis 'z' has 3 planes"):
        zarr_conv2d(tmp_path / "img.zarr", tmp_path / "out.zarr", w)
    assert not (tmp_path / "out.zarr").exists()


def test_existing_destination_is_kept_unless_overwrite(tmp_path, rng):
    img = rng.standard_normal((1, 20, 20)).astype("float32")
    _store(tmp_path / "in.zarr", img, (1, 8, 8))
    old = _store(tmp_path / "out.zarr", np.zeros((3, 3), dtype="float32"), (3, 3))
    w = np.ones((1, 1, 3, 3), dtype="float32")
    with pytest.raises(InputError, match=r"out\.zarr: already exists"):
        zarr_conv2d(tmp_path / "in.zarr", tmp_path / "out.zarr", w, backend="numpy")
    assert _read(tmp_path / "out.zarr").shape == old.shape
    with pytest.raises(InputError, match="replace its own input"):
        zarr_conv2d(tmp_path / "in.zarr", tmp_path / "in.zarr", w)
    zarr_conv2d(tmp_path / "in.zarr", tmp_path / "out.zarr", w, overwrite=True, backend="numpy")
    assert_close(_read(tmp_path / "out.zarr")[...], naive_conv2d(img[None], w)[0])
    # the input itself, when asked: read whole before the new store takes its place
    zarr_conv2d(tmp_path / "in.zarr", tmp_path / "in.zarr", w, overwrite=True, backend="numpy")
    assert_close(_read(tmp_path / "in.zarr")[...], naive_conv2d(img[None], w)[0])
    assert _leftovers(tmp_path) == []


def test_failure_mid_write_leaves_nothing_partial(tmp_path, rng, monkeypatch):
    from convcli import dask_array

    img = rng.standard_normal((1, 40, 40)).astype("float32")
    _store(tmp_path / "in.zarr", img, (1, 8, 8))
    _store(tmp_path / "old.zarr", np.ones((2, 2), dtype="float32"), (2, 2))
    w = np.ones((1, 1, 3, 3), dtype="float32")
    calls = []
    original = dask_array._block

    def failing(*args):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("device lost")
        return original(*args)

    monkeypatch.setattr(dask_array, "_block", failing)
    for dst, overwrite in (("new.zarr", False), ("old.zarr", True)):
        calls.clear()
        with pytest.raises(RuntimeError, match="device lost"):
            zarr_conv2d(
                tmp_path / "in.zarr",
                tmp_path / dst,
                w,
                overwrite=overwrite,
                backend="numpy",
                scheduler="sync",
            )
    assert not (tmp_path / "new.zarr").exists()
    np.testing.assert_array_equal(_read(tmp_path / "old.zarr")[...], np.ones((2, 2)))
    assert _leftovers(tmp_path) == []


def test_failure_on_threads_leaves_no_temporary_store(tmp_path, rng, monkeypatch):
    """Tasks still running when one fails finish after dask raised: their writes must
    not recreate the removed temporary store."""
    import time

    from convcli import dask_array

    img = rng.standard_normal((1, 64, 64)).astype("float32")
    _store(tmp_path / "in.zarr", img, (1, 8, 8))
    w = np.ones((1, 1, 3, 3), dtype="float32")
    calls = []
    original = dask_array._block

    def failing(*args):
        calls.append(1)
        if len(calls) == 6:
            raise RuntimeError("device lost")
        time.sleep(0.02)  # others are mid-flight when the failure is raised
        return original(*args)

    monkeypatch.setattr(dask_array, "_block", failing)
    with pytest.raises(RuntimeError, match="device lost"):
        zarr_conv2d(tmp_path / "in.zarr", tmp_path / "out.zarr", w, num_workers=4)
    time.sleep(0.3)  # let the scheduler's threads run out
    assert not (tmp_path / "out.zarr").exists()
    assert _leftovers(tmp_path) == []


def test_bad_inputs(tmp_path):
    w = np.ones((1, 1, 3, 3), dtype="float32")
    with pytest.raises(InputError, match=r"missing\.zarr: no such zarr store"):
        zarr_conv2d(tmp_path / "missing.zarr", tmp_path / "out.zarr", w)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "file.txt").write_text("not zarr")
    with pytest.raises(InputError, match="plain: not a zarr array or group"):
        zarr_conv2d(tmp_path / "plain", tmp_path / "out.zarr", w)
    zarr.open_group(str(tmp_path / "group.zarr"), mode="w")
    with pytest.raises(InputError, match="without OME-Zarr multiscales"):
        zarr_conv2d(tmp_path / "group.zarr", tmp_path / "out.zarr", w)
    _store(tmp_path / "in.zarr", np.zeros((4, 4, 4, 4), dtype="float32"), (4, 4, 4, 4))
    with pytest.raises(InputError, match=r"shape \(4, 4, 4, 4\) is not an image"):
        zarr_conv2d(tmp_path / "in.zarr", tmp_path / "out.zarr", w)
    _store(tmp_path / "in3.zarr", np.zeros((8, 8, 3), dtype="float32"), (8, 8, 3))
    with pytest.raises(ConvValueError, match="layout must be one of"):
        zarr_conv2d(tmp_path / "in3.zarr", tmp_path / "out.zarr", w, layout="WHC")
    with pytest.raises(ConvValueError, match="but got 3 channels instead"):
        zarr_conv2d(tmp_path / "in3.zarr", tmp_path / "out.zarr", w, layout="HWC")
    assert not (tmp_path / "out.zarr").exists()
    assert _leftovers(tmp_path) == []


def _cli(*args):
    from click.testing import CliRunner

    from convcli.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_cli_apply_zarr_to_zarr(tmp_path, rng):
    from convcli.presets import get_preset

    img = rng.integers(0, 256, (37, 41, 3), dtype=np.uint8)
    _store(tmp_path / "in.zarr", img, (16, 16, 3))
    out = tmp_path / "out.zarr"
    r = _cli("apply", tmp_path / "in.zarr", "-o", out, "--preset", "gaussian:sigma=1.5",
             "--backend", "numpy")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert r.output.strip() == str(out)
    k = np.asarray(get_preset("gaussian:sigma=1.5").kernel, dtype=np.float64)
    w = np.broadcast_to(k, (3, 1, *k.shape))
    top, left = (k.shape[0] - 1) // 2, (k.shape[1] - 1) // 2
    pad = (top, k.shape[0] - 1 - top, left, k.shape[1] - 1 - left)
    expected = naive_conv2d(
        img.transpose(2, 0, 1)[None].astype(np.float64), w, pad=pad, groups=3,
        padding_mode="replicate",
    )[0].transpose(1, 2, 0)  # fmt: skip
    z = _read(out)
    assert z.dtype == np.float32 and z.chunks == (16, 16, 3)
    assert_close(z[...], expected, "float32")
    # apply replaces an existing output (as for image files), never its input unasked
    r = _cli("apply", tmp_path / "in.zarr", "-o", out, "--kernel", "0,1,0", "--backend", "numpy")
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(_read(out)[...], img[:, :, :].astype(np.float32))
    r = _cli("apply", tmp_path / "in.zarr", "-o", tmp_path / "in.zarr", "--preset", "sharpen")
    assert r.exit_code == 1
    assert "replace its own input (add --overwrite)" in r.output
    assert r.output.count("\n") == 1 and r.output.startswith("convcli: error: ")
    np.testing.assert_array_equal(_read(tmp_path / "in.zarr")[...], img)
    assert _leftovers(tmp_path) == []


def test_cli_apply_zarr_refuses_image_options(tmp_path):
    _store(tmp_path / "in.zarr", np.zeros((8, 8), dtype="float32"), (4, 4))
    for extra in (["--bit-depth", "16"], ["--out-map", "clip"], ["--format", "png"]):
        r = _cli("apply", tmp_path / "in.zarr", "-o", tmp_path / "o.zarr", "--preset", "sharpen",
                 *extra)  # fmt: skip
        assert r.exit_code == 2, r.output
        assert "does not apply to a zarr store" in r.output
    r = _cli("apply", tmp_path / "in.zarr", "-o", tmp_path / "o.png", "--preset", "sharpen")
    assert r.exit_code == 2 and "writes a zarr store" in r.output
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "o.png").exists()


def test_cli_apply_zarr_never_replaces_a_store_that_holds_its_input(tmp_path, rng):
    """`apply outer.zarr/inner.zarr -o outer.zarr` replaced outer.zarr (apply replaces
    its output) and with it the input, exit 0; an output inside the input store changed
    the input, and a plain folder named *.zarr was deleted for the result."""
    img = rng.random((3, 12, 10)).astype(np.float32)
    outer = tmp_path / "outer.zarr"
    zarr.open_group(str(outer), mode="w")
    inner = outer / "inner.zarr"
    _store(inner, img, (3, 6, 5))
    plain = tmp_path / "plain.zarr"
    plain.mkdir()
    (plain / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    cases = [
        (outer, "the output store holds the input"),
        (inner / "x.zarr", "the output would be written inside the input store"),
        (plain, "exists and is not a zarr store; not replaced"),
    ]
    for out, needle in cases:
        for extra in ([], ["--overwrite"]):
            r = _cli("apply", inner, "-o", out, "--preset", "box", "--backend", "numpy", *extra)
            assert r.exit_code == 1, r.output
            assert r.output.count("\n") == 1 and needle in r.output, r.output
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    np.testing.assert_array_equal(_read(inner)[...], img)
    assert (plain / "notes.txt").read_text() == "mine"


def test_library_never_replaces_a_store_that_holds_its_input(tmp_path, rng):
    """zarr_conv2d(overwrite=True) into a store that holds its input replaced it (and the
    input with it) once the result was complete; into the input store, it changed it."""
    img = rng.random((2, 10, 9)).astype(np.float32)
    outer = tmp_path / "outer.zarr"
    zarr.open_group(str(outer), mode="w")
    inner = outer / "inner.zarr"
    _store(inner, img, (2, 5, 5))
    w = np.ones((2, 1, 3, 3), np.float32)
    for dst, needle in ((outer, "holds the input"), (inner / "x.zarr", "inside the input store")):
        with pytest.raises(InputError, match=needle):
            zarr_conv2d(inner, dst, w, groups=2, padding=1, overwrite=True, backend="numpy")
    np.testing.assert_array_equal(_read(inner)[...], img)
    assert not (inner / "x.zarr").exists() and _leftovers(outer) == []


def test_cli_apply_zarr_on_a_local_dask_cluster(tmp_path, rng):
    """`apply in.zarr -o out.zarr --dask local:1` (issue 14: zarr stores through the
    cluster with --dask): the same values as the threads here, written by the workers."""
    pytest.importorskip("distributed")
    img = rng.random((19, 23)).astype(np.float32)
    _store(tmp_path / "in.zarr", img, (8, 8))
    out = tmp_path / "out.zarr"
    r = _cli("apply", tmp_path / "in.zarr", "-o", out, "--kernel", "1,2,1;0,1,0;1,0,-3",
             "--padding-mode", "zeros", "--backend", "numpy", "--dask", "local:1")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert r.output.strip() == str(out)
    k = np.array([[1, 2, 1], [0, 1, 0], [1, 0, -3]], np.float64)
    expected = naive_conv2d(img[None, None].astype(np.float64), k[None, None], pad=(1, 1, 1, 1))
    assert_close(_read(out)[...], expected[0, 0], "float32")
    assert _leftovers(tmp_path) == []


def test_cli_apply_dask_needs_a_zarr_input_and_a_good_address(tmp_path):
    _store(tmp_path / "in.zarr", np.zeros((8, 8), dtype="float32"), (4, 4))
    (tmp_path / "a.npy").write_bytes(b"")
    r = _cli("apply", tmp_path / "a.npy", "-o", tmp_path / "b.npy", "--preset", "box",
             "--dask", "local:1")  # fmt: skip
    assert r.exit_code == 2 and "one zarr store as the input" in r.output, r.output
    r = _cli("apply", tmp_path / "in.zarr", "-o", tmp_path / "o.zarr", "--preset", "box",
             "--dask", "local:x")  # fmt: skip
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert "local:N takes a number" in r.output
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "b.npy").exists()


def test_a_file_where_the_destination_folder_must_be_is_one_error(tmp_path, rng):
    """`-o a.png/x.zarr` with a.png a file said only "a.png: File exists"."""
    _store(tmp_path / "in.zarr", rng.random((6, 5)).astype(np.float32), (3, 3))
    (tmp_path / "a.png").write_bytes(b"not a folder")
    w = np.ones((1, 1, 3, 3), np.float32)
    with pytest.raises(InputError, match=r"cannot create its folder .*a\.png is a file"):
        zarr_conv2d(tmp_path / "in.zarr", tmp_path / "a.png" / "x.zarr", w, backend="numpy")
    assert (tmp_path / "a.png").read_bytes() == b"not a folder"


def _bad_stores(root):
    """Malformed stores the tester found (and their kin), with the message each must
    give: an internal error, a message without the store's name, or (complex, dates) a
    silent conversion before."""
    import warnings

    cases = []

    def array(name, shape, dtype, **kw):
        with warnings.catch_warnings():  # zarr 3 warns that '<U3' has no v3 spec
            warnings.simplefilter("ignore")
            z = zarr.open_array(str(root / name), mode="w", shape=shape, chunks=shape or (1,),
                                dtype=dtype, **kw)  # fmt: skip
        return z

    def group(name, multiscales, level=None):
        g = zarr.open_group(str(root / name), mode="w")
        g.attrs["multiscales"] = multiscales
        if level == "group":
            g.create_group("0")
        elif level:
            array(f"{name}/0", (8, 8), "f4")
        return g

    for name, dtype in (("s", "U3"), ("str", str), ("c", "c8"), ("t", "M8[s]")):
        array(f"{name}.zarr", (1, 8, 8), dtype)
        cases.append((f"{name}.zarr", "is not a real number type"))
    array("empty.zarr", (3, 0, 10), "f4")
    cases.append(("empty.zarr", r"the image is empty \(shape \(3, 0, 10\)\)"))
    array("d1.zarr", (8,), "f4")
    array("d4.zarr", (1, 1, 8, 8), "f4")
    cases += [("d1.zarr", "is not an image"), ("d4.zarr", "is not an image")]
    malformed = "malformed OME-Zarr multiscales metadata"
    for i, ms in enumerate(["oops", {"a": 1}, ["x"], [{}], [{"datasets": []}]]):
        group(f"g{i}.zarr", ms)
        cases.append((f"g{i}.zarr", malformed))
    for i, path in enumerate(["../in.zarr", "/abs", None, 5, "a/../0"]):
        group(f"p{i}.zarr", [{"datasets": [{"path": path}]}])
        cases.append((f"p{i}.zarr", "is not a path inside the group"))
    group("missing.zarr", [{"datasets": [{"path": "0"}]}])
    cases.append(("missing.zarr", r"level 0 \(0\) is missing"))
    group("sub.zarr", [{"datasets": [{"path": "0"}]}], level="group")
    cases.append(("sub.zarr", r"level 0 \(0\) is a group, not an array"))
    group("axes.zarr", [{"datasets": [{"path": "0"}], "axes": [{"nam": "y"}, "x"]}], level=True)
    cases.append(("axes.zarr", malformed))
    ct = [{"datasets": [{"path": "0", "coordinateTransformations": "x"}], "axes": ["y", "x"]}]
    group("ct.zarr", ct, level=True)
    cases.append(("ct.zarr", malformed))
    for name, file, text in (
        ("v3.zarr", "zarr.json", '{"zarr_format": 3, "node_type": "array"}'),
        ("v2.zarr", ".zarray", "{}"),
        ("json.zarr", "zarr.json", "{oops"),
    ):
        (root / name).mkdir()
        (root / name / file).write_text(text)
        cases.append((name, "not a zarr array or group"))
    return cases


def test_malformed_stores_are_one_error_naming_the_store(tmp_path):
    """Each malformed store is an InputError naming it, before anything is written."""
    cases = _bad_stores(tmp_path)
    w = np.ones((1, 1, 3, 3), dtype="float32")
    for name, needle in cases:
        with pytest.raises(InputError, match=rf"^{re.escape(str(tmp_path / name))}: .*{needle}"):
            zarr_conv2d(tmp_path / name, tmp_path / "out.zarr", w, backend="numpy")
    assert not (tmp_path / "out.zarr").exists() and _leftovers(tmp_path) == []


def test_cli_malformed_stores_are_one_line_exit_1(tmp_path):
    """`apply bad.zarr`: one line `bad.zarr: problem`, exit 1; no internal error, no
    ComplexWarning and exit 0 for complex samples."""
    cases = _bad_stores(tmp_path)
    for name, needle in cases:
        r = _cli("apply", tmp_path / name, "-o", tmp_path / "out.zarr", "--preset", "box",
                 "--backend", "numpy")  # fmt: skip
        assert r.exit_code == 1, (name, r.output)
        assert r.output.count("\n") == 1, (name, r.output)
        assert re.match(rf"convcli: error: {re.escape(str(tmp_path / name))}: .*{needle}",
                        r.output), (name, r.output)  # fmt: skip
    assert not (tmp_path / "out.zarr").exists() and _leftovers(tmp_path) == []


def test_a_corrupt_chunk_is_one_error_naming_the_store(tmp_path, rng):
    """A chunk that does not decode raised a bare RuntimeError (internal error)."""
    _store(tmp_path / "in.zarr", rng.random((1, 8, 8)).astype("float32"), (1, 4, 4))
    chunk = next(p for p in sorted((tmp_path / "in.zarr").rglob("*")) if p.is_file()
                 and not p.name.startswith((".", "zarr.json")))  # fmt: skip
    chunk.write_bytes(b"garbage")
    r = _cli("apply", tmp_path / "in.zarr", "-o", tmp_path / "out.zarr", "--preset", "box",
             "--backend", "numpy")  # fmt: skip
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert f"{tmp_path / 'in.zarr'}: cannot read its chunks" in r.output
    assert not (tmp_path / "out.zarr").exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_cli_stop_signal_removes_the_temporary_store(tmp_path, rng, signame):
    """SIGTERM/SIGHUP during `apply in.zarr -o out.zarr` killed the process (exit
    143/129, nothing said) and left `.out.zarr.convcli-*.tmp` behind; now the run stops,
    removes it, keeps an existing output, says so in one line and exits 128 + signal."""
    import os
    import signal
    import subprocess
    import sys
    import time

    sig = getattr(signal, signame)
    _store(tmp_path / "in.zarr", rng.random((3, 2048, 2048), dtype="float32"), (3, 256, 256))
    old = _store(tmp_path / "out.zarr", np.full((2, 2), 7, np.float32), (2, 2))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "convcli", "apply", "in.zarr", "-o", "out.zarr", "--preset",
         "gaussian:sigma=6", "--backend", "numpy", "--workers", "1"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not _leftovers(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # blocks are being written
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert (
        err
        == "convcli: summary: interrupted; out.zarr not written (the existing one is unchanged)\n"
    )
    assert out == ""
    assert _leftovers(tmp_path) == []
    np.testing.assert_array_equal(_read(tmp_path / "out.zarr")[...], old[...])


def test_an_interrupt_while_publishing_keeps_one_whole_store(tmp_path, rng, monkeypatch):
    """An interrupt between the two renames that replace an existing output left no
    output at all (the old one moved aside, the new one removed): now the old one or
    the new one is in place, whatever rename the interrupt follows, and nothing else."""
    from convcli import zarr_store

    img = rng.random((1, 6, 6)).astype(np.float32)
    _store(tmp_path / "in.zarr", img, (1, 3, 3))
    w = np.full((1, 1, 1, 1), 2, np.float32)
    rename = zarr_store.os.rename
    for n in (1, 2):
        _store(tmp_path / "out.zarr", np.zeros((6, 6), np.float32), (3, 3))
        calls = []

        def interrupted_after(a, b, n=n, calls=calls):
            rename(a, b)
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt

        monkeypatch.setattr(zarr_store.os, "rename", interrupted_after)
        with pytest.raises(KeyboardInterrupt):
            zarr_conv2d(tmp_path / "in.zarr", tmp_path / "out.zarr", w, overwrite=True,
                        backend="numpy", scheduler="sync")  # fmt: skip
        monkeypatch.setattr(zarr_store.os, "rename", rename)
        expected = np.zeros((6, 6)) if n == 1 else img * 2
        np.testing.assert_array_equal(_read(tmp_path / "out.zarr")[...], expected)
        assert _leftovers(tmp_path) == []


def test_stale_temporary_stores_of_dead_runs_are_swept(tmp_path, rng):
    """A run killed by SIGKILL left `.out.zarr.convcli-*.tmp` that no later run removed.
    Now the next run into the same output removes those of processes gone on this
    machine, and puts back an output moved aside; a live run's, another machine's and
    another output's are kept."""
    import os
    import subprocess
    import sys

    from convcli.zarr_store import _host_tag

    _store(tmp_path / "in.zarr", rng.random((1, 6, 6)).astype(np.float32), (1, 3, 3))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    host, mine = _host_tag(), os.getpid()
    gone = [f".out.zarr.convcli-{dead}-{host}-{'a' * 12}.tmp"]
    kept = [
        f".out.zarr.convcli-{mine}-{host}-{'b' * 12}.tmp",  # a live process
        f".out.zarr.convcli-{dead}-{'0' * 8 if host != '0' * 8 else '1' * 8}-{'c' * 12}.tmp",
        f".other.zarr.convcli-{dead}-{host}-{'d' * 12}.tmp",  # another output
        f".out.zarr.convcli-{dead}-{host}-{'e' * 11}.tmp",  # not our pattern
    ]
    for name in gone + kept:
        (tmp_path / name).mkdir()
        (tmp_path / name / "zarr.json").write_text("{}")
    # died between the renames: the previous output moved aside, none in place
    _store(tmp_path / f".out.zarr.convcli-{dead}-{host}-{'f' * 12}.old",
           np.full((2, 2), 5, np.float32), (2, 2))  # fmt: skip
    w = np.ones((1, 1, 1, 1), np.float32)
    with pytest.raises(InputError, match="already exists"):
        zarr_conv2d(tmp_path / "in.zarr", tmp_path / "out.zarr", w, backend="numpy")
    np.testing.assert_array_equal(_read(tmp_path / "out.zarr")[...], np.full((2, 2), 5))
    assert _leftovers(tmp_path) == sorted(kept)
