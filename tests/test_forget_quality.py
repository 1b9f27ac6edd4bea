"""Forgetting quality over model populations: LiRA's score, the challenge's F, U-LiRA."""
import math

import numpy as np
import pytest
from scipy import special, stats

from mcu_jax import forget_quality as fq

DELTA = 1e-5


# ------------------------------------------------------------------------------------------
# logit_scaled_confidence


def _softmax_score(z, y):
  """log p_y - log sum_{j != y} p_j from float64 softmax probabilities, one example."""
  p = np.exp(z - z.max())
  p /= p.sum()
  return math.log(p[y]) - math.log(sum(p[j] for j in range(z.size) if j != y))


def test_logit_scaled_confidence_matches_softmax():
  rng = np.random.default_rng(0)
  logits = rng.normal(0.0, 3.0, size=(4, 6, 10))
  labels = rng.integers(0, 10, size=6)
  got = fq.logit_scaled_confidence(logits, labels)          # labels broadcast over models
  want = np.array([[_softmax_score(logits[m, e], labels[e]) for e in range(6)]
                   for m in range(4)])
  assert got.shape == (4, 6) and got.dtype == np.float64
  np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
  per_model = rng.integers(0, 10, size=(4, 6))
  want = np.array([[_softmax_score(logits[m, e], per_model[m, e]) for e in range(6)]
                   for m in range(4)])
  np.testing.assert_allclose(fq.logit_scaled_confidence(logits, per_model), want,
                             rtol=1e-10, atol=1e-12)


def test_logit_scaled_confidence_exact_for_huge_logits():
  rng = np.random.default_rng(1)
  logits = rng.normal(0.0, 1e4, size=(50, 7))
  labels = rng.integers(0, 7, size=50)
  logits[0, labels[0]] = 3e4                                 # near-certain: p_y rounds to 1
  logits[1, labels[1]] = -3e4                                # p_y underflows to 0
  got = fq.logit_scaled_confidence(logits, labels)
  want = np.array([z[y] - special.logsumexp(np.delete(z, y)) for z, y in zip(logits, labels)])
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, want, rtol=1e-12)
  assert got[0] > 1e4 and got[1] < -1e4


def test_logit_scaled_confidence_accepts_jax_arrays():
  import jax.numpy as jnp
  logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]], np.float32)
  got = fq.logit_scaled_confidence(jnp.asarray(logits), jnp.asarray([0, 2]))
  assert isinstance(got, np.ndarray) and got.dtype == np.float64
  np.testing.assert_allclose(got, [2.0 - np.log(np.exp(0.0) + np.exp(-1.0)), -np.log(2.0)],
                             rtol=1e-6)


@pytest.mark.parametrize("logits, labels, match", [
    (np.zeros((3, 4)), [0, 1, 4], "labels"),                  # out of range
    (np.zeros((3, 4)), [0, -1, 2], "labels"),
    (np.zeros((3, 4)), [0.0, 1.0, 2.0], "labels"),            # not integers
    (np.zeros((3, 4)), [0, 1], "labels"),                     # does not broadcast to (3,)
    (np.zeros((3, 1)), [0, 0, 0], "logits"),                  # one class
    (np.zeros(()), 0, "logits"),
    (np.array([[0.0, np.nan]]), [0], "logits"),
    (np.array([[0.0, np.inf]]), [0], "logits"),
])
def test_logit_scaled_confidence_bad_input(logits, labels, match):
  with pytest.raises(ValueError, match=match):
    fq.logit_scaled_confidence(logits, labels)


# ------------------------------------------------------------------------------------------
# forget_score: an independent brute-force reading of the challenge's rules.


def _rates_single(pos, neg):
  """(FPR, FNR) of 'conf >= t -> positive' at every threshold of the 100-per-unit grid."""
  lo, hi = min(pos.min(), neg.min()), max(pos.max(), neg.max())
  t = np.linspace(lo, hi, int(np.ceil((hi - lo) * 100)))
  return (neg[:, None] >= t).mean(0), (pos[:, None] < t).mean(0)


