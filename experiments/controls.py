"""Controls for "MCU improves forgetting quality" (issue #24) on a forget-quality study.

    python3 experiments/controls.py --config experiments/configs/forget_quality_digits_n64.yaml
    python3 experiments/controls.py --config ... --controls a,c      # a subset
    python3 experiments/controls.py --config ... --report-only       # tables from the JSON

Runs after ``forget_quality.py`` on the same run directory: the originals, retrained
population A and the base method's populations (theta_o_i, theta_p_i) and its MCU population
(with each member's sweep and trained curve) are loaded, never retrained. Each control is a new
population of N members, member i made from the same theta_o_i and theta_p_i (kept under
``forget_quality/ckpt`` member by member, so a rerun resumes), scored as the stage scores
(``mcu_jax.forget_quality.model_level``: F, the challenge score and the K-split LiRA AUC with
95 % bootstrap intervals over models) and compared with base + MCU by the paired permutation
test over the N model pairs (MCU minus control):

* (a) equal compute without a curve, ``objective``: theta_p fine-tuned on MCU's own objective
  L(D_r) - beta L(D_f): the same mask, epochs, adaptive beta (the same targets), optimizer,
  batches (``curve_data`` with the MCU member's seed) and seed. It is the curve trainer on a
  polygonal chain whose middle bend starts at theta_p, trained at t = 1/2 only, where
  phi(1/2) is that bend: no curve, the same steps. ``more_epochs``: the base method itself for
  the curve's epochs more, from theta_p (a fresh schedule).
* (c) the t window, ``window_0.5`` and ``window_0``: the same trained curves and sweeps, t
  chosen by the same rule on [0.5, 1] and [0, 1] instead of [0.75, 1].
* (b) the quality of theta_p, ``epochs_<e>``: the base method at e epochs (not 10) and MCU on
  it; compared base vs base + MCU at each e.

Writes ``<results>/<study>/controls.{md,json}`` and ``confidences_controls.npz``. Every number
is stored per model (accuracies) or recomputable from the confidences.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import warnings
from pathlib import Path

import numpy as np

if __package__ in (None, ""):   # run as a file (python3 experiments/controls.py): the checkout
  sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments import study as S  # noqa: E402

CONTROLS = ("a", "c", "b")
SEED_OFFSETS = {"more_epochs": 80_000, "epochs": 90_000}   # (a)'s objective: MCU's own seeds
EPOCHS = (1, 2, 5)


def _objective_member(ctx, theta_o, state, theta_p, info, mask, seed):
  """(params, model_state, info) of control (a): theta_p trained on MCU's objective."""
  import jax

  from mcu_jax.core import beta as beta_lib
  from mcu_jax.core import curves
  from mcu_jax.runtime import mcu, train
  c = ctx.config.curve
  forget, retain = ctx.arrays(ctx.split.forget), ctx.arrays(ctx.split.retain)
  controls = jax.tree.map(lambda p: p[None], theta_p)
  chain = curves.Curve(start=theta_o, controls=controls, end=theta_p, kind="polychain")
  policy = beta_lib.AdaptiveBeta(targets=beta_lib.Targets(**info["targets"]), low=c.beta_low,
                                 high=c.beta_high)
  data = mcu.curve_data(forget, retain, c.retain_ratio, seed)
  steps = -(-len(data["labels"]) // c.batch_size)
  trainer = mcu.CurveTrainer(ctx.apply, chain, mask=mask, optimizer=c.optim(), beta=policy,
                             batch_size=c.batch_size, steps_per_epoch=steps, epochs=c.epochs,
                             preprocess=ctx.preprocess_train, t_range=(0.5, 0.5),
                             mesh=ctx.mesh)
  data = trainer.place(data)
  start = trainer.init(state, jax.random.PRNGKey(seed))
  trainer.compile(start, data)
  trained, history = train.fit(start, lambda s, d: trainer.epoch(s, d), data, c.epochs,
                               progress=False, desc="objective")
  params = curves.point(trainer.curve(trained), 0.5)
  return params, state, {"seconds": float(sum(h["seconds"] for h in history)),
                         "beta": [h.get("train_beta") for h in history]}


def _make(ctx, name, keys, make_member, n, like):
  """A control population from ``make_member(i)``, kept member by member."""
  from mcu_jax import population
  from mcu_jax.pipeline import forget_stage
  store = forget_stage.RunStore(ctx, name, keys)
  members, infos = [], []
  for i in range(n):
    held = store.load(i, like(i))
    if held is None:
      params, state, info = make_member(i)
      store.save(i, params, state, info)
      held = (params, state, info)
    members.append(held[:2])
    infos.append(held[2])
  pop = population.Population.of(members, list(range(n)), store.wall_seconds)
  return pop, infos, store.wall_seconds


def make_controls(ctx, method: str, which: set, log) -> dict:
  """{name: (Population, infos, wall seconds of making its members, what it is compared
  with)}."""
  import jax

  from mcu_jax import population
  from mcu_jax.core import beta as beta_lib
  from mcu_jax.core import choice, curves
  from mcu_jax.pipeline import forget_stage
  from mcu_jax.runtime import masks
  from mcu_jax.runtime import sweep as sweep_lib
  pops, _ = forget_stage.make_populations(ctx, [method])
  n = len(pops["originals"])
  keys = forget_stage.COMMON + ("forget", "train", "unlearn", "mask", "curve", "sweep",
                                "eval_batch_size")
  mcu_name = f"{method}+mcu"
  mcu_store = forget_stage.RunStore(ctx, mcu_name, keys)
  curve_store = forget_stage.RunStore(ctx, f"{mcu_name}-curves", keys)
  like = lambda i: pops["originals"].member(i)
  mcu_info = [mcu_store.run.read(f"{mcu_store.path}/{i}") for i in range(n)]
  out = {}
  if "a" in which:
    forget, retain = ctx.arrays(ctx.split.forget), ctx.arrays(ctx.split.retain)
    c = ctx.config

    def objective(i):
      theta_o, state = pops["originals"].member(i)
      found = masks.compute_mask(ctx.apply, theta_o, state, forget=forget, retain=retain,
                                 options=c.mask, batch_size=c.curve.batch_size,
                                 preprocess=ctx.preprocess_train, mesh=ctx.mesh)
      return _objective_member(ctx, theta_o, state, pops[method].member(i)[0], mcu_info[i],
                               found.mask, forget_stage._seeds(ctx, "mcu")[i])

    log("control (a): theta_p trained on MCU's objective without a curve")
    out["objective"] = (*_make(ctx, f"{method}+objective", keys, objective, n, like), mcu_name)
    log("control (a): the base method for the curve's epochs more")
    store = forget_stage.RunStore(ctx, f"{method}+more_epochs", keys)
    more = population.unlearn_population(
        method, pops[method], apply=ctx.apply, train_set=ctx.dataset.train, split=ctx.split,
        preprocess=ctx.preprocess_train, mesh=ctx.mesh, store=store,
        seeds=[ctx.config.seed + SEED_OFFSETS["more_epochs"] + i for i in range(n)],
        config={"epochs": ctx.config.curve.epochs})
    out["more_epochs"] = (more, [{}] * n, store.wall_seconds, mcu_name)
  if "c" in which:
    for lo in (0.5, 0.0):
      name = f"window_{lo:g}"

      def windowed(i, lo=lo):
        info = mcu_info[i]
        theta_o, state = pops["originals"].member(i)
        theta_p = pops[method].member(i)[0]
        controls_like = jax.tree.map(lambda p: p[None], theta_o)
        controls = curve_store.load(i, (controls_like, {}))[0]
        curve = curves.Curve(start=theta_o, controls=controls, end=theta_p,
                             kind=ctx.config.curve.kind)
        chosen = choice.select_t(sweep_lib.SweepResult.from_dict(info["sweep"]),
                                 beta_lib.Targets(**info["targets"]), t_search=(lo, 1.0),
                                 warn=False)
        return curves.point(curve, chosen.t), state, {"seconds": 0.0, "t": chosen.t}

      log(f"control (c): t chosen on [{lo:g}, 1]")
      pop, infos, wall = _make(ctx, f"{mcu_name}-{name}", keys, windowed, n, like)
      out[name] = (dataclasses.replace(pop, ts=tuple(x["t"] for x in infos)), infos, wall,
                   mcu_name)
  if "b" in which:
    test = tuple(np.asarray(a) for a in ctx.eval_sets()["test"])
    forget, retain = ctx.arrays(ctx.split.forget), ctx.arrays(ctx.split.retain)
    for e in EPOCHS:
      log(f"control (b): {method} at {e} epochs, and MCU on it")
      name = f"epochs_{e}"
      store = forget_stage.RunStore(ctx, f"{method}-{name}", keys)
      base = population.unlearn_population(
          method, pops["originals"], apply=ctx.apply, train_set=ctx.dataset.train,
          split=ctx.split, preprocess=ctx.preprocess_train, mesh=ctx.mesh, store=store,
          seeds=[ctx.config.seed + SEED_OFFSETS["epochs"] + 1000 * e + i for i in range(n)],
          config={"epochs": e})
      out[name] = (base, [{}] * n, store.wall_seconds, None)
      store = forget_stage.RunStore(ctx, f"{method}-{name}+mcu", keys)
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        curved = population.mcu_population(
            ctx.apply, pops["originals"], base, forget=forget, retain=retain, test=test,
            seeds=[s + 500 for s in base.seeds], store=store,
            **forget_stage._mcu_options(ctx))
      out[f"{name}+mcu"] = (curved, [{}] * n, store.wall_seconds, name)
  return pops, out


def _scores(ctx, evaluated, name, compared_with, settings):
  from mcu_jax.forget_quality import model_level
  from mcu_jax.pipeline import forget_stage
  ref = evaluated["retrain_a"]
  tested = evaluated[name]
  acc = forget_stage._accuracies
  out = {}
  if compared_with is None:
    out["population"] = model_level.population_scores(
        tested["confs"], ref["confs"], tested_acc=acc(tested), reference_acc=acc(ref),
        resamples=settings["resamples"], splits=settings["splits"], seed=settings["seed"])
  else:
    other = evaluated[compared_with]
    # "base" = the control (or the lower-epoch base), "mcu" = what it is compared with ...
    base, mcu = (tested, other) if not name.endswith("+mcu") else (other, tested)
    out["comparison"] = {
        "base": name if base is tested else compared_with,
        "mcu": compared_with if base is tested else name,
        **model_level.compare(base["confs"], mcu["confs"], ref["confs"], base_acc=acc(base),
                              mcu_acc=acc(mcu), reference_acc=acc(ref),
                              resamples=settings["resamples"],
                              permutations=settings["permutations"],
                              splits=settings["splits"], seed=settings["seed"])}
    side = "base" if base is tested else "mcu"      # the tested population's own intervals
    c = out["comparison"]
    out["population"] = {key: {"value": c[key][side], "ci95": c[key][f"{side}_ci95"]}
                         for key in ("F", "lira_auc", "challenge")}
  out["accuracy"] = {k: tested[k].tolist() for k in ("retain_acc", "test_acc", "forget_acc")}
  return out


def _fmt(c: dict, key: str) -> str:
  d = c[key]
  return (f"{d['difference']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}], "
          f"p = {d['p_value']:.3g}")


def render(record: dict) -> str:
  """The controls' markdown, from the JSON record only."""
  lines = [f"# Controls: {record['study']}, {record['method']}", "",
           f"N = {record['models']} models per population; scores against retrained population "
           f"A; intervals 95 %, bootstrap over models ({record['statistics']['resamples']} "
           f"resamples); p: two-sided paired permutation over the N model pairs "
           f"({record['statistics']['permutations']} random swaps). Difference = second minus "
           "first (F: higher is closer to retraining; AUC: lower is).", "",
           "| population | F [95% CI] | LiRA AUC [95% CI] | RA | TA | FA | mean t | wall s |",
           "|---|---|---|---:|---:|---:|---:|---:|"]
  for name, r in record["populations"].items():
    p = r["population"]
    mean = {k: np.mean(r["accuracy"][k]) for k in r["accuracy"]}
    lines.append(
        f"| {name} | {p['F']['value']:.3f} [{p['F']['ci95'][0]:.3f}, {p['F']['ci95'][1]:.3f}] "
        f"| {p['lira_auc']['value']:.3f} [{p['lira_auc']['ci95'][0]:.3f}, "
        f"{p['lira_auc']['ci95'][1]:.3f}] | {mean['retain_acc']:.2f} | {mean['test_acc']:.2f} "
        f"| {mean['forget_acc']:.2f} | "
        f"{'' if r.get('mean_t') is None else format(r['mean_t'], '.3f')} | "
        f"{r['wall_seconds']:.1f} |")
  lines += ["", "| first | second | F difference [95% CI], p | AUC difference [95% CI], p |",
            "|---|---|---|---|"]
  for r in record["populations"].values():
    c = r.get("comparison")
    if c:
      lines.append(f"| {c['base']} | {c['mcu']} | {_fmt(c, 'F')} | {_fmt(c, 'lira_auc')} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  p = S.parser(__doc__.split("\n")[0])
  p.add_argument("--controls", default="a,c,b", help="comma-separated: a, c, b")
  p.add_argument("--method", default="rl")
  p.add_argument("--resamples", type=int, default=1000)
  p.add_argument("--permutations", type=int, default=2000)
  args = p.parse_args(argv)
  study = S.setup(args)
  results = args.results_dir / study["name"]
  if args.report_only:
    record = json.loads((results / "controls.json").read_text())
    S.write_outputs(results, "controls", record, render(record))
    return 0
  which = set(args.controls.split(","))
  dataset = S.dataset_name(study, args.runs_dir)
  scenario = next(iter(study["scenarios"]))
  seed = study["seeds"][0]
  directory = S.seed_dir(args.runs_dir, study, scenario, seed) / "forget_quality"
  config = S.run_config(study, dataset, scenario, seed, study["methods"][0])
  ctx = S.context(config, directory, args.progress)
  from mcu_jax import io
  from mcu_jax.pipeline import forget_stage
  pops, made = make_controls(ctx, args.method, which, S.log)
  host = {name: (np.asarray(x), np.asarray(y)) for name, (x, y) in ctx.eval_sets().items()
          if name in ("forget", "retain", "test")}
  evaluated = {}
  for name in ("retrain_a", args.method, f"{args.method}+mcu"):
    evaluated[name] = forget_stage.evaluate_population(ctx, pops[name], host)
  for name, (pop, _, _, _) in made.items():
    evaluated[name] = forget_stage.evaluate_population(ctx, pop, host)
  for ev in evaluated.values():
    ev["confs"] = ev["confs"].astype(np.float32).astype(np.float64)
  settings = {"resamples": args.resamples, "permutations": args.permutations,
              "splits": config.forget_quality.splits, "seed": config.seed}
  record = {"study": study["name"], "config_file": study["config_file"],
            "method": args.method, "models": len(pops["originals"]),
            "command": " ".join(["python3", "experiments/controls.py", *(argv or sys.argv[1:])]),
            "statistics": settings, "populations": {}}
  previous = results / "controls.json"
  if previous.exists():
    old = json.loads(previous.read_text())
    record["populations"] = {name: {"command": old.get("command"), **entry}
                             for name, entry in old.get("populations", {}).items()}
  for name, (pop, _infos, wall, compared_with) in made.items():
    S.log(f"scoring {name}")
    entry = _scores(ctx, evaluated, name, compared_with, settings)
    entry["command"] = record["command"]
    entry["wall_seconds"] = wall
    entry["mean_t"] = None if pop.ts is None else float(np.mean(pop.ts))
    entry["ts"] = None if pop.ts is None else list(pop.ts)
    record["populations"][name] = entry
  results.mkdir(parents=True, exist_ok=True)
  confs = results / "confidences_controls.npz"
  arrays = dict(np.load(confs)) if confs.exists() else {}
  arrays.update({name: evaluated[name]["confs"].astype(np.float32) for name in made})
  io.atomic_write(confs, lambda f: np.savez(f, **arrays), "wb")
  S.write_outputs(results, "controls", record, render(record))
  S.log(f"wrote {results / 'controls.md'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
