"""Host arrays for training: the examples of index sets, D_f + D_r flagged, padded batches.

Each function returns a dict of NumPy arrays (``images``, ``labels`` and extras); placing
them on devices is ``mcu_jax.runtime.parallel``'s job (``replicate``, ``shard_batch``).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mcu_jax.data.datasets import Dataset
from mcu_jax.data.splits import ForgetSplit
from mcu_jax.errors import InvalidArgument


def subset_arrays(train: Dataset, indices) -> dict[str, np.ndarray]:
  """``images`` and ``labels`` (int32) of the examples at ``indices``."""
  indices = np.asarray(indices)
  return {"images": train.images[indices], "labels": train.labels[indices].astype(np.int32)}


def forget_retain_data(train: Dataset, split: ForgetSplit) -> dict[str, np.ndarray]:
  """All of D_f then all of D_r with an ``is_forget`` flag (for NegGrad+-style methods)."""
  if len(split.forget) == 0 or len(split.retain) == 0:
    raise InvalidArgument("forget_retain_data needs a non-empty forget and retain set")
  indices = np.concatenate([split.forget, split.retain])
  data = subset_arrays(train, indices)
  data["is_forget"] = np.concatenate([np.ones(len(split.forget), bool),
                                      np.zeros(len(split.retain), bool)])
  return data


def padded_batches(arrays: Mapping[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  """Host arrays reshaped to (steps, batch_size, ...) in order, zero-padded, plus ``valid``
  (steps, batch_size) bool marking the real examples."""
  n = int(arrays["labels"].shape[0])
  if n == 0:
    raise InvalidArgument("cannot batch an empty set")
  steps = -(-n // batch_size)
  pad = steps * batch_size - n
  out: dict[str, np.ndarray] = {}
  for name, value in arrays.items():
    value = np.asarray(value)
    value = np.concatenate([value, np.zeros((pad,) + value.shape[1:], value.dtype)])
    out[name] = value.reshape((steps, batch_size) + value.shape[1:])
  out["valid"] = (np.arange(steps * batch_size) < n).reshape(steps, batch_size)
  return out
