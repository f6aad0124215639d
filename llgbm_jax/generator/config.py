"""`TrainingConfig`: every setting of a generator run, in one dataclass, saved with the run as JSON.

The research notebook's fields keep their names; the few added ones (the teacher zoo, the generator's
shape, the loss normalisation, checkpoint cadence, the held-out split) are grouped at the end.
Unknown fields and contradictory values are refused with a message naming the field.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from llgbm_jax.base.model import DEFAULT_MODEL, LARGE_MODEL
from llgbm_jax.generator.losses import DeltaWLoss
from llgbm_jax.lora.adapter import ALL_MODULES
from llgbm_jax.utils.io import read_json, write_json_atomic

SMALL_MODEL, LARGE_MODEL = DEFAULT_MODEL, LARGE_MODEL  # use_small_model picks one of the two
DTYPES = ("float32", "bfloat16")
CHECKPOINTS = ("all", "final")  # TrainingConfig.teacher_checkpoints (RealAdapterDataset(checkpoints=...))
WEIGHT_LOSSES = ("delta_w", "factors")  # TrainingConfig.weight_loss


@dataclasses.dataclass
class TrainingConfig:
    """Settings of one generator training run (docs/generator.md)."""

    # --- the research notebook's fields -------------------------------------------------------------
    base_model: str | None = None  # None: SMALL_MODEL if use_small_model else LARGE_MODEL
    use_small_model: bool = True
    dtype: str = "float32"  # the base model's parameters (the generator trains in float32)
    lora_rank: int = 8  # rank of the generated adapters
    lora_alpha: float = 16.0
    batch_size: int = 4  # adapters per micro-batch
    gradient_accumulation_steps: int = 1
    num_steps: int = 600  # optimizer updates
    warmup_steps: int = 30
    learning_rate: float = 3e-3  # peak; chosen on the cpu zoo (docs/results.md, "Choosing the defaults")
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    lambda_weight: float = 1.0  # weight of the ΔW loss
    lambda_delta: float = 0.0  # weight of the behavioural delta loss (a base-model forward per step)
    num_probes: int = 32
    max_probe_length: int = 128
    delta_batch_probes: int = 16  # probes per chunk of the delta computation (memory bound)
    checkpoint_dir: str = "runs/delta_w/checkpoints"
    delta_cache_dir: str = "runs/cache/deltas"
    output_dir: str = "runs/delta_w"
    text_encoder_name: str | None = None  # None: the embedded all-MiniLM-L6-v2
    freeze_text_encoder: bool = True
    num_prompts_per_adapter: int = 32  # prompts pooled into one condition (fewer: noisier conditions)
    seed: int = 0
    # --- added here ---------------------------------------------------------------------------------
    zoo_dir: str = "zoo"  # teacher zoo (manifest.json); built by the main job when missing
    zoo_preset: str | None = None  # llgbm_jax.teachers.PRESETS entry for a missing zoo (None: "cpu" / "gpu")
    data_dir: str | None = None  # task data (default: $LLGBM_DATA_DIR or ./data)
    embedding_cache_dir: str = "runs/cache/embeddings"  # condition prompts' sentence embeddings
    target_modules: tuple[str, ...] = ALL_MODULES
    generator_hidden: int = 512  # width of the shared trunk (≈42M parameters at SmolLM2 shapes, r 8)
    generator_layers: int = 2  # trunk depth
    embedding_dim: int = 64  # learned layer and module embeddings
    loss_normalize: str | None = "module"  # DeltaWLoss: None = plain MSE, "module" / "batch" = per-module relative
    checkpoint_every: int = 100
    description_share: float = 0.0  # of training conditions: one task description alone (tasks that have them)
    heldout_prompt_fraction: float = 0.25  # of each adapter's prompts, reserved for evaluation conditions
    teacher_checkpoints: str = "final"  # training targets: each teacher run's "final" adapter, or "all" its checkpoints
    data_parallel_devices: int | None = None  # the mesh's data axis (None: gcd(batch_size, all devices))
    # --- supervision modes (docs/generator.md, "Supervision") -------------------------------------------
    weight_loss: str = "delta_w"  # the teacher term: "delta_w" (DeltaWLoss) or "factors" (raw A, B: WeightLoss)
    lambda_sft: float = 0.0  # weight of the end-to-end loss: the generated adapter's cross-entropy on task answers
    sft_rows: int = 4  # training examples of its task per generated adapter per step (lambda_sft > 0)
    sft_max_seq_len: int = 128  # tokens of an end-to-end example (longer ones are skipped)
    base_adapter: str | None = None  # a PEFT folder every generated adapter adds its correction to (docs/generator.md)

    def __post_init__(self):
        if isinstance(self.target_modules, list):
            self.target_modules = tuple(self.target_modules)
        self.validate()

    @property
    def model_name(self) -> str:
        """The base model to load: ``base_model``, else the one ``use_small_model`` selects."""
        return self.base_model or (SMALL_MODEL if self.use_small_model else LARGE_MODEL)

    @property
    def zoo_preset_name(self) -> str:
        """The teacher-zoo preset: ``zoo_preset``, else ``"cpu"`` for the small model and ``"gpu"`` otherwise."""
        return self.zoo_preset or ("cpu" if self.use_small_model and self.base_model in (None, SMALL_MODEL) else "gpu")

    @property
    def cache_root(self) -> str:
        """The folder that holds the caches (the delta cache's parent): scores and compiled programs go there too."""
        return os.path.dirname(self.delta_cache_dir.rstrip("/")) or "."

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps

    def validate(self) -> None:
        def need(ok: bool, field: str, why: str):
            if not ok:
                raise ValueError(f"TrainingConfig.{field}={getattr(self, field)!r}: {why}")

        for f in ("lora_rank", "batch_size", "gradient_accumulation_steps", "num_steps", "num_probes",
                  "max_probe_length", "delta_batch_probes", "num_prompts_per_adapter", "generator_hidden",
                  "generator_layers", "embedding_dim", "checkpoint_every"):
            need(isinstance(getattr(self, f), int) and getattr(self, f) > 0, f, "must be a positive integer")
        for f in ("lora_alpha", "learning_rate", "max_grad_norm"):
            need(getattr(self, f) > 0, f, "must be positive")
        for f in ("weight_decay", "lambda_weight", "lambda_delta", "lambda_sft"):
            need(getattr(self, f) >= 0, f, "must be non-negative")
        for f in ("sft_rows", "sft_max_seq_len"):
            need(isinstance(getattr(self, f), int) and getattr(self, f) > 0, f, "must be a positive integer")
        need(self.weight_loss in WEIGHT_LOSSES, "weight_loss", f"must be one of {WEIGHT_LOSSES}")
        need(self.base_adapter is None or self.weight_loss == "delta_w", "base_adapter",
             "raw-factor supervision (weight_loss='factors') needs the generator's own factors; use 'delta_w'")
        need(isinstance(self.warmup_steps, int) and 0 <= self.warmup_steps < self.num_steps, "warmup_steps",
             f"must be an integer in [0, num_steps={self.num_steps})")
        need(self.dtype in DTYPES, "dtype", f"must be one of {DTYPES}")
        need(self.lambda_weight + self.lambda_delta + self.lambda_sft > 0, "lambda_weight",
             "lambda_weight, lambda_delta and lambda_sft are all 0: nothing to train on")
        need(self.loss_normalize in DeltaWLoss.NORMALIZE, "loss_normalize", f"must be one of {DeltaWLoss.NORMALIZE}")
        need(0 < self.heldout_prompt_fraction < 1, "heldout_prompt_fraction", "must be in (0, 1)")
        need(self.teacher_checkpoints in CHECKPOINTS, "teacher_checkpoints", f"must be one of {CHECKPOINTS}")
        need(self.data_parallel_devices is None or (isinstance(self.data_parallel_devices, int)
             and self.data_parallel_devices > 0 and self.batch_size % self.data_parallel_devices == 0),
             "data_parallel_devices", f"must be None or a positive divisor of batch_size={self.batch_size}")
        need(bool(self.target_modules) and all(m in ALL_MODULES for m in self.target_modules), "target_modules",
             f"must be a non-empty subset of {ALL_MODULES}")
        need(self.delta_batch_probes <= self.num_probes or self.lambda_delta == 0, "delta_batch_probes",
             f"exceeds num_probes={self.num_probes}")
        if self.base_model is not None:
            need(self.use_small_model or self.base_model != SMALL_MODEL, "use_small_model",
                 f"is False but base_model is the small embedded model {SMALL_MODEL!r}")

    # --- JSON -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "TrainingConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown TrainingConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**d)

    def save(self, path: str) -> str:
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str) -> "TrainingConfig":
        d = read_json(path)
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a JSON object of TrainingConfig fields")
        return cls.from_dict(d, source=path)

    def replace(self, **changes) -> "TrainingConfig":
        return dataclasses.replace(self, **changes)
