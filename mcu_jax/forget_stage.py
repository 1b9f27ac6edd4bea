"""``mcu-jax forget-quality``: forgetting quality over model populations, in a run directory.

From the run's configuration and split it makes populations of ``forget_quality.models``
members each (``mcu_jax.population``): the originals on D, two retrained populations on D_r
(A, the reference, and B, for the retrain-vs-retrain floor), and for every method its base
population (the method applied to each original) and its MCU population (``unlearn_curve`` on
each pair). Members are kept under ``forget_quality/ckpt`` as they are made, so an interrupted
command resumes member by member; a configuration change makes new ones.

Every member's BatchNorm statistics are recomputed on D_r (as every row of the run's report),
its logit-scaled confidence on each forget example read off, and each population scored against
retrained population A (``mcu_jax.forget_quality``): the challenge's F and final score, and
U-LiRA with the first halves of the population and of A fitting the Gaussians and their second
halves as targets. The floor is retrained population B scored the same way. Base and
MCU are compared example by example (Wilcoxon signed-rank on the per-example epsilon).
Writes ``forget_quality.json`` (the record), ``forget_quality.md`` and ``forget_quality.png``.
"""
from __future__ import annotations

import functools
import time

import numpy as np

from mcu_jax import context, evaluate, forget_quality, models, population, report
from mcu_jax import rundir, train
from mcu_jax.context import Context
from mcu_jax.rundir import Stage

SEED_OFFSETS = {"originals": 10_000, "retrain_a": 20_000, "retrain_b": 30_000,
                "base": 40_000, "mcu": 60_000}
COMMON = ("dataset", "model", "model_options", "seed", "augment")


class RunStore:
  """A population's members in the run directory: ``<path>/<i>`` with ``<path>/<i>.json``.

  Each member's record keeps the wall seconds since the member before it was kept (the first
  one's include compilation), so ``wall_seconds`` is the time the population took to make,
  however many invocations made it.
  """

  def __init__(self, ctx: Context, name: str, keys: tuple[str, ...]):
    section = rundir.config_section(ctx.config.to_dict(), keys)
    self.run = ctx.run
    self.path = f"forget_quality/ckpt/{name}-{rundir.digest(section)[:8]}"
    self.walls: dict[int, float] = {}
    self._since = time.perf_counter()

  @property
  def wall_seconds(self) -> float:
    return float(sum(self.walls.values()))

  def load(self, i, like):
    meta = self.run.path / f"{self.path}/{i}.json"
    if not meta.exists():
      return None
    info = self.run.read(f"{self.path}/{i}")
    tree = self.run.load_tree(f"{self.path}/{i}", {"params": like[0], "model_state": like[1]},
                              info["digest"])
    self.walls[i] = info.get("wall_seconds", 0.0)
    self._since = time.perf_counter()
    return tree["params"], tree["model_state"], info

  def save(self, i, params, model_state, info):
    digest = self.run.save_tree(f"{self.path}/{i}", {"params": params,
                                                      "model_state": model_state})
    now = time.perf_counter()
    self.walls[i] = now - self._since
    self.run.write(f"{self.path}/{i}", {**info, "digest": digest,
                                        "wall_seconds": self.walls[i]})
    self._since = time.perf_counter()


def _seeds(ctx: Context, kind: str, k: int = 0) -> list[int]:
  base = ctx.config.seed + SEED_OFFSETS[kind] + 1000 * k
  return [base + i for i in range(ctx.config.forget_quality.models)]


def _mcu_options(ctx: Context) -> dict:
  """``unlearn_curve``'s options from the run's configuration (as the stages use them)."""
  c = ctx.config
  return dict(scenario=ctx.split.kind, mask=c.mask.enabled, k=c.mask.k, kr=c.mask.kr,
              beta=c.curve.beta, beta_low=c.curve.beta_low, beta_high=c.curve.beta_high,
              train=c.curve.train, epochs=c.curve.epochs, optimizer=c.curve.optim(),
              batch_size=c.curve.batch_size, retain_ratio=c.curve.retain_ratio,
              num_bends=c.curve.num_bends, kind=c.curve.kind, points=c.sweep.points,
              t_search=tuple(c.sweep.t_search), recalibrate_on=c.sweep.recalibrate_on,
              chunk_size=c.sweep.chunk_size, eval_batch_size=c.eval_batch_size,
              precision=c.curve.precision, preprocess=ctx.preprocess_train, mesh=ctx.mesh)


