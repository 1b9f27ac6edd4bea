import os

# Tests run on the CPU with the default single host device unless a test sets its own flags in
# a subprocess (see test_parallel.py).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


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


@pytest.fixture
def rng():
  return np.random.default_rng(0)


@pytest.fixture(scope="session")
def digits_original():
  """(digits data, module, apply, TrainState): a width-8 small CNN trained 10 epochs on the
  bundled digits (SGD 0.1, cosine, batch 64). Shared: users copy before training further
  (``train.init_train_state`` does)."""
  import jax.numpy as jnp
  from mcu_jax import data, models, train
  tt = data.load_digits()
  module = models.get_model("small_cnn", 10, width=8)
  apply = models.make_apply(module)
  params, model_state = models.init_model(module, jax.random.PRNGKey(0), (1, 8, 8, 1))
  arrays = {"images": jnp.asarray(tt.train.images), "labels": jnp.asarray(tt.train.labels)}
  steps = -(-len(tt.train.labels) // 64)
  opt = train.sgd(0.1, 10 * steps)
  state = train.init_train_state(params, model_state, opt, jax.random.PRNGKey(1))
  state, _ = train.fit(state, train.make_epoch(train.supervised_loss(apply), opt, 64),
                       arrays, 10, progress=False)
  return tt, module, apply, state
