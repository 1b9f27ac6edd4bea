"""Training the curve: the jitted MCU step and epoch.

One step: split rng -> t ~ U(t_min, t_max) -> phi(t) from (start, controls, end) -> forward on
the mixed batch in training mode -> per-subset CE and accuracy -> beta (stop-gradient) ->
grad of L_r - beta L_f w.r.t. the controls only -> mask -> optax update of the masked
tensors. Endpoints are arguments, never differentiated; frozen tensors are returned untouched,
so they stay bit-identical.

A mask leaf is either a Python bool (per tensor: static, frozen tensors cost no optimizer state
and XLA drops their weight gradients) or a boolean array of the tensor's shape (per weight).
"""
from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mcu_jax import beta as beta_lib
from mcu_jax import loops, objectives
from mcu_jax.curves import Curve, check_same_tree, combine, coefficients
from mcu_jax.models import Apply  # noqa: F401  (re-exported: the apply convention)

PyTree = Any
Preprocess = Callable[[jax.Array, jax.Array], jax.Array]


@flax.struct.dataclass
class Endpoints:
  """The fixed bends: start = theta_o, end = theta_p (parameter pytrees of one structure)."""
  start: PyTree
  end: PyTree


@flax.struct.dataclass
class CurveState:
  """Everything the curve step updates.

  Attributes:
    controls: middle bends, leaves of shape (num_bends - 2, *param_shape).
    opt_state: the masked optimizer's state.
    model_state: non-trainable collections (``batch_stats``) from the last training forward.
    rng: PRNG key for t (and augmentation in ``make_train_epoch``).
    step: int32 scalar, steps taken.
    beta: float32 scalar, beta used in the last step.
  """
  controls: PyTree
  opt_state: optax.OptState
  model_state: PyTree
  rng: jax.Array
  step: jax.Array
  beta: jax.Array


def _is_static(m) -> bool:
  return isinstance(m, (bool, np.bool_))


def _check_mask(mask: PyTree, params: PyTree) -> None:
  mask_tree, params_tree = jax.tree.structure(mask), jax.tree.structure(params)
  if mask_tree != params_tree:
    raise ValueError(f"mask and params have different pytree structures:\n  {mask_tree}\n"
                     f"  {params_tree}")
  for path_m, p in zip(jax.tree_util.tree_flatten_with_path(mask)[0], jax.tree.leaves(params)):
    path, m = path_m
    if not _is_static(m) and (np.shape(m) != np.shape(p) or jnp.result_type(m) != jnp.bool_):
      raise ValueError(f"mask leaf at {jax.tree_util.keystr(path)} must be a Python bool or a "
                       f"bool array of shape {np.shape(p)}, got {type(m).__name__} "
                       f"{np.shape(m)} {getattr(m, 'dtype', '')}")


def masked_optimizer(optimizer: optax.GradientTransformation,
                     mask: PyTree) -> optax.GradientTransformation:
  """``optimizer`` on tensors whose mask leaf is not ``False``; no state for the others."""
  labels = jax.tree.map(lambda m: "freeze" if _is_static(m) and not m else "train", mask)
  return optax.multi_transform({"train": optimizer, "freeze": optax.set_to_zero()}, labels)


def _mask_gradients(grads: PyTree, mask: PyTree) -> PyTree:
  def leaf(g, m):
    if _is_static(m):
      return g if m else jnp.zeros_like(g)
    return jnp.where(m, g, jnp.zeros_like(g))
  return jax.tree.map(leaf, grads, mask)


def _apply_masked_updates(controls: PyTree, updates: PyTree, mask: PyTree) -> PyTree:
  def leaf(p, u, m):
    if _is_static(m):
      return (p + u).astype(p.dtype) if m else p
    return jnp.where(m, (p + u).astype(p.dtype), p)
  return jax.tree.map(leaf, controls, updates, mask)


def full_mask(params: PyTree) -> PyTree:
  """The mask that trains every tensor."""
  return jax.tree.map(lambda _: True, params)


def as_beta_policy(beta) -> beta_lib.BetaPolicy:
  if isinstance(beta, (beta_lib.FixedBeta, beta_lib.AdaptiveBeta)):
    return beta
  if isinstance(beta, (int, float)):
    return beta_lib.FixedBeta(float(beta))
  raise TypeError(f"beta must be a number, FixedBeta or AdaptiveBeta, got {type(beta).__name__}")


def init_state(curve: Curve, optimizer: optax.GradientTransformation, mask: PyTree,
               model_state: PyTree, rng: jax.Array) -> CurveState:
  """The state before the first step; ``model_state`` is e.g. the start model's batch_stats.

  Arrays are copied, since steps donate the state's buffers.
  """
  _check_mask(mask, curve.start)
  controls, model_state = jax.tree.map(jnp.copy, (curve.controls, model_state))
  return CurveState(
      controls=controls,
      opt_state=masked_optimizer(optimizer, mask).init(controls),
      model_state=model_state,
      rng=rng,
      step=jnp.zeros((), jnp.int32),
      beta=jnp.zeros((), jnp.float32),
  )


