"""The MCU job as stages over a run directory: each loads its inputs, calls the library, saves.

    train    theta_o on the whole training set        original.json, original/model
    retrain  the gold standard on D_r (same recipe)   retrain.json, retrain/model
    unlearn  theta_p from a base method               unlearn.json, unlearn/model
    mask     MCU's tensor mask on theta_o             mask.json
    curve    the curve's trained control point        curve.json, curve/controls
    sweep    phi(t) along t and the chosen t          sweep.json
    report   the metrics table, markdown and plots    report.json, report.md, *.png
    relearn  (on request) the relearn attack on the   relearn.json, relearn/relearn.json,
             four models of the report                relearn/relearn.png
    forget-quality  (on request) populations          forget_quality.json, ...

``STAGES`` is the one list of stages (``rundir.Stage``): the CLI's commands, what depends on
what, what a stage owns and which configuration keys it reads are all derived from it. A stage
is done when its record exists and is current (``rundir``: made from today's inputs and
configuration, its output files all there with the sizes they were written with); running a
done stage is a no-op unless ``force``. Training stages checkpoint every epoch and continue with
``resume``; a stage whose outputs were lost is rebuilt from its own checkpoints. A SIGINT or
SIGTERM recorded by ``mcu_jax.runtime.signals`` stops a stage at its next loop boundary, with
nothing of it marked done. Every stage runs on all devices of a 1-D mesh; in a multi-host run every
process runs the same stages on one shared run directory and process 0 writes
(``rundir.RunDir``).
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax

from mcu_jax import io, models, unlearn
from mcu_jax.core import beta as beta_lib
from mcu_jax.core.curves import Curve, point
from mcu_jax.pipeline import config as config_lib
from mcu_jax.pipeline import context, forget_stage, relearn_stage, report, rundir
from mcu_jax.pipeline.context import Context
from mcu_jax.pipeline.rundir import Stage, StageError
from mcu_jax.runtime import evaluate, masks, mcu, mia, parallel, signals, sweep, train

# ---------------------------------------------------------------------------------------------
# Stages.


def _accuracies(ctx: Context, params, model_state) -> dict:
  params, model_state = parallel.replicate((params, model_state), ctx.mesh)
  acc = lambda images, labels: evaluate.accuracy_and_loss(
      ctx.apply, params, model_state, images, labels, ctx.config.eval_batch_size,
      ctx.preprocess_eval, mesh=ctx.mesh)[0]
  return {"train_acc": acc(*ctx.on_device("train", *ctx.arrays())),
          "test_acc": acc(*ctx.on_device("test_all", *ctx.arrays(dataset=ctx.dataset.test)))}


def _trained(ctx: Context, stage: Stage, params, model_state, record: dict) -> dict:
  digest = ctx.save_model(stage.record, params, model_state)
  return context.finish(ctx, stage, {**record, "model_digest": digest,
                                     **_accuracies(ctx, params, model_state)})


def stage_train(ctx: Context, stage: Stage) -> dict:
  """theta_o: the configured recipe on the whole training set, from a fresh initialisation."""
  ctx.log(f"[train] original {ctx.config.model} on {ctx.config.dataset}")
  images, labels = ctx.arrays()
  params, model_state = models.init_model(ctx.module, jax.random.PRNGKey(ctx.config.seed),
                                          (1,) + images.shape[1:])
  with ctx.run.checkpointer("original", resume=ctx.resume, force=ctx.force) as checkpointer:
    trained = train.train_model(
        train.supervised_loss(ctx.apply), params, model_state,
        {"images": images, "labels": labels}, config=ctx.config.train,
        rng=jax.random.PRNGKey(ctx.config.seed + 1), preprocess=ctx.preprocess_train,
        mesh=ctx.mesh, checkpointer=checkpointer, progress=ctx.progress, desc="train",
        evaluate=lambda s: _accuracies(ctx, s.params, s.model_state))
  return _trained(ctx, stage, trained.state.params, trained.state.model_state,
                  {"history": trained.history, "rte_seconds": trained.seconds,
                   "compile_seconds": trained.compile_seconds})


def _run_method(ctx: Context, stage: Stage, method: str, options, seed: int,
                evaluate=None) -> dict:
  init = functools.partial(models.init_model, ctx.module,
                           input_shape=(1,) + ctx.dataset.train.images.shape[1:])
  # retrain starts from scratch: it needs theta_o's structure only, not the train stage
  params, model_state = (init(jax.random.PRNGKey(seed)) if method == "retrain"
                         else ctx.load_model("original"))
  with ctx.run.checkpointer(stage.record, resume=ctx.resume, force=ctx.force) as checkpointer:
    result = unlearn.run(method, apply=ctx.apply, params=params, model_state=model_state,
                         train=ctx.dataset.train, split=ctx.split,
                         preprocess=ctx.preprocess_train, config=options,
                         rng=jax.random.PRNGKey(seed), progress=ctx.progress, init=init,
                         checkpointer=checkpointer, mesh=ctx.mesh, evaluate=evaluate)
  return _trained(ctx, stage, result.params, result.model_state, {
      "method": method, "config": dataclasses.asdict(result.config),
      "rte_seconds": result.rte_seconds, "compile_seconds": result.compile_seconds,
      "history": result.history})


def stage_retrain(ctx: Context, stage: Stage) -> dict:
  """The gold standard: the retrain method on D_r with the original's recipe (or
  ``config.retrain``), from a fresh initialisation."""
  ctx.log("[retrain] on D_r")
  recipe = (ctx.config.retrain or ctx.config.train).fit_fields()
  return _run_method(ctx, stage, "retrain", unlearn.RetrainConfig(**recipe),
                     ctx.config.seed + 100, evaluate=lambda p, s: _accuracies(ctx, p, s))


def stage_unlearn(ctx: Context, stage: Stage) -> dict:
  """theta_p from the configured base method, starting at theta_o."""
  ctx.log(f"[unlearn] base method {ctx.config.unlearn.method}")
  return _run_method(ctx, stage, ctx.config.unlearn.method, ctx.config.unlearn.options,
                     ctx.config.seed + 200)


def stage_mask(ctx: Context, stage: Stage) -> dict:
  """The tensor mask from retain/forget saliency of theta_o; its seconds exclude compiling."""
  settings = ctx.config.mask
  params, model_state = ctx.load_model("original")
  ctx.log(f"[mask] k={settings.k} kr={settings.kr}" if settings.enabled
          else "[mask] disabled: every tensor trains")
  found = masks.compute_mask(ctx.apply, params, model_state,
                             forget=ctx.arrays(ctx.split.forget),
                             retain=ctx.arrays(ctx.split.retain), options=settings,
                             batch_size=ctx.config.curve.batch_size,
                             preprocess=ctx.preprocess_eval, mesh=ctx.mesh)
  flags = {jax.tree_util.keystr(path): flag
           for path, flag in jax.tree_util.tree_flatten_with_path(found.mask)[0]}
  return context.finish(ctx, stage, {
      "flags": flags, "fraction": found.fraction, "seconds": found.seconds,
      "compile_seconds": found.compile_seconds, "enabled": settings.enabled})


def load_mask(ctx: Context, params) -> Any:
  flags = ctx.record("mask")["flags"]
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  if set(paths) != set(flags):
    raise StageError(f"{ctx.run.record_path('mask')} does not match the model's tensors")
  return jax.tree.unflatten(jax.tree.structure(params), [bool(flags[p]) for p in paths])


def alignment_targets(ctx: Context) -> beta_lib.Targets:
  """The alignment targets from the original model's record."""
  original = ctx.record("original")
  return beta_lib.alignment_targets(train_acc=original["train_acc"],
                                    test_acc=original["test_acc"], scenario=ctx.split.kind)


