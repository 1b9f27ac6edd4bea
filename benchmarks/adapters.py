"""``unlearn_curve`` through every model library's adapter on digits: exactness and wall time.

For each library (Linen, NNX, Haiku, Equinox in both BatchNorm modes) the same network, 64 ->
32 -> BN -> relu -> 16 -> BN -> relu -> dropout 0.2 -> 10, gets its own theta_o (8 epochs on
digits' float features) and theta_p (2 epochs of relabelled D_f), then one ``unlearn_curve``
call with the reference's defaults (10 curve epochs, 20 sweep points, class 3 forgotten). The
row reports the call's wall time, and the largest relative error of the returned BatchNorm
statistics (what the library's inference reads; variances elementwise, means relative to their
largest) and inference logits (relative to the largest) against a float64 NumPy pass
(``tests/_adapter_models.py``, the tests' twin of the network)::

    python3 benchmarks/adapters.py --out runs/adapters.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

# The network's float64 NumPy twin is the tests' (tests/ is not a package).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
if __package__ in (None, ""):   # run as a file (python3 benchmarks/adapters.py): the checkout
  sys.path.insert(0, ROOT)
import _adapter_models as am  # noqa: E402
import jax  # noqa: E402

import mcu_jax  # noqa: E402
from benchmarks import _common  # noqa: E402
from mcu_jax import data  # noqa: E402
from mcu_jax.runtime import train  # noqa: E402


def _relative(got, want, elementwise: bool = False) -> float:
  """max |got - want| over max |want| (means, logits: entries near 0 have no relative error of
  their own), or elementwise (variances, all positive)."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  if elementwise:
    return float(np.max(np.abs(got - want) / np.abs(want)))
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def run_library(name: str, digits, epochs: int, points: int) -> dict:
  library, _, mode = name.partition("-")
  case = am.build(library, sizes=(64, 32, 16, 10), dropout=0.2, bn_mode=mode or "batch")
  x = digits.train.images.reshape(-1, 64).astype(np.float32) / 255.0
  y, f = digits.train.labels, digits.train.labels == 3
  xt = digits.test.images.reshape(-1, 64).astype(np.float32) / 255.0
  yt = digits.test.labels
  loss = train.supervised_loss(case.apply)
  original = train.train_model(loss, case.params, case.state, {"images": x, "labels": y},
                               config=train.FitConfig(lr=0.1, momentum=0.9, epochs=8,
                                                      batch_size=64),
                               rng=jax.random.PRNGKey(1)).state
  pre = train.train_model(loss, original.params, original.model_state,
                          {"images": x, "labels": np.where(f, (y + 1) % 10, y)},
                          config=train.FitConfig(lr=0.05, momentum=0.9, epochs=2, batch_size=64),
                          rng=jax.random.PRNGKey(2)).state
  start = time.perf_counter()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    result = mcu_jax.unlearn_curve(case.apply, original.params, pre.params,
                                   model_state=original.model_state, scenario="class",
                                   forget=(x[f], y[f]), retain=(x[~f], y[~f]),
                                   test=(xt[yt != 3], yt[yt != 3]),
                                   curve=mcu_jax.CurveOptions(epochs=epochs),
                                   sweep=mcu_jax.SweepOptions(points=points))
  seconds = time.perf_counter() - start
  weights = case.weights(result.params)
  stats = am.reference_stats(weights, x[~f], 128)
  bn_error = max(max(_relative(m, wm), _relative(v, wv, elementwise=True))
                 for (m, v), (wm, wv) in zip(case.read_stats(result.model_state), stats))
  logits, _ = case.apply(result.params, result.model_state, x[~f], False)
  logit_error = _relative(logits, am.reference_logits(weights, stats, x[~f]))
  adapter = {"linen": "from_linen", "nnx": "from_nnx", "haiku": "from_haiku",
             "equinox": "from_equinox"}[library]
  return {"library": name, "adapter": adapter, "bn_rel_error": bn_error,
          "logits_rel_error": logit_error, "dropout": 0.2, "seconds": seconds,
          "t": result.t, **{k: v for k, v in result.metrics.items() if k.endswith("_acc")}}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--libraries", nargs="+",
                      default=["linen", "nnx", "haiku", "equinox-batch", "equinox-ema"])
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--points", type=int, default=20)
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  digits = data.load_digits()
  rows = []
  for name in args.libraries:
    rows.append(run_library(name, digits, args.epochs, args.points))
    row = rows[-1]
    print(f"  {name:14s} BN rel err {row['bn_rel_error']:.1e}  logits {row['logits_rel_error']:.1e}"
          f"  {row['seconds']:6.1f} s  t {row['t']:.3f}  RA {row['retain_acc']:.2f}  "
          f"FA {row['forget_acc']:.2f}", flush=True)
  table = _common.markdown_table(rows, [
      ("library", "library"), ("adapter", "adapter"), ("bn_rel_error", "BN rel. error"),
      ("logits_rel_error", "logits rel. error"), ("dropout", "dropout"),
      ("seconds", "one call, s"), ("t", "t"), ("retain_acc", "RA %"), ("forget_acc", "FA %"),
      ("test_acc", "TA %")], ".3g")
  record = {"machine": _common.machine_info(), "args": vars(args), "rows": rows,
            "table": table}
  print(table)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(record, f, indent=1)
  return record


if __name__ == "__main__":
  main()
