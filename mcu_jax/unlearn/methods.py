"""The base unlearning methods, each a loss over a view of the data run by the shared trainer.

Every method builds its data dict (``data.subset_arrays`` / ``forget_retain_data``), a
per-batch ``loss_fn``, an optimiser (``mcu_jax.optim.make_optimizer``) and hands them to
``train.make_epoch`` + ``train.fit``: the hot loop is one jitted epoch (``mcu_jax.loops``),
its batches split over the device mesh.
The epoch is compiled ahead of time (``jit(...).lower(...).compile()``) so that compilation is
measured apart from the unlearning time (RTE); see ``UnlearnResult``.

Defaults, their sources and the deviations from the reference are tabulated in the docstring of
``mcu_jax.unlearn``.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mcu_jax import data as data_lib
from mcu_jax import batchnorm, masks, objectives, parallel
from mcu_jax import train as train_lib
from mcu_jax.checkpoint import Checkpointer
from mcu_jax.models.adapters import Apply
from mcu_jax.optim import make_optimizer
from mcu_jax.preprocess import Preprocess
from mcu_jax.unlearn import configs as cfgs
from mcu_jax.validation import InvalidArgument

PyTree = Any
Evaluate = Callable[[PyTree, PyTree], Mapping[str, float]]


# ---------------------------------------------------------------------------------------------
# Result.


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
      arithmetic (plus the BN recalibration with ``batch_stats="recalibrate"``); 0 otherwise.
    compile_seconds: ahead-of-time compilation of the epoch(s) and of the extra steps; not in
      the RTE. Host-to-device copies of the data are in neither.
    history: ``train.fit``'s per-epoch records (``epoch``, ``seconds``, ``train_<metric>``
      means, evaluate() values). SCRUB's max-phase metrics appear as ``train_max_<metric>``.
    extras: method-specific outputs: SalUn ``mask`` (bool pytree like params, True = may
      move); NegTV ``finetuned_params``/``finetuned_model_state`` (theta_ft).
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


@dataclasses.dataclass(frozen=True)
class _Context:
  apply: Apply
  params: PyTree
  model_state: PyTree
  train: data_lib.Dataset
  split: data_lib.ForgetSplit
  preprocess: Preprocess
  rng: jax.Array
  progress: bool
  checkpointer: Checkpointer | None
  evaluate: Evaluate | None
  init_params: Any
  desc: str
  mesh: Any


@dataclasses.dataclass
class _Outcome:
  params: PyTree
  model_state: PyTree
  history: list[dict]
  compile_seconds: float
  extra_seconds: float = 0.0
  extras: dict[str, Any] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Optimiser.


def l1_penalty(alpha_of_step: Callable[[jax.Array], jax.Array]) -> optax.GradientTransformation:
  """Adds the (sub)gradient of ``alpha * ||theta||_1``, ``alpha * sign(theta)``, to the
  gradients; ``alpha`` is read from ``alpha_of_step(count)``, count = updates so far."""
  def init_fn(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("l1_penalty needs the params in optimizer.update")
    alpha = alpha_of_step(state.count)
    updates = jax.tree.map(lambda g, p: g + (alpha * jnp.sign(p)).astype(g.dtype), updates,
                           params)
    return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------------------------
# Shared plumbing.


def _steps(num_examples: int, batch_size: int) -> int:
  return -(-num_examples // batch_size)


def _wrap_evaluate(ctx: _Context, view: Callable[[Any], tuple[PyTree, PyTree]]):
  if ctx.evaluate is None:
    return None
  return lambda state: dict(ctx.evaluate(*view(state)))


def _plain_view(state: train_lib.TrainState) -> tuple[PyTree, PyTree]:
  return state.params, state.model_state


def _place(ctx: _Context, tree: PyTree) -> PyTree:
  return parallel.replicate(tree, ctx.mesh)


def _make_epoch(ctx: _Context, loss_fn: train_lib.LossFn, batch_size: int):
  if batch_size % ctx.mesh.devices.size:
    raise InvalidArgument(f"batch_size: expected a multiple of the mesh's "
                          f"{ctx.mesh.devices.size} devices, got {batch_size}")
  return train_lib.make_epoch(loss_fn, batch_size, preprocess=ctx.preprocess,
                              batch_sharding=parallel.batch_sharding(ctx.mesh))


def _train(ctx: _Context, config: cfgs.MethodConfig, loss_fn: train_lib.LossFn, arrays: dict,
           params: PyTree, model_state: PyTree, rng: jax.Array, *,
           params_mask: PyTree | None = None, penalty_for_steps=None):
  """Runs ``config.epochs`` jitted epochs of ``loss_fn`` over ``arrays`` from (params, state),
  with the batches split over the mesh. Returns (TrainState, history, compile_seconds).
  """
  data = _place(ctx, arrays)
  steps = _steps(int(arrays["labels"].shape[0]), config.batch_size)
  penalty = None if penalty_for_steps is None else penalty_for_steps(steps)
  optimizer = make_optimizer(config, epochs=config.epochs, steps_per_epoch=steps,
                             mask=params_mask, penalty=penalty)
  state = _place(ctx, train_lib.TrainState.create(params=params, model_state=model_state,
                                                  tx=optimizer, rng=rng))
  epoch = _make_epoch(ctx, loss_fn, config.batch_size)
  compiled, compile_seconds = train_lib.compile_ahead(epoch, state, data)
  state, history = train_lib.fit(state, compiled, data, config.epochs,
                                 evaluate=_wrap_evaluate(ctx, _plain_view),
                                 checkpointer=ctx.checkpointer, desc=ctx.desc,
                                 progress=ctx.progress)
  return state, history, compile_seconds


def _forward_ce(apply: Apply, params, model_state, batch, labels=None):
  """Training-mode forward: (logits, new model state, per-example CE)."""
  logits, new_state = apply(params, model_state, batch["images"], True)
  labels = batch["labels"] if labels is None else labels
  return logits, new_state, objectives.cross_entropy(logits, labels)


def _accuracy(logits, labels, members) -> jax.Array:
  return 100.0 * objectives.masked_mean(objectives.correct(logits, labels), members)


# ---------------------------------------------------------------------------------------------
# Losses (``loss_fn(params, model_state, batch, rng) -> (loss, (new_model_state, metrics))``).


def ce_loss(apply: Apply) -> train_lib.LossFn:
  """Mean CE of the valid examples (FT, retrain, l1-sparse, NegTV's fine-tuning)."""
  return train_lib.supervised_loss(apply)


def ascent_loss(apply: Apply) -> train_lib.LossFn:
  """-mean CE of the valid examples (GA on D_f)."""
  def loss_fn(params, model_state, batch, rng):
    del rng
    logits, new_state, ce = _forward_ce(apply, params, model_state, batch)
    ce = objectives.masked_mean(ce, batch["valid"])
    metrics = {"loss": -ce, "forget_loss": ce,
               "forget_acc": _accuracy(logits, batch["labels"], batch["valid"])}
    return -ce, (new_state, metrics)
  return loss_fn


def neggrad_plus_loss(apply: Apply, beta: float) -> train_lib.LossFn:
  """CE of the batch's retain members minus ``beta`` times CE of its forget members, each the
  mean over its own members (0 for a subset absent from the batch)."""
  def loss_fn(params, model_state, batch, rng):
    del rng
    logits, new_state = apply(params, model_state, batch["images"], True)
    sub = objectives.subset_metrics(logits, batch)
    loss = objectives.unlearning_loss(sub["retain_loss"], sub["forget_loss"], beta)
    metrics = {"loss": loss, **{k: sub[k] for k in ("forget_loss", "retain_loss", "forget_acc",
                                                    "retain_acc")}}
    return loss, (new_state, metrics)
  return loss_fn


def random_wrong_labels(key: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
  """A label drawn uniformly from the ``num_classes - 1`` classes other than ``labels``."""
  offsets = jax.random.randint(key, labels.shape, 1, num_classes, dtype=labels.dtype)
  return (labels + offsets) % num_classes


def random_label_loss(apply: Apply, num_classes: int) -> train_lib.LossFn:
  """Mean CE over the valid examples where every forget member carries a random wrong label,
  redrawn every step from the step's key (the reference redraws per ``__getitem__``). The
  metrics' accuracies are against the true labels."""
  def loss_fn(params, model_state, batch, rng):
    labels = jnp.where(batch["is_forget"],
                       random_wrong_labels(rng, batch["labels"], num_classes), batch["labels"])
    logits, new_state, ce = _forward_ce(apply, params, model_state, batch, labels)
    loss = objectives.masked_mean(ce, batch["valid"])
    forget, retain = objectives.subset_masks(batch)
    metrics = {"loss": loss, "forget_acc": _accuracy(logits, batch["labels"], forget),
               "retain_acc": _accuracy(logits, batch["labels"], retain)}
    return loss, (new_state, metrics)
  return loss_fn


def distill_kl(student_logits: jax.Array, teacher_logits: jax.Array,
               temperature: float) -> jax.Array:
  """Per-example ``T^2 * KL(softmax(t/T) || softmax(s/T))`` (RepDistiller's DistillKL)."""
  t = jnp.asarray(temperature, jnp.float32)
  log_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t, axis=-1)
  log_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / t, axis=-1)
  return jnp.sum(jnp.exp(log_t) * (log_t - log_s), axis=-1) * t * t


