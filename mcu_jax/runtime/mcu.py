"""Training the curve: MCU's loss on the one trainer, and ``train_curve``, the curve step.

One step: t ~ U(t_min, t_max) from the step's key -> phi(t) from (start, controls, end) ->
forward on the mixed batch in training mode -> per-subset CE and accuracy -> beta (a policy of
``mcu_jax.core.beta``, stop-gradient) -> grad of L_r - beta L_f w.r.t. the controls only -> the
masked optimizer's update. The controls are the trainer's params; the fixed endpoints travel as
jit arguments, never differentiated; frozen tensors stay bit-identical.

``CurveTrainer`` binds what belongs together once (model, curve, mask, optimizer, beta, batch
size, preprocessing, mesh)::

    trainer = CurveTrainer(apply, curve, mask=mask, beta=AdaptiveBeta(targets=targets))
    state = trainer.init(model_state, jax.random.key(0))
    state, metrics = trainer.epoch(state, data)     # data = curve_data(forget, retain)
    trained = trainer.curve(state)

``train_curve`` runs it for a number of epochs with a progress bar and optional checkpoints.
``CurveOptions`` holds every setting of the curve and its training, with the reference's
defaults: the one type ``train_curve`` and ``unlearn_curve`` take and a run's configuration
holds (it lives here, beside the trainer that reads it, as ``MaskOptions`` beside the mask and
``SweepOptions`` beside the sweep).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from mcu_jax.core import beta as beta_lib
from mcu_jax.core import objectives
from mcu_jax.core.curves import KINDS, Curve, check_same_tree, coefficients, combine
from mcu_jax.errors import InvalidArgument
from mcu_jax.models.adapters import COMPUTE_DTYPES, Apply, check_data, forward, with_precision
from mcu_jax.preprocess import Preprocess, default_preprocess
from mcu_jax.runtime import parallel, train
from mcu_jax.runtime.checkpoint import Checkpointer
from mcu_jax.runtime.masks import full_mask
from mcu_jax.runtime.optim import OptimConfig, check_mask, make_optimizer
from mcu_jax.typing import PyTree
from mcu_jax.validation import check_choice, check_number, check_pair, check_positive


@dataclasses.dataclass(frozen=True)
class CurveOptions(train.FitConfig):
  """The curve and its training: what ``train_curve`` and ``unlearn_curve(curve=...)`` take,
  and what a run's configuration holds as ``curve`` (``mcu_jax.pipeline.config.RunConfig``).

  The optimizer and the run are ``train.FitConfig``'s fields with their defaults, which are
  the reference's: SGD lr 0.01, momentum 0.9, no weight decay, constant lr (``cosine``,
  ``schedule_unit``), ``epochs`` 10 over the curve's data in batches of ``batch_size`` 128.

  Attributes:
    retain_ratio: share of D_r in the curve's data (``curve_data``), in (0, 1].
    num_bends: the curve's bends, >= 3 to train (2, the bare line, only with ``train=False``).
    kind: "bezier" or "polychain".
    beta: "adaptive" (towards the targets, weights in [beta_low, beta_high]), a number >= 0
      (fixed), or a ``FixedBeta`` / ``AdaptiveBeta`` policy (library calls only).
    beta_low, beta_high: the adaptive rule's weights, 0 <= beta_low <= beta_high.
    train: False keeps the straight line (the ablation baseline).
    precision: "fp32" or "bf16" (bfloat16 compute while training the curve; float32 controls
      and endpoints).
  """
  retain_ratio: float = 0.5
  num_bends: int = 3
  kind: str = "bezier"
  beta: str | float = "adaptive"
  beta_low: float = beta_lib.AdaptiveBeta.low
  beta_high: float = beta_lib.AdaptiveBeta.high
  train: bool = True
  precision: str = "fp32"

  def __post_init__(self):
    super().__post_init__()
    owner = type(self).__name__
    check_number(f"{owner}.retain_ratio", self.retain_ratio, low=0.0, high=1.0, low_open=True)
    if not isinstance(self.train, (bool, np.bool_)):
      raise InvalidArgument(f"{owner}.train: expected a bool, got {type(self.train).__name__} "
                            f"{self.train!r}")
    check_number(f"{owner}.num_bends", self.num_bends, low=2, integer=True)
    if self.train and self.num_bends < 3:
      raise InvalidArgument(f"{owner}.num_bends: a trainable curve needs >= 3 bends, got "
                            f"{self.num_bends}")
    check_choice(f"{owner}.kind", self.kind, KINDS)
    check_choice(f"{owner}.precision", self.precision, tuple(COMPUTE_DTYPES))
    if isinstance(self.beta, str):
      check_choice(f"{owner}.beta", self.beta, ("adaptive",))
    elif not isinstance(self.beta, (beta_lib.FixedBeta, beta_lib.AdaptiveBeta)):
      check_number(f"{owner}.beta", self.beta, low=0.0)
    beta_lib.check_weights(self.beta_low, self.beta_high,
                           names=(f"{owner}.beta_low", f"{owner}.beta_high"))

  def line(self, start: PyTree, end: PyTree) -> Curve:
    """The untrained curve (a straight line) from ``start`` to ``end``: ``num_bends``, ``kind``."""
    return Curve.from_endpoints(start, end, self.num_bends, self.kind)

  def policy(self, targets: beta_lib.Targets | None = None) -> beta_lib.BetaPolicy:
    """The beta policy: ``beta`` itself, fixed, or adaptive towards ``targets`` (percent)."""
    if self.beta == "adaptive" and targets is None:
      raise InvalidArgument("targets: beta='adaptive' needs the alignment targets "
                            "(mcu_jax.Targets in percent), or set CurveOptions(beta=<number>)")
    return beta_lib.as_policy(self.beta, targets, self.beta_low, self.beta_high)


CURVE_OPTIM = CurveOptions().optim()
"""The reference's curve optimizer: SGD lr 0.01, momentum 0.9, no weight decay, constant."""


