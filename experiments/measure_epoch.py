"""Times one training epoch (batch 128, ``train.make_epoch``) of a model on Fashion-MNIST.

    python3 experiments/measure_epoch.py --model preresnet20 --subset 10000

Prints the compile time and the median wall time of the measured epochs (mcu_jax's trainer,
its default epoch loop: a host loop over one jitted step on the CPU); the study's scale
(experiments/README.md) was chosen from such numbers.
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from mcu_jax import data, models, preprocess
from mcu_jax.runtime import train
from mcu_jax.runtime.optim import OptimConfig, make_optimizer


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="preresnet20")
  parser.add_argument("--dataset", default="fashion_mnist")
  parser.add_argument("--subset", type=int, default=0, help="first N training images (0: all)")
  parser.add_argument("--epochs", type=int, default=2, help="measured epochs after the first")
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--model-options", type=json.loads, default={},
                      help='JSON, e.g. \'{"depth": 8}\' for PreResNet-8')
  args = parser.parse_args(argv)
  ds = data.load_dataset(args.dataset).train
  n = args.subset or len(ds)
  images, labels = ds.images[:n], ds.labels[:n]
  module = models.get_model(args.model, ds.num_classes, **args.model_options)
  apply = models.from_linen(module)
  params, state = models.init_model(module, jax.random.PRNGKey(0), (1,) + images.shape[1:])
  mean, std = data.normalization_stats(ds)
  # SGD lr 0.1, momentum 0.9, weight decay 5e-4, cosine over the measured epochs' steps.
  optim = OptimConfig(lr=0.1, momentum=0.9, weight_decay=5e-4, cosine=True,
                      schedule_unit="step")
  opt = make_optimizer(optim, epochs=args.epochs, steps_per_epoch=-(-n // args.batch_size))
  ts = train.TrainState.create(params=params, model_state=state, tx=opt,
                               rng=jax.random.PRNGKey(1))
  epoch = train.make_epoch(train.supervised_loss(apply), args.batch_size,
                           preprocess=preprocess.make_preprocess(mean, std, augment=False))
  arrays = {"images": jnp.asarray(images), "labels": jnp.asarray(labels)}
  start = time.perf_counter()
  ts, m = epoch(ts, arrays)
  jax.block_until_ready(m)
  first = time.perf_counter() - start
  times = []
  for _ in range(args.epochs):
    start = time.perf_counter()
    ts, m = epoch(ts, arrays)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - start)
  out = {"model": args.model, "model_options": args.model_options, "train_images": n,
         "batch_size": args.batch_size,
         "first_epoch_with_compile_s": round(first, 2),
         "epoch_s_median": round(float(np.median(times)), 2),
         "params": models.param_count(params), "backend": jax.default_backend(),
         "devices": len(jax.devices())}
  print(json.dumps(out))


if __name__ == "__main__":
  main()
