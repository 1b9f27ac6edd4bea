"""Statistics at the model level: bootstrap intervals, paired permutation tests, LiRA splits."""

import numpy as np
import pytest
from scipy import special
from scipy import stats as sps

from mcu_jax import forget_quality as fq
from mcu_jax.core import stats
from mcu_jax.errors import InvalidArgument
from mcu_jax.forget_quality import model_level as ml

# ------------------------------------------------------------------------------------------
# bootstrap


def test_bootstrap_draws_units_and_gives_both_intervals():
  x = np.random.default_rng(0).normal(size=(12, 3))
  statistic = lambda x: x[:, 0].mean()
  boot = stats.bootstrap(statistic, [x], resamples=200, seed=7)
  rng = np.random.default_rng(7)                      # the same draws, written out
  want = np.array([x[rng.integers(0, 12, 12), 0].mean() for _ in range(200)])
  np.testing.assert_array_equal(boot.replicates, want)
  assert boot.estimate == x[:, 0].mean()
  assert (boot.low, boot.high) == tuple(np.quantile(want, [0.025, 0.975]))
  normal = stats.bootstrap(statistic, [x], resamples=200, seed=7, method="normal")
  z = np.sqrt(2.0) * special.erfinv(0.95)                 # 1.959964
  sd = np.std(want, ddof=1)
  assert normal.low == pytest.approx(x[:, 0].mean() - z * sd, rel=1e-12)
  assert normal.high == pytest.approx(x[:, 0].mean() + z * sd, rel=1e-12)
  assert boot.to_dict() == {"value": boot.estimate, "ci95": [boot.low, boot.high],
                            "resamples": 200}


def test_bootstrap_sd_of_a_mean_matches_the_closed_form():
  x = np.random.default_rng(1).normal(size=400)
  boot = stats.bootstrap(np.mean, [x], resamples=2000, seed=0)
  # The bootstrap variance of a mean is the plug-in variance / n (ddof 0).
  assert np.std(boot.replicates) == pytest.approx(np.std(x) / np.sqrt(x.size), rel=0.06)


def test_paired_samples_share_their_draws():
  a = np.random.default_rng(2).normal(size=(10, 4))
  b = a + 1.0
  paired = stats.bootstrap(lambda a, b: (b - a).mean(), [a, b], groups=[0, 0], resamples=50)
  np.testing.assert_allclose(paired.replicates, 1.0, rtol=1e-12)
  apart = stats.bootstrap(lambda a, b: (b - a).mean(), [a, b], resamples=50)
  assert np.std(apart.replicates) > 0.05


def test_vector_statistics_give_arrays():
  x = np.arange(20.0)
  boot = stats.bootstrap(lambda x: [x.mean(), x.max()], [x], resamples=30)
  assert boot.replicates.shape == (30, 2) and boot.estimate.tolist() == [9.5, 19.0]
  assert np.all(boot.low <= boot.high)
  with pytest.raises(InvalidArgument, match="to_dict"):
    boot.to_dict()


@pytest.mark.parametrize("kwargs, match", [
    (dict(samples=[np.zeros(1)]), "samples\\[0\\]: expected at least 2 units"),
    (dict(samples=[np.array([0.0, np.nan])]), "samples\\[0\\] has non-finite"),
    (dict(samples=[]), "samples: expected at least one"),
    (dict(samples=[np.zeros(3), np.zeros(4)], groups=[0, 0]), "groups: samples of group 0"),
    (dict(samples=[np.zeros(3)], groups=[0, 1]), "groups: expected one id per sample"),
    (dict(samples=[np.zeros(3)], resamples=0), "resamples: expected an integer >= 1"),
    (dict(samples=[np.zeros(3)], level=1.0), "level: expected a number in \\(0, 1\\)"),
    (dict(samples=[np.zeros(3)], method="bca"), "method: expected"),
    (dict(samples=[np.zeros(3)], statistic=lambda x: np.inf), "statistic: returned inf"),
])
def test_bootstrap_bad_input(kwargs, match):
  kwargs = {"statistic": np.mean, **kwargs}
  with pytest.raises(InvalidArgument, match=match):
    stats.bootstrap(kwargs.pop("statistic"), kwargs.pop("samples"), **kwargs)


