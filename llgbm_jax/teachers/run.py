"""One teacher *run*: a LoRA trained on one chunk of a task's train split (`llgbm_jax.teachers.sft`), exporting
PEFT folders at several steps of its trajectory (after warm-up, every ``save_every`` steps), resumable from
orbax state, and refusing to resume a run that was started with other data or settings.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Sequence

import jax
import numpy as np

from llgbm_jax.lora.adapter import ALL_MODULES, LoRAConfig, init_lora
from llgbm_jax.teachers.sft import batch_plan, collate, encode_sft, train_step
from llgbm_jax.utils import optim
from llgbm_jax.utils.checkpointing import TrainCheckpointer
from llgbm_jax.utils.io import content_key, read_json, write_json_atomic
from llgbm_jax.utils.mesh import BatchPlacer


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """Hyper-parameters of one teacher run (shared by every run of a task)."""

    rank: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] = ALL_MODULES
    learning_rate: float = 5e-4
    weight_decay: float = 0.0
    batch_size: int = 8
    steps: int = 120
    warmup_steps: int = 10
    save_every: int = 10  # trajectory adapters at steps - k*save_every, k < adapters_per_run
    adapters_per_run: int = 8
    checkpoint_every: int = 20  # orbax state for resuming
    max_seq_len: int = 320
    clip_norm: float = 1.0
    remat: bool | str = "dots"  # decoder.remat_policy; 3.53 against 3.76 s/step for full remat
    seed: int = 0

    def save_steps(self) -> list[int]:
        steps = [self.steps - k * self.save_every for k in range(self.adapters_per_run)]
        steps = sorted(s for s in steps if s > self.warmup_steps)
        if len(steps) < self.adapters_per_run:
            raise ValueError(f"{self.adapters_per_run} adapters every {self.save_every} steps do not fit after "
                             f"{self.warmup_steps} warm-up steps in {self.steps} steps")
        return steps



@dataclasses.dataclass
class RunResult:
    adapters: list[dict]  # {"step", "path", "train_loss"}
    history: dict[str, list[float]]
    seconds: float


@functools.lru_cache(maxsize=32)
def _optimizer(lr: float, warmup_steps: int, steps: int, weight_decay: float, clip_norm: float):
    """One optax transformation per setting: it is a static argument of `train_step`, so runs that
    share a setting share its compilations."""
    return optim.adamw(lr, warmup_steps, steps, weight_decay=weight_decay, clip_norm=clip_norm)


# --- what a run was started with ---------------------------------------------------------------------

START_RECORD = "run.json"


class StaleRunError(ValueError):
    """A run folder holds a run started with another configuration, data or base model."""


def model_identity(base_model) -> dict[str, str]:
    return {"name": base_model.name, "config": content_key(base_model.config.to_dict()),
            "dtype": str(np.dtype(base_model.dtype))}


def start_record(base_model, task, records: Sequence[dict], cfg: TeacherConfig, seed: int) -> dict[str, Any]:
    """Everything that decides a run's adapters: the task's definition and leakage rule, the exact
    training records (count and `fingerprint`, in order), the `TeacherConfig`, the seed and the base
    model. Stored in ``run_dir/run.json``; `start_record_changes` compares against it."""
    from llgbm_jax.tasks.registry import LEAKAGE_RULE

    definition = dataclasses.asdict(task) if dataclasses.is_dataclass(task) else {"name": task.name}
    record = {"task": {**definition, "leakage_rule": LEAKAGE_RULE}, "teacher": dataclasses.asdict(cfg), "seed": seed,
              "data": {"records": len(records), "fingerprint": content_key(list(records))},
              "base_model": model_identity(base_model)}
    return json.loads(json.dumps(record, default=list))  # as it reads back from run.json


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def start_record_changes(run_dir: str, record: dict) -> list[str]:
    """How ``record`` differs from the start record in ``run_dir``, one ``"key: old -> new"`` per
    field; empty when they are equal or the folder holds no run yet."""
    path = os.path.join(run_dir, START_RECORD)
    if not os.path.exists(path):
        if os.path.isdir(run_dir) and os.listdir(run_dir):
            return [f"{START_RECORD} is missing (the run predates start records), so what it was trained on "
                    f"is unknown"]
        return []
    old, new = _flatten(read_json(path)), _flatten(record)
    return [f"{k}: {old.get(k, '(absent)')} -> {new.get(k, '(absent)')}" for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k)]


def train_run(base_model, task, records: Sequence[dict], cfg: TeacherConfig, run_dir: str, *, seed: int,
              on_adapter=None, show_progress: bool = True, stop_after: int | None = None,
              data_info: dict | None = None, data_parallel_devices: int | None = None) -> RunResult:
    """Train one adapter on ``records``; export a PEFT folder at every step of ``cfg.save_steps()``
    to ``run_dir/step_XXXXX`` (with ``prompts.json`` and ``metrics.json``, which also records
    ``data_info``: where ``records`` came from, and their fingerprint). Writes ``run_dir/history.json``
    (loss, gradient norm and lr per step) when it ends. Resumes from the orbax state in
    ``run_dir/state`` if a previous run was killed; a run folder started with another configuration,
    seed, task, base model or other records (`start_record`) raises `StaleRunError` naming what
    changed. ``stop_after`` ends early (tests).

    Each batch is split over a mesh of ``data_parallel_devices`` devices (default: as many as divide the batch
    size, `llgbm_jax.utils.mesh.data_devices`), the adapter and optimiser state replicated: the same adapters on
    one device and on many, within float tolerance. Not part of the start record: a run may resume on another
    mesh."""
    from tqdm.auto import tqdm

    from llgbm_jax.lora.peft import save_peft_adapter

    record = start_record(base_model, task, records, cfg, seed)
    changes = start_record_changes(run_dir, record)
    if changes:
        raise StaleRunError(f"{run_dir} holds a run started differently; resuming would mix the two. Changed: "
                            + "; ".join(changes) + ". Delete the folder to start afresh, or restore what changed.")
    if not os.path.exists(os.path.join(run_dir, START_RECORD)):
        write_json_atomic(os.path.join(run_dir, START_RECORD), record)

    examples, kept = [], []
    for r in records:
        e = encode_sft(base_model, task, r, cfg.max_seq_len)
        if e is not None:
            examples.append(e)
            kept.append(r)
    plan = batch_plan([len(e.ids) for e in examples], cfg.batch_size, cfg.steps, seed)
    lcfg = LoRAConfig(rank=cfg.rank, alpha=cfg.alpha, target_modules=tuple(cfg.target_modules))
    lora = init_lora(jax.random.PRNGKey(seed), base_model.config, lcfg)
    tx, schedule = _optimizer(cfg.learning_rate, cfg.warmup_steps, cfg.steps, cfg.weight_decay, cfg.clip_norm)
    opt_state = tx.init(lora)
    history: dict[str, list[float]] = {"loss": [], "grad_norm": [], "lr": []}
    adapters: list[dict] = []
    start = 0
    ckpt = TrainCheckpointer(os.path.join(run_dir, "state"))
    restored = ckpt.restore({"lora": lora, "opt_state": opt_state})
    if restored is not None:
        start, state, meta = restored
        lora, opt_state = state["lora"], state["opt_state"]
        history, adapters = meta["history"], meta["adapters"]
    placer = BatchPlacer(cfg.batch_size, data_parallel_devices)  # the base model replicated once, for every run
    lora, opt_state = placer.shared((lora, opt_state))
    params = placer.params(base_model)
    save_steps = set(cfg.save_steps())
    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not show_progress,
               desc=f"{task.name} {os.path.basename(run_dir)}")
    for step in bar:
        batch = placer.rows(collate([examples[i] for i in plan[step]], base_model.pad_token_id))
        lora, opt_state, m = train_step(lora, opt_state, params, base_model.config, tx, batch, cfg.remat)
        history["loss"].append(float(m["loss"]))
        history["grad_norm"].append(float(m["grad_norm"]))
        history["lr"].append(float(schedule(step)))
        bar.set_postfix(loss=f"{history['loss'][-1]:.3f}")
        done = step + 1
        if done in save_steps:
            path = os.path.join(run_dir, f"step_{done:05d}")
            seen = sorted({i for s in plan[:done] for i in s})
            save_peft_adapter(lora, path, base_model_name_or_path=base_model.name)
            write_json_atomic(os.path.join(path, "prompts.json"), [kept[i]["prompt"] for i in seen])
            metrics = {"task": task.name, "step": done, "seed": seed,
                       "train_loss": float(np.mean(history["loss"][-cfg.save_every:])),
                       "examples_seen": len(seen), "examples": len(examples),
                       "too_long_dropped": len(records) - len(examples),
                       "data": {**(data_info or {}), **record["data"], "leakage_rule": record["task"]["leakage_rule"]}}
            write_json_atomic(os.path.join(path, "metrics.json"), metrics)
            adapters.append({"step": done, "path": path, "train_loss": metrics["train_loss"]})
            if on_adapter is not None:
                on_adapter(lora, path, metrics)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            ckpt.save(done, {"lora": lora, "opt_state": opt_state}, {"history": history, "adapters": adapters})
        if stop_after is not None and done >= stop_after:
            break
    bar.close()
    ckpt.close()
    write_json_atomic(os.path.join(run_dir, "history.json"), history)
    return RunResult(adapters=adapters, history=history, seconds=time.perf_counter() - t0)


def chunk_records(records: Sequence[dict], num_runs: int, seed: int) -> list[list[dict]]:
    """Disjoint chunks of a shuffled train split, one per run."""
    order = np.random.default_rng(seed).permutation(len(records))
    return [[records[i] for i in part] for part in np.array_split(order, num_runs)]
