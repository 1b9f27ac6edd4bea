"""The entry point: ``run`` validates a call (``check_split``, the config), runs the registered
method and accounts its time in an ``UnlearnResult``.

RTE = the trainer's per-epoch seconds plus the method's own extra computation; compilation is
done ahead of time and reported apart (``UnlearnResult.compile_seconds``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from mcu_jax import data as data_lib
from mcu_jax.errors import InvalidArgument, NonFiniteError
from mcu_jax.models.adapters import Apply
from mcu_jax.preprocess import Preprocess
from mcu_jax.runtime import parallel
from mcu_jax.runtime import train as train_lib
from mcu_jax.runtime.checkpoint import Checkpointer
from mcu_jax.unlearn import configs as cfgs
from mcu_jax.unlearn.method_context import Evaluate, MethodContext, PyTree
from mcu_jax.unlearn.registry import get_method, resolve_config


@dataclasses.dataclass
class UnlearnResult:
  """theta_p and how it was obtained.

  Attributes:
    method: registry name of the method.
    params, model_state: the unlearned model (``model_state``: e.g. BN ``batch_stats``).
    config: the validated config the method ran with.
    rte_seconds: wall seconds of the unlearning itself, ``train_seconds + extra_seconds``.
    train_seconds: sum over epochs of the trainer's per-epoch wall time (``train.fit``'s
      ``seconds``: the call of the already-compiled epoch until its metrics are on the host, so
      asynchronous dispatch hides nothing). Evaluation callbacks and checkpoint writes are not
      in it. After a resume it includes the epochs run before the interruption.
    extra_seconds: the method's work outside the epochs, also with compilation done ahead of
      time: SalUn's forget-gradient accumulation plus the mask ranking; NegTV's task-vector
      arithmetic (plus the BN recalibration with ``batch_stats="recalibrate"``); SSD's and IU's
      whole computation (they have no epochs); UNSIR's noise optimisation; Boundary Shrink's
      relabelling; 0 otherwise.
    compile_seconds: ahead-of-time compilation of the epoch(s) and of the extra steps; not in
      the RTE. Host-to-device copies of the data are in neither.
    history: ``train.fit``'s per-epoch records (``epoch``, ``seconds``, ``train_<metric>``
      means, evaluate() values). SCRUB's max-phase metrics appear as ``train_max_<metric>``.
    extras: method-specific outputs: SalUn ``mask`` (bool pytree like params, True = may
      move); NegTV ``finetuned_params``/``finetuned_model_state`` (theta_ft); SSD
      ``selected``, ``forget_importance``, ``original_importance``; Bad Teacher
      ``retain_sample``; UNSIR ``noise``, ``noise_classes``, ``noise_objective``,
      ``retain_indices``; Boundary Shrink ``neighbour_labels``; IU ``direction``,
      ``perturbation``.
  """
  method: str
  params: PyTree
  model_state: PyTree
  config: cfgs.MethodConfig
  rte_seconds: float
  train_seconds: float
  extra_seconds: float
  compile_seconds: float
  history: list[dict]
  extras: dict[str, Any] = dataclasses.field(default_factory=dict)


def check_split(train: data_lib.Dataset, split: data_lib.ForgetSplit,
                needs_retain: bool = True) -> None:
  """Raises ValueError unless ``split`` indexes ``train`` with a non-empty forget set (and a
  non-empty retain set when ``needs_retain``), the two disjoint."""
  n = len(train)
  forget, retain = np.asarray(split.forget), np.asarray(split.retain)
  if forget.size == 0:
    raise InvalidArgument("the forget set is empty: there is nothing to unlearn")
  if needs_retain and retain.size == 0:
    raise InvalidArgument("the retain set is empty, and this method trains on it")
  for name, idx in (("forget", forget), ("retain", retain)):
    if idx.size and (idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer)):
      raise InvalidArgument(f"{name} indices must be a 1-D integer array, got {idx.dtype} "
                       f"{idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= n):
      raise InvalidArgument(f"{name} indices must lie in [0, {n}) for a training set of {n} "
                       f"examples, got [{idx.min()}, {idx.max()}]")
  if np.intersect1d(forget, retain).size:
    raise InvalidArgument("the forget and retain sets overlap")


def _as_key(rng) -> jax.Array:
  if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
    return jax.random.PRNGKey(int(rng))
  if isinstance(rng, jax.Array):
    return rng
  raise InvalidArgument(f"rng must be a PRNG key or an int seed, got {type(rng).__name__}")


def run(method: str, *, apply: Apply, params: PyTree, model_state: PyTree,
        train: data_lib.Dataset, split: data_lib.ForgetSplit, preprocess: Preprocess,
        rng, config: cfgs.MethodConfig | Mapping[str, Any] | None = None,
        progress: bool = True, checkpointer: Checkpointer | None = None,
        evaluate: Evaluate | None = None, init_params=None, init=None,
        mesh=None, programs: dict | None = None) -> UnlearnResult:
  """Runs base unlearning method ``method`` on the original model and returns theta_p.

  Args:
    method: a name in ``METHODS`` (``method_names()``).
    apply: ``apply(params, state, x, train) -> (logits, new_state)`` of the model.
    params, model_state: the original model theta_o (left untouched: the trainer copies).
    train: the training set the split indexes.
    split: D_f / D_r as index arrays into ``train``.
    preprocess: ``fn(key, inputs) -> float`` as the original model was trained with
      (augmentation with a key, normalisation only with ``key=None``).
    rng: PRNG key (or int seed) for shuffling, augmentation, random labels, retrain's init.
    config: the method's config (``default_config(method)`` when None), or a dict of its fields.
    progress: show the trainer's progress bar.
    checkpointer: checkpoint every epoch and resume from the latest (``train.fit``).
    evaluate: optional ``fn(params, model_state) -> dict`` called after every epoch on the
      model being trained (NegTV: theta_ft); its values go into the history, its time not
      into the RTE.
    init_params: what retrain starts from: fresh ``(params, model_state)`` or ``fn(rng) ->
      (params, model_state)`` (e.g. ``functools.partial(models.init_model, module,
      input_shape=...)``); required by retrain, ignored by the other methods.
    init: an alias of ``init_params`` (give one of the two).
    mesh: a ``jax.sharding.Mesh`` (None: all devices, ``parallel.resolve_mesh``): data and
      state replicated on it, every batch split over it; the same program runs on 1 or N
      devices.
    programs: a dict kept across runs of one method with one config on models of one
      structure (a population, ``population.unlearn_population``): the runs share one compiled
      epoch instead of compiling their own (results are identical).

  Returns:
    An ``UnlearnResult`` (see there for what the RTE counts).
  """
  spec = get_method(method)
  config = resolve_config(spec, config)
  needs_retain = spec.needs_retain or getattr(config, "batch_stats", None) == "recalibrate"
  check_split(train, split, needs_retain)
  if init is not None:
    if init_params is not None:
      raise InvalidArgument("give init_params or its alias init, not both")
    init_params = init
  mesh = parallel.resolve_mesh(mesh)
  params, model_state = parallel.replicate((params, model_state), mesh)
  ctx = MethodContext(apply, params, model_state, train, split, preprocess, _as_key(rng),
                bool(progress), checkpointer, evaluate, init_params, spec.name, mesh,
                programs)
  outcome = spec.impl(ctx, config)
  # the trainer checks every epoch; this also covers the methods without epochs (SSD, IU) and
  # the arithmetic after them (NegTV), so that no caller or stage ever gets NaN weights
  if not train_lib.all_finite((outcome.params, outcome.model_state)):
    raise NonFiniteError(f"{spec.name}: the unlearned model holds NaN or infinite values "
                         "(likely causes: non-finite values in the original model, or a step "
                         f"size too large for this model; config {config}); nothing is "
                         "returned")
  train_seconds = float(sum(record["seconds"] for record in outcome.history))
  return UnlearnResult(
      method=spec.name, params=outcome.params, model_state=outcome.model_state, config=config,
      rte_seconds=train_seconds + float(outcome.extra_seconds), train_seconds=train_seconds,
      extra_seconds=float(outcome.extra_seconds),
      compile_seconds=float(outcome.compile_seconds), history=outcome.history,
      extras=outcome.extras)
