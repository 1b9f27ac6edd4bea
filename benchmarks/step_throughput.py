"""Step throughput (images/s): plain training step vs the MCU curve step, JAX vs the reference.

Times, on one batch already on the device, the median wall time per step (each step timed on
its own, from dispatch to ``block_until_ready``) of

* ``jax plain <precision>``: a jitted SGD step (``optim.make_optimizer``: momentum 0.9, weight
  decay 5e-4) of the mean cross-entropy (``train.supervised_loss``), the step
  ``mcu_jax.runtime.train.make_epoch`` runs per batch;
* ``jax curve <precision>``: ``mcu_jax.runtime.mcu.CurveTrainer.step`` with a full mask and the
  adaptive beta, on a batch that mixes forget and retain examples (``is_forget``);

for each ``--precision`` (fp32; bf16 = bfloat16 compute with float32 parameters,
``models.with_precision``). The timed curve steps double as a training check: each precision
starts from the same parameters and draws the same t on the same batch, so its retain/forget
loss trajectory is compared with fp32's, and the report names the fastest precision that
trains like fp32 (``training_check``, ``--check-tolerance``). With ``--scan-steps N`` also
``train.make_epoch`` / ``CurveTrainer.epoch`` with ``loop="scan"``: one ``lax.scan`` of N
batches per dispatch, on every backend (on-device shuffle, gather and uint8 -> float
conversion included), reported per step.

Each single-step JAX row also carries XLA's account of its compiled program (compile
seconds, flops and bytes accessed per step, temporary memory, the entry computation's
instruction kinds), and the table shows the achieved TFLOP/s by XLA's flop count.

With ``--reference PATH`` (a checkout of TIML-Group/Mode-Connectivity-Unlearning) the same
process times the reference's PyTorch steps on the device torch sees (CUDA if available, else
the CPU with as many threads as this process has CPUs):

* ``reference curve``: ``CurveNet(num_classes, Bezier, PreResNet.curve, num_bends=3,
  fix_start=True, fix_end=True)`` in its ``dynamic`` path: forward with a random t, loss
  CE_r - beta CE_f with the adaptive beta (``unlearn.training_step_dynamic``), backward, SGD;
* ``reference plain``: ``PreResNet.base``, CE, backward, SGD.

Prints one table and the ratios (JAX curve / reference curve as a speed-up in images/s, and
the curve step's overhead over the plain step in percent), and writes JSON with the machine.

  python3 benchmarks/step_throughput.py --model preresnet110 --batch-size 128 --steps 50 \
      --reference /tmp/mcu_ref --out runs/step_throughput.json
"""
from __future__ import annotations

import argparse
import functools
import os
import re
import sys
import time
from typing import Any

# run as a file (python3 benchmarks/step_throughput.py): the checkout
if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import _common  # noqa: E402
from mcu_jax.core import beta as beta_lib  # noqa: E402
from mcu_jax.core.curves import Curve  # noqa: E402
from mcu_jax.models import get_model, init_model, param_count  # noqa: E402
from mcu_jax.preprocess import normalize_uint8  # noqa: E402
from mcu_jax.runtime import mcu, parallel, train  # noqa: E402
from mcu_jax.runtime.optim import OptimConfig, make_optimizer  # noqa: E402

NUM_CLASSES = 10
# Alignment targets of the adaptive beta (percent): a CIFAR-10 PreResNet-110's train / test
# accuracy. The values only steer jnp.where branches; they do not change the work per step.
FORGET_TARGET, RETAIN_TARGET = 94.0, 100.0
CURVE_LR, PLAIN_LR = 0.01, 0.1
CURVE_OPTIM = OptimConfig(lr=CURVE_LR, momentum=0.9)
PLAIN_OPTIM = OptimConfig(lr=PLAIN_LR, momentum=0.9, weight_decay=5e-4)
TRACKED = ("retain_loss", "forget_loss")
CHECK_WINDOW = 5