def curve_loss(apply: Apply, policy: beta_lib.BetaPolicy, kind: str, num_bends: int,
               t_range: tuple[float, float] = (0.0, 1.0)) -> train.LossFn:
  """MCU's per-batch loss ``loss_fn(controls, model_state, batch, rng, start, end)``.

  ``batch`` holds ``images`` (B, ...) float, ``labels`` (B,), ``is_forget`` (B,) bool and
  ``valid`` (B,) bool. The step's key draws t; a key folded from it is the model's (dropout).
  Metrics: t, beta, loss, forget/retain loss and accuracy (percent) and
  counts.
  """
  t_min, t_max = t_range

  def loss_fn(controls, model_state, batch, rng, start, end):
    t = jax.random.uniform(rng, (), jnp.float32, t_min, t_max)
    params = combine(coefficients(kind, t, num_bends), start, controls, end)
    logits, new_state = forward(apply, params, model_state, batch["images"], True,
                                jax.random.fold_in(rng, 1))
    metrics = objectives.subset_metrics(logits, batch)
    b = jax.lax.stop_gradient(policy(metrics))
    loss = objectives.unlearning_loss(metrics["retain_loss"], metrics["forget_loss"], b)
    return loss, (new_state, {"t": t, "beta": b, "loss": loss, **metrics})
  return loss_fn


def curve_data(forget, retain, retain_ratio: float = CurveOptions.retain_ratio,
               seed: int = 0) -> dict:
  """The curve's training set: all of ``forget`` plus a random ``retain_ratio`` share of
  ``retain`` (drawn with ``numpy.random.default_rng(seed)``, kept in order), flagged.

  ``forget``, ``retain``: (inputs, labels) pairs. Returns host arrays ``images`` (M, ...),
  ``labels`` (M,) int32 and ``is_forget`` (M,) bool, forget examples first.
  """
  xf, yf = check_pair("forget", forget)
  xr, yr = check_pair("retain", retain)
  check_number("retain_ratio", retain_ratio, low=0.0, high=1.0, low_open=True)
  if np.shape(xf)[1:] != np.shape(xr)[1:]:
    raise InvalidArgument(f"retain: expected inputs shaped like forget's {np.shape(xf)[1:]}, "
                          f"got {np.shape(xr)[1:]}")
  count = max(1, int(round(retain_ratio * len(yr))))
  chosen = np.sort(np.random.default_rng(seed).choice(len(yr), count, replace=False))
  return {
      "images": np.concatenate([np.asarray(xf), np.asarray(xr)[chosen]]),
      "labels": np.concatenate([np.asarray(yf), np.asarray(yr)[chosen]]).astype(np.int32),
      "is_forget": np.concatenate([np.ones(len(yf), bool), np.zeros(count, bool)]),
  }


