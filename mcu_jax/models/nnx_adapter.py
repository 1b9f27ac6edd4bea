"""``from_nnx`` and ``to_nnx``: a Flax NNX model as an ``Apply`` and back.

The model is split into ``params`` (its ``nnx.Param`` variables) and ``model_state``
(everything else: ``BatchStat``s, the RNG streams' keys and counts). ``apply`` merges them into
a fresh copy at every call, in ``train()`` or ``eval()`` mode. In training mode with a step key,
every ``nnx.RngStream`` of the copy is reseeded from it (its own key folded with bits of the
step's key, count 0), so dropout draws fresh masks at every step, reproducibly from the call's
seed; the keys stay key arrays in the returned state. BatchNorm statistics are declared from
the ``nnx.BatchNorm`` modules themselves.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from mcu_jax.errors import InvalidArgument
from mcu_jax.models.adapters import CastApply, CastsToDtype, stream_key
from mcu_jax.models.running_stats import (
  EmaStats,
  StatsLayout,
  index_of,
  is_float,
  leaf_paths,
  path_str,
)


def _reseed(model, rng) -> None:
  from flax import nnx
  streams = [node for _, node in nnx.iter_graph(model) if isinstance(node, nnx.RngStream)]
  for i, stream in enumerate(streams):
    bits = jax.random.bits(stream_key(rng, i), (), jnp.uint32)
    stream.key.set_value(jax.random.fold_in(stream.key.get_value(), bits))
    stream.count.set_value(jnp.zeros_like(stream.count.get_value()))


@dataclasses.dataclass(frozen=True)
class NnxApply(CastsToDtype):
  """``Apply`` of a Flax NNX model split into (graphdef, params, model_state); see
  ``from_nnx``."""
  graphdef: Any

  def _merge(self, params, model_state):
    from flax import nnx
    for name, tree in (("params", params), ("model_state", model_state)):
      if not isinstance(tree, (nnx.State, dict)):
        raise InvalidArgument(f"{name}: expected the nnx.State from from_nnx (or "
                              f"nnx.split(model, nnx.Param, ...)), got {type(tree).__name__}")
    # Fresh Variables at the current trace level: merge reuses the ones it is given, and a
    # state closed over from an outer trace (a scan's body) could not be mutated.
    fresh = jax.tree.map(lambda x: x, (params, model_state))
    try:
      return nnx.merge(self.graphdef, *fresh)
    except (ValueError, KeyError, TypeError) as e:
      raise InvalidArgument(f"params and model_state do not fit this NNX model: {e}") from e

  def __call__(self, params, model_state, inputs, train, rng=None):
    from flax import nnx
    model = self._merge(params, model_state)
    model.train() if train else model.eval()
    if train and rng is not None:
      _reseed(model, rng)
    logits = model(inputs)
    if not train:
      return logits, model_state
    _, _, new_state = nnx.split(model, nnx.Param, ...)
    return logits, new_state

  def running_stats(self, params, model_state, sample) -> StatsLayout:
    """Every ``nnx.BatchNorm`` as an ``EmaStats`` of its ``mean`` and ``var`` with its
    momentum; a ``BatchStat`` of another module raises."""
    from flax import nnx
    del sample
    model = self._merge(params, model_state)
    paths = leaf_paths(model_state)
    entries, covered = [], set()
    for path, node in nnx.iter_graph(model):
      if isinstance(node, nnx.BatchNorm) and node.use_running_average is not True:
        name = path_str(path) or type(node).__name__
        entries.append(EmaStats(name, index_of(paths, tuple(path) + ("mean",), f"{name}'s mean"),
                                index_of(paths, tuple(path) + ("var",), f"{name}'s var"),
                                float(node.momentum)))
      if isinstance(node, nnx.BatchNorm):
        covered.update({tuple(path) + ("mean",), tuple(path) + ("var",)})
    stats_paths = {tuple(path) for path, node in nnx.iter_graph(model)
                   if isinstance(node, nnx.BatchStat)}
    for path, leaf in zip(paths, jax.tree.leaves(model_state)):
      if path in stats_paths and path not in covered and is_float(leaf):
        raise InvalidArgument(
            f"model_state: the BatchStat {path_str(path)} is not kept by an nnx.BatchNorm, so "
            "how inference reads it is unknown; declare it with models.with_running_stats("
            "apply, [models.RunningStats(mean=..., var=..., momentum=...)])")
    return StatsLayout(tuple(entries), "nnx")


def from_nnx(model) -> tuple[NnxApply, Any, Any]:
  """``(apply, params, model_state)`` of a Flax NNX model.

  ``params`` is the ``nnx.State`` of its ``nnx.Param`` variables, ``model_state`` that of
  every other variable (BatchNorm's ``BatchStat``s, RNG streams, ...). ``apply`` merges them
  into a fresh copy of the model at every call; the model passed in is not changed.
  ``to_nnx`` is the way back.
  """
  from flax import nnx
  if not isinstance(model, nnx.Module):
    raise InvalidArgument(f"model: expected a flax.nnx.Module, got {type(model).__name__}")
  # mypy: flax types split's 2-filter result as variadic; it is exactly 3 long, hence the ignore
  graphdef, params, model_state = nnx.split(model, nnx.Param, ...)  # type: ignore[misc]
  return NnxApply(graphdef), params, model_state


def to_nnx(apply, params, model_state):
  """A new NNX model holding ``params`` and ``model_state``; ``apply`` from ``from_nnx``."""
  from flax import nnx
  inner = apply.inner if isinstance(apply, CastApply) else apply
  if not isinstance(inner, NnxApply):
    raise InvalidArgument(f"apply: expected the apply of from_nnx, got {type(apply).__name__}")
  return nnx.merge(inner.graphdef, params, model_state)


__all__ = ["NnxApply", "from_nnx", "to_nnx"]
