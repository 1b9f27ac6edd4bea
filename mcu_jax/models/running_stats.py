"""What a model state's BatchNorm statistics mean: declared, never guessed.

Recalibrating BatchNorm for phi(t) means writing into the model state the exact mean and
biased variance of every BatchNorm layer's input over a pass of data, so that the model's own
inference reads exactly those. How a library stores them differs, and a wrong reading is a
silent wrong answer (a debiased average read as a plain one, a variance averaged like a mean).
So each adapter declares its layers' statistics as a ``StatsLayout``: one entry per BatchNorm
layer, naming the leaves of ``jax.tree.leaves(model_state)`` it uses and the rule it follows.

An entry does three things, each on the flat list of state leaves:

* ``reset(leaves)``: a state from which one training forward stores the batch's statistics in
  a form ``read`` can decode;
* ``read(leaves)``: that batch's (mean, biased variance), from the leaves a training forward
  returned after ``reset``;
* ``write(leaves, mean, var)``: a state whose inference reads exactly (mean, var), counters
  and debiasing set to match; ``inferred(leaves)`` is what inference reads from a state.

The rules, one class each:

==========================  ========================================================
``EmaStats``                ``stored <- momentum * stored + (1 - momentum) * batch``; inference
                            reads ``stored`` (Flax Linen and NNX ``BatchNorm``; declared or
                            verified-probed plain states)
``FirstTimeEmaStats``       the same after a first-time flag copies the batch as it is
                            (Equinox ``BatchNorm(mode="ema")``)
``DebiasedEmaStats``        Haiku's ``ExponentialMovingAverage`` (``counter``, ``hidden``,
                            ``average`` = hidden / (1 - decay^counter)), as in ``hk.BatchNorm``
``CountedEmaStats``         Equinox ``BatchNorm(mode="batch")``: a counter and hidden EMAs that
                            inference divides by 1 - momentum^counter
==========================  ========================================================

Entries are frozen dataclasses of ints, floats and strings (hashable: a layout is a static jit
argument). ``mcu_jax.runtime.batchnorm`` runs the pass and verifies a layout against the model on a
probe batch before it is used. ``RunningStats`` declares the statistics of an apply of one's
own (``mcu_jax.models.with_running_stats``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from mcu_jax.errors import InvalidArgument
from mcu_jax.typing import PyTree

Leaves = list


def _zeros(x):
  return jnp.zeros(jnp.shape(x), jnp.result_type(x))


def _keep(momentum: float, like) -> jax.Array:
  """``1 - momentum`` as the libraries compute it: a Python float times a float array, so the
  double ``1 - momentum`` rounded once to the array's dtype."""
  return jnp.asarray(1.0 - momentum, jnp.result_type(like))


@dataclasses.dataclass(frozen=True)
class EmaStats:
  """Running statistics ``stored <- momentum * stored + (1 - momentum) * batch``; inference
  reads ``stored``. ``var`` is None for a running mean without a variance."""
  name: str
  mean: int
  var: int | None
  momentum: float

  @property
  def indices(self) -> tuple[int, ...]:
    return (self.mean,) if self.var is None else (self.mean, self.var)

  def reset(self, leaves: Leaves) -> Leaves:
    leaves = list(leaves)
    for i in self.indices:
      leaves[i] = _zeros(leaves[i])
    return leaves

  def read(self, leaves: Leaves):
    mean = leaves[self.mean] / _keep(self.momentum, leaves[self.mean])
    var = None if self.var is None else leaves[self.var] / _keep(self.momentum, leaves[self.var])
    return mean, var

  def write(self, leaves: Leaves, mean, var) -> Leaves:
    leaves = list(leaves)
    leaves[self.mean] = mean.astype(jnp.result_type(leaves[self.mean]))
    if self.var is not None:
      leaves[self.var] = var.astype(jnp.result_type(leaves[self.var]))
    return leaves

  def inferred(self, leaves: Leaves):
    return leaves[self.mean], None if self.var is None else leaves[self.var]


