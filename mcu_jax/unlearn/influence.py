"""IU, influence unlearning: theta_o moved by a WoodFisher estimate of H^-1 times the influence
direction of D_f; no training.

Izzo, Smart, Chaudhuri and Zou, "Approximate Data Deletion from Machine Learning Models",
AISTATS 2021, and Koh and Liang, "Understanding Black-box Predictions via Influence
Functions", ICML 2017, with the WoodFisher inverse Hessian of Singh and Alistarh (NeurIPS
2020), as implemented by ``Classification/unlearn/Wfisher.py`` of OPTML-Group/Unlearn-Saliency
(SalUn, Fan et al., ICLR 2024; the same file as in OPTML-Group/Unlearn-Sparse), non-ImageNet
branch. With theta_o in inference mode, n_f = |D_f|, n_r = |D_r|:

1. ``g_f`` = sum over D_f batches of ``batch_size`` (in order) of grad(batch mean CE) times the
   batch's size; ``g_r`` likewise over D_r;
2. ``v = g_f / (n_f + n_r) - g_r * n_f / ((n_f + n_r) * n_r)``,
   flattened over all params (the scalar factors rounded to float32 as the code's);
3. the code's WoodFisher recursion (``woodfisher_update``) with ``N = woodfisher_samples``
   over the retain examples one at a time, in order, g their per-example CE gradients: the first
   sets ``o = g``; every later one does ``t = o.g; k -= (k.g / (N + t)) o; o -= (t / (N + t))
   o``, from ``k = v``; it stops after the example at index N + 1 (the code's ``if idx > N:
   return`` after the update), i.e. after N + 2 examples, or when D_r ends;
4. ``theta = theta_o + alpha * k`` on every param; the model state is theta_o's.

As the code stands, ``o`` is only ever rescaled, so it stays proportional to the first retain
example's gradient g_0 and ``k`` is v minus a multiple of g_0: the recursion is reproduced as
written, not as the WoodFisher paper's inverse (which would update o with each g).

``run_iu`` runs the two gradient sums (``masks.summed_ce_gradients_fn``) and the recursion
(per-example gradients vmapped in chunks of ``CHUNK``, the updates one ``lax.scan`` over each
chunk; the chunks one scan, or on the CPU a host loop over one jitted chunk step, per
``mcu_jax.runtime.loops``), all compiled ahead of time and timed as the method's extra seconds
(its RTE: there are no epochs).

Differences from the code: no augmentation (SalUn's loaders keep their training transform,
random crop and flip, so its gradients see augmented images); N is the config's
``woodfisher_samples`` where the code hard-codes 1000 (the default); vectors are flattened in
the params tree's order rather than ``named_parameters`` order (the dot products are the same
up to float32 summation order).
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from mcu_jax import data as data_lib
from mcu_jax.core import objectives
from mcu_jax.models.adapters import Apply
from mcu_jax.preprocess import Preprocess
from mcu_jax.runtime import loops, masks, parallel
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
from mcu_jax.unlearn.ssd import check_float_params

CHUNK = 64
"""Retain examples whose per-example gradients the recursion holds at once: (CHUNK, P) floats."""


def woodfisher_update(carry: tuple[jax.Array, jax.Array], grad: jax.Array, first: jax.Array,
                      valid: jax.Array, n: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One example of the code's recursion on (k, o), (P,) vectors, with its gradient ``grad``
  (P,): ``first`` (bool scalar) sets ``o = grad``; ``valid`` False (padding) changes nothing;
  otherwise ``t = o.grad; k -= (k.grad / (n + t)) o; o -= (t / (n + t)) o`` (n: float
  scalar, the recursion's N)."""
  k, o = carry
  tmp = jnp.dot(o, grad)
  denom = n.astype(tmp.dtype) + tmp
  new_k = k - (jnp.dot(k, grad) / denom) * o
  new_o = o - (tmp / denom) * o
  new_k = jnp.where(valid & ~first, new_k, k)
  new_o = jnp.where(valid, jnp.where(first, grad, new_o), o)
  return new_k, new_o


