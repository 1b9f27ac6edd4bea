"""Preprocessing: the default conventions, augmentation and normalisation."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcu_jax import preprocess
from mcu_jax.errors import InvalidArgument


def _batch(shape=(8, 6, 5, 3), seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


def test_crop_and_flip_shapes_dtypes_determinism():
  images = _batch()
  key1, key2 = jax.random.key(1), jax.random.key(2)
  crop = jax.jit(preprocess.random_crop, static_argnums=2)
  flip = jax.jit(preprocess.random_flip)
  for fn in (lambda k: crop(k, images, 2), lambda k: flip(k, images)):
    out = fn(key1)
    chex.assert_shape(out, images.shape)
    chex.assert_type(out, jnp.uint8)
    chex.assert_trees_all_equal(out, fn(key1))
    assert not np.array_equal(out, fn(key2))


def test_crop_is_a_shifted_window():
  images = _batch((16, 6, 5, 1))
  out = np.asarray(preprocess.random_crop(jax.random.key(0), images, 1))
  padded = np.pad(np.asarray(images), ((0, 0), (1, 1), (1, 1), (0, 0)))
  shifts = set()
  for i in range(len(out)):
    hits = [(dy, dx) for dy in range(3) for dx in range(3)
            if np.array_equal(out[i], padded[i, dy:dy + 6, dx:dx + 5])]
    assert hits, f"example {i} is not a window of its padded image"
    shifts.add(hits[0])
  assert len(shifts) > 1      # offsets are drawn per example


def test_crop_padding_zero_is_identity():
  images = _batch()
  chex.assert_trees_all_equal(preprocess.random_crop(jax.random.key(0), images, 0), images)
  with pytest.raises(ValueError):
    preprocess.random_crop(jax.random.key(0), images, -1)


def test_flip_twice_is_identity_and_per_example():
  images = _batch((32, 4, 5, 2))
  key = jax.random.key(3)
  once = preprocess.random_flip(key, images)
  chex.assert_trees_all_equal(preprocess.random_flip(key, once), images)
  flipped = [not np.array_equal(once[i], images[i]) for i in range(32)]
  assert 0 < sum(flipped) < 32
  for i in range(32):
    expected = images[i, :, ::-1] if flipped[i] else images[i]
    np.testing.assert_array_equal(once[i], expected)


def test_normalize():
  images = _batch((2, 3, 3, 3))
  mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 1.0)
  out = jax.jit(preprocess.normalize, static_argnums=(1, 2))(images, mean, std)
  chex.assert_type(out, jnp.float32)
  expected = (np.asarray(images, np.float32) / 255.0 - np.array(mean)) / np.array(std)
  np.testing.assert_allclose(out, expected, rtol=1e-6)
  with pytest.raises(ValueError, match="channels"):
    preprocess.normalize(_batch((2, 3, 3, 1)), mean, std)   # 3 means for 1 channel


def test_make_preprocess():
  images = _batch()
  mean, std = (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)
  pre = preprocess.make_preprocess(mean, std, padding=2)
  evaluate = jax.jit(lambda x: pre(None, x))
  out = evaluate(images)
  chex.assert_shape(out, images.shape)
  chex.assert_type(out, jnp.float32)
  chex.assert_trees_all_close(out, preprocess.normalize(images, mean, std), atol=1e-6)
  train = jax.jit(pre)
  a, b = train(jax.random.key(0), images), train(jax.random.key(1), images)
  chex.assert_type(a, jnp.float32)
  chex.assert_trees_all_equal(a, train(jax.random.key(0), images))
  assert not np.allclose(a, b) and not np.allclose(a, out)
  off = preprocess.make_preprocess(mean, std, augment=False)
  chex.assert_trees_all_close(off(jax.random.key(0), images), out, atol=1e-6)
  # Hashable by value, so jit caches keyed on it (evaluate's static preprocess) are reused.
  assert pre == preprocess.make_preprocess(list(mean), np.array(std), padding=2)
  assert hash(pre) == hash(preprocess.make_preprocess(mean, std, padding=2))
  digits_pre = preprocess.make_preprocess(0.3, 0.37, flip=False, padding=1)
  chex.assert_shape(digits_pre(jax.random.key(0), _batch((4, 8, 8, 1))), (4, 8, 8, 1))
  with pytest.raises(ValueError):
    preprocess.make_preprocess(mean, (0.2, 0.0, 0.2))


def test_default_preprocess_refuses_uint8_and_passes_the_rest_unchanged():
  images = _batch((2, 3, 3, 1))
  with pytest.raises(InvalidArgument, match="inputs: uint8 arrays are images to divide by 255 or "
                                            "integer ids to pass unchanged; say which with "
                                            r"preprocess=mcu_jax.preprocess.images"):
    preprocess.default_preprocess(None, images)
  out = preprocess.images(None, images)                      # said: images
  chex.assert_type(out, jnp.float32)
  np.testing.assert_allclose(np.asarray(out), np.asarray(images, np.float64) / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(preprocess.as_is(None, images)), images)   # said: ids
  features = np.random.default_rng(0).normal(size=(4, 7)).astype(np.float32) * 40.0
  np.testing.assert_array_equal(np.asarray(preprocess.default_preprocess(None, features)),
                                features)        # float inputs are never rescaled
  half = features.astype(np.float16)
  chex.assert_type(preprocess.default_preprocess(None, half), jnp.float16)
  ids = np.arange(6, dtype=np.int32).reshape(2, 3) * 100    # integer ids reach the model as is
  np.testing.assert_array_equal(np.asarray(preprocess.default_preprocess(None, ids)), ids)
  with pytest.raises(InvalidArgument, match="got bool"):
    preprocess.default_preprocess(None, np.zeros((2, 3), bool))


def test_uint8_only_normalisations_refuse_float_input():
  features = np.ones((2, 3, 3, 1), np.float32)
  with pytest.raises(InvalidArgument, match="normalize_uint8 takes uint8 images.*float32"):
    preprocess.normalize_uint8(None, features)
  with pytest.raises(InvalidArgument, match="normalize takes uint8 images"):
    preprocess.normalize(features, 0.5, 0.2)
  with pytest.raises(TypeError):      # InvalidArgument is a TypeError too
    jax.jit(lambda x: preprocess.make_preprocess(0.5, 0.2)(None, x))(features)
  np.testing.assert_allclose(np.asarray(preprocess.normalize_uint8(None, _batch((1, 2, 2, 1)))),
                             np.asarray(_batch((1, 2, 2, 1)), np.float32) / 255.0)
