"""The relearn attack: fine-tune a model briefly and watch its forget accuracy rebound.

Siddiqui, Weller, Krueger, Dziugaite, Mozer and Triantafillou, "From Dormant to Deleted:
Tamper-Resistant Unlearning Through Weight-Space Regularization" (arXiv 2505.22310, 2025;
NeurIPS 2025) find that fine-tuning an unlearned image classifier on the retain set alone lifts
its forget accuracy from about 50 % to about 100 %, while a model retrained without D_f stays
where it was: the test separates shallow forgetting (the knowledge is dormant) from deep
forgetting (it is gone). Here::

    result = mcu_jax.relearn.relearn(apply, params, model_state, forget=(xf, yf),
                                     retain=(xr, yr), test=(xt, yt),
                                     config=RelearnConfig(steps=100), preprocess=images)
    result.steps, result.forget_acc, result.rebound     # (0, 25, 50, 75, 100), percent, pp

``relearn`` takes ``config.steps`` = K SGD steps from the model and reads its accuracies (in
percent, inference mode, ``mcu_jax.runtime.evaluate``) at every K / ``config.intervals`` steps:
0, K/4, K/2, 3K/4 and K by default. The relearn set is D_r (``source="retain"``, the paper's
zero-forget-example attack) or ``forget_examples`` labelled examples of D_f drawn by the seed
(``source="forget"``, the classic relearning attack with a few forgotten examples); then the
forget accuracy is measured on the *other* D_f examples only, held out from the relearning, so
that it shows what comes back without being shown (``forget_subset`` gives the split).

Training is the one trainer's update (``train.make_step`` of ``train.supervised_loss``: mean
cross-entropy, training mode, BatchNorm statistics updated as in training) with the one
optimizer builder (``optim.make_optimizer``: SGD with momentum, coupled weight decay, constant
or step-cosine learning rate). The K / intervals steps between two readings are one jitted
``lax.scan``, compiled ahead (``train.compile_ahead``) so ``seconds`` excludes compilation.
Step s (counted from 0) draws its batch, its augmentation and the model's randomness from
``fold_in(PRNGKey(seed), s)``: ``min(batch_size, N)`` distinct examples of the N-example relearn
set, uniformly without replacement (the whole set, in order, when ``batch_size >= N``), passed
through ``preprocess`` with a key (augmentation). The readings do not change the trajectory:
``intervals`` only chooses where it is read. (On the CPU the steps are a host loop over one
jitted step, the CPU policy of ``mcu_jax.runtime.loops``; the result is the same.)

``relearn_population`` does the same to every member of a population (``mcu_jax.population``)
and of a retrained reference population, member i of both with the same batches (seed, i):
retraining relearned is the reference curve. At every reading it reports the population's mean
accuracies and, from the members' logit-scaled confidences on the held-out forget examples
(``forget_quality.logit_scaled_confidence``), the challenge's forgetting quality F
(``forget_quality.forget_score``) and U-LiRA's AUC over random splits
(``forget_quality.model_level.lira_splits``), the functions ``mcu-jax forget-quality`` scores
with. All members run one compiled program: on the CPU member by member (the CPU policy of
``runtime.loops``), elsewhere ``vmap``-ed over the members.

Deviations from the paper's code: none is reproduced from it; the defaults are this library's
(K = 100 steps of SGD lr 0.01, momentum 0.9, no weight decay, constant lr, batch 128,
``forget_examples`` = 32), chosen as a brief fine-tuning at the unlearning methods' own
learning rate, not the paper's schedule.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm.auto as tqdm

from mcu_jax import forget_quality
from mcu_jax.errors import InvalidArgument, NonFiniteError
from mcu_jax.forget_quality import model_level
from mcu_jax.models.adapters import Apply
from mcu_jax.population import Population, population_logits, stack
from mcu_jax.preprocess import Preprocess, default_preprocess
from mcu_jax.runtime import evaluate, loops, parallel, signals, train
from mcu_jax.runtime.optim import OptimConfig, make_optimizer
from mcu_jax.typing import PyTree
from mcu_jax.validation import check_choice, check_number, check_pair

SOURCES = ("retain", "forget")


@dataclasses.dataclass(frozen=True)
class RelearnConfig(OptimConfig):
  """The relearn attack's settings: the optimizer (``OptimConfig``'s fields) and the run.

  Attributes:
    lr, momentum, weight_decay, cosine: SGD as ``OptimConfig`` (default: lr 0.01, momentum
      0.9, no weight decay, constant lr).
    schedule_unit: must be "step" (relearning has no epochs; a cosine decays over K steps).
    steps: K, the number of SGD steps, >= 0 and a multiple of ``intervals`` (0: the model as
      given, read once).
    intervals: the accuracies are read every K / intervals steps (default 4: at 0, K/4, K/2,
      3K/4, K), >= 1.
    batch_size: examples per step, >= 1 (at most the relearn set's size is used).
    source: the relearn set, "retain" (D_r) or "forget" (``forget_examples`` of D_f).
    forget_examples: how many D_f examples relearn with ``source="forget"`` (drawn by the
      seed; the rest of D_f is where the forget accuracy is read), >= 1.
  """
  lr: float = 0.01
  momentum: float = 0.9
  weight_decay: float = 0.0
  cosine: bool = False
  schedule_unit: str = "step"
  steps: int = 100
  intervals: int = 4
  batch_size: int = 128
  source: str = "retain"
  forget_examples: int = 32

  def __post_init__(self):
    super().__post_init__()
    owner = type(self).__name__
    if self.schedule_unit != "step":
      raise InvalidArgument(f"{owner}.schedule_unit: relearning counts steps, not epochs: "
                            f"expected 'step', got {self.schedule_unit!r}")
    check_number(f"{owner}.steps", self.steps, low=0, integer=True)
    check_number(f"{owner}.intervals", self.intervals, low=1, integer=True)
    if self.steps % self.intervals:
      raise InvalidArgument(f"{owner}.steps: expected a multiple of intervals = "
                            f"{self.intervals} (readings every steps / intervals steps), got "
                            f"{self.steps}")
    check_number(f"{owner}.batch_size", self.batch_size, low=1, integer=True)
    check_choice(f"{owner}.source", self.source, SOURCES)
    check_number(f"{owner}.forget_examples", self.forget_examples, low=1, integer=True)

  @property
  def checkpoints(self) -> np.ndarray:
    """(intervals + 1,) int: the steps at which accuracies are read (just (0,) for K = 0)."""
    if self.steps == 0:
      return np.zeros(1, np.int64)
    return np.arange(self.intervals + 1, dtype=np.int64) * (self.steps // self.intervals)


def _array(values) -> np.ndarray | None:
  return None if values is None else np.asarray(values, np.float64)


@dataclasses.dataclass(frozen=True, eq=False)
class RelearnResult:
  """Accuracies along a relearn run; a population's are the mean over its members.

  Attributes:
    steps: (C,) int, the steps at which each reading was taken.
    forget_acc: (C,) percent, on D_f (``source="forget"``: on its held-out examples).
    retain_acc, test_acc: (C,) percent, when the sets were given; else None.
    F: (C,) the challenge's forgetting quality against the reference population (population
      mode only; higher is closer to retraining); else None.
    lira_auc: (C,) U-LiRA's AUC against the reference population, the mean over splits
      (population mode only; 0.5: indistinguishable); else None.
    reference: the reference population's own curve (population mode), else None.
    source: "retain" or "forget".
    relearn_examples: the relearn set's size.
    forget_indices: indices into D_f of the relearned examples (``source="forget"``), else ().
    seconds: wall seconds of the relearning steps, compilation and readings excluded.
    compile_seconds: the ahead-of-time compilation.
    params, model_state: the model after K steps (single model only; not in ``to_dict``).
  """
  steps: np.ndarray
  forget_acc: np.ndarray
  retain_acc: np.ndarray | None = None
  test_acc: np.ndarray | None = None
  F: np.ndarray | None = None
  lira_auc: np.ndarray | None = None
  reference: RelearnResult | None = None
  source: str = "retain"
  relearn_examples: int = 0
  forget_indices: tuple[int, ...] = ()
  seconds: float = 0.0
  compile_seconds: float = 0.0
  params: Any = None
  model_state: Any = None

  @property
  def rebound(self) -> float:
    """Forget accuracy after K steps minus before, in percentage points."""
    return float(self.forget_acc[-1] - self.forget_acc[0])

  def to_dict(self) -> dict:
    """JSON-able: lists of floats, None for what was not measured, ``rebound`` added."""
    out: dict[str, Any] = {"steps": [int(s) for s in self.steps]}
    for name in ("forget_acc", "retain_acc", "test_acc", "F", "lira_auc"):
      value = getattr(self, name)
      out[name] = None if value is None else [float(v) for v in value]
    out.update(rebound=self.rebound, source=self.source,
               relearn_examples=int(self.relearn_examples),
               forget_indices=[int(i) for i in self.forget_indices],
               seconds=float(self.seconds), compile_seconds=float(self.compile_seconds),
               reference=None if self.reference is None else self.reference.to_dict())
    return out

  @classmethod
  def from_dict(cls, values: dict) -> RelearnResult:
    """The result ``to_dict`` wrote (without the model)."""
    return cls(steps=np.asarray(values["steps"], np.int64),
               forget_acc=np.asarray(values["forget_acc"], np.float64),
               **{k: _array(values.get(k)) for k in ("retain_acc", "test_acc", "F",
                                                     "lira_auc")},
               reference=(None if values.get("reference") is None
                          else cls.from_dict(values["reference"])),
               source=values["source"], relearn_examples=int(values["relearn_examples"]),
               forget_indices=tuple(values.get("forget_indices", ())),
               seconds=float(values["seconds"]),
               compile_seconds=float(values["compile_seconds"]))


# ---------------------------------------------------------------------------------------------
# The relearn set.


def forget_subset(num_forget: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(relearned, held out): sorted indices into D_f of ``count`` examples drawn uniformly
  without replacement by ``numpy.random.default_rng(seed)`` (the first ``count`` of its
  permutation of ``num_forget``), and of the others. Raises unless 1 <= count < num_forget."""
  check_number("forget_examples", count, low=1, integer=True)
  if count >= num_forget:
    raise InvalidArgument(f"forget_examples: expected fewer than the {num_forget} forget "
                          f"examples, so that some are held out to read the forget accuracy on, "
                          f"got {count}")
  order = np.random.default_rng(seed).permutation(num_forget)
  return np.sort(order[:count]), np.sort(order[count:])


