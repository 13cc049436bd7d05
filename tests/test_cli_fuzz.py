"""Hostile and careless use of the CLI (issue 11), as a property: random option values
and random, truncated or forged files (PNG, JPEG, TIFF, GIF, WebP, BMP, .npy headers,
bytes, names with control characters) never give a traceback, an exit code other than
0, 1 or 2, a stderr line that does not start with ``convcli:``, an "internal error", or
a changed input.

In-process runs (``CliRunner``) cover many examples quickly; it captures what Python
writes, not what C code writes to file descriptor 2, so a few subprocess runs over the
same kinds of files check that too. Examples are derandomized (see test_properties.py);
``HYPOTHESIS_PROFILE=explore`` draws fresh ones.
"""

from __future__ import annotations

import functools
import io
import os
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from convcli import io as cio
from convcli.cli import cli

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@functools.cache
def valid_files() -> dict[str, bytes]:
    """One small real file per format (bytes), made once."""
    from PIL import Image

    rng = np.random.default_rng(7)
    rgb = rng.random((3, 12, 10), dtype=np.float32)
    rgba = rng.random((4, 9, 11), dtype=np.float32)
    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, data, depth in (
            ("rgb.png", rgb, 8),
            ("rgba16.png", rgba, 16),
            ("rgb.jpg", rgb, 8),
            ("rgb16.tif", rgb, 16),
            ("float.tif", rgba, 32),
            ("rgb.webp", rgb, 8),
            ("rgb.bmp", rgb, 8),
        ):
            out[name] = cio.write_image(folder / name, data, bit_depth=depth).read_bytes()
        frames = [Image.new("P", (8, 6), i) for i in range(3)]
        buf = io.BytesIO()
        frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
        out["anim.gif"] = buf.getvalue()
        for name, arr in (("f.npy", rgb), ("u8.npy", (rgb[0] * 255).astype(np.uint8))):
            buf = io.BytesIO()
            np.save(buf, arr)
            out[name] = buf.getvalue()
    return out


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


# sizes a forged header may claim: small enough to decode, or refused by --max-pixels
SIZES = st.integers(0, 1500) | st.sampled_from([65536, 2**31 - 1, 2**32 - 1])


@st.composite
def forged(draw) -> bytes:
    kind = draw(st.sampled_from(["png", "npy", "tiff", "gif", "jpeg"]))
    tail = draw(st.binary(max_size=300))
    if kind == "png":
        w, h = draw(SIZES), draw(SIZES)
        depth, colour = (
            draw(st.sampled_from([1, 8, 16, 3])),
            draw(st.sampled_from([0, 2, 3, 4, 6, 7])),
        )
        ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, draw(st.sampled_from([0, 1])))
        idat = _png_chunk(b"IDAT", zlib.compress(tail))
        return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + idat + _png_chunk(b"IEND", b"")
    if kind == "npy":
        descr = draw(
            st.sampled_from(
                ["<f4", "<f8", "|u1", ">i8", "<c8", "|O", "<U3", "|b1", "<f2", "<M8[s]", "zz"]
            )
        )
        shape = draw(st.lists(st.integers(-1, 40) | st.sampled_from([10**9, 2**40]), max_size=4))
        header = repr({"descr": descr, "fortran_order": draw(st.booleans()), "shape": tuple(shape)})
        header += " " * (-(len(header) + 11) % 64) + "\n"
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + tail
    if kind == "tiff":
        return b"II*\x00" + struct.pack("<I", draw(st.integers(0, 400))) + tail
    if kind == "gif":
        return b"GIF89a" + struct.pack("<HH", draw(SIZES) % 65536, draw(SIZES) % 65536) + tail
    return b"\xff\xd8\xff\xe0" + tail


@st.composite
def contents(draw) -> bytes:
    way = draw(st.sampled_from(["valid", "truncated", "flipped", "forged", "random"]))
    if way == "forged":
        return draw(forged())
    if way == "random":
        return draw(st.binary(max_size=600))
    data = valid_files()[draw(st.sampled_from(sorted(valid_files())))]
    if way == "truncated":
        return data[: draw(st.integers(0, len(data) - 1))]
    if way == "flipped":
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
        return bytes(buf)
    return data


