"""The sweep over t: vmapped or looped, against direct evaluation, stateless models."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcu_jax.core.beta import Targets
from mcu_jax.core.curves import Curve, point
from mcu_jax.errors import InvalidArgument, NonFiniteError
from mcu_jax.models import from_function, from_linen, get_model, init_model
from mcu_jax.runtime import batchnorm, parallel
from mcu_jax.runtime import evaluate as ev
from mcu_jax.runtime import sweep as sweep_lib
from mcu_jax.runtime.sweep import SweepOptions


@pytest.fixture(scope="module")
def small_curve():
  module = get_model("small_cnn", 4, width=4)
  apply = from_linen(module)
  p0, s0 = init_model(module, jax.random.key(0), (1, 8, 8, 1))
  rng = np.random.default_rng(0)
  # NumPy draws (no per-shape compilation): a second endpoint and a bent control.
  p1 = jax.tree.map(lambda x: x + rng.normal(0, 0.3, x.shape).astype(np.float32), p0)
  curve = Curve.from_endpoints(p0, p1)
  bent = curve.replace(controls=jax.tree.map(
      lambda x: x + rng.normal(0, 0.2, x.shape).astype(np.float32), curve.controls))
  images = rng.integers(0, 256, (150, 8, 8, 1)).astype(np.float32) / 255.0
  labels = rng.integers(0, 4, 150).astype(np.int32)
  sets = {"retain": (images[:100], labels[:100]), "forget": (images[100:], labels[100:]),
          "test": (images[:37], labels[:37])}
  return apply, s0, curve, bent, images, sets


def _run(small, ts, curve=None, **kw):
  apply, s0, line, bent, images, sets = small
  kw.setdefault("keep_states", True)
  options = SweepOptions(batch_size=64, recal_batch_size=40, **kw)
  return sweep_lib.sweep(bent if curve is None else curve, ts, apply, s0, sets, images, options)


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
  state = batchnorm.recalibrate_batch_stats(apply, params, s0, images, batch_size=40)
  chex.assert_trees_all_close(result.state_at(1), state, rtol=1e-5, atol=1e-6)
  for name, (x, y) in sets.items():
    acc, loss = ev.accuracy_and_loss(apply, params, state, x, y, batch_size=64)
    assert result.accuracy[name][1] == pytest.approx(acc, abs=1e-9)
    assert result.loss[name][1] == pytest.approx(loss, rel=1e-5)
  assert set(result.to_dict()) == {"ts", "accuracy", "loss", "path_length"}


def test_sweep_on_a_mesh_equals_no_mesh(small_curve):
  """``SweepOptions.mesh`` with one device: the same sweep (4 devices: test_parallel.py)."""
  ts = np.array([0.2, 0.9])
  plain = _run(small_curve, ts, vectorize=False)
  meshed = _run(small_curve, ts, vectorize=False, mesh=parallel.make_mesh())
  for name in plain.accuracy:
    np.testing.assert_allclose(meshed.accuracy[name], plain.accuracy[name], atol=1e-9)
    np.testing.assert_allclose(meshed.loss[name], plain.loss[name], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(meshed.path_length, plain.path_length, rtol=1e-6)
  chex.assert_trees_all_close(meshed.model_states, plain.model_states, rtol=1e-6, atol=1e-7)
  with pytest.raises(InvalidArgument, match="mesh: expected None or a jax.sharding.Mesh"):
    SweepOptions(mesh="data")


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
    sweep_lib.sweep(bent, [0.5], apply, s0, {}, images)
  with pytest.raises(ValueError, match="empty"):
    sweep_lib.sweep(bent, [0.5], apply, s0, {"forget": (images[:0], np.zeros(0, np.int32))},
                    images)
  with pytest.raises(InvalidArgument, match="recal_inputs: a model with BatchNorm statistics "
                                            "needs a non-empty set"):
    sweep_lib.sweep(bent, [0.5], apply, s0, sets)
  with pytest.raises(InvalidArgument, match="SweepOptions.points: cubic interpolation needs >= 4"):
    sweep_lib.sweep_and_select(apply, bent, s0, sets=sets, targets=Targets(90.0, 10.0),
                               recal_inputs=images, options=SweepOptions(points=3))


def test_a_non_finite_point_is_refused_naming_its_t():
  """phi(t) whose logits are infinite at t = 0.5 exactly (a scale 1 / (s - 0.5) with s(t) = t):
  the sweep names the t instead of returning NaN losses to choose from."""
  rng = np.random.default_rng(0)
  apply = from_function(lambda p, x: x @ p["w"] / (p["s"] - 0.5))
  start = {"w": jnp.asarray(rng.normal(size=(6, 3)), jnp.float32), "s": jnp.zeros(())}
  curve = Curve.from_endpoints(start, {**start, "s": jnp.ones(())})
  x = rng.normal(size=(40, 6)).astype(np.float32)
  y = rng.integers(0, 3, 40).astype(np.int32)
  with pytest.raises(NonFiniteError, match=r"sweep: the \w+ (accuracy|loss) at t = 0.5 is nan"):
    sweep_lib.sweep(curve, [0.0, 0.5, 1.0], apply, {}, {"retain": (x, y), "forget": (x, y)})


def test_stateless_model_needs_no_recalibration_inputs():
  rng = np.random.default_rng(0)
  w0, w1 = (jnp.asarray(rng.normal(size=(6, 3)), jnp.float32) for _ in range(2))
  apply = from_function(lambda p, x: x @ p["w"])
  curve = Curve.from_endpoints({"w": w0}, {"w": w1})
  x = rng.normal(size=(40, 6)).astype(np.float32)
  y = rng.integers(0, 3, 40).astype(np.int32)
  sets = {"retain": (x[:30], y[:30]), "forget": (x[30:], y[30:])}
  result, choice = sweep_lib.sweep_and_select(apply, curve, {}, sets=sets,
                                              targets=Targets(retain=90.0, forget=10.0),
                                              options=SweepOptions(points=6))
  for i, t in enumerate(result.ts):
    logits = x[:30] @ np.asarray(point(curve, t)["w"])
    assert result.accuracy["retain"][i] == pytest.approx(100 * np.mean(logits.argmax(1) == y[:30]))
  assert 0.75 <= choice.t <= 1.0 and choice.targets == Targets(retain=90.0, forget=10.0)


def test_a_non_finite_curve_is_refused(small_curve):
  apply, s0, _, bent, images, sets = small_curve
  broken = bent.replace(end=jax.tree.map(lambda x: x * np.nan, bent.end))
  with pytest.raises(InvalidArgument, match="curve: theta_p holds NaN or infinite parameters"):
    sweep_lib.sweep(broken, [0.0, 1.0], apply, s0, sets, images)


def test_sweep_options_hold_the_window_and_points_once():
  import inspect

  from mcu_jax.core import choice
  options = SweepOptions()
  assert (options.points, options.t_search, options.recalibrate_on) == (20, (0.75, 1.0),
                                                                        "retain")
  assert options.t_search == choice.T_SEARCH
  for fn in (choice.select_t, choice.optimal_t):
    assert inspect.signature(fn).parameters["t_search"].default is choice.T_SEARCH
  assert choice.Choice(t=1.0, gap=0.0, region=[], targets=Targets(90.0, 0.0)).t_search \
      == choice.T_SEARCH
  assert SweepOptions(t_search=[0.5, 1]).t_search == (0.5, 1.0)     # a pair of floats
  for kwargs, message in ((dict(points=3), r"SweepOptions.points: cubic interpolation"),
                          (dict(points=4.0), r"SweepOptions.points"),
                          (dict(t_search=(0.9, 0.1)), r"SweepOptions.t_search: expected 0 <= lo"),
                          (dict(t_search=0.5), r"SweepOptions.t_search: expected a pair"),
                          (dict(recalibrate_on="test"), r"SweepOptions.recalibrate_on"),
                          (dict(chunk_size=0), r"SweepOptions.chunk_size")):
    with pytest.raises(InvalidArgument, match=message):
      SweepOptions(**kwargs)
