"""The score the population attacks read.

``logit_scaled_confidence(logits, labels)``: LiRA's statistic (Carlini et al., arXiv
2112.03570) of one output, ``log p_y - log sum_{j != y} p_j``. The softmax normaliser cancels,
so it is computed exactly as ``z_y - logsumexp_{j != y} z_j`` (no softmax, no floor: the
challenge's own code adds 1e-45 to both probabilities, which clamps it near +-103.6; here it is
exact for any finite logits, e.g. 1e4). Unitless ("nats of odds").
"""
from __future__ import annotations

import numpy as np

from mcu_jax.errors import InvalidArgument


def logit_scaled_confidence(logits, labels) -> np.ndarray:
  """LiRA's score ``z_y - logsumexp_{j != y} z_j`` (= log p_y - log(1 - p_y)), float64.

  ``logits``: (..., C) with C >= 2, finite; ``labels``: integers in [0, C) whose shape
  broadcasts to ``logits.shape[:-1]`` (e.g. logits (models, examples, C) with labels
  (examples,) or (models, examples)). Returns float64 NumPy of shape ``logits.shape[:-1]``.
  """
  z = np.asarray(logits, dtype=np.float64)
  if z.ndim < 1 or z.shape[-1] < 2:
    raise InvalidArgument(f"logits must have shape (..., C) with C >= 2 classes, got {z.shape}")
  if not np.all(np.isfinite(z)):
    raise InvalidArgument("logits has non-finite values")
  y = np.asarray(labels)
  if y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
    raise InvalidArgument(f"labels must be integers, got dtype {y.dtype}")
  try:
    y = np.broadcast_to(y, z.shape[:-1])
  except ValueError:
    raise InvalidArgument(f"labels of shape {y.shape} do not broadcast to the logits' leading "
                          f"shape {z.shape[:-1]}") from None
  num_classes = z.shape[-1]
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    raise InvalidArgument(f"labels must lie in [0, {num_classes}), got values in "
                     f"[{y.min()}, {y.max()}]")
  true = np.take_along_axis(z, y[..., None], axis=-1)[..., 0]
  others = np.where(np.arange(num_classes) == y[..., None], -np.inf, z)
  top = others.max(axis=-1, keepdims=True)        # finite: C >= 2 leaves one other class
  lse = top[..., 0] + np.log(np.exp(others - top).sum(axis=-1))
  return true - lse
