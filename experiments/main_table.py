"""Main table: every base unlearning method alone vs. the same method + MCU at the chosen t.

    python3 experiments/main_table.py                # the CPU study (configs/fashion_mnist.yaml)
    python3 experiments/main_table.py --config experiments/configs/cifar10.yaml
    python3 experiments/main_table.py --smoke        # tiny digits run (the test)
    python3 experiments/main_table.py --report-only  # tables from the finished cells

For each scenario (random forgetting of 10 % of the training set; class-wise forgetting of one
class), each seed and each base method: UA, RA, TA, MIA-Efficacy, the loss-attack AUC, Avg. Gap
to the retrained model and RTE, as mean ± sample std over seeds, for the base method and for
base + MCU (adaptive beta, mask k = 0.5, kr = 0, t chosen on [0.75, 1] against the alignment
targets, i.e. without looking at the retrained model). The paired tests of Avg. Gap (MCU vs
base) are described in the output. Finished cells are skipped, so an interrupted study
continues where it stopped. Writes ``<results>/<study>/main_table.{md,json}`` and
``main_table_avg_gap.png``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):   # run as a file (python3 experiments/main_table.py): the checkout
  sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from experiments import study as S  # noqa: E402


def run(study, dataset, runs, progress) -> list:
  failures = []
  for scenario in study["scenarios"]:
    for seed in study["seeds"]:
      label = f"{scenario}/seed{seed}"
      if S.guarded(S.ensure_base, study, dataset, runs, scenario, seed, progress,
                   failures=failures, label=f"{label}/base") is None:
        continue
      for method in study["methods"]:
        S.guarded(S.ensure_cell, study, dataset, runs, scenario, seed, method, method,
                  progress=progress, failures=failures, label=f"{label}/{method}")
  return failures


def collect(study, runs) -> dict:
  """{scenario: {method: {seed: cell record}}} of the finished cells."""
  return S.collect_cells(study, runs, study["methods"])


def _row(name, records, key, with_t=False):
  row = {"method": name, "seeds": len(records)}
  for metric in S.METRICS:
    row[S.HEADERS[metric]] = S.fmt([r[key].get(metric) for r in records],
                                   3 if metric == "loss_auc" else 2)
  if with_t:
    row["t"] = S.fmt([r["chosen_t"] for r in records], 3)
  return row


def _raw(records, key):
  return {metric: [r[key].get(metric) for r in records] for metric in (*S.METRICS, "TA_forgotten")
          if any(metric in r[key] for r in records)}


def tables(study, cells) -> tuple[dict, str]:
  first = next(iter(study["scenarios"]))
  recal = ("D_r (mcu_jax's sweep.recalibrate_on = retain)"
           if S.run_config(study, "digits", first, 0).sweep.recalibrate_on == "retain"
           else "the whole training set")
  record = {"study": study["name"], "config_file": study["config_file"],
            "scale": S.scale_note(study), "seeds": study["seeds"], "scenarios": {},
            "tests": {}}
  lines = [f"# Main table: {study['name']}", "",
           f"Scale: {S.scale_note(study)}.", "",
           "Each cell: mean ± sample standard deviation (ddof = 1) over the seeds "
           "(the `seeds` column counts the finished ones). UA, RA, TA, MIA-Efficacy in percent; "
           "loss-AUC: ROC-AUC of a loss-threshold attack, D_f vs test (0.5 = indistinguishable);"
           " Avg. Gap: mean |metric - Retrain| over UA, RA, TA, MIA (lower is better); Gap w/o "
           "MIA: the same over UA, RA, TA only (the SVC attack can saturate at 0 or 100 %, see "
           "the README); RTE: "
           "wall seconds of the unlearning, compilation excluded (MCU adds the mask and the "
           "curve epochs; the sweep over t is not included); t: the chosen point of "
           "the curve, picked on [0.75, 1] against the alignment targets (the original model's "
           "accuracies), not against the retrained model. Every row's BatchNorm statistics are "
           f"recomputed on {recal}.", ""]
  all_before, all_after = [], []
  columns = ["method", "seeds"] + [S.HEADERS[m] for m in S.METRICS] + ["t"]
  for scenario, by_method in cells.items():
    spec = study["scenarios"][scenario]
    rows, raw = [], {}
    any_cells = [r for m in by_method.values() for r in m.values()]
    if not any_cells:
      continue
    per_seed_ref = {}
    for m in by_method.values():
      for seed, r in m.items():
        per_seed_ref.setdefault(seed, r)
    refs = list(per_seed_ref.values())
    rows.append(_row("Original", refs, "original"))
    rows.append(_row("Retrain", refs, "retrain"))
    raw["Original"] = _raw(refs, "original")
    raw["Retrain"] = _raw(refs, "retrain")
    before, after, per_method = [], [], {}
    gap3_before, gap3_after = [], []
    for method, by_seed in by_method.items():
      records = [by_seed[s] for s in study["seeds"] if s in by_seed]
      if not records:
        rows.append({"method": method.upper(), "seeds": 0})
        continue
      rows.append(_row(method.upper(), records, "base"))
      rows.append(_row(method.upper() + "+MCU", records, "mcu", with_t=True))
      raw[method] = {"base": _raw(records, "base"), "mcu": _raw(records, "mcu"),
                     "chosen_t": [r["chosen_t"] for r in records],
                     "region": [r["region"] for r in records],
                     "seeds": [s for s in study["seeds"] if s in by_seed]}
      b = [r["base"]["AvgGap"] for r in records]
      a = [r["mcu"]["AvgGap"] for r in records]
      before += b
      after += a
      per_method[method] = S.paired_tests(b, a)
      gap3_before += [r["base"]["Gap3"] for r in records]
      gap3_after += [r["mcu"]["Gap3"] for r in records]
    all_before += before
    all_after += after
    pooled = S.paired_tests(before, after)
    pooled3 = S.paired_tests(gap3_before, gap3_after)
    record["scenarios"][scenario] = {"forget": spec, "rows": rows, "raw": raw,
                                     "tests": {"pooled": pooled, "per_method": per_method,
                                               "pooled_gap_without_mia": pooled3}}
    title = ("random forgetting of " + f"{100 * spec.get('ratio', 0.1):.0f} % of the training set"
             if spec["kind"] == "random" else f"class-wise forgetting of class {spec['classes']}")
    lines += [f"## {scenario}: {title}", "", S.markdown(rows, columns), ""]
    lines += [_test_text(pooled, per_method),
              f"Gap w/o MIA, MCU minus base, pooled: n = {pooled3['n']}, mean difference "
              f"{pooled3['mean_diff']:+.2f}, lower in {pooled3['improved']} / higher in "
              f"{pooled3['worse']}; Wilcoxon p = {pooled3['wilcoxon_p']:.3g}, paired t-test "
              f"p = {pooled3['ttest_p']:.3g}.", ""]
  overall = S.paired_tests(all_before, all_after)
  record["tests"]["pooled_all_scenarios"] = overall
  lines += ["## Paired test over both scenarios", "",
            "Avg. Gap, MCU minus base, pooled over scenarios × methods × seeds: "
            f"n = {overall['n']}, "
            f"mean difference {overall['mean_diff']:+.2f} points, MCU lower in "
            f"{overall['improved']} pairs and higher in {overall['worse']}; Wilcoxon signed-rank "
            f"p = {overall['wilcoxon_p']:.3g}, paired t-test p = {overall['ttest_p']:.3g} "
            "(two-sided). The pairs are not independent (each method of a seed shares that "
            "seed's original and retrained models), so read the p-values as descriptive.", ""]
  return record, "\n".join(lines)


def _test_text(pooled, per_method) -> str:
  out = [f"Paired test of Avg. Gap (MCU minus base), pooled over methods × seeds: n = "
         f"{pooled['n']}, mean difference {pooled['mean_diff']:+.2f} points, MCU lower in "
         f"{pooled['improved']} and higher in {pooled['worse']} pairs; Wilcoxon signed-rank "
         f"(two-sided) p = {pooled['wilcoxon_p']:.3g}; paired t-test p = "
         f"{pooled['ttest_p']:.3g}.",
         "Per method (paired t-test over seeds, two-sided; with 3 seeds a per-method test has "
         "little power, and a Wilcoxon test on 3 pairs cannot go below p = 0.25, so only the "
         "pooled test can detect a consistent effect):"]
  out.append("; ".join(f"{m.upper()} {t['mean_diff']:+.2f} (p = {t['ttest_p']:.2g})"
                       for m, t in per_method.items()) + ".")
  return "\n".join(out)


def plot(study, cells, path) -> str | None:
  scenarios = [s for s in cells if any(cells[s][m] for m in cells[s])]
  if not scenarios:
    return None
  fig = S.figure((5.0 * len(scenarios), 4.2))
  for i, scenario in enumerate(scenarios):
    ax = fig.add_subplot(1, len(scenarios), i + 1)
    methods = [m for m in study["methods"] if cells[scenario][m]]
    x = np.arange(len(methods))
    for offset, key, label, color in ((-0.2, "base", "base", "tab:gray"),
                                      (0.2, "mcu", "base + MCU", "tab:blue")):
      stats = [S.mean_std([r[key]["AvgGap"] for r in cells[scenario][m].values()])
               for m in methods]
      ax.bar(x + offset, [s[0] for s in stats], 0.4, yerr=[s[1] for s in stats], capsize=3,
             color=color, label=label)
      for j, m in enumerate(methods):
        values = [r[key]["AvgGap"] for r in cells[scenario][m].values()]
        ax.scatter(np.full(len(values), x[j] + offset), values, s=8, color="black", zorder=3)
    ax.set_xticks(x)
    ax.set_xticklabels([m.upper() for m in methods], rotation=30, fontsize=8)
    ax.set_ylabel("Avg. Gap to Retrain (lower is better)")
    ax.set_title(f"{study['name']}: {scenario} forgetting")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
  return S.save_png(fig, path)


def main(argv=None) -> int:
  args = S.parser(__doc__.split("\n")[0]).parse_args(argv)
  study = S.setup(args)
  dataset = S.dataset_name(study, args.runs_dir)
  start = time.time()
  failures = []
  if not args.report_only:
    S.log(f"main table of {study['name']}: {S.scale_note(study)} (backend "
          f"{study['backend']})")
    failures = run(study, dataset, args.runs_dir, args.progress)
  cells = collect(study, args.runs_dir)
  record, text = tables(study, cells)
  record["failures"] = failures
  record["wall_seconds_this_invocation"] = time.time() - start
  record["stage_seconds_total"] = _stage_seconds(args.runs_dir / study["name"])
  results = args.results_dir / study["name"]
  png = plot(study, cells, results / "main_table_avg_gap.png")
  if png:
    text += "\n![Avg. Gap by method](main_table_avg_gap.png)\n"
  return S.finish(study, results, "main_table", record, text, failures)


def _stage_seconds(root: Path) -> float:
  total = 0.0
  for path in root.glob("*/seed*/*/wall_seconds.json"):
    total += sum(S.read_json(path).values())
  return total


if __name__ == "__main__":
  sys.exit(main())