def _rates_double(peaky, other, width):
  """(FPR, FNR) of 'l <= conf <= r -> peaky' over every (l, r) of the challenge's band grid."""
  lo, hi = peaky.min() + width - 2.0, peaky.max() + 2.0
  right = np.linspace(lo, hi, int(np.ceil((hi - lo) * 100)))
  left = np.concatenate([np.linspace(t - width - 2.0, t - width + 2.0, 400) for t in right])
  right = np.repeat(right, 400)

  def inside(x):
    return (left <= x[:, None]) & (x[:, None] <= right)

  return inside(other).mean(0), (~inside(peaky)).mean(0)


def _reference_epsilon(u, r, delta=DELTA):
  """One example's eps, written from the description's Algorithm 1 attack by attack."""
  pos, neg = (r, u) if np.median(r) > np.median(u) else (u, r)
  sp, sn = np.ptp(pos), np.ptp(neg)
  if min(sp, sn) / max(sp, sn) < 0.01:
    return 50.0
  peaky, other = (neg, pos) if sp >= sn else (pos, neg)
  single, double = _rates_single(pos, neg), _rates_double(peaky, other, min(sp, sn))
  fpr, fnr = np.concatenate([single[0], double[0]]), np.concatenate([single[1], double[1]])
  per_attack = []
  for a_fpr, a_fnr in np.unique(np.stack([fpr, fnr], axis=1), axis=0):
    if a_fpr == 0 and a_fnr == 0:
      per_attack.append(math.inf)
    elif a_fpr == 0 or a_fnr == 0:
      continue
    else:
      bounds = [math.log(num) - math.log(den)
                for num, den in ((1 - delta - a_fpr, a_fnr), (1 - delta - a_fnr, a_fpr))
                if num > 0]
      if bounds:
        per_attack.append(max(0.0, max(bounds)))
  return min(max(per_attack), 50.0) if per_attack else 50.0


def test_per_example_epsilons_match_bruteforce_reference():
  rng = np.random.default_rng(2)
  n_u, n_r = 7, 9                                           # unequal populations on purpose
  scale = rng.uniform(0.3, 2.0, size=6)
  u = rng.normal(size=(n_u, 6)) * scale + np.array([0.0, 0.2, 0.5, 1.0, 2.0, -0.7])
  r = rng.normal(size=(n_r, 6))
  ties_u = rng.integers(0, 4, size=(n_u, 3)).astype(float)  # integer confs: ties with grids
  ties_r = rng.integers(0, 4, size=(n_r, 3)).astype(float)
  wide_u = np.concatenate([u[:, :3], 4.0 * u[:, 3:]], axis=1)   # spreads 4x apart: bands differ
  for uu, rr in ((u, r), (ties_u, ties_r), (wide_u, r), (r[:n_u], wide_u.repeat(2, 0)[:n_r])):
    got = fq.per_example_epsilons(uu, rr)
    want = [_reference_epsilon(uu[:, e], rr[:, e]) for e in range(uu.shape[1])]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


def test_identical_samples_have_epsilon_zero_and_score_one():
  """Both populations are the same sample (same multiset of values).

  Medians are equal, so the unlearned population is 'positive'; the spreads are equal (ratio 1,
  not peaky). Every attack, single or double threshold, predicts 'positive' for the same share
  of either population, so TPR = FPR and FNR = 1 - FPR. Attacks with FPR in {0, 1} have exactly
  one of FPR, FNR zero and are discarded; every other one gives both bounds equal to
  log((1 - delta - FPR) / (1 - FPR)) < 0, clipped to 0. So eps = 0 -> bin [0, 0.5) -> 1 point
  per example, and F = 1 exactly.
  """
  rng = np.random.default_rng(3)
  x = rng.normal(size=(64, 10)) * rng.uniform(0.5, 3.0, size=10)
  result = fq.forget_score(x, x.copy())
  np.testing.assert_array_equal(result.epsilons, np.zeros(10))
  np.testing.assert_array_equal(result.bucket_scores, np.ones(10))
  assert result.score == 1.0 and float(result) == 1.0


def test_fully_separated_populations_score_zero():
  """Retrained = unlearned + 100: same spread (ratio 1, not peaky), disjoint ranges.

  The single-threshold grid has ~100 points per unit over [min, max], so some t lies in the gap
  of width ~94: every retrained model is >= t and no unlearned one is (FPR = FNR = 0): perfect
  separation, eps = inf -> cap 50. With N = 512 unlearned models the bins stop at
  ceil(ln 511) = 7, so eps = 50 scores 0 points: F = 0 exactly.
  """
  rng = np.random.default_rng(4)
  u = rng.normal(size=(512, 8))
  result = fq.forget_score(u, u + 100.0)
  np.testing.assert_array_equal(result.epsilons, np.full(8, 50.0))
  assert result.score == 0.0 and np.all(result.bucket_scores == 0.0)


