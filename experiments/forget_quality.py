"""Forgetting quality over model populations: does "MCU improves base methods" survive?

    python3 experiments/forget_quality.py --config experiments/configs/forget_quality_digits.yaml
    python3 experiments/forget_quality.py \
        --config experiments/configs/forget_quality_fashion_mnist.yaml

For every scenario of the study config (seed 0), one run directory under ``--runs-dir`` runs
the ``forget-quality`` stage (``mcu_jax.pipeline.forget_stage``): populations of
``run.forget_quality.models`` originals, two retrained populations and, for each method, its
base and base+MCU populations; scored with the NeurIPS 2023 challenge's F and U-LiRA against
retraining, with the retrain-vs-retrain floor, 95 % bootstrap intervals over models and
model-level paired permutation tests of base vs base+MCU. Writes
``<results>/<study>/forget_quality.{md,json}``, the per-scenario plots and
``confidences_<scenario>.npz`` (every population's per-model confidences, from which every
number can be recomputed) next to them.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):   # run as a file: the checkout
  sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments import study as S  # noqa: E402


def _ci(score: dict, key: str) -> str:
  low, high = score[f"{key}_ci95"]
  return f"{score[key]:.3f} [{low:.3f}, {high:.3f}]"


def verdict(scores: dict, methods: list[str], alpha: float = 0.05) -> list[str]:
  """One sentence per method: what the model-level tests say of MCU (the unit is the model
  pair; the per-example description is not a test)."""
  floor = scores["floor"]
  lines = []
  for method in methods:
    base, mcu = scores[method], scores.get(f"{method}+mcu")
    if mcu is None:
      continue
    f, auc = mcu["vs_base"]["F"], mcu["vs_base"]["lira_auc"]
    better = (f["difference"] > 0 and f["p_value"] < alpha,
              auc["difference"] < 0 and auc["p_value"] < alpha)
    worse = (f["difference"] < 0 and f["p_value"] < alpha,
             auc["difference"] > 0 and auc["p_value"] < alpha)
    change = ("improves forgetting quality" if any(better) and not any(worse)
              else "worsens forgetting quality" if any(worse) and not any(better)
              else "gives mixed forgetting quality" if any(better)
              else "shows no detectable change in forgetting quality")
    far = mcu["F_ci95"][1] < floor["F_ci95"][0]
    n = len(mcu["ts"]) if "ts" in mcu else None
    lines.append(
        f"- **{method.upper()}**: MCU {change} (model-level paired permutation tests, "
        f"n = {n} model pairs, alpha = {alpha}): F {_ci(base, 'F')} -> {_ci(mcu, 'F')}, "
        f"difference {f['difference']:+.4f} [{f['ci95'][0]:+.4f}, {f['ci95'][1]:+.4f}], "
        f"p = {f['p_value']:.3g}; LiRA AUC {_ci(base, 'lira_auc')} -> {_ci(mcu, 'lira_auc')}, "
        f"difference {auc['difference']:+.4f} [{auc['ci95'][0]:+.4f}, {auc['ci95'][1]:+.4f}], "
        f"p = {auc['p_value']:.3g}. The floor (retrain B) is F {_ci(floor, 'F')}, AUC "
        f"{_ci(floor, 'lira_auc')}"
        + ("; MCU's F stays below the floor's interval: far from retraining" if far else "")
        + f". RA {base['retain_acc']:.1f} -> {mcu['retain_acc']:.1f}, TA "
        f"{base['test_acc']:.1f} -> {mcu['test_acc']:.1f}.")
  return lines


def main(argv=None) -> int:
  args = S.parser(__doc__.split("\n")[0]).parse_args(argv)
  study = S.setup(args)
  dataset = S.dataset_name(study, args.runs_dir)
  from mcu_jax.pipeline import stages as pipeline
  results = args.results_dir / study["name"]
  record = {"study": study["name"], "config_file": study["config_file"],
            "command": " ".join(["python3", "experiments/forget_quality.py",
                                 *(sys.argv[1:] if argv is None else argv)]),
            "scenarios": {}}
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
    shutil.copy2(directory / out["confidences"], results / f"confidences_{scenario}.npz")
    record["scenarios"][scenario].update(
        confidences=f"confidences_{scenario}.npz", statistics=out["statistics"],
        seconds=out["seconds"], forget_indices=ctx.split.forget.tolist(),
        forget_labels=ctx.dataset.train.labels[ctx.split.forget].tolist())
    body = out["table"].split("\n", 2)[2].replace("(forget_quality.png)", f"({png})")
    text += [f"## {scenario} forgetting", "", body, "", "Verdict:", "",
             *verdict(out["scores"], methods), ""]
  S.write_outputs(results, "forget_quality", record, "\n".join(text))
  S.log(f"wrote {results / 'forget_quality.md'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
