"""NegTV, the negated task vector: fine-tune theta_o on D_f to theta_ft, then take
``theta_o - coef * (theta_ft - theta_o)`` on every floating leaf.

``negate_task_vector`` is the arithmetic; ``run_negtv`` the method: the fine-tuning by the
shared trainer, then the arithmetic on the params and the BatchNorm statistics
(``NegTVConfig.batch_stats``), compiled ahead of time and timed as extra seconds.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

from mcu_jax.runtime import batchnorm
from mcu_jax.runtime import train as train_lib
from mcu_jax.unlearn import configs as cfgs
from mcu_jax.unlearn.losses import ce_loss
from mcu_jax.unlearn.method_context import (
  MethodContext,
  Outcome,
  PyTree,
  forget_arrays,
  place,
  train_on,
)


def _is_float(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def _float_leaf_map(name: str, op: Callable[..., jax.Array]):
  """A jitted ``fn(original, other, *scalars)`` named ``name``: ``op(o, x, *scalars)`` on the
  floating leaves ``o`` of ``original`` with ``other``'s leaf ``x`` at the same place; the
  other leaves are original's."""
  def mapped(original, other, *scalars):
    return jax.tree.map(lambda o, x: op(o, x, *scalars) if _is_float(o) else o, original, other)
  mapped.__name__ = mapped.__qualname__ = name
  return jax.jit(mapped)


# ``coef * (finetuned - original)`` and ``original - scaled``: two programs, see below.
_scaled_difference = _float_leaf_map(
    "_scaled_difference", lambda o, f, coef: coef.astype(o.dtype) * (f - o))
_subtract = _float_leaf_map("_subtract", lambda o, s: o - s)


def negate_task_vector(original: PyTree, finetuned: PyTree, coef: float) -> PyTree:
  """``original - coef * (finetuned - original)`` on floating leaves; others from original.

  The product and the final subtraction run as two separately compiled steps, so XLA cannot
  contract them into a fused multiply-add: every operation is rounded on its own, and the
  result is the formula evaluated in the leaves' dtype bit for bit as NumPy evaluates it.
  """
  return _subtract(original, _scaled_difference(original, finetuned, jnp.float32(coef)))


def _negation_compiled(original: PyTree, finetuned: PyTree, coef: jax.Array):
  """(``fn(original, finetuned) -> negated``, compile seconds): ``negate_task_vector`` with
  its two steps compiled ahead of time."""
  if not jax.tree.leaves(original):
    return (lambda o, f: o), 0.0
  scaled_c, seconds_1 = train_lib.compile_ahead(_scaled_difference, original, finetuned, coef)
  subtract_c, seconds_2 = train_lib.compile_ahead(_subtract, original, original)
  return (lambda o, f: subtract_c(o, scaled_c(o, f, coef))), seconds_1 + seconds_2


def _batch_stats_step(ctx: MethodContext, config: cfgs.NegTVConfig, ft_state: PyTree,
                      coef: jax.Array):
  """(``fn(negated params) -> model state``, compile seconds) per ``config.batch_stats``:
  the formula on theta_o's and theta_ft's states, theta_o's state, or a recalibration of it
  for the negated params over D_r."""
  if config.batch_stats == "formula":
    negate_state, seconds = _negation_compiled(ctx.model_state, ft_state, coef)
    return (lambda params: negate_state(ctx.model_state, ft_state)), seconds
  if config.batch_stats == "original":
    return (lambda params: ctx.model_state), 0.0
  apply, preprocess, batch_size, mesh = ctx.apply, ctx.preprocess, config.batch_size, ctx.mesh
  retain_images = place(ctx, ctx.train.images[ctx.split.retain])
  layout = batchnorm.stats_layout(apply, ctx.params, ctx.model_state, retain_images, preprocess)
  recalibrate = jax.jit(lambda params, model_state, images: batchnorm.recalibrated(
      apply, params, model_state, images, batch_size, preprocess, layout, mesh=mesh))
  recalibrate_c, seconds = train_lib.compile_ahead(recalibrate, ctx.params, ctx.model_state,
                                                   retain_images)
  return (lambda params: recalibrate_c(params, ctx.model_state, retain_images)), seconds


def run_negtv(ctx: MethodContext, config: cfgs.NegTVConfig) -> Outcome:
  """CE fine-tuning on D_f, then the negation; theta_ft is in ``extras``
  (``finetuned_params``, ``finetuned_model_state``)."""
  finetuned = train_on(ctx, config, ce_loss(ctx.apply), forget_arrays(ctx))
  ft_params, ft_state = finetuned.params, finetuned.model_state
  coef = jnp.float32(config.coef)
  negate_params, params_compile = _negation_compiled(ctx.params, ft_params, coef)
  finish_state, state_compile = _batch_stats_step(ctx, config, ft_state, coef)

  start = time.perf_counter()
  params = negate_params(ctx.params, ft_params)
  params, model_state = jax.block_until_ready((params, finish_state(params)))
  extra = time.perf_counter() - start
  compile_seconds = finetuned.compile_seconds + params_compile + state_compile
  return Outcome(params, model_state, finetuned.history, compile_seconds, extra,
                 {"finetuned_params": ft_params, "finetuned_model_state": ft_state})
