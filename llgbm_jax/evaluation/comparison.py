"""Generated adapters beside the baselines a skeptic tries first, per task.

For every task of a zoo: the base model, the task's own final teacher, the generator conditioned on the
task's held-out prompts ("generated"), the exact mean of all final teachers as one adapter
("mean_teachers", baseline a), and the generator conditioned on another task's held-out prompts
("cross_task", baseline b). Compared on the task's held-out questions (accuracy, with paired standard
errors on the same questions), in weight space (ΔW cosine and relative error to the final teacher) and in
behaviour (delta cosine to the task's own teachers and to the other tasks' teachers).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np

from llgbm_jax.lora.adapter import LoRA
from llgbm_jax.utils.io import content_key, json_roundtrip, read_json, warn_unusable, write_json_atomic

VARIANTS = ("base", "teacher", "generated", "mean_teachers", "cross_task")


def heldout_condition(splits, task: str, n: int, seed: int) -> list[str]:
    """``n`` of the task's held-out condition prompts (seeded; repeats only if it has fewer)."""
    pool = splits.heldout_prompts.get(task) or []
    if not pool:
        raise ValueError(f"task {task!r} has no held-out condition prompts")
    rng = np.random.default_rng([seed, 12345])
    return [pool[i] for i in rng.choice(len(pool), n, replace=len(pool) < n)]


def cross_task_sources(tasks: Sequence[str]) -> dict[str, str]:
    """Each task's "other task" for baseline (b): the next one in sorted order (cyclic)."""
    names = sorted(tasks)
    if len(names) < 2:
        raise ValueError("the cross-task baseline needs at least two tasks")
    return {t: names[(i + 1) % len(names)] for i, t in enumerate(names)}


# --- accuracy -----------------------------------------------------------------------------------------------

class ScoreCache:
    """Per-question results of a (model, adapter, task, questions) combination, one JSON file per entry named by
    the `content_key` of that key and holding the key, written atomically; an entry that cannot be read or whose
    stored key differs is recomputed, with a `CacheWarning`."""

    def __init__(self, directory: str):
        self.directory = directory

    def path(self, key: dict) -> str:
        return os.path.join(self.directory, content_key(key)[:32] + ".json")

    def get(self, key: dict):
        path = self.path(key)
        if not os.path.isfile(path):
            return None
        try:
            entry = read_json(path)
            if entry.get("key") != json_roundtrip(key):
                raise ValueError("its stored key is another entry's")
            return entry["result"]
        except (ValueError, KeyError, AttributeError) as e:
            warn_unusable(path, e)
            return None

    def put(self, key: dict, result) -> None:
        write_json_atomic(self.path(key), {"key": key, "result": result})


def saved_details(path: str, golds: Sequence) -> list[dict] | None:
    """Per-question results saved by the zoo (base or teacher), if they cover ``golds`` in order."""
    if not os.path.isfile(path):
        return None
    details = read_json(path)
    if len(details) < len(golds) or any(d["gold"] != g for d, g in zip(details, golds)):
        return None
    return details[:len(golds)]


def score(base_model, task, records, lora: LoRA | None, *, show_progress: bool = False) -> list[dict]:
    """Per-question results (``correct``, ``pred``, ``gold``) of ``lora`` on ``records``."""
    from llgbm_jax.scoring.accuracy import compute_accuracy_with_lora

    res = compute_accuracy_with_lora(lora, base_model, records, task, return_details=True,
                                     show_progress=show_progress)
    return [{"correct": bool(d["correct"]), "pred": d["pred"], "gold": d["gold"]} for d in res["details"]]


