"""End-to-end time of one MCU unlearning job on random CIFAR-shaped data, JAX vs the reference.

The job, in three timed parts (defaults: 50,000 train + 10,000 test images 32x32x3, random 10%
forgetting, PreResNet-110, batch 128):

1. ``mask``: ``masks.compute_mask``, as ``mcu_jax.pipeline.stages`` runs it: gradients summed over
   D_r and over D_f at theta_o and the layer-wise ``mcu_mask`` (k=0.5, kr=0); with a
   ``--jax-loop`` other than auto, its pieces (``masks.summed_ce_gradients_fn`` with that
   loop, then ``mcu_mask``);
2. ``curve``: ``--epochs`` epochs of ``mcu_jax.runtime.mcu.CurveTrainer.epoch`` over D_f + 50% of
   D_r (``mcu.curve_data``; adaptive beta, SGD lr 0.01 momentum 0.9, on-device shuffling,
   crop+flip augmentation); the compile time of the epoch is reported on its own and counted
   in the part;
3. ``sweep``: ``mcu_jax.runtime.sweep.sweep`` at ``--points`` t in [0, 1], each with BN statistics
   recalibrated on the full training set, then accuracy/loss on retain, forget and test.

The JAX side runs on one device, as the reference does.

JAX times are cold, as a user runs the job: compilation included. Data generation and the
copy of the data to the device are set-up, reported but not counted.

With ``--reference PATH`` (a checkout of TIML-Group/Mode-Connectivity-Unlearning) the same
three parts run with the reference's PyTorch model code on the device torch sees: the
gradient loop of ``generate_weight_mask.py`` (eval mode, CE on D_r and -CE on D_f, norm/numel
scores, greedy selection) over ``PreResNet.base``; its curve loop (``CurveNet`` with
``PreResNet.curve``, 3 bends, ends fixed, ``unlearn.training_step_dynamic``, SGD on every
trainable tensor: the ``dynamic`` path ignores the mask); and ``eval_curve.py``'s loop per t
(path length from ``model.weights(t)``, ``utils.update_bn`` on the full training set,
``utils.test`` on retain, forget and test). The reference's ``utils``/``unlearn`` modules
cannot be imported (``unlearn.py`` reads a config file missing from the repository; ``utils``
hard-codes ``.cuda()``), so the benchmark re-enacts those loops over the reference's model
modules. Reference batches are slices of normalised tensors already on the device (no
DataLoader, no PIL augmentation, no per-epoch evaluation): a lower bound on its time, so the
ratios are conservative.

  python3 benchmarks/end_to_end.py --reference /tmp/mcu_ref --out runs/end_to_end.json
  python3 benchmarks/end_to_end.py --model small_cnn --num-images 256 --num-test 64 \
      --epochs 1 --points 3 --batch-size 32           # seconds on a CPU
"""
from __future__ import annotations

import argparse
import os
import sys
import time

if __package__ in (None, ""):   # run as a file (python3 benchmarks/end_to_end.py): the checkout
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import _common  # noqa: E402
from mcu_jax import preprocess as preprocess_lib  # noqa: E402
from mcu_jax.core import beta as beta_lib  # noqa: E402
from mcu_jax.core.curves import Curve  # noqa: E402
from mcu_jax.models import get_model, init_model, param_count  # noqa: E402
from mcu_jax.runtime import loops, masks, mcu, parallel  # noqa: E402
from mcu_jax.runtime import sweep as sweep_lib  # noqa: E402
from mcu_jax.runtime.optim import OptimConfig  # noqa: E402

NUM_CLASSES = 10
FORGET_TARGET, RETAIN_TARGET = 94.0, 100.0
CURVE_LR = 0.01
CURVE_OPTIM = OptimConfig(lr=CURVE_LR, momentum=0.9)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


# ---------------------------------------------------------------------------------------------
# Data.


