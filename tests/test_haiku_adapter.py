"""from_haiku: Haiku's transform_with_state as an Apply, its training flag, keys and state."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

hk = pytest.importorskip("haiku", reason="dm-haiku is not installed (pip install -e '.[haiku]')")

from mcu_jax import models  # noqa: E402
from mcu_jax.errors import InvalidArgument  # noqa: E402
from mcu_jax.runtime import batchnorm  # noqa: E402

X = np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32)


def _bn_net(x, is_training):
  return hk.Linear(3)(hk.BatchNorm(True, True, 0.9)(hk.Linear(4)(x), is_training))


def test_training_flag_state_and_inference():
  t = hk.transform_with_state(_bn_net)
  params, state = t.init(jax.random.key(0), X, True)
  apply = models.from_haiku(t)
  logits, new_state = apply(params, state, X, True, rng=jax.random.PRNGKey(0))
  want, want_state = t.apply(params, state, None, X, True)
  np.testing.assert_allclose(logits, want, rtol=1e-6)
  assert int(new_state["batch_norm/~/mean_ema"]["counter"]) == 1
  logits, same = apply(params, new_state, X, False)       # inference: the state comes back as is
  assert same is new_state
  np.testing.assert_allclose(logits, t.apply(params, new_state, None, X, False)[0], rtol=1e-6)
  assert hash(apply) == hash(models.from_haiku(t)) and apply == models.from_haiku(t)


def test_another_training_argument_none_and_plain_transform():
  def net(x, train):
    return hk.Linear(3)(hk.dropout(hk.next_rng_key(), 0.5, x) if train else x)
  t = hk.transform(net)                                    # stateless: state {}
  params = t.init(jax.random.key(0), X, True)
  apply = models.from_haiku(t, train_arg="train")
  a, state = apply(params, {}, X, True, rng=jax.random.PRNGKey(0))
  b, _ = apply(params, {}, X, True, rng=jax.random.PRNGKey(1))
  assert state == {} and not np.array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_allclose(apply(params, {}, X, False)[0], t.apply(params, None, X, False),
                             rtol=1e-6)
  with pytest.raises(InvalidArgument, match="train_arg: the Haiku function takes no "
                                            "'is_training' argument"):
    models.from_haiku(t)(params, {}, X, True, rng=jax.random.PRNGKey(0))
  plain = models.from_haiku(hk.transform(lambda x: hk.Linear(3)(x)), train_arg=None)
  params = plain.transformed.init(jax.random.key(0), X)[0]
  assert plain(params, {}, X, True)[0].shape == (8, 3)
  with pytest.raises(InvalidArgument, match="transformed: expected hk.transform_with_state"):
    models.from_haiku(_bn_net)


def test_random_numbers_in_inference_are_refused():
  t = hk.transform_with_state(lambda x, is_training: hk.dropout(hk.next_rng_key(), 0.5, x))
  params, state = t.init(jax.random.key(0), X, True)
  with pytest.raises(InvalidArgument, match="draws random numbers in inference mode"):
    models.from_haiku(t)(params, state, X, False)


def test_a_moving_average_outside_batchnorm_is_refused():
  def net(x, is_training):
    h = hk.Linear(4)(x)
    if is_training:
      hk.ExponentialMovingAverage(0.9, name="activity")(jnp.mean(h, axis=0))
    return hk.Linear(3)(h)
  t = hk.transform_with_state(net)
  params, state = t.init(jax.random.key(0), X, True)
  with pytest.raises(InvalidArgument, match="activity/average is a moving average outside any "
                                            "hk.BatchNorm"):
    batchnorm.recalibrate_batch_stats(models.from_haiku(t), params, state, X)


def test_zero_debiased_statistics_are_read_as_haiku_reads_them():
  """The reported failure: hk.BatchNorm(decay_rate=0.99) after 120 steps (counter 120).
  Inference must read the exact statistics (it divides hidden by 1 - 0.99^counter when
  training updates it, and reads average)."""
  t = hk.transform_with_state(lambda x, is_training: hk.BatchNorm(True, True, 0.99)(
      x, is_training))
  params, state = t.init(jax.random.key(0), X, True)
  apply = models.from_haiku(t)
  step = jax.jit(lambda s, x: apply(params, s, x, True)[1])
  rng = np.random.default_rng(1)
  for _ in range(120):
    state = step(state, jnp.asarray(rng.normal(size=(8, 5)), jnp.float32))
  assert int(state["batch_norm/~/mean_ema"]["counter"]) == 120
  x = (rng.normal(size=(50, 5)) * 3 + 2).astype(np.float32)
  new = batchnorm.recalibrate_batch_stats(apply, params, state, x, batch_size=16)
  np.testing.assert_allclose(new["batch_norm/~/mean_ema"]["average"][0], x.mean(axis=0),
                             rtol=1e-5)
  np.testing.assert_allclose(new["batch_norm/~/var_ema"]["average"][0],
                             x.astype(np.float64).var(axis=0), rtol=1e-5)
  out, _ = apply(params, new, x, False)
  np.testing.assert_allclose(out, (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5), rtol=1e-4,
                             atol=1e-5)
