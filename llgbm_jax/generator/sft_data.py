"""The end-to-end (SFT) supervision of a generator: for every generated adapter of a step, a few training examples
of its task, encoded as the teachers' SFT batches (`llgbm_jax.teachers.sft`), in fixed shapes (one compilation).
Drawn by (seed, step, position), so a resumed run sees the same rows."""

from __future__ import annotations

import itertools
import zlib
from typing import Sequence

import numpy as np

from llgbm_jax.teachers.sft import collate, encode_sft, target_slots


class SFTData:
    """``SFTData(base_model, tasks, rows=4, max_seq_len=128)``: up to ``max_examples`` training-split examples of
    each task (never its evaluation questions: `Task.load("train")` drops them); `batch` gives ``rows`` of them
    per adapter."""

    def __init__(self, base_model, tasks: Sequence[str], *, rows: int = 4, max_seq_len: int = 128, seed: int = 0,
                 max_examples: int = 256, data_dir: str | None = None):
        from llgbm_jax.tasks.registry import get_task

        self.rows, self.seed, self.pad_id = rows, seed, base_model.pad_token_id
        self.examples = {}
        for name in sorted(set(tasks)):
            task = get_task(name, data_dir)
            encoded = (encode_sft(base_model, task, r, max_seq_len) for r in task.load("train", data_dir))
            kept = list(itertools.islice((e for e in encoded if e is not None), max_examples))
            if not kept:
                raise ValueError(f"SFTData: task {name!r} has no training example of at most {max_seq_len} tokens "
                                 f"(raise TrainingConfig.sft_max_seq_len)")
            self.examples[name] = kept
        every = [e for ex in self.examples.values() for e in ex]
        self.width = -(-max(len(e.ids) for e in every) // 16) * 16
        self.n_targets = target_slots(max(len(e.ids) - e.num_prompt for e in every))

    def batch(self, tasks: Sequence[str], step: int) -> dict[str, np.ndarray]:
        """``{ids, mask, target_pos, target_ids, target_mask}``, each ``[len(tasks), rows, ...]``: row block i holds
        ``rows`` examples of ``tasks[i]``."""
        blocks = []
        for i, name in enumerate(tasks):
            if name not in self.examples:
                raise KeyError(f"SFTData has no examples of task {name!r} (it holds {sorted(self.examples)})")
            pool = self.examples[name]
            rng = np.random.default_rng([self.seed, step, i, zlib.crc32(name.encode())])
            pick = rng.choice(len(pool), self.rows, replace=len(pool) < self.rows)
            blocks.append(collate([pool[j] for j in pick], self.pad_id, width=self.width, n_targets=self.n_targets))
        return {k: np.stack([b[k] for b in blocks]) for k in blocks[0]}
