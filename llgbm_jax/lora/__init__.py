"""The one adapter representation every stage shares: the `LoRA` pytree (`adapter`), its operations (`ops`) and
PEFT folders in and out (`peft`). It depends on nothing but `utils`: the base model takes it as an argument."""

from llgbm_jax.lora.adapter import (ALL_MODULES, LoRA, LoRAConfig, check_lora, delta_w, init_lora, layer_slices,
                                     load_lora, save_lora, stack_loras, unstack_loras, zeros_lora)
from llgbm_jax.lora.ops import fold_scaling, gauge_transform, lora_hash, mean_lora, stack_any
from llgbm_jax.lora.peft import load_peft_adapter, save_peft_adapter

__all__ = ["ALL_MODULES", "LoRA", "LoRAConfig", "check_lora", "delta_w", "fold_scaling", "gauge_transform",
           "init_lora", "layer_slices", "load_lora", "load_peft_adapter", "lora_hash", "mean_lora",
           "save_lora", "save_peft_adapter", "stack_any", "stack_loras", "unstack_loras", "zeros_lora"]
