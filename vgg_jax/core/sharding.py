"""Data parallelism with jit over a Mesh: the batch is split on the 'data' axis, state replicated.

The same code runs on one CPU, one GPU, or every device of a multi-host TPU/GPU job (after
`jax.distributed.initialize()`): each process feeds only its local share of the global batch.
"""

from __future__ import annotations

import collections
import os
from typing import Iterable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
HEARTBEAT_TIMEOUT = 30  # seconds


def initialize_processes(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    """`jax.distributed.initialize` for a multi-process job: explicit (--coordinator) or found by
    jax itself on TPU pods and SLURM; nothing for a single process."""
    if coordinator or os.environ.get("SLURM_JOB_ID") or os.environ.get("TPU_NAME"):
        if jax.config.jax_platforms in (None, "", "cpu") and coordinator:
            # CPU processes need a collectives backend for cross-process arrays (tests, laptops).
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        # A lost process is declared after HEARTBEAT_TIMEOUT (jax's default: 100 s); the others
        # then stop within that time even while waiting in a checkpoint's barrier.
        jax.distributed.initialize(coordinator, num_processes, process_id, heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT)


def data_mesh(devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def check_global_batch(global_batch_size: int, mesh: Mesh) -> None:
    devices = mesh.devices.size
    if global_batch_size % devices:
        raise ValueError(f"the global batch size {global_batch_size} is not divisible by the "
                         f"{devices} devices of the mesh; choose a multiple of {devices}")


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree, mesh: Mesh):
    return jax.device_put(tree, replicated(mesh))


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """A global array sharded on 'data' from this process's share of the batch."""
    sharding = batch_sharded(mesh)
    return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
            for key, value in local_batch.items()}


def prefetch_to_mesh(local_batches: Iterable[dict], mesh: Mesh, ahead: int = 2) -> Iterator[dict]:
    """`global_batch` of each local batch, in order, with the next `ahead` batches already on the
    devices when one is handed out: their transfers (asynchronous) overlap the current step.
    flax.jax_utils.prefetch_to_device does this for pmap's stacked per-device layout; this is
    its queue around the NamedSharding that jit takes."""
    queue = collections.deque()
    for local in local_batches:
        queue.append(global_batch(local, mesh))
        if len(queue) > ahead:
            yield queue.popleft()
    while queue:
        yield queue.popleft()