def build_models(model: str, image_shape, precision: str, seed: int) -> dict:
  """Module, apply (in ``precision``), two random endpoints (theta_o, theta_p) and the BN
  state of theta_o."""
  module = get_model(model, NUM_CLASSES)
  k0, k1 = jax.random.split(jax.random.key(seed))
  start, state = init_model(module, k0, (1,) + tuple(image_shape))
  end, _ = init_model(module, k1, (1,) + tuple(image_shape))
  return {"module": module, "apply": _common.precision_apply(module, precision),
          "start": start, "end": end, "state": state}


def random_batch(batch_size: int, image_shape, forget_fraction: float, seed: int,
                 uint8: bool = False) -> dict:
  """Random CIFAR-like batch: images (float in ~[0, 1], or uint8), labels, is_forget."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (batch_size,) + tuple(image_shape), dtype=np.uint8)
  return {
      "images": images if uint8 else images.astype(np.float32) / 255.0,
      "labels": rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32),
      "is_forget": rng.random(batch_size) < forget_fraction,
  }


class Placement:
  """Where arrays go: a data-parallel mesh over the first ``count`` devices (one device is a
  mesh of one), as ``mcu.CurveTrainer`` places its state."""

  def __init__(self, count: int):
    devices = jax.devices()
    if count < 1 or count > len(devices):
      raise ValueError(f"--device-count {count}: {len(devices)} devices are visible")
    self.count = count
    self.mesh = parallel.make_mesh(devices[:count])

  def state(self, tree):
    return parallel.replicate(tree, self.mesh)

  def batch(self, tree):
    return parallel.shard_batch(jax.tree.map(jnp.asarray, tree), self.mesh)

  @property
  def batch_sharding(self):
    return parallel.batch_sharding(self.mesh)


def adaptive_beta() -> beta_lib.AdaptiveBeta:
  return beta_lib.AdaptiveBeta(
      targets=beta_lib.Targets(retain=RETAIN_TARGET, forget=FORGET_TARGET))


def plain_state(models: dict, place: Placement) -> train.TrainState:
  """theta_o's train state with the plain SGD (constant lr) bound to it, placed."""
  tx = make_optimizer(PLAIN_OPTIM, epochs=1, steps_per_epoch=1)
  return place.state(train.TrainState.create(params=models["start"], model_state=models["state"],
                                             tx=tx, rng=jax.random.key(1)))


def make_plain_step(apply):
  """The step ``train.make_epoch`` runs per batch (``train.make_step`` of
  ``train.supervised_loss``), on one given batch, jitted on its own."""
  update = train.make_step(train.supervised_loss(apply))

  @functools.partial(jax.jit, donate_argnums=(0,))
  def step(state: train.TrainState, batch: dict):
    return update(state, batch, state.rng)
  return step


def curve_trainer(models: dict, place: Placement, batch_size: int,
                  loop: str = "auto") -> mcu.CurveTrainer:
  """The curve's trainer: full mask, adaptive beta, SGD lr 0.01 momentum 0.9, on the mesh."""
  curve = Curve.from_endpoints(models["start"], models["end"])
  return mcu.CurveTrainer(models["apply"], curve, mask=None, optimizer=CURVE_OPTIM,
                          beta=adaptive_beta(), batch_size=batch_size, mesh=place.mesh,
                          loop=loop, preprocess=normalize_uint8)   # the epoch's uint8 data


def _looped(step, state, *args):
  """A zero-argument call that advances ``state`` by one ``step(state, *args)``."""
  cell = [state]

  def call():
    cell[0], metrics = step(cell[0], *args)
    return cell[0], metrics
  return call


