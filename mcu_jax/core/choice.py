"""The choice of t on the curve: the alignment gap, its minimum and the effective region.

As the reference's ``find_optimal_t`` and ``plot_region.py``, from accuracies sampled by a
sweep (``mcu_jax.runtime.sweep``)::

    gap(t) = (|RA(t) - targets.retain| + |FA(t) - targets.forget|) / 2

with RA and FA not-a-knot cubic splines through the sampled retain and forget accuracies
(scipy's ``interp1d(kind="cubic")``, the reference's). The chosen t minimises gap on the
search window (default [0.75, 1]); the effective region is where gap(t) < gap(1), the t that
beat the pre-unlearned model. Accuracies and targets are in percent.

A chosen point whose retain accuracy (the same spline at t) lies more than
``COLLAPSE_POINTS`` below the lower of the two ends' (the first and last swept t: theta_o and
theta_p) is flagged ``Choice.collapsed``: the curve broke the model there (a learning rate far
too large, say), and no alignment makes that a result.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Protocol, cast

import numpy as np

from mcu_jax.core.beta import Targets, as_targets
from mcu_jax.core.curves import check_t
from mcu_jax.errors import InvalidArgument

COLLAPSE_POINTS = 10.0
"""Percentage points of retain accuracy below both ends that flag a chosen t as collapsed."""

T_SEARCH = (0.75, 1.0)
"""The reference's window for t, [0.75, 1]: the one default of every ``t_search``."""

def check_ts(ts, name: str = "ts") -> np.ndarray:
  """``ts`` as a strictly increasing, non-empty float64 1-D array in [0, 1]."""
  ts = np.asarray(ts, dtype=np.float64)
  if ts.ndim != 1 or ts.size == 0:
    raise InvalidArgument(f"{name}: expected a non-empty 1-D array, got shape {ts.shape}")
  check_t(ts)
  if ts.size > 1 and not np.all(np.diff(ts) > 0):
    raise InvalidArgument(f"{name}: expected strictly increasing values, got {ts.tolist()}")
  return ts


def _check_curves(ts, *values) -> tuple[np.ndarray, ...]:
  ts = check_ts(ts)
  if ts.size < 4:
    raise InvalidArgument(f"ts: cubic interpolation needs at least 4 sampled t, got {ts.size}")
  out = []
  for v in values:
    v = np.asarray(v, dtype=np.float64)
    if v.shape != ts.shape:
      raise InvalidArgument(f"accuracies: expected shape {ts.shape} like ts, got {v.shape}")
    if not np.all(np.isfinite(v)):
      raise InvalidArgument("accuracies: expected finite values (is the model NaN?), got "
                            f"{v.tolist()}")
    out.append(v)
  return (ts, *out)


class GapFn(Protocol):
  """What ``gap`` returns: the vectorised gap, with ``domain`` the sampled range (lo, hi)."""
  domain: tuple[float, float]

  def __call__(self, t: Any) -> np.ndarray: ...


def gap(ts, retain_acc, forget_acc, *, targets: Targets) -> GapFn:
  """The interpolated gap as a vectorised callable on [ts[0], ts[-1]] (t outside raises).

  ``ts`` (T,) strictly increasing with T >= 4; ``retain_acc``, ``forget_acc`` (T,) percent.
  """
  from scipy.interpolate import CubicSpline
  targets = as_targets(targets)
  ts, ra, fa = _check_curves(ts, retain_acc, forget_acc)
  ra_fn = CubicSpline(ts, ra, bc_type="not-a-knot", extrapolate=False)
  fa_fn = CubicSpline(ts, fa, bc_type="not-a-knot", extrapolate=False)
  lo, hi = float(ts[0]), float(ts[-1])

  def fn(t):
    t = np.asarray(t, dtype=np.float64)
    if t.size and (np.min(t) < lo or np.max(t) > hi):
      raise InvalidArgument(f"t: expected values in the sampled range [{lo}, {hi}], got "
                            f"[{np.min(t)}, {np.max(t)}]")
    return (np.abs(ra_fn(t) - targets.retain) + np.abs(fa_fn(t) - targets.forget)) / 2.0

  gap_fn = cast(GapFn, fn)
  gap_fn.domain = (lo, hi)
  return gap_fn


def _grid(gap_fn, lo: float, hi: float, num: int) -> np.ndarray:
  a, b = max(lo, gap_fn.domain[0]), min(hi, gap_fn.domain[1])
  if a > b:
    raise InvalidArgument(f"t_search: [{lo}, {hi}] does not meet the sampled range "
                          f"{list(gap_fn.domain)}")
  return np.linspace(a, b, num)


def optimal_t(ts, retain_acc, forget_acc, *, targets: Targets,
              t_search: tuple[float, float] = T_SEARCH, num: int = 251) -> float:
  """The t of a dense grid of ``num`` points on ``t_search`` (within the sampled range) that
  minimises the gap; the first minimum wins. 251 points on [0.75, 1] is a step of 0.001 (the
  reference used 26). Returns t itself (the reference's ``find_optimal_t`` returned an index).
  """
  fn = gap(ts, retain_acc, forget_acc, targets=targets)
  grid = _grid(fn, *check_window(t_search), num)
  return float(grid[int(np.argmin(fn(grid)))])


