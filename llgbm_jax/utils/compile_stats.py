"""How many XLA programs a block of work compiled: long runs print it, so that a change that breaks
shape bucketing (a compilation per batch instead of per bucket) shows at once.

Counts JAX's ``/jax/core/compile/backend_compile_duration`` events: every backend compilation of a
jitted function or of an eager operation on a new shape (a hit in JAX's persistent compilation cache,
when one is configured, counts too).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools

import jax

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@dataclasses.dataclass
class CompileStats:
    programs: int = 0
    seconds: float = 0.0
    by_name: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def __sub__(self, other: "CompileStats") -> "CompileStats":
        return CompileStats(self.programs - other.programs, self.seconds - other.seconds, self.by_name - other.by_name)

    def __str__(self) -> str:
        top = ", ".join(f"{name} x{n}" for name, n in self.by_name.most_common(4))
        return f"{self.programs} XLA programs compiled in {self.seconds:.1f} s" + (f" ({top}, ...)" if top else "")


_TOTAL = CompileStats()  # every compilation of this process since this module was imported


def _listener(event: str, duration: float, **kwargs):
    if event == COMPILE_EVENT:
        _TOTAL.programs += 1
        _TOTAL.seconds += duration
        _TOTAL.by_name[str(kwargs.get("fun_name", "?"))] += 1


jax.monitoring.register_event_duration_secs_listener(_listener)


def snapshot() -> CompileStats:
    """The process's compilations so far; ``snapshot() - start`` is what happened since ``start``."""
    return dataclasses.replace(_TOTAL, by_name=collections.Counter(_TOTAL.by_name))


@contextlib.contextmanager
def count_compilations():
    """``with count_compilations() as stats:`` fills ``stats`` with the block's compilations when it ends."""
    start, stats = snapshot(), CompileStats()
    try:
        yield stats
    finally:
        done = snapshot() - start
        stats.programs, stats.seconds, stats.by_name = done.programs, done.seconds, done.by_name


def reports_compilations(fn):
    """Decorator for a function returning a dict: adds ``compiled_programs`` and ``compile_seconds``
    of the call to it."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with count_compilations() as stats:
            out = fn(*args, **kwargs)
        out.update(compiled_programs=stats.programs, compile_seconds=stats.seconds)
        return out

    return wrapper


def use_compilation_cache(directory: str, min_compile_seconds: float = 0.5) -> str:
    """Keep compiled XLA programs in JAX's persistent cache under ``directory`` (compilations of over
    ``min_compile_seconds``), so a rerun with the same shapes loads them instead of compiling. A cache the
    user configured (``JAX_COMPILATION_CACHE_DIR`` or ``jax.config``) is kept. Returns the directory in use."""
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", directory)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    return jax.config.jax_compilation_cache_dir
