"""A model in inference mode on one data set: accuracy, loss, logits, confidences.

Everything here is batched and jitted. Data sets are padded to whole batches with a ``valid``
mask, so any size works and no example counts twice. ``apply`` and ``preprocess`` are static
jit arguments: pass hashable ones (the adapters of ``mcu_jax.models``, module-level functions,
``mcu_jax.preprocess.Preprocessor``) and reuse them between calls.

Inputs are (N, ...) arrays on host or device: uint8 images or float features, whatever
``preprocess`` takes (``default_preprocess``: uint8 / 255, floats unchanged).

Data parallelism: every public function takes ``mesh`` (a ``jax.sharding.Mesh`` with the
axis ``"data"``, e.g. ``parallel.make_mesh()``). With a mesh, the inputs, params and state are
replicated on it and every batch is constrained, inside the jitted scan, to be split along its
batch axis over the mesh (``parallel.batch_sharding``; GSPMD inserts the reductions). The batch
size the code uses, ``min(batch_size, N)``, is then rounded up to a multiple of the mesh's
``"data"`` size (its device count for a 1-D mesh) and padded as always, so the results equal
one device's up to float summation order. ``mesh=None``: no placement, no constraints.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mcu_jax.core import objectives
from mcu_jax.runtime import parallel
from mcu_jax.models.adapters import Apply
from mcu_jax.preprocess import Preprocess, default_preprocess
from mcu_jax.validation import check_positive
from mcu_jax.errors import InvalidArgument
from mcu_jax.typing import PyTree


# ---------------------------------------------------------------------------------------------
# Mesh plumbing shared with ``batchnorm`` and ``sweep``.


def check_mesh(mesh, name: str = "mesh"):
  """``mesh`` if it is None or a ``jax.sharding.Mesh`` with the batch axis ``"data"``."""
  if mesh is None:
    return None
  if not isinstance(mesh, jax.sharding.Mesh) or parallel.DATA_AXIS not in mesh.axis_names:
    raise InvalidArgument(f"{name}: expected None or a jax.sharding.Mesh with a "
                          f"{parallel.DATA_AXIS!r} axis (parallel.make_mesh()), got {mesh!r}")
  return mesh


def batch_shards(mesh) -> int:
  """How many ways ``mesh`` splits a batch: the size of its ``"data"`` axis (1 without one)."""
  return 1 if mesh is None else int(mesh.shape[parallel.DATA_AXIS])


def inference_batch_size(batch_size: int, num_examples: int, mesh=None) -> int:
  """``min(batch_size, num_examples)`` rounded up to a multiple of ``batch_shards(mesh)``
  (padding fills the rest; the ``valid`` mask keeps the results exact)."""
  shards = batch_shards(mesh)
  return -(-min(int(batch_size), int(num_examples)) // shards) * shards


def on_mesh(tree: PyTree, mesh) -> PyTree:
  """``tree`` replicated on ``mesh`` (``tree`` itself when mesh is None). Leaves already
  replicated on the mesh are kept as they are (no copy, and no host round trip on several
  hosts)."""
  if mesh is None:
    return tree
  target = parallel.replicated_sharding(mesh)

  def leaf(x):
    if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(target, x.ndim):
      return x
    return parallel.replicate(x, mesh)
  return jax.tree.map(leaf, tree)


def split_batch(tree: PyTree, mesh) -> PyTree:
  """Inside a traced function: every leaf's leading (batch) axis constrained to be split over
  ``mesh`` (``tree`` unchanged when mesh is None)."""
  if mesh is None:
    return tree
  return jax.lax.with_sharding_constraint(tree, parallel.batch_sharding(mesh))


def gathered(tree: PyTree, mesh) -> PyTree:
  """Inside a traced function: ``tree`` constrained to be replicated on ``mesh`` (unchanged
  when mesh is None), so that every host can read the result (e.g. with ``np.asarray``)."""
  if mesh is None:
    return tree
  return jax.lax.with_sharding_constraint(tree, parallel.replicated_sharding(mesh))


def _check_batch_size(batch_size) -> int:
  return int(check_positive("batch_size", batch_size, integer=True))


# ---------------------------------------------------------------------------------------------
# Inference.


def padded_batches(images: jax.Array, labels: jax.Array, batch_size: int
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Reshape (N, ...) arrays to (steps, batch_size, ...), zero-padded, plus the valid mask."""
  n = labels.shape[0]
  if n == 0:
    raise InvalidArgument("inputs: cannot evaluate on an empty set")
  steps = -(-n // batch_size)
  pad = steps * batch_size - n
  pad_to = lambda x: jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)])
  valid = jnp.arange(steps * batch_size) < n
  return (pad_to(images).reshape((steps, batch_size) + images.shape[1:]),
          pad_to(labels).reshape(steps, batch_size), valid.reshape(steps, batch_size))


def hits_and_loss(apply, params, state, images, labels, batch_size, preprocess, mesh=None):
  """(number correct, summed CE) over a data set in inference mode; traceable (no checks).

  ``mesh``: every batch (its raw and preprocessed inputs, labels and mask) is constrained to
  be split over it; ``batch_size`` must then be a multiple of ``batch_shards(mesh)``.
  """
  xs = padded_batches(images, labels, batch_size)

  def body(totals, batch):
    x, y, ok = split_batch(batch, mesh)
    logits, _ = apply(params, state, split_batch(preprocess(None, x), mesh), False)
    w = ok.astype(jnp.float32)
    hits = jnp.sum(objectives.correct(logits, y) * w)
    loss = jnp.sum(objectives.cross_entropy(logits, y) * w)
    return (totals[0] + hits, totals[1] + loss), None

  (hits, loss), _ = jax.lax.scan(body, (jnp.zeros(()), jnp.zeros(())), xs)
  return hits, loss