def make_step_fn(apply: Apply, optimizer: optax.GradientTransformation, mask: PyTree,
                 beta=beta_lib.FixedBeta(0.2), kind: str = "bezier",
                 t_range: tuple[float, float] = (0.0, 1.0)):
  """The pure step ``step(state, endpoints, batch) -> (state, metrics)``; not jitted.

  ``batch`` holds ``images`` (B, H, W, C) float, ``labels`` (B,) int, ``is_forget`` (B,) bool
  and optionally ``valid`` (B,) bool. ``metrics`` holds scalars: t, beta, loss, forget_loss,
  retain_loss, forget_acc, retain_acc (percent), forget_count, retain_count.
  """
  policy = as_beta_policy(beta)
  tx = masked_optimizer(optimizer, mask)
  t_min, t_max = t_range
  if not 0.0 <= t_min <= t_max <= 1.0:
    raise ValueError(f"t_range must satisfy 0 <= t_min <= t_max <= 1, got {t_range}")

  def step(state: CurveState, endpoints: Endpoints, batch: dict):
    rng, t_rng = jax.random.split(state.rng)
    t = jax.random.uniform(t_rng, (), jnp.float32, t_min, t_max)
    num_bends = jax.tree.leaves(state.controls)[0].shape[0] + 2
    coeffs = coefficients(kind, t, num_bends)

    def loss_fn(controls):
      params = combine(coeffs, endpoints.start, controls, endpoints.end)
      logits, model_state = apply(params, state.model_state, batch["images"], True)
      metrics = objectives.subset_metrics(logits, batch)
      b = jax.lax.stop_gradient(policy(metrics["forget_acc"], metrics["retain_acc"]))
      loss = objectives.unlearning_loss(metrics["retain_loss"], metrics["forget_loss"], b)
      return loss, (metrics, b, model_state)

    (loss, (metrics, b, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.controls)
    grads = _mask_gradients(grads, mask)
    updates, opt_state = tx.update(grads, state.opt_state, state.controls)
    new_state = CurveState(
        controls=_apply_masked_updates(state.controls, updates, mask),
        opt_state=opt_state,
        model_state=model_state,
        rng=rng,
        step=state.step + 1,
        beta=b,
    )
    return new_state, {"t": t, "beta": b, "loss": loss, **metrics}

  return step


def make_train_step(apply: Apply, optimizer: optax.GradientTransformation,
                    endpoints: Endpoints, mask: PyTree, beta=beta_lib.FixedBeta(0.2),
                    kind: str = "bezier", t_range: tuple[float, float] = (0.0, 1.0),
                    donate: bool = True):
  """One jitted MCU step ``step(state, batch) -> (state, metrics)`` over fixed endpoints.

  Args:
    apply: ``apply(params, state, x, train) -> (logits, new_state)``; see mcu_jax.models.
    optimizer: an optax optimizer for the controls (masked here).
    endpoints: the fixed start and end parameter pytrees.
    mask: per-tensor Python bools or per-weight bool arrays, structured like the params.
    beta: a number, ``FixedBeta`` or ``AdaptiveBeta``.
    kind: "bezier" or "polychain".
    t_range: t is drawn uniformly from this interval.
    donate: donate the incoming state's buffers to the output (don't reuse the old state).

  The endpoints travel as jit arguments, not closed-over constants, so large models do not
  end up embedded in the compiled program. The step runs under whatever sharding its inputs
  carry (see mcu_jax.parallel).
  """
  check_same_tree(endpoints.start, endpoints.end)
  _check_mask(mask, endpoints.start)
  jitted = jax.jit(make_step_fn(apply, optimizer, mask, beta, kind, t_range),
                   donate_argnums=(0,) if donate else ())

  def step(state: CurveState, batch: dict):
    return jitted(state, endpoints, batch)

  step.jitted = jitted
  return step


def normalize_uint8(key: jax.Array, images: jax.Array) -> jax.Array:
  """Default preprocessing: uint8 -> float32 in [0, 1]. Ignores ``key``."""
  del key
  return images.astype(jnp.float32) / 255.0


def make_train_epoch(apply: Apply, optimizer: optax.GradientTransformation, mask: PyTree,
                     beta=beta_lib.FixedBeta(0.2), kind: str = "bezier", batch_size: int = 128,
                     preprocess: Preprocess = normalize_uint8,
                     t_range: tuple[float, float] = (0.0, 1.0), batch_sharding=None,
                     loop: str = "auto"):
  """An epoch ``epoch(state, endpoints, data) -> (state, metrics)`` over on-device data.

  ``data`` holds ``images`` (N, H, W, C) uint8, ``labels`` (N,), ``is_forget`` (N,) bool, on
  the device. Each epoch shuffles on the device, gathers batches, applies ``preprocess(key,
  images)`` (augmentation and normalisation) and runs the step. ``metrics`` leaves have shape
  (steps,). ``batch_sharding``, when given, constrains every batch (e.g. over a device mesh).
  ``loop``: "scan" (one jitted lax.scan), "python" (a jitted step per batch) or "auto"; see
  ``mcu_jax.loops``.
  """
  step_fn = make_step_fn(apply, optimizer, mask, beta, kind, t_range)

  def body(state, endpoints, data, idx, ok, key):
    batch = {
        "images": preprocess(key, data["images"][idx]),
        "labels": data["labels"][idx],
        "is_forget": data["is_forget"][idx],
        "valid": ok,
    }
    if batch_sharding is not None:
      batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    return step_fn(state, endpoints, batch)

  return loops.make_epoch(body, batch_size, loop)