def _sets(forget, retain, test, config: RelearnConfig, seed: int):
  """(relearn set (images, labels), forget evaluation set, {name: set} to read, indices of the
  relearned D_f examples)."""
  forget = check_pair("forget", forget)
  retain = None if retain is None else check_pair("retain", retain)
  test = None if test is None else check_pair("test", test)
  used: np.ndarray = np.zeros(0, np.int64)
  if config.source == "retain":
    if retain is None:
      raise InvalidArgument("retain: source='retain' relearns on D_r: pass retain=(inputs, "
                            "labels)")
    relearn_set, forget_eval = retain, forget
  else:
    images, labels = np.asarray(forget[0]), np.asarray(forget[1])
    used, held = forget_subset(len(labels), config.forget_examples, seed)
    relearn_set, forget_eval = (images[used], labels[used]), (images[held], labels[held])
  sets = {"forget": forget_eval}
  sets.update({name: s for name, s in (("retain", retain), ("test", test)) if s is not None})
  return relearn_set, sets, used


# ---------------------------------------------------------------------------------------------
# The training program.


def _optimizer(config: RelearnConfig):
  return make_optimizer(config, epochs=1, steps_per_epoch=max(config.steps, 1))


def _chunk_fn(apply: Apply, config: RelearnConfig, num_examples: int, preprocess: Preprocess,
              mesh, length: int):
  """``chunk(state, data) -> (state, losses (length,))``: ``length`` steps, one ``lax.scan``
  of ``train.make_step``; traceable (the callers jit it). Step s draws from
  ``fold_in(state.rng, s)`` (module docstring)."""
  step = train.make_step(train.supervised_loss(apply))
  batch = min(config.batch_size, num_examples)
  constrain = batch % parallel.data_shards(mesh) == 0

  def chunk(state: train.TrainState, data: dict):
    def body(state, _):
      key = jax.random.fold_in(state.rng, state.step)
      draw_key, aug_key, loss_key = jax.random.split(key, 3)
      if batch == num_examples:
        chosen = dict(data)
      else:
        idx = jax.random.permutation(draw_key, num_examples)[:batch]
        chosen = {name: value[idx] for name, value in data.items()}
      chosen["images"] = preprocess(aug_key, chosen["images"])
      chosen["valid"] = jnp.ones((batch,), bool)
      if constrain:
        chosen = parallel.split_batch(chosen, mesh)
      state, metrics = step(state, chosen, loss_key)
      return state, metrics["loss"]
    return jax.lax.scan(body, state, None, length=length)

  return chunk


