"""SCRUB (Kurmanji et al. 2023): a student alternating a max-phase on D_f and a min-phase on
D_r against the original model as its teacher.

Outer epoch e (1-based) runs one max-epoch over D_f when e <= msteps, then one min-epoch over
D_r; each phase is one jitted epoch of the shared trainer (``train.make_epoch``) with its own
batch size, both compiled ahead of time and sharing one optimiser, whose schedule counts the
outer epochs. ``train.fit`` drives the outer epochs (history, checkpoint/resume). The losses
are ``losses.scrub_max_loss`` / ``scrub_min_loss``.
"""
from __future__ import annotations

import jax.numpy as jnp

from mcu_jax.runtime import parallel
from mcu_jax.runtime import train as train_lib
from mcu_jax.runtime.optim import make_optimizer
from mcu_jax.unlearn import configs as cfgs
from mcu_jax.unlearn.losses import scrub_max_loss, scrub_min_loss
from mcu_jax.unlearn.method_context import (
  MethodContext,
  Outcome,
  forget_arrays,
  place,
  retain_arrays,
  wrap_evaluate,
)


def _steps(num_examples: int, batch_size: int) -> int:
  """Batches of an epoch over ``num_examples``, the last one partial."""
  return -(-num_examples // batch_size)


def _make_epoch(ctx: MethodContext, loss_fn: train_lib.LossFn, batch_size: int):
  parallel.check_batch_size("batch_size", batch_size, ctx.mesh)
  return train_lib.make_epoch(loss_fn, batch_size, preprocess=ctx.preprocess,
                              batch_sharding=parallel.batch_sharding(ctx.mesh))


def run_scrub(ctx: MethodContext, config: cfgs.ScrubConfig) -> Outcome:
  """The student after ``config.epochs`` outer epochs; the teacher (theta_o, inference mode)
  rides in the trainer's model state, ``{"student": ..., "teacher": (params, state)}``."""
  forget = place(ctx, forget_arrays(ctx))
  retain = place(ctx, retain_arrays(ctx))
  steps_f = _steps(int(forget["labels"].shape[0]), config.forget_batch_size)
  steps_r = _steps(int(retain["labels"].shape[0]), config.batch_size)
  both = steps_f + steps_r
  boundary = config.msteps * both  # steps taken by the epochs with a max-phase

  def epoch_of_step(count):
    return jnp.where(count < boundary, count // both, config.msteps + (count - boundary) // steps_r)

  optimizer = make_optimizer(config, epochs=config.epochs, steps_per_epoch=both,
                             epoch_of_step=epoch_of_step)
  model_state = {"student": ctx.model_state, "teacher": (ctx.params, ctx.model_state)}
  state = place(ctx, train_lib.TrainState.create(params=ctx.params, model_state=model_state,
                                                 tx=optimizer, rng=ctx.rng))
  max_epoch = _make_epoch(ctx, scrub_max_loss(ctx.apply, config.temperature),
                          config.forget_batch_size)
  min_epoch = _make_epoch(
      ctx, scrub_min_loss(ctx.apply, config.temperature, config.gamma, config.alpha),
      config.batch_size)
  max_c, max_compile = (train_lib.compile_ahead(max_epoch, state, forget) if config.msteps
                        else (None, 0.0))
  min_c, min_compile = train_lib.compile_ahead(min_epoch, state, retain)

  def scrub_epoch(state, data):
    step = int(state.step)
    done = step // both if step < boundary else config.msteps + (step - boundary) // steps_r
    metrics = {}
    if done < config.msteps:
      state, max_metrics = max_c(state, data["forget"])
      metrics.update({f"max_{k}": v for k, v in max_metrics.items()})
    state, min_metrics = min_c(state, data["retain"])
    metrics.update(min_metrics)
    return state, metrics

  view = lambda s: (s.params, s.model_state["student"])
  state, history = train_lib.fit(state, scrub_epoch, {"forget": forget, "retain": retain},
                                 config.epochs, evaluate=wrap_evaluate(ctx, view),
                                 checkpointer=ctx.checkpointer, desc=ctx.desc,
                                 progress=ctx.progress)
  return Outcome(state.params, state.model_state["student"], history,
                 max_compile + min_compile)
