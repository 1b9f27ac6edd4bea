"""Evaluation of a model on array data sets, BatchNorm recalibration, the sweep over t.

Everything here is batched and jitted. Inference-mode evaluation pads data sets to whole batches
with a ``valid`` mask, so any size works and no example counts twice. Train-mode forwards (BN
recalibration) never see padding: a last partial batch is forwarded on its own, at its own size.

Contents:

* ``accuracy_and_loss``, ``predict_logits``, ``true_label_confidence``, ``per_example_losses``:
  a model in inference mode on one data set.
* ``recalibrate_batch_stats``: BN running statistics of given params as the exact average over
  one pass of the data (the reference's ``utils.update_bn``).
* ``sweep``: phi(t) at many t, each with recalibrated BN statistics, its accuracy and mean loss
  on named sets, and the path length; several t at once (vmap) or one at a time.
* ``gap``, ``optimal_t``, ``effective_region``, ``alignment_targets``, ``select_t``: the choice
  of t on the curve (the reference's ``find_optimal_t`` and ``plot_region.py``).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mcu_jax import objectives
from mcu_jax.curves import Curve, check_t, point
from mcu_jax.mcu import Apply, Preprocess, normalize_uint8

PyTree = Any
Arrays = tuple[Any, Any]   # (images, labels)


# ---------------------------------------------------------------------------------------------
# Inference mode on one data set.


def padded_batches(images: jax.Array, labels: jax.Array, batch_size: int
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Reshape (N, ...) arrays to (steps, batch_size, ...), zero-padded, plus the valid mask."""
  n = labels.shape[0]
  if n == 0:
    raise ValueError("cannot evaluate on an empty set")
  steps = -(-n // batch_size)
  pad = steps * batch_size - n
  pad_to = lambda x: jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)])
  valid = jnp.arange(steps * batch_size) < n
  return (pad_to(images).reshape((steps, batch_size) + images.shape[1:]),
          pad_to(labels).reshape(steps, batch_size), valid.reshape(steps, batch_size))


def _hits_and_loss(apply, params, state, images, labels, batch_size, preprocess):
  """Traceable: (number correct, summed CE) over a data set, inference mode, padded batches."""
  xs = padded_batches(images, labels, batch_size)

  def body(totals, batch):
    x, y, ok = batch
    logits, _ = apply(params, state, preprocess(None, x), False)
    w = ok.astype(jnp.float32)
    hits = jnp.sum(objectives.correct(logits, y) * w)
    loss = jnp.sum(objectives.cross_entropy(logits, y) * w)
    return (totals[0] + hits, totals[1] + loss), None

  (hits, loss), _ = jax.lax.scan(body, (jnp.zeros(()), jnp.zeros(())), xs)
  return hits, loss


@functools.partial(jax.jit, static_argnames=("apply", "batch_size", "preprocess"))
def _sums(apply, params, state, images, labels, batch_size, preprocess):
  return _hits_and_loss(apply, params, state, images, labels, batch_size, preprocess)


def _num_examples(labels) -> int:
  n = int(np.shape(labels)[0])
  if n == 0:
    raise ValueError("cannot evaluate on an empty set")
  return n


def accuracy_and_loss(apply: Apply, params: PyTree, state: PyTree, images, labels,
                      batch_size: int = 512, preprocess: Preprocess = normalize_uint8
                      ) -> tuple[float, float]:
  """(accuracy in percent, mean cross-entropy) of the model in inference mode.

  ``images`` (N, H, W, C) uint8 and ``labels`` (N,), on host or device. ``apply`` and
  ``preprocess`` must be hashable (module-level functions or the closures of make_apply,
  reused between calls) since they are static for jit.
  """
  n = _num_examples(labels)
  hits, loss = _sums(apply, params, state, jnp.asarray(images), jnp.asarray(labels),
                     min(batch_size, n), preprocess)
  return 100.0 * float(hits) / n, float(loss) / n


@functools.partial(jax.jit, static_argnames=("apply", "batch_size", "preprocess"))
def _logits(apply, params, state, images, batch_size, preprocess):
  n = images.shape[0]
  xs, _, _ = padded_batches(images, jnp.zeros((n,), jnp.int32), batch_size)

  def body(_, x):
    logits, _ = apply(params, state, preprocess(None, x), False)
    return None, logits.astype(jnp.float32)

  _, out = jax.lax.scan(body, None, xs)
  return out.reshape((-1,) + out.shape[2:])[:n]


