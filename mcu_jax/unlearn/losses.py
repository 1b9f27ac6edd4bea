"""The base methods' per-batch losses, and the pieces they are made of.

Every loss is ``loss_fn(params, model_state, batch, rng) -> (loss, (new_model_state,
metrics))`` as ``train.make_epoch`` runs it: ``batch`` holds ``images`` (B, ...) preprocessed,
``labels`` (B,) int, ``valid`` (B,) bool (False: filler of a last partial batch, masked out of
every mean) and, in the mixed D_f + D_r data, ``is_forget`` (B,) bool; ``metrics`` are scalars,
accuracies in percent. The model runs in training mode (BatchNorm on batch statistics) except
SCRUB's teacher.

- ``ce_loss``: FT, retrain, l1-sparse, NegTV's fine-tuning.
- ``ascent_loss``: GA. ``neggrad_plus_loss``: NegGrad+.
- ``random_label_loss`` (with ``random_wrong_labels``): RL and SalUn.
- ``scrub_max_loss``, ``scrub_min_loss`` (with ``distill_kl``): SCRUB's two phases.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mcu_jax.core import objectives
from mcu_jax.models.adapters import Apply, forward
from mcu_jax.runtime import train as train_lib


def _forward_ce(apply: Apply, params, model_state, batch, rng, labels=None):
  """Training-mode forward with the model's key ``rng``: (logits (B, C), new model state,
  per-example CE (B,))."""
  logits, new_state = forward(apply, params, model_state, batch["images"], True, rng)
  labels = batch["labels"] if labels is None else labels
  return logits, new_state, objectives.cross_entropy(logits, labels)


def _accuracy(logits, labels, members) -> jax.Array:
  """Percent of ``members`` (B,) bool whose argmax of ``logits`` (B, C) is ``labels`` (B,)."""
  return 100.0 * objectives.masked_mean(objectives.correct(logits, labels), members)


def ce_loss(apply: Apply) -> train_lib.LossFn:
  """Mean CE of the valid examples (FT, retrain, l1-sparse, NegTV's fine-tuning)."""
  return train_lib.supervised_loss(apply)


def ascent_loss(apply: Apply) -> train_lib.LossFn:
  """-mean CE of the valid examples (GA on D_f)."""
  def loss_fn(params, model_state, batch, rng):
    logits, new_state, ce = _forward_ce(apply, params, model_state, batch, rng)
    ce = objectives.masked_mean(ce, batch["valid"])
    metrics = {"loss": -ce, "forget_loss": ce,
               "forget_acc": _accuracy(logits, batch["labels"], batch["valid"])}
    return -ce, (new_state, metrics)
  return loss_fn


def neggrad_plus_loss(apply: Apply, beta: float) -> train_lib.LossFn:
  """CE of the batch's retain members minus ``beta`` times CE of its forget members, each the
  mean over its own members (0 for a subset absent from the batch)."""
  def loss_fn(params, model_state, batch, rng):
    logits, new_state = forward(apply, params, model_state, batch["images"], True, rng)
    sub = objectives.subset_metrics(logits, batch)
    loss = objectives.unlearning_loss(sub["retain_loss"], sub["forget_loss"], beta)
    metrics = {"loss": loss, **{k: sub[k] for k in ("forget_loss", "retain_loss", "forget_acc",
                                                    "retain_acc")}}
    return loss, (new_state, metrics)
  return loss_fn


def random_wrong_labels(key: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
  """A label drawn uniformly from the ``num_classes - 1`` classes other than ``labels``."""
  offsets = jax.random.randint(key, labels.shape, 1, num_classes, dtype=labels.dtype)
  return (labels + offsets) % num_classes


def random_label_loss(apply: Apply, num_classes: int) -> train_lib.LossFn:
  """Mean CE over the valid examples where every forget member carries a random wrong label,
  redrawn every step from the step's key (the reference redraws per ``__getitem__``). The
  metrics' accuracies are against the true labels."""
  def loss_fn(params, model_state, batch, rng):
    labels = jnp.where(batch["is_forget"],
                       random_wrong_labels(rng, batch["labels"], num_classes), batch["labels"])
    logits, new_state, ce = _forward_ce(apply, params, model_state, batch,
                                        jax.random.fold_in(rng, 1), labels)
    loss = objectives.masked_mean(ce, batch["valid"])
    forget, retain = objectives.subset_masks(batch)
    metrics = {"loss": loss, "forget_acc": _accuracy(logits, batch["labels"], forget),
               "retain_acc": _accuracy(logits, batch["labels"], retain)}
    return loss, (new_state, metrics)
  return loss_fn


def distill_kl(student_logits: jax.Array, teacher_logits: jax.Array,
               temperature: float) -> jax.Array:
  """Per-example ``T^2 * KL(softmax(t/T) || softmax(s/T))`` (RepDistiller's DistillKL), in
  float32: logits (..., C) -> (...)."""
  t = jnp.asarray(temperature, jnp.float32)
  log_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t, axis=-1)
  log_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / t, axis=-1)
  return jnp.sum(jnp.exp(log_t) * (log_t - log_s), axis=-1) * t * t


def _scrub_forward(apply, params, model_state, batch, rng, temperature):
  """Student (training mode) and teacher (inference mode, no gradient) on the same batch.

  ``model_state`` is ``{"student": state, "teacher": (params_o, state_o)}``: the teacher rides
  in the model state so that it is an argument of the jitted epoch, not a baked-in constant.
  """
  logits, student_state = forward(apply, params, model_state["student"], batch["images"], True,
                                  rng)
  teacher_params, teacher_state = model_state["teacher"]
  teacher_logits, _ = apply(teacher_params, teacher_state, batch["images"], False)
  kl = distill_kl(logits, jax.lax.stop_gradient(teacher_logits), temperature)
  kl = objectives.masked_mean(kl, batch["valid"])
  new_state = {"student": student_state, "teacher": model_state["teacher"]}
  return logits, new_state, kl


def scrub_max_loss(apply: Apply, temperature: float) -> train_lib.LossFn:
  """SCRUB's max-step: -KL(teacher || student) on D_f."""
  def loss_fn(params, model_state, batch, rng):
    _, new_state, kl = _scrub_forward(apply, params, model_state, batch, rng, temperature)
    return -kl, (new_state, {"loss": -kl, "kl": kl})
  return loss_fn


def scrub_min_loss(apply: Apply, temperature: float, gamma: float,
                   alpha: float) -> train_lib.LossFn:
  """SCRUB's min-step: gamma * CE + alpha * KL(teacher || student) on D_r."""
  def loss_fn(params, model_state, batch, rng):
    logits, new_state, kl = _scrub_forward(apply, params, model_state, batch, rng, temperature)
    ce = objectives.masked_mean(objectives.cross_entropy(logits, batch["labels"]),
                                batch["valid"])
    loss = gamma * ce + alpha * kl
    metrics = {"loss": loss, "ce": ce, "kl": kl,
               "acc": _accuracy(logits, batch["labels"], batch["valid"])}
    return loss, (new_state, metrics)
  return loss_fn
