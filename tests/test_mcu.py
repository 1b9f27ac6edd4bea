import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mcu_jax import beta as beta_lib
from mcu_jax import data, mcu, models, objectives, train
from mcu_jax.curves import Curve, point


@pytest.fixture(scope="module")
def setup():
  module = models.get_model("small_cnn", 10, width=4)
  apply = models.make_apply(module)
  start, state = models.init_model(module, jax.random.PRNGKey(0), (1, 8, 8, 1))
  end, _ = models.init_model(module, jax.random.PRNGKey(1), (1, 8, 8, 1))
  rng = np.random.default_rng(0)
  batch = {"images": jnp.asarray(rng.uniform(size=(16, 8, 8, 1)), jnp.float32),
           "labels": jnp.asarray(rng.integers(0, 10, 16), jnp.int32),
           "is_forget": jnp.asarray(np.arange(16) % 4 == 0)}
  return apply, start, end, state, batch


def mixed_mask(start):
  mask = jax.tree.map(lambda _: True, start)
  mask["BatchNorm_0"]["scale"] = False
  mask["Conv_0"]["kernel"] = False
  kernel = start["Dense_0"]["kernel"]
  mask["Dense_0"]["kernel"] = jnp.asarray(np.arange(kernel.size).reshape(kernel.shape) % 3 == 0)
  return mask


def run_steps(setup, mask, num_steps=20, beta=beta_lib.FixedBeta(0.3), batch=None):
  apply, start, end, state, default_batch = setup
  batch = default_batch if batch is None else batch
  curve = Curve.from_endpoints(start, end)
  endpoints = mcu.Endpoints(*jax.tree.map(jnp.copy, (start, end)))
  opt = optax.sgd(0.05, momentum=0.9)
  st = mcu.init_state(curve, opt, mask, state, jax.random.PRNGKey(2))
  step = mcu.make_train_step(apply, opt, endpoints, mask, beta)
  history = []
  for _ in range(num_steps):
    st, metrics = step(st, batch)
    history.append(jax.device_get(metrics))
  return curve, endpoints, st, history


def test_frozen_tensors_and_endpoints_bit_identical(setup):
  _, start, end, _, _ = setup
  mask = mixed_mask(start)
  curve, endpoints, st, history = run_steps(setup, mask)
  chex.assert_trees_all_equal(endpoints.start, start)
  chex.assert_trees_all_equal(endpoints.end, end)
  before, after = curve.controls, st.controls
  np.testing.assert_array_equal(after["BatchNorm_0"]["scale"], before["BatchNorm_0"]["scale"])
  np.testing.assert_array_equal(after["Conv_0"]["kernel"], before["Conv_0"]["kernel"])
  elementwise = np.broadcast_to(np.asarray(mask["Dense_0"]["kernel"]),
                                before["Dense_0"]["kernel"].shape)
  frozen_before = np.asarray(before["Dense_0"]["kernel"])[~elementwise]
  np.testing.assert_array_equal(np.asarray(after["Dense_0"]["kernel"])[~elementwise], frozen_before)
  for path in (("Conv_1", "kernel"), ("BatchNorm_1", "bias"), ("Dense_0", "bias")):
    moved = np.abs(np.asarray(after[path[0]][path[1]]) - np.asarray(before[path[0]][path[1]]))
    assert moved.max() > 1e-4, path
  assert np.abs(np.asarray(after["Dense_0"]["kernel"])[elementwise]
                - np.asarray(before["Dense_0"]["kernel"])[elementwise]).max() > 1e-4
  assert int(st.step) == 20
  assert set(history[0]) >= {"t", "beta", "forget_loss", "retain_loss", "forget_acc", "retain_acc"}
  ts = np.array([h["t"] for h in history])
  assert ts.min() >= 0.0 and ts.max() <= 1.0 and len(set(ts.tolist())) == 20


def test_frozen_tensors_hold_no_optimizer_state(setup):
  _, start, _, _, _ = setup
  mask = mixed_mask(start)
  opt = optax.sgd(0.1, momentum=0.9)
  state = mcu.masked_optimizer(opt, mask).init(
      Curve.from_endpoints(start, start).controls)
  sizes = sum(x.size for x in jax.tree.leaves(state))
  total = sum(x.size for x in jax.tree.leaves(start))
  frozen = start["BatchNorm_0"]["scale"].size + start["Conv_0"]["kernel"].size
  assert sizes == total - frozen


