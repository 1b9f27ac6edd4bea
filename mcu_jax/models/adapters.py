"""The one model convention of mcu_jax, and the adapter of a plain function to it.

Every function in mcu_jax that runs a model takes an ``Apply``::

    apply(params, model_state, inputs, train, rng=None) -> (logits, new_model_state)

* ``params``: the trainable parameters, a pytree of float arrays (what the curve combines).
* ``model_state``: everything else the model keeps (BatchNorm's running statistics, an NNX
  model's RNG streams); ``{}`` for a model without any. In training mode the returned state
  carries the updated statistics; in inference mode it comes back unchanged. Its tree
  structure never changes. Key leaves (``jax.random.key``) stay keys: nothing converts them.
* ``inputs``: a batch (B, ...) after preprocessing; ``logits``: (B, num_classes), float.
* ``train``: a Python bool. ``rng``: in training mode a fresh PRNG key per step, for dropout
  and any other stochastic layer (derived from the call's ``seed``); None in inference mode,
  which is deterministic.

One adapter per JAX model library makes one (``mcu_jax.models``):

==================  =======================================================================
adapter             model_state
==================  =======================================================================
``from_function``   ``{}``: ``fn(params, inputs) -> logits`` has no state
``from_linen``      the module's non-``params`` collections as a dict:
                    ``{"batch_stats": variables["batch_stats"]}``, not ``batch_stats`` itself
``from_nnx``        the ``nnx.State`` of every variable that is not an ``nnx.Param``
``from_haiku``      Haiku's state dict of ``hk.transform_with_state``
``from_equinox``    the ``eqx.nn.State`` of ``eqx.nn.make_with_state``, or ``{}``
==================  =======================================================================

Each adapter also declares what its state's BatchNorm statistics mean
(``running_stats(params, model_state, sample) -> StatsLayout``, see
``mcu_jax.models.running_stats``), so that recalibration never guesses. A state of the wrong
shape of tree raises ``InvalidArgument`` saying what was expected. Adapters are small frozen
dataclasses: equal adapters hash equal, so jitted functions that take one as a static argument
reuse their compilation.

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
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from mcu_jax.errors import InvalidArgument
from mcu_jax.models.running_stats import EmaStats, RunningStats, StatsLayout, index_of, leaf_paths
from mcu_jax.typing import PyTree

Apply = Callable[..., tuple[jax.Array, PyTree]]

TRAIN_ARGS = ("train", "training", "is_training")


def takes_keyword(fn: Callable, name: str) -> bool:
  """Whether ``fn`` accepts the keyword argument ``name`` (or any keyword)."""
  try:
    parameters = inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False
  return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD
                                   for p in parameters.values())


def forward(apply: Apply, params: PyTree, model_state: PyTree, inputs, train: bool,
            rng: jax.Array | None = None):
  """``apply(params, model_state, inputs, train, rng=rng)``; an apply of one's own that takes
  no ``rng`` is called without it (its model then has no randomness to feed)."""
  if rng is not None and takes_keyword(apply, "rng"):
    return apply(params, model_state, inputs, train, rng=rng)
  return apply(params, model_state, inputs, train)


def stream_key(rng: jax.Array, index: int) -> jax.Array:
  """The ``index``-th independent key of a step's ``rng`` (one per RNG stream)."""
  return jax.random.fold_in(rng, index)


@dataclasses.dataclass(frozen=True)
class FunctionApply:
  """``Apply`` of a stateless ``fn(params, inputs) -> logits`` (``from_function``)."""
  fn: Callable[..., jax.Array]
  takes_rng: bool = False

  def __call__(self, params, model_state, inputs, train, rng=None):
    if jax.tree.leaves(model_state):
      raise InvalidArgument("model_state: from_function models have no state; expected {}, got "
                            f"a tree with {len(jax.tree.leaves(model_state))} arrays")
    if self.takes_rng:
      return self.fn(params, inputs, rng=rng if train else None), model_state
    return self.fn(params, inputs), model_state

  def running_stats(self, params, model_state, sample) -> StatsLayout:
    return StatsLayout((), "function")


