"""Teacher LoRAs: supervised fine-tuning of the base model through the decoder's ``lora=`` argument.

One *run* trains one adapter on one chunk of a task's train split and exports PEFT folders at several
steps of its trajectory (after warm-up, every ``save_every`` steps). Several runs per task use
disjoint chunks and different seeds. `build_zoo` runs every (task, run) and writes ``manifest.json``.

The loss is next-token cross-entropy on the response tokens (and the end-of-turn token) only; the
system prompt and question are context. Logits are computed only at the supervised positions, so
the 49k-way output projection costs little for short answers.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import time
import zlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from llgbm_jax import compile_stats, optim
from llgbm_jax.checkpointing import TrainCheckpointer
from llgbm_jax.io_utils import write_json_atomic
from llgbm_jax.lora import ALL_MODULES, LoRA, LoRAConfig, init_lora
from llgbm_jax.models import decoder


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


# --- data ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SFTExample:
    ids: tuple[int, ...]
    num_prompt: int  # tokens before the first supervised token


def end_of_turn_id(base_model) -> int:
    """The token the chat template writes right after an assistant reply (``<|im_end|>`` for SmolLM2 and
    Qwen), provided generation stops on it; otherwise the tokenizer's EOS, else the first EOS id.
    (``eos_token_ids[0]`` alone can be ``<|endoftext|>``: Qwen's generation config lists both.)"""
    return _end_of_turn(base_model.tokenizer, tuple(base_model.eos_token_ids))


@functools.lru_cache(maxsize=8)
def _end_of_turn(tok, eos_ids: tuple[int, ...]) -> int:
    user = [{"role": "user", "content": "Hi"}]
    prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(user + [{"role": "assistant", "content": "OK"}], tokenize=False)
    if full.startswith(prompt + "OK"):
        rest = tok(full[len(prompt) + 2:], add_special_tokens=False)["input_ids"]
        if rest and rest[0] in eos_ids:
            return int(rest[0])
    return int(tok.eos_token_id) if tok.eos_token_id in eos_ids else int(eos_ids[0])


def encode_sft(base_model, task, record: dict, max_seq_len: int) -> SFTExample | None:
    """Chat-formatted prompt + response + end-of-turn token (`end_of_turn_id`), i.e. the chat template's
    rendering of the exchange; None if longer than ``max_seq_len``."""
    tok = base_model.tokenizer
    prompt = tok(task.format_prompt(record, base_model), add_special_tokens=False)["input_ids"]
    response = tok(record["response"], add_special_tokens=False)["input_ids"] + [end_of_turn_id(base_model)]
    if len(prompt) + len(response) > max_seq_len:
        return None
    return SFTExample(tuple(prompt + response), len(prompt))


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def collate(examples: Sequence[SFTExample], pad_id: int, multiple: int = 32) -> dict[str, np.ndarray]:
    """Right-padded batch. ``target_pos[b, j]`` is the position whose logits predict ``target_ids[b, j]``."""
    width = _round_up(max(len(e.ids) for e in examples), multiple)
    longest = max(len(e.ids) - e.num_prompt for e in examples)
    n_targets = _round_up(longest, 8 if longest <= 8 else 64)  # few distinct shapes: few compilations
    b = len(examples)
    out = dict(ids=np.full((b, width), pad_id, np.int32), mask=np.zeros((b, width), np.int32),
               target_pos=np.zeros((b, n_targets), np.int32), target_ids=np.zeros((b, n_targets), np.int32),
               target_mask=np.zeros((b, n_targets), np.float32))
    for i, e in enumerate(examples):
        n, k = len(e.ids), len(e.ids) - e.num_prompt
        out["ids"][i, :n], out["mask"][i, :n] = e.ids, 1
        out["target_pos"][i, :k] = np.arange(e.num_prompt - 1, n - 1)
        out["target_ids"][i, :k] = e.ids[e.num_prompt:]
        out["target_mask"][i, :k] = 1.0
    return out


def batch_plan(lengths: Sequence[int], batch_size: int, steps: int, seed: int, group_batches: int = 16) -> list[list[int]]:
    """Indices of the examples of every step: epochs of a seeded shuffle; within windows of
    ``group_batches`` batches, examples are sorted by length (less padding) and batches re-shuffled."""
    rng = np.random.default_rng(seed)
    plan: list[list[int]] = []
    n = len(lengths)
    if n < batch_size:
        raise ValueError(f"{n} training examples are fewer than one batch of {batch_size}")
    while len(plan) < steps:
        order = rng.permutation(n)
        usable = (n // batch_size) * batch_size
        window = batch_size * group_batches
        epoch = []
        for start in range(0, usable, window):
            chunk = sorted(order[start:min(start + window, usable)], key=lambda i: lengths[i])
            epoch += [list(map(int, chunk[j:j + batch_size])) for j in range(0, len(chunk), batch_size)]
        rng.shuffle(epoch)
        plan += epoch
    return plan[:steps]


# --- loss and step ------------------------------------------------------------------------------

def sft_loss(lora: LoRA, params, config, batch: dict, remat: bool | str = "dots") -> jax.Array:
    """Mean cross-entropy of the supervised tokens. ``batch`` is right padded (`collate`), which lets
    the forward use a fused attention kernel where there is one."""
    h, _ = decoder.forward(params, config, batch["ids"], batch["mask"], lora, remat=remat, padding="right")
    h = jnp.take_along_axis(h, batch["target_pos"][..., None], axis=1)
    logp = jax.nn.log_softmax(decoder.lm_head(params, config, h), axis=-1)
    nll = -jnp.take_along_axis(logp, batch["target_ids"][..., None], axis=-1)[..., 0]
    return jnp.sum(nll * batch["target_mask"]) / jnp.maximum(jnp.sum(batch["target_mask"]), 1.0)


@functools.partial(jax.jit, static_argnames=("config", "tx", "remat"), donate_argnums=(0, 1))
def train_step(lora: LoRA, opt_state, params, config, tx: optax.GradientTransformation, batch: dict,
               remat: bool | str = "dots"):
    loss, grads = jax.value_and_grad(sft_loss)(lora, params, config, batch, remat)
    updates, opt_state = tx.update(grads, opt_state, lora)
    return optax.apply_updates(lora, updates), opt_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}


# --- one run --------------------------------------------------------------------------------------

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


def fingerprint(obj) -> str:
    """SHA-256 of the canonical JSON of ``obj`` (records, configurations)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=list).encode()).hexdigest()


def model_identity(base_model) -> dict[str, str]:
    return {"name": base_model.name, "config": fingerprint(base_model.config.to_dict()),
            "dtype": str(np.dtype(base_model.dtype))}


def start_record(base_model, task, records: Sequence[dict], cfg: TeacherConfig, seed: int) -> dict[str, Any]:
    """Everything that decides a run's adapters: the task's definition and leakage rule, the exact
    training records (count and `fingerprint`, in order), the `TeacherConfig`, the seed and the base
    model. Stored in ``run_dir/run.json``; `start_record_changes` compares against it."""
    from llgbm_jax.tasks import LEAKAGE_RULE

    definition = dataclasses.asdict(task) if dataclasses.is_dataclass(task) else {"name": task.name}
    record = {"task": {**definition, "leakage_rule": LEAKAGE_RULE}, "teacher": dataclasses.asdict(cfg), "seed": seed,
              "data": {"records": len(records), "fingerprint": fingerprint(list(records))},
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
    with open(path) as f:
        old, new = _flatten(json.load(f)), _flatten(record)
    return [f"{k}: {old.get(k, '(absent)')} -> {new.get(k, '(absent)')}" for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k)]


def train_run(base_model, task, records: Sequence[dict], cfg: TeacherConfig, run_dir: str, *, seed: int,
              on_adapter=None, show_progress: bool = True, stop_after: int | None = None,
              data_info: dict | None = None) -> RunResult:
    """Train one adapter on ``records``; export a PEFT folder at every step of ``cfg.save_steps()``
    to ``run_dir/step_XXXXX`` (with ``prompts.json`` and ``metrics.json``, which also records
    ``data_info``: where ``records`` came from, and their fingerprint). Writes ``run_dir/history.json``
    (loss, gradient norm and lr per step) when it ends. Resumes from the orbax state in
    ``run_dir/state`` if a previous run was killed; a run folder started with another configuration,
    seed, task, base model or other records (`start_record`) raises `StaleRunError` naming what
    changed. ``stop_after`` ends early (tests)."""
    from tqdm.auto import tqdm

    from llgbm_jax.peft_io import save_peft_adapter

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
    save_steps = set(cfg.save_steps())
    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not show_progress,
               desc=f"{task.name} {os.path.basename(run_dir)}")
    for step in bar:
        batch = collate([examples[i] for i in plan[step]], base_model.pad_token_id)
        lora, opt_state, m = train_step(lora, opt_state, base_model.params, base_model.config, tx, batch, cfg.remat)
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


def read_manifest(zoo_dir: str) -> dict[str, Any]:
    path = os.path.join(zoo_dir, "manifest.json")
    if not os.path.exists(path):
        return {"adapters": []}
    with open(path) as f:
        return json.load(f)


# --- the zoo --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ZooConfig:
    """What `build_zoo` trains: tasks × runs, each run exporting ``teacher.adapters_per_run`` adapters."""

    model: str = "smollm2-135m-instruct"
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

    def teacher_for(self, task: str) -> TeacherConfig:
        return dataclasses.replace(self.teacher, **dict(dict(self.task_overrides).get(task, ())))

    def eval_samples_for(self, task) -> int:
        """Held-out questions scored for ``task`` (a `Task`): its entry in ``eval_overrides``, else
        ``gsm8k_eval_samples`` for GSM8K and ``eval_samples`` for the rest."""
        default = self.gsm8k_eval_samples if task.task_type == "gsm8k" else self.eval_samples
        return dict(self.eval_overrides).get(task.name, default)


PRESETS = {
    # The embedded SmolLM2-135M on this 2-core CPU, 1 trajectory x 8 adapters per task. ARC-e and OBQA in cloze
    # form (answer texts): in letter form a 135M model's teachers learn only the label prior (README, "Teacher
    # zoo"). ARC-e cloze, the one real-data task whose teachers gain: 96 steps, 400 scored questions (its gain
    # is about 0.09, so fewer would not show it). BoolQ, OBQA and GSM8K teachers do not gain at 135M: 24 steps
    # and 32 (GSM8K 8) scored questions keep them in the zoo cheaply. Eight tasks of the generated family
    # (`llgbm_jax.task_family`): 24 steps, 64 questions, cloze only (exact match is in the family experiment).
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
    # Qwen2.5-0.5B-Instruct on an accelerator: every task, 4 runs on disjoint chunks, longer training.
    "gpu": ZooConfig(
        model="Qwen/Qwen2.5-0.5B-Instruct", runs_per_task=4, eval_samples=1000, gsm8k_eval_samples=319,
        teacher=TeacherConfig(steps=400, warmup_steps=20, save_every=40, batch_size=16, learning_rate=3e-4,
                              max_seq_len=512, remat=True),  # "dots" would keep ~10 GB of activations here
    ),
}


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
    from llgbm_jax.evaluation import compute_accuracy_with_lora, exact_match_accuracy, paired_gain
    from llgbm_jax.models import load_base_model
    from llgbm_jax.peft_io import load_peft_adapter
    from llgbm_jax.tasks import get_task, leakage_report

    t_start, compiles = time.perf_counter(), compile_stats.snapshot()
    base_model = base_model or load_base_model(cfg.model)
    manifest = read_manifest(zoo_dir)
    manifest.update(model=cfg.model, config=json.loads(json.dumps(dataclasses.asdict(cfg), default=list)),
                    leakage=leakage_report(data_dir, cfg.tasks))
    # Tasks dropped from ``cfg`` leave the manifest (their folders stay on disk, unused).
    manifest["adapters"] = [a for a in manifest.get("adapters", []) if a["task"] in cfg.tasks]
    base_cache = manifest.setdefault("base_accuracy", {})
    for name in set(base_cache) - set(cfg.tasks):
        del base_cache[name]
    summary = []

    def eval_key(task, records) -> str:
        gsm8k = task.task_type == "gsm8k"
        return fingerprint({"questions": list(records[:cfg.eval_samples_for(task)]),
                            "base_model": model_identity(base_model),
                            "max_new_tokens": cfg.gsm8k_max_new_tokens if gsm8k else None,
                            "exact_match": with_exact_match(task)})

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
            out["exact_match"] = {k: em[k] for k in ("accuracy", "correct", "total", "ci95", "seconds", "max_new_tokens")}
        return out

    def hits(path):
        with open(path) as f:
            return [d["correct"] for d in json.load(f)]

    # What every run is started with now: stale run folders are refused (or deleted) before any work.
    plans, stale = [], {}
    for task_name in cfg.tasks:
        task, tcfg = get_task(task_name, data_dir), cfg.teacher_for(task_name)
        train = task.load("train", data_dir)
        chunks = chunk_records(train, cfg.runs_per_task, cfg.seed)
        seeds = [cfg.seed + 1000 * run + zlib.crc32(task_name.encode()) % 997 for run in range(len(chunks))]
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
            + "\nRetrain them with `python experiments/train_teachers.py --rebuild-stale` (build_zoo(..., "
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
                                   data_info={"split": "train", "chunk": run, "num_chunks": len(chunks),
                                              "chunk_seed": cfg.seed, "chunk_records": len(chunk),
                                              "train_records": len(train)})
                manifest["train_seconds"] = manifest.get("train_seconds", 0.0) + result.seconds
            with open(os.path.join(final, "metrics.json")) as f:
                final_metrics = json.load(f)
            base_details = os.path.join(zoo_dir, task_name, "base_test_details.json")
            final_details = os.path.join(final, "test_details.json")
            if eval_records:
                key = eval_key(task, eval_records)
                if not is_current(base_cache.get(task_name), base_details, key):
                    base_cache[task_name] = evaluate(None, task, eval_records, base_details)
                if not is_current(final_metrics.get("test_accuracy"), final_details, key):
                    final_metrics["test_accuracy"] = evaluate(load_peft_adapter(final), task, eval_records,
                                                              final_details)
                    write_json_atomic(os.path.join(final, "metrics.json"), final_metrics)
            entries = []
            for step in tcfg.save_steps():
                rel = os.path.relpath(os.path.join(run_dir, f"step_{step:05d}"), zoo_dir)
                with open(os.path.join(zoo_dir, rel, "metrics.json")) as f:
                    metrics = json.load(f)
                entries.append({"task": task_name, "task_type": task.task_type, "run": run_name, "step": step,
                                "path": rel, "prompts": os.path.join(rel, "prompts.json"),
                                "history": os.path.relpath(os.path.join(run_dir, "history.json"), zoo_dir),
                                "metrics": metrics})
            manifest["adapters"] = [a for a in manifest["adapters"]
                                    if (a["task"], a["run"]) != (task_name, run_name)] + entries
            write_json_atomic(os.path.join(zoo_dir, "manifest.json"), manifest)
            if eval_records:
                acc = final_metrics["test_accuracy"]
                summary.append({"task": task_name, "run": run_name, "n": acc["total"],
                                "base": base_cache[task_name]["accuracy"], "teacher": acc["accuracy"],
                                "teacher_ci95": acc["ci95"], **paired_gain(hits(base_details), hits(final_details))})
                if "exact_match" in acc:
                    summary[-1].update(base_exact_match=base_cache[task_name]["exact_match"]["accuracy"],
                                       teacher_exact_match=acc["exact_match"]["accuracy"])
    manifest["summary"] = summary
    manifest["seconds"] = manifest.get("seconds", 0.0) + time.perf_counter() - t_start
    manifest["compiled_programs"] = (compile_stats.snapshot() - compiles).programs
    write_json_atomic(os.path.join(zoo_dir, "manifest.json"), manifest)
    return manifest
