"""What a zoo build reports: a preset with command-line overrides, the per-run table of base and teacher accuracy,
and the teachers' loss curves."""

from __future__ import annotations

import dataclasses
import os

from llgbm_jax.teachers.zoo import PRESETS, ZooConfig
from llgbm_jax.utils.io import read_json


def preset_with(preset: str, *, tasks=None, runs_per_task=None, steps=None, warmup_steps=None, save_every=None,
                adapters_per_run=None, eval_samples=None, model=None) -> ZooConfig:
    """A preset of `PRESETS` with overrides (None keeps the preset's value). ``steps`` and the other teacher
    settings hold for every task (per-task overrides of those fields are dropped); ``eval_samples`` holds for
    every task too. Fails at once, naming the task, if a task's adapters do not fit its steps."""
    if preset not in PRESETS:
        raise ValueError(f"unknown zoo preset {preset!r}; known: {sorted(PRESETS)}")
    cfg = PRESETS[preset]
    teacher = {k: v for k, v in (("steps", steps), ("warmup_steps", warmup_steps), ("save_every", save_every),
                                 ("adapters_per_run", adapters_per_run)) if v is not None}
    overrides = tuple((task, tuple((k, v) for k, v in fields if k not in teacher))
                      for task, fields in cfg.task_overrides)
    top = {k: v for k, v in (("tasks", tuple(tasks) if tasks else None), ("runs_per_task", runs_per_task),
                             ("eval_samples", eval_samples), ("model", model)) if v is not None}
    if eval_samples is not None:
        top["gsm8k_eval_samples"] = min(cfg.gsm8k_eval_samples, eval_samples)
        top["eval_overrides"] = ()  # the command line's count holds for every task
    cfg = dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, **teacher), task_overrides=overrides, **top)
    for task in cfg.tasks:  # fail now, not after the first task, if the adapters do not fit
        try:
            cfg.teacher_for(task).save_steps()
        except ValueError as e:
            raise ValueError(f"task {task}: {e}") from None
    return cfg


def summary_table(manifest) -> str:
    """One line per (task, run): n, base and teacher accuracy with 95% intervals, and the gain with its
    paired standard error (same questions) and in standard errors; for the task family also exact match."""
    base = manifest.get("base_accuracy", {})
    w = max([8] + [len(s["task"]) for s in manifest.get("summary", [])])
    counts = {}
    for a in manifest["adapters"]:
        counts[a["task"], a["run"]] = counts.get((a["task"], a["run"]), 0) + 1
    lines = [f"{'task':<{w}} {'run':<5} {'adapters':>8} {'n':>5}  {'base [95% CI]':<22} {'teacher [95% CI]':<22} "
             f"{'gain ± SE':<15} {'gain/SE':>7}"]
    for s in manifest.get("summary", []):
        b = base[s["task"]]
        lo, hi = s["teacher_ci95"]
        lines.append(f"{s['task']:<{w}} {s['run']:<5} {counts[s['task'], s['run']]:>8} {s['n']:>5}  "
                     f"{s['base']:.3f} [{b['ci95'][0]:.3f}, {b['ci95'][1]:.3f}]   "
                     f"{s['teacher']:.3f} [{lo:.3f}, {hi:.3f}]   {s['gain']:+.3f} ± {s['se']:.3f}  "
                     f"{s['gain_in_se']:>7.2f}" + ("" if s["gain_in_se"] > 2 else "  (not > 2 SE)")
                     + (f"  exact match {s['base_exact_match']:.3f} -> {s['teacher_exact_match']:.3f}"
                        if "teacher_exact_match" in s else ""))
    return "\n".join(lines)


def plot_loss_curves(zoo_dir: str, manifest, path: str) -> str:
    """Training loss per step of every run (raw, and a 10-step moving average) as a PNG."""
    from llgbm_jax.utils.figures import pyplot, save_figure

    plt = pyplot()
    import numpy as np

    runs = {}
    for a in manifest["adapters"]:
        runs.setdefault((a["task"], a["run"]), a["history"])
    fig, ax = plt.subplots(figsize=(8, 5))
    for (task, run), rel in sorted(runs.items()):
        loss = np.asarray(read_json(os.path.join(zoo_dir, rel))["loss"])
        steps = np.arange(1, len(loss) + 1)
        (line,) = ax.plot(steps, loss, alpha=0.25)
        k = min(10, len(loss))
        ax.plot(steps[k - 1:], np.convolve(loss, np.ones(k) / k, "valid"), color=line.get_color(),
                label=f"{task} {run}")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (response tokens)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(f"teacher LoRA training: {manifest.get('model', '')}")
    return save_figure(fig, path, dpi=120)
