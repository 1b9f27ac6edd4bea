"""Parametric curves between two parameter pytrees.

A curve with ``num_bends`` bends ``w_0 .. w_{n-1}`` is ``phi(t) = sum_i c_i(t) w_i``. The first
bend is the fixed start (the original model theta_o), the last the fixed end (the pre-unlearned
model theta_p); the middle bends are the trainable controls, stacked on a leading axis of every
leaf.

* Bezier:    ``c_i(t) = C(n-1, i) t^i (1-t)^(n-1-i)`` (Bernstein basis).
* PolyChain: piecewise linear through the bends, bend i sitting at ``t = i / (n-1)``.

Nothing here is specific to a model: any pytree of arrays (Flax params, plain dicts) works.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from mcu_jax.errors import InvalidArgument
from mcu_jax.typing import PyTree

KINDS = ("bezier", "polychain")


def _check_num_bends(num_bends: int) -> None:
  if not isinstance(num_bends, (int, np.integer)) or num_bends < 2:
    raise InvalidArgument(f"num_bends must be an integer >= 2 (start and end), got "
                          f"{num_bends!r}")


def check_t(t) -> None:
  """Raises InvalidArgument if ``t`` is concrete and has a value outside [0, 1]. Tracers pass."""
  try:
    values = np.asarray(t, dtype=np.float64)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError, TypeError):
    return
  if values.size and (not np.all(np.isfinite(values)) or values.min() < 0.0 or values.max() > 1.0):
    shown = values.tolist() if values.ndim else float(values)
    raise InvalidArgument(f"t must lie in [0, 1], got {shown}")


def bezier_coefficients(t: float | jax.Array, num_bends: int) -> jax.Array:
  """Bernstein coefficients of a Bezier curve: float array of shape (num_bends,)."""
  _check_num_bends(num_bends)
  check_t(t)
  t = jnp.asarray(t, dtype=jnp.result_type(float))
  n = num_bends - 1
  # Python-int exponents lower to integer_pow, so 0**0 == 1 and t=0, t=1 are exact.
  return jnp.stack([math.comb(n, i) * t**i * (1.0 - t) ** (n - i) for i in range(num_bends)])


def polychain_coefficients(t: float | jax.Array, num_bends: int) -> jax.Array:
  """Hat-function coefficients of a piecewise-linear chain: shape (num_bends,)."""
  _check_num_bends(num_bends)
  check_t(t)
  t = jnp.asarray(t, dtype=jnp.result_type(float))
  position = t * (num_bends - 1)
  return jnp.maximum(0.0, 1.0 - jnp.abs(position - jnp.arange(num_bends, dtype=t.dtype)))


_COEFFICIENTS: dict[str, Callable[[float | jax.Array, int], jax.Array]] = {
    "bezier": bezier_coefficients,
    "polychain": polychain_coefficients,
}


def coefficients(kind: str, t: float | jax.Array, num_bends: int) -> jax.Array:
  """Coefficients of curve ``kind`` at ``t``: shape (num_bends,)."""
  if kind not in _COEFFICIENTS:
    raise InvalidArgument(f"unknown curve kind {kind!r}; known kinds: {', '.join(KINDS)}")
  return _COEFFICIENTS[kind](t, num_bends)


def check_same_tree(a: PyTree, b: PyTree, names: tuple[str, str] = ("start", "end")) -> None:
  """Raises InvalidArgument naming the first difference in structure, shape or dtype."""
  leaves_a, tree_a = jax.tree_util.tree_flatten_with_path(a)
  leaves_b, tree_b = jax.tree_util.tree_flatten_with_path(b)
  if tree_a != tree_b:  # type: ignore[operator]  # jax's PyTreeDef alias is opaque to mypy
    raise InvalidArgument(
        f"{names[0]} and {names[1]} have different pytree structures:\n  {tree_a}\n  {tree_b}")
  for (path, x), (_, y) in zip(leaves_a, leaves_b):
    where = jax.tree_util.keystr(path) or "<root>"
    if jnp.shape(x) != jnp.shape(y):
      raise InvalidArgument(f"{names[0]} and {names[1]} differ in shape at {where}: "
                       f"{jnp.shape(x)} vs {jnp.shape(y)}")
    if jnp.result_type(x) != jnp.result_type(y):
      raise InvalidArgument(f"{names[0]} and {names[1]} differ in dtype at {where}: "
                       f"{jnp.result_type(x)} vs {jnp.result_type(y)}")


def combine(coeffs: jax.Array, start: PyTree, controls: PyTree, end: PyTree) -> PyTree:
  """``coeffs[0] * start + sum_j coeffs[1+j] * controls[j] + coeffs[-1] * end``, leaf-wise.

  Each result leaf has the dtype of the corresponding ``start`` leaf.
  """
  def leaf(w0, wc, w1):
    c = coeffs.astype(jnp.promote_types(w0.dtype, jnp.float32))
    mid = jnp.tensordot(c[1:-1], wc.astype(c.dtype), axes=1) if wc.shape[0] else 0.0
    return (c[0] * w0 + mid + c[-1] * w1).astype(w0.dtype)
  return jax.tree.map(leaf, start, controls, end)


@flax.struct.dataclass
class Curve:
  """A curve in parameter space.

  Attributes:
    start: the fixed first bend, a parameter pytree (theta_o).
    controls: the trainable middle bends; every leaf has shape (num_bends - 2, *leaf_shape).
    end: the fixed last bend, same structure as ``start`` (theta_p).
    kind: "bezier" or "polychain" (static).
  """
  start: PyTree
  controls: PyTree
  end: PyTree
  kind: str = flax.struct.field(pytree_node=False, default="bezier")

  @property
  def num_bends(self) -> int:
    leaves = jax.tree.leaves(self.controls)
    return 2 + (leaves[0].shape[0] if leaves else 0)

  @classmethod
  def from_endpoints(cls, start: PyTree, end: PyTree, num_bends: int = 3,
                     kind: str = "bezier") -> Curve:
    """A curve whose controls sit evenly on the straight line from ``start`` to ``end``.

    With evenly spaced collinear controls, both the Bezier curve and the chain trace the
    straight line: phi(t) = (1 - t) start + t end.
    """
    _check_num_bends(num_bends)
    if kind not in KINDS:
      raise InvalidArgument(f"unknown curve kind {kind!r}; known kinds: {', '.join(KINDS)}")
    check_same_tree(start, end)
    return cls(start=start, controls=line_controls(start, end, num_bends), end=end, kind=kind)


def line_controls(start: PyTree, end: PyTree, num_bends: int) -> PyTree:
  """Middle bends evenly spaced on the segment start -> end: leaves (num_bends-2, *shape)."""
  alphas = np.arange(1, num_bends - 1) / (num_bends - 1)

  def leaf(w0, w1):
    a = jnp.asarray(alphas, dtype=jnp.promote_types(w0.dtype, jnp.float32))
    a = a.reshape((-1,) + (1,) * w0.ndim)
    return ((1.0 - a) * w0[None] + a * w1[None]).astype(w0.dtype)
  return jax.tree.map(leaf, start, end)


def point(curve: Curve, t: float | jax.Array) -> PyTree:
  """phi(t): a pytree with the structure, shapes and dtypes of ``curve.start``.

  ``t`` is a scalar in [0, 1]; concrete values outside raise, traced ones are not checked.
  """
  return combine(coefficients(curve.kind, t, curve.num_bends), curve.start, curve.controls,
                 curve.end)


def points(curve: Curve, ts: jax.Array) -> PyTree:
  """phi at every t of the 1-D array ``ts``: leaves of shape (len(ts), *leaf_shape)."""
  check_t(ts)
  return jax.vmap(lambda t: point(curve, t))(jnp.asarray(ts))
