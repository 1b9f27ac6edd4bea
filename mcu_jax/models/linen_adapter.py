"""``from_linen``: a Flax Linen module as an ``Apply``.

``model_state`` is the dict of the module's non-``params`` collections
(``{"batch_stats": variables["batch_stats"]}``, ``{}`` without BatchNorm). In training mode
they are mutable and come back updated, and the step's key feeds the module's RNG
collections (``rngs``, by default ``("dropout",)``). BatchNorm statistics are declared from
the ``nn.BatchNorm`` layers themselves: an abstract training forward records each one's
scope path, momentum and mode (``nn.intercept_methods``).
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import jax
import jax.numpy as jnp

from mcu_jax.errors import InvalidArgument
from mcu_jax.models.adapters import TRAIN_ARGS, CastApply, stream_key
from mcu_jax.models.running_stats import (
  EmaStats,
  StatsLayout,
  index_of,
  is_float,
  leaf_paths,
  path_str,
)


def _train_arg(module) -> str | None:
  parameters = inspect.signature(module.__call__).parameters
  return next((name for name in TRAIN_ARGS if name in parameters), None)


@dataclasses.dataclass(frozen=True)
class LinenApply:
  """``Apply`` of a Flax Linen module; see ``from_linen``."""
  module: Any
  train_arg: str | None
  rngs: tuple[str, ...] = ("dropout",)

  def _variables(self, params, model_state):
    if not isinstance(model_state, dict) or "params" in model_state:
      raise InvalidArgument(
          "model_state: expected a dict of the module's non-'params' collections, e.g. "
          "{'batch_stats': variables['batch_stats']} or {} (params go separately), got "
          + (f"a dict with keys {sorted(model_state)}" if isinstance(model_state, dict)
             else type(model_state).__name__))
    return {"params": params, **model_state}

  def __call__(self, params, model_state, inputs, train, rng=None):
    import flax.errors
    variables = self._variables(params, model_state)
    kwargs = {} if self.train_arg is None else {self.train_arg: bool(train)}
    if train and rng is not None:
      kwargs["rngs"] = {name: stream_key(rng, i) for i, name in enumerate(self.rngs)}
    try:
      if train and model_state:
        logits, updates = self.module.apply(variables, inputs, mutable=list(model_state),
                                            **kwargs)
        return logits, {**model_state, **updates}
      return self.module.apply(variables, inputs, **kwargs), model_state
    except flax.errors.InvalidRngError as e:
      raise InvalidArgument(
          f"apply: {type(self.module).__name__} needs an RNG stream mcu_jax does not feed: "
          f"{str(e).split(' (')[0]}. Training feeds {list(self.rngs)}: name the module's "
          "streams with from_linen(module, rngs=(...))" + (
              "" if train else "; in inference mode the module must not draw random numbers "
              f"(its {self.train_arg or 'train'} flag should make it deterministic)")) from e
    except flax.errors.FlaxError as e:
      if "Scope" not in type(e).__name__:
        raise
      raise InvalidArgument(
          f"model_state does not fit {type(self.module).__name__}: {str(e).split(' (')[0]}. "
          "Expected the module's non-'params' collections as a dict, e.g. "
          f"{{'batch_stats': variables['batch_stats']}}; got keys {sorted(model_state)}") from e

  def running_stats(self, params, model_state, sample) -> StatsLayout:
    """The ``nn.BatchNorm`` layers that run on batch statistics in training mode, each an
    ``EmaStats`` of its ``batch_stats/<scope>/mean`` and ``var`` with its momentum. A
    ``batch_stats`` leaf of another layer, or a BatchNorm called twice per forward, raises."""
    import flax.linen as nn
    calls: list[tuple[tuple, float, bool]] = []

    def record(next_fun, args, kwargs, context):
      module = context.module
      if isinstance(module, nn.BatchNorm) and context.method_name == "__call__":
        given = kwargs.get("use_running_average", args[1] if len(args) > 1 else None)
        frozen = module.use_running_average if given is None else given
        calls.append((tuple(module.scope.path), float(module.momentum), bool(frozen)))
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
      jax.eval_shape(lambda p, s, x: self(p, s, x, True, jax.random.PRNGKey(0)), params,
                     model_state, sample)
    paths = leaf_paths(model_state)
    entries, covered = [], set()
    for scope, momentum, frozen in calls:
      name = path_str(scope) or type(self.module).__name__
      if scope in covered:
        raise InvalidArgument(
            f"model_state: the BatchNorm {name} runs twice per forward, so no single pair of "
            "statistics fits it; its exact recalibration is unknown")
      covered.add(scope)
      mean_path, var_path = ("batch_stats",) + scope + ("mean",), ("batch_stats",) + scope + (
          "var",)
      if frozen:      # use_running_average in training mode: its statistics never move
        continue
      entries.append(EmaStats(name, index_of(paths, mean_path, f"the mean of BatchNorm {name}"),
                              index_of(paths, var_path, f"the variance of BatchNorm {name}"),
                              momentum))
    for path, leaf in zip(paths, jax.tree.leaves(model_state)):
      if path[:1] == ("batch_stats",) and is_float(leaf) and path[1:-1] not in covered:
        raise InvalidArgument(
            f"model_state: batch_stats leaf {path_str(path)} is not kept by a flax.linen."
            "BatchNorm, so how inference reads it is unknown; declare it with "
            "models.with_running_stats(apply, [models.RunningStats(mean=..., var=..., "
            "momentum=...)])")
    return StatsLayout(tuple(entries), "linen")

  def with_dtype(self, dtype):
    """The same model computing in ``dtype`` (params stay as they are)."""
    if "dtype" in {f.name for f in dataclasses.fields(self.module)}:
      return dataclasses.replace(self, module=self.module.clone(dtype=dtype))
    return CastApply(self, jnp.dtype(dtype))


def from_linen(module, *, train_arg: str | None = "auto",
               rngs: tuple[str, ...] = ("dropout",)) -> LinenApply:
  """The ``Apply`` of a Flax Linen module.

  ``train_arg`` names the module's boolean training argument; "auto" finds ``train``,
  ``training`` or ``is_training`` in its ``__call__`` signature, and None means the module
  takes none (it is called the same way in both modes). ``rngs``: the RNG collections fed in
  training mode, each with its own key from the step's key (``nn.Dropout`` draws from
  ``"dropout"``). ``model_state`` is the dict of the module's non-``params`` collections
  (``{"batch_stats": ...}``), ``{}`` if it has none.
  """
  import flax.linen as nn
  if not isinstance(module, nn.Module):
    raise InvalidArgument(f"module: expected a flax.linen.Module, got {type(module).__name__}")
  if train_arg == "auto":
    train_arg = _train_arg(module)
  elif train_arg is not None and train_arg not in inspect.signature(module.__call__).parameters:
    raise InvalidArgument(f"train_arg: {type(module).__name__}.__call__ has no argument "
                          f"{train_arg!r}")
  if isinstance(rngs, str) or not all(isinstance(r, str) for r in rngs):
    raise InvalidArgument(f"rngs: expected a tuple of RNG collection names, got {rngs!r}")
  return LinenApply(module, train_arg, tuple(rngs))


__all__ = ["LinenApply", "from_linen"]