def _repeated(one_step, times: int, axis: int):
  """``fn(state, data) -> (state, losses)``: ``one_step`` called ``times`` times, the losses
  concatenated along ``axis`` (the steps' axis)."""
  def run(state, data):
    losses = []
    for _ in range(times):
      state, loss = one_step(state, data)
      losses.append(loss)
    return state, jnp.concatenate(losses, axis=axis)
  return run


def _compiled(programs: dict | None, apply, config: RelearnConfig, preprocess, mesh, state,
              data: dict, *, vectorized: bool):
  """(the compiled chunk for ``state`` and ``data``, seconds it took to compile): jitted with
  the state donated, ``vmap``-ed over stacked states when ``vectorized``, compiled ahead
  (``train.compile_ahead``); taken from ``programs`` when it holds it (0 seconds)."""
  leaves, structure = jax.tree.flatten((state, data))
  key = (apply, config, preprocess, mesh, vectorized, structure,
         tuple((np.shape(x), str(jnp.result_type(x))) for x in leaves))
  if programs is not None and key in programs:
    return programs[key], 0.0
  between = config.steps // config.intervals
  # the CPU policy (runtime.loops): a host loop over one jitted step, convolution gradients
  # kept out of while loops; elsewhere the steps between two readings are one scan
  host = loops.resolve_loop("auto") == "python"
  fn = _chunk_fn(apply, config, int(data["labels"].shape[0]), preprocess, mesh,
                 1 if host else between)
  if vectorized:
    fn = jax.vmap(fn, in_axes=(0, None))
  compiled, seconds = train.compile_ahead(jax.jit(fn, donate_argnums=(0,)), state, data)
  if host:
    compiled = _repeated(compiled, between, axis=1 if vectorized else 0)
  if programs is not None:
    programs[key] = compiled
  return compiled, seconds


