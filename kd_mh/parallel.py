"""Device mesh, shardings and multi-host set-up for data-parallel training.

One 1-D mesh over every device of every process, with the axis "data": model state is replicated,
batches are sharded along their leading axis. `jax.jit` with these explicit `NamedSharding`s
compiles the whole global step; XLA inserts the gradient all-reduce.

The mesh uses `AxisType.Auto` (GSPMD propagation) rather than JAX 0.10's default `Explicit`: the
models are plain Flax Linen code with batch reductions (BatchNorm statistics, means over the
batch, in-batch contrastive logits) whose shardings the compiler can infer, so nothing inside the
models has to name an axis.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
from jax.sharding import AxisType
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

DATA_AXIS = "data"


def initialize_distributed(enabled: bool, coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> None:
  """Joins a multi-process job; a no-op unless `enabled`, so single-process runs need nothing.

  Must run before anything touches a JAX device. Arguments left None are detected from the
  cluster environment (TPU pods, SLURM, Open MPI, Kubernetes; `JAX_COORDINATOR_ADDRESS`); give
  all three elsewhere (e.g. several processes on one machine: "127.0.0.1:PORT", N, 0..N-1).
  """
  if enabled:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)


def make_mesh() -> Mesh:
  """A 1-D data mesh over all devices of all processes."""
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of parameters, optimiser state and scalars: a full copy on every device."""
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """The sharding of batches: the leading (example) axis split over the "data" axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """The examples this process feeds per step; fails fast when the batch does not divide."""
  n_devices = mesh.devices.size
  if global_batch_size % n_devices:
    raise ValueError(f"batch size {global_batch_size} is not divisible by the {n_devices} devices "
                     "of the mesh")
  return global_batch_size // jax.process_count()


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's slice of a batch -> the global batch, sharded over the mesh.

  Every process passes its own `local_batch_size` examples; together they form the global batch.
  """
  sharding = data_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree of host values on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))
