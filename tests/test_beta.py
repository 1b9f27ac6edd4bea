import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcu_jax.core import beta as beta_lib


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
  rule = lambda fa, ra, ft, rt: beta_lib.adaptive_beta(
      fa, ra, targets=beta_lib.Targets(retain=rt, forget=ft))
  got = np.asarray(jax.jit(jax.vmap(rule))(fa, ra, ft, rt))
  want = np.array([python_rule(a, r, t[0], t[1]) for a, r, t in cases], np.float32)
  np.testing.assert_array_equal(got, want)
  assert set(np.unique(got)) == set(np.float32([0.0, 0.01, 0.5]))  # every branch is exercised


def test_class_forgetting_target_zero():
  targets = beta_lib.Targets(retain=95.0, forget=0.0)
  assert float(beta_lib.adaptive_beta(0.0, 90.0, targets=targets)) == 0.0
  assert float(beta_lib.adaptive_beta(0.1, 99.9, targets=targets)) == 0.5


def accs(forget, retain):
  return {"forget_acc": forget, "retain_acc": retain}


def test_policies():
  policy = beta_lib.AdaptiveBeta(targets=beta_lib.Targets(retain=99.0, forget=90.0), low=0.02,
                                 high=0.7)
  # (95-90)/90 = 5.6% is not below (99.5-99)/99 = 0.5%: high.
  assert float(policy(accs(95.0, 99.5))) == pytest.approx(0.7)
  # (90.5-90)/90 = 0.56% is below (100-99)/99 = 1.01%: low.
  assert float(policy(accs(90.5, 100.0))) == pytest.approx(0.02)
  assert float(policy(accs(89.0, 100.0))) == 0.0
  assert float(beta_lib.FixedBeta(0.3)(accs(10.0, 10.0))) == pytest.approx(0.3)
  assert float(jax.jit(lambda m: policy(m))(accs(95.0, 99.5))) == pytest.approx(0.7)


def test_targets_are_named_keyword_only_and_in_percent():
  targets = beta_lib.alignment_targets(train_acc=99.5, test_acc=94.0, scenario="random")
  assert targets == beta_lib.Targets(retain=99.5, forget=94.0)
  assert (targets.retain, targets.forget) == (99.5, 94.0)
  assert beta_lib.alignment_targets(train_acc=99.5, test_acc=94.0, scenario="class") == (
      beta_lib.Targets(retain=99.5, forget=0.0))
  with pytest.raises(TypeError):
    beta_lib.AdaptiveBeta(targets)                     # positional
  with pytest.raises(TypeError):
    beta_lib.alignment_targets(99.5, 94.0, "random")  # positional
  with pytest.raises(beta_lib.InvalidArgument, match="AdaptiveBeta.targets: expected "
                                                     r"mcu_jax.Targets\(retain=..., forget=...\)"):
    beta_lib.AdaptiveBeta(targets=(94.0, 99.5))       # a bare tuple's order is ambiguous
  with pytest.raises(ValueError, match="Targets.retain: accuracies are in percent; 0.94 looks "
                                       r"like a fraction \(pass 94 for 0.94\)"):
    beta_lib.Targets(retain=0.94, forget=1.0)
  with pytest.raises(ValueError, match=r"Targets.forget: expected an accuracy in percent in "
                                       r"\[0, 100\], got 120.0"):
    beta_lib.Targets(retain=99.0, forget=120.0)
  with pytest.raises(ValueError, match="scenario: 'other' is not one of random, class"):
    beta_lib.alignment_targets(train_acc=99.5, test_acc=94.0, scenario="other")


def test_policy_weights_are_checked():
  targets = beta_lib.Targets(retain=99.0, forget=90.0)
  with pytest.raises(ValueError, match=r"AdaptiveBeta.low: must be <= AdaptiveBeta.high \(0.5\)"):
    beta_lib.AdaptiveBeta(targets=targets, low=0.6, high=0.5)
  with pytest.raises(ValueError, match="AdaptiveBeta.low"):
    beta_lib.AdaptiveBeta(targets=targets, low=-5.0)
  with pytest.raises(ValueError, match="FixedBeta.value"):
    beta_lib.FixedBeta(float("nan"))
  assert beta_lib.as_policy(0.3) == beta_lib.FixedBeta(0.3)
  assert beta_lib.as_policy("adaptive", targets) == beta_lib.AdaptiveBeta(targets=targets)
  with pytest.raises(ValueError, match="needs targets"):
    beta_lib.as_policy("adaptive")
