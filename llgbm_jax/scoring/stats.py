"""The statistics every accuracy number carries: Wilson intervals and paired gains with their standard errors."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``k / n`` (95% by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_difference(d) -> dict[str, float]:
    """Mean of paired per-question differences ``d`` with its standard error (std / √n), and the mean in SEs."""
    d = np.asarray(d, np.float64)
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
    gain = float(d.mean())
    return {"gain": gain, "se": se, "gain_in_se": gain / se if se > 0 else 0.0, "n": len(d)}


def paired_gain(base_hits: Sequence[bool], new_hits: Sequence[bool]) -> dict[str, float]:
    """Accuracy gain of ``new`` over ``base`` on the same questions, with the paired standard error
    (standard deviation of the per-question differences / √n) and the gain in standard errors."""
    if len(base_hits) != len(new_hits) or not base_hits:
        raise ValueError("paired_gain needs two equally long non-empty hit lists, got "
                         f"{len(base_hits)} and {len(new_hits)}")
    d = np.asarray(new_hits, np.float64) - np.asarray(base_hits, np.float64)
    return {**mean_difference(d), "only_new_correct": int((d > 0).sum()), "only_base_correct": int((d < 0).sum())}
