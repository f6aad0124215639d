"""The generator: its settings (`config.TrainingConfig`), the Flax hypernetwork (`model`), the losses
(`losses`), the zoo as (condition, teacher) pairs (`dataset`) and its training and evaluation (`training`)."""

from llgbm_jax.generator.config import TrainingConfig
from llgbm_jax.generator.dataset import RealAdapterDataset
from llgbm_jax.generator.losses import DeltaLoss, DeltaWLoss, MultiTaskLoss, WeightLoss, stack_teachers
from llgbm_jax.generator.model import LoRAGenerator, create_generator, generate_lora, load_generator, save_generator
from llgbm_jax.generator.training import TrainingState, evaluate, train

__all__ = ["DeltaLoss", "DeltaWLoss", "LoRAGenerator", "MultiTaskLoss", "RealAdapterDataset", "TrainingConfig",
           "TrainingState", "WeightLoss", "create_generator", "evaluate", "generate_lora", "load_generator",
           "save_generator", "stack_teachers", "train"]
