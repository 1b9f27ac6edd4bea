"""Shared machinery of the study scripts (``main_table.py``, ``ablations.py``).

A study config (YAML, see ``configs/``) holds the study's own keys (data subset, seeds,
scenarios, methods, ablation settings) and under ``run:`` an ``mcu_jax`` RunConfig. Every model
is produced by ``mcu_jax.pipeline.stages``'s stage functions in a run directory:

    <runs>/<study>/<scenario>/seed<k>/base/          original + retrain + MCU mask (shared)
    <runs>/<study>/<scenario>/seed<k>/<method>/      one base method: unlearn, curve, sweep, report
    <runs>/<study>/<scenario>/seed<k>/abl_<variant>/ ablations (RL's theta_p, other curve settings)

A method or variant directory adopts what it shares (``pipeline.copy_stage``: theta_o, the
retrained model, the mask and, for ablations, RL's theta_p with their records), so the original
and retrained models are trained once per (scenario, seed); every directory makes the same split
from the same configuration, so every method sees the same D_f/D_r.
A cell is done when its ``report.json`` exists: rerunning a study skips finished cells and
resumes interrupted training stages from their epoch checkpoints.

The seed changes the forget split (random forgetting), the initialisation of the original and
retrained models, the base methods' randomness and the curve's t draws (mcu_jax derives all of
them from ``RunConfig.seed``).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

EXPERIMENTS = Path(__file__).resolve().parent
REPO = EXPERIMENTS.parent
METRICS = ("UA", "RA", "TA", "MIA", "loss_auc", "AvgGap", "Gap3", "RTE")
HEADERS = {"UA": "UA", "RA": "RA", "TA": "TA", "MIA": "MIA-Eff.", "loss_auc": "loss-AUC",
           "AvgGap": "Avg. Gap", "Gap3": "Gap w/o MIA", "RTE": "RTE (s)", "t": "t"}


# ---------------------------------------------------------------------------------------------
# Configuration


def load_study(path, overrides=()) -> dict:
  """The study config: the YAML file, then ``key.sub=value`` overrides (values as YAML)."""
  from mcu_jax.pipeline import config as config_lib
  study = config_lib.read_file(path)
  for text in overrides:
    study = config_lib.merge(study, config_lib.parse_override(text))
  for key in ("name", "seeds", "scenarios", "methods", "run"):
    if key not in study:
      raise SystemExit(f"{path}: the study config needs a {key!r} key")
  study.setdefault("method_options", {})
  study.setdefault("data", {})
  study.setdefault("ablation", {"base": "rl", "fixed_betas": [0.05, 0.2, 0.5]})
  path = Path(path).resolve()
  study["config_file"] = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
  return study


def parser(description: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--config", type=Path, default=EXPERIMENTS / "configs" / "fashion_mnist.yaml",
                 help="study config (YAML)")
  p.add_argument("--smoke", action="store_true",
                 help="the tiny digits study (configs/digits_smoke.yaml), for the test")
  p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                 help="override a study key, e.g. seeds=[0] or run.train.epochs=1")
  p.add_argument("--runs-dir", type=Path, default=EXPERIMENTS / "runs",
                 help="where run directories go (not committed)")
  p.add_argument("--results-dir", type=Path, default=EXPERIMENTS / "results",
                 help="where tables, JSON and plots go (committed)")
  p.add_argument("--report-only", action="store_true",
                 help="no training: tables from the cells already done")
  p.add_argument("--progress", action="store_true", help="progress bars of the stages")
  p.add_argument("--scenario", dest="only_scenarios", action="append", default=[],
                 metavar="NAME", help="run only this scenario (repeatable; default: all)")
  return p


def setup(args) -> dict:
  """Study config and JAX settings (the compilation cache)."""
  path = EXPERIMENTS / "configs" / "digits_smoke.yaml" if args.smoke else args.config
  study = load_study(path, args.overrides)
  if getattr(args, "only_scenarios", None):
    unknown = set(args.only_scenarios) - set(study["scenarios"])
    if unknown:
      raise SystemExit(f"--scenario: {sorted(unknown)} not in {sorted(study['scenarios'])}")
    study["scenarios"] = {k: v for k, v in study["scenarios"].items()
                          if k in args.only_scenarios}
  import jax
  cache = args.runs_dir / "jax_cache"
  cache.mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(cache))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  study["backend"] = jax.default_backend()
  return study


def log(message: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------
# Data: an optional fixed, stratified subset written as IDX files


def _stratified(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
  if count >= len(labels):
    return np.arange(len(labels))
  from sklearn.model_selection import train_test_split
  idx, _ = train_test_split(np.arange(len(labels)), train_size=count, random_state=seed,
                            stratify=labels)
  return np.sort(idx)


def dataset_name(study: dict, runs: Path) -> str:
  """The RunConfig.dataset of the study: the named data set, or an ``idx:`` directory holding
  the stratified subset (made once; the directory's last component keeps the data set's name
  so that mcu_jax uses its normalisation constants)."""
  name = study["run"].get("dataset", "digits")
  spec = study.get("data") or {}
  n_train, n_test = spec.get("train_subset"), spec.get("test_subset")
  if not n_train and not n_test:
    return name
  from mcu_jax import data
  seed = int(spec.get("subset_seed", 0))
  base = name.split(":")[-1].replace("-", "_")
  directory = runs / "data" / f"{base}_n{n_train or 'all'}_t{n_test or 'all'}_s{seed}" / base
  if not (directory / "t10k-labels-idx1-ubyte").exists():
    full = data.load_dataset(name)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for ds, count, prefix in ((full.train, n_train, "train"), (full.test, n_test, "t10k")):
      idx = _stratified(ds.labels, int(count or len(ds)), seed)
      images = ds.images[idx]
      data.write_idx(tmp / f"{prefix}-images-idx3-ubyte",
                     images[..., 0] if images.shape[-1] == 1 else images)
      data.write_idx(tmp / f"{prefix}-labels-idx1-ubyte", ds.labels[idx].astype(np.uint8))
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)
  return "idx:" + str(directory)


# ---------------------------------------------------------------------------------------------
# Run directories


def run_config(study: dict, dataset: str, scenario: str, seed: int, method: str = "rl",
               extra: dict | None = None):
  """The mcu_jax RunConfig of one directory."""
  from mcu_jax.pipeline import config as config_lib
  values = copy.deepcopy(study["run"])
  values["dataset"] = dataset
  values["seed"] = int(seed)
  values["forget"] = dict(study["scenarios"][scenario])
  values["unlearn"] = {"method": method,
                       "options": dict((study.get("method_options") or {}).get(method) or {})}
  if extra:
    values = config_lib.merge(values, extra)
  return config_lib.load_config(base=values)


def seed_dir(runs: Path, study: dict, scenario: str, seed: int) -> Path:
  return runs / study["name"] / scenario / f"seed{seed}"


def context(config, directory: Path, progress: bool):
  """The pipeline context of one run directory of the study (resuming its stages)."""
  from mcu_jax.pipeline import stages as pipeline
  return pipeline.make_context(config, directory, progress=progress, resume=True)


def _run_stages(ctx, stages, label: str) -> dict:
  from mcu_jax.pipeline import stages as pipeline
  seconds = {}
  for stage in stages:
    if ctx.done(pipeline.STAGE_OF[stage].record):
      continue
    start = time.perf_counter()
    pipeline.run_stage(ctx, stage)
    seconds[stage] = time.perf_counter() - start
    log(f"  {label}: {stage} {seconds[stage]:.1f} s")
  return seconds


def _note_wall(directory: Path, seconds: dict) -> None:
  if not seconds:
    return
  path = directory / "wall_seconds.json"
  old = json.loads(path.read_text()) if path.exists() else {}
  old.update({k: round(v, 2) for k, v in seconds.items()})
  path.write_text(json.dumps(old, indent=2) + "\n")


def ensure_base(study, dataset, runs, scenario, seed, progress=False) -> Path:
  """theta_o, the retrained model and the MCU mask of (scenario, seed)."""
  directory = seed_dir(runs, study, scenario, seed) / "base"
  if all((directory / f"{r}.json").exists() for r in ("original", "retrain", "mask")):
    return directory
  ctx = context(run_config(study, dataset, scenario, seed), directory, progress)
  _note_wall(directory, _run_stages(ctx, ("train", "retrain", "mask"),
                                    f"{scenario}/seed{seed}/base"))
  return directory


def ensure_cell(study, dataset, runs, scenario, seed, name, method, extra=None,
                from_method: str | None = None, progress=False) -> Path:
  """One method (or ablation variant) of (scenario, seed), up to its report; returns its dir.

  ``from_method``: reuse that method directory's theta_p (ablations) instead of unlearning.
  ``extra``: RunConfig overrides of the variant (curve / mask settings).
  """
  root = seed_dir(runs, study, scenario, seed)
  directory = root / name
  if (directory / "report.json").exists():
    return directory
  from mcu_jax.pipeline import stages as pipeline
  base = root / "base"
  ctx = context(run_config(study, dataset, scenario, seed, method, extra), directory, progress)
  shared = ["train", "retrain"]
  if ((extra or {}).get("mask") or {}).get("enabled", True):
    shared.append("mask")
  for stage in shared:
    pipeline.copy_stage(ctx, base, stage)
  if from_method is not None:
    pipeline.copy_stage(ctx, root / from_method, "unlearn")
  stages = ("unlearn", "mask", "curve", "sweep", "report")
  _note_wall(directory, _run_stages(ctx, stages, f"{scenario}/seed{seed}/{name}"))
  return directory


def guarded(fn, *args, failures: list, label: str, **kwargs):
  """Runs ``fn``; on an exception logs it, records it in ``failures`` and returns None."""
  try:
    return fn(*args, **kwargs)
  except KeyboardInterrupt:
    raise
  except Exception as e:   # a failing method must not stop the study
    log(f"FAILED {label}: {type(e).__name__}: {e}")
    failures.append({"cell": label, "error": f"{type(e).__name__}: {e}",
                     "traceback": traceback.format_exc(limit=5)})
    return None


# ---------------------------------------------------------------------------------------------
# Reading cells


def read_json(path: Path) -> Any:
  return json.loads(Path(path).read_text())


def cell_record(directory: Path) -> dict | None:
  """What the tables need from one finished method/variant directory, or None."""
  directory = Path(directory)
  if not (directory / "report.json").exists():
    return None
  report = read_json(directory / "report.json")
  rows = report["rows"]
  sweep = read_json(directory / "sweep.json")
  curve = read_json(directory / "curve.json")
  mask = read_json(directory / "mask.json") if (directory / "mask.json").exists() else {}
  pick = lambda row: {k: row.get(k) for k in (*METRICS, "TA_forgotten", "FA") if k in row}
  region = [list(r) for r in sweep["region"]]
  picked = [pick(row) for row in rows[:4]]
  for row in picked:    # Avg. Gap over UA, RA, TA only (the SVC MIA can saturate, see README)
    row["Gap3"] = float(np.mean([abs(row[k] - picked[1][k]) for k in ("UA", "RA", "TA")]))
  return {
      "original": picked[0], "retrain": picked[1], "base": picked[2], "mcu": picked[3],
      "chosen_t": sweep["chosen_t"], "gap_at_t": sweep["gap"],
      "region": region, "region_length": float(sum(b - a for a, b in region)),
      "targets": sweep["targets"], "sweep": sweep["sweep"], "sweep_seconds": sweep["seconds"],
      "curve_seconds": curve.get("curve_seconds", 0.0), "curve_trained": curve["trained"],
      "mask_seconds": mask.get("seconds", 0.0), "mask_fraction": mask.get("fraction", 1.0),
      "mask_enabled": mask.get("enabled", False),
  }


# ---------------------------------------------------------------------------------------------
# Statistics and formatting


def collect_cells(study: dict, runs: Path, names) -> dict:
  """{scenario: {name: {seed: cell record}}} of the finished cells named ``names``."""
  out = {}
  for scenario in study["scenarios"]:
    out[scenario] = {}
    for name in names:
      cells = {}
      for seed in study["seeds"]:
        record = cell_record(seed_dir(runs, study, scenario, seed) / name)
        if record is not None:
          cells[seed] = {**record, "seed": seed}
      out[scenario][name] = cells
  return out


def mean_std(values) -> tuple[float, float, int]:
  values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
  if not values:
    return float("nan"), float("nan"), 0
  std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return float(np.mean(values)), std, len(values)


def fmt(values, digits: int = 2) -> str:
  m, s, n = mean_std(values)
  if n == 0:
    return "n/a"
  return f"{m:.{digits}f} ± {s:.{digits}f}"


def paired_tests(before, after) -> dict:
  """Paired comparison of ``after`` - ``before`` (e.g. MCU's Avg. Gap minus the base's).

  Wilcoxon signed-rank (two-sided, exact for small n when there are no ties/zeros; scipy's
  default otherwise) and the paired t-test (two-sided). NaN where n is too small.
  """
  from scipy import stats
  before, after = np.asarray(before, float), np.asarray(after, float)
  diff = after - before
  out = {"n": int(diff.size), "mean_diff": float(np.mean(diff)) if diff.size else float("nan"),
         "improved": int(np.sum(diff < 0)), "worse": int(np.sum(diff > 0)),
         "differences": diff.tolist()}
  out["wilcoxon_p"] = float("nan")
  out["ttest_p"] = float("nan")
  if diff.size >= 2 and np.any(diff != 0):
    try:
      out["wilcoxon_p"] = float(stats.wilcoxon(after, before).pvalue)
    except ValueError:
      pass
    out["ttest_p"] = float(stats.ttest_rel(after, before).pvalue)
  return out


def finish(study: dict, results: Path, stem: str, record: dict, text: str,
           failures: list) -> int:
  """Writes a table's JSON and markdown (failed cells listed under the table); exit code 0."""
  record["backend"] = study["backend"]
  if failures:
    text += "\n## Cells that failed\n\n" + "\n".join(
        f"- {f['cell']}: {f['error']}" for f in failures) + "\n"
  write_outputs(results, stem, record, text)
  log(f"wrote {results / (stem + '.md')}")
  return 0


