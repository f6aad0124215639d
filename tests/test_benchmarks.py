"""The benchmark scripts run, and what they time is computed right (against torch on the same inputs)."""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def test_attention_benchmark_agrees_with_torch_sdpa():
    """Chunked causal attention (several chunks, a partial last one) equals torch's SDPA within 1e-5."""
    import attention

    result = attention.main(["--batch", "2", "--seqs", "45", "--repeats", "1"])
    row = result["seqs"][45]
    assert row["max_diff_vs_torch"] <= 1e-5
    assert set(row["ms"]) == {"chunked_fwd", "chunked_grad", "one_softmax_fwd", "one_softmax_grad", "torch_fwd",
                              "torch_grad"} and all(v > 0 for v in row["ms"].values())