def compile_step(lowered) -> tuple[Any, dict]:
  """(compiled step, XLA's account of it) of a lowered step: compile seconds, flops and bytes
  accessed per step, temporary memory, and the kinds of the entry computation's instructions
  (fusions, convolutions or cuDNN custom calls, copies, transposes...), a profile without a
  trace."""
  start = time.perf_counter()
  compiled = lowered.compile()
  seconds = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  memory = compiled.memory_analysis()
  return compiled, {"compile_s": seconds, "flops": cost.get("flops"),
                    "bytes_accessed": cost.get("bytes accessed"),
                    "temp_bytes": getattr(memory, "temp_size_in_bytes", None),
                    "entry_ops": entry_op_counts(compiled.as_text())}


# "name = shape kind(operands)...", where a tuple shape holds spaces: "(f32[2], s32[])", and
# long tuples carry comments: "(f32[], ..., /*index=5*/f32[])".
_INSTRUCTION = re.compile(r"=\s*(?:\([^=]*?\)|\S+)\s+([\w-]+)\(")
_COMMENT = re.compile(r"/\*.*?\*/")


def entry_op_counts(hlo_text: str) -> dict[str, int]:
  """Instruction kinds of an HLO module's ENTRY computation, custom calls by target."""
  counts: dict[str, int] = {}
  inside = False
  for line in hlo_text.splitlines():
    if line.startswith("ENTRY "):
      inside = True
      continue
    if inside and line.startswith("}"):
      break
    match = _INSTRUCTION.search(_COMMENT.sub("", line)) if inside else None
    if match:
      kind = match.group(1)
      target = re.search(r'custom_call_target="([^"]+)"', line)
      if target:
        kind = f"{kind}:{target.group(1)}"
      counts[kind] = counts.get(kind, 0) + 1
  return dict(sorted(counts.items(), key=lambda item: -item[1]))


def jax_plain(models: dict, batch: dict, place: Placement, steps: int, warmup: int) -> dict:
  batch = dict(batch)
  batch["valid"] = np.ones(len(batch["labels"]), bool)
  state = plain_state(models, place)
  batch = place.batch(batch)
  step, stats = compile_step(make_plain_step(models["apply"]).lower(state, batch))
  timing = _common.time_calls(_looped(step, state, batch), steps, warmup, jax.block_until_ready)
  return {**timing, **stats}


def jax_curve(models: dict, batch: dict, place: Placement, steps: int, warmup: int) -> dict:
  """Timing of the curve step (``CurveTrainer.step``), plus ``trajectory``: the retain and
  forget losses of every call (warm-up included), fetched after the timing so that recording
  costs no host sync."""
  batch = dict(batch)
  batch["valid"] = np.ones(len(batch["labels"]), bool)
  trainer = curve_trainer(models, place, len(batch["labels"]))
  state = trainer.init(models["state"], jax.random.key(2))
  batch = place.batch(batch)
  _, stats = compile_step(trainer.lower_step(state, batch))   # trainer.step reuses its cache
  call, losses = _recording(_looped(trainer.step, state, batch), TRACKED)
  timing = _common.time_calls(call, steps, warmup, jax.block_until_ready)
  timing["trajectory"] = {k: np.asarray(jax.device_get(v), np.float64).tolist()
                          for k, v in losses.items()}
  return {**timing, **stats}


def _recording(call, names):
  """``call`` wrapped to keep the named metrics of each result on the device."""
  kept = {name: [] for name in names}

  def wrapped():
    state, metrics = call()
    for name in names:
      kept[name].append(metrics[name])
    return state, metrics
  return wrapped, kept


