"""The teacher zoo: `build_zoo` trains every (task, run) of a `ZooConfig` (`llgbm_jax.teachers.run`), scores each
run's final adapter beside the base model on held-out questions, and writes ``manifest.json``
(`llgbm_jax.teachers.manifest` reads it). `PRESETS` holds the zoos the main job builds.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
import zlib
from typing import Any

from llgbm_jax.base.model import DEFAULT_MODEL, LARGE_MODEL
from llgbm_jax.tasks.family import family_task_names
from llgbm_jax.teachers.manifest import manifest_path, read_manifest
from llgbm_jax.teachers.run import (StaleRunError, TeacherConfig, chunk_records, model_identity, start_record,
                                    start_record_changes, train_run)
from llgbm_jax.utils import compile_stats
from llgbm_jax.utils.io import content_key, json_roundtrip, read_json, write_json_atomic


@dataclasses.dataclass(frozen=True)
class ZooConfig:
    """What `build_zoo` trains: tasks × runs, each run exporting ``teacher.adapters_per_run`` adapters."""

    model: str = DEFAULT_MODEL
    tasks: tuple[str, ...] = ("arc_e", "boolq", "obqa", "gsm8k")
    runs_per_task: int = 1
    teacher: TeacherConfig = TeacherConfig()
    task_overrides: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()  # per-task TeacherConfig fields
    eval_samples: int = 200  # held-out questions for base vs final-adapter accuracy (0: skip)
    gsm8k_eval_samples: int = 64
    gsm8k_max_new_tokens: int = 256
    eval_overrides: tuple[tuple[str, int], ...] = ()  # per-task held-out question counts
    exact_match: bool = True  # the task family: also greedy generation judged by exact match
    seed: int = 0
    # Every task's run k starts from the same LoRA initialisation. With independent random A (the default) a
    # teacher's ΔW = B A lies in its own random row space, so related tasks' ΔW are nearly orthogonal.
    shared_init: bool = False
    data_parallel_devices: int | None = None  # each teacher's batch split over a mesh (None: `data_devices`)

    def teacher_for(self, task: str) -> TeacherConfig:
        return dataclasses.replace(self.teacher, **dict(dict(self.task_overrides).get(task, ())))

    def run_seeds(self, task: str, num_runs: int) -> list[int]:
        """The seed of each run of ``task`` (its LoRA initialisation and batch order)."""
        offset = 0 if self.shared_init else zlib.crc32(task.encode()) % 997
        return [self.seed + 1000 * run + offset for run in range(num_runs)]

    def eval_samples_for(self, task) -> int:
        """Held-out questions scored for ``task`` (a `Task`): its entry in ``eval_overrides``, else
        ``gsm8k_eval_samples`` for GSM8K and ``eval_samples`` for the rest."""
        default = self.gsm8k_eval_samples if task.task_type == "gsm8k" else self.eval_samples
        return dict(self.eval_overrides).get(task.name, default)

    def to_dict(self) -> dict[str, Any]:
        """As JSON holds it (the manifest's ``config``), without the mesh (it does not change the adapters)."""
        d = dataclasses.asdict(self)
        del d["data_parallel_devices"]
        if not self.shared_init:  # zoos built before the option read as built without it
            del d["shared_init"]
        return json_roundtrip(d)

    def with_data(self, data_dir: str | None = None) -> tuple["ZooConfig", list[str]]:
        """This zoo restricted to the tasks whose data is available (`Task.has_data`), and the tasks left out.
        With no data folder that leaves the generated family's tasks; none at all is an error."""
        from llgbm_jax.tasks.registry import get_data_dir, get_task

        kept = tuple(t for t in self.tasks if get_task(t, data_dir).has_data(data_dir))
        if not kept:
            raise FileNotFoundError(f"none of the zoo's tasks {list(self.tasks)} has its data files in "
                                    f"{os.path.abspath(get_data_dir(data_dir))}")
        return dataclasses.replace(self, tasks=kept), [t for t in self.tasks if t not in kept]

    def same_settings(self, saved: dict | None) -> bool:
        """Whether a manifest's ``config`` was built with these settings, whatever its tasks (so a zoo built
        before data was added is extended, not replaced)."""
        strip = lambda d: {k: v for k, v in d.items() if k != "tasks"}
        return isinstance(saved, dict) and strip(saved) == strip(self.to_dict())


PRESETS = {
    # The embedded SmolLM2-135M on this 2-core CPU, 1 trajectory x 8 adapters per task. ARC-e and OBQA in cloze
    # form (answer texts): in letter form a 135M model's teachers learn only the label prior (docs/teachers.md).
    # ARC-e cloze, the one real-data task whose teachers gain: 96 steps, 400 scored questions (its gain
    # is about 0.09, so fewer would not show it). BoolQ, OBQA and GSM8K teachers do not gain at 135M: 24 steps
    # and 32 (GSM8K 8) scored questions keep them in the zoo cheaply. Eight tasks of the generated family
    # (`llgbm_jax.tasks.family`): 24 steps, 64 questions, cloze only (exact match is in the family experiment).
    # Step times (batch 8): ARC-e cloze ~2 s, family ~0.75 of that, BoolQ 2.7 s, GSM8K (batch 4 x ~256
    # tokens) 3.7 s.
    "cpu": ZooConfig(
        tasks=("arc_e_cloze", "boolq", "obqa_cloze", "gsm8k", "fam_reverse_words", "fam_swap_first_last",
               "fam_word_2", "fam_word_5", "fam_snake_case", "fam_camel_case", "fam_add_2", "fam_add_5"),
        eval_samples=64, gsm8k_eval_samples=8, eval_overrides=(("arc_e_cloze", 400), ("boolq", 32), ("obqa_cloze", 32)),
        exact_match=False,
        teacher=TeacherConfig(steps=24, warmup_steps=8, save_every=2, batch_size=8, learning_rate=5e-4),
        task_overrides=(("arc_e_cloze", (("steps", 96), ("save_every", 10))),
                        ("boolq", (("learning_rate", 1e-3),)),
                        ("gsm8k", (("batch_size", 4), ("max_seq_len", 448)))),
    ),
    # The generated family at scale for the unseen-tasks study (`llgbm_jax.evaluation.unseen`): one r-8 teacher per
    # task (120), on sequences as short as the tasks need (at most 60 tokens), 16 steps of batch 4 (~1.7 s each
    # here), scored by cloze on 24 questions (exact match is scored by the study, on its held-out tasks only).
    "family": ZooConfig(
        tasks=tuple(family_task_names()), eval_samples=24, exact_match=False,
        teacher=TeacherConfig(steps=16, warmup_steps=4, save_every=4, adapters_per_run=3, batch_size=4,
                              learning_rate=1e-3, max_seq_len=64),
    ),
    # Qwen2.5-0.5B-Instruct on an accelerator: every task, 4 runs on disjoint chunks, longer training.
    "gpu": ZooConfig(
        model=LARGE_MODEL, runs_per_task=4, eval_samples=1000, gsm8k_eval_samples=319,
        teacher=TeacherConfig(steps=400, warmup_steps=20, save_every=40, batch_size=16, learning_rate=3e-4,
                              max_seq_len=512, remat=True),  # "dots" would keep ~10 GB of activations here
    ),
}
# The family with one LoRA initialisation for every task (`ZooConfig.shared_init`), to compare with "family".
PRESETS["family_shared"] = dataclasses.replace(PRESETS["family"], shared_init=True)


def build_zoo(zoo_dir: str, cfg: ZooConfig, *, base_model=None, data_dir: str | None = None,
              show_progress: bool = True, rebuild_stale: bool = False) -> dict[str, Any]:
    """Train every (task, run) of ``cfg`` into ``zoo_dir`` and write ``zoo_dir/manifest.json``.

    Finished runs (their last adapter exported) are not retrained; a killed run resumes from its
    orbax state. A run folder whose `start_record` differs from what ``cfg``, the base model and the
    current data give (other training records, say after a change of the data or of the leakage rule)
    is stale: before anything is trained, `StaleRunError` names every stale run and what changed,
    unless ``rebuild_stale`` deletes and retrains them. Each run's final adapter is scored on
    ``eval_samples`` held-out questions beside the base model (per-question results in
    ``test_details.json`` files; the summary's gain and its paired standard error compare the two on
    the same questions); scores are reused only while what they depend on (``eval_key``: questions,
    generation budget, base model) is unchanged. ``manifest["leakage"]`` records
    `tasks.leakage_report` of the tasks. Returns the manifest (``compiled_programs``:
    how many XLA programs this call compiled, `compile_stats`).
    """
    from llgbm_jax.base.model import load_base_model
    from llgbm_jax.lora import LoRAConfig, load_peft_adapter, zeros_lora
    from llgbm_jax.scoring.accuracy import compute_accuracy_with_lora, exact_match_accuracy, option_scoring_key
    from llgbm_jax.scoring.stats import paired_gain
    from llgbm_jax.tasks.registry import get_task, leakage_report

    t_start, compiles = time.perf_counter(), compile_stats.snapshot()
    base_model = base_model or load_base_model(cfg.model)
    manifest = read_manifest(zoo_dir)
    seconds_before = manifest.get("seconds", 0.0)  # wall time of earlier calls, killed ones included
    manifest.update(model=cfg.model, config=cfg.to_dict(),
                    leakage=leakage_report(data_dir, cfg.tasks))
    # Tasks dropped from ``cfg`` leave the manifest (their folders stay on disk, unused).
    manifest["adapters"] = [a for a in manifest.get("adapters", []) if a["task"] in cfg.tasks]
    base_cache = manifest.setdefault("base_accuracy", {})
    for name in set(base_cache) - set(cfg.tasks):
        del base_cache[name]
    summary = []

    def eval_key(task, records) -> str:
        gsm8k = task.task_type == "gsm8k"
        scored = list(records[:cfg.eval_samples_for(task)])
        return content_key({"questions": scored, "base_model": model_identity(base_model),
                            "max_new_tokens": cfg.gsm8k_max_new_tokens if gsm8k else None,
                            "exact_match": with_exact_match(task), **option_scoring_key(task, scored)})

    def with_exact_match(task) -> bool:
        return cfg.exact_match and getattr(task, "exact_match", False)

    def is_current(result, details_path, key) -> bool:
        return (result or {}).get("eval_key") == key and os.path.exists(details_path)

    def evaluate(lora, task, records, details_path):
        """Accuracy summary; the per-question hits go to ``details_path`` (for paired comparisons)."""
        n = cfg.eval_samples_for(task)
        res = compute_accuracy_with_lora(lora, base_model, records, task, max_samples=n, return_details=True,
                                         max_new_tokens=cfg.gsm8k_max_new_tokens, show_progress=show_progress)
        write_json_atomic(details_path, res.pop("details"))
        manifest["eval_seconds"] = manifest.get("eval_seconds", 0.0) + res["seconds"]
        out = {**{k: res[k] for k in ("accuracy", "correct", "total", "parse_failures", "ci95", "seconds")},
               "eval_key": eval_key(task, records)}
        if with_exact_match(task):
            em = exact_match_accuracy(lora, base_model, records, task, max_samples=n, return_details=True,
                                      show_progress=show_progress)
            write_json_atomic(details_path.replace(".json", "_exact_match.json"), em.pop("details"))
            manifest["eval_seconds"] += em["seconds"]
            out["exact_match"] = {k: em[k] for k in ("accuracy", "correct", "total", "ci95", "seconds",
                                                     "max_new_tokens")}
        return out

    def hits(path):
        return [d["correct"] for d in read_json(path)]

    # What every run is started with now: stale run folders are refused (or deleted) before any work.
    plans, stale = [], {}
    for task_name in cfg.tasks:
        task, tcfg = get_task(task_name, data_dir), cfg.teacher_for(task_name)
        train = task.load("train", data_dir)
        chunks = chunk_records(train, cfg.runs_per_task, cfg.seed)
        seeds = cfg.run_seeds(task_name, len(chunks))
        for run, (chunk, seed) in enumerate(zip(chunks, seeds)):
            changes = start_record_changes(os.path.join(zoo_dir, task_name, f"run{run}"),
                                           start_record(base_model, task, chunk, tcfg, seed))
            if changes:
                stale[f"{task_name}/run{run}"] = changes
        plans.append((task_name, task, tcfg, train, chunks, seeds))
    if stale and not rebuild_stale:
        raise StaleRunError(
            f"zoo {zoo_dir}: {len(stale)} run(s) were started with other data or settings than they would be now:\n"
            + "\n".join(f"  {name}: " + "; ".join(changes) for name, changes in stale.items())
            + "\nRetrain them with `llgbm-jax zoo --rebuild-stale` (build_zoo(..., "
            "rebuild_stale=True)), or build into another --zoo-dir.")
    for name in stale:
        shutil.rmtree(os.path.join(zoo_dir, name))

    for task_name, task, tcfg, train, chunks, seeds in plans:
        eval_records = task.load("eval", data_dir) if cfg.eval_samples else []
        for run, (chunk, seed) in enumerate(zip(chunks, seeds)):
            run_name = f"run{run}"
            run_dir = os.path.join(zoo_dir, task_name, run_name)
            final = os.path.join(run_dir, f"step_{tcfg.steps:05d}")
            if not os.path.exists(os.path.join(final, "metrics.json")):
                result = train_run(base_model, task, chunk, tcfg, run_dir, seed=seed, show_progress=show_progress,
                                   data_parallel_devices=cfg.data_parallel_devices,
                                   data_info={"split": "train", "chunk": run, "num_chunks": len(chunks),
                                              "chunk_seed": cfg.seed, "chunk_records": len(chunk),
                                              "train_records": len(train)})
                manifest["train_seconds"] = manifest.get("train_seconds", 0.0) + result.seconds
            final_metrics = read_json(os.path.join(final, "metrics.json"))
            base_details = os.path.join(zoo_dir, task_name, "base_test_details.json")
            final_details = os.path.join(final, "test_details.json")
            if eval_records:
                key = eval_key(task, eval_records)
                if not is_current(base_cache.get(task_name), base_details, key):
                    # The base model as an all-zero adapter of the teachers' shape: the same scores exactly (its
                    # term adds 0), and the teacher's scoring reuses the programs this compiles.
                    zero = zeros_lora(base_model.config, LoRAConfig(tcfg.rank, tcfg.alpha, tuple(tcfg.target_modules)))
                    base_cache[task_name] = evaluate(zero, task, eval_records, base_details)
                if not is_current(final_metrics.get("test_accuracy"), final_details, key):
                    final_metrics["test_accuracy"] = evaluate(load_peft_adapter(final), task, eval_records,
                                                              final_details)
                    write_json_atomic(os.path.join(final, "metrics.json"), final_metrics)
            entries = []
            for step in tcfg.save_steps():
                rel = os.path.relpath(os.path.join(run_dir, f"step_{step:05d}"), zoo_dir)
                metrics = read_json(os.path.join(zoo_dir, rel, "metrics.json"))
                entries.append({"task": task_name, "task_type": task.task_type, "run": run_name, "step": step,
                                "path": rel, "prompts": os.path.join(rel, "prompts.json"),
                                "history": os.path.relpath(os.path.join(run_dir, "history.json"), zoo_dir),
                                "metrics": metrics})
            manifest["adapters"] = [a for a in manifest["adapters"]
                                    if (a["task"], a["run"]) != (task_name, run_name)] + entries
            manifest["seconds"] = seconds_before + time.perf_counter() - t_start  # a killed call keeps its time
            write_json_atomic(manifest_path(zoo_dir), manifest)
            if eval_records:
                acc = final_metrics["test_accuracy"]
                summary.append({"task": task_name, "run": run_name, "n": acc["total"],
                                "base": base_cache[task_name]["accuracy"], "teacher": acc["accuracy"],
                                "teacher_ci95": acc["ci95"], **paired_gain(hits(base_details), hits(final_details))})
                if "exact_match" in acc:
                    summary[-1].update(base_exact_match=base_cache[task_name]["exact_match"]["accuracy"],
                                       teacher_exact_match=acc["exact_match"]["accuracy"])
    manifest["summary"] = summary
    manifest["seconds"] = seconds_before + time.perf_counter() - t_start
    manifest["compiled_programs"] = (compile_stats.snapshot() - compiles).programs
    write_json_atomic(manifest_path(zoo_dir), manifest)
    return manifest
