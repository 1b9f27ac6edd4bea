"""The one model convention of mcu_jax, and adapters to it from any JAX model.

Every function in mcu_jax that runs a model takes an ``Apply``::

    apply(params, model_state, inputs, train) -> (logits, new_model_state)

* ``params``: the trainable parameters, a pytree of float arrays (what the curve combines).
* ``model_state``: everything else the model keeps and training updates (BatchNorm's running
  statistics); ``{}`` for a model without any. In training mode the returned state carries
  the updated statistics; in inference mode it comes back unchanged. Its tree structure
  never changes.
* ``inputs``: a batch (B, ...) after preprocessing; ``logits``: (B, num_classes), float.

What ``model_state`` is, per adapter:

==================  =======================================================================
adapter             model_state
==================  =======================================================================
``from_function``   ``{}``: ``fn(params, inputs) -> logits`` has no state
``from_linen``      the module's non-``params`` collections as a dict:
                    ``{"batch_stats": variables["batch_stats"]}``, not ``batch_stats`` itself
``from_nnx``        the ``nnx.State`` of every variable that is not an ``nnx.Param``
==================  =======================================================================

A state of the wrong shape of tree raises ``InvalidArgument`` saying what was expected.
Adapters are small frozen dataclasses: equal adapters hash equal, so jitted functions that
take one as a static argument reuse their compilation.

Example (a plain function)::

    def mlp(params, x):
      h = jax.nn.relu(x @ params["w1"] + params["b1"])
      return h @ params["w2"] + params["b2"]

    apply = from_function(mlp)
    logits, _ = apply(params, {}, x, False)
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp

from mcu_jax.validation import InvalidArgument

PyTree = Any
Apply = Callable[[PyTree, PyTree, jax.Array, bool], tuple[jax.Array, PyTree]]

_TRAIN_ARGS = ("train", "training", "is_training")


@dataclasses.dataclass(frozen=True)
class FunctionApply:
  """``Apply`` of a stateless ``fn(params, inputs) -> logits``."""
  fn: Callable[[PyTree, jax.Array], jax.Array]

  def __call__(self, params, model_state, inputs, train):
    del train
    if jax.tree.leaves(model_state):
      raise InvalidArgument("model_state: from_function models have no state; expected {}, got "
                            f"a tree with {len(jax.tree.leaves(model_state))} arrays")
    return self.fn(params, inputs), model_state


def from_function(fn: Callable[[PyTree, jax.Array], jax.Array]) -> Apply:
  """The ``Apply`` of ``fn(params, inputs) -> logits`` (no model state: pass ``{}``)."""
  if not callable(fn):
    raise InvalidArgument(f"fn: expected a callable fn(params, inputs) -> logits, got "
                          f"{type(fn).__name__}")
  return FunctionApply(fn)


def _train_arg(module) -> str | None:
  parameters = inspect.signature(module.__call__).parameters
  return next((name for name in _TRAIN_ARGS if name in parameters), None)


@dataclasses.dataclass(frozen=True)
class LinenApply:
  """``Apply`` of a Flax Linen module; see ``from_linen``."""
  module: Any
  train_arg: str | None

  def __call__(self, params, model_state, inputs, train):
    import flax.errors
    if not isinstance(model_state, dict) or "params" in model_state:
      raise InvalidArgument(
          "model_state: expected a dict of the module's non-'params' collections, e.g. "
          "{'batch_stats': variables['batch_stats']} or {} (params go separately), got "
          + (f"a dict with keys {sorted(model_state)}" if isinstance(model_state, dict)
             else type(model_state).__name__))
    variables = {"params": params, **model_state}
    kwargs = {} if self.train_arg is None else {self.train_arg: bool(train)}
    try:
      if train and model_state:
        logits, updates = self.module.apply(variables, inputs, mutable=list(model_state),
                                            **kwargs)
        return logits, {**model_state, **updates}
      return self.module.apply(variables, inputs, **kwargs), model_state
    except flax.errors.FlaxError as e:
      if "Scope" not in type(e).__name__:
        raise
      raise InvalidArgument(
          f"model_state does not fit {type(self.module).__name__}: {str(e).split(' (')[0]}. "
          "Expected the module's non-'params' collections as a dict, e.g. "
          f"{{'batch_stats': variables['batch_stats']}}; got keys {sorted(model_state)}") from e

  def with_dtype(self, dtype) -> Apply:
    """The same model computing in ``dtype`` (params stay as they are)."""
    if "dtype" in {f.name for f in dataclasses.fields(self.module)}:
      return dataclasses.replace(self, module=self.module.clone(dtype=dtype))
    return CastApply(self, jnp.dtype(dtype))


def from_linen(module, *, train_arg: str | None = "auto") -> Apply:
  """The ``Apply`` of a Flax Linen module.

  ``train_arg`` names the module's boolean training argument; "auto" finds ``train``,
  ``training`` or ``is_training`` in its ``__call__`` signature, and None means the module
  takes none (it is called the same way in both modes). ``model_state`` is the dict of the
  module's non-``params`` collections (``{"batch_stats": ...}``), ``{}`` if it has none; in
  training mode those collections are mutable and returned updated.
  """
  import flax.linen as nn
  if not isinstance(module, nn.Module):
    raise InvalidArgument(f"module: expected a flax.linen.Module, got {type(module).__name__}")
  if train_arg == "auto":
    train_arg = _train_arg(module)
  elif train_arg is not None and train_arg not in inspect.signature(module.__call__).parameters:
    raise InvalidArgument(f"train_arg: {type(module).__name__}.__call__ has no argument "
                          f"{train_arg!r}")
  return LinenApply(module, train_arg)


@dataclasses.dataclass(frozen=True)
class NnxApply:
  """``Apply`` of a Flax NNX model split into (graphdef, params, model_state); see
  ``from_nnx``."""
  graphdef: Any

  def __call__(self, params, model_state, inputs, train):
    from flax import nnx
    for name, tree in (("params", params), ("model_state", model_state)):
      if not isinstance(tree, (nnx.State, dict)):
        raise InvalidArgument(f"{name}: expected the nnx.State from from_nnx (or "
                              f"nnx.split(model, nnx.Param, ...)), got {type(tree).__name__}")
    # Fresh Variables at the current trace level: merge reuses the ones it is given, and a
    # state closed over from an outer trace (a scan's body) could not be mutated.
    fresh = jax.tree.map(lambda x: x, (params, model_state))
    try:
      model = nnx.merge(self.graphdef, *fresh)
    except (ValueError, KeyError, TypeError) as e:
      raise InvalidArgument(f"params and model_state do not fit this NNX model: {e}") from e
    model.train() if train else model.eval()
    logits = model(inputs)
    if not train:
      return logits, model_state
    _, _, new_state = nnx.split(model, nnx.Param, ...)
    return logits, new_state

  def with_dtype(self, dtype) -> Apply:
    return CastApply(self, jnp.dtype(dtype))


def from_nnx(model) -> tuple[Apply, PyTree, PyTree]:
  """``(apply, params, model_state)`` of a Flax NNX model.

  ``params`` is the ``nnx.State`` of its ``nnx.Param`` variables, ``model_state`` that of
  every other variable (BatchNorm's ``BatchStat``s, ...). ``apply`` merges them into a fresh
  copy of the model at every call, in ``model.train()`` or ``model.eval()`` mode; the model
  passed in is not changed. ``to_nnx`` is the way back.
  """
  from flax import nnx
  if not isinstance(model, nnx.Module):
    raise InvalidArgument(f"model: expected a flax.nnx.Module, got {type(model).__name__}")
  graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
  return NnxApply(graphdef), params, model_state


def to_nnx(apply: Apply, params: PyTree, model_state: PyTree):
  """A new NNX model holding ``params`` and ``model_state``; ``apply`` from ``from_nnx``."""
  from flax import nnx
  inner = apply.inner if isinstance(apply, CastApply) else apply
  if not isinstance(inner, NnxApply):
    raise InvalidArgument(f"apply: expected the apply of from_nnx, got {type(apply).__name__}")
  return nnx.merge(inner.graphdef, params, model_state)


@dataclasses.dataclass(frozen=True)
class CastApply:
  """``inner`` computing in ``dtype``: floating params and inputs are cast to it, logits come
  back as float32 and the model state in its own dtypes."""
  inner: Any
  dtype: Any

  def __call__(self, params, model_state, inputs, train):
    cast = lambda x: x.astype(self.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
    logits, new_state = self.inner(jax.tree.map(cast, params), model_state, cast(inputs), train)
    new_state = jax.tree.map(lambda new, old: new.astype(old.dtype), new_state, model_state)
    return logits.astype(jnp.float32), new_state

  def with_dtype(self, dtype) -> Apply:
    return dataclasses.replace(self, dtype=jnp.dtype(dtype))


COMPUTE_DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}
"""Precision names -> computation dtypes; parameters and optimizer state stay float32."""


def compute_dtype(precision: str):
  """The computation dtype of a precision name ("fp32", "bf16"); unknown names raise."""
  if precision not in COMPUTE_DTYPES:
    raise InvalidArgument(f"precision: expected one of {', '.join(map(repr, COMPUTE_DTYPES))}, "
                          f"got {precision!r}")
  return COMPUTE_DTYPES[precision]


def with_precision(apply: Apply, precision: str) -> Apply:
  """``apply`` computing in ``precision``'s dtype: "fp32" returns ``apply`` itself; "bf16"
  clones a Linen module with a ``dtype`` field, and otherwise casts floating params and inputs
  (``CastApply``). Any other callable raises: it has no known way to change its precision."""
  dtype = compute_dtype(precision)
  if precision == "fp32":
    return apply
  if isinstance(apply, FunctionApply):
    return CastApply(apply, jnp.dtype(dtype))
  if not hasattr(apply, "with_dtype"):
    raise InvalidArgument(f"precision={precision!r} needs an apply from models.from_linen, "
                          f"from_nnx or from_function, got {type(apply).__name__}")
  return apply.with_dtype(dtype)


def check_model_state(apply: Apply, params: PyTree, model_state: PyTree, inputs) -> None:
  """Raises ``InvalidArgument`` unless a training forward on ``inputs[:1]`` returns logits
  (1, C) and a model state of ``model_state``'s tree structure, shapes and dtypes. Abstract
  (``jax.eval_shape``): nothing is computed."""
  sample = jax.ShapeDtypeStruct((1,) + tuple(inputs.shape[1:]), inputs.dtype)
  logits, new_state = jax.eval_shape(lambda p, s, x: apply(p, s, x, True), params, model_state,
                                     sample)
  if logits.ndim != 2 or logits.shape[0] != 1:
    raise InvalidArgument(f"apply: expected logits of shape (batch, num_classes), got "
                          f"{logits.shape} for a batch of 1")
  old, new = jax.tree.structure(model_state), jax.tree.structure(new_state)
  same = old == new and all(
      (a.shape, a.dtype) == (b.shape, b.dtype)
      for a, b in zip(jax.tree.leaves(model_state), jax.tree.leaves(new_state)))
  if not same:
    raise InvalidArgument("model_state: apply(..., train=True) returned a model state of "
                          f"another structure than it was given:\n  given    {old}\n  returned "
                          f"{new}\n(see mcu_jax.models.adapters for the convention)")
