"""UNSIR: error-maximising noise per forget class, an impair phase on the noise and a retain
subset, then a repair phase on the retain subset alone.

Tarun, Chundawat, Mandal and Kankanhalli, "Fast Yet Effective Machine Unlearning", IEEE TNNLS
2023; the authors' notebook ``vikram2000b/Fast-Machine-Unlearning`` ("Machine
Unlearning.ipynb"), the source of ``configs.UNSIRConfig``'s defaults: noise batches of 256
(the notebook's ``batch_size``), Adam lr 0.1 for 5 x 8 = 40 steps, l2 weight 0.1; impair on 20
copies of each noise batch plus the first 1000 retain examples of each class, 1 epoch of Adam
lr 0.02, batch 256; repair on those retain examples, 1 epoch of a fresh Adam at lr 0.01.

1. Noise. The forget classes are the sorted distinct labels of D_f. For each class c a batch
   N_c of ``batch_size`` model inputs (the preprocessed input space, float32, standard normal
   from the method's key) is trained by Adam (lr ``noise_lr``) for ``noise_steps`` steps on
   ``-mean_i CE(f(N_c)_i, c) + noise_l2 * mean_i sum_j N_c[i, j]^2``, theta_o fixed in
   inference mode: one jitted program, a ``lax.scan`` over the steps inside a ``lax.map`` over
   the classes (memory of one class at a time). Its seconds are the outcome's extra seconds.
2. Impair. ``noise_copies`` copies of every N_c, labelled c, plus the first
   ``retain_per_class`` examples of every class of D_r in index order (preprocessed once,
   ``ctx.preprocess(None, .)``: no augmentation, as the notebook's test-style transform),
   trained with CE for ``epochs`` epochs at ``lr`` by the shared trainer on the floats.
3. Repair. The same retain examples alone, CE, ``repair_epochs`` epochs at ``repair_lr`` with
   a fresh optimizer (the notebook builds a new Adam).

The history holds both phases' records, numbered 1..epochs + repair_epochs, each marked with
``phase`` ("impair" or "repair"). With a checkpointer, both phases save into it under that
numbering (``_PhaseCheckpointer``): a run stopped in the impair phase resumes there, one stopped
later resumes the repair phase (or starts it from the impair's final checkpoint); a phase never
resumes from the other's state. The noise is recomputed on a resume (same key, same program),
and ``extra_seconds`` is that run's noise optimisation.

Deviations from the notebook: it leaves the model in training mode while optimising the noise
(BatchNorm on the noise's batch statistics, updating the running statistics of theta_o); here
theta_o is fixed, in inference mode. It labels every noise example ``class_num = 0`` whatever
its class; here N_c is labelled c (the paper's intent, and the SSD repository's
``UNSIR_create_noisy_loader``). For random (not class-wise) forgetting the paper defines no
forget class: here every class present in D_f gets a noise batch, and D_r's examples of those
classes stay in the retain subset (a generalisation of ours).
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mcu_jax import preprocess as preprocess_lib
from mcu_jax.core import objectives
from mcu_jax.errors import CheckpointError, InvalidArgument
from mcu_jax.models.adapters import Apply
from mcu_jax.runtime import train as train_lib
from mcu_jax.runtime.checkpoint import Checkpointer
from mcu_jax.typing import PyTree
from mcu_jax.unlearn import configs as cfgs
from mcu_jax.unlearn.losses import ce_loss
from mcu_jax.unlearn.method_context import MethodContext, Outcome, place, train_on

PHASES = ("impair", "repair")


def noise_objective(apply: Apply, params: PyTree, model_state: PyTree, noise: jax.Array,
                    label: jax.Array, l2: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(objective, CE) of one noise batch ``noise`` (B, ...) for class ``label`` (int scalar):
  ``-CE + l2 * mean_i sum_j noise[i, j]^2``, CE the mean over the batch of the cross-entropy of
  the model in inference mode against ``label``; both float32 scalars."""
  logits, _ = apply(params, model_state, noise, False)
  labels = jnp.full(noise.shape[:1], label, jnp.int32)
  ce = jnp.mean(objectives.cross_entropy(logits, labels))
  energy = jnp.mean(jnp.sum(jnp.square(noise.reshape(noise.shape[0], -1)), axis=1))
  return -ce + l2 * energy, ce