def curve_trainer(ctx: Context, curve: Curve, *, mask, steps_per_epoch: int
                  ) -> mcu.CurveTrainer:
  """The curve stage's trainer (``CurveTrainer.from_options`` of ``config.curve``, beta towards
  the alignment targets), for runs that drive the epochs themselves."""
  return mcu.CurveTrainer.from_options(ctx.apply, curve, ctx.config.curve,
                                       targets=alignment_targets(ctx), mask=mask,
                                       steps_per_epoch=steps_per_epoch,
                                       preprocess=ctx.preprocess_train, mesh=ctx.mesh)


def _line(ctx: Context) -> tuple[Curve, Any]:
  """The untrained curve from theta_o to theta_p (a straight line) and theta_o's model state."""
  start, model_state = ctx.load_model("original")
  end, _ = ctx.load_model("unlearn")
  return ctx.config.curve.line(start, end), model_state


def load_curve(ctx: Context) -> tuple[Curve, Any]:
  """The curve (trained, or the straight line) and theta_o's model state."""
  curve, model_state = _line(ctx)
  record = ctx.record("curve")
  if record["trained"]:
    controls = ctx.run.load_tree("curve/controls", curve.controls, record["controls_digest"])
    curve = dataclasses.replace(curve, controls=controls)
  return curve, model_state


