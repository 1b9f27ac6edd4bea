"""Populations of small models: one program for N seeds vs N separate runs.

Trains N = ``--sizes`` members of a small CNN on the bundled digits (``--epochs`` epochs each)
three ways, in one process, and reports models/s and the ratios:

* ``separate``: N calls of ``train.train_model``, each building its own epoch, as N runs of
  a training script would (in one process JAX still reuses a compiled program whose HLO it
  has seen, so this is a lower bound on N scripts, which would also pay N start-ups);
* ``loop``: ``population.train_population(vectorize=False)``: one compiled epoch, looped over
  the members (the driver on the CPU);
* ``vmap``: ``population.train_population(vectorize=True)``: one jitted epoch vmapped over the
  population axis (the driver on GPU/TPU). On XLA:CPU its convolutions become grouped
  convolutions; measured here too.

Wall seconds include compilation (that is the point of one program), after one untimed
warm-up run. Every variant's members are checked against the separate runs (equal for the
loop, float tolerance for vmap).

  python3 benchmarks/population.py --sizes 1 8 32 --epochs 2 --out runs/population.json
"""
from __future__ import annotations

import argparse
import os
import sys
import time

if __package__ in (None, ""):   # run as a file (python3 benchmarks/population.py): the checkout
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import _common  # noqa: E402
from mcu_jax import data, models, population  # noqa: E402
from mcu_jax.preprocess import images  # noqa: E402
from mcu_jax.runtime import loops, train  # noqa: E402


def _max_difference(pop: population.Population, members: list) -> float:
  return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
             for i, (params, _) in enumerate(members)
             for a, b in zip(jax.tree.leaves(pop.member(i)[0]), jax.tree.leaves(params)))


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32])
  parser.add_argument("--epochs", type=int, default=2)
  parser.add_argument("--width", type=int, default=8, help="small_cnn width")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--skip-vmap", action="store_true")
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  tt = data.load_digits()
  module = models.get_model("small_cnn", 10, width=args.width)
  apply = models.from_linen(module)
  init = lambda key: models.init_model(module, key, (1, 8, 8, 1))
  arrays = {"images": tt.train.images, "labels": tt.train.labels}
  config = train.FitConfig(lr=0.1, momentum=0.9, weight_decay=5e-4, cosine=True,
                           schedule_unit="step", epochs=args.epochs, batch_size=args.batch_size)
  loss = train.supervised_loss(apply)
  warm = init(jax.random.PRNGKey(0))          # one-time costs (data upload, first traces)
  train.train_model(loss, *warm, arrays, config=config, rng=jax.random.PRNGKey(1),
                    preprocess=images)
  rows = []
  for n in args.sizes:
    seeds = list(range(100, 100 + n))
    start = time.perf_counter()
    separate = []
    for seed in seeds:       # a new loss closure per run: nothing is shared, as across scripts
      params, state = init(jax.random.PRNGKey(seed))
      trained = train.train_model(train.supervised_loss(apply), params, state, arrays,
                                  config=config, rng=jax.random.PRNGKey(seed + 1),
                                  preprocess=images).state
      separate.append(jax.block_until_ready((trained.params, trained.model_state)))
    timings = {"separate": time.perf_counter() - start}
    errors = {}
    for name, vectorize in (("loop", False), ("vmap", True)):
      if name == "vmap" and args.skip_vmap:
        continue
      start = time.perf_counter()
      pop = population.train_population(loss, init, arrays, config=config, seeds=seeds,
                                        vectorize=vectorize, preprocess=images)
      jax.block_until_ready(pop.params)
      timings[name] = time.perf_counter() - start
      errors[name] = _max_difference(pop, separate)
    for name, seconds in timings.items():
      rows.append({"models": n, "driver": name, "wall_s": seconds, "models_per_s": n / seconds,
                   "speedup_vs_separate": timings["separate"] / seconds,
                   "max_abs_diff_vs_separate": errors.get(name, 0.0)})
      print(f"  N = {n:3d} {name:8s}: {seconds:8.2f} s, {n / seconds:7.2f} models/s, "
            f"x{timings['separate'] / seconds:.2f} vs separate", flush=True)
  table = _common.markdown_table(rows, [
      ("models", "N"), ("driver", "driver"), ("wall_s", "wall s"),
      ("models_per_s", "models/s"), ("speedup_vs_separate", "vs separate"),
      ("max_abs_diff_vs_separate", "max |diff|")], ".4g")
  print()
  print(table)
  record = {"benchmark": "population", "command": _common.command_line(__file__, argv),
            "config": {"sizes": args.sizes, "epochs": args.epochs, "width": args.width,
                       "batch_size": args.batch_size, "default_driver":
                       "vmap" if loops.resolve_vectorize(None) else "loop"},
            "machine": _common.machine_info(), "rows": rows, "table": table}
  return _common.emit(record, args.out)


if __name__ == "__main__":
  main()
