"""Pure-function decoder for the Llama family (Llama/SmolLM2, Qwen2/2.5, Qwen3).

``params`` is a pytree of arrays in Hugging Face orientation (``[out, in]``), with the per-layer
weights stacked on a leading layer axis and run under `jax.lax.scan`:

    {"embed": [V, H], "final_norm": [H], "lm_head": [V, H] (untied only),
     "layers": {"input_norm", "post_norm": [L, H], "q_proj".."down_proj": [L, out, in],
                "q_bias", "k_bias", "v_bias": [L, out] (Qwen2), "q_norm", "k_norm": [L, D] (Qwen3)}}

Matmuls run in the parameters' dtype; norms, rotary angles, attention scores and softmax in float32.
Which attention kernel runs (chunked matmuls, cuDNN, splash) is decided in `llgbm_jax.base.attention`.
A `LoRA` passed as ``lora=`` adds ``scaling * (x @ Aᵀ) @ Bᵀ`` beside each target projection (low rank,
never merged; per-layer scalings as `LoRA.scales`); with a leading adapter axis, row i of the batch
uses adapter i.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from llgbm_jax.base import attention
from llgbm_jax.base.config import ModelConfig
from llgbm_jax.lora.adapter import LoRA, check_lora, layer_slices


class KVCache(NamedTuple):
    k: jax.Array  # [L, B, KV, T, D]: heads before time, so attention reads it without transposes
    v: jax.Array  # [L, B, KV, T, D]
    valid: jax.Array  # [B, T] bool: slot holds a real token
    index: jax.Array  # int32 scalar: next slot to write


def init_cache(config: ModelConfig, batch: int, length: int, dtype) -> KVCache:
    shape = (config.num_layers, batch, config.num_kv_heads, length, config.head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch, length), bool),
                   jnp.zeros((), jnp.int32))


def position_ids(attention_mask: jax.Array) -> jax.Array:
    """Positions counted over real tokens only, so padding on either side never shifts them."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return (weight.astype(jnp.float32) * y).astype(x.dtype)


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    d = config.head_dim
    inv = 1.0 / (config.rope_theta ** (np.arange(0, d, 2, dtype=np.float32) / np.float32(d)))
    scaling = dict(config.rope_scaling or ())
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv.astype(np.float32)
    if kind == "linear":
        return (inv / scaling["factor"]).astype(np.float32)
    if kind == "freq_factors":  # per-frequency divisors: a GGUF file's rope_freqs tensor (gguf_file._rope_scaling)
        return (inv / np.asarray(scaling["factors"], np.float32)).astype(np.float32)
    if kind == "llama3":
        factor, lo, hi = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    raise NotImplementedError(f"rope scaling type {kind!r} is not supported")


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x: [B, S, heads, D]; cos/sin: [B, S, D] (float32)."""
    half = x.shape[-1] // 2
    xf = x.astype(jnp.float32)
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    return (xf * cos[:, :, None] + rotated * sin[:, :, None]).astype(x.dtype)


def _project(x, weight, bias=None, lora=None):
    """``x @ Wᵀ (+ bias)``, plus the low-rank LoRA term ``((x @ Aᵀ) * scales) @ Bᵀ`` when ``lora`` is
    ``(A, B, scales)`` for this layer (``scales``: per rank slot, see `LoRAConfig.scales`)."""
    y = jnp.einsum("bsi,oi->bso", x, weight)
    if bias is not None:
        y = y + bias
    if lora is not None:
        a, b, scales = lora
        y = y + _lora_term(a.ndim == 3, x, a.astype(x.dtype), b.astype(x.dtype), scales.astype(x.dtype))
    return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _lora_term(per_row: bool, x, a, b, scales):
    """``((x @ Aᵀ) * scales) @ Bᵀ``; A ``[r, in]``, B ``[out, r]`` (with a leading batch axis if ``per_row``).

    The custom VJP forms the factor gradients as ``[r, ·]`` products, so XLA only transposes
    ``[tokens, r]`` operands; autodiff's ``[out, r]`` form made XLA:CPU transpose the whole
    ``[tokens, out]`` cotangent, about a quarter of a training step. (A custom VJP means reverse mode
    only: ``jax.jvp`` through a LoRA is not supported.)"""
    return _lora_term_fwd(per_row, x, a, b, scales)[0]


def _lora_term_fwd(per_row, x, a, b, scales):
    p = "b" if per_row else ""
    u = jnp.einsum(f"bsi,{p}ri->bsr", x, a)
    return jnp.einsum(f"bsr,{p}or->bso", u * scales, b), (x, a, b, scales, u)


def _lora_term_bwd(per_row, res, g):
    x, a, b, scales, u = res
    p = "b" if per_row else ""
    dt = jnp.einsum(f"bso,{p}or->bsr", g, b)
    du = dt * scales
    db = jnp.swapaxes(jnp.einsum(f"bsr,bso->{p}ro", u * scales, g), -1, -2)
    da = jnp.einsum(f"bsr,bsi->{p}ri", du, x)
    dx = jnp.einsum(f"bsr,{p}ri->bsi", du, a)
    return dx, da, db, jnp.einsum("bsr,bsr->r", dt, u)


_lora_term.defvjp(_lora_term_fwd, _lora_term_bwd)


def _layer(config: ModelConfig, h, lp, ll, cos, sin, attend, layer_cache):
    """One decoder block. ``attend`` is `attention.make_attention`'s function for this call,
    ``layer_cache`` this layer's (k, v) cache or None. Returns the new hidden states and this block's
    new keys/values ``[B, KV, S, D]``."""
    ll = ll or {}
    b, s, _ = h.shape
    nh, nkv, d = config.num_heads, config.num_kv_heads, config.head_dim
    x = rms_norm(h, lp["input_norm"], config.rms_norm_eps)
    q = _project(x, lp["q_proj"], lp.get("q_bias"), ll.get("q_proj")).reshape(b, s, nh, d)
    k = _project(x, lp["k_proj"], lp.get("k_bias"), ll.get("k_proj")).reshape(b, s, nkv, d)
    v = _project(x, lp["v_proj"], lp.get("v_bias"), ll.get("v_proj")).reshape(b, s, nkv, d)
    if config.qk_norm:
        q = rms_norm(q, lp["q_norm"], config.rms_norm_eps)
        k = rms_norm(k, lp["k_norm"], config.rms_norm_eps)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    attn = attend(q, k, v, layer_cache)
    h = h + _project(attn, lp["o_proj"], None, ll.get("o_proj"))
    x = rms_norm(h, lp["post_norm"], config.rms_norm_eps)
    gate = _project(x, lp["gate_proj"], None, ll.get("gate_proj"))
    up = _project(x, lp["up_proj"], None, ll.get("up_proj"))
    h = h + _project(jax.nn.silu(gate) * up, lp["down_proj"], None, ll.get("down_proj"))
    return h, (k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3))  # [B, KV, S, D], the cache's layout


def _run_layers(params, config: ModelConfig, input_ids, attention_mask, lora, positions, cache, remat, keep_kv,
                padding):
    """Embed, run every block, final norm. Returns ``(hidden, new keys/values [L, B, KV, S, D])``;
    the keys/values are ``None`` unless ``keep_kv`` (a plain forward or a training step needs none)."""
    input_ids, attention_mask = jnp.asarray(input_ids), jnp.asarray(attention_mask)
    b = input_ids.shape[0]
    if lora is not None:
        check_lora(lora, config)
        if lora.batch_shape not in ((), (b,)):
            raise ValueError(f"LoRA batch shape {lora.batch_shape} does not match input batch {b}")
    if positions is None:
        positions = position_ids(attention_mask)
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(rope_inv_freq(config))
    angles = jnp.concatenate([angles, angles], axis=-1)
    cos, sin = jnp.cos(angles), jnp.sin(angles)

    attend = attention.make_attention(attention_mask, padding, None if cache is None else cache.valid,
                                      params["embed"].dtype)

    def body(h, xs):
        lp, ll, layer_cache = xs
        h, new_kv = _layer(config, h, lp, ll, cos, sin, attend, layer_cache)
        return h, (new_kv if keep_kv else None)

    if remat:
        body = jax.checkpoint(body, policy=remat_policy(remat))
    # The cache enters as per-layer scan inputs and is only read; the S new keys/values come out of
    # the scan and are written into the cache once (a scan-carried cache is copied layer by layer).
    layer_caches = None if cache is None else (cache.k, cache.v)
    h, new_kv = jax.lax.scan(body, params["embed"][input_ids], (params["layers"], layer_slices(lora), layer_caches))
    return rms_norm(h, params["final_norm"], config.rms_norm_eps), new_kv


REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def remat_policy(remat: bool | str):
    """The `jax.checkpoint` policy of a ``remat`` setting: ``True``/``"full"`` recomputes each layer in
    the backward pass; ``"dots"`` keeps the projections' outputs and recomputes only norms, rotary
    embeddings, attention and activations (faster, more memory: about 5k floats per token and layer)."""
    key = "full" if remat is True else remat
    if key not in REMAT_POLICIES:
        raise ValueError(f"remat must be False, True or one of {sorted(REMAT_POLICIES)}, got {remat!r}")
    return REMAT_POLICIES[key]


def forward(params, config: ModelConfig, input_ids, attention_mask, lora: LoRA | None = None, *,
            positions=None, cache: KVCache | None = None, remat: bool | str = False, padding: str = "any"):
    """Run the decoder. Returns ``(hidden [B, S, H] after the final norm, updated cache or None)``.
    ``remat`` rematerialises each layer in the backward pass (see `remat_policy`). ``padding`` states
    the mask's layout (``"none"``, ``"right"``: every row's real tokens first, or ``"any"``); a fused
    attention kernel is used only where it can express it (`attention.choose_attention`).

    Without a cache, attention is causal over this sequence, restricted to ``attention_mask``.
    With a cache, queries attend to every valid cached slot and causally to the new tokens; the new
    keys/values are written at ``cache.index``. (To start a cache from a prompt, use `prefill`.)
    """
    h, new_kv = _run_layers(params, config, input_ids, attention_mask, lora, positions, cache, remat,
                            keep_kv=cache is not None, padding=padding)
    if cache is None:
        return h, None
    index = cache.index
    write = lambda c, x: jax.lax.dynamic_update_slice(c, x.astype(c.dtype), (0, 0, 0, index, 0))
    valid = jax.lax.dynamic_update_slice(cache.valid, jnp.asarray(attention_mask).astype(bool), (0, index))
    return h, KVCache(write(cache.k, new_kv[0]), write(cache.v, new_kv[1]), valid, index + h.shape[1])


def prefill(params, config: ModelConfig, input_ids, attention_mask, lora: LoRA | None = None, *, length: int,
            positions=None, padding: str = "any") -> tuple[jax.Array, KVCache]:
    """Run a prompt and return ``(hidden, a KVCache of `length` slots holding it)`` (``padding``: see `forward`).

    Unlike `forward` with an empty cache, no attention over (all-masked) empty slots is traced.
    """
    h, (k, v) = _run_layers(params, config, input_ids, attention_mask, lora, positions, None, False, keep_kv=True,
                            padding=padding)
    s = h.shape[1]
    if length < s:
        raise ValueError(f"cache length {length} is shorter than the prompt ({s} tokens)")
    pad = ((0, 0), (0, 0), (0, 0), (0, length - s), (0, 0))
    valid = jnp.pad(jnp.asarray(attention_mask).astype(bool), ((0, 0), (0, length - s)))
    return h, KVCache(jnp.pad(k, pad), jnp.pad(v, pad), valid, jnp.int32(s))


def lm_head(params, config: ModelConfig, hidden):
    """Logits in float32 from final hidden states ``[..., H]``."""
    w = params["embed"] if config.tie_word_embeddings else params["lm_head"]
    return jnp.einsum("...h,vh->...v", hidden, w, preferred_element_type=jnp.float32)


def logits(params, config: ModelConfig, input_ids, attention_mask, lora: LoRA | None = None, *, padding: str = "any"):
    return lm_head(params, config, forward(params, config, input_ids, attention_mask, lora, padding=padding)[0])


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "eos_ids", "pad_id", "padding"))
def generate(params, config: ModelConfig, input_ids, attention_mask, lora: LoRA | None = None, *,
             max_new_tokens: int, eos_ids: tuple[int, ...], pad_id: int, padding: str = "any"):
    """Greedy decoding with a KV cache inside one jitted `lax.while_loop`.

    Works with left or right padding (``padding``: the prompt's, see `forward`). Returns
    ``[B, max_new_tokens]`` new token ids; a row that emitted an end-of-sequence token is filled with
    ``pad_id`` afterwards (as transformers does).
    The loop stops early once every row has finished.
    """
    b, p = input_ids.shape
    pos = position_ids(attention_mask)
    h, cache = prefill(params, config, input_ids, attention_mask, lora, length=p + max_new_tokens, positions=pos,
                       padding=padding)
    last = jnp.max(jnp.where(attention_mask > 0, jnp.arange(p), 0), axis=-1)  # last real token, either side
    first = jnp.argmax(lm_head(params, config, h[jnp.arange(b), last]), axis=-1).astype(jnp.int32)
    next_pos = pos[jnp.arange(b), last] + 1
    eos = jnp.asarray(eos_ids, jnp.int32)

    def cond(state):
        i, _, done, *_ = state
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(state):
        i, tokens, done, tok, pos, cache = state
        tok = jnp.where(done, pad_id, tok)
        tokens = tokens.at[:, i].set(tok)
        done = done | jnp.isin(tok, eos)
        h, cache = forward(params, config, tok[:, None], jnp.ones((b, 1), jnp.int32), lora,
                           positions=pos[:, None], cache=cache)
        nxt = jnp.argmax(lm_head(params, config, h[:, 0]), axis=-1).astype(jnp.int32)
        return i + 1, tokens, done, nxt, pos + 1, cache

    tokens = jnp.full((b, max_new_tokens), pad_id, jnp.int32)
    state = (jnp.int32(0), tokens, jnp.zeros((b,), bool), first, next_pos, cache)
    return jax.lax.while_loop(cond, body, state)[1]
