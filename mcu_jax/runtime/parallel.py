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

The mesh policy: every function of mcu_jax that takes ``mesh=`` passes it through
``resolve_mesh``, and ``mesh=None`` means one thing everywhere: a 1-D mesh over all devices of
the run (``make_mesh()``: ``jax.devices()``, i.e. this host's local devices in a one-process
run, one device on a 1-device machine). Training, evaluation, recalibration and the sweep thus
run on the same devices, and on one device the mesh changes no result.

Placement lives here only: ``replicate`` (a tree on every device), ``shard_batch`` (host
batches split over the mesh), ``split_batch`` and ``gathered`` (the same inside a jitted
function), ``check_batch_size`` (a batch size the mesh can split) and
``inference_batch_size`` (one rounded up so that it can).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mcu_jax.errors import InvalidArgument
from mcu_jax.typing import PyTree
from mcu_jax.validation import check_positive

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with axis ``"data"`` over ``devices`` (default: all devices, all hosts)."""
  devices = jax.devices() if devices is None else list(devices)
  if not devices:
    raise InvalidArgument("make_mesh needs at least one device")
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def resolve_mesh(mesh: Mesh | None = None, name: str = "mesh") -> Mesh:
  """The mesh a call runs on: ``mesh`` itself, or for None ``make_mesh()`` (all devices).

  Raises ``InvalidArgument`` naming ``name`` for anything but None or a
  ``jax.sharding.Mesh`` with the batch axis ``"data"``.
  """
  if mesh is None:
    return make_mesh()
  if not isinstance(mesh, Mesh) or DATA_AXIS not in mesh.axis_names:
    raise InvalidArgument(f"{name}: expected None or a jax.sharding.Mesh with a {DATA_AXIS!r} "
                          f"axis (parallel.make_mesh()), got {mesh!r}")
  return mesh


def data_shards(mesh: Mesh) -> int:
  """How many ways ``mesh`` splits a batch: the size of its ``"data"`` axis."""
  return int(mesh.shape[DATA_AXIS])


def check_batch_size(name: str, batch_size, mesh: Mesh) -> int:
  """``batch_size`` if it is a positive integer that ``mesh`` splits evenly (a multiple of
  ``data_shards(mesh)``); else ``InvalidArgument`` naming ``name``."""
  check_positive(name, batch_size, integer=True)
  shards = data_shards(mesh)
  if batch_size % shards:
    raise InvalidArgument(f"{name}: expected a multiple of the mesh's {shards} devices, got "
                          f"{batch_size}")
  return int(batch_size)


def inference_batch_size(batch_size: int, num_examples: int, mesh: Mesh) -> int:
  """``min(batch_size, num_examples)`` rounded up to a multiple of ``data_shards(mesh)``
  (padding fills the rest; a ``valid`` mask keeps results exact)."""
  shards = data_shards(mesh)
  return -(-min(int(batch_size), int(num_examples)) // shards) * shards


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the mesh."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(batch: PyTree, mesh: Mesh) -> PyTree:
  """Places every leaf of ``batch`` with its leading axis split over the mesh.

  On several hosts each process passes its own share (its local batch); the global batch is
  their concatenation, and its size must be a multiple of the mesh's devices
  (``check_batch_size``).
  """
  sharding = batch_sharding(mesh)

  def leaf(x):
    if isinstance(x, jax.Array) and jax.process_count() == 1:
      check_batch_size("batch size", x.shape[0], mesh)
      return jax.device_put(x, sharding)
    x = np.asarray(x)
    check_batch_size("batch size", x.shape[0] * jax.process_count(), mesh)
    return jax.make_array_from_process_local_data(sharding, x)
  return jax.tree.map(leaf, batch)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  """A copy of ``tree`` on every device of the mesh (same values on every host). Leaves
  already placed so are kept as they are (no copy, and no host round trip on several
  hosts)."""
  sharding = replicated_sharding(mesh)
  leaves, treedef = jax.tree.flatten(tree)
  todo = [i for i, x in enumerate(leaves)
          if not (isinstance(x, jax.Array) and x.committed
                  and x.sharding.is_equivalent_to(sharding, x.ndim))]
  if jax.process_count() == 1:     # one call: the transfers are batched
    moved = jax.device_put([leaves[i] for i in todo], sharding)
  else:
    moved = [jax.make_array_from_process_local_data(sharding, np.asarray(leaves[i]))
             for i in todo]
  for i, x in zip(todo, moved):
    leaves[i] = x
  return jax.tree.unflatten(treedef, leaves)


def split_batch(tree: PyTree, mesh: Mesh) -> PyTree:
  """Inside a traced function: every leaf's leading (batch) axis constrained to be split over
  ``mesh``."""
  return jax.lax.with_sharding_constraint(tree, batch_sharding(mesh))


def gathered(tree: PyTree, mesh: Mesh) -> PyTree:
  """Inside a traced function: ``tree`` constrained to be replicated on ``mesh``, so that every
  host can read the result (e.g. with ``np.asarray``)."""
  return jax.lax.with_sharding_constraint(tree, replicated_sharding(mesh))


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