def _scrub_forward(apply, params, model_state, batch, temperature):
  """Student (training mode) and teacher (inference mode, no gradient) on the same batch.

  ``model_state`` is ``{"student": state, "teacher": (params_o, state_o)}``: the teacher rides
  in the model state so that it is an argument of the jitted epoch, not a baked-in constant.
  """
  logits, student_state = apply(params, model_state["student"], batch["images"], True)
  teacher_params, teacher_state = model_state["teacher"]
  teacher_logits, _ = apply(teacher_params, teacher_state, batch["images"], False)
  kl = distill_kl(logits, jax.lax.stop_gradient(teacher_logits), temperature)
  kl = objectives.masked_mean(kl, batch["valid"])
  new_state = {"student": student_state, "teacher": model_state["teacher"]}
  return logits, new_state, kl


def scrub_max_loss(apply: Apply, temperature: float) -> train_lib.LossFn:
  """SCRUB's max-step: -KL(teacher || student) on D_f."""
  def loss_fn(params, model_state, batch, rng):
    del rng
    _, new_state, kl = _scrub_forward(apply, params, model_state, batch, temperature)
    return -kl, (new_state, {"loss": -kl, "kl": kl})
  return loss_fn


def scrub_min_loss(apply: Apply, temperature: float, gamma: float,
                   alpha: float) -> train_lib.LossFn:
  """SCRUB's min-step: gamma * CE + alpha * KL(teacher || student) on D_r."""
  def loss_fn(params, model_state, batch, rng):
    del rng
    logits, new_state, kl = _scrub_forward(apply, params, model_state, batch, temperature)
    ce = objectives.masked_mean(objectives.cross_entropy(logits, batch["labels"]),
                                batch["valid"])
    loss = gamma * ce + alpha * kl
    metrics = {"loss": loss, "ce": ce, "kl": kl,
               "acc": _accuracy(logits, batch["labels"], batch["valid"])}
    return loss, (new_state, metrics)
  return loss_fn


