"""Forgetting quality with its uncertainty over models: intervals, paired tests, LiRA splits.

The unit is the model (``mcu_jax.core.stats``): every interval resamples the models of each
population, every test swaps whole models. Populations are (models, examples) logit-scaled
confidences; accuracies, where given, are (models, 2): retain and test accuracy in percent.

* ``lira_splits``: U-LiRA over K random splits (default 20). In split k a random half of each
  population fits the Gaussians and the other halves are attacked. For populations of the same
  sizes the same seed draws the same splits, so retrained population B against A over the
  same seed is the null of the same splits.
* ``population_scores``: F, the challenge score and the K-split LiRA AUC of one population
  against the reference, each with a 95 % bootstrap interval over models. F and the challenge
  score share their resamples (models of both populations drawn with replacement); for the AUC
  one draw of models serves every split, each drawn copy fitting or attacked as its original
  is, so no model is both fitted and attacked.
* ``compare``: base vs base+MCU (member i of both made from original i). The differences
  (MCU minus base) of F, of the challenge score and of the AUC, each with a paired bootstrap
  interval (the pairs resampled together, the reference apart) and, for F and the AUC, a paired
  permutation p-value (``stats.paired_permutation``: base_i and mcu_i swapped; the reference
  and the splits fixed).

Intervals are normal bootstrap intervals, estimate -+ 1.96 x the replicates' sd
(``stats.interval(method="normal")``) clipped to the score's range, not percentile ones: a
resample's duplicated models make two populations look more different than they are, which
shifts F (simulated, two Gaussian populations of 64 models and 146 examples: F 0.183 from the
same distribution, replicates centred at 0.138, while 30 fresh draws average 0.185), so
percentile intervals can miss the estimate altogether; the replicates' spread still matches the
sampling error (sd 0.0089 vs 0.0073 over fresh draws; 0.0026 vs 0.0020 a 1-sd shift apart; for
the AUC 0.005 vs 0.004), slightly conservative. A jackknife overstates it threefold (0.023).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mcu_jax.core import stats
from mcu_jax.errors import InvalidArgument
from mcu_jax.forget_quality.checks import population, populations
from mcu_jax.forget_quality.epsilon import challenge_score, forget_score
from mcu_jax.forget_quality.lira import lira

SPLITS = 20
RESAMPLES = 200
"""Bootstrap resamples of every interval here: the intervals use the replicates' sd, which 200
resamples estimate to about 5 % (relative), unlike percentile intervals' tails."""


@dataclasses.dataclass(frozen=True, eq=False)
class LiraSplits:
  """U-LiRA's AUC in each of K splits (``aucs`` (K,)), their mean and sample sd (ddof 1)."""
  aucs: np.ndarray

  @property
  def mean(self) -> float:
    return float(np.mean(self.aucs))

  @property
  def sd(self) -> float:
    return float(np.std(self.aucs, ddof=1)) if self.aucs.size > 1 else 0.0

  def to_dict(self) -> dict:
    return {"mean": self.mean, "sd": self.sd, "splits": int(self.aucs.size),
            "aucs": self.aucs.tolist()}


