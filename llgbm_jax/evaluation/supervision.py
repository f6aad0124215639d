"""What supervision teaches a generator (``llgbm-jax ablations``, ``python experiments/ablations.py``).

On the unseen-tasks study's zoo and split (`llgbm_jax.evaluation.unseen`), a generator is trained on the seen
tasks under each supervision mode of `llgbm_jax.ablations.MODES` (raw factors, ΔW, behaviour, both, end to end,
end to end + ΔW), per seed, twice: at the same number of steps (``steps``) and at the same wall-clock budget
(``budget_seconds``, by default ``steps`` steps of ``delta_w``; each mode gets as many steps as its own time per
step allows, timed once by `step_seconds`, and a budget trial with the steps trial's step count is that trial).
Each trial records its final loss, ΔW cosine and relative error to the seen tasks' held-out teachers, the
behavioural delta cosine to its own task's teachers and to the others', and accuracy on seen tasks (generated
from held-out prompts, beside base and the task's teacher) and on the held-out tasks (generated from examples and
from random text, beside base, the oracle, the mean of the training teachers and the multi-task LoRA), with
paired standard errors, pooled over all held-out tasks and per group (inside, outside the seen range, kinds).

The gauge test trains ``delta_w`` and ``weight_only`` again on the zoo with every teacher replaced by a
gauge-transformed copy (`llgbm_jax.lora.gauge_transform`: same ΔW, other factors): ΔW supervision sees the
same targets (the same loss curve within float tolerance), raw-factor supervision does not.

Trials are resumable (``<run_dir>/<comparison>/<mode>/seed<k>/trial.json``); writes ``results.json`` (every
trial), ``summary.csv`` (mean ± std over seeds per comparison and mode) and ``ablations.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import tempfile
import time
from typing import Any

import numpy as np

from llgbm_jax.utils.io import atomic_file, read_json, write_json_atomic

GAUGE_MODES = ("delta_w", "weight_only")
METRICS = ("final_loss", "delta_w_cosine", "delta_w_relative_error", "delta_cos_own", "delta_cos_other",
           "seen_gain", "seen_recovered", "unseen_gain", "unseen_recovered", "unseen_random_text_gain",
           "unseen_minus_mean_teachers", "unseen_minus_multitask", "unseen_inside_gain", "unseen_outside_gain",
           "unseen_kind_gain")


def pooled_gain(new: dict[str, list], base: dict[str, list]) -> float:
    from llgbm_jax.evaluation.unseen import pooled_difference

    return pooled_difference(new, base)["gain"]


def measure(study, gen, comp, state, seed: int, seen_tasks: list[str]) -> dict[str, Any]:
    """The trial's metrics and per-question cloze hits (see the module docstring)."""
    from llgbm_jax.evaluation.comparison import own_other_cosine
    from llgbm_jax.evaluation.unseen import heldout_adapters, seen_generated_hits
    from llgbm_jax.generator.training import evaluate

    cfg = comp.config
    ev, _, deltas = evaluate(gen, comp.eval_dataset, cfg, base_model=study.base_model, probes=comp.probes,
                             base_hidden=comp.base_activation, return_generated=True)
    tasks_of = {a.name: a.task for a in comp.adapters if a.name in comp.teacher_deltas}
    own_other = [own_other_cosine(d, a.task, comp.teacher_deltas, tasks_of)
                 for d, a in zip(deltas, comp.eval_dataset.adapters)]
    n = study.config.eval_samples
    cloze = study.cloze
    seen = {"base": {t: cloze(t, study.zero) for t in seen_tasks},
            "teacher": {t: cloze(t, study.seen_teachers[t]) for t in seen_tasks},
            "generated": seen_generated_hits(study, gen, comp, seen_tasks)}
    unseen = {v: {} for v in ("base", "oracle", "mean_teachers", "multitask", "generated", "random_text")}
    adapters = heldout_adapters(study, gen, comp.text_encoder, seed)
    for h in study.heldout:
        for v, lora in study.fixed(h).items():
            unseen[v][h] = cloze(h, lora)
        for v in ("generated", "random_text"):
            unseen[v][h] = cloze(h, adapters[h][v])
    gain = lambda hits, v: pooled_gain(hits[v], hits["base"])
    ratio = lambda a, b: a / b if b > 0 else None
    metrics = {"final_loss": float(np.mean(state.loss_history[-10:])), "delta_w_cosine": ev["delta_w"]["cosine"],
               "delta_w_relative_error": ev["delta_w"]["relative_error"],
               "delta_cos_own": float(np.mean([c["own"] for c in own_other])),
               "delta_cos_other": float(np.mean([c["other"] for c in own_other])),
               "seen_gain": gain(seen, "generated"),
               "seen_recovered": ratio(gain(seen, "generated"), gain(seen, "teacher")),
               "unseen_gain": gain(unseen, "generated"),
               "unseen_recovered": ratio(gain(unseen, "generated"), gain(unseen, "oracle")),
               "unseen_random_text_gain": gain(unseen, "random_text"),
               "unseen_minus_mean_teachers": pooled_gain(unseen["generated"], unseen["mean_teachers"]),
               "unseen_minus_multitask": pooled_gain(unseen["generated"], unseen["multitask"])}
    return {"metrics": metrics, "questions_per_task": n, "seen_hits": seen, "unseen_hits": unseen,
            "loss_history": state.loss_history, "term_histories": state.term_histories,
            "seconds_per_step": state.seconds / max(len(state.loss_history), 1), "train_seconds": state.seconds}