def test_batch_without_forget_examples_is_finite(setup):
  apply, start, end, state, batch = setup
  no_forget = dict(batch, is_forget=jnp.zeros_like(batch["is_forget"]))
  _, _, st, history = run_steps(setup, jax.tree.map(lambda _: True, start), num_steps=3,
                                beta=beta_lib.AdaptiveBeta(90.0, 99.0), batch=no_forget)
  for h in history:
    assert all(np.isfinite(v) for v in h.values())
    assert h["forget_loss"] == 0.0 and h["beta"] == 0.0
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(st.controls))


def test_step_gradient_matches_finite_difference_direction(setup):
  """The step's update is -lr * grad of L_r - beta L_f w.r.t. the controls at the drawn t."""
  apply, start, end, state, batch = setup
  mask = jax.tree.map(lambda _: True, start)
  curve = Curve.from_endpoints(start, end)
  opt = optax.sgd(1.0)
  st = mcu.init_state(curve, opt, mask, state, jax.random.PRNGKey(5))
  step = mcu.make_train_step(apply, opt, mcu.Endpoints(start, end), mask, 0.4, donate=False)
  new, metrics = step(st, batch)
  t = metrics["t"]

  def loss(controls):
    params = point(curve.replace(controls=controls), t)
    logits, _ = apply(params, state, batch["images"], True)
    m = objectives.subset_metrics(logits, batch)
    return m["retain_loss"] - 0.4 * m["forget_loss"]

  grads = jax.grad(loss)(curve.controls)
  chex.assert_trees_all_close(jax.tree.map(lambda a, b: a - b, curve.controls, new.controls),
                              grads, atol=1e-5, rtol=1e-4)


def test_bad_mask_raises(setup):
  apply, start, end, _, _ = setup
  bad = jax.tree.map(lambda _: True, start)
  bad["Dense_0"]["kernel"] = jnp.ones((2, 2), bool)
  with pytest.raises(ValueError, match=r"mask leaf at \['Dense_0'\]\['kernel'\]"):
    mcu.make_train_step(apply, optax.sgd(0.1), mcu.Endpoints(start, end), bad)
  with pytest.raises(ValueError, match="structures"):
    mcu.make_train_step(apply, optax.sgd(0.1), mcu.Endpoints(start, end), {"x": True})
  with pytest.raises(ValueError, match="t_range"):
    mcu.make_step_fn(apply, optax.sgd(0.1), jax.tree.map(lambda _: True, start), t_range=(0.5, 1.2))


@pytest.fixture(scope="module")
def digits_models(digits_original):
  """An original small CNN on digits and a gradient-ascent end point forgetting class 3."""
  tt, module, apply, ts = digits_original
  split = data.class_forget_split(tt.train.labels, [3])
  forget = {"images": jnp.asarray(tt.train.images[split.forget]),
            "labels": jnp.asarray(tt.train.labels[split.forget])}

  def ascent(params, model_state, batch, rng):
    loss, aux = train.supervised_loss(apply)(params, model_state, batch, rng)
    return -loss, aux

  ga_opt = optax.sgd(0.02, momentum=0.9)
  ga = train.init_train_state(ts.params, ts.model_state, ga_opt, jax.random.PRNGKey(2))
  ga_epoch = train.make_epoch(ascent, ga_opt, 32)
  for _ in range(2):
    ga, _ = ga_epoch(ga, forget)
  return tt, split, module, ts, ga


@pytest.fixture(scope="module")
def digits_curves(digits_models):
  """The straight line between the digits endpoints, and the curve trained from it for 6
  epochs with float32 and with bfloat16 compute (float32 controls), same seeds."""
  tt, split, module, original, ga = digits_models
  curve = Curve.from_endpoints(original.params, ga.params)
  cdata = {k: jnp.asarray(v) for k, v in data.curve_training_set(tt.train, split, 0.5, 0).items()}
  mask = jax.tree.map(lambda _: True, original.params)
  opt = optax.sgd(0.01, momentum=0.9)
  trained = {}
  for precision, dtype in (("fp32", jnp.float32), ("bf16", jnp.bfloat16)):
    apply = models.make_apply(module.clone(dtype=dtype))
    state = mcu.init_state(curve, opt, mask, original.model_state, jax.random.PRNGKey(3))
    epoch = mcu.make_train_epoch(apply, opt, mask, beta_lib.FixedBeta(0.2), batch_size=64)
    for _ in range(6):
      state, metrics = epoch(state, mcu.Endpoints(curve.start, curve.end), cdata)
    assert np.isfinite(np.asarray(metrics["loss"])).all()
    trained[precision] = curve.replace(controls=state.controls)
  return curve, trained, cdata