def make_data(num_images: int, num_test: int, image_shape, forget_ratio: float,
              retain_ratio: float, seed: int) -> dict:
  """Random uint8 images and labels; the forget split; the curve's training data
  (``mcu.curve_data``: D_f + a ``retain_ratio`` share of D_r)."""
  rng = np.random.default_rng(seed)
  train_x = rng.integers(0, 256, (num_images,) + tuple(image_shape), dtype=np.uint8)
  train_y = rng.integers(0, NUM_CLASSES, num_images).astype(np.int32)
  test_x = rng.integers(0, 256, (num_test,) + tuple(image_shape), dtype=np.uint8)
  test_y = rng.integers(0, NUM_CLASSES, num_test).astype(np.int32)
  order = rng.permutation(num_images)
  num_forget = int(round(num_images * forget_ratio))
  if not 0 < num_forget < num_images:
    raise ValueError(f"--forget-ratio {forget_ratio} of {num_images} images leaves an empty "
                     "forget or retain set")
  forget, retain = np.sort(order[:num_forget]), np.sort(order[num_forget:])
  sets = {"train": (train_x, train_y), "test": (test_x, test_y),
          "retain": (train_x[retain], train_y[retain]),
          "forget": (train_x[forget], train_y[forget])}
  sets["curve"] = mcu.curve_data(sets["forget"], sets["retain"], retain_ratio, seed)
  return sets


def make_preprocess(channels: int) -> preprocess_lib.Preprocessor:
  if channels == 3:
    return preprocess_lib.make_preprocess(CIFAR_MEAN, CIFAR_STD)
  return preprocess_lib.make_preprocess(0.5, 0.25, flip=False)


def adaptive_beta() -> beta_lib.AdaptiveBeta:
  return beta_lib.AdaptiveBeta(
      targets=beta_lib.Targets(retain=RETAIN_TARGET, forget=FORGET_TARGET))


# ---------------------------------------------------------------------------------------------
# JAX.


def jax_mask(apply, params, model_state, retain, forget, batch_size, preprocess, k, kr,
             loop: str, mesh):
  """mcu_mask of the summed CE gradients at theta_o on D_r and D_f (BN in inference mode, as
  the reference's model.eval()): ``masks.compute_mask``, the way mcu_jax.pipeline.stages computes
  it. ``compute_mask`` takes no loop, so a pinned ``loop`` ("scan", "python") runs its pieces
  instead: host batches padded by ``masks.batched``, ``masks.summed_ce_gradients_fn`` with
  that loop, then ``masks.mcu_mask``."""
  if loop == "auto":
    return masks.compute_mask(apply, params, model_state, forget=forget, retain=retain,
                              options=masks.MaskOptions(k=k, kr=kr), batch_size=batch_size,
                              preprocess=preprocess, mesh=mesh).mask
  fn = masks.summed_ce_gradients_fn(apply, preprocess, loop=loop)
  params, model_state = parallel.replicate((params, model_state), mesh)
  grads = [fn(params, model_state, parallel.replicate(masks.batched(x, y, batch_size), mesh))
           for x, y in (retain, forget)]
  return masks.mcu_mask(grads[0], grads[1], k=k, kr=kr)


