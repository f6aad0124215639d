"""`llgbm_jax.utils.compile_stats`: counting XLA compilations, and evaluation reporting its own."""

from __future__ import annotations

import jax
import numpy as np

from llgbm_jax.base.model import BaseModel, load_base_model
from llgbm_jax.scoring.accuracy import compute_accuracy_with_lora
from llgbm_jax.tasks.registry import get_task
from llgbm_jax.utils import compile_stats

from conftest import DATA_DIR, make_tiny_torch_model


def test_counts_one_program_per_shape():
    def twice_plus_one(x):
        return x * 2 + 1

    f = jax.jit(twice_plus_one)
    with compile_stats.count_compilations() as first:
        for n in (3, 4, 5, 3, 4):
            f(np.ones(n, np.float32)).block_until_ready()
    assert first.programs == 3 and first.seconds > 0
    assert first.by_name == {"jit(twice_plus_one)": 3}
    assert str(first).startswith("3 XLA programs compiled in")
    with compile_stats.count_compilations() as again:
        f(np.ones(5, np.float32)).block_until_ready()
    assert again.programs == 0

    reported = compile_stats.reports_compilations(lambda n: {"sum": float(np.asarray(f(np.ones(n, np.float32))).sum())})
    out = reported(6)
    assert out["sum"] == 18.0 and out["compiled_programs"] == 1 and out["compile_seconds"] > 0
    assert reported(6)["compiled_programs"] == 0


def test_evaluation_reports_its_compilations(smollm2, tmp_path):
    """`compute_accuracy_with_lora` reports what it compiled (as an outer counter sees it); scoring the
    same questions again compiles nothing: batches reuse their programs."""
    model = make_tiny_torch_model("llama", seed=7, vocab_size=smollm2.config.vocab_size, hidden_size=32,
                                  intermediate_size=48, num_attention_heads=2, num_key_value_heads=1)
    model.save_pretrained(tmp_path)
    weights = load_base_model(str(tmp_path))
    tiny = BaseModel(weights.config, weights.params, smollm2.tokenizer, name="tiny-llama")
    records = get_task("arc_e").load("eval", DATA_DIR)[:10]
    with compile_stats.count_compilations() as outer:
        first = compute_accuracy_with_lora(None, tiny, records, "arc_e", batch_size=4, show_progress=False)
    assert first["compiled_programs"] == outer.programs >= 2  # the prefix cache and the option scoring at least
    assert outer.by_name["jit(option_token_logprobs)"] >= 1
    again = compute_accuracy_with_lora(None, tiny, records, "arc_e", batch_size=4, show_progress=False)
    assert again["compiled_programs"] == 0 and again["correct"] == first["correct"]


_CACHED_PROGRAM = """
import sys, jax, jax.numpy as jnp
from llgbm_jax.utils.compile_stats import use_compilation_cache
hits = []
jax.monitoring.register_event_listener(lambda event, **kw: hits.append(event)
                                       if event.endswith("/cache_hits") else None)
print(use_compilation_cache(sys.argv[1], min_compile_seconds=0))
jax.jit(lambda x: jnp.sin(x) @ x)(jnp.ones((64, 64))).block_until_ready()
print(len(hits))
"""


def test_use_compilation_cache_reuses_programs_across_processes(tmp_path, monkeypatch):
    """The main job's compilation cache: a second process loads the program the first one compiled; a cache
    the user configured is kept."""
    import subprocess
    import sys

    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    run = lambda: subprocess.run([sys.executable, "-c", _CACHED_PROGRAM, str(tmp_path / "xla")], check=True,
                                 capture_output=True, text=True).stdout.split()
    first = run()
    assert first == [str(tmp_path / "xla"), "0"] and any((tmp_path / "xla").iterdir())
    second = run()  # the jitted function and the eager operations' programs are loaded, not compiled
    assert second[0] == str(tmp_path / "xla") and int(second[1]) >= 1
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
    assert run()[0] == str(tmp_path / "mine")
