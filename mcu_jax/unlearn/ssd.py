"""SSD, selective synaptic dampening: theta_o with the weights far more important to D_f than
to the whole training set D scaled down; no training.

Foster, Schoepf and Brintrup, "Fast Machine Unlearning Without Retraining Through Selective
Synaptic Dampening", AAAI 2024; code: if-loops/selective-synaptic-dampening, ``src/ssd.py``
(``ParameterPerturber.calc_importance``, ``modify_weight``) driven by
``src/forget_random_strategies.py`` / ``forget_full_class_strategies.py`` ``ssd_tuning``.

The importance of a data set on batches of ``batch_size`` (in order, the last one partial) is
the diagonal Fisher estimate at theta_o in inference mode (BatchNorm on its running
statistics, no augmentation: the SSD code's unlearning transform has none)::

    imp = (1 / num_batches) * sum over batches of (grad of the batch's mean CE)**2

elementwise, over every parameter (BatchNorm scale and bias included; its statistics are
buffers, untouched). ``[]_D_f`` is taken over D_f, ``[]_D`` over D_r then D_f (the code's
``ConcatDataset((retain, forget))``, so one batch may straddle the two). Every weight with
``[]_D_f > alpha * []_D`` is multiplied by ``min(lam * []_D / []_D_f, 1)`` (the code's exponent
1 and lower bound 1); the others stay.

``masks.summed_ce_gradients_fn(..., of="squared")`` is the jitted squared-gradient sum;
``dampen`` the selection and the scaling; ``run_ssd`` the method, both passes and the
dampening compiled ahead of time and timed as the method's extra seconds (its RTE: there are
no epochs).
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from mcu_jax import data as data_lib
from mcu_jax.errors import InvalidArgument
from mcu_jax.runtime import masks, parallel
from mcu_jax.runtime import train as train_lib
from mcu_jax.typing import PyTree
from mcu_jax.unlearn import configs as cfgs
from mcu_jax.unlearn.method_context import (
  MethodContext,
  Outcome,
  forget_arrays,
  place,
  retain_arrays,
)


def check_float_params(params: PyTree, method: str) -> None:
  """Raises ``InvalidArgument`` unless every leaf of ``params`` is floating: ``method``
  differentiates all of them."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise InvalidArgument(
          f"params: {method} differentiates every parameter, so every leaf must be floating; "
          f"got {jnp.result_type(leaf)} at {jax.tree_util.keystr(path)}")


@jax.jit
def dampen(params: PyTree, forget_sum: PyTree, original_sum: PyTree, forget_batches: jax.Array,
           original_batches: jax.Array, alpha: jax.Array, lam: jax.Array):
  """SSD's weight update from the squared-gradient sums.

  Args:
    params: theta_o.
    forget_sum, original_sum: the squared-gradient sums over D_f and over D, like params.
    forget_batches, original_batches: their numbers of batches (scalars).
    alpha: selection weighting; lam: dampening constant (float32 scalars).

  Returns:
    (params, selected, forget importance, original importance): ``selected`` is a bool pytree
    like params, True where ``[]_D_f > alpha * []_D`` and the weight is multiplied by
    ``min(lam * []_D / []_D_f, 1)``. The operations are the code's, in its order.
  """
  forget_imp = jax.tree.map(lambda s: s / forget_batches.astype(s.dtype), forget_sum)
  original_imp = jax.tree.map(lambda s: s / original_batches.astype(s.dtype), original_sum)

  selected = jax.tree.map(lambda f, o: f > o * alpha.astype(o.dtype), forget_imp, original_imp)

  def scaled(p, fimp, oimp, chosen):
    # Unselected entries may have fimp == 0; they keep p, the division there is not used.
    weight = (oimp * lam.astype(oimp.dtype)) / jnp.where(chosen, fimp, 1)
    return jnp.where(chosen, p * jnp.minimum(weight, 1).astype(p.dtype), p)

  new_params = jax.tree.map(scaled, params, forget_imp, original_imp, selected)
  return new_params, selected, forget_imp, original_imp


def _batches(arrays: dict, batch_size: int) -> dict:
  return data_lib.padded_batches(arrays, min(int(batch_size), int(arrays["labels"].shape[0])))


def run_ssd(ctx: MethodContext, config: cfgs.SSDConfig) -> Outcome:
  """theta_o dampened; the model state (BatchNorm statistics) is theta_o's.

  Extras: ``selected`` (bool pytree like params: the dampened weights), ``forget_importance``
  and ``original_importance`` ([]_D_f and []_D, pytrees like params).

  Defaults (``SSDConfig``): alpha 10 and lam 1 are ``forget_random_main.py`` and
  ``forget_full_class_main.py``'s for the ResNet (the code halves alpha for its ViT,
  ``model_size_scaler`` 0.5; that is left to the caller); batch size 128 is
  ``forget_random_main.py``'s ``-b`` default (``forget_full_class_main.py``'s is 64).

  Differences from the code: none in the computation; the code's ``nn.CrossEntropyLoss`` and
  loaders are this module's masked mean and ``padded_batches``, and the passes run in
  float32 as the code's do. On a mesh of several devices every device computes the whole sums
  (the batches are replicated, not split).
  """
  check_float_params(ctx.params, "ssd")
  forget = forget_arrays(ctx)
  retain = retain_arrays(ctx)
  full = {name: np.concatenate([retain[name], forget[name]]) for name in forget}
  forget_b = place(ctx, _batches(forget, config.batch_size))
  full_b = place(ctx, _batches(full, config.batch_size))
  steps_f = jnp.float32(forget_b["labels"].shape[0])
  steps_d = jnp.float32(full_b["labels"].shape[0])
  alpha, lam = jnp.float32(config.alpha), jnp.float32(config.lam)

  sum_fn = masks.summed_ce_gradients_fn(ctx.apply, ctx.preprocess, of="squared")
  params, state = ctx.params, ctx.model_state
  forget_c, seconds_f = train_lib.compile_ahead(sum_fn, params, state, forget_b)
  full_c, seconds_d = train_lib.compile_ahead(sum_fn, params, state, full_b)
  sharding = parallel.replicated_sharding(ctx.mesh)
  sums = jax.tree.map(lambda p: jax.ShapeDtypeStruct(
      p.shape, jnp.promote_types(p.dtype, jnp.float32), sharding=sharding), params)
  dampen_c, seconds_x = train_lib.compile_ahead(dampen, params, sums, sums,
                                                steps_f, steps_d, alpha, lam)

  start = time.perf_counter()
  forget_sum = forget_c(params, state, forget_b)
  full_sum = full_c(params, state, full_b)
  new_params, selected, forget_imp, original_imp = jax.block_until_ready(
      dampen_c(params, forget_sum, full_sum, steps_f, steps_d, alpha, lam))
  extra = time.perf_counter() - start
  return Outcome(new_params, ctx.model_state, [], seconds_f + seconds_d + seconds_x, extra,
                 {"selected": selected, "forget_importance": forget_imp,
                  "original_importance": original_imp})
