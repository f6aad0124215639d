"""The main job: build (or reuse) the teacher zoo, train a generator on it with the ΔW loss, and judge the adapters
it writes beside the baselines a skeptic tries first. `run(config)` is what ``llgbm-jax train`` and
``python experiments/delta_w.py`` call.

Phases, each timed and printed:

1. zoo: the teacher zoo of the preset (``cpu`` for the embedded model) is built when missing, extended when the
   preset gains tasks, and reused when present. Tasks whose data files are not in the data folder are skipped
   with one printed line: with no data folder at all the job runs on the generated task family alone;
2. components: probes, the base model's hidden states on them, the behavioural deltas of the teachers training
   and evaluation use, and the condition prompts' sentence embeddings (both cached), the dataset and its splits;
3. training: `llgbm_jax.generator.training.train` (ΔW loss against each teacher run's final adapter; resumes from
   ``checkpoint_dir``);
4. evaluation: held-out adapters and prompts (ΔW and behavioural metrics); per task, the generated adapter beside
   the mean of all final teachers (a), the generator fed another task's prompts (b) and the base model
   (`llgbm_jax.evaluation.comparison`);
5. accuracy: per task, base, teacher, generated and the baselines on the same held-out questions, with paired
   standard errors (every score cached by adapter content, so a rerun scores nothing again);
6. export: each task's generated adapter as a PEFT folder and the trained generator for `load_generator`.

Every phase keeps what it computed (the zoo's runs, caches, orbax checkpoints, atomic files), so a killed job run
again with the same command finishes with the same numbers. One job at a time holds a run folder (`run_lock`).
Writes to ``output_dir``: config.json, splits.json, training_curves.png, accuracy.png, results.json, generator/,
generated/<task>/.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time

from llgbm_jax.generator.config import TrainingConfig
from llgbm_jax.utils.distributed import is_main_process
from llgbm_jax.utils.io import write_json_atomic
from llgbm_jax.utils.lock import run_lock

PHASES = ("zoo", "components", "training", "evaluation", "accuracy", "export")
RESULTS = "results.json"


@dataclasses.dataclass(frozen=True)
class JobOptions:
    """How to run the job (what it trains is the `TrainingConfig`)."""

    accuracy_samples: int | None = None  # held-out questions per task (None: as many as the zoo scored)
    skip_accuracy: bool = False  # weights and behaviour only
    fresh: bool = False  # do not resume the generator from checkpoint_dir
    show_progress: bool = True
    compilation_cache: bool = True  # keep compiled XLA programs beside the caches (process-wide setting)


class PhaseTimer:
    """Times the phases and prints ``[phase] x.y min`` as each one ends."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Phase:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, exc_type, *_):
                if exc_type is None:
                    timer.seconds[name] = time.perf_counter() - self.t0
                    print(f"[{name}] {timer.seconds[name] / 60:.1f} min", flush=True)

        return _Phase()


def prepare_zoo(config: TrainingConfig, base_model, show_progress: bool = True) -> str:
    """Build, extend or reuse the teacher zoo of ``config`` (phase 1); returns the preset's name. Tasks without
    data in the data folder are left out, with one printed line saying how to add them."""
    from llgbm_jax.tasks.registry import DATA_ENV, get_data_dir
    from llgbm_jax.teachers.manifest import read_manifest
    from llgbm_jax.teachers.zoo import PRESETS, build_zoo

    preset = config.zoo_preset_name
    if preset not in PRESETS:
        raise ValueError(f"unknown zoo preset {preset!r}; known: {sorted(PRESETS)}")
    zoo_cfg, skipped = dataclasses.replace(PRESETS[preset], model=config.model_name).with_data(config.data_dir)
    if skipped:
        print(f"no task data for {', '.join(skipped)} in {os.path.abspath(get_data_dir(config.data_dir))}: running on "
              f"{', '.join(zoo_cfg.tasks)}. To add them, point --data-dir or ${DATA_ENV} at a folder with their files "
              f"(python experiments/prepare_data.py --out data builds one where a network exists).", flush=True)
    existing = read_manifest(config.zoo_dir)
    if existing["adapters"] and not zoo_cfg.same_settings(existing.get("config")):
        print(f"using the existing zoo {config.zoo_dir} ({len(existing['adapters'])} adapters; it was not built "
              f"with the {preset!r} preset, so it is neither extended nor checked against it)")
    else:
        build_zoo(config.zoo_dir, zoo_cfg, base_model=base_model, data_dir=config.data_dir, show_progress=show_progress)
    return preset


