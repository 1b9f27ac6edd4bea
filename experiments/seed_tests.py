"""Base vs base + MCU with the seed as the unit (issue #24 e), from a main table's JSON.

    python3 experiments/seed_tests.py                  # results/fashion_mnist_seeds10/
    python3 experiments/seed_tests.py --study fashion_mnist

Reads the per-seed values (``raw``) of ``results/<study>/main_table.json`` and, per scenario
and method, tests Avg. Gap and Gap w/o MIA, MCU minus base, over the seeds: an exact sign-flip
test over all 2^n sign patterns (two-sided) and the mean difference with a 95 % t interval
(``tuning.seed_test``). Also the mean over the methods per seed (one number per seed). Writes
``results/<study>/seed_tests.{md,json}``; every per-seed difference is in the JSON.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):   # run as a file (python3 experiments/seed_tests.py): the checkout
  sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments import study as S  # noqa: E402
from experiments.tuning import seed_test  # noqa: E402


def per_seed(raw: dict, method: str, key: str, metric: str, seeds: list) -> np.ndarray:
  """``metric`` of ``method``'s ``key`` row ("base" or "mcu") at ``seeds``, in that order."""
  index = {s: i for i, s in enumerate(raw[method]["seeds"])}
  return np.asarray([raw[method][key][metric][index[s]] for s in seeds], float)


def tests(main: dict) -> dict:
  out = {}
  for scenario, block in main["scenarios"].items():
    raw = block["raw"]
    methods = [m for m in raw if m not in ("Original", "Retrain")]
    # paired by seed: the seeds every method finished (a stopped study may differ per method)
    seeds = sorted(set.intersection(*(set(raw[m]["seeds"]) for m in methods)))
    if len(seeds) < 2:
      continue
    out[scenario] = {"seeds": seeds, "methods": {}}
    for metric in ("AvgGap", "Gap3"):
      per = {m: (per_seed(raw, m, "base", metric, seeds), per_seed(raw, m, "mcu", metric, seeds))
             for m in methods}
      for m, (b, a) in per.items():
        out[scenario]["methods"].setdefault(m, {})[metric] = {
            "base": b.tolist(), "mcu": a.tolist(), **seed_test(b, a)}
      b = np.mean([v[0] for v in per.values()], axis=0)
      a = np.mean([v[1] for v in per.values()], axis=0)
      out[scenario].setdefault("mean_over_methods", {})[metric] = {
          "methods": methods, "base": b.tolist(), "mcu": a.tolist(), **seed_test(b, a)}
  return out


def render(study: str, result: dict) -> str:
  lines = [f"# Base vs base + MCU, the seed as the unit: {study}", "",
           "Difference = MCU minus base (lower is better for both gaps). Test: exact sign-flip "
           "over all 2^n sign patterns of the per-seed differences, two-sided; interval: 95 % t "
           "interval of the mean difference. Gap w/o MIA: the mean |metric - Retrain| over UA, "
           "RA, TA (the SVC MIA saturates here, see the README).", ""]
  for scenario, block in result.items():
    lines += [f"## {scenario} (seeds {block['seeds']})", "",
              "| method | metric | base | + MCU | MCU − base [95 % CI] | p | MCU lower / higher |",
              "|---|---|---|---|---|---:|---|"]
    rows = [(m.upper(), v) for m, v in block["methods"].items()]
    rows.append(("mean of " + ", ".join(x.upper() for x in block["mean_over_methods"]["AvgGap"]
                                        ["methods"]), block["mean_over_methods"]))
    for name, v in rows:
      for metric, label in (("AvgGap", "Avg. Gap"), ("Gap3", "Gap w/o MIA")):
        t = v[metric]
        lines.append(f"| {name} | {label} | {S.fmt(t['base'])} | {S.fmt(t['mcu'])} | "
                     f"{t['mean']:+.2f} [{t['ci95'][0]:+.2f}, {t['ci95'][1]:+.2f}] | "
                     f"{t['p']:.3g} | {t['mcu_lower']} / {t['mcu_higher']} |")
    lines += ["", "Per seed, Avg. Gap base -> + MCU:", ""]
    for name, v in rows:
      t = v["AvgGap"]
      lines.append(f"- {name}: " + ", ".join(
          f"{s}: {b:.2f} -> {a:.2f}" for s, b, a in zip(block["seeds"], t["base"], t["mcu"])))
    lines.append("")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--study", default="fashion_mnist_seeds10")
  p.add_argument("--results-dir", type=Path, default=S.EXPERIMENTS / "results")
  args = p.parse_args(argv)
  results = args.results_dir / args.study
  main_table = S.read_json(results / "main_table.json")
  result = tests(main_table)
  S.write_outputs(results, "seed_tests", {"study": args.study, "source": "main_table.json",
                                          "scenarios": result}, render(args.study, result))
  print(render(args.study, result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
