"""Evaluation: BN recalibration, the sweep over t and the choice of t."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.interpolate import interp1d

from mcu_jax import evaluate as ev
from mcu_jax.curves import Curve, point
from mcu_jax.models import get_model, init_model, make_apply


class ConvBN(nn.Module):
  """conv(bias) -> two BN branches with their own momenta -> dense."""
  momenta: tuple = (0.99, 0.9)

  @nn.compact
  def __call__(self, x, train=False):
    h = nn.Conv(4, (3, 3), name="conv")(x)
    outs = [nn.BatchNorm(use_running_average=not train, momentum=m, name=f"bn{i}")(h)
            for i, m in enumerate(self.momenta)]
    return nn.Dense(3, name="head")(jnp.mean(nn.relu(sum(outs)), axis=(1, 2)))


def _conv_f64(images, kernel, bias):
  """SAME 3x3 convolution in float64 NumPy, NHWC."""
  x = images.astype(np.float64) / 255.0
  n, h, w, _ = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros((n, h, w, kernel.shape[-1]))
  for i in range(3):
    for j in range(3):
      out += np.einsum("nhwc,cd->nhwd", xp[:, i:i + h, j:j + w], kernel[i, j])
  return out + bias


@pytest.fixture(scope="module")
def convbn():
  module = ConvBN()
  params, state = init_model(module, jax.random.key(0), (1, 6, 6, 1))
  images = np.random.default_rng(1).integers(0, 256, (203, 6, 6, 1), dtype=np.uint8)
  pre_bn = _conv_f64(images, np.asarray(params["conv"]["kernel"], np.float64),
                     np.asarray(params["conv"]["bias"], np.float64))
  return make_apply(module), params, state, images, pre_bn


@pytest.mark.parametrize("batch_size", [32, 203, 500])
def test_recalibration_equals_whole_data_statistics(convbn, batch_size):
  apply, params, state, images, pre_bn = convbn
  new = ev.recalibrate_batch_stats(apply, params, state, images, batch_size=batch_size)
  mean, var = pre_bn.mean(axis=(0, 1, 2)), pre_bn.var(axis=(0, 1, 2))
  for bn in ("bn0", "bn1"):      # momenta 0.99 and 0.9, both inferred
    stats = new["batch_stats"][bn]
    np.testing.assert_allclose(stats["mean"], mean, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], var, rtol=2e-5, atol=1e-7)
  chex.assert_trees_all_equal_shapes_and_dtypes(new, state)


def test_recalibration_with_given_momentum(convbn):
  apply, params, state, images, pre_bn = convbn
  only_bn1 = {"batch_stats": {"bn1": state["batch_stats"]["bn1"]}}

  def apply_bn1(p, s, x, train):   # bn0 left at its init values, only bn1 recalibrated
    full = {"batch_stats": {"bn0": state["batch_stats"]["bn0"], **s["batch_stats"]}}
    logits, out = apply(p, full, x, train)
    return logits, {"batch_stats": {"bn1": out["batch_stats"]["bn1"]}}

  given = ev.recalibrate_batch_stats(apply_bn1, params, only_bn1, images, batch_size=50,
                                     momentum=0.9)
  inferred = ev.recalibrate_batch_stats(apply_bn1, params, only_bn1, images, batch_size=50)
  np.testing.assert_allclose(given["batch_stats"]["bn1"]["var"], pre_bn.var(axis=(0, 1, 2)),
                             rtol=2e-5)
  chex.assert_trees_all_close(given, inferred, rtol=2e-6)


def test_recalibration_empty_state_and_bad_input(convbn):
  module = get_model("mlp", 3, hidden=(4,))
  params, state = init_model(module, jax.random.key(0), (1, 6, 6, 1))
  assert state == {}
  images = np.zeros((5, 6, 6, 1), np.uint8)
  assert ev.recalibrate_batch_stats(make_apply(module), params, state, images) is state
  apply, params, state, images, _ = convbn
  with pytest.raises(ValueError):
    ev.recalibrate_batch_stats(apply, params, state, images[:0])


# ---------------------------------------------------------------------------------------------
# The sweep.


@pytest.fixture(scope="module")
def small_curve():
  module = get_model("small_cnn", 4, width=4)
  apply = make_apply(module)
  p0, s0 = init_model(module, jax.random.key(0), (1, 8, 8, 1))
  rng = np.random.default_rng(0)
  # NumPy draws (no per-shape compilation): a second endpoint and a bent control.
  p1 = jax.tree.map(lambda x: x + rng.normal(0, 0.3, x.shape).astype(np.float32), p0)
  curve = Curve.from_endpoints(p0, p1)
  bent = curve.replace(controls=jax.tree.map(
      lambda x: x + rng.normal(0, 0.2, x.shape).astype(np.float32), curve.controls))
  images = rng.integers(0, 256, (150, 8, 8, 1), dtype=np.uint8)
  labels = rng.integers(0, 4, 150).astype(np.int32)
  sets = {"retain": (images[:100], labels[:100]), "forget": (images[100:], labels[100:]),
          "test": (images[:37], labels[:37])}
  return apply, s0, curve, bent, images, sets


def _run(small, ts, curve=None, **kw):
  apply, s0, line, bent, images, sets = small
  kw.setdefault("progress", False)
  return ev.sweep(bent if curve is None else curve, ts, apply, s0, recal_images=images,
                  sets=sets, batch_size=64, recal_batch_size=40, **kw)


def test_sweep_vmapped_equals_sequential(small_curve):
  ts = np.linspace(0.0, 1.0, 5)
  seq = _run(small_curve, ts, vectorize=False)
  for chunk in (None, 2):
    vec = _run(small_curve, ts, chunk_size=chunk, vectorize=True)
    np.testing.assert_array_equal(vec.ts, seq.ts)
    for name in seq.accuracy:
      np.testing.assert_allclose(vec.accuracy[name], seq.accuracy[name], atol=1e-9)
      np.testing.assert_allclose(vec.loss[name], seq.loss[name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vec.path_length, seq.path_length, rtol=1e-5)
    chex.assert_trees_all_close(vec.model_states, seq.model_states, rtol=1e-5, atol=1e-6)


def test_sweep_matches_direct_evaluation(small_curve):
  apply, s0, _, bent, images, sets = small_curve
  ts = np.array([0.0, 0.3, 1.0])
  result = _run(small_curve, ts, chunk_size=2)
  params = point(bent, 0.3)
  state = ev.recalibrate_batch_stats(apply, params, s0, images, batch_size=40)
  chex.assert_trees_all_close(result.state_at(1), state, rtol=1e-5, atol=1e-6)
  for name, (x, y) in sets.items():
    acc, loss = ev.accuracy_and_loss(apply, params, state, x, y, batch_size=64)
    assert result.accuracy[name][1] == pytest.approx(acc, abs=1e-9)
    assert result.loss[name][1] == pytest.approx(loss, rel=1e-5)
  assert set(result.to_dict()) == {"ts", "accuracy", "loss", "path_length"}


def test_sweep_path_length_of_straight_line(small_curve):
  _, _, line, _, _, _ = small_curve
  ts = np.linspace(0.0, 1.0, 4)
  result = _run(small_curve, ts, curve=line, keep_states=False, progress=True)
  total = np.sqrt(sum(float(jnp.sum((a - b) ** 2))
                      for a, b in zip(jax.tree.leaves(line.end), jax.tree.leaves(line.start))))
  np.testing.assert_allclose(result.path_length, ts * total, rtol=1e-4)
  assert result.model_states is None


def test_sweep_bad_inputs(small_curve):
  apply, s0, _, bent, images, sets = small_curve
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    _run(small_curve, np.array([0.0, 1.5]))
  with pytest.raises(ValueError, match="increasing"):
    _run(small_curve, np.array([0.5, 0.2]))
  with pytest.raises(ValueError):
    _run(small_curve, np.array([]))
  with pytest.raises(ValueError):
    ev.sweep(bent, [0.5], apply, s0, recal_images=images, sets={}, progress=False)
  with pytest.raises(ValueError, match="empty"):
    ev.sweep(bent, [0.5], apply, s0, recal_images=images,
             sets={"forget": (images[:0], np.zeros(0, np.int32))}, progress=False)


def test_inference_helpers_agree(small_curve):
  apply, s0, _, bent, images, sets = small_curve
  params = point(bent, 0.5)
  x, y = sets["retain"]
  logits = ev.predict_logits(apply, params, s0, x, batch_size=64)
  assert logits.shape == (100, 4)
  conf = ev.true_label_confidence(apply, params, s0, x, y, batch_size=64)
  losses = ev.per_example_losses(apply, params, s0, x, y, batch_size=64)
  np.testing.assert_allclose(-np.log(conf), losses, rtol=1e-4, atol=1e-5)
  acc, loss = ev.accuracy_and_loss(apply, params, s0, x, y, batch_size=64)
  assert acc == pytest.approx(100.0 * np.mean(logits.argmax(1) == y))
  assert loss == pytest.approx(losses.mean(), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Choice of t.


def _synthetic():
  ts = np.linspace(0.0, 1.0, 20)
  retain = 99.0 - 8.0 * np.sin(np.pi * ts) ** 2 - 3.0 * ts
  forget = 99.0 - 30.0 * ts ** 1.5
  return ts, retain, forget


def _scipy_gap(ts, retain, forget, r, f, grid):
  ra = interp1d(ts, retain, kind="cubic")(grid)
  fa = interp1d(ts, forget, kind="cubic")(grid)
  return (np.abs(ra - r) + np.abs(fa - f)) / 2


@pytest.mark.parametrize("targets", [(97.0, 85.0), (96.0, 0.0), (100.0, 95.0)])
def test_optimal_t_matches_scipy(targets):
  ts, retain, forget = _synthetic()
  grid = np.linspace(0.75, 1.0, 251)
  expected = grid[np.argmin(_scipy_gap(ts, retain, forget, *targets, grid))]
  assert ev.optimal_t(ts, retain, forget, *targets) == pytest.approx(expected, abs=1e-12)
  fn = ev.gap(ts, retain, forget, *targets)
  np.testing.assert_allclose(fn(grid), _scipy_gap(ts, retain, forget, *targets, grid),
                             rtol=1e-10, atol=1e-10)


def test_effective_region_matches_scipy():
  ts, retain, forget = _synthetic()
  targets = (97.0, 85.0)
  grid = np.linspace(0.0, 1.0, 1001)
  values = _scipy_gap(ts, retain, forget, *targets, grid)
  below = values < _scipy_gap(ts, retain, forget, *targets, np.array([1.0]))[0]
  region = ev.effective_region(ts, retain, forget, *targets)
  assert region, "the synthetic curve has an effective region"
  mask = np.zeros_like(below)
  for lo, hi in region:
    assert lo <= hi
    mask |= (grid >= lo - 1e-12) & (grid <= hi + 1e-12)
  np.testing.assert_array_equal(mask, below)
  # a curve that only gets worse before t = 1 has no region
  assert ev.effective_region(ts, 50 + 50 * ts, 50 - 50 * ts, 100.0, 0.0) == []


def test_select_t_on_sweep_result():
  ts, retain, forget = _synthetic()
  result = ev.SweepResult(ts=ts, accuracy={"retain": retain, "forget": forget},
                          loss={}, path_length=np.zeros_like(ts))
  choice = ev.select_t(result, 97.0, 85.0)
  assert choice.t == ev.optimal_t(ts, retain, forget, 97.0, 85.0)
  assert choice.region == ev.effective_region(ts, retain, forget, 97.0, 85.0)


def test_choice_bad_inputs():
  ts, retain, forget = _synthetic()
  with pytest.raises(ValueError, match="at least 4"):
    ev.gap(ts[:3], retain[:3], forget[:3], 90.0, 0.0)
  with pytest.raises(ValueError, match="increasing"):
    ev.optimal_t(ts[::-1], retain, forget, 90.0, 0.0)
  with pytest.raises(ValueError):
    ev.optimal_t(ts * 2.0, retain, forget, 90.0, 0.0)
  with pytest.raises(ValueError):
    ev.gap(ts, retain[:-1], forget, 90.0, 0.0)
  fn = ev.gap(ts[:10], retain[:10], forget[:10], 90.0, 0.0)
  with pytest.raises(ValueError, match="sampled range"):
    fn(np.array([0.9]))


def test_alignment_targets():
  assert ev.alignment_targets(99.5, 94.0, "random") == (99.5, 94.0)
  assert ev.alignment_targets(99.5, 94.0, "class") == (99.5, 0.0)
  with pytest.raises(ValueError):
    ev.alignment_targets(99.5, 94.0, "other")
