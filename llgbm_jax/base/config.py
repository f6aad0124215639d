"""Decoder configuration: one dataclass for the Llama family (Llama/SmolLM2, Qwen2, Qwen3)."""

from __future__ import annotations

import dataclasses
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a Llama-family decoder. Hashable, so it can be a static jit argument."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2 / Qwen2.5
    qk_norm: bool = False  # Qwen3
    rope_scaling: tuple[tuple[str, Any], ...] | None = None  # sorted items of HF's rope_scaling dict
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None

    @property
    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(out_features, in_features) of every LoRA-targetable projection, in PEFT's orientation."""
        h, d = self.hidden_size, self.head_dim
        return {
            "q_proj": (self.num_heads * d, h),
            "k_proj": (self.num_kv_heads * d, h),
            "v_proj": (self.num_kv_heads * d, h),
            "o_proj": (h, self.num_heads * d),
            "gate_proj": (self.intermediate_size, h),
            "up_proj": (self.intermediate_size, h),
            "down_proj": (h, self.intermediate_size),
        }

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["rope_scaling"] = dict(self.rope_scaling) if self.rope_scaling else None
        d["eos_token_ids"] = list(self.eos_token_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        if d.get("rope_scaling"):  # JSON lists back to tuples: the config is hashed as a static jit argument
            d["rope_scaling"] = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                             for k, v in d["rope_scaling"].items()))
        d["eos_token_ids"] = tuple(d.get("eos_token_ids") or ())
        return cls(**d)

    @classmethod
    def from_hf_config(cls, hf: dict, source: str = "config.json") -> "ModelConfig":
        """Build from a Hugging Face `config.json` dict; `source` names the file in errors."""
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"{source}: unsupported model_type {model_type!r}; llgbm_jax supports {SUPPORTED_MODEL_TYPES}"
            )
        try:
            num_heads = hf["num_attention_heads"]
            hidden = hf["hidden_size"]
            head_dim = hf.get("head_dim") or hidden // num_heads
            rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
            rope_theta = hf.get("rope_theta", rope.get("rope_theta", 10000.0))
            rope_type = rope.get("rope_type", rope.get("type", "default"))
            rope_scaling = None
            if rope_type not in (None, "default"):
                rope_scaling = tuple(sorted((k, v) for k, v in rope.items() if k != "rope_theta"))
            eos = hf.get("eos_token_id")
            eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
            if model_type == "llama" and hf.get("mlp_bias"):
                raise ValueError(f"{source}: mlp_bias=True is not supported")
            if hf.get("hidden_act", "silu") != "silu":
                raise ValueError(f"{source}: hidden_act={hf['hidden_act']!r} is not supported (only silu)")
            if hf.get("use_sliding_window"):
                raise ValueError(f"{source}: use_sliding_window=True is not supported")
            if rope_type not in ("default", "linear", "llama3"):
                raise ValueError(f"{source}: rope scaling type {rope_type!r} is not supported "
                                 "(default, linear, llama3)")
            if model_type in ("llama", "qwen3") and hf.get("attention_bias"):  # it adds an o_proj bias too
                raise ValueError(f"{source}: attention_bias=True (with its o_proj bias) is not supported")
            return cls(
                model_type=model_type,
                vocab_size=hf["vocab_size"],
                hidden_size=hidden,
                intermediate_size=hf["intermediate_size"],
                num_layers=hf["num_hidden_layers"],
                num_heads=num_heads,
                num_kv_heads=hf.get("num_key_value_heads") or num_heads,
                head_dim=head_dim,
                rope_theta=float(rope_theta),
                rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                qkv_bias=model_type == "qwen2" or bool(hf.get("attention_bias", False)),
                qk_norm=model_type == "qwen3",
                rope_scaling=rope_scaling,
                bos_token_id=hf.get("bos_token_id"),
                eos_token_ids=eos_ids,
                pad_token_id=hf.get("pad_token_id"),
            )
        except KeyError as e:
            raise ValueError(f"{source}: missing required key {e.args[0]!r}") from None