# ------------------------------------------------------------------------------------------
# paired permutation


def test_exact_sign_flip_hand_computed():
  # 8 sign patterns of (1, 2, 3): means 2, 4/3, 2/3, 0, 0, -2/3, -4/3, -2; |T| >= 2 twice.
  test = stats.sign_flip([1.0, 2.0, 3.0])
  assert test.exact and test.flips == 8 and test.difference == 2.0
  assert test.p_value == 0.25
  assert sorted(np.round(test.null * 3).tolist()) == [-6, -4, -2, 0, 0, 2, 4, 6]


def test_exact_sign_flip_matches_scipy():
  d = np.random.default_rng(3).normal(0.4, 1.0, size=9)
  ours = stats.sign_flip(d, permutations=512)
  theirs = sps.permutation_test((d,), np.mean, permutation_type="samples",
                                n_resamples=np.inf, alternative="two-sided")
  assert ours.exact and ours.flips == 512
  assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-12)


def test_random_flips_estimate_the_exact_p():
  d = np.random.default_rng(4).normal(0.5, 1.0, size=12)
  exact = stats.sign_flip(d, permutations=4096)
  sampled = stats.sign_flip(d, permutations=2000, seed=1)
  assert exact.exact and not sampled.exact and sampled.flips == 2000
  extreme = np.sum(np.abs(sampled.null) >= abs(sampled.difference) - 1e-12)
  assert sampled.p_value == (1 + extreme) / 2001                  # never 0
  assert abs(sampled.p_value - exact.p_value) < 4 * np.sqrt(exact.p_value / 2000) + 1e-3


def test_swaps_exchange_whole_units():
  a = np.arange(8.0).reshape(4, 2)
  seen = []
  stats.paired_permutation(lambda x, y: seen.append((x.copy(), y.copy())) or 0.0, a, -a,
                           permutations=16)
  assert len(seen) == 17                                         # observed + 2^4 swaps
  for x, y in seen:
    np.testing.assert_array_equal(x, -y)                         # units stay paired
    assert all(abs(row[0]) == 2 * i for i, row in enumerate(x))  # rows stay rows


@pytest.mark.parametrize("a, b, kwargs, match", [
    (np.zeros((3, 2)), np.zeros((4, 2)), {}, "b: expected the shape of a"),
    (np.zeros(1), np.zeros(1), {}, "a: expected at least 2 units"),
    (np.zeros(3), np.zeros(3), {"permutations": 0}, "permutations: expected an integer >= 1"),
])
def test_paired_permutation_bad_input(a, b, kwargs, match):
  with pytest.raises(InvalidArgument, match=match):
    stats.paired_permutation(lambda x, y: 0.0, a, b, **kwargs)


def test_a_vector_statistic_is_refused_by_the_test():
  with pytest.raises(InvalidArgument, match="expected a finite number"):
    stats.paired_permutation(lambda x, y: [0.0, 1.0], np.zeros(3), np.ones(3))


# ------------------------------------------------------------------------------------------
# forgetting quality at the model level


def _pop(rng, shift, n=8, examples=12, scale=1.0):
  return rng.normal(shift, scale, size=(n, examples))


def test_split_indices_halve_each_population_and_repeat_by_seed():
  splits = ml.split_indices(9, 8, splits=5, seed=3)
  assert len(splits) == 5
  for fit_t, att_t, fit_r, att_r in splits:
    assert sorted(np.r_[fit_t, att_t]) == list(range(9)) and len(fit_t) == 4
    assert sorted(np.r_[fit_r, att_r]) == list(range(8)) and len(fit_r) == 4
  again = ml.split_indices(9, 8, splits=5, seed=3)
  assert all(np.array_equal(x, y) for s, t in zip(splits, again) for x, y in zip(s, t))
  with pytest.raises(InvalidArgument, match="n_tested: expected an integer >= 4"):
    ml.split_indices(3, 8)