# ---------------------------------------------------------------------------------------------
# Methods.


def _retain_arrays(ctx: _Context) -> dict:
  return data_lib.subset_arrays(ctx.train, ctx.split.retain)


def _forget_arrays(ctx: _Context) -> dict:
  return data_lib.subset_arrays(ctx.train, ctx.split.forget)


def _run_retrain(ctx: _Context, config: cfgs.RetrainConfig) -> _Outcome:
  init = ctx.init_params
  if init is None:
    raise ValueError("retrain trains from a fresh initialisation: pass init_params="
                     "(params, model_state) or a function rng -> (params, model_state)")
  init_key, train_key = jax.random.split(ctx.rng)
  params, model_state = init(init_key) if callable(init) else init
  for name, fresh, original in (("params", params, ctx.params),
                                ("model_state", model_state, ctx.model_state)):
    if jax.tree.structure(fresh) != jax.tree.structure(original):
      raise ValueError(f"init_params' {name} do not have the structure of the original "
                       f"model's:\n  {jax.tree.structure(fresh)}\n  "
                       f"{jax.tree.structure(original)}")
  state, history, compile_s = _train(ctx, config, ce_loss(ctx.apply), _retain_arrays(ctx),
                                     params, model_state, train_key)
  return _Outcome(state.params, state.model_state, history, compile_s)


