"""Data parallelism on a `jax.sharding.Mesh`: one ``"data"`` axis over the devices of every process. A batch is
split along its example (or adapter) axis over the mesh; parameters, optimiser state and shared arrays are
replicated. The same jitted code runs on one device, on many, and on several hosts (XLA partitions it from the
input shardings and inserts the reductions). Every process builds the same global batch from the same seeds, so
`jax.device_put` of a host array places each process's shards."""

from __future__ import annotations

import math
import weakref

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA = "data"


def data_devices(batch_size: int, requested: int | None = None) -> int:
    """How many devices a batch of ``batch_size`` is split over: ``requested`` (it must divide the batch and
    not exceed the devices), else the greatest common divisor of the batch size and the device count (every
    device, on every process, when the batch size allows)."""
    total = jax.device_count()
    if requested is None:
        return math.gcd(batch_size, total)
    if not 0 < requested <= total or batch_size % requested:
        raise ValueError(f"data-parallel devices {requested}: must divide the batch size {batch_size} and be at most "
                         f"the {total} device(s)")
    return requested


def data_mesh(n: int) -> Mesh:
    """A one-axis (``"data"``) mesh of the first ``n`` devices. With several processes it must span all of them
    (each process runs the same program on its own devices)."""
    if jax.process_count() > 1 and n != jax.device_count():
        raise ValueError(f"a mesh of {n} devices over {jax.process_count()} processes: with several processes "
                         f"the data axis must hold all {jax.device_count()} devices (a batch size they divide)")
    return Mesh(np.asarray(jax.devices()[:n]), (DATA,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def split_along(mesh: Mesh, axis: int) -> NamedSharding:
    """Arrays split over the data axis along dimension ``axis``, replicated along the others."""
    return NamedSharding(mesh, PartitionSpec(*([None] * axis), DATA))


# --- a base model's batches (teacher steps, scoring) over the devices ----------------------------------------

_REPLICAS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class BatchPlacer:
    """Places a batch for the base model (a teacher step, a scoring batch): rows split over ``devices`` devices,
    the base model's parameters replicated once per model and mesh (cached, so a zoo's teachers share one copy).
    With one device it places nothing, so single-device code is unchanged."""

    def __init__(self, batch_size: int, devices: int | None = None):
        n = data_devices(batch_size, devices)
        self.mesh = data_mesh(n) if n > 1 else None

    def params(self, base_model):
        if self.mesh is None:
            return base_model.params
        per_model = _REPLICAS.setdefault(base_model, {})
        key = tuple(d.id for d in self.mesh.devices.flat)
        if key not in per_model:
            per_model[key] = jax.device_put(base_model.params, replicated(self.mesh))
        return per_model[key]

    def rows(self, tree):
        """Split along axis 0 (a batch of questions, or one adapter per question)."""
        return tree if self.mesh is None or tree is None else jax.device_put(tree, split_along(self.mesh, 0))

    def shared(self, tree):
        """Replicated (one adapter for every question, a shared prefix cache)."""
        return tree if self.mesh is None or tree is None else jax.device_put(tree, replicated(self.mesh))

    def gather(self, x) -> np.ndarray:
        """A result split over the mesh as one host array (every process gets all rows)."""
        if self.mesh is not None and jax.process_count() > 1:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)
