"""Supervised fine-tuning of a LoRA through the decoder's ``lora=`` argument: the examples, batches and the
jitted step that teachers train with.

The loss is next-token cross-entropy on the response tokens (and the end-of-turn token) only; the
system prompt and question are context. Logits are computed only at the supervised positions, so
the 49k-way output projection costs little for short answers.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from llgbm_jax.base import decoder
from llgbm_jax.lora.adapter import LoRA
from llgbm_jax.tasks.formats import end_of_turn_id


@dataclasses.dataclass(frozen=True)
class SFTExample:
    ids: tuple[int, ...]
    num_prompt: int  # tokens before the first supervised token


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


def target_slots(longest: int) -> int:
    """Target positions for answers of at most ``longest`` tokens: 8, else a multiple of 64 (few shapes)."""
    return _round_up(longest, 8 if longest <= 8 else 64)


def collate(examples: Sequence[SFTExample], pad_id: int, multiple: int = 32, *, width: int | None = None,
            n_targets: int | None = None) -> dict[str, np.ndarray]:
    """Right-padded batch. ``target_pos[b, j]`` is the position whose logits predict ``target_ids[b, j]``.
    ``width`` / ``n_targets`` fix the shapes (default: the examples' own, rounded up)."""
    width = width or _round_up(max(len(e.ids) for e in examples), multiple)
    n_targets = n_targets or target_slots(max(len(e.ids) - e.num_prompt for e in examples))
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


def batch_plan(lengths: Sequence[int], batch_size: int, steps: int, seed: int,
               group_batches: int = 16) -> list[list[int]]:
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