@dataclasses.dataclass(frozen=True)
class FirstTimeEmaStats:
  """Equinox's ``BatchNorm(mode="ema")``: while the boolean leaf ``first`` is True a training
  forward stores the batch's statistics as they are (and clears it); afterwards an EMA with
  ``momentum``. Inference reads the stored mean and variance."""
  name: str
  first: int
  mean: int
  var: int
  momentum: float

  @property
  def indices(self) -> tuple[int, ...]:
    return (self.first, self.mean, self.var)

  def reset(self, leaves: Leaves) -> Leaves:
    leaves = list(leaves)
    leaves[self.first] = jnp.ones_like(leaves[self.first])
    leaves[self.mean], leaves[self.var] = _zeros(leaves[self.mean]), _zeros(leaves[self.var])
    return leaves

  def read(self, leaves: Leaves):
    return leaves[self.mean], leaves[self.var]

  def write(self, leaves: Leaves, mean, var) -> Leaves:
    leaves = list(leaves)
    leaves[self.first] = jnp.zeros_like(leaves[self.first])
    leaves[self.mean] = mean.astype(jnp.result_type(leaves[self.mean]))
    leaves[self.var] = var.astype(jnp.result_type(leaves[self.var]))
    return leaves

  def inferred(self, leaves: Leaves):
    return leaves[self.mean], leaves[self.var]


def _int_like(value, like):
  return jnp.asarray(value, jnp.result_type(like))


@dataclasses.dataclass(frozen=True)
class DebiasedEmaStats:
  """Haiku's ``hk.BatchNorm``: two ``hk.ExponentialMovingAverage`` (mean, var), each a
  ``counter`` (int), ``hidden <- decay * hidden + (1 - decay) * batch`` and ``average`` =
  ``hidden / (1 - decay^counter)`` with ``zero_debias`` (else ``hidden``). Inference reads
  ``average``. Indices are (mean's, var's) pairs."""
  name: str
  counter: tuple[int, int]
  hidden: tuple[int, int]
  average: tuple[int, int]
  decay: float
  zero_debias: bool = True

  @property
  def indices(self) -> tuple[int, ...]:
    return self.counter + self.hidden + self.average

  def reset(self, leaves: Leaves) -> Leaves:
    leaves = list(leaves)
    for i in self.counter + self.hidden:
      leaves[i] = _zeros(leaves[i])
    return leaves

  def read(self, leaves: Leaves):
    # After reset the counter is 1 and hidden = (1 - decay) * batch (decay in the dtype).
    out = []
    for i in self.hidden:
      x = leaves[i]
      one = jnp.ones([], jnp.result_type(x))
      out.append(x / (one - jnp.asarray(self.decay, jnp.result_type(x))))
    return tuple(out)

  def write(self, leaves: Leaves, mean, var) -> Leaves:
    leaves = list(leaves)
    for c, h, a, value in zip(self.counter, self.hidden, self.average, (mean, var)):
      dtype = jnp.result_type(leaves[h])
      value = value.astype(dtype)
      count = jnp.maximum(leaves[c], _int_like(1, leaves[c]))
      one, decay = jnp.ones([], dtype), jnp.asarray(self.decay, dtype)
      scale = one - jnp.power(decay, count) if self.zero_debias else one
      leaves[c], leaves[h], leaves[a] = count, value * scale, value
    return leaves

  def inferred(self, leaves: Leaves):
    return leaves[self.average[0]], leaves[self.average[1]]


@dataclasses.dataclass(frozen=True)
class CountedEmaStats:
  """Equinox's ``BatchNorm(mode="batch")``: an int ``counter`` and hidden EMAs ``mean``, ``var``
  (``hidden <- momentum * hidden + (1 - momentum) * batch``); inference reads
  ``hidden / (1 - momentum^counter)`` (``hidden`` itself at counter 0)."""
  name: str
  counter: int
  mean: int
  var: int
  momentum: float

  @property
  def indices(self) -> tuple[int, ...]:
    return (self.counter, self.mean, self.var)

  def _scale(self, counter, dtype):
    # Equinox: jnp.where(counter == 0, 1, 1 - momentum**counter)
    return jnp.where(counter == 0, 1, 1 - self.momentum ** counter).astype(dtype)

  def reset(self, leaves: Leaves) -> Leaves:
    leaves = list(leaves)
    for i in self.indices:
      leaves[i] = _zeros(leaves[i])
    return leaves

  def read(self, leaves: Leaves):
    return tuple(leaves[i] / _keep(self.momentum, leaves[i]) for i in (self.mean, self.var))

  def write(self, leaves: Leaves, mean, var) -> Leaves:
    leaves = list(leaves)
    # At counter 0 a next training step would divide the blend by 1 - momentum: count from 1.
    count = jnp.maximum(leaves[self.counter], _int_like(1, leaves[self.counter]))
    leaves[self.counter] = count
    for i, value in ((self.mean, mean), (self.var, var)):
      dtype = jnp.result_type(leaves[i])
      leaves[i] = value.astype(dtype) * self._scale(count, dtype)
    return leaves

  def inferred(self, leaves: Leaves):
    count = leaves[self.counter]
    return tuple(leaves[i] / self._scale(count, jnp.result_type(leaves[i]))
                 for i in (self.mean, self.var))


