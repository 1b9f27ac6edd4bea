"""The context of a run: configuration, data, model, mesh, run directory and stage registry.

``make_context`` reads (or makes) what a run directory holds besides the stages' outputs: its
configuration and its forget split. Records carry their provenance (``rundir``): the digest of
the configuration keys their stage reads and of the records they were made from, and the list
of their output files with their sizes, so ``Context.done`` and ``Context.record`` know a stale
record, or one whose outputs are gone, from a current one.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mcu_jax import data, io, models, preprocess
from mcu_jax.pipeline import rundir
from mcu_jax.pipeline.config import RunConfig
from mcu_jax.pipeline.rundir import Stage, StageError
from mcu_jax.runtime import batchnorm, parallel, signals

SPLIT_KEYS = ("dataset", "seed", "forget")   # what the forget split is made from


@dataclasses.dataclass
class Context:
  """What every stage needs: config, data, model, mesh and the run directory."""
  config: RunConfig
  run: rundir.RunDir
  dataset: data.TrainTest
  split: data.ForgetSplit
  module: Any
  apply: Any
  preprocess_train: Any
  preprocess_eval: Any
  mesh: Any
  stages: Mapping[str, Stage]      # by command and by record name
  progress: bool = True
  resume: bool = False
  force: bool = False
  _device_cache: dict = dataclasses.field(default_factory=dict)

  @property
  def run_dir(self) -> Path:
    return self.run.path

  def log(self, message: str) -> None:
    if self.progress:
      print(message, flush=True)

  def record(self, name: str) -> dict:
    """A finished stage's record; a missing or stale one, or one whose outputs are gone, says
    which command makes it."""
    stage = self.stages[name]
    command = f"`mcu-jax {stage.name} --run-dir {self.run_dir}`"
    if not self.run.has(stage.record):
      raise StageError(f"stage {stage.record!r} has not run in {self.run_dir}: run {command} "
                       "first")
    lost = damage(self, stage)
    if lost:
      raise StageError(f"stage {stage.record!r} in {self.run_dir} is not done: {lost}; "
                       f"{command} rebuilds it")
    why = stale(self, stage)
    if why:
      raise StageError(f"stage {stage.record!r} in {self.run_dir} is stale ({why}): run "
                       f"{command} first")
    return self.run.read(stage.record)

  def done(self, name: str) -> bool:
    """Whether stage ``name`` (command or record) is finished and current, its outputs there,
    and so is every stage it is made from (never under ``force``)."""
    return not self.force and self._current(self.stages[name], {})

  def _current(self, stage: Stage, seen: dict) -> bool:
    if stage.record not in seen:
      seen[stage.record] = (self.run.has(stage.record) and not stale(self, stage) and all(
          self._current(self.stages[n], seen) for n in stage.needs if n in self.stages))
    return seen[stage.record]

  # ---- models

  def load_model(self, name: str) -> tuple[Any, Any]:
    like = jax.eval_shape(lambda: dict(zip(("params", "model_state"), models.init_model(
        self.module, jax.random.PRNGKey(0), (1,) + self.dataset.train.images.shape[1:]))))
    like = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), like)   # on this host's device
    tree = self.run.load_tree(f"{name}/model", like, self.record(name).get("model_digest"))
    tree = parallel.replicate(tree, self.mesh)   # meets the replicated data on every mesh
    return tree["params"], tree["model_state"]

  def save_model(self, name: str, params, model_state) -> str:
    return self.run.save_tree(f"{name}/model", {"params": params, "model_state": model_state})

  # ---- data

  def on_device(self, name: str, images: np.ndarray, labels: np.ndarray):
    """(images, labels) on the device, uploaded once per run and replicated on the mesh."""
    if name not in self._device_cache:
      self._device_cache[name] = parallel.replicate((images, labels), self.mesh)
    return self._device_cache[name]

  def arrays(self, indices=None, dataset=None) -> tuple[np.ndarray, np.ndarray]:
    dataset = dataset or self.dataset.train
    if indices is None:
      return dataset.images, dataset.labels
    return dataset.images[indices], dataset.labels[indices]

  def eval_sets(self) -> dict[str, tuple]:
    """retain, forget, test (for class forgetting: the other classes) and test_forget."""
    sets = {"retain": self.arrays(self.split.retain), "forget": self.arrays(self.split.forget)}
    test = self.dataset.test
    if self.split.kind == "class":
      forgotten = np.isin(test.labels, self.split.classes)
      sets["test"] = (test.images[~forgotten], test.labels[~forgotten])
      sets["test_forget"] = (test.images[forgotten], test.labels[forgotten])
    else:
      sets["test"] = (test.images, test.labels)
    return {name: self.on_device(name, *arrays) for name, arrays in sets.items()}

  def recalibration_images(self):
    """Images whose pass sets BN statistics: D_r by default, so that no unlearned model's
    statistics depend on D_f; the whole training set with ``sweep.recalibrate_on=train`` (the
    reference's update_bn)."""
    if self.config.sweep.recalibrate_on == "train":
      return self.on_device("train", *self.arrays())[0]
    return self.eval_sets()["retain"][0]

  def recalibrate(self, params, model_state):
    """``model_state`` with BatchNorm statistics recomputed on ``recalibration_images``."""
    return batchnorm.recalibrate_batch_stats(self.apply, params, model_state,
                                             self.recalibration_images(),
                                             self.config.curve.batch_size,
                                             self.preprocess_eval, mesh=self.mesh)


# ---------------------------------------------------------------------------------------------
# Provenance: what a record was made from.


def provenance(ctx: Context, stage: Stage) -> dict:
  config = ctx.config.to_dict()
  return {"config": rundir.digest(rundir.config_section(config, stage.keys)),
          "inputs": {need: rundir.digest(ctx.run.read(need)) for need in stage.needs}}


def _unfit(ctx: Context, stage: Stage, record: dict) -> str | None:
  """Why ``record`` no longer fits its configuration or inputs, or None."""
  made = record.get("provenance")
  if made is None:
    return "it has no provenance (made by an older mcu_jax)"
  now = provenance(ctx, stage) if all(ctx.run.has(n) for n in stage.needs) else None
  if now is None:
    return "an input is missing"
  if made["config"] != now["config"]:
    return "made with another configuration"
  changed = [n for n in stage.needs if made["inputs"].get(n) != now["inputs"][n]]
  return f"{', '.join(changed)} changed since" if changed else None


def _damage(ctx: Context, record: dict) -> str | None:
  if "outputs" not in record:
    return "it lists no outputs (made by an older mcu_jax)"
  return ctx.run.damage(record["outputs"])


def stale(ctx: Context, stage: Stage) -> str | None:
  """Why ``stage``'s record is not done: it no longer fits its configuration or inputs, or an
  output it lists is missing or has another size; None when it is done."""
  record = ctx.run.read(stage.record)
  return _unfit(ctx, stage, record) or _damage(ctx, record)


def damage(ctx: Context, stage: Stage) -> str | None:
  """Why a record that fits its configuration and inputs is not done (a missing or damaged
  output), or None: such a stage is rebuilt from its own checkpoints, which were made with
  the same configuration and inputs."""
  record = ctx.run.read(stage.record)
  return None if _unfit(ctx, stage, record) else _damage(ctx, record)


def begin(ctx: Context, stage: Stage) -> None:
  """Before ``stage`` runs: its record and everything downstream of it are no longer done,
  so a crash or a changed input never leaves a stale result that looks finished. The
  stage's own checkpoints stay (``--resume``). Every record goes before any output, so that a
  removal that fails (a read-only model directory) leaves no record behind whose inputs or
  outputs are gone."""
  order = list(dict.fromkeys(ctx.stages.values()))
  later = [ctx.stages[r] for r in rundir.downstream(order, stage.record)]
  ctx.run.remove([s.record + ".json" for s in (stage, *later)] + list(stage.products)
                 + [o for s in later for o in s.outputs])


def finish(ctx: Context, stage: Stage, record: dict) -> dict:
  """Writes ``stage``'s record, last, with its provenance and the list of its output files;
  refuses a record that holds a NaN or an infinite number (nothing is marked done)."""
  bad = rundir.nonfinite_paths(record)
  if bad:
    shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    raise StageError(f"stage {stage.name!r}: non-finite value(s) at {shown}; nothing of it "
                     "was marked done")
  signals.check(f"the end of {stage.name}, before its record")
  files = ctx.run.inventory(o for o in stage.products if o not in stage.keeps)
  record = {**record, "outputs": files, "provenance": provenance(ctx, stage)}
  ctx.run.write(stage.record, record)
  return record


# ---------------------------------------------------------------------------------------------
# Making a context.


def _flatten(tree: dict, prefix: str = "") -> dict:
  """{"a": {"b": 1}} -> {"a.b": 1}."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _reads(keys, changed: list[str]) -> bool:
  """Whether configuration keys (dotted prefixes) cover any of the ``changed`` keys."""
  return any(c == k or c.startswith(k + ".") or k.startswith(c + ".")
             for k in keys for c in changed)


def _configure(run: rundir.RunDir, config: RunConfig, stages, force: bool
               ) -> tuple[list[str], list[Stage]]:
  """Checks ``config`` against the one the run directory was made with and writes it when new
  or changed. A change that no started stage (a record or a partial checkpoint) reads is
  simply adopted; one that does needs ``force``. Returns (the changed keys, the started stages
  that read them)."""
  wanted = io.to_jsonable(config.to_dict())
  records = [s.record for s in stages if run.has(s.record)]
  if not run.config_path.exists():
    if records:
      raise StageError(f"{run.path} holds records ({', '.join(records)}) but no config.json, "
                       "so what made them is unknown: restore config.json or use a new --run-dir")
    run.write_json(run.config_path, wanted)
    return [], []
  saved, now = _flatten(run.read("config")), _flatten(wanted)
  changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
  split_changed = _reads(SPLIT_KEYS, changed)
  touched = [s for s in stages if s.started(run) and (
      _reads(s.keys, changed) or (split_changed and "split" in s.needs))]
  if touched and not force:
    raise StageError(f"{run.path} was made with another configuration (differs in: "
                     f"{', '.join(changed)}), which would make "
                     f"{', '.join(s.name for s in touched)} stale; use a new --run-dir or "
                     "--force")
  if changed:
    run.write_json(run.config_path, wanted)
  return changed, touched


def _split(config: RunConfig, run: rundir.RunDir, train_set: data.Dataset) -> data.ForgetSplit:
  """The run's forget split: the saved one while its configuration holds, else a new one."""
  made_with = rundir.digest(rundir.config_section(config.to_dict(), SPLIT_KEYS))
  if run.has("split") and run.split_path.exists() and run.read("split").get(
      "provenance", {}).get("config") == made_with:
    return data.load_split(run.split_path, num_examples=len(train_set),
                           labels=train_set.labels)
  forget = config.forget
  split = (data.make_split(train_set, "class", classes=forget.classes) if forget.kind == "class"
           else data.make_split(train_set, "random", ratio=forget.ratio, seed=config.seed))
  run.write_file(lambda path: data.save_split(path, split), run.split_path)
  run.write("split", {"forget": len(split.forget), "retain": len(split.retain),
                      "indices": rundir.digest(np.asarray(split.forget).tolist()),
                      "provenance": {"config": made_with, "inputs": {}}})
  return split


def make_context(config: RunConfig, run_dir, stages: tuple[Stage, ...], *, progress=True,
                 resume=False, force=False) -> Context:
  """Loads the data and the run directory's configuration and split (made when new).

  A configuration other than the directory's is refused, or with ``force`` adopted: then
  every record it makes stale is removed at once, with its outputs and everything downstream,
  so that no result of the old configuration is left to be mixed with the new.
  """
  run = rundir.RunDir(run_dir)
  dataset = data.load_dataset(config.dataset)
  module = models.get_model(config.model, dataset.train.num_classes, **config.model_options)
  mesh = parallel.resolve_mesh(None)
  for name, batch in (("train.batch_size", config.train.batch_size),
                      ("curve.batch_size", config.curve.batch_size)):
    parallel.check_batch_size(name, batch, mesh)
  changed, touched = _configure(run, config, stages, force)
  split = _split(config, run, dataset.train)
  mean, std = data.normalization_stats(dataset.train)
  ctx = Context(config=config, run=run, dataset=dataset, split=split, module=module,
                apply=models.from_linen(module),
                preprocess_train=preprocess.make_preprocess(mean, std, augment=config.augment,
                                                            flip=config.augment),
                preprocess_eval=preprocess.make_preprocess(mean, std, augment=False),
                mesh=mesh, stages={**{s.record: s for s in stages}, **{s.name: s for s in stages}},
                progress=progress, resume=resume, force=force)
  if touched:
    dropped = []
    for stage in stages:       # in order: removing one makes its dependants stale in turn
      if stage in touched or (run.has(stage.record) and stale(ctx, stage)):
        run.remove([stage.record + ".json",
                    *(o for o in stage.outputs if o not in stage.keeps)])
        dropped.append(stage.name)
    if dropped:
      ctx.log(f"configuration changed ({', '.join(changed)}): removed the stale stages "
              f"{', '.join(dropped)}")
  return ctx
