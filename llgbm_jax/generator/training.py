"""Training and evaluation of a LoRA generator on a teacher zoo.

`train` runs optax AdamW (linear warm-up from 0.1·lr, cosine decay to 0.01·lr, clipping by global
norm) on `MultiTaskLoss` = ``lambda_weight`` · ΔW (or raw-factor) loss + ``lambda_delta`` · behavioural loss
+ ``lambda_sft`` · end-to-end loss on the tasks' answers, in one
jitted step that also accumulates ``gradient_accumulation_steps`` micro-batches (a `lax.scan`), so the
recorded gradient norm is the one that is clipped. The generator's parameters are a pure dict
(`nnx.split` / `nnx.merge`); orbax checkpoints hold them with the optimizer state, and the JSON side
holds the step, the histories, the data iterator's position and the configuration, so a killed run
resumes exactly where it stopped. A NaN or infinite loss stops the run before anything is saved.

`evaluate` compares generated adapters with held-out teachers: the ΔW loss, ΔW relative error and
cosine per module type (factored, `llgbm_jax.generator.losses`), and, when teacher deltas and probes are given,
the behavioural delta loss and the delta cosines.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from llgbm_jax.generator.config import TrainingConfig
from llgbm_jax.generator.losses import DeltaInputs, MultiTaskLoss
from llgbm_jax.lora.adapter import LoRA
from llgbm_jax.utils import optim
from llgbm_jax.utils.checkpointing import TrainCheckpointer
from llgbm_jax.utils.mesh import data_devices, data_mesh, replicated, split_along

# Fields that may change between a run and its resumption (where things are written, how often).
RESUMABLE_CHANGES = ("checkpoint_dir", "output_dir", "delta_cache_dir", "embedding_cache_dir", "checkpoint_every",
                     "data_parallel_devices", "delta_batch_probes")  # where files go, how work is chunked


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass
class TrainingState:
    """What `train` returns (and checkpoints as JSON beside the parameters)."""

    step: int = 0
    loss_history: list[float] = dataclasses.field(default_factory=list)
    grad_norm_history: list[float] = dataclasses.field(default_factory=list)  # before clipping
    lr_history: list[float] = dataclasses.field(default_factory=list)
    term_histories: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # each loss term
    best_loss: float = float("inf")
    data_state: dict[str, int] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    step_seconds: list[float] = dataclasses.field(default_factory=list)  # wall time of each step (compiles included)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def split_generator(generator) -> tuple[Any, dict, Any]:
    """``(graphdef, params as a pure dict, the rest)``: the trainable parameters are a plain pytree."""
    graphdef, params, rest = nnx.split(generator, nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(params), rest


def fit_statistics(generator, dataset) -> None:
    """The generator's fitted (not trained) statistics, from the training split: the condition normaliser
    (on the pooled prompt embeddings, when conditions are cached embeddings) and the B heads' output scales
    (from the teachers' ΔW size). Deterministic, so a resumed run refits the same values."""
    if dataset.condition == "embeddings":
        generator.fit_condition_normalizer(np.stack([dataset.embeddings[p].mean(0) for p in dataset.pools]))
    generator.fit_output_scale(dataset.teachers)


def _condition(gen, batch: dict):
    if "condition" in batch:
        return gen.condition(batch["condition"])
    return gen.condition_from_tokens(batch["condition_ids"], batch["condition_mask"])


def make_train_step(graphdef, rest, tx: optax.GradientTransformation, loss_fn: Callable):
    """The jitted update: ``step(params, opt_state, teachers, micro_batches, delta) -> (params, opt_state,
    metrics)``. ``teachers`` is the dataset's stacked teacher `LoRA` (kept on the device); ``micro_batches``
    holds the conditions and teacher ``index`` of ``gradient_accumulation_steps`` micro-batches on a
    leading axis; their gradients are averaged (a scan) before clipping and AdamW."""

    def micro_loss(params, teachers, batch, delta):
        gen = nnx.merge(graphdef, params, rest)
        pred = gen(_condition(gen, batch))
        teacher = jax.tree_util.tree_map(lambda x: x[batch["index"]], teachers)
        return loss_fn(pred, teacher, batch.get("teacher_delta"), delta, batch.get("sft"))

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, teachers, micro_batches, delta):
        def body(acc, batch):
            (total, terms), grads = grad_fn(params, teachers, batch, delta)
            return jax.tree_util.tree_map(jnp.add, acc, (total, terms, grads)), None

        k = jax.tree_util.tree_leaves(micro_batches)[0].shape[0]
        first = jax.tree_util.tree_map(lambda x: x[0], micro_batches)
        if k == 1:  # no accumulator to zero and add to
            (total, terms), grads = grad_fn(params, teachers, first, delta)
        else:
            shapes = jax.eval_shape(grad_fn, params, teachers, first, delta)
            zero = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                          (shapes[0][0], shapes[0][1], shapes[1]))
            (total, terms, grads), _ = jax.lax.scan(body, zero, micro_batches)
            total, terms, grads = jax.tree_util.tree_map(lambda x: x / k, (total, terms, grads))
        grad_norm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": total, "grad_norm": grad_norm, **terms}

    return step


