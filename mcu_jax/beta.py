"""The weight beta of the forget loss in L(D_r) - beta * L(D_f).

``adaptive_beta`` is the alignment principle: push forgetting only while the forget accuracy
is above its target, and push it gently when retain accuracy has fallen further (relatively)
below its own target than the forget accuracy is above its target. Accuracies are in percent.
The policies are small pytrees so that a step can take either without retracing Python logic.
"""
from __future__ import annotations

import flax.struct
import jax.numpy as jnp


def adaptive_beta(forget_acc, retain_acc, forget_target, retain_target, low=0.01, high=0.5):
  """beta from a batch's forget and retain accuracies (percent, scalars or arrays).

  * beta = 0     if forget_acc <= forget_target (already forgotten enough);
  * beta = low   if (forget_acc - f*) / f* < (retain_acc - r*) / r*;
  * beta = high  otherwise.

  With forget_target = 0 (class forgetting) the forget ratio is +inf, so beta = high whenever
  forget_acc > 0. A pure jnp expression: safe under jit and vmap.
  """
  forget_acc = jnp.asarray(forget_acc, jnp.float32)
  retain_acc = jnp.asarray(retain_acc, jnp.float32)
  forget_target = jnp.asarray(forget_target, jnp.float32)
  retain_target = jnp.asarray(retain_target, jnp.float32)
  safe_target = jnp.where(forget_target > 0, forget_target, 1.0)
  forget_ratio = jnp.where(forget_target > 0, (forget_acc - forget_target) / safe_target,
                           jnp.inf)
  retain_ratio = (retain_acc - retain_target) / retain_target
  soft = jnp.where(forget_ratio < retain_ratio, low, high)
  return jnp.where(forget_acc <= forget_target, 0.0, soft).astype(jnp.float32)


@flax.struct.dataclass
class FixedBeta:
  """beta = value at every step."""
  value: float = 0.2

  def __call__(self, forget_acc, retain_acc):
    del forget_acc, retain_acc
    return jnp.asarray(self.value, jnp.float32)


@flax.struct.dataclass
class AdaptiveBeta:
  """``adaptive_beta`` with fixed targets (percent)."""
  forget_target: float
  retain_target: float
  low: float = 0.01
  high: float = 0.5

  def __post_init__(self):
    for name in ("forget_target", "retain_target"):
      value = getattr(self, name)
      if isinstance(value, (int, float)) and not 0.0 <= value <= 100.0:
        raise ValueError(f"{name} is an accuracy in percent, in [0, 100]; got {value!r}")
    if isinstance(self.retain_target, (int, float)) and self.retain_target <= 0.0:
      raise ValueError(f"retain_target must be > 0 percent, got {self.retain_target!r}")

  def __call__(self, forget_acc, retain_acc):
    return adaptive_beta(forget_acc, retain_acc, self.forget_target, self.retain_target,
                         self.low, self.high)


BetaPolicy = FixedBeta | AdaptiveBeta