def predict_logits(apply: Apply, params: PyTree, state: PyTree, images,
                   batch_size: int = 512, preprocess: Preprocess = normalize_uint8
                   ) -> np.ndarray:
  """Inference-mode logits, float32 (N, num_classes), as a NumPy array."""
  n = int(np.shape(images)[0])
  if n == 0:
    raise ValueError("cannot evaluate on an empty set")
  return np.asarray(_logits(apply, params, state, jnp.asarray(images), min(batch_size, n),
                            preprocess))


def _check_labels(logits: np.ndarray, labels) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.shape != (logits.shape[0],):
    raise ValueError(f"{labels.shape} labels for {logits.shape[0]} logits")
  return labels.astype(np.int32)


def true_label_confidence(apply: Apply, params: PyTree, state: PyTree, images, labels,
                          batch_size: int = 512, preprocess: Preprocess = normalize_uint8
                          ) -> np.ndarray:
  """softmax(logits)[label] per example, float32 (N,): the feature of SalUn's SVC MIA."""
  logits = predict_logits(apply, params, state, images, batch_size, preprocess)
  labels = _check_labels(logits, labels)
  probs = jax.nn.softmax(jnp.asarray(logits), axis=-1)
  return np.asarray(jnp.take_along_axis(probs, jnp.asarray(labels)[:, None], axis=1)[:, 0])


def per_example_losses(apply: Apply, params: PyTree, state: PyTree, images, labels,
                       batch_size: int = 512, preprocess: Preprocess = normalize_uint8
                       ) -> np.ndarray:
  """Cross-entropy per example, float32 (N,)."""
  logits = predict_logits(apply, params, state, images, batch_size, preprocess)
  labels = _check_labels(logits, labels)
  return np.asarray(objectives.cross_entropy(jnp.asarray(logits), jnp.asarray(labels)))


# ---------------------------------------------------------------------------------------------
# BatchNorm recalibration.


