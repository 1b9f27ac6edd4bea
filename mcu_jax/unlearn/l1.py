"""l1-sparse's penalty: the optax transformation adding ``alpha * sign(theta)`` and its
per-epoch decay of ``alpha`` (Jia et al. 2023, Unlearn-Sparse ``FT_iter``)."""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from mcu_jax.errors import InvalidArgument
from mcu_jax.unlearn import configs as cfgs


def l1_penalty(alpha_of_step: Callable[[jax.Array], jax.Array]) -> optax.GradientTransformation:
  """Adds the (sub)gradient of ``alpha * ||theta||_1``, ``alpha * sign(theta)``, to the
  gradients; ``alpha`` is read from ``alpha_of_step(count)``, count = updates so far."""
  def init_fn(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise InvalidArgument("l1_penalty needs the params in optimizer.update")
    alpha = alpha_of_step(state.count)
    updates = jax.tree.map(lambda g, p: g + (alpha * jnp.sign(p)).astype(g.dtype), updates,
                           params)
    return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


def l1_alpha_schedule(config: cfgs.L1SparseConfig, steps_per_epoch: int):
  """alpha at update ``count``: ``alpha * (1 - e / (epochs - no_l1_epochs))`` for epoch
  e = count // steps_per_epoch < epochs - no_l1_epochs, else 0 (Unlearn-Sparse FT_iter)."""
  active = config.epochs - config.no_l1_epochs

  def alpha_of_step(count):
    epoch = (count // steps_per_epoch).astype(jnp.float32)
    return jnp.where(epoch < active, config.alpha * (1.0 - epoch / active), 0.0)
  return alpha_of_step
