"""The curve trainer: masked, bit-exact where frozen, the loss's gradient, real training."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcu_jax import data, models
from mcu_jax.core import beta as beta_lib
from mcu_jax.core import objectives
from mcu_jax.core.curves import Curve, point
from mcu_jax.errors import InvalidArgument
from mcu_jax.preprocess import normalize_uint8
from mcu_jax.runtime import mcu, train
from mcu_jax.runtime.optim import OptimConfig, make_optimizer


@pytest.fixture(scope="module")
def setup():
  module = models.get_model("small_cnn", 10, width=4)
  apply = models.from_linen(module)
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


def run_steps(setup, mask, num_steps=20, beta=beta_lib.FixedBeta(0.3), batch=None,
              optimizer=OptimConfig(lr=0.05, momentum=0.9)):
  apply, start, end, state, default_batch = setup
  batch = default_batch if batch is None else batch
  curve = Curve.from_endpoints(start, end)
  trainer = mcu.CurveTrainer(apply, curve, mask=mask, optimizer=optimizer, beta=beta)
  st = trainer.init(state, jax.random.PRNGKey(2))
  history = []
  for _ in range(num_steps):
    st, metrics = trainer.step(st, batch)
    history.append(jax.device_get(metrics))
  return curve, trainer, st, history


def test_frozen_tensors_and_endpoints_bit_identical(setup):
  _, start, end, _, _ = setup
  mask = mixed_mask(start)
  curve, trainer, st, history = run_steps(setup, mask)
  trained = trainer.curve(st)
  chex.assert_trees_all_equal(trained.start, start)
  chex.assert_trees_all_equal(trained.end, end)
  before, after = curve.controls, st.params
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
  apply, start, end, state, _ = setup
  trainer = mcu.CurveTrainer(apply, Curve.from_endpoints(start, end), mask=mixed_mask(start))
  opt_state = trainer.init(state, jax.random.PRNGKey(0)).opt_state
  sizes = sum(x.size for x in jax.tree.leaves(opt_state) if jnp.ndim(x) > 0)
  total = sum(x.size for x in jax.tree.leaves(start))
  frozen = start["BatchNorm_0"]["scale"].size + start["Conv_0"]["kernel"].size
  assert sizes == total - frozen


def test_batch_without_forget_examples_is_finite(setup):
  apply, start, end, state, batch = setup
  no_forget = dict(batch, is_forget=jnp.zeros_like(batch["is_forget"]))
  policy = beta_lib.AdaptiveBeta(targets=beta_lib.Targets(retain=99.0, forget=90.0))
  _, _, st, history = run_steps(setup, None, num_steps=3, beta=policy, batch=no_forget)
  for h in history:
    assert all(np.isfinite(v) for v in h.values())
    assert h["forget_loss"] == 0.0 and h["beta"] == 0.0
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(st.params))


def test_step_gradient_matches_the_loss_at_the_drawn_t(setup):
  """The step's update is -lr * grad of L_r - beta L_f w.r.t. the controls at the drawn t."""
  apply, start, end, state, batch = setup
  curve = Curve.from_endpoints(start, end)
  trainer = mcu.CurveTrainer(apply, curve, optimizer=OptimConfig(lr=1.0, momentum=0.0),
                             beta=0.4)
  st = trainer.init(state, jax.random.PRNGKey(5))
  new, metrics = trainer.step(st, batch)
  t = metrics["t"]

  def loss(controls):
    params = point(curve.replace(controls=controls), t)
    logits, _ = apply(params, state, batch["images"], True)
    m = objectives.subset_metrics(logits, batch)
    return m["retain_loss"] - 0.4 * m["forget_loss"]

  grads = jax.grad(loss)(curve.controls)
  chex.assert_trees_all_close(jax.tree.map(lambda a, b: a - b, curve.controls, new.params),
                              grads, atol=1e-5, rtol=1e-4)


def test_bad_arguments_raise(setup):
  apply, start, end, _, _ = setup
  curve = Curve.from_endpoints(start, end)
  bad = jax.tree.map(lambda _: True, start)
  bad["Dense_0"]["kernel"] = jnp.ones((2, 2), bool)
  with pytest.raises(InvalidArgument, match=r"mask\['Dense_0'\]\['kernel'\]: expected a Python "
                                            r"bool or a bool array of shape \(8, 10\)"):
    mcu.CurveTrainer(apply, curve, mask=bad)
  with pytest.raises(InvalidArgument, match="expected a mask built for these params"):
    mcu.CurveTrainer(apply, curve, mask={"x": True})
  with pytest.raises(InvalidArgument, match="t_range"):
    mcu.CurveTrainer(apply, curve, t_range=(0.5, 1.2))
  with pytest.raises(InvalidArgument, match="curve: expected a mcu_jax.Curve"):
    mcu.CurveTrainer(apply, (start, end))
  with pytest.raises(InvalidArgument, match="beta: expected 'adaptive', a number"):
    mcu.CurveTrainer(apply, curve, beta=[0.2])
  with pytest.raises(InvalidArgument, match="optimizer: expected an OptimConfig"):
    mcu.CurveTrainer(apply, curve, optimizer=make_optimizer(OptimConfig(), epochs=1,
                                                            steps_per_epoch=1))
  trainer = mcu.CurveTrainer(apply, curve)
  with pytest.raises(InvalidArgument, match="data: expected keys images, labels, is_forget; "
                                            "'is_forget' is missing"):
    trainer.place({"images": np.zeros((4, 8, 8, 1), np.uint8), "labels": np.zeros(4, np.int32)})