@functools.lru_cache(maxsize=8)
def _programs(apply, policy, kind, num_bends, t_range, optimizer, epochs, steps_per_epoch,
              mask_tree, mask_leaves, batch_size, preprocess, mesh, loop):
  """(optimizer, loss, jitted epoch) of one curve-training setup, made once per setup: the
  endpoints are jit arguments, so the trainers of a population's members (one setup, other
  endpoints) run one compiled program."""
  tx = make_optimizer(optimizer, epochs=epochs, steps_per_epoch=steps_per_epoch,
                      mask=mask_tree.unflatten(mask_leaves))
  loss = curve_loss(apply, policy, kind, num_bends, t_range)
  epoch = train.make_epoch(loss, batch_size, preprocess=preprocess,
                           batch_sharding=parallel.batch_sharding(mesh), loop=loop)
  return tx, loss, epoch


class CurveTrainer:
  """The curve's trainer with everything that belongs together bound once.

  Args:
    apply: the model (``mcu_jax.models.Apply``) as training should run it (e.g. bf16).
    curve: the curve; its endpoints are fixed, its controls are the initial trained params.
    mask: per-tensor Python bools or per-weight bool arrays like the params (True = trains);
      None trains every tensor.
    optimizer: an ``OptimConfig`` (default: the reference's, ``CURVE_OPTIM``).
    beta: a policy of ``mcu_jax.core.beta`` or a number (fixed beta).
    batch_size: examples per step (must divide by the mesh's devices).
    steps_per_epoch: for the optimizer's schedule (only a cosine one needs it).
    epochs: for the optimizer's schedule.
    preprocess: ``preprocess(key, inputs)``; training passes a key.
    t_range: t is drawn uniformly from this interval.
    mesh: a ``jax.sharding.Mesh`` (None: all devices, ``parallel.resolve_mesh``): endpoints
      and state replicated, batches split over it.
    loop: the epoch driver ("auto": ``mcu_jax.runtime.loops``' CPU policy).
  """

  def __init__(self, apply: Apply, curve: Curve, *, mask: PyTree | None = None,
               optimizer: OptimConfig = CURVE_OPTIM, beta=beta_lib.FixedBeta(0.2),
               batch_size: int = CurveOptions.batch_size, steps_per_epoch: int = 1,
               epochs: int = 1,
               preprocess: Preprocess = default_preprocess,
               t_range: tuple[float, float] = (0.0, 1.0), mesh=None, loop: str = "auto"):
    if not isinstance(curve, Curve):
      raise InvalidArgument(f"curve: expected a mcu_jax.Curve, got {type(curve).__name__}")
    check_same_tree(curve.start, curve.end, ("theta_o", "theta_p"))
    if not 0.0 <= t_range[0] <= t_range[1] <= 1.0:
      raise InvalidArgument(f"t_range: expected 0 <= t_min <= t_max <= 1, got {t_range}")
    check_positive("batch_size", batch_size, integer=True)
    if not isinstance(optimizer, OptimConfig):
      raise InvalidArgument(f"optimizer: expected an OptimConfig, got {type(optimizer).__name__}")
    self.mask = full_mask(curve.start) if mask is None else mask
    check_mask(self.mask, curve.start)
    self.mesh = parallel.resolve_mesh(mesh)
    parallel.check_batch_size("batch_size", batch_size, self.mesh)
    self.policy = beta_lib.as_policy(beta)
    self.batch_size = int(batch_size)
    leaves, treedef = jax.tree.flatten(self.mask)
    setup = (apply, self.policy, curve.kind, curve.num_bends, tuple(t_range), optimizer,
             epochs, steps_per_epoch, treedef, tuple(leaves), self.batch_size, preprocess,
             self.mesh, loop)
    try:      # trainers of one setup (a population's members) share one compiled program
      shared = all(isinstance(m, (bool, np.bool_)) for m in leaves) and hash(setup) is not None
    except TypeError:
      shared = False
    self.tx, self._loss, self._epoch = (_programs if shared else _programs.__wrapped__)(*setup)
    self._curve = curve
    self._endpoints = parallel.replicate((curve.start, curve.end), self.mesh)

  @classmethod
  def from_options(cls, apply: Apply, curve: Curve, options: CurveOptions, *,
                   targets: beta_lib.Targets | None = None, mask: PyTree | None = None,
                   steps_per_epoch: int = 1, preprocess: Preprocess = default_preprocess,
                   mesh=None, loop: str = "auto") -> CurveTrainer:
    """The trainer of ``options`` (``CurveOptions``): the model at ``options.precision``, its
    optimizer, beta (towards ``targets``), batch size and epochs; what ``train_curve`` runs."""
    if not isinstance(options, CurveOptions):
      raise InvalidArgument(f"options: expected a CurveOptions, got {type(options).__name__}")
    return cls(with_precision(apply, options.precision), curve, mask=mask,
               optimizer=options.optim(), beta=options.policy(targets),
               batch_size=options.batch_size, steps_per_epoch=steps_per_epoch,
               epochs=options.epochs, preprocess=preprocess, mesh=mesh, loop=loop)

  def init(self, model_state: PyTree, rng: jax.Array) -> train.TrainState:
    """The state before the first step: params = the curve's controls (copied)."""
    state = train.TrainState.create(params=self._curve.controls, model_state=model_state,
                                    tx=self.tx, rng=rng)
    return parallel.replicate(state, self.mesh)

  def place(self, data: dict) -> dict:
    """``data`` (host arrays) replicated on the mesh, as ``epoch`` wants it."""
    for key in ("images", "labels", "is_forget"):
      if key not in data:
        raise InvalidArgument(f"data: expected keys images, labels, is_forget; {key!r} is missing "
                              f"(build it with mcu_jax.runtime.mcu.curve_data)")
    return parallel.replicate(dict(data), self.mesh)

  def epoch(self, state: train.TrainState, data: dict):
    """One epoch over ``data`` (from ``place``): (state, per-step metrics). Donates ``state``."""
    return self._epoch(state, *self._endpoints, data)

  def compile(self, state: train.TrainState, data: dict) -> float:
    """Compiles the epoch ahead of time for ``state`` and ``data``; returns the seconds."""
    self._epoch, seconds = train.compile_ahead(self._epoch, state, *self._endpoints, data)
    return seconds

  def _jitted_step(self):
    if not hasattr(self, "_step"):
      update = train.make_step(self._loss)     # the epoch's step, on a batch given whole

      def step(state, start, end, batch):
        batch = dict(batch)
        if "valid" not in batch:
          batch["valid"] = jnp.ones(batch["labels"].shape, bool)
        rng, key = jax.random.split(state.rng)
        state, metrics = update(state, batch, key, start, end)
        return state.replace(rng=rng), metrics
      self._step = jax.jit(step, donate_argnums=(0,))
    return self._step

  def _place_batch(self, batch: dict) -> dict:
    return {k: v if isinstance(v, jax.Array) else parallel.shard_batch(v, self.mesh)
            for k, v in batch.items()}

  def step(self, state: train.TrainState, batch: dict):
    """One jitted step on a preprocessed ``batch`` (``images`` float, ``labels``,
    ``is_forget`` and optionally ``valid``): (state, metrics). Donates ``state``. Host arrays
    are split over the mesh (on several hosts: each process passes its share)."""
    return self._jitted_step()(state, *self._endpoints, self._place_batch(batch))

  def lower_step(self, state: train.TrainState, batch: dict) -> jax.stages.Lowered:
    """The step lowered for ``state`` and ``batch`` (``.compile()`` it, or read XLA's cost
    analysis); ``step`` then reuses the same compilation cache."""
    return self._jitted_step().lower(state, *self._endpoints, self._place_batch(batch))

  def curve(self, state: train.TrainState) -> Curve:
    """The curve with ``state``'s controls."""
    return dataclasses.replace(self._curve, controls=state.params)