def markdown(rows: list[dict], columns: list) -> str:
  from mcu_jax.pipeline import report
  return report.markdown_table(rows, columns)


def write_outputs(results: Path, stem: str, record: dict, text: str) -> None:
  from mcu_jax import io
  io.write_json(results / f"{stem}.json", record)
  io.write_markdown(results / f"{stem}.md", text)


def figure(size=(7.0, 4.5)):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=size, dpi=110)
  FigureCanvasAgg(fig)
  return fig


def save_png(fig, path: Path) -> str:
  from mcu_jax import io
  fig.tight_layout()
  return io.atomic_write(path, lambda f: fig.savefig(f, format="png"), mode="wb")


def scale_note(study: dict) -> str:
  from mcu_jax.runtime.mcu import CurveOptions
  from mcu_jax.runtime.sweep import SweepOptions
  run, spec = study["run"], study.get("data") or {}
  defaults = {f.name: getattr(CurveOptions(), f.name) for f in dataclasses.fields(CurveOptions)}
  train, curve = run.get("train", {}), {**defaults, **run.get("curve", {})}
  parts = [f"data {run.get('dataset')}"]
  if spec.get("train_subset") or spec.get("test_subset"):
    parts.append(f"stratified subset: {spec.get('train_subset') or 'all'} train / "
                 f"{spec.get('test_subset') or 'all'} test images (subset seed "
                 f"{spec.get('subset_seed', 0)})")
  parts.append(f"model {run.get('model')} {run.get('model_options') or ''}".strip())
  parts.append(f"original/retrain {train.get('epochs')} epochs, lr {train.get('lr')}, batch "
               f"{train.get('batch_size')}")
  parts.append(f"curve {curve['epochs']} epochs, lr {curve['lr']}, batch "
               f"{curve['batch_size']}, retain_ratio {curve['retain_ratio']}")
  parts.append(f"{(run.get('sweep') or {}).get('points', SweepOptions.points)} sweep points; "
               f"seeds {study['seeds']}")
  if study.get("method_options"):
    parts.append(f"base-method overrides {study['method_options']}")
  return "; ".join(parts)
