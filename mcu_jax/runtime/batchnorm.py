"""BatchNorm running statistics of any parameters: the exact average over one pass of data.

After phi(t) is formed (or any model is modified), its BatchNorm running statistics no longer
fit its weights. ``recalibrate_batch_stats`` recomputes them as the reference's
``utils.update_bn`` intends (reset, then a cumulative average over one pass of the training
data, the model in training mode so that BatchNorm normalises with each batch's statistics),
but exactly:

* mean = the example-weighted average of the batch means;
* var  = the weighted average of the batch variances plus the spread of the batch means (the
  law of total variance), i.e. for the first BatchNorm layer exactly the biased variance of
  its input over the whole pass. (PyTorch's cumulative ``update_bn`` averages the unbiased
  batch variances instead; the two differ by the spread of the batch means and n/(n-1).)

What the state's leaves mean is declared, not guessed: ``stats_layout`` takes the
``StatsLayout`` the model's adapter declares (``mcu_jax.models.running_stats``: Linen's and
NNX's EMAs, Haiku's zero-debiased EMAs with their counters, Equinox's first-time flag or
counter), and writes the exact statistics so that the model's own inference reads them. An
apply of one's own that declares nothing has its running means and variances found by name
(``mean``/``var``, ``running_mean``/``running_var``, ``moving_mean``/``moving_variance``) and
each one's momentum probed; the probe is kept only if it verifies itself. Every layout is
verified on a probe batch before use:

* a training forward from the reset state, read back and written, then a second training
  forward on the same batch from the written state must leave what inference reads unchanged
  (a statistic is a fixed point of its own update);
* no other float leaf may move in a training forward (a statistic nobody declared would keep
  theta_o's values for every phi(t)).

A failed check raises ``InvalidArgument`` naming the leaf and how to declare it, before any
training. The training forwards draw dropout masks from a fixed key (or from ``rng``).

On the device ``mesh`` (``parallel.resolve_mesh``: None means all devices) the inputs, params
and state are replicated and every batch of the pass whose size is a multiple of the mesh's
``"data"`` size is constrained to be split over it (GSPMD all-reduces the batch statistics);
the same batches are formed on any number of devices, so the statistics agree to float
tolerance.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mcu_jax.errors import InvalidArgument
from mcu_jax.models.adapters import Apply, forward, running_stats_of
from mcu_jax.models.running_stats import EmaStats, StatsLayout, is_float, leaf_paths, path_str
from mcu_jax.preprocess import Preprocess, default_preprocess
from mcu_jax.runtime import parallel
from mcu_jax.typing import PyTree

# Variance leaf names -> the name of their mean sibling (Flax, Haiku/TF and torch-style).
VARIANCE_NAMES = {"var": "mean", "variance": "mean", "running_var": "running_mean",
                  "moving_variance": "moving_mean", "moving_var": "moving_mean"}
MEAN_NAMES = frozenset(VARIANCE_NAMES.values())
PROBE_SIZE = 32
"""Examples of the probe batch that verifies a layout (the first ones of the pass)."""

_DECLARE = ("declare it with models.with_running_stats(apply, [models.RunningStats(mean=..., "
            "var=..., momentum=...)]) or use an adapter (models.from_linen, from_nnx, "
            "from_haiku, from_equinox)")


def variance_pairs(state: PyTree) -> dict[int, int]:
  """{index of a variance leaf: index of its mean leaf} in ``jax.tree.leaves(state)``.

  A variance is a leaf named as a key of ``VARIANCE_NAMES`` (after dropping NNX's ``.value``);
  its mean is the sibling leaf of the paired name. Raises ``InvalidArgument`` for a variance
  without that sibling.
  """
  paths = leaf_paths(state)
  index = {path: i for i, path in enumerate(paths)}
  pairs = {}
  for i, path in enumerate(paths):
    if path and path[-1] in VARIANCE_NAMES:
      sibling = path[:-1] + (VARIANCE_NAMES[path[-1]],)
      if sibling not in index:
        raise InvalidArgument(
            f"model_state: the variance {path_str(path)} has no sibling {sibling[-1]!r} leaf to "
            "pair it with, so its exact recalibration is unknown (it is never averaged like a "
            "mean)")
      pairs[i] = index[sibling]
  return pairs


# ---------------------------------------------------------------------------------------------
# The pass.


def _model_key(rng, i):
  return jax.random.fold_in(jax.random.PRNGKey(0) if rng is None else rng, i)


def recalibrated(apply, params, state, images, batch_size, preprocess, layout: StatsLayout,
                 rng=None, mesh=None):
  """``recalibrate_batch_stats`` without its checks, to call inside a traced function, with
  the verified ``layout`` (``stats_layout``).

  ``mesh`` (``parallel.resolve_mesh``): each batch whose size is a multiple of
  ``parallel.data_shards(mesh)`` is constrained to be split over it (the others, see below,
  run as they are).
  """
  mesh = parallel.resolve_mesh(mesh)
  leaves, treedef = jax.tree.flatten(state)
  if not layout.entries:
    return state
  n = images.shape[0]
  if n == 0:
    raise InvalidArgument("inputs: cannot recalibrate BatchNorm statistics on an empty set")
  bs = min(batch_size, n)
  steps, rem = divmod(n, bs)
  reset = jax.tree.unflatten(treedef, layout.reset(leaves))
  shards = parallel.data_shards(mesh)

  def split(x):
    # Batches are never padded (padding would enter the statistics), so a batch that the
    # devices cannot share evenly runs unconstrained: the remainder batch of the pass, or the
    # whole set when it is smaller than batch_size. GSPMD then places it as it likes; the
    # statistics stay exact, only that batch is not split.
    return parallel.split_batch(x, mesh) if x.shape[0] % shards == 0 else x

  def batch_stats(x, i):
    # rng feeds augmentation (when given) and the model's own randomness (always keyed).
    pre_key = None if rng is None else jax.random.fold_in(jax.random.fold_in(rng, 1 << 20), i)
    _, new_state = forward(apply, params, reset, split(preprocess(pre_key, split(x))), True,
                           _model_key(rng, i))
    new_leaves = jax.tree.leaves(new_state)
    if len(new_leaves) != len(leaves):
      raise InvalidArgument("apply: a training forward must return a state with the structure "
                            "of the state it was given")
    return layout.read(new_leaves)

  # Per entry, sums of w * (stat - shift) and, for the mean, of w * (mean - shift)^2, with
  # shift = batch 0's statistics (numerics): var = E_w[var_b] + E_w[d^2] - E_w[d]^2.
  def accumulate(acc, stats, shift, w):
    out = []
    for (sm, sv, sq), (m, v), (m0, v0) in zip(acc, stats, shift):
      dm = m - m0
      out.append((sm + w * dm, None if v is None else sv + w * (v - v0), sq + w * dm * dm))
    return out

  shift = batch_stats(images[:bs], 0)
  acc = [(jnp.zeros_like(m), None if v is None else jnp.zeros_like(v), jnp.zeros_like(m))
         for m, v in shift]
  acc = accumulate(acc, shift, shift, float(bs))
  if steps > 1:
    body_images = images[bs:steps * bs].reshape((steps - 1, bs) + images.shape[1:])

    def body(acc, xs):
      x, i = xs
      return accumulate(acc, batch_stats(x, i), shift, float(bs)), None

    acc, _ = jax.lax.scan(body, acc, (body_images, jnp.arange(1, steps)))
  if rem:
    acc = accumulate(acc, batch_stats(images[steps * bs:], steps), shift, float(rem))

  stats = []
  for (sm, sv, sq), (m0, v0) in zip(acc, shift):
    mean_d = sm / n
    var = None
    if sv is not None:
      var = jnp.maximum(v0 + sv / n + jnp.maximum(sq / n - mean_d * mean_d, 0.0), 0.0)
    stats.append((m0 + mean_d, var))
  return jax.tree.unflatten(treedef, layout.write(leaves, stats))


# ---------------------------------------------------------------------------------------------
# The layout: declared by the adapter, or probed; verified either way.


@functools.partial(jax.jit, static_argnames=("apply", "layout", "preprocess"))
def _probe_forwards(apply, params, state, x, layout, preprocess):
  """On one batch: the leaves after a training forward from ``layout.reset(state)``, the
  statistics read from them, and the leaves after a second forward from the written state."""
  leaves, treedef = jax.tree.flatten(state)
  x = preprocess(None, x)
  key = _model_key(None, 0)
  run = lambda tree: jax.tree.leaves(forward(apply, params, tree, x, True, key)[1])
  first = run(jax.tree.unflatten(treedef, layout.reset(leaves)))
  stats = layout.read(first)
  written = layout.write(leaves, stats)
  second = run(jax.tree.unflatten(treedef, written))
  return first, stats, layout.inferred(second), layout.inferred(written)


@functools.partial(jax.jit, static_argnames=("apply", "preprocess"))
def _probe_momenta(apply, params, state, x, scales, preprocess):
  """Leaves after training forwards from zeros and from ``scales`` (per float leaf)."""
  leaves, treedef = jax.tree.flatten(state)
  x = preprocess(None, x)
  key = _model_key(None, 0)
  run = lambda new: jax.tree.leaves(forward(apply, params, jax.tree.unflatten(treedef, new), x,
                                            True, key)[1])
  zeros = [jnp.zeros_like(v) if s is not None else v for v, s in zip(leaves, scales)]
  big = [jnp.broadcast_to(s, v.shape).astype(v.dtype) if s is not None else v
         for v, s in zip(leaves, scales)]
  return run(zeros), run(big)


def _probed_layout(apply, params, state, x, preprocess) -> StatsLayout:
  """Running means and variances found by name, each one's momentum from two forwards:
  from zeros (out0 = (1 - m) s) and from a power of two c far above the statistics
  (out_c = m c exactly, the (1 - m) s term lost to rounding), m = out_c / c."""
  leaves = jax.tree.leaves(state)
  paths = leaf_paths(state)
  pairs = variance_pairs(state)
  means = sorted(set(pairs.values()) | {i for i, p in enumerate(paths)
                                        if p and p[-1] in MEAN_NAMES and is_float(leaves[i])})
  if not means:
    return StatsLayout((), "probed")
  chosen = set(means) | set(pairs)
  first, _ = _probe_momenta(apply, params, state, x,
                            [jnp.zeros((), v.dtype) if i in chosen else None
                             for i, v in enumerate(leaves)], preprocess)
  scales: list[jax.Array | None] = []
  for i, v in enumerate(leaves):
    if i not in chosen:
      scales.append(None)
      continue
    top = max(float(jnp.max(jnp.abs(first[i]))) if first[i].size else 1.0, 1.0)
    scales.append(jnp.asarray(2.0 ** min(np.ceil(np.log2(top)) + 40, 100), v.dtype))
  _, probed = _probe_momenta(apply, params, state, x, scales, preprocess)
  momentum = {}
  for i in chosen:
    scale = scales[i]
    assert scale is not None          # every chosen leaf was given a scale above
    m = np.asarray(probed[i], np.float64) / float(scale)
    if m.size and (np.ptp(m) > 1e-6 or not 0.0 < float(m.flat[0]) < 1.0):
      raise InvalidArgument(
          f"model_state: the running statistic {path_str(paths[i])} does not follow "
          "running <- m * running + (1 - m) * batch with one m in (0, 1) (probed m = "
          f"{float(m.min()):.4g}..{float(m.max()):.4g}), so its exact recalibration is unknown; "
          + _DECLARE)
    momentum[i] = float(m.flat[0]) if m.size else 0.0
  entries = []
  for mean in means:
    var = next((v for v, m in pairs.items() if m == mean), None)
    if var is not None and abs(momentum[var] - momentum[mean]) > 1e-6:
      raise InvalidArgument(f"model_state: {path_str(paths[mean])} and {path_str(paths[var])} "
                            "follow different momenta; " + _DECLARE)
    name = path_str(paths[mean][:-1]) or path_str(paths[mean])
    entries.append(EmaStats(name, mean, var, momentum[mean]))
  return StatsLayout(tuple(entries), "probed")


def _close(a, b, rtol=1e-4) -> bool:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  scale = max(float(np.max(np.abs(b))) if b.size else 0.0, 1e-6)
  return bool(np.all(np.abs(a - b) <= rtol * np.abs(b) + 1e-5 * scale))


def _verify(apply, params, state, x, layout: StatsLayout, preprocess) -> None:
  leaves = jax.tree.leaves(state)
  paths = leaf_paths(state)
  first, stats, again, written = _probe_forwards(apply, params, state, x, layout, preprocess)
  declared = layout.indices
  for i, (old, new) in enumerate(zip(leaves, first)):
    if i not in declared and is_float(old) and not np.array_equal(np.asarray(old),
                                                                   np.asarray(new)):
      raise InvalidArgument(
          f"model_state: the leaf {path_str(paths[i]) or i} changes in a training forward but "
          f"is not a BatchNorm statistic the model declares ({layout.source}), so recalibration "
          "would leave theta_o's values in every phi(t); " + _DECLARE)
  for entry, (mean, var), read_mean_var, written_mean_var in zip(layout.entries, stats, again,
                                                                  written):
    for what, value, got, put in zip(("mean", "variance"), (mean, var), read_mean_var,
                                     written_mean_var):
      if value is None:
        continue
      if not (_close(put, value) and _close(got, value)):
        raise InvalidArgument(
            f"model_state: the {what} of {entry.name} does not behave as {layout.source} "
            "declares it (writing a batch's statistics and training on that batch again does "
            "not give them back), so its exact recalibration is unknown; " + _DECLARE)


def stats_layout(apply: Apply, params: PyTree, model_state: PyTree, inputs,
                 preprocess: Preprocess = default_preprocess) -> StatsLayout:
  """The verified ``StatsLayout`` of ``model_state``: what ``apply`` declares (every
  adapter), else probed by name; checked on ``inputs[:PROBE_SIZE]`` (see the module
  docstring). Raises ``InvalidArgument`` naming the leaf when a check fails. An empty state
  gives an empty layout without any forward."""
  if not jax.tree.leaves(model_state):
    return StatsLayout((), "empty")
  x = jnp.asarray(inputs[:PROBE_SIZE])
  sample = jax.eval_shape(lambda v: preprocess(None, v), x)
  layout = running_stats_of(apply, params, model_state, sample)
  if layout is None:
    layout = _probed_layout(apply, params, model_state, x, preprocess)
  _verify(apply, params, model_state, x, layout, preprocess)
  return layout


# ---------------------------------------------------------------------------------------------
# The public call.


@functools.partial(jax.jit, static_argnames=("apply", "batch_size", "preprocess", "layout",
                                             "mesh"))
def _recalibrate_jit(apply, params, state, images, rng, batch_size, preprocess, layout, mesh):
  return parallel.gathered(
      recalibrated(apply, params, state, images, batch_size, preprocess, layout, rng, mesh),
      mesh)


def recalibrate_batch_stats(apply: Apply, params: PyTree, model_state: PyTree, inputs,
                            batch_size: int = 128, preprocess: Preprocess = default_preprocess,
                            rng: jax.Array | None = None, *, layout: StatsLayout | None = None,
                            mesh=None) -> PyTree:
  """The model state of ``params`` with BatchNorm statistics recomputed on ``inputs``.

  The inputs are forwarded in order, in batches of ``batch_size``, in training mode; a last
  partial batch is forwarded on its own, so no padding enters any statistic. Means and
  variances are the exact averages over the pass (see the module docstring), written as the
  model's adapter declares its statistics, so that its inference reads exactly them. A
  stateless model returns ``model_state`` itself and needs no inputs (``inputs=None``).

  Args:
    apply: the model (``mcu_jax.models.Apply``), hashable (a static jit argument).
    params: the parameters, e.g. ``point(curve, t)``.
    model_state: a state of the model's structure (its statistics' values are not used).
    inputs: (N, ...) stored inputs (what ``preprocess`` takes), typically D_r.
    batch_size: batch size of the pass (the reference uses its loader's, 128).
    preprocess: ``preprocess(key, inputs) -> model inputs``; ``key`` is None unless ``rng``
      is given, then each batch gets its own key.
    rng: optional PRNG key for augmentation in ``preprocess`` and the model's randomness
      (dropout); without it dropout draws from a fixed key.
    layout: the verified ``StatsLayout`` (``stats_layout``), to skip verifying it again.
    mesh: a ``jax.sharding.Mesh`` (None: all devices, ``parallel.resolve_mesh``): inputs,
      params, state and ``rng`` replicated on it, every batch of ``batch_size`` (a multiple of
      the mesh's devices: batches set the statistics, so it is never rounded) split over it; a
      remainder batch that is not a multiple runs unsplit.

  Returns:
    A pytree like ``model_state``.
  """
  mesh = parallel.resolve_mesh(mesh)
  if not jax.tree.leaves(model_state):
    return model_state
  if inputs is None or int(np.shape(inputs)[0]) == 0:
    raise InvalidArgument("inputs: recalibrating BatchNorm statistics needs a non-empty set of "
                          f"inputs, got {'None' if inputs is None else 'an empty one'}")
  batch_size = parallel.check_batch_size("batch_size", batch_size, mesh)
  if layout is None:
    layout = stats_layout(apply, params, model_state, inputs, preprocess)
  params, model_state, inputs, rng = parallel.replicate((params, model_state, inputs, rng), mesh)
  return _recalibrate_jit(apply, params, model_state, inputs, rng, batch_size, preprocess,
                          layout, mesh)


__all__ = ["recalibrate_batch_stats", "recalibrated", "stats_layout",
           "variance_pairs", "VARIANCE_NAMES", "PROBE_SIZE"]
