"""Data parallelism over a 1-D device mesh, and multi-host start-up.

The batch is split along the mesh axis ``"data"``; the curve, optimizer state and model state
are replicated. The same jitted step runs on one device or many: jit partitions it from the
shardings of its inputs (GSPMD), inserting the all-reduces for the batch means and the
gradients. No code path depends on the device count.

Why a mesh and not ``jax.pmap``: in current JAX (0.5 and later; checked on 0.10) ``pmap`` is
kept for compatibility and is itself implemented on top of ``jit`` and ``shard_map``; its
documentation asks new code to use ``jax.shard_map`` or sharded ``jit`` instead. pmap also
forces a per-device leading axis on every array and a separate code path for one device;
``jit`` with ``NamedSharding`` needs neither, composes with multi-host runs, and lets the same
program scale to 2-D meshes (data x model) later.
"""
from __future__ import annotations

import os
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from mcu_jax.errors import InvalidArgument
from mcu_jax.typing import PyTree

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with axis ``"data"`` over ``devices`` (default: all devices, all hosts)."""
  devices = jax.devices() if devices is None else list(devices)
  if not devices:
    raise InvalidArgument("make_mesh needs at least one device")
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the mesh."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(batch: PyTree, mesh: Mesh) -> PyTree:
  """Places every leaf of ``batch`` with its leading axis split over the mesh.

  On several hosts each process passes its own share (its local batch); the global batch is
  their concatenation. The global batch size must be divisible by the number of devices.
  """
  sharding = batch_sharding(mesh)
  n = mesh.devices.size

  def leaf(x):
    if isinstance(x, jax.Array) and jax.process_count() == 1:
      if x.shape[0] % n:
        raise InvalidArgument(f"batch size {x.shape[0]} is not divisible by the {n} devices of the mesh")
      return jax.device_put(x, sharding)
    x = np.asarray(x)
    global_size = x.shape[0] * jax.process_count()
    if global_size % n:
      raise InvalidArgument(f"batch size {global_size} is not divisible by the {n} devices of the mesh")
    return jax.make_array_from_process_local_data(sharding, x)
  return jax.tree.map(leaf, batch)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  """A copy of ``tree`` on every device of the mesh (same values on every host)."""
  sharding = replicated_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      tree)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Starts jax.distributed for a multi-host run; returns whether it did.

  Arguments default to the environment: ``JAX_COORDINATOR_ADDRESS`` (host:port),
  ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``. When none is set and no cluster is detectable,
  this is a single-process run and nothing happens. On managed clusters (SLURM, Cloud TPU,
  Open MPI) jax.distributed finds the values itself: set ``MCU_JAX_DISTRIBUTED=1`` to
  initialise without explicit values.
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
  if num_processes is None and env.get("JAX_NUM_PROCESSES"):
    num_processes = int(env["JAX_NUM_PROCESSES"])
  if process_id is None and env.get("JAX_PROCESS_ID"):
    process_id = int(env["JAX_PROCESS_ID"])
  explicit = coordinator_address is not None or num_processes is not None
  if not explicit and env.get("MCU_JAX_DISTRIBUTED") != "1":
    return False
  if explicit and (coordinator_address is None or num_processes is None or process_id is None):
    raise InvalidArgument("a multi-host run needs all of coordinator_address, num_processes and "
                     f"process_id; got {coordinator_address!r}, {num_processes!r}, {process_id!r}")
  # CPU devices of different processes talk through gloo; GPUs and TPUs ignore this setting.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  return True


def is_primary() -> bool:
  """Whether this process writes shared files (process 0 of a multi-host run)."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """All processes wait here until each has arrived (a no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