def run_jax(args, data, image_shape) -> dict:
  out = {}
  module = get_model(args.model, NUM_CLASSES)
  apply = _common.precision_apply(module, args.precision)
  k0, k1, k2 = jax.random.split(jax.random.key(args.seed), 3)
  start, model_state = init_model(module, k0, (1,) + tuple(image_shape))
  end, _ = init_model(module, k1, (1,) + tuple(image_shape))
  preprocess = make_preprocess(image_shape[-1])
  out["params"] = param_count(start)
  mesh = parallel.make_mesh(jax.devices()[:1])

  t0 = time.perf_counter()
  dev = parallel.replicate({name: data[name] for name in ("train", "test", "retain", "forget",
                                                          "curve")}, mesh)   # the mask pads its own
  jax.block_until_ready(dev)
  out["setup_s"] = time.perf_counter() - t0

  # 1. mask
  t0 = time.perf_counter()
  mask = jax_mask(apply, start, model_state, data["retain"], data["forget"], args.batch_size,
                  preprocess, args.k, args.kr, args.jax_loop, mesh)
  out["mask_s"] = time.perf_counter() - t0
  out["mask_fraction"] = masks.mask_fraction(mask, start)
  print(f"  jax mask: {out['mask_s']:.2f} s (trains {100 * out['mask_fraction']:.1f}% of "
        "the parameters)", flush=True)

  # 2. curve
  train_mask = None if args.curve_mask == "full" else mask   # None: every tensor trains
  steps = -(-len(data["curve"]["labels"]) // args.batch_size)
  t0 = time.perf_counter()
  trainer = mcu.CurveTrainer(apply, Curve.from_endpoints(start, end), mask=train_mask,
                             optimizer=CURVE_OPTIM, beta=adaptive_beta(),
                             batch_size=args.batch_size, steps_per_epoch=steps,
                             epochs=args.epochs, preprocess=preprocess, mesh=mesh,
                             loop=args.jax_loop)
  curve_data = trainer.place(dev["curve"])   # already there: no copy
  state = trainer.init(model_state, k2)
  trainer.compile(state, curve_data)
  out["curve_compile_s"] = time.perf_counter() - t0
  epochs = []
  for _ in range(args.epochs):
    t1 = time.perf_counter()
    state, metrics = trainer.epoch(state, curve_data)
    jax.block_until_ready((state, metrics))
    epochs.append(time.perf_counter() - t1)
  out["curve_epoch_s"] = epochs
  out["curve_s"] = time.perf_counter() - t0
  out["curve_steps_per_epoch"] = steps
  print(f"  jax curve: {out['curve_s']:.2f} s (compile {out['curve_compile_s']:.2f} s, "
        f"epochs {', '.join(f'{e:.2f}' for e in epochs)} s)", flush=True)

  # 3. sweep
  trained = trainer.curve(state)
  options = sweep_lib.SweepOptions(batch_size=args.eval_batch_size,
                                   recal_batch_size=args.batch_size, preprocess=preprocess,
                                   chunk_size=args.sweep_chunk, keep_states=False,
                                   progress=False)
  t0 = time.perf_counter()
  result = sweep_lib.sweep(trained, np.linspace(0.0, 1.0, args.points), apply, model_state,
                           sets={"retain": dev["retain"], "forget": dev["forget"],
                                 "test": dev["test"]},
                           recal_inputs=dev["train"][0], options=options)
  out["sweep_s"] = time.perf_counter() - t0
  # The sweep's own rule (mcu_jax.runtime.sweep): a chunk size implies vmapping, else the CPU
  # policy.
  out["sweep_vectorized"] = (options.chunk_size is not None
                             or loops.resolve_vectorize(options.vectorize))
  out["sweep_final_accuracy"] = {k: float(v[-1]) for k, v in result.accuracy.items()}
  print(f"  jax sweep: {out['sweep_s']:.2f} s", flush=True)
  out["total_s"] = out["mask_s"] + out["curve_s"] + out["sweep_s"]
  out["total_without_curve_compile_s"] = out["total_s"] - out["curve_compile_s"]
  return out


# ---------------------------------------------------------------------------------------------
# The reference.


def _to_torch(torch, device, images, labels, channels_mean, channels_std):
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
  mean = torch.tensor(channels_mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
  std = torch.tensor(channels_std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
  x = (x.float() / 255.0 - mean) / std
  return x, torch.from_numpy(labels.astype(np.int64)).to(device)


def _batches(n, batch_size):
  return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def reference_mask(torch, F, model, retain, forget, batch_size, k, kr, sync):
  """generate_weight_mask.py's loop (lines 38-120) for one (k, kr)."""
  optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
  model.eval()
  grads_r = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
  grads_f = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
  for (x, y), total, sign in ((retain, grads_r, 1.0), (forget, grads_f, -1.0)):
    for s in _batches(len(y), batch_size):
      loss = sign * F.cross_entropy(model(x[s]), y[s])
      optimizer.zero_grad()
      loss.backward()
      with torch.no_grad():
        for name, param in model.named_parameters():
          if param.grad is not None:
            total[name] += param.grad.data
  sizes, count = {}, 0
  with torch.no_grad():
    for name in grads_f:
      numel = grads_r[name].numel()
      grads_r[name] = torch.norm(torch.abs_(grads_r[name]), p=2) / numel
      grads_f[name] = torch.norm(torch.abs_(grads_f[name]), p=2) / numel
      count += numel
      sizes[name] = numel
  ordered_r = dict(sorted(grads_r.items(), key=lambda item: item[1], reverse=True))
  filtered, seen = {}, 0
  for key in ordered_r:
    if seen < int(count * kr):
      filtered[key] = torch.tensor(0.0)
      seen += sizes[key]
    else:
      filtered[key] = grads_f[key]
  ordered = dict(sorted(filtered.items(), key=lambda item: item[1], reverse=True))
  mask, seen = {}, 0
  for key in ordered:
    if seen < int(count * k):
      mask[key] = 1
      seen += sizes[key]
    else:
      mask[key] = 0
  sync(None)
  return mask


def _is_bn(ref, torch, module):
  return (issubclass(module.__class__, torch.nn.modules.batchnorm._BatchNorm)
          or issubclass(module.__class__, ref.curves._BatchNorm))


def reference_update_bn(ref, torch, model, images, batch_size, t):
  """utils.update_bn(loader, model, t=t): reset, cumulative momentum b / (n + b)."""
  model.train()
  bns = [m for m in model.modules() if _is_bn(ref, torch, m)]
  momenta = {m: m.momentum for m in bns}
  for m in bns:
    m.reset_running_stats()
  num = 0
  for s in _batches(images.shape[0], batch_size):
    b = s.stop - s.start
    for m in bns:
      m.momentum = b / (num + b)
    model(images[s], t=t)
    num += b
  for m, value in momenta.items():
    m.momentum = value


def reference_test(torch, F, model, images, labels, batch_size, t, wd):
  """utils.test(loader, model, criterion, l2_regularizer(wd), t=t)."""
  loss_sum = nll_sum = correct = 0.0
  model.eval()
  with torch.no_grad():
    for s in _batches(len(labels), batch_size):
      output = model(images[s], t=t)
      nll = F.cross_entropy(output, labels[s])
      loss = nll.clone() + 0.5 * wd * model.l2
      nll_sum += nll.item() * (s.stop - s.start)
      loss_sum += loss.item() * (s.stop - s.start)
      correct += output.data.argmax(1, keepdim=True).eq(
          labels[s].view(-1, 1)).sum().item()
  return {"nll": nll_sum / len(labels), "loss": loss_sum / len(labels),
          "accuracy": correct * 100.0 / len(labels)}


def run_reference(args, data, image_shape) -> dict:
  ref = _common.load_reference(args.reference)
  depth = _common.preresnet_depth(args.model)
  torch, device = _common.torch_setup(args.torch_threads)
  import torch.nn.functional as F
  sync = _common.torch_sync(torch, device)
  torch.manual_seed(args.seed)
  out = {"device": str(device), "torch_threads": torch.get_num_threads()}

  t0 = time.perf_counter()
  tensors = {name: _to_torch(torch, device, *data[name], CIFAR_MEAN, CIFAR_STD)
             for name in ("train", "test", "retain", "forget")}
  cx, cy = _to_torch(torch, device, data["curve"]["images"], data["curve"]["labels"],
                     CIFAR_MEAN, CIFAR_STD)
  cf = torch.from_numpy(data["curve"]["is_forget"].astype(np.int64)).to(device)
  start = _common.reference_base_net(ref, NUM_CLASSES, depth, device)
  end = _common.reference_base_net(ref, NUM_CLASSES, depth, device)
  sync(None)
  out["setup_s"] = time.perf_counter() - t0

  # 1. mask
  t0 = time.perf_counter()
  mask = reference_mask(torch, F, start, tensors["retain"], tensors["forget"], args.batch_size,
                        args.k, args.kr, sync)
  out["mask_s"] = time.perf_counter() - t0
  out["mask_tensors_selected"] = int(sum(mask.values()))
  print(f"  reference mask: {out['mask_s']:.2f} s", flush=True)

  # 2. curve (train.py, unlearn_method dynamic)
  t0 = time.perf_counter()
  model = _common.reference_curve_net(ref, NUM_CLASSES, depth, device)
  model.import_base_parameters(start, 0)
  model.import_base_parameters(end, 2)
  model.init_linear()
  optimizer = torch.optim.SGD(filter(lambda p: p.requires_grad, model.parameters()),
                              lr=CURVE_LR, momentum=0.9, weight_decay=0.0)
  epochs = []
  for _ in range(args.epochs):
    t1 = time.perf_counter()
    model.train()
    order = torch.randperm(len(cy), device=device)
    for s in _batches(len(cy), args.batch_size):
      idx = order[s]
      out_ = model(cx[idx])
      loss = _common.reference_dynamic_loss(torch, F, out_, cy[idx], cf[idx], FORGET_TARGET,
                                            RETAIN_TARGET)
      optimizer.zero_grad()
      loss.backward()
      optimizer.step()
    sync(None)
    epochs.append(time.perf_counter() - t1)
  out["curve_epoch_s"] = epochs
  out["curve_s"] = time.perf_counter() - t0
  print(f"  reference curve: {out['curve_s']:.2f} s", flush=True)

  # 3. sweep (eval_curve.py)
  t0 = time.perf_counter()
  t = torch.zeros(1, device=device)
  previous, final = None, None
  for value in np.linspace(0.0, 1.0, args.points):
    t.data.fill_(float(value))
    weights = model.weights(t)
    if previous is not None:
      np.sqrt(np.sum(np.square(weights - previous)))
    previous = weights.copy()
    reference_update_bn(ref, torch, model, tensors["train"][0], args.batch_size, t)
    final = {name: reference_test(torch, F, model, *tensors[name], args.batch_size, t, 5e-4)
             for name in ("retain", "forget", "test")}
  sync(None)
  out["sweep_s"] = time.perf_counter() - t0
  out["sweep_final_accuracy"] = {k: v["accuracy"] for k, v in final.items()}
  print(f"  reference sweep: {out['sweep_s']:.2f} s", flush=True)
  out["total_s"] = out["mask_s"] + out["curve_s"] + out["sweep_s"]
  return out


# ---------------------------------------------------------------------------------------------


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="preresnet110")
  parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
  parser.add_argument("--num-images", type=int, default=50000, help="training-set size")
  parser.add_argument("--num-test", type=int, default=10000, help="test-set size")
  parser.add_argument("--image-shape", default="32,32,3", help="H,W,C")
  parser.add_argument("--forget-ratio", type=float, default=0.1)
  parser.add_argument("--retain-ratio", type=float, default=0.5,
                      help="share of D_r in the curve's training data")
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--points", type=int, default=20)
  parser.add_argument("--batch-size", type=int, default=128,
                      help="batch of the mask, the curve and the BN recalibration")
  parser.add_argument("--eval-batch-size", type=int, default=512,
                      help="JAX inference batch of the sweep (the reference uses --batch-size)")
  parser.add_argument("--sweep-chunk", type=int, default=None,
                      help="t per vmapped sweep call (default: the library's choice)")
  parser.add_argument("--k", type=float, default=0.5)
  parser.add_argument("--kr", type=float, default=0.0)
  parser.add_argument("--curve-mask", default="full", choices=["full", "computed"],
                      help="full: train every tensor, like the reference's dynamic path "
                           "(like-for-like); computed: the mask of part 1 (the paper's intent)")
  parser.add_argument("--jax-loop", default="auto", choices=list(loops.LOOPS),
                      help="driver of the mask's gradient sums and the curve epochs "
                           "(mcu_jax.runtime.loops): scan = one lax.scan per call, python = one "
                           "jitted dispatch per batch, auto = the library's choice "
                           "(python on CPU, scan elsewhere)")
  parser.add_argument("--skip-jax", action="store_true", help="time only the reference")
  parser.add_argument("--reference", default=None,
                      help="path of a checkout of TIML-Group/Mode-Connectivity-Unlearning")
  parser.add_argument("--torch-threads", type=int, default=None,
                      help="torch CPU threads (default: this process's usable CPUs)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=None, help="write a JSON record here")
  return parser.parse_args(argv)


PARTS = ("mask", "curve", "sweep", "total")


def main(argv=None) -> dict:
  args = parse_args(argv)
  image_shape = _common.parse_shape(args.image_shape)
  if args.reference:
    _common.share_accelerator_with_torch()
    _common.preresnet_depth(args.model)
    if image_shape != (32, 32, 3):
      raise ValueError("the reference's PreResNet needs 32,32,3 inputs")
  if args.skip_jax and not args.reference:
    raise ValueError("--skip-jax needs --reference")
  t0 = time.perf_counter()
  data = make_data(args.num_images, args.num_test, image_shape, args.forget_ratio,
                   args.retain_ratio, args.seed)
  data_s = time.perf_counter() - t0
  print(f"{jax.devices()[0].device_kind} ({jax.default_backend()}), {_common.usable_cpus()} "
        f"CPUs; model {args.model}, {args.num_images} images {image_shape}, forget "
        f"{len(data['forget'][1])}, curve data {len(data['curve']['labels'])}, "
        f"{args.epochs} epochs, {args.points} points", flush=True)
  results = {}
  if not args.skip_jax:
    results["jax"] = run_jax(args, data, image_shape)
  if args.reference:
    results["reference"] = run_reference(args, data, image_shape)

  rows = []
  for part in PARTS:
    row = {"part": part}
    for name, res in results.items():
      row[f"{name}_s"] = res[f"{part}_s"]
    if "jax" in results and "reference" in results:
      row["speedup"] = results["reference"][f"{part}_s"] / results["jax"][f"{part}_s"]
    rows.append(row)
  if "jax" in results:
    rows.insert(2, {"part": "(curve compile)", "jax_s": results["jax"]["curve_compile_s"]})
  speedups = {r["part"]: r["speedup"] for r in rows if "speedup" in r}
  if "jax" in results and "reference" in results:
    speedups["total_without_curve_compile"] = (
        results["reference"]["total_s"] / results["jax"]["total_without_curve_compile_s"])
  columns = [("part", "part")]
  columns += [(f"{n}_s", f"{n} (s)") for n in results]
  if speedups:
    columns.append(("speedup", "reference / jax"))
  table = _common.markdown_table(rows, columns, ".4g")
  print()
  print(table)
  record = {
      "benchmark": "end_to_end",
      "command": _common.command_line(__file__, argv),
      "config": {k: getattr(args, k) for k in (
          "model", "precision", "num_images", "num_test", "forget_ratio", "retain_ratio",
          "epochs", "points", "batch_size", "eval_batch_size", "sweep_chunk", "k", "kr",
          "curve_mask", "jax_loop", "reference", "torch_threads", "seed")}
      | {"image_shape": list(image_shape), "forget_size": len(data["forget"][1]),
         "curve_size": len(data["curve"]["labels"])},
      "machine": _common.machine_info(with_torch=bool(args.reference)),
      "data_generation_s": data_s,
      "results": results,
      "rows": rows,
      "speedups": speedups,
      "table": table,
  }
  return _common.emit(record, args.out)


if __name__ == "__main__":
  main()
