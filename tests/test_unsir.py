"""UNSIR (mcu_jax.unlearn.unsir): the noise objective, its gradient and its Adam steps against
float64 NumPy; the retain subset; checkpoint/resume across the two phases; class-3 forgetting
on digits."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _digits import accuracies

from mcu_jax import data, models, unlearn
from mcu_jax.preprocess import normalize_uint8
from mcu_jax.runtime import checkpoint
from mcu_jax.unlearn import unsir

L2 = 0.1


def _linear(params, x):
  return x.reshape(x.shape[0], -1) @ params["w"] + params["b"]


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _numpy_objective(params, noise, label, l2):
  """float64 (objective, CE, gradient) of -mean CE + l2 * mean_i sum_j n_ij^2 for the linear
  model; dCE_i/dz_i = softmax(z_i) - onehot(label)."""
  b = noise.shape[0]
  flat = noise.reshape(b, -1)
  z = flat @ params["w"] + params["b"]
  q = _softmax(z)
  ce = np.mean(-np.log(q[:, label]))
  objective = -ce + l2 * np.mean(np.sum(flat ** 2, axis=1))
  onehot = np.eye(z.shape[1])[np.full(b, label)]
  grad = -((q - onehot) @ params["w"].T) / b + 2.0 * l2 * flat / b
  return objective, ce, grad.reshape(noise.shape)


def _tiny_model():
  rng = np.random.default_rng(1)
  return {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=3)}


def _f32(tree):
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), tree)


def test_noise_objective_and_gradient_match_numpy():
  params = _tiny_model()
  noise = np.random.default_rng(2).normal(size=(5, 2, 2, 1))
  apply = models.from_function(_linear)
  fn = lambda n: unsir.noise_objective(apply, _f32(params), {}, n, jnp.int32(1),
                                       jnp.float32(L2))
  (objective, ce), grad = jax.value_and_grad(fn, has_aux=True)(jnp.asarray(noise, jnp.float32))
  want_obj, want_ce, want_grad = _numpy_objective(params, noise, 1, L2)
  np.testing.assert_allclose(float(objective), want_obj, rtol=1e-5)
  np.testing.assert_allclose(float(ce), want_ce, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-4, atol=1e-7)


def _numpy_adam(params, noise, label, steps, lr, l2):
  """torch.optim.Adam (betas 0.9/0.999, eps 1e-8) on the objective, float64: (noise,
  objective before each step)."""
  m, v, trace = np.zeros_like(noise), np.zeros_like(noise), []
  for t in range(1, steps + 1):
    objective, _, g = _numpy_objective(params, noise, label, l2)
    trace.append(objective)
    m = 0.9 * m + 0.1 * g
    v = 0.999 * v + 0.001 * g * g
    noise = noise - lr * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
  return noise, np.array(trace)


def test_noise_adam_steps_match_numpy_and_raise_the_class_ce():
  params = _tiny_model()
  noise0 = np.random.default_rng(3).normal(size=(2, 6, 2, 2, 1))   # classes 0 and 2
  classes = np.array([0, 2])
  steps, lr = 12, 0.1
  optimise = unsir.optimise_noise_fn(models.from_function(_linear), steps)
  noise, objective = optimise(_f32(params), {}, jnp.asarray(noise0, jnp.float32),
                              jnp.asarray(classes, jnp.int32), jnp.float32(lr),
                              jnp.float32(L2))
  assert noise.shape == noise0.shape and objective.shape == (2, steps)
  for k, c in enumerate(classes):
    want_noise, want_trace = _numpy_adam(params, noise0[k], c, steps, lr, L2)
    np.testing.assert_allclose(np.asarray(noise[k]), want_noise, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(objective[k]), want_trace, rtol=1e-4, atol=1e-5)
    ce_before = _numpy_objective(params, noise0[k], c, 0.0)[1]
    ce_after = _numpy_objective(params, np.asarray(noise[k], np.float64), c, 0.0)[1]
    assert ce_after > ce_before + 0.5, (c, ce_before, ce_after)


def test_retain_subset_takes_the_first_per_class_in_index_order():
  labels = np.array([0, 1, 0, 2, 1, 0, 2, 0, 1, 1])
  retain = np.array([9, 7, 5, 4, 3, 2, 1, 0])   # index 6 (class 2) and 8 (class 1) forgotten
  np.testing.assert_array_equal(unsir.retain_subset(labels, retain, 2), [0, 2, 1, 4, 3])
  np.testing.assert_array_equal(unsir.retain_subset(labels, retain, 10),
                                [0, 2, 5, 7, 1, 4, 9, 3])


def _tiny_setup():
  rng = np.random.default_rng(0)
  train = data.Dataset("tiny", rng.integers(0, 256, (40, 2, 2, 1), dtype=np.uint8),
                       np.arange(40, dtype=np.int32) % 3, 3)
  params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32), "b": jnp.zeros(3)}
  split = data.make_split(train, "class", classes=1)
  return train, params, split


CONFIG = {"epochs": 2, "repair_epochs": 2, "batch_size": 8, "noise_steps": 3,
          "noise_copies": 2, "retain_per_class": 6, "lr": 0.01}


_PROGRAMS: dict = {}   # the tiny runs share their compiled epochs (as a population's members)


def _tiny_run(checkpointer=None, stop_at=None):
  """unsir on a linear model; ``stop_at``: raise in the evaluation after that many epochs
  (the epoch is then not checkpointed), as an interruption."""
  train, params, split = _tiny_setup()
  calls = []

  def evaluate_fn(p, s):
    calls.append(1)
    if stop_at is not None and len(calls) == stop_at:
      raise KeyboardInterrupt
    return {"w_sum": float(jnp.sum(p["w"]))}

  return unlearn.run("unsir", apply=models.from_function(_linear), params=params,
                     model_state={}, train=train, split=split, preprocess=normalize_uint8,
                     rng=0, config=CONFIG, progress=False, checkpointer=checkpointer,
                     evaluate=evaluate_fn, programs=_PROGRAMS)


def test_two_phases_history_and_resume_at_every_interruption(tmp_path):
  full = _tiny_run()
  assert [(h["epoch"], h["phase"]) for h in full.history] == [
      (1, "impair"), (2, "impair"), (3, "repair"), (4, "repair")]
  assert full.extras["noise"].shape == (1, 8, 2, 2, 1)
  np.testing.assert_array_equal(full.extras["noise_classes"], [1])
  # Impair data: 2 copies x 8 noise inputs + 6 retain examples of each of classes 0 and 2.
  assert len(full.extras["retain_indices"]) == 12
  assert full.extra_seconds > 0 and full.rte_seconds == pytest.approx(
      full.train_seconds + full.extra_seconds)
  for stop_at in (2, 3, 4, 5):   # mid-impair, impair done, mid-repair, all done (no stop)
    directory = tmp_path / f"stop{stop_at}"
    with checkpoint.Checkpointer(directory) as ckpt:
      with pytest.raises(KeyboardInterrupt):
        if stop_at == 5:
          _tiny_run(ckpt)
          raise KeyboardInterrupt
        _tiny_run(ckpt, stop_at)
      assert ckpt.latest_step() == min(stop_at - 1, 4)
      resumed = _tiny_run(ckpt)
    chex.assert_trees_all_equal(resumed.params, full.params)
    assert [(h["epoch"], h["phase"]) for h in resumed.history] == [
        (h["epoch"], h["phase"]) for h in full.history]
    assert [h["w_sum"] for h in resumed.history] == pytest.approx(
        [h["w_sum"] for h in full.history], rel=1e-6)


FORGET_CLASS = 3


def test_digits_forgets_and_repairs_with_more_repair_epochs(digits_original):
  tt, _, apply, state = digits_original
  split = data.make_split(tt.train, "class", classes=FORGET_CLASS)
  before = accuracies(tt, split, apply, state.params, state.model_state)
  results, programs = {}, {}   # the two runs share the noise program and the impair epoch
  for label, overrides in (("defaults", {}), ("repair_epochs 10", {"repair_epochs": 10})):
    result = unlearn.run("unsir", apply=apply, params=state.params,
                         model_state=state.model_state, train=tt.train, split=split,
                         preprocess=normalize_uint8, rng=0, config=overrides, progress=False,
                         programs=programs)
    chex.assert_trees_all_equal_shapes_and_dtypes(result.params, state.params)
    chex.assert_tree_all_finite(result.params)
    assert [h["phase"] for h in result.history] == (
        ["impair"] + ["repair"] * result.config.repair_epochs)
    assert result.extras["noise"].shape == (1, 256, 8, 8, 1)
    assert result.extra_seconds > 0
    results[label] = after = accuracies(tt, split, apply, result.params, result.model_state)
    print(f"\nunsir {label}: RTE {result.rte_seconds:.3f} s (noise "
          f"{result.extra_seconds:.3f} s), compile {result.compile_seconds:.2f} s; "
          f"before {before}; after {after}")
  assert before["forget_acc"] > 95.0
  # At the notebook's defaults (impair Adam 0.02 on 80 % noise, one repair epoch = 5 steps on
  # digits' ~1300 retain examples) the class is gone but so is most of the model.
  assert results["defaults"]["forget_acc"] < 5.0
  assert results["defaults"]["retain_acc"] < 60.0
  repaired = results["repair_epochs 10"]
  assert repaired["forget_acc"] < 5.0
  assert repaired["retain_acc"] > 85.0 and repaired["test_acc"] > 75.0
