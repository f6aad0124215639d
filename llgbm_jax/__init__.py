"""llgbm-jax: text-conditioned generation of LoRA adapters for small LLMs, in JAX."""

from llgbm_jax.functional_lora import FunctionalLoRA
from llgbm_jax.lora import LoRA, LoRAConfig, delta_w, init_lora, stack_loras, unstack_loras, zeros_lora
from llgbm_jax.models import BaseModel, ModelConfig, load_base_model
from llgbm_jax.peft_io import load_peft_adapter, save_peft_adapter

__all__ = ["BaseModel", "FunctionalLoRA", "LoRA", "LoRAConfig", "ModelConfig", "delta_w", "init_lora",
           "load_base_model", "load_peft_adapter", "save_peft_adapter", "stack_loras", "unstack_loras",
           "zeros_lora"]
__version__ = "0.1.0"