def test_curve_data_is_all_of_forget_and_a_seeded_share_of_retain():
  rng = np.random.default_rng(0)
  xf, yf = rng.integers(0, 256, (7, 2, 2, 1), dtype=np.uint8), np.arange(7) % 3
  xr, yr = rng.integers(0, 256, (20, 2, 2, 1), dtype=np.uint8), np.arange(20) % 3
  d = mcu.curve_data((xf, yf), (xr, yr), retain_ratio=0.5, seed=4)
  assert d["is_forget"].tolist() == [True] * 7 + [False] * 10
  np.testing.assert_array_equal(d["images"][:7], xf)
  chosen = np.sort(np.random.default_rng(4).choice(20, 10, replace=False))
  np.testing.assert_array_equal(d["images"][7:], xr[chosen])
  np.testing.assert_array_equal(d["labels"][7:], yr[chosen])
  assert d["labels"].dtype == np.int32
  with pytest.raises(InvalidArgument, match=r"retain_ratio: must lie in \(0.0, 1.0\]"):
    mcu.curve_data((xf, yf), (xr, yr), retain_ratio=0.0)
  with pytest.raises(InvalidArgument, match="forget: expected a non-empty set"):
    mcu.curve_data((xf[:0], yf[:0]), (xr, yr))


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

  ga_opt = make_optimizer(OptimConfig(lr=0.02, momentum=0.9), epochs=2, steps_per_epoch=1)
  ga = train.TrainState.create(params=ts.params, model_state=ts.model_state, tx=ga_opt,
                               rng=jax.random.PRNGKey(2))
  ga_epoch = train.make_epoch(ascent, 32, preprocess=normalize_uint8)
  for _ in range(2):
    ga, _ = ga_epoch(ga, forget)
  return tt, split, module, ts, ga


@pytest.fixture(scope="module")
def digits_curves(digits_models):
  """The straight line between the digits endpoints, and the curve trained from it for 6
  epochs with float32 and with bfloat16 compute (float32 controls), same seeds."""
  tt, split, module, original, ga = digits_models
  curve = Curve.from_endpoints(original.params, ga.params)
  forget = (tt.train.images[split.forget], tt.train.labels[split.forget])
  retain = (tt.train.images[split.retain], tt.train.labels[split.retain])
  cdata = {k: jnp.asarray(v) for k, v in mcu.curve_data(forget, retain, 0.5, 0).items()}
  trained = {}
  for precision in ("fp32", "bf16"):
    apply = models.with_precision(models.from_linen(module), precision)
    result = mcu.train_curve(apply, curve, original.model_state, forget=forget, retain=retain,
                             options=mcu.CurveOptions(beta=0.2, epochs=6, batch_size=64),
                             seed=0, preprocess=normalize_uint8)
    assert np.isfinite([h["train_loss"] for h in result.history]).all()
    trained[precision] = result.curve
  return curve, trained, cdata


