"""Ablations of MCU on the main table's base models and splits, with RL as the base method.

    python3 experiments/ablations.py                 # the CPU study (configs/fashion_mnist.yaml)
    python3 experiments/ablations.py --smoke         # tiny digits run (the test)
    python3 experiments/ablations.py --report-only

RL (random labels) is the base method of every ablation (``ablation.base`` in the config): its
theta_p, the original and retrained models, the split and the mask are those of the main table
(the RL cell is reused, or made if the main table has not run yet). Variants, each swept over
the same 20 t with BN recalibration and t chosen in the same way:

1. the straight line between theta_o and theta_p (no curve training, ``curve.train=false``)
   vs. the trained quadratic Bezier curve;
2. the MCU mask (k = 0.5, kr = 0) vs. no mask (every tensor of the control point trains), with
   the mask's and the curve training's wall time;
3. adaptive beta vs. fixed beta in ``ablation.fixed_betas`` (0.05, 0.2, 0.5);
4. the chosen t and the effective region over seeds, for every method of the main table.

Writes ``<results>/<study>/ablations.{md,json}`` and the PNG plots next to them.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):   # run as a file (python3 experiments/ablations.py): the checkout
  sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from experiments import study as S  # noqa: E402


def variants(study) -> dict[str, dict]:
  """{directory name: RunConfig overrides} of the ablation variants (besides the base cell)."""
  out = {"abl_line": {"curve": {"train": False}},
         "abl_nomask": {"mask": {"enabled": False}}}
  for beta in study["ablation"].get("fixed_betas", [0.05, 0.2, 0.5]):
    out[f"abl_beta{beta:g}"] = {"curve": {"beta": float(beta)}}
  return out


def _wait_for(path: Path, seconds: float) -> bool:
  deadline = time.time() + seconds
  while not path.exists():
    if time.time() > deadline:
      return False
    time.sleep(15)
  return True


def run(study, dataset, runs, progress, follow: float = 0.0) -> list:
  """Every variant of every (scenario, seed). ``follow`` > 0: run beside a main-table process,
  waiting up to ``follow`` seconds for its base-method cell of each (scenario, seed) rather
  than making it (so two processes never write the same directory)."""
  failures = []
  base_method = study["ablation"].get("base", "rl")
  for scenario in study["scenarios"]:
    for seed in study["seeds"]:
      label = f"{scenario}/seed{seed}"
      if follow and not _wait_for(S.seed_dir(runs, study, scenario, seed) / base_method /
                                  "report.json", follow):
        S.log(f"skipped {label}: its {base_method} cell did not appear within {follow:.0f} s")
        continue
      if S.guarded(S.ensure_base, study, dataset, runs, scenario, seed, progress,
                   failures=failures, label=f"{label}/base") is None:
        continue
      if S.guarded(S.ensure_cell, study, dataset, runs, scenario, seed, base_method,
                   base_method, progress=progress, failures=failures,
                   label=f"{label}/{base_method}") is None:
        continue
      for name, extra in variants(study).items():
        S.guarded(S.ensure_cell, study, dataset, runs, scenario, seed, name, base_method,
                  extra=extra, from_method=base_method, progress=progress, failures=failures,
                  label=f"{label}/{name}")
  return failures


ABL_METRICS = ("UA", "RA", "TA", "MIA", "loss_auc", "AvgGap", "Gap3")
METRIC_COLUMNS = [S.HEADERS[m] for m in ABL_METRICS]


def _metric_row(label, records, extra_columns=()):
  row = {"variant": label, "seeds": len(records)}
  for metric in ABL_METRICS:
    row[S.HEADERS[metric]] = S.fmt([r["mcu"].get(metric) for r in records],
                                   3 if metric == "loss_auc" else 2)
  for name, fn, digits in extra_columns:
    row[name] = S.fmt([fn(r) for r in records], digits)
  # The numbers behind the formatted cells, one per seed, so that every test can be recomputed.
  row["per_seed"] = {"seeds": [r.get("seed") for r in records],
                     **{m: [r["mcu"].get(m) for r in records] for m in ABL_METRICS},
                     **{name: [fn(r) for r in records] for name, fn, _ in extra_columns}}
  return row


T_COLUMNS = (("t", lambda r: r["chosen_t"], 3),
             ("gap(t) to targets", lambda r: r["gap_at_t"], 2),
             ("region length", lambda r: r["region_length"], 3))


def _records(cells, seeds):
  return [cells[s] for s in seeds if s in cells]


def _paired(cells_a, cells_b, seeds, scenarios) -> dict:
  """Paired test of Avg. Gap, b minus a, over scenarios × seeds where both exist."""
  a, b = [], []
  for scenario in scenarios:
    for s in seeds:
      if s in cells_a[scenario] and s in cells_b[scenario]:
        a.append(cells_a[scenario][s]["mcu"]["AvgGap"])
        b.append(cells_b[scenario][s]["mcu"]["AvgGap"])
  return S.paired_tests(a, b)


def _test_line(label, test) -> str:
  return (f"{label}: n = {test['n']} (scenario, seed) pairs, mean Avg. Gap difference "
          f"{test['mean_diff']:+.2f}, lower in {test['improved']} / higher in {test['worse']}; "
          f"Wilcoxon signed-rank p = {test['wilcoxon_p']:.3g}, paired t-test p = "
          f"{test['ttest_p']:.3g} (two-sided; an exact Wilcoxon test on n pairs cannot go below "
          "p = 2 / 2^n: 0.0625 for 5 pairs, 0.031 for 6, so with few pairs these are "
          "indicative only).")


def tables(study, cells, main_cells) -> tuple[dict, str]:
  base = study["ablation"].get("base", "rl")
  seeds, scenarios = study["seeds"], list(study["scenarios"])
  betas = [float(b) for b in study["ablation"].get("fixed_betas", [0.05, 0.2, 0.5])]
  record = {"study": study["name"], "base_method": base, "scale": S.scale_note(study),
            "seeds": seeds, "ablations": {}}
  lines = [f"# Ablations: {study['name']} (base method {base.upper()})", "",
           f"Scale: {S.scale_note(study)}.", "",
           f"Every variant starts from the same {base.upper()} theta_p, original model, "
           "retrained model and split as the main table, and is swept over the same t with BN "
           "recalibration; t is chosen on [0.75, 1] against the alignment targets. Metrics are "
           "those of the model at the chosen t; mean ± sample std over seeds. `gap(t) to "
           "targets` is the interpolated alignment gap at the chosen t; `region length` is the "
           "total length of the effective region {t : gap(t) < gap(1)}.", ""]

  # (1) line vs curve
  cols = ["variant", "seeds", *METRIC_COLUMNS, *(c[0] for c in T_COLUMNS)]
  lines += ["## 1. Straight line vs. trained Bezier curve", ""]
  rec1 = {}
  for scenario in scenarios:
    line = _records(cells[scenario]["abl_line"], seeds)
    curve = _records(cells[scenario][base], seeds)
    rows = [_metric_row(f"{base.upper()} alone (t = 1)", curve and [
                dict(r, mcu=r["base"]) for r in curve]),
            _metric_row("straight line (no training)", line, T_COLUMNS),
            _metric_row("Bezier, trained (MCU)", curve, T_COLUMNS)]
    rows[0]["variant"] = f"{base.upper()} alone (t = 1)"
    rec1[scenario] = rows
    lines += [f"### {scenario}", "", S.markdown(rows, cols), ""]
  test1 = _paired({s: cells[s]["abl_line"] for s in scenarios},
                  {s: cells[s][base] for s in scenarios}, seeds, scenarios)
  lines += [_test_line("Bezier minus line", test1), "",
            "![sweeps: line vs curve](ablation_line_vs_curve.png)", ""]
  record["ablations"]["line_vs_curve"] = {"rows": rec1, "test": test1}

  # (2) mask vs no mask
  time_cols = (("trained share", lambda r: r["mask_fraction"], 3),
               ("mask s", lambda r: r["mask_seconds"], 2),
               ("curve s", lambda r: r["curve_seconds"], 2),
               ("mask + curve s", lambda r: r["mask_seconds"] + r["curve_seconds"], 2),
               ("t", lambda r: r["chosen_t"], 3))
  cols = ["variant", "seeds", *METRIC_COLUMNS, *(c[0] for c in time_cols)]
  lines += ["## 2. Mask vs. no mask", "",
            "`trained share`: share of the parameters the control point may move; times are "
            "wall seconds on this machine, compilation excluded (the curve's 10 epochs; the "
            "mask's two gradient passes).", ""]
  rec2 = {}
  for scenario in scenarios:
    rows = [_metric_row("mask k = 0.5, kr = 0", _records(cells[scenario][base], seeds),
                        time_cols),
            _metric_row("no mask (all tensors train)",
                        _records(cells[scenario]["abl_nomask"], seeds), time_cols)]
    rec2[scenario] = rows
    lines += [f"### {scenario}", "", S.markdown(rows, cols), ""]
  test2 = _paired({s: cells[s]["abl_nomask"] for s in scenarios},
                  {s: cells[s][base] for s in scenarios}, seeds, scenarios)
  lines += [_test_line("mask minus no mask", test2), ""]
  record["ablations"]["mask"] = {"rows": rec2, "test": test2}
  timing = study.get("_mask_timing") or []
  if timing:
    rows = [{"scenario": t["scenario"], "seed": t["seed"], "steps / epoch": t["steps_per_epoch"],
             "mask: epoch s": t["mask"]["median_epoch_seconds"],
             "no mask: epoch s": t["no mask"]["median_epoch_seconds"],
             "ratio": t["no mask"]["median_epoch_seconds"] / t["mask"]["median_epoch_seconds"],
             "mask computation s": t["mask_seconds"]} for t in timing]
    lines += ["Back-to-back timing (`--time-mask`: both variants of one (scenario, seed), "
              "interleaved epochs, median of the repeats, compilation excluded):", "",
              S.markdown(rows, list(rows[0])), ""]
    record["ablations"]["mask"]["timing"] = timing

  # (3) beta
  cols = ["variant", "seeds", *METRIC_COLUMNS, *(c[0] for c in T_COLUMNS)]
  lines += ["## 3. Adaptive vs. fixed beta", ""]
  rec3, tests3 = {}, {}
  for scenario in scenarios:
    rows = [_metric_row("adaptive beta", _records(cells[scenario][base], seeds), T_COLUMNS)]
    for beta in betas:
      rows.append(_metric_row(f"fixed beta = {beta:g}",
                              _records(cells[scenario][f"abl_beta{beta:g}"], seeds), T_COLUMNS))
    rec3[scenario] = rows
    lines += [f"### {scenario}", "", S.markdown(rows, cols), ""]
  for beta in betas:
    tests3[f"{beta:g}"] = _paired({s: cells[s][f"abl_beta{beta:g}"] for s in scenarios},
                                  {s: cells[s][base] for s in scenarios}, seeds, scenarios)
    lines.append(_test_line(f"adaptive minus fixed {beta:g}", tests3[f"{beta:g}"]))
  lines += ["", "![Avg. Gap by beta](ablation_beta.png)", ""]
  record["ablations"]["beta"] = {"rows": rec3, "tests": tests3}

  # (4) t and region over seeds, every method of the main table and the variants
  lines += ["## 4. Chosen t and effective region over seeds", "",
            "Per seed: the chosen t and the effective region {t : gap(t) < gap(1)} (empty: no "
            "point of the curve beats the base method's end point by the alignment gap).", ""]
  rec4 = {}
  for scenario in scenarios:
    rows = []
    sources = [(m.upper() + "+MCU", main_cells[scenario].get(m, {}))
               for m in study["methods"]]
    sources += [("RL line", cells[scenario]["abl_line"]),
                ("RL no mask", cells[scenario]["abl_nomask"])]
    sources += [(f"RL beta={b:g}", cells[scenario][f"abl_beta{b:g}"]) for b in betas]
    for label, by_seed in sources:
      records = _records(by_seed, seeds)
      if not records:
        continue
      row = {"cell": label, "seeds": len(records),
             "t per seed": ", ".join(f"{r['chosen_t']:.3f}" for r in records),
             "t": S.fmt([r["chosen_t"] for r in records], 3),
             "region length": S.fmt([r["region_length"] for r in records], 3),
             "non-empty regions": sum(1 for r in records if r["region"]),
             "regions": "; ".join(
                 " ∪ ".join(f"[{a:.2f}, {b:.2f}]" for a, b in r["region"]) or "∅"
                 for r in records),
             "per_seed": {"t": [r["chosen_t"] for r in records],
                          "region_length": [r["region_length"] for r in records],
                          "region": [r["region"] for r in records]}}
      rows.append(row)
    rec4[scenario] = rows
    lines += [f"### {scenario}", "",
              S.markdown(rows, ["cell", "seeds", "t per seed", "t", "region length",
                                "non-empty regions", "regions"]), ""]
  lines += ["![chosen t and regions](ablation_t_region.png)", ""]
  record["ablations"]["t_and_region"] = rec4
  return record, "\n".join(lines)


def time_mask(study, dataset, runs, scenario, seed, repeats: int = 3) -> dict:
  """Curve epochs with the MCU mask and without (every tensor trains), timed back to back.

  The per-cell curve times of table 2 come from different moments of a shared machine; this
  check runs both variants of one (scenario, seed) interleaved, ``repeats`` epochs each, from
  the same RL theta_p, and reports the median epoch time (compilation excluded). Each variant
  is the curve stage's trainer (``pipeline.curve_trainer``: every setting of ``curve``)."""
  import jax

  from mcu_jax.pipeline import config as config_lib
  from mcu_jax.pipeline import stages as pipeline
  from mcu_jax.runtime import mcu
  base = study["ablation"].get("base", "rl")
  directory = S.seed_dir(runs, study, scenario, seed) / base
  ctx = S.context(S.run_config(study, dataset, scenario, seed, base), directory, False)
  settings, curve_seed = ctx.config.curve, ctx.config.seed + config_lib.CURVE_SEED_OFFSET
  start, model_state = ctx.load_model("original")
  end, _ = ctx.load_model("unlearn")
  curve = settings.line(start, end)
  curve_data = mcu.curve_data(forget=ctx.arrays(ctx.split.forget),
                              retain=ctx.arrays(ctx.split.retain),
                              retain_ratio=settings.retain_ratio, seed=curve_seed)
  steps = -(-len(curve_data["labels"]) // settings.batch_size)
  variants, out = {}, {}
  for name, mask in (("mask", pipeline.load_mask(ctx, start)), ("no mask", None)):
    trainer = pipeline.curve_trainer(ctx, curve, mask=mask, steps_per_epoch=steps)
    placed = trainer.place(curve_data)
    state = trainer.init(model_state, jax.random.PRNGKey(curve_seed))
    seconds = trainer.compile(state, placed)
    variants[name] = [trainer, placed, state]
    out[name] = {"compile_seconds": seconds, "epoch_seconds": []}
  for _ in range(repeats):
    for name, (trainer, placed, state) in variants.items():
      tic = time.perf_counter()
      state, metrics = trainer.epoch(state, placed)
      jax.block_until_ready(metrics)
      out[name]["epoch_seconds"].append(time.perf_counter() - tic)
      variants[name][2] = state
  for name in out:
    out[name]["median_epoch_seconds"] = float(np.median(out[name]["epoch_seconds"]))
  out["steps_per_epoch"] = steps
  out["mask_seconds"] = ctx.record("mask")["seconds"]
  out["scenario"], out["seed"] = scenario, seed
  return out


# ---------------------------------------------------------------------------------------------
# Plots


def _mean_curve(records, key, name):
  if not records:
    return None, None, None
  ts = np.asarray(records[0]["sweep"]["ts"])
  values = np.stack([np.asarray(r["sweep"][key][name]) for r in records])
  return ts, values.mean(0), values.std(0)


def plot_line_vs_curve(study, cells, path):
  base = study["ablation"].get("base", "rl")
  scenarios = [s for s in cells if cells[s][base] or cells[s]["abl_line"]]
  if not scenarios:
    return None
  fig = S.figure((5.5 * len(scenarios), 4.3))
  colors = {"retain": "tab:blue", "forget": "tab:red", "test": "tab:green"}
  for i, scenario in enumerate(scenarios):
    ax = fig.add_subplot(1, len(scenarios), i + 1)
    for name, style, label in (("abl_line", "--", "line"), (base, "-", "Bezier")):
      records = list(cells[scenario][name].values())
      for set_name, color in colors.items():
        ts, mean, std = _mean_curve(records, "accuracy", set_name)
        if ts is None:
          continue
        ax.plot(ts, mean, style, color=color, label=f"{set_name}, {label}")
        ax.fill_between(ts, mean - std, mean + std, color=color, alpha=0.12, linewidth=0)
    records = list(cells[scenario][base].values())
    if records:
      ax.axhline(records[0]["targets"]["forget"], color="tab:red", linestyle=":", linewidth=1,
                 label="forget target")
      for r in records:
        ax.axvline(r["chosen_t"], color="black", linewidth=0.6, alpha=0.5)
    ax.set_xlabel("t (0 = original, 1 = RL's theta_p)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{scenario}: line (dashed) vs trained Bezier (solid), mean ± std")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
  return S.save_png(fig, path)


def plot_beta(study, cells, path):
  base = study["ablation"].get("base", "rl")
  betas = [float(b) for b in study["ablation"].get("fixed_betas", [0.05, 0.2, 0.5])]
  names = [(base, "adaptive")] + [(f"abl_beta{b:g}", f"{b:g}") for b in betas]
  scenarios = list(cells)
  fig = S.figure((4.5 * len(scenarios), 3.8))
  for i, scenario in enumerate(scenarios):
    ax = fig.add_subplot(1, len(scenarios), i + 1)
    stats = [S.mean_std([r["mcu"]["AvgGap"] for r in cells[scenario][n].values()])
             for n, _ in names]
    x = np.arange(len(names))
    ax.bar(x, [s[0] for s in stats], yerr=[s[1] for s in stats], capsize=3,
           color=["tab:blue"] + ["tab:gray"] * len(betas))
    ax.set_xticks(x)
    ax.set_xticklabels([label for _, label in names])
    ax.set_xlabel("beta")
    ax.set_ylabel("Avg. Gap to Retrain")
    ax.set_title(f"{scenario}: RL + MCU")
    ax.grid(True, axis="y", alpha=0.3)
  return S.save_png(fig, path)


def plot_t_region(study, main_cells, path):
  scenarios = list(main_cells)
  methods = study["methods"]
  fig = S.figure((5.5 * len(scenarios), 0.5 + 0.45 * len(methods) * len(study["seeds"])))
  for i, scenario in enumerate(scenarios):
    ax = fig.add_subplot(1, len(scenarios), i + 1)
    y, labels = 0, []
    for method in methods:
      for seed in study["seeds"]:
        r = main_cells[scenario].get(method, {}).get(seed)
        if r is not None:
          for a, b in r["region"]:
            ax.plot([a, b], [y, y], color="gold", linewidth=6, solid_capstyle="butt")
          ax.plot([r["chosen_t"]], [y], "k|", markersize=12)
        labels.append(f"{method.upper()} s{seed}")
        y += 1
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=6)
    ax.set_xlim(0, 1)
    ax.set_xlabel("t")
    ax.set_title(f"{scenario}: effective region (gold) and chosen t (|)")
    ax.grid(True, axis="x", alpha=0.3)
  return S.save_png(fig, path)


