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
    from mcu_jax.runtime import parallel
    parallel.initialize(f"localhost:{port}", 2, pid)
  import numpy as np
  from _tiny_curve import tiny_problem

  from mcu_jax.core import beta as beta_lib
  from mcu_jax.core.curves import Curve
  from mcu_jax.runtime import mcu
  from mcu_jax.runtime.optim import OptimConfig

  apply, start, end, state, batches = tiny_problem(4)
  curve = Curve.from_endpoints(start, end)
  per_process = 16 // jax.process_count()
  lo = jax.process_index() * per_process
  policy = beta_lib.AdaptiveBeta(targets=beta_lib.Targets(retain=60.0, forget=50.0))
  trainer = mcu.CurveTrainer(apply, curve, beta=policy, batch_size=16,
                             optimizer=OptimConfig(lr=0.05, momentum=0.9))
  st = trainer.init(state, jax.random.PRNGKey(2))
  for batch in batches:   # each process passes its own share of the global batch
    st, metrics = trainer.step(st, {k: v[lo:lo + per_process] for k, v in batch.items()})
  controls = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), st.params)
  print(json.dumps({"processes": jax.process_count(), "devices": jax.device_count(),
                    "leaves": [np.asarray(x, np.float64).ravel().tolist()
                               for x in jax.tree.leaves(controls)]}))


if __name__ == "__main__":
  main()
