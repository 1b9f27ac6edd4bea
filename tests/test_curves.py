import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcu_jax.core import curves
from mcu_jax.core.curves import Curve


def bezier_np(t, n):
  return np.array([math.comb(n - 1, i) * t**i * (1 - t) ** (n - 1 - i) for i in range(n)])


def polychain_np(t, n):
  # Independent form: find the segment, interpolate its two ends.
  out = np.zeros(n)
  if t >= 1.0:
    out[-1] = 1.0
    return out
  seg = int(np.floor(t * (n - 1)))
  local = t * (n - 1) - seg
  out[seg], out[seg + 1] = 1 - local, local
  return out


TS = np.concatenate([[0.0, 1.0, 0.5, 1e-4, 1 - 1e-4], np.random.default_rng(0).uniform(size=60)])


@pytest.mark.parametrize("num_bends", [2, 3, 4, 6])
@pytest.mark.parametrize("kind,closed_form", [("bezier", bezier_np), ("polychain", polychain_np)])
def test_coefficients_match_closed_form(num_bends, kind, closed_form):
  fn = jax.jit(lambda t: curves.coefficients(kind, t, num_bends))
  got = np.asarray(jax.vmap(fn)(jnp.asarray(TS, jnp.float32)), np.float64)
  want = np.stack([closed_form(np.float64(np.float32(t)), num_bends) for t in TS])
  chex.assert_shape(got, (len(TS), num_bends))
  np.testing.assert_allclose(got, want, atol=2e-6)
  np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=2e-6)


@pytest.mark.parametrize("kind", curves.KINDS)
def test_endpoints_exact(kind):
  for t, index in ((0.0, 0), (1.0, -1)):
    c = np.asarray(curves.coefficients(kind, t, 5))
    expected = np.zeros(5)
    expected[index] = 1.0
    np.testing.assert_array_equal(c, expected)


def random_tree(rng, dtype=np.float32):
  return {"conv": {"kernel": rng.normal(size=(3, 3, 2, 4)).astype(dtype)},
          "dense": [rng.normal(size=(5,)).astype(dtype), rng.normal(size=(4, 5)).astype(dtype)]}


def test_point_equals_hand_combination(rng):
  start, end = random_tree(rng), random_tree(rng)
  curve = Curve.from_endpoints(start, end, num_bends=4)
  controls = jax.tree.map(lambda c: jnp.asarray(rng.normal(size=c.shape), c.dtype), curve.controls)
  curve = curve.replace(controls=controls)
  t = 0.3
  c = bezier_np(t, 4)
  want = jax.tree.map(lambda s, m, e: c[0] * s + c[1] * np.asarray(m[0]) + c[2] * np.asarray(m[1])
                      + c[3] * e, start, controls, end)
  got = curves.point(curve, t)
  chex.assert_trees_all_equal_shapes_and_dtypes(got, start)
  chex.assert_trees_all_close(got, want, atol=1e-5)


@pytest.mark.parametrize("kind", curves.KINDS)
@pytest.mark.parametrize("num_bends", [2, 3, 5])
def test_straight_line_init(rng, kind, num_bends):
  start, end = random_tree(rng), random_tree(rng)
  curve = Curve.from_endpoints(start, end, num_bends=num_bends, kind=kind)
  assert curve.num_bends == num_bends
  for t in (0.0, 0.25, 0.6, 1.0):
    want = jax.tree.map(lambda s, e, t=t: (1 - t) * s + t * e, start, end)
    chex.assert_trees_all_close(curves.point(curve, t), want, atol=1e-5)
  chex.assert_trees_all_equal(curves.point(curve, 0.0), start)
  chex.assert_trees_all_equal(curves.point(curve, 1.0), end)


def test_point_works_under_jit_vmap_and_keeps_dtypes(rng):
  start = {"a": jnp.asarray(rng.normal(size=(3,)), jnp.bfloat16), "b": jnp.ones((2, 2))}
  end = jax.tree.map(lambda x: x * 2, start)
  curve = Curve.from_endpoints(start, end)
  stacked = jax.jit(curves.points)(curve, jnp.linspace(0, 1, 7))
  chex.assert_shape(stacked["b"], (7, 2, 2))
  assert stacked["a"].dtype == jnp.bfloat16
  np.testing.assert_allclose(stacked["b"][:, 0, 0], 1 + np.linspace(0, 1, 7), rtol=1e-6)


def test_flax_params_work():
  import flax.linen as nn
  model = nn.Dense(3)
  p0 = model.init(jax.random.PRNGKey(0), jnp.ones((1, 2)))["params"]
  p1 = model.init(jax.random.PRNGKey(1), jnp.ones((1, 2)))["params"]
  mid = curves.point(Curve.from_endpoints(p0, p1), 0.5)
  chex.assert_trees_all_close(mid, jax.tree.map(lambda a, b: (a + b) / 2, p0, p1), atol=1e-6)


class TestErrors:

  def test_structure_mismatch(self):
    with pytest.raises(ValueError, match="structures"):
      Curve.from_endpoints({"a": jnp.ones(2)}, {"b": jnp.ones(2)})

  def test_shape_mismatch(self):
    with pytest.raises(ValueError, match=r"shape at \['a'\]: \(2,\) vs \(3,\)"):
      Curve.from_endpoints({"a": jnp.ones(2)}, {"a": jnp.ones(3)})

  def test_dtype_mismatch(self):
    with pytest.raises(ValueError, match="dtype"):
      Curve.from_endpoints({"a": jnp.ones(2)}, {"a": jnp.ones(2, jnp.bfloat16)})

  @pytest.mark.parametrize("num_bends", [1, 0, -3, 2.5])
  def test_num_bends(self, num_bends):
    with pytest.raises(ValueError, match="num_bends"):
      Curve.from_endpoints({"a": jnp.ones(2)}, {"a": jnp.ones(2)}, num_bends=num_bends)
    with pytest.raises(ValueError, match="num_bends"):
      curves.bezier_coefficients(0.5, num_bends)

  def test_unknown_kind(self):
    with pytest.raises(ValueError, match="unknown curve kind 'spline'"):
      Curve.from_endpoints({"a": jnp.ones(2)}, {"a": jnp.ones(2)}, kind="spline")

  @pytest.mark.parametrize("t", [-0.01, 1.5, float("nan")])
  def test_t_outside_unit_interval(self, t):
    curve = Curve.from_endpoints({"a": jnp.ones(2)}, {"a": jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
      curves.point(curve, t)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
      curves.points(curve, jnp.array([0.0, t]))
