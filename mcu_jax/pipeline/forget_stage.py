"""``mcu-jax forget-quality``: forgetting quality over model populations, in a run directory.

From the run's configuration and split it makes populations of ``forget_quality.models``
members each (``mcu_jax.population``): the originals on D, two retrained populations on D_r
(A, the reference, and B, for the retrain-vs-retrain floor), and for every method its base
population (the method applied to each original) and its MCU population (``unlearn_curve`` on
each pair). Members are kept under ``forget_quality/ckpt`` as they are made, so an interrupted
command resumes member by member; a configuration change makes new ones. An MCU member also
keeps its sweep, its targets and (``<method>+mcu-curves``) its trained curve.

Every member's BatchNorm statistics are recomputed on D_r (as every row of the run's report)
and its logit-scaled confidence on each forget example read off; they are written to
``forget_quality/confidences.npz`` (float32 (N, |D_f|) per population: ``originals``,
``retrain_a``, ``retrain_b``, ``<method>``, ``<method>+mcu``), and every score is computed from
exactly those values. The unit of every statistic is the model
(``mcu_jax.forget_quality.model_level``): each population is scored against retrained
population A with 95 % bootstrap intervals over models (F, the challenge's score, U-LiRA's AUC
over ``forget_quality.splits`` random splits); the floor is retrained population B scored the
same way; base and MCU are compared by the difference of F, of the challenge score and of the
AUC with a paired bootstrap interval and a paired permutation test over the (base_i, mcu_i)
pairs. The per-example Wilcoxon test stays in the record as a description only. Writes
``forget_quality.json`` (the record, per-model accuracies included), ``forget_quality.md`` and
``forget_quality.png``.
"""
from __future__ import annotations

import dataclasses
import functools
import time

import jax
import numpy as np

from mcu_jax import forget_quality, io, models, population
from mcu_jax.forget_quality import model_level
from mcu_jax.pipeline import config as config_lib
from mcu_jax.pipeline import context, report, rundir
from mcu_jax.pipeline.context import Context
from mcu_jax.pipeline.rundir import Stage
from mcu_jax.runtime import signals, train

SEED_OFFSETS = {"originals": 10_000, "retrain_a": 20_000, "retrain_b": 30_000,
                "base": 40_000, "mcu": 60_000}
COMMON = ("dataset", "model", "model_options", "seed", "augment")
CONFIDENCES = "forget_quality/confidences.npz"


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
  """``unlearn_curve``'s options from the run's configuration
  (``config.unlearn_curve_kwargs``), less the seed: each member has its own."""
  kwargs = config_lib.unlearn_curve_kwargs(ctx.config, scenario=ctx.split.kind,
                                           preprocess=ctx.preprocess_train, mesh=ctx.mesh,
                                           progress=ctx.progress)
  del kwargs["seed"]
  return kwargs


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
    signals.check(f"the {name} population")
    pops[name] = make(store=store)
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
    timed(method, functools.partial(
        population.unlearn_population, method, pops["originals"], apply=apply,
        train_set=data_set, split=split, seeds=_seeds(ctx, "base", k), config=options,
        init=init, **common), RunStore(ctx, method, keys))
    if ctx.config.forget_quality.mcu:
      mcu_keys = keys + ("mask", "curve", "sweep", "eval_batch_size")
      timed(f"{method}+mcu", functools.partial(
          population.mcu_population, apply, pops["originals"], pops[method], forget=forget,
          retain=retain, test=test, seeds=_seeds(ctx, "mcu", k),
          curve_store=RunStore(ctx, f"{method}+mcu-curves", mcu_keys), **_mcu_options(ctx)),
          RunStore(ctx, f"{method}+mcu", mcu_keys))
  return pops, walls