_STATIC = ("apply", "batch_size", "preprocess", "mesh")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _sums(apply, params, state, images, labels, batch_size, preprocess, mesh):
  return gathered(hits_and_loss(apply, params, state, images, labels, batch_size, preprocess,
                                mesh), mesh)


def _num_examples(labels) -> int:
  n = int(np.shape(labels)[0])
  if n == 0:
    raise InvalidArgument("inputs: cannot evaluate on an empty set")
  return n


def _placed(mesh, params, state, *arrays):
  """(params, state, *arrays) replicated on ``mesh``; without one, arrays as device arrays."""
  if mesh is None:
    return (params, state) + tuple(jnp.asarray(a) for a in arrays)
  return on_mesh((params, state) + arrays, mesh)


def accuracy_and_loss(apply: Apply, params: PyTree, state: PyTree, images, labels,
                      batch_size: int = 512, preprocess: Preprocess = default_preprocess, *,
                      mesh=None) -> tuple[float, float]:
  """(accuracy in percent, mean cross-entropy) of the model in inference mode.

  ``images`` (N, ...) and ``labels`` (N,) integers, on host or device. ``mesh``: a
  ``jax.sharding.Mesh`` to split every batch over (inputs, params and state replicated on it;
  see the module docstring), or None for no sharding.
  """
  mesh = check_mesh(mesh)
  batch_size = _check_batch_size(batch_size)
  n = _num_examples(labels)
  params, state, images, labels = _placed(mesh, params, state, images, labels)
  hits, loss = _sums(apply, params, state, images, labels,
                     inference_batch_size(batch_size, n, mesh), preprocess, mesh)
  return 100.0 * float(hits) / n, float(loss) / n


@functools.partial(jax.jit, static_argnames=_STATIC)
def _logits(apply, params, state, images, batch_size, preprocess, mesh):
  n = images.shape[0]
  xs, _, _ = padded_batches(images, jnp.zeros((n,), jnp.int32), batch_size)

  def body(_, x):
    x = split_batch(x, mesh)
    logits, _ = apply(params, state, split_batch(preprocess(None, x), mesh), False)
    return None, logits.astype(jnp.float32)

  _, out = jax.lax.scan(body, None, xs)
  return gathered(out.reshape((-1,) + out.shape[2:])[:n], mesh)


def predict_logits(apply: Apply, params: PyTree, state: PyTree, images,
                   batch_size: int = 512, preprocess: Preprocess = default_preprocess, *,
                   mesh=None) -> np.ndarray:
  """Inference-mode logits, float32 (N, num_classes), as a NumPy array.

  ``mesh``: split every batch over it (see ``accuracy_and_loss``); None for no sharding.
  """
  mesh = check_mesh(mesh)
  batch_size = _check_batch_size(batch_size)
  n = int(np.shape(images)[0])
  if n == 0:
    raise InvalidArgument("inputs: cannot evaluate on an empty set")
  params, state, images = _placed(mesh, params, state, images)
  return np.asarray(_logits(apply, params, state, images,
                            inference_batch_size(batch_size, n, mesh), preprocess, mesh))


def _logits_and_labels(apply, params, state, images, labels, batch_size, preprocess, mesh):
  """Inference-mode logits (N, C) and the labels (N,) as JAX arrays, shapes checked."""
  logits = predict_logits(apply, params, state, images, batch_size, preprocess, mesh=mesh)
  labels = np.asarray(labels)
  if labels.shape != (logits.shape[0],):
    raise InvalidArgument(f"labels: expected shape ({logits.shape[0]},) for "
                          f"{logits.shape[0]} inputs, got {labels.shape}")
  return jnp.asarray(logits), jnp.asarray(labels.astype(np.int32))


def true_label_confidence(apply: Apply, params: PyTree, state: PyTree, images, labels,
                          batch_size: int = 512, preprocess: Preprocess = default_preprocess, *,
                          mesh=None) -> np.ndarray:
  """softmax(logits)[label] per example, float32 (N,): the feature of SalUn's SVC MIA.
  ``mesh``: split every batch over it (``predict_logits``)."""
  logits, labels = _logits_and_labels(apply, params, state, images, labels, batch_size,
                                      preprocess, mesh)
  probs = jax.nn.softmax(logits, axis=-1)
  return np.asarray(jnp.take_along_axis(probs, labels[:, None], axis=1)[:, 0])


def per_example_losses(apply: Apply, params: PyTree, state: PyTree, images, labels,
                       batch_size: int = 512, preprocess: Preprocess = default_preprocess, *,
                       mesh=None) -> np.ndarray:
  """Cross-entropy per example, float32 (N,). ``mesh``: as ``predict_logits``."""
  logits, labels = _logits_and_labels(apply, params, state, images, labels, batch_size,
                                      preprocess, mesh)
  return np.asarray(objectives.cross_entropy(logits, labels))


__all__ = ["padded_batches", "hits_and_loss", "accuracy_and_loss", "predict_logits",
           "true_label_confidence", "per_example_losses", "check_mesh", "batch_shards",
           "inference_batch_size", "on_mesh", "split_batch", "gathered"]
