"""Atomic folder replacement survives a process killed (SIGKILL) at every step of the replace.

A child process replaces a folder holding the "old" version with a "new" one and is killed just
before its k-th rename, exchange or removal. Right after the kill the folder holds one complete
version (with the atomic exchange: always; with the two-rename fallback: after `recover_dir`, which
every `atomic_dir` runs first), and no leftover of the dead writer survives the next start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from llgbm_jax.utils import io as io_utils

FILES = ("a.txt", "sub/b.txt")

CHILD = textwrap.dedent("""
    import importlib.util, os, shutil, signal, sys

    path, kill_at, exchange, module = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
    spec = importlib.util.spec_from_file_location("io_utils", module)  # this file alone: no JAX import
    io_utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(io_utils)
    calls = [0]

    def killing(fn):
        def wrapped(*args, **kwargs):
            calls[0] += 1
            if calls[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)
        return wrapped

    if not exchange:
        io_utils._exchange = lambda a, b: False
    elif hasattr(io_utils, "_exchange"):
        io_utils._exchange = killing(io_utils._exchange)
    os.rename, os.replace, shutil.rmtree = killing(os.rename), killing(os.replace), killing(shutil.rmtree)
    with io_utils.atomic_dir(path) as tmp:
        for name in %r:
            os.makedirs(os.path.dirname(os.path.join(tmp, name)), exist_ok=True)
            with open(os.path.join(tmp, name), "w") as f:
                f.write("new " * 10000)
""" % (FILES,))


def write_version(folder, version: str):
    for name in FILES:
        os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
        with open(os.path.join(folder, name), "w") as f:
            f.write(f"{version} " * 10000)


def version_of(folder) -> str:
    """The one version every file of ``folder`` holds; fails on a mixed, partial or missing folder."""
    files = sorted(os.path.relpath(os.path.join(r, f), folder) for r, _, fs in os.walk(folder) for f in fs)
    assert files == sorted(FILES), files
    contents = {open(os.path.join(folder, name)).read() for name in FILES}
    assert len(contents) == 1, "files of different versions"
    (content,) = contents
    version = content.split(" ", 1)[0]
    assert content == f"{version} " * 10000
    return version


def leftovers(parent):
    return sorted(n for n in os.listdir(parent) if n.startswith("."))


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_replace_killed_at_every_step(tmp_path, exchange):
    seen = set()
    for kill_at in range(1, 8):
        parent = tmp_path / f"k{kill_at}"
        path = str(parent / "folder")
        os.makedirs(path)
        write_version(path, "old")
        args = [path, str(kill_at), "1" if exchange else "0", io_utils.__file__]
        out = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=120)
        if out.returncode == 0:  # the replace finished before the k-th call
            assert version_of(path) == "new" and not leftovers(parent)
            break
        assert out.returncode == -signal.SIGKILL, out.stderr
        if exchange:  # readable at once: the complete old or new folder, never a missing or mixed one
            seen.add(version_of(path))
        io_utils.recover_dir(path)  # what the next atomic_dir(path) does first
        version = version_of(path)
        seen.add(version)
        assert not leftovers(parent), leftovers(parent)
        with io_utils.atomic_dir(path) as tmp:  # and the folder can be replaced again
            write_version(tmp, "next")
        assert version_of(path) == "next" and not leftovers(parent)
    else:
        pytest.fail("the child never finished the replace")
    assert kill_at >= 3  # killed at several steps of the replace, not only before it began
    assert seen == {"old", "new"}  # killed both before and after the new folder took its place


def test_leftovers_of_a_live_writer_are_kept(tmp_path):
    """Only a dead process's leftovers are removed: another process may be writing this folder now."""
    path = str(tmp_path / "folder")
    os.makedirs(path)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".tmp-folder-{sleeper.pid}-abc123"
        live.mkdir()
        io_utils.recover_dir(path)
        assert live.is_dir()
    finally:
        sleeper.kill()
        sleeper.wait()
    io_utils.recover_dir(path)
    assert not live.exists()


def test_atomic_dir_error_keeps_the_old_folder(tmp_path):
    path = str(tmp_path / "folder")
    os.makedirs(path)
    write_version(path, "old")
    with pytest.raises(RuntimeError, match="boom"):
        with io_utils.atomic_dir(path) as tmp:
            write_version(tmp, "new")
            raise RuntimeError("boom")
    assert version_of(path) == "old" and not leftovers(tmp_path)
