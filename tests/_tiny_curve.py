"""The tiny curve problem the multi-device subprocess scripts share: a width-4 small CNN on
8x8x1 inputs, two random endpoints and random mixed batches of 16 (a third forget)."""
import jax
import numpy as np

from mcu_jax import models


def tiny_problem(num_batches: int):
  """(apply, start, end, model_state, batches), the same for every process."""
  module = models.get_model("small_cnn", 10, width=4)
  start, state = models.init_model(module, jax.random.PRNGKey(0), (1, 8, 8, 1))
  end, _ = models.init_model(module, jax.random.PRNGKey(1), (1, 8, 8, 1))
  rng = np.random.default_rng(0)
  batches = [{"images": rng.uniform(size=(16, 8, 8, 1)).astype(np.float32),
              "labels": rng.integers(0, 10, 16).astype(np.int32),
              "is_forget": np.arange(16) % 3 == 0} for _ in range(num_batches)]
  return models.from_linen(module), start, end, state, batches
