"""One way to refuse bad input: the checks that raise ``mcu_jax.errors.InvalidArgument``.

Every message starts with the argument's name (a config key path for configurations) and
says what was expected, e.g.::

    >>> check_number("lr", -1.0, low=0.0, low_open=True)
    Traceback (most recent call last):
    ...
    mcu_jax.errors.InvalidArgument: lr: must lie in (0.0, inf), got -1.0

``InvalidArgument`` is both a ``ValueError`` and a ``TypeError``, so callers may catch either.
Configuration errors (``mcu_jax.pipeline.config.ConfigError``) are the same checks with the key path
as the name.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NoReturn

import numpy as np

from mcu_jax.errors import InvalidArgument, MCUError, NonFiniteError  # noqa: F401 (re-exported)


def fail(name: str, expected: str, got: Any, error: type = InvalidArgument) -> NoReturn:
  """Raises ``error("<name>: expected <expected>, got <got>")``."""
  raise error(f"{name}: expected {expected}, got {got!r}")


def is_number(value: Any) -> bool:
  """A real number (Python or NumPy scalar), not a bool."""
  return (isinstance(value, (int, float, np.integer, np.floating))
          and not isinstance(value, (bool, np.bool_)))


def check_number(name: str, value: Any, *, low: float | None = None,
                 high: float | None = None, low_open: bool = False, high_open: bool = False,
                 integer: bool = False, error: type = InvalidArgument):
  """``value`` if it is a finite number (an integer with ``integer``) in the interval.

  Bounds of None are infinite; ``low_open``/``high_open`` exclude the bound itself.
  """
  if integer and not (isinstance(value, (int, np.integer)) and is_number(value)):
    raise error(f"{name}: must be an integer, got {type(value).__name__} {value!r}")
  if not is_number(value):
    raise error(f"{name}: expected a number, got {type(value).__name__} {value!r}")
  if not math.isfinite(float(value)):
    raise error(f"{name}: must be finite, got {value!r}")
  ok = True
  if low is not None:
    ok = value > low if low_open else value >= low
  if ok and high is not None:
    ok = value < high if high_open else value <= high
  if not ok:
    interval = (("(" if low_open or low is None else "[")
                + f"{'-inf' if low is None else low}, {'inf' if high is None else high}"
                + (")" if high_open or high is None else "]"))
    raise error(f"{name}: must lie in {interval}, got {value!r}")
  return value


def check_positive(name: str, value: Any, *, integer: bool = False,
                   error: type = InvalidArgument):
  """``value`` if it is a finite number > 0 (an integer with ``integer``)."""
  return check_number(name, value, low=0, low_open=True, integer=integer, error=error)


def check_choice(name: str, value: Any, choices: Iterable, error: type = InvalidArgument):
  """``value`` if it is one of ``choices``."""
  choices = tuple(choices)
  if value not in choices:
    raise error(f"{name}: {value!r} is not one of {', '.join(map(str, choices))}")
  return value


def dtype_of(x) -> np.dtype:
  """The dtype of an array-like (NumPy, JAX or a list) without copying device arrays."""
  dtype = getattr(x, "dtype", None)
  return np.dtype(dtype) if dtype is not None else np.asarray(x).dtype


def check_pair(name: str, value: Any) -> tuple[np.ndarray | Any, np.ndarray | Any]:
  """An ``(inputs, labels)`` pair: inputs (N, ...) and integer labels (N,), N > 0."""
  if not isinstance(value, (tuple, list)) or len(value) != 2:
    fail(name, "an (inputs, labels) pair", type(value).__name__)
  inputs, labels = value
  in_shape, label_shape = np.shape(inputs), np.shape(labels)
  if len(in_shape) < 1 or len(label_shape) != 1 or in_shape[0] != label_shape[0]:
    fail(name, "inputs of shape (N, ...) and labels of shape (N,)",
         f"shapes {in_shape} and {label_shape}")
  if label_shape[0] == 0:
    fail(name, "a non-empty set", "0 examples")
  if not np.issubdtype(dtype_of(labels), np.integer):
    fail(f"{name} labels", "integers", str(dtype_of(labels)))
  return inputs, labels


def check_labels(name: str, labels, num_classes: int) -> None:
  """Raises unless every label of ``labels`` (N,) is an integer in [0, num_classes), naming
  ``name`` and the first bad index."""
  values = np.asarray(labels)
  bad = np.flatnonzero((values < 0) | (values >= num_classes))
  if bad.size:
    i = int(bad[0])
    raise InvalidArgument(f"{name} labels: expected integers in [0, {num_classes}) (the model "
                          f"has {num_classes} classes), got {values[i]} at index {i} "
                          f"({bad.size} bad in all)")


def check_finite_inputs(name: str, inputs) -> None:
  """Raises unless floating ``inputs`` are all finite, naming the first bad example."""
  if not np.issubdtype(dtype_of(inputs), np.floating):
    return
  values = np.asarray(inputs)
  ok = np.isfinite(values.reshape(values.shape[0], -1)).all(axis=1)
  if not ok.all():
    i = int(np.flatnonzero(~ok)[0])
    raise InvalidArgument(f"{name} inputs: expected finite values, got NaN or infinity in "
                          f"example {i} ({int((~ok).sum())} such examples)")


def check_finite_tree(name: str, tree) -> None:
  """Raises unless every floating leaf of ``tree`` is finite, naming the first bad leaf."""
  import jax
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if np.issubdtype(dtype_of(leaf), np.floating) and not np.all(np.isfinite(np.asarray(leaf))):
      raise InvalidArgument(f"{name}: expected finite parameters, got NaN or infinity in "
                            f"{jax.tree_util.keystr(path)}")
