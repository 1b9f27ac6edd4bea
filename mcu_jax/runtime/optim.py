"""The one optimizer builder: SGD from an ``OptimConfig`` (Adam where a base method's config
asks for it), optionally masked.

Every training in mcu_jax (the original model, retraining, each base method, the curve) builds
its optimizer here: ``torch.optim.SGD`` semantics (coupled L2 weight decay added to the
gradient, then momentum, then the learning rate), on a constant or cosine schedule whose clock
is the update (``schedule_unit="step"``) or the epoch (``"epoch"``: constant within an epoch,
as torch's ``CosineAnnealingLR`` stepped once per epoch, the reference's choice).

A mask restricts what may move (``masked``): per tensor (a Python bool per leaf: frozen tensors
get ``optax.transforms.selective_transform``'s zero update and no optimizer state, and XLA drops
their weight gradients) or per weight (a bool array per leaf: gradients and updates are zeroed
outside it, so neither momentum nor weight decay moves a masked-out weight).

    tx = make_optimizer(OptimConfig(lr=0.01, momentum=0.9), epochs=10, steps_per_epoch=12,
                        mask=mask)
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mcu_jax.errors import InvalidArgument
from mcu_jax.typing import PyTree
from mcu_jax.validation import check_choice, check_number, check_positive

SCHEDULE_UNITS = ("step", "epoch")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """SGD settings; the configs of every training embed them (by inheritance).

  Attributes:
    lr: (initial) learning rate, > 0.
    momentum: SGD momentum in [0, 1) (0: plain SGD).
    weight_decay: coupled L2 decay added to the gradient (``torch.optim.SGD``), >= 0.
    cosine: cosine annealing of ``lr`` to 0 over the whole run; else constant.
    schedule_unit: the cosine's clock, "step" (every update) or "epoch".
  """
  lr: float = 0.01
  momentum: float = 0.9
  weight_decay: float = 0.0
  cosine: bool = False
  schedule_unit: str = "epoch"

  def __post_init__(self):
    owner = type(self).__name__
    check_positive(f"{owner}.lr", self.lr)
    check_number(f"{owner}.momentum", self.momentum, low=0.0, high=1.0, high_open=True)
    check_number(f"{owner}.weight_decay", self.weight_decay, low=0.0)
    if not isinstance(self.cosine, bool):
      raise InvalidArgument(f"{owner}.cosine: must be a bool, got {type(self.cosine).__name__}")
    check_choice(f"{owner}.schedule_unit", self.schedule_unit, SCHEDULE_UNITS)

  def optim(self) -> OptimConfig:
    """Just the optimizer fields (of a config that embeds them)."""
    return OptimConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(OptimConfig)})

  def replace(self, **changes):
    """A copy with ``changes`` applied (and validated)."""
    return dataclasses.replace(self, **changes)


def learning_rate(config: OptimConfig, *, epochs: int, steps_per_epoch: int,
                  epoch_of_step: Callable[[jax.Array], jax.Array] | None = None):
  """The schedule: a float, or ``fn(update count) -> lr``.

  ``epoch_of_step`` overrides how an update count maps to an epoch (SCRUB's epochs have two
  phases of different lengths); by default ``count // steps_per_epoch``.
  """
  if not config.cosine:
    return float(config.lr)
  if config.schedule_unit == "step" and epoch_of_step is None:
    return optax.cosine_decay_schedule(float(config.lr), max(epochs * steps_per_epoch, 1))
  per_epoch = optax.cosine_decay_schedule(float(config.lr), epochs)
  if epoch_of_step is None:
    epoch_of_step = lambda count: count // steps_per_epoch
  return lambda count: per_epoch(epoch_of_step(count))


def is_static_flag(m) -> bool:
  """A per-tensor mask leaf: a Python (or NumPy) bool."""
  return isinstance(m, (bool, np.bool_))


def check_mask(mask: PyTree, params: PyTree, name: str = "mask") -> None:
  """Raises ``InvalidArgument`` unless ``mask`` has ``params``' structure with a bool or a bool
  array of the tensor's shape at every leaf."""
  mask_tree, params_tree = jax.tree.structure(mask), jax.tree.structure(params)
  if mask_tree != params_tree:  # type: ignore[operator]  # jax types PyTreeDef as an alias
    raise InvalidArgument(f"{name}: expected a mask built for these params (their structure)"
                          f":\n  mask   {mask_tree}\n  params {params_tree}")
  for (path, m), p in zip(jax.tree_util.tree_flatten_with_path(mask)[0], jax.tree.leaves(params)):
    if not is_static_flag(m) and (np.shape(m) != np.shape(p) or jnp.result_type(m) != jnp.bool_):
      raise InvalidArgument(
          f"{name}{jax.tree_util.keystr(path)}: expected a Python bool or a bool array of shape "
          f"{np.shape(p)}, got {type(m).__name__} {np.shape(m)} {getattr(m, 'dtype', '')}")


