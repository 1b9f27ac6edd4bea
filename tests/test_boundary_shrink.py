"""Boundary Shrink (mcu_jax.unlearn.boundary_shrink): the PGD attack against a float64 NumPy
re-implementation, the relabelling of a hand-built case, the preprocess check, and class-3
forgetting on digits."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _digits import accuracies

from mcu_jax import data, models, unlearn
from mcu_jax.errors import InvalidArgument
from mcu_jax.preprocess import as_is, make_preprocess, normalize_uint8
from mcu_jax.runtime import batchnorm
from mcu_jax.unlearn import boundary_shrink as bs


def _linear(params, x):
  return x.reshape(x.shape[0], -1) @ params["w"] + params["b"]


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _numpy_pgd(params, pixels, labels, mean, std, bound, step, steps):
  """float64 LinfPGD of the paper's adv_generator.py on the linear model: signed CE-gradient
  steps in pixel space, delta clipped to the bound, [0, 1] clipping, rounding to 1/255."""
  b = pixels.shape[0]
  x = pixels.copy()
  for _ in range(steps):
    z = ((x - mean) / std).reshape(b, -1) @ params["w"] + params["b"]
    dz = _softmax(z) - np.eye(z.shape[1])[labels]
    grad = ((dz @ params["w"].T).reshape(x.shape)) / std      # chain rule through the norm
    x = x + step * np.sign(grad)
    x = np.clip(pixels + np.clip(x - pixels, -bound, bound), 0.0, 1.0)
    x = np.round(x * 255.0) / 255.0
  return x


@pytest.mark.parametrize("normalised", [False, True])
def test_attack_matches_numpy_float64(normalised):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (6, 2, 2, 3), dtype=np.uint8)
  images[0] = 0     # pushed below 0 and clipped
  images[1] = 255   # pushed above 1 and clipped
  labels = rng.integers(0, 4, 6)
  params = {"w": rng.normal(size=(12, 4)), "b": rng.normal(size=4)}
  if normalised:
    pre = make_preprocess((0.4, 0.5, 0.6), (0.2, 0.25, 0.3), augment=False)
    mean, std = np.array(pre.mean), np.array(pre.std)
  else:
    pre, mean, std = normalize_uint8, 0.0, 1.0
  norm = bs.pixel_norm(pre)
  assert norm == (None if not normalised else ((0.4, 0.5, 0.6), (0.2, 0.25, 0.3)))
  pixels = images.astype(np.float64) / 255.0
  # bound 0.05 = 12.75 grey levels: no rounding ties; 3 steps of 8/255 exceed it (projection).
  bound, step, steps = 0.05, 8 / 255, 3
  want = _numpy_pgd(params, pixels, labels, mean, std, bound, step, steps)
  f32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  got = bs.pgd_attack(models.from_function(_linear), f32, {},
                      jnp.asarray(images, jnp.float32) / 255.0, jnp.asarray(labels), norm,
                      jnp.float32(bound), jnp.float32(step), steps)
  np.testing.assert_array_equal(np.round(np.asarray(got, np.float64) * 255), np.round(want * 255))
  moved = np.abs(want - pixels)
  # Projected: 3 steps would move 24 grey levels, the bound allows 12.75, rounded to 13.
  assert moved.max() == pytest.approx(13 / 255)
  assert np.all(want[0] <= 13 / 255) and np.all(want[1] >= 242 / 255)
  # The pre-attack model inputs are exactly what the preprocess makes of the images.
  np.testing.assert_allclose(np.asarray(bs._normalize(jnp.asarray(pixels, jnp.float32), norm)),
                             np.asarray(pre(None, jnp.asarray(images))), atol=1e-6)


def _centres(params, x):
  """One pixel p in [0, 1], three classes with logits -50 (p - c_k)^2, c = (0.1, 0.5, 0.9):
  the class whose centre is nearest wins; boundaries at 0.3 and 0.7."""
  return -50.0 * (x.reshape(x.shape[0], 1) - params["c"]) ** 2


def test_relabelling_of_a_hand_built_case():
  # p = 61/255 (class 0) is pushed up by the bound (0.1) to ~0.34: class 1. p = 194/255
  # (class 2) is pushed down to ~0.66: class 1. p = 127/255 (class 1) is 0.2 away from both
  # boundaries and stays in class 1. p = 13/255 (class 0) is pushed up to ~0.15: still class 0
  # (the attack fails and the label is its own).
  pixels = np.array([61, 194, 127, 13], np.uint8)
  images = pixels.reshape(4, 1, 1, 1)
  labels = np.array([0, 2, 1, 0], np.int32)
  params = {"c": jnp.asarray([0.1, 0.5, 0.9], jnp.float32)}
  apply = models.from_function(_centres)
  logits = _centres(params, jnp.asarray(images, jnp.float32) / 255.0)
  np.testing.assert_array_equal(np.argmax(np.asarray(logits), -1), labels)
  batches = data.padded_batches({"images": images, "labels": labels}, 3)   # 2 batches, 2 filler
  relabel = bs.neighbour_labels_fn(apply, None, 5)
  got = relabel(params, {}, batches, jnp.float32(0.1), jnp.float32(8 / 255))
  assert got.shape == (6,)
  np.testing.assert_array_equal(np.asarray(got)[:4], [1, 1, 1, 0])


def _tiny(preprocess, **config):
  rng = np.random.default_rng(0)
  train = data.Dataset("tiny", rng.integers(0, 256, (12, 2, 2, 1), dtype=np.uint8),
                       np.arange(12, dtype=np.int32) % 3, 3)
  params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32), "b": jnp.zeros(3)}
  split = data.make_split(train, "class", classes=0)
  return unlearn.run("boundary_shrink", apply=models.from_function(_linear), params=params,
                     model_state={}, train=train, split=split, preprocess=preprocess, rng=0,
                     config=config, progress=False)


def test_refuses_a_preprocess_it_cannot_invert():
  for pre in (as_is, lambda key, x: x.astype(jnp.float32) / 255.0):
    with pytest.raises(InvalidArgument, match="pixel space"):
      bs.pixel_norm(pre)
    with pytest.raises(InvalidArgument, match="preprocess"):
      _tiny(pre)
  result = _tiny(make_preprocess(0.5, 0.25, augment=False), epochs=1, batch_size=4)
  assert result.extras["neighbour_labels"].shape == (4,)
  assert result.extra_seconds > 0 and len(result.history) == 1


FORGET_CLASS = 3


def _max_change(a, b):
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a),
                                                             jax.tree.leaves(b)))


def test_digits_defaults_forget_through_batchnorm_statistics_only(digits_original):
  tt, _, apply, state = digits_original
  split = data.make_split(tt.train, "class", classes=FORGET_CLASS)
  before = accuracies(tt, split, apply, state.params, state.model_state)
  results, programs = {}, {}
  for label, overrides in (("defaults", {}), ("lr 0.01", {"lr": 0.01})):
    result = unlearn.run("boundary_shrink", apply=apply, params=state.params,
                         model_state=state.model_state, train=tt.train, split=split,
                         preprocess=normalize_uint8, rng=0, config=overrides, progress=False,
                         programs=programs)
    chex.assert_trees_all_equal_shapes_and_dtypes(result.params, state.params)
    assert len(result.history) == 10 and result.extra_seconds > 0
    assert result.rte_seconds == pytest.approx(result.train_seconds + result.extra_seconds)
    neighbours = result.extras["neighbour_labels"]
    assert neighbours.shape == (len(split.forget),)
    results[label] = after = accuracies(tt, split, apply, result.params, result.model_state)
    print(f"\nboundary_shrink {label}: RTE {result.rte_seconds:.3f} s (relabel "
          f"{result.extra_seconds:.3f} s), compile {result.compile_seconds:.2f} s; neighbours "
          f"{np.bincount(neighbours, minlength=10).tolist()}; before {before}; after {after}")
    results[label + " result"] = result
  assert before["forget_acc"] > 95.0
  # The attack moves most forget examples across a boundary (bound 0.1 on 8x8 digits).
  assert np.mean(results["defaults result"].extras["neighbour_labels"] != FORGET_CLASS) > 0.8
  # Defaults (SGD 1e-5, 10 epochs of 2 steps): the weights hardly move, yet the forget accuracy
  # falls, because the training-mode passes over class-3-only batches drag BatchNorm's running
  # statistics: theta_o's weights with the new statistics forget as much, and the new weights
  # with statistics recomputed on D_r forget nothing.
  default = results["defaults result"]
  assert _max_change(default.params, state.params) < 1e-3
  assert results["defaults"]["forget_acc"] < 60.0 and results["defaults"]["retain_acc"] > 80.0
  old_weights = accuracies(tt, split, apply, state.params, default.model_state)
  assert old_weights["forget_acc"] == pytest.approx(results["defaults"]["forget_acc"], abs=3.0)
  recalibrated = batchnorm.recalibrate_batch_stats(
      apply, default.params, default.model_state, tt.train.images[split.retain],
      preprocess=normalize_uint8)
  assert accuracies(tt, split, apply, default.params, recalibrated)["forget_acc"] > 95.0
  # At lr 0.01 the weights move too and the class is forgotten with the rest kept.
  assert results["lr 0.01"]["forget_acc"] < 30.0
  assert results["lr 0.01"]["retain_acc"] > 85.0 and results["lr 0.01"]["test_acc"] > 75.0
