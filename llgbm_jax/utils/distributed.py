"""Several processes (hosts) as one JAX program: `initialize` starts `jax.distributed` when asked, and only the
main process writes results and plots (`is_main_process`). Checkpoints need no special care: orbax writes
each process's shards and the metadata once.

Where the processes come from:
- a Cloud TPU VM pod slice (or SLURM, or Open MPI): ``auto=True``; JAX finds the coordinator and the process ids;
- anything else (several GPU hosts, processes on one machine): the coordinator address (``host:port`` of process
  0), the number of processes and this process's id, as arguments or as ``LLGBM_COORDINATOR_ADDRESS``,
  ``LLGBM_NUM_PROCESSES`` and ``LLGBM_PROCESS_ID``.
The CPU backend's collectives go through gloo.
"""

from __future__ import annotations

import os

import jax

ENV = ("LLGBM_COORDINATOR_ADDRESS", "LLGBM_NUM_PROCESSES", "LLGBM_PROCESS_ID")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool = False) -> bool:
    """Start `jax.distributed` if the arguments, the environment (``LLGBM_*``) or ``auto`` ask for it, before
    anything touches a device. Returns whether it did. Missing pieces are named."""
    coordinator_address = coordinator_address or os.environ.get(ENV[0])
    num_processes = num_processes if num_processes is not None else _env_int(ENV[1])
    process_id = process_id if process_id is not None else _env_int(ENV[2])
    given = {"coordinator address": coordinator_address, "number of processes": num_processes,
             "process id": process_id}
    if not auto and all(v is None for v in given.values()):
        return False
    missing = [k for k, v in given.items() if v is None]
    if not auto and missing:
        raise ValueError(f"multi-process run: missing {' and '.join(missing)} (flags --coordinator-address, "
                         f"--num-processes, --process-id or environment {', '.join(ENV)})")
    if not 0 <= (process_id or 0) < (num_processes or 1):
        raise ValueError(f"process id {process_id} is not in 0..{num_processes - 1}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # the CPU backend's; GPUs and TPUs have theirs
    if auto and missing:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return True


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment {name}={value!r}: expected an integer") from None


def is_main_process() -> bool:
    """Process 0 writes results, plots and exported adapters; the others only compute."""
    return jax.process_index() == 0
