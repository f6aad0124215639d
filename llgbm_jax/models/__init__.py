"""Base models: the Llama-family decoder and its loaders."""

from llgbm_jax.models.base_model import DEFAULT_MODEL, BaseModel, load_base_model
from llgbm_jax.models.config import ModelConfig

__all__ = ["BaseModel", "DEFAULT_MODEL", "ModelConfig", "load_base_model"]
