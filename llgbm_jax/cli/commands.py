"""The ``llgbm-jax`` commands users come for: train, generate, chat, evaluate, zoo, convert, verify.

Each ``add_<name>(parser)`` declares the options, each ``run_<name>(args)`` calls the library; bad input raises an
error that `llgbm_jax.cli.main.main` prints in one line.
"""

from __future__ import annotations

import os

# --- devices: the mesh and several processes -----------------------------------------------------------------


def add_devices(ap):
    g = ap.add_argument_group("devices", "the data-parallel mesh; several processes (hosts) as one program "
                                         "(docs/scaling.md)")
    g.add_argument("--data-parallel-devices", type=int,
                   help="devices each batch is split over (default: every device the batch size allows)")
    g.add_argument("--multi-host", action="store_true",
                   help="start jax.distributed, finding the processes itself (Cloud TPU pod slices, SLURM)")
    g.add_argument("--coordinator-address", help="host:port of process 0 (env LLGBM_COORDINATOR_ADDRESS)")
    g.add_argument("--num-processes", type=int, help="number of processes (env LLGBM_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, help="this process's id, 0..num-processes-1 (env LLGBM_PROCESS_ID)")


def start_devices(args) -> None:
    """Start `jax.distributed` if the flags or the environment ask for it (before anything touches a device)."""
    from llgbm_jax.utils.distributed import initialize

    if initialize(args.coordinator_address, args.num_processes, args.process_id, auto=args.multi_host):
        import jax

        print(f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} of "
              f"{jax.device_count()} devices", flush=True)


# --- train: the main job --------------------------------------------------------------------------------------


def add_train(ap):
    ap.add_argument("--config", help="a TrainingConfig JSON file (default: the built-in defaults)")
    ap.add_argument("--output-dir", help="run folder (default: the config's output_dir, runs/delta_w)")
    ap.add_argument("--zoo-dir", help="teacher zoo folder (default: the config's zoo_dir, zoo)")
    ap.add_argument("--zoo-preset", help="zoo preset for building a missing zoo (default: cpu for the embedded model)")
    ap.add_argument("--num-steps", type=int, help="generator training steps")
    ap.add_argument("--seed", type=int, help="generator initialisation, batches and held-out prompts")
    ap.add_argument("--data-dir", help="task data folder (default: $LLGBM_DATA_DIR, else ./data; without one the job "
                                       "runs on the generated task family)")
    ap.add_argument("--accuracy-samples", type=int, help="held-out questions per task (default: as the zoo scored)")
    ap.add_argument("--skip-accuracy", action="store_true", help="no accuracy table (weights and behaviour only)")
    ap.add_argument("--fresh", action="store_true", help="do not resume the generator from its checkpoints")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_devices(ap)


def training_config(args):
    """The `TrainingConfig` of the ``train`` options: the ``--config`` file (or the defaults) with the flags applied."""
    from llgbm_jax.generator.config import TrainingConfig

    config = TrainingConfig.load(args.config) if args.config else TrainingConfig()
    changes = {k: v for k, v in (("zoo_dir", args.zoo_dir), ("zoo_preset", args.zoo_preset),
                                 ("num_steps", args.num_steps), ("seed", args.seed), ("data_dir", args.data_dir),
                                 ("data_parallel_devices", args.data_parallel_devices))
               if v is not None}
    if args.output_dir:
        changes.update(output_dir=args.output_dir, checkpoint_dir=os.path.join(args.output_dir, "checkpoints"))
    if "num_steps" in changes:
        changes["warmup_steps"] = min(config.warmup_steps, max(changes["num_steps"] // 10, 0))
    return config.replace(**changes)


def run_train(args, *, base_model=None, compilation_cache: bool = True) -> dict:
    from llgbm_jax.cli.main import offline_unless_hub
    from llgbm_jax.evaluation.main_job import JobOptions, run

    config = training_config(args)
    offline_unless_hub(config.model_name, config.text_encoder_name)
    start_devices(args)
    options = JobOptions(accuracy_samples=args.accuracy_samples, skip_accuracy=args.skip_accuracy, fresh=args.fresh,
                         show_progress=not args.no_progress, compilation_cache=compilation_cache)
    return run(config, options, base_model=base_model)


# --- generate: text -> adapter -----------------------------------------------------------------------------------


def add_generate(ap):
    ap.add_argument("--generator", required=True, help="a trained generator folder (a run's generator/)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a task description or an example prompt (repeatable)")
    src.add_argument("--prompts", help="a file of prompts: a JSON list of strings, or one prompt per line")
    ap.add_argument("--out", required=True, help="the PEFT adapter folder to write")
    ap.add_argument("--force", action="store_true", help="replace --out if it exists")
    ap.add_argument("--model", help="the base model the adapter is for (checked against the generator's)")


def read_prompts(path: str) -> list[str]:
    """Prompts from a file: a JSON list of strings, else one prompt per non-empty line."""
    import json

    with open(path) as f:
        text = f.read()
    try:
        prompts = json.loads(text)
    except json.JSONDecodeError:
        return [line.strip() for line in text.splitlines() if line.strip()]
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{path}: expected a JSON list of strings (or one prompt per line)")
    return prompts


def run_generate(args) -> str:
    from llgbm_jax.cli.main import UsageError, offline_unless_hub
    from llgbm_jax.generator.model import write_adapter

    prompts = args.prompt if args.prompt is not None else read_prompts(args.prompts)
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise UsageError(f"no prompts: {'--prompt' if args.prompt is not None else args.prompts} gave none; pass a "
                         f"task description or a few example prompts")
    offline_unless_hub(args.model)
    path, base = write_adapter(args.generator, prompts, args.out, model=args.model, force=args.force)
    print(f"wrote {path}: a LoRA for {base} from {len(prompts)} prompt(s)")
    print("load it with PEFT:\n"
          "  from peft import PeftModel\n  from transformers import AutoModelForCausalLM\n"
          f"  model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({base!r}), {path!r})\n"
          f"or try it here: llgbm-jax chat --adapter {path} \"...\"")
    return path


# --- chat ------------------------------------------------------------------------------------------------------


def add_chat(ap):
    ap.add_argument("message", nargs="+", help="user message(s), each answered on its own")
    ap.add_argument("--adapter", help="a PEFT adapter folder (default: the base model alone)")
    ap.add_argument("--model", help="base model: embedded name, .gguf, Hugging Face folder or hub id (default: the "
                                    "adapter's, else the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--system", help="a system message")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])


