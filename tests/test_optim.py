"""The one optimizer builder: SGD semantics, schedules, masks (closed forms by hand)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mcu_jax import unlearn
from mcu_jax.errors import InvalidArgument
from mcu_jax.runtime.optim import OptimConfig, check_mask, make_optimizer


def updates(opt, params, grads, steps):
  state = opt.init(params)
  out = []
  for _ in range(steps):
    u, state = opt.update(grads, state, params)
    out.append(jax.device_get(u))
  return out, state


def test_per_epoch_cosine_is_constant_within_an_epoch():
  cfg = unlearn.FTConfig(epochs=2, lr=0.1, momentum=0.0, weight_decay=0.0)
  opt = make_optimizer(cfg, epochs=cfg.epochs, steps_per_epoch=3)
  steps, _ = updates(opt, {"w": jnp.zeros(())}, {"w": jnp.ones(())}, 6)
  # cos(pi * e / 2) schedule: lr 0.1 in epoch 0, 0.1 * (1 + cos(pi / 2)) / 2 = 0.05 in epoch 1.
  np.testing.assert_allclose([s["w"] for s in steps], [-0.1] * 3 + [-0.05] * 3, rtol=1e-6)


def test_per_step_cosine_anneals_every_update():
  cfg = OptimConfig(lr=0.2, momentum=0.0, cosine=True, schedule_unit="step")
  opt = make_optimizer(cfg, epochs=2, steps_per_epoch=2)
  steps, _ = updates(opt, {"w": jnp.zeros(())}, {"w": jnp.ones(())}, 4)
  expected = [-0.2 * (1 + np.cos(np.pi * k / 4)) / 2 for k in range(4)]
  np.testing.assert_allclose([s["w"] for s in steps], expected, rtol=1e-6)


def test_coupled_weight_decay_and_momentum_as_torch_sgd():
  opt = make_optimizer(unlearn.FTConfig(lr=0.1, weight_decay=0.5, cosine=False),
                       epochs=1, steps_per_epoch=1)
  params = {"w": jnp.asarray(2.0)}
  (u1, u2), _ = updates(opt, params, {"w": jnp.asarray(1.0)}, 2)
  # g = 1 + 0.5 * 2 = 2; buf1 = 2, buf2 = 0.9 * 2 + 2.
  np.testing.assert_allclose([u1["w"], u2["w"]], [-0.2, -0.1 * (0.9 * 2.0 + 2.0)], rtol=1e-6)


def test_adam_as_torch_adam_with_coupled_weight_decay():
  # torch.optim.Adam: g = grad + wd * p; m, v EMAs (0.9, 0.999); p -= lr * m_hat / (sqrt(v_hat)
  # + 1e-8), bias-corrected; params held fixed, gradients change every step.
  cfg = unlearn.BadTeacherConfig(lr=0.1, weight_decay=0.5)
  opt = make_optimizer(cfg, epochs=1, steps_per_epoch=3)
  p = np.asarray([2.0, -1.0])
  params = {"w": jnp.asarray(p, jnp.float32)}
  state = opt.init(params)
  m = v = np.zeros(2)
  for k, grad in enumerate(([1.0, 0.25], [-3.0, 0.5], [0.5, 4.0]), start=1):
    u, state = opt.update({"w": jnp.asarray(grad, jnp.float32)}, state, params)
    g = np.asarray(grad) + 0.5 * p
    m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
    expected = -0.1 * (m / (1 - 0.9 ** k)) / (np.sqrt(v / (1 - 0.999 ** k)) + 1e-8)
    # float32 bias corrections (1 - 0.999 ** k) carry a relative error of ~1e-5
    np.testing.assert_allclose(u["w"], expected, rtol=1e-4)


def test_method_optimizer_must_be_sgd_or_adam():
  with pytest.raises(InvalidArgument, match="optimizer.*'sgd', 'adam'|optimizer"):
    unlearn.FTConfig(optimizer="rmsprop")


def test_constant_schedule_is_the_curve_default():
  assert OptimConfig() == OptimConfig(lr=0.01, momentum=0.9, weight_decay=0.0, cosine=False)
  steps, _ = updates(make_optimizer(OptimConfig(momentum=0.0), epochs=3, steps_per_epoch=2),
                     {"w": jnp.zeros(())}, {"w": jnp.ones(())}, 6)
  np.testing.assert_allclose([s["w"] for s in steps], [-0.01] * 6, rtol=1e-6)


def mixed():
  params = {"a": jnp.full((3,), 2.0), "b": jnp.full((2, 2), -1.0), "c": jnp.ones((4,))}
  mask = {"a": False, "b": jnp.asarray([[True, False], [False, True]]), "c": True}
  return params, mask


def test_masks_freeze_tensors_and_weights_despite_momentum_and_weight_decay():
  params, mask = mixed()
  cfg = OptimConfig(lr=0.1, momentum=0.9, weight_decay=0.3)
  opt = make_optimizer(cfg, epochs=1, steps_per_epoch=1, mask=mask)
  grads = jax.tree.map(jnp.ones_like, params)
  state = opt.init(params)
  p = params
  for _ in range(5):
    u, state = opt.update(grads, state, p)
    p = optax.apply_updates(p, u)
  np.testing.assert_array_equal(p["a"], params["a"])                 # frozen tensor
  b_mask = np.asarray(mask["b"])
  np.testing.assert_array_equal(np.asarray(p["b"])[~b_mask], np.asarray(params["b"])[~b_mask])
  assert np.all(np.asarray(p["b"])[b_mask] != -1.0)                  # the masked-in weights move
  # The free tensor follows plain SGD: the same 5 updates with no mask at all.
  free = make_optimizer(cfg, epochs=1, steps_per_epoch=1)
  q, s = params, free.init(params)
  for _ in range(5):
    u, s = free.update(grads, s, q)
    q = optax.apply_updates(q, u)
  np.testing.assert_allclose(p["c"], q["c"], rtol=1e-6)


def test_frozen_tensors_hold_no_optimizer_state():
  params, mask = mixed()
  state = make_optimizer(OptimConfig(momentum=0.9), epochs=1, steps_per_epoch=1,
                         mask=mask).init(params)
  sizes = sum(x.size for x in jax.tree.leaves(state) if jnp.ndim(x) > 0)
  assert sizes == params["b"].size + params["c"].size       # momentum of b and c only


def test_mask_checks_name_the_leaf():
  params, mask = mixed()
  check_mask(mask, params)
  with pytest.raises(InvalidArgument, match=r"mask\['b'\]: expected a Python bool or a bool "
                                            r"array of shape \(2, 2\)"):
    check_mask({**mask, "b": jnp.ones((3,), bool)}, params)
  with pytest.raises(InvalidArgument, match="a mask built for these params"):
    check_mask({"a": True}, params)


@pytest.mark.parametrize("changes, match", [
    ({"lr": 0.0}, r"OptimConfig.lr: must lie in \(0, inf\)"),
    ({"lr": float("inf")}, "OptimConfig.lr: must be finite"),
    ({"momentum": 1.0}, "OptimConfig.momentum"),
    ({"weight_decay": -1.0}, "OptimConfig.weight_decay"),
    ({"cosine": "yes"}, "OptimConfig.cosine: must be a bool"),
    ({"schedule_unit": "batch"}, "OptimConfig.schedule_unit: 'batch' is not one of step, epoch"),
])
def test_bad_settings_raise(changes, match):
  with pytest.raises(InvalidArgument, match=match):
    OptimConfig(**changes)


def test_embedding_configs_hand_over_their_optimizer_fields():
  cfg = unlearn.ScrubConfig()
  assert cfg.optim() == OptimConfig(lr=5e-4, momentum=0.9, weight_decay=5e-4, cosine=False)
  chex.assert_equal(unlearn.FTConfig().optim().cosine, True)