def _is_float(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def _variance_pairs(state: PyTree) -> dict[int, int]:
  """{index of a ``var`` leaf: index of its sibling ``mean`` leaf} in flattened ``state``.

  Flax's BatchNorm keeps ``{'mean': ..., 'var': ...}`` in each layer's ``batch_stats`` dict.
  """
  paths = [tuple(path) for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
  index = {path: i for i, path in enumerate(paths)}
  pairs = {}
  for i, path in enumerate(paths):
    if path and isinstance(path[-1], jax.tree_util.DictKey) and path[-1].key == "var":
      sibling = path[:-1] + (jax.tree_util.DictKey("mean"),)
      if sibling in index:
        pairs[i] = index[sibling]
  return pairs


def _recalibrate(apply, params, state, images, batch_size, preprocess, momentum=None, rng=None):
  """Traceable core of ``recalibrate_batch_stats`` (see there)."""
  leaves, treedef = jax.tree.flatten(state)
  if not leaves:
    return state
  n = images.shape[0]
  if n == 0:
    raise ValueError("cannot recalibrate BatchNorm statistics on an empty set")
  bs = min(batch_size, n)
  steps, rem = divmod(n, bs)
  floats = [_is_float(x) for x in leaves]
  pairs = _variance_pairs(state)

  def with_leaves(fill):
    return jax.tree.unflatten(treedef, [
        jnp.full(x.shape, fill, x.dtype) if f else x for x, f in zip(leaves, floats)])

  def forward(x, running, key):
    _, new_state = apply(params, running, preprocess(key, x), True)
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


@functools.partial(jax.jit, static_argnames=("apply", "batch_size", "preprocess", "momentum"))
def _recalibrate_jit(apply, params, state, images, rng, batch_size, preprocess, momentum):
  return _recalibrate(apply, params, state, images, batch_size, preprocess, momentum, rng)


def recalibrate_batch_stats(apply: Apply, params: PyTree, state: PyTree, images,
                            batch_size: int = 128, preprocess: Preprocess = normalize_uint8,
                            momentum: float | None = None, rng: jax.Array | None = None
                            ) -> PyTree:
  """BatchNorm running statistics of ``params``: the exact average over one pass of ``images``.

  The data are forwarded in order, in batches of ``batch_size``, in training mode (BN normalises
  with each batch's statistics, as the reference's ``utils.update_bn``); a last partial batch is
  forwarded on its own, so no padding enters any statistic. For every BN layer:

  * mean = the example-weighted average of the batch means;
  * var  = the weighted average of the batches' E[x^2] minus mean^2 (accumulated as the law of
    total variance around the first batch's statistics, for float32 accuracy). For the first BN
    layer this is exactly the biased variance of its input over the whole data set. (PyTorch's
    cumulative update_bn averages the unbiased batch variances instead; the two differ by the
    spread of the batch means and the n/(n-1) factor.)

  The per-batch statistics are read off any ``apply`` generically: Flax's BatchNorm updates
  ``ra <- m * ra + (1 - m) * stat``, so a forward with running statistics set to 0 returns
  ``(1 - m) * stat``. The momentum ``m`` is taken from ``momentum`` when given, else inferred per
  leaf with one extra forward on the first batch with the running statistics set to a large
  power of two ``c`` (``m = out / c``), so models with any BN momentum (or several) work. A
  ``var`` leaf is paired with its sibling ``mean`` leaf (Flax's naming); any other floating leaf
  of ``state`` is averaged like a mean, and leaves a training forward does not move (or non-
  float leaves) come back unchanged. A model with empty ``state`` returns ``state`` itself.

  Args:
    apply: ``apply(params, state, x, train) -> (logits, new_state)``, hashable (static).
    params: the parameters, e.g. ``point(curve, t)``.
    state: the model state whose structure the result takes (its values are not used).
    images: (N, H, W, C) uint8 (whatever ``preprocess`` takes), typically the training set.
    batch_size: batch size of the pass (the reference uses the loader's, 128).
    preprocess: ``preprocess(key, images) -> float``; ``key`` is None (no augmentation) unless
      ``rng`` is given, then each batch gets its own key.
    momentum: the BN momentum of every layer, or None to infer it.
    rng: optional PRNG key for augmentation in ``preprocess``.
  """
  if not jax.tree.leaves(state):
    return state
  n = int(np.shape(images)[0])
  if n == 0:
    raise ValueError("cannot recalibrate BatchNorm statistics on an empty set")
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  return _recalibrate_jit(apply, params, state, jnp.asarray(images), rng, int(batch_size),
                          preprocess, None if momentum is None else float(momentum))


# ---------------------------------------------------------------------------------------------
# The sweep over t.


@dataclasses.dataclass
class SweepResult:
  """Metrics of phi(t) at every swept t (NumPy arrays with a leading axis of len(ts)).

  Attributes:
    ts: (T,) the swept t.
    accuracy: {set name: (T,) accuracy in percent}.
    loss: {set name: (T,) mean cross-entropy}.
    path_length: (T,) cumulative L2 length of the polygon through phi(ts[0]), ..., phi(ts[i])
      in parameter space (0 at ts[0]).
    model_states: the recalibrated model state of every t (leaves (T, ...)), or None.
  """
  ts: np.ndarray
  accuracy: dict[str, np.ndarray]
  loss: dict[str, np.ndarray]
  path_length: np.ndarray
  model_states: PyTree = None

  def to_dict(self) -> dict:
    """JSON-friendly lists (model states left out)."""
    return {
        "ts": self.ts.tolist(),
        "accuracy": {k: v.tolist() for k, v in self.accuracy.items()},
        "loss": {k: v.tolist() for k, v in self.loss.items()},
        "path_length": self.path_length.tolist(),
    }

  def state_at(self, index: int) -> PyTree:
    """The recalibrated model state of ``ts[index]``."""
    if self.model_states is None:
      raise ValueError("this sweep did not keep the model states (keep_states=False)")
    return jax.tree.map(lambda x: x[index], self.model_states)


def _check_ts(ts, name: str = "ts") -> np.ndarray:
  ts = np.asarray(ts, dtype=np.float64)
  if ts.ndim != 1 or ts.size == 0:
    raise ValueError(f"{name} must be a non-empty 1-D array, got shape {ts.shape}")
  check_t(ts)
  if ts.size > 1 and not np.all(np.diff(ts) > 0):
    raise ValueError(f"{name} must be strictly increasing, got {ts.tolist()}")
  return ts


def _evaluate_point(curve, t, t_prev, model_state, recal_images, sets, *, apply, batch_size,
                    recal_batch_size, preprocess, momentum):
  """Traceable: everything the sweep reports for one t."""
  params = point(curve, t)
  prev = point(curve, t_prev)
  sq = sum(jnp.sum(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)))
           for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(prev)))
  state = _recalibrate(apply, params, model_state, recal_images, recal_batch_size, preprocess,
                       momentum)
  metrics = {}
  for name, (images, labels) in sets.items():
    n = labels.shape[0]
    hits, loss = _hits_and_loss(apply, params, state, images, labels, min(batch_size, n),
                                preprocess)
    metrics[name] = (hits, loss)     # sums; divided on the host in float64
  return {"metrics": metrics, "step": jnp.sqrt(sq), "state": state}


