"""Input checks shared by the forgetting-quality scores: populations and finite numbers."""
from __future__ import annotations

import math

import numpy as np

from mcu_jax.errors import InvalidArgument


def population(values, name: str) -> np.ndarray:
  values = np.asarray(values, dtype=np.float64)
  if values.ndim != 2:
    raise InvalidArgument(f"{name} must be 2-D (models, examples), got shape {values.shape}")
  if values.shape[0] < 2:
    raise InvalidArgument(f"{name} must hold at least 2 models, got shape {values.shape}")
  if values.shape[1] < 1:
    raise InvalidArgument(f"{name} must hold at least 1 example, got shape {values.shape}")
  if not np.all(np.isfinite(values)):
    raise InvalidArgument(f"{name} has non-finite values")
  return values


def populations(unlearned, retrained, unlearned_name="unlearned_confs",
                 retrained_name="retrained_confs"):
  u = population(unlearned, unlearned_name)
  r = population(retrained, retrained_name)
  if u.shape[1] != r.shape[1]:
    raise InvalidArgument(f"{unlearned_name} has {u.shape[1]} examples but {retrained_name} has "
                          f"{r.shape[1]}: both must be (models, examples) over the same examples")
  return u, r


def finite(value, name: str) -> float:
  try:
    value = float(value)
  except (TypeError, ValueError):
    raise InvalidArgument(f"{name} must be a number, got {value!r}") from None
  if not math.isfinite(value):
    raise InvalidArgument(f"{name} must be finite, got {value}")
  return value
