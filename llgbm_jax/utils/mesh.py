"""Data parallelism on a `jax.sharding.Mesh`: one ``"data"`` axis over local devices. A batch is split along its
adapter axis over the mesh; parameters, optimiser state and shared arrays are replicated. The same jitted code
runs on one device and on many (XLA partitions it from the input shardings and inserts the reductions)."""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA = "data"


def data_devices(batch_size: int, requested: int | None = None) -> int:
    """How many devices a batch of ``batch_size`` is split over: ``requested`` (it must divide the batch and
    not exceed the local devices), else the greatest common divisor of the batch size and the local device count."""
    local = jax.local_device_count()
    if requested is None:
        return math.gcd(batch_size, local)
    if not 0 < requested <= local or batch_size % requested:
        raise ValueError(f"data-parallel devices {requested}: must divide the batch size {batch_size} and be at most "
                         f"the {local} local device(s)")
    return requested


def data_mesh(n: int) -> Mesh:
    """A one-axis (``"data"``) mesh of the first ``n`` local devices."""
    return Mesh(np.asarray(jax.local_devices()[:n]), (DATA,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def split_along(mesh: Mesh, axis: int) -> NamedSharding:
    """Arrays split over the data axis along dimension ``axis``, replicated along the others."""
    return NamedSharding(mesh, PartitionSpec(*([None] * axis), DATA))