_STATIC = ("apply", "batch_size", "recal_batch_size", "preprocess", "momentum")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _sweep_chunk(curve, ts, t_prevs, model_state, recal_images, sets, **static):
  fn = functools.partial(_evaluate_point, **static)
  return jax.vmap(fn, in_axes=(None, 0, 0, None, None, None))(
      curve, ts, t_prevs, model_state, recal_images, sets)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _sweep_one(curve, t, t_prev, model_state, recal_images, sets, **static):
  return _evaluate_point(curve, t, t_prev, model_state, recal_images, sets, **static)


def sweep(curve: Curve, ts, apply: Apply, model_state: PyTree, *, recal_images,
          sets: Mapping[str, Arrays], batch_size: int = 512,
          preprocess: Preprocess = normalize_uint8, chunk_size: int | None = None,
          vectorize: bool | None = None, recal_batch_size: int | None = None,
          momentum: float | None = None, keep_states: bool = True,
          progress: bool = True) -> SweepResult:
  """Evaluates phi(t) at every t of ``ts``, each with freshly recalibrated BN statistics.

  For every t: phi(t) = ``point(curve, t)``; its BN running statistics recomputed on
  ``recal_images`` (``recalibrate_batch_stats``; typically the full training set, as the
  reference's eval_curve.py); then accuracy and mean CE in inference mode on every named set;
  and the L2 distance from phi of the previous t, accumulated into the path length.

  Args:
    curve: the curve.
    ts: strictly increasing 1-D array in [0, 1] (e.g. ``np.linspace(0, 1, 20)``).
    apply: ``apply(params, state, x, train) -> (logits, new_state)``, hashable.
    model_state: a model state of the right structure (e.g. the start model's); its values
      are replaced by the recalibration. ``{}`` for models without BatchNorm.
    recal_images: images of the recalibration pass, (N, H, W, C).
    sets: {name: (images, labels)}, e.g. "retain", "forget", "test" (and "test_forget" for
      class forgetting); each must be non-empty.
    batch_size: inference batch size.
    preprocess: ``preprocess(None, uint8 images) -> float``.
    chunk_size: how many t one vmapped call evaluates (None: all at once). The last
      chunk is padded by repeating its last t, so every chunk compiles once.
    vectorize: False evaluates one t per call in a Python loop (no vmap); same results.
      None (default): vmap when ``chunk_size`` is given or on an accelerator; the loop on
      the CPU otherwise, where vmapping over parameters turns convolutions into grouped ones
      and ran 4-6x slower (see benchmarks/sweep_timing.py).
    recal_batch_size: batch size of the recalibration pass (default ``batch_size``).
    momentum: BN momentum, or None to infer it (see ``recalibrate_batch_stats``).
    keep_states: keep every t's recalibrated model state in the result.
    progress: show a tqdm progress bar over chunks.
  """
  ts = _check_ts(ts)
  if vectorize is None:
    vectorize = chunk_size is not None or jax.default_backend() != "cpu"
  if not sets:
    raise ValueError("sets must name at least one (images, labels) set to evaluate")
  device_sets = {}
  for name, value in sets.items():
    if len(value) != 2:
      raise ValueError(f"set {name!r} must be an (images, labels) pair")
    images, labels = value
    if int(np.shape(labels)[0]) == 0:
      raise ValueError(f"set {name!r} is empty")
    if np.shape(images)[0] != np.shape(labels)[0]:
      raise ValueError(f"set {name!r}: {np.shape(images)[0]} images for "
                       f"{np.shape(labels)[0]} labels")
    device_sets[name] = (jnp.asarray(images), jnp.asarray(labels))
  recal_images = jnp.asarray(recal_images)
  if jax.tree.leaves(model_state) and recal_images.shape[0] == 0:
    raise ValueError("recal_images is empty")
  if batch_size < 1 or (recal_batch_size is not None and recal_batch_size < 1):
    raise ValueError("batch sizes must be positive")
  static = dict(apply=apply, batch_size=int(batch_size),
                recal_batch_size=int(recal_batch_size or batch_size), preprocess=preprocess,
                momentum=None if momentum is None else float(momentum))

  num = ts.size
  t_prevs = np.concatenate([ts[:1], ts[:-1]])
  dtype = jnp.result_type(float)
  size = 1 if not vectorize else (num if chunk_size is None else int(chunk_size))
  if size < 1:
    raise ValueError(f"chunk_size must be positive, got {chunk_size}")
  starts = list(range(0, num, size))

  from tqdm import tqdm
  outputs = []
  for start in tqdm(starts, desc="sweep", unit="chunk", disable=not progress, leave=False):
    stop = min(start + size, num)
    if not vectorize:
      out = _sweep_one(curve, jnp.asarray(ts[start], dtype), jnp.asarray(t_prevs[start], dtype),
                       model_state, recal_images, device_sets, **static)
      out = jax.tree.map(lambda x: np.asarray(x)[None], out)
    else:
      pad = size - (stop - start)
      chunk_ts = np.concatenate([ts[start:stop], np.repeat(ts[stop - 1], pad)])
      chunk_prev = np.concatenate([t_prevs[start:stop], np.repeat(t_prevs[stop - 1], pad)])
      out = _sweep_chunk(curve, jnp.asarray(chunk_ts, dtype), jnp.asarray(chunk_prev, dtype),
                         model_state, recal_images, device_sets, **static)
      out = jax.tree.map(lambda x: np.asarray(x)[:stop - start], out)
    if not keep_states:
      out = {**out, "state": None}
    outputs.append(out)

  merged = jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)
  metrics = merged["metrics"]
  counts = {name: int(labels.shape[0]) for name, (_, labels) in device_sets.items()}
  steps = merged["step"].astype(np.float64)
  steps[0] = 0.0
  return SweepResult(
      ts=ts,
      accuracy={name: 100.0 * metrics[name][0].astype(np.float64) / counts[name]
                for name in sets},
      loss={name: metrics[name][1].astype(np.float64) / counts[name] for name in sets},
      path_length=np.cumsum(steps),
      model_states=merged["state"] if keep_states else None,
  )


