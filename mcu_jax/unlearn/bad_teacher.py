"""Bad Teacher: the student (theta_o) distils an incompetent teacher on D_f and theta_o on D_r.

Chundawat, Tarun, Mandal and Kankanhalli, "Can Bad Teaching Induce Forgetting? Unlearning in
Deep Networks using an Incompetent Teacher", AAAI 2023; code ``vikram2000b/
bad-teaching-unlearning`` (``unlearn.py``: ``UnlearnerLoss``, ``blindspot_unlearner``) and the
SSD repository's ``blindspot()`` (``src/forget_random_strategies.py``), whose settings are the
defaults of ``configs.BadTeacherConfig``: Adam lr 1e-4, 1 epoch, batch 256, T = 1, a random 30 %
of D_r.

The data are D_f plus ``int(retain_fraction * |D_r|)`` retain examples drawn once without
replacement (``random.sample`` there), mixed and shuffled by the trainer, with an ``is_forget``
flag. Per batch, with T the temperature and C the number of classes,

    p_i = softmax(incompetent(x_i) / T)  for forget members,  softmax(theta_o(x_i) / T) else,
    loss = sum over valid i, all c of p_ic * (log p_ic - log softmax(student(x_i) / T)_c)
           / (number of valid examples * C),

torch's ``F.kl_div(log_softmax(student / T), p)`` with its default ``reduction="mean"`` (the
mean over every (example, class) entry, not over examples) and 0 * log 0 = 0; no T^2 factor.
Both teachers run in inference mode without gradient; the student in training mode. The
incompetent teacher is a fresh initialisation of theta_o's architecture (``ctx.init_params``,
as retrain's). Both teachers ride in the trainer's model state (as SCRUB's teacher), so they are
arguments of the jitted epoch, not constants baked into it.

Deviations: the reference never calls ``student.train()`` inside ``blindspot_unlearner`` (the
student keeps whatever mode the caller left it in); here the student is in training mode, as
every trained method. The retain sample is drawn from the method's PRNG key (reference: Python's
``random``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mcu_jax import data as data_lib
from mcu_jax.core import objectives
from mcu_jax.errors import InvalidArgument
from mcu_jax.models.adapters import Apply, forward
from mcu_jax.runtime import train as train_lib
from mcu_jax.unlearn import configs as cfgs
from mcu_jax.unlearn.method_context import MethodContext, Outcome, fresh_init, wrap_evaluate


def distill_targets(teacher_logits: jax.Array, incompetent_logits: jax.Array,
                    is_forget: jax.Array, temperature: float) -> jax.Array:
  """The teacher distribution per example: softmax(incompetent / T) where ``is_forget`` (B,)
  is True, softmax(teacher / T) elsewhere; logits (B, C) -> probabilities (B, C), float32."""
  t = jnp.asarray(temperature, jnp.float32)
  full = jax.nn.softmax(teacher_logits.astype(jnp.float32) / t, axis=-1)
  bad = jax.nn.softmax(incompetent_logits.astype(jnp.float32) / t, axis=-1)
  return jnp.where(is_forget[:, None], bad, full)


def kl_div_mean(student_logits: jax.Array, targets: jax.Array, valid: jax.Array,
                temperature: float) -> jax.Array:
  """torch's ``F.kl_div(log_softmax(student / T), targets)`` (``reduction="mean"``) over the
  ``valid`` (B,) rows: sum of ``p * (log p - log s)`` over valid rows and all C classes, divided
  by (valid rows * C); entries with p = 0 contribute 0. Logits and targets (B, C) -> scalar."""
  t = jnp.asarray(temperature, jnp.float32)
  log_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t, axis=-1)
  entries = jax.scipy.special.xlogy(targets, targets) - targets * log_s
  rows = jnp.sum(jnp.where(valid[:, None], entries, 0.0), axis=-1)
  count = jnp.maximum(jnp.sum(valid.astype(jnp.float32)), 1.0) * targets.shape[-1]
  return jnp.sum(rows) / count


def bad_teacher_loss(apply: Apply, temperature: float) -> train_lib.LossFn:
  """The per-batch loss (module docstring). ``model_state`` is ``{"student": state,
  "teacher": (params_o, state_o), "incompetent": (params_u, state_u)}``; the batch has
  ``images`` (preprocessed), ``labels``, ``valid`` and ``is_forget``. Metrics: ``loss`` and the
  student's accuracy (percent, true labels) on the batch's forget and retain members."""
  def loss_fn(params, model_state, batch, rng):
    images = batch["images"]
    logits, student_state = forward(apply, params, model_state["student"], images, True, rng)
    teacher_logits, _ = apply(*model_state["teacher"], images, False)
    bad_logits, _ = apply(*model_state["incompetent"], images, False)
    targets = jax.lax.stop_gradient(
        distill_targets(teacher_logits, bad_logits, batch["is_forget"], temperature))
    loss = kl_div_mean(logits, targets, batch["valid"], temperature)
    forget, retain = objectives.subset_masks(batch)
    hit = objectives.correct(logits, batch["labels"])
    metrics = {"loss": loss,
               "forget_acc": 100.0 * objectives.masked_mean(hit, forget),
               "retain_acc": 100.0 * objectives.masked_mean(hit, retain),
               "forget_count": jnp.sum(forget), "retain_count": jnp.sum(retain)}
    new_state = {**model_state, "student": student_state}
    return loss, (new_state, metrics)
  return loss_fn


def sample_retain(key: jax.Array, retain: np.ndarray, fraction: float) -> np.ndarray:
  """``int(fraction * len(retain))`` entries of ``retain`` drawn without replacement from
  ``key``, in index order."""
  count = int(fraction * len(retain))
  if count < 1:
    raise InvalidArgument(f"BadTeacherConfig.retain_fraction: {fraction} of {len(retain)} "
                          "retain examples rounds down to none; raise it or the retain set")
  chosen = jax.random.choice(key, len(retain), (count,), replace=False)
  return np.sort(np.asarray(retain)[np.asarray(chosen)])


def run_bad_teacher(ctx: MethodContext, config: cfgs.BadTeacherConfig) -> Outcome:
  """The student after ``config.epochs`` epochs of the distillation (module docstring); the
  retain indices used are ``extras["retain_sample"]``."""
  init_key, sample_key, train_key = jax.random.split(ctx.rng, 3)
  incompetent = fresh_init(ctx, init_key,
                           "bad_teacher distils a randomly initialised teacher on D_f")
  sampled = sample_retain(sample_key, ctx.split.retain, config.retain_fraction)
  arrays = data_lib.forget_retain_data(
      ctx.train, data_lib.ForgetSplit(ctx.split.forget, sampled, ctx.split.kind,
                                      ctx.split.classes))
  model_state = {"student": ctx.model_state, "teacher": (ctx.params, ctx.model_state),
                 "incompetent": incompetent}
  trained = train_lib.train_model(
      bad_teacher_loss(ctx.apply, config.temperature), ctx.params, model_state, arrays,
      config=config, rng=train_key, preprocess=ctx.preprocess, mesh=ctx.mesh,
      evaluate=wrap_evaluate(ctx, lambda s: (s.params, s.model_state["student"])),
      checkpointer=ctx.checkpointer, progress=ctx.progress, desc=ctx.desc,
      programs=ctx.programs)
  return Outcome(trained.state.params, trained.state.model_state["student"], trained.history,
                 trained.compile_seconds, extras={"retain_sample": sampled})
