"""Work-around for slow convolution gradients inside ``lax.scan`` on XLA:CPU (experiments only).

XLA:CPU sends a convolution to its fast Eigen kernel only in the canonical layout (input NHWC,
kernel HWIO, output NHWC). Its ``ConvCanonicalization`` pass, which rewrites other convolutions
into that layout with explicit transposes, walks only the module's *entry* computation
(``module->entry_computation()`` in xla/service/cpu/conv_canonicalization.cc), so convolutions
inside a while loop keep their layout. The backward convolutions JAX emits (input gradient
``b01f_01oi->b01f``, filter gradient ``f01b_i01o->01bf``) are not canonical, and mcu_jax used
to train every epoch as one ``lax.scan`` (a while loop): on this 2-core CPU a small_cnn training
step took 2.5 s inside the scan and 0.06-0.16 s outside it (``experiments/README.md``). On the
CPU mcu_jax now runs epochs and gradient sums as a host loop over one jitted step
(``mcu_jax.loops``), so the backward convolutions sit at a program's top level.

``install()`` wraps ``jax._src.lax.convolution.conv_general_dilated`` (the function JAX's own
transpose and batching rules call) so that every convolution is emitted as transpose ->
canonical NHWC/HWIO/NHWC convolution -> transpose, i.e. what ConvCanonicalization would have
done. The mathematics is unchanged (the same sums; float32 results agree to rounding, checked
by ``check()``); only the HLO layout differs. It is installed by the study scripts on the CPU
backend only, and can be switched off with ``MCU_EXPERIMENTS_NO_CONV_FIX=1``.
"""
from __future__ import annotations

import os

import numpy as np

_INSTALLED = False


def _canonical(original):
  from jax._src.lax import convolution as conv_lib
  import jax.numpy as jnp

  def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                           rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                           batch_group_count=1, precision=None, preferred_element_type=None,
                           out_sharding=None):
    dnums = conv_lib.conv_dimension_numbers(np.shape(lhs), np.shape(rhs), dimension_numbers)
    lhs_spec, rhs_spec, out_spec = dnums.lhs_spec, dnums.rhs_spec, dnums.out_spec
    nd = len(lhs_spec) - 2
    lhs_perm = (lhs_spec[0], *lhs_spec[2:], lhs_spec[1])
    rhs_perm = (*rhs_spec[2:], rhs_spec[1], rhs_spec[0])
    out_pos = (out_spec[0], *out_spec[2:], out_spec[1])
    identity = tuple(range(nd + 2))
    if lhs_perm == identity and rhs_perm == identity and out_pos == identity:
      return original(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                      dimension_numbers, feature_group_count, batch_group_count, precision,
                      preferred_element_type, out_sharding)
    canonical = conv_lib.ConvDimensionNumbers(
        lhs_spec=(0, nd + 1) + tuple(range(1, nd + 1)),
        rhs_spec=(nd + 1, nd) + tuple(range(nd)),
        out_spec=(0, nd + 1) + tuple(range(1, nd + 1)))
    out = original(jnp.transpose(lhs, lhs_perm), jnp.transpose(rhs, rhs_perm), window_strides,
                   padding, lhs_dilation, rhs_dilation, canonical, feature_group_count,
                   batch_group_count, precision, preferred_element_type, None)
    return jnp.transpose(out, tuple(int(i) for i in np.argsort(out_pos)))

  conv_general_dilated.__wrapped__ = original
  return conv_general_dilated


def install(force: bool = False) -> bool:
  """Installs the wrapper on the CPU backend (or anywhere with ``force``); True if active."""
  global _INSTALLED
  if _INSTALLED:
    return True
  if os.environ.get("MCU_EXPERIMENTS_NO_CONV_FIX") == "1":
    return False
  import jax
  if not force and jax.default_backend() != "cpu":
    return False
  from jax._src.lax import convolution as conv_lib
  conv_lib.conv_general_dilated = _canonical(conv_lib.conv_general_dilated)
  _INSTALLED = True
  return True


def check(tolerance: float = 1e-4) -> float:
  """Max relative difference of the gradients of a strided conv net with and without the
  wrapper (runs both in a ``lax.scan``); raises if above ``tolerance``."""
  import jax
  import jax.numpy as jnp
  from jax._src.lax import convolution as conv_lib
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 4, 9, 9, 3)), jnp.float32)
  w1 = jnp.asarray(rng.normal(size=(3, 3, 3, 5)), jnp.float32)
  w2 = jnp.asarray(rng.normal(size=(1, 1, 5, 4)), jnp.float32)

  def grads():
    def loss(ws, xb):   # defined afresh per call: no trace is shared between the two runs
      h = jax.lax.conv_general_dilated(xb, ws[0], (2, 2), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      h = jax.lax.conv_general_dilated(jnp.tanh(h), ws[1], (1, 1), ((1, 0), (0, 1)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      return jnp.sum(h ** 2)
    body = lambda c, xb: (c, jax.grad(loss)((w1, w2), xb))
    fn = jax.jit(lambda: jax.lax.scan(body, 0.0, x)[1])
    return fn(), fn.lower().as_text().count("transpose")

  current = conv_lib.conv_general_dilated
  plain = getattr(current, "__wrapped__", current)
  conv_lib.conv_general_dilated = plain
  try:
    want = grads()
  finally:
    conv_lib.conv_general_dilated = current
  got = grads() if current is not plain else want
  if current is not plain and got[1] <= want[1]:
    raise AssertionError("the conv wrapper is installed but emitted no transpose")
  want, got = want[0], got[0]
  worst = 0.0
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    worst = max(worst, float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(a)) + 1e-12)))
  if worst > tolerance:
    raise AssertionError(f"conv wrapper changes gradients by {worst:.2e} (relative)")
  return worst
