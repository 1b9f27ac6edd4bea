"""Inference-mode evaluation: logits, confidences, losses and accuracy agree."""
import jax
import numpy as np
import pytest

from mcu_jax.errors import InvalidArgument
from mcu_jax.models import from_function, from_linen, get_model, init_model
from mcu_jax.runtime import evaluate as ev
from mcu_jax.runtime import parallel


@pytest.fixture(scope="module")
def small_model():
  """A width-4 small CNN with its initial statistics, and 100 random images in [0, 1]."""
  module = get_model("small_cnn", 4, width=4)
  params, state = init_model(module, jax.random.key(0), (1, 8, 8, 1))
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (100, 8, 8, 1)).astype(np.float32) / 255.0
  return from_linen(module), params, state, (x, rng.integers(0, 4, 100).astype(np.int32))


def test_inference_helpers_agree(small_model):
  apply, params, s0, (x, y) = small_model
  logits = ev.predict_logits(apply, params, s0, x, batch_size=64)
  assert logits.shape == (100, 4)
  conf = ev.true_label_confidence(apply, params, s0, x, y, batch_size=64)
  losses = ev.per_example_losses(apply, params, s0, x, y, batch_size=64)
  np.testing.assert_allclose(-np.log(conf), losses, rtol=1e-4, atol=1e-5)
  acc, loss = ev.accuracy_and_loss(apply, params, s0, x, y, batch_size=64)
  assert acc == pytest.approx(100.0 * np.mean(logits.argmax(1) == y))
  assert loss == pytest.approx(losses.mean(), rel=1e-5)


def test_a_mesh_gives_the_same_results(small_model):
  """With a 1-device mesh: the same numbers as with None (all devices, here one; 4 devices:
  test_parallel.py)."""
  apply, params, s0, (x, y) = small_model
  mesh = parallel.make_mesh()
  np.testing.assert_allclose(ev.predict_logits(apply, params, s0, x, batch_size=64, mesh=mesh),
                             ev.predict_logits(apply, params, s0, x, batch_size=64),
                             rtol=1e-6, atol=1e-6)
  acc, loss = ev.accuracy_and_loss(apply, params, s0, x, y, batch_size=64, mesh=mesh)
  want_acc, want_loss = ev.accuracy_and_loss(apply, params, s0, x, y, batch_size=64)
  assert acc == want_acc and loss == pytest.approx(want_loss, rel=1e-6)
  with pytest.raises(InvalidArgument, match="mesh: expected None or a jax.sharding.Mesh"):
    ev.accuracy_and_loss(apply, params, s0, x, y, mesh=jax.devices())
  with pytest.raises(InvalidArgument, match="batch_size: "):
    ev.predict_logits(apply, params, s0, x, batch_size=0)


def test_float_features_are_evaluated_as_given():
  """A model at 100 % on float features is reported at 100 % (they are never divided by 255)."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(300, 4)).astype(np.float32)
  w = rng.normal(size=(4, 3)).astype(np.float32)
  y = np.argmax(x @ w, axis=1).astype(np.int32)
  apply = from_function(lambda p, x: x @ p)
  acc, _ = ev.accuracy_and_loss(apply, w, {}, x, y, batch_size=64)
  assert acc == 100.0
  with pytest.raises(InvalidArgument, match="inputs: cannot evaluate on an empty set"):
    ev.accuracy_and_loss(apply, w, {}, x[:0], y[:0])
  with pytest.raises(InvalidArgument, match=r"labels: expected shape \(300,\)"):
    ev.true_label_confidence(apply, w, {}, x, y[:5])