def test_hand_derived_finite_epsilon():
  """Four models each: unlearned {-5, 6, 7, 8} (median 6.5), retrained {0, 1, 2, 13} (1.5).

  Unlearned is 'positive' (larger median); both spreads are 13 (not peaky). The values
  interleave, so no single threshold or band isolates either population (no perfect
  separation). Rates are multiples of 1/4 and attacks with a zero rate are discarded, so the
  largest eps comes from FPR = FNR = 1/4, reached by a threshold t in (2, 6] (only -5 of the
  unlearned below it, only 13 of the retrained above it): eps = log((1 - delta - 1/4) / (1/4))
  = log(3 - 4 delta) = 1.0986. With N = 4 the bins stop at ceil(ln 3) = 2; eps is in [1, 1.5),
  the third bin: 2 ** -2 = 0.25 points. A second, identical-samples example scores 1 (see
  above), so F = (0.25 + 1) / 2.
  """
  u = np.array([[-5.0, 6.0, 7.0, 8.0], [0.0, 1.0, 2.0, 3.0]]).T
  r = np.array([[0.0, 1.0, 2.0, 13.0], [0.0, 1.0, 2.0, 3.0]]).T
  result = fq.forget_score(u, r)
  np.testing.assert_allclose(result.epsilons, [math.log(3 - 4 * DELTA), 0.0], rtol=1e-13)
  np.testing.assert_array_equal(result.bucket_scores, [0.25, 1.0])
  assert result.score == 0.625
  # Each retrained model twice: the same rates, so the same eps (N stays 4, the unlearned count).
  twice = fq.forget_score(u, np.repeat(r, 2, axis=0))
  np.testing.assert_allclose(twice.epsilons, result.epsilons, rtol=1e-13)


@pytest.mark.parametrize("peaky_is_unlearned", [True, False])
def test_peaky_distribution_gets_the_cap(peaky_is_unlearned, monkeypatch):
  """One population's spread is ~1e-4 of the other's (< 1 %): eps = 50 by rule, F = 0.

  Both have mean 5, so this is no separation the attacks could always see: the grids are
  ~0.01 apart, so a band around the 6e-4-wide population usually also holds a few of the
  other's models (FNR = 0 < FPR: discarded), and without the rule eps varies by example.
  """
  rng = np.random.default_rng(5)
  peaky = 5.0 + 1e-4 * rng.normal(size=(512, 6))
  wide = 5.0 + rng.normal(size=(512, 6))
  u, r = (peaky, wide) if peaky_is_unlearned else (wide, peaky)
  result = fq.forget_score(u, r)
  np.testing.assert_array_equal(result.epsilons, np.full(6, 50.0))
  assert result.score == 0.0
  # A spread ratio of 2 % is not peaky: the attacks decide, and eps stays below the cap.
  assert np.all(fq.per_example_epsilons(5.0 + 0.02 * (peaky - 5.0) / 1e-4, wide) < 50.0)
  monkeypatch.setattr(fq.epsilon, "PEAKY_RATIO", 0.0)               # the rule off: not all capped
  assert np.any(fq.per_example_epsilons(u, r) < 50.0)


def test_forget_score_falls_as_the_unlearned_mean_moves_away():
  rng = np.random.default_rng(6)
  z_u, r = rng.normal(size=(512, 10)), rng.normal(size=(512, 10))
  scores = [fq.forget_score(z_u + shift, r).score for shift in (0.0, 0.5, 1.0, 2.0, 4.0)]
  assert all(a >= b for a, b in zip(scores, scores[1:])), scores
  assert scores[-1] < scores[0] / 20, scores


def test_same_distribution_scores_far_above_a_shifted_one():
  """Two independent 512-model draws of one distribution against a 2-std shift.

  Not close to 1: with empirical rates (the challenge's choice) the tails of two samples of
  the same distribution still give attacks like 3 vs 1 models beyond a threshold, i.e.
  eps = log(3) ~ 1.1, so typical eps is 1-2.2 (bins 3-5) and F ~ 0.2 at any N. Such a
  population is nevertheless an order of magnitude above a 2-std shift.
  """
  rng = np.random.default_rng(7)
  same = fq.forget_score(rng.normal(size=(512, 20)), rng.normal(size=(512, 20)))
  shifted = fq.forget_score(rng.normal(size=(512, 20)) + 2.0, rng.normal(size=(512, 20)))
  assert 0.1 < same.score < 0.4
  assert np.all(same.epsilons < 3.0) and np.median(same.epsilons) < 2.0
  assert same.score > 10 * shifted.score


