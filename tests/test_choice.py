"""The choice of t: scipy's cubic gap, the effective region, the window's bounds."""
import warnings

import numpy as np
import pytest
from scipy.interpolate import CubicSpline, interp1d

from mcu_jax.core import choice as ch
from mcu_jax.core.beta import Targets
from mcu_jax.errors import InvalidArgument
from mcu_jax.runtime.sweep import SweepResult


def _synthetic():
  ts = np.linspace(0.0, 1.0, 20)
  retain = 99.0 - 8.0 * np.sin(np.pi * ts) ** 2 - 3.0 * ts
  forget = 99.0 - 30.0 * ts ** 1.5
  return ts, retain, forget


def _scipy_gap(ts, retain, forget, r, f, grid):
  ra = interp1d(ts, retain, kind="cubic")(grid)
  fa = interp1d(ts, forget, kind="cubic")(grid)
  return (np.abs(ra - r) + np.abs(fa - f)) / 2


@pytest.mark.parametrize("targets", [(97.0, 85.0), (96.0, 0.0), (100.0, 95.0)])
def test_optimal_t_matches_scipy(targets):
  ts, retain, forget = _synthetic()
  grid = np.linspace(0.75, 1.0, 251)
  expected = grid[np.argmin(_scipy_gap(ts, retain, forget, *targets, grid))]
  named = Targets(*targets)
  assert ch.optimal_t(ts, retain, forget, targets=named) == pytest.approx(expected, abs=1e-12)
  fn = ch.gap(ts, retain, forget, targets=named)
  np.testing.assert_allclose(fn(grid), _scipy_gap(ts, retain, forget, *targets, grid),
                             rtol=1e-10, atol=1e-10)


def test_effective_region_matches_scipy():
  ts, retain, forget = _synthetic()
  targets = (97.0, 85.0)
  grid = np.linspace(0.0, 1.0, 1001)
  values = _scipy_gap(ts, retain, forget, *targets, grid)
  below = values < _scipy_gap(ts, retain, forget, *targets, np.array([1.0]))[0]
  region = ch.effective_region(ts, retain, forget, targets=Targets(*targets))
  assert region, "the synthetic curve has an effective region"
  mask = np.zeros_like(below)
  for lo, hi in region:
    assert lo <= hi
    mask |= (grid >= lo - 1e-12) & (grid <= hi + 1e-12)
  np.testing.assert_array_equal(mask, below)
  # a curve that only gets worse before t = 1 has no region
  assert ch.effective_region(ts, 50 + 50 * ts, 50 - 50 * ts,
                             targets=Targets(retain=100.0, forget=0.0)) == []


def test_select_t_on_sweep_result():
  ts, retain, forget = _synthetic()
  result = SweepResult(ts=ts, accuracy={"retain": retain, "forget": forget},
                       loss={}, path_length=np.zeros_like(ts))
  targets = Targets(retain=95.0, forget=75.0)     # forget hits 75 at t = 0.8 ** (2 / 3) = 0.86
  with warnings.catch_warnings():
    warnings.simplefilter("error")            # an interior t: no warning
    choice = ch.select_t(result, targets)
  assert choice.t == ch.optimal_t(ts, retain, forget, targets=targets)
  assert choice.region == ch.effective_region(ts, retain, forget, targets=targets)
  assert choice.at_bound is None and choice.targets == targets and 0.8 < choice.t < 0.95


def test_a_t_on_the_window_bound_is_flagged_and_warned_about():
  ts = np.linspace(0.0, 1.0, 20)
  retain = np.full_like(ts, 99.0)
  result = SweepResult(ts=ts, accuracy={"retain": retain, "forget": 90.0 - 20.0 * ts},
                       loss={}, path_length=np.zeros_like(ts))
  # Forget accuracy falls to the target 85 at t = 0.25, below the window [0.75, 1]: the gap
  # grows over the whole window, so its minimum is the window's lower bound.
  with pytest.warns(UserWarning, match="lies on the lower bound of t_search"):
    choice = ch.select_t(result, Targets(retain=99.0, forget=85.0))
  assert (choice.t, choice.at_bound) == (0.75, "lower")
  # Forgetting that never reaches the target: the best point is the end, theta_p itself.
  with pytest.warns(UserWarning, match="no point of the curve aligns better than the end"):
    choice = ch.select_t(result, Targets(retain=99.0, forget=0.0))
  assert (choice.t, choice.at_bound) == (1.0, "upper")
  with pytest.warns(UserWarning, match="upper bound"):
    assert ch.select_t(result, Targets(retain=99.0, forget=0.0), t_search=(0.2, 0.6)).t == 0.6


def test_a_collapsed_choice_is_flagged_and_warned_about():
  """Retain accuracy that falls from ~90 % at both ends to ~15 % inside the window (what a
  learning rate of 1e6 does): flagged, with the rule's numbers; a dip of 5 points is not."""
  ts = np.linspace(0.0, 1.0, 20)
  bump = np.exp(-((ts - 0.85) / 0.08) ** 2)
  forget = 95.0 - 95.0 * bump          # theta_p forgets nothing; the broken interior "does"
  for dip, collapsed in ((75.0, True), (5.0, False)):
    retain = 90.0 - dip * bump
    result = SweepResult(ts=ts, accuracy={"retain": retain, "forget": forget}, loss={},
                         path_length=np.zeros_like(ts))
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      choice = ch.select_t(result, Targets(retain=90.0, forget=0.0))
    assert choice.collapsed is collapsed
    expected = float(CubicSpline(ts, retain, bc_type="not-a-knot")(choice.t))
    assert choice.retain_acc == pytest.approx(expected)
    messages = [str(w.message) for w in caught]
    assert any("more than 10 points below both ends" in m for m in messages) is collapsed


def test_choice_bad_inputs():
  ts, retain, forget = _synthetic()
  targets = Targets(retain=90.0, forget=0.0)
  with pytest.raises(ValueError, match="at least 4"):
    ch.gap(ts[:3], retain[:3], forget[:3], targets=targets)
  with pytest.raises(ValueError, match="increasing"):
    ch.optimal_t(ts[::-1], retain, forget, targets=targets)
  with pytest.raises(ValueError):
    ch.optimal_t(ts * 2.0, retain, forget, targets=targets)
  with pytest.raises(ValueError):
    ch.gap(ts, retain[:-1], forget, targets=targets)
  fn = ch.gap(ts[:10], retain[:10], forget[:10], targets=targets)
  with pytest.raises(ValueError, match="sampled range"):
    fn(np.array([0.9]))
  with pytest.raises(TypeError):
    ch.gap(ts, retain, forget, 90.0, 0.0)             # targets are keyword-only
  result = SweepResult(ts=ts, accuracy={"retain": retain, "forget": forget}, loss={},
                       path_length=np.zeros_like(ts))
  with pytest.raises(InvalidArgument, match=r"targets: expected mcu_jax.Targets"):
    ch.select_t(result, (90.0, 0.0))
  with pytest.raises(InvalidArgument, match=r"t_search: expected 0 <= lo < hi <= 1"):
    ch.select_t(result, targets, t_search=(0.9, 0.8))
  with pytest.raises(InvalidArgument, match="accuracies: expected finite values"):
    ch.select_t(SweepResult(ts=ts, accuracy={"retain": retain * np.nan, "forget": forget},
                            loss={}, path_length=np.zeros_like(ts)), targets)