def split_indices(n_tested: int, n_reference: int, splits: int = SPLITS, seed: int = 0):
  """K splits: (tested fit, tested attacked, reference fit, reference attacked) index arrays,
  each population cut into halves (the fitting half floor(n/2) models) by a permutation of
  ``numpy.random.default_rng(seed)``."""
  splits = stats._count("splits", splits, 1)
  for name, n in (("n_tested", n_tested), ("n_reference", n_reference)):
    stats._count(name, n, 4)
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(splits):
    t, r = rng.permutation(n_tested), rng.permutation(n_reference)
    out.append((t[:n_tested // 2], t[n_tested // 2:], r[:n_reference // 2],
                r[n_reference // 2:]))
  return out


def _auc(tested, reference, fit_t, attack_t, fit_r, attack_r) -> float:
  targets = np.concatenate([tested[attack_t], reference[attack_r]])
  labels = np.r_[np.ones(len(attack_t), bool), np.zeros(len(attack_r), bool)]
  auc = lira(targets, tested[fit_t], reference[fit_r], labels).auc
  assert auc is not None  # labels are given, so the metrics are computed
  return auc


def _mean_auc(tested, reference, splits) -> float:
  return float(np.mean([_auc(tested, reference, *s) for s in splits]))


def lira_splits(tested, reference, *, splits: int = SPLITS, seed: int = 0) -> LiraSplits:
  """U-LiRA of ``tested`` (N, E) against ``reference`` (M, E), N, M >= 4, over ``splits``
  random splits (``split_indices``). The AUC is over the attacked halves' (model, example)
  pairs, the tested population's models positive (``lira``)."""
  t, r = populations(tested, reference, "tested", "reference")
  aucs = np.array([_auc(t, r, *s) for s in split_indices(len(t), len(r), splits, seed)])
  aucs.setflags(write=False)
  return LiraSplits(aucs)


def _accuracies(name: str, acc, n: int) -> np.ndarray:
  acc = np.asarray(acc, np.float64)
  if acc.shape != (n, 2) or not np.all(np.isfinite(acc)) or np.any(acc < 0):
    raise InvalidArgument(f"{name}: expected ({n}, 2) retain and test accuracies in percent "
                          f"(finite, >= 0), one row per model, got shape {acc.shape}")
  return acc


def _challenge(F, acc_u, acc_r) -> float:
  mean_u, mean_r = acc_u.mean(axis=0), acc_r.mean(axis=0)
  return challenge_score(F, mean_u[0], mean_r[0], mean_u[1], mean_r[1])


def _auc_bootstrap(pairs, reference, splits, resamples, seed) -> np.ndarray:
  """Replicates (resamples, len(pairs)) of the K-split mean AUC of each population in
  ``pairs`` (model i of each drawn together), the reference drawn apart. One draw of models
  serves every split: a drawn copy fits or is attacked as its original does in that split, so
  no model is both (a draw that leaves a split fewer than 2 fitting or 1 attacked model of a
  population is drawn again)."""
  rng = np.random.default_rng(seed)
  n_t, n_r = len(pairs[0]), len(reference)
  members = [(np.isin(np.arange(n_t), ft), np.isin(np.arange(n_r), fr))
             for ft, _, fr, _ in splits]
  out = np.empty((resamples, len(pairs)))
  b = 0
  while b < resamples:
    dt, dr = rng.integers(0, n_t, n_t), rng.integers(0, n_r, n_r)
    chosen = [(dt[in_t[dt]], dt[~in_t[dt]], dr[in_r[dr]], dr[~in_r[dr]])
              for in_t, in_r in members]
    if any(len(ft) < 2 or len(fr) < 2 or not len(at) or not len(ar)
           for ft, at, fr, ar in chosen):
      continue
    out[b] = [np.mean([_auc(p, reference, *c) for c in chosen]) for p in pairs]
    b += 1
  return out


def _interval(estimate, replicates, bounds=(0.0, 1.0)) -> dict:
  """The normal interval, clipped to the score's range ``bounds``."""
  low, high = stats.interval(estimate, replicates, method="normal")
  return {"value": float(estimate),
          "ci95": [float(np.clip(low, *bounds)), float(np.clip(high, *bounds))]}


def population_scores(tested, reference, *, tested_acc=None, reference_acc=None,
                      resamples: int = RESAMPLES, splits: int = SPLITS,
                      seed: int = 0) -> dict:
  """F, the challenge score (when both accuracies are given) and the K-split LiRA AUC of
  ``tested`` against ``reference`` with 95 % bootstrap intervals over models (module
  docstring). Returns ``{"F": {"value", "ci95"}, "challenge": {...}, "lira_auc": {"value",
  "ci95", "mean", "sd", "splits", "aucs"}, "resamples": B}``; the AUC's value is the mean over
  the splits."""
  t, r = populations(tested, reference, "tested", "reference")
  resamples = stats._count("resamples", resamples, 1)
  with_acc = tested_acc is not None and reference_acc is not None
  samples, groups = [t, r], [0, 1]
  if with_acc:
    samples += [_accuracies("tested_acc", tested_acc, len(t)),
                _accuracies("reference_acc", reference_acc, len(r))]
    groups += [0, 1]

  def statistic(t, r, *acc):
    F = forget_score(t, r).score
    return [F, _challenge(F, *acc)] if acc else [F]

  boot = stats.bootstrap(statistic, samples, groups=groups, resamples=resamples, seed=seed,
                         method="normal")
  assert isinstance(boot.estimate, np.ndarray)  # the statistic returns a list of values
  out = {"F": _interval(boot.estimate[0], boot.replicates[:, 0]), "resamples": resamples}
  if with_acc:
    out["challenge"] = _interval(boot.estimate[1], boot.replicates[:, 1], (0.0, np.inf))
  chosen = split_indices(len(t), len(r), splits, seed)
  auc = LiraSplits(np.array([_auc(t, r, *s) for s in chosen]))
  replicates = _auc_bootstrap([t], r, chosen, resamples, seed + 1)[:, 0]
  out["lira_auc"] = {**_interval(auc.mean, replicates), **auc.to_dict()}
  return out


def compare(base, mcu, reference, *, base_acc=None, mcu_acc=None, reference_acc=None,
            resamples: int = RESAMPLES, permutations: int = stats.PERMUTATIONS,
            splits: int = SPLITS, seed: int = 0) -> dict:
  """Base vs base+MCU at the model level (module docstring): ``base`` and ``mcu`` (N, E) with
  model i of both made from original i, ``reference`` (M, E). Returns, for "F", "lira_auc"
  and (with all three accuracies) "challenge": ``{"base", "mcu", "difference"}`` (MCU minus
  base), ``ci95`` (paired bootstrap of the difference), ``base_ci95`` and ``mcu_ci95`` (the
  same resamples' intervals of each score) and, for F and the AUC, ``p_value``, ``flips`` and
  ``exact`` (paired permutation, two-sided)."""
  b, r = populations(base, reference, "base", "reference")
  m = population(mcu, "mcu")
  if m.shape != b.shape:
    raise InvalidArgument(f"mcu: expected the shape of base {b.shape} (paired models), got "
                          f"{m.shape}")
  resamples = stats._count("resamples", resamples, 1)
  with_acc = all(a is not None for a in (base_acc, mcu_acc, reference_acc))
  samples, groups = [b, m, r], [0, 0, 1]
  if with_acc:
    samples += [_accuracies("base_acc", base_acc, len(b)),
                _accuracies("mcu_acc", mcu_acc, len(m)),
                _accuracies("reference_acc", reference_acc, len(r))]
    groups += [0, 0, 1]

  def statistic(b, m, r, *acc):
    fb, fm = forget_score(b, r).score, forget_score(m, r).score
    out = [fb, fm, fm - fb]
    if acc:
      cb, cm = _challenge(fb, acc[0], acc[2]), _challenge(fm, acc[1], acc[2])
      out += [cb, cm, cm - cb]
    return out

  boot = stats.bootstrap(statistic, samples, groups=groups, resamples=resamples, seed=seed,
                         method="normal")
  assert isinstance(boot.estimate, np.ndarray)  # the statistic returns a list of values
  est, rep = boot.estimate, boot.replicates
  both = lambda i, j, bounds: {"base_ci95": _interval(est[i], rep[:, i], bounds)["ci95"],
                               "mcu_ci95": _interval(est[j], rep[:, j], bounds)["ci95"]}
  out: dict[str, Any] = {"F": {"base": float(est[0]), "mcu": float(est[1]),
                               **_difference(est[2], rep[:, 2]), **both(0, 1, (0.0, 1.0))},
                         "resamples": resamples}
  if with_acc:
    out["challenge"] = {"base": float(est[3]), "mcu": float(est[4]),
                        **_difference(est[5], rep[:, 5], (-np.inf, np.inf)),
                        **both(3, 4, (0.0, np.inf))}
  test = stats.paired_permutation(
      lambda x, y: forget_score(y, r).score - forget_score(x, r).score, b, m,
      permutations=permutations, seed=seed)
  out["F"].update(test.to_dict())
  chosen = split_indices(len(b), len(r), splits, seed)
  auc_b, auc_m = _mean_auc(b, r, chosen), _mean_auc(m, r, chosen)
  replicates = _auc_bootstrap([b, m], r, chosen, resamples, seed + 1)
  out["lira_auc"] = {"base": auc_b, "mcu": auc_m,
                     **_difference(auc_m - auc_b, replicates[:, 1] - replicates[:, 0]),
                     "base_ci95": _interval(auc_b, replicates[:, 0])["ci95"],
                     "mcu_ci95": _interval(auc_m, replicates[:, 1])["ci95"]}
  test = stats.paired_permutation(
      lambda x, y: _mean_auc(y, r, chosen) - _mean_auc(x, r, chosen), b, m,
      permutations=permutations, seed=seed)
  out["lira_auc"].update(test.to_dict())
  return out


def _difference(value, replicates, bounds=(-1.0, 1.0)) -> dict:
  interval = _interval(value, replicates, bounds)
  return {"difference": interval["value"], "ci95": interval["ci95"]}


__all__ = ["SPLITS", "RESAMPLES", "LiraSplits", "split_indices", "lira_splits",
           "population_scores", "compare"]
