"""Base methods at their reference settings and tuned so that they unlearn (issue #24 d: GA
and SCRUB; issue #25: SSD, Bad Teacher, UNSIR, Boundary Shrink, IU).

    python3 experiments/tuning.py --phase grid       # the grid on the tuning seed, base only
    python3 experiments/tuning.py --phase evaluate   # base vs base + MCU, reference and selected
    python3 experiments/tuning.py --report-only      # tables from the finished cells
    python3 experiments/tuning.py --config experiments/configs/tuning_methods25_fashion.yaml ...

The grid, the selection rule and the seeds are in the config (``configs/tuning_ga_scrub.yaml``
by default; each committed before anything ran); results go to ``results/<config name>/``.
A method's grid is a list of points (the first is the reference, the list runs from the
gentlest, the smallest lr, up) or ``{reference: {...}, points: [...]}`` with the points listed
from gentlest to most aggressive. ``grid`` unlearns with every grid point on the tuning seed
(its own theta_o), scores the base model as the report does (BatchNorm recalibrated on D_r),
applies the rule and writes ``results/<name>/grid.json``: no MCU runs in this phase. ``evaluate``
runs, per evaluation seed, the method at the reference setting (cell ``<method>``) and at the
selected one (``<method>_tuned``), each with MCU (the study's settings), in the study's run
directories (so theta_o, the retrained model and the mask are those of the 10-seed study).
The unit is the seed: Avg. Gap, MCU minus base, per seed; exact sign-flip test over all 2^n
sign patterns; 95 % t interval. Writes ``results/tuning_ga_scrub/tuning.{md,json}``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):   # run as a file (python3 experiments/tuning.py): the checkout
  sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments import study as S  # noqa: E402

CONFIG = S.EXPERIMENTS / "configs" / "tuning_ga_scrub.yaml"
NOOP_FA_POINTS = 5.0   # a reference setting whose FA is this close to theta_o's is a no-op


def select(points: list[dict], original_ra: float, max_ra_drop: float, fa_tie: float) -> dict:
  """The rule of the config: among points with RA >= original_ra - max_ra_drop, the lowest FA;
  FA within fa_tie of it is a tie, won by the gentlest point, the earliest of ``points``
  (listed from gentlest to most aggressive). None if no point is admissible."""
  ok = [p for p in points if p["RA"] >= original_ra - max_ra_drop]
  if not ok:
    return None
  best = min(p["FA"] for p in ok)
  return next(p for p in ok if p["FA"] <= best + fa_tie)


def method_grid(block) -> tuple[dict, list[dict]]:
  """(reference options, points from gentlest to most aggressive) of one method's grid."""
  if isinstance(block, dict):
    return dict(block["reference"]), [dict(p) for p in block["points"]]
  return dict(block[0]), [dict(p) for p in block]


def _tag(options: dict) -> str:
  return "_".join(f"{k}{v:g}" for k, v in sorted(options.items()))


def _scores(ctx, record: str) -> dict:
  from mcu_jax.pipeline import stages as pipeline
  m = pipeline._point_metrics(ctx, *ctx.load_model(record))   # the report's own scoring
  return {"FA": 100.0 - m["UA"], "UA": m["UA"], "RA": m["RA"], "TA": m["TA"], "MIA": m["MIA"]}


def grid_point(study, dataset, runs, scenario, seed, method, options, progress) -> dict:
  from mcu_jax.pipeline import stages as pipeline
  root = S.seed_dir(runs, study, scenario, seed)
  directory = root / f"tune_{method}_{_tag(options)}"
  done = directory / "grid_point.json"
  if done.exists():
    return S.read_json(done)
  config = S.run_config(study, dataset, scenario, seed, method, {"unlearn": {"options": options}})
  ctx = S.context(config, directory, progress)
  for stage in ("train", "retrain"):
    pipeline.copy_stage(ctx, root / "base", stage)
  S._run_stages(ctx, ("unlearn",), f"{scenario}/seed{seed}/{directory.name}")
  record = {"method": method, "options": options, **_scores(ctx, "unlearn"),
            "RTE": ctx.record("unlearn")["rte_seconds"]}
  if not (root / "original_scores.json").exists():
    (root / "original_scores.json").write_text(json.dumps(_scores(ctx, "original"), indent=2))
  done.write_text(json.dumps(record, indent=2) + "\n")
  S.log(f"  grid {method} {options}: FA {record['FA']:.1f} RA {record['RA']:.2f}")
  return record