Entry = EmaStats | FirstTimeEmaStats | DebiasedEmaStats | CountedEmaStats


@dataclasses.dataclass(frozen=True)
class StatsLayout:
  """Every BatchNorm layer's statistics in a model state: ``entries`` in forward order.

  ``source`` says where the description came from ("linen", "nnx", "haiku", "equinox",
  "declared" or "probed"), for messages. An empty layout means: nothing to recalibrate.
  """
  entries: tuple[Entry, ...] = ()
  source: str = "none"

  @property
  def indices(self) -> frozenset[int]:
    return frozenset(i for entry in self.entries for i in entry.indices)

  def reset(self, leaves: Leaves) -> Leaves:
    for entry in self.entries:
      leaves = entry.reset(leaves)
    return list(leaves)

  def read(self, leaves: Leaves) -> list:
    return [entry.read(leaves) for entry in self.entries]

  def write(self, leaves: Leaves, stats: Sequence) -> Leaves:
    for entry, (mean, var) in zip(self.entries, stats):
      leaves = entry.write(leaves, mean, var)
    return list(leaves)

  def inferred(self, leaves: Leaves) -> list:
    return [entry.inferred(leaves) for entry in self.entries]


# ---------------------------------------------------------------------------------------------
# Paths: the adapters name leaves by path; the layout stores their flat indices.


def _key_name(key):
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return getattr(key, attr)
  return str(key)


def named_path(path) -> tuple:
  """The names along a ``tree_flatten_with_path`` path, without NNX's trailing ``.value``."""
  names = tuple(_key_name(k) for k in path)
  while names and names[-1] in ("value", "raw_value"):
    names = names[:-1]
  return names


def leaf_paths(state: PyTree) -> list[tuple]:
  """``named_path`` of every leaf of ``state``, in ``jax.tree.leaves`` order."""
  return [named_path(path) for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]]


def path_str(path: Sequence) -> str:
  return "/".join(map(str, path))


def is_float(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def index_of(paths: list[tuple], path: tuple, what: str) -> int:
  """The index of ``path`` in ``paths``; a missing one raises naming ``what``."""
  try:
    return paths.index(tuple(path))
  except ValueError:
    raise InvalidArgument(f"model_state: expected a leaf {path_str(path)} ({what}); the state "
                          f"has {', '.join(path_str(p) for p in paths[:8])}"
                          f"{', ...' if len(paths) > 8 else ''}") from None


# ---------------------------------------------------------------------------------------------
# A declaration for a model state no adapter describes (``models.with_running_stats``).


@dataclasses.dataclass(frozen=True)
class RunningStats:
  """One BatchNorm layer of your own: where its running mean and variance live in the model
  state ("/"-joined key path, e.g. ``"bn1/mean"``) and its momentum
  (``stored <- momentum * stored + (1 - momentum) * batch``; inference reads ``stored``)."""
  mean: str
  var: str | None
  momentum: float

  def __post_init__(self):
    if not 0.0 <= float(self.momentum) < 1.0:
      raise InvalidArgument(f"momentum: expected a number in [0, 1), got {self.momentum!r}")


__all__ = ["StatsLayout", "EmaStats", "FirstTimeEmaStats", "DebiasedEmaStats",
           "CountedEmaStats", "RunningStats", "named_path", "leaf_paths", "path_str", "index_of",
           "is_float"]