def evaluate_population(ctx: Context, pop: population.Population, sets: dict) -> dict:
  """Every member, BatchNorm recalibrated as every stage does (``Context.recalibrate``),
  through ``population.population_logits`` on the run's mesh: logit-scaled confidences on D_f
  (N, E) and accuracies (N,) in percent on every set of ``sets`` ({name: (inputs, labels)})."""
  states = []
  for i in range(len(pop)):
    signals.check(f"recalibrating member {i}")
    states.append(ctx.recalibrate(*pop.member(i)))
  recalibrated = dataclasses.replace(pop, model_state=population.stack(states))
  out = {}
  for name, (x, y) in sets.items():
    signals.check(f"evaluating the members on {name}")
    logits = population.population_logits(ctx.apply, recalibrated, x,
                                           batch_size=ctx.config.eval_batch_size,
                                           preprocess=ctx.preprocess_eval, mesh=ctx.mesh)
    hits = np.sum(np.argmax(logits, axis=-1) == np.asarray(y)[None], axis=1)
    out[f"{name}_acc"] = 100.0 * hits.astype(np.float64) / len(y)
    if name == "forget":
      out["confs"] = forget_quality.logit_scaled_confidence(logits, y)
  return out


def _settings(ctx: Context) -> dict:
  c = ctx.config.forget_quality
  return {"resamples": c.resamples, "splits": c.splits, "seed": ctx.config.seed}


def _accuracies(evaluated: dict) -> np.ndarray:
  """(N, 2): each member's retain and test accuracy in percent."""
  return np.stack([evaluated["retain_acc"], evaluated["test_acc"]], axis=1)


def _score(ctx: Context, tested: dict, reference: dict, compared: dict | None = None,
           side: str = "") -> dict:
  """F, the challenge's score and U-LiRA (K random splits) of population ``tested`` against
  ``reference``, each with a 95 % bootstrap interval over models
  (``forget_quality.model_level.population_scores``; for one side, "base" or "mcu", of a
  comparison ``compared``, its resamples' intervals), the per-example eps and the mean
  accuracies."""
  f = forget_quality.forget_score(tested["confs"], reference["confs"])
  if compared is None:
    scores = model_level.population_scores(
        tested["confs"], reference["confs"], tested_acc=_accuracies(tested),
        reference_acc=_accuracies(reference), **_settings(ctx))
  else:
    splits = model_level.lira_splits(tested["confs"], reference["confs"],
                                     splits=ctx.config.forget_quality.splits,
                                     seed=ctx.config.seed)
    scores = {key: {"value": compared[key][side], "ci95": compared[key][f"{side}_ci95"]}
              for key in ("F", "challenge", "lira_auc")}
    scores["lira_auc"].update(splits.to_dict())
    scores["resamples"] = compared["resamples"]
  auc = scores["lira_auc"]
  mean = {k: float(np.mean(tested[k])) for k in ("retain_acc", "test_acc", "forget_acc")}
  return {"F": f.score, "F_ci95": scores["F"]["ci95"], "epsilons": f.epsilons,
          "challenge": scores["challenge"]["value"],
          "challenge_ci95": scores["challenge"]["ci95"],
          "lira_auc": auc["value"], "lira_auc_ci95": auc["ci95"], "lira_auc_sd": auc["sd"],
          "lira_aucs": auc["aucs"], "resamples": scores["resamples"], **mean}


def _per_example(base: np.ndarray, mcu: np.ndarray) -> dict:
  """Per-example eps, base minus MCU: a description of where MCU moved the examples. Not a
  test of MCU: every example is scored by the same models (the test is ``vs_base``)."""
  from scipy import stats
  diff = np.asarray(base) - np.asarray(mcu)
  out = {"note": "description over examples, not a test (the unit is the model: see vs_base)",
         "examples": int(diff.size), "mean_eps_base": float(np.mean(base)),
         "mean_eps_mcu": float(np.mean(mcu)), "mcu_lower": int(np.sum(diff > 0)),
         "mcu_higher": int(np.sum(diff < 0)), "wilcoxon_p_examples": 1.0}
  if np.any(diff != 0):
    out["wilcoxon_p_examples"] = float(stats.wilcoxon(diff).pvalue)
  return out


def _vs_base(ctx: Context, base: dict, mcu: dict, reference: dict) -> dict:
  """Base vs base+MCU at the model level (``model_level.compare``): MCU minus base for F, the
  challenge's score and the LiRA AUC, paired bootstrap intervals and paired permutation
  p-values over the N (base_i, mcu_i) pairs."""
  return model_level.compare(
      base["confs"], mcu["confs"], reference["confs"], base_acc=_accuracies(base),
      mcu_acc=_accuracies(mcu), reference_acc=_accuracies(reference),
      permutations=ctx.config.forget_quality.permutations, **_settings(ctx))


