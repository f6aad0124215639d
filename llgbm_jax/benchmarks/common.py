"""Shared set-up for the side-by-side benchmarks: same weights, same thread count, medians."""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def parse_args(ap, argv=None, repeats: int = 5):
    """Add the options every benchmark shares (``--repeats``, ``--threads``, ``--out``) to ``ap`` and parse.
    ``--threads N`` pins the process to N cores (XLA sizes its pool from the affinity mask, so this
    must run before JAX starts computing) and torch to N threads; by default both use every core.
    Returns ``(args, threads)``."""
    import torch

    ap.add_argument("--repeats", type=int, default=repeats, help="timed calls per measurement (medians)")
    ap.add_argument("--threads", type=int, default=None, help="pin to this many cores (default: all)")
    ap.add_argument("--out", default=None, help="optional JSON file for the results")
    args = ap.parse_args(argv)
    if args.threads:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
    n = args.threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return args, n


def save_result(args, result: dict) -> dict:
    """Write ``result`` to ``--out`` (atomically) when given; returns it."""
    if args.out:
        from llgbm_jax.utils.io import write_json_atomic

        write_json_atomic(args.out, result)
    return result


def median_time(fn, repeats: int = 5, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in seconds; ``fn`` must block until its result is ready."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def load_smollm2_pair(dtype: str = "float32"):
    """Our `BaseModel` and transformers' PyTorch model, both from the embedded SmolLM2 GGUF."""
    from llgbm_jax.base.model import DEFAULT_MODEL, load_base_model
    from llgbm_jax.evaluation.reference import torch_model

    return load_base_model(DEFAULT_MODEL, dtype=dtype), torch_model(DEFAULT_MODEL, dtype)


def interleaved_medians(fns: dict, repeats: int, warmup: int = 2) -> dict:
    """Median seconds per call of each ``fns[k]()``, timed round-robin so that load from other processes
    on a shared machine drifts over all of them alike rather than over whichever ran last."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}