def stage_curve(ctx: Context, stage: Stage) -> dict:
  """Trains the curve's controls with L_r - beta L_f on D_f + retain_ratio of D_r."""
  settings = ctx.config.curve
  curve, model_state = _line(ctx)
  if not settings.train:
    ctx.log("[curve] straight line (no training)")
    return context.finish(ctx, stage, {"trained": False, "rte_seconds": 0.0, "history": []})
  targets = alignment_targets(ctx)
  policy = settings.policy(targets)
  ctx.log(f"[curve] {settings.epochs} epochs, beta={policy}, {settings.precision}")
  with ctx.run.checkpointer("curve", resume=ctx.resume, force=ctx.force) as checkpointer:
    trained = mcu.train_curve(
        ctx.apply, curve, model_state, forget=ctx.arrays(ctx.split.forget),
        retain=ctx.arrays(ctx.split.retain), mask=load_mask(ctx, curve.start), targets=targets,
        options=settings, seed=ctx.config.seed + config_lib.CURVE_SEED_OFFSET,
        preprocess=ctx.preprocess_train, mesh=ctx.mesh, checkpointer=checkpointer,
        progress=ctx.progress)
  digest = ctx.run.save_tree("curve/controls", trained.curve.controls)
  return context.finish(ctx, stage, {
      "trained": True, "history": trained.history, "curve_seconds": trained.seconds,
      "compile_seconds": trained.compile_seconds,
      "rte_seconds": ctx.record("mask")["seconds"] + trained.seconds,
      "beta_policy": repr(policy), "precision": settings.precision,
      "controls_digest": digest})


def _targets(ctx: Context) -> beta_lib.Targets:
  """The sweep's targets: alignment (original model) or the retrained model's accuracies."""
  if ctx.config.sweep.targets == "alignment":
    return alignment_targets(ctx)
  params, model_state = ctx.load_model("retrain")
  model_state = ctx.recalibrate(params, model_state)
  sets = ctx.eval_sets()
  def acc(name):
    images, labels = sets[name]
    return evaluate.accuracy_and_loss(ctx.apply, params, model_state, images, labels,
                                      ctx.config.eval_batch_size, ctx.preprocess_eval,
                                      mesh=ctx.mesh)[0]
  return beta_lib.Targets(retain=acc("retain"), forget=acc("forget"))


def stage_sweep(ctx: Context, stage: Stage) -> dict:
  """phi(t) at evenly spaced t with recalibrated BN; the chosen t and the effective region."""
  settings = ctx.config.sweep
  curve, model_state = load_curve(ctx)
  ctx.log(f"[sweep] {settings.points} points")
  targets = _targets(ctx)
  options = config_lib.sweep_options(ctx.config, preprocess=ctx.preprocess_eval, mesh=ctx.mesh,
                                     progress=ctx.progress)
  start = time.perf_counter()
  result, choice = sweep.sweep_and_select(
      ctx.apply, curve, model_state, sets=ctx.eval_sets(), targets=targets,
      recal_inputs=ctx.recalibration_images(), options=options)
  return context.finish(ctx, stage, {
      "sweep": result.to_dict(), "seconds": time.perf_counter() - start, "chosen_t": choice.t,
      "gap": choice.gap, "region": [list(r) for r in choice.region],
      "at_bound": choice.at_bound,
      "targets": {"kind": settings.targets, "retain": targets.retain, "forget": targets.forget}})


