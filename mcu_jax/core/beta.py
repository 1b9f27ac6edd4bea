"""The weight beta of the forget loss in L(D_r) - beta * L(D_f), and the targets it aims at.

``Targets(retain, forget)`` are accuracies in percent: what the unlearned model's retain and
forget accuracy should be. ``alignment_targets`` derives them from the original model (the
alignment principle); with a retrained model at hand its own accuracies are the targets.

``AdaptiveBeta`` is the alignment rule: push forgetting only while the forget accuracy is above
its target, and push it gently when the retain accuracy has fallen further (relatively) below
its own target than the forget accuracy is above its target. Targets are keyword-only and in
percent everywhere, so they cannot be swapped or given as fractions by accident::

    targets = alignment_targets(train_acc=99.2, test_acc=94.0, scenario="random")
    policy = AdaptiveBeta(targets=targets)          # Targets(retain=99.2, forget=94.0)

A policy is called on a batch's metrics (``forget_acc``, ``retain_acc``, in percent) inside the
jitted step: a pure jnp expression, safe under jit and vmap. Its settings are static (hashable
pytree fields without leaves).
"""
from __future__ import annotations

import collections
import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from mcu_jax.errors import InvalidArgument
from mcu_jax.validation import check_choice, check_number, is_number


class Targets(collections.namedtuple("Targets", ("retain", "forget"))):
  """Target accuracies in percent: ``retain`` in (1, 100], ``forget`` in [0, 100].

  A retain target of at most 1 is refused: it is almost surely a fraction (0.94 for 94 %).
  """
  __slots__ = ()

  def __new__(cls, retain, forget):
    if any(isinstance(v, jax.core.Tracer) for v in (retain, forget)):
      return super().__new__(cls, retain, forget)   # rebuilt under a transformation
    values = []
    for name, value in (("retain", retain), ("forget", forget)):
      value = value.item() if isinstance(value, (np.ndarray, jax.Array)) and value.ndim == 0 \
          else value
      if not is_number(value) or not math.isfinite(float(value)) or not 0 <= value <= 100:
        raise InvalidArgument(f"Targets.{name}: expected an accuracy in percent in [0, 100], "
                              f"got {value!r}")
      values.append(float(value))
    if values[0] <= 1.0:
      raise InvalidArgument(f"Targets.retain: accuracies are in percent; {values[0]!r} looks "
                            f"like a fraction (pass {100 * values[0]:g} for {values[0]:g})")
    return super().__new__(cls, *values)


def as_targets(targets, name: str = "targets") -> Targets:
  """``targets`` as ``Targets``; anything else (a bare tuple, whose order is ambiguous) raises."""
  if not isinstance(targets, Targets):
    raise InvalidArgument(f"{name}: expected mcu_jax.Targets(retain=..., forget=...) in percent, "
                          f"got {type(targets).__name__} {targets!r}")
  return targets


def alignment_targets(*, train_acc: float, test_acc: float, scenario: str) -> Targets:
  """The alignment principle's targets from the original model's accuracies (percent).

  retain = its training accuracy; forget = its test accuracy for random forgetting (unseen
  data is what D_f should look like), 0 for class forgetting (nothing of the class is left).
  """
  check_choice("scenario", scenario, ("random", "class"))
  forget = check_number("test_acc", test_acc, low=0, high=100) if scenario == "random" else 0.0
  return Targets(retain=check_number("train_acc", train_acc, low=0, high=100), forget=forget)


def adaptive_beta(forget_acc, retain_acc, *, targets: Targets, low=0.01, high=0.5):
  """beta from forget and retain accuracies (percent, scalars or arrays):

  * 0     if forget_acc <= targets.forget (already forgotten enough);
  * low   if (forget_acc - f*) / f* < (retain_acc - r*) / r*;
  * high  otherwise.

  With targets.forget = 0 (class forgetting) the forget ratio is +inf, so beta = high whenever
  forget_acc > 0.
  """
  forget_acc = jnp.asarray(forget_acc, jnp.float32)
  retain_acc = jnp.asarray(retain_acc, jnp.float32)
  f_star = jnp.asarray(targets.forget, jnp.float32)
  r_star = jnp.asarray(targets.retain, jnp.float32)
  safe_f = jnp.where(f_star > 0, f_star, 1.0)
  forget_ratio = jnp.where(f_star > 0, (forget_acc - f_star) / safe_f, jnp.inf)
  retain_ratio = (retain_acc - r_star) / r_star
  soft = jnp.where(forget_ratio < retain_ratio, low, high)
  return jnp.where(forget_acc <= f_star, 0.0, soft).astype(jnp.float32)


def _check_weight(name: str, value) -> float:
  return float(check_number(name, value, low=0.0))


def check_weights(low, high, names: tuple[str, str] = ("low", "high"),
                  error: type = InvalidArgument) -> None:
  """The adaptive rule's weights: finite, ``0 <= low <= high``."""
  for name, value in zip(names, (low, high)):
    check_number(name, value, low=0.0, error=error)
  if low > high:
    raise error(f"{names[0]}: must be <= {names[1]} ({high}), got {low}")


@flax.struct.dataclass
class FixedBeta:
  """beta = ``value`` (>= 0) at every step."""
  value: float = flax.struct.field(pytree_node=False, default=0.2)

  def __post_init__(self):
    _check_weight("FixedBeta.value", self.value)

  def __call__(self, metrics) -> jnp.ndarray:
    del metrics
    return jnp.asarray(self.value, jnp.float32)


@flax.struct.dataclass(kw_only=True)
class AdaptiveBeta:
  """``adaptive_beta`` towards ``targets`` with weights ``0 <= low <= high``; keyword-only."""
  targets: Targets = flax.struct.field(pytree_node=False)
  low: float = flax.struct.field(pytree_node=False, default=0.01)
  high: float = flax.struct.field(pytree_node=False, default=0.5)

  def __post_init__(self):
    as_targets(self.targets, "AdaptiveBeta.targets")
    check_weights(self.low, self.high, names=("AdaptiveBeta.low", "AdaptiveBeta.high"))

  def __call__(self, metrics) -> jnp.ndarray:
    return adaptive_beta(metrics["forget_acc"], metrics["retain_acc"], targets=self.targets,
                         low=self.low, high=self.high)


BetaPolicy = FixedBeta | AdaptiveBeta


def as_policy(beta, targets: Targets | None = None, low: float = 0.01,
              high: float = 0.5) -> BetaPolicy:
  """A policy from ``beta``: a policy itself, a number (``FixedBeta``) or ``"adaptive"``
  (``AdaptiveBeta`` towards ``targets``, which must then be given)."""
  if isinstance(beta, (FixedBeta, AdaptiveBeta)):
    return beta
  if isinstance(beta, str):
    check_choice("beta", beta, ("adaptive",))
    if targets is None:
      raise InvalidArgument("beta='adaptive' needs targets (mcu_jax.Targets in percent)")
    return AdaptiveBeta(targets=as_targets(targets), low=low, high=high)
  if is_number(beta):
    return FixedBeta(float(beta))
  raise InvalidArgument(f"beta: expected 'adaptive', a number >= 0, FixedBeta or AdaptiveBeta, "
                        f"got {type(beta).__name__}")
