"""The MCU job as stages over a run directory.

Every stage reads its inputs from the run directory and writes its outputs there: models as
orbax trees, records as JSON. A stage is done when its JSON record exists (written last and
atomically); running it again is a no-op unless ``force``. Training stages checkpoint every
epoch under ``<stage>/ckpt`` and continue from there with ``resume``.

    run_dir/config.json        the resolved configuration
    run_dir/split.npz          D_f / D_r indices into the training set
    run_dir/original/          theta_o            + original.json
    run_dir/retrain/           the gold standard  + retrain.json
    run_dir/unlearn/           theta_p            + unlearn.json
    run_dir/mask.json          the tensor mask and its saliencies
    run_dir/curve/             the trained curve  + curve.json
    run_dir/sweep.json         the spectrum along t and the chosen t
    run_dir/report.{md,json}, sweep.png, methods.png

Every stage runs on all devices of a 1-D mesh (``mcu_jax.parallel``): data and states are
replicated, batches split over the mesh. In a multi-host run (``mcu-jax ... --coordinator
host:port --num-processes N --process-id i``) every process runs the same stages on the same
run directory (a shared file system); process 0 writes the JSON records, the split and the
report, orbax coordinates the checkpoints, and the processes wait for each other after each
write.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mcu_jax import batchnorm, checkpoint, data, evaluate, masks, mcu, mia, models, parallel
from mcu_jax import preprocess, report, sweep, train, unlearn
from mcu_jax import beta as beta_lib
from mcu_jax.config import RunConfig, TrainConfig
from mcu_jax.curves import Curve, point
from mcu_jax.optim import OptimConfig, make_optimizer

STAGES = ("train", "retrain", "unlearn", "mask", "curve", "sweep", "report")
# Records that depend on each stage's outputs (by record name; "original" is stage "train").
DOWNSTREAM = {
    "original": ("mask", "unlearn", "curve", "sweep", "report"),
    "retrain": ("sweep", "report"),
    "unlearn": ("curve", "sweep", "report"),
    "mask": ("curve", "sweep", "report"),
    "curve": ("sweep", "report"),
    "sweep": ("report",),
    "report": (),
}


class StageError(RuntimeError):
  """A stage cannot run: a missing input, or a partial checkpoint without --resume."""


@dataclasses.dataclass
class Context:
  """What every stage needs: config, data, model and the run directory."""
  config: RunConfig
  run_dir: Path
  dataset: data.TrainTest
  split: data.ForgetSplit
  module: Any
  apply: Any
  preprocess_train: Any
  preprocess_eval: Any
  progress: bool = True
  resume: bool = False
  force: bool = False
  mesh: Any = None
  _device_cache: dict = dataclasses.field(default_factory=dict)

  def log(self, message: str) -> None:
    if self.progress:
      print(message, flush=True)

  # ---- model trees ----

  def like(self) -> dict:
    """An abstract {params, model_state} tree for restoring models."""
    image_shape = (1,) + self.dataset.train.images.shape[1:]
    return jax.eval_shape(lambda: dict(zip(("params", "model_state"), models.init_model(
        self.module, jax.random.PRNGKey(0), image_shape))))

  def load_model(self, stage: str) -> tuple[Any, Any]:
    record = self.run_dir / f"{stage}.json"
    if not record.exists():
      raise StageError(f"stage {stage!r} has not run in {self.run_dir}: run "
                       f"`mcu-jax {stage_command(stage)} --run-dir {self.run_dir}` first")
    like = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), self.like())
    tree = checkpoint.load_tree(self.run_dir / stage / "model", like)
    # Replicated like the data from on_device, so the two meet on every mesh size.
    tree = parallel.replicate(tree, self.mesh)
    return tree["params"], tree["model_state"]

  def save_model(self, stage: str, params, model_state) -> None:
    checkpoint.save_tree(self.run_dir / stage / "model",
                         {"params": params, "model_state": model_state}, force=True)

  def record(self, stage: str) -> dict:
    path = self.run_dir / f"{stage}.json"
    if not path.exists():
      raise StageError(f"stage {stage!r} has not run in {self.run_dir}: run "
                       f"`mcu-jax {stage_command(stage)} --run-dir {self.run_dir}` first")
    return report.read_json(path)

  def done(self, stage: str) -> bool:
    return (self.run_dir / f"{stage}.json").exists() and not self.force

  def checkpointer(self, stage: str) -> checkpoint.Checkpointer:
    directory = self.run_dir / stage / "ckpt"
    partial = directory.exists() and any(directory.iterdir())
    _sync(f"looked at {directory}")  # every process decides before anyone deletes
    if partial:
      if self.force:
        if _primary():
          shutil.rmtree(directory)
        _sync(f"cleared {directory}")
      elif not self.resume:
        raise StageError(f"stage {stage!r} has a partial checkpoint in {directory}: pass "
                         "--resume to continue it or --force to start over")
    return checkpoint.Checkpointer(directory)

  def begin(self, stage: str) -> None:
    """Marks ``stage`` and every stage that depends on it as not done, before it runs, so that
    a crash or a changed input never leaves a stale result that looks finished."""
    if _primary():
      for name in (stage,) + DOWNSTREAM[stage]:
        (self.run_dir / f"{name}.json").unlink(missing_ok=True)
        if name != stage and (self.run_dir / name / "ckpt").exists():
          shutil.rmtree(self.run_dir / name / "ckpt")
    _sync(f"begin {stage}")

  # ---- data ----

  def on_device(self, name: str, images: np.ndarray, labels: np.ndarray):
    """(images, labels) as device arrays, uploaded once per run and replicated on the mesh.

    ``name`` identifies the arrays: "train", "test_all" or a name of ``eval_sets``.
    """
    cached = self._device_cache.get(name)
    if cached is not None and cached[1].shape[0] != len(labels):
      raise RuntimeError(f"device cache entry {name!r} holds another set")
    if cached is None:
      self._device_cache[name] = parallel.replicate((images, labels), self.mesh)
    return self._device_cache[name]

  def arrays(self, indices=None, dataset=None) -> tuple[np.ndarray, np.ndarray]:
    dataset = dataset or self.dataset.train
    if indices is None:
      return dataset.images, dataset.labels
    return dataset.images[indices], dataset.labels[indices]

  def eval_sets(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    sets = {"retain": self.arrays(self.split.retain), "forget": self.arrays(self.split.forget)}
    test = self.dataset.test
    if self.split.kind == "class":
      forgotten = np.isin(test.labels, self.split.classes)
      sets["test"] = (test.images[~forgotten], test.labels[~forgotten])
      sets["test_forget"] = (test.images[forgotten], test.labels[forgotten])
    else:
      sets["test"] = (test.images, test.labels)
    return sets


def _primary() -> bool:
  """Whether this process writes shared files (process 0 of a multi-host run)."""
  return jax.process_index() == 0


def _sync(name: str) -> None:
  """All processes wait here until each has arrived (no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def _write_json(path: Path, record) -> None:
  """Process 0 writes the record; every process continues once it is on disk."""
  if _primary():
    report.write_json(path, record)
  _sync(f"wrote {path}")


def _flatten(tree: dict, prefix: str = "") -> dict:
  """{"a": {"b": 1}} -> {"a.b": 1}."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def stage_command(stage: str) -> str:
  return {"original": "train", "unlearn": "unlearn --method ..."}.get(stage, stage)


def make_context(config: RunConfig, run_dir, *, progress=True, resume=False, force=False
                 ) -> Context:
  """Loads the data, makes or reads the split and writes the resolved config."""
  run_dir = Path(run_dir)
  dataset = data.load_dataset(config.dataset)
  module = models.get_model(config.model, dataset.train.num_classes, **config.model_options)
  config_path = run_dir / "config.json"
  if config_path.exists() and not force:
    saved = _flatten(report.read_json(config_path))
    wanted = _flatten(json.loads(json.dumps(config.to_dict())))
    changed = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    if changed:
      raise StageError(f"{run_dir} was made with another configuration (differs in: "
                       f"{', '.join(changed)}); use a new --run-dir or --force")
  split_path = run_dir / "split.npz"
  reuse_split = split_path.exists() and not force
  if reuse_split:
    split = data.load_split(split_path, num_examples=len(dataset.train),
                            labels=dataset.train.labels)
  elif config.forget.kind == "class":
    split = data.make_split(dataset.train, "class", classes=config.forget.classes)
  else:
    split = data.make_split(dataset.train, "random", ratio=config.forget.ratio, seed=config.seed)
  mesh = parallel.make_mesh()
  for name, batch in (("train.batch_size", config.train.batch_size),
                      ("curve.batch_size", config.curve.batch_size)):
    if batch % mesh.devices.size:
      raise StageError(f"{name} = {batch} is not divisible by the {mesh.devices.size} devices")
  if _primary():
    run_dir.mkdir(parents=True, exist_ok=True)
    if not reuse_split:
      data.save_split(split_path, split)
  _sync("split")
  _write_json(config_path, config.to_dict())
  mean, std = data.normalization_stats(dataset.train)
  return Context(
      config=config, run_dir=run_dir, dataset=dataset, split=split, module=module,
      apply=models.from_linen(module),
      preprocess_train=preprocess.make_preprocess(mean, std, augment=config.augment,
                                                  flip=config.augment),
      preprocess_eval=preprocess.make_preprocess(mean, std, augment=False),
      progress=progress, resume=resume, force=force, mesh=mesh)


# ---------------------------------------------------------------------------------------------
# Stages


def _accuracies(ctx: Context, params, model_state) -> dict:
  params, model_state = parallel.replicate((params, model_state), ctx.mesh)
  acc = lambda name, images, labels: evaluate.accuracy_and_loss(
      ctx.apply, params, model_state, *ctx.on_device(name, images, labels),
      ctx.config.eval_batch_size, ctx.preprocess_eval)[0]
  return {"train_acc": acc("train", *ctx.arrays()),
          "test_acc": acc("test_all", ctx.dataset.test.images, ctx.dataset.test.labels)}


def _supervised(ctx: Context, stage: str, settings: TrainConfig, indices, seed: int) -> dict:
  ctx.begin(stage)
  images, labels = ctx.arrays(indices)
  arrays = parallel.replicate({"images": images, "labels": labels}, ctx.mesh)
  steps = -(-len(labels) // settings.batch_size)
  optim = OptimConfig(lr=settings.lr, momentum=settings.momentum,
                      weight_decay=settings.weight_decay, cosine=True, schedule_unit="step")
  opt = make_optimizer(optim, epochs=settings.epochs, steps_per_epoch=steps)
  image_shape = (1,) + images.shape[1:]
  params, model_state = models.init_model(ctx.module, jax.random.PRNGKey(seed), image_shape)
  state = parallel.replicate(train.TrainState.create(
      params=params, model_state=model_state, tx=opt, rng=jax.random.PRNGKey(seed + 1)),
      ctx.mesh)
  epoch = train.make_epoch(train.supervised_loss(ctx.apply), settings.batch_size,
                           preprocess=ctx.preprocess_train,
                           batch_sharding=parallel.batch_sharding(ctx.mesh))
  with ctx.checkpointer(stage) as checkpointer:
    epoch, compile_seconds = train.compile_ahead(epoch, state, arrays)
    state, history = train.fit(
        state, epoch, arrays, settings.epochs, checkpointer=checkpointer,
        resume=True, desc=stage, progress=ctx.progress,
        evaluate=lambda s: _accuracies(ctx, s.params, s.model_state))
  ctx.save_model(stage, state.params, state.model_state)
  record = {"history": history, "rte_seconds": sum(h["seconds"] for h in history),
            "compile_seconds": compile_seconds,
            **_accuracies(ctx, state.params, state.model_state)}
  _write_json(ctx.run_dir / f"{stage}.json", record)
  return record


def stage_train(ctx: Context) -> dict:
  """theta_o: the original model on the whole training set."""
  if ctx.done("original"):
    return ctx.record("original")
  ctx.log(f"[train] original {ctx.config.model} on {ctx.config.dataset}")
  return _supervised(ctx, "original", ctx.config.train, None, ctx.config.seed)


def stage_retrain(ctx: Context) -> dict:
  """The gold standard: the same recipe on D_r only."""
  if ctx.done("retrain"):
    return ctx.record("retrain")
  ctx.log("[retrain] on D_r")
  return _supervised(ctx, "retrain", ctx.config.retrain or ctx.config.train, ctx.split.retain,
                     ctx.config.seed + 100)


def stage_unlearn(ctx: Context) -> dict:
  """theta_p from the configured base method, starting at theta_o."""
  if ctx.done("unlearn"):
    return ctx.record("unlearn")
  method = ctx.config.unlearn.method
  ctx.log(f"[unlearn] base method {method}")
  params, model_state = ctx.load_model("original")
  ctx.begin("unlearn")
  init = functools.partial(models.init_model, ctx.module,
                           input_shape=(1,) + ctx.dataset.train.images.shape[1:])
  with ctx.checkpointer("unlearn") as checkpointer:
    result = unlearn.run(method, apply=ctx.apply, params=params, model_state=model_state,
                         train=ctx.dataset.train, split=ctx.split,
                         preprocess=ctx.preprocess_train, config=ctx.config.unlearn.options,
                         rng=jax.random.PRNGKey(ctx.config.seed + 200),
                         progress=ctx.progress, init=init, checkpointer=checkpointer,
                         mesh=ctx.mesh)
  ctx.save_model("unlearn", result.params, result.model_state)
  record = {"method": method, "config": dataclasses.asdict(result.config),
            "rte_seconds": result.rte_seconds, "compile_seconds": result.compile_seconds,
            "history": result.history, **_accuracies(ctx, result.params, result.model_state)}
  _write_json(ctx.run_dir / "unlearn.json", record)
  return record


def stage_mask(ctx: Context) -> dict:
  """The tensor mask from retain/forget saliency of theta_o; RTE excludes compilation."""
  if ctx.done("mask"):
    return ctx.record("mask")
  settings = ctx.config.mask
  params, model_state = ctx.load_model("original")
  ctx.begin("mask")
  if settings.enabled:
    ctx.log(f"[mask] k={settings.k} kr={settings.kr}")
    found = masks.compute_mask(ctx.apply, params, model_state,
                               forget=ctx.arrays(ctx.split.forget),
                               retain=ctx.arrays(ctx.split.retain), k=settings.k, kr=settings.kr,
                               batch_size=ctx.config.curve.batch_size,
                               preprocess=ctx.preprocess_eval, mesh=ctx.mesh)
    mask, seconds, compile_seconds = found.mask, found.seconds, found.compile_seconds
  else:
    ctx.log("[mask] disabled: every tensor trains")
    mask, seconds, compile_seconds = mcu.full_mask(params), 0.0, 0.0
  flags = {jax.tree_util.keystr(path): flag
           for path, flag in jax.tree_util.tree_flatten_with_path(mask)[0]}
  record = {"flags": flags, "fraction": masks.mask_fraction(mask, params),
            "seconds": seconds, "compile_seconds": compile_seconds,
            "enabled": settings.enabled}
  _write_json(ctx.run_dir / "mask.json", record)
  return record


def load_mask(ctx: Context, params) -> Any:
  flags = ctx.record("mask")["flags"]
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  if set(paths) != set(flags):
    raise StageError(f"{ctx.run_dir / 'mask.json'} does not match the model's tensors")
  return jax.tree.unflatten(jax.tree.structure(params), [bool(flags[p]) for p in paths])


def alignment_targets(ctx: Context) -> beta_lib.Targets:
  """The alignment targets from the original model's record."""
  original = ctx.record("original")
  return beta_lib.alignment_targets(train_acc=original["train_acc"],
                                    test_acc=original["test_acc"], scenario=ctx.split.kind)


def beta_policy(ctx: Context) -> beta_lib.BetaPolicy:
  """The curve's beta: fixed, or adaptive towards the alignment targets."""
  settings = ctx.config.curve
  if settings.beta != "adaptive":
    return beta_lib.FixedBeta(float(settings.beta))
  return beta_lib.AdaptiveBeta(targets=alignment_targets(ctx), low=settings.beta_low,
                               high=settings.beta_high)


def load_curve(ctx: Context) -> tuple[Curve, Any]:
  """The curve (trained, or the straight line) and theta_o's model state."""
  start, model_state = ctx.load_model("original")
  end, _ = ctx.load_model("unlearn")
  curve = Curve.from_endpoints(start, end, ctx.config.curve.num_bends, ctx.config.curve.kind)
  record = ctx.record("curve")
  if record["trained"]:
    controls = checkpoint.load_tree(ctx.run_dir / "curve" / "controls", curve.controls)
    curve = curve.replace(controls=controls)
  return curve, model_state


def stage_curve(ctx: Context) -> dict:
  """Trains the curve's controls with L_r - beta L_f on D_f + retain_ratio of D_r."""
  if ctx.done("curve"):
    return ctx.record("curve")
  settings = ctx.config.curve
  start, model_state = ctx.load_model("original")
  end, _ = ctx.load_model("unlearn")
  ctx.begin("curve")
  curve = Curve.from_endpoints(start, end, settings.num_bends, settings.kind)
  if not settings.train:
    ctx.log("[curve] straight line (no training)")
    record = {"trained": False, "rte_seconds": 0.0, "history": []}
    _write_json(ctx.run_dir / "curve.json", record)
    return record
  mask = load_mask(ctx, start)
  policy = beta_policy(ctx)
  ctx.log(f"[curve] {settings.epochs} epochs, beta={policy}, {settings.precision}")
  with ctx.checkpointer("curve") as checkpointer:
    trained = mcu.train_curve(
        models.with_precision(ctx.apply, settings.precision), curve, model_state,
        forget=ctx.arrays(ctx.split.forget), retain=ctx.arrays(ctx.split.retain), mask=mask,
        beta=policy, epochs=settings.epochs,
        optimizer=OptimConfig(lr=settings.lr, momentum=settings.momentum),
        batch_size=settings.batch_size, retain_ratio=settings.retain_ratio,
        seed=ctx.config.seed + 300, preprocess=ctx.preprocess_train, mesh=ctx.mesh,
        checkpointer=checkpointer, progress=ctx.progress)
  checkpoint.save_tree(ctx.run_dir / "curve" / "controls", trained.curve.controls, force=True)
  mask_seconds = ctx.record("mask")["seconds"]
  record = {"trained": True, "history": trained.history, "curve_seconds": trained.seconds,
            "compile_seconds": trained.compile_seconds,
            "rte_seconds": mask_seconds + trained.seconds,
            "beta_policy": repr(policy), "precision": settings.precision}
  _write_json(ctx.run_dir / "curve.json", record)
  return record


def _recalibration_images(ctx: Context):
  """Images whose pass sets BN statistics: D_r by default, so that no unlearned model's
  statistics depend on D_f; the whole training set with ``sweep.recalibrate_on=train`` (the
  reference's update_bn)."""
  if ctx.config.sweep.recalibrate_on == "train":
    return ctx.on_device("train", *ctx.arrays())[0]
  return ctx.on_device("retain", *ctx.arrays(ctx.split.retain))[0]


def _recalibrated(ctx: Context, params, model_state):
  """BN statistics of ``params`` recomputed as the exact average over one pass."""
  return batchnorm.recalibrate_batch_stats(ctx.apply, params, model_state,
                                           _recalibration_images(ctx),
                                           ctx.config.curve.batch_size, ctx.preprocess_eval)


def _targets(ctx: Context) -> beta_lib.Targets:
  """The sweep's targets: alignment (original model) or the retrained model's accuracies."""
  if ctx.config.sweep.targets == "alignment":
    return alignment_targets(ctx)
  params, model_state = ctx.load_model("retrain")
  model_state = _recalibrated(ctx, params, model_state)
  sets = ctx.eval_sets()
  acc = lambda name: evaluate.accuracy_and_loss(
      ctx.apply, params, model_state, *ctx.on_device(name, *sets[name]),
      ctx.config.eval_batch_size, ctx.preprocess_eval)[0]
  return beta_lib.Targets(retain=acc("retain"), forget=acc("forget"))


def stage_sweep(ctx: Context) -> dict:
  """phi(t) at evenly spaced t with recalibrated BN; the chosen t and the effective region."""
  if ctx.done("sweep"):
    return ctx.record("sweep")
  settings = ctx.config.sweep
  curve, model_state = load_curve(ctx)
  ctx.begin("sweep")
  ctx.log(f"[sweep] {settings.points} points")
  sets = {name: ctx.on_device(name, *arrays) for name, arrays in ctx.eval_sets().items()}
  targets = _targets(ctx)
  options = sweep.SweepOptions(batch_size=ctx.config.eval_batch_size,
                               recal_batch_size=ctx.config.curve.batch_size,
                               preprocess=ctx.preprocess_eval, chunk_size=settings.chunk_size,
                               progress=ctx.progress)
  start = time.perf_counter()
  result, choice = sweep.sweep_and_select(ctx.apply, curve, model_state, sets=sets,
                                          targets=targets,
                                          recal_inputs=_recalibration_images(ctx),
                                          points=settings.points,
                                          t_search=tuple(settings.t_search), options=options)
  seconds = time.perf_counter() - start
  record = {"sweep": result.to_dict(), "seconds": seconds, "chosen_t": choice.t,
            "gap": choice.gap, "region": [list(r) for r in choice.region],
            "at_bound": choice.at_bound,
            "targets": {"kind": settings.targets, "retain": targets.retain,
                        "forget": targets.forget}}
  _write_json(ctx.run_dir / "sweep.json", record)
  return record


def _point_metrics(ctx: Context, params, model_state) -> dict:
  sets = {name: ctx.on_device(name, *arrays) for name, arrays in ctx.eval_sets().items()}
  metrics = mia.unlearning_metrics(ctx.apply, params, model_state, forget=sets["forget"],
                                   retain=sets["retain"], test=sets["test"],
                                   batch_size=ctx.config.eval_batch_size,
                                   preprocess=ctx.preprocess_eval, seed=ctx.config.seed)
  if "test_forget" in sets:
    metrics["TA_forgotten"] = evaluate.accuracy_and_loss(
        ctx.apply, params, model_state, *sets["test_forget"], ctx.config.eval_batch_size,
        ctx.preprocess_eval)[0]
  return metrics


def stage_report(ctx: Context) -> dict:
  """Metrics of original, retrain, base and MCU at the chosen t; markdown, JSON and plots.

  Every row's BN statistics are recomputed the same way (on D_r by default), so that no row
  differs from another by its BN statistics alone. RTE: base methods as measured by
  ``unlearn.run``; MCU adds the mask and the curve epochs (the sweep's time is reported
  beside the table).
  """
  if ctx.done("report"):
    return ctx.record("report")
  ctx.log("[report] metrics, tables and plots")
  sweep_record = ctx.record("sweep")
  curve, model_state = load_curve(ctx)
  ctx.begin("report")
  t = sweep_record["chosen_t"]
  method = ctx.record("unlearn")["method"]
  rows = []
  for name, stage in (("Original", "original"), ("Retrain", "retrain"),
                      (method.upper(), "unlearn")):
    params, state = ctx.load_model(stage)
    rows.append({"method": name, **_point_metrics(ctx, params, _recalibrated(ctx, params, state)),
                 "RTE": ctx.record(stage)["rte_seconds"]})
  mcu_params = point(curve, t)
  rows.append({"method": f"{method.upper()}+MCU (t={t:.2f})",
               **_point_metrics(ctx, mcu_params, _recalibrated(ctx, mcu_params, model_state)),
               "RTE": ctx.record("unlearn")["rte_seconds"] + ctx.record("curve")["rte_seconds"]})
  retrain_row = rows[1]
  for row in rows:
    row["AvgGap"] = mia.avg_gap(row, retrain_row)
  columns = ["method", "UA", "RA", "TA", "MIA", "loss_auc", "AvgGap", "RTE"]
  if ctx.split.kind == "class":
    columns.insert(4, "TA_forgotten")
  table = report.markdown_table(rows, columns)
  targets = sweep_record["targets"]
  if not _primary():
    _sync("report")
    return {"rows": rows, "chosen_t": t, "table": table}
  sweep_png = report.plot_sweep(
      sweep.SweepResult.from_dict(sweep_record["sweep"]),
      targets=(targets["retain"], targets["forget"]),
      region=sweep_record["region"], chosen_t=t, path=ctx.run_dir / "sweep.png",
      title=f"{ctx.config.model} on {ctx.config.dataset}: {method} + MCU")
  methods_png = report.plot_methods(rows, path=ctx.run_dir / "methods.png",
                                    title="Unlearning metrics (percent)")
  recalibrated_on = "D_r" if ctx.config.sweep.recalibrate_on == "retain" else "the training set"
  text = "\n".join([
      f"# MCU run: {ctx.config.model} on {ctx.config.dataset}",
      "",
      f"Forgetting: {ctx.split.kind}, |D_f| = {len(ctx.split.forget)}, "
      f"|D_r| = {len(ctx.split.retain)}. Base method: {method}. Chosen t = {t:.3f}"
      + (f" (on the {sweep_record['at_bound']} bound of t_search {ctx.config.sweep.t_search})"
         if sweep_record.get("at_bound") else "") + " "
      f"(gap {sweep_record['gap']:.2f} to the {targets['kind']} targets: retain "
      f"{targets['retain']:.2f}, forget {targets['forget']:.2f}); effective region: "
      f"{', '.join(f'[{a:.2f}, {b:.2f}]' for a, b in sweep_record['region']) or 'empty'}.",
      "",
      "UA, RA, TA, MIA in percent; loss_auc is the loss-threshold attack's ROC-AUC on D_f vs "
      "test; AvgGap is against Retrain over UA, RA, TA, MIA; RTE in seconds, compilation "
      "excluded (MCU's RTE adds the mask and the curve epochs to the base method's; the "
      f"{len(sweep_record['sweep']['ts'])}-point sweep that chose t took a further "
      f"{sweep_record['seconds']:.1f} s, compilation included). Every row's BatchNorm "
      f"statistics are recomputed on {recalibrated_on}.",
      "",
      table,
      "",
      "![accuracy along the curve](sweep.png)",
      "",
      "![methods](methods.png)",
      "",
  ])
  report.write_markdown(ctx.run_dir / "report.md", text)
  record = {"rows": rows, "chosen_t": t, "table": table,
            "files": {"markdown": str(ctx.run_dir / "report.md"), "sweep_png": sweep_png,
                      "methods_png": methods_png}}
  report.write_json(ctx.run_dir / "report.json", record)
  _sync("report")
  return record


STAGE_FUNCTIONS = {
    "train": stage_train, "retrain": stage_retrain, "unlearn": stage_unlearn,
    "mask": stage_mask, "curve": stage_curve, "sweep": stage_sweep, "report": stage_report,
}


def run_all(ctx: Context, stages=STAGES) -> dict:
  """Runs the stages in order; returns the report record."""
  out = None
  for stage in stages:
    out = STAGE_FUNCTIONS[stage](ctx)
  return out
