"""convcli.filters.Filter's constructors: the filter a command-line run builds, from the
library (issue 12 item 8). Kernels are checked against values written out here or built
by NumPy independently (rot90 for the flip, sums for the normalisation); a CLI run is
reproduced with library calls and compared pixel for pixel."""

from __future__ import annotations

import doctest
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import convcli
from convcli import filters as cfilters
from convcli import io as cio
from convcli.batch import plan_files, run_tasks
from convcli.cli import cli
from convcli.errors import InputError
from convcli.filters import Filter

ROOT = Path(__file__).resolve().parent.parent


def test_the_docstring_examples_hold():
    result = doctest.testmod(cfilters, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 4 and result.failed == 0


def test_filter_is_public():
    assert convcli.Filter is Filter and "Filter" in convcli.__all__


def test_from_preset_is_the_preset_kernel_in_float32_with_the_options():
    f = Filter.from_preset("sobel", stride=2, padding=1, dilation=(1, 2), groups=3,
                           padding_mode="reflect", bias=np.float32(0.5))  # fmt: skip
    assert f.weight.dtype == np.float32 and f.weight.flags.c_contiguous
    assert f.weight.tolist() == [[1, 0, -1], [2, 0, -2], [1, 0, -1]]
    assert (f.stride, f.padding, f.dilation, f.groups, f.padding_mode) == (
        2, 1, (1, 2), 3, "reflect")  # fmt: skip
    assert float(f.bias) == 0.5


def test_flip_rotates_by_180_degrees():
    k = np.arange(6, dtype=np.float64).reshape(2, 3)
    text = ";".join(",".join(str(v) for v in row) for row in k)
    f = Filter.from_text(text, flip=True)
    np.testing.assert_array_equal(f.weight, np.rot90(k, 2))
    w = np.arange(2 * 3 * 2 * 2, dtype=np.float64).reshape(2, 3, 2, 2)
    np.testing.assert_array_equal(Filter.from_array(w, flip=True).weight, w[:, :, ::-1, ::-1])


def test_normalize_scales_to_sum_one_per_output_channel():
    assert Filter.from_text("1,2,1;2,4,2;1,2,1", normalize_kernel=True).weight.tolist() == [
        [0.0625, 0.125, 0.0625], [0.125, 0.25, 0.125], [0.0625, 0.125, 0.0625]]  # fmt: skip
    # zero sum: positives to 1, negatives to -1
    assert Filter.from_text("-2,0,1,1", normalize_kernel=True).weight.tolist() == [
        [-1, 0, 0.5, 0.5]]  # fmt: skip
    assert Filter.from_text("-1,0,3", normalize_kernel=True).weight.tolist() == [[-0.5, 0, 1.5]]
    w = np.stack([np.full((2, 3, 3), 2.0), np.full((2, 3, 3), 5.0)])  # (2, 2, 3, 3)
    got = Filter.from_array(w, normalize_kernel=True).weight
    np.testing.assert_allclose(got.sum(axis=(1, 2, 3)), [1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(got[0], 1 / 18, rtol=1e-6)


def test_from_file_takes_the_file_bias_unless_one_is_given(tmp_path):
    path = tmp_path / "w.npz"
    w = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 1, 3, 3)
    np.savez(path, weight=w, bias=np.array([0.25, -1.5], np.float32))
    f = Filter.from_file(path, padding_mode="zeros")
    np.testing.assert_array_equal(f.weight, w)
    assert f.bias.tolist() == [0.25, -1.5] and f.padding_mode == "zeros"
    assert Filter.from_file(path, bias=None).bias.tolist() == [0.25, -1.5]
    assert Filter.from_file(path, bias=np.float32(2)).bias == 2


def test_from_file_picks_a_tensor_by_key(tmp_path):
    path = tmp_path / "two.npz"
    np.savez(path, a=np.ones((3, 3), np.float32), b=np.full((1, 2), 7, np.float32))
    assert Filter.from_file(path, key="b").weight.tolist() == [[7, 7]]
    with pytest.raises(InputError, match=r"pick one with key=NAME"):
        Filter.from_file(path)


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda tmp: Filter.from_preset("unity:scale=1e39"), "preset 'unity:scale=1e39'"),
        (lambda tmp: Filter.from_text("1,4e38"), "kernel '1,4e38'"),
        (lambda tmp: Filter.from_array([[1.0, np.inf]]), "weight"),
        (lambda tmp: Filter(weight=np.array([[np.nan]], np.float32)), "weight"),
    ],
)
def test_values_float32_cannot_hold_are_refused_naming_the_source(tmp_path, build, name):
    with pytest.raises(InputError) as info:
        build(tmp_path)
    assert str(info.value) == (
        f"{name}: kernel values must be finite float32 numbers (|v| <= 3.403e+38)"
    )