def effective_region(ts, retain_acc, forget_acc, *, targets: Targets,
                     reference_t: float = 1.0, num: int = 1001) -> list[tuple[float, float]]:
  """Intervals (t_lo, t_hi) of a dense grid on the sampled range where gap(t) <
  gap(reference_t): each runs from the first to the last grid point of a run of points below.
  Empty when none is. (plot_region.py used 1000 points on [0, 1].)"""
  fn = gap(ts, retain_acc, forget_acc, targets=targets)
  grid = _grid(fn, -np.inf, np.inf, num)
  below = fn(grid) < fn(np.asarray([reference_t]))[0]
  edges = np.flatnonzero(np.diff(np.concatenate([[0], below.astype(np.int8), [0]])))
  return [(float(grid[a]), float(grid[b - 1])) for a, b in zip(edges[::2], edges[1::2])]


def check_window(t_search, name: str = "t_search") -> tuple[float, float]:
  """``t_search`` as a pair of floats (lo, hi) with 0 <= lo < hi <= 1; else ``InvalidArgument``
  naming ``name``."""
  try:
    lo, hi = (float(v) for v in t_search)
  except (TypeError, ValueError):
    raise InvalidArgument(f"{name}: expected a pair (lo, hi), got {t_search!r}") from None
  if not 0.0 <= lo < hi <= 1.0:
    raise InvalidArgument(f"{name}: expected 0 <= lo < hi <= 1, got {t_search!r}")
  return lo, hi


@dataclasses.dataclass(frozen=True)
class Choice:
  """The chosen t and what goes with it.

  Attributes:
    t: the chosen t.
    gap: the interpolated gap at t (percent).
    region: the effective region, a list of (t_lo, t_hi).
    targets: the targets the gap was measured against.
    t_search: the window t was searched in.
    at_bound: "lower" or "upper" when t sits on that end of ``t_search`` (the minimum may lie
      outside the window, or t = 1 may mean the base model alone is best), else None.
    retain_acc: the interpolated retain accuracy at t (percent).
    collapsed: retain_acc lies more than ``COLLAPSE_POINTS`` below both ends' retain accuracy.
  """
  t: float
  gap: float
  region: list
  targets: Targets
  t_search: tuple[float, float] = T_SEARCH
  at_bound: str | None = None
  retain_acc: float = float("nan")
  collapsed: bool = False


def bound_warning(choice: Choice) -> str:
  """What a t on a bound of its window means, in one sentence."""
  lo, hi = choice.t_search
  why = ("the gap may be smaller outside the window" if choice.at_bound == "lower" or hi < 1
         else "no point of the curve aligns better than the end, theta_p itself")
  return f"the chosen t = {choice.t:.3f} lies on the {choice.at_bound} bound of t_search = " \
         f"[{lo}, {hi}]: {why}"


def collapse_warning(choice: Choice) -> str:
  """What a collapsed choice means, in one sentence."""
  return (f"the chosen t = {choice.t:.3f} has retain accuracy {choice.retain_acc:.1f} %, more "
          f"than {COLLAPSE_POINTS:g} points below both ends of the curve: the curve training "
          "broke the model (is the learning rate too large?); this is not an unlearned model")


def select_t(result, targets: Targets, *, t_search: tuple[float, float] = T_SEARCH,
             retain: str = "retain", forget: str = "forget", warn: bool = True) -> Choice:
  """``optimal_t`` and ``effective_region`` of a sweep's ``retain`` and ``forget`` accuracies.

  ``result`` is a ``SweepResult`` (or anything with ``ts`` and an ``accuracy`` dict). A t on a
  bound of ``t_search`` is flagged in ``Choice.at_bound`` and, with ``warn``, warned about.
  """
  targets = as_targets(targets)
  lo, hi = check_window(t_search)
  for name in (retain, forget):
    if name not in result.accuracy:
      raise InvalidArgument(f"result: the sweep has no {name!r} set (it has "
                            f"{sorted(result.accuracy)})")
  curves = (result.ts, result.accuracy[retain], result.accuracy[forget])
  t = optimal_t(*curves, targets=targets, t_search=(lo, hi))
  value = float(gap(*curves, targets=targets)(np.asarray([t]))[0])
  first, last = max(lo, float(result.ts[0])), min(hi, float(result.ts[-1]))  # the grid's ends
  bound = "lower" if t == first else "upper" if t == last else None
  from scipy.interpolate import CubicSpline
  ts, ra = np.asarray(result.ts, np.float64), np.asarray(result.accuracy[retain], np.float64)
  retain_acc = float(CubicSpline(ts, ra, bc_type="not-a-knot")(t))
  collapsed = retain_acc < min(ra[0], ra[-1]) - COLLAPSE_POINTS
  chosen = Choice(t=t, gap=value, region=effective_region(*curves, targets=targets),
                  targets=targets, t_search=(lo, hi), at_bound=bound, retain_acc=retain_acc,
                  collapsed=bool(collapsed))
  if bound is not None and warn:
    warnings.warn(bound_warning(chosen), stacklevel=2)
  if collapsed and warn:
    warnings.warn(collapse_warning(chosen), stacklevel=2)
  return chosen


__all__ = ["T_SEARCH", "check_ts", "check_window", "gap", "optimal_t", "effective_region", "Choice",
           "select_t", "bound_warning", "collapse_warning", "COLLAPSE_POINTS"]