def run_grid(cfg, study, dataset, runs, progress) -> dict:
  scenario, seed = cfg["scenario"], int(cfg["tuning_seed"])
  S.ensure_base(study, dataset, runs, scenario, seed, progress)
  out = {"scenario": scenario, "tuning_seed": seed, "max_ra_drop": cfg["max_ra_drop"],
         "fa_tie": cfg["fa_tie"], "methods": {}}
  for method, block in cfg["grid"].items():
    reference, points = method_grid(block)
    scored = [grid_point(study, dataset, runs, scenario, seed, method, p, progress)
              for p in points]
    original = S.read_json(S.seed_dir(runs, study, scenario, seed) / "original_scores.json")
    chosen = select(scored, original["RA"], cfg["max_ra_drop"], cfg["fa_tie"])
    out["original"] = original
    out["methods"][method] = {"points": scored, "reference": reference,
                              "selected": None if chosen is None else chosen["options"]}
  return out


def settings(grid: dict) -> list[tuple[str, str, dict | None]]:
  """(cell name, method, options) of every evaluated setting; None = the reference."""
  out = []
  for method, block in grid["methods"].items():
    out.append((method, method, None))
    if block["selected"] is not None and block["selected"] != block["reference"]:
      out.append((f"{method}_tuned", method, block["selected"]))
  return out


def run_evaluate(cfg, grid, study, dataset, runs, progress) -> list:
  failures = []
  for seed in cfg["eval_seeds"]:
    label = f"{cfg['scenario']}/seed{seed}"
    if S.guarded(S.ensure_base, study, dataset, runs, cfg["scenario"], seed, progress,
                 failures=failures, label=f"{label}/base") is None:
      continue
    for name, method, options in settings(grid):
      extra = None if options is None else {"unlearn": {"options": options}}
      S.guarded(S.ensure_cell, study, dataset, runs, cfg["scenario"], seed, name, method, extra,
                progress=progress, failures=failures, label=f"{label}/{name}")
  return failures


def t_interval(values) -> list[float]:
  from scipy import stats as sps
  values = np.asarray(values, float)
  half = sps.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size)
  return [float(values.mean() - half), float(values.mean() + half)]


def seed_test(before, after) -> dict:
  """MCU minus base over seeds: exact sign-flip (two-sided), mean with a 95 % t interval."""
  from mcu_jax.core import stats
  d = np.asarray(after, float) - np.asarray(before, float)
  test = stats.sign_flip(d, permutations=2 ** d.size)
  return {"n": int(d.size), "differences": d.tolist(), "mean": float(d.mean()),
          "ci95": t_interval(d), "p": test.p_value, "flips": test.flips,
          "mcu_lower": int(np.sum(d < 0)), "mcu_higher": int(np.sum(d > 0))}


