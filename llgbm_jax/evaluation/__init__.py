"""Judging adapters: generated adapters beside the baselines (`comparison`), the main job (`main_job`), the base
model's accuracy table (`base_accuracy`), the PyTorch references (`reference`) and PEFT checks (`verify`).

The research notebook's entry points keep this path: `compute_base_accuracy` and
`compute_accuracy_with_lora_batched` (defined in `llgbm_jax.scoring`, with the rest of task scoring)."""

from llgbm_jax.scoring import (compute_accuracy_with_lora, compute_accuracy_with_lora_batched, compute_base_accuracy,
                                exact_match_accuracy, generate_texts, paired_gain, score_options, wilson_interval)

__all__ = ["compute_accuracy_with_lora", "compute_accuracy_with_lora_batched", "compute_base_accuracy",
           "exact_match_accuracy", "generate_texts", "paired_gain", "score_options", "wilson_interval"]