def _device_batch(batch: dict) -> dict:
    """The arrays of a collated batch that the step uses."""
    keep = ("condition", "condition_ids", "condition_mask", "index", "teacher", "teacher_delta")
    return {k: batch[k] for k in keep if k in batch}


def _config_changes(saved: dict, config: TrainingConfig) -> list[str]:
    """What changed since ``saved`` (a field a checkpoint predates counts at its default)."""
    now, defaults = config.to_dict(), TrainingConfig().to_dict()
    old = lambda k: saved.get(k, defaults.get(k))
    return [f"{k}: {old(k)!r} -> {now.get(k)!r}" for k in sorted(set(saved) | set(now))
            if k not in RESUMABLE_CHANGES and old(k) != now.get(k)]


def train(generator, dataset, config: TrainingConfig, *, loss: MultiTaskLoss | None = None, model_config=None,
          delta: DeltaInputs | None = None, sft=None, resume: bool = True, show_progress: bool = True,
          stop_after: int | None = None, checkpoint_dir: str | None = None) -> TrainingState:
    """Train ``generator`` (in place) on ``dataset`` (a `RealAdapterDataset`) for ``config.num_steps``
    optimizer updates, after `fit_statistics`. Returns the `TrainingState`.

    Checkpoints go to ``checkpoint_dir`` (default ``config.checkpoint_dir``) every
    ``config.checkpoint_every`` steps and at the end; with ``resume=True`` an existing checkpoint is
    continued exactly (its configuration must match, else `ValueError` naming what changed).
    ``loss`` defaults to `MultiTaskLoss.from_config` of ``config``; ``delta`` (`DeltaInputs`: the base model's
    arrays and the probes) is passed to it inside the step when ``lambda_delta > 0``; with ``lambda_sft > 0``,
    ``sft`` (`SFTData` of the training tasks) gives each step's adapters their tasks' examples and ``delta`` the
    base model's parameters (its probe fields may be None).
    ``stop_after`` ends early after that many steps (tests of resumption).
    """
    from tqdm.auto import tqdm

    if config.lambda_delta > 0 and (delta is None or dataset.teacher_deltas is None):
        raise ValueError("TrainingConfig.lambda_delta > 0 needs probes and base arrays (delta=DeltaInputs(...)) "
                         "and a dataset with teacher_deltas")
    if config.lambda_sft > 0 and (sft is None or delta is None):
        raise ValueError("TrainingConfig.lambda_sft > 0 needs the tasks' examples (sft=SFTData(...)) and the base "
                         "model's parameters (delta=DeltaInputs(params, ...))")
    objective = loss or MultiTaskLoss.from_config(config, model_config)
    tx, schedule = optim.adamw(config.learning_rate, config.warmup_steps, config.num_steps,
                               weight_decay=config.weight_decay, clip_norm=config.max_grad_norm)
    fit_statistics(generator, dataset)
    graphdef, params, rest = split_generator(generator)
    opt_state = tx.init(params)
    state = TrainingState()
    ckpt = TrainCheckpointer(checkpoint_dir or config.checkpoint_dir, max_to_keep=2)
    restored = ckpt.restore({"params": params, "opt_state": opt_state}) if resume else None
    if restored is not None:
        step0, arrays, meta = restored
        changes = _config_changes(meta["config"], config)
        if changes:
            ckpt.close()
            raise ValueError(f"{ckpt.directory}: cannot resume step {step0}: the configuration changed "
                             f"({'; '.join(changes)}); use another checkpoint_dir or resume=False")
        params, opt_state = arrays["params"], arrays["opt_state"]
        state = TrainingState(**meta["state"])
    batches = dataset.batches(config.batch_size, state.data_state or None, teachers=False)
    # Data parallel: micro-batches [k, B, ...] split along B over the mesh; everything else replicated.
    mesh = data_mesh(data_devices(config.batch_size, config.data_parallel_devices))
    params, opt_state = jax.device_put((params, opt_state), replicated(mesh))
    teachers = jax.device_put(dataset.teachers, replicated(mesh))  # once; each step gathers its batch's rows
    if delta is not None:
        delta = jax.device_put(delta, replicated(mesh))
    lrs = np.asarray(jax.vmap(schedule)(jnp.arange(config.num_steps)))  # the learning rate of every step
    step_fn = make_train_step(graphdef, rest, tx, objective)
    k = config.gradient_accumulation_steps
    last_saved = state.step
    t0 = time.perf_counter() - state.seconds

    def save():
        ckpt.save(state.step, {"params": params, "opt_state": opt_state},
                  {"config": config.to_dict(), "state": state.to_dict()})

    def next_micro_batches(step: int):
        micro = [_device_batch(next(batches)) for _ in range(k)]
        if config.lambda_sft > 0:  # each adapter's task examples, drawn by (step, micro-batch)
            for j, b in enumerate(micro):
                b["sft"] = sft.batch([dataset.adapters[i].task for i in b["index"]], step * k + j)
        return jax.device_put(jax.tree_util.tree_map(lambda *xs: np.stack(xs), *micro), split_along(mesh, 1))

    bar = tqdm(total=config.num_steps, initial=state.step, disable=not show_progress, desc="generator")
    last = time.perf_counter()
    try:
        upcoming = next_micro_batches(state.step) if state.step < config.num_steps else None
        while state.step < config.num_steps:
            params, opt_state, m = step_fn(params, opt_state, teachers, upcoming, delta)  # runs asynchronously
            data_state = batches.state()  # the position after this step's batches
            upcoming = next_micro_batches(state.step + 1) if state.step + 1 < config.num_steps else None  # meanwhile
            loss = float(m["loss"])
            step_seconds = time.perf_counter() - last
            if not np.isfinite(loss):
                raise TrainingDiverged(f"step {state.step + 1}: the loss is {loss} (terms: "
                                       f"{ {t: float(v) for t, v in m.items() if t.startswith('loss_')} }); "
                                       f"stopped, the last good checkpoint is step {last_saved} in {ckpt.directory}")
            state.step += 1
            state.loss_history.append(loss)
            state.grad_norm_history.append(float(m["grad_norm"]))
            state.lr_history.append(float(lrs[state.step - 1]))
            for t in objective.active_terms:
                state.term_histories.setdefault(t, []).append(float(m[t]))
            state.best_loss = min(state.best_loss, loss)
            state.data_state = data_state
            state.seconds = time.perf_counter() - t0
            state.step_seconds.append(step_seconds)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}", gnorm=f"{state.grad_norm_history[-1]:.3g}")
            if state.step % config.checkpoint_every == 0 or state.step == config.num_steps:
                save()
                last_saved = state.step
            if stop_after is not None and state.step >= stop_after:
                break
            last = time.perf_counter()
    finally:
        bar.close()
        ckpt.close()
    nnx.update(generator, params)
    return state


