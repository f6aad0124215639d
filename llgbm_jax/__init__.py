"""llgbm-jax: text-conditioned generation of LoRA adapters for small LLMs, in JAX."""

from llgbm_jax.config import TrainingConfig
from llgbm_jax.dataset import RealAdapterDataset
from llgbm_jax.functional_lora import FunctionalLoRA
from llgbm_jax.generator import create_generator, generate_lora, load_generator, save_generator
from llgbm_jax.lora import LoRA, LoRAConfig, delta_w, init_lora, stack_loras, unstack_loras, zeros_lora
from llgbm_jax.losses import DeltaLoss, DeltaWLoss, MultiTaskLoss, WeightLoss, stack_teachers
from llgbm_jax.models import BaseModel, ModelConfig, load_base_model
from llgbm_jax.peft_io import load_peft_adapter, save_peft_adapter
from llgbm_jax.text_encoder import EmbeddingCache, load_text_encoder
from llgbm_jax.training import TrainingState, evaluate, train

__all__ = ["BaseModel", "DeltaLoss", "DeltaWLoss", "EmbeddingCache", "FunctionalLoRA", "LoRA", "LoRAConfig",
           "ModelConfig", "MultiTaskLoss", "RealAdapterDataset", "TrainingConfig", "TrainingState", "WeightLoss",
           "create_generator", "delta_w", "evaluate", "generate_lora", "init_lora", "load_base_model",
           "load_generator", "load_peft_adapter", "load_text_encoder", "save_generator", "save_peft_adapter",
           "stack_loras", "stack_teachers", "train", "unstack_loras", "zeros_lora"]
__version__ = "0.1.0"