def make_populations(ctx: Context, methods: list[str]) -> tuple[dict, dict]:
  """({name: Population}, {name: wall seconds}) of every population the scores need."""
  apply, data_set, split = ctx.apply, ctx.dataset.train, ctx.split
  init = functools.partial(models.init_model, ctx.module,
                           input_shape=(1,) + data_set.images.shape[1:])
  common = dict(preprocess=ctx.preprocess_train, mesh=ctx.mesh, progress=ctx.progress)
  forget, retain = ctx.arrays(split.forget), ctx.arrays(split.retain)
  loss = train.supervised_loss(apply)
  pops, walls = {}, {}

  def timed(name, make, store):
    pops[name] = make(store)
    walls[name] = store.wall_seconds
    ctx.log(f"[forget-quality] {name}: {len(pops[name])} models, {walls[name]:.1f} s")

  retrain_config = ctx.config.retrain or ctx.config.train
  timed("originals", lambda store: population.train_population(
      loss, init, {"images": data_set.images, "labels": data_set.labels},
      config=ctx.config.train, seeds=_seeds(ctx, "originals"), desc="originals", store=store,
      **common), RunStore(ctx, "originals", COMMON + ("train",)))
  for name in ("retrain_a", "retrain_b"):
    timed(name, lambda store, name=name: population.train_population(
        loss, init, {"images": retain[0], "labels": retain[1]}, config=retrain_config,
        seeds=_seeds(ctx, name), desc=name, store=store, **common),
        RunStore(ctx, name, COMMON + ("forget", "train", "retrain")))
  test = tuple(np.asarray(a) for a in ctx.eval_sets()["test"])   # class: the other classes
  for k, method in enumerate(methods):
    options = ctx.config.unlearn.options if method == ctx.config.unlearn.method else None
    keys = COMMON + ("forget", "train", "unlearn")
    timed(method, lambda store: population.unlearn_population(
        method, pops["originals"], apply=apply, train_set=data_set, split=split,
        seeds=_seeds(ctx, "base", k), config=options, init=init, store=store, **common),
        RunStore(ctx, method, keys))
    if ctx.config.forget_quality.mcu:
      timed(f"{method}+mcu", lambda store: population.mcu_population(
          apply, pops["originals"], pops[method], forget=forget, retain=retain, test=test,
          seeds=_seeds(ctx, "mcu", k), progress=ctx.progress, store=store,
          **_mcu_options(ctx)),
          RunStore(ctx, f"{method}+mcu", keys + ("mask", "curve", "sweep", "eval_batch_size")))
  return pops, walls


def _evaluate(ctx: Context, pop: population.Population, sets: dict) -> dict:
  """Per member, BatchNorm recalibrated as every stage does (``Context.recalibrate``):
  logit-scaled confidences on D_f (N, E) and accuracies (N,) in percent on every set."""
  out = {"confs": [], **{f"{n}_acc": [] for n in sets}}
  for i in range(len(pop)):
    params, state = pop.member(i)
    state = ctx.recalibrate(params, state)
    logits = evaluate.predict_logits(ctx.apply, params, state, sets["forget"][0],
                                     ctx.config.eval_batch_size, ctx.preprocess_eval)
    out["confs"].append(forget_quality.logit_scaled_confidence(logits, sets["forget"][1]))
    for name, (x, y) in sets.items():
      out[f"{name}_acc"].append(evaluate.accuracy_and_loss(
          ctx.apply, params, state, x, y, ctx.config.eval_batch_size, ctx.preprocess_eval)[0])
  return {k: np.asarray(v) for k, v in out.items()}