def test_lira_splits_is_the_mean_of_per_split_attacks():
  rng = np.random.default_rng(5)
  t, r = _pop(rng, 0.5), _pop(rng, 0.0)
  result = ml.lira_splits(t, r, splits=4, seed=2)
  for auc, (ft, at, fr, ar) in zip(result.aucs, ml.split_indices(8, 8, 4, 2)):
    want = fq.lira(np.r_[t[at], r[ar]], t[ft], r[fr], np.r_[np.ones(4, bool), np.zeros(4, bool)])
    assert auc == want.auc
  assert result.mean == np.mean(result.aucs) and result.sd == np.std(result.aucs, ddof=1)
  separated = ml.lira_splits(_pop(rng, 50.0), r, splits=3)
  assert separated.mean == 1.0 and separated.sd == 0.0


def test_population_scores_values_and_intervals():
  rng = np.random.default_rng(6)
  t, r = _pop(rng, 0.7), _pop(rng, 0.0)
  acc_t = np.c_[rng.uniform(95, 99, 8), rng.uniform(90, 95, 8)]
  acc_r = np.c_[rng.uniform(97, 100, 8), rng.uniform(92, 96, 8)]
  out = ml.population_scores(t, r, tested_acc=acc_t, reference_acc=acc_r, resamples=40,
                             splits=3, seed=1)
  F = fq.forget_score(t, r).score
  assert out["F"]["value"] == F and out["resamples"] == 40
  assert out["challenge"]["value"] == pytest.approx(
      fq.challenge_score(F, acc_t[:, 0].mean(), acc_r[:, 0].mean(), acc_t[:, 1].mean(),
                         acc_r[:, 1].mean()), rel=1e-12)
  assert out["lira_auc"]["value"] == ml.lira_splits(t, r, splits=3, seed=1).mean
  for key in ("F", "challenge", "lira_auc"):
    low, high = out[key]["ci95"]
    assert low < out[key]["value"] < high, key               # normal intervals: centred
    assert high - low > 0
  assert "challenge" not in ml.population_scores(t, r, resamples=5, splits=2)


def test_compare_is_mcu_minus_base_with_a_model_level_test():
  rng = np.random.default_rng(7)
  r = _pop(rng, 0.0, n=6)
  base, mcu = _pop(rng, 8.0, n=6), _pop(rng, 0.0, n=6)          # mcu: like retraining
  out = ml.compare(base, mcu, r, resamples=30, permutations=64, splits=3)
  F_b, F_m = fq.forget_score(base, r).score, fq.forget_score(mcu, r).score
  assert out["F"]["base"] == F_b and out["F"]["mcu"] == F_m
  assert out["F"]["difference"] == F_m - F_b > 0
  assert out["F"]["exact"] and out["F"]["flips"] == 64
  # Only no swap and the full swap keep the populations apart: p = 2 / 64.
  assert out["F"]["p_value"] == 2 / 64 and out["lira_auc"]["p_value"] == 2 / 64
  assert out["lira_auc"]["difference"] == pytest.approx(
      out["lira_auc"]["mcu"] - out["lira_auc"]["base"]) and out["lira_auc"]["base"] > 0.95
  same = ml.compare(base, base, r, resamples=5, permutations=64, splits=2)
  assert same["F"]["p_value"] == 1.0 and same["F"]["difference"] == 0.0
  assert same["F"]["ci95"] == [0.0, 0.0]


def test_compare_bad_input():
  rng = np.random.default_rng(8)
  with pytest.raises(InvalidArgument, match="mcu: expected the shape of base"):
    ml.compare(_pop(rng, 0), _pop(rng, 0, n=7), _pop(rng, 0), resamples=2, permutations=2)
  with pytest.raises(InvalidArgument, match="base_acc: expected \\(8, 2\\)"):
    ml.compare(_pop(rng, 0), _pop(rng, 0), _pop(rng, 0), base_acc=np.zeros((8, 3)),
               mcu_acc=np.zeros((8, 2)), reference_acc=np.zeros((8, 2)), resamples=2)
