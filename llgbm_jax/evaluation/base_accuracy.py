"""Base-model accuracy per task beside the majority-class baseline (``llgbm-jax base-accuracy``).

mcq/bool/cloze tasks are scored by option log-likelihood (no parse failures; ``acc_norm`` divides by the answer's
length in characters), GSM8K by greedy generation. Per task: n, accuracy, length-normalised accuracy, Wilson 95%
interval, parse failures, wall time (compilation included), questions per second, and the majority baseline (the
share of the most frequent gold answer among the evaluated questions).
"""

from __future__ import annotations

import os
import platform
import time

DEFAULT_TASKS = ("arc_e", "boolq", "obqa", "gsm8k")


def _fmt_ci(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def format_table(results: dict) -> str:
    head = ("task", "n", "acc", "acc_norm", "95% CI", "parse fail", "majority", "time s", "q/s")
    rows = []
    for name, r in results.items():
        norm = f"{r['accuracy_norm']:.3f}" if "accuracy_norm" in r else "-"
        rows.append((name, str(r["total"]), f"{r['accuracy']:.3f}", norm, _fmt_ci(r["ci95"]), str(r["parse_failures"]),
                     f"{r['majority_baseline']:.3f} {r['majority_label']}", f"{r['seconds']:.1f}",
                     f"{r['questions_per_s']:.2f}"))
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def base_accuracy(tasks=DEFAULT_TASKS, *, max_samples: int | None = None, out: str | None = None,
                  data_dir: str | None = None, model: str | None = None, dtype: str = "float32",
                  batch_size: int | None = None, max_new_tokens: int = 256, show_progress: bool = True) -> dict:
    """Score the base model on each task's held-out split (the first ``max_samples`` questions); the results are
    saved to ``out`` after every task, so a killed run keeps what it measured. Returns ``{task: result}``."""
    import jax

    from llgbm_jax.base import DEFAULT_MODEL, load_base_model
    from llgbm_jax.scoring.accuracy import compute_base_accuracy
    from llgbm_jax.tasks.registry import get_data_dir, get_task
    from llgbm_jax.utils.io import write_json_atomic

    tasks = [get_task(name, data_dir) for name in tasks]
    evals = {t.name: t.load("eval", data_dir) for t in tasks}  # fail on a missing file before any work
    model_name = model or DEFAULT_MODEL
    t0 = time.perf_counter()
    base_model = load_base_model(model_name, dtype=dtype)
    print(f"loaded {model_name} ({dtype}) in {time.perf_counter() - t0:.1f}s; data: {get_data_dir(data_dir)}")
    results = {}
    for task in tasks:
        records = evals[task.name][:max_samples] if max_samples else evals[task.name]
        res = compute_base_accuracy(base_model, records, None, task, None, show_progress, batch_size=batch_size,
                                    max_new_tokens=max_new_tokens)
        label, share = task.majority_baseline(records)
        res.update(majority_label=f"{label:g}" if isinstance(label, float) else str(label), majority_baseline=share)
        results[task.name] = res
        if out:
            write_json_atomic(out, {
                "model": model_name, "dtype": dtype, "data_dir": os.path.abspath(get_data_dir(data_dir)),
                "max_samples": max_samples, "max_new_tokens": max_new_tokens,
                "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                            "jax_backend": jax.default_backend(), "load_average": os.getloadavg()},
                "tasks": results})
        print(f"{task.name}: {res['correct']}/{res['total']} = {res['accuracy']:.3f} {_fmt_ci(res['ci95'])}, "
              f"{res['seconds']:.1f}s, {res['compiled_programs']} XLA programs compiled", flush=True)
    print("\n" + format_table(results))
    if "arc_e" in results:
        r = results["arc_e"]
        print(f"\nARC-e throughput: {r['questions_per_s']:.2f} questions/s (compilation included) -> 500 questions "
              f"in {500 / r['questions_per_s']:.0f}s (target < 180s)")
    if out:
        print(f"wrote {out}")
    return results
