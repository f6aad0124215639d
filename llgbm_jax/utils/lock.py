"""One job per run folder: `run_lock` holds an exclusive ``flock`` on ``<folder>/.lock`` for as long as the job runs.

The kernel releases the lock when its process ends however it ends (a kill included), so a lock file left by a
dead process never blocks; the file only records who held it last, for the message a second job gets.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time

LOCK_FILE = ".lock"


class RunLocked(RuntimeError):
    """Another live process holds the run folder."""


@contextlib.contextmanager
def run_lock(folder: str, advice: str = "wait for it to finish, or give this run another output folder (--output-dir)"):
    """Hold ``folder``'s lock for the ``with`` block; `RunLocked` names the holder (and ``advice``) if another
    process has it."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(f"{folder} is in use by another job ({_holder(fd)}); {advice}") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode())
        yield path
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        return f"process {info['pid']} on {info['host']}, since {since}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