def tables(cfg, grid, study, runs, config_file: str = "experiments/configs/tuning_ga_scrub.yaml"
           ) -> tuple[dict, str]:
  names = [name for name, _, _ in settings(grid)]
  study = {**study, "seeds": cfg["eval_seeds"],
           "scenarios": {cfg["scenario"]: study["scenarios"][cfg["scenario"]]}}
  cells = S.collect_cells(study, runs, names)[cfg["scenario"]]
  record = {"config_file": config_file, "grid": grid, "scenario": cfg["scenario"],
            "settings": {}}
  name = cfg.get("name", "tuning_ga_scrub")
  title = cfg.get("title") or (
      "GA and SCRUB: reference vs tuned, base vs base + MCU (issue #24 d)"
      if name == "tuning_ga_scrub" else f"{name}: reference vs tuned, base vs base + MCU")
  lines = [f"# {title}", "",
           f"Study {study['name']}, scenario {cfg['scenario']} "
           f"({study['scenarios'][cfg['scenario']]}). Grid on tuning seed "
           f"{grid['tuning_seed']} (base method only; theta_o: FA "
           f"{grid['original']['FA']:.1f}, RA {grid['original']['RA']:.2f}); rule: lowest FA "
           f"among points with RA within {grid['max_ra_drop']:g} points of theta_o's, FA ties "
           f"(within {grid['fa_tie']:g}) to the gentlest point ({config_file}).", ""]
  for method, block in grid["methods"].items():
    reference = next((p for p in block["points"] if p["options"] == block["reference"]), None)
    noop = (reference is not None
            and reference["FA"] >= grid["original"]["FA"] - NOOP_FA_POINTS)
    lines += [f"## Grid: {method.upper()} (tuning seed {grid['tuning_seed']})", "",
              f"At its reference setting {block['reference']}: "
              + ("not on the grid." if reference is None else
                 f"FA {reference['FA']:.1f} vs theta_o's {grid['original']['FA']:.1f}, RA "
                 f"{reference['RA']:.1f} vs {grid['original']['RA']:.1f}: "
                 + ("**a no-op** (FA within 5 points of theta_o's)." if noop else
                    "it unlearns." if reference["RA"] >= grid["original"]["RA"]
                    - grid["max_ra_drop"] else
                    "it forgets by damaging the model (RA more than "
                    f"{grid['max_ra_drop']:g} points below theta_o's).")), "",
              "| options | FA | RA | TA | RTE (s) | admissible | selected |",
              "|---|---:|---:|---:|---:|---|---|"]
    for p in block["points"]:
      ok = p["RA"] >= grid["original"]["RA"] - grid["max_ra_drop"]
      lines.append(f"| {p['options']} | {p['FA']:.1f} | {p['RA']:.2f} | {p['TA']:.2f} | "
                   f"{p['RTE']:.1f} | {'yes' if ok else 'no'} | "
                   f"{'**yes**' if p['options'] == block['selected'] else ''} |")
    lines.append("")
  lines += ["## Evaluation seeds: Avg. Gap to Retrain, base vs base + MCU", "",
            "| setting | seeds | base UA | +MCU UA | base RA | +MCU RA | base Avg. Gap | "
            "+MCU Avg. Gap | MCU − base [95 % CI] | p (exact sign-flip) | MCU lower / higher | "
            "Gap w/o MIA: MCU − base [95 % CI], p |",
            "|---|---:|---|---|---|---|---|---|---|---:|---|---|"]
  # every setting on the same seeds: those where all of them finished
  common = [s for s in cfg["eval_seeds"] if all(s in cells[name] for name in names)]
  record["seeds"] = common
  for name in names:
    by_seed = cells[name]
    seeds = common
    if len(seeds) < 2:
      continue
    rec = [by_seed[s] for s in seeds]
    per = {k: {m: [r[k][m] for r in rec] for m in ("UA", "RA", "TA", "MIA", "AvgGap", "Gap3")}
           for k in ("base", "mcu", "retrain")}
    gap, gap3 = (seed_test(per["base"][m], per["mcu"][m]) for m in ("AvgGap", "Gap3"))
    options = next(o for n, _, o in settings(grid) if n == name)
    record["settings"][name] = {"options": options or "reference", "seeds": seeds,
                                "per_seed": per, "chosen_t": [r["chosen_t"] for r in rec],
                                "avg_gap": gap, "gap_without_mia": gap3}
    f = lambda v, d=2: S.fmt(v, d)
    lines.append(
        f"| {name} {options or '(reference)'} | {len(seeds)} | {f(per['base']['UA'])} | "
        f"{f(per['mcu']['UA'])} | {f(per['base']['RA'])} | {f(per['mcu']['RA'])} | "
        f"{f(per['base']['AvgGap'])} | {f(per['mcu']['AvgGap'])} | {gap['mean']:+.2f} "
        f"[{gap['ci95'][0]:+.2f}, {gap['ci95'][1]:+.2f}] | {gap['p']:.3g} | "
        f"{gap['mcu_lower']} / {gap['mcu_higher']} | {gap3['mean']:+.2f} "
        f"[{gap3['ci95'][0]:+.2f}, {gap3['ci95'][1]:+.2f}], p = {gap3['p']:.3g} |")
  when = ("added after the first two seeds were seen" if cfg.get("name", "tuning_ga_scrub")
          == "tuning_ga_scrub" else "descriptive, not in the plan committed before the runs")
  lines += ["", f"Not in the pre-registered plan ({when}): does "
            "MCU on the reference setting do better than tuning the base method alone? Avg. "
            "Gap of reference + MCU minus the tuned base, paired by seed:", ""]
  record["mcu_vs_tuning"] = {}
  for method in grid["methods"]:
    ref, tuned = record["settings"].get(method), record["settings"].get(f"{method}_tuned")
    if not ref or not tuned:
      continue
    seeds = [s for s in ref["seeds"] if s in tuned["seeds"]]
    pick = lambda block, key, seeds=seeds: [
        block["per_seed"][key]["AvgGap"][block["seeds"].index(s)] for s in seeds]
    c = seed_test(pick(tuned, "base"), pick(ref, "mcu"))
    record["mcu_vs_tuning"][method] = {"seeds": seeds, **c}
    lines.append(f"- {method.upper()}: {c['mean']:+.2f} [{c['ci95'][0]:+.2f}, "
                 f"{c['ci95'][1]:+.2f}], p = {c['p']:.3g} (n = {c['n']}; reference + MCU lower "
                 f"for {c['mcu_lower']}, higher for {c['mcu_higher']})")
  lines += ["", "Per seed (Avg. Gap, base -> base + MCU):", ""]
  for name, s in record["settings"].items():
    pairs = ", ".join(f"{seed}: {b:.2f} -> {a:.2f}" for seed, b, a in
                      zip(s["seeds"], s["per_seed"]["base"]["AvgGap"],
                          s["per_seed"]["mcu"]["AvgGap"]))
    lines.append(f"- {name}: {pairs}")
  return record, "\n".join(lines) + "\n"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", type=Path, default=CONFIG)
  p.add_argument("--phase", choices=("grid", "evaluate"), default=None)
  p.add_argument("--report-only", action="store_true")
  p.add_argument("--runs-dir", type=Path, default=S.EXPERIMENTS / "runs")
  p.add_argument("--results-dir", type=Path, default=S.EXPERIMENTS / "results")
  p.add_argument("--progress", action="store_true")
  p.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")], default=None,
                 help="evaluate only these of the config's seeds, in this order (e.g. 9,8)")
  args = p.parse_args(argv)
  from mcu_jax.pipeline import config as config_lib
  cfg = config_lib.read_file(args.config)
  study = S.setup(argparse.Namespace(smoke=False, config=S.REPO / cfg["study"], overrides=[],
                                     runs_dir=args.runs_dir))
  dataset = S.dataset_name(study, args.runs_dir)
  results = args.results_dir / cfg.get("name", "tuning_ga_scrub")
  start = time.time()
  if args.phase == "grid":
    grid = run_grid(cfg, study, dataset, args.runs_dir, args.progress)
    from mcu_jax import io
    io.write_json(results / "grid.json", grid)
    S.log(f"selected: { {m: b['selected'] for m, b in grid['methods'].items()} }")
    return 0
  grid = S.read_json(results / "grid.json")
  failures = []
  if args.phase == "evaluate" and not args.report_only:
    run_cfg = {**cfg, "eval_seeds": args.seeds or cfg["eval_seeds"]}
    failures = run_evaluate(run_cfg, grid, study, dataset, args.runs_dir, args.progress)
  config_file = str(Path(args.config).resolve().relative_to(S.REPO)
                    if Path(args.config).resolve().is_relative_to(S.REPO) else args.config)
  record, text = tables(cfg, grid, study, args.runs_dir, config_file)
  record["wall_seconds_this_invocation"] = time.time() - start
  return S.finish(study, results, "tuning", record, text, failures)


if __name__ == "__main__":
  sys.exit(main())
