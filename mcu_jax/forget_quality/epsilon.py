"""The NeurIPS 2023 Machine Unlearning challenge's forgetting quality F.

Sources: [D] the organisers' "Evaluation for the NeurIPS Machine Unlearning Competition" (August
2023, https://unlearning-challenge.github.io/assets/data/Machine_Unlearning_Metric.pdf, the
evaluation description of the Kaggle competition); [P] Triantafillou et al., "Are we making
progress in unlearning? Findings from the first NeurIPS unlearning competition", arXiv
2406.09073; [C] the metric code released with [P] (github.com/google-deepmind/
unlearning_evaluation, ``metric.py``). [D] withholds the decision rules until after the
competition, so steps 1-3 come from [C]. For each forget example s, with u (N,) and r (M,) its
confidences under the unlearned and the retrained models:

1. [C] Orientation: "positive" is the population with the larger median (the unlearned one on a
   tie). Spread = max - min over a population's models. If smallest / largest spread < 0.01 (a
   "peaky" distribution), eps_s = cap = 50 without running any attack. If both spreads are 0,
   eps_s = 0 when the two constants are equal and the cap otherwise: our choice ([C] divides
   0 by 0 there and, for equal constants, fails on finding no surviving attack).
2. [C] Single-threshold attacks: t in ``linspace(lo, hi, ceil(100 (hi - lo)))`` over the pooled
   range [lo, hi] of u and r (100 thresholds per unit of confidence); predict positive where
   conf >= t.
3. [C] Double-threshold attacks: the peakier population p (strictly smaller spread; on a tie,
   the negative one) is predicted inside a band [l, t], both ends inclusive. With w = the
   smaller spread, lo = p_min + w - 2 and hi = p_max + 2 (a buffer of 2; hi - lo = 4 up to
   rounding): right ends t in ``linspace(lo, hi, ceil(100 (hi - lo)))`` and, for each t, left ends
   ``linspace(t - w - 2, t - w + 2, 400)`` (``ceil(2 * 2 * 100)``): about 160,000 bands.
4. [D] Algorithm 1, [C]: each attack has an FPR and an FNR (shares of the negative / positive
   population's models). FPR = FNR = 0 (perfect separation): eps = inf; exactly one of them 0:
   the attack is discarded; else eps = max(log((1 - delta - FPR) / FNR),
   log((1 - delta - FNR) / FPR)) (eq. 1 of [D]) with delta = 1e-5, a log of a non-positive
   number ignored (nan-max; both: discarded) and, [C], the result clipped below at 0. eps_s =
   the largest over the kept attacks of both families, clipped to [0, 50] [C]. If none is kept
   (only when the populations are separated, or nearly, at the grid's resolution; [C] fails on
   an assertion) eps_s = 50: our choice.
5. Points: bins of width 0.5 [D], ``H(s) = 2 ** -k`` for eps_s in [k/2, (k+1)/2) [D] while
   (k + 1)/2 <= ceil(ln(N - 1)) [C], else 0, where N is the number of *unlearned* models
   ([C]'s ``unlearned_confs.shape[0]``; [D] has N = M = 512). For N = 512: 14 bins over [0, 7)
   in [C], while [D] says 13 bins over [0, 6.5); we follow [C], which also sets the rule for
   other N. So eps_s = 50 scores 0.
6. F = mean of H(s) over the forget examples, in [0, 1] [D]; ``challenge_score`` = F * (RA_U /
   RA_R) * (TA_U / TA_R) [D, section 5].

Reading F: because [D] uses empirical rates, two independent populations of the *same*
distribution do not score near 1: order statistics in the tails (say 3 of one population and 1
of the other above some threshold, eps = log 3) give typical eps of 1-2.2 and F ~ 0.2 at any N.
F = 1 needs eps_s < 0.5 on every example, e.g. the same sample twice (then TPR = FPR for every
attack).

The band family is evaluated at the bands where its counts change (``_double_threshold_eps``),
not band by band: the same maximum, about 20 times faster, which the bootstrap and permutation
tests over models (``forget_quality.model_level``) need.

This module's eps agree with [C] (with its ``assert thr_eps`` on an array, which raises whenever
more than one attack survives, read as a length check, and ``.cuda()`` dropped) to 4e-7 on
Gaussian, shifted, peaky and integer-tied populations of 4-512 models, with identical F: rates
and logs are float64 here (float32 there); grids come from ``numpy.linspace`` (``torch.linspace``).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from mcu_jax.errors import InvalidArgument
from mcu_jax.forget_quality.checks import finite, populations

DELTA = 1e-5
EPSILON_CAP = 50.0
THRESHOLDS_PER_UNIT = 100
PEAKY_RATIO = 0.01
BAND_BUFFER = 2.0
BUCKET_WIDTH = 0.5
_LEFT_THRESHOLDS = int(math.ceil(2 * BAND_BUFFER * THRESHOLDS_PER_UNIT))   # 400
_CHUNK = 1 << 20          # single-threshold grid points evaluated at once (memory bound)




@dataclasses.dataclass(frozen=True, eq=False)
class ForgetScore:
  """F (``score``, also ``float(result)``), per-example eps (E,) and points H(s) (E,)."""
  score: float
  epsilons: np.ndarray
  bucket_scores: np.ndarray

  def __float__(self) -> float:
    return float(self.score)


def _epsilon_table(n_pos: int, n_neg: int, delta: float) -> np.ndarray:
  """eps of an attack by (positives predicted positive, negatives predicted positive).

  Shape (n_pos + 1, n_neg + 1): inf for perfect separation, -inf for a discarded attack
  (exactly one of FPR, FNR zero, or both logs undefined), else the clipped eq. (1).
  """
  tp = np.arange(n_pos + 1, dtype=np.float64)[:, None]
  fp = np.arange(n_neg + 1, dtype=np.float64)[None, :]
  fnr = (n_pos - tp) / n_pos
  fpr = fp / n_neg
  with np.errstate(divide="ignore", invalid="ignore"):
    e1 = np.log(1.0 - delta - fpr) - np.log(fnr)
    e2 = np.log(1.0 - delta - fnr) - np.log(fpr)
  eps = np.fmax(e1, e2)                         # nan-max of the two bounds
  eps = np.where(np.isnan(eps), -np.inf, np.maximum(eps, 0.0))
  fpr0, fnr0 = np.broadcast_arrays(fpr == 0, fnr == 0)
  eps = np.where(fpr0 != fnr0, -np.inf, eps)
  return np.where(fpr0 & fnr0, np.inf, eps)


def _grid(lo: float, hi: float, num: int, start: int, stop: int) -> np.ndarray:
  """Points [start, stop) of ``numpy.linspace(lo, hi, num)``, without building all of it."""
  if num == 1:
    return np.array([lo])
  step = (hi - lo) / (num - 1)
  points = np.arange(start, stop, dtype=np.float64) * step + lo
  if stop == num:
    points[-1] = hi
  return points


def _max_eps(table: np.ndarray, tp: np.ndarray, fp: np.ndarray) -> float:
  if tp.size == 0:
    return -np.inf
  return float(table.ravel()[tp * table.shape[1] + fp].max())


def _single_threshold_eps(pos, neg, table) -> float:
  """Largest eps of 'conf >= t -> positive' over the 100-per-unit grid (sorted pos, neg)."""
  lo, hi = min(pos[0], neg[0]), max(pos[-1], neg[-1])
  num = int(math.ceil((hi - lo) * THRESHOLDS_PER_UNIT))
  best = -np.inf
  for start in range(0, num, _CHUNK):
    t = _grid(lo, hi, num, start, min(start + _CHUNK, num))
    tp = pos.size - np.searchsorted(pos, t, side="left")
    fp = neg.size - np.searchsorted(neg, t, side="left")
    best = max(best, _max_eps(table, tp, fp))
  return best


def _double_threshold_eps(peaky, other, width, table) -> float:
  """Largest eps of 'l <= conf <= r -> peaky' over the challenge's band grid (sorted inputs).

  Exact, without enumerating the ~160,000 bands. For a right end r, moving the left end l up
  its 400-point grid lowers both counts inside [l, r]; eps rises with the peaky count and falls
  with the other's, so the best band of each count of the other starts at the grid's first
  point or at the first grid point above a value of the other population (or above the peaky
  population's smallest value, where a band holding all of it is discarded): the events. Below
  such a point lie the values up to the event, unless another value lies within one grid step
  above it; those few events are counted against the grid point itself, computed as
  ``numpy.linspace`` computes it. The others do not depend on r beyond the counts up to r, so
  they are evaluated once per run of right ends with equal counts.
  """
  lo = peaky[0] + width - BAND_BUFFER
  hi = peaky[-1] + BAND_BUFFER
  right = np.linspace(lo, hi, int(math.ceil((hi - lo) * THRESHOLDS_PER_UNIT)))
  start = right - width - BAND_BUFFER                 # each right end's first and last left end
  stop = right - width + BAND_BUFFER
  step = (stop - start) / (_LEFT_THRESHOLDS - 1)
  upto_p, upto_o = np.searchsorted(peaky, right, "right"), np.searchsorted(other, right, "right")
  # Left end = the grid's first point.
  best = _max_eps(table, np.maximum(upto_p - np.searchsorted(peaky, start, "left"), 0),
                  np.maximum(upto_o - np.searchsorted(other, start, "left"), 0))
  x = np.concatenate([peaky[:1], other])                                # the events
  below_p, below_o = np.searchsorted(peaky, x, "right"), np.searchsorted(other, x, "right")
  following = np.minimum(np.r_[peaky, np.inf][below_p], np.r_[other, np.inf][below_o])
  close = following - x <= 2.0 * step.max()
  if close.any():
    g = _first_grid_point_above(x[close], start[:, None], stop[:, None], step[:, None])
    tp = upto_p[:, None] - np.searchsorted(peaky, g.ravel(), "left").reshape(g.shape)
    fp = upto_o[:, None] - np.searchsorted(other, g.ravel(), "left").reshape(g.shape)
    ok = (x[close] >= start[:, None]) & (x[close] < stop[:, None])
    best = max(best, _max_eps(table, np.maximum(tp[ok], 0), np.maximum(fp[ok], 0)))
  x, below_p, below_o = x[~close], below_p[~close], below_o[~close]
  if x.size:
    # Runs of right ends with the same counts; an event applies to the right ends whose left
    # grid has a point above it (x < stop) and whose first point is not above it (x >= start).
    first = np.flatnonzero(np.r_[True, (upto_p[1:] != upto_p[:-1]) | (upto_o[1:] != upto_o[:-1])])
    last = np.r_[first[1:], right.size]
    lo_row = np.searchsorted(stop, x, "right")
    hi_row = np.searchsorted(start, x, "right")
    ok = (first[:, None] < hi_row) & (last[:, None] > lo_row)
    tp = upto_p[first][:, None] - below_p
    fp = upto_o[first][:, None] - below_o
    # An empty band (l > r) counts <= 0: (0, 0), a discarded attack, as the grid's own counts.
    best = max(best, _max_eps(table, np.maximum(tp[ok], 0), np.maximum(fp[ok], 0)))
  return best


def _first_grid_point_above(x, start, stop, step):
  """Per row, the first of ``numpy.linspace(start, stop, 400)`` above each x (the last point
  where none is): (rows, len(x)). The estimate from the step is corrected on the exact grid."""
  last = _LEFT_THRESHOLDS - 1
  left = lambda k: np.where(k >= last, stop, k * step + start)      # linspace's own formula
  c = np.clip(np.floor((x - start) / step), -1, last).astype(np.int64)   # last point <= x
  while np.any(up := (c < last) & (left(c + 1) <= x)):
    c += up
  while np.any(down := (c >= 0) & (left(c) > x)):
    c -= down
  return left(np.minimum(c + 1, last))


def per_example_epsilons(unlearned_confs, retrained_confs, delta: float = DELTA) -> np.ndarray:
  """The challenge's eps_s of every forget example (module docstring, steps 1-4).

  ``unlearned_confs`` (N, E) and ``retrained_confs`` (M, E): one (logit-scaled) confidence per
  model and forget example, N, M >= 2. Returns float64 (E,), each in [0, 50].
  """
  u, r = populations(unlearned_confs, retrained_confs)
  delta = float(delta)
  if not 0.0 <= delta < 1.0:
    raise InvalidArgument(f"delta must lie in [0, 1), got {delta}")
  u_sorted, r_sorted = np.sort(u, axis=0), np.sort(r, axis=0)
  retrain_is_positive = np.median(r, axis=0) > np.median(u, axis=0)
  tables: dict[tuple[int, int], np.ndarray] = {}

  def table(n_pos, n_neg):
    if (n_pos, n_neg) not in tables:
      tables[(n_pos, n_neg)] = _epsilon_table(n_pos, n_neg, delta)
    return tables[(n_pos, n_neg)]

  epsilons = np.empty(u.shape[1])
  for e in range(u.shape[1]):
    pos, neg = u_sorted[:, e], r_sorted[:, e]
    if retrain_is_positive[e]:
      pos, neg = neg, pos
    pos_spread, neg_spread = pos[-1] - pos[0], neg[-1] - neg[0]
    largest, smallest = max(pos_spread, neg_spread), min(pos_spread, neg_spread)
    if largest == 0.0:
      epsilons[e] = 0.0 if pos[0] == neg[0] else EPSILON_CAP
      continue
    if smallest / largest < PEAKY_RATIO:
      epsilons[e] = EPSILON_CAP
      continue
    peaky, other = (neg, pos) if pos_spread >= neg_spread else (pos, neg)
    eps = _single_threshold_eps(pos, neg, table(pos.size, neg.size))
    if eps != np.inf:                            # perfectly separated already: no band needed
      eps = max(eps, _double_threshold_eps(peaky, other, smallest,
                                           table(peaky.size, other.size)))
    epsilons[e] = EPSILON_CAP if eps == -np.inf else min(eps, EPSILON_CAP)
  return epsilons


def epsilon_bucket_scores(epsilons, num_models: int) -> np.ndarray:
  """Points H(s) of per-example eps (>= 0): 2 ** -floor(2 eps) below ceil(ln(N - 1)), else 0.

  ``num_models`` is N, the number of unlearned models (>= 2; N = 2 scores every example 0).
  Returns float64 of the shape of ``epsilons``.
  """
  eps = np.asarray(epsilons, dtype=np.float64)
  if np.any(np.isnan(eps)) or np.any(eps < 0):
    raise InvalidArgument("epsilons must be >= 0 (inf allowed), without NaN")
  if int(num_models) != num_models or num_models < 2:
    raise InvalidArgument(f"num_models must be an integer >= 2, got {num_models}")
  top = math.ceil(math.log(int(num_models) - 1))
  num_buckets = int(round(top / BUCKET_WIDTH))
  with np.errstate(invalid="ignore"):
    bucket = np.floor(eps / BUCKET_WIDTH)
  inside = bucket < num_buckets                 # inf -> False
  return np.where(inside, 0.5 ** np.where(inside, bucket, 0.0), 0.0)


def forget_score(unlearned_confs, retrained_confs, delta: float = DELTA) -> ForgetScore:
  """The challenge's forgetting quality F of an unlearned population (module docstring).

  ``unlearned_confs`` (N, E) and ``retrained_confs`` (M, E): the logit-scaled confidence of
  each of E forget examples under each unlearned / retrained model (N, M >= 2, finite; N and M
  may differ). Returns ``ForgetScore``: ``score`` = F in [0, 1] (``float(result)`` too),
  ``epsilons`` (E,) and ``bucket_scores`` (E,), the points H(s) averaged into F.
  """
  epsilons = per_example_epsilons(unlearned_confs, retrained_confs, delta)
  points = epsilon_bucket_scores(epsilons, np.shape(unlearned_confs)[0])
  epsilons.setflags(write=False)
  points.setflags(write=False)
  return ForgetScore(score=float(points.mean()), epsilons=epsilons, bucket_scores=points)


def challenge_score(F, ra_u, ra_r, ta_u, ta_r) -> float:
  """The challenge's final score F * (RA_U / RA_R) * (TA_U / TA_R).

  ``F`` in [0, 1] (a float or a ``ForgetScore``); the mean retain (RA) and test (TA)
  accuracies of the unlearned (U) and retrained (R) populations in one consistent unit
  (percent here): RA_R, TA_R > 0 and RA_U, TA_U >= 0.
  """
  F = finite(F, "F")
  if not 0.0 <= F <= 1.0:
    raise InvalidArgument(f"F must lie in [0, 1], got {F}")
  values = {name: finite(v, name) for name, v in
            (("ra_u", ra_u), ("ra_r", ra_r), ("ta_u", ta_u), ("ta_r", ta_r))}
  for name in ("ra_r", "ta_r"):
    if values[name] <= 0:
      raise InvalidArgument(f"{name} must be > 0, got {values[name]}")
  for name in ("ra_u", "ta_u"):
    if values[name] < 0:
      raise InvalidArgument(f"{name} must be >= 0, got {values[name]}")
  return F * (values["ra_u"] / values["ra_r"]) * (values["ta_u"] / values["ta_r"])