def training_check(trajectories: dict[str, dict], tolerance: float,
                   window: int = CHECK_WINDOW) -> dict:
  """Does each precision train like fp32? Every precision's curve steps start from the same
  parameters and draw the same t, on the same batch, so their loss trajectories are directly
  comparable. For the retain and the forget loss, the deviation is the distance between the
  means of the last ``window`` steps of the precision and of fp32, over the change fp32's
  training made (first ``window`` steps to last; at least 1 % of fp32's final loss, so that
  a flat loss is not held to zero noise). A precision passes when both deviations are at
  most ``tolerance``."""
  if "fp32" not in trajectories:
    return {}
  base = trajectories["fp32"]
  head = lambda values: float(np.mean(values[:window]))
  tail = lambda values: float(np.mean(values[-window:]))
  out = {}
  for precision, trajectory in trajectories.items():
    deviation = {}
    for key in TRACKED:
      scale = max(abs(tail(base[key]) - head(base[key])), 0.01 * abs(tail(base[key])), 1e-12)
      deviation[key] = abs(tail(trajectory[key]) - tail(base[key])) / scale
    out[precision] = {"initial": {k: head(v) for k, v in trajectory.items()},
                      "final": {k: tail(v) for k, v in trajectory.items()},
                      "deviation_vs_fp32": deviation,
                      "trains_correctly": bool(all(v <= tolerance for v in deviation.values()))}
  return out


def fastest_correct_curve(rows: list[dict], check: dict) -> dict | None:
  """The fastest single-step JAX curve row among the precisions that train like fp32."""
  candidates = [r for r in rows if r["framework"] == "jax" and r["kind"] == "curve"
                and r.get("steps_per_call", 1) == 1
                and check.get(r["precision"], {}).get("trains_correctly")]
  return min(candidates, key=lambda r: r["ms_per_step"]) if candidates else None


def jax_plain_scan(models: dict, data: dict, batch_size: int, place: Placement, steps: int,
                   warmup: int) -> dict:
  epoch = train.make_epoch(train.supervised_loss(models["apply"]), batch_size,
                           batch_sharding=place.batch_sharding, loop="scan",
                           preprocess=normalize_uint8)
  state = plain_state(models, place)
  data = {k: v for k, v in data.items() if k != "is_forget"}
  call = _looped(epoch, state, place.state(data))
  return _common.time_calls(call, steps, warmup, jax.block_until_ready)


def jax_curve_scan(models: dict, data: dict, batch_size: int, place: Placement, steps: int,
                   warmup: int) -> dict:
  trainer = curve_trainer(models, place, batch_size, loop="scan")
  state = trainer.init(models["state"], jax.random.key(2))
  call = _looped(trainer.epoch, state, trainer.place(data))
  return _common.time_calls(call, steps, warmup, jax.block_until_ready)


# ---------------------------------------------------------------------------------------------
# The reference.


def torch_batch(torch, device, batch: dict):
  """NCHW float images, int64 labels, and LossData2's 0/1 forget flag, on ``device``."""
  images = torch.from_numpy(np.ascontiguousarray(batch["images"].transpose(0, 3, 1, 2)))
  return (images.to(device), torch.from_numpy(batch["labels"].astype(np.int64)).to(device),
          torch.from_numpy(batch["is_forget"].astype(np.int64)).to(device))


def reference_curve(ref, depth: int, batch: dict, steps: int, warmup: int,
                    data_parallel: bool = False, threads: int | None = None) -> dict:
  torch, device = _common.torch_setup(threads)
  import torch.nn.functional as F
  torch.manual_seed(0)
  model = _common.reference_curve_net(ref, NUM_CLASSES, depth, device)
  model.init_linear()
  if data_parallel and device.type == "cuda":
    model = torch.nn.DataParallel(model)
  model.train()
  optimizer = torch.optim.SGD(filter(lambda p: p.requires_grad, model.parameters()),
                              lr=CURVE_LR, momentum=0.9, weight_decay=0.0)
  images, labels, is_forget = torch_batch(torch, device, batch)

  def call():
    out = model(images)                 # t ~ U[0, 1) drawn inside, as CurveNet.forward
    loss = _common.reference_dynamic_loss(torch, F, out, labels, is_forget, FORGET_TARGET,
                                          RETAIN_TARGET)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss
  return _common.time_calls(call, steps, warmup, _common.torch_sync(torch, device))