def _check_losses(losses, config: RelearnConfig, done: int, who: str) -> None:
  values = np.asarray(losses)
  if not np.all(np.isfinite(values)):
    length = config.steps // config.intervals
    raise NonFiniteError(f"{who}: non-finite loss in steps {done + 1}..{done + length} of "
                         f"{config.steps} (likely cause: lr = {config.lr:g} is too large); "
                         "relearning stopped")


def _accuracy(apply, params, model_state, pair, batch_size, preprocess, mesh) -> float:
  return evaluate.accuracy_and_loss(apply, params, model_state, pair[0], pair[1], batch_size,
                                    preprocess, mesh=mesh)[0]


def relearn(apply: Apply, params: PyTree, model_state: PyTree, *, forget, retain=None,
            test=None, config: RelearnConfig | None = None, seed: int = 0,
            preprocess: Preprocess = default_preprocess, eval_batch_size: int = 512,
            mesh=None, progress: bool = False, programs: dict | None = None) -> RelearnResult:
  """The relearn attack on one model (module docstring).

  Args:
    apply: the model (``mcu_jax.models`` adapter).
    params, model_state: the model to attack (left unchanged).
    forget: (inputs (N_f, ...), labels (N_f,)), D_f.
    retain: D_r, the relearn set with ``source="retain"``; its accuracy is read when given.
    test: a test set whose accuracy is read, optional.
    config: ``RelearnConfig`` (None: its defaults).
    seed: draws the forget subset (``forget_subset``) and every step's key.
    preprocess: inputs -> model inputs; called with a key in training (augmentation), with
      None when reading accuracies.
    eval_batch_size: the readings' inference batch.
    mesh: ``parallel.resolve_mesh`` (None: all devices); batches are split over it when their
      size divides.
    progress: a progress bar over the readings.
    programs: a dict the caller keeps across calls that relearn models of one structure with
      one config (the pipeline's four models): the compiled steps are made on the first call
      and reused, so later calls compile nothing (their ``compile_seconds`` is 0).

  Returns ``RelearnResult`` with ``params``/``model_state`` the model after K steps.
  """
  config = RelearnConfig() if config is None else _check_config(config)
  check_number("seed", seed, integer=True)
  relearn_set, sets, used = _sets(forget, retain, test, config, seed)
  mesh = parallel.resolve_mesh(mesh)
  data = parallel.replicate({"images": relearn_set[0], "labels": relearn_set[1]}, mesh)
  tx = _optimizer(config)
  state = parallel.replicate(train.TrainState.create(
      params=params, model_state=model_state, tx=tx, rng=jax.random.PRNGKey(seed)), mesh)
  read = lambda s: {name: _accuracy(apply, s.params, s.model_state, pair, eval_batch_size,
                                    preprocess, mesh) for name, pair in sets.items()}
  readings = [read(state)]
  seconds = compile_seconds = 0.0
  if config.steps:
    chunk, compile_seconds = _compiled(programs, apply, config, preprocess, mesh, state, data,
                                       vectorized=False)
    length = config.steps // config.intervals
    for k in tqdm.trange(config.intervals, desc="relearn", disable=not progress, leave=False):
      signals.check(f"relearn steps {k * length + 1}..{(k + 1) * length}")
      start = time.perf_counter()
      state, losses = chunk(state, data)
      losses = jax.device_get(losses)         # waits for the steps: the timing is honest
      seconds += time.perf_counter() - start
      _check_losses(losses, config, k * length, "relearn")
      readings.append(read(state))
  return RelearnResult(
      steps=config.checkpoints, **_curves(readings), source=config.source,
      relearn_examples=len(relearn_set[1]), forget_indices=tuple(int(i) for i in used),
      seconds=seconds, compile_seconds=compile_seconds, params=state.params,
      model_state=state.model_state)


