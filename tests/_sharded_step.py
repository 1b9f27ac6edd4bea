"""Run by test_parallel.py in a fresh process with 4 forced host devices."""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mcu_jax import beta as beta_lib
from mcu_jax import mcu, models, parallel
from mcu_jax.curves import Curve


def main():
  assert jax.device_count() == 4, jax.devices()
  module = models.get_model("small_cnn", 10, width=4)
  apply = models.make_apply(module)
  start, state = models.init_model(module, jax.random.PRNGKey(0), (1, 8, 8, 1))
  end, _ = models.init_model(module, jax.random.PRNGKey(1), (1, 8, 8, 1))
  rng = np.random.default_rng(0)
  batches = [{"images": rng.uniform(size=(16, 8, 8, 1)).astype(np.float32),
              "labels": rng.integers(0, 10, 16).astype(np.int32),
              "is_forget": np.arange(16) % 3 == 0} for _ in range(5)]
  mask = jax.tree.map(lambda _: True, start)
  mask["Conv_0"]["kernel"] = False
  opt = optax.sgd(0.05, momentum=0.9)
  curve = Curve.from_endpoints(start, end)

  def run(place_state, place_batch):
    endpoints = place_state(mcu.Endpoints(start, end))
    st = place_state(mcu.init_state(curve, opt, mask, state, jax.random.PRNGKey(2)))
    step = mcu.make_train_step(apply, opt, endpoints, mask, beta_lib.AdaptiveBeta(50.0, 60.0))
    metrics = []
    for batch in batches:
      st, m = step(st, place_batch(batch))
      metrics.append({k: float(v) for k, v in m.items()})
    return st, metrics

  one = jax.devices()[0]
  single, single_metrics = run(lambda x: jax.device_put(x, one),
                               lambda b: jax.device_put(b, one))
  mesh = parallel.make_mesh()
  sharded, sharded_metrics = run(lambda x: parallel.replicate(x, mesh),
                                 lambda b: parallel.shard_batch(b, mesh))
  leaf = jax.tree.leaves(sharded.controls)[0]
  diffs = [float(jnp.max(jnp.abs(a - jax.device_put(b, one))))
           for a, b in zip(jax.tree.leaves(single.controls), jax.tree.leaves(sharded.controls))]
  try:
    parallel.shard_batch({"x": np.zeros((6, 2))}, mesh)
    error = None
  except ValueError as e:
    error = str(e)
  json.dump({"max_diff": max(diffs), "single_metrics": single_metrics,
             "sharded_metrics": sharded_metrics, "controls_devices": len(leaf.devices()),
             "batch_devices": len(parallel.shard_batch(batches[0], mesh)["images"].devices()),
             "indivisible_error": error}, sys.stdout)


if __name__ == "__main__":
  main()
