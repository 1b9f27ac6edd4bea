"""IU (mcu_jax.unlearn.influence): v and the WoodFisher recursion of Wfisher.py against float64
NumPy on a linear softmax model, bad input, and class-3 forgetting on digits."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _digits import accuracies

from mcu_jax import data, models, unlearn
from mcu_jax.errors import InvalidArgument
from mcu_jax.preprocess import normalize_uint8
from mcu_jax.unlearn import influence

FEATURES, CLASSES = 3, 3


def linear(params, x):
  return x.reshape(x.shape[0], -1) @ params["w"] + params["b"]


def tiny_problem(seed=0, n=13, forget=(1, 4, 6, 9, 12)):
  """13 examples of 3 features (1x1x3 uint8 images), 5 forget and 8 retain; float32 params of
  a linear softmax model."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(n, 1, 1, FEATURES), dtype=np.uint8)
  labels = rng.integers(0, CLASSES, size=n).astype(np.int32)
  train = data.Dataset("tiny", images, labels, CLASSES)
  forget = np.array(forget)
  split = data.ForgetSplit(forget, np.setdiff1d(np.arange(n), forget), "random")
  params = {"w": rng.normal(size=(FEATURES, CLASSES)).astype(np.float32),
            "b": rng.normal(size=CLASSES).astype(np.float32)}
  return train, split, params


def mean_ce_grad(params, images, labels):
  """Closed-form gradient of the mean CE of the linear model, float64, flat as [b, w] (the
  params dict's tree order)."""
  x = images.reshape(len(labels), -1).astype(np.float64) / 255.0
  logits = x @ params["w"].astype(np.float64) + params["b"].astype(np.float64)
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  delta = (p - np.eye(CLASSES)[labels]) / len(labels)
  return np.concatenate([delta.sum(0), (x.T @ delta).ravel()])


def as_tree(flat):
  return {"b": flat[:CLASSES], "w": flat[CLASSES:].reshape(FEATURES, CLASSES)}


def numpy_wfisher(params, train, split, batch_size, n_samples, stop=True):
  """Wfisher.py's non-ImageNet branch in float64: (v, k). ``stop=False`` drops the code's
  ``if idx > N: return`` (to show that it matters)."""
  def summed(indices):
    total = 0.0
    for start in range(0, len(indices), batch_size):
      chunk = indices[start:start + batch_size]
      total = total + mean_ce_grad(params, train.images[chunk], train.labels[chunk]) * len(chunk)
    return total
  n_f, n_r = len(split.forget), len(split.retain)
  forget_grad = summed(split.forget) / (n_f + n_r)
  retain_grad = summed(split.retain) * (n_f / ((n_f + n_r) * n_r))
  v = forget_grad - retain_grad
  k, o = v.copy(), None
  for idx, i in enumerate(split.retain):
    g = mean_ce_grad(params, train.images[i:i + 1], train.labels[i:i + 1])
    if o is None:
      o = g.copy()
    else:
      tmp = o @ g
      k -= (k @ g / (n_samples + tmp)) * o
      o -= (tmp / (n_samples + tmp)) * o
    if stop and idx > n_samples:
      break
  return v, k


def run_tiny(train, split, params, **config):
  return unlearn.run("iu", apply=models.from_function(linear), params=params, model_state={},
                     train=train, split=split, preprocess=normalize_uint8, rng=0,
                     config=config, progress=False)


