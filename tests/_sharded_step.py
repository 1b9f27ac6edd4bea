"""Run by test_parallel.py in a fresh process with 4 forced host devices."""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from mcu_jax import beta as beta_lib
from _tiny_curve import tiny_problem
from mcu_jax import loops, mcu, parallel
from mcu_jax.curves import Curve
from mcu_jax.optim import OptimConfig


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
  json.dump({"batch_sums": sums, "max_diff": max(diffs), "single_metrics": single_metrics,
             "sharded_metrics": sharded_metrics, "controls_devices": len(leaf.devices()),
             "batch_devices": len(parallel.shard_batch(batches[0], mesh)["images"].devices()),
             "indivisible_error": error}, sys.stdout)


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