# --- evaluation -------------------------------------------------------------------------------------------

def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    return np.sum(a * b, -1) / np.maximum(na * nb, 1e-30)


def delta_w_metrics(pred: LoRA, teacher: LoRA) -> dict[str, Any]:
    """ΔW relative error ‖ΔW_p − ΔW_t‖ / ‖ΔW_t‖ and cosine, per module type (mean over adapters) and
    over all modules, plus the per-adapter cosines over all modules."""
    from llgbm_jax.generator.losses import delta_w_stats

    stats = {m: {k: np.asarray(v, np.float64) for k, v in s.items()} for m, s in delta_w_stats(pred, teacher).items()}
    per_module = {}
    for m, s in stats.items():
        rel = np.sqrt(s["sq_err"] / np.maximum(s["teacher_sq_norm"], 1e-30))
        cos = s["inner"] / np.maximum(np.sqrt(s["pred_sq_norm"] * s["teacher_sq_norm"]), 1e-30)
        per_module[m] = {"relative_error": float(rel.mean()), "cosine": float(cos.mean())}
    tot = {k: sum(s[k] for s in stats.values()) for k in ("sq_err", "pred_sq_norm", "teacher_sq_norm", "inner")}
    cos = tot["inner"] / np.maximum(np.sqrt(tot["pred_sq_norm"] * tot["teacher_sq_norm"]), 1e-30)
    rel = np.sqrt(tot["sq_err"] / np.maximum(tot["teacher_sq_norm"], 1e-30))
    return {"per_module": per_module, "relative_error": float(rel.mean()), "cosine": float(cos.mean()),
            "cosine_per_adapter": np.atleast_1d(cos).tolist()}


