"""Attention for the decoder: which kernel runs is decided here, once per traced call.

Every path computes the decoder's attention: grouped-query heads, causal among the new tokens and
restricted to the attention mask, an optional KV-cache block before them, scores and softmax
statistics in float32, finite outputs for fully masked (padding) query rows.

- ``"chunked"``: plain batched matmuls in query chunks of `QUERY_CHUNK` (any mask, any dtype, the
  KV cache); the path for everything a fused kernel cannot express.
- ``"cudnn"``: `jax.nn.dot_product_attention(implementation="cudnn")`, cuDNN's flash attention on a
  CUDA GPU; bfloat16/float16 only; the padding must be on the right (``key_value_seq_lengths``).
- ``"xla"``: the same call with ``implementation="xla"``: any backend and dtype, right padding.
  Never chosen by ``"auto"``; it runs cuDNN's argument plumbing where there is no GPU (tests).
- ``"splash"``: Pallas splash attention (TPU), padding on either side as segment ids; off TPU it
  runs in Pallas interpret mode (slow; tests).

`choose_attention` is the rule; the setting ``LLGBM_ATTENTION`` (environment) or `use_attention`
(context manager) forces a path where it can express the case. Padding is a static fact the caller
states (``padding="none" | "right" | "any"``; `padding_for` reads it from a concrete mask).
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

QUERY_CHUNK = 32
IMPLEMENTATIONS = ("chunked", "xla", "cudnn", "splash")
SETTINGS = ("auto",) + IMPLEMENTATIONS
PADDINGS = ("none", "right", "any")  # no padding; each row's real tokens first; anything else
ENV_VAR = "LLGBM_ATTENTION"
HALF_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))

_NEG = -1e30  # finite mask value: a fully masked (padding) query row gives uniform weights, not NaN
_forced: str | None = None


def attention_setting() -> str:
    """The current setting: `use_attention`'s, else ``$LLGBM_ATTENTION``, else ``"auto"``."""
    value = _forced or os.environ.get(ENV_VAR) or "auto"
    if value not in SETTINGS:
        raise ValueError(f"{ENV_VAR}={value!r}: expected one of {SETTINGS}")
    return value


@contextlib.contextmanager
def use_attention(setting: str):
    """Force an attention path inside the block (``"auto"`` restores the rule). The choice is made
    when a function is traced, so jit caches are cleared on entry and exit: nothing compiled under
    another setting is reused."""
    global _forced
    if setting not in SETTINGS:
        raise ValueError(f"attention setting must be one of {SETTINGS}, got {setting!r}")
    previous, _forced = _forced, setting
    jax.clear_caches()
    try:
        yield
    finally:
        _forced = previous
        jax.clear_caches()


def current_backend() -> str:
    """``jax.default_backend()``, with ``"rocm"`` told apart from CUDA's ``"gpu"`` (no cuDNN there)."""
    backend = jax.default_backend()
    if backend == "gpu" and "rocm" in jax.devices()[0].client.platform_version.lower():
        return "rocm"
    return backend


def choose_attention(backend: str, dtype, padding: str, has_cache: bool, setting: str = "auto") -> str:
    """The path for one attention call: ``"chunked"``, ``"cudnn"``, ``"xla"`` or ``"splash"``.

    ``"auto"``: cuDNN on a CUDA GPU for bfloat16/float16 without left padding; splash on TPU for
    bfloat16/float16 (either padding); chunked otherwise. A KV cache (its valid-slot mask) always takes
    the chunked path. A forced path is used wherever it can express the case, chunked elsewhere
    (``"cudnn"`` off a CUDA GPU is an error)."""
    if setting not in SETTINGS:
        raise ValueError(f"attention setting must be one of {SETTINGS}, got {setting!r}")
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    if setting == "cudnn" and backend != "gpu":
        raise ValueError(f"attention 'cudnn' needs a CUDA GPU; the JAX backend is {backend!r}")
    half = jnp.dtype(dtype) in HALF_DTYPES
    no_left = padding in ("none", "right")
    if has_cache or setting == "chunked":
        return "chunked"
    if setting == "auto":
        if backend == "gpu" and half and no_left:
            return "cudnn"
        return "splash" if backend == "tpu" and half else "chunked"
    if setting == "cudnn":
        return "cudnn" if half and no_left else "chunked"
    if setting == "xla":
        return "xla" if no_left else "chunked"
    return "splash"


def padding_of(attention_mask) -> str:
    """``"none"``, ``"right"`` or ``"any"`` for a concrete ``[B, S]`` mask; ``"any"`` for a traced one."""
    if isinstance(attention_mask, jax.core.Tracer):
        return "any"
    m = np.asarray(attention_mask).astype(bool)
    if m.all():
        return "none"
    return "right" if (m[:, :-1] >= m[:, 1:]).all() else "any"


def padding_for(attention_mask, dtype) -> str:
    """The static ``padding`` to pass with a concrete mask: its layout (`padding_of`) where that changes
    the path chosen now, else ``"any"``, so that where it does not (a CPU) each shape compiles once."""
    padding = padding_of(attention_mask)
    impl = choose_attention(current_backend(), dtype, padding, False, attention_setting())
    return "any" if impl in ("chunked", "splash") else padding