def gauge_teachers(seed: int):
    """A function replacing stacked teachers by gauge-transformed copies (one random G per adapter)."""
    import jax

    from llgbm_jax.lora import gauge_transform

    key = jax.random.PRNGKey(1000 + seed)
    return lambda teachers: jax.tree_util.tree_map(np.asarray, gauge_transform(teachers, key))


def run_trial(study, ablation, comparison: str, mode: str, seed: int, steps: int, seen_tasks: list[str], *,
              show_progress: bool, gauge: bool = False) -> dict[str, Any]:
    """One trained and measured generator, or the saved one (``trial.json``) when it is already done. A steps trial
    at the study's own step count trains (or reuses) the unseen study's generator of that mode and seed
    (``RUN_DIR/<mode>/seed<k>``): the same configuration, so one generator serves both."""
    from llgbm_jax.evaluation.unseen import train_generator

    name = os.path.join(comparison, mode, f"seed{seed}")
    path = os.path.join(ablation.run_dir, name, "trial.json")
    key = {"comparison": comparison, "mode": mode, "seed": seed, "steps": steps, "seen_tasks": seen_tasks}
    if os.path.isfile(path) and read_json(path).get("key") == key:
        return read_json(path)
    shared = comparison == "steps" and not gauge and steps == study.config.steps
    where = (dict(run_dir=dataclasses.replace(study.config, mode=mode).generators_dir, run_name=f"seed{seed}")
             if shared else dict(run_dir=ablation.run_dir, run_name=name))
    gen, comp, state = train_generator(study, seed, mode=mode, steps=steps, show_progress=show_progress,
                                       teachers_transform=gauge_teachers(seed) if gauge else None, **where)
    trial = {"key": key, **key, **measure(study, gen, comp, state, seed, seen_tasks)}
    write_json_atomic(path, trial)
    return trial


def group_gains(trial: dict, split) -> dict[str, float]:
    """The generated adapter's cloze gain over base pooled per held-out group (inside and outside the seen range,
    whole kinds), from the trial's per-question hits."""
    from llgbm_jax.tasks.family_splits import GROUPS

    hits = trial["unseen_hits"]
    out = {}
    for g in GROUPS:
        tasks = [t for t in hits["generated"] if split.group(t) == g]
        out[f"unseen_{g}_gain"] = pooled_gain({t: hits["generated"][t] for t in tasks}, hits["base"]) if tasks else None
    return out


def step_seconds(study, ablation, *, show_progress: bool = True) -> dict[str, float]:
    """Seconds per generator step of each mode (and of ``delta_w``, which sets the default budget) on this machine:
    ``ablation.timing_steps`` steps of each, back to back in this process, the median after the first (compiling)
    step. Saved in ``run_dir/step_seconds.json`` and reused, so adding seeds or modes leaves finished budget trials
    as they are (delete it to time again). Long trials are no clock: a busy machine slows them by 2-3x."""
    from llgbm_jax.evaluation.unseen import train_generator

    path = os.path.join(ablation.run_dir, "step_seconds.json")
    seconds = read_json(path) if os.path.isfile(path) else {}
    needed = (("delta_w",) if ablation.budget_seconds is None else ()) + tuple(ablation.modes)
    for mode in dict.fromkeys(m for m in needed if m not in seconds):
        with tempfile.TemporaryDirectory(dir=ablation.run_dir, prefix="timing-") as tmp:
            _, _, state = train_generator(study, ablation.seeds[0], mode=mode, steps=ablation.timing_steps + 1,
                                          run_dir=tmp, run_name=mode, show_progress=show_progress)
        seconds[mode] = float(np.median(state.step_seconds[1:]))
        write_json_atomic(path, seconds)
    return seconds


