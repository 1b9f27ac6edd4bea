"""``mcu-jax relearn``: the relearn attack (``mcu_jax.relearn``) on the run's four models.

After ``sweep`` it relearns, with ``config.relearn`` (a ``RelearnConfig``) and the seed
``seed + 400``, the original model theta_o, the retrained model (the reference curve: what
relearning does to a model that never saw D_f), the base method's theta_p and the MCU point at
the sweep's chosen t, each with its BatchNorm statistics first recomputed as every row of the
report is (``Context.recalibrate``; the MCU point has no statistics of its own). All four see
the same batches and run one compiled program. Forget accuracy is read on D_f (with
``relearn.source=forget``: on the D_f examples not relearned), retain and test accuracy on D_r
and the test set (class forgetting: its other classes), at 0, K/4, K/2, 3K/4 and K steps.

Writes ``relearn/relearn.json`` (per model its curve, ``RelearnResult.to_dict``),
``relearn/relearn.png`` (forget accuracy vs steps, one line per model) and the record
``relearn.json`` listing them. A finished relearn stage makes the run's report not done, so
that the next ``mcu-jax report`` (or ``run``) remakes it with the "relearn rebound" column and
section (forget accuracy after K steps minus before).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

from mcu_jax import io, relearn
from mcu_jax.core.curves import point
from mcu_jax.pipeline import context, report
from mcu_jax.pipeline.context import Context
from mcu_jax.pipeline.rundir import Stage, StageError
from mcu_jax.runtime import signals

SEED_OFFSET = 400
"""The relearn attack's seed (its forget subset and its batches) is ``seed + 400``."""
CURVES = "relearn/relearn.json"
PLOT = "relearn/relearn.png"
MODELS = ("original", "retrain", "unlearn", "mcu")
"""The relearned models, in the report's row order."""


def labels(ctx: Context) -> dict[str, str]:
  """{model key: the name of its row in the report} ("RL", "RL+MCU (t=0.93)", ...)."""
  method = ctx.record("unlearn")["method"].upper()
  t = ctx.record("sweep")["chosen_t"]
  return {"original": "Original", "retrain": "Retrain", "unlearn": method,
          "mcu": f"{method}+MCU (t={t:.2f})"}


def _model(ctx: Context, key: str):
  """(params, model_state) of model ``key``, BatchNorm statistics recomputed."""
  if key == "mcu":
    from mcu_jax.pipeline import stages  # stages registers this module: import when run
    curve, model_state = stages.load_curve(ctx)
    params = point(curve, ctx.record("sweep")["chosen_t"])
  else:
    params, model_state = ctx.load_model(key)
  return params, ctx.recalibrate(params, model_state)


def table(curves: dict, names: dict[str, str]) -> str:
  """Markdown: per model, forget accuracy at every reading and the rebound."""
  rows = []
  for key, curve in curves.items():
    row: dict[str, Any] = {"model": names[key]}
    row.update({f"FA@{s}": acc for s, acc in zip(curve["steps"], curve["forget_acc"])})
    row.update({"rebound": curve["rebound"],
                "RA@K": None if curve["retain_acc"] is None else curve["retain_acc"][-1],
                "TA@K": None if curve["test_acc"] is None else curve["test_acc"][-1]})
    rows.append(row)
  return report.markdown_table(rows)


def stage_relearn(ctx: Context, stage: Stage) -> dict:
  """Relearns the four models, writes the curves, the plot and the record; makes the report
  not done (module docstring)."""
  config = ctx.config.relearn
  ctx.log(f"[relearn] {config.steps} steps of SGD lr {config.lr:g} on "
          f"{'D_r' if config.source == 'retain' else f'{config.forget_examples} D_f examples'}")
  names = labels(ctx)
  sets = ctx.eval_sets()
  programs: dict = {}
  curves, start = {}, time.perf_counter()
  for key in MODELS:
    signals.check(f"relearning {key}")
    params, model_state = _model(ctx, key)
    result = relearn.relearn(
        ctx.apply, params, model_state, forget=sets["forget"], retain=sets["retain"],
        test=sets["test"], config=config, seed=ctx.config.seed + SEED_OFFSET,
        preprocess=ctx.preprocess_train, eval_batch_size=ctx.config.eval_batch_size,
        mesh=ctx.mesh, progress=ctx.progress, programs=programs)
    curves[key] = result.to_dict()
    ctx.log(f"[relearn] {names[key]}: forget accuracy "
            + " -> ".join(f"{a:.1f}" for a in result.forget_acc)
            + f" (rebound {result.rebound:+.1f})")
  wall = time.perf_counter() - start
  text = table(curves, names)
  ctx.run.write_json(ctx.run_dir / CURVES, {
      "config": dataclasses.asdict(config), "seed": ctx.config.seed + SEED_OFFSET,
      "labels": names, "models": curves})
  ctx.run.write_file(lambda path: report.plot_relearn(
      {names[k]: c for k, c in curves.items()}, path=path,
      title=f"Relearn attack: {config.steps} steps on "
            f"{'D_r' if config.source == 'retain' else 'part of D_f'}"), ctx.run_dir / PLOT)
  record = context.finish(ctx, stage, {
      "rebound": {key: curve["rebound"] for key, curve in curves.items()}, "labels": names,
      "seconds": {key: curve["seconds"] for key, curve in curves.items()},
      "compile_seconds": sum(curve["compile_seconds"] for curve in curves.values()),
      "wall_seconds": wall, "table": text,
      "files": {name: str(ctx.run_dir / name) for name in (CURVES, PLOT)}})
  ctx.run.remove(["report.json"])       # the report remakes itself with the rebound
  return record


def for_report(ctx: Context) -> dict | None:
  """The curves of a current relearn stage ({model key: curve}, ``RelearnResult.to_dict``,
  with ``labels``), or None when it has not run or is not current: the report then has no
  relearn column."""
  try:
    ctx.record("relearn")
  except StageError:
    return None
  return io.read_json(ctx.run_dir / CURVES)


__all__ = ["stage_relearn", "for_report", "table", "labels", "MODELS", "CURVES", "PLOT",
           "SEED_OFFSET"]