def test_epsilon_bucket_scores():
  eps = np.array([0.0, 0.49, 0.5, 1.0, 1.49, 6.49, 6.5, 6.99, 7.0, 50.0, np.inf])
  # N = 512: bins of 0.5 up to ceil(ln 511) = 7, worth 1, 1/2, ..., 2 ** -13.
  want = [1, 1, 0.5, 0.25, 0.25, 2.0 ** -12, 2.0 ** -13, 2.0 ** -13, 0, 0, 0]
  np.testing.assert_array_equal(fq.epsilon_bucket_scores(eps, 512), want)
  # N = 4: up to ceil(ln 3) = 2; N = 2: ln 1 = 0, no bin at all.
  np.testing.assert_array_equal(fq.epsilon_bucket_scores([1.99, 2.0], 4), [0.125, 0.0])
  np.testing.assert_array_equal(fq.epsilon_bucket_scores([0.0, 0.3], 2), [0.0, 0.0])
  with pytest.raises(ValueError, match="epsilons"):
    fq.epsilon_bucket_scores([-0.1], 512)
  with pytest.raises(ValueError, match="num_models"):
    fq.epsilon_bucket_scores([0.1], 1)


def test_forget_score_bins_by_the_unlearned_population_size():
  """3 unlearned models (bins stop at ceil(ln 2) = 1) against 600 retrained (they would stop
  at ceil(ln 599) = 7): every eps >= 1 must score 0."""
  rng = np.random.default_rng(8)
  u, r = rng.normal(size=(3, 40)), rng.normal(size=(600, 40))
  result = fq.forget_score(u, r)
  np.testing.assert_array_equal(result.bucket_scores,
                                fq.epsilon_bucket_scores(result.epsilons, 3))
  assert np.any((result.epsilons >= 1.0) & (result.epsilons < 7.0))   # where N = 600 differs
  assert np.all(result.bucket_scores[result.epsilons >= 1.0] == 0.0)
  assert result.score == pytest.approx(result.bucket_scores.mean())


def test_forget_score_result_is_read_only():
  rng = np.random.default_rng(9)
  result = fq.forget_score(rng.normal(size=(8, 3)), rng.normal(size=(8, 3)))
  with pytest.raises(AttributeError):
    result.score = 1.0
  with pytest.raises(ValueError):
    result.epsilons[0] = 0.0


@pytest.mark.parametrize("u, r, match", [
    (np.zeros((8, 3)), np.zeros((8, 4)), "unlearned_confs has 3 examples but retrained_confs"),
    (np.zeros(8), np.zeros((8, 1)), "unlearned_confs must be 2-D"),
    (np.zeros((8, 2)), np.zeros((8, 2, 1)), "retrained_confs must be 2-D"),
    (np.zeros((1, 2)), np.zeros((8, 2)), "unlearned_confs must hold at least 2 models"),
    (np.zeros((8, 0)), np.zeros((8, 0)), "unlearned_confs must hold at least 1 example"),
    (np.array([[0.0, np.nan], [1.0, 2.0]]), np.zeros((8, 2)), "unlearned_confs has non-finite"),
    (np.zeros((8, 2)), np.full((8, 2), np.inf), "retrained_confs has non-finite"),
])
def test_forget_score_bad_input(u, r, match):
  with pytest.raises(ValueError, match=match):
    fq.forget_score(u, r)


def test_forget_score_bad_delta():
  with pytest.raises(ValueError, match="delta"):
    fq.forget_score(np.zeros((4, 2)), np.ones((4, 2)), delta=1.0)


# ------------------------------------------------------------------------------------------
# challenge_score


