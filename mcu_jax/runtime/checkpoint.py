"""Checkpoints with orbax: resumable training states and saved models.

Writes are atomic (orbax writes to a temporary directory and renames it when complete), so a
run killed mid-save leaves the previous checkpoint intact. Every epoch checkpoint carries the
digest of its state (``tree_digest``), so a corrupt one is detected on restore, and
``Checkpointer.restore`` then falls back to the previous good one with a warning. Failures to
read name the path, in one line.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from mcu_jax.errors import CheckpointError
from mcu_jax.typing import PyTree


def tree_digest(tree: PyTree) -> str:
  """SHA-256 (16 hex digits) of a pytree's paths, shapes, dtypes and bytes."""
  sha = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(_to_storable(tree))[0]:
    array = np.asarray(jax.device_get(leaf))
    sha.update(f"{jax.tree_util.keystr(path)}|{array.shape}|{array.dtype}|".encode())
    sha.update(np.ascontiguousarray(array).tobytes())
  return sha.hexdigest()[:16]


def _first_line(error: BaseException) -> str:
  """The error's first line, without the TensorStore specs (a page of JSON) it appends."""
  lines = str(error).strip().splitlines()
  line = lines[0].split(" [tensorstore_spec")[0] if lines else ""
  return f"{type(error).__name__}: {line}"


def _is_key(x) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_storable(tree: PyTree) -> PyTree:
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _from_storable(tree: PyTree, like: PyTree) -> PyTree:
  return jax.tree.map(lambda x, ref: jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref))
                      if _is_key(ref) else x, tree, like)


def _abstract(like: PyTree) -> PyTree:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_storable(like))


class Checkpointer:
  """Keeps the last ``max_to_keep`` checkpoints of a training state in ``directory``.

  Each checkpoint holds the state pytree and a JSON ``meta`` dict (epoch, history, ...).
  Close it when done (or use it as a context manager): orbax's background machinery
  otherwise outlives it.
  """

  def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
    self.directory = Path(directory).absolute()
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                                             create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: PyTree, meta: dict) -> None:
    """Saves ``state`` (and its digest in ``meta``) and waits until it is complete on disk."""
    meta = {**meta, "digest": tree_digest(state)}
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_to_storable(state)), meta=ocp.args.JsonSave(meta)))
    self._manager.wait_until_finished()

  def _restore_step(self, like: PyTree, step: int) -> tuple[PyTree, dict]:
    path = self.directory / str(step)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(_abstract(like)), meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types; all mean the same to the caller
      raise CheckpointError(f"cannot restore checkpoint {path}: {_first_line(e)}") from e
    state, meta = _from_storable(restored["state"], like), restored["meta"]
    if "digest" in meta and tree_digest(state) != meta["digest"]:
      raise CheckpointError(f"checkpoint {path} does not match its recorded digest (corrupt)")
    return state, meta

  def restore(self, like: PyTree, step: int | None = None) -> tuple[PyTree, dict]:
    """(state, meta) of ``step``, or by default of the newest good checkpoint: a corrupt
    newest one is skipped with a warning for the one before it. ``like`` gives the
    structure."""
    if step is not None:
      return self._restore_step(like, step)
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    for i, candidate in enumerate(steps):
      try:
        return self._restore_step(like, candidate)
      except CheckpointError as e:
        if i + 1 == len(steps):
          raise
        warnings.warn(f"{e}; falling back to checkpoint {steps[i + 1]}", stacklevel=2)
    raise AssertionError("unreachable")

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def save_tree(path: str | os.PathLike, tree: PyTree, force: bool = False) -> None:
  """Saves one pytree (e.g. a model's params and batch_stats) to directory ``path``."""
  path = Path(path).absolute()
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, _to_storable(tree), force=force)


def load_tree(path: str | os.PathLike, like: PyTree | None = None) -> PyTree:
  """Loads a pytree saved by ``save_tree``; with ``like``, checks structure/shapes/dtypes."""
  path = Path(path).absolute()
  if not path.exists():
    raise CheckpointError(f"checkpoint {path} does not exist")
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      if like is None:  # restore onto this process's devices, whatever topology saved it
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
            checkpointer.metadata(path).item_metadata.tree)
      else:
        target = _abstract(like)
      tree = checkpointer.restore(path, target)
  except Exception as e:
    raise CheckpointError(f"cannot restore checkpoint {path}: {_first_line(e)}") from e
  return _from_storable(tree, like) if like is not None else jax.tree.map(jnp.asarray, tree)
