"""The ``llgbm-jax`` commands behind the measurements in docs/: base-accuracy, deltas, family, pilot, prepare-data,
unseen, ablations."""

from __future__ import annotations


def add_base_accuracy(ap):
    from llgbm_jax.evaluation.base_accuracy import DEFAULT_TASKS

    ap.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), help="registered task names")
    ap.add_argument("--max-samples", type=int, help="first N evaluation questions per task (default: all)")
    ap.add_argument("--out", default="results/base_accuracy.json", help="JSON results file ('' to skip)")
    ap.add_argument("--data-dir", help="task data folder (default: $LLGBM_DATA_DIR, else ./data)")
    ap.add_argument("--model", help="embedded name, .gguf, HF folder or hub id (default: SmolLM2-135M)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--batch-size", type=int, help="questions per batch (default: 8 for options, 16 for gsm8k)")
    ap.add_argument("--max-new-tokens", type=int, default=256, help="GSM8K generation budget")
    ap.add_argument("--no-progress", action="store_true")


def run_base_accuracy(args):
    from llgbm_jax.cli.main import offline_unless_hub
    from llgbm_jax.evaluation.base_accuracy import base_accuracy

    offline_unless_hub(args.model)
    return base_accuracy(args.tasks, max_samples=args.max_samples, out=args.out or None, data_dir=args.data_dir,
                         model=args.model, dtype=args.dtype, batch_size=args.batch_size,
                         max_new_tokens=args.max_new_tokens, show_progress=not args.no_progress)


def add_deltas(ap):
    ap.add_argument("--zoo-dir", required=True, help="zoo folder with manifest.json")
    ap.add_argument("--num-probes", type=int, default=32)
    ap.add_argument("--max-probe-length", type=int, default=128, help="tokens per probe at most")
    ap.add_argument("--seed", type=int, default=0, help="probe draw")
    ap.add_argument("--probe-tasks", nargs="+", help="tasks probes are drawn from (default: those with data)")
    ap.add_argument("--cache-dir", help="delta cache (default: <zoo-dir>/deltas)")
    ap.add_argument("--out", help="folder for deltas_matrix.png and deltas.json (default: the zoo folder)")
    ap.add_argument("--model", help="base model (default: the manifest's)")
    ap.add_argument("--data-dir", help="task data folder (default: $LLGBM_DATA_DIR, else ./data)")
    ap.add_argument("--batch-size", type=int, default=8, help="adapters per batched delta computation")
    ap.add_argument("--no-progress", action="store_true")


def run_deltas(args):
    from llgbm_jax.cli.main import offline_unless_hub
    from llgbm_jax.conditions.delta_study import delta_study

    offline_unless_hub(args.model)
    return delta_study(args.zoo_dir, num_probes=args.num_probes, max_probe_length=args.max_probe_length, seed=args.seed,
                       probe_tasks=args.probe_tasks, cache_dir=args.cache_dir, out_dir=args.out, model=args.model,
                       data_dir=args.data_dir, batch_size=args.batch_size, show_progress=not args.no_progress)


def add_family(ap):
    from llgbm_jax.base import DEFAULT_MODEL

    ap.add_argument("--zoo-dir", default="zoo_family", help="teacher zoo folder")
    ap.add_argument("--tasks", nargs="+", help="family tasks (default: all of them)")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="base model")
    ap.add_argument("--steps", type=int, default=32, help="training steps per teacher")
    ap.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--save-every", type=int, default=3, help="steps between the trajectory's adapters")
    ap.add_argument("--adapters-per-run", type=int, default=8, help="adapters exported along each run")
    ap.add_argument("--eval-samples", type=int, default=100, help="test questions scored per task")
    ap.add_argument("--out", default="results/task_family.json", help="JSON of the table")
    ap.add_argument("--no-progress", action="store_true")


