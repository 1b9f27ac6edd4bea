"""The relearn attack on a study's finished cells (issue #25): does forgetting come back?

    python3 experiments/relearn.py --config experiments/configs/methods25_digits.yaml
    python3 experiments/relearn.py --config ... --report-only

For every finished cell (scenario, seed, method) of the study's main table, the four models of
its report (theta_o, the retrained model, the base method's theta_p and the MCU point at the
chosen t, each with its BatchNorm statistics recomputed as the report's rows are) are relearned
with ``mcu_jax.relearn.relearn`` at its defaults (``RelearnConfig``: K = 100 SGD steps, lr
0.01, momentum 0.9, batch 128), from two relearn sets: D_r (``source=retain``) and 32 labelled
examples of D_f (``source=forget``; forget accuracy then read on the rest of D_f). Every model
of a (scenario, seed) sees the same batches (seed + 400, as ``mcu-jax relearn``). The rebound
is forget accuracy after K steps minus before; the retrained model's is the reference (what
relearning gives a model that never saw D_f).

Per (scenario, source, method): rebound of base and of base + MCU, mean ± sd over the seeds,
and MCU minus base with the seed as the unit (exact sign-flip test, 95 % t interval,
``tuning.seed_test``). Writes ``results/relearn_<study>/relearn.{md,json}`` (every per-seed
curve in the JSON); finished (cell, source, K) are kept in
``runs/.../<cell>/relearn_<source>_K<K>.json`` and not recomputed.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):   # run as a file (python3 experiments/relearn.py): the checkout
  sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from experiments import study as S  # noqa: E402
from experiments.tuning import seed_test  # noqa: E402

SOURCES = ("retain", "forget")
MODELS = ("original", "retrain", "base", "mcu")
SEED_OFFSET = 400      # as mcu_jax.pipeline.relearn_stage
STEPS = 100            # RelearnConfig's default K


def _cache(runs, study, scenario, seed, method, source, steps) -> Path:
  return S.seed_dir(runs, study, scenario, seed) / method / f"relearn_{source}_K{steps}.json"


def relearn_cell(study, dataset, runs, scenario, seed, method, source, steps=STEPS) -> dict:
  """The four models' relearn curves of one cell and source (cached in the cell directory)."""
  directory = S.seed_dir(runs, study, scenario, seed) / method
  done = _cache(runs, study, scenario, seed, method, source, steps)
  if done.exists():
    return S.read_json(done)
  from mcu_jax import relearn
  from mcu_jax.core.curves import point
  from mcu_jax.pipeline import stages as pipeline
  ctx = S.context(S.run_config(study, dataset, scenario, seed, method), directory, False)
  curve, curve_state = pipeline.load_curve(ctx)
  models = {"original": ctx.load_model("original"), "retrain": ctx.load_model("retrain"),
            "base": ctx.load_model("unlearn"),
            "mcu": (point(curve, ctx.record("sweep")["chosen_t"]), curve_state)}
  sets = ctx.eval_sets()
  config = relearn.RelearnConfig(source=source, steps=steps)
  programs: dict = {}
  out = {"scenario": scenario, "seed": seed, "method": method, "source": source,
         "config": {k: getattr(config, k) for k in ("steps", "lr", "momentum", "weight_decay",
                                                    "batch_size", "source", "forget_examples")},
         "models": {}}
  for name, (params, model_state) in models.items():
    result = relearn.relearn(
        ctx.apply, params, ctx.recalibrate(params, model_state), forget=sets["forget"],
        retain=sets["retain"], test=sets["test"], config=config, seed=seed + SEED_OFFSET,
        preprocess=ctx.preprocess_train, eval_batch_size=ctx.config.eval_batch_size,
        mesh=ctx.mesh, programs=programs)
    curve_dict = result.to_dict()
    out["models"][name] = {k: curve_dict[k] for k in ("steps", "forget_acc", "retain_acc",
                                                      "test_acc", "rebound")}
  done.write_text(json.dumps(out, indent=2) + "\n")
  fa = {k: v["forget_acc"] for k, v in out["models"].items()}
  S.log(f"  {scenario}/seed{seed}/{method} ({source}): "
        + "; ".join(f"{k} {v[0]:.1f} -> {v[-1]:.1f}" for k, v in fa.items()))
  return out


def run(study, dataset, runs, steps=STEPS, sources=SOURCES) -> list:
  failures = []
  for scenario in study["scenarios"]:
    for seed in study["seeds"]:
      for method in study["methods"]:
        if S.cell_record(S.seed_dir(runs, study, scenario, seed) / method) is None:
          continue
        for source in sources:
          S.guarded(relearn_cell, study, dataset, runs, scenario, seed, method, source, steps,
                    failures=failures, label=f"{scenario}/seed{seed}/{method}/{source}")
  return failures


def collect(study, runs, steps=STEPS) -> dict:
  """{scenario: {source: {method: {seed: cell}}}} of the finished relearn cells."""
  out: dict = {}
  for scenario in study["scenarios"]:
    for source in SOURCES:
      for method in study["methods"]:
        for seed in study["seeds"]:
          path = _cache(runs, study, scenario, seed, method, source, steps)
          if path.exists():
            out.setdefault(scenario, {}).setdefault(source, {}).setdefault(method, {})[seed] = (
                S.read_json(path))
  return out