def _check_config(config) -> RelearnConfig:
  if not isinstance(config, RelearnConfig):
    raise InvalidArgument(f"config: expected a RelearnConfig, got {type(config).__name__}")
  return config


def _curves(readings: list[dict]) -> dict:
  """{forget_acc, retain_acc, test_acc}: (C,) arrays of the readings (None where not read)."""
  return {f"{name}_acc": (np.array([r[name] for r in readings], np.float64)
                          if name in readings[0] else None)
          for name in ("forget", "retain", "test")}


# ---------------------------------------------------------------------------------------------
# Populations.


def relearn_population(apply: Apply, tested: Population, reference: Population, *, forget,
                       retain=None, test=None, config: RelearnConfig | None = None,
                       seed: int = 0, preprocess: Preprocess = default_preprocess,
                       eval_batch_size: int = 512, splits: int = model_level.SPLITS,
                       vectorize: bool | None = None, mesh=None,
                       progress: bool = False) -> RelearnResult:
  """The relearn attack on every member of ``tested`` and of the retrained ``reference``
  population (module docstring); both need at least 4 members (U-LiRA's splits).

  Member i of either population relearns with the key of ``relearn(..., seed)``'s step keys
  folded with i: ``fold_in(PRNGKey(seed), i)`` seeds it, so member i of both sees the same
  batches; the forget subset (``source="forget"``) is the same for all. ``vectorize``: vmap
  the members (None: the CPU policy, ``loops.resolve_vectorize``); either way every member
  runs one compiled program. ``splits``: U-LiRA's random splits (their seed is ``seed``).

  Returns ``RelearnResult``: the mean accuracies of ``tested``, its F and LiRA AUC against the
  relearned ``reference`` at every reading, and ``reference`` the reference's own mean curve.
  """
  config = RelearnConfig() if config is None else _check_config(config)
  check_number("seed", seed, integer=True)
  for name, pop in (("tested", tested), ("reference", reference)):
    if not isinstance(pop, Population) or len(pop) < 4:
      raise InvalidArgument(f"{name}: expected a Population of at least 4 members (U-LiRA "
                            f"splits each in halves), got {getattr(pop, 'seeds', pop)!r}")
  relearn_set, sets, used = _sets(forget, retain, test, config, seed)
  mesh = parallel.resolve_mesh(mesh)
  data = parallel.replicate({"images": relearn_set[0], "labels": relearn_set[1]}, mesh)
  tx = _optimizer(config)
  n = len(tested)
  base = jax.random.PRNGKey(seed)
  states = [train.TrainState.create(params=p, model_state=s, tx=tx,
                                    rng=jax.random.fold_in(base, i))
            for pop in (tested, reference) for i in range(len(pop)) for p, s in [pop.member(i)]]
  host_sets = {name: (np.asarray(x), np.asarray(y)) for name, (x, y) in sets.items()}
  readings = [_read_population(apply, states, host_sets, n, eval_batch_size, preprocess,
                               splits, seed, mesh)]
  seconds = compile_seconds = 0.0
  if config.steps:
    length = config.steps // config.intervals
    vectorized = loops.resolve_vectorize(vectorize)
    if vectorized:
      stacked = parallel.replicate(stack(states), mesh)
      chunk, compile_seconds = _compiled(None, apply, config, preprocess, mesh, stacked, data,
                                         vectorized=True)
    else:
      states = [parallel.replicate(s, mesh) for s in states]
      chunk, compile_seconds = _compiled(None, apply, config, preprocess, mesh, states[0], data,
                                         vectorized=False)
    for k in tqdm.trange(config.intervals, desc="relearn population", disable=not progress,
                         leave=False):
      start = time.perf_counter()
      if vectorized:
        signals.check(f"relearn steps {k * length + 1}..{(k + 1) * length}")
        stacked, losses = chunk(stacked, data)
        losses = jax.device_get(losses)
        states = [jax.tree.map(lambda leaf, i=i: leaf[i], stacked) for i in range(len(states))]
      else:
        out = []
        for i, state in enumerate(states):
          signals.check(f"relearn member {i}, steps {k * length + 1}..{(k + 1) * length}")
          out.append(chunk(state, data))
        states = [s for s, _ in out]
        losses = jax.device_get([loss for _, loss in out])
      seconds += time.perf_counter() - start
      _check_losses(losses, config, k * length, "relearn population")
      readings.append(_read_population(apply, states, host_sets, n, eval_batch_size,
                                       preprocess, splits, seed, mesh))
  common: dict[str, Any] = dict(
      steps=config.checkpoints, source=config.source, relearn_examples=len(relearn_set[1]),
      forget_indices=tuple(int(i) for i in used), seconds=seconds,
      compile_seconds=compile_seconds)
  reference_curve = RelearnResult(**_curves([r["reference"] for r in readings]), **common)
  return RelearnResult(**_curves([r["tested"] for r in readings]),
                       F=np.array([r["F"] for r in readings]),
                       lira_auc=np.array([r["lira_auc"] for r in readings]),
                       reference=reference_curve, **common)


