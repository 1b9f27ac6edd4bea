"""``unlearn_curve``: from (theta_o, theta_p, data) to the unlearned model in one call.

It composes the three public steps of MCU, which the CLI's stages also call:

1. ``masks.compute_mask``: the tensors of theta_o most salient for D_f (k, kr);
2. ``mcu.train_curve``: the curve's control point trained on L(D_r) - beta L(D_f) at random t,
   beta adapted towards the alignment targets;
3. ``sweep.sweep_and_select``: phi(t) at evenly spaced t with BatchNorm recalibrated on D_r,
   and the t whose retain and forget accuracies come closest to the targets.

Example (any JAX model; see ``mcu_jax.models`` for the adapters)::

    apply = mcu_jax.models.from_function(mlp)           # or from_linen(module) / from_nnx(model)
    result = mcu_jax.unlearn_curve(apply, theta_o, theta_p, forget=(xf, yf), retain=(xr, yr),
                                   test=(xt, yt))
    result.t, result.metrics["forget_acc"]
    params, model_state = result.at(0.9)
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable

import numpy as np

from mcu_jax.core import beta as beta_lib
from mcu_jax.core.choice import Choice, bound_warning, collapse_warning
from mcu_jax.core.curves import Curve, check_same_tree, point
from mcu_jax.errors import InvalidArgument
from mcu_jax.models.adapters import Apply, check_data
from mcu_jax.preprocess import Preprocess, default_preprocess
from mcu_jax.runtime import batchnorm, evaluate, masks, mcu, parallel
from mcu_jax.runtime.masks import MaskOptions
from mcu_jax.runtime.mcu import CurveOptions
from mcu_jax.runtime.optim import check_mask
from mcu_jax.runtime.sweep import SweepOptions, SweepResult, sweep_and_select
from mcu_jax.typing import PyTree
from mcu_jax.validation import check_choice, check_pair, dtype_of


@dataclasses.dataclass(frozen=True)
class MCUResult:
  """The unlearned model and everything that produced it.

  Attributes:
    t: the chosen point of the curve.
    params: phi(t), a pytree like theta_o.
    model_state: its model state, BatchNorm statistics recomputed on the recalibration set.
    metrics: ``{set}_acc`` (percent) and ``{set}_loss`` (mean CE) of that model on forget,
      retain and (if given) test.
    curve: the trained curve (``point(curve, t)`` is phi(t)).
    mask: the tensor mask the curve trained with (True = trained).
    sweep: the ``SweepResult`` along the curve.
    choice: the ``Choice`` of t (gap, effective region, a flag when t hugs a bound).
    targets: the ``Targets`` the curve aimed at.
    history: per-epoch metrics of the curve training.
    seconds: wall seconds of "mask", "curve" and "sweep" (compilation excluded for the first
      two, included for the sweep).
  """
  t: float
  params: PyTree = dataclasses.field(repr=False)
  model_state: PyTree = dataclasses.field(repr=False)
  metrics: dict
  curve: Curve = dataclasses.field(repr=False)
  mask: PyTree = dataclasses.field(repr=False)
  sweep: SweepResult = dataclasses.field(repr=False)
  choice: Choice
  targets: beta_lib.Targets
  history: list = dataclasses.field(repr=False)
  seconds: dict
  _at: Callable[[float], tuple[PyTree, PyTree]] = dataclasses.field(repr=False, compare=False)

  def at(self, t: float) -> tuple[PyTree, PyTree]:
    """(params, model_state) of phi(t) for any t in [0, 1], BatchNorm recalibrated."""
    return self._at(t)


def _check_inputs(forget, retain, test):
  sets = {"forget": check_pair("forget", forget), "retain": check_pair("retain", retain)}
  if test is not None:
    sets["test"] = check_pair("test", test)
  # One preprocessing serves every set: uint8 images (divided by 255) and float features
  # (passed unchanged) must not be mixed.
  kind = lambda x: "uint8" if dtype_of(x) == np.uint8 else dtype_of(x).kind
  shape, first = np.shape(sets["forget"][0])[1:], sets["forget"][0]
  for name, (inputs, _) in sets.items():
    if np.shape(inputs)[1:] != shape or kind(inputs) != kind(first):
      raise InvalidArgument(f"{name}: expected inputs of shape (N, {', '.join(map(str, shape))})"
                            f" and dtype like forget's {dtype_of(first)}, got "
                            f"{np.shape(inputs)} {dtype_of(inputs)}")
  return sets


CHANCE_FACTOR = 2.0
"""theta_o's accuracy on D_f + D_r below ``CHANCE_FACTOR`` x chance (100 / C %) is warned about:
targets from a model that does not fit its inputs (inputs preprocessed unlike its training)
mean nothing."""


def _targets(apply, theta_o, model_state, sets, scenario, batch_size, preprocess, mesh,
             num_classes):
  """The alignment targets from theta_o's accuracy on D_f + D_r and on test."""
  if scenario == "random" and "test" not in sets:
    raise InvalidArgument("test: random forgetting aims D_f at the original model's test "
                          "accuracy; pass test=(inputs, labels) or targets=Targets(...)")
  train_inputs = np.concatenate([np.asarray(sets["forget"][0]), np.asarray(sets["retain"][0])])
  train_labels = np.concatenate([np.asarray(sets["forget"][1]), np.asarray(sets["retain"][1])])
  acc = lambda inputs, labels: evaluate.accuracy_and_loss(
      apply, theta_o, model_state, inputs, labels, batch_size, preprocess, mesh=mesh)[0]
  test_acc = acc(*sets["test"]) if scenario == "random" else 0.0
  train_acc = acc(train_inputs, train_labels)
  chance = 100.0 / num_classes
  if train_acc < CHANCE_FACTOR * chance:
    warnings.warn(f"theta_o's accuracy on D_f + D_r is {train_acc:.1f} %, near chance "
                  f"({chance:.1f} % for {num_classes} classes): are the inputs preprocessed as "
                  "in its training? The alignment targets come from it", stacklevel=3)
  return beta_lib.alignment_targets(train_acc=train_acc, test_acc=test_acc, scenario=scenario)


