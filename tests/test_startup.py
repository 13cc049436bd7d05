"""Start-up: what a command imports before it does its work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.naive import naive_conv2d
from tests.test_backend_choice import _depthwise, _gaussian

ROOT = Path(__file__).resolve().parents[1]


_CLI = """
import atexit, json, runpy, sys
LAZY = ("pyopencl", "rich", "tifffile", "scipy", "torch", "zarr", "dask",
        "convcli.backends.opencl.backend", "convcli.backends.opencl.plan",
        "convcli.backends.opencl.runtime")
atexit.register(lambda: print(json.dumps([m for m in LAZY if m in sys.modules])))
sys.argv = ["convcli", *sys.argv[1:]]
runpy.run_module("convcli", run_name="__main__")
"""


def test_one_small_image_quietly_imports_only_what_it_uses(tmp_path):
    """`convcli apply small.png -q`: NumPy runs it (auto), no progress bar is shown (-q,
    and stderr is a pipe), so neither OpenCL nor rich nor other peers are imported (the
    image readers and writers import their codecs: pyvips, imagecodecs)."""
    from PIL import Image

    src, out = tmp_path / "in.png", tmp_path / "out.png"
    rng = np.random.default_rng(5)
    Image.fromarray((rng.random((96, 128, 3)) * 255).astype(np.uint8)).save(src)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = ["apply", str(src), "-o", str(out), "--preset", "gaussian:sigma=2", "-q"]
    done = subprocess.run([sys.executable, "-c", _CLI, *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    x = np.asarray(Image.open(src), np.float64).transpose(2, 0, 1) / 255
    ref = naive_conv2d(x[None], _depthwise(_gaussian(2), 3), pad=(7, 7, 7, 7), groups=3,
                       padding_mode="replicate")[0]  # fmt: skip
    got = np.asarray(Image.open(out), np.float64).transpose(2, 0, 1) / 255
    np.testing.assert_allclose(got, ref, rtol=0, atol=1 / 255 + 1e-6)


def test_help_answers_without_numpy_or_the_backends():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    script = _CLI.replace("LAZY = (", 'LAZY = ("numpy", "convcli.api", "convcli.batch", "PIL", ')
    for args in (["--help"], ["apply", "--help"], ["apply", "in.png"]):  # the last: usage error
        done = subprocess.run([sys.executable, "-c", script, *args], env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == (2 if args == ["apply", "in.png"] else 0), done.stderr
        assert json.loads(done.stdout.strip().splitlines()[-1]) == [], args


def test_a_builtin_preset_is_found_without_parsing_files_and_as_the_files_would():
    from convcli import presets

    names = [n for f in presets._FAMILIES for n in (f.name, *f.aliases)]
    names += [p.stem for p in presets.data_dir("presets").glob("*.toml")]
    quick = 0
    for name in names + [n.upper() for n in names]:
        found = presets._python_family(name)
        if found is not None:
            quick += 1
            assert found is presets._lookup(name, presets._builtin_families()), name
    assert presets._python_family("gaussian") is not None and quick >= len(presets._FAMILIES)


_ENDS = """
import atexit, sys, threading, time
from convcli.cli import console_main
atexit.register(lambda: print("atexit ran"))
def late():  # outlives the command: runs until the exit has begun, so it must be joined
    while threading.main_thread().is_alive():
        time.sleep(0.01)
    time.sleep(0.05)
    print("thread done", flush=False)
threading.Thread(target=late).start()  # not a daemon: the exit waits for it
console_main()
"""


def test_the_process_ends_as_a_normal_exit_would():
    """The entry point ends the process without the interpreter's teardown, but only
    after what a normal exit does: non-daemon threads joined, atexit handlers run,
    buffered stdout written out; the command's exit code kept."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", _ENDS, "presets", "list"], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert out[-2:] == ["thread done", "atexit ran"]
    assert "gaussian" in "\n".join(out[:-2])  # the table, before what the exit printed
    bad = subprocess.run([sys.executable, "-c", _ENDS, "apply", "missing.png", "-o", "o.png",
                          "--preset", "box"],
                         env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 1
    assert bad.stderr.splitlines() == ["convcli: error: missing.png: no such file"]
    assert bad.stdout.splitlines() == ["thread done", "atexit ran"]
    usage = subprocess.run([sys.executable, "-c", _ENDS, "apply", "--bogus"], env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert usage.returncode == 2


_CALLER = """
import sys, threading
from convcli.cli import main

def call(where):
    try:
        main(["presets", "list"])
    except SystemExit as exc:
        print(where, "caught", exc.code, flush=True)

call("main thread")
t = threading.Thread(target=call, args=("other thread",))
t.start()
t.join()
print("after", flush=True)
"""


def test_main_called_from_code_raises_systemexit_and_returns():
    """``main()`` is the library's way to run a command line: it ends in SystemExit
    like any click command, in any thread; only the console script ends the process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", _CALLER], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [x for x in done.stdout.splitlines() if x.endswith(("caught 0", "after"))]
    assert lines == ["main thread caught 0", "other thread caught 0", "after"]


def test_python_m_convcli_cli_still_runs_the_command():
    # the CLI was the module convcli/cli.py, runnable as `python -m convcli.cli`; the
    # package keeps that entry point (and the same one-line usage error)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for args, code in ((["--help"], 0), (["apply"], 2)):
        done = subprocess.run([sys.executable, "-m", "convcli.cli", *args], env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == code, done.stderr
    assert done.stderr.startswith("convcli: error: Missing argument"), done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_the_command_shortens_openblas_spin_unless_set():
    """OpenBLAS (loaded with NumPy) reads OPENBLAS_THREAD_TIMEOUT when it starts its
    threads: the command sets it before anything imports NumPy, and a value the user
    set stays."""
    script = (
        "import atexit, os, sys\n"
        "atexit.register(lambda: print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'),"
        " 'numpy' in sys.modules))\n"
        "sys.argv = ['convcli', 'presets', 'list']\n"
        "from convcli.cli import console_main\n"
        "console_main()\n"
    )
    from convcli.cli.group import BLAS_SPIN

    for given, want in ((None, BLAS_SPIN[1]), ("28", "28")):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("OPENBLAS_THREAD_TIMEOUT", None)
        if given is not None:
            env["OPENBLAS_THREAD_TIMEOUT"] = given
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1].split() == [want, "True"]