def _run_ft(ctx: _Context, config: cfgs.FTConfig) -> _Outcome:
  state, history, compile_s = _train(ctx, config, ce_loss(ctx.apply), _retain_arrays(ctx),
                                     ctx.params, ctx.model_state, ctx.rng)
  return _Outcome(state.params, state.model_state, history, compile_s)


def _run_ga(ctx: _Context, config: cfgs.GAConfig) -> _Outcome:
  state, history, compile_s = _train(ctx, config, ascent_loss(ctx.apply), _forget_arrays(ctx),
                                     ctx.params, ctx.model_state, ctx.rng)
  return _Outcome(state.params, state.model_state, history, compile_s)


def _run_neggrad_plus(ctx: _Context, config: cfgs.NegGradPlusConfig) -> _Outcome:
  state, history, compile_s = _train(ctx, config, neggrad_plus_loss(ctx.apply, config.beta),
                                     data_lib.forget_retain_data(ctx.train, ctx.split),
                                     ctx.params, ctx.model_state, ctx.rng)
  return _Outcome(state.params, state.model_state, history, compile_s)


def _check_classes(ctx: _Context) -> int:
  num_classes = int(ctx.train.num_classes)
  if num_classes < 2:
    raise ValueError(f"random labels need at least 2 classes, the data set has {num_classes}")
  return num_classes


def _run_rl(ctx: _Context, config: cfgs.RLConfig) -> _Outcome:
  loss = random_label_loss(ctx.apply, _check_classes(ctx))
  state, history, compile_s = _train(ctx, config, loss,
                                     data_lib.forget_retain_data(ctx.train, ctx.split),
                                     ctx.params, ctx.model_state, ctx.rng)
  return _Outcome(state.params, state.model_state, history, compile_s)


def _run_salun(ctx: _Context, config: cfgs.SalUnConfig) -> _Outcome:
  num_classes = _check_classes(ctx)
  batches = _place(ctx, data_lib.padded_batches(_forget_arrays(ctx), config.batch_size))
  grads_fn, grads_compile = train_lib.compile_ahead(
      masks.summed_ce_gradients_fn(ctx.apply, ctx.preprocess), ctx.params, ctx.model_state,
      batches)
  start = time.perf_counter()
  grads = grads_fn(ctx.params, ctx.model_state, batches)
  mask = jax.block_until_ready(masks.salun_mask(grads, config.mask_ratio))
  mask_seconds = time.perf_counter() - start
  state, history, compile_s = _train(ctx, config, random_label_loss(ctx.apply, num_classes),
                                     data_lib.forget_retain_data(ctx.train, ctx.split),
                                     ctx.params, ctx.model_state, ctx.rng, params_mask=mask)
  return _Outcome(state.params, state.model_state, history, compile_s + grads_compile,
                  mask_seconds, {"mask": mask})


