"""convcli.io.publish: files appear complete or not at all, ``create`` never clobbers, and
stale temporary files of dead writers are removed. Every test runs both code paths: the
unnamed O_TMPFILE file (Linux) and the named temporary file (forced fallback)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from convcli.errors import InputError, OutputExistsError
from convcli.io import publish as cpub
from convcli.io.publish import publish, remove_stale_temps

HAS_TMPFILE = cpub._tmpfile_usable() if not os.environ.get(cpub.NO_TMPFILE_ENV) else False


@pytest.fixture(params=["tmpfile", "named"])
def way(request, monkeypatch) -> str:
    """Which code path publish takes."""
    if request.param == "tmpfile":
        if not HAS_TMPFILE:
            pytest.skip("no O_TMPFILE here")
        monkeypatch.delenv(cpub.NO_TMPFILE_ENV, raising=False)
    else:
        monkeypatch.setenv(cpub.NO_TMPFILE_ENV, "1")
    return request.param


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(proc.stdout)


def test_create_writes_and_uses_the_expected_path(tmp_path, way):
    seen = []

    def write(fh) -> None:
        fh.write(b"hello")
        seen.append(names(tmp_path))  # what a reader of the folder sees mid-write

    assert publish(tmp_path / "a.bin", write) == tmp_path / "a.bin"
    assert (tmp_path / "a.bin").read_bytes() == b"hello"
    assert names(tmp_path) == ["a.bin"]
    if way == "tmpfile":  # unnamed: nothing in the folder while writing
        assert seen == [[]]
    else:  # one named temporary file carrying our PID
        (tmp,) = seen[0]
        assert f"-{os.getpid()}-" in tmp and tmp.startswith(".a.bin.convcli-")
        assert tmp.endswith(".tmp")


def test_create_refuses_an_existing_name_before_writing(tmp_path, way):
    (tmp_path / "a.bin").write_bytes(b"theirs")
    calls = []
    with pytest.raises(OutputExistsError, match=r"a\.bin: already exists"):
        publish(tmp_path / "a.bin", lambda fh: calls.append(fh.write(b"ours")))
    assert calls == [] and (tmp_path / "a.bin").read_bytes() == b"theirs"


def test_create_loses_a_race_without_clobbering(tmp_path, way):
    """Another process creates the name while we write: its file wins, ours vanishes."""
    target = tmp_path / "a.bin"

    def write(fh) -> None:
        fh.write(b"ours")
        target.write_bytes(b"theirs")  # the other run, between our check and our link

    with pytest.raises(OutputExistsError, match=r"a\.bin: exists \(another run wrote it\?\)"):
        publish(target, write)
    assert target.read_bytes() == b"theirs"
    assert names(tmp_path) == ["a.bin"]


def test_create_never_follows_a_symlink(tmp_path, way):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep")
    (tmp_path / "link.bin").symlink_to(victim)
    (tmp_path / "dangling.bin").symlink_to(tmp_path / "nowhere")
    for name in ("link.bin", "dangling.bin"):
        with pytest.raises(OutputExistsError):
            publish(tmp_path / name, lambda fh: fh.write(b"x"))
    assert victim.read_bytes() == b"keep" and not (tmp_path / "nowhere").exists()


def test_replace_swaps_in_one_step(tmp_path, way):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    seen = []

    def write(fh) -> None:
        fh.write(b"new content")
        seen.append(target.read_bytes())  # readers still see the old file

    publish(target, write, mode="replace")
    assert seen == [b"old"] and target.read_bytes() == b"new content"
    assert names(tmp_path) == ["a.bin"]
    publish(tmp_path / "fresh.bin", lambda fh: fh.write(b"1"), mode="replace")
    assert (tmp_path / "fresh.bin").read_bytes() == b"1"
    # a symlink is replaced itself; its target is untouched
    (tmp_path / "t.txt").write_bytes(b"target")
    (tmp_path / "l.bin").symlink_to(tmp_path / "t.txt")
    publish(tmp_path / "l.bin", lambda fh: fh.write(b"2"), mode="replace")
    assert not (tmp_path / "l.bin").is_symlink() and (tmp_path / "t.txt").read_bytes() == b"target"


@pytest.mark.parametrize("mode", ["create", "replace"])
@pytest.mark.parametrize("exc", [KeyboardInterrupt, ValueError, OSError])
def test_failures_leave_nothing(tmp_path, way, mode, exc):
    (tmp_path / "keep.bin").write_bytes(b"before")
    target = tmp_path / ("keep.bin" if mode == "replace" else "new.bin")

    def write(fh) -> None:
        fh.write(b"half")
        raise exc(errno.ENOSPC, "No space left on device") if exc is OSError else exc()

    expected = InputError if exc is OSError else exc
    with pytest.raises(expected) as info:
        publish(target, write, mode=mode)
    if exc is OSError:
        assert str(info.value) == f"{target}: cannot write: no space left on device"
        assert info.value.__cause__.errno == errno.ENOSPC
    assert names(tmp_path) == ["keep.bin"] and (tmp_path / "keep.bin").read_bytes() == b"before"


def test_writer_gets_a_seekable_named_file(tmp_path, way):
    """tifffile and Pillow seek and ask for a name; a numeric name breaks tifffile."""

    def write(fh) -> None:
        fh.write(b"abcdef")
        fh.seek(2)
        fh.write(b"XY")
        assert fh.name == str(tmp_path / "s.bin")
        assert fh.tell() == 4

    publish(tmp_path / "s.bin", write)
    assert (tmp_path / "s.bin").read_bytes() == b"abXYef"


def test_long_names_fit(tmp_path, way):
    name = "n" * 250 + ".png"
    publish(tmp_path / name, lambda fh: fh.write(b"x"))
    assert names(tmp_path) == [name]


def test_missing_folder_and_bad_mode(tmp_path):
    with pytest.raises(InputError, match=r"cannot write: folder .*nope does not exist"):
        publish(tmp_path / "nope" / "a.bin", lambda fh: None)
    with pytest.raises(ValueError, match="mode must be one of"):
        publish(tmp_path / "a.bin", lambda fh: None, mode="append")


@pytest.mark.skipif(not HAS_TMPFILE, reason="no O_TMPFILE here")
@pytest.mark.parametrize("code", [errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL])
def test_unsupported_tmpfile_falls_back_to_a_named_file(tmp_path, monkeypatch, code):
    real_open = os.open
    tried = []

    def no_tmpfile(path, flags, *args, **kwargs):
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            tried.append(path)
            raise OSError(code, os.strerror(code))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(cpub.os, "open", no_tmpfile)
    seen = []
    publish(tmp_path / "a.bin", lambda fh: seen.append((fh.write(b"ok"), names(tmp_path))))
    assert tried and (tmp_path / "a.bin").read_bytes() == b"ok"
    assert len(seen[0][1]) == 1 and ".convcli-" in seen[0][1][0]  # the named path ran
    assert names(tmp_path) == ["a.bin"]


def test_stale_temps_of_dead_writers_are_removed_others_kept(tmp_path):
    tag, dead = cpub._host_tag(), dead_pid()
    other_tag = "000000" if tag != "000000" else "111111"
    files = {
        "dead": f".a.png.convcli-{tag}-{dead}-0123abcd.tmp",
        "live": f".b.png.convcli-{tag}-{os.getpid()}-0123abcd.tmp",
        "foreign-new": f".c.png.convcli-{other_tag}-{dead}-0123abcd.tmp",
        "foreign-old": f".d.png.convcli-{other_tag}-{dead}-0123abcd.tmp",
        "old-style": ".e.png.0123abcd.tmp",  # an earlier convcli: not ours to judge
        "look-alike": f".f.png.convcli-{tag}-{dead}-notours.tmp",
        "user": "photo.png",
    }
    for name in files.values():
        (tmp_path / name).write_bytes(b"x")
    old = time.time() - cpub.FOREIGN_STALE_S - 60
    os.utime(tmp_path / files["foreign-old"], (old, old))
    (tmp_path / f".g.png.convcli-{tag}-{dead}-0123abcd.tmp").mkdir()  # not a file: kept
    removed = remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted([files["dead"], files["foreign-old"]])
    kept = [n for k, n in files.items() if k not in ("dead", "foreign-old")]
    assert names(tmp_path) == sorted([*kept, f".g.png.convcli-{tag}-{dead}-0123abcd.tmp"])


def test_first_publish_into_a_folder_sweeps_it(tmp_path, way):
    stale = tmp_path / f".x.png.convcli-{cpub._host_tag()}-{dead_pid()}-0123abcd.tmp"
    stale.write_bytes(b"half")
    publish(tmp_path / "a.bin", lambda fh: fh.write(b"1"))
    assert names(tmp_path) == ["a.bin"]
    stale.write_bytes(b"half")  # once per folder and process: not looked at again
    publish(tmp_path / "b.bin", lambda fh: fh.write(b"2"))
    assert stale.exists()


def test_written_file_mode_follows_umask(tmp_path, way):
    umask = os.umask(0o027)
    try:
        publish(tmp_path / "m.bin", lambda fh: fh.write(b"x"))
    finally:
        os.umask(umask)
    assert (tmp_path / "m.bin").stat().st_mode & 0o777 == 0o640


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_replace_never_puts_a_file_in_place_of_a_fifo_or_a_stream_link(tmp_path, way):
    """A rename over a FIFO (or, as root, over /dev/null or the /dev/stdout link) would
    put a regular file there for every process: refused, the special file left as it is."""
    fifo, link = tmp_path / "pipe.json", tmp_path / "stdout.json"
    os.mkfifo(fifo)
    link.symlink_to("/proc/self/fd/1")
    for path, kind in ((fifo, "a FIFO"), (link, "a link to a process's open file")):
        with pytest.raises(InputError, match=f"it is {kind}.*not replaced"):
            publish(path, lambda fh: fh.write(b"{}"), mode="replace")
    assert cpub.special_kind(fifo) == "a FIFO (named pipe)"
    assert os.readlink(link) == "/proc/self/fd/1"
    assert names(tmp_path) == ["pipe.json", "stdout.json"]  # no temporary file left
    assert cpub.special_kind(tmp_path) is None and cpub.special_kind(tmp_path / "x") is None