def test_challenge_score_closed_form():
  assert fq.challenge_score(0.5, 90.0, 95.0, 80.0, 85.0) == pytest.approx(
      0.5 * (90.0 / 95.0) * (80.0 / 85.0), rel=1e-15)
  assert fq.challenge_score(1.0, 0.9, 0.9, 0.8, 0.8) == pytest.approx(1.0)
  x = np.arange(8.0)[:, None] * np.ones((1, 2))
  result = fq.forget_score(x, x.copy())                    # F = 1: a ForgetScore works too
  assert fq.challenge_score(result, 99.0, 100.0, 50.0, 100.0) == pytest.approx(0.495)


@pytest.mark.parametrize("args, match", [
    ((0.5, 90.0, 0.0, 80.0, 85.0), "ra_r"),
    ((0.5, 90.0, 95.0, 80.0, -1.0), "ta_r"),
    ((0.5, -1.0, 95.0, 80.0, 85.0), "ra_u"),
    ((0.5, 90.0, 95.0, np.nan, 85.0), "ta_u"),
    ((0.5, 90.0, np.inf, 80.0, 85.0), "ra_r"),
    ((1.5, 90.0, 95.0, 80.0, 85.0), "F"),
    ((None, 90.0, 95.0, 80.0, 85.0), "F"),
])
def test_challenge_score_bad_input(args, match):
  with pytest.raises(ValueError, match=match):
    fq.challenge_score(*args)


# ------------------------------------------------------------------------------------------
# lira


def _gaussian_problem(rng, d, examples=100, shadows=256, targets=400):
  """Per example e: retrained ~ N(mu_e, s_e^2), unlearned ~ N(mu_e + d s_e, s_e^2)."""
  mu = rng.uniform(-5.0, 5.0, size=examples)
  s = rng.uniform(0.5, 2.0, size=examples)
  u = mu + d * s + s * rng.normal(size=(shadows, examples))
  r = mu + s * rng.normal(size=(shadows, examples))
  is_u = np.arange(targets) < targets // 2
  x = mu + d * s * is_u[:, None] + s * rng.normal(size=(targets, examples))
  return x, u, r, is_u


def test_lira_matches_the_analytic_roc_of_two_gaussians():
  """With equal variances the LLR is linear in x; standardised by example it is
  N(+-d^2/2, d^2) under the two hypotheses, the same law for every example, so the pooled ROC
  is the analytic one: AUC = Phi(d / sqrt 2), TPR at FPR a = Phi(d - z_{1-a}), and the
  LLR > 0 rule has TPR = TNR = Phi(d / 2). 20,000 pairs per class: over seeds the AUC and the
  balanced accuracy vary by ~0.002-0.003 (std), the TPRs at 1 % / 5 % FPR by ~0.004 / ~0.006
  (threshold noise included); the tolerances are ~4-5 of those."""
  d = 1.0
  x, u, r, is_u = _gaussian_problem(np.random.default_rng(10), d)
  result = fq.lira(x, u, r, is_u)
  assert result.scores.shape == x.shape
  assert result.auc == pytest.approx(stats.norm.cdf(d / math.sqrt(2)), abs=0.01)
  assert result.tpr_at_1pct_fpr == pytest.approx(stats.norm.cdf(d - stats.norm.ppf(0.99)),
                                                 abs=0.02)
  assert result.tpr_at_5pct_fpr == pytest.approx(stats.norm.cdf(d - stats.norm.ppf(0.95)),
                                                 abs=0.025)
  assert result.balanced_accuracy == pytest.approx(stats.norm.cdf(d / 2), abs=0.01)
  for value in (result.auc, result.tpr_at_1pct_fpr, result.tpr_at_5pct_fpr,
                result.balanced_accuracy):
    assert 0.0 <= value <= 1.0
  assert result.tpr_at_1pct_fpr <= result.tpr_at_5pct_fpr
  # The per-example fit matters: the raw confidences, pooled over examples, separate far less.
  from sklearn.metrics import roc_auc_score
  pooled = roc_auc_score(np.broadcast_to(is_u[:, None], x.shape).ravel(), x.ravel())
  assert result.auc > pooled + 0.1


def test_lira_labels_per_target_or_per_pair():
  rng = np.random.default_rng(11)
  x, u, r, is_u = _gaussian_problem(rng, 2.0, examples=20, shadows=64, targets=40)
  by_target = fq.lira(x, u, r, is_u)
  by_pair = fq.lira(x, u, r, np.broadcast_to(is_u[:, None], x.shape).astype(int))
  assert by_target.auc == by_pair.auc
  assert by_target.balanced_accuracy == by_pair.balanced_accuracy
  np.testing.assert_array_equal(fq.lira(x, u, r).scores, by_target.scores)
  assert fq.lira(x, u, r).auc is None