def _subset_losses(module, model_state, cdata, params):
  """(retain, forget) mean CE of the curve data, float32 compute. Train-mode forward over
  the whole set: BN uses that set's own statistics."""
  logits, _ = models.from_linen(module)(params, model_state,
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
  chex.assert_trees_all_equal_dtypes(trained["bf16"].controls, curve.controls)   # float32
  for t in (0.3, 0.5, 0.7):
    line = np.array(_subset_losses(module, original.model_state, cdata, point(curve, t)))
    fp32 = np.array(_subset_losses(module, original.model_state, cdata,
                                   point(trained["fp32"], t)))
    bf16 = np.array(_subset_losses(module, original.model_state, cdata,
                                   point(trained["bf16"], t)))
    assert np.all(np.abs(bf16 - fp32) <= 0.02 * np.abs(fp32 - line)), (t, line, fp32, bf16)
    assert np.any(bf16 != fp32)         # really computed in bfloat16


def test_scan_and_python_loops_agree(setup):
  apply, start, end, state, _ = setup
  rng = np.random.default_rng(3)
  arrays = {"images": rng.integers(0, 256, (50, 8, 8, 1)).astype(np.float32) / 255.0,
            "labels": rng.integers(0, 10, 50).astype(np.int32),
            "is_forget": np.arange(50) % 5 == 0}
  curve = Curve.from_endpoints(start, end)
  policy = beta_lib.AdaptiveBeta(targets=beta_lib.Targets(retain=60.0, forget=50.0))
  results = {}
  for loop in ("scan", "python"):
    trainer = mcu.CurveTrainer(apply, curve, optimizer=OptimConfig(lr=0.05, momentum=0.9),
                               beta=policy, batch_size=16, loop=loop)
    st, placed = trainer.init(state, jax.random.PRNGKey(4)), trainer.place(arrays)
    if loop == "python":
      trainer.compile(st, placed)
    for _ in range(2):
      st, metrics = trainer.epoch(st, placed)
    results[loop] = (st, metrics)
  chex.assert_trees_all_close(results["scan"][0].params, results["python"][0].params,
                              atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(results["scan"][1], results["python"][1], atol=1e-5, rtol=1e-5)
  assert results["python"][1]["t"].shape == (4,)


def test_unknown_loop_raises(setup):
  apply, start, end, _, _ = setup
  with pytest.raises(InvalidArgument, match="loop: expected one of 'auto', 'scan', 'python'"):
    mcu.CurveTrainer(apply, Curve.from_endpoints(start, end), loop="while")


def test_curve_options_defaults_are_the_references_written_once():
  """The curve's defaults: SGD lr 0.01, momentum 0.9, no weight decay, constant lr, 10 epochs,
  batch 128 (``train.FitConfig``'s), retain_ratio 0.5, 3 Bezier bends, adaptive beta in
  [0.01, 0.5] (``AdaptiveBeta``'s), fp32; the trainer and the data split read the same."""
  import inspect
  options = mcu.CurveOptions()
  assert options.optim() == OptimConfig() == mcu.CURVE_OPTIM
  assert (options.lr, options.momentum, options.weight_decay, options.cosine) == (0.01, 0.9, 0.0,
                                                                                  False)
  assert (options.epochs, options.batch_size, options.retain_ratio) == (10, 128, 0.5)
  assert (options.num_bends, options.kind, options.beta, options.train,
          options.precision) == (3, "bezier", "adaptive", True, "fp32")
  assert (options.beta_low, options.beta_high) == (0.01, 0.5)
  assert inspect.signature(mcu.curve_data).parameters["retain_ratio"].default == 0.5
  assert inspect.signature(mcu.CurveTrainer).parameters["batch_size"].default == 128
  targets = beta_lib.Targets(retain=90.0, forget=10.0)
  assert options.policy(targets) == beta_lib.AdaptiveBeta(targets=targets, low=0.01, high=0.5)
  assert mcu.CurveOptions(beta=0.3).policy() == beta_lib.FixedBeta(0.3)


@pytest.mark.parametrize("kwargs,message", [
    (dict(lr=0.0), r"CurveOptions.lr: must lie in \(0, inf\)"),
    (dict(momentum=1.0), r"CurveOptions.momentum"),
    (dict(epochs=0), r"CurveOptions.epochs"),
    (dict(retain_ratio=0.0), r"CurveOptions.retain_ratio: must lie in \(0.0, 1.0\]"),
    (dict(num_bends=2), r"CurveOptions.num_bends: a trainable curve needs >= 3 bends"),
    (dict(num_bends=2.5, train=False), r"CurveOptions.num_bends"),
    (dict(kind="spline"), r"CurveOptions.kind: 'spline' is not one of bezier, polychain"),
    (dict(beta="fast"), r"CurveOptions.beta: 'fast' is not one of adaptive"),
    (dict(beta=-1.0), r"CurveOptions.beta: must lie in \[0.0, inf\)"),
    (dict(beta_low=0.9), r"CurveOptions.beta_low: must be <= CurveOptions.beta_high"),
    (dict(precision="fp16"), r"CurveOptions.precision: 'fp16' is not one of fp32, bf16"),
    (dict(train="yes"), r"CurveOptions.train: expected a bool"),
])
def test_curve_options_refuse_bad_values_naming_the_field(kwargs, message):
  with pytest.raises(InvalidArgument, match=message):
    mcu.CurveOptions(**kwargs)


def test_curve_options_line_and_adaptive_beta_needs_targets():
  start, end = {"w": jnp.zeros((2, 2))}, {"w": jnp.ones((2, 2))}
  line = mcu.CurveOptions(num_bends=4, kind="polychain").line(start, end)
  assert (line.num_bends, line.kind) == (4, "polychain")
  assert mcu.CurveOptions(num_bends=2, train=False).line(start, end).num_bends == 2
  with pytest.raises(InvalidArgument, match="targets: beta='adaptive' needs the alignment"):
    mcu.CurveOptions().policy()
  with pytest.raises(InvalidArgument, match="options: expected a CurveOptions"):
    mcu.train_curve(None, line, {}, forget=None, retain=None, options={"epochs": 1})
