"""The base methods' per-batch losses (mcu_jax.unlearn.losses): random wrong labels and
SCRUB's distillation KL."""
import jax
import jax.numpy as jnp
import numpy as np

from mcu_jax import unlearn


def test_random_wrong_labels_are_uniform_over_the_other_classes():
  labels = jnp.asarray(np.arange(20000) % 10, jnp.int32)
  drawn = np.asarray(unlearn.random_wrong_labels(jax.random.PRNGKey(0), labels, 10))
  assert not np.any(drawn == np.asarray(labels))
  assert drawn.min() >= 0 and drawn.max() <= 9
  counts = np.bincount(drawn[np.asarray(labels) == 4], minlength=10)
  assert counts[4] == 0 and counts[np.arange(10) != 4].min() > 170   # ~222 each
  again = unlearn.random_wrong_labels(jax.random.PRNGKey(1), labels, 10)
  assert np.mean(np.asarray(again) == drawn) < 0.2


def test_distill_kl_matches_its_definition():
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(5, 7)).astype(np.float32), rng.normal(size=(5, 7)).astype(np.float32)
  T = 4.0
  ps = np.exp(s / T) / np.exp(s / T).sum(-1, keepdims=True)
  pt = np.exp(t / T) / np.exp(t / T).sum(-1, keepdims=True)
  np.testing.assert_allclose(unlearn.distill_kl(s, t, T),
                             T * T * np.sum(pt * np.log(pt / ps), -1), rtol=1e-5)
  np.testing.assert_allclose(unlearn.distill_kl(t, t, T), 0.0, atol=1e-6)
