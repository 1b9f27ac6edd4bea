"""``from_haiku``: a Haiku ``transform_with_state`` function as an ``Apply``.

``params`` and ``model_state`` are Haiku's own dicts. Training mode is the function's
``is_training`` argument (``train_arg`` names another, None for none); in training mode the
step's key is Haiku's ``rng`` (``hk.next_rng_key``), in inference mode the rng is None.
BatchNorm statistics are declared from the ``hk.BatchNorm`` modules themselves: an abstract
training forward records each one's two ``hk.ExponentialMovingAverage`` (state names, decay,
zero-debiasing) with ``hk.intercept_methods``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax

from mcu_jax.errors import InvalidArgument
from mcu_jax.models.adapters import CastsToDtype
from mcu_jax.models.running_stats import (
  DebiasedEmaStats,
  StatsLayout,
  index_of,
  is_float,
  leaf_paths,
  path_str,
)


@dataclasses.dataclass(frozen=True)
class HaikuApply(CastsToDtype):
  """``Apply`` of ``hk.transform_with_state(f)``; see ``from_haiku``."""
  transformed: Any
  train_arg: str | None = "is_training"

  def __call__(self, params, model_state, inputs, train, rng=None):
    kwargs = {} if self.train_arg is None else {self.train_arg: bool(train)}
    try:
      logits, new_state = self.transformed.apply(params, model_state, rng if train else None,
                                                 inputs, **kwargs)
    except TypeError as e:
      if self.train_arg is None or self.train_arg not in str(e):
        raise
      raise InvalidArgument(f"train_arg: the Haiku function takes no {self.train_arg!r} "
                            "argument; give its name with from_haiku(f, train_arg=...) or None "
                            "for a function without one") from e
    except ValueError as e:
      if "PRNGKey" not in str(e) and "rng" not in str(e).lower():
        raise
      mode = "training" if train else "inference"
      raise InvalidArgument(f"apply: the Haiku function draws random numbers in {mode} mode "
                            + ("but no key was given" if train else
                               "; inference must be deterministic (gate hk.next_rng_key on "
                               f"{self.train_arg or 'the training flag'})")) from e
    return logits, (new_state if train else model_state)

  def running_stats(self, params, model_state, sample) -> StatsLayout:
    """Every ``hk.BatchNorm`` called in training mode as a ``DebiasedEmaStats`` of its
    ``mean_ema`` and ``var_ema`` states; another module's moving average, a BatchNorm whose
    EMAs were replaced, or one called twice per forward, raises."""
    import haiku as hk
    calls = []

    def record(next_fun, args, kwargs, context):
      module = context.module
      if isinstance(module, hk.BatchNorm) and context.method_name == "__call__":
        training = kwargs.get("is_training", args[1] if len(args) > 1 else None)
        calls.append((module.module_name, module.mean_ema, module.var_ema, bool(training)))
      return next_fun(*args, **kwargs)

    with hk.intercept_methods(record):
      jax.eval_shape(lambda p, s, x: self(p, s, x, True, jax.random.PRNGKey(0)), params,
                     model_state, sample)
    paths = leaf_paths(model_state)
    entries: list[DebiasedEmaStats] = []
    covered: set[str] = set()
    for name, mean_ema, var_ema, training in calls:
      if mean_ema.module_name in covered:
        raise InvalidArgument(f"model_state: the BatchNorm {name} runs twice per forward, so no "
                              "single pair of statistics fits it; its exact recalibration is "
                              "unknown")
      emas = (mean_ema, var_ema)
      covered.update(ema.module_name for ema in emas)
      if not training:
        continue
      if any(not isinstance(ema, hk.ExponentialMovingAverage) for ema in emas) or (
          mean_ema.decay != var_ema.decay or mean_ema.zero_debias != var_ema.zero_debias):
        raise InvalidArgument(f"model_state: the BatchNorm {name} keeps its statistics in "
                              "moving averages of another kind; their recalibration is unknown")
      at = lambda ema, key: index_of(paths, (ema.module_name, key), f"{ema.module_name}'s {key}")
      entries.append(DebiasedEmaStats(
          name, counter=(at(mean_ema, "counter"), at(var_ema, "counter")),
          hidden=(at(mean_ema, "hidden"), at(var_ema, "hidden")),
          average=(at(mean_ema, "average"), at(var_ema, "average")), decay=float(mean_ema.decay),
          zero_debias=bool(mean_ema.zero_debias)))
    for path, leaf in zip(paths, jax.tree.leaves(model_state)):
      if is_float(leaf) and path[0] not in covered and path[-1] in ("hidden", "average"):
        raise InvalidArgument(
            f"model_state: {path_str(path)} is a moving average outside any hk.BatchNorm, so "
            "what recalibration should write there is unknown; mcu_jax cannot recalibrate "
            "this model's state exactly")
    return StatsLayout(tuple(entries), "haiku")


def from_haiku(transformed, *, train_arg: str | None = "is_training") -> HaikuApply:
  """The ``Apply`` of ``hk.transform_with_state(f)`` (or ``hk.transform(f)``, stateless).

  ``f(inputs, is_training)`` returns logits; training mode is passed as ``is_training=``, or as
  the keyword ``train_arg`` names (``from_haiku(t, train_arg="train")``; None: ``f`` takes no
  training flag). ``params`` and ``model_state`` are what ``transformed.init`` returns (state
  ``{}`` for ``hk.transform``). In training mode ``hk.next_rng_key()`` draws from the step's
  key, so ``hk.dropout(hk.next_rng_key(), rate, x)`` gets a fresh mask at every step; gate it
  on the training flag, inference runs with rng None.
  """
  import haiku as hk
  if isinstance(transformed, hk.Transformed):
    transformed = hk.with_empty_state(transformed)
  if not isinstance(transformed, hk.TransformedWithState):
    raise InvalidArgument("transformed: expected hk.transform_with_state(f) or "
                          f"hk.transform(f), got {type(transformed).__name__}")
  if train_arg is not None and not isinstance(train_arg, str):
    raise InvalidArgument(f"train_arg: expected a keyword name or None, got {train_arg!r}")
  return HaikuApply(transformed, train_arg)


__all__ = ["HaikuApply", "from_haiku"]