def make_attention(attention_mask, padding: str, cache_valid=None, dtype=jnp.float32) -> Callable:
    """Choose the path for this call and build its masks once (shared by every layer).

    ``attention_mask`` ``[B, S]`` of the new tokens; ``cache_valid`` ``[B, T]`` or None. Returns
    ``attend(q [B,S,H,D], k, v [B,S,KV,D], layer_cache (k, v [B,KV,T,D]) or None) -> [B, S, H*D]``
    with the path's name as ``attend.implementation``."""
    impl = choose_attention(current_backend(), dtype, padding, cache_valid is not None, attention_setting())
    mask = jnp.asarray(attention_mask).astype(bool)
    b, s = mask.shape
    if impl == "chunked":
        new_allowed = mask[:, None, :] & jnp.tril(jnp.ones((s, s), bool))[None]  # causal among the new tokens
        cache_allowed = None if cache_valid is None else jnp.broadcast_to(cache_valid[:, None, :],
                                                                          (b, s, cache_valid.shape[1]))

        def attend(q, k, v, layer_cache):
            blocks = [(k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), new_allowed)]
            if layer_cache is not None:
                blocks.insert(0, (*layer_cache, cache_allowed))
            return attend_chunked(q, blocks)
    elif impl == "splash":
        interpret = current_backend() != "tpu"
        attend = lambda q, k, v, _: attend_splash(q, k, v, mask, interpret=interpret)
    else:
        # At least one key per row, so a row of padding only (ignored downstream) cannot give NaN.
        lengths = None if padding == "none" else jnp.maximum(jnp.sum(mask, axis=-1, dtype=jnp.int32), 1)

        def attend(q, k, v, _):
            out = jax.nn.dot_product_attention(q, k, v, is_causal=True, key_value_seq_lengths=lengths,
                                               implementation=impl)
            return out.reshape(b, s, -1)
    attend.implementation = impl
    return attend


# --- the chunked path -----------------------------------------------------------------------------

def attend_chunked(q, blocks, query_chunk: int = QUERY_CHUNK):
    """Grouped-query attention of q ``[B,S,H,D]`` over key/value blocks ``(k, v, allowed)`` with
    k, v ``[B,KV,T,D]`` and ``allowed`` ``[B,S,T]``, under one softmax. A KV cache and the new
    tokens are separate blocks, so the cache is only read, never copied to insert new keys.

    The last block is the new tokens' own, under a causal mask. Queries run in chunks of
    ``query_chunk``: chunk ``[s0, s1)`` reads only new keys ``[0, s1)``, which skips the masked half of
    the work and keeps each chunk's scores in cache (`benchmarks/attention.py`: at 8 x 448 tokens the
    forward and the gradient take about 0.57x the time of one softmax on a CPU)."""
    s = q.shape[1]
    if s <= query_chunk:
        return _attend_chunk(q, blocks)
    *context, (k, v, allowed) = blocks
    out = []
    for s0 in range(0, s, query_chunk):
        s1 = min(s0 + query_chunk, s)
        chunk_blocks = [(ck, cv, ca[:, s0:s1]) for ck, cv, ca in context] + [
            (k[:, :, :s1], v[:, :, :s1], allowed[:, s0:s1, :s1])]
        out.append(_attend_chunk(q[:, s0:s1], chunk_blocks))
    return jnp.concatenate(out, axis=1)


def _attend_chunk(q, blocks):
    """`attend_chunked` for one chunk of queries. q is laid out ``[B,KV,G,S,D]`` first, so that both
    products are plain batched matmuls over ``(B, KV)`` (no operand transposes inside the dots)."""
    b, s, h, d = q.shape
    kv = blocks[0][0].shape[1]
    q = q.reshape(b, s, kv, h // kv, d).transpose(0, 2, 3, 1, 4)
    scores = [jnp.where(allowed[:, None, None],
                        jnp.einsum("bkgsd,bktd->bkgst", q, k, preferred_element_type=jnp.float32) * (d ** -0.5), _NEG)
              for k, _, allowed in blocks]
    probs = jax.nn.softmax(jnp.concatenate(scores, axis=-1), axis=-1)
    out, start = 0.0, 0
    for k, v, _ in blocks:
        p = jax.lax.slice_in_dim(probs, start, start + k.shape[2], axis=-1).astype(v.dtype)
        out = out + jnp.einsum("bkgst,bktd->bkgsd", p, v)
        start += k.shape[2]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, s, h * d).astype(v.dtype)


# --- the splash path (Pallas, TPU) ------------------------------------------------------------------

SPLASH_LANES = 128  # splash's key blocks are multiples of 128: sequences are padded up to one


@functools.lru_cache(maxsize=32)
def _splash_kernel(length: int, heads: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    block = next(n for n in (512, 256, 128) if length % n == 0)
    sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                          block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    mask = sm.MultiHeadMask([sm.CausalMask((length, length))] * heads)
    with jax.ensure_compile_time_eval():  # concrete mask tables, cached across traces
        return sk.make_splash_mha(mask, head_shards=1, q_seq_shards=1, block_sizes=sizes, interpret=interpret)


def attend_splash(q, k, v, mask, *, interpret: bool = False):
    """Causal attention of q ``[B,S,H,D]`` over k, v ``[B,S,KV,D]`` with splash attention. The mask
    enters as segment ids (1 real, 0 padding), so a real query sees exactly the real keys before it
    and a padding query sees padding keys (never no key at all); any padding layout works."""
    from jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_kernel import SegmentIds

    b, s, h, d = q.shape
    length = -(-s // SPLASH_LANES) * SPLASH_LANES
    pad = lambda x: jnp.pad(x, ((0, 0), (0, length - s)) + ((0, 0),) * (x.ndim - 2))
    heads_first = lambda x: pad(x).transpose(0, 2, 1, 3)
    seg = pad(mask.astype(jnp.int32))
    kernel = _splash_kernel(length, h, interpret)
    out = jax.vmap(kernel)(heads_first((q.astype(jnp.float32) * d ** -0.5).astype(q.dtype)), heads_first(k),
                           heads_first(v), SegmentIds(seg, seg))
    return out[:, :, :s].transpose(0, 2, 1, 3).reshape(b, s, h * d).astype(v.dtype)