def test_normalisation_brings_large_values_into_range():
    # checked after the scaling, as the command line always did
    assert Filter.from_preset("unity:scale=1e39", normalize_kernel=True).weight.tolist() == [[1]]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1e308,1e308", [[0.5, 0.5]]), ("1e308,-1e308,1e308,-1e308", [[0.5, -0.5, 0.5, -0.5]])],
)
def test_normalising_values_whose_sum_overflows_keeps_their_ratios(text, expected):
    # the sum of the values overflowed to Inf and every value was divided by it: an
    # all-zero kernel, and NumPy's overflow warning printed by the library
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        weight = Filter.from_text(text, normalize_kernel=True).weight
    assert weight.tolist() == expected


def test_a_kernel_that_cannot_be_normalised_names_its_source(tmp_path):
    with pytest.raises(InputError, match=r"^preset 'unity:scale=0': cannot normalise .* zero"):
        Filter.from_preset("unity:scale=0", normalize_kernel=True)
    path = tmp_path / "zero.npy"
    np.save(path, np.zeros((1, 1, 3, 3), np.float32))
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: cannot normalise"):
        Filter.from_file(path, normalize_kernel=True)


def test_a_weight_of_another_rank_is_refused():
    with pytest.raises(InputError, match=r"^weight: a weight must be 2-D .* got shape \(3,\)"):
        Filter.from_array([1.0, 2.0, 3.0])


@pytest.mark.parametrize(
    ("weight", "message"),
    [
        (np.zeros((0, 3)), r"the weight is empty \(shape \(0, 3\)\)"),
        (np.zeros((2, 0, 3, 3)), r"the weight is empty"),
        ([[1.0, "a"]], "the weight is not an array of numbers"),
        ([[1.0, 2.0], [3.0]], "the weight is not an array of numbers"),
        (np.array([[1 + 1j]]), "the weight is complex; only real weights are supported"),
    ],
)
def test_from_array_refuses_what_is_no_kernel_with_one_labelled_error(weight, message):
    # these passed as an empty Filter, raised NumPy's own ValueError without the source,
    # or dropped the imaginary part with a ComplexWarning (weight files refuse complex)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match=rf"^mine: {message}"):
            Filter.from_array(weight, label="mine")


@pytest.mark.parametrize(
    ("bias", "message"),
    [
        ([np.nan], "values must be finite float32"),
        ([1e39], "values must be finite float32"),
        (["x"], "must be one number or a 1-D array of real numbers, got dtype"),
        ([[1.0, 2.0]], r"must be one number or a 1-D array .* got shape \(1, 2\)"),
        ([1 + 1j], "must be one number .* got dtype complex128"),
    ],
)
def test_a_bias_that_is_not_finite_real_numbers_is_refused(bias, message):
    # the command line refuses these in --bias; the library took them, and a NaN bias
    # made every output pixel NaN without a word
    with pytest.raises(InputError, match=rf"^bias: {message}"):
        Filter.from_preset("box", bias=bias)
    assert Filter.from_preset("box", bias=[0.5, -1]).bias == [0.5, -1]


def test_an_unknown_conv_option_is_a_type_error():
    with pytest.raises(TypeError, match="padding_mod"):
        Filter.from_preset("box", padding_mod="reflect")


# ------------------------------------------------------------- CLI == library calls
def _photo(path: Path) -> Path:
    rng = np.random.default_rng(3)
    cio.write_image(path, rng.random((3, 20, 28), dtype=np.float32))
    return path


def test_a_cli_run_is_reproduced_by_library_calls(tmp_path):
    src = _photo(tmp_path / "in.png")
    by_cli, by_lib = tmp_path / "cli.png", tmp_path / "lib.png"
    res = CliRunner().invoke(cli, ["apply", str(src), "-o", str(by_cli), "--preset",
                                   "gaussian:sigma=1.5", "--padding-mode", "reflect", "-q",
                                   "--backend", "numpy"])  # fmt: skip
    assert res.exit_code == 0, res.output
    filt = Filter.from_preset("gaussian:sigma=1.5", padding_mode="reflect")
    result = run_tasks(plan_files([src], by_lib).tasks, filt,
                       engine=convcli.batch.Engine(backend="numpy"))  # fmt: skip
    assert result.ok and [t.dst for t in result.done] == [by_lib]
    a, b = cio.read_image(by_cli), cio.read_image(by_lib)
    assert a.bit_depth == b.bit_depth == 8
    np.testing.assert_array_equal(a.data, b.data)
    # and both are the filter, not a copy of the input
    assert not np.array_equal(a.data, cio.read_image(src).data)


def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n### {title}\n")
    end = re.compile(r"^##", re.M).search(text, start + 5)
    return text[start : end.start() if end else len(text)]


def test_the_readme_from_python_example_runs_and_matches_the_cli(tmp_path, monkeypatch):
    section = _readme_section("From Python")
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    command = re.search(r"# (convcli apply .*)", code).group(1).split()
    monkeypatch.chdir(tmp_path)
    _photo(tmp_path / "photo.png")
    exec(compile(code, "README.md", "exec"), {})
    written = Path(command[command.index("-o") + 1])
    assert written.exists()
    cli_out = tmp_path / f"cli{written.suffix}"
    args = command[1:]
    args[args.index("-o") + 1] = str(cli_out)
    res = CliRunner().invoke(cli, [*args, "-q"])
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(cio.read_image(written).data, cio.read_image(cli_out).data)