# ---------------------------------------------------------------------------------------------
# Choice of t.


def _check_curves(ts, *values) -> tuple[np.ndarray, ...]:
  ts = _check_ts(ts)
  if ts.size < 4:
    raise ValueError(f"cubic interpolation needs at least 4 sampled t, got {ts.size}")
  out = []
  for v in values:
    v = np.asarray(v, dtype=np.float64)
    if v.shape != ts.shape:
      raise ValueError(f"accuracies of shape {v.shape} do not match ts of shape {ts.shape}")
    if not np.all(np.isfinite(v)):
      raise ValueError("accuracies must be finite")
    out.append(v)
  return (ts, *out)


def gap(ts, retain_acc, forget_acc, retain_target: float, forget_target: float
        ) -> Callable[[Any], np.ndarray]:
  """gap(t) = (|RA(t) - r*| + |FA(t) - f*|) / 2, RA and FA cubic interpolants of the samples.

  As the reference's ``find_optimal_t``: ``scipy.interpolate.interp1d(kind='cubic')`` (a not-a-
  knot cubic spline) through the sampled accuracies. Returns a vectorised callable defined on
  [ts[0], ts[-1]]; t outside raises ValueError. Needs at least 4 strictly increasing ts.
  """
  from scipy.interpolate import CubicSpline
  ts, ra, fa = _check_curves(ts, retain_acc, forget_acc)
  ra_fn = CubicSpline(ts, ra, bc_type="not-a-knot", extrapolate=False)
  fa_fn = CubicSpline(ts, fa, bc_type="not-a-knot", extrapolate=False)
  lo, hi = float(ts[0]), float(ts[-1])
  r_star, f_star = float(retain_target), float(forget_target)

  def fn(t):
    t = np.asarray(t, dtype=np.float64)
    if t.size and (np.min(t) < lo or np.max(t) > hi):
      raise ValueError(f"t must lie in the sampled range [{lo}, {hi}]")
    return (np.abs(ra_fn(t) - r_star) + np.abs(fa_fn(t) - f_star)) / 2.0

  fn.domain = (lo, hi)
  return fn


