"""Membership inference (SalUn's SVC attack, loss AUC) and the unlearning metrics."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mcu_jax import data
from mcu_jax.errors import InvalidArgument
from mcu_jax.models import from_linen, get_model, init_model
from mcu_jax.preprocess import normalize_uint8
from mcu_jax.runtime import evaluate, mia


def _member_conf(rng, n):       # a memorising model: true-label confidence close to 1
  return 1.0 - rng.exponential(0.002, n).clip(0, 1)


def _unseen_conf(rng, n):       # unseen data: spread-out confidences
  return rng.beta(2.0, 2.0, n)


def test_mia_efficacy_synthetic():
  rng = np.random.default_rng(0)
  retain, test = _member_conf(rng, 600), _unseen_conf(rng, 400)
  memorised = mia.mia_efficacy(retain, test, _member_conf(rng, 200))
  unseen = mia.mia_efficacy(retain, test, _unseen_conf(rng, 200))
  assert memorised < 0.05
  assert unseen > 0.5
  assert 0.0 <= memorised <= 1.0 and 0.0 <= unseen <= 1.0


def test_mia_uses_first_test_len_retain_examples():
  """SalUn: shadow members = Subset(retain, range(len(test)))."""
  rng = np.random.default_rng(1)
  test = _unseen_conf(rng, 150)
  head = _member_conf(rng, 150)
  tail = _unseen_conf(rng, 500)            # ignored: beyond len(test)
  forget = np.concatenate([_member_conf(rng, 50), _unseen_conf(rng, 50)])
  full = mia.mia_efficacy(np.concatenate([head, tail]), test, forget, seed=3)
  assert full == mia.mia_efficacy(head, test, forget, seed=3)


def test_mia_bad_inputs():
  with pytest.raises(ValueError, match="empty"):
    mia.mia_efficacy([0.9], [0.5], [])
  with pytest.raises(ValueError, match="empty"):
    mia.mia_efficacy([], [0.5], [0.9])
  with pytest.raises(ValueError, match="non-finite"):
    mia.mia_efficacy([0.9, np.nan], [0.5], [0.9])


def test_loss_attack_auc():
  rng = np.random.default_rng(2)
  low, high = rng.uniform(0.0, 0.1, 100), rng.uniform(1.0, 3.0, 120)
  assert mia.loss_attack_auc(low, high) == 1.0          # forget still memorised
  assert mia.loss_attack_auc(high, low) == 0.0
  same = mia.loss_attack_auc(rng.exponential(1.0, 2000), rng.exponential(1.0, 2000))
  assert abs(same - 0.5) < 0.05
  with pytest.raises(ValueError):
    mia.loss_attack_auc([], [1.0])


def test_avg_gap():
  a = {"UA": 10.0, "RA": 90.0, "TA": 80.0, "MIA": 20.0, "loss_auc": 0.4}
  b = {"UA": 12.0, "RA": 95.0, "TA": 79.0, "MIA": 28.0}
  assert mia.avg_gap(a, b) == pytest.approx((2 + 5 + 1 + 8) / 4)
  assert mia.avg_gap(a, b, keys=("RA",)) == pytest.approx(5.0)
  with pytest.raises(InvalidArgument, match="missing from one of the records"):
    mia.avg_gap(a, b, keys=("loss_auc",))


@pytest.fixture(scope="module")
def overfit_mlp():
  """An MLP memorising 60 digits (full-batch Adam, a jitted scan of 300 steps)."""
  digits = data.load_digits(seed=0)
  train_x, train_y = digits.train.images[:60], digits.train.labels[:60]
  module = get_model("mlp", 10, hidden=(32,))
  apply = from_linen(module)
  params, state = init_model(module, jax.random.key(0), (1, 8, 8, 1))
  tx = optax.adam(1e-2)
  x, y = normalize_uint8(None, jnp.asarray(train_x)), jnp.asarray(train_y)

  @jax.jit
  def fit(params):
    def step(carry, _):
      params, opt = carry
      loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(
          apply(p, state, x, True)[0], y).mean()
      updates, opt = tx.update(jax.grad(loss_fn)(params), opt)
      return (optax.apply_updates(params, updates), opt), None
    return jax.lax.scan(step, (params, tx.init(params)), None, length=300)[0][0]

  return apply, fit(params), state, digits


def test_mia_on_memorising_model(overfit_mlp):
  apply, params, state, digits = overfit_mlp
  conf = lambda x, y: mia.model_confidences(apply, params, state, x, y, batch_size=256,
                                            preprocess=normalize_uint8)
  train_x, train_y = digits.train.images, digits.train.labels
  retain = conf(train_x[:40], train_y[:40])
  forget_seen = conf(train_x[40:60], train_y[40:60])          # trained on: members
  forget_unseen = conf(train_x[400:460], train_y[400:460])    # never trained on
  test = conf(digits.test.images[:40], digits.test.labels[:40])
  assert mia.mia_efficacy(retain, test, forget_seen) < 0.1
  assert mia.mia_efficacy(retain, test, forget_unseen) >= 0.45


def test_unlearning_metrics(overfit_mlp):
  apply, params, state, digits = overfit_mlp
  x, y = digits.train.images, digits.train.labels
  forget, retain = (x[40:60], y[40:60]), (x[:40], y[:40])
  test = (digits.test.images, digits.test.labels)
  m = mia.unlearning_metrics(apply, params, state, forget=forget, retain=retain, test=test,
                             batch_size=256, preprocess=normalize_uint8)
  assert set(m) >= {"UA", "RA", "TA", "MIA", "loss_auc"}
  assert m["UA"] == pytest.approx(100.0 - evaluate.accuracy_and_loss(
      apply, params, state, *forget, preprocess=normalize_uint8)[0])
  assert m["RA"] == pytest.approx(100.0)
  assert m["TA"] == pytest.approx(evaluate.accuracy_and_loss(apply, params, state, *test,
                                                             preprocess=normalize_uint8)[0])
  assert 0.0 <= m["MIA"] <= 100.0 and 0.0 <= m["loss_auc"] <= 1.0
  assert m["loss_auc"] > 0.7          # the memorised D_f has lower loss than the test set
  assert mia.avg_gap(m, m) == 0.0
  with pytest.raises(ValueError, match="empty"):
    mia.unlearning_metrics(apply, params, state, forget=(x[:0], y[:0]), retain=retain,
                           test=test, preprocess=normalize_uint8)