def reference_plain(ref, depth: int, batch: dict, steps: int, warmup: int,
                    threads: int | None = None) -> dict:
  torch, device = _common.torch_setup(threads)
  import torch.nn.functional as F
  torch.manual_seed(0)
  model = _common.reference_base_net(ref, NUM_CLASSES, depth, device)
  model.train()
  optimizer = torch.optim.SGD(model.parameters(), lr=PLAIN_LR, momentum=0.9, weight_decay=5e-4)
  images, labels, _ = torch_batch(torch, device, batch)

  def call():
    loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss
  return _common.time_calls(call, steps, warmup, _common.torch_sync(torch, device))


# ---------------------------------------------------------------------------------------------


def _ratio(num, den):
  return None if num is None or den is None else num / den


def summarize(rows: list[dict], precisions, scan_steps: int | None) -> dict:
  by = {r["name"]: r for r in rows}
  ms = lambda name: by[name]["ms_per_step"] if name in by else None
  ratios = {"curve_speedup_vs_reference": {}, "plain_speedup_vs_reference": {},
            "curve_overhead_pct": {}}
  for p in precisions:
    ratios["curve_speedup_vs_reference"][f"jax {p}"] = _ratio(ms("reference curve fp32"),
                                                              ms(f"jax curve {p}"))
    ratios["plain_speedup_vs_reference"][f"jax {p}"] = _ratio(ms("reference plain fp32"),
                                                              ms(f"jax plain {p}"))
    over = _ratio(ms(f"jax curve {p}"), ms(f"jax plain {p}"))
    ratios["curve_overhead_pct"][f"jax {p}"] = None if over is None else 100 * (over - 1)
    if scan_steps:
      suffix = f" scan{scan_steps}"
      ratios["curve_speedup_vs_reference"][f"jax {p}{suffix}"] = _ratio(
          ms("reference curve fp32"), ms(f"jax curve {p}{suffix}"))
      over = _ratio(ms(f"jax curve {p}{suffix}"), ms(f"jax plain {p}{suffix}"))
      ratios["curve_overhead_pct"][f"jax {p}{suffix}"] = None if over is None else 100 * (over - 1)
  over = _ratio(ms("reference curve fp32"), ms("reference plain fp32"))
  ratios["curve_overhead_pct"]["reference"] = None if over is None else 100 * (over - 1)
  for key in list(ratios):
    ratios[key] = {k: v for k, v in ratios[key].items() if v is not None}
  return ratios


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="preresnet110")
  parser.add_argument("--batch-size", type=int, default=128,
                      help="global batch (split over --device-count devices)")
  parser.add_argument("--image-shape", default="32,32,3", help="H,W,C")
  parser.add_argument("--steps", type=int, default=50, help="timed steps (median reported)")
  parser.add_argument("--warmup", type=int, default=5,
                      help="untimed steps first (the first one compiles)")
  parser.add_argument("--precision", default="fp32,bf16",
                      help="comma list of fp32, bf16 (bf16: bfloat16 compute, fp32 params)")
  parser.add_argument("--forget-fraction", type=float, default=0.18,
                      help="share of forget examples in a batch (D_f + 50%% of D_r at 10%% "
                           "forgetting: 5000 / 27500)")
  parser.add_argument("--scan-steps", type=int, default=0,
                      help="also time train.make_epoch / CurveTrainer.epoch as one lax.scan "
                           "of N steps per call")
  parser.add_argument("--skip-plain", action="store_true", help="time only the curve steps")
  parser.add_argument("--check-tolerance", type=float, default=0.1,
                      help="a precision trains correctly when its final retain and forget "
                           "losses over the timed curve steps (same start, same t, same "
                           "batch) lie within this share of the change fp32's training made")
  parser.add_argument("--reference", default=None,
                      help="path of a checkout of TIML-Group/Mode-Connectivity-Unlearning")
  parser.add_argument("--reference-steps", type=int, default=None,
                      help="timed steps of the reference (default --steps)")
  parser.add_argument("--reference-data-parallel", action="store_true",
                      help="wrap the reference curve net in DataParallel (as train.py on 1 "
                           "GPU); CUDA only")
  parser.add_argument("--torch-threads", type=int, default=None,
                      help="torch CPU threads (default: this process's usable CPUs)")
  parser.add_argument("--skip-jax", action="store_true", help="time only the reference")
  parser.add_argument("--device-count", type=int, default=1,
                      help="JAX devices of the data-parallel mesh (mcu_jax.runtime.parallel)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=None, help="write a JSON record here")
  return parser.parse_args(argv)


def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.reference:
    _common.share_accelerator_with_torch()
  image_shape = _common.parse_shape(args.image_shape)
  precisions = _common.parse_list(args.precision)
  for p in precisions:
    _common.check_precision(p)
  depth = _common.preresnet_depth(args.model) if args.reference else None
  if args.reference and image_shape != (32, 32, 3):
    raise ValueError("the reference's PreResNet needs 32,32,3 inputs (3-channel stem, "
                     "AvgPool2d(8))")
  place = Placement(args.device_count)
  if args.batch_size % args.device_count:
    raise ValueError(f"--batch-size {args.batch_size} is not divisible by --device-count "
                     f"{args.device_count}")
  ref = _common.load_reference(args.reference) if args.reference else None
  if args.skip_jax and ref is None:
    raise ValueError("--skip-jax needs --reference")

  batch = random_batch(args.batch_size, image_shape, args.forget_fraction, args.seed)
  print(f"{jax.devices()[0].device_kind} x{args.device_count} ({jax.default_backend()}), "
        f"{_common.usable_cpus()} CPUs; model {args.model}, batch {args.batch_size}, "
        f"images {image_shape}, {args.steps} steps after {args.warmup} warm-up", flush=True)
  rows, params, trajectories = [], None, {}
  for precision in ([] if args.skip_jax else precisions):
    models = build_models(args.model, image_shape, precision, args.seed)
    params = param_count(models["start"])
    jobs = [] if args.skip_plain else [("plain", jax_plain)]
    jobs.append(("curve", jax_curve))
    for kind, fn in jobs:
      timing = fn(models, batch, place, args.steps, args.warmup)
      if kind == "curve":
        trajectories[precision] = timing.pop("trajectory")
      stats = {k: timing.pop(k) for k in ("compile_s", "flops", "bytes_accessed",
                                          "temp_bytes", "entry_ops")}
      rows.append(_common.throughput_row(f"jax {kind} {precision}", timing, args.batch_size,
                                         framework="jax", kind=kind, precision=precision,
                                         **stats))
      if stats["flops"]:
        rows[-1]["achieved_tflops"] = stats["flops"] / (rows[-1]["ms_per_step"] * 1e9)
      print(f"  {rows[-1]['name']}: {rows[-1]['ms_per_step']:.2f} ms/step "
            f"(compile {stats['compile_s']:.1f} s)", flush=True)
    if args.scan_steps:
      n = args.scan_steps
      data = random_batch(n * args.batch_size, image_shape, args.forget_fraction,
                          args.seed + 1, uint8=True)
      calls = max(1, -(-args.steps // n))
      jobs = [] if args.skip_plain else [("plain", jax_plain_scan)]
      jobs.append(("curve", jax_curve_scan))
      for kind, fn in jobs:
        timing = fn(models, data, args.batch_size, place, calls, min(args.warmup, 1) or 1)
        rows.append(_common.throughput_row(f"jax {kind} {precision} scan{n}", timing,
                                           n * args.batch_size, steps_per_call=n,
                                           framework="jax", kind=kind, precision=precision))
        print(f"  {rows[-1]['name']}: {rows[-1]['ms_per_step']:.2f} ms/step", flush=True)
  if ref is not None:
    ref_steps = args.reference_steps or args.steps
    jobs = [("curve", functools.partial(reference_curve, threads=args.torch_threads,
                                        data_parallel=args.reference_data_parallel))]
    if not args.skip_plain:
      jobs.insert(0, ("plain", functools.partial(reference_plain, threads=args.torch_threads)))
    for kind, fn in jobs:
      timing = fn(ref, depth, batch, ref_steps, args.warmup)
      rows.append(_common.throughput_row(f"reference {kind} fp32", timing, args.batch_size,
                                         framework="torch", kind=kind, precision="fp32"))
      print(f"  {rows[-1]['name']}: {rows[-1]['ms_per_step']:.2f} ms/step", flush=True)

  ratios = summarize(rows, precisions, args.scan_steps)
  check = training_check(trajectories, args.check_tolerance)
  best = fastest_correct_curve(rows, check)
  if best is not None:
    ratios["fastest_correct_curve"] = {
        "name": best["name"], "ms_per_step": best["ms_per_step"],
        "speedup_vs_reference": _ratio(next((r["ms_per_step"] for r in rows
                                             if r["name"] == "reference curve fp32"), None),
                                       best["ms_per_step"])}
  table = _common.markdown_table(rows, [
      ("name", "step"), ("images_per_s", "images/s"), ("ms_per_step", "ms/step (median)"),
      ("min_ms_per_step", "ms/step (min)"), ("compile_s", "compile (s)"),
      ("achieved_tflops", "TFLOP/s (XLA count)")], ".4g")
  print()
  print(table)
  print()
  for key, values in ratios.items():
    if key == "fastest_correct_curve":
      continue
    for name, value in values.items():
      unit = "%" if key.endswith("pct") else "x"
      print(f"{key} [{name}]: {value:.3g}{unit}")
  for precision, result in check.items():
    dev = result["deviation_vs_fp32"]
    print(f"training check [{precision}]: final retain loss {result['final']['retain_loss']:.4g}"
          f" (from {result['initial']['retain_loss']:.4g}), forget loss "
          f"{result['final']['forget_loss']:.4g} (from {result['initial']['forget_loss']:.4g});"
          f" off fp32 by {100 * dev['retain_loss']:.2f}% / {100 * dev['forget_loss']:.2f}% of "
          "fp32's change -> "
          f"{'trains correctly' if result['trains_correctly'] else 'DIVERGES from fp32'}")
  if best is not None:
    fastest = ratios["fastest_correct_curve"]
    speedup = fastest["speedup_vs_reference"]
    print(f"fastest correct curve step: {fastest['name']} "
          f"({fastest['ms_per_step']:.3g} ms/step"
          + (f", {speedup:.3g}x the reference)" if speedup else ")"))
  record = {
      "benchmark": "step_throughput",
      "command": _common.command_line(__file__, argv),
      "config": {"model": args.model, "params": params, "batch_size": args.batch_size,
                 "image_shape": list(image_shape), "steps": args.steps,
                 "warmup": args.warmup, "precisions": precisions,
                 "forget_fraction": args.forget_fraction, "scan_steps": args.scan_steps,
                 "device_count": args.device_count, "reference": args.reference,
                 "torch_threads": args.torch_threads, "skip_jax": args.skip_jax,
                 "reference_data_parallel": args.reference_data_parallel,
                 "curve_optimizer": f"sgd lr {CURVE_LR} momentum 0.9",
                 "plain_optimizer": f"sgd lr {PLAIN_LR} momentum 0.9 wd 5e-4",
                 "beta": f"adaptive, targets forget {FORGET_TARGET} retain {RETAIN_TARGET}"},
      "machine": _common.machine_info(with_torch=ref is not None),
      "rows": rows,
      "ratios": ratios,
      "training_check": {"tolerance": args.check_tolerance, "window": CHECK_WINDOW,
                         "results": check, "trajectories": trajectories},
      "table": table,
  }
  return _common.emit(record, args.out)


if __name__ == "__main__":
  main()