def optimise_noise_fn(apply: Apply, steps: int):
  """A jitted ``fn(params, model_state, noise, labels, lr, l2) -> (noise, objective)``:
  ``noise`` (K, B, ...) holds one batch per class ``labels`` (K,); each is trained by its own
  Adam (torch's: betas 0.9/0.999, eps 1e-8, learning rate ``lr``) for ``steps`` steps on
  ``noise_objective`` with weight ``l2``; ``objective`` (K, steps) is the objective before each
  step. Made once per (apply, steps) when apply is hashable, so that a population's members
  share one compiled program."""
  try:
    hash(apply)
  except TypeError:
    return _optimise_noise_fn.__wrapped__(apply, int(steps))
  return _optimise_noise_fn(apply, int(steps))


@functools.lru_cache(maxsize=8)
def _optimise_noise_fn(apply: Apply, steps: int):
  def one_class(params, model_state, noise, label, lr, l2):
    tx = optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)
    value_and_grad = jax.value_and_grad(
        lambda n: noise_objective(apply, params, model_state, n, label, l2), has_aux=True)

    def step(carry, _):
      noise, opt_state = carry
      (objective, _), grad = value_and_grad(noise)
      updates, opt_state = tx.update(grad, opt_state, noise)
      return (optax.apply_updates(noise, updates), opt_state), objective

    (noise, _), objective = jax.lax.scan(step, (noise, tx.init(noise)), None, length=steps)
    return noise, objective

  @jax.jit
  def optimise(params, model_state, noise, labels, lr, l2):
    return jax.lax.map(lambda pair: one_class(params, model_state, *pair, lr, l2),
                       (noise, labels))
  return optimise


def retain_subset(labels: np.ndarray, retain: np.ndarray, per_class: int) -> np.ndarray:
  """The first ``per_class`` indices (in index order) of each class of ``retain`` (indices
  into ``labels``), class by class in increasing label order."""
  retain = np.sort(np.asarray(retain))
  of_retain = np.asarray(labels)[retain]
  return np.concatenate([retain[of_retain == c][:per_class] for c in np.unique(of_retain)])


def _input_shape(ctx: MethodContext) -> tuple[int, ...]:
  sample = ctx.preprocess(None, jnp.asarray(ctx.train.images[:1]))
  if not jnp.issubdtype(sample.dtype, jnp.floating):
    raise InvalidArgument(f"unsir optimises noise in the model's input space, which must be "
                          f"floating; the preprocess gives {sample.dtype} inputs")
  return tuple(sample.shape[1:])


def _mark(record: dict, phase: str, offset: int) -> dict:
  return {**record, "epoch": int(record["epoch"]) + offset, "phase": phase}


def _unmark(record: dict, offset: int) -> dict:
  out = {k: v for k, v in record.items() if k != "phase"}
  out["epoch"] = int(record["epoch"]) - offset
  return out


class _PhaseCheckpointer(Checkpointer):
  """One phase's view of the run's checkpointer: the phase's epochs 1..n are the run's epochs
  ``offset + 1 .. offset + n``, saved with the run's whole history (earlier phases' records
  first, every record marked with its phase). ``latest_step`` sees only this phase's
  checkpoints, so a phase never resumes from another's state. Owns nothing: closing it is a
  no-op (the run's checkpointer belongs to the caller)."""

  def __init__(self, inner: Checkpointer, offset: int, phase: str, before: list[dict]):
    # No Checkpointer.__init__: this view opens no directory of its own.
    self.inner, self.offset, self.phase, self.before = inner, offset, phase, list(before)
    self.directory = inner.directory

  def latest_step(self) -> int | None:
    step = self.inner.latest_step()
    return None if step is None or step <= self.offset else step - self.offset

  def save(self, step: int, state: PyTree, meta: dict) -> None:
    history = self.before + [_mark(r, self.phase, self.offset) for r in meta["history"]]
    self.inner.save(step + self.offset, state,
                    {**meta, "epoch": step + self.offset, "history": history})

  def restore(self, like: PyTree, step: int | None = None) -> tuple[PyTree, dict]:
    state, meta = self.inner.restore(like, None if step is None else step + self.offset)
    epoch = int(meta["epoch"])
    if epoch <= self.offset:
      raise CheckpointError(f"{self.inner.directory}: the newest good checkpoint (epoch {epoch}) "
                            f"precedes the {self.phase} phase, which starts after epoch "
                            f"{self.offset}; remove the directory to rerun")
    history = list(meta["history"])
    self.before = history[:self.offset]
    return state, {**meta, "epoch": epoch - self.offset,
                   "history": [_unmark(r, self.offset) for r in history[self.offset:]]}

  def close(self) -> None:
    pass