def test_lira_identical_populations():
  rng = np.random.default_rng(12)
  # Independent draws of one distribution: the attack is at chance.
  x, u, r, is_u = _gaussian_problem(rng, 0.0)
  result = fq.lira(x, u, r, is_u)
  assert result.auc == pytest.approx(0.5, abs=0.015)
  assert result.balanced_accuracy == pytest.approx(0.5, abs=0.015)
  assert result.tpr_at_1pct_fpr == pytest.approx(0.01, abs=0.01)
  # The very same sample: every ratio is exactly 0, one tie: AUC 1/2, no TPR within 1 % FPR,
  # and the LLR > 0 rule calls every pair retrained.
  tied = fq.lira(x, u, u.copy(), is_u)
  np.testing.assert_array_equal(tied.scores, np.zeros_like(x))
  assert tied.auc == 0.5 and tied.tpr_at_1pct_fpr == 0.0 and tied.tpr_at_5pct_fpr == 0.0
  assert tied.balanced_accuracy == 0.5


def test_lira_roc_with_ties_matches_sklearn():
  from sklearn.metrics import roc_auc_score, roc_curve
  rng = np.random.default_rng(13)
  x, u, r, is_u = _gaussian_problem(rng, 0.8, examples=30, shadows=64, targets=60)
  labels = rng.random(x.shape) < 0.3
  x = np.round(x)                                           # coarse targets: many tied scores
  result = fq.lira(x, u, r, labels)
  scores = result.scores.ravel()
  assert np.unique(scores).size < scores.size / 4
  assert result.auc == pytest.approx(roc_auc_score(labels.ravel(), scores), abs=1e-12)
  fpr, tpr, _ = roc_curve(labels.ravel(), scores, drop_intermediate=False)
  assert result.tpr_at_5pct_fpr == pytest.approx(tpr[fpr <= 0.05].max(), abs=1e-12)
  assert result.tpr_at_1pct_fpr == pytest.approx(tpr[fpr <= 0.01].max(), abs=1e-12)
  vote = scores > 0
  want = 0.5 * (vote[labels.ravel()].mean() + (~vote[~labels.ravel()]).mean())
  assert result.balanced_accuracy == pytest.approx(want, abs=1e-12)


def test_lira_std_floor_keeps_constant_populations_finite():
  u = np.full((5, 2), 1.0)
  r = np.array([[0.0, 0.5], [0.1, 0.6], [0.2, 0.4], [-0.1, 0.5], [0.0, 0.7]])
  x = np.array([[1.0, 1.0], [0.0, 0.5], [3.0, -3.0]])
  result = fq.lira(x, u, r, [True, False, False], std_floor=1e-3)
  assert np.all(np.isfinite(result.scores))
  assert result.scores[0, 0] > 10 and result.scores[1, 0] < -1e4    # steep, but finite
  assert result.auc == 1.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(target_confs=np.zeros(3)), "target_confs must be 2-D"),
    (dict(target_confs=np.zeros((3, 5))), "target_confs has 5 examples"),
    (dict(target_confs=np.full((3, 4), np.nan)), "target_confs has non-finite"),
    (dict(unlearned_confs=np.zeros((8, 5))), "unlearned_confs has 5 examples"),
    (dict(retrained_confs=np.zeros(4)), "retrained_confs must be 2-D"),
    (dict(target_is_unlearned=[True, True, True]), "both unlearned and retrained"),
    (dict(target_is_unlearned=[True, False]), "target_is_unlearned must have shape"),
    (dict(target_is_unlearned=[0.5, 1.0, 0.0]), "target_is_unlearned must be bool"),
    (dict(std_floor=0.0), "std_floor"),
])
def test_lira_bad_input(kwargs, match):
  rng = np.random.default_rng(14)
  args = dict(target_confs=rng.normal(size=(3, 4)), unlearned_confs=rng.normal(size=(8, 4)),
              retrained_confs=rng.normal(size=(8, 4)), target_is_unlearned=[True, False, True])
  args.update(kwargs)
  std_floor = args.pop("std_floor", 1e-6)
  with pytest.raises(ValueError, match=match):
    fq.lira(**args, std_floor=std_floor)