NAME_CHARS = st.sampled_from([*"abcXYZ09 _-.é", "\n", "\r", "\t", "\x1b", "\x7f", "\x85"])
SUFFIXES = st.sampled_from([".png", ".jpg", ".JPEG", ".tif", ".webp", ".bmp", ".gif", ".npy", ""])


@st.composite
def file_name(draw) -> str:
    stem = draw(st.text(NAME_CHARS, min_size=1, max_size=12))
    return (stem.lstrip(".") or "x") + draw(SUFFIXES)


def _kernel_text(draw) -> str:
    rows = draw(st.integers(0, 4))
    cols = draw(st.integers(1, 4))
    cell = st.sampled_from(["1", "0", "-1", "0.5", "2e3", "1e39", "nan", "inf", "x", "", "7" * 40])
    grid = [[draw(cell) for _ in range(cols)] for _ in range(rows)]
    return draw(st.sampled_from([";", "\n"])).join(",".join(r) for r in grid)


@st.composite
def options(draw) -> list[str]:
    """A kernel source and any mix of the other options, values valid or not."""
    source = draw(st.sampled_from(["preset", "kernel", "weights"]))
    if source == "preset":
        args = ["--preset", draw(st.sampled_from([
            "box", "gaussian:sigma=1.5", "sharpen", "sobel", "laplacian", "emboss", "nope",
            "box:size=0", "box:size=4", "gaussian:sigma=-1", "gaussian:sigma=nan",
            "box:size=3,x=1", "gaussian:", ":",
        ]))]  # fmt: skip
    elif source == "kernel":
        args = ["--kernel", _kernel_text(draw)]
    else:
        args = ["--weights", "WEIGHTS"]  # replaced by a drawn weight file
    pick = {
        "--stride": st.sampled_from(["1", "2", "0", "-1", "2,1", "1000000000", "a", "1,2,3"]),
        "--padding": st.sampled_from(["0", "1", "7", "-1", "same", "valid", "2,0", "x"]),
        "--dilation": st.sampled_from(["1", "2", "0", "3,1", "-2"]),
        "--groups": st.sampled_from(["1", "2", "3", "0", "4"]),
        "--padding-mode": st.sampled_from(
            ["zeros", "reflect", "replicate", "circular", "symmetric", "bogus"]
        ),
        "--alpha": st.sampled_from(["premultiply", "keep", "filter", "drop"]),
        "--out-map": st.sampled_from(["clip", "abs", "normalize", "offset"]),
        "--scale": st.sampled_from(["2", "-1", "nan", "inf", "1e39", "0"]),
        "--offset": st.sampled_from(["0.5", "-3", "nan", "x"]),
        "--bit-depth": st.sampled_from(["8", "16", "32", "7"]),
        "--format": st.sampled_from(["png", "jpg", "tif", "npy", "webp", "bmp", "gif"]),
        "--quality": st.sampled_from(["1", "100", "0", "101"]),
        "--max-pixels": st.sampled_from(["100", "1M", "none", "abc"]),
        "--max-memory": st.sampled_from(["1K", "64M", "0", "x"]),
        "--algo": st.sampled_from(["auto", "direct", "separable", "fft", "gemm", "bogus"]),
        "--bias": st.sampled_from(["0.5", "1,2,3", "nan", "1e39", ""]),
        "--workers": st.sampled_from(["1", "3", "0"]),
    }
    for name in draw(st.lists(st.sampled_from(sorted(pick)), max_size=5, unique=True)):
        args += [name, draw(pick[name])]
    for flag in draw(st.lists(st.sampled_from(["--flip", "--normalize-kernel"]), unique=True)):
        args.append(flag)
    return args


def weight_texts() -> list[bytes]:
    texts = [b"[[1, 2], [3, 4]]", b"1 2\n3 4\n", b"[[" + b"7" * 5000 + b"]]", b'{"w": [1]}']
    texts.append(b"[" * 100_000 + b"]" * 100_000)  # deeper than the JSON parser recurses
    return texts


WEIGHTS = st.sampled_from(["k.npy", "k.json", "k.txt", "k.pt", "k.safetensors", "k.csv"])