def _phase_ctx(ctx: MethodContext, offset: int, phase: str, before: list[dict]):
  """``ctx`` on already-preprocessed floats, checkpointing as ``phase`` (or None)."""
  view = (None if ctx.checkpointer is None
          else _PhaseCheckpointer(ctx.checkpointer, offset, phase, before))
  return dataclasses.replace(ctx, preprocess=preprocess_lib.as_is, checkpointer=view), view


def _phase_config(config: cfgs.UNSIRConfig, epochs: int, lr: float) -> cfgs.MethodConfig:
  """A phase's training recipe: ``config``'s optimizer fields with ``epochs`` and ``lr``, as a
  plain ``MethodConfig`` so that runs differing only in UNSIR's own knobs share the phase's
  compiled epoch (``train.train_model``'s ``programs``)."""
  fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(cfgs.MethodConfig)}
  return cfgs.MethodConfig(**{**fields, "epochs": epochs, "lr": lr})


def run_unsir(ctx: MethodContext, config: cfgs.UNSIRConfig) -> Outcome:
  """Noise, impair and repair (module docstring). Extras: ``noise`` (K, batch_size, ...) the
  trained noise, ``noise_classes`` (K,), ``noise_objective`` (K, noise_steps) the objective
  before each Adam step, ``retain_indices`` the retain subset (indices into the train set)."""
  noise_key, impair_key, repair_key = jax.random.split(ctx.rng, 3)
  classes = np.unique(np.asarray(ctx.train.labels)[ctx.split.forget])
  shape = (len(classes), config.batch_size) + _input_shape(ctx)
  args: tuple[Any, ...] = (
      ctx.params, ctx.model_state, place(ctx, jax.random.normal(noise_key, shape, jnp.float32)),
      place(ctx, jnp.asarray(classes, jnp.int32)), place(ctx, jnp.float32(config.noise_lr)),
      place(ctx, jnp.float32(config.noise_l2)))
  optimise, noise_compile = train_lib.compile_ahead(
      optimise_noise_fn(ctx.apply, config.noise_steps), *args)
  start = time.perf_counter()
  noise, objective = jax.block_until_ready(optimise(*args))
  noise_seconds = time.perf_counter() - start

  label_dtype = np.asarray(ctx.train.labels).dtype
  kept = retain_subset(ctx.train.labels, ctx.split.retain, config.retain_per_class)
  retain = {"images": ctx.preprocess(None, jnp.asarray(ctx.train.images[kept])),
            "labels": jnp.asarray(np.asarray(ctx.train.labels)[kept])}
  copies = jnp.broadcast_to(noise[:, None], (shape[0], config.noise_copies) + shape[1:])
  noise_labels = np.repeat(classes, config.noise_copies * config.batch_size).astype(label_dtype)
  impair = {"images": jnp.concatenate([copies.reshape((-1,) + shape[2:]), retain["images"]]),
            "labels": jnp.concatenate([jnp.asarray(noise_labels), retain["labels"]])}

  loss = ce_loss(ctx.apply)
  impair_config = _phase_config(config, config.epochs, config.lr)
  compile_seconds = noise_compile
  latest = None if ctx.checkpointer is None else ctx.checkpointer.latest_step()
  history: list[dict] = []
  params, model_state = ctx.params, ctx.model_state
  if latest is None or latest <= config.epochs or not config.repair_epochs:
    impair_ctx, _ = _phase_ctx(ctx, 0, "impair", [])
    impaired = train_on(impair_ctx, impair_config, loss, impair, rng=impair_key)
    history = [_mark(r, "impair", 0) for r in impaired.history]
    params, model_state = impaired.params, impaired.model_state
    compile_seconds += impaired.compile_seconds
  # else: the impair phase is done and the repair phase resumes from its own checkpoint.
  if config.repair_epochs:
    repair_config = _phase_config(config, config.repair_epochs, config.repair_lr)
    repair_ctx, view = _phase_ctx(ctx, config.epochs, "repair", history)
    repaired = train_on(repair_ctx, repair_config, loss, retain, start=(params, model_state),
                        rng=repair_key)
    before = history if view is None else view.before
    history = before + [_mark(r, "repair", config.epochs) for r in repaired.history]
    params, model_state = repaired.params, repaired.model_state
    compile_seconds += repaired.compile_seconds
  return Outcome(params, model_state, history, compile_seconds, noise_seconds,
                 {"noise": noise, "noise_classes": classes, "noise_objective": objective,
                  "retain_indices": kept})
