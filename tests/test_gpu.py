"""Checks that need a GPU; each skips without one (see conftest.py).

The suite pins JAX to the CPU unless JAX_PLATFORMS is set, so run these with

    JAX_PLATFORMS=cuda,cpu python3 -m pytest -q -m gpu

(the CPU backend stays available for the comparisons).
"""
import importlib

import chex
import jax
import numpy as np
import pytest

from mcu_jax import models
from mcu_jax.core import beta as beta_lib
from mcu_jax.core.curves import Curve
from mcu_jax.runtime import mcu, parallel

pytestmark = pytest.mark.gpu


def _setup():
  module = models.get_model("preresnet20", 10)
  apply = models.from_linen(module)
  start, state = models.init_model(module, jax.random.PRNGKey(0), (1, 32, 32, 3))
  end, _ = models.init_model(module, jax.random.PRNGKey(1), (1, 32, 32, 3))
  rng = np.random.default_rng(0)
  data = {"images": rng.integers(0, 256, (96, 32, 32, 3), dtype=np.uint8),
          "labels": rng.integers(0, 10, 96).astype(np.int32),
          "is_forget": np.arange(96) % 5 == 0}
  return apply, start, end, state, data


def _train(device, loop: str, epochs: int = 2):
  """Curve epochs of PreResNet-20 on ``device``, float32 matmuls and convolutions at full
  precision (no TF32), so devices agree up to reassociation."""
  apply, start, end, state, data = _setup()
  with jax.default_device(device), jax.default_matmul_precision("highest"):
    policy = beta_lib.AdaptiveBeta(targets=beta_lib.Targets(retain=60.0, forget=50.0))
    trainer = mcu.CurveTrainer(apply, Curve.from_endpoints(start, end), beta=policy,
                               batch_size=32, mesh=parallel.make_mesh([device]), loop=loop)
    st, placed = trainer.init(state, jax.random.PRNGKey(2)), trainer.place(data)
    for _ in range(epochs):
      st, metrics = trainer.epoch(st, placed)
    return jax.device_get((st.params, metrics))


def test_gpu_curve_epochs_match_cpu():
  gpu = _train(jax.devices("gpu")[0], "scan")
  cpu = _train(jax.devices("cpu")[0], "python")
  chex.assert_trees_all_close(gpu[1]["t"], cpu[1]["t"], atol=0, rtol=0)   # same draws
  chex.assert_trees_all_close(gpu[1]["loss"], cpu[1]["loss"], atol=1e-4, rtol=1e-4)
  chex.assert_trees_all_close(gpu[0], cpu[0], atol=1e-4, rtol=1e-3)


def test_gpu_scan_and_python_loops_agree():
  device = jax.devices("gpu")[0]
  scan, python = _train(device, "scan"), _train(device, "python")
  chex.assert_trees_all_close(scan, python, atol=1e-5, rtol=1e-5)


def test_gpu_bf16_curve_step_trains_like_fp32():
  bench = importlib.import_module("benchmarks.step_throughput")
  record = bench.main(["--model", "preresnet20", "--batch-size", "128", "--steps", "20",
                       "--warmup", "2", "--precision", "fp32,bf16", "--skip-plain"])
  assert record["machine"]["backend"] == "gpu"
  result = record["training_check"]["results"]["bf16"]
  assert result["trains_correctly"], result
  assert len(record["training_check"]["trajectories"]["bf16"]["retain_loss"]) == 22
  assert [len(row["times_s"]) for row in record["rows"]] == [20, 20]
