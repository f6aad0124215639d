"""Resumable training state with orbax: a pytree (parameters, optimizer state) plus JSON metadata
(step, data order, histories). Saves are atomic (orbax writes to a temporary folder and renames)."""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp


class TrainCheckpointer:
    """Keep the latest ``max_to_keep`` checkpoints of a training run under ``directory``."""

    def __init__(self, directory: str, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=False,
                                                 create=True))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta)))
        self._manager.wait_until_finished()

    def restore(self, target_state: Any, step: int | None = None) -> tuple[int, Any, dict] | None:
        """``(step, state, meta)`` of ``step`` (default: the latest), or None if there is none.
        ``target_state`` gives the pytree structure, shapes and dtypes to restore into."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target_state), meta=ocp.args.JsonRestore()))
        return step, restored["state"], dict(restored["meta"])

    def close(self) -> None:
        self._manager.close()
