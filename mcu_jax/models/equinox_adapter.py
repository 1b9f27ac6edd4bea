"""``from_equinox`` and ``to_equinox``: an Equinox model as an ``Apply`` and back.

``params`` are ``eqx.partition(model, eqx.is_inexact_array)[0]`` (the float arrays, ``None``
elsewhere); the rest of the model is static. ``model_state`` is the ``eqx.nn.State`` of
``eqx.nn.make_with_state`` (``{}`` for a stateless model). Equinox models take one example:
``apply`` vmaps ``model(x, state, key=k)`` (``model(x, key=k)`` without a state) over the batch
with ``axis_name`` (BatchNorm's), the state shared, one key per example from the step's key in
training mode. Inference goes through ``eqx.nn.inference_mode``, with no key. BatchNorm
statistics are declared from the ``eqx.nn.BatchNorm`` layers themselves (their state indices,
mode and momentum).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax

from mcu_jax.errors import InvalidArgument
from mcu_jax.models.adapters import CastApply, CastsToDtype, takes_keyword
from mcu_jax.models.running_stats import CountedEmaStats, FirstTimeEmaStats, StatsLayout, path_str


def _is_batch_norm(x) -> bool:
  import equinox as eqx
  return isinstance(x, eqx.nn.BatchNorm)


@dataclasses.dataclass(frozen=True, eq=False)
class EquinoxApply(CastsToDtype):
  """``Apply`` of an Equinox model's static part; see ``from_equinox``. Hashed by identity
  (an Equinox model's static part may hold lists): reuse one apply to reuse compilations."""
  static: Any
  stateful: bool
  axis_name: Any = "batch"
  takes_key: bool = True

  def model(self, params):
    import equinox as eqx
    return eqx.combine(params, self.static)

  def __call__(self, params, model_state, inputs, train, rng=None):
    import equinox as eqx
    if self.stateful and not isinstance(model_state, eqx.nn.State):
      raise InvalidArgument("model_state: expected the eqx.nn.State of eqx.nn.make_with_state, "
                            f"got {type(model_state).__name__}")
    if not self.stateful and jax.tree.leaves(model_state):
      raise InvalidArgument("model_state: this Equinox model has no state; expected {}, got a "
                            f"tree with {len(jax.tree.leaves(model_state))} arrays")
    model = eqx.nn.inference_mode(self.model(params), value=not train)
    # A fresh State object: Equinox invalidates a State once a layer has set it, and callers
    # (a recalibration pass, a scan) may call apply several times with one.
    model_state = jax.tree.map(lambda x: x, model_state)
    keys = None
    if train and rng is not None and self.takes_key:
      keys = jax.random.split(rng, inputs.shape[0])
    kwargs = (lambda k: {"key": k}) if self.takes_key else (lambda k: {})
    if self.stateful:
      logits, new_state = jax.vmap(lambda x, k: model(x, model_state, **kwargs(k)),
                                   axis_name=self.axis_name, in_axes=(0, 0 if keys is not None
                                                                      else None),
                                   out_axes=(0, None))(inputs, keys)
      return logits, (new_state if train else model_state)
    logits = jax.vmap(lambda x, k: model(x, **kwargs(k)), axis_name=self.axis_name,
                      in_axes=(0, 0 if keys is not None else None))(inputs, keys)
    return logits, model_state

  def running_stats(self, params, model_state, sample) -> StatsLayout:
    """Every ``eqx.nn.BatchNorm`` of the model: ``FirstTimeEmaStats`` in mode "ema",
    ``CountedEmaStats`` in mode "batch". Any other state entry a training forward moves is
    refused by the verification in ``mcu_jax.runtime.batchnorm``."""
    del sample
    if not self.stateful:
      return StatsLayout((), "equinox")
    model = self.model(params)
    leaves, treedef = jax.tree.flatten(model_state)
    index = jax.tree.unflatten(treedef, list(range(len(leaves))))   # state of leaf indices
    entries: list[FirstTimeEmaStats | CountedEmaStats] = []
    found = jax.tree_util.tree_flatten_with_path(model, is_leaf=_is_batch_norm)[0]
    for path, layer in found:
      if not _is_batch_norm(layer):
        continue
      name = path_str(jax.tree_util.keystr(path, simple=True, separator="/").split("/"))
      if layer.mode == "ema":
        mean, var = index.get(layer.ema_state_index)
        entries.append(FirstTimeEmaStats(name, index.get(layer.ema_first_time_index), mean, var,
                                         float(layer.momentum)))
      elif layer.mode == "batch":
        mean, var = index.get(layer.batch_state_index)
        entries.append(CountedEmaStats(name, index.get(layer.batch_counter), mean, var,
                                       float(layer.momentum)))
      else:
        raise InvalidArgument(f"model: the BatchNorm {name} has mode {layer.mode!r}, whose "
                              "statistics mcu_jax does not know")
    return StatsLayout(tuple(entries), "equinox")


def from_equinox(model, state=None, *, axis_name="batch") -> tuple[EquinoxApply, Any, Any]:
  """``(apply, params, model_state)`` of an Equinox model.

  ``model(x, state, *, key=None) -> (logits, state)`` for one example ``x`` when it has a
  state (``model, state = eqx.nn.make_with_state(Net)(...)``), ``model(x, *, key=None) ->
  logits`` otherwise; a model whose ``__call__`` takes no ``key`` is called without one.
  ``axis_name`` is the name its BatchNorm layers were built with. ``model_state`` is ``state``
  (``{}`` without one). ``to_equinox`` is the way back.

  Example::

      model, state = eqx.nn.make_with_state(Net)(jax.random.key(0))
      apply, params, model_state = from_equinox(model, state)
  """
  import equinox as eqx
  if not isinstance(model, eqx.Module):
    raise InvalidArgument(f"model: expected an equinox.Module, got {type(model).__name__}")
  has_state_index = any(isinstance(x, eqx.nn.StateIndex) for x in jax.tree.leaves(
      model, is_leaf=lambda x: isinstance(x, eqx.nn.StateIndex)))
  if state is None and has_state_index:
    raise InvalidArgument("state: the model keeps state (BatchNorm or another stateful layer); "
                          "pass the state of eqx.nn.make_with_state")
  if state is not None and not isinstance(state, eqx.nn.State):
    raise InvalidArgument(f"state: expected an eqx.nn.State or None, got {type(state).__name__}")
  params, static = eqx.partition(model, eqx.is_inexact_array)
  apply = EquinoxApply(static, state is not None, axis_name,
                       takes_keyword(type(model).__call__, "key"))
  return apply, params, ({} if state is None else state)


def to_equinox(apply, params, model_state=None):
  """The Equinox model holding ``params`` (``apply`` from ``from_equinox``), with
  ``model_state`` as ``(model, state)`` when the model is stateful."""
  inner = apply.inner if isinstance(apply, CastApply) else apply
  if not isinstance(inner, EquinoxApply):
    raise InvalidArgument(f"apply: expected the apply of from_equinox, got "
                          f"{type(apply).__name__}")
  model = inner.model(params)
  return (model, model_state) if inner.stateful else model


__all__ = ["EquinoxApply", "from_equinox", "to_equinox"]