def budget_steps(seconds: dict[str, float], ablation, mode: str) -> int:
    """The same-budget comparison's steps for ``mode`` (every seed): ``ablation.budget_seconds`` (default: ``steps``
    steps of ``delta_w``) over the mode's time per step, both from `step_seconds`."""
    budget = ablation.budget_seconds if ablation.budget_seconds is not None else ablation.steps * seconds["delta_w"]
    return max(1, int(budget / seconds[mode] + 1e-6))


def summary_rows(trials: list[dict]) -> list[dict]:
    """Per (comparison, mode): steps and every metric's mean and standard deviation over seeds."""
    rows = []
    for comparison in dict.fromkeys(t["comparison"] for t in trials):
        for mode in dict.fromkeys(t["mode"] for t in trials if t["comparison"] == comparison):
            group = [t for t in trials if (t["comparison"], t["mode"]) == (comparison, mode)]
            row = {"comparison": comparison, "mode": mode, "seeds": len(group), "steps": group[0]["steps"],
                   "seconds_per_step": float(np.mean([t["seconds_per_step"] for t in group]))}
            for m in METRICS:
                vals = [t["metrics"][m] for t in group if t["metrics"][m] is not None]
                row[m] = float(np.mean(vals)) if vals else None
                row[m + "_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
            rows.append(row)
    return rows


def versus_delta_w(trials: list[dict], comparison: str, split) -> dict[str, dict]:
    """Each mode's cloze hits minus ``delta_w``'s on the same questions and seeds (paired, pooled): on the seen
    tasks, on all held-out tasks and per held-out group."""
    from llgbm_jax.evaluation.unseen import pooled
    from llgbm_jax.tasks.family_splits import GROUPS

    by = {(t["mode"], t["seed"]): t for t in trials if t["comparison"] == comparison}
    parts = {"seen": ("seen_hits", None), "unseen": ("unseen_hits", None),
             **{f"unseen_{g}": ("unseen_hits", g) for g in GROUPS}}
    out = {}
    for mode in dict.fromkeys(m for m, _ in by):
        seeds = [s for m, s in by if m == mode and ("delta_w", s) in by]
        if mode == "delta_w" or not seeds:
            continue
        out[mode] = {}
        for name, (part, group) in parts.items():
            hits = lambda m, s: by[m, s][part]["generated"]
            diffs = [np.asarray(hits(mode, s)[t], float) - np.asarray(hits("delta_w", s)[t], float)
                     for s in seeds for t in hits(mode, s) if group is None or split.group(t) == group]
            if diffs:
                out[mode][name] = pooled(diffs)
    return out


def pooled_gains(trials: list[dict], split) -> dict[str, dict]:
    """Cloze gains with paired standard errors pooled over tasks, each question's hits first averaged over the
    seeds: per ``comparison/mode`` the generated adapter's (and random text's) gain over base on the seen tasks,
    on all held-out tasks (``unseen``) and per held-out group, and its difference to each baseline; under
    ``baselines`` the seen tasks' teachers and the held-out oracle, mean of the teachers and multi-task LoRA."""
    from llgbm_jax.evaluation.unseen import pooled_difference
    from llgbm_jax.tasks.family_splits import GROUPS

    first = trials[0]
    seen_base, unseen_base = first["seen_hits"]["base"], first["unseen_hits"]["base"]
    seen = {"seen": list(seen_base)}
    unseen = {"unseen": list(unseen_base), **{f"unseen_{g}": [t for t in unseen_base if split.group(t) == g]
                                              for g in GROUPS}}
    by_task = lambda per_seed: {t: [h[t] for h in per_seed] for t in per_seed[0]}
    gains = lambda per_seed, ref, parts: {p: pooled_difference(by_task(per_seed), by_task(ref), tasks)
                                          for p, tasks in parts.items() if tasks}
    baselines = ("oracle", "mean_teachers", "multitask")
    out: dict[str, dict] = {"baselines": {
        "teacher": gains([first["seen_hits"]["teacher"]], [seen_base], seen),
        **{v: gains([first["unseen_hits"][v]], [unseen_base], unseen) for v in baselines}}}
    for c, m in dict.fromkeys((t["comparison"], t["mode"]) for t in trials):
        group = [t for t in trials if (t["comparison"], t["mode"]) == (c, m)]
        gen = [t["unseen_hits"]["generated"] for t in group]
        random_text = [t["unseen_hits"]["random_text"] for t in group]
        out[f"{c}/{m}"] = {
            "seeds": [t["seed"] for t in group],
            "generated": {**gains([t["seen_hits"]["generated"] for t in group], [seen_base], seen),
                          **gains(gen, [unseen_base], unseen)},
            "random_text": gains(random_text, [unseen_base], unseen),
            "minus": {"random_text": gains(gen, random_text, unseen),
                      **{v: gains(gen, [first["unseen_hits"][v]], unseen) for v in baselines[1:]}}}
    return out


def format_pooled(pooled_out: dict[str, dict]) -> str:
    """The pooled gains as a table (gain ± paired SE, n in the header)."""
    pm = lambda v: "-" if v is None else f"{v['gain']:+.3f} ± {v['se']:.3f}"
    cols = ("seen", "unseen", "unseen_inside", "unseen_outside", "unseen_kind")
    some = next(v["generated"] for k, v in pooled_out.items() if k != "baselines")
    head = " ".join(f"{c.replace('unseen_', '') + ' n ' + str(some[c]['n'] if c in some else 0):>15}" for c in cols)
    lines = ["pooled over seeds, cloze gain over base ± paired SE",
             f"{'':<24} {'seeds':>5} {head} {'- multi, inside':>16}"]
    for name, v in pooled_out.items():
        if name == "baselines":
            continue
        minus = v["minus"]["multitask"].get("unseen_inside")
        lines.append(f"{name:<24} {len(v['seeds']):>5} " + " ".join(f"{pm(v['generated'].get(c)):>15}" for c in cols)
                     + f" {pm(minus):>16}")
        lines.append(f"{'  random text':<24} {'':>5} " + " ".join(f"{pm(v['random_text'].get(c)):>15}" for c in cols))
    for b, v in pooled_out["baselines"].items():
        lines.append(f"{b:<24} {'':>5} " + " ".join(f"{pm(v.get(c)):>15}" for c in cols))
    return "\n".join(lines)


def gauge_report(trials: list[dict]) -> dict[str, dict]:
    """Per gauge mode: the largest relative difference of the loss curve on the gauge-transformed zoo to the
    one on the original zoo (same seed and steps), and the accuracy change on unseen tasks."""
    out = {}
    for g in (t for t in trials if t["comparison"] == "gauge"):
        ref = next(t for t in trials if t["comparison"] == "steps" and (t["mode"], t["seed"]) == (g["mode"], g["seed"]))
        a, b = np.asarray(g["loss_history"]), np.asarray(ref["loss_history"])
        out[g["mode"]] = {"max_relative_loss_difference": float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30))),
                          "unseen_gain": g["metrics"]["unseen_gain"],
                          "unseen_gain_original": ref["metrics"]["unseen_gain"],
                          "seen_gain": g["metrics"]["seen_gain"], "seen_gain_original": ref["metrics"]["seen_gain"]}
    return out