def from_function(fn: Callable[..., jax.Array]) -> Apply:
  """The ``Apply`` of ``fn(params, inputs) -> logits`` (no model state: pass ``{}``).

  A function with dropout takes ``rng`` as a keyword, ``fn(params, inputs, *, rng=None)``: it
  gets a fresh key at every training step and None in inference mode.
  """
  if not callable(fn):
    raise InvalidArgument(f"fn: expected a callable fn(params, inputs) -> logits, got "
                          f"{type(fn).__name__}")
  try:
    takes_rng = "rng" in inspect.signature(fn).parameters
  except (TypeError, ValueError):
    takes_rng = False
  return FunctionApply(fn, takes_rng)


class CastsToDtype:
  """Mixin of the library adapters that compute in another dtype by casting (Haiku, NNX,
  Equinox): ``with_dtype`` wraps the adapter in a ``CastApply``."""

  def with_dtype(self, dtype) -> Apply:
    return CastApply(self, jnp.dtype(dtype))


@dataclasses.dataclass(frozen=True)
class CastApply:
  """``inner`` computing in ``dtype``: floating params and inputs are cast to it, logits come
  back as float32 and the model state in its own dtypes."""
  inner: Any
  dtype: Any

  def __call__(self, params, model_state, inputs, train, rng=None):
    cast = lambda x: x.astype(self.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
    logits, new_state = forward(self.inner, jax.tree.map(cast, params), model_state,
                                cast(inputs), train, rng)
    new_state = jax.tree.map(lambda new, old: new.astype(old.dtype), new_state, model_state)
    return logits.astype(jnp.float32), new_state

  def running_stats(self, params, model_state, sample) -> StatsLayout | None:
    return running_stats_of(self.inner, params, model_state, sample)

  def with_dtype(self, dtype) -> Apply:
    return dataclasses.replace(self, dtype=jnp.dtype(dtype))


def running_stats_of(apply: Apply, params, model_state, sample) -> StatsLayout | None:
  """The ``StatsLayout`` ``apply`` declares for ``model_state``, or None when it declares
  none (an apply of one's own: ``mcu_jax.runtime.batchnorm`` then probes and verifies)."""
  if not jax.tree.leaves(model_state):
    return StatsLayout((), "empty")
  method = getattr(apply, "running_stats", None)
  return None if method is None else method(params, model_state, sample)


@dataclasses.dataclass(frozen=True)
class DeclaredApply:
  """``inner`` with its BatchNorm statistics declared (``with_running_stats``)."""
  inner: Any
  stats: tuple[RunningStats, ...]

  def __call__(self, params, model_state, inputs, train, rng=None):
    return forward(self.inner, params, model_state, inputs, train, rng)

  def running_stats(self, params, model_state, sample) -> StatsLayout:
    del params, sample
    paths = leaf_paths(model_state)
    entries = []
    for stat in self.stats:
      mean = index_of(paths, tuple(stat.mean.split("/")), "a declared running mean")
      var = (None if stat.var is None
             else index_of(paths, tuple(stat.var.split("/")), "a declared running variance"))
      entries.append(EmaStats(stat.mean.rsplit("/", 1)[0], mean, var, float(stat.momentum)))
    return StatsLayout(tuple(entries), "declared")

  def with_dtype(self, dtype):
    return DeclaredApply(with_dtype(self.inner, dtype), self.stats)


def with_running_stats(apply, stats: Sequence[RunningStats]):
  """``apply`` with its BatchNorm statistics declared, for a model state that no adapter
  describes and whose leaves are not named ``mean``/``var`` (see ``mcu_jax.runtime.batchnorm``).

  Example::

      apply = with_running_stats(my_apply, [RunningStats("bn/mu", "bn/sigma2", momentum=0.9)])
  """
  stats = tuple(stats)
  if not stats or not all(isinstance(s, RunningStats) for s in stats):
    raise InvalidArgument("stats: expected a non-empty sequence of models.RunningStats")
  return DeclaredApply(apply, stats)


COMPUTE_DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}
"""Precision names -> computation dtypes; parameters and optimizer state stay float32."""


def compute_dtype(precision: str):
  """The computation dtype of a precision name ("fp32", "bf16"); unknown names raise."""
  if precision not in COMPUTE_DTYPES:
    raise InvalidArgument(f"precision: expected one of {', '.join(map(repr, COMPUTE_DTYPES))}, "
                          f"got {precision!r}")
  return COMPUTE_DTYPES[precision]