def delta_metrics(pred_deltas: np.ndarray, teacher_deltas: np.ndarray) -> dict[str, float]:
    """Behavioural delta cosine (generated vs teacher) statistics and the delta loss (MSE)."""
    cos = _cosines(np.asarray(pred_deltas, np.float64), np.asarray(teacher_deltas, np.float64))
    return {"eval_loss_delta": float(np.mean((pred_deltas - teacher_deltas) ** 2)), "mean_cosine": float(cos.mean()),
            "std_cosine": float(cos.std()), "min_cosine": float(cos.min()), "max_cosine": float(cos.max()),
            "cosine_per_adapter": cos.tolist()}


def generate_batch(generator, batch: dict) -> LoRA:
    """The generator's adapters for a collated batch's conditions."""
    return _generate(generator, _device_batch(batch))


@nnx.jit
def _generate(generator, batch):
    return generator(_condition(generator, batch))


def evaluate(generator, dataset, config: TrainingConfig, *, base_model=None, probes=None, base_hidden=None,
             epoch: int = 0, return_generated: bool = False):
    """Generated adapters against ``dataset``'s teachers (usually the held-out split, conditioned on
    held-out prompts): ``eval_loss`` (the training ΔW loss), ΔW relative error and cosine per module type,
    and with ``base_model`` + ``probes`` and a dataset holding teacher deltas, ``eval_loss_delta`` and
    the behavioural delta cosines (``mean_cosine``, ``std_cosine``, ``min_cosine``, ``max_cosine``).
    ``return_generated=True`` returns ``(metrics, generated LoRA batch, their deltas [N, H] or None)``, the
    adapters in ``dataset`` order, conditioned on ``dataset.sample(i, epoch)["prompts"]``."""
    from llgbm_jax.generator.losses import DeltaWLoss

    loss = DeltaWLoss(config.lora_alpha, config.lora_rank, normalize=config.loss_normalize)
    batch = dataset.collate_fn([dataset.sample(i, epoch) for i in range(len(dataset))])
    pred = generate_batch(generator, batch)
    teacher = batch["teacher"]
    out: dict[str, Any] = {"n_adapters": len(dataset), "adapters": batch["adapter"],
                           "eval_loss": float(loss(pred, teacher)), "delta_w": delta_w_metrics(pred, teacher)}
    got = None
    if base_model is not None and probes is not None and dataset.teacher_deltas is not None:
        from llgbm_jax.conditions.deltas import behavioural_delta

        got = np.asarray(behavioural_delta(base_model, pred, probes, base_hidden,
                                           delta_batch_probes=config.delta_batch_probes))
        out.update(delta_metrics(got, batch["teacher_delta"]))
    return (out, pred, got) if return_generated else out


def plot_training_curves(state, max_grad_norm: float, path: str) -> str:
    """Loss (each term too), gradient norm before clipping with the clip line, and learning rate."""
    from llgbm_jax.utils.figures import pyplot, save_figure

    plt = pyplot()
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
    return save_figure(fig, path)