def _write_confidences(ctx: Context, evaluated: dict) -> str:
  """``RUN/forget_quality/confidences.npz``: per population, the float32 (N, |D_f|)
  logit-scaled confidences every score was computed from."""
  path = ctx.run_dir / CONFIDENCES
  arrays = {name: ev["confs"].astype(np.float32) for name, ev in evaluated.items()}
  ctx.run.write_file(lambda p: io.atomic_write(p, lambda f: np.savez(f, **arrays), "wb"),
                     path)
  return CONFIDENCES


def _markdown(scores: dict, sizes: dict, *, methods, n: int, kind: str, forget_size: int,
              settings: dict, batch_stats: bool = True) -> str:
  """The report: every population's scores with their intervals, the floor beside them, the
  model-level comparisons of base and MCU, the per-example description, the populations."""
  interval = lambda v, ci: f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
  rows = []
  for name in ["floor"] + [m for method in methods for m in (method, f"{method}+mcu")
                           if m in scores]:
    s = scores[name]
    rows.append({"population": "retrain B (the floor)" if name == "floor" else name,
                 "F [95% CI]": interval(s["F"], s["F_ci95"]),
                 "challenge [95% CI]": interval(s["challenge"], s["challenge_ci95"]),
                 "LiRA AUC [95% CI]": interval(s["lira_auc"], s["lira_auc_ci95"]),
                 "AUC sd over splits": f"{s['lira_auc_sd']:.3f}",
                 "RA": s["retain_acc"], "TA": s["test_acc"], "FA": s["forget_acc"],
                 "mean t": s.get("mean_t")})
  lines = [
      "# Forgetting quality over model populations", "",
      f"{n} models per population, {kind} forgetting, |D_f| = {forget_size}. Every population "
      "is scored against retrained population A; retrained population B scored the same way "
      "is the floor (what retraining itself gets). F: the NeurIPS 2023 unlearning challenge's "
      "forgetting quality (two draws of one distribution score about 0.2 with its empirical "
      f"rates; with N models eps has at most ln(N - 1) = {np.log(max(n - 1, 2)):.2f} as its "
      "largest finite value, so F resolves little below N = 64); the challenge score F x "
      "RA_U/RA_R x TA_U/TA_R; U-LiRA's ROC-AUC (0.5: indistinguishable), the mean over "
      f"{settings['splits']} random splits (half of each population fits, the other half is "
      "attacked), with its sd over the splits. Intervals: 95 %, bootstrap over models "
      f"({settings['resamples']} resamples; estimate -+ 1.96 bootstrap sd). RA, TA, FA in "
      "percent, the mean over the population, "
      + ("BatchNorm statistics recomputed on D_r." if batch_stats else
         "the model has no BatchNorm statistics (none recomputed)."), "",
      report.markdown_table(rows, list(rows[0]), floatfmt=".2f"), ""]
  compared = [(m, scores[f"{m}+mcu"]) for m in methods if f"{m}+mcu" in scores]
  if compared:
    lines += ["Base vs base + MCU at the model level (unit: the model pair i, which shares "
              "original i; n = N pairs). Difference = MCU minus base (F and the challenge "
              "score: higher is closer to retraining; AUC: lower is), 95 % paired bootstrap "
              "interval, two-sided paired permutation test swapping base_i and mcu_i:", ""]
    rows = []
    for method, s in compared:
      for key, label in (("F", "F"), ("lira_auc", "LiRA AUC"), ("challenge", "challenge")):
        c = s["vs_base"][key]
        rows.append({"comparison": f"{method} -> {method}+MCU", "score": label,
                     "base": c["base"], "MCU": c["mcu"], "difference": c["difference"],
                     "95% CI": f"[{c['ci95'][0]:.4f}, {c['ci95'][1]:.4f}]",
                     "p": (f"{c['p_value']:.3g} ({'exact, ' if c['exact'] else ''}"
                           f"{c['flips']} swaps)") if "p_value" in c else "-"})
    lines += [report.markdown_table(rows, list(rows[0]), floatfmt=".4f"), ""]
    for method, s in compared:
      d = s["per_example"]
      lines.append(f"Description, not a test: per example, {method} + MCU has a lower eps than "
                   f"{method} on {d['mcu_lower']} and a higher one on {d['mcu_higher']} of "
                   f"{d['examples']} forget examples (mean {d['mean_eps_base']:.2f} -> "
                   f"{d['mean_eps_mcu']:.2f}); the examples share their models, so a test "
                   f"over them (Wilcoxon p = {d['wilcoxon_p_examples']:.3g}) overstates the "
                   "evidence.")
  size_rows = [{"population": k, "models": v["models"], "wall s": v["wall_seconds"],
                "training s": v["seconds"]} for k, v in sizes.items()]
  lines += ["", "Populations (wall seconds of making each, compilation and for MCU the sweeps "
            "included; training seconds: the unlearning itself). Per-model confidences: "
            f"`{CONFIDENCES}`.", "",
            report.markdown_table(size_rows, list(size_rows[0]), floatfmt=".1f"), "",
            "![per-example epsilon](forget_quality.png)", ""]
  return "\n".join(lines)