def _grid(gap_fn, lo: float, hi: float, num: int) -> np.ndarray:
  a, b = max(lo, gap_fn.domain[0]), min(hi, gap_fn.domain[1])
  if a > b:
    raise ValueError(f"the interval [{lo}, {hi}] does not meet the sampled range "
                     f"{list(gap_fn.domain)}")
  return np.linspace(a, b, num)


def optimal_t(ts, retain_acc, forget_acc, retain_target: float, forget_target: float,
              lo: float = 0.75, hi: float = 1.0, num: int = 251) -> float:
  """The t in [lo, hi] (within the sampled range) minimising the interpolated gap.

  A dense grid of ``num`` points (251 on [0.75, 1]: step 0.001; the reference used 26), first
  minimum wins. Returns t itself (the reference's ``find_optimal_t`` returned a grid index).
  """
  fn = gap(ts, retain_acc, forget_acc, retain_target, forget_target)
  grid = _grid(fn, lo, hi, num)
  return float(grid[int(np.argmin(fn(grid)))])


def effective_region(ts, retain_acc, forget_acc, retain_target: float, forget_target: float,
                     reference_t: float = 1.0, num: int = 1001
                     ) -> list[tuple[float, float]]:
  """Intervals (t_lo, t_hi) of a dense grid on the sampled range where gap(t) < gap(reference_t).

  As the reference's plot_region.py (there with 1000 points on [0, 1]): the t whose gap beats
  the end of the curve (the pre-unlearned model). Each interval runs from the first to the last
  grid point of a run of points below; an empty list when none is.
  """
  fn = gap(ts, retain_acc, forget_acc, retain_target, forget_target)
  grid = _grid(fn, -np.inf, np.inf, num)
  below = fn(grid) < fn(np.asarray([reference_t]))[0]
  regions = []
  i = 0
  while i < len(grid):
    if below[i]:
      j = i
      while j + 1 < len(grid) and below[j + 1]:
        j += 1
      regions.append((float(grid[i]), float(grid[j])))
      i = j + 1
    else:
      i += 1
  return regions


def alignment_targets(original_train_acc: float, original_test_acc: float, kind: str
                      ) -> tuple[float, float]:
  """(retain target r*, forget target f*) of the alignment principle, in percent.

  r* = the original model's training accuracy; f* = its test accuracy for random forgetting,
  0 for class forgetting. With a retrained model at hand (evaluation mode), pass its retain
  and forget accuracies to ``gap``/``optimal_t`` instead.
  """
  if kind == "random":
    return float(original_train_acc), float(original_test_acc)
  if kind == "class":
    return float(original_train_acc), 0.0
  raise ValueError(f"kind must be 'random' or 'class', got {kind!r}")


@dataclasses.dataclass(frozen=True)
class Choice:
  """The chosen t and what goes with it."""
  t: float
  gap: float
  region: list
  retain_target: float
  forget_target: float


def select_t(result: SweepResult, retain_target: float, forget_target: float,
             retain: str = "retain", forget: str = "forget", lo: float = 0.75,
             hi: float = 1.0) -> Choice:
  """``optimal_t`` and ``effective_region`` of a sweep's retain/forget accuracies."""
  args = (result.ts, result.accuracy[retain], result.accuracy[forget], retain_target,
          forget_target)
  t = optimal_t(*args, lo=lo, hi=hi)
  value = float(gap(*args)(np.asarray([t]))[0])
  return Choice(t=t, gap=value, region=effective_region(*args), retain_target=retain_target,
                forget_target=forget_target)


__all__ = [
    "padded_batches", "accuracy_and_loss", "predict_logits", "true_label_confidence",
    "per_example_losses", "recalibrate_batch_stats", "SweepResult", "sweep", "gap",
    "optimal_t", "effective_region", "alignment_targets", "Choice", "select_t",
]
