"""llgbm_jax's own model checkpoint: config JSON + one safetensors file of the stacked params +
the tokenizer. Loads with no dequantization or restacking, so it is the fast path."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp

from llgbm_jax.base.config import ModelConfig
from llgbm_jax.base.state_dict import check_params
from llgbm_jax.utils.io import atomic_dir

MARKER = "llgbm_model.json"
FORMAT_VERSION = 1


def is_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MARKER))


def save_checkpoint(path: str, config: ModelConfig, params: dict, tokenizer=None, source: str = "") -> None:
    """Write atomically: a killed conversion leaves no partial checkpoint."""
    from safetensors.flax import save_file

    flat = {k: jnp.asarray(v) for k, v in params.items() if k != "layers"}
    flat.update({f"layers.{k}": jnp.asarray(v) for k, v in params["layers"].items()})
    with atomic_dir(path) as tmp:
        save_file(flat, os.path.join(tmp, "params.safetensors"))
        if tokenizer is not None:
            tokenizer.save_pretrained(os.path.join(tmp, "tokenizer"))
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump({"format": FORMAT_VERSION, "config": config.to_dict(), "source": source}, f, indent=2)


def load_checkpoint(path: str, dtype=jnp.float32) -> tuple[ModelConfig, dict]:
    from safetensors.flax import load_file

    with open(os.path.join(path, MARKER)) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{os.path.join(path, MARKER)}: unsupported checkpoint format {meta.get('format')!r}")
    config = ModelConfig.from_dict(meta["config"])
    file = os.path.join(path, "params.safetensors")
    try:
        flat = load_file(file)
    except FileNotFoundError:
        raise FileNotFoundError(f"missing weights file: {file}") from None
    except Exception as e:
        raise ValueError(f"{file}: unreadable safetensors file ({e})") from None
    params = {"layers": {}}
    for k, v in flat.items():
        if k.startswith("layers."):
            params["layers"][k[len("layers."):]] = v
        else:
            params[k] = v
    check_params(config, params, file)
    return config, _cast(params, dtype)


def _cast(params, dtype):
    import jax

    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), params)


def load_checkpoint_tokenizer(path: str):
    """The saved tokenizer, or None if the checkpoint was written without one."""
    from transformers import AutoTokenizer

    folder = os.path.join(path, "tokenizer")
    return AutoTokenizer.from_pretrained(folder) if os.path.isdir(folder) else None