def run_chat(args) -> list[str]:
    from llgbm_jax.base.model import DEFAULT_MODEL, load_base_model, local_name
    from llgbm_jax.cli.main import offline_unless_hub
    from llgbm_jax.lora.peft import load_adapter_for, recorded_base_model
    from llgbm_jax.scoring.accuracy import chat

    name = args.model or (args.adapter and local_name(recorded_base_model(args.adapter) or "")) or DEFAULT_MODEL
    offline_unless_hub(name)
    base_model = load_base_model(name, dtype=args.dtype)
    lora = load_adapter_for(args.adapter, base_model) if args.adapter else None
    answers = chat(base_model, args.message, lora, system=args.system, max_new_tokens=args.max_new_tokens)
    print(f"{base_model.name}" + (f" + {args.adapter}" if args.adapter else " (no adapter)"))
    for message, answer in zip(args.message, answers):
        print(f"\n> {message}\n{answer}")
    return answers


# --- evaluate ----------------------------------------------------------------------------------------------------


def add_evaluate(ap):
    ap.add_argument("--adapter", required=True, help="a PEFT adapter folder")
    ap.add_argument("--task", required=True, help="a registered task (fam_add_2, arc_e_cloze, ...)")
    ap.add_argument("--max-samples", type=int, help="the first N held-out questions (default: all)")
    ap.add_argument("--model", help="base model (default: the adapter's)")
    ap.add_argument("--data-dir", help="task data folder (default: $LLGBM_DATA_DIR, else ./data)")
    ap.add_argument("--out", help="also write the result as JSON")
    ap.add_argument("--no-progress", action="store_true")


def run_evaluate(args) -> dict:
    from llgbm_jax.base.model import DEFAULT_MODEL, load_base_model, local_name
    from llgbm_jax.cli.main import offline_unless_hub
    from llgbm_jax.evaluation.comparison import adapter_vs_base, format_adapter_vs_base
    from llgbm_jax.lora.peft import load_adapter_for, recorded_base_model
    from llgbm_jax.tasks.registry import get_task
    from llgbm_jax.utils.io import write_json_atomic

    task = get_task(args.task, args.data_dir)  # an unknown name fails here, listing the known ones
    records = task.load("eval", args.data_dir)[:args.max_samples]
    name = args.model or local_name(recorded_base_model(args.adapter) or DEFAULT_MODEL)
    offline_unless_hub(name)
    base_model = load_base_model(name)
    lora = load_adapter_for(args.adapter, base_model)
    result = adapter_vs_base(base_model, lora, task, records, show_progress=not args.no_progress)
    result["adapter_path"] = args.adapter
    print(format_adapter_vs_base(result))
    if args.out:
        write_json_atomic(args.out, result)
    return result


# --- zoo -----------------------------------------------------------------------------------------------------


