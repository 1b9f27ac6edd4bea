import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcu_jax import beta as beta_lib


def python_rule(fa, ra, ft, rt, low=0.01, high=0.5):
  if fa <= ft:
    return 0.0
  forget_ratio = float("inf") if ft == 0 else (fa - ft) / ft
  return low if forget_ratio < (ra - rt) / rt else high


ACCS = [0.0, 5.0, 50.0, 80.0, 85.0, 89.9, 90.0, 90.1, 95.0, 99.0, 100.0]
TARGETS = [(0.0, 100.0), (0.0, 95.0), (90.0, 99.0), (85.0, 100.0), (50.0, 60.0)]


def test_adaptive_beta_matches_python_rule_on_grid():
  cases = list(itertools.product(ACCS, ACCS, TARGETS))
  fa = jnp.array([c[0] for c in cases])
  ra = jnp.array([c[1] for c in cases])
  ft = jnp.array([c[2][0] for c in cases])
  rt = jnp.array([c[2][1] for c in cases])
  got = np.asarray(jax.jit(jax.vmap(beta_lib.adaptive_beta))(fa, ra, ft, rt))
  want = np.array([python_rule(a, r, t[0], t[1]) for a, r, t in cases], np.float32)
  np.testing.assert_array_equal(got, want)
  assert set(np.unique(got)) == set(np.float32([0.0, 0.01, 0.5]))  # every branch is exercised


def test_class_forgetting_target_zero():
  assert float(beta_lib.adaptive_beta(0.0, 90.0, 0.0, 95.0)) == 0.0
  assert float(beta_lib.adaptive_beta(0.1, 99.9, 0.0, 95.0)) == 0.5


def test_policies():
  policy = beta_lib.AdaptiveBeta(forget_target=90.0, retain_target=99.0, low=0.02, high=0.7)
  # (95-90)/90 = 5.6% is not below (99.5-99)/99 = 0.5%: high.
  assert float(policy(95.0, 99.5)) == pytest.approx(0.7)
  # (90.5-90)/90 = 0.56% is below (100-99)/99 = 1.01%: low.
  assert float(policy(90.5, 100.0)) == pytest.approx(0.02)
  assert float(policy(89.0, 100.0)) == 0.0
  assert float(beta_lib.FixedBeta(0.3)(10.0, 10.0)) == pytest.approx(0.3)
  with pytest.raises(ValueError, match="retain_target"):
    beta_lib.AdaptiveBeta(forget_target=10.0, retain_target=0.0)
  with pytest.raises(ValueError, match="percent"):
    beta_lib.AdaptiveBeta(forget_target=0.9, retain_target=120.0)