def write_summary_csv(rows: list[dict], path: str) -> str:
    with atomic_file(path, ".csv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return path


def plot_ablations(rows: list[dict], path: str) -> str:
    """Seen and unseen cloze gain over base per mode (mean ± std over seeds), one panel per comparison."""
    from llgbm_jax.utils.figures import pyplot, save_figure

    plt = pyplot()

    comparisons = list(dict.fromkeys(r["comparison"] for r in rows))
    fig, axes = plt.subplots(1, len(comparisons), figsize=(5.5 * len(comparisons), 4), squeeze=False)
    for ax, c in zip(axes[0], comparisons):
        sub = [r for r in rows if r["comparison"] == c]
        x = np.arange(len(sub))
        for j, (m, label) in enumerate((("seen_gain", "seen tasks"), ("unseen_gain", "unseen tasks"))):
            ax.bar(x + (j - 0.5) * 0.38, [r[m] for r in sub], 0.38, yerr=[r[m + "_std"] for r in sub], capsize=2,
                   label=label)
        ax.set_xticks(x, [r["mode"] for r in sub], rotation=30, ha="right")
        ax.axhline(0, color="k", lw=0.5)
        ax.set(title=f"{c}", ylabel="cloze gain over base")
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def format_rows(rows: list[dict]) -> str:
    f = lambda v: "-" if v is None else f"{v:.3f}"
    lines = [f"{'comparison':<10} {'mode':<12} {'steps':>5} {'s/step':>6} {'loss':>8} {'ΔW cos':>7} {'δ own':>6} "
             f"{'δ other':>7} {'seen gain':>15} {'unseen gain':>15} {'inside':>7} {'random text':>11} {'- mean':>7} "
             f"{'- multi':>7}"]
    for r in rows:
        pm = lambda m: f"{f(r[m])} ± {f(r[m + '_std'])}"
        lines.append(f"{r['comparison']:<10} {r['mode']:<12} {r['steps']:>5} {r['seconds_per_step']:>6.2f} "
                     f"{r['final_loss']:>8.4g} {f(r['delta_w_cosine']):>7} {f(r['delta_cos_own']):>6} "
                     f"{f(r['delta_cos_other']):>7} {pm('seen_gain'):>15} {pm('unseen_gain'):>15} "
                     f"{f(r['unseen_inside_gain']):>7} "
                     f"{f(r['unseen_random_text_gain']):>11} {f(r['unseen_minus_mean_teachers']):>7} "
                     f"{f(r['unseen_minus_multitask']):>7}")
    return "\n".join(lines)


def run(ablation, *, base_model=None, show_progress: bool = True) -> dict[str, Any]:
    """Every trial of ``ablation`` (an `llgbm_jax.ablations.AblationConfig`), the summary, the gauge test."""
    from llgbm_jax.evaluation.unseen import evenly, prepare

    t0 = time.perf_counter()
    os.makedirs(ablation.run_dir, exist_ok=True)
    study = prepare(ablation.study, base_model=base_model, show_progress=show_progress)
    seen_tasks = evenly(study.seen, ablation.seen_tasks)
    trial = lambda comparison, mode, seed, steps, gauge=False: run_trial(
        study, ablation, comparison, mode, seed, steps, seen_tasks, show_progress=show_progress, gauge=gauge)
    trials = [trial("steps", m, s, ablation.steps) for m in ablation.modes for s in ablation.seeds]
    by_steps = {(t["mode"], t["seed"]): t for t in trials}
    seconds = step_seconds(study, ablation, show_progress=show_progress)
    for m in ablation.modes:  # the same wall-clock budget: each mode's own time per step
        n = budget_steps(seconds, ablation, m)
        for s in ablation.seeds:
            trials.append({**by_steps[m, s], "comparison": "budget"} if n == ablation.steps
                          else trial("budget", m, s, n))
    if ablation.gauge_test:
        trials += [trial("gauge", m, ablation.seeds[0], ablation.steps, gauge=True) for m in GAUGE_MODES
                   if m in ablation.modes]
    for t in trials:
        t["metrics"].update(group_gains(t, study.split))
    rows = summary_rows(trials)
    results = {"config": ablation.to_dict(), "seen_tasks": seen_tasks, "heldout_tasks": study.heldout,
               "step_seconds": seconds, "summary": rows,
               "pooled": pooled_gains(trials, study.split),
               "versus_delta_w": {c: versus_delta_w(trials, c, study.split) for c in ("steps", "budget")},
               "gauge": gauge_report(trials), "trials": trials, "seconds": time.perf_counter() - t0}
    write_json_atomic(os.path.join(ablation.run_dir, "results.json"), results)
    write_summary_csv(rows, os.path.join(ablation.run_dir, "summary.csv"))
    print(format_rows(rows))
    print(format_pooled(results["pooled"]))
    for c, modes in results["versus_delta_w"].items():
        print(f"{c}: minus delta_w, cloze, paired and pooled over seeds: " + "; ".join(
            f"{m} " + ", ".join(f"{p} {v[p]['gain']:+.3f} ± {v[p]['se']:.3f}"
                                for p in ("seen", "unseen", "unseen_inside") if p in v) for m, v in modes.items()))
    for m, g in results["gauge"].items():
        print(f"gauge test, {m}: loss curve differs by at most {g['max_relative_loss_difference']:.2e} (relative); "
              f"unseen gain {g['unseen_gain_original']:+.3f} -> {g['unseen_gain']:+.3f}, seen gain "
              f"{g['seen_gain_original']:+.3f} -> {g['seen_gain']:+.3f}")
    print(f"plot: {plot_ablations(rows, os.path.join(ablation.run_dir, 'ablations.png'))}; "
          f"{(time.perf_counter() - t0) / 60:.1f} min")
    return results
