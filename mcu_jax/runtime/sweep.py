"""The sweep over t: phi(t) at many t, each with recalibrated BatchNorm statistics.

For every t: phi(t) = ``point(curve, t)``; its BatchNorm statistics recomputed exactly on the
recalibration inputs (``mcu_jax.runtime.batchnorm``; the reference's eval_curve.py uses its training
set, mcu_jax's pipeline D_r); then accuracy and mean cross-entropy in inference mode on every
named set; and the L2 distance from phi of the previous t, summed into the path length.
``sweep_and_select`` adds the choice of t (``mcu_jax.core.choice``). Several t are evaluated at once
(vmap) on accelerators and one at a time on the CPU (``loops.resolve_vectorize``).

On ``SweepOptions.mesh`` (data parallelism, as the training steps; None: all devices,
``parallel.resolve_mesh``): the curve, state and data are replicated on the mesh and every
inference and recalibration batch is split over its devices inside the jitted scans; the same
program runs on 1 or N devices.
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mcu_jax.core import choice
from mcu_jax.core.beta import Targets
from mcu_jax.core.curves import Curve, point
from mcu_jax.errors import InvalidArgument, NonFiniteError
from mcu_jax.models.adapters import Apply, check_data
from mcu_jax.preprocess import Preprocess, default_preprocess
from mcu_jax.runtime import batchnorm, evaluate, loops, parallel, signals
from mcu_jax.typing import PyTree
from mcu_jax.validation import check_choice, check_pair, check_positive

RECALIBRATE_ON = ("retain", "train")


@dataclasses.dataclass(frozen=True)
class SweepOptions:
  """How the sweep evaluates each t, and where it looks for t: what ``sweep``,
  ``sweep_and_select`` and ``unlearn_curve(sweep=...)`` take. A run's configuration holds
  ``points``, ``t_search``, ``chunk_size`` and ``recalibrate_on`` as ``sweep`` and maps them
  here (``mcu_jax.pipeline.config.sweep_options``), with ``batch_size`` its
  ``eval_batch_size`` and ``recal_batch_size`` its ``curve.batch_size``.

  Attributes:
    batch_size: inference batch size.
    recal_batch_size: batch size of the BatchNorm recalibration pass (the reference's loader
      uses 128).
    preprocess: ``preprocess(None, inputs) -> model inputs`` (evaluation: no key).
    chunk_size: how many t one vmapped call evaluates (None: all at once); giving it implies
      vmapping. The last chunk is padded by repeating its last t, so chunks compile once.
    vectorize: vmap over t (True), one t per call (False; same results), or None: the CPU
      policy of ``mcu_jax.runtime.loops``.
    keep_states: keep every t's recalibrated model state in the result.
    progress: a progress bar over chunks.
    mesh: a ``jax.sharding.Mesh`` with the axis ``"data"``, or None: all devices
      (``parallel.resolve_mesh``, when the sweep runs). The curve, model state, sets and
      recalibration inputs are replicated on it and every batch is split over its devices:
      the inference batch size is rounded up to a multiple of the devices (padding is
      masked, results exact), ``recal_batch_size`` must be a multiple of them.
    points: ``sweep_and_select``'s evenly spaced t in [0, 1], an integer >= 4 (cubic
      interpolation).
    t_search: the window (lo, hi) t is chosen in, 0 <= lo < hi <= 1 (``choice.T_SEARCH``).
    recalibrate_on: the inputs ``unlearn_curve`` recomputes BatchNorm statistics on: "retain"
      (D_r) or "train" (D_f + D_r, the reference's); ``sweep`` and ``sweep_and_select`` take
      the inputs themselves (``recal_inputs``).
  """
  batch_size: int = 512
  recal_batch_size: int = 128
  preprocess: Preprocess = default_preprocess
  chunk_size: int | None = None
  vectorize: bool | None = None
  keep_states: bool = False
  progress: bool = False
  mesh: Any = None
  points: int = 20
  t_search: tuple[float, float] = choice.T_SEARCH
  recalibrate_on: str = "retain"

  def __post_init__(self):
    check_positive("batch_size", self.batch_size, integer=True)
    check_positive("recal_batch_size", self.recal_batch_size, integer=True)
    if self.mesh is not None:     # None is resolved when the sweep runs, not at import
      parallel.check_batch_size("recal_batch_size", self.recal_batch_size,
                                parallel.resolve_mesh(self.mesh, "mesh"))
    owner = type(self).__name__
    if self.chunk_size is not None:
      check_positive(f"{owner}.chunk_size", self.chunk_size, integer=True)
    if not isinstance(self.points, (int, np.integer)) or isinstance(self.points, bool) \
        or self.points < 4:
      raise InvalidArgument(f"{owner}.points: cubic interpolation needs >= 4 points (an "
                            f"integer), got {self.points!r}")
    object.__setattr__(self, "t_search", choice.check_window(self.t_search, f"{owner}.t_search"))
    check_choice(f"{owner}.recalibrate_on", self.recalibrate_on, RECALIBRATE_ON)

  def replace(self, **changes) -> SweepOptions:
    """A copy with ``changes`` applied (and validated)."""
    return dataclasses.replace(self, **changes)


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

  @classmethod
  def from_dict(cls, record: Mapping) -> SweepResult:
    """The inverse of ``to_dict`` (without model states)."""
    return cls(ts=np.asarray(record["ts"], np.float64),
               accuracy={k: np.asarray(v, np.float64) for k, v in record["accuracy"].items()},
               loss={k: np.asarray(v, np.float64) for k, v in record["loss"].items()},
               path_length=np.asarray(record["path_length"], np.float64))

  def state_at(self, index: int) -> PyTree:
    """The recalibrated model state of ``ts[index]``."""
    if self.model_states is None:
      raise InvalidArgument("index: this sweep kept no model states (keep_states=False)")
    return jax.tree.map(lambda x: x[index], self.model_states)


def _evaluate_point(curve, t, t_prev, model_state, recal_inputs, sets, *, apply, batch_size,
                    recal_batch_size, preprocess, layout, mesh):
  """Everything the sweep reports for one t; traceable. With ``mesh``, every inference and
  recalibration batch is split over it (``evaluate.hits_and_loss``, ``batchnorm.recalibrated``)."""
  params = point(curve, t)
  prev = point(curve, t_prev)
  sq = sum(jnp.sum(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)))
           for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(prev)))
  state = model_state
  if recal_inputs is not None:
    state = batchnorm.recalibrated(apply, params, model_state, recal_inputs, recal_batch_size,
                                   preprocess, layout, mesh=mesh)
  metrics = {}
  for name, (inputs, labels) in sets.items():
    size = parallel.inference_batch_size(batch_size, labels.shape[0], mesh)
    metrics[name] = evaluate.hits_and_loss(apply, params, state, inputs, labels, size,
                                           preprocess, mesh)
  return {"metrics": metrics, "step": jnp.sqrt(sq), "state": state}   # sums; divided later


_STATIC = ("apply", "batch_size", "recal_batch_size", "preprocess", "layout", "mesh")


def _is_key(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jax.dtypes.prng_key)


def _on_host(out: dict, index, keep_states: bool) -> dict:
  """``out``'s metrics as NumPy arrays sliced by ``index``; the states too when kept (key
  leaves, which NumPy cannot hold, stay JAX arrays)."""
  metrics = jax.tree.map(lambda x: index(np.asarray(x)), {k: v for k, v in out.items()
                                                          if k != "state"})
  state = None
  if keep_states:
    state = jax.tree.map(lambda x: index(x) if _is_key(x) else index(np.asarray(x)),
                         out["state"])
  return {**metrics, "state": state}


def _concatenate(xs):
  return jnp.concatenate(xs) if _is_key(xs[0]) else np.concatenate(xs)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _sweep_chunk(curve, ts, t_prevs, model_state, recal_inputs, sets, **static):
  fn = functools.partial(_evaluate_point, **static)
  return parallel.gathered(jax.vmap(fn, in_axes=(None, 0, 0, None, None, None))(
      curve, ts, t_prevs, model_state, recal_inputs, sets), static["mesh"])


@functools.partial(jax.jit, static_argnames=_STATIC)
def _sweep_one(curve, t, t_prev, model_state, recal_inputs, sets, **static):
  return parallel.gathered(
      _evaluate_point(curve, t, t_prev, model_state, recal_inputs, sets, **static),
      static["mesh"])


def sweep(curve: Curve, ts, apply: Apply, model_state: PyTree, sets: Mapping[str, tuple],
          recal_inputs=None, options: SweepOptions = SweepOptions()) -> SweepResult:
  """phi(t) at every t of ``ts`` with BatchNorm statistics recomputed on ``recal_inputs``.

  Args:
    curve: the curve.
    ts: strictly increasing 1-D array in [0, 1] (e.g. ``np.linspace(0, 1, 20)``).
    apply: the model (``mcu_jax.models.Apply``), hashable.
    model_state: a model state of the model's structure (e.g. theta_o's); ``{}`` without
      BatchNorm.
    sets: {name: (inputs, labels)}, e.g. "retain", "forget", "test"; each non-empty.
    recal_inputs: (N, ...) inputs of the recalibration pass; required when ``model_state`` has
      leaves, ignored (may be None) when it has none.
    options: ``SweepOptions`` (``options.mesh``: the device mesh to split the batches over,
      None for all devices).
  """
  ts = choice.check_ts(ts)
  for name, tree in (("theta_o", curve.start), ("controls", curve.controls),
                     ("theta_p", curve.end)):
    if not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree)
               if jnp.issubdtype(x.dtype, jnp.floating)):
      raise InvalidArgument(f"curve: {name} holds NaN or infinite parameters; a sweep of it "
                            "would report meaningless accuracies")
  if not sets:
    raise InvalidArgument("sets: expected at least one {name: (inputs, labels)} set")
  mesh = parallel.resolve_mesh(options.mesh, "options.mesh")
  parallel.check_batch_size("recal_batch_size", options.recal_batch_size, mesh)
  place = functools.partial(parallel.replicate, mesh=mesh)
  checked = {name: check_pair(f"sets[{name!r}]", value) for name, value in sets.items()}
  check_data(apply, curve.start, model_state, checked, options.preprocess)
  device_sets = {name: tuple(place(a) for a in pair) for name, pair in checked.items()}
  layout = None
  if not jax.tree.leaves(model_state):
    recal_inputs = None
  elif recal_inputs is None or int(np.shape(recal_inputs)[0]) == 0:
    raise InvalidArgument("recal_inputs: a model with BatchNorm statistics needs a non-empty set "
                          "of inputs to recalibrate them on at every t")
  else:
    layout = batchnorm.stats_layout(apply, curve.start, model_state, recal_inputs,
                                    options.preprocess)
    recal_inputs = place(recal_inputs)
  curve, model_state = place((curve, model_state))
  static = dict(apply=apply, batch_size=options.batch_size,
                recal_batch_size=options.recal_batch_size, preprocess=options.preprocess,
                layout=layout, mesh=mesh)
  vectorize = options.chunk_size is not None or loops.resolve_vectorize(options.vectorize)
  num = ts.size
  t_prevs = np.concatenate([ts[:1], ts[:-1]])
  dtype = jnp.result_type(float)
  as_t = lambda t: place(np.asarray(t, dtype))    # t values, placed like the data
  size = (options.chunk_size or num) if vectorize else 1

  from tqdm import tqdm
  outputs = []
  for start in tqdm(range(0, num, size), desc="sweep", unit="chunk",
                    disable=not options.progress, leave=False):
    signals.check(f"sweep point {start + 1} of {num}")
    stop = min(start + size, num)
    if not vectorize:
      out = _sweep_one(curve, as_t(ts[start]), as_t(t_prevs[start]), model_state, recal_inputs,
                       device_sets, **static)
      out = _on_host(out, lambda x: x[None], options.keep_states)
    else:
      pad = size - (stop - start)
      chunk_ts = np.concatenate([ts[start:stop], np.repeat(ts[stop - 1], pad)])
      chunk_prev = np.concatenate([t_prevs[start:stop], np.repeat(t_prevs[stop - 1], pad)])
      out = _sweep_chunk(curve, as_t(chunk_ts), as_t(chunk_prev), model_state, recal_inputs,
                         device_sets, **static)
      out = _on_host(out, lambda x, n=stop - start: x[:n], options.keep_states)
    outputs.append(out)

  merged = jax.tree.map(lambda *xs: _concatenate(xs), *outputs)
  metrics = merged["metrics"]
  counts = {name: int(labels.shape[0]) for name, (_, labels) in device_sets.items()}
  steps = merged["step"].astype(np.float64)
  steps[0] = 0.0
  result = SweepResult(
      ts=ts,
      accuracy={name: 100.0 * metrics[name][0].astype(np.float64) / counts[name]
                for name in sets},
      loss={name: metrics[name][1].astype(np.float64) / counts[name] for name in sets},
      path_length=np.cumsum(steps),
      model_states=merged["state"] if options.keep_states else None,
  )
  check_finite_sweep(result)
  return result


def check_finite_sweep(result: SweepResult) -> None:
  """Raises ``NonFiniteError`` naming the first t, set and metric that is NaN or infinite: a
  sweep with one is not a spectrum to choose from."""
  for i, t in enumerate(result.ts):
    for metric, values in (("accuracy", result.accuracy), ("loss", result.loss)):
      for name, series in values.items():
        if not np.isfinite(series[i]):
          raise NonFiniteError(f"sweep: the {name} {metric} at t = {t:.4g} is {series[i]}; "
                               "phi(t) or its recalibrated statistics are not finite there")


def sweep_and_select(apply: Apply, curve: Curve, model_state: PyTree, *,
                     sets: Mapping[str, tuple], targets: Targets, recal_inputs=None,
                     options: SweepOptions = SweepOptions(), warn: bool = True
                     ) -> tuple[SweepResult, choice.Choice]:
  """The sweep at ``options.points`` evenly spaced t in [0, 1] and the t it chooses in
  ``options.t_search``.

  ``sets`` must hold "retain" and "forget" (the choice compares their accuracies with
  ``targets``); any other sets (e.g. "test") are swept too. See ``sweep`` and
  ``choice.select_t`` (``warn``: a warning when t lies on a bound of ``t_search``). Returns
  (SweepResult, Choice).
  """
  if not isinstance(options, SweepOptions):
    raise InvalidArgument(f"options: expected a SweepOptions, got {type(options).__name__}")
  for name in ("retain", "forget"):
    if name not in sets:
      raise InvalidArgument(f"sets: expected a {name!r} set, got {sorted(sets)}")
  result = sweep(curve, np.linspace(0.0, 1.0, int(options.points)), apply, model_state, sets,
                 recal_inputs, options)
  chosen = choice.select_t(result, targets, t_search=options.t_search, warn=False)
  if warn and chosen.at_bound is not None:
    warnings.warn(choice.bound_warning(chosen), stacklevel=2)
  return result, chosen


__all__ = ["SweepOptions", "SweepResult", "sweep", "sweep_and_select", "check_finite_sweep",
           "RECALIBRATE_ON"]