def l1_alpha_schedule(config: cfgs.L1SparseConfig, steps_per_epoch: int):
  """alpha at update ``count``: ``alpha * (1 - e / (epochs - no_l1_epochs))`` for epoch
  e = count // steps_per_epoch < epochs - no_l1_epochs, else 0 (Unlearn-Sparse FT_iter)."""
  active = config.epochs - config.no_l1_epochs

  def alpha_of_step(count):
    epoch = (count // steps_per_epoch).astype(jnp.float32)
    return jnp.where(epoch < active, config.alpha * (1.0 - epoch / active), 0.0)
  return alpha_of_step


def _run_l1_sparse(ctx: _Context, config: cfgs.L1SparseConfig) -> _Outcome:
  penalty = lambda steps: l1_penalty(l1_alpha_schedule(config, steps))
  state, history, compile_s = _train(ctx, config, ce_loss(ctx.apply), _retain_arrays(ctx),
                                     ctx.params, ctx.model_state, ctx.rng,
                                     penalty_for_steps=penalty)
  return _Outcome(state.params, state.model_state, history, compile_s)


def _is_float(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.floating)


@jax.jit
def _scaled_difference(original, finetuned, coef):
  """``coef * (finetuned - original)`` on floating leaves (others: original's)."""
  return jax.tree.map(lambda o, f: coef.astype(o.dtype) * (f - o) if _is_float(o) else o,
                      original, finetuned)


@jax.jit
def _subtract(original, scaled):
  """``original - scaled`` on floating leaves (others: original's)."""
  return jax.tree.map(lambda o, s: o - s if _is_float(o) else o, original, scaled)


def negate_task_vector(original: PyTree, finetuned: PyTree, coef: float) -> PyTree:
  """``original - coef * (finetuned - original)`` on floating leaves; others from original.

  The product and the final subtraction run as two separately compiled steps, so XLA cannot
  contract them into a fused multiply-add: every operation is rounded on its own, and the
  result is the formula evaluated in the leaves' dtype bit for bit as NumPy evaluates it.
  """
  return _subtract(original, _scaled_difference(original, finetuned, jnp.float32(coef)))


def _negation_compiled(original: PyTree, finetuned: PyTree, coef: jax.Array):
  """(``fn(original, finetuned) -> negated``, compile seconds): ``negate_task_vector`` with
  its two steps compiled ahead of time."""
  if not jax.tree.leaves(original):
    return (lambda o, f: o), 0.0
  scaled_c, seconds_1 = train_lib.compile_ahead(_scaled_difference, original, finetuned, coef)
  subtract_c, seconds_2 = train_lib.compile_ahead(_subtract, original, original)
  return (lambda o, f: subtract_c(o, scaled_c(o, f, coef))), seconds_1 + seconds_2


def _run_negtv(ctx: _Context, config: cfgs.NegTVConfig) -> _Outcome:
  state, history, compile_s = _train(ctx, config, ce_loss(ctx.apply), _forget_arrays(ctx),
                                     ctx.params, ctx.model_state, ctx.rng)
  ft_params, ft_state = state.params, state.model_state
  coef = jnp.float32(config.coef)
  negate_params, seconds = _negation_compiled(ctx.params, ft_params, coef)
  compile_s += seconds
  if config.batch_stats == "formula":
    negate_state, seconds = _negation_compiled(ctx.model_state, ft_state, coef)
    compile_s += seconds
    finish_state = lambda params: negate_state(ctx.model_state, ft_state)
  elif config.batch_stats == "original":
    finish_state = lambda params: ctx.model_state
  else:
    apply, preprocess, batch_size = ctx.apply, ctx.preprocess, config.batch_size
    recalibrate = jax.jit(lambda params, model_state, images: batchnorm.recalibrated(
        apply, params, model_state, images, batch_size, preprocess))
    retain_images = _place(ctx, ctx.train.images[ctx.split.retain])
    recalibrate_c, seconds = train_lib.compile_ahead(recalibrate, ctx.params, ctx.model_state,
                                                     retain_images)
    compile_s += seconds
    finish_state = lambda params: recalibrate_c(params, ctx.model_state, retain_images)

  start = time.perf_counter()
  params = negate_params(ctx.params, ft_params)
  params, model_state = jax.block_until_ready((params, finish_state(params)))
  extra = time.perf_counter() - start
  return _Outcome(params, model_state, history, compile_s, extra,
                  {"finetuned_params": ft_params, "finetuned_model_state": ft_state})


def _run_scrub(ctx: _Context, config: cfgs.ScrubConfig) -> _Outcome:
  forget = _place(ctx, _forget_arrays(ctx))
  retain = _place(ctx, _retain_arrays(ctx))
  steps_f = _steps(int(forget["labels"].shape[0]), config.forget_batch_size)
  steps_r = _steps(int(retain["labels"].shape[0]), config.batch_size)
  both = steps_f + steps_r
  boundary = config.msteps * both  # steps taken by the epochs with a max-phase

  def epoch_of_step(count):
    return jnp.where(count < boundary, count // both, config.msteps + (count - boundary) // steps_r)

  optimizer = make_optimizer(config, epochs=config.epochs, steps_per_epoch=both,
                             epoch_of_step=epoch_of_step)
  model_state = {"student": ctx.model_state, "teacher": (ctx.params, ctx.model_state)}
  state = _place(ctx, train_lib.TrainState.create(params=ctx.params, model_state=model_state,
                                                  tx=optimizer, rng=ctx.rng))
  max_epoch = _make_epoch(ctx, scrub_max_loss(ctx.apply, config.temperature),
                          config.forget_batch_size)
  min_epoch = _make_epoch(
      ctx, scrub_min_loss(ctx.apply, config.temperature, config.gamma, config.alpha),
      config.batch_size)
  max_c, max_compile = (train_lib.compile_ahead(max_epoch, state, forget) if config.msteps
                        else (None, 0.0))
  min_c, min_compile = train_lib.compile_ahead(min_epoch, state, retain)

  def scrub_epoch(state, data):
    step = int(state.step)
    done = step // both if step < boundary else config.msteps + (step - boundary) // steps_r
    metrics = {}
    if done < config.msteps:
      state, max_metrics = max_c(state, data["forget"])
      metrics.update({f"max_{k}": v for k, v in max_metrics.items()})
    state, min_metrics = min_c(state, data["retain"])
    metrics.update(min_metrics)
    return state, metrics

  view = lambda s: (s.params, s.model_state["student"])
  state, history = train_lib.fit(state, scrub_epoch, {"forget": forget, "retain": retain},
                                 config.epochs, evaluate=_wrap_evaluate(ctx, view),
                                 checkpointer=ctx.checkpointer, desc=ctx.desc,
                                 progress=ctx.progress)
  return _Outcome(state.params, state.model_state["student"], history,
                  max_compile + min_compile)


# ---------------------------------------------------------------------------------------------
# Registry and entry point.


@dataclasses.dataclass(frozen=True)
class Method:
  """A registered method: its config type, implementation and which sets it needs."""
  name: str
  config_type: type
  impl: Callable[[_Context, Any], _Outcome]
  needs_retain: bool
  summary: str


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("retrain", cfgs.RetrainConfig, _run_retrain, True,
           "train from a fresh initialisation on D_r (CE)"),
    Method("ft", cfgs.FTConfig, _run_ft, True, "fine-tune on D_r (CE)"),
    Method("ga", cfgs.GAConfig, _run_ga, False, "gradient ascent on D_f (-CE)"),
    Method("neggrad_plus", cfgs.NegGradPlusConfig, _run_neggrad_plus, True,
           "D_f and D_r mixed, CE_r - beta * CE_f per batch"),
    Method("rl", cfgs.RLConfig, _run_rl, True,
           "random wrong labels on D_f plus D_r (CE)"),
    Method("salun", cfgs.SalUnConfig, _run_salun, True,
           "random label restricted to the most forget-salient weights"),
    Method("l1_sparse", cfgs.L1SparseConfig, _run_l1_sparse, True,
           "fine-tune on D_r with a decaying l1 penalty"),
    Method("negtv", cfgs.NegTVConfig, _run_negtv, False,
           "negated task vector of a fine-tuning on D_f"),
    Method("scrub", cfgs.ScrubConfig, _run_scrub, True,
           "teacher-student: max KL on D_f, min CE + KL on D_r"),
)}