def _subset_losses(module, model_state, cdata, params):
  """(retain, forget) mean CE of the curve data, float32 compute. Train-mode forward over
  the whole set: BN uses that set's own statistics."""
  logits, _ = models.make_apply(module)(params, model_state,
                                        cdata["images"].astype(jnp.float32) / 255, True)
  m = objectives.subset_metrics(logits, {"labels": cdata["labels"],
                                         "is_forget": cdata["is_forget"]})
  return float(m["retain_loss"]), float(m["forget_loss"])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_curve_on_digits_beats_straight_line(digits_models, digits_curves, precision):
  module, original = digits_models[2], digits_models[3]
  curve, trained, cdata = digits_curves
  for t in (0.3, 0.5, 0.7):
    line_r, line_f = _subset_losses(module, original.model_state, cdata, point(curve, t))
    curve_r, curve_f = _subset_losses(module, original.model_state, cdata,
                                      point(trained[precision], t))
    assert curve_r < line_r, (t, curve_r, line_r)
    assert curve_f > line_f, (t, curve_f, line_f)


def test_bf16_compute_trains_like_fp32_on_digits(digits_models, digits_curves):
  """bfloat16 compute with float32 controls lands where float32 training does: along the
  path, the losses of the two trained curves differ by a small share of what training
  changed relative to the straight line."""
  module, original = digits_models[2], digits_models[3]
  curve, trained, cdata = digits_curves
  for t in (0.3, 0.5, 0.7):
    line = np.array(_subset_losses(module, original.model_state, cdata, point(curve, t)))
    fp32 = np.array(_subset_losses(module, original.model_state, cdata,
                                   point(trained["fp32"], t)))
    bf16 = np.array(_subset_losses(module, original.model_state, cdata,
                                   point(trained["bf16"], t)))
    assert np.all(np.abs(bf16 - fp32) <= 0.02 * np.abs(fp32 - line)), (t, line, fp32, bf16)


def test_scan_and_python_loops_agree(setup):
  apply, start, end, state, _ = setup
  rng = np.random.default_rng(3)
  arrays = {"images": jnp.asarray(rng.integers(0, 256, (50, 8, 8, 1)), jnp.uint8),
            "labels": jnp.asarray(rng.integers(0, 10, 50), jnp.int32),
            "is_forget": jnp.asarray(np.arange(50) % 5 == 0)}
  curve = Curve.from_endpoints(start, end)
  mask = jax.tree.map(lambda _: True, start)
  opt = optax.sgd(0.05, momentum=0.9)
  endpoints = mcu.Endpoints(start, end)
  results = {}
  for loop in ("scan", "python"):
    st = mcu.init_state(curve, opt, mask, state, jax.random.PRNGKey(4))
    epoch = mcu.make_train_epoch(apply, opt, mask, beta_lib.AdaptiveBeta(50.0, 60.0),
                                 batch_size=16, loop=loop)
    if loop == "python":
      epoch, _ = train.compile_ahead(epoch, st, endpoints, arrays)
    for _ in range(2):
      st, metrics = epoch(st, endpoints, arrays)
    results[loop] = (st, metrics)
  chex.assert_trees_all_close(results["scan"][0].controls, results["python"][0].controls,
                              atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(results["scan"][1], results["python"][1], atol=1e-5, rtol=1e-5)
  assert results["python"][1]["t"].shape == (4,)


def test_unknown_loop_raises(setup):
  apply, start, _, _, _ = setup
  with pytest.raises(ValueError, match="loop must be one of"):
    mcu.make_train_epoch(apply, optax.sgd(0.1), jax.tree.map(lambda _: True, start),
                         loop="while")