def _point_metrics(ctx: Context, params, model_state) -> dict:
  model_state = ctx.recalibrate(params, model_state)
  sets = ctx.eval_sets()
  metrics = mia.unlearning_metrics(ctx.apply, params, model_state, forget=sets["forget"],
                                   retain=sets["retain"], test=sets["test"],
                                   batch_size=ctx.config.eval_batch_size,
                                   preprocess=ctx.preprocess_eval, seed=ctx.config.seed,
                                   mesh=ctx.mesh)
  if "test_forget" in sets:
    images, labels = sets["test_forget"]
    metrics["TA_forgotten"] = evaluate.accuracy_and_loss(
        ctx.apply, params, model_state, images, labels, ctx.config.eval_batch_size,
        ctx.preprocess_eval, mesh=ctx.mesh)[0]
  return metrics


def stage_report(ctx: Context, stage: Stage) -> dict:
  """Metrics of original, retrain, base and MCU at the chosen t; markdown, JSON and plots.

  Every row's BN statistics are recomputed the same way (on D_r by default), so that no row
  differs from another by its BN statistics alone. RTE: base methods as measured by
  ``unlearn.run``; MCU adds the mask and the curve epochs.
  """
  ctx.log("[report] metrics, tables and plots")
  swept = ctx.record("sweep")
  curve, model_state = load_curve(ctx)
  t, method = swept["chosen_t"], ctx.record("unlearn")["method"]
  rows = []
  for name, record in (("Original", "original"), ("Retrain", "retrain"),
                       (method.upper(), "unlearn")):
    signals.check(f"report row {name}")
    rows.append({"method": name, **_point_metrics(ctx, *ctx.load_model(record)),
                 "RTE": ctx.record(record)["rte_seconds"]})
  signals.check(f"report row {method.upper()}+MCU")
  rows.append({"method": f"{method.upper()}+MCU (t={t:.2f})",
               **_point_metrics(ctx, point(curve, t), model_state),
               "RTE": ctx.record("unlearn")["rte_seconds"] + ctx.record("curve")["rte_seconds"]})
  for row in rows:
    row["AvgGap"] = mia.avg_gap(row, rows[1])
  columns: list = ["method", "UA", "RA", "TA", "MIA", "loss_auc", "AvgGap", "RTE"]
  if ctx.split.kind == "class":
    columns.insert(4, "TA_forgotten")
  relearned = relearn_stage.for_report(ctx)     # None unless `mcu-jax relearn` is current
  if relearned is not None:
    for row, key in zip(rows, relearn_stage.MODELS):
      row["relearn_rebound"] = relearned["models"][key]["rebound"]
    columns.append(("relearn_rebound", "relearn rebound"))
  table = report.markdown_table(rows, columns)
  title = f"{ctx.config.model} on {ctx.config.dataset}"
  text = report.run_markdown(
      title=title, kind=ctx.split.kind, forget_size=len(ctx.split.forget),
      retain_size=len(ctx.split.retain), method=method, sweep_record=swept,
      t_search=ctx.config.sweep.t_search, table=table,
      recalibrated_on=None if not jax.tree.leaves(model_state) else
      "D_r" if ctx.config.sweep.recalibrate_on == "retain" else "D_r + D_f")
  if relearned is not None:
    text += "\n" + report.relearn_markdown(
        relearned, relearn_stage.table(relearned["models"], relearned["labels"]))
  targets = (swept["targets"]["retain"], swept["targets"]["forget"])
  writers = {
      "sweep.png": lambda path: report.plot_sweep(
          sweep.SweepResult.from_dict(swept["sweep"]), targets=targets, region=swept["region"],
          chosen_t=t, path=path, title=f"{title}: {method} + MCU"),
      "methods.png": lambda path: report.plot_methods(rows, path=path,
                                                      title="Unlearning metrics (percent)"),
      "report.md": lambda path: io.write_markdown(path, text)}
  for name, write in writers.items():
    ctx.run.write_file(write, ctx.run_dir / name)
  files = {name: str(ctx.run_dir / name) for name in writers}
  return context.finish(ctx, stage, {"rows": rows, "chosen_t": t, "table": table, "files": files,
                                     "relearn": relearned is not None})


COMMON = ("dataset", "model", "model_options", "seed", "augment")   # every stage reads these
SPLIT_KEYS = ("dataset", "seed", "forget")