def run(config: TrainingConfig, options: JobOptions = JobOptions(), *, base_model=None) -> dict:
    """Run the main job (the phases of the module docstring) and return what it writes to ``results.json``."""
    import jax

    from llgbm_jax.ablations import setup_base_components
    from llgbm_jax.base import load_base_model
    from llgbm_jax.evaluation import comparison
    from llgbm_jax.generator.model import create_generator, save_generator
    from llgbm_jax.generator.training import evaluate, plot_training_curves, train
    from llgbm_jax.lora.peft import save_peft_adapter
    from llgbm_jax.utils.compile_stats import use_compilation_cache

    out = config.output_dir
    os.makedirs(out, exist_ok=True)
    main = is_main_process()  # with several processes, process 0 writes the results, plots and exports
    with run_lock(out) if main else contextlib.nullcontext():
        if options.compilation_cache:  # a rerun with the same shapes loads its programs instead of compiling
            use_compilation_cache(os.path.join(config.cache_root, "xla"))
        if main:
            config.save(os.path.join(out, "config.json"))
        print(f"llgbm-jax main job: {config.model_name} ({config.dtype}) on {jax.default_backend()} "
              f"({len(jax.devices())} device(s)); run folder {out}", flush=True)
        progress, phase = options.show_progress, PhaseTimer()

        with phase("zoo"):
            base_model = base_model or load_base_model(config.model_name, dtype=config.dtype)
            preset = prepare_zoo(config, base_model, progress)

        with phase("components"):
            comp = setup_base_components(None, config, base_model=base_model, show_progress=progress)
            if main:
                comp.dataset.splits.save(os.path.join(out, "splits.json"))
            print(f"{len(comp.dataset)} training adapters, {len(comp.eval_dataset)} held-out adapters, "
                  f"{len(comp.dataset.texts)} training condition prompts over "
                  f"{len({a.task for a in comp.dataset.adapters})} tasks")

        with phase("training"):
            generator = create_generator(config, config.seed,
                                         comp.text_encoder if not config.freeze_text_encoder else None,
                                         model_config=base_model.config)
            state = train(generator, comp.dataset, config, model_config=base_model.config, resume=not options.fresh,
                          delta=comp.delta_inputs if config.lambda_delta > 0 else None, show_progress=progress)
            curves = (plot_training_curves(state, config.max_grad_norm, os.path.join(out, "training_curves.png"))
                      if main else None)
            print(f"trained {state.step} steps in {state.seconds / 60:.1f} min: loss {state.loss_history[0]:.4g} -> "
                  f"{state.loss_history[-1]:.4g} (best {state.best_loss:.4g}); curves {curves}")

        with phase("evaluation"):
            evaluation, eval_generated, eval_deltas = evaluate(
                generator, comp.eval_dataset, config, base_model=base_model, probes=comp.probes,
                base_hidden=comp.base_activation, return_generated=True)
            variants = comparison.make_variants(generator, comp, config, eval_generated, eval_deltas)
            per_task = comparison.weight_and_behaviour(variants, comp.teacher_deltas, comp.adapters)
            print("\nper task (generated from held-out prompts vs the task's final teacher):")
            print(comparison.format_weight_table(per_task))
            print(f"\nheld-out adapters ({evaluation['n_adapters']}): eval_loss {evaluation['eval_loss']:.4g}, "
                  f"ΔW cosine {evaluation['delta_w']['cosine']:.3f}, delta cosine mean "
                  f"{evaluation.get('mean_cosine', float('nan')):.3f} "
                  f"(min {evaluation.get('min_cosine', float('nan')):.3f})")

        with phase("accuracy"):
            accuracy = {}
            if not options.skip_accuracy:
                accuracy = comparison.accuracy_table(base_model, variants, config, options.accuracy_samples,
                                                     show_progress=progress)
                print("\naccuracy on held-out questions (paired gains ± SE on the same questions):")
                print(comparison.format_accuracy_table(accuracy))
                if main:
                    print(f"plot: {comparison.plot_accuracy(accuracy, os.path.join(out, 'accuracy.png'))}")

        with phase("export"):
            exported = {t: os.path.join(out, "generated", t) for t in variants.tasks}
            if main:
                for t, path in exported.items():
                    save_peft_adapter(variants.generated[t], path, base_model_name_or_path=base_model.hub_name,
                                      model_config=base_model.config)
                save_generator(generator, os.path.join(out, "generator"), config)

        results = {"config": config.to_dict(),
                   "mode": {"backend": jax.default_backend(), "devices": len(jax.devices()), "model": config.model_name,
                            "dtype": config.dtype, "zoo": config.zoo_dir, "zoo_preset": preset,
                            "text_encoder": "frozen" if config.freeze_text_encoder else "trained"},
                   "training": state.to_dict(), "eval": evaluation, "per_task": per_task, "accuracy": accuracy,
                   "exported": exported, "phase_seconds": phase.seconds, "splits": os.path.join(out, "splits.json")}
        if main:
            write_json_atomic(os.path.join(out, RESULTS), results)
        print("\nphase times: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in phase.seconds.items())
              + f"; total {sum(phase.seconds.values()) / 60:.1f} min. Results: {os.path.join(out, RESULTS)}")
    return results