def tables(study, cells, steps=STEPS) -> tuple[dict, str]:
  fmt = lambda v: f"{np.mean(v):.1f} ± {np.std(v, ddof=1) if len(v) > 1 else 0.0:.1f}"
  record: dict = {"study": study["name"], "config_file": study["config_file"], "steps": steps,
                  "tables": {}}
  lines = [f"# Relearn attack on {study['name']} (issue #25)", "",
           f"Every model fine-tuned K = {steps} SGD steps (lr 0.01, momentum 0.9, batch 128) on "
           "the relearn set; FA = forget accuracy (percent) before -> after; rebound = after minus "
           "before, mean ± sd over seeds. Relearn sets: D_r (`retain`), or 32 labelled "
           "examples of D_f (`forget`, FA read on the other D_f examples). Retrain's rebound is "
           "the reference. MCU − base: the rebound difference with the seed as the unit "
           "(exact sign-flip test, 95 % t interval).", ""]
  for scenario, by_source in cells.items():
    for source, by_method in by_source.items():
      rows, block = [], {}
      for method, by_seed in by_method.items():
        seeds = sorted(by_seed)

        def get(model, i, by_seed=by_seed, seeds=seeds):
          return np.asarray([by_seed[s]["models"][model]["forget_acc"][i] for s in seeds], float)
        rebound = {m: get(m, -1) - get(m, 0) for m in MODELS}
        test = seed_test(rebound["base"], rebound["mcu"]) if len(seeds) > 1 else None
        block[method] = {"seeds": seeds,
                         "forget_acc_before": {m: get(m, 0).tolist() for m in MODELS},
                         "forget_acc_after": {m: get(m, -1).tolist() for m in MODELS},
                         "rebound": {m: v.tolist() for m, v in rebound.items()},
                         "mcu_minus_base": test}
        row = {"method": method, "seeds": len(seeds)}
        for m in MODELS:
          row[f"{m} FA"] = f"{np.mean(get(m, 0)):.1f} -> {np.mean(get(m, -1)):.1f}"
          row[f"{m} rebound"] = fmt(rebound[m])
        row["MCU − base [95 % CI], p"] = (
            "n < 2" if test is None else
            f"{test['mean']:+.1f} [{test['ci95'][0]:+.1f}, {test['ci95'][1]:+.1f}], "
            f"p = {test['p']:.3g}")
        rows.append(row)
      record["tables"][f"{scenario}/{source}"] = block
      lines += [f"## {scenario} forgetting, relearn set: {source}", "",
                S.markdown(rows, list(rows[0])), ""]
  return record, "\n".join(lines)


def summary(study, cells, results: Path, steps=STEPS) -> tuple[list, str]:
  """Per scenario and method: FA / RA / TA of base and base + MCU (the study's main table,
  mean over its seeds) beside the rebounds on D_r and on the D_f subset (mean over seeds)."""
  path = results / study["name"] / "main_table.json"
  if not path.exists():
    return [], ""
  main = S.read_json(path)
  rows = []
  for scenario, block in main["scenarios"].items():
    if scenario not in cells:      # relearned only some scenarios (--scenario)
      continue
    raw = block["raw"]
    for method in study["methods"]:
      if method not in raw:
        continue
      def three(key, values=raw[method]):
        fa = 100.0 - np.mean(values[key]["UA"])
        return f"{fa:.1f} / {np.mean(values[key]['RA']):.1f} / {np.mean(values[key]['TA']):.1f}"
      row = {"scenario": scenario, "method": method, "FA / RA / TA": three("base"),
             "+ MCU": three("mcu")}
      for source in SOURCES:
        by_seed = cells.get(scenario, {}).get(source, {}).get(method, {})
        for model, label in (("base", "base"), ("mcu", "+MCU"), ("retrain", "retrain")):
          curves = [np.asarray(c["models"][model]["forget_acc"]) for c in by_seed.values()]
          # after K/4 steps and after K: how fast, and how far, forgetting comes back
          quarter = [c[len(c) // 4] - c[0] for c in curves]
          full = [c[-1] - c[0] for c in curves]
          row[f"rebound {label} ({source})"] = (
              f"{np.mean(quarter):+.1f} / {np.mean(full):+.1f}" if curves else "-")
      rows.append(row)
  text = "\n".join([
      f"## Summary: forgetting and its rebound after K = {steps} steps", "",
      "FA / RA / TA: forget, retain and test accuracy (percent; FA = 100 - UA) of the base "
      f"method and of base + MCU, mean over the seeds of `{study['name']}/main_table.json`; "
      "rebound: forget accuracy after K/4 / after K relearning steps minus before, mean over the "
      "seeds, relearning on D_r (`retain`) or on 32 examples of D_f (`forget`, forget accuracy "
      "read on the other D_f examples); retrain's is the reference.", "",
      S.markdown(rows, list(rows[0])) if rows else "(no cells)", ""])
  return rows, text


def main(argv=None) -> int:
  p = S.parser(__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=STEPS, help="K, the relearning steps")
  p.add_argument("--source", dest="sources", action="append", choices=SOURCES, default=[],
                 help="relearn only from this set (repeatable; default: both)")
  args = p.parse_args(argv)
  study = S.setup(args)
  dataset = S.dataset_name(study, args.runs_dir)
  start = time.time()
  failures = [] if args.report_only else run(study, dataset, args.runs_dir, args.steps,
                                             tuple(args.sources) or SOURCES)
  cells = collect(study, args.runs_dir, args.steps)
  if not cells:
    S.log("no finished relearn cells")
    return 1
  record, text = tables(study, cells, args.steps)
  record["summary"], summary_text = summary(study, cells, args.results_dir, args.steps)
  text = text + "\n" + summary_text
  record["wall_seconds_this_invocation"] = time.time() - start
  record["failures"] = failures
  return S.finish(study, args.results_dir / f"relearn_{study['name']}", "relearn", record,
                  text, failures)


if __name__ == "__main__":
  sys.exit(main())