def method_names() -> list[str]:
  return list(METHODS)


def get_method(name: str) -> Method:
  """The registered method ``name``; unknown names raise, listing the known ones."""
  if not isinstance(name, str):
    raise TypeError(f"method name must be a string, got {type(name).__name__}")
  if name not in METHODS:
    raise ValueError(f"unknown unlearning method {name!r}; known methods: "
                     f"{', '.join(METHODS)}")
  return METHODS[name]


def default_config(method: str) -> cfgs.MethodConfig:
  """The default hyperparameters of ``method`` (see the table in ``mcu_jax.unlearn``)."""
  return get_method(method).config_type()


def _resolve_config(spec: Method, config) -> cfgs.MethodConfig:
  if config is None:
    return spec.config_type()
  if isinstance(config, Mapping):
    fields = {f.name for f in dataclasses.fields(spec.config_type)}
    unknown = sorted(set(config) - fields)
    if unknown:
      raise ValueError(f"unknown {spec.name} hyperparameters {unknown}; "
                       f"{spec.config_type.__name__} has {sorted(fields)}")
    return spec.config_type(**config)
  if type(config) is not spec.config_type:
    raise TypeError(f"method {spec.name!r} takes a {spec.config_type.__name__} (or a dict of "
                    f"its fields), got {type(config).__name__}")
  return config


