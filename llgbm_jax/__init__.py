"""llgbm-jax: text-conditioned generation of LoRA adapters for small LLMs, in JAX."""

from llgbm_jax.lora import LoRA, LoRAConfig
from llgbm_jax.models import BaseModel, ModelConfig, load_base_model

__all__ = ["BaseModel", "LoRA", "LoRAConfig", "ModelConfig", "load_base_model"]
__version__ = "0.1.0"
