"""Per-subset losses and accuracies of a mixed forget/retain batch.

A batch carries ``is_forget`` (bool, shape (B,)) and optionally ``valid`` (bool, (B,)) for
padding. Each subset's loss is the mean cross-entropy over its own valid members; a subset with
no member contributes 0 (not NaN), and so does its accuracy.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example cross-entropy in float32: logits (B, C), integer labels (B,) -> (B,)."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def masked_mean(values: jax.Array, members: jax.Array) -> jax.Array:
  """Mean of ``values`` over ``members`` (bool, same shape); 0 when there is no member."""
  weights = members.astype(values.dtype)
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """1.0 where argmax(logits) == label, else 0.0: shape (B,)."""
  return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


def subset_masks(batch: dict) -> tuple[jax.Array, jax.Array]:
  """(forget members, retain members) of a batch, both bool (B,), padding excluded."""
  is_forget = batch["is_forget"].astype(bool)
  valid = batch.get("valid", jnp.ones_like(is_forget))
  return is_forget & valid, ~is_forget & valid


def subset_metrics(logits: jax.Array, batch: dict) -> dict[str, jax.Array]:
  """Mean CE and accuracy (percent) of the forget and retain members, plus their counts."""
  forget, retain = subset_masks(batch)
  ce = cross_entropy(logits, batch["labels"])
  hit = correct(logits, batch["labels"])
  return {
      "forget_loss": masked_mean(ce, forget),
      "retain_loss": masked_mean(ce, retain),
      "forget_acc": 100.0 * masked_mean(hit, forget),
      "retain_acc": 100.0 * masked_mean(hit, retain),
      "forget_count": jnp.sum(forget),
      "retain_count": jnp.sum(retain),
  }


def unlearning_loss(retain_loss: jax.Array, forget_loss: jax.Array, beta: jax.Array) -> jax.Array:
  """L(D_r) - beta * L(D_f)."""
  return retain_loss - beta * forget_loss