STAGES: tuple[Stage, ...] = (
    Stage("train", "original", (), COMMON + ("train", "eval_batch_size"),
          ("original/model", "original/ckpt"), stage_train),
    Stage("retrain", "retrain", ("split",), COMMON + ("train", "retrain", "eval_batch_size"),
          ("retrain/model", "retrain/ckpt"), stage_retrain),
    Stage("unlearn", "unlearn", ("split", "original"), COMMON + ("unlearn", "eval_batch_size"),
          ("unlearn/model", "unlearn/ckpt"), stage_unlearn),
    Stage("mask", "mask", ("split", "original"), COMMON + ("mask", "curve.batch_size"), (),
          stage_mask),
    Stage("curve", "curve", ("split", "original", "unlearn", "mask"), COMMON + ("curve",),
          ("curve/controls", "curve/ckpt"), stage_curve),
    Stage("sweep", "sweep", ("split", "original", "retrain", "unlearn", "curve"),
          COMMON + ("sweep", "curve.batch_size", "eval_batch_size"), (), stage_sweep),
    Stage("relearn", "relearn", ("split", "original", "retrain", "unlearn", "curve", "sweep"),
          COMMON + ("relearn", "eval_batch_size", "curve.batch_size", "sweep.recalibrate_on"),
          (relearn_stage.CURVES, relearn_stage.PLOT), relearn_stage.stage_relearn,
          in_run=False),
    Stage("report", "report", ("split", "original", "retrain", "unlearn", "curve", "sweep"),
          COMMON + ("eval_batch_size",), ("report.md", "sweep.png", "methods.png"),
          stage_report),
    Stage("forget-quality", "forget_quality", ("split",),
          COMMON + ("forget", "train", "retrain", "unlearn", "mask", "curve", "sweep",
                    "eval_batch_size", "forget_quality"),
          ("forget_quality.md", "forget_quality.png", "forget_quality/confidences.npz",
           "forget_quality/ckpt"),
          forget_stage.stage_forget_quality, in_run=False, keeps=("forget_quality/ckpt",)),
)
STAGE_OF = {**{s.record: s for s in STAGES}, **{s.name: s for s in STAGES}}
make_context = functools.partial(context.make_context, stages=STAGES)


def run_stage(ctx: Context, name: str) -> dict:
  """One stage (by command or record name): a no-op returning its record when done. A stage
  whose record is current but whose outputs are missing or damaged is rebuilt, from its own
  checkpoints where it has them. An interruption, an OS error or an error it causes leaving
  the stage names it (``.stage``)."""
  stage = STAGE_OF[name]
  try:
    return _run_stage(ctx, stage)
  except (signals.Interrupted, Exception) as e:
    e.stage = getattr(e, "stage", None) or stage.name  # type: ignore[union-attr]
    raise


def _run_stage(ctx: Context, stage: Stage) -> dict:
  if ctx.done(stage.record):
    return ctx.run.read(stage.record)
  # A missing, stale or lost input: one line naming the command, the most upstream first.
  for need in rundir.upstream(STAGES, stage.record):
    ctx.record(need)
  signals.check(f"the start of {stage.name}")
  lost = None if ctx.force or not ctx.run.has(stage.record) else context.damage(ctx, stage)
  if lost:
    ctx.log(f"[{stage.name}] {lost}: rebuilding it (and what depends on it)")
  context.begin(ctx, stage)
  resume, ctx.resume = ctx.resume, ctx.resume or lost is not None
  try:
    return stage.run(ctx, stage)
  finally:
    ctx.resume = resume


def copy_stage(ctx: Context, source, name: str) -> bool:
  """Adopts stage ``name``'s finished record and outputs (not its checkpoints) from another
  run directory of the same data and split, unless this one has them; returns whether it
  copied. A copy that does not fit this run's configuration is stale, and reruns."""
  stage, source = STAGE_OF[name], rundir.RunDir(source)
  if ctx.run.has(stage.record) or not source.has(stage.record):
    return False
  outputs = [o for o in stage.outputs if not o.endswith("ckpt") and (source.path / o).exists()]
  ctx.run.copy_from(source, outputs + [stage.record + ".json"])   # the record last
  return True


def run_all(ctx: Context, names=None) -> dict:
  """The stages in order (by default every stage of ``mcu-jax run``); returns the last
  record."""
  out: dict = {}
  chosen = [s for s in STAGES if s.in_run] if names is None else [STAGE_OF[n] for n in names]
  for stage in chosen:
    out = run_stage(ctx, stage.name)
  return out