def add_zoo(ap):
    from llgbm_jax.teachers.zoo import PRESETS

    ap.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="zoo configuration (default: cpu)")
    ap.add_argument("--zoo-dir", default="zoo", help="output folder (manifest.json, <task>/<run>/step_XXXXX)")
    ap.add_argument("--tasks", nargs="+", help="tasks to train (default: the preset's that have data)")
    ap.add_argument("--runs-per-task", type=int, help="runs on disjoint chunks of each train split")
    ap.add_argument("--steps", type=int, help="training steps of every run (overrides per-task settings too)")
    ap.add_argument("--warmup-steps", type=int, help="linear warm-up steps (no adapter is saved during warm-up)")
    ap.add_argument("--save-every", type=int, help="steps between exported adapters of one run")
    ap.add_argument("--adapters-per-run", type=int, help="adapters exported along each run's trajectory")
    ap.add_argument("--eval-samples", type=int, help="held-out questions scored per task (0: skip)")
    ap.add_argument("--data-dir", help="task data folder (default: $LLGBM_DATA_DIR, else ./data)")
    ap.add_argument("--model", help="base model (default: the preset's)")
    ap.add_argument("--rebuild-stale", action="store_true",
                    help="delete and retrain runs whose recorded data or settings differ from the current ones")
    ap.add_argument("--no-progress", action="store_true")
    add_devices(ap)


def run_zoo(args) -> dict:
    import dataclasses
    import time

    from llgbm_jax.cli.main import offline_unless_hub
    from llgbm_jax.evaluation.unseen import format_kind_table, kind_table
    from llgbm_jax.tasks.registry import leakage_report
    from llgbm_jax.teachers.report import plot_loss_curves, preset_with, summary_table
    from llgbm_jax.teachers.zoo import build_zoo

    cfg = preset_with(args.preset, tasks=args.tasks, runs_per_task=args.runs_per_task, steps=args.steps,
                      warmup_steps=args.warmup_steps, save_every=args.save_every,
                      adapters_per_run=args.adapters_per_run, eval_samples=args.eval_samples, model=args.model)
    if args.data_parallel_devices is not None:
        cfg = dataclasses.replace(cfg, data_parallel_devices=args.data_parallel_devices)
    start_devices(args)
    if not args.tasks:
        cfg, skipped = cfg.with_data(args.data_dir)
        if skipped:
            print(f"skipping {', '.join(skipped)}: no data files (see --data-dir)")
    offline_unless_hub(cfg.model)
    print(f"zoo {args.zoo_dir}: {cfg.model}, tasks {', '.join(cfg.tasks)}, {cfg.runs_per_task} run(s) per task, "
          + ", ".join(f"{t} {len(cfg.teacher_for(t).save_steps())} adapters/run over {cfg.teacher_for(t).steps} steps"
                      for t in cfg.tasks))
    leakage = leakage_report(args.data_dir, cfg.tasks)
    if leakage:
        print("training records whose question is an evaluation question (removed): "
              + ", ".join(f"{t} {r['removed']} of {r['train_records']}" for t, r in leakage.items()))
    t0 = time.perf_counter()
    manifest = build_zoo(args.zoo_dir, cfg, data_dir=args.data_dir, show_progress=not args.no_progress,
                         rebuild_stale=args.rebuild_stale)
    print(f"\n{len(manifest['adapters'])} adapters in {args.zoo_dir}; this call took "
          f"{(time.perf_counter() - t0) / 60:.1f} min. Over all calls that built this zoo: "
          f"{manifest['seconds'] / 60:.1f} min, of which training and export "
          f"{manifest.get('train_seconds', 0) / 60:.1f} "
          f"min and test-set scoring {manifest.get('eval_seconds', 0) / 60:.1f} min; this call compiled "
          f"{manifest['compiled_programs']} XLA programs\n")
    print(summary_table(manifest))
    kinds = kind_table(args.zoo_dir, cfg)
    if kinds:
        print("\nteachers per kind of the task family (cloze, test questions):\n" + format_kind_table(kinds))
    print(f"\nloss curves: {plot_loss_curves(args.zoo_dir, manifest, os.path.join(args.zoo_dir, 'loss_curves.png'))}")
    return manifest


# --- convert ---------------------------------------------------------------------------------------------------


