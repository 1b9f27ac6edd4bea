"""Evaluation of a model on array data sets.

Everything here is batched and jitted; data sets are padded to whole batches with a ``valid``
mask, so any size works and no example counts twice.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mcu_jax import objectives
from mcu_jax.mcu import Apply, Preprocess, normalize_uint8

PyTree = Any


def padded_batches(images: jax.Array, labels: jax.Array, batch_size: int
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Reshape (N, ...) arrays to (steps, batch_size, ...), zero-padded, plus the valid mask."""
  n = labels.shape[0]
  if n == 0:
    raise ValueError("cannot evaluate on an empty set")
  steps = -(-n // batch_size)
  pad = steps * batch_size - n
  pad_to = lambda x: jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)])
  valid = jnp.arange(steps * batch_size) < n
  return (pad_to(images).reshape((steps, batch_size) + images.shape[1:]),
          pad_to(labels).reshape(steps, batch_size), valid.reshape(steps, batch_size))


@functools.partial(jax.jit, static_argnames=("apply", "batch_size", "preprocess"))
def _sums(apply, params, state, images, labels, batch_size, preprocess):
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


def accuracy_and_loss(apply: Apply, params: PyTree, state: PyTree, images, labels,
                      batch_size: int = 512, preprocess: Preprocess = normalize_uint8
                      ) -> tuple[float, float]:
  """(accuracy in percent, mean cross-entropy) of the model in inference mode.

  ``images`` (N, H, W, C) uint8 and ``labels`` (N,), on host or device. ``apply`` and
  ``preprocess`` must be hashable (module-level functions or the closures of make_apply,
  reused between calls) since they are static for jit.
  """
  n = int(np.shape(labels)[0])
  if n == 0:
    raise ValueError("cannot evaluate on an empty set")
  hits, loss = _sums(apply, params, state, jnp.asarray(images), jnp.asarray(labels),
                     min(batch_size, n), preprocess)
  return 100.0 * float(hits) / n, float(loss) / n
