"""Timing of the sweep over t: several t per call (vmap, in chunks) vs one t per call.

Trains nothing. Builds a Bezier curve between two random initialisations of a model (its middle
bend pushed off the straight line by noise), then times ``mcu_jax.runtime.sweep.sweep`` -- BN
recalibration on the training images plus accuracy/loss on retain, forget and test sets, at
``--points`` evenly spaced t -- sequentially (``vectorize=False``) and vmapped with each chunk
size, after a warm-up call that compiles. Checks that every variant gives the sequential
results, prints a markdown table and optionally writes JSON.

  python3 benchmarks/sweep_timing.py --model small_cnn --data digits --points 20 \
      --chunks 1 5 10 20 --repeats 3 --out /tmp/sweep_timing.json
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from mcu_jax import data as data_lib
from mcu_jax import io
from mcu_jax.core.curves import Curve
from mcu_jax.models import from_linen, get_model, init_model, param_count
from mcu_jax.pipeline import report
from mcu_jax.runtime import sweep as sweep_lib


def build_data(kind: str, num_examples: int, seed: int):
  """(train images, {name: (images, labels)}, num_classes)."""
  if kind == "digits":
    digits = data_lib.load_digits(seed=seed)
    train, test, num_classes = digits.train, digits.test, 10
    train_x, train_y, test_x, test_y = train.images, train.labels, test.images, test.labels
  else:
    rng = np.random.default_rng(seed)
    shape = {"cifar": (32, 32, 3), "mnist": (28, 28, 1)}[kind]
    num_classes = 10
    n_test = max(1, num_examples // 5)
    train_x = rng.integers(0, 256, (num_examples,) + shape, dtype=np.uint8)
    train_y = rng.integers(0, num_classes, num_examples).astype(np.int32)
    test_x = rng.integers(0, 256, (n_test,) + shape, dtype=np.uint8)
    test_y = rng.integers(0, num_classes, n_test).astype(np.int32)
  split = data_lib.random_forget_split(len(train_y), 0.1, seed)
  sets = {"retain": (train_x[split.retain], train_y[split.retain]),
          "forget": (train_x[split.forget], train_y[split.forget]),
          "test": (test_x, test_y)}
  return train_x, sets, num_classes


def build_curve(model: str, num_classes: int, image_shape, seed: int, bend_noise: float,
                **model_kwargs):
  module = get_model(model, num_classes, **model_kwargs)
  k0, k1, k2 = jax.random.split(jax.random.key(seed), 3)
  p0, state = init_model(module, k0, (1,) + tuple(image_shape))
  p1, _ = init_model(module, k1, (1,) + tuple(image_shape))
  curve = Curve.from_endpoints(p0, p1)
  leaves, treedef = jax.tree.flatten(curve.controls)
  keys = jax.random.split(k2, len(leaves))
  bent = [x + bend_noise * jnp.std(x) * jax.random.normal(k, x.shape, x.dtype)
          for x, k in zip(leaves, keys)]
  return from_linen(module), state, curve.replace(controls=jax.tree.unflatten(treedef, bent)), p0


def max_difference(a: sweep_lib.SweepResult, b: sweep_lib.SweepResult) -> dict[str, float]:
  acc = max(float(np.max(np.abs(a.accuracy[k] - b.accuracy[k]))) for k in a.accuracy)
  loss = max(float(np.max(np.abs(a.loss[k] - b.loss[k]))) for k in a.loss)
  path = float(np.max(np.abs(a.path_length - b.path_length)))
  stats = max([float(np.max(np.abs(x - y))) for x, y in
               zip(jax.tree.leaves(a.model_states), jax.tree.leaves(b.model_states))] or [0.0])
  return {"accuracy": acc, "loss": loss, "path_length": path, "bn_stats": stats}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="small_cnn")
  parser.add_argument("--width", type=int, default=None, help="model width (small_cnn)")
  parser.add_argument("--data", default="digits", choices=["digits", "cifar", "mnist"],
                      help="digits: sklearn digits; cifar/mnist: random data of that shape")
  parser.add_argument("--num-examples", type=int, default=2048,
                      help="training-set size for random data")
  parser.add_argument("--points", type=int, default=20)
  parser.add_argument("--chunks", type=int, nargs="+", default=[1, 5, 10, 20],
                      help="chunk sizes of the vmapped sweep")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--batch-size", type=int, default=512, help="inference batch size")
  parser.add_argument("--recal-batch-size", type=int, default=128,
                      help="batch size of the BN recalibration pass (reference: 128)")
  parser.add_argument("--bend-noise", type=float, default=0.1)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--tolerance", type=float, default=1e-4,
                      help="max allowed |difference| in loss / BN stats vs sequential")
  parser.add_argument("--out", default=None, help="write a JSON record here")
  args = parser.parse_args(argv)

  recal_images, sets, num_classes = build_data(args.data, args.num_examples, args.seed)
  kwargs = {} if args.width is None else {"width": args.width}
  apply, state, curve, p0 = build_curve(args.model, num_classes, recal_images.shape[1:],
                                        args.seed, args.bend_noise, **kwargs)
  ts = np.linspace(0.0, 1.0, args.points)
  recal_images = jax.device_put(recal_images)
  sets = jax.device_put(sets)
  common = dict(batch_size=args.batch_size, recal_batch_size=args.recal_batch_size,
                keep_states=True, progress=False)   # the BN statistics are compared too

  variants = [("sequential", dict(vectorize=False))]
  variants += [(f"vmap chunk={c}", dict(vectorize=True, chunk_size=c)) for c in args.chunks]
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), model "
        f"{args.model} ({param_count(p0):,} params), data {args.data}: "
        f"{len(recal_images)} recal images, sets "
        f"{ {k: len(v[1]) for k, v in sets.items()} }, {args.points} points", flush=True)

  rows, baseline, results = [], None, {}
  for name, variant in variants:
    options = sweep_lib.SweepOptions(**common, **variant)
    start = time.perf_counter()
    result = sweep_lib.sweep(curve, ts, apply, state, sets, recal_images, options)
    first = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      result = sweep_lib.sweep(curve, ts, apply, state, sets, recal_images, options)
      times.append(time.perf_counter() - start)
    results[name] = result
    baseline = baseline or result
    diff = max_difference(result, baseline)
    row = {"variant": name, "first_call_s": first, "median_s": statistics.median(times),
           "min_s": min(times), "per_point_ms": 1e3 * statistics.median(times) / args.points,
           "max_acc_diff": diff["accuracy"], "max_loss_diff": diff["loss"],
           "max_bn_diff": diff["bn_stats"]}
    rows.append(row)
    print(f"  {name:>16}: first {first:.2f} s, median {row['median_s']:.3f} s", flush=True)
  seq = rows[0]["median_s"]
  for row in rows:
    row["speedup_vs_sequential"] = seq / row["median_s"]

  table = report.markdown_table(rows, [
      "variant", ("first_call_s", "first call (s)"), ("median_s", "median (s)"),
      ("per_point_ms", "per point (ms)"), ("speedup_vs_sequential", "speed-up"),
      ("max_acc_diff", "max |Δacc|"), ("max_loss_diff", "max |Δloss|"),
      ("max_bn_diff", "max |ΔBN|")], floatfmt=".3g")
  print()
  print(table)
  equal = all(r["max_loss_diff"] <= args.tolerance and r["max_bn_diff"] <= args.tolerance
              * max(1.0, max(float(np.max(np.abs(x))) for x in
                             jax.tree.leaves(baseline.model_states) or [1.0]))
              for r in rows)
  print("results equal to sequential:", equal)
  if args.out:
    io.write_json(args.out, {
        "command": " ".join([sys.executable.split("/")[-1]] + sys.argv),
        "device": str(jax.devices()[0]), "backend": jax.default_backend(),
        "jax": jax.__version__, "python": platform.python_version(),
        "model": args.model, "params": param_count(p0), "data": args.data,
        "recal_examples": int(len(recal_images)),
        "set_sizes": {k: int(len(v[1])) for k, v in sets.items()},
        "points": args.points, "repeats": args.repeats, "batch_size": args.batch_size,
        "recal_batch_size": args.recal_batch_size, "rows": rows,
        "results_equal": equal, "sweep": baseline.to_dict()})
    print("wrote", args.out)
  return 0 if equal else 1


if __name__ == "__main__":
  sys.exit(main())