def check_against_numpy(result, params, v, k, alpha):
  for key in params:
    np.testing.assert_allclose(result.extras["direction"][key], as_tree(v)[key], rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(result.extras["perturbation"][key], as_tree(k)[key], rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(result.params[key], params[key] + alpha * as_tree(k)[key],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", [64, 2])
def test_direction_and_recursion_match_numpy_with_early_stop(monkeypatch, chunk):
  """N = 3 over 8 retain examples: the recursion stops after index N + 1 = 4 (5 examples).
  Chunks of 2 also exercise several chunks and a padded last one."""
  monkeypatch.setattr(influence, "CHUNK", chunk)
  train, split, params = tiny_problem()
  alpha, batch, n_samples = 0.7, 3, 3
  result = run_tiny(train, split, params, alpha=alpha, batch_size=batch,
                    woodfisher_samples=n_samples)
  v, k = numpy_wfisher(params, train, split, batch, n_samples)
  _, k_all = numpy_wfisher(params, train, split, batch, n_samples, stop=False)
  # The case discriminates: the recursion moves k away from v, and the stop changes it.
  assert np.linalg.norm(k - v) > 0.05 * np.linalg.norm(v)
  assert np.linalg.norm(k - k_all) > 0.01 * np.linalg.norm(k)
  check_against_numpy(result, params, v, k, alpha)
  assert result.model_state == {} and result.history == [] and result.train_seconds == 0.0
  assert result.rte_seconds == result.extra_seconds > 0.0


def test_fewer_retain_examples_than_n_plus_2_uses_them_all():
  train, split, params = tiny_problem()
  alpha, batch, n_samples = 0.3, 4, 10   # 8 retain examples < N + 2 = 12
  result = run_tiny(train, split, params, alpha=alpha, batch_size=batch,
                    woodfisher_samples=n_samples)
  v, k = numpy_wfisher(params, train, split, batch, n_samples, stop=False)
  check_against_numpy(result, params, v, k, alpha)


def test_scan_and_host_loop_drivers_agree():
  """The accelerator driver (one scan over chunks) against the CPU's host loop."""
  train, split, params = tiny_problem()
  retain = data.subset_arrays(train, split.retain)
  chunks = influence._recursion_chunks(retain, 1000)
  chunks = jax.tree.map(jnp.asarray, chunks)
  v = jnp.arange(12, dtype=jnp.float32) / 12.0
  apply = models.from_function(linear)
  out = {loop: influence.woodfisher_fn(apply, normalize_uint8, loop)(
      (v, jnp.zeros_like(v)), params, {}, chunks, jnp.float32(2.0)) for loop in ("scan", "python")}
  np.testing.assert_allclose(out["scan"][0], out["python"][0], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(out["scan"][1], out["python"][1], rtol=1e-6, atol=1e-7)
  assert float(jnp.linalg.norm(out["scan"][0] - v)) > 1e-3


def test_bad_input_raises():
  train, split, params = tiny_problem()
  with pytest.raises(InvalidArgument, match="IUConfig.alpha"):
    run_tiny(train, split, params, alpha=0.0)
  with pytest.raises(InvalidArgument, match="IUConfig.woodfisher_samples"):
    run_tiny(train, split, params, woodfisher_samples=0)
  bad = dict(params, w=np.zeros((FEATURES, CLASSES), np.int32))
  with pytest.raises(InvalidArgument, match=r"params: iu .*floating.*int32 at \['w'\]"):
    run_tiny(train, split, bad)


def _accuracies(tt, apply, split, params, state):
  """(forget, retain, test) accuracy in percent."""
  return tuple(accuracies(tt, split, apply, params, state).values())


def test_digits_class_forgetting(digits_original):
  """At the defaults (alpha 0.2, N 1000, batch 256) IU unlearns class 3 on digits (about FA
  98.6 -> 5, RA 98.5 -> 91; the test set holds class 3 too); alpha 0.1 is gentler (FA about
  64, RA about 97)."""
  tt, _, apply, state = digits_original
  split = data.make_split(tt.train, "class", classes=3)
  run = lambda **config: unlearn.run(
      "iu", apply=apply, params=state.params, model_state=state.model_state, train=tt.train,
      split=split, preprocess=normalize_uint8, rng=0, config=config, progress=False)
  fa0, ra0, _ = _accuracies(tt, apply, split, state.params, state.model_state)
  assert fa0 > 95.0 and ra0 > 95.0

  default = run()
  fa, ra, ta = _accuracies(tt, apply, split, default.params, default.model_state)
  assert fa < 20.0 and ra > 85.0 and ta > 70.0
  assert jax.tree.all(jax.tree.map(np.array_equal, default.model_state, state.model_state))

  gentle = run(alpha=0.1)
  fa, ra, _ = _accuracies(tt, apply, split, gentle.params, gentle.model_state)
  assert fa < fa0 - 20.0 and ra > 95.0
