"""`FunctionalLoRA`: the research notebook's name for "run the base model with this LoRA".

A thin wrapper over the decoder's ``lora=`` argument (no second implementation, no hooks): the base
weights stay untouched and the output is a pure, differentiable function of the `LoRA`.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax

from llgbm_jax.base import decoder
from llgbm_jax.lora.adapter import ALL_MODULES, LoRA, LoRAConfig, init_lora, zeros_lora


class FunctionalLoRA:
    """Apply `LoRA` adapters of one shape to ``base_model`` (a `BaseModel`).

    ``forward_with_lora(lora, ids, mask)`` works for one adapter or a batch of adapters (one per row),
    inside `jax.jit`, `jax.grad` and `jax.vmap`.
    """

    def __init__(self, base_model, lora_rank: int = 16, lora_alpha: float = 32,
                 target_modules: Sequence[str] | None = None, use_rslora: bool = False):
        self.base_model = base_model
        self.config = LoRAConfig(rank=lora_rank, alpha=lora_alpha,
                                 target_modules=tuple(target_modules or ALL_MODULES), use_rslora=use_rslora)

    @property
    def scaling(self) -> float:
        return self.config.scaling

    def zeros(self, dtype=None) -> LoRA:
        """An adapter with every factor zero (the base model's function)."""
        return zeros_lora(self.base_model.config, self.config, dtype or self.base_model.dtype)

    def init(self, key, *, random_b: bool = False, dtype=None) -> LoRA:
        """PEFT's initialisation (see `init_lora`)."""
        return init_lora(key, self.base_model.config, self.config, random_b=random_b,
                         dtype=dtype or self.base_model.dtype)

    def forward_with_lora(self, lora: LoRA, input_ids, attention_mask, return_hidden: bool = False) -> jax.Array:
        """Logits ``[B, S, V]`` (float32) of the base model with ``lora``; with ``return_hidden=True`` the
        final hidden states ``[B, S, H]`` (after the final norm) instead, skipping the output head.
        Any `LoRA` that fits the base model works (e.g. one read with `load_peft_adapter`)."""
        return _forward(self.base_model.params, self.base_model.config, input_ids, attention_mask, lora,
                        return_hidden)

    __call__ = forward_with_lora


@functools.partial(jax.jit, static_argnames=("config", "return_hidden"))
def _forward(params, config, input_ids, attention_mask, lora, return_hidden):
    hidden = decoder.forward(params, config, input_ids, attention_mask, lora)[0]
    return hidden if return_hidden else decoder.lm_head(params, config, hidden)
