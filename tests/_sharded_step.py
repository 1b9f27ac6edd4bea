"""Run by test_parallel.py in a fresh process with 4 forced host devices: the curve step, the
batch sums, a base unlearning method, the sweep and inference on 1 device against 4."""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from _tiny_curve import tiny_problem

from mcu_jax import data, unlearn
from mcu_jax.core import beta as beta_lib
from mcu_jax.core.curves import Curve
from mcu_jax.preprocess import normalize_uint8
from mcu_jax.runtime import batchnorm, evaluate, loops, mcu, parallel, sweep
from mcu_jax.runtime.optim import OptimConfig


def main():
  assert jax.device_count() == 4, jax.devices()
  apply, start, end, state, batches = tiny_problem(5)
  mask = jax.tree.map(lambda _: True, start)
  mask["Conv_0"]["kernel"] = False
  curve = Curve.from_endpoints(start, end)
  policy = beta_lib.AdaptiveBeta(targets=beta_lib.Targets(retain=60.0, forget=50.0))

  def run(mesh):
    trainer = mcu.CurveTrainer(apply, curve, mask=mask, beta=policy, batch_size=16, mesh=mesh,
                               optimizer=OptimConfig(lr=0.05, momentum=0.9))
    st = trainer.init(state, jax.random.PRNGKey(2))
    metrics = []
    for batch in batches:
      st, m = trainer.step(st, batch)
      metrics.append({k: float(v) for k, v in m.items()})
    return st, metrics

  one = jax.devices()[0]
  single, single_metrics = run(parallel.make_mesh([one]))
  mesh = parallel.make_mesh()
  sharded, sharded_metrics = run(mesh)
  leaf = jax.tree.leaves(sharded.params)[0]
  diffs = [float(jnp.max(jnp.abs(jax.device_put(a, one) - jax.device_put(b, one))))
           for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(sharded.params))]
  try:
    parallel.shard_batch({"x": np.zeros((6, 2))}, mesh)
    error = None
  except ValueError as e:
    error = str(e)
  sums = batch_sums_on_mesh(mesh)
  single_mesh = parallel.make_mesh([one])
  json.dump({"unlearn": unlearn_on_meshes(apply, start, state, single_mesh, mesh),
             "sweep": sweep_on_meshes(apply, start, end, state, single_mesh, mesh),
             "batch_sums": sums, "max_diff": max(diffs), "single_metrics": single_metrics,
             "sharded_metrics": sharded_metrics, "controls_devices": len(leaf.devices()),
             "batch_devices": len(parallel.shard_batch(batches[0], mesh)["images"].devices()),
             "indivisible_error": error}, sys.stdout)


def _max_diff(a, b) -> float:
  """Largest absolute difference between two pytrees of arrays (anywhere), 0 for none."""
  diffs = [float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
           for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
  return max(diffs, default=0.0)


def _random_images(rng, n: int) -> np.ndarray:
  return rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)


def unlearn_on_meshes(apply, params, model_state, single_mesh, mesh) -> dict:
  """unlearn.run of RL (random labels: the PRNG under sharding too), 1 epoch of 3 batches of
  16 over 48 random examples, on a 1-device mesh and on the 4-device mesh."""
  rng = np.random.default_rng(3)
  train = data.Dataset("tiny", _random_images(rng, 48), rng.integers(0, 10, 48).astype(np.int32),
                       10)
  split = data.random_forget_split(48, 0.25, seed=0)
  results = [unlearn.run("rl", apply=apply, params=params, model_state=model_state, train=train,
                         split=split, preprocess=normalize_uint8, rng=5, progress=False,
                         config={"epochs": 1, "batch_size": 16, "lr": 0.05}, mesh=m)
             for m in (single_mesh, mesh)]
  one, four = results
  return {"params_diff": _max_diff(one.params, four.params),
          "state_diff": _max_diff(one.model_state, four.model_state),
          "moved": _max_diff(one.params, params),
          "devices": len(jax.tree.leaves(four.params)[0].devices())}