def run_family(args):
    from llgbm_jax.cli.main import offline_unless_hub
    from llgbm_jax.teachers.family_study import GAIN_BAR, family_study, family_zoo_config, format_table

    offline_unless_hub(args.model)
    cfg = family_zoo_config(model=args.model, tasks=args.tasks, steps=args.steps, lr=args.lr,
                            batch_size=args.batch_size, save_every=args.save_every,
                            adapters_per_run=args.adapters_per_run, eval_samples=args.eval_samples)
    result = family_study(args.zoo_dir, cfg, out=args.out, show_progress=not args.no_progress)
    s = result["seconds"]
    print(f"\n{len(result['rows'])} family tasks, {args.steps} steps each (lr {args.lr}, batch {args.batch_size}); "
          f"training {s['train'] / 60:.1f} min, base and teacher scoring {s['base_and_teacher_scoring'] / 60:.1f} min, "
          f"mean-of-teachers (rank {result['mean_of_teachers_rank']}) scoring "
          f"{s['mean_of_teachers_scoring'] / 60:.1f} min\n")
    print(format_table(result["rows"]))
    print(f"\nteachers below +{GAIN_BAR:.2f} cloze gain: {', '.join(result['below_gain_bar']) or 'none'}")
    if args.out:
        print(f"saved {args.out}")
    return result


def add_pilot(ap):
    ap.add_argument("--task", default="arc_e", help="arc_e, obqa, arc_e_cloze, obqa_cloze or a fam_* task")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--save-every", type=int, default=30, help="checkpoints scored: steps, steps - k, steps - 2k")
    ap.add_argument("--eval", default="val", choices=["val", "test"],
                    help="val: 300 train questions held out of training; test: the first --n-eval test questions")
    ap.add_argument("--n-eval", type=int, default=300)
    ap.add_argument("--data-dir", help="task data folder (default: $LLGBM_DATA_DIR, else ./data)")


def run_pilot(args):
    from llgbm_jax.cli.main import offline_unless_hub
    from llgbm_jax.teachers.pilot import teacher_pilot

    offline_unless_hub()
    return teacher_pilot(args.task, steps=args.steps, lr=args.lr, save_every=args.save_every, split=args.eval,
                         n_eval=args.n_eval, data_dir=args.data_dir)


def add_prepare_data(ap):
    ap.add_argument("--out", default="data", help="output folder (then pass --data-dir or set LLGBM_DATA_DIR)")
    ap.add_argument("--check-against", help="an existing data folder to compare with")


def run_prepare_data(args):
    from llgbm_jax.tasks.prepare import prepare_data

    return prepare_data(args.out, args.check_against)


def add_unseen(ap):
    from llgbm_jax.ablations import MODES
    from llgbm_jax.evaluation.unseen import UnseenConfig

    d = UnseenConfig()
    ap.add_argument("--run-dir", default=d.run_dir, help=f"results, split, generators, caches (default: {d.run_dir})")
    ap.add_argument("--zoo-dir", default=d.zoo_dir, help=f"the family zoo, built when missing (default: {d.zoo_dir})")
    ap.add_argument("--zoo-preset", default=d.zoo_preset, choices=("family", "family_shared"),
                    help="teachers with independent (family) or one shared (family_shared) LoRA initialisation")
    ap.add_argument("--kinds", nargs="+", help="family kinds in the study (default: all)")
    ap.add_argument("--tasks", nargs="+", help="family tasks in the study (overrides --kinds)")
    ap.add_argument("--held-out-kinds", nargs="+", default=list(d.held_out_kinds), help="kinds held out whole")
    ap.add_argument("--seeds", nargs="+", type=int, default=list(d.seeds), help="one generator per seed")
    ap.add_argument("--steps", type=int, default=d.steps, help="generator steps")
    ap.add_argument("--eval-samples", type=int, default=d.eval_samples, help="test questions per held-out task")
    ap.add_argument("--multitask-steps", type=int, help="multi-task LoRA steps (default: the seen teachers' total)")
    ap.add_argument("--description-share", type=float, default=d.description_share,
                    help="share of training conditions that are one task description alone")
    ap.add_argument("--no-exact-match", action="store_true", help="cloze only")
    ap.add_argument("--mode", default=d.mode, choices=list(MODES),
                    help="the generators' supervision (default: delta_w; another writes to RUN_DIR/MODE)")
    ap.add_argument("--on-multitask", action="store_true",
                    help="each generated adapter is the multi-task LoRA plus the generator's correction "
                         "(writes to RUN_DIR/MODE_on_multitask)")
    ap.add_argument("--no-progress", action="store_true")


