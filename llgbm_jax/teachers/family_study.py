"""Teachers for every task of the generated family (`llgbm_jax.tasks.family`), and the baseline a generator must
beat: the mean of the final teachers as one LoRA (`llgbm_jax.lora.mean_lora`, exact) (``llgbm-jax family``).

Trains one teacher per task with `build_zoo` (resumable: finished runs are not retrained, scores are reused),
scores base and final teacher on held-out questions by option log-likelihood (cloze) and by greedy generation
with exact match, then scores the mean of all final teachers on every task the same way (cached in
``<zoo-dir>/mean_of_teachers.json``).
"""

from __future__ import annotations

import os
import time

from llgbm_jax.base import DEFAULT_MODEL
from llgbm_jax.utils.io import content_key, read_json, write_json_atomic

GAIN_BAR = 0.20  # a teacher "has real signal" when its cloze accuracy beats the base by this much


def family_zoo_config(*, model: str = DEFAULT_MODEL, tasks=None, steps: int = 32, lr: float = 5e-4,
                      batch_size: int = 8, save_every: int = 3, adapters_per_run: int = 8, eval_samples: int = 100):
    """One teacher per family task (all of them by default), r 8, on sequences of at most 128 tokens."""
    from llgbm_jax.tasks.family import family_task_names
    from llgbm_jax.teachers.run import TeacherConfig
    from llgbm_jax.teachers.zoo import ZooConfig

    teacher = TeacherConfig(steps=steps, warmup_steps=min(8, steps // 4), save_every=save_every,
                            adapters_per_run=adapters_per_run, batch_size=batch_size, learning_rate=lr,
                            max_seq_len=128)
    return ZooConfig(model=model, tasks=tuple(tasks or family_task_names()), teacher=teacher, eval_samples=eval_samples)


def score_mean_of_teachers(zoo_dir: str, cfg, manifest, base_model, *, show_progress: bool = True) -> dict:
    """Cloze and exact-match accuracy of the mean of the final teachers (one LoRA) on every task, with
    per-question hits; cached in ``zoo_dir/mean_of_teachers.json`` per task while the set of teachers
    and the questions are the same."""
    from llgbm_jax.lora.ops import mean_lora
    from llgbm_jax.lora.peft import load_peft_adapter
    from llgbm_jax.scoring.accuracy import compute_accuracy_with_lora, exact_match_accuracy
    from llgbm_jax.tasks.registry import get_task

    finals = sorted(a["path"] for a in manifest["adapters"] if a["task"] in cfg.tasks
                    and a["step"] == cfg.teacher_for(a["task"]).steps)
    path = os.path.join(zoo_dir, "mean_of_teachers.json")
    cache = read_json(path) if os.path.exists(path) else {}
    if cache.get("teachers") != finals:
        cache = {"teachers": finals, "tasks": {}}
    mean = None
    for name in cfg.tasks:
        task = get_task(name)
        records = task.load("eval")[:cfg.eval_samples_for(task)]
        key = content_key(records)
        if cache["tasks"].get(name, {}).get("eval_key") == key:
            continue
        if mean is None:
            mean = mean_lora([load_peft_adapter(os.path.join(zoo_dir, p), base_model.config) for p in finals])
        cloze = compute_accuracy_with_lora(mean, base_model, records, task, return_details=True,
                                           show_progress=show_progress)
        em = exact_match_accuracy(mean, base_model, records, task, return_details=True, show_progress=show_progress)
        cache["tasks"][name] = {"eval_key": key, "rank": mean.config.rank,
                                "cloze": cloze["accuracy"], "cloze_hits": [d["correct"] for d in cloze["details"]],
                                "exact_match": em["accuracy"],
                                "exact_match_hits": [d["correct"] for d in em["details"]],
                                "seconds": cloze["seconds"] + em["seconds"]}
        write_json_atomic(path, cache)
    return cache


def family_table(zoo_dir: str, cfg, manifest, mean_scores) -> list[dict]:
    """One row per task: kind, chance level, n, base / teacher / mean-of-teachers cloze accuracy and
    exact match, and the teacher's and the mean's cloze gains over the base (paired, same questions)."""
    from llgbm_jax.scoring.stats import paired_gain
    from llgbm_jax.tasks.family import kind_of
    from llgbm_jax.tasks.registry import get_task

    def hits(path):
        return [d["correct"] for d in read_json(path)]

    rows = []
    for s in manifest["summary"]:
        name = s["task"]
        records = get_task(name).load("eval")[:s["n"]]
        base = hits(os.path.join(zoo_dir, name, "base_test_details.json"))
        m = mean_scores["tasks"][name]
        rows.append({"task": name, "kind": kind_of(name), "n": s["n"],
                     "chance": sum(1 / len(r["options"]) for r in records) / len(records),
                     "base": s["base"], "teacher": s["teacher"], "mean_of_teachers": m["cloze"],
                     "teacher_gain": s["gain"], "teacher_gain_se": s["se"],
                     "mean_gain": paired_gain(base, m["cloze_hits"])["gain"],
                     "base_exact_match": s["base_exact_match"], "teacher_exact_match": s["teacher_exact_match"],
                     "mean_exact_match": m["exact_match"]})
    return rows


def format_table(rows) -> str:
    head = (f"{'task':<22} {'kind':<10} {'n':>4} {'chance':>6}  {'cloze: base':>11} {'teacher':>7} {'mean':>6}  "
            f"{'gain ± SE':<15}  {'exact: base':>11} {'teacher':>7} {'mean':>6}")
    lines = [head]
    for r in rows:
        lines.append(f"{r['task']:<22} {r['kind']:<10} {r['n']:>4} {r['chance']:>6.3f}  {r['base']:>11.3f} "
                     f"{r['teacher']:>7.3f} {r['mean_of_teachers']:>6.3f}  "
                     f"{r['teacher_gain']:+.3f} ± {r['teacher_gain_se']:.3f}  {r['base_exact_match']:>11.3f} "
                     f"{r['teacher_exact_match']:>7.3f} {r['mean_exact_match']:>6.3f}"
                     + ("" if r["teacher_gain"] >= GAIN_BAR else f"  (gain < {GAIN_BAR:.2f})"))
    return "\n".join(lines)


def family_study(zoo_dir: str, cfg, *, out: str | None = None, base_model=None, show_progress: bool = True) -> dict:
    """Build the family zoo ``cfg`` (`family_zoo_config`), score the mean of its teachers, and return (and save to
    ``out``) the table of `family_table` with the time each part took."""
    from llgbm_jax.base import load_base_model
    from llgbm_jax.teachers.zoo import build_zoo

    t0 = time.perf_counter()
    base_model = base_model or load_base_model(cfg.model)
    manifest = build_zoo(zoo_dir, cfg, base_model=base_model, show_progress=show_progress)
    t_mean = time.perf_counter()
    mean_scores = score_mean_of_teachers(zoo_dir, cfg, manifest, base_model, show_progress=show_progress)
    rows = family_table(zoo_dir, cfg, manifest, mean_scores)
    result = {"config": cfg.to_dict(), "rows": rows,
              "mean_of_teachers_rank": next(iter(mean_scores["tasks"].values()))["rank"],
              "below_gain_bar": [r["task"] for r in rows if r["teacher_gain"] < GAIN_BAR],
              "seconds": {"zoo_total": manifest["seconds"], "train": manifest.get("train_seconds", 0.0),
                          "base_and_teacher_scoring": manifest.get("eval_seconds", 0.0),
                          "mean_of_teachers_scoring": sum(m["seconds"] for m in mean_scores["tasks"].values()),
                          "this_call": time.perf_counter() - t0,
                          "this_call_mean_scoring": time.perf_counter() - t_mean}}
    if out:
        write_json_atomic(out, result)
    return result
