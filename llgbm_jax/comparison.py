"""Generated adapters beside the baselines a skeptic tries first, per task.

For every task of a zoo: the base model, the task's own final teacher, the generator conditioned on the
task's held-out prompts ("generated"), the exact mean of all final teachers as one adapter
("mean_teachers", baseline a), and the generator conditioned on another task's held-out prompts
("cross_task", baseline b). Compared on the task's held-out questions (accuracy, with paired standard
errors on the same questions), in weight space (ΔW cosine and relative error to the final teacher) and in
behaviour (delta cosine to the task's own teachers and to the other tasks' teachers).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Sequence

import numpy as np

from llgbm_jax.io_utils import write_json_atomic
from llgbm_jax.lora import LoRA

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
    """Per-question results of a (model, adapter, task, questions) combination, as JSON files named by the
    hash of that key; written atomically, and a file whose stored key differs is not read."""

    def __init__(self, directory: str):
        self.directory = directory

    def _path(self, key: dict) -> tuple[str, str]:
        text = json.dumps(key, sort_keys=True)
        return os.path.join(self.directory, hashlib.sha256(text.encode()).hexdigest()[:32] + ".json"), text

    def get(self, key: dict):
        path, text = self._path(key)
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            entry = json.load(f)
        return entry["result"] if json.dumps(entry.get("key"), sort_keys=True) == text else None

    def put(self, key: dict, result) -> None:
        path, _ = self._path(key)
        write_json_atomic(path, {"key": key, "result": result})


def saved_details(path: str, golds: Sequence) -> list[dict] | None:
    """Per-question results saved by the zoo (base or teacher), if they cover ``golds`` in order."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        details = json.load(f)
    if len(details) < len(golds) or any(d["gold"] != g for d, g in zip(details, golds)):
        return None
    return details[:len(golds)]


def score(base_model, task, records, lora: LoRA | None, *, show_progress: bool = False) -> list[dict]:
    """Per-question results (``correct``, ``pred``, ``gold``) of ``lora`` on ``records``."""
    from llgbm_jax.evaluation import compute_accuracy_with_lora

    res = compute_accuracy_with_lora(lora, base_model, records, task, return_details=True,
                                     show_progress=show_progress)
    return [{"correct": bool(d["correct"]), "pred": d["pred"], "gold": d["gold"]} for d in res["details"]]


def score_many(base_model, task, records, loras: Sequence[LoRA], *, show_progress: bool = False) -> list[list[dict]]:
    """`score` of each adapter in ``loras``. On generation tasks (gsm8k) the adapters' answers are decoded
    side by side, one row per (adapter, question) in the same batches: a decoding step reads the model's
    weights once for every row, so two adapters on a few questions cost about what one does."""
    from llgbm_jax.evaluation import GENERATION_BATCH
    from llgbm_jax.lora import stack_loras

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
    from llgbm_jax.evaluation import paired_gain, wilson_interval

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