def sweep_on_meshes(apply, start, end, model_state, single_mesh, mesh) -> dict:
  """sweep.sweep of a BatchNorm curve (vmapped, chunks of 2 over 3 t) on 1 device and on 4:
  sets of 50, 13 and 37 examples (inference batches rounded up to multiples of 4 and padded),
  recalibration on 50 inputs in batches of 16 (a remainder of 2, unsplit on 4 devices); then
  predict_logits on 4 devices, and whether the 4-device sweep program really has cross-device
  reductions (it has them only when its batches are split)."""
  rng = np.random.default_rng(4)
  images = _random_images(rng, 100)
  labels = rng.integers(0, 10, 100).astype(np.int32)
  sets = {"retain": (images[:50], labels[:50]), "forget": (images[50:63], labels[50:63]),
          "test": (images[63:], labels[63:])}
  curve = Curve.from_endpoints(start, end)
  curve = curve.replace(controls=jax.tree.map(
      lambda x: x + rng.normal(0, 0.2, x.shape).astype(np.float32), curve.controls))
  ts = np.linspace(0.0, 1.0, 3)
  results = {}
  for name, m in (("one", single_mesh), ("four", mesh)):
    options = sweep.SweepOptions(batch_size=32, recal_batch_size=16, chunk_size=2,
                                 keep_states=True, mesh=m, preprocess=normalize_uint8)
    results[name] = sweep.sweep(curve, ts, apply, model_state, sets, images[:50], options)
  one, four = results["one"], results["four"]
  out = {name: {k: _max_diff(getattr(one, name)[k], getattr(four, name)[k])
                for k in one.accuracy} for name in ("accuracy", "loss")}
  out["states_diff"] = _max_diff(one.model_states, four.model_states)
  out["path_diff"] = _max_diff(one.path_length, four.path_length)
  out["accuracy_one"] = {k: v.tolist() for k, v in one.accuracy.items()}

  x = sets["test"][0]
  logits = [evaluate.predict_logits(apply, start, model_state, x, 32, normalize_uint8, mesh=m)
            for m in (single_mesh, mesh)]
  out["logits_diff"] = _max_diff(*logits)

  # The program the 4-device sweep ran (lowered for the same arguments: the compilation is
  # cached). Its inputs are all replicated, so any all-reduce in it comes from batches split
  # by the sharding constraints.
  layout = batchnorm.stats_layout(apply, curve.start, model_state, images[:50], normalize_uint8)
  static = dict(apply=apply, batch_size=32, recal_batch_size=16, preprocess=normalize_uint8,
                layout=layout)
  args = parallel.replicate((curve, np.asarray(ts[:2], np.float32),
                             np.asarray(ts[:2], np.float32), model_state, images[:50],
                             {k: (jnp.asarray(a), jnp.asarray(b)) for k, (a, b) in sets.items()}),
                            mesh)
  out["input_devices"] = len(args[4].devices())
  out["rounded_batch_sizes"] = [parallel.inference_batch_size(b, n, mesh)
                                for b, n in ((32, 13), (30, 100), (64, 64))]
  try:
    sweep.SweepOptions(recal_batch_size=18, mesh=mesh)
    out["recal_error"] = None
  except ValueError as e:
    out["recal_error"] = str(e)
  out["replicated_inputs"] = all(
      x.sharding.is_equivalent_to(parallel.replicated_sharding(mesh), x.ndim)
      for x in jax.tree.leaves(args))
  text = sweep._sweep_chunk.lower(*args, **static, mesh=mesh).compile().as_text()
  out["all_reduces"] = text.count("all-reduce(")
  return out


def batch_sums_on_mesh(mesh) -> dict:
  """loops.make_batch_sum over batches sharded along their batch axis, or uncommitted, with
  a replicated argument: each driver, plain and compiled ahead, against a NumPy float64
  sum."""
  rng = np.random.default_rng(1)
  w = rng.normal(size=(3, 2)).astype(np.float32)
  xs = rng.normal(size=(5, 8, 3)).astype(np.float32)     # 5 batches of 8
  want = sum(x.astype(np.float64).T @ np.tanh(x.astype(np.float64) @ w) for x in xs)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data"))
  w_dev, xs_dev = parallel.replicate(w, mesh), jax.device_put(xs, sharding)
  fn = lambda w, x: x.T @ jnp.tanh(x @ w)
  loose = jax.device_put(xs)   # uncommitted: free to join the replicated argument
  out = {}
  for loop in ("scan", "python"):
    total = loops.make_batch_sum(fn, loop)
    for suffix, batches in (("", xs_dev), (" uncommitted", loose)):
      compiled = total.lower(w_dev, batches).compile()
      for name, f in ((loop + suffix, total), (loop + " compiled" + suffix, compiled)):
        got = f(w_dev, batches)
        out[name] = {"max_error": float(np.max(np.abs(np.asarray(got, np.float64) - want))),
                     "devices": len(got.devices())}
  return out


if __name__ == "__main__":
  main()
