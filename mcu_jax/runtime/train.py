"""The one trainer: a train state, a jitted epoch for any per-batch loss, and ``fit``.

Training the original model, retraining on D_r, every base unlearning method and the MCU curve
are the same loop with a different loss and a different view of the data::

    state = TrainState.create(params=params, model_state=model_state, tx=tx, rng=key)
    epoch = make_epoch(loss_fn, batch_size, preprocess=preprocess)
    state, history = fit(state, epoch, data, num_epochs)

``train_model`` is that loop for a ``FitConfig`` (optimizer fields, epochs, batch size) on a
device mesh: the original model, the gold-standard retrain and every base method run it.

``loss_fn(params, model_state, batch, rng, *consts) -> (loss, (new_model_state, metrics))``:
``batch`` holds ``images`` (B, ...) preprocessed inputs, ``labels`` (B,), ``valid`` (B,) bool
and any extra per-example arrays of the data dict (``is_forget``, ...); ``metrics`` is a dict
of scalars; ``consts`` are arrays the loss needs besides the trained params (the curve's fixed
endpoints), passed to the jitted epoch as arguments so that they are not baked into the
compiled program. ``params`` is whatever trains: a model's parameters, or the curve's controls.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm.auto as tqdm

from mcu_jax.core import objectives
from mcu_jax.errors import NonFiniteError
from mcu_jax.models.adapters import forward
from mcu_jax.preprocess import Preprocess, default_preprocess
from mcu_jax.runtime import loops, parallel, signals
from mcu_jax.runtime.checkpoint import Checkpointer
from mcu_jax.runtime.optim import OptimConfig, make_optimizer
from mcu_jax.typing import PyTree
from mcu_jax.validation import check_number

LossFn = Callable[..., tuple[jax.Array, tuple[PyTree, dict]]]


@flax.struct.dataclass
class TrainState:
  """What a training step updates, with the optimizer bound to it (as flax's TrainState).

  Attributes:
    params: the trained pytree.
    model_state: non-trainable model variables (BatchNorm statistics), ``{}`` if none.
    opt_state: ``tx``'s state.
    rng: PRNG key of the coming epochs (shuffling, augmentation, the loss's randomness).
    step: int32 scalar, updates taken.
    tx: the optimizer (static).
  """
  params: PyTree
  model_state: PyTree
  opt_state: optax.OptState
  rng: jax.Array
  step: jax.Array
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @classmethod
  def create(cls, *, params: PyTree, model_state: PyTree, tx: optax.GradientTransformation,
             rng: jax.Array) -> TrainState:
    """The state before the first step. Arrays are copied: epochs donate the state's buffers,
    and the caller's ``params`` must survive them."""
    params, model_state = jax.tree.map(jnp.copy, (params, model_state))
    return cls(params=params, model_state=model_state, opt_state=tx.init(params), rng=rng,
               step=jnp.zeros((), jnp.int32), tx=tx)

  def apply_gradients(self, grads: PyTree, model_state: PyTree) -> TrainState:
    """One optimizer update; tensors whose update is exactly zero by a static mask stay
    bit-identical (``optax.apply_updates`` adds 0)."""
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return dataclasses.replace(self, params=optax.apply_updates(self.params, updates),
                               model_state=model_state, opt_state=opt_state,
                               step=self.step + 1)


def supervised_loss(apply) -> LossFn:
  """Mean cross-entropy of the valid examples, with their accuracy (percent) as a metric. The
  step's key is the model's (dropout)."""
  def loss_fn(params, model_state, batch, rng):
    logits, new_state = forward(apply, params, model_state, batch["images"], True, rng)
    ce = objectives.cross_entropy(logits, batch["labels"])
    loss = objectives.masked_mean(ce, batch["valid"])
    acc = 100.0 * objectives.masked_mean(objectives.correct(logits, batch["labels"]),
                                         batch["valid"])
    return loss, (new_state, {"loss": loss, "acc": acc})
  return loss_fn


def make_step(loss_fn: LossFn):
  """The trainer's update ``step(state, batch, key, *consts) -> (state, metrics)``: the value
  and gradient of ``loss_fn`` w.r.t. ``state.params`` at ``key``, then
  ``state.apply_gradients``. Traceable; every epoch and ``mcu.CurveTrainer.step`` run it."""
  def step(state: TrainState, batch: dict, key: jax.Array, *consts):
    (_, (model_state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.model_state, batch, key, *consts)
    return state.apply_gradients(grads, model_state), metrics
  return step


def make_epoch(loss_fn: LossFn, batch_size: int, *, preprocess: Preprocess = default_preprocess,
               batch_sharding=None, loop: str = "auto"):
  """An epoch ``epoch(state, *consts, data) -> (state, metrics)``: shuffle, batch, step.

  ``data`` is a dict of on-device arrays with a common leading axis: ``images`` (N, ...),
  ``labels`` and any per-example extras. Each step splits its key for ``preprocess`` (the
  augmentation) and for ``loss_fn``. ``metrics`` leaves have shape (steps,).
  ``batch_sharding``, when given, constrains every batch (e.g. split over a device mesh).
  ``loop``: "scan", "python" or "auto" (``mcu_jax.runtime.loops``). The epoch donates ``state``.
  """
  step = make_step(loss_fn)

  def body(state, *inputs):
    *consts, data, idx, ok, key = inputs
    aug_key, loss_key = jax.random.split(key)
    batch = {name: value[idx] for name, value in data.items()}
    batch["images"] = preprocess(aug_key, batch["images"])
    batch["valid"] = ok
    if batch_sharding is not None:
      batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    return step(state, batch, loss_key, *consts)

  return loops.make_epoch(body, batch_size, loop)


def make_program(loss_fn: LossFn, config: FitConfig, num_examples: int, *,
                 preprocess: Preprocess = default_preprocess, batch_sharding=None,
                 mask: PyTree | None = None,
                 penalty: Callable[[int], optax.GradientTransformation] | None = None,
                 loop: str = "auto") -> tuple[optax.GradientTransformation, Callable]:
  """(optimizer, epoch) of ``config`` on ``num_examples`` examples: ``make_optimizer`` (its
  schedule over ceil(num_examples / batch_size) steps per epoch, ``mask``, ``penalty(steps per
  epoch)``) and ``make_epoch`` of ``loss_fn``. What ``train_model`` and
  ``population.train_population`` train with."""
  steps = -(-int(num_examples) // config.batch_size)
  tx = make_optimizer(config, epochs=config.epochs, steps_per_epoch=steps, mask=mask,
                      penalty=None if penalty is None else penalty(steps))
  return tx, make_epoch(loss_fn, config.batch_size, preprocess=preprocess,
                        batch_sharding=batch_sharding, loop=loop)


def compile_ahead(fn, *args):
  """(compiled fn, seconds to compile) of a jitted ``fn`` (or a ``loops.LoopedEpoch``) for
  ``args``: timings of the compiled function then exclude compilation."""
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return compiled, time.perf_counter() - start


def epoch_means(metrics: dict) -> dict[str, float]:
  """Per-epoch means of per-step metrics. ``forget_*``/``retain_*`` metrics are weighted by
  the steps' ``forget_count``/``retain_count`` when present, so a batch without forget
  examples does not count as 0 % forget accuracy."""
  out = {}
  for key, values in metrics.items():
    values = np.asarray(values, np.float64)
    subset = key.split("_", 1)[0]
    weights = metrics.get(f"{subset}_count") if subset in ("forget", "retain") else None
    if weights is not None and not key.endswith("_count") and np.sum(weights) > 0:
      out[key] = float(np.average(values, weights=np.asarray(weights, np.float64)))
    else:
      out[key] = float(np.mean(values))
  return out


def all_finite(tree: PyTree) -> bool:
  """Whether every floating leaf of ``tree`` is free of NaN and infinity (one device sync)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.floating)]
  return bool(jax.device_get(jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])))
              ) if leaves else True


def check_finite(state, metrics: dict, *, desc: str, epoch: int, hint: str = "") -> None:
  """Raises ``NonFiniteError`` naming the stage, the epoch and the likely cause when a metric
  or a parameter of ``state`` is NaN or infinite."""
  bad = sorted(k for k, v in metrics.items()
               if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.all(np.isfinite(v)))
  if not bad and all_finite(state.params):
    return
  what = f"{', '.join(bad)}" if bad else "parameters"
  cause = f" (likely cause: {hint})" if hint else ""
  raise NonFiniteError(f"{desc}: non-finite {what} in epoch {epoch}{cause}; training stopped "
                       "and nothing of it was marked done")


def fit(state, epoch_fn: Callable, data: dict, num_epochs: int, *,
        evaluate: Callable[[Any], dict] | None = None, checkpointer: Checkpointer | None = None,
        resume: bool = True, desc: str = "train", progress: bool = True, hint: str = ""):
  """Runs ``epoch_fn(state, data) -> (state, step_metrics)`` for ``num_epochs`` epochs.

  After each epoch: step metrics are averaged on the host, ``evaluate(state)`` (optional)
  adds e.g. train/test accuracy, a progress bar shows them, and the state is checkpointed
  (when ``checkpointer`` is given), so an interrupted run loses at most one epoch. With
  ``resume``, training continues from the latest checkpoint; a finished run returns at once.

  A NaN or an infinity in the epoch's metrics or parameters stops training with
  ``NonFiniteError`` (naming ``desc``, the epoch and ``hint``, e.g. "lr = 1e6 is too large")
  before anything of the epoch is saved.

  Returns (state, history): one dict per epoch with ``epoch``, ``seconds`` (wall time of the
  epoch's training, evaluation excluded), ``train_<metric>`` means and the evaluate() values.
  """
  history: list[dict] = []
  first = 0
  if checkpointer is not None and resume and checkpointer.latest_step() is not None:
    state, meta = checkpointer.restore(state)
    first, history = int(meta["epoch"]), list(meta["history"])
  bar = tqdm.tqdm(range(first, num_epochs), initial=first, total=num_epochs, desc=desc,
                  disable=not progress, leave=False, dynamic_ncols=True)
  for epoch in bar:
    signals.check(f"{desc} epoch {epoch + 1}")
    start = time.perf_counter()
    state, metrics = epoch_fn(state, data)
    metrics = jax.device_get(metrics)  # waits for the epoch: the timing is honest
    seconds = time.perf_counter() - start
    check_finite(state, metrics, desc=desc, epoch=epoch + 1, hint=hint)
    record = {"epoch": epoch + 1, "seconds": seconds}
    record.update({f"train_{k}": v for k, v in epoch_means(metrics).items()})
    if evaluate is not None:
      record.update(evaluate(state))
    history.append(record)
    bar.set_postfix({k: round(v, 3) for k, v in record.items()
                     if k != "epoch" and isinstance(v, float)}, refresh=False)
    if checkpointer is not None:
      checkpointer.save(epoch + 1, state, {"epoch": epoch + 1, "history": history})
  return state, history


@dataclasses.dataclass(frozen=True)
class FitConfig(OptimConfig):
  """A training run: the optimizer (``OptimConfig``'s fields), ``epochs`` and ``batch_size``.

  The configs of every training embed it: the original model's and the retrain's
  (``mcu_jax.pipeline.config.TrainConfig``), each base method's (``unlearn.MethodConfig``), the
  curve's (``mcu.CurveOptions``).
  """
  epochs: int = 10
  batch_size: int = 128

  def __post_init__(self):
    super().__post_init__()
    owner = type(self).__name__
    check_number(f"{owner}.epochs", self.epochs, low=1, integer=True)
    check_number(f"{owner}.batch_size", self.batch_size, low=1, integer=True)

  def fit_fields(self) -> dict:
    """The ``FitConfig`` fields of this config, e.g. to build another config type from."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(FitConfig)}


@dataclasses.dataclass
class Trained:
  """What ``train_model`` returns: the final state, the per-epoch history (``fit``'s) and
  the ahead-of-time compilation seconds of the epoch."""
  state: TrainState
  history: list[dict]
  compile_seconds: float

  @property
  def seconds(self) -> float:
    """Wall seconds of the epochs, compilation and evaluation excluded."""
    return float(sum(record["seconds"] for record in self.history))


def train_model(loss_fn: LossFn, params: PyTree, model_state: PyTree, data: dict, *,
                config: FitConfig, rng: jax.Array, preprocess: Preprocess = default_preprocess,
                mesh=None, mask: PyTree | None = None,
                penalty: Callable[[int], optax.GradientTransformation] | None = None,
                evaluate: Callable[[TrainState], dict] | None = None,
                checkpointer: Checkpointer | None = None, progress: bool = False,
                desc: str = "train", loop: str = "auto", programs: dict | None = None
                ) -> Trained:
  """``config.epochs`` epochs of ``loss_fn`` over ``data`` from (params, model_state).

  The data and the state are replicated on ``mesh`` (None: all devices,
  ``parallel.resolve_mesh``) and every batch is split over it; the epoch is compiled ahead of
  time so that its compilation is not in the epochs' seconds. ``mask`` restricts what may
  move (``optim.masked``); ``penalty(steps per epoch)`` adds a regulariser's gradient
  (l1-sparse). ``evaluate(state)`` runs after each epoch (its values go into the history).
  With a ``checkpointer`` every epoch is saved and a rerun resumes. ``programs``: a dict the
  caller keeps across calls that train the same kind of loss with the same recipe (a
  population's members): the optimizer and the jitted epoch are made on the first call and
  reused, so later calls trace and compile nothing (not with a ``mask``, which the optimizer
  holds as constants).
  """
  mesh = parallel.resolve_mesh(mesh)
  parallel.check_batch_size("batch_size", config.batch_size, mesh)
  num_examples = int(data["labels"].shape[0])
  steps = -(-num_examples // config.batch_size)
  key = (desc, getattr(loss_fn, "__code__", loss_fn), repr(config), steps, penalty is None,
         preprocess, mesh, loop)
  made = programs.get(key) if programs is not None and mask is None else None
  if made is None:
    made = make_program(loss_fn, config, num_examples, preprocess=preprocess,
                        batch_sharding=parallel.batch_sharding(mesh), mask=mask,
                        penalty=penalty, loop=loop)
    if programs is not None and mask is None:
      programs[key] = made
  tx, epoch = made
  data = parallel.replicate(dict(data), mesh)
  state = parallel.replicate(
      TrainState.create(params=params, model_state=model_state, tx=tx, rng=rng), mesh)
  epoch, compile_seconds = compile_ahead(epoch, state, data)
  state, history = fit(state, epoch, data, config.epochs, evaluate=evaluate,
                       checkpointer=checkpointer, desc=desc, progress=progress,
                       hint=f"lr = {config.lr:g} may be too large")
  return Trained(state, history, compile_seconds)
