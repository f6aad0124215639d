"""llgbm-jax: text-conditioned generation of LoRA adapters for small LLMs, in JAX.

The package follows the pipeline: `lora` (the adapter pytree, PEFT in and out) → `base` (the decoder that takes
it) → `tasks` → `scoring` (accuracy) → `teachers` (the zoo) → `conditions` (text encoder, probes, behavioural
deltas) → `generator` (the hypernetwork, its losses and training) → `evaluation` (baselines, the main job) → `cli`.
"""

from llgbm_jax.base import BaseModel, FunctionalLoRA, ModelConfig, load_base_model
from llgbm_jax.conditions import EmbeddingCache, load_text_encoder
from llgbm_jax.generator import (DeltaLoss, DeltaWLoss, MultiTaskLoss, RealAdapterDataset, TrainingConfig,
                                 TrainingState, WeightLoss, create_generator, evaluate, generate_lora, load_generator,
                                 save_generator, stack_teachers, train)
from llgbm_jax.lora import (LoRA, LoRAConfig, delta_w, init_lora, load_peft_adapter, save_peft_adapter, stack_loras,
                            unstack_loras, zeros_lora)

__all__ = ["BaseModel", "DeltaLoss", "DeltaWLoss", "EmbeddingCache", "FunctionalLoRA", "LoRA", "LoRAConfig",
           "ModelConfig", "MultiTaskLoss", "RealAdapterDataset", "TrainingConfig", "TrainingState", "WeightLoss",
           "create_generator", "delta_w", "evaluate", "generate_lora", "init_lora", "load_base_model",
           "load_generator", "load_peft_adapter", "load_text_encoder", "save_generator", "save_peft_adapter",
           "stack_loras", "stack_teachers", "train", "unstack_loras", "zeros_lora"]
__version__ = "0.1.0"