def with_dtype(apply: Apply, dtype) -> Apply:
  """``apply`` computing in ``dtype``: its own ``with_dtype`` when it has one, else a cast."""
  if hasattr(apply, "with_dtype"):
    return apply.with_dtype(dtype)
  return CastApply(apply, jnp.dtype(dtype))


def with_precision(apply: Apply, precision: str) -> Apply:
  """``apply`` computing in ``precision``'s dtype: "fp32" returns ``apply`` itself; "bf16"
  clones a Linen module with a ``dtype`` field, and otherwise casts floating params and inputs
  (``CastApply``). A callable that is not an adapter raises: it has no known way to change
  its precision."""
  dtype = compute_dtype(precision)
  if precision == "fp32":
    return apply
  if isinstance(apply, FunctionApply):
    return CastApply(apply, jnp.dtype(dtype))
  if hasattr(apply, "with_dtype"):
    return apply.with_dtype(dtype)
  raise InvalidArgument(f"precision={precision!r} needs an apply from a models.from_* "
                        f"adapter, got {type(apply).__name__}")


def check_model_state(apply: Apply, params: PyTree, model_state: PyTree, inputs) -> int:
  """The number of classes C of ``apply``'s logits. Raises ``InvalidArgument`` unless a
  training forward on ``inputs[:1]`` returns logits (1, C) and a model state of
  ``model_state``'s tree structure, shapes and dtypes. Abstract (``jax.eval_shape``): nothing
  is computed."""
  sample = jax.ShapeDtypeStruct((1,) + tuple(inputs.shape[1:]), inputs.dtype)
  logits, new_state = jax.eval_shape(
      lambda p, s, x: forward(apply, p, s, x, True, jax.random.PRNGKey(0)), params,
      model_state, sample)
  if logits.ndim != 2 or logits.shape[0] != 1:
    raise InvalidArgument(f"apply: expected logits of shape (batch, num_classes), got "
                          f"{logits.shape} for a batch of 1")
  old, new = jax.tree.structure(model_state), jax.tree.structure(new_state)
  same = old == new and all(  # type: ignore[operator]  # jax's PyTreeDef alias is opaque to mypy
      (a.shape, a.dtype) == (b.shape, b.dtype)
      for a, b in zip(jax.tree.leaves(model_state), jax.tree.leaves(new_state)))
  if not same:
    raise InvalidArgument("model_state: apply(..., train=True) returned a model state of "
                          f"another structure than it was given:\n  given    {old}\n  returned "
                          f"{new}\n(see mcu_jax.models.adapters for the convention)")
  return int(logits.shape[1])


def check_data(apply: Apply, params: PyTree, model_state: PyTree, sets: dict, preprocess,
               trees: dict | None = None) -> int:
  """Checks before any training; returns the number of classes C.

  ``sets``: {name: (inputs, labels)}: ``preprocess`` accepts the inputs (abstractly), the
  model's training forward fits ``model_state`` (``check_model_state``), every label is an
  integer in [0, C), every float input is finite. ``trees``: {name: params pytree} that must be
  finite (theta_o, theta_p). Each failure is one ``InvalidArgument`` naming the set or tree.
  """
  from mcu_jax.validation import check_finite_inputs, check_finite_tree, check_labels, dtype_of
  first = next(iter(sets.values()))[0]
  sample = jax.eval_shape(lambda x: preprocess(None, x), jax.ShapeDtypeStruct(
      (1,) + tuple(jnp.shape(first)[1:]), dtype_of(first)))
  num_classes = check_model_state(apply, params, model_state, sample)
  for name, (inputs, labels) in sets.items():
    check_labels(name, labels, num_classes)
    check_finite_inputs(name, inputs)
  for name, tree in (trees or {}).items():
    check_finite_tree(name, tree)
  return num_classes


__all__ = ["Apply", "forward", "takes_keyword", "stream_key", "check_data", "FunctionApply",
           "from_function", "DeclaredApply", "with_running_stats", "CastApply", "running_stats_of",
           "COMPUTE_DTYPES", "compute_dtype", "with_dtype", "with_precision", "check_model_state",
           "TRAIN_ARGS"]
