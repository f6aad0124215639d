"""Build the teacher zoo: LoRA fine-tuning of the base model on each task (`llgbm_jax.teachers.build_zoo`).

    python experiments/train_teachers.py --preset cpu --zoo-dir zoo
    python experiments/train_teachers.py --preset cpu --tasks arc_e boolq --steps 60 --save-every 5

Finished runs are not retrained and a killed run resumes from its last orbax checkpoint, so the same
command can simply be run again. Prints the total time and, per task and run, the held-out accuracy of
the base model and of the run's final adapter (n, Wilson 95% intervals, gain with its paired standard error), and
saves the training loss curves to ``<zoo-dir>/loss_curves.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time


def parse_args(argv=None):
    from llgbm_jax.teachers import PRESETS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="zoo configuration (default: cpu)")
    ap.add_argument("--zoo-dir", default="zoo", help="output folder (manifest.json, <task>/<run>/step_XXXXX)")
    ap.add_argument("--tasks", nargs="+", help="tasks to train (default: the preset's)")
    ap.add_argument("--runs-per-task", type=int, help="runs on disjoint chunks of each train split")
    ap.add_argument("--steps", type=int, help="training steps of every run (overrides per-task settings too)")
    ap.add_argument("--warmup-steps", type=int, help="linear warm-up steps (no adapter is saved during warm-up)")
    ap.add_argument("--save-every", type=int, help="steps between exported adapters of one run")
    ap.add_argument("--adapters-per-run", type=int, help="adapters exported along each run's trajectory")
    ap.add_argument("--eval-samples", type=int, help="held-out questions scored per task (0: skip)")
    ap.add_argument("--data-dir", help="task data folder (default: $LLGBM_DATA_DIR or ./data)")
    ap.add_argument("--model", help="base model: embedded name, .gguf, HF folder or hub id (default: the preset's)")
    ap.add_argument("--rebuild-stale", action="store_true",
                    help="delete and retrain runs whose recorded data or settings differ from the current ones "
                         "(without it such a zoo is refused, naming what changed)")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return ap.parse_args(argv)


def zoo_config(args):
    """The preset with the command line's overrides applied."""
    from llgbm_jax.teachers import PRESETS

    cfg = PRESETS[args.preset]
    teacher = {k: v for k, v in (("steps", args.steps), ("warmup_steps", args.warmup_steps),
                                 ("save_every", args.save_every), ("adapters_per_run", args.adapters_per_run))
               if v is not None}
    overrides = tuple((task, tuple((k, v) for k, v in fields if k not in teacher)) for task, fields in cfg.task_overrides)
    top = {k: v for k, v in (("tasks", tuple(args.tasks) if args.tasks else None), ("runs_per_task", args.runs_per_task),
                             ("eval_samples", args.eval_samples), ("model", args.model)) if v is not None}
    if args.eval_samples is not None:
        top["gsm8k_eval_samples"] = min(cfg.gsm8k_eval_samples, args.eval_samples)
        top["eval_overrides"] = ()  # the command line's count holds for every task
    cfg = dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, **teacher), task_overrides=overrides, **top)
    for task in cfg.tasks:  # fail now, not after the first task, if the adapters do not fit
        try:
            cfg.teacher_for(task).save_steps()
        except ValueError as e:
            raise SystemExit(f"train_teachers.py: task {task}: {e}") from None
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = {}
    for a in manifest["adapters"]:
        runs.setdefault((a["task"], a["run"]), a["history"])
    fig, ax = plt.subplots(figsize=(8, 5))
    for (task, run), rel in sorted(runs.items()):
        with open(os.path.join(zoo_dir, rel)) as f:
            loss = np.asarray(json.load(f)["loss"])
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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None):
    args = parse_args(argv)
    from llgbm_jax.tasks import leakage_report
    from llgbm_jax.teachers import StaleRunError, build_zoo

    cfg = zoo_config(args)
    print(f"zoo {args.zoo_dir}: {cfg.model}, tasks {', '.join(cfg.tasks)}, {cfg.runs_per_task} run(s) per task, "
          + ", ".join(f"{t} {len(cfg.teacher_for(t).save_steps())} adapters/run over {cfg.teacher_for(t).steps} steps"
                      for t in cfg.tasks))
    print("training records whose question is an evaluation question (removed): " + ", ".join(
        f"{t} {r['removed']} of {r['train_records']}" for t, r in leakage_report(args.data_dir, cfg.tasks).items()))
    t0 = time.perf_counter()
    try:
        manifest = build_zoo(args.zoo_dir, cfg, data_dir=args.data_dir, show_progress=not args.no_progress,
                             rebuild_stale=args.rebuild_stale)
    except StaleRunError as e:
        raise SystemExit(f"train_teachers.py: {e}") from None
    seconds = time.perf_counter() - t0
    print(f"\n{len(manifest['adapters'])} adapters in {args.zoo_dir}; this call took {seconds / 60:.1f} min. Over all "
          f"calls that built this zoo: {manifest['seconds'] / 60:.1f} min, of which training and export "
          f"{manifest.get('train_seconds', 0) / 60:.1f} min and test-set scoring {manifest.get('eval_seconds', 0) / 60:.1f} min; "
          f"this call compiled {manifest['compiled_programs']} XLA programs\n")
    print(summary_table(manifest))
    print(f"\nloss curves: {plot_loss_curves(args.zoo_dir, manifest, os.path.join(args.zoo_dir, 'loss_curves.png'))}")


if __name__ == "__main__":
    main()
