"""The main job: train a LoRA generator on a teacher zoo with the ΔW loss, then judge what it writes.

    python experiments/delta_w.py                                  # the embedded default, CPU
    python experiments/delta_w.py --config my_config.json          # a saved TrainingConfig
    python experiments/delta_w.py --num-steps 2000 --seed 1 --output-dir runs/seed1

Phases, each timed and printed:
1. zoo: the teacher zoo (`--zoo-preset`, default ``cpu``) is built when missing and reused when present;
2. components: probes, the base model's hidden states on them, every teacher's behavioural delta and the
   condition prompts' sentence embeddings (both cached), the dataset and its splits;
3. training: `llgbm_jax.training.train` (ΔW loss against each teacher run's final adapter, or every checkpoint
   with ``teacher_checkpoints="all"``; resumable from ``checkpoint_dir``);
4. evaluation: held-out adapters and prompts (ΔW and behavioural metrics), beside the baselines: the
   mean of all final teachers as one adapter (a), the generator fed another task's prompts (b), the base
   model (c); per task, the generated adapter's ΔW cosine to its final teacher and delta cosines (a task's
   generated adapter is the evaluation's for its first held-out adapter: the same held-out prompts, so
   its delta is computed once; the mean's delta is cached);
5. accuracy: per task, base, teacher, generated (held-out prompts only) and baselines (a) and (b) on the
   same held-out questions, with paired standard errors (the zoo's saved base and teacher results are
   reused where the questions are the same; every other score is cached by adapter content next to the
   delta cache, so a rerun of a finished generator scores nothing again; on GSM8K the generated and
   cross-task adapters decode side by side in the same batches);
6. export: each task's generated adapter as a PEFT folder, the trained generator for `load_generator`.

Compiled XLA programs are kept in JAX's persistent cache beside the delta cache (``xla/``; a cache set with
``JAX_COMPILATION_CACHE_DIR`` wins), so a rerun compiles little.

Writes to ``output_dir``: config.json, splits.json, training_curves.png, results.json, generator/,
generated/<task>/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="a TrainingConfig JSON file (default: the built-in defaults)")
    ap.add_argument("--output-dir", help="run folder (default: the config's output_dir)")
    ap.add_argument("--zoo-dir", help="teacher zoo folder (default: the config's zoo_dir)")
    ap.add_argument("--zoo-preset", help="llgbm_jax.teachers.PRESETS entry for building a missing zoo")
    ap.add_argument("--num-steps", type=int, help="generator training steps")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--data-dir", help="task data folder (default: $LLGBM_DATA_DIR or ./data)")
    ap.add_argument("--accuracy-samples", type=int, default=None,
                    help="held-out questions per task for the accuracy table (default: as many as the zoo scored)")
    ap.add_argument("--skip-accuracy", action="store_true", help="no accuracy table (weights and behaviour only)")
    ap.add_argument("--fresh", action="store_true", help="do not resume the generator from checkpoint_dir")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return ap.parse_args(argv)


# Held-out questions per task type for the accuracy table when the zoo saved no base results to reuse.
ACCURACY_SAMPLES = {"cloze": 300, "mcq": 300, "bool": 300, "gsm8k": 32}


def accuracy_samples(zoo_dir: str, task, requested: int | None) -> int:
    """Questions scored per task: ``requested``, else as many as the zoo scored its base model on (so its
    per-question base and teacher results are reused), else `ACCURACY_SAMPLES`."""
    if requested:
        return requested
    saved = os.path.join(zoo_dir, task.name, "base_test_details.json")
    if os.path.isfile(saved):
        with open(saved) as f:
            return len(json.load(f))
    return ACCURACY_SAMPLES[task.task_type]


def make_config(args):
    from llgbm_jax.config import TrainingConfig

    config = TrainingConfig.load(args.config) if args.config else TrainingConfig()
    changes = {k: v for k, v in (("zoo_dir", args.zoo_dir), ("zoo_preset", args.zoo_preset),
                                 ("num_steps", args.num_steps), ("seed", args.seed), ("data_dir", args.data_dir))
               if v is not None}
    if args.output_dir:
        changes.update(output_dir=args.output_dir, checkpoint_dir=os.path.join(args.output_dir, "checkpoints"))
    if "num_steps" in changes:
        changes["warmup_steps"] = min(config.warmup_steps, max(changes["num_steps"] // 10, 0))
    return config.replace(**changes)


def plot_training_curves(state, max_grad_norm: float, path: str) -> str:
    """Loss (each term too), gradient norm before clipping with the clip line, and learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps = np.arange(1, len(state.loss_history) + 1)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(steps, state.loss_history, label="total")
    for name, values in state.term_histories.items():
        if len(state.term_histories) > 1:
            axes[0].plot(steps, values, label=name, alpha=0.7)
    axes[0].set(yscale="log", xlabel="step", ylabel="loss", title="training loss")
    axes[0].legend()
    axes[1].plot(steps, state.grad_norm_history)
    axes[1].axhline(max_grad_norm, color="red", ls="--", label=f"clip {max_grad_norm}")
    axes[1].set(yscale="log", xlabel="step", ylabel="global norm", title="gradient norm (before clipping)")
    axes[1].legend()
    axes[2].plot(steps, state.lr_history)
    axes[2].set(xlabel="step", ylabel="learning rate", title="learning rate")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_accuracy_table(accuracy: dict) -> str:
    head = ("task", "n", "base", "teacher", "generated", "mean teach. (a)", "cross-task (b)", "gen - base",
            "gen - teacher", "gen - (a)", "recovered")
    rows = []
    for task, r in accuracy.items():
        g = r["generated"]
        pm = lambda x: f"{x['gain']:+.3f} ± {x['se']:.3f}"
        rec = r.get("recovery")
        rows.append((task, str(r["n"]), f"{r['base']['accuracy']:.3f}", f"{r['teacher']['accuracy']:.3f}",
                     f"{g['accuracy']:.3f}", f"{r['mean_teachers']['accuracy']:.3f}",
                     f"{r['cross_task']['accuracy']:.3f} ({r['cross_task_source']})", pm(g["gain_over_base"]),
                     pm(g["minus_teacher"]), pm(g["minus_mean_teachers"]),
                     "-" if rec is None else f"{100 * rec:.0f}%" + ("" if r["teacher_significant"] else " (teacher n.s.)")))
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def main(argv=None, *, base_model=None, compilation_cache: bool = True):
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import jax
    import numpy as np

    from llgbm_jax import comparison
    from llgbm_jax.ablations import setup_base_components
    from llgbm_jax.compile_stats import use_compilation_cache
    from llgbm_jax.dataset import final_adapters, take
    from llgbm_jax.delta import DeltaCache, behavioural_delta, lora_hash, model_hash
    from llgbm_jax.generator import create_generator, generate_lora, save_generator
    from llgbm_jax.io_utils import write_json_atomic
    from llgbm_jax.lora import mean_lora, stack_loras
    from llgbm_jax.models import load_base_model
    from llgbm_jax.peft_io import load_peft_adapter, save_peft_adapter
    from llgbm_jax.tasks import get_task
    from llgbm_jax.teachers import PRESETS, build_zoo, read_manifest
    from llgbm_jax.training import delta_w_metrics, evaluate, train

    config = make_config(args)
    progress = not args.no_progress
    cache_root = os.path.dirname(config.delta_cache_dir.rstrip("/")) or "."  # beside the delta cache
    if compilation_cache:  # compiled programs too: a rerun with the same shapes skips most compilation
        use_compilation_cache(os.path.join(cache_root, "xla"))
    out = config.output_dir
    os.makedirs(out, exist_ok=True)
    config.save(os.path.join(out, "config.json"))
    print(f"llgbm-jax main job: {config.model_name} ({config.dtype}) on {jax.default_backend()} "
          f"({len(jax.devices())} device(s)); run folder {out}")
    phases: dict[str, float] = {}

    def phase(name, t0):
        phases[name] = time.perf_counter() - t0
        print(f"[{name}] {phases[name] / 60:.1f} min")

    # 1. the teacher zoo
    t0 = time.perf_counter()
    base_model = base_model or load_base_model(config.model_name, dtype=config.dtype)
    preset = config.zoo_preset_name
    if preset not in PRESETS:
        raise SystemExit(f"delta_w.py: unknown zoo preset {preset!r}; known: {sorted(PRESETS)}")
    zoo_cfg = dataclasses.replace(PRESETS[preset], model=config.model_name)
    existing = read_manifest(config.zoo_dir)
    preset_dict = json.loads(json.dumps(dataclasses.asdict(zoo_cfg), default=list))
    if existing.get("adapters") and existing.get("config") != preset_dict:
        print(f"using the existing zoo {config.zoo_dir} ({len(existing['adapters'])} adapters; it was not built "
              f"with the {preset!r} preset, so it is neither extended nor checked against it)")
    else:
        build_zoo(config.zoo_dir, zoo_cfg, base_model=base_model, data_dir=config.data_dir, show_progress=progress)
    phase("zoo", t0)

    # 2. probes, deltas, conditions, dataset
    t0 = time.perf_counter()
    comp = setup_base_components(None, config, base_model=base_model, show_progress=progress)
    dataset, eval_set, probes, adapters, all_deltas = (comp.dataset, comp.eval_dataset, comp.probes, comp.adapters,
                                                       comp.teacher_deltas)
    splits = dataset.splits
    splits.save(os.path.join(out, "splits.json"))
    print(f"{len(dataset)} training adapters, {len(eval_set)} held-out adapters, "
          f"{len(dataset.texts)} training condition prompts over {len({a.task for a in dataset.adapters})} tasks")
    phase("components", t0)

    # 3. training
    t0 = time.perf_counter()
    generator = create_generator(config, config.seed, comp.text_encoder if not config.freeze_text_encoder else None,
                                 model_config=base_model.config)
    state = train(generator, dataset, config, model_config=base_model.config, resume=not args.fresh,
                  show_progress=progress)
    curves = plot_training_curves(state, config.max_grad_norm, os.path.join(out, "training_curves.png"))
    print(f"trained {state.step} steps in {state.seconds / 60:.1f} min: loss {state.loss_history[0]:.4g} -> "
          f"{state.loss_history[-1]:.4g} (best {state.best_loss:.4g}); curves {curves}")
    phase("training", t0)

    # 4. evaluation: held-out adapters and prompts, baselines, per task
    t0 = time.perf_counter()
    evaluation, eval_generated, eval_deltas = evaluate(generator, eval_set, config, base_model=base_model,
                                                       probes=probes, base_hidden=comp.base_activation,
                                                       return_generated=True)
    finals = final_adapters(adapters)
    tasks = sorted({a.task for a in adapters})
    final_of = {a.task: a for a in finals}  # one run per task on the cpu preset; else the task's first run
    mean_teachers = mean_lora([load_peft_adapter(a.path, base_model.config) for a in finals])
    sources = comparison.cross_task_sources(tasks)
    # Each task's generated adapter: the evaluation's, for the task's first held-out adapter (same held-out
    # prompts, so its delta is not computed twice); a task with no held-out adapter gets its own draw.
    first_heldout = {}
    for i, a in enumerate(eval_set.adapters):
        first_heldout.setdefault(a.task, i)
    prompts = {t: eval_set.sample(i)["prompts"] for t, i in first_heldout.items()}
    generated = {t: take(eval_generated, i) for t, i in first_heldout.items()}
    gen_delta = {t: eval_deltas[i] for t, i in first_heldout.items()}
    rest = [t for t in tasks if t not in generated]
    for t in rest:
        prompts[t] = comparison.heldout_condition(splits, t, config.num_prompts_per_adapter, config.seed)
        generated[t] = generate_lora(generator, prompts[t], comp.text_encoder)
    if rest:
        gen_delta.update(zip(rest, np.asarray(behavioural_delta(
            base_model, stack_loras([generated[t] for t in rest]), probes, comp.base_activation,
            delta_batch_probes=config.delta_batch_probes))))
    cross = {t: generated[sources[t]] for t in tasks}
    final_teachers = {t: load_peft_adapter(final_of[t].path, base_model.config) for t in tasks}
    mean_delta = DeltaCache(config.delta_cache_dir).get_lora(  # depends on the zoo only: cached
        base_model, probes, mean_teachers, base_hidden=comp.base_activation,
        delta_batch_probes=config.delta_batch_probes, source="mean of the final teachers")
    teacher_tasks = {a.name: a.task for a in adapters}
    cosines = lambda d, t: comparison.own_other_cosine(d, t, all_deltas, teacher_tasks)
    per_task = {}
    for t in tasks:
        per_task[t] = {
            "condition_prompts": prompts[t],
            "generated": {"delta_w": delta_w_metrics(generated[t], final_teachers[t]),
                          "delta_cosine": cosines(gen_delta[t], t)},
            "mean_teachers": {"delta_w": delta_w_metrics(mean_teachers, final_teachers[t]),
                              "delta_cosine": cosines(mean_delta, t)},
            "cross_task": {"source": sources[t], "delta_w": delta_w_metrics(cross[t], final_teachers[t]),
                           "delta_cosine": cosines(gen_delta[sources[t]], t)},
        }
    print("\nper task (generated from held-out prompts vs the task's final teacher):")
    print(f"{'task':<22} {'ΔW cos':>7} {'ΔW rel err':>10} {'δ cos own':>9} {'δ cos other':>11} | "
          f"{'(a) ΔW cos':>10} {'(a) δ own':>9} | {'(b) ΔW cos':>10}")
    for t in tasks:
        g, m, c = per_task[t]["generated"], per_task[t]["mean_teachers"], per_task[t]["cross_task"]
        print(f"{t:<22} {g['delta_w']['cosine']:>7.3f} {g['delta_w']['relative_error']:>10.3f} "
              f"{g['delta_cosine']['own']:>9.3f} {g['delta_cosine']['other']:>11.3f} | {m['delta_w']['cosine']:>10.3f} "
              f"{m['delta_cosine']['own']:>9.3f} | {c['delta_w']['cosine']:>10.3f}")
    print(f"\nheld-out adapters ({evaluation['n_adapters']}): eval_loss {evaluation['eval_loss']:.4g}, ΔW cosine "
          f"{evaluation['delta_w']['cosine']:.3f}, delta cosine mean {evaluation.get('mean_cosine', float('nan')):.3f} "
          f"(min {evaluation.get('min_cosine', float('nan')):.3f})")
    phase("evaluation", t0)

    # 5. accuracy per task
    t0 = time.perf_counter()
    accuracy = {}
    if not args.skip_accuracy:
        scores = comparison.ScoreCache(os.path.join(cache_root, "scores"))
        mhash = model_hash(base_model)
        mean_key = sorted(lora_hash(a.path) for a in finals)
        for t in tasks:
            task = get_task(t, config.data_dir)
            n = accuracy_samples(config.zoo_dir, task, args.accuracy_samples)
            records = task.load("eval", config.data_dir)[:n]
            golds = [task.answer(r) for r in records]
            qhash = comparison.hashlib.sha256(json.dumps([r["prompt"] for r in records]).encode()).hexdigest()
            details, todo = {}, {}
            zoo_task = os.path.join(config.zoo_dir, t)
            for name, lora, saved, key in (
                    ("base", None, os.path.join(zoo_task, "base_test_details.json"), ["base"]),
                    ("teacher", final_teachers[t], os.path.join(final_of[t].path, "test_details.json"),
                     [lora_hash(final_of[t].path)]),
                    ("mean_teachers", mean_teachers, None, mean_key),
                    ("generated", generated[t], None, [lora_hash(generated[t])]),
                    ("cross_task", cross[t], None, [lora_hash(cross[t])])):
                got = comparison.saved_details(saved, golds) if saved else None
                ckey = {"model": mhash, "task": t, "questions": qhash, "adapter": key}
                details[name] = got or scores.get(ckey)  # by content: a rerun of a finished generator scores nothing
                if details[name] is None:
                    todo[name] = (lora, ckey)
            got = comparison.score_many(base_model, task, records, [lora for lora, _ in todo.values()],
                                        show_progress=progress) if todo else []
            for (name, (_, ckey)), result in zip(todo.items(), got):
                scores.put(ckey, result)
                details[name] = result
            accuracy[t] = comparison.accuracy_summary(details) | {"cross_task_source": sources[t]}
        print("\naccuracy on held-out questions (paired gains ± SE on the same questions):")
        print(format_accuracy_table(accuracy))
    phase("accuracy", t0)

    # 6. export
    t0 = time.perf_counter()
    exported = {}
    for t in tasks:
        exported[t] = save_peft_adapter(generated[t], os.path.join(out, "generated", t),
                                        base_model_name_or_path=base_model.name, model_config=base_model.config)
    save_generator(generator, os.path.join(out, "generator"), config)
    phase("export", t0)

    results = {"config": config.to_dict(), "mode": {"backend": jax.default_backend(), "devices": len(jax.devices()),
                                                    "model": config.model_name, "dtype": config.dtype,
                                                    "text_encoder": "frozen" if config.freeze_text_encoder else "trained",
                                                    "zoo": config.zoo_dir, "zoo_preset": preset},
               "training": state.to_dict(), "eval": evaluation, "per_task": per_task, "accuracy": accuracy,
               "exported": exported, "phase_seconds": phases, "splits": os.path.join(out, "splits.json")}
    write_json_atomic(os.path.join(out, "results.json"), results)
    print("\nphase times: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in phases.items())
          + f"; total {sum(phases.values()) / 60:.1f} min. Results: {os.path.join(out, 'results.json')}")
    return results


if __name__ == "__main__":
    main()