def check_split(train: data_lib.Dataset, split: data_lib.ForgetSplit,
                needs_retain: bool = True) -> None:
  """Raises ValueError unless ``split`` indexes ``train`` with a non-empty forget set (and a
  non-empty retain set when ``needs_retain``), the two disjoint."""
  n = len(train)
  forget, retain = np.asarray(split.forget), np.asarray(split.retain)
  if forget.size == 0:
    raise ValueError("the forget set is empty: there is nothing to unlearn")
  if needs_retain and retain.size == 0:
    raise ValueError("the retain set is empty, and this method trains on it")
  for name, idx in (("forget", forget), ("retain", retain)):
    if idx.size and (idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer)):
      raise ValueError(f"{name} indices must be a 1-D integer array, got {idx.dtype} "
                       f"{idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= n):
      raise ValueError(f"{name} indices must lie in [0, {n}) for a training set of {n} "
                       f"examples, got [{idx.min()}, {idx.max()}]")
  if np.intersect1d(forget, retain).size:
    raise ValueError("the forget and retain sets overlap")


def _as_key(rng) -> jax.Array:
  if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
    return jax.random.PRNGKey(int(rng))
  if isinstance(rng, jax.Array):
    return rng
  raise TypeError(f"rng must be a PRNG key or an int seed, got {type(rng).__name__}")


def run(method: str, *, apply: Apply, params: PyTree, model_state: PyTree,
        train: data_lib.Dataset, split: data_lib.ForgetSplit, preprocess: Preprocess,
        rng, config: cfgs.MethodConfig | Mapping[str, Any] | None = None,
        progress: bool = True, checkpointer: Checkpointer | None = None,
        evaluate: Evaluate | None = None, init_params=None, init=None,
        mesh=None) -> UnlearnResult:
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
    mesh: a ``jax.sharding.Mesh`` (default: all devices): data and state replicated on it,
      every batch split over it; the same program runs on 1 or N devices.

  Returns:
    An ``UnlearnResult`` (see there for what the RTE counts).
  """
  spec = get_method(method)
  config = _resolve_config(spec, config)
  needs_retain = spec.needs_retain or getattr(config, "batch_stats", None) == "recalibrate"
  check_split(train, split, needs_retain)
  if init is not None:
    if init_params is not None:
      raise ValueError("give init_params or its alias init, not both")
    init_params = init
  mesh = parallel.make_mesh() if mesh is None else mesh
  params, model_state = parallel.replicate((params, model_state), mesh)
  ctx = _Context(apply, params, model_state, train, split, preprocess, _as_key(rng),
                 bool(progress), checkpointer, evaluate, init_params, spec.name, mesh)
  outcome = spec.impl(ctx, config)
  train_seconds = float(sum(record["seconds"] for record in outcome.history))
  return UnlearnResult(
      method=spec.name, params=outcome.params, model_state=outcome.model_state, config=config,
      rte_seconds=train_seconds + float(outcome.extra_seconds), train_seconds=train_seconds,
      extra_seconds=float(outcome.extra_seconds),
      compile_seconds=float(outcome.compile_seconds), history=outcome.history,
      extras=outcome.extras)
