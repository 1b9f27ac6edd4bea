"""Forgetting quality over model populations: does "MCU improves base methods" survive?

    python3 experiments/forget_quality.py --config experiments/configs/forget_quality_digits.yaml
    python3 experiments/forget_quality.py \
        --config experiments/configs/forget_quality_fashion_mnist.yaml

For every scenario of the study config (seed 0), one run directory under ``--runs-dir`` runs
the ``forget-quality`` stage (``mcu_jax.forget_stage``): populations of
``run.forget_quality.models`` originals, two retrained populations and, for each method, its
base and base+MCU populations; scored with the NeurIPS 2023 challenge's F and U-LiRA against
retraining, with the retrain-vs-retrain floor, and compared example by example. Writes
``<results>/<study>/forget_quality.{md,json}`` and the per-scenario plots next to them.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import study as S  # noqa: E402


def verdict(scores: dict, methods: list[str]) -> list[str]:
  """One sentence per method: what the stronger evaluation says of MCU."""
  floor = scores["floor"]
  lines = []
  for method in methods:
    base, mcu = scores[method], scores.get(f"{method}+mcu")
    if mcu is None:
      continue
    paired = mcu["paired"]
    d_f, d_auc = mcu["F"] - base["F"], base["lira_auc"] - mcu["lira_auc"]
    better, worse = (d_f > 1e-3 or d_auc > 1e-3), (d_f < -1e-3 or d_auc < -1e-3)
    change = ("improves forgetting quality" if better and not worse
              else "worsens forgetting quality" if worse and not better
              else "gives mixed forgetting quality" if better
              else "leaves forgetting quality unchanged")
    significant = paired["wilcoxon_p"] < 0.05
    lines.append(
        f"- **{method.upper()}**: MCU {change}: F {base['F']:.3f} -> "
        f"{mcu['F']:.3f} (floor {floor['F']:.3f}), LiRA AUC {base['lira_auc']:.3f} -> "
        f"{mcu['lira_auc']:.3f} (floor {floor['lira_auc']:.3f}); per example, epsilon falls on "
        f"{paired['mcu_lower']} and rises on {paired['mcu_higher']} of {paired['examples']} "
        f"(Wilcoxon p = {paired['wilcoxon_p']:.3g}, "
        f"{'significant' if significant else 'not significant'} at 0.05); RA "
        f"{base['retain_acc']:.1f} -> {mcu['retain_acc']:.1f}, TA {base['test_acc']:.1f} -> "
        f"{mcu['test_acc']:.1f}.")
  return lines


def main(argv=None) -> int:
  args = S.parser(__doc__.split("\n")[0]).parse_args(argv)
  study = S.setup(args)
  dataset = S.dataset_name(study, args.runs_dir)
  from mcu_jax import pipeline
  results = args.results_dir / study["name"]
  record = {"study": study["name"], "config_file": study["config_file"], "scenarios": {}}
  previous = results / "forget_quality.json"
  previous = json.loads(previous.read_text())["scenarios"] if previous.exists() else {}
  text = [f"# Forgetting quality over populations: {study['name']}", ""]
  for scenario in study["scenarios"]:
    directory = S.seed_dir(args.runs_dir, study, scenario, study["seeds"][0]) / "forget_quality"
    config = S.run_config(study, dataset, scenario, study["seeds"][0], study["methods"][0])
    start = time.time()
    ctx = S.context(config, directory, args.progress)
    subset = study.get("data") or {}
    data_note = (f"a stratified subset of {subset['train_subset']} train / "
                 f"{subset['test_subset']} test images" if subset.get("train_subset") else
                 "all images")
    options = f" {config.model_options}" if config.model_options else ""
    text += [f"Setting: {study['run']['dataset']} ({data_note}), "
             f"{config.model}{options}, originals and retrained models "
             f"{config.train.epochs} epochs (lr {config.train.lr}, batch "
             f"{config.train.batch_size}); curve {config.curve.epochs} epochs, "
             f"{config.sweep.points} sweep points; base methods at their defaults.", ""]
    if not args.report_only:
      S.log(f"{scenario}: populations of {config.forget_quality.models} in {directory}")
      pipeline.run_stage(ctx, "forget-quality")
    out = ctx.run.read("forget_quality")
    methods = out["methods"]
    record["scenarios"][scenario] = {"models": out["models"], "methods": methods,
                                     "scores": out["scores"], "populations": out["populations"],
                                     "wall_seconds": time.time() - start}
    if args.report_only:     # the wall time of the run that made the populations
      record["scenarios"][scenario]["wall_seconds"] = previous.get(scenario, {}).get(
          "wall_seconds")
    png = f"forget_quality_{scenario}.png"
    results.mkdir(parents=True, exist_ok=True)
    shutil.copy2(directory / "forget_quality.png", results / png)
    body = out["table"].split("\n", 2)[2].replace("(forget_quality.png)", f"({png})")
    text += [f"## {scenario} forgetting", "", body, "", "Verdict:", "",
             *verdict(out["scores"], methods), ""]
  S.write_outputs(results, "forget_quality", record, "\n".join(text))
  S.log(f"wrote {results / 'forget_quality.md'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