def _read_population(apply, states, sets, n, batch_size, preprocess, splits, seed,
                     mesh) -> dict:
  """Mean accuracies of the tested (states[:n]) and reference (states[n:]) members on every
  set, and F and the LiRA AUC of the tested members' confidences on D_f against the
  reference's."""
  pop = Population(params=stack([s.params for s in states]),
                   model_state=stack([s.model_state for s in states]),
                   seeds=tuple(range(len(states))))
  out: dict = {"tested": {}, "reference": {}}
  for name, (x, y) in sets.items():
    signals.check(f"reading the relearned members on {name}")
    logits = population_logits(apply, pop, x, batch_size=batch_size, preprocess=preprocess,
                               mesh=mesh)
    acc = 100.0 * np.mean(np.argmax(logits, axis=-1) == y[None], axis=1)
    out["tested"][name], out["reference"][name] = float(acc[:n].mean()), float(acc[n:].mean())
    if name == "forget":
      confs = forget_quality.logit_scaled_confidence(logits, y)
      out["F"] = forget_quality.forget_score(confs[:n], confs[n:]).score
      out["lira_auc"] = model_level.lira_splits(confs[:n], confs[n:], splits=splits,
                                                seed=seed).mean
  return out


__all__ = ["RelearnConfig", "RelearnResult", "SOURCES", "forget_subset", "relearn",
           "relearn_population"]