@dataclasses.dataclass
class TrainedCurve:
  """What ``train_curve`` returns.

  Attributes:
    curve: the curve with trained controls.
    history: one dict per epoch (``train.fit``'s: epoch, seconds, train_<metric> means).
    seconds: wall seconds of the epochs (compilation excluded).
    compile_seconds: ahead-of-time compilation of the epoch.
    model_state: the model state after the last training forward.
  """
  curve: Curve
  history: list[dict]
  seconds: float
  compile_seconds: float
  model_state: PyTree


def train_curve(apply: Apply, curve: Curve, model_state: PyTree, *, forget, retain,
                mask: PyTree | None = None, targets: beta_lib.Targets | None = None,
                options: CurveOptions = CurveOptions(), seed: int = 0,
                preprocess: Preprocess = default_preprocess, mesh=None,
                checkpointer: Checkpointer | None = None, progress: bool = False,
                desc: str = "curve") -> TrainedCurve:
  """Trains ``curve``'s controls with L(D_r) - beta L(D_f) at random t (the curve step).

  The data are all of ``forget`` plus an ``options.retain_ratio`` share of ``retain``
  (``curve_data`` with ``seed``); the state's PRNG key is ``jax.random.PRNGKey(seed)``. With a
  ``checkpointer`` every epoch is saved and a rerun resumes from the latest one.

  Args:
    apply: the model (run at ``options.precision`` while training).
    curve: the curve to train (``options.line(theta_o, theta_p)``); its own bends and kind.
    model_state: the state the training forwards start from (theta_o's).
    forget, retain: (inputs, labels) pairs.
    mask: per-tensor bools or per-weight bool arrays like the params; None trains every tensor.
    targets: ``Targets`` in percent, for ``options.beta="adaptive"``.
    options: ``CurveOptions``: optimizer, epochs, batch size, retain_ratio, beta, precision.
    seed: the data subset's and the training's seed.
    preprocess: ``preprocess(key, inputs)``.
    mesh: see ``CurveTrainer``.
    checkpointer, progress, desc: see ``train.fit``.
  """
  if not isinstance(options, CurveOptions):
    raise InvalidArgument(f"options: expected a CurveOptions, got {type(options).__name__}")
  check_data(apply, curve.start, model_state,
             {"forget": check_pair("forget", forget), "retain": check_pair("retain", retain)},
             preprocess, {"theta_o": curve.start, "controls": curve.controls,
                          "theta_p": curve.end})
  data = curve_data(forget, retain, options.retain_ratio, seed)
  steps = -(-len(data["labels"]) // options.batch_size)
  trainer = CurveTrainer.from_options(apply, curve, options, targets=targets, mask=mask,
                                      steps_per_epoch=steps, preprocess=preprocess, mesh=mesh)
  data = trainer.place(data)
  state = trainer.init(model_state, jax.random.PRNGKey(seed))
  compile_seconds = trainer.compile(state, data)
  state, history = train.fit(state, lambda s, d: trainer.epoch(s, d), data, options.epochs,
                             checkpointer=checkpointer, resume=True, desc=desc,
                             progress=progress, hint=f"lr = {options.lr:g} may be too large")
  return TrainedCurve(curve=trainer.curve(state), history=history,
                      seconds=float(sum(h["seconds"] for h in history)),
                      compile_seconds=compile_seconds, model_state=state.model_state)


__all__ = ["CurveOptions", "CURVE_OPTIM", "full_mask", "curve_loss", "curve_data", "CurveTrainer",
           "TrainedCurve", "train_curve"]
