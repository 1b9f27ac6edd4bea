"""Images/s of the MCU curve step on 1, 2, 4, 8 devices (data parallel, mcu_jax.runtime.parallel).

The step is ``mcu_jax.runtime.mcu.CurveTrainer.step`` (full mask, adaptive beta, fp32 unless
``--precision``) of a trainer on a 1-D mesh (``CurveTrainer(..., mesh=parallel.make_mesh(...))``
replicates the curve, optimizer state and endpoints over it), with the batch split over it
(``parallel.shard_batch``).

* ``--scaling weak`` (default): the per-device batch is fixed (``--per-device-batch``), the
  global batch grows with the device count; ideal = images/s proportional to devices.
* ``--scaling strong``: the global batch is fixed (``--global-batch``); ideal = the step time
  falls as 1 / devices.

On real accelerators (GPUs, TPUs) all counts run in this process on the first N devices;
counts above the visible devices are skipped. Without accelerators (or with ``--force-cpu``)
each count runs in a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``:
N virtual devices sharing the same CPU cores. That checks the sharded program runs and what
it costs in overhead, but it is NOT a scaling measurement, and every record says so.

  python3 benchmarks/device_scaling.py --model preresnet110 --per-device-batch 128 \
      --devices 1,2,4,8 --out runs/device_scaling.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

if __package__ in (None, ""):   # run as a file (python3 benchmarks/device_scaling.py): the checkout
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _common  # noqa: E402

FORCED_LABEL = "forced CPU devices: not a real scaling measurement"
_MARK = "DEVICE_SCALING_RESULT "


def measure(count: int, global_batch: int, args) -> dict:
  """The curve step on the first ``count`` devices of this process."""
  import jax

  from benchmarks import step_throughput as st
  image_shape = _common.parse_shape(args.image_shape)
  place = st.Placement(count)
  models = st.build_models(args.model, image_shape, args.precision, args.seed)
  batch = st.random_batch(global_batch, image_shape, args.forget_fraction, args.seed)
  timing = st.jax_curve(models, batch, place, args.steps, args.warmup)
  row = _common.throughput_row(f"jax curve {args.precision} x{count}", timing, global_batch)
  row.update(devices=count, global_batch=global_batch, per_device_batch=global_batch // count,
             device_kind=jax.devices()[0].device_kind, backend=jax.default_backend(),
             visible_devices=jax.device_count())
  return row


def _batch_for(count: int, args) -> int:
  if args.scaling == "weak":
    return args.per_device_batch * count
  if args.global_batch % count:
    raise ValueError(f"--global-batch {args.global_batch} is not divisible by {count} devices")
  return args.global_batch


def _worker_argv(args, count: int) -> list[str]:
  argv = [sys.executable, os.path.abspath(__file__), "--worker", str(count)]
  for name in ("model", "image_shape", "precision", "per_device_batch", "global_batch",
               "scaling", "steps", "warmup", "forget_fraction", "seed"):
    argv += ["--" + name.replace("_", "-"), str(getattr(args, name))]
  return argv


def run_forced(count: int, args) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={count}").strip())
  out = subprocess.run(_worker_argv(args, count), env=env, capture_output=True, text=True,
                       timeout=args.timeout)
  if out.returncode != 0:
    raise RuntimeError(f"worker for {count} devices failed:\n{out.stderr[-3000:]}")
  for line in out.stdout.splitlines():
    if line.startswith(_MARK):
      return json.loads(line[len(_MARK):])
  raise RuntimeError(f"worker for {count} devices printed no result:\n{out.stdout[-2000:]}")


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="preresnet110")
  parser.add_argument("--image-shape", default="32,32,3", help="H,W,C")
  parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
  parser.add_argument("--devices", default="1,2,4,8", help="comma list of device counts")
  parser.add_argument("--scaling", default="weak", choices=["weak", "strong"])
  parser.add_argument("--per-device-batch", type=int, default=128, help="weak scaling")
  parser.add_argument("--global-batch", type=int, default=128, help="strong scaling")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--forget-fraction", type=float, default=0.18)
  parser.add_argument("--force-cpu", action="store_true",
                      help="forced CPU devices even when accelerators are visible")
  parser.add_argument("--timeout", type=float, default=1800, help="seconds per worker")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=None, help="write a JSON record here")
  parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.worker is not None:
    row = measure(args.worker, _batch_for(args.worker, args), args)
    print(_MARK + json.dumps(row), flush=True)
    return row

  counts = [int(c) for c in _common.parse_list(args.devices)]
  if not counts or min(counts) < 1:
    raise ValueError(f"--devices must list positive counts, got {args.devices!r}")
  import jax

  from mcu_jax.runtime import loops
  accelerated = not loops.on_cpu() and not args.force_cpu
  mode = (f"real {jax.devices()[0].device_kind} devices" if accelerated else FORCED_LABEL)
  print(f"{mode}; model {args.model}, {args.scaling} scaling, "
        + (f"{args.per_device_batch} images per device" if args.scaling == "weak"
           else f"global batch {args.global_batch}"), flush=True)
  rows, skipped = [], []
  for count in counts:
    batch = _batch_for(count, args)
    if accelerated:
      if count > jax.device_count():
        skipped.append(count)
        print(f"  {count} devices: skipped ({jax.device_count()} visible)", flush=True)
        continue
      row = measure(count, batch, args)
    elif count == 1 and loops.on_cpu():
      row = measure(1, batch, args)    # one CPU device: this process will do
    else:
      row = run_forced(count, args)
    row["forced_cpu_devices"] = not accelerated
    rows.append(row)
    print(f"  {count} devices: {row['images_per_s']:.1f} images/s, "
          f"{row['ms_per_step']:.2f} ms/step (global batch {batch})", flush=True)
  base = next((r for r in rows if r["devices"] == 1), None)
  for row in rows:
    if base is not None:
      row["speedup_vs_1"] = row["images_per_s"] / base["images_per_s"]
      row["efficiency"] = row["speedup_vs_1"] / row["devices"]
  table = _common.markdown_table(rows, [
      ("devices", "devices"), ("global_batch", "global batch"),
      ("per_device_batch", "per device"), ("images_per_s", "images/s"),
      ("ms_per_step", "ms/step"), ("speedup_vs_1", "speed-up vs 1"),
      ("efficiency", "efficiency")], ".4g")
  print()
  if not accelerated:
    print(f"**{FORCED_LABEL}** (all virtual devices share {_common.usable_cpus()} CPU cores)")
  print(table)
  record = {
      "benchmark": "device_scaling",
      "command": _common.command_line(__file__, argv),
      "mode": mode,
      "real_scaling_measurement": accelerated,
      "config": {k: getattr(args, k) for k in (
          "model", "image_shape", "precision", "devices", "scaling", "per_device_batch",
          "global_batch", "steps", "warmup", "forget_fraction", "seed")},
      "machine": _common.machine_info(),
      "rows": rows,
      "skipped_device_counts": skipped,
      "table": table,
  }
  return _common.emit(record, args.out)


if __name__ == "__main__":
  main()
