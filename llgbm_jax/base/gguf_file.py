"""Read a llama.cpp GGUF file: config from its metadata, dequantized weights, and its tokenizer."""

from __future__ import annotations

import os
import re

import jax.numpy as jnp
import numpy as np

from llgbm_jax.base.config import ModelConfig
from llgbm_jax.base.state_dict import build_params

# GGUF tensor name -> HF name (per layer names use "blk.{i}.")
_TOP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight"}
_LAYER = {
    "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias", "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight", "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight", "ffn_down.weight": "mlp.down_proj.weight",
}
_BLK = re.compile(r"blk\.(\d+)\.(.+)")
# Bump when a file converts differently (cached conversions are keyed by it). 2: rope scaling applied.
CONVERSION_VERSION = 2
# <arch>.rope.* keys read by `_rope_scaling`; any other rope key is refused (llama.cpp would apply it).
_ROPE_KEYS = ("freq_base", "dimension_count", "scaling.type", "scaling.factor", "scaling.original_context_length",
              "scaling.finetuned")


def _reader(path: str):
    import gguf

    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file not found: {path}")
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # truncated or not a GGUF file
        raise ValueError(f"{path}: not a readable GGUF file ({e})") from e


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def gguf_config(reader, path: str) -> ModelConfig:
    arch = _field(reader, "general.architecture")
    if arch not in ("llama", "qwen2", "qwen3"):
        raise ValueError(f"{path}: unsupported GGUF architecture {arch!r} (supported: llama, qwen2, qwen3)")
    g = lambda k, d=None: _field(reader, f"{arch}.{k}", d)
    hidden, heads = int(g("embedding_length")), int(g("attention.head_count"))
    head_dim = int(g("attention.key_length", hidden // heads))
    names = {t.name for t in reader.tensors}
    vocab = g("vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    return ModelConfig(
        model_type=arch,
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(g("feed_forward_length")),
        num_layers=int(g("block_count")),
        num_heads=heads,
        num_kv_heads=int(g("attention.head_count_kv", heads)),
        head_dim=head_dim,
        rope_theta=float(g("rope.freq_base", 10000.0)),
        rope_scaling=_rope_scaling(reader, arch, head_dim, path),
        rms_norm_eps=float(g("attention.layer_norm_rms_epsilon", 1e-6)),
        tie_word_embeddings="output.weight" not in names,
        qkv_bias="blk.0.attn_q.bias" in names,
        qk_norm="blk.0.attn_q_norm.weight" in names,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=() if eos is None else (int(eos),),
        pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"),
    )


def _rope_scaling(reader, arch: str, head_dim: int, path: str):
    """`ModelConfig.rope_scaling` from a GGUF file's rope keys and ``rope_freqs`` tensor, applied as
    llama.cpp does: frequency i is ``freq_base^(-2i/d) / rope_freqs[i] / factor``, where ``rope_freqs``
    (written by llama.cpp's converter for Llama 3.1+ "llama3" scaling) holds per-frequency divisors and
    ``factor`` is ``rope.scaling.factor`` of ``rope.scaling.type`` "linear". Keys that llama.cpp would
    apply otherwise (YaRN, LongRoPE, attention factors, partial rotary, ...) are refused, naming the key."""
    import gguf

    prefix = f"{arch}.rope."
    for key in reader.fields:
        if key.startswith(prefix) and key[len(prefix):] not in _ROPE_KEYS:
            raise ValueError(f"{path}: GGUF key {key!r} is not supported (llgbm_jax applies {prefix}freq_base, "
                             f"{prefix}scaling.type 'linear' with {prefix}scaling.factor, and a rope_freqs tensor)")
    dims = _field(reader, prefix + "dimension_count")
    if dims is not None and int(dims) != head_dim:
        raise ValueError(f"{path}: GGUF key '{prefix}dimension_count' is {dims}, not the head size {head_dim}: "
                         f"partial rotary embeddings are not supported")
    kind = _field(reader, prefix + "scaling.type", "none")
    factor = float(_field(reader, prefix + "scaling.factor", 0.0)) or 1.0  # llama.cpp: 0 means none
    if kind not in ("none", "linear") or (kind == "none" and factor != 1.0):
        raise ValueError(f"{path}: GGUF key '{prefix}scaling.type' = {kind!r} with '{prefix}scaling.factor' = "
                         f"{factor} is not supported (supported: 'linear', or 'none' without a factor)")
    tensor = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    if tensor is None:
        return None if factor == 1.0 else (("factor", factor), ("rope_type", "linear"))
    divisors = np.asarray(gguf.dequantize(tensor.data, tensor.tensor_type), np.float32).reshape(-1)
    if divisors.shape != (head_dim // 2,):
        raise ValueError(f"{path}: tensor 'rope_freqs.weight' has {divisors.size} entries, expected {head_dim // 2}")
    return (("factors", tuple(float(x) * factor for x in divisors)), ("rope_type", "freq_factors"))


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's interleaving of q/k rows (its converter permutes them for rotary pairs)."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_gguf(path: str, dtype=jnp.float32) -> tuple[ModelConfig, dict]:
    """Dequantize every tensor of a GGUF file into the decoder's parameter pytree."""
    import gguf

    reader = _reader(path)
    config = gguf_config(reader, path)
    by_hf = {}
    for t in reader.tensors:
        m = _BLK.fullmatch(t.name)
        hf = f"model.layers.{m[1]}.{_LAYER.get(m[2], m[2])}" if m else _TOP.get(t.name, t.name)
        by_hf[hf] = t

    def get(name):
        t = by_hf[name]
        w = np.asarray(gguf.dequantize(t.data, t.tensor_type), np.float32)
        if config.model_type == "llama" and (".q_proj." in name or ".k_proj." in name):
            w = _unpermute(w, config.num_heads if ".q_proj." in name else config.num_kv_heads)
        return w

    return config, build_params(config, get, by_hf.__contains__, path, dtype)


def load_gguf_tokenizer(path: str):
    """The tokenizer (with chat template) embedded in a GGUF file, converted by transformers."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path))


def gguf_tokens(path: str) -> list[str]:
    """The token strings of the tokenizer embedded in a GGUF file (``tokenizer.ggml.tokens``), by id."""
    tokens = _field(_reader(path), "tokenizer.ggml.tokens")
    if tokens is None:
        raise ValueError(f"{path}: no tokenizer.ggml.tokens field")
    return list(tokens)
