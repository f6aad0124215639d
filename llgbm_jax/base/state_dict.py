"""Hugging Face tensor names → the decoder's stacked parameter pytree, with shape checks."""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import numpy as np

from llgbm_jax.base.config import ModelConfig

# decoder key -> Hugging Face name inside "model.layers.{i}."
LAYER_KEYS = {
    "input_norm": "input_layernorm.weight",
    "post_norm": "post_attention_layernorm.weight",
    "q_proj": "self_attn.q_proj.weight",
    "k_proj": "self_attn.k_proj.weight",
    "v_proj": "self_attn.v_proj.weight",
    "o_proj": "self_attn.o_proj.weight",
    "gate_proj": "mlp.gate_proj.weight",
    "up_proj": "mlp.up_proj.weight",
    "down_proj": "mlp.down_proj.weight",
    "q_bias": "self_attn.q_proj.bias",
    "k_bias": "self_attn.k_proj.bias",
    "v_bias": "self_attn.v_proj.bias",
    "q_norm": "self_attn.q_norm.weight",
    "k_norm": "self_attn.k_norm.weight",
}


def expected_shapes(config: ModelConfig) -> dict:
    """Per-tensor shapes: top-level keys, and per-layer keys (without the layer axis)."""
    h, d = config.hidden_size, config.head_dim
    layer = {k: (h,) for k in ("input_norm", "post_norm")}
    layer.update(config.module_shapes)
    if config.qkv_bias:
        layer.update(q_bias=(config.num_heads * d,), k_bias=(config.num_kv_heads * d,),
                     v_bias=(config.num_kv_heads * d,))
    if config.qk_norm:
        layer.update(q_norm=(d,), k_norm=(d,))
    top = {"embed": (config.vocab_size, h), "final_norm": (h,)}
    if not config.tie_word_embeddings:
        top["lm_head"] = (config.vocab_size, h)
    return {"top": top, "layer": layer}


def hf_name(key: str, layer: int | None = None) -> str:
    if layer is not None:
        return f"model.layers.{layer}.{LAYER_KEYS[key]}"
    return {"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight", "lm_head": "lm_head.weight"}[key]


def build_params(config: ModelConfig, get: Callable[[str], np.ndarray], has: Callable[[str], bool],
                 source: str, dtype=jnp.float32) -> dict:
    """Collect every tensor by its HF name (``get``/``has``), check its shape, stack the layers.

    Errors name ``source`` (the file or folder) and the tensor.
    """

    def fetch(name: str, shape: tuple) -> np.ndarray:
        if not has(name):
            raise KeyError(f"{source}: missing tensor {name!r}")
        x = get(name)
        if tuple(x.shape) != tuple(shape):
            raise ValueError(f"{source}: tensor {name!r} has shape {tuple(x.shape)}, expected {tuple(shape)}")
        return x

    shapes = expected_shapes(config)
    params = {k: jnp.asarray(fetch(hf_name(k), s), dtype) for k, s in shapes["top"].items()}
    params["layers"] = {
        k: jnp.asarray(np.stack([fetch(hf_name(k, i), s) for i in range(config.num_layers)]), dtype)
        for k, s in shapes["layer"].items()
    }
    return params


def check_params(config: ModelConfig, params: dict, source: str) -> None:
    """Validate a decoder pytree loaded from our own checkpoint format."""
    shapes = expected_shapes(config)
    want = {k: s for k, s in shapes["top"].items()}
    want.update({f"layers.{k}": (config.num_layers, *s) for k, s in shapes["layer"].items()})
    have = {k: v.shape for k, v in params.items() if k != "layers"}
    have.update({f"layers.{k}": v.shape for k, v in params["layers"].items()})
    for k, s in want.items():
        if k not in have:
            raise KeyError(f"{source}: missing tensor {k!r}")
        if tuple(have[k]) != tuple(s):
            raise ValueError(f"{source}: tensor {k!r} has shape {tuple(have[k])}, expected {tuple(s)}")
