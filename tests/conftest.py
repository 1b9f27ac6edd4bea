import os

# Tests run on the CPU with the default single host device unless a test sets its own flags in
# a subprocess (see test_parallel.py).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from _cli_settings import FAST  # noqa: E402


def has_gpu() -> bool:
  try:
    return bool(jax.devices("gpu"))
  except RuntimeError:
    return False


def pytest_collection_modifyitems(config, items):
  if has_gpu():
    return
  skip = pytest.mark.skip(reason="needs a GPU; none is visible to JAX")
  for item in items:
    if "gpu" in item.keywords:
      item.add_marker(skip)


def _sgd_cosine():
  from mcu_jax.runtime.optim import OptimConfig
  return OptimConfig(lr=0.1, momentum=0.9, weight_decay=5e-4, cosine=True, schedule_unit="step")


SGD_COSINE = _sgd_cosine()   # the original models' recipe: SGD 0.1, cosine per step, wd 5e-4


@pytest.fixture
def rng():
  return np.random.default_rng(0)


@pytest.fixture(scope="session")
def digits_original():
  """(digits data, module, apply, TrainState): a width-8 small CNN trained 10 epochs on the
  bundled digits (SGD 0.1, cosine per step, batch 64). Shared: users copy before training
  further (``train.TrainState.create`` does)."""
  import jax.numpy as jnp

  from mcu_jax import data, models
  from mcu_jax.preprocess import normalize_uint8
  from mcu_jax.runtime import train
  from mcu_jax.runtime.optim import make_optimizer
  tt = data.load_digits()
  module = models.get_model("small_cnn", 10, width=8)
  apply = models.from_linen(module)
  params, model_state = models.init_model(module, jax.random.PRNGKey(0), (1, 8, 8, 1))
  arrays = {"images": jnp.asarray(tt.train.images), "labels": jnp.asarray(tt.train.labels)}
  steps = -(-len(tt.train.labels) // 64)
  opt = make_optimizer(SGD_COSINE, epochs=10, steps_per_epoch=steps)
  state = train.TrainState.create(params=params, model_state=model_state, tx=opt,
                                  rng=jax.random.PRNGKey(1))
  state, _ = train.fit(state, train.make_epoch(train.supervised_loss(apply), 64,
                                                preprocess=normalize_uint8),
                       arrays, 10, progress=False)
  return tt, module, apply, state


# The demo with small epochs: what the CLI and pipeline tests share (``demo_dir``).
@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
  """A finished ``mcu-jax demo`` run directory (FAST settings). Tests must not change it."""
  from mcu_jax.pipeline import cli
  run_dir = tmp_path_factory.mktemp("demo") / "run"
  assert cli.main(["demo", "--run-dir", str(run_dir), *FAST]) == 0
  return run_dir