def add_convert(ap):
    sub = ap.add_subparsers(dest="what", metavar="what", required=True)
    p = sub.add_parser("hf-to-jax", help="a base model (embedded name, .gguf, Hugging Face folder or hub id) as an "
                                         "llgbm_jax checkpoint, which loads with no dequantization")
    p.add_argument("source", help="anything load_base_model accepts")
    p.add_argument("out", help="checkpoint folder to write (replaced atomically)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p = sub.add_parser("peft-to-jax", help="a PEFT adapter folder as an llgbm_jax LoRA file (one .safetensors)")
    p.add_argument("adapter", help="PEFT adapter folder")
    p.add_argument("out", help="output .safetensors file")
    p.add_argument("--model", help="base model to check the shapes against")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="convert the factors")
    p = sub.add_parser("export-peft", help="an llgbm_jax LoRA file as a PEFT adapter folder")
    p.add_argument("lora", help="llgbm_jax LoRA file (llgbm_jax.lora.save_lora)")
    p.add_argument("out", help="output PEFT adapter folder (replaced atomically)")
    p.add_argument("--base-model", help="base_model_name_or_path to record")
    p.add_argument("--index", type=int, help="the adapter to export from a batch file")
    p.add_argument("--model", help="base model to check the shapes against")


def run_convert(args) -> str:
    import time

    from llgbm_jax.base import load_base_model
    from llgbm_jax.cli.main import offline_unless_hub
    from llgbm_jax.lora import load_lora, load_peft_adapter, save_lora, save_peft_adapter

    offline_unless_hub(getattr(args, "source", None), args.model if hasattr(args, "model") else None)
    model_config = load_base_model(args.model).config if getattr(args, "model", None) else None
    if args.what == "hf-to-jax":
        from llgbm_jax.base.checkpoint import save_checkpoint

        t0 = time.perf_counter()
        model = load_base_model(args.source, args.dtype, cache=False)
        t_source = time.perf_counter() - t0
        save_checkpoint(args.out, model.config, model.params, model.tokenizer, source=args.source)
        t0 = time.perf_counter()
        load_base_model(args.out, args.dtype)
        print(f"wrote {args.out} ({model.config.model_type}, {model.config.num_layers} layers, {args.dtype}); "
              f"load source: {t_source:.2f} s; load checkpoint: {time.perf_counter() - t0:.2f} s")
    elif args.what == "peft-to-jax":
        lora = load_peft_adapter(args.adapter, model_config, dtype=args.dtype)
        save_lora(lora, args.out)
        print(f"wrote {args.out}: modules {list(lora.modules)}, {lora.num_layers} layers, rank {lora.config.rank} "
              f"(max {lora.config.max_rank}), alpha {lora.config.alpha}, rsLoRA {lora.config.use_rslora}, "
              f"{lora.num_params()} parameters")
    else:
        import jax

        lora = load_lora(args.lora)
        if args.index is not None:
            if lora.batch_shape == ():
                raise ValueError(f"{args.lora} holds one adapter; drop --index")
            lora = jax.tree_util.tree_map(lambda x: x[args.index], lora)
        save_peft_adapter(lora, args.out, args.base_model, model_config=model_config)
        print(f"wrote {args.out}: modules {list(lora.modules)}, {lora.num_layers} layers, rank {lora.config.rank}")
    return args.out


# --- verify ----------------------------------------------------------------------------------------------------


def add_verify(ap):
    sub = ap.add_subparsers(dest="what", metavar="what", required=True)
    p = sub.add_parser("zoo", help="a sample of a zoo's teachers: PEFT loads them and gives our logits")
    p.add_argument("--zoo-dir", default="zoo")
    p.add_argument("--sample", type=int, default=8, help="adapters to check (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=1e-3, help="max |logit difference| allowed (float32)")
    p = sub.add_parser("generated", help="a main-job run's generated adapters: PEFT loads them and scores what we "
                                         "report")
    p.add_argument("--run-dir", required=True, help="a main-job run folder (results.json, generated/<task>/)")
    p.add_argument("--n", type=int, default=100, help="held-out questions per task (capped at results.json's n)")
    p.add_argument("--tasks", nargs="+", help="tasks to check (default: every exported adapter)")
    p.add_argument("--data-dir", help="task data folder (default: the run's)")
    p.add_argument("--tolerance", type=int, default=1, help="allowed |difference| in correct answers")
    p.add_argument("--batch-size", type=int, default=16, help="PyTorch rows per forward / prompts per generate")
    p.add_argument("--torch-threads", type=int, default=1, help="torch threads (more oversubscribe a small CPU)")
    p.add_argument("--out", help="result JSON (default RUN/verify_generated.json)")
    p.add_argument("--no-progress", action="store_true")


def run_verify(args) -> dict:
    from llgbm_jax.cli.main import offline_unless_hub
    from llgbm_jax.evaluation.verify import verify_generated, verify_zoo

    offline_unless_hub()
    if args.what == "zoo":
        return verify_zoo(args.zoo_dir, sample=args.sample, seed=args.seed, tol=args.tol)
    return verify_generated(args.run_dir, n=args.n, tasks=args.tasks, data_dir=args.data_dir, tolerance=args.tolerance,
                            batch_size=args.batch_size, torch_threads=args.torch_threads, out=args.out,
                            show_progress=not args.no_progress)
