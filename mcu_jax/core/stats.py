"""Statistics at the unit that varies: models (or seeds), never examples.

All forget examples are scored by the same models, and models differ as much as examples do, so
a test over examples overstates the evidence. Here every resampling moves whole units (the rows,
axis 0, of each sample):

* ``bootstrap``: an interval of any statistic of one or more samples, each resampled with
  replacement over its units; samples of one ``group`` share their draws (paired units, e.g.
  base_i and mcu_i, which share original i). Percentile or normal (estimate -+ 1.96 bootstrap
  sd) intervals (``interval``).
* ``paired_permutation``: a two-sided test of a difference between two paired samples, by
  swapping a_i and b_i: all 2^N swaps when 2^N <= ``permutations`` (exact), else
  ``permutations`` random ones with p = (1 + #{|T*| >= |T|}) / (1 + permutations) (Phipson and
  Smyth 2010, never 0).
* ``sign_flip``: the same test for paired differences d_i (one number per unit), T = mean d.

NumPy float64; the statistics are any callables returning a finite number. Errors raise
``mcu_jax.validation.InvalidArgument`` naming the argument.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Hashable, Sequence

import numpy as np

from mcu_jax.errors import InvalidArgument

LEVEL = 0.95
RESAMPLES = 1000
PERMUTATIONS = 2000
_TIE = 1e-12        # |T*| >= |T| - _TIE: a swap that gives the observed value counts as extreme


@dataclasses.dataclass(frozen=True, eq=False)
class Bootstrap:
  """A statistic's value on the samples and its percentile interval over ``replicates``.

  ``estimate``: the statistic of the samples as given; ``low``/``high``: the (1 - level)/2 and
  (1 + level)/2 quantiles of ``replicates`` (resamples,), the statistic of each resample. A
  statistic with m values gives arrays: estimate, low, high (m,), replicates (resamples, m).
  """
  estimate: float | np.ndarray
  low: float | np.ndarray
  high: float | np.ndarray
  level: float
  replicates: np.ndarray

  def to_dict(self) -> dict:
    """``{"value", "ci95", "resamples"}`` of a one-valued statistic (``ci95`` is named for the
    default level)."""
    if np.ndim(self.estimate):
      raise InvalidArgument("to_dict: this bootstrap has several values; read its arrays")
    return {"value": self.estimate, "ci95": [self.low, self.high],
            "resamples": int(self.replicates.shape[0])}


@dataclasses.dataclass(frozen=True, eq=False)
class Permutation:
  """A two-sided paired permutation test of ``difference`` = statistic(a, b).

  ``p_value`` in (0, 1]; ``flips``: swaps evaluated (2^N when ``exact``); ``null`` (flips,):
  the statistic under each swap (the identity included when exact).
  """
  difference: float
  p_value: float
  flips: int
  exact: bool
  null: np.ndarray

  def to_dict(self) -> dict:
    return {"difference": self.difference, "p_value": self.p_value, "flips": self.flips,
            "exact": self.exact}


def _units(name: str, sample) -> np.ndarray:
  sample = np.asarray(sample, dtype=np.float64)
  if sample.ndim < 1 or sample.shape[0] < 2:
    raise InvalidArgument(f"{name}: expected at least 2 units along axis 0, got shape "
                          f"{sample.shape}")
  if not np.all(np.isfinite(sample)):
    raise InvalidArgument(f"{name} has non-finite values")
  return sample


def _count(name: str, value, low: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
    raise InvalidArgument(f"{name}: expected an integer >= {low}, got {value!r}")
  return int(value)


def _level(level) -> float:
  if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < level < 1.0:
    raise InvalidArgument(f"level: expected a number in (0, 1), got {level!r}")
  return float(level)


def _value(statistic, args, what: str, scalar: bool = False):
  value = np.asarray(statistic(*args), dtype=np.float64)
  if value.ndim > (0 if scalar else 1) or not np.all(np.isfinite(value)):
    raise InvalidArgument(f"statistic: returned {value} {what}; expected a finite number"
                          f"{'' if scalar else ' or a 1-D array of them'}")
  return float(value) if value.ndim == 0 else value


def interval(estimate, replicates, *, level: float = LEVEL, method: str = "percentile"):
  """(low, high) of a bootstrap: "percentile", the quantiles of ``replicates`` (axis 0), or
  "normal", ``estimate`` -+ z_{(1+level)/2} x their sample sd (ddof 1). The normal interval is
  centred on the estimate: use it where resampling itself shifts the statistic (the
  challenge's F: a resample's duplicated models bias it, see ``forget_quality.model_level``)
  while its spread still measures the sampling error."""
  from scipy import special
  level = _level(level)
  replicates = np.asarray(replicates, np.float64)
  if method == "percentile":
    low, high = np.quantile(replicates, [(1.0 - level) / 2.0, (1.0 + level) / 2.0], axis=0)
  elif method == "normal":
    z = math.sqrt(2.0) * special.erfinv(level)
    sd = np.std(replicates, axis=0, ddof=1) if replicates.shape[0] > 1 else 0.0 * replicates[0]
    low, high = estimate - z * sd, estimate + z * sd
  else:
    raise InvalidArgument(f"method: expected 'percentile' or 'normal', got {method!r}")
  if np.ndim(low) == 0:
    return float(low), float(high)
  return low, high


def bootstrap(statistic: Callable[..., float], samples: Sequence, *,
              groups: Sequence[int] | None = None, resamples: int = RESAMPLES,
              level: float = LEVEL, method: str = "percentile", seed: int = 0) -> Bootstrap:
  """Bootstrap interval of ``statistic(*samples)`` over the samples' units.

  ``samples``: arrays with the units on axis 0 (each >= 2 units, finite). ``groups``: one id
  per sample; samples with the same id must have as many units and are resampled with the same
  indices (paired), others independently (default: every sample its own group). ``resamples``
  >= 1 draws from ``numpy.random.default_rng(seed)``. ``method``: the interval (``interval``).
  """
  samples = [_units(f"samples[{i}]", s) for i, s in enumerate(samples)]
  if not samples:
    raise InvalidArgument("samples: expected at least one sample")
  groups = list(range(len(samples))) if groups is None else list(groups)
  if len(groups) != len(samples):
    raise InvalidArgument(f"groups: expected one id per sample ({len(samples)}), got "
                          f"{len(groups)}")
  sizes: dict[Hashable, int] = {}
  for g, s in zip(groups, samples):
    if sizes.setdefault(g, s.shape[0]) != s.shape[0]:
      raise InvalidArgument(f"groups: samples of group {g!r} must have as many units, got "
                            f"{sizes[g]} and {s.shape[0]}")
  resamples, level = _count("resamples", resamples, 1), _level(level)
  estimate = _value(statistic, samples, "on the samples")
  rng = np.random.default_rng(seed)
  replicates = np.empty((resamples,) + np.shape(estimate))
  for b in range(resamples):
    draws = {g: rng.integers(0, n, n) for g, n in sizes.items()}
    value = _value(statistic, [s[draws[g]] for g, s in zip(groups, samples)], "on a resample")
    if np.shape(value) != np.shape(estimate):
      raise InvalidArgument(f"statistic: returned shape {np.shape(value)} on a resample and "
                            f"{np.shape(estimate)} on the samples")
    replicates[b] = value
  low, high = interval(estimate, replicates, level=level, method=method)
  replicates.setflags(write=False)
  return Bootstrap(estimate, low, high, level, replicates)


def _flip_masks(n: int, permutations: int, rng) -> tuple[np.ndarray, bool]:
  if n < 63 and 2 ** n <= permutations:
    return np.array(list(itertools.product((False, True), repeat=n)), bool), True
  return rng.random((permutations, n)) < 0.5, False


def paired_permutation(statistic: Callable[[np.ndarray, np.ndarray], float], a, b, *,
                       permutations: int = PERMUTATIONS, seed: int = 0) -> Permutation:
  """Two-sided paired permutation test of ``statistic(a, b)`` (e.g. F(b) - F(a)).

  ``a``, ``b``: arrays with the same number N >= 2 of paired units on axis 0 (unit i of ``a``
  and of ``b`` share what pairs them). Each swap exchanges a_i and b_i for a random half of the
  units (the null: the labels a and b are exchangeable within each pair). All 2^N swaps when
  2^N <= ``permutations``, else ``permutations`` random swaps from
  ``numpy.random.default_rng(seed)``.
  """
  a, b = _units("a", a), _units("b", b)
  if a.shape != b.shape:
    raise InvalidArgument(f"b: expected the shape of a {a.shape} (paired units), got {b.shape}")
  permutations = _count("permutations", permutations, 1)
  observed = _value(statistic, (a, b), "on the samples", scalar=True)
  masks, exact = _flip_masks(a.shape[0], permutations, np.random.default_rng(seed))
  shape = (-1,) + (1,) * (a.ndim - 1)
  null = np.array([_value(statistic, (np.where(m.reshape(shape), b, a),
                                      np.where(m.reshape(shape), a, b)), "on a swap",
                          scalar=True)
                   for m in masks])
  extreme = int(np.sum(np.abs(null) >= abs(observed) - _TIE))
  p = extreme / null.size if exact else (1 + extreme) / (1 + null.size)
  null.setflags(write=False)
  return Permutation(observed, float(p), int(null.size), exact, null)


def sign_flip(differences, *, permutations: int = PERMUTATIONS, seed: int = 0) -> Permutation:
  """Two-sided sign-flip test of mean(``differences``) = 0 over N >= 2 paired units (one
  difference each, e.g. MCU minus base per seed): ``paired_permutation`` of the mean."""
  d = _units("differences", differences)
  if d.ndim != 1:
    raise InvalidArgument(f"differences: expected one number per unit, got shape {d.shape}")
  # Swapping a_i and b_i flips the sign of d_i: a = 0, b = d.
  return paired_permutation(lambda a, b: float(np.mean(b - a)), np.zeros_like(d), d,
                            permutations=permutations, seed=seed)


__all__ = ["LEVEL", "RESAMPLES", "PERMUTATIONS", "Bootstrap", "Permutation", "interval",
           "bootstrap", "paired_permutation", "sign_flip"]
