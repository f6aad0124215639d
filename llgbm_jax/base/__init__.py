"""The base model: one pure-function decoder for the Llama family (`decoder`, `attention`) and its loaders
(GGUF, Hugging Face folder or hub id, our own checkpoint) behind `load_base_model`."""

from llgbm_jax.base.config import ModelConfig
from llgbm_jax.base.functional import FunctionalLoRA
from llgbm_jax.base.model import (DEFAULT_MODEL, EMBEDDED, LARGE_MODEL, BaseModel, embedded_gguf_path, load_base_model,
                                  model_hash)

__all__ = ["BaseModel", "DEFAULT_MODEL", "FunctionalLoRA", "EMBEDDED", "LARGE_MODEL", "ModelConfig",
           "embedded_gguf_path", "load_base_model", "model_hash"]