def _chunk_step_fn(apply: Apply, preprocess: Preprocess):
  """``step((k, o), params, model_state, chunk, n) -> (k, o)``: the per-example gradients of
  a chunk (``images`` (C, ...), ``labels``, ``valid``, ``first`` (C,)) vmapped, then the
  recursion over them in order."""
  def example_loss(params, model_state, image, label):
    logits, _ = apply(params, model_state, preprocess(None, image[None]), False)
    return objectives.cross_entropy(logits, label[None])[0]

  def flat_grad(params, model_state, image, label):
    return ravel_pytree(jax.grad(example_loss)(params, model_state, image, label))[0]

  def step(carry, params, model_state, chunk, n):
    grads = jax.vmap(flat_grad, in_axes=(None, None, 0, 0))(params, model_state,
                                                             chunk["images"], chunk["labels"])
    rows = (grads, chunk["first"], chunk["valid"])
    return jax.lax.scan(lambda c, row: (woodfisher_update(c, *row, n), None), carry, rows)[0]
  return step


class _LoopedRecursion:
  """The recursion over chunks as a host loop over one jitted chunk step (the CPU policy of
  ``mcu_jax.runtime.loops``: convolution gradients stay out of while loops). The carry is
  two (P,) vectors and is not donated: the caller keeps v."""

  def __init__(self, step):
    self._step = jax.jit(lambda carry, params, model_state, chunks, i, n: step(
        carry, params, model_state, jax.tree.map(lambda x: x[i], chunks), n))

  def __call__(self, carry, params, model_state, chunks, n):
    for i in range(int(chunks["labels"].shape[0])):
      carry = self._step(carry, params, model_state, chunks, np.int32(i), n)
    return carry

  def lower(self, carry, params, model_state, chunks, n):
    return _LoweredRecursion(self._step.lower(carry, params, model_state, chunks, np.int32(0), n))


class _LoweredRecursion:

  def __init__(self, lowered):
    self._lowered = lowered

  def compile(self) -> _LoopedRecursion:
    compiled = _LoopedRecursion.__new__(_LoopedRecursion)
    compiled._step = self._lowered.compile()
    return compiled


def woodfisher_fn(apply: Apply, preprocess: Preprocess, loop: str = "auto"):
  """``fn((k, o), params, model_state, chunks, n) -> (k, o)``: the recursion (see
  ``woodfisher_update``) over every chunk of ``chunks`` (``images`` (S, C, ...), ``labels``,
  ``valid``, ``first`` (S, C)) in order; supports ``fn.lower(...).compile()``. Made once per
  hashable (apply, preprocess, loop)."""
  try:
    hash((apply, preprocess, loop))
  except TypeError:
    return _woodfisher.__wrapped__(apply, preprocess, loop)
  return _woodfisher(apply, preprocess, loop)


@functools.lru_cache(maxsize=16)
def _woodfisher(apply: Apply, preprocess: Preprocess, loop: str):
  step = _chunk_step_fn(apply, preprocess)
  if loops.resolve_loop(loop) == "scan":
    @jax.jit
    def recursion(carry, params, model_state, chunks, n):
      return jax.lax.scan(lambda c, chunk: (step(c, params, model_state, chunk, n), None),
                          carry, chunks)[0]
    return recursion
  return _LoopedRecursion(step)


@jax.jit
def _direction(forget_sum: PyTree, retain_sum: PyTree, forget_scale: jax.Array,
               retain_scale: jax.Array) -> jax.Array:
  """Flat v from the two gradient-sum pytrees: ``forget / forget_scale - retain * retain_scale``
  (forget_scale = n_f + n_r as a float, retain_scale = n_f / ((n_f + n_r) n_r))."""
  forget_flat, _ = ravel_pytree(forget_sum)
  retain_flat, _ = ravel_pytree(retain_sum)
  return forget_flat / forget_scale - retain_flat * retain_scale