def _check_options(mask, curve, sweep, preprocess, mesh) -> None:
  """The option types checked; ``sweep`` must leave preprocess and mesh to the call."""
  if isinstance(mask, bool):
    raise InvalidArgument(f"mask: expected MaskOptions or a pytree of bools like the params, "
                          f"got {mask}; MaskOptions(enabled=False) trains every tensor")
  for name, value, kind in (("curve", curve, CurveOptions), ("sweep", sweep, SweepOptions)):
    if not isinstance(value, kind):
      raise InvalidArgument(f"{name}: expected a {kind.__name__}, got {type(value).__name__}")
  for name, own in (("preprocess", preprocess), ("mesh", mesh)):
    value = getattr(sweep, name)
    if value is not getattr(SweepOptions, name) and value is not own:
      raise InvalidArgument(f"sweep.{name}: unlearn_curve runs every step with its own "
                            f"{name}=; pass it there")


def unlearn_curve(apply: Apply, theta_o: PyTree, theta_p: PyTree, *, forget, retain,
                  test=None, model_state: PyTree | None = None, scenario: str = "random",
                  targets: beta_lib.Targets | None = None,
                  mask: MaskOptions | PyTree = MaskOptions(),
                  curve: CurveOptions = CurveOptions(), sweep: SweepOptions = SweepOptions(),
                  seed: int = 0, mesh=None, preprocess: Preprocess = default_preprocess,
                  checkpointer=None, progress: bool = False) -> MCUResult:
  """MCU between ``theta_o`` and ``theta_p``: mask, curve training, sweep and choice of t.

  The settings are three small frozen types with the reference's defaults, the same types a
  run's configuration holds as ``mask``, ``curve`` and ``sweep`` (field names are the CLI's
  config keys: ``mask.k``, ``curve.lr``, ``sweep.points``, ...)::

    unlearn_curve(apply, theta_o, theta_p, forget=..., retain=..., test=...,
                  mask=MaskOptions(k=0.3), curve=CurveOptions(epochs=5, lr=0.02),
                  sweep=SweepOptions(points=40, t_search=(0.6, 1.0)))

  Args:
    apply: the model (``mcu_jax.models.from_function/from_linen/from_nnx``).
    theta_o: the original model's params; theta_p: the pre-unlearned model's (any base
      method), a pytree of the same structure, shapes and dtypes.
    forget, retain, test: (inputs, labels) pairs of NumPy or JAX arrays; inputs (N, ...) are
      what ``preprocess`` takes (by default float features or integer ids, unchanged; uint8
      images need ``preprocess=mcu_jax.preprocess.images``), labels (N,) integers in [0, C)
      for a model of C classes. ``test`` is needed for random forgetting's targets unless
      ``targets`` is given. Labels out of range, non-finite float inputs and non-finite
      parameters are refused before any training.
    model_state: theta_o's model state (``{}`` or None for a stateless model). theta_p's own
      statistics are not needed: every point's are recomputed.
    scenario: "random" (forget target = theta_o's test accuracy) or "class" (0).
    targets: explicit ``Targets(retain=..., forget=...)`` in percent instead.
    mask: ``MaskOptions`` (k, kr; ``enabled=False``: every tensor trains), computed with the
      curve's batch size; or a pytree of bools like the params, used as it is.
    curve: ``CurveOptions``: the curve (num_bends, kind; ``train=False`` keeps the straight
      line) and its training (SGD lr, momentum, weight decay, schedule, epochs, batch size,
      retain_ratio, beta and its weights, precision).
    sweep: ``SweepOptions``: points, t_search, recalibrate_on ("retain": D_r; "train":
      D_f + D_r, the reference's), chunk_size, ``batch_size`` (of every evaluation here) and
      ``recal_batch_size`` (of every BatchNorm recalibration). Its preprocess, mesh and
      progress are this call's own.
    seed: seeds the curve's retain subset and its training randomness.
    mesh: a ``jax.sharding.Mesh`` (None: all devices, ``parallel.resolve_mesh``); batches
      are split over it.
    preprocess: ``preprocess(key, inputs) -> model inputs`` (``mcu_jax.preprocess``).
    checkpointer: a ``mcu_jax.runtime.checkpoint.Checkpointer`` for resumable curve training.
    progress: progress bars (off by default).
  """
  sets = _check_inputs(forget, retain, test)
  check_same_tree(theta_o, theta_p, ("theta_o", "theta_p"))
  check_choice("scenario", scenario, ("random", "class"))
  _check_options(mask, curve, sweep, preprocess, mesh)
  model_state = {} if model_state is None else model_state
  num_classes = check_data(apply, theta_o, model_state, sets, preprocess,
                           {"theta_o": theta_o, "theta_p": theta_p})
  recal_inputs = np.asarray(sets["retain"][0])
  if sweep.recalibrate_on == "train":
    recal_inputs = np.concatenate([np.asarray(sets["forget"][0]), recal_inputs])
  layout = batchnorm.stats_layout(apply, theta_o, model_state, recal_inputs, preprocess)
  mesh = parallel.resolve_mesh(mesh)
  if targets is None:
    targets = _targets(apply, theta_o, model_state, sets, scenario, sweep.batch_size,
                       preprocess, mesh, num_classes)
  targets = beta_lib.as_targets(targets)
  curve.policy(targets)         # a bad beta is refused before the mask is computed
  seconds = {"mask": 0.0, "curve": 0.0}

  if isinstance(mask, MaskOptions):
    found = masks.compute_mask(apply, theta_o, model_state, forget=sets["forget"],
                               retain=sets["retain"], options=mask,
                               batch_size=curve.batch_size, preprocess=preprocess,
                               mesh=mesh)
    mask, seconds["mask"] = found.mask, found.seconds
  else:
    check_mask(mask, theta_o)
  path = curve.line(theta_o, theta_p)
  history = []
  if curve.train:
    trained = mcu.train_curve(
        apply, path, model_state, forget=sets["forget"], retain=sets["retain"], mask=mask,
        targets=targets, options=curve, seed=seed, preprocess=preprocess, mesh=mesh,
        checkpointer=checkpointer, progress=progress)
    path, history, seconds["curve"] = trained.curve, trained.history, trained.seconds

  sweep = sweep.replace(preprocess=preprocess, progress=progress, mesh=mesh)
  start = time.perf_counter()
  swept, choice = sweep_and_select(apply, path, model_state, sets=sets, targets=targets,
                                   recal_inputs=recal_inputs, options=sweep, warn=False)
  if choice.at_bound is not None:
    warnings.warn(bound_warning(choice), stacklevel=2)
  if choice.collapsed:
    warnings.warn(collapse_warning(choice), stacklevel=2)
  seconds["sweep"] = time.perf_counter() - start

  def at(t: float) -> tuple[PyTree, PyTree]:
    params = point(path, t)
    return params, batchnorm.recalibrate_batch_stats(apply, params, model_state, recal_inputs,
                                                     sweep.recal_batch_size, preprocess,
                                                     layout=layout, mesh=mesh)

  params, state = at(choice.t)
  metrics = {}
  for name, (inputs, labels) in sets.items():
    metrics[f"{name}_acc"], metrics[f"{name}_loss"] = evaluate.accuracy_and_loss(
        apply, params, state, inputs, labels, sweep.batch_size, preprocess, mesh=mesh)
  return MCUResult(t=choice.t, params=params, model_state=state, metrics=metrics, curve=path,
                   mask=mask, sweep=swept, choice=choice, targets=targets, history=history,
                   seconds=seconds, _at=at)


__all__ = ["unlearn_curve", "MCUResult"]
