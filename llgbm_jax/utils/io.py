"""Files: atomic writes (a killed process never leaves a half-written file or folder behind), the one JSON
reader, and the one content key that names every cache entry.

A folder is replaced crash-safely: the new folder is written beside ``path`` and flushed to disk, then
swapped in with one atomic exchange (Linux ``renameat2(RENAME_EXCHANGE)``), so ``path`` always holds
one complete folder, old or new. Where the exchange is not supported the replace takes two renames
(``path`` away, new folder in), and the complete new folder is first renamed to a ``.new-`` name;
`recover_dir`, run at the start of every `atomic_dir`, finishes such a replace that a killed process
left half done and removes the leftovers. Leftovers carry their writer's process id and are removed
only once that process is gone (on this machine), so a writer still at work is never disturbed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings

import numpy as np


def _fsync_path(path: str, directory: bool = False) -> None:
    """Flush a file (or a folder's entries) to disk; folders where the system cannot are skipped."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def _fsync_tree(root: str) -> None:
    """Flush every file and folder under ``root`` (files first, then their folders)."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            _fsync_path(os.path.join(folder, name))
        _fsync_path(folder, directory=True)


def _exchange(a: str, b: str) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2`` with ``RENAME_EXCHANGE``);
    False where the system or file system does not support it."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), a, None, b)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        pass
    return True


def _leftovers(path: str) -> list[tuple[str, str]]:
    """``(kind, folder)`` of every ``.tmp-``/``.new-``/``.old-`` folder of ``path`` whose writer is gone,
    newest first."""
    parent, base = os.path.split(os.path.abspath(path))
    pattern = re.compile(rf"\.(tmp|new|old)-{re.escape(base)}-(\d+)-[A-Za-z0-9_]+")
    found = []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(parent):
            m = pattern.fullmatch(name)
            if m and not _alive(int(m[2])):
                full = os.path.join(parent, name)
                found.append((m[1], full, os.stat(full).st_mtime_ns))
    return [(kind, full) for kind, full, _ in sorted(found, key=lambda x: -x[2])]


def recover_dir(path: str) -> None:
    """Finish or clean up a replace of ``path`` that a killed `atomic_dir` left half done: if ``path``
    is missing, a complete new folder (else the old one) is moved back to it; leftovers are removed."""
    leftovers = _leftovers(path)
    if not os.path.exists(path):
        for kind in ("new", "old"):
            found = [full for k, full in leftovers if k == kind]
            if found:
                os.rename(found[0], path)
                _fsync_path(os.path.dirname(os.path.abspath(path)), directory=True)
                break
    for _, full in leftovers:
        shutil.rmtree(full, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str):
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` crash-safely (see the
    module docstring): with the atomic exchange ``path`` is at every moment the complete old or the
    complete new folder; without it, the next `atomic_dir` or `recover_dir` restores one of the two."""
    parent = os.path.dirname(os.path.abspath(path)) or "."
    base = os.path.basename(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    recover_dir(path)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{base}-{os.getpid()}-", dir=parent)
    try:
        yield tmp
        _fsync_tree(tmp)
        if not os.path.exists(path):
            os.rename(tmp, path)
        elif _exchange(tmp, path):  # path is now the new folder, tmp the old one
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            suffix = os.path.basename(tmp)[len(".tmp-"):]
            new, old = (os.path.join(parent, f".{kind}-{suffix}") for kind in ("new", "old"))
            os.rename(tmp, new)  # complete: from here on `recover_dir` moves it into place
            tmp = new
            os.rename(path, old)
            try:
                os.rename(new, path)
            except BaseException:
                os.rename(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        _fsync_path(parent, directory=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str, suffix: str = ""):
    """Yield a temporary file path beside ``path``; on success it is flushed to disk and replaces
    ``path`` in one rename."""
    parent = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=parent)
    os.close(fd)
    try:
        yield tmp
        _fsync_path(tmp)
        os.replace(tmp, path)
        _fsync_path(parent, directory=True)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_json_atomic(path: str, obj) -> None:
    with atomic_file(path, ".json") as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)


def read_json(path: str):
    """The JSON in ``path``; a missing file or invalid JSON raises an error that names the file."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"missing file: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None


def content_key(obj) -> str:
    """SHA-256 of the canonical JSON of ``obj`` (sorted keys; tuples as lists): the key of every cache entry,
    record fingerprint and configuration fingerprint, so equal content always gives the same key."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=list)
    return hashlib.sha256(text.encode()).hexdigest()


def hash_arrays(h, named_arrays) -> None:
    """Feed ``(name, array)`` pairs (dtype, shape and bytes) into the hashlib object ``h``."""
    for name, x in named_arrays:
        x = np.ascontiguousarray(np.asarray(x))
        h.update(f"{name}:{x.dtype.str}:{x.shape};".encode())
        h.update(x.tobytes())


def json_roundtrip(obj):
    """``obj`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(obj, default=list))


class CacheWarning(UserWarning):
    """A cache entry could not be used (damaged, or written for another key); it is recomputed."""


def warn_unusable(path: str, why) -> None:
    """Warn that the cache entry ``path`` is not read (``why``) and will be recomputed."""
    reason = f"{type(why).__name__}: {why}" if isinstance(why, BaseException) else str(why)
    warnings.warn(f"{path}: unusable cache entry ({reason}); recomputing it", CacheWarning, stacklevel=3)
