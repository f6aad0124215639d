"""Shared set-up for the side-by-side benchmarks: same weights, same thread count, medians."""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def threads() -> int:
    """Use every core for both frameworks (XLA's CPU backend does by default); pin torch to match."""
    import torch

    n = os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


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
    from llgbm_jax.models import load_base_model
    from llgbm_jax.reference import torch_model

    return load_base_model("smollm2-135m-instruct", dtype=dtype), torch_model("smollm2-135m-instruct", dtype)


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