def score_many(base_model, task, records, loras: Sequence[LoRA], *, show_progress: bool = False) -> list[list[dict]]:
    """`score` of each adapter in ``loras``. On generation tasks (gsm8k) the adapters' answers are decoded
    side by side, one row per (adapter, question) in the same batches: a decoding step reads the model's
    weights once for every row, so two adapters on a few questions cost about what one does."""
    from llgbm_jax.lora.adapter import stack_loras
    from llgbm_jax.scoring.accuracy import GENERATION_BATCH

    if (task.task_type != "gsm8k" or len(loras) < 2 or any(l is None for l in loras)
            or len({l.config for l in loras}) > 1):
        return [score(base_model, task, records, l, show_progress=show_progress) for l in loras]
    per = max(GENERATION_BATCH // len(loras), 1)  # questions per batch
    out: list[list[dict]] = [[] for _ in loras]
    for s in range(0, len(records), per):
        chunk = list(records[s:s + per])
        rows = stack_loras([l for l in loras for _ in chunk])
        got = score(base_model, task, chunk * len(loras), rows, show_progress=show_progress)
        for j in range(len(loras)):
            out[j] += got[j * len(chunk):(j + 1) * len(chunk)]
    return out


def accuracy_summary(details: dict[str, list[dict]]) -> dict[str, Any]:
    """Accuracy of every variant, paired gains over the base model and the teacher's gain recovered."""
    from llgbm_jax.scoring.stats import paired_gain, wilson_interval

    hits = {k: [d["correct"] for d in v] for k, v in details.items()}
    n = len(hits["base"])
    out: dict[str, Any] = {"n": n}
    for k, h in hits.items():
        out[k] = {"accuracy": sum(h) / n, "correct": int(sum(h)), "ci95": list(wilson_interval(sum(h), n))}
        if k != "base":
            out[k]["gain_over_base"] = paired_gain(hits["base"], h)
    if "generated" in hits:
        for other in ("teacher", "mean_teachers", "cross_task"):
            if other in hits:
                out["generated"][f"minus_{other}"] = paired_gain(hits[other], hits["generated"])
        if "teacher" in hits:
            teacher_gain = out["teacher"]["gain_over_base"]["gain"]
            out["recovery"] = (out["generated"]["gain_over_base"]["gain"] / teacher_gain) if teacher_gain > 0 else None
            out["teacher_significant"] = out["teacher"]["gain_over_base"]["gain_in_se"] > 2
    return out


def adapter_vs_base(base_model, lora: LoRA, task, records, *, show_progress: bool = False) -> dict[str, Any]:
    """``lora`` and the base model on the same questions: each one's accuracy with its 95% interval, and the
    adapter's paired gain over the base with its standard error (`accuracy_summary`)."""
    base, adapter = (score(base_model, task, records, l, show_progress=show_progress) for l in (None, lora))
    return {"task": task.name, **accuracy_summary({"base": base, "adapter": adapter})}


def format_adapter_vs_base(result: dict[str, Any]) -> str:
    b, a = result["base"], result["adapter"]
    g = a["gain_over_base"]
    ci = lambda x: f"{x['accuracy']:.3f} [{x['ci95'][0]:.3f}, {x['ci95'][1]:.3f}] ({x['correct']}/{result['n']})"
    return (f"{result['task']}: {result['n']} held-out questions, accuracy [95% interval]\n"
            f"  base     {ci(b)}\n  adapter  {ci(a)}\n"
            f"  gain     {g['gain']:+.3f} ± {g['se']:.3f} (paired SE; {g['gain_in_se']:.1f} SE)")


# --- weights and behaviour ----------------------------------------------------------------------------------

def own_other_cosine(delta: np.ndarray, task: str, teacher_deltas: dict[str, np.ndarray],
                     teacher_tasks: dict[str, str]) -> dict[str, float]:
    """Mean cosine of a behavioural ``delta`` to the deltas of ``task``'s own teachers ("own") and to the
    other tasks' teachers ("other")."""
    names = sorted(teacher_deltas)
    mat = np.stack([teacher_deltas[n] for n in names]).astype(np.float64)
    mat /= np.maximum(np.linalg.norm(mat, axis=1, keepdims=True), 1e-30)
    d = np.asarray(delta, np.float64)
    cos = mat @ (d / max(np.linalg.norm(d), 1e-30))
    own = np.asarray([teacher_tasks[n] == task for n in names])
    return {"own": float(cos[own].mean()) if own.any() else float("nan"),
            "other": float(cos[~own].mean()) if (~own).any() else float("nan")}


# --- the main job's comparison, per task ----------------------------------------------------------------------

@dataclasses.dataclass
class Variants:
    """Per task: the adapters compared (generated from held-out prompts, the cross-task one, the final teacher) and
    the behavioural deltas already computed, plus the mean of all final teachers (baseline a)."""

    tasks: list[str]
    prompts: dict[str, list[str]]
    generated: dict[str, LoRA]
    generated_delta: dict[str, np.ndarray]
    sources: dict[str, str]  # task -> the task whose prompts condition its cross-task adapter (baseline b)
    final_of: dict[str, Any]  # task -> its final ZooAdapter (one run per task on the cpu preset; else the first)
    final_teachers: dict[str, LoRA]
    finals: list  # every final ZooAdapter
    mean_teachers: LoRA
    mean_delta: np.ndarray

    def cross(self, task: str) -> LoRA:
        return self.generated[self.sources[task]]


def make_variants(generator, comp, config, eval_generated: LoRA, eval_deltas) -> Variants:
    """Each task's generated adapter is the evaluation's for the task's first held-out adapter (same held-out
    prompts, so its delta is not computed twice); a task with no held-out adapter draws its own held-out
    prompts. The mean of the teachers' delta depends on the zoo only and is cached."""
    from llgbm_jax.conditions.deltas import DeltaCache, behavioural_delta
    from llgbm_jax.generator.dataset import take
    from llgbm_jax.generator.model import generate_lora
    from llgbm_jax.lora.adapter import stack_loras
    from llgbm_jax.lora.ops import mean_lora
    from llgbm_jax.lora.peft import load_peft_adapter
    from llgbm_jax.teachers.manifest import final_adapters

    base_model, eval_set = comp.base_model, comp.eval_dataset
    finals = final_adapters(comp.adapters)
    tasks = sorted({a.task for a in comp.adapters})
    final_of = {}
    for a in finals:
        final_of.setdefault(a.task, a)
    first_heldout = {}
    for i, a in enumerate(eval_set.adapters):
        first_heldout.setdefault(a.task, i)
    prompts = {t: eval_set.sample(i)["prompts"] for t, i in first_heldout.items()}
    generated = {t: take(eval_generated, i) for t, i in first_heldout.items()}
    gen_delta = {t: eval_deltas[i] for t, i in first_heldout.items()}
    rest = [t for t in tasks if t not in generated]
    for t in rest:
        prompts[t] = heldout_condition(comp.dataset.splits, t, config.num_prompts_per_adapter, config.seed)
        generated[t] = generate_lora(generator, prompts[t], comp.text_encoder)
    if rest:
        gen_delta.update(zip(rest, np.asarray(behavioural_delta(
            base_model, stack_loras([generated[t] for t in rest]), comp.probes, comp.base_activation,
            delta_batch_probes=config.delta_batch_probes))))
    mean_teachers = mean_lora([load_peft_adapter(a.path, base_model.config) for a in finals])
    mean_delta = DeltaCache(config.delta_cache_dir).get_lora(
        base_model, comp.probes, mean_teachers, base_hidden=comp.base_activation,
        delta_batch_probes=config.delta_batch_probes, source="mean of the final teachers")
    return Variants(tasks=tasks, prompts=prompts, generated=generated, generated_delta=gen_delta,
                    sources=cross_task_sources(tasks), final_of=final_of,
                    final_teachers={t: load_peft_adapter(final_of[t].path, base_model.config) for t in tasks},
                    finals=finals, mean_teachers=mean_teachers, mean_delta=mean_delta)


def weight_and_behaviour(v: Variants, teacher_deltas: dict[str, np.ndarray], adapters) -> dict[str, dict]:
    """Per task: ΔW cosine and relative error to the final teacher, and behavioural delta cosine to the task's own
    teachers and to the others', of the generated adapter and of baselines (a) and (b)."""
    from llgbm_jax.generator.training import delta_w_metrics

    teacher_tasks = {a.name: a.task for a in adapters if a.name in teacher_deltas}
    cosines = lambda d, t: own_other_cosine(d, t, teacher_deltas, teacher_tasks)
    out = {}
    for t in v.tasks:
        teacher = v.final_teachers[t]
        out[t] = {"condition_prompts": v.prompts[t],
                  "generated": {"delta_w": delta_w_metrics(v.generated[t], teacher),
                                "delta_cosine": cosines(v.generated_delta[t], t)},
                  "mean_teachers": {"delta_w": delta_w_metrics(v.mean_teachers, teacher),
                                    "delta_cosine": cosines(v.mean_delta, t)},
                  "cross_task": {"source": v.sources[t], "delta_w": delta_w_metrics(v.cross(t), teacher),
                                 "delta_cosine": cosines(v.generated_delta[v.sources[t]], t)}}
    return out


def format_weight_table(per_task: dict[str, dict]) -> str:
    lines = [f"{'task':<22} {'ΔW cos':>7} {'ΔW rel err':>10} {'δ cos own':>9} {'δ cos other':>11} | "
             f"{'(a) ΔW cos':>10} {'(a) δ own':>9} | {'(b) ΔW cos':>10}"]
    for t, r in per_task.items():
        g, m, c = r["generated"], r["mean_teachers"], r["cross_task"]
        lines.append(f"{t:<22} {g['delta_w']['cosine']:>7.3f} {g['delta_w']['relative_error']:>10.3f} "
                     f"{g['delta_cosine']['own']:>9.3f} {g['delta_cosine']['other']:>11.3f} | "
                     f"{m['delta_w']['cosine']:>10.3f} {m['delta_cosine']['own']:>9.3f} | "
                     f"{c['delta_w']['cosine']:>10.3f}")
    return "\n".join(lines)


# Held-out questions per task type for the accuracy table when the zoo saved no base results to reuse.
ACCURACY_SAMPLES = {"cloze": 300, "mcq": 300, "bool": 300, "gsm8k": 32}


def accuracy_samples(zoo_dir: str, task, requested: int | None) -> int:
    """Questions scored per task: ``requested``, else as many as the zoo scored its base model on (so its
    per-question base and teacher results are reused), else `ACCURACY_SAMPLES`."""
    if requested:
        return requested
    saved = os.path.join(zoo_dir, task.name, "base_test_details.json")
    if os.path.isfile(saved):
        return len(read_json(saved))
    return ACCURACY_SAMPLES[task.task_type]


def accuracy_table(base_model, v: Variants, config, requested_samples: int | None = None, *,
                   show_progress: bool = False) -> dict[str, dict]:
    """Per task: base, teacher, generated, mean of the teachers (a) and cross-task (b) on the same held-out
    questions (`accuracy_summary`). The zoo's saved base and teacher results are reused where the questions are
    the same; every other score is cached by adapter content (`ScoreCache` beside the delta cache), so a rerun of
    a finished generator scores nothing again; on generation tasks the new adapters decode side by side."""
    from llgbm_jax.base.model import model_hash
    from llgbm_jax.lora.ops import lora_hash
    from llgbm_jax.scoring.accuracy import option_scoring_key
    from llgbm_jax.tasks.registry import get_task

    scores = ScoreCache(os.path.join(config.cache_root, "scores"))
    mhash = model_hash(base_model)
    mean_key = sorted(lora_hash(a.path) for a in v.finals)
    out = {}
    for t in v.tasks:
        task = get_task(t, config.data_dir)
        records = task.load("eval", config.data_dir)[:accuracy_samples(config.zoo_dir, task, requested_samples)]
        golds = [task.answer(r) for r in records]
        questions = content_key([r["prompt"] for r in records])
        scoring = option_scoring_key(task, records)  # the same for every variant of this task
        zoo_task = os.path.join(config.zoo_dir, t)
        details, todo = {}, {}
        for name, lora, saved, key in (
                ("base", None, os.path.join(zoo_task, "base_test_details.json"), ["base"]),
                ("teacher", v.final_teachers[t], os.path.join(v.final_of[t].path, "test_details.json"),
                 [lora_hash(v.final_of[t].path)]),
                ("mean_teachers", v.mean_teachers, None, mean_key),
                ("generated", v.generated[t], None, [lora_hash(v.generated[t])]),
                ("cross_task", v.cross(t), None, [lora_hash(v.cross(t))])):
            got = saved_details(saved, golds) if saved else None
            ckey = {"model": mhash, "task": t, "questions": questions, "adapter": key, **scoring}
            details[name] = got or scores.get(ckey)
            if details[name] is None:
                todo[name] = (lora, ckey)
        got = score_many(base_model, task, records, [lora for lora, _ in todo.values()],
                         show_progress=show_progress) if todo else []
        for (name, (_, ckey)), result in zip(todo.items(), got):
            scores.put(ckey, result)
            details[name] = result
        out[t] = accuracy_summary(details) | {"cross_task_source": v.sources[t]}
    return out


def format_accuracy_table(accuracy: dict) -> str:
    head = ("task", "n", "base", "teacher", "generated", "mean teach. (a)", "cross-task (b)", "gen - base",
            "gen - teacher", "gen - (a)", "recovered")
    pm = lambda x: f"{x['gain']:+.3f} ± {x['se']:.3f}"
    rows = []
    for task, r in accuracy.items():
        g, rec = r["generated"], r.get("recovery")
        rows.append((task, str(r["n"]), f"{r['base']['accuracy']:.3f}", f"{r['teacher']['accuracy']:.3f}",
                     f"{g['accuracy']:.3f}", f"{r['mean_teachers']['accuracy']:.3f}",
                     f"{r['cross_task']['accuracy']:.3f} ({r['cross_task_source']})", pm(g["gain_over_base"]),
                     pm(g["minus_teacher"]), pm(g["minus_mean_teachers"]),
                     "-" if rec is None
                     else f"{100 * rec:.0f}%" + ("" if r["teacher_significant"] else " (teacher n.s.)")))
    return format_rows(head, rows)


def format_rows(head, rows) -> str:
    """A plain-text table: columns padded to their widest cell, a rule under the header."""
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def plot_accuracy(accuracy: dict, path: str) -> str:
    """Per task, the accuracy of every variant with its 95% interval, as a grouped bar chart (PNG)."""
    from llgbm_jax.utils.figures import pyplot, save_figure

    plt = pyplot()

    tasks = list(accuracy)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(tasks) + 2), 4.5))
    width = 0.8 / len(VARIANTS)
    for j, name in enumerate(VARIANTS):
        acc = np.asarray([accuracy[t][name]["accuracy"] for t in tasks])
        lo = np.asarray([accuracy[t][name]["ci95"][0] for t in tasks])
        hi = np.asarray([accuracy[t][name]["ci95"][1] for t in tasks])
        ax.bar(np.arange(len(tasks)) + (j - (len(VARIANTS) - 1) / 2) * width, acc, width, label=name,
               yerr=np.stack([acc - lo, hi - acc]), capsize=2)
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    ax.set(ylabel="accuracy (95% interval)", ylim=(0, 1), title="held-out accuracy per task")
    ax.legend(ncol=len(VARIANTS), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.35))
    return save_figure(fig, path)