@jax.jit
def _perturbed(params: PyTree, k: jax.Array, alpha: jax.Array) -> PyTree:
  """``params + unravel(alpha * k)``, each leaf in its own dtype (the code's
  ``apply_perturb(model, alpha * perturb)``)."""
  step = ravel_pytree(params)[1](alpha.astype(k.dtype) * k)
  return jax.tree.map(lambda p, s: p + s.astype(p.dtype), params, step)


def _recursion_chunks(retain: dict, n_samples: int) -> dict:
  """The first min(N + 2, n_r) retain examples in chunks of ``CHUNK`` (or fewer), with
  ``first`` marking the example that sets o."""
  count = min(n_samples + 2, int(retain["labels"].shape[0]))
  arrays = {"images": retain["images"][:count], "labels": retain["labels"][:count],
            "first": np.arange(count) == 0}
  return data_lib.padded_batches(arrays, min(CHUNK, count))


def run_iu(ctx: MethodContext, config: cfgs.IUConfig) -> Outcome:
  """theta_o + alpha * k (see the module docstring); the model state is theta_o's.

  Extras: ``direction`` (v) and ``perturbation`` (k, before the ``alpha`` step), pytrees like
  params.

  Defaults (``IUConfig``): alpha 0.2 is the SalUn/Unlearn-Sparse ``--alpha`` argument default,
  N = 1000 the value ``woodfisher`` hard-codes, batch size 256 SalUn's ``--batch_size``.
  """
  check_float_params(ctx.params, "iu")
  forget, retain = forget_arrays(ctx), retain_arrays(ctx)
  num_forget, num_retain = int(forget["labels"].shape[0]), int(retain["labels"].shape[0])
  total = num_forget + num_retain

  def batches(arrays):
    return place(ctx, data_lib.padded_batches(
        arrays, min(config.batch_size, int(arrays["labels"].shape[0]))))
  forget_b, retain_b = batches(forget), batches(retain)
  chunks = place(ctx, _recursion_chunks(retain, config.woodfisher_samples))
  forget_scale = jnp.float32(total)
  retain_scale = jnp.float32(num_forget / (total * num_retain))
  n = jnp.float32(config.woodfisher_samples)
  alpha = jnp.float32(config.alpha)
  params, state = ctx.params, ctx.model_state

  sum_fn = masks.summed_ce_gradients_fn(ctx.apply, ctx.preprocess, of="count_weighted")
  forget_c, s1 = train_lib.compile_ahead(sum_fn, params, state, forget_b)
  retain_c, s2 = train_lib.compile_ahead(sum_fn, params, state, retain_b)
  sharding = parallel.replicated_sharding(ctx.mesh)
  sums = jax.tree.map(lambda p: jax.ShapeDtypeStruct(
      p.shape, jnp.promote_types(p.dtype, jnp.float32), sharding=sharding), params)
  direction_c, s3 = train_lib.compile_ahead(_direction, sums, sums, forget_scale, retain_scale)
  flat = jax.eval_shape(_direction, sums, sums, forget_scale, retain_scale)
  flat = jax.ShapeDtypeStruct(flat.shape, flat.dtype, sharding=sharding)
  recursion_c, s4 = train_lib.compile_ahead(
      woodfisher_fn(ctx.apply, ctx.preprocess), (flat, flat), params, state, chunks, n)
  perturbed_c, s5 = train_lib.compile_ahead(_perturbed, params, flat, alpha)

  start = time.perf_counter()
  v = direction_c(forget_c(params, state, forget_b), retain_c(params, state, retain_b),
                  forget_scale, retain_scale)
  k, _ = recursion_c((v, jnp.zeros_like(v)), params, state, chunks, n)
  new_params, k = jax.block_until_ready((perturbed_c(params, k, alpha), k))
  extra = time.perf_counter() - start
  unravel = ravel_pytree(params)[1]
  return Outcome(new_params, ctx.model_state, [], s1 + s2 + s3 + s4 + s5, extra,
                 {"direction": unravel(v), "perturbation": unravel(k)})
