"""optax set-up shared by teacher and generator training: AdamW, warm-up + cosine, clipping, accumulation."""

from __future__ import annotations

import optax


def warmup_cosine(lr: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0.1·lr to lr, then cosine decay to 0.01·lr at ``total_steps`` (at least one step
    of each, so that a one-step run has a schedule too)."""
    warmup = max(warmup_steps, 1)
    return optax.warmup_cosine_decay_schedule(init_value=0.1 * lr, peak_value=lr, warmup_steps=warmup,
                                              decay_steps=max(total_steps, warmup + 1), end_value=0.01 * lr)


def adamw(lr: float, warmup_steps: int, total_steps: int, *, weight_decay: float = 0.0,
          clip_norm: float | None = 1.0, accumulate: int = 1) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW on the warm-up/cosine schedule, clipped by global norm, optionally accumulating
    ``accumulate`` micro-batches per update (`optax.MultiSteps`)."""
    schedule = warmup_cosine(lr, warmup_steps, total_steps)
    parts = ([optax.clip_by_global_norm(clip_norm)] if clip_norm else []) + [
        optax.adamw(schedule, weight_decay=weight_decay)]
    tx = optax.chain(*parts)
    if accumulate > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accumulate)
    return tx, schedule