def stage_forget_quality(ctx: Context, stage: Stage) -> dict:
  """The populations, their scores, the confidences, the report's markdown and plot, the
  record."""
  settings = ctx.config.forget_quality
  methods = list(settings.methods) or [ctx.config.unlearn.method]
  pops, walls = make_populations(ctx, methods)
  start = time.perf_counter()
  host = {name: (np.asarray(x), np.asarray(y)) for name, (x, y) in ctx.eval_sets().items()
          if name in ("forget", "retain", "test")}
  evaluated = {name: evaluate_population(ctx, pop, host) for name, pop in pops.items()}
  for ev in evaluated.values():     # scores from exactly the float32 values the file keeps
    ev["confs"] = ev["confs"].astype(np.float32).astype(np.float64)
  evaluate_seconds = time.perf_counter() - start
  confidences = _write_confidences(ctx, evaluated)
  reference = evaluated["retrain_a"]
  scores = {"floor": _score(ctx, evaluated["retrain_b"], reference)}
  for method in methods:
    signals.check(f"scoring {method}")
    if not settings.mcu:
      scores[method] = _score(ctx, evaluated[method], reference)
    else:
      mcu = f"{method}+mcu"
      compared = _vs_base(ctx, evaluated[method], evaluated[mcu], reference)
      scores[method] = _score(ctx, evaluated[method], reference, compared, "base")
      scores[mcu] = _score(ctx, evaluated[mcu], reference, compared, "mcu")
      scores[mcu]["mean_t"] = float(np.mean(pops[mcu].ts))
      scores[mcu]["ts"] = list(pops[mcu].ts)
      scores[mcu]["vs_base"] = compared
      scores[mcu]["per_example"] = _per_example(scores[method]["epsilons"],
                                                scores[mcu]["epsilons"])
  sizes = {name: {"models": len(pop), "wall_seconds": walls[name], "seconds": pop.seconds,
                  "seeds": list(pop.seeds),
                  **{k: evaluated[name][k].tolist()
                     for k in ("retain_acc", "test_acc", "forget_acc")}}
           for name, pop in pops.items()}
  statistics = {"resamples": settings.resamples, "permutations": settings.permutations,
                "splits": settings.splits, "seed": ctx.config.seed, "level": 0.95,
                "interval": "normal (estimate -+ 1.96 bootstrap sd)"}
  text = _markdown(scores, sizes, methods=methods, n=settings.models, kind=ctx.split.kind,
                   forget_size=len(ctx.split.forget), settings=statistics,
                   batch_stats=bool(jax.tree.leaves(pops["originals"].member(0)[1])))
  for name, write in (("forget_quality.md", lambda path: io.write_markdown(path, text)),
                      ("forget_quality.png", lambda path: report.plot_epsilons(
                          scores, methods, path=path))):
    ctx.run.write_file(write, ctx.run_dir / name)
  seconds = {"populations": float(sum(walls.values())), "evaluation": evaluate_seconds,
             "statistics": time.perf_counter() - start - evaluate_seconds}
  return context.finish(ctx, stage, {"models": settings.models, "methods": methods,
                                     "populations": sizes, "scores": scores, "table": text,
                                     "confidences": confidences, "statistics": statistics,
                                     "seconds": seconds})


__all__ = ["stage_forget_quality", "make_populations", "evaluate_population", "RunStore",
           "CONFIDENCES"]