def run_unseen(args):
    from llgbm_jax.cli.main import offline_unless_hub
    from llgbm_jax.evaluation.unseen import UnseenConfig, run

    offline_unless_hub(None)
    cfg = UnseenConfig(run_dir=args.run_dir, zoo_dir=args.zoo_dir, zoo_preset=args.zoo_preset,
                       kinds=tuple(args.kinds) if args.kinds else None,
                       tasks=tuple(args.tasks) if args.tasks else None,
                       held_out_kinds=tuple(args.held_out_kinds), seeds=tuple(args.seeds), steps=args.steps,
                       eval_samples=args.eval_samples, multitask_steps=args.multitask_steps,
                       description_share=args.description_share, exact_match=not args.no_exact_match,
                       mode=args.mode, on_multitask=args.on_multitask)
    run(cfg, show_progress=not args.no_progress)
    return 0


def add_ablations(ap):
    from llgbm_jax.ablations import MODES, AblationConfig

    d = AblationConfig()
    ap.add_argument("--run-dir", default=d.run_dir, help=f"trials, results, summary (default: {d.run_dir})")
    ap.add_argument("--study-dir", default=d.study.run_dir,
                    help="the unseen-tasks study's folder: split, multi-task LoRA, score cache "
                         f"(default: {d.study.run_dir})")
    ap.add_argument("--zoo-dir", default=d.study.zoo_dir, help=f"the family zoo (default: {d.study.zoo_dir})")
    ap.add_argument("--kinds", nargs="+", help="family kinds in the study (default: all)")
    ap.add_argument("--modes", nargs="+", default=list(d.modes), choices=list(MODES), help="supervision modes")
    ap.add_argument("--seeds", nargs="+", type=int, default=list(d.seeds))
    ap.add_argument("--steps", type=int, default=d.steps, help="generator steps (same-steps comparison)")
    ap.add_argument("--budget-seconds", type=float, default=d.budget_seconds,
                    help="training time per generator, compiles excluded (same-budget comparison; default: "
                         "--steps steps of delta_w)")
    ap.add_argument("--timing-steps", type=int, default=d.timing_steps,
                    help="steps per mode that time a step for the budget (saved in RUN_DIR/step_seconds.json)")
    ap.add_argument("--seen-tasks", type=int, default=d.seen_tasks, help="seen tasks whose accuracy is measured")
    ap.add_argument("--eval-samples", type=int, default=d.study.eval_samples, help="test questions per task")
    ap.add_argument("--no-gauge-test", action="store_true")
    ap.add_argument("--no-progress", action="store_true")


def run_ablations(args):
    import dataclasses

    from llgbm_jax.ablations import AblationConfig
    from llgbm_jax.cli.main import offline_unless_hub
    from llgbm_jax.evaluation.supervision import run

    offline_unless_hub(None)
    d = AblationConfig()
    study = dataclasses.replace(d.study, run_dir=args.study_dir, zoo_dir=args.zoo_dir,
                                kinds=tuple(args.kinds) if args.kinds else None, eval_samples=args.eval_samples)
    cfg = AblationConfig(run_dir=args.run_dir, modes=tuple(args.modes), seeds=tuple(args.seeds), steps=args.steps,
                         budget_seconds=args.budget_seconds, timing_steps=args.timing_steps, seen_tasks=args.seen_tasks,
                         gauge_test=not args.no_gauge_test, study=study)
    run(cfg, show_progress=not args.no_progress)
    return 0
