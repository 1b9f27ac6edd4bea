"""BatchNorm running statistics of any parameters: the exact average over one pass of data.

After phi(t) is formed (or any model is modified), its BatchNorm running statistics no longer
fit its weights. ``recalibrate_batch_stats`` recomputes them as the reference's
``utils.update_bn`` intends (reset, then a cumulative average over one pass of the training
data, BN normalising with each batch's statistics), but exactly:

* mean = the example-weighted average of the batch means;
* var  = the weighted average of the batch variances plus the spread of the batch means (the
  law of total variance), i.e. for the first BatchNorm layer exactly the biased variance of
  its input over the whole pass. (PyTorch's cumulative ``update_bn`` averages the unbiased
  batch variances instead; the two differ by the spread of the batch means and n/(n-1).)

It works for any ``Apply`` whose BatchNorm updates ``running <- m * running + (1 - m) * batch``
(Flax Linen and NNX): the batch statistics are read off a training forward from zeroed running
statistics, and ``m`` is inferred per leaf. Variances are found by name and paired with their
mean by name, in Linen ``batch_stats`` dicts (``.../BatchNorm_0/var``), NNX states
(``.../bn/var/.value``) and pure dicts alike; a variance-named leaf without its mean raises
rather than being averaged like a mean. Every other floating leaf is averaged like a mean.

With a device ``mesh`` (``jax.sharding.Mesh`` with the axis ``"data"``) the inputs, params and
state are replicated on it and every batch of the pass whose size is a multiple of the mesh's
``"data"`` size is constrained to be split over it (GSPMD all-reduces the batch statistics);
the same batches are formed as without a mesh, so the statistics agree to float tolerance.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mcu_jax import evaluate
from mcu_jax.models.adapters import Apply
from mcu_jax.preprocess import Preprocess, default_preprocess
from mcu_jax.validation import InvalidArgument, check_positive

PyTree = Any

# Variance leaf names -> the name of their mean sibling (Flax, Haiku/TF and torch-style).
VARIANCE_NAMES = {"var": "mean", "variance": "mean", "running_var": "running_mean",
                  "moving_variance": "moving_mean", "moving_var": "moving_mean"}


def _is_float(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def _key_name(key) -> str | int | None:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return getattr(key, attr)
  return None


def _named_path(path) -> tuple:
  """The names along ``path`` without NNX's trailing ``.value`` (a Variable's array)."""
  names = tuple(_key_name(k) for k in path)
  while names and names[-1] in ("value", "raw_value"):
    names = names[:-1]
  return names


def variance_pairs(state: PyTree) -> dict[int, int]:
  """{index of a variance leaf: index of its mean leaf} in ``jax.tree.leaves(state)``.

  A variance is a leaf named as a key of ``VARIANCE_NAMES`` (after dropping NNX's ``.value``);
  its mean is the sibling leaf of the paired name. Raises ``InvalidArgument`` for a variance
  without that sibling.
  """
  paths = [_named_path(path) for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
  index = {path: i for i, path in enumerate(paths)}
  pairs = {}
  for i, path in enumerate(paths):
    if path and path[-1] in VARIANCE_NAMES:
      sibling = path[:-1] + (VARIANCE_NAMES[path[-1]],)
      if sibling not in index:
        where = "/".join(map(str, path))
        raise InvalidArgument(
            f"model_state: the variance {where} has no sibling {sibling[-1]!r} leaf to pair it "
            "with, so its exact recalibration is unknown (it is never averaged like a mean)")
      pairs[i] = index[sibling]
  return pairs


def recalibrated(apply, params, state, images, batch_size, preprocess, momentum=None, rng=None,
                 mesh=None):
  """``recalibrate_batch_stats`` without its checks, to call inside a traced function.

  ``mesh``: each batch whose size is a multiple of ``evaluate.batch_shards(mesh)`` is
  constrained to be split over it (the others, see below, run as they are).
  """
  leaves, treedef = jax.tree.flatten(state)
  if not leaves:
    return state
  n = images.shape[0]
  if n == 0:
    raise ValueError("cannot recalibrate BatchNorm statistics on an empty set")
  bs = min(batch_size, n)
  steps, rem = divmod(n, bs)
  floats = [_is_float(x) for x in leaves]
  pairs = variance_pairs(state)

  def with_leaves(fill):
    return jax.tree.unflatten(treedef, [
        jnp.full(x.shape, fill, x.dtype) if f else x for x, f in zip(leaves, floats)])

  shards = evaluate.batch_shards(mesh)

  def split(x):
    # Batches are never padded (padding would enter the statistics), so a batch that the
    # devices cannot share evenly runs unconstrained: the remainder batch of the pass, or the
    # whole set when it is smaller than batch_size. GSPMD then places it as it likes; the
    # statistics stay exact, only that batch is not split.
    return evaluate.split_batch(x, mesh) if x.shape[0] % shards == 0 else x

  def forward(x, running, key):
    _, new_state = apply(params, running, split(preprocess(key, split(x))), True)
    new_leaves = jax.tree.leaves(new_state)
    if len(new_leaves) != len(leaves):
      raise ValueError("apply(..., train=True) must return a state with the structure of the "
                       "state it was given")
    return new_leaves

  keys = (None if rng is None else jax.random.split(rng, steps + 1))
  key_at = lambda i: None if keys is None else keys[i]
  zeros = with_leaves(0.0)
  first = forward(images[:bs], zeros, key_at(0))          # (1 - m) * stats of batch 0

  # retained share (1 - m) of a batch statistic, per leaf (elementwise).
  if momentum is None:
    # Running stats of c = 2**k, with c far above |(1-m) stat| so that m * c + (1-m) * stat
    # rounds to m * c: m = out / c, exact to a float32 ulp whatever the model's momentum.
    def probe_scale(o):
      top = jnp.maximum(jnp.max(jnp.abs(o)) if o.size else 1.0, 1.0)
      return jnp.exp2(jnp.minimum(jnp.ceil(jnp.log2(top)) + 40.0, 100.0)).astype(o.dtype)
    scales = [probe_scale(o) if f else None for o, f in zip(first, floats)]
    probe_state = jax.tree.unflatten(treedef, [
        jnp.broadcast_to(s, x.shape).astype(x.dtype) if f else x
        for x, s, f in zip(leaves, scales, floats)])
    probed = forward(images[:bs], probe_state, key_at(0))
    keep = [(1.0 - p / s) if f else None for p, s, f in zip(probed, scales, floats)]
  else:
    momentum = float(momentum)
    # 1 - m in the leaf's dtype, as Flax computes it (float32(1) - float32(m)).
    keep = [jnp.full(x.shape, 1.0 - jnp.asarray(momentum, x.dtype), x.dtype) if f else None
            for x, f in zip(leaves, floats)]
  safe_keep = [jnp.where(k == 0, 1.0, k) if k is not None else None for k in keep]

  def batch_stats(out):
    return [o / k if k is not None else None for o, k in zip(out, safe_keep)]

  stats0 = batch_stats(first)
  shift = stats0       # batch 0's statistics: accumulate differences from them (numerics)

  # Accumulators per float leaf: sum of w * (stat - shift); for a var leaf also the sum of
  # w * (mean - shift_mean)^2, so that var = E_w[var_b] + E_w[d^2] - E_w[d]^2 (total variance).
  def accumulate(acc, stats, w):
    new = []
    for i, (a, s) in enumerate(zip(acc, stats)):
      if a is None:
        new.append(None)
        continue
      d = s - shift[i]
      if i in pairs:
        dm = stats[pairs[i]] - shift[pairs[i]]
        new.append((a[0] + w * d, a[1] + w * dm * dm))
      else:
        new.append((a[0] + w * d, None))
    return new

  init = [(jnp.zeros_like(x), jnp.zeros_like(x) if i in pairs else None) if f else None
          for i, (x, f) in enumerate(zip(leaves, floats))]
  acc = accumulate(init, stats0, float(bs))
  if steps > 1:
    body_images = images[bs:steps * bs].reshape((steps - 1, bs) + images.shape[1:])

    def body(acc, xs):
      x, key = xs if keys is not None else (xs, None)
      return accumulate(acc, batch_stats(forward(x, zeros, key)), float(bs)), None

    xs = body_images if keys is None else (body_images, keys[1:steps])
    acc, _ = jax.lax.scan(body, acc, xs)
  if rem:
    last = forward(images[steps * bs:], zeros, key_at(steps))
    acc = accumulate(acc, batch_stats(last), float(rem))

  result = []
  for i, (x, a, f) in enumerate(zip(leaves, acc, floats)):
    if not f:
      result.append(x)
      continue
    mean_d = a[0] / n
    value = shift[i] + mean_d
    if i in pairs:
      j = pairs[i]
      mean_dm = acc[j][0] / n
      value = value + jnp.maximum(a[1] / n - mean_dm * mean_dm, 0.0)
      value = jnp.maximum(value, 0.0)
    value = jnp.where(keep[i] == 0, x, value).astype(x.dtype)   # leaves train mode never moves
    result.append(value)
  return jax.tree.unflatten(treedef, result)


@functools.partial(jax.jit, static_argnames=("apply", "batch_size", "preprocess", "momentum",
                                             "mesh"))
def _recalibrate_jit(apply, params, state, images, rng, batch_size, preprocess, momentum, mesh):
  return evaluate.gathered(
      recalibrated(apply, params, state, images, batch_size, preprocess, momentum, rng, mesh),
      mesh)


def check_batch_size(name: str, batch_size, mesh=None) -> int:
  """``batch_size`` if it is a positive integer, with a mesh a multiple of its ``"data"``
  size (the batches of a pass set its statistics, so it is never rounded)."""
  check_positive(name, batch_size, integer=True)
  shards = evaluate.batch_shards(mesh)
  if batch_size % shards:
    raise InvalidArgument(f"{name}: expected a multiple of the mesh's {shards} devices, got "
                          f"{batch_size}")
  return int(batch_size)


def recalibrate_batch_stats(apply: Apply, params: PyTree, model_state: PyTree, inputs,
                            batch_size: int = 128, preprocess: Preprocess = default_preprocess,
                            momentum: float | None = None, rng: jax.Array | None = None, *,
                            mesh=None) -> PyTree:
  """The model state of ``params`` with BatchNorm statistics recomputed on ``inputs``.

  The inputs are forwarded in order, in batches of ``batch_size``, in training mode; a last
  partial batch is forwarded on its own, so no padding enters any statistic. Means and
  variances are the exact averages over the pass (see the module docstring). The momentum
  ``m`` of ``running <- m * running + (1 - m) * batch`` is ``momentum`` when given, else
  inferred per leaf from one extra forward with the running statistics set to a large power
  of two ``c`` (``m = out / c``), so models with any BN momentum (or several) work. Leaves a
  training forward does not move, and non-float leaves, come back unchanged. A stateless model
  returns ``model_state`` itself and needs no inputs (``inputs=None``).

  Args:
    apply: the model (``mcu_jax.models.Apply``), hashable (a static jit argument).
    params: the parameters, e.g. ``point(curve, t)``.
    model_state: a state of the model's structure (its values are not used).
    inputs: (N, ...) stored inputs (what ``preprocess`` takes), typically D_r.
    batch_size: batch size of the pass (the reference uses its loader's, 128).
    preprocess: ``preprocess(key, inputs) -> float``; ``key`` is None unless ``rng`` is given,
      then each batch gets its own key.
    momentum: the BN momentum of every layer, or None to infer it.
    rng: optional PRNG key for augmentation in ``preprocess``.
    mesh: a ``jax.sharding.Mesh`` (``parallel.make_mesh()``): inputs, params, state and
      ``rng`` replicated on it, every batch of ``batch_size`` (then a multiple of the mesh's
      devices) split over it; a remainder batch that is not a multiple runs unsplit. None: no
      sharding.

  Returns:
    A pytree like ``model_state``.
  """
  mesh = evaluate.check_mesh(mesh)
  if not jax.tree.leaves(model_state):
    return model_state
  if inputs is None or int(np.shape(inputs)[0]) == 0:
    raise InvalidArgument("inputs: recalibrating BatchNorm statistics needs a non-empty set of "
                          f"inputs, got {'None' if inputs is None else 'an empty one'}")
  batch_size = check_batch_size("batch_size", batch_size, mesh)
  variance_pairs(model_state)   # raises early, outside jit, on an unpaired variance
  if mesh is None:
    inputs = jnp.asarray(inputs)
  else:
    params, model_state, inputs, rng = evaluate.on_mesh((params, model_state, inputs, rng), mesh)
  return _recalibrate_jit(apply, params, model_state, inputs, rng, batch_size, preprocess,
                          None if momentum is None else float(momentum), mesh)


__all__ = ["recalibrate_batch_stats", "recalibrated", "check_batch_size", "variance_pairs",
           "VARIANCE_NAMES"]