def keep_where(mask: PyTree) -> optax.GradientTransformation:
  """Zeroes the updates outside ``mask`` (bool leaves: all or nothing; arrays: per weight)."""
  def update_fn(updates, state, params=None):
    del params
    def leaf(m, u):
      if is_static_flag(m):
        return u if m else jnp.zeros_like(u)
      return jnp.where(m, u, jnp.zeros_like(u))
    return jax.tree.map(leaf, mask, updates), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def masked(optimizer: optax.GradientTransformation,
           mask: PyTree) -> optax.GradientTransformation:
  """``optimizer`` restricted to ``mask`` (True = may move); see the module docstring."""
  frozen = jax.tree.map(lambda m: is_static_flag(m) and not m, mask)
  per_weight = any(not is_static_flag(m) for m in jax.tree.leaves(mask))
  tx = optimizer
  if any(jax.tree.leaves(frozen)):
    tx = optax.transforms.selective_transform(tx, freeze_mask=frozen)
  if per_weight:   # zero before (no momentum builds up) and after (no weight decay moves)
    tx = optax.chain(keep_where(mask), tx, keep_where(mask))
  return tx


def make_optimizer(config: OptimConfig, *, epochs: int, steps_per_epoch: int,
                   mask: PyTree | None = None,
                   penalty: optax.GradientTransformation | None = None,
                   epoch_of_step: Callable[[jax.Array], jax.Array] | None = None
                   ) -> optax.GradientTransformation:
  """SGD per ``config``: (``penalty`` gradient) + coupled weight decay, momentum, schedule.

  A base method's config may instead name ``optimizer="adam"`` (``unlearn.MethodConfig``):
  ``torch.optim.Adam`` (betas 0.9/0.999, eps 1e-8, weight decay added to the gradient first)
  on the same schedule.

  Args:
    config: the optimizer fields (any config embedding ``OptimConfig``).
    epochs, steps_per_epoch: the run's length, for the schedule.
    mask: optional per-tensor or per-weight bool mask (``masked``).
    penalty: a transformation adding a regulariser's gradient first (l1-sparse).
    epoch_of_step: see ``learning_rate``.
  """
  check_positive("epochs", epochs, integer=True)
  check_positive("steps_per_epoch", steps_per_epoch, integer=True)
  parts = [] if penalty is None else [penalty]
  if config.weight_decay:
    parts.append(optax.add_decayed_weights(float(config.weight_decay)))
  schedule = learning_rate(config, epochs=epochs, steps_per_epoch=steps_per_epoch,
                           epoch_of_step=epoch_of_step)
  if getattr(config, "optimizer", "sgd") == "adam":   # a method config's choice
    parts.append(optax.adam(schedule, b1=0.9, b2=0.999, eps=1e-8))
  else:
    parts.append(optax.sgd(schedule, momentum=config.momentum or None))
  tx = optax.chain(*parts) if len(parts) > 1 else parts[0]
  return tx if mask is None else masked(tx, mask)


__all__ = ["OptimConfig", "SCHEDULE_UNITS", "learning_rate", "make_optimizer",
           "masked", "keep_where", "check_mask", "is_static_flag"]