def main(argv=None) -> int:
  p = S.parser(__doc__.split("\n")[0])
  p.add_argument("--follow", type=float, default=0.0, metavar="SECONDS",
                 help="run beside main_table.py: wait up to SECONDS for each base-method cell "
                      "instead of making it")
  p.add_argument("--time-mask", action="store_true",
                 help="also time curve epochs with and without the mask back to back (first "
                      "seed of each scenario)")
  args = p.parse_args(argv)
  study = S.setup(args)
  dataset = S.dataset_name(study, args.runs_dir)
  start = time.time()
  failures = []
  if not args.report_only:
    S.log(f"ablations of {study['name']}: {S.scale_note(study)}")
    failures = run(study, dataset, args.runs_dir, args.progress, args.follow)
  base = study["ablation"].get("base", "rl")
  names = [base, *variants(study)]
  cells = S.collect_cells(study, args.runs_dir, names)
  results = args.results_dir / study["name"]
  timing_path = results / "mask_timing.json"
  if args.time_mask:
    timing = []
    for scenario in study["scenarios"]:
      seed = study["seeds"][0]
      if (S.seed_dir(args.runs_dir, study, scenario, seed) / base / "report.json").exists():
        timing.append(time_mask(study, dataset, args.runs_dir, scenario, seed))
    from mcu_jax import io
    io.write_json(timing_path, timing)
  if timing_path.exists():
    study["_mask_timing"] = S.read_json(timing_path)
  import main_table
  main_cells = main_table.collect(study, args.runs_dir)
  record, text = tables(study, cells, main_cells)
  plot_line_vs_curve(study, cells, results / "ablation_line_vs_curve.png")
  plot_beta(study, cells, results / "ablation_beta.png")
  plot_t_region(study, main_cells, results / "ablation_t_region.png")
  record["failures"] = failures
  record["wall_seconds_this_invocation"] = time.time() - start
  return S.finish(study, results, "ablations", record, text, failures)


if __name__ == "__main__":
  sys.exit(main())