def _snapshot(folder: Path) -> dict[Path, tuple[bytes, int]]:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def _check(code: int, stderr: str, before: dict, folder: Path) -> None:
    assert code in (0, 1, 2), stderr
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    bad = [ln for ln in stderr.splitlines() if not ln.startswith("convcli: ")]
    assert bad == [], stderr
    assert _snapshot(folder) == before, "an input changed"


@settings(
    max_examples=int(os.environ.get("CONVCLI_FUZZ_EXAMPLES", "60")),
    derandomize=os.environ.get("HYPOTHESIS_PROFILE") != "explore",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    deadline=None,
)
@given(
    command=st.sampled_from(["apply", "batch"]),
    files=st.lists(
        st.tuples(file_name(), contents()), min_size=1, max_size=3, unique_by=lambda f: f[0]
    ),
    weight=st.tuples(WEIGHTS, contents() | st.sampled_from(weight_texts())),
    opts=options(),
    out_name=st.sampled_from(["o.png", "o.npy", "o.jpg", "o.tif", "o", "outs/"]),
    extra=st.lists(st.sampled_from(["-r", "--skip-existing", "--glob", "--report"]), unique=True),
    glob=st.sampled_from(["*.png", "/abs/*.png", "../*", "", "**/*", "sub/*.jpg", "*.[", "\n*"]),
)
def test_cli_never_crashes_never_touches_inputs(
    command, files, weight, opts, out_name, extra, glob
):
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        src = base / "in"
        src.mkdir()
        for name, data in files:
            (src / name).write_bytes(data)
        (base / weight[0]).write_bytes(weight[1])
        opts = [str(base / weight[0]) if a == "WEIGHTS" else a for a in opts]
        before = _snapshot(src)
        weight_before = _snapshot_one(base / weight[0])
        if command == "apply":
            args = ["apply", *(str(src / n) for n, _ in files), "-o", str(base / out_name)]
        else:
            args = ["batch", str(src), str(base / "out")]
            for e in extra:
                if e == "--glob":
                    args += ["--glob", glob]
                elif e == "--report":
                    args += ["--report", str(base / "r.json")]
                else:
                    args.append(e)
        args += [*opts, "--backend", "numpy", "-q"]
        result = CliRunner().invoke(cli, args, catch_exceptions=True)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        event(f"exit {result.exit_code}")
        _check(result.exit_code, result.stderr, before, src)
        assert _snapshot_one(base / weight[0]) == weight_before


def _snapshot_one(path: Path) -> dict[Path, tuple[bytes, int]]:
    return {path: (path.read_bytes(), path.stat().st_mtime_ns)}


@pytest.mark.parametrize("backend", ["numpy", "auto"])
def test_garbled_folder_in_a_subprocess(tmp_path, backend):
    """Every kind of bad file at once, through ``python -m convcli`` (C code writing to
    stderr would show here), with names that hold control characters."""
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    valid = valid_files()
    for i, (name, data) in enumerate(sorted(valid.items())):
        stem, suffix = os.path.splitext(name)
        (src / f"{stem}\n{i}{suffix}").write_bytes(data[: len(data) // 2])  # truncated
        flipped = bytearray(data)
        flipped[len(data) // 3 :: 97] = b"\x00" * len(flipped[len(data) // 3 :: 97])
        (src / "sub" / f"{stem}\x1b[31m{suffix}").write_bytes(bytes(flipped))
        (src / f"ok_{name}").write_bytes(data)
    (src / "random.tif").write_bytes(np.random.default_rng(3).bytes(500))
    (src / "forged.npy").write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': '|O'}\n  " + b"\x00" * 40)
    (src / "empty.png").write_bytes(b"")
    before = _snapshot(src)
    r = subprocess.run([sys.executable, "-m", "convcli", "batch", str(src), str(tmp_path / "out"),
                        "-r", "--preset", "sobel", "--backend", backend, "-q", "--report",
                        str(tmp_path / "r.json")],
                       env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    _check(r.returncode, r.stderr, before, src)
    assert r.returncode == 1  # the broken files are failures
    assert f"convcli: error: {src}/rgb\\n" in r.stderr  # the newline is escaped
