"""One process of a 2-process CPU run (jax.distributed + gloo collectives), or the 1-process
baseline; run by test_parallel.py. Prints the trained controls' checksum as JSON."""
import json
import sys

import jax


def main():
  mode, = sys.argv[1:2]
  if mode == "worker":
    port, pid = sys.argv[2], int(sys.argv[3])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from mcu_jax import parallel
    parallel.initialize(f"localhost:{port}", 2, pid)
  import numpy as np
  import optax

  from _tiny_curve import tiny_problem
  from mcu_jax import beta as beta_lib
  from mcu_jax import mcu, parallel
  from mcu_jax.curves import Curve

  apply, start, end, state, batches = tiny_problem(4)
  mask = jax.tree.map(lambda _: True, start)
  opt = optax.sgd(0.05, momentum=0.9)
  curve = Curve.from_endpoints(start, end)
  mesh = parallel.make_mesh()
  per_process = 16 // jax.process_count()
  lo = jax.process_index() * per_process
  endpoints = parallel.replicate(mcu.Endpoints(start, end), mesh)
  st = parallel.replicate(mcu.init_state(curve, opt, mask, state, jax.random.PRNGKey(2)), mesh)
  step = mcu.make_train_step(apply, opt, endpoints, mask, beta_lib.AdaptiveBeta(50.0, 60.0))
  for batch in batches:
    local = {k: v[lo:lo + per_process] for k, v in batch.items()}
    st, metrics = step(st, parallel.shard_batch(local, mesh))
  controls = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), st.controls)
  print(json.dumps({"processes": jax.process_count(), "devices": jax.device_count(),
                    "leaves": [np.asarray(x, np.float64).ravel().tolist()
                               for x in jax.tree.leaves(controls)]}))


if __name__ == "__main__":
  main()