def _score(tested: dict, reference: dict) -> dict:
  """F, the challenge's score and U-LiRA of population ``tested`` against ``reference``.

  LiRA fits its Gaussians on the first halves of both populations and attacks their second
  halves (``tested``'s as unlearned, ``reference``'s as retrained): no model is both fitted
  and attacked.
  """
  half_t, half_r = len(tested["confs"]) // 2, len(reference["confs"]) // 2
  f = forget_quality.forget_score(tested["confs"], reference["confs"])
  targets = np.concatenate([tested["confs"][half_t:], reference["confs"][half_r:]])
  labels = np.r_[np.ones(len(tested["confs"]) - half_t, bool),
                 np.zeros(len(reference["confs"]) - half_r, bool)]
  attack = forget_quality.lira(targets, tested["confs"][:half_t], reference["confs"][:half_r],
                               labels)
  mean = {k: float(np.mean(tested[k])) for k in ("retain_acc", "test_acc", "forget_acc")}
  return {"F": f.score, "epsilons": f.epsilons, "lira_auc": attack.auc,
          "lira_tpr_at_1pct_fpr": attack.tpr_at_1pct_fpr,
          "lira_balanced_accuracy": attack.balanced_accuracy,
          "challenge": forget_quality.challenge_score(
              f.score, mean["retain_acc"], float(np.mean(reference["retain_acc"])),
              mean["test_acc"], float(np.mean(reference["test_acc"]))), **mean}


def _paired(base: np.ndarray, mcu: np.ndarray) -> dict:
  """Per-example epsilon, base minus MCU: how often MCU is closer to retraining."""
  from scipy import stats
  diff = np.asarray(base) - np.asarray(mcu)
  out = {"examples": int(diff.size), "mean_eps_base": float(np.mean(base)),
         "mean_eps_mcu": float(np.mean(mcu)), "mcu_lower": int(np.sum(diff > 0)),
         "mcu_higher": int(np.sum(diff < 0)), "wilcoxon_p": 1.0}
  if np.any(diff != 0):
    out["wilcoxon_p"] = float(stats.wilcoxon(diff).pvalue)
  return out


def stage_forget_quality(ctx: Context, stage: Stage) -> dict:
  """The populations, their scores, the report's markdown and plot, the record."""
  settings = ctx.config.forget_quality
  methods = list(settings.methods) or [ctx.config.unlearn.method]
  pops, walls = make_populations(ctx, methods)
  host = {name: (np.asarray(x), np.asarray(y)) for name, (x, y) in ctx.eval_sets().items()
          if name in ("forget", "retain", "test")}
  evaluated = {name: _evaluate(ctx, pop, host) for name, pop in pops.items()}
  reference = evaluated["retrain_a"]
  scores = {"floor": _score(evaluated["retrain_b"], reference)}
  for method in methods:
    scores[method] = _score(evaluated[method], reference)
    if settings.mcu:
      scores[f"{method}+mcu"] = _score(evaluated[f"{method}+mcu"], reference)
      scores[f"{method}+mcu"]["mean_t"] = float(np.mean(pops[f"{method}+mcu"].ts))
      scores[f"{method}+mcu"]["paired"] = _paired(scores[method]["epsilons"],
                                                  scores[f"{method}+mcu"]["epsilons"])
  sizes = {name: {"models": len(pop), "wall_seconds": walls[name], "seconds": pop.seconds,
                  "seeds": list(pop.seeds)} for name, pop in pops.items()}
  text = report.forget_quality_markdown(scores, sizes, methods=methods,
                                        n=settings.models, kind=ctx.split.kind,
                                        forget_size=len(ctx.split.forget))
  for name, write in (("forget_quality.md", lambda path: report.write_markdown(path, text)),
                      ("forget_quality.png", lambda path: report.plot_epsilons(
                          scores, methods, path=path))):
    ctx.run.write_file(write, ctx.run_dir / name)
  return context.finish(ctx, stage, {"models": settings.models, "methods": methods,
                                     "populations": sizes, "scores": scores, "table": text})


__all__ = ["stage_forget_quality", "make_populations", "RunStore"]
