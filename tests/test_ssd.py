"""SSD (mcu_jax.unlearn.ssd): the importances and the dampening against float64 NumPy on a
linear softmax model, bad input, and class-3 forgetting on digits."""
import jax
import numpy as np
import pytest
from _digits import accuracies

from mcu_jax import data, models, unlearn
from mcu_jax.errors import InvalidArgument, NonFiniteError
from mcu_jax.preprocess import normalize_uint8

FEATURES, CLASSES = 3, 3


def linear(params, x):
  return x.reshape(x.shape[0], -1) @ params["w"] + params["b"]


def tiny_problem(seed=0, n=13, forget=(1, 4, 6, 9, 12)):
  """13 examples of 3 features (1x1x3 uint8 images), D_f not contiguous so that D = D_r then D_f
  differs from index order; float32 params of a linear softmax model."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(n, 1, 1, FEATURES), dtype=np.uint8)
  labels = rng.integers(0, CLASSES, size=n).astype(np.int32)
  train = data.Dataset("tiny", images, labels, CLASSES)
  forget = np.array(forget)
  split = data.ForgetSplit(forget, np.setdiff1d(np.arange(n), forget), "random")
  params = {"w": rng.normal(size=(FEATURES, CLASSES)).astype(np.float32),
            "b": rng.normal(size=CLASSES).astype(np.float32)}
  return train, split, params


def mean_ce_grads(params, images, labels):
  """Closed-form gradient of the mean CE of a linear softmax model, float64."""
  x = images.reshape(len(labels), -1).astype(np.float64) / 255.0
  logits = x @ params["w"].astype(np.float64) + params["b"].astype(np.float64)
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  delta = (p - np.eye(CLASSES)[labels]) / len(labels)
  return {"w": x.T @ delta, "b": delta.sum(0)}


def numpy_importance(params, images, labels, batch_size):
  """The SSD code's calc_importance: mean over batches (the last one partial) of squared
  batch-mean-CE gradients."""
  batches = range(0, len(labels), batch_size)
  total = {k: np.zeros(v.shape) for k, v in params.items()}
  for start in batches:
    g = mean_ce_grads(params, images[start:start + batch_size], labels[start:start + batch_size])
    for key in total:
      total[key] += g[key] ** 2
  return {k: v / len(batches) for k, v in total.items()}


def run_tiny(train, split, params, **config):
  return unlearn.run("ssd", apply=models.from_function(linear), params=params, model_state={},
                     train=train, split=split, preprocess=normalize_uint8, rng=0,
                     config=config, progress=False)


def test_importances_and_dampening_match_numpy():
  train, split, params = tiny_problem()
  alpha, lam, batch = 1.5, 0.5, 4
  result = run_tiny(train, split, params, alpha=alpha, lam=lam, batch_size=batch)

  f = split.forget
  d = np.concatenate([split.retain, split.forget])   # ConcatDataset((retain, forget))
  fimp = numpy_importance(params, train.images[f], train.labels[f], batch)
  oimp = numpy_importance(params, train.images[d], train.labels[d], batch)
  for key in params:
    np.testing.assert_allclose(result.extras["forget_importance"][key], fimp[key], rtol=1e-4,
                               atol=1e-9)
    np.testing.assert_allclose(result.extras["original_importance"][key], oimp[key],
                               rtol=1e-4, atol=1e-9)
    # No entry is within float32 noise of the threshold, so the selection is exact.
    margin = np.abs(fimp[key] - alpha * oimp[key]) / np.maximum(fimp[key], 1e-12)
    assert margin.min() > 1e-3
    selected = fimp[key] > alpha * oimp[key]
    np.testing.assert_array_equal(result.extras["selected"][key], selected)
    factor = np.where(selected, np.minimum(lam * oimp[key] / np.where(selected, fimp[key], 1),
                                           1.0), 1.0)
    np.testing.assert_allclose(result.params[key], params[key].astype(np.float64) * factor,
                               rtol=1e-4, atol=1e-7)
  n_selected = sum(int(np.sum(s)) for s in jax.tree.leaves(result.extras["selected"]))
  assert 0 < n_selected < 12   # both branches are exercised
  # Some selected weight is dampened by less than the cap of 1, some maybe capped: at least
  # one strictly shrinks.
  assert any(np.any(np.abs(np.asarray(result.params[k])) < np.abs(params[k]) - 1e-6)
             for k in params)
  assert result.model_state == {} and result.history == [] and result.train_seconds == 0.0
  assert result.rte_seconds == result.extra_seconds > 0.0


def test_bad_input_raises():
  train, split, params = tiny_problem()
  with pytest.raises(InvalidArgument, match="SSDConfig.alpha"):
    run_tiny(train, split, params, alpha=0.0)
  with pytest.raises(InvalidArgument, match="SSDConfig.lam"):
    run_tiny(train, split, params, lam=-1.0)
  bad = dict(params, b=np.zeros(CLASSES, np.int32))
  with pytest.raises(InvalidArgument, match=r"params: .*floating.*int32 at \['b'\]"):
    run_tiny(train, split, bad)
  # no epochs, so no trainer to stop it: unlearn.run refuses a non-finite result itself
  nan = dict(params, b=np.full(CLASSES, np.nan, np.float32))
  with pytest.raises(NonFiniteError, match="ssd: the unlearned model holds NaN"):
    run_tiny(train, split, nan)


def _accuracies(tt, apply, split, params, state):
  """(forget, retain, test) accuracy in percent."""
  return tuple(accuracies(tt, split, apply, params, state).values())


def test_digits_class_forgetting(digits_original):
  """At the defaults (alpha 10, lam 1) SSD unlearns class 3 on digits (about FA 98.6 -> 69,
  RA 98.5 -> 95). The selection is a cliff on this model: alpha 9 dampens so many weights that
  the model collapses, alpha 12 selects none and changes nothing."""
  tt, _, apply, state = digits_original
  split = data.make_split(tt.train, "class", classes=3)
  run = lambda **config: unlearn.run(
      "ssd", apply=apply, params=state.params, model_state=state.model_state, train=tt.train,
      split=split, preprocess=normalize_uint8, rng=0, config=config, progress=False)
  fa0, ra0, _ = _accuracies(tt, apply, split, state.params, state.model_state)
  assert fa0 > 95.0 and ra0 > 95.0

  default = run()
  fa, ra, ta = _accuracies(tt, apply, split, default.params, default.model_state)
  assert fa < fa0 - 20.0 and ra > 90.0 and ta > 85.0
  assert default.model_state is state.model_state or jax.tree.all(jax.tree.map(
      np.array_equal, default.model_state, state.model_state))

  collapsed = run(alpha=9.0)
  assert _accuracies(tt, apply, split, collapsed.params, collapsed.model_state)[1] < 50.0
  untouched = run(alpha=12.0)
  assert not any(np.any(s) for s in jax.tree.leaves(untouched.extras["selected"]))
  assert jax.tree.all(jax.tree.map(np.array_equal, untouched.params, state.params))
