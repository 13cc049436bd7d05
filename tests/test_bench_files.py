"""The files suite's harness: rows, ratios, peak memory and the exactness check.

Tiny images and the NumPy backend keep it short; peers run only where installed. No
timing is asserted (speed is what ``convcli bench --suite files`` reports).
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import io
import json
import math
import sys

import numpy as np
import pytest

from convcli import bench_files as bf
from convcli.presets import get_preset

HAS_CV2 = importlib.util.find_spec("cv2") is not None


def _naive_same_replicate(src: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Cross-correlation, 'same' size, edge pixels repeated: loops over taps."""
    kh, kw = k.shape
    h, w = src.shape[:2]
    out = np.zeros(src.shape, np.float64)
    for i in range(kh):
        for j in range(kw):
            ys = np.clip(np.arange(h) + i - (kh - 1) // 2, 0, h - 1)
            xs = np.clip(np.arange(w) + j - (kw - 1) // 2, 0, w - 1)
            out += k[i, j] * src[ys][:, xs].astype(np.float64)
    return out


@pytest.fixture(scope="module")
def tiny_rows() -> list[bf.FilesRow]:
    messages: list[str] = []
    peers = ("opencv",) if HAS_CV2 else ()
    mp = pytest.MonkeyPatch()
    mp.setattr(bf, "WARMUP_MAX_S", 0.0)  # the warm-up run counts: fewer processes
    try:
        rows = bf.run_files_suite(
            bf.TINY,
            backends=("numpy",),
            compare=peers,
            repeat=1,
            only=("F1", "F4"),  # a JPEG (checked through a TIFF run) and a folder (batch)
            progress=messages.append,
        )
    finally:
        mp.undo()
    assert messages
    return rows


def test_rows_for_each_system(tiny_rows):
    by = {(r.workload, r.system): r for r in tiny_rows}
    ours = [by[("F1", "convcli-numpy")], by[("F4", "convcli-numpy")]]
    for r in ours:
        assert r.ok, r
        assert r.runs == 1 and r.median_s > 0 and r.min_s == r.median_s
        assert r.max_err is not None and r.max_err <= bf.EXACT_LEVELS
        assert r.command.startswith("convcli ")
    assert "checked on a TIFF run" in ours[0].note  # the timed output is a JPEG
    assert ours[0].kind == "photo" and ours[1].kind == "folder"
    assert ours[1].images == bf.TINY.folder_count
    assert ours[1].images_per_s == pytest.approx(ours[1].images / ours[1].median_s)
    h, w = bf.TINY.photos[0]
    assert ours[0].megapixels == pytest.approx(h * w / 1e6)
    assert ours[0].decoded_mib == pytest.approx(h * w * 3 / 2**20)
    # a Python process with NumPy holds tens of MiB, far less than a GiB
    assert 20 < ours[0].peak_mib < 1024
    if HAS_CV2:
        for wid in ("F1", "F4"):
            peer = by[(wid, "opencv")]
            assert peer.ok and peer.ratio is None
            # a Gaussian of its own making, a JPEG of its own: near, not exact
            assert peer.mean_err < bf.PEER_MEAN_LEVELS
            assert by[(wid, "convcli-numpy")].ratio == pytest.approx(
                peer.median_s / by[(wid, "convcli-numpy")].median_s
            )


def test_peak_memory_is_the_childs_own():
    """A process that touches 120 MiB reads about 120 MiB; a trivial one reads little,
    however large the harness process is (the kernel's high-water mark must not carry
    over from the process that spawned it)."""
    ballast = np.ones(200 * 2**20, np.uint8)  # the harness holds 200 MiB
    big = [sys.executable, "-c", "b = bytearray(120 * 2**20); b[::4096] = b'x' * len(b[::4096])"]
    t, big_kib, code = bf.measure_process(big)
    assert code == 0 and t > 0
    assert 120 * 1024 <= big_kib < 180 * 1024
    t, small_kib, code = bf.measure_process([sys.executable, "-c", "pass"])
    assert code == 0 and small_kib < 60 * 1024
    assert bf.measure_process([sys.executable, "-c", "raise SystemExit(3)"])[2] == 3
    del ballast


def test_reference_is_the_naive_correlation():
    rng = np.random.default_rng(3)
    src = rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)
    k = get_preset("gaussian:sigma=2").kernel
    ref = _naive_same_replicate(src, k)
    exact = np.clip(np.round(ref), 0, 255).astype(np.uint8)
    worst, mean = bf.compare_to_reference(exact, src, k, strip=7)  # several strips
    assert worst <= 0.5 + 1e-9 and mean <= 0.25 + 1e-3
    # a non-separable kernel takes the 2-D path
    sharp = np.array([[0.0, -1, 0], [-1, 5, -1], [0, -1, 0]])
    ref = np.clip(_naive_same_replicate(src, sharp), 0, 255)
    worst, _ = bf.compare_to_reference(np.round(ref).astype(np.uint8), src, sharp, strip=5)
    assert worst <= 0.5 + 1e-9
    # off by 2 levels in one pixel: seen
    off = exact.copy()
    off[11, 0, 1] = min(255, int(off[11, 0, 1]) + 2) if off[11, 0, 1] < 200 else off[11, 0, 1] - 2
    assert bf.compare_to_reference(off, src, k, strip=7)[0] >= 1.5
    # 16-bit: levels of 16 bits
    src16 = src.astype(np.uint16) * 257
    ref16 = np.round(_naive_same_replicate(src16, k)).astype(np.uint16)
    assert bf.compare_to_reference(ref16, src16, k)[0] <= 0.5 + 1e-6
    assert bf.compare_to_reference(exact[:5], src, k) == (math.inf, math.inf)


def test_a_wrong_peer_is_flagged_and_not_compared_with(monkeypatch, tmp_path):
    """A peer whose output is not the filter (here: the inverted input) fails its rough
    check and is not the peer that convcli's ratio is taken against."""
    invert = (
        "import sys; from PIL import Image, ImageOps; "
        "ImageOps.invert(Image.open(sys.argv[1]).convert('RGB')).save(sys.argv[2])"
    )
    real = bf._systems

    def systems(wl, src, work, backends, peers):
        found, skipped = real(wl, src, work, backends, ())
        dst = work / "broken.png"
        found.append(bf._System("opencv", [sys.executable, "-c", invert, str(src), str(dst)], dst))
        return found, skipped

    monkeypatch.setattr(bf, "_systems", systems)
    monkeypatch.setattr(bf, "WARMUP_MAX_S", 0.0)
    rows = bf.run_files_suite(
        bf.TINY, backends=("numpy",), compare=(), repeat=1, only=("png",), work_dir=tmp_path
    )
    assert {r.workload for r in rows} == {"F5"}  # picked by its kind
    peer = next(r for r in rows if r.system == "opencv")
    ours = next(r for r in rows if r.system == "convcli-numpy")
    assert not peer.ok and peer.mean_err > bf.PEER_MEAN_LEVELS
    assert ours.ok and ours.ratio is None
    checks = bf.target_checks(rows)
    assert [(c.measure, c.met) for c in checks] == [("max error, output levels", True)]
    # outputs cleaned up (each system writes into its own folder)
    assert (tmp_path / "F5-out").is_dir()
    assert not (tmp_path / "F5-out" / "convcli-numpy").exists()


def _row(wid, kind, system, median, peak=100.0, ok=True, mp=12.0, images=1):
    return bf.FilesRow(
        wid, kind, "", system, "", median, median, 1, peak, mp, mp * 3 / 1.048576, images,
        images / median, None, 0.4 if system.startswith("convcli") else 2.0, 0.2, ok,
    )  # fmt: skip


def test_targets_of_issue_12():
    rows = [
        _row("F1", "photo", "convcli", 2.0),
        _row("F1", "opencv", "opencv", 0.5),
        _row("F1", "photo", "vips", 0.4),
        _row("F2", "photo", "convcli", 10.0, peak=1000.0, mp=192.0),
        _row("F2", "photo", "vips", 4.0, mp=192.0),
        _row("F2", "photo", "opencv", 3.0, mp=192.0),  # not the peer of the 192 MP target
        _row("F3", "tiled", "convcli", 8.0, peak=600.0),
        _row("F3", "tiled", "vips", 4.0),
        _row("F4", "png", "convcli", 0.2),
        _row("F4", "png", "imagemagick", 0.25),
        _row("F4", "png", "vips", 0.05),
        _row("F5", "folder", "convcli", 2.0, images=200),
        _row("F5", "folder", "opencv", 2.5, images=200),
        _row("F5", "folder", "imagemagick", 20.0, images=200),
        _row("F6", "tiff16", "convcli", 2.0),
    ]
    rows[0].kind = rows[1].kind = "photo"
    got = {(c.workload, c.measure.split(":")[0]): c for c in bf.target_checks(rows)}
    f1 = got[("F1", "faster of OpenCV, libvips")]
    assert f1.value == pytest.approx(0.2) and f1.target == 1.0 and not f1.met
    assert "(vips)" in f1.measure
    mem = got[("F2", "peak memory / decoded 8-bit image")]
    assert mem.at_most and mem.value == pytest.approx(1000.0 / (192 * 3 / 1.048576))
    assert mem.met  # 1000 MiB <= 2 x 549 MiB
    f2 = got[("F2", "libvips")]
    assert f2.value == pytest.approx(0.4) and f2.target == 0.5 and not f2.met
    assert not got[("F3", "peak memory, MiB")].met
    assert got[("F3", "libvips")].met  # 4 / 8 = 0.5
    assert got[("F4", "ImageMagick convert")].value == pytest.approx(1.25)
    assert got[("F5", "OpenCV 2-thread loop")].met
    assert got[("F6", "max error, output levels")].met
    assert {w for w, _ in got} == {"F1", "F2", "F3", "F4", "F5", "F6"}
    # a convcli row with a wrong result meets no speed target
    rows[0].ok = False
    rows[1].median_s = 100.0
    f1 = next(c for c in bf.target_checks(rows[:3]) if "faster" in c.measure)
    assert not f1.met


def test_json_and_csv(tiny_rows):
    names = [f.name for f in dataclasses.fields(bf.FilesRow)]
    data = json.loads(bf.rows_to_json(tiny_rows))
    assert len(data) == len(tiny_rows) and all(list(d) == names for d in data)
    parsed = list(csv.DictReader(io.StringIO(bf.rows_to_csv(tiny_rows))))
    assert list(parsed[0]) == names
    assert float(parsed[0]["median_s"]) == pytest.approx(tiny_rows[0].median_s)


def test_sizes_and_arguments():
    assert [w.id for w in bf.workloads()] == ["F1", "F2", "F3", "F4", "F5", "F6"]
    default = {w.kind: w for w in bf.workloads()}
    assert default["tiled"].shape == (10000, 10000) and default["folder"].count == 200
    assert default["png"].shape == (512, 512)
    giga = bf.Sizes.with_tiled_megapixels(1000)
    assert abs(giga.tiled[0] * giga.tiled[1] / 1e9 - 1) < 0.01
    with pytest.raises(ValueError, match="repeat"):
        bf.run_files_suite(bf.TINY, repeat=0)
    with pytest.raises(ValueError, match="peer"):
        bf.run_files_suite(bf.TINY, compare=("gimp",))
    with pytest.raises(ValueError, match="backends"):
        bf.run_files_suite(bf.TINY, backends=("cuda",))


def test_cli_renders_the_library_rows(monkeypatch):
    from click.testing import CliRunner

    from convcli.cli import cli

    rows = [_row("F4", "png", "convcli", 0.2), _row("F4", "png", "imagemagick", 0.25)]
    rows[0].ratio = 1.25
    seen = {}

    def fake(**kwargs):
        seen.update(kwargs)
        return rows

    monkeypatch.setattr(bf, "run_files_suite", fake)
    result = CliRunner().invoke(cli, ["bench", "--suite", "files", "-q", "--tiled-mp", "1000"])
    assert result.exit_code == 0, result.output
    assert "issue 12 targets" in result.output and "ImageMagick convert" in result.output
    assert "1.25" in result.output
    assert seen["backends"] == ("auto",) and seen["repeat"] == 3
    assert seen["compare"] == ("opencv", "vips", "imagemagick")
    assert abs(seen["sizes"].tiled[0] ** 2 / 1e9 - 1) < 0.01
    result = CliRunner().invoke(cli, ["bench", "--suite", "files", "--json", "-"])
    assert json.loads(result.output)[0]["system"] == "convcli"
    rows[0].ok = False  # a wrong convcli result fails the run; a failing peer does not
    assert CliRunner().invoke(cli, ["bench", "--suite", "files", "-q"]).exit_code == 1
    rows[0].ok, rows[1].ok = True, False
    assert CliRunner().invoke(cli, ["bench", "--suite", "files", "-q"]).exit_code == 0
    bad = CliRunner().invoke(cli, ["bench", "--suite", "files", "--compare", "torch"])
    assert bad.exit_code == 2 and "--compare" in bad.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--suite", "files", "--only", "F99"], "F99 not in F1"),  # ran nothing, exit 0
        (["--suite", "files", "--only", "F1,f2"], "f2 not in F1"),
        (["--suite", "quick", "--only", "F1"], "--only picks workloads of --suite files"),
        (["--suite", "files", "--json", "-", "--csv", "-"], "both write to stdout"),
    ],
)
def test_cli_refuses_options_that_would_run_nothing_or_mix_stdout(monkeypatch, args, needle):
    from click.testing import CliRunner

    from convcli.cli import cli

    def never(**kwargs):
        raise AssertionError("the suite ran")

    monkeypatch.setattr(bf, "run_files_suite", never)
    result = CliRunner().invoke(cli, ["bench", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convcli: error: ") and needle in lines[0]


def test_sizes_scaled_gives_3_to_2_photos_and_a_square_tiff():
    sizes = bf.Sizes().scaled(tiled_mp=1000, photo_mp=[24, 192])
    assert sizes.photos == ((4000, 6000), (11312, 16960))
    assert sizes.tiled == (31616, 31616)
    ids = [wl.id for wl in bf.workloads(sizes)]
    assert ids[:3] == ["F1", "F2", "F3"] and len(ids) == 6


def test_photo_mp_rejects_a_bad_item():
    from click.testing import CliRunner

    from convcli.cli import cli

    r = CliRunner().invoke(cli, ["bench", "--suite", "files", "--photo-mp", "24,big"])
    assert r.exit_code == 2
    assert "'big' is not a size in megapixels" in r.output
    assert "Invalid value for '--photo-mp'" in r.output  # the line names the flag


@pytest.mark.parametrize("value", ["nan", "inf", "1e400", "0.05"])
def test_tiled_mp_must_be_a_finite_size(value):
    """inf passed click's FloatRange(min=0.1) and ended in "internal error:
    OverflowError" deep in the suite; NaN passed every comparison."""
    from click.testing import CliRunner

    from convcli.cli import cli

    r = CliRunner().invoke(cli, ["bench", "--suite", "files", "--tiled-mp", value])
    assert r.exit_code == 2
    assert "is not a size in megapixels (0.1-100000)" in r.output
    assert "internal error" not in r.output


@pytest.mark.parametrize(
    "args", [["--tiled-mp", "5"], ["--photo-mp", "3"], ["--workdir", "/tmp/never-made"]]
)
def test_files_suite_options_with_another_suite_are_a_usage_error(args):
    """They were dropped without a word: `bench --suite quick --tiled-mp 5` ran quick."""
    from click.testing import CliRunner

    from convcli.cli import cli

    r = CliRunner().invoke(cli, ["bench", "--suite", "quick", *args])
    assert r.exit_code == 2
    assert f"{args[0]} sets the files suite (--suite files)" in r.output


def test_a_folders_check_runs_the_whole_folder_and_compares_three_images(tmp_path, monkeypatch):
    """The check run filters the whole folder, as timed (a batch of one image may take
    another backend than one of 200), and compares its first, middle and last images
    against their own sources; a wrong middle image fails the check."""
    sizes = dataclasses.replace(bf.TINY, folder_count=5)
    wl = next(w for w in bf.workloads(sizes) if w.kind == "folder")
    src = bf.make_inputs(wl, tmp_path)
    systems, _ = bf._systems(wl, src, tmp_path, ["numpy"], [])
    (system,) = systems
    bf._run_once(system)
    assert not system.error and len(list(system.output.iterdir())) == 5
    seen = []
    real = bf.compare_to_reference

    def spy(out, ref_src, kernel, strip=256):
        seen.append(ref_src)
        return real(out, ref_src, kernel, strip)

    monkeypatch.setattr(bf, "compare_to_reference", spy)
    kernel = get_preset(wl.preset).kernel
    worst, mean, note = bf._check(wl, system, src, kernel, tmp_path)
    assert note == "checked on a TIFF run" and worst <= bf.EXACT_LEVELS and mean < 1
    names = sorted(src.iterdir())
    assert len(seen) == 3
    for got, i in zip(seen, (0, 2, 4), strict=True):
        np.testing.assert_array_equal(got, bf.read_pixels(names[i]))
    assert len(list((tmp_path / f"{wl.id}-check-{system.name}").iterdir())) == 5
    # a middle output that is not its image's result is caught
    outs = sorted((tmp_path / f"{wl.id}-check-{system.name}").iterdir())
    real_run = bf.subprocess.run

    def spoiled(*a, **k):
        done = real_run(*a, **k)
        tif = sorted((tmp_path / f"{wl.id}-check-{system.name}").iterdir())[2]
        tif.write_bytes(outs[0].read_bytes())  # the first image's result
        return done

    monkeypatch.setattr(bf.subprocess, "run", spoiled)
    worst, _, _ = bf._check(wl, system, src, kernel, tmp_path)
    assert worst > bf.EXACT_LEVELS


@pytest.mark.parametrize("suite", ["quick", "files", "cnn"])
def test_bench_with_nothing_to_time_is_a_usage_error(suite, tmp_path):
    # --backend '' --compare '' printed an empty table and exited 0 (and wrote the
    # --json file): a benchmark that timed nothing
    from click.testing import CliRunner

    from convcli.cli import cli

    out = tmp_path / "rows.json"
    argv = ["bench", "--suite", suite, "--backend", "", "--compare", "", "--json", str(out)]
    r = CliRunner().invoke(cli, argv)
    assert r.exit_code == 2
    assert "--backend and --compare are both empty: nothing to time" in r.output
    assert not out.exists()


def test_a_work_folder_with_the_users_files_is_refused_untouched(tmp_path):
    """`--workdir DIR` wrote and deleted files of the suite's fixed names in whatever
    folder it was given: a user's file of such a name was lost. A folder holding files
    the suite did not make is refused before anything is written; a new folder, and one
    a run made before, are taken."""
    from convcli.errors import InputError

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "F5-convcli.png").write_bytes(b"the user's own")
    with pytest.raises(InputError, match="holds files this suite did not make"):
        bf.run_files_suite(work_dir=mine, only=["png"], backends=("numpy",), compare=())
    assert sorted(p.name for p in mine.iterdir()) == ["F5-convcli.png"]
    assert (mine / "F5-convcli.png").read_bytes() == b"the user's own"
    fresh = tmp_path / "fresh"
    for _ in range(2):  # made, then taken again with its kept inputs
        rows = bf.run_files_suite(
            work_dir=fresh, only=["png"], backends=("numpy",), compare=(), repeat=1
        )
        assert rows and all(r.ok for r in rows)
    assert (fresh / ".convcli-bench-files").is_file()
