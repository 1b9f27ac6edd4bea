"""The base methods that are one run of the shared trainer: retrain, FT, GA, NegGrad+, RL,
SalUn and l1-sparse; NegTV (``unlearn.negtv``) and SCRUB (``unlearn.scrub``) have modules of
their own.

Each ``run_<name>(ctx, config) -> Outcome`` builds its data dict (``data.subset_arrays`` /
``forget_retain_data``) and a per-batch loss (``unlearn.losses``) and hands them to
``context.train_on``: one jitted epoch (``train.train_model``), compiled ahead of time so that
compilation is measured apart from the unlearning time (RTE), its batches split over the mesh.
SalUn adds its mask's computation, timed as extra seconds. Defaults, their sources and the
deviations from the reference are tabulated in the docstring of ``mcu_jax.unlearn``.
"""
from __future__ import annotations

import dataclasses
import time

import jax

from mcu_jax import data as data_lib
from mcu_jax.errors import InvalidArgument
from mcu_jax.runtime import masks
from mcu_jax.runtime import train as train_lib
from mcu_jax.unlearn import configs as cfgs
from mcu_jax.unlearn.l1 import l1_alpha_schedule, l1_penalty
from mcu_jax.unlearn.losses import ascent_loss, ce_loss, neggrad_plus_loss, random_label_loss
from mcu_jax.unlearn.method_context import (
  MethodContext,
  Outcome,
  forget_arrays,
  fresh_init,
  place,
  retain_arrays,
  train_on,
)


def run_retrain(ctx: MethodContext, config: cfgs.RetrainConfig) -> Outcome:
  """CE on D_r from a fresh initialisation (``ctx.init_params``, of theta_o's structure)."""
  init_key, train_key = jax.random.split(ctx.rng)
  params, model_state = fresh_init(ctx, init_key, "retrain trains from a fresh initialisation")
  return train_on(ctx, config, ce_loss(ctx.apply), retain_arrays(ctx),
                  start=(params, model_state), rng=train_key)


def run_ft(ctx: MethodContext, config: cfgs.FTConfig) -> Outcome:
  """CE on D_r from theta_o."""
  return train_on(ctx, config, ce_loss(ctx.apply), retain_arrays(ctx))


def run_ga(ctx: MethodContext, config: cfgs.GAConfig) -> Outcome:
  """-CE on D_f from theta_o."""
  return train_on(ctx, config, ascent_loss(ctx.apply), forget_arrays(ctx))


def run_neggrad_plus(ctx: MethodContext, config: cfgs.NegGradPlusConfig) -> Outcome:
  """CE_r - beta * CE_f on batches of D_f and D_r mixed."""
  return train_on(ctx, config, neggrad_plus_loss(ctx.apply, config.beta),
                  data_lib.forget_retain_data(ctx.train, ctx.split))


def _check_classes(ctx: MethodContext) -> int:
  num_classes = int(ctx.train.num_classes)
  if num_classes < 2:
    raise InvalidArgument(f"random labels need at least 2 classes, the data set has {num_classes}")
  return num_classes


def run_rl(ctx: MethodContext, config: cfgs.RLConfig) -> Outcome:
  """CE on D_f with random wrong labels plus D_r, mixed."""
  loss = random_label_loss(ctx.apply, _check_classes(ctx))
  return train_on(ctx, config, loss, data_lib.forget_retain_data(ctx.train, ctx.split))


def run_salun(ctx: MethodContext, config: cfgs.SalUnConfig) -> Outcome:
  """RL with only the ``mask_ratio`` most forget-salient weights moving.

  The mask (``masks.salun_mask`` of the summed D_f gradients at theta_o) is compiled ahead and
  timed: its seconds are the outcome's extra seconds, the mask is ``extras["mask"]``.
  """
  num_classes = _check_classes(ctx)
  batches = place(ctx, data_lib.padded_batches(forget_arrays(ctx), config.batch_size))
  grads_fn, grads_compile = train_lib.compile_ahead(
      masks.summed_ce_gradients_fn(ctx.apply, ctx.preprocess), ctx.params, ctx.model_state,
      batches)
  start = time.perf_counter()
  grads = grads_fn(ctx.params, ctx.model_state, batches)
  mask = jax.block_until_ready(masks.salun_mask(grads, config.mask_ratio))
  mask_seconds = time.perf_counter() - start
  trained = train_on(ctx, config, random_label_loss(ctx.apply, num_classes),
                     data_lib.forget_retain_data(ctx.train, ctx.split), params_mask=mask)
  return dataclasses.replace(trained, compile_seconds=trained.compile_seconds + grads_compile,
                             extra_seconds=mask_seconds, extras={"mask": mask})


def run_l1_sparse(ctx: MethodContext, config: cfgs.L1SparseConfig) -> Outcome:
  """CE on D_r from theta_o plus the decaying l1 penalty (``unlearn.l1``)."""
  penalty = lambda steps: l1_penalty(l1_alpha_schedule(config, steps))
  return train_on(ctx, config, ce_loss(ctx.apply), retain_arrays(ctx),
                  penalty_for_steps=penalty)
