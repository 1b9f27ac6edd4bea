"""A model in inference mode on one data set: accuracy, loss, logits, confidences.

Everything here is batched and jitted. Data sets are padded to whole batches with a ``valid``
mask, so any size works and no example counts twice. ``apply`` and ``preprocess`` are static
jit arguments: pass hashable ones (the adapters of ``mcu_jax.models``, module-level functions,
``mcu_jax.preprocess.Preprocessor``) and reuse them between calls.

Inputs are (N, ...) arrays on host or device: uint8 images or float features, whatever
``preprocess`` takes (``default_preprocess``: uint8 / 255, floats unchanged).

Data parallelism: every function takes ``mesh`` (``parallel.resolve_mesh``: None means a mesh
over all devices). The inputs, params and state are replicated on it and every batch is
constrained, inside the jitted scan, to be split along its batch axis over the mesh
(``parallel.batch_sharding``; GSPMD inserts the reductions). The batch size the code uses,
``min(batch_size, N)``, is rounded up to a multiple of the mesh's ``"data"`` size
(``parallel.inference_batch_size``) and padded as always, so the results equal one device's up
to float summation order.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mcu_jax.core import objectives
from mcu_jax.errors import InvalidArgument
from mcu_jax.models.adapters import Apply
from mcu_jax.preprocess import Preprocess, default_preprocess
from mcu_jax.runtime import parallel
from mcu_jax.typing import PyTree
from mcu_jax.validation import check_positive


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

  Every batch (its raw and preprocessed inputs, labels and mask) is constrained to be split
  over ``mesh`` (``parallel.resolve_mesh``); ``batch_size`` must be a multiple of its
  ``"data"`` size (``parallel.inference_batch_size``).
  """
  mesh = parallel.resolve_mesh(mesh)
  xs = padded_batches(images, labels, batch_size)

  def body(totals, batch):
    x, y, ok = parallel.split_batch(batch, mesh)
    logits, _ = apply(params, state, parallel.split_batch(preprocess(None, x), mesh), False)
    w = ok.astype(jnp.float32)
    hits = jnp.sum(objectives.correct(logits, y) * w)
    loss = jnp.sum(objectives.cross_entropy(logits, y) * w)
    return (totals[0] + hits, totals[1] + loss), None

  (hits, loss), _ = jax.lax.scan(body, (jnp.zeros(()), jnp.zeros(())), xs)
  return hits, loss


def logits_of(apply, params, state, images, batch_size, preprocess, mesh=None):
  """Inference-mode logits, float32 (N, C), of ``images`` (N, ...); traceable (no checks).
  Batches are split over ``mesh`` as in ``hits_and_loss``."""
  mesh = parallel.resolve_mesh(mesh)
  n = images.shape[0]
  xs, _, _ = padded_batches(images, jnp.zeros((n,), jnp.int32), batch_size)

  def body(_, x):
    x = parallel.split_batch(x, mesh)
    logits, _ = apply(params, state, parallel.split_batch(preprocess(None, x), mesh), False)
    return None, logits.astype(jnp.float32)

  _, out = jax.lax.scan(body, None, xs)
  return out.reshape((-1,) + out.shape[2:])[:n]


_STATIC = ("apply", "batch_size", "preprocess", "mesh")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _sums(apply, params, state, images, labels, batch_size, preprocess, mesh):
  return parallel.gathered(hits_and_loss(apply, params, state, images, labels, batch_size,
                                         preprocess, mesh), mesh)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _logits(apply, params, state, images, batch_size, preprocess, mesh):
  return parallel.gathered(logits_of(apply, params, state, images, batch_size, preprocess, mesh),
                           mesh)


def num_examples(inputs) -> int:
  """The leading size of ``inputs``; ``InvalidArgument`` for an empty set."""
  n = int(np.shape(inputs)[0])
  if n == 0:
    raise InvalidArgument("inputs: cannot evaluate on an empty set")
  return n


def accuracy_and_loss(apply: Apply, params: PyTree, state: PyTree, images, labels,
                      batch_size: int = 512, preprocess: Preprocess = default_preprocess, *,
                      mesh=None) -> tuple[float, float]:
  """(accuracy in percent, mean cross-entropy) of the model in inference mode.

  ``images`` (N, ...) and ``labels`` (N,) integers, on host or device. ``mesh``: the
  ``jax.sharding.Mesh`` to split every batch over (None: all devices; see the module
  docstring).
  """
  mesh = parallel.resolve_mesh(mesh)
  batch_size = _check_batch_size(batch_size)
  n = num_examples(labels)
  params, state, images, labels = parallel.replicate((params, state, images, labels), mesh)
  hits, loss = _sums(apply, params, state, images, labels,
                     parallel.inference_batch_size(batch_size, n, mesh), preprocess, mesh)
  return 100.0 * float(hits) / n, float(loss) / n


def predict_logits(apply: Apply, params: PyTree, state: PyTree, images,
                   batch_size: int = 512, preprocess: Preprocess = default_preprocess, *,
                   mesh=None) -> np.ndarray:
  """Inference-mode logits, float32 (N, num_classes), as a NumPy array.

  ``mesh``: split every batch over it (see ``accuracy_and_loss``).
  """
  mesh = parallel.resolve_mesh(mesh)
  batch_size = _check_batch_size(batch_size)
  n = num_examples(images)
  params, state, images = parallel.replicate((params, state, images), mesh)
  return np.asarray(_logits(apply, params, state, images,
                            parallel.inference_batch_size(batch_size, n, mesh), preprocess, mesh))


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


__all__ = ["padded_batches", "hits_and_loss", "logits_of", "num_examples", "accuracy_and_loss",
           "predict_logits", "true_label_confidence", "per_example_losses"]
