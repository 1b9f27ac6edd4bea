"""A model in inference mode on one data set: accuracy, loss, logits, confidences.

Everything here is batched and jitted. Data sets are padded to whole batches with a ``valid``
mask, so any size works and no example counts twice. ``apply`` and ``preprocess`` are static
jit arguments: pass hashable ones (the adapters of ``mcu_jax.models``, module-level functions,
``mcu_jax.preprocess.Preprocessor``) and reuse them between calls.

Inputs are (N, ...) arrays on host or device: uint8 images or float features, whatever
``preprocess`` takes (``default_preprocess``: uint8 / 255, floats unchanged).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mcu_jax import objectives
from mcu_jax.models.adapters import Apply
from mcu_jax.preprocess import Preprocess, default_preprocess
from mcu_jax.validation import InvalidArgument

PyTree = Any


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


def hits_and_loss(apply, params, state, images, labels, batch_size, preprocess):
  """(number correct, summed CE) over a data set in inference mode; traceable (no checks)."""
  xs = padded_batches(images, labels, batch_size)

  def body(totals, batch):
    x, y, ok = batch
    logits, _ = apply(params, state, preprocess(None, x), False)
    w = ok.astype(jnp.float32)
    hits = jnp.sum(objectives.correct(logits, y) * w)
    loss = jnp.sum(objectives.cross_entropy(logits, y) * w)
    return (totals[0] + hits, totals[1] + loss), None

  (hits, loss), _ = jax.lax.scan(body, (jnp.zeros(()), jnp.zeros(())), xs)
  return hits, loss


@functools.partial(jax.jit, static_argnames=("apply", "batch_size", "preprocess"))
def _sums(apply, params, state, images, labels, batch_size, preprocess):
  return hits_and_loss(apply, params, state, images, labels, batch_size, preprocess)


def _num_examples(labels) -> int:
  n = int(np.shape(labels)[0])
  if n == 0:
    raise InvalidArgument("inputs: cannot evaluate on an empty set")
  return n


def accuracy_and_loss(apply: Apply, params: PyTree, state: PyTree, images, labels,
                      batch_size: int = 512, preprocess: Preprocess = default_preprocess
                      ) -> tuple[float, float]:
  """(accuracy in percent, mean cross-entropy) of the model in inference mode.

  ``images`` (N, ...) and ``labels`` (N,) integers, on host or device.
  """
  n = _num_examples(labels)
  hits, loss = _sums(apply, params, state, jnp.asarray(images), jnp.asarray(labels),
                     min(batch_size, n), preprocess)
  return 100.0 * float(hits) / n, float(loss) / n


@functools.partial(jax.jit, static_argnames=("apply", "batch_size", "preprocess"))
def _logits(apply, params, state, images, batch_size, preprocess):
  n = images.shape[0]
  xs, _, _ = padded_batches(images, jnp.zeros((n,), jnp.int32), batch_size)

  def body(_, x):
    logits, _ = apply(params, state, preprocess(None, x), False)
    return None, logits.astype(jnp.float32)

  _, out = jax.lax.scan(body, None, xs)
  return out.reshape((-1,) + out.shape[2:])[:n]


def predict_logits(apply: Apply, params: PyTree, state: PyTree, images,
                   batch_size: int = 512, preprocess: Preprocess = default_preprocess
                   ) -> np.ndarray:
  """Inference-mode logits, float32 (N, num_classes), as a NumPy array."""
  n = int(np.shape(images)[0])
  if n == 0:
    raise InvalidArgument("inputs: cannot evaluate on an empty set")
  return np.asarray(_logits(apply, params, state, jnp.asarray(images), min(batch_size, n),
                            preprocess))


def _check_labels(logits: np.ndarray, labels) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.shape != (logits.shape[0],):
    raise InvalidArgument(f"labels: expected shape ({logits.shape[0]},) for "
                          f"{logits.shape[0]} inputs, got {labels.shape}")
  return labels.astype(np.int32)


def true_label_confidence(apply: Apply, params: PyTree, state: PyTree, images, labels,
                          batch_size: int = 512, preprocess: Preprocess = default_preprocess
                          ) -> np.ndarray:
  """softmax(logits)[label] per example, float32 (N,): the feature of SalUn's SVC MIA."""
  logits = predict_logits(apply, params, state, images, batch_size, preprocess)
  labels = _check_labels(logits, labels)
  probs = jax.nn.softmax(jnp.asarray(logits), axis=-1)
  return np.asarray(jnp.take_along_axis(probs, jnp.asarray(labels)[:, None], axis=1)[:, 0])


def per_example_losses(apply: Apply, params: PyTree, state: PyTree, images, labels,
                       batch_size: int = 512, preprocess: Preprocess = default_preprocess
                       ) -> np.ndarray:
  """Cross-entropy per example, float32 (N,)."""
  logits = predict_logits(apply, params, state, images, batch_size, preprocess)
  labels = _check_labels(logits, labels)
  return np.asarray(objectives.cross_entropy(jnp.asarray(logits), jnp.asarray(labels)))


__all__ = ["padded_batches", "hits_and_loss", "accuracy_and_loss", "predict_logits",
           "true_label_confidence", "per_example_losses"]
