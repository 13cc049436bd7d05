"""The wheel built from this checkout ships the OpenCL kernels and the presets, installs
into a fresh virtual environment, and works there from outside the checkout."""

from __future__ import annotations

import importlib.util
import json
import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import opencl_available

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

SNIPPET = """
import json, sys
from pathlib import Path

import numpy as np

import convcli
from convcli.resources import data_dir

venv = Path(sys.argv[1]).resolve()
x = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
w = np.ones((1, 1, 2, 2), dtype=np.float32)
outputs = {}
for backend in sys.argv[2:]:
    info = convcli.RunInfo()
    outputs[backend] = [convcli.conv2d(x, w, backend=backend, info=info).tolist(), info.backend]
print(json.dumps({
    "file": str(Path(convcli.__file__).resolve()),
    "inside": Path(convcli.__file__).resolve().is_relative_to(venv),
    "presets": sorted(p.name for p in data_dir("presets").iterdir()),
    "presets_dir": str(data_dir("presets").resolve()),
    "kernels": sorted(p.name for p in data_dir("kernels_cl").glob("*.cl")),
    "outputs": outputs,
}))
"""


def _run(*args: object, cwd: Path, env: dict | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from the checkout.

    Without network where hatchling is importable; otherwise (a venv with only the test
    extras, as in CI) in build's isolated environment, which fetches hatchling the way
    installing the package did.
    """
    out = tmp_path_factory.mktemp("dist")
    isolation = ["--no-isolation"] if importlib.util.find_spec("hatchling") else []
    _run(sys.executable, "-m", "build", "--wheel", *isolation, "--outdir", out, cwd=ROOT)
    (found,) = out.glob("convcli-*.whl")
    return found


def test_wheel_contains_kernels_and_presets(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    kernels = {
        n for n in names if n.startswith("convcli/kernels_cl/") and n.endswith((".cl", ".clh"))
    }
    presets = {n for n in names if n.startswith("convcli/presets/") and not n.endswith("/")}
    assert kernels, sorted(names)
    assert presets, sorted(names)
    # every data file of the checkout, nothing lost to a packaging glob
    for folder, shipped in (("kernels_cl", kernels), ("presets", presets)):
        for path in (ROOT / folder).iterdir():
            if path.is_file() and not path.name.startswith("."):
                assert f"convcli/{folder}/{path.name}" in shipped, path
    assert "convcli/__init__.py" in names
    # the layer shapes of bench --suite cnn live inside the package
    assert "convcli/data/cnn_layers.json" in names
    assert not any(n.startswith(("tests/", "tools/")) for n in names)


def test_installed_wheel_works_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    # numpy, pyopencl and PoCL come from the environment running the tests (no network):
    # its base interpreter's site-packages by --system-site-packages, and, when that
    # environment is itself a venv (CI), its site-packages through a .pth file. They come
    # after the venv's own site-packages, so the wheel's convcli wins over any checkout.
    _run(sys.executable, "-m", "venv", "--system-site-packages", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    purelib = _run(
        python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp_path
    )
    lines = [f"import site; site.addsitedir({d!r})" for d in site.getsitepackages()]
    (Path(purelib.strip()) / "_test_parent_env.pth").write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    _run(
        python,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-index",
        "--disable-pip-version-check",
        wheel,
        cwd=tmp_path,
        env=env,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    backends = ["numpy", "opencl"] if opencl_available() else ["numpy"]
    report = json.loads(_run(python, "-c", SNIPPET, venv, *backends, cwd=work, env=env))

    assert report["inside"], report["file"]
    assert Path(report["presets_dir"]).is_relative_to(venv.resolve())
    shipped = {Path(n).name for n in zipfile.ZipFile(wheel).namelist()}
    assert report["kernels"] and set(report["kernels"]) <= shipped
    assert report["presets"] and set(report["presets"]) <= shipped
    expected = [[[10.0, 14.0, 18.0], [26.0, 30.0, 34.0], [42.0, 46.0, 50.0]]]
    for backend in backends:
        values, used = report["outputs"][backend]
        assert values == expected, backend
        assert used == backend
    # the console script is installed and runs
    _run(venv / "bin" / "convcli", "--help", cwd=work, env=env)
