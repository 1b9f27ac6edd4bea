
import chex
import jax
import jax.numpy as jnp
import pytest

from mcu_jax import data, models
from mcu_jax.preprocess import normalize_uint8
from mcu_jax.runtime import checkpoint, evaluate, train
from mcu_jax.runtime.optim import OptimConfig, make_optimizer


@pytest.fixture(scope="module")
def digits():
  tt = data.load_digits()
  module = models.get_model("small_cnn", 10, width=8)
  return tt, models.from_linen(module), models.init_model(module, jax.random.PRNGKey(0),
                                                          (1, 8, 8, 1))


BATCH = 64
STEPS = -(-1437 // BATCH)  # digits' training split has 1,437 images


def make_run(digits, epochs):
  tt, apply, (params, state) = digits
  arrays = {"images": jnp.asarray(tt.train.images), "labels": jnp.asarray(tt.train.labels)}
  opt = make_optimizer(OptimConfig(lr=0.1, momentum=0.9, weight_decay=5e-4, cosine=True,
                                   schedule_unit="step"), epochs=epochs, steps_per_epoch=STEPS)
  st = train.TrainState.create(params=params, model_state=state, tx=opt,
                               rng=jax.random.PRNGKey(1))
  return st, train.make_epoch(train.supervised_loss(apply), BATCH,
                              preprocess=normalize_uint8), arrays


def test_fit_trains_and_reports(digits):
  tt, apply, _ = digits
  st, epoch, arrays = make_run(digits, 8)
  st, history = train.fit(st, epoch, arrays, 8, progress=False, evaluate=lambda s: {
      "test_acc": evaluate.accuracy_and_loss(apply, s.params, s.model_state, tt.test.images,
                                             tt.test.labels, preprocess=normalize_uint8)[0]})
  assert [h["epoch"] for h in history] == list(range(1, 9))
  assert history[-1]["test_acc"] > 90.0
  assert history[-1]["train_loss"] < history[0]["train_loss"]
  assert all(h["seconds"] > 0 for h in history)


class Interrupt(Exception):
  pass


def test_resume_after_interruption_equals_uninterrupted(digits, tmp_path):
  st, epoch, arrays = make_run(digits, 4)
  full, _ = train.fit(st, epoch, arrays, 4, progress=False)

  st, epoch, arrays = make_run(digits, 4)

  def die_in_epoch_3(state):
    if int(state.step) > 2 * STEPS:
      raise Interrupt()
    return {}

  with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
    with pytest.raises(Interrupt):
      train.fit(st, epoch, arrays, 4, checkpointer=ckpt, evaluate=die_in_epoch_3,
                progress=False)
    assert ckpt.latest_step() == 2
    fresh, epoch, arrays = make_run(digits, 4)
    resumed, history = train.fit(fresh, epoch, arrays, 4, checkpointer=ckpt, progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    chex.assert_trees_all_equal(resumed.params, full.params)
    chex.assert_trees_all_equal(resumed.model_state, full.model_state)
    # A finished run resumes as a no-op.
    again, _ = train.fit(make_run(digits, 4)[0], epoch, arrays, 4, checkpointer=ckpt,
                         progress=False)
    chex.assert_trees_all_equal(again.params, full.params)
