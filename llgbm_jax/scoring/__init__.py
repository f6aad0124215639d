"""How a task is scored: the accuracy of a base model with or without a LoRA on a task's records (`accuracy`:
option log-likelihood with a shared KV prefix, greedy generation, exact match) and the statistics every accuracy
carries (`stats`: Wilson intervals, paired gains with their standard errors). The zoo scores its teachers with it;
`llgbm_jax.evaluation` judges generated adapters with it."""

from llgbm_jax.scoring.accuracy import (chat, compute_accuracy_with_lora, compute_accuracy_with_lora_batched,
                                         compute_base_accuracy, exact_match_accuracy, generate_texts, score_options)
from llgbm_jax.scoring.stats import paired_gain, wilson_interval

__all__ = ["chat", "compute_accuracy_with_lora", "compute_accuracy_with_lora_batched", "compute_base_accuracy",
           "exact_match_accuracy", "generate_texts", "paired_gain", "score_options", "wilson_interval"]
