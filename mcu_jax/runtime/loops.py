"""The one CPU policy, and the epoch loops it chooses between.

XLA:CPU differs from GPU/TPU in two ways that matter here, and every hot loop of mcu_jax asks
this module rather than deciding for itself:

* backward convolutions inside while loops run 10-40x slower than at the top level of a
  program (jax-ml/jax#12868): on the CPU an epoch (and a sum over batches) is a host loop over
  one jitted step, elsewhere one ``lax.scan`` (``resolve_loop``);
* vmapping over parameters turns convolutions into grouped convolutions, which XLA:CPU runs
  4-6x slower (benchmarks/sweep_timing.py): on the CPU several models (the sweep's t, a
  population) are evaluated one at a time, elsewhere vmapped (``resolve_vectorize``).

An epoch (``make_epoch``) shuffles on the device, cuts the permutation into batches and runs a
step per batch, with one of two equivalent drivers:

* ``"scan"``: the whole epoch is one jitted ``lax.scan`` (one dispatch per epoch);
* ``"python"``: one jitted, donated step per batch, dispatched from a Python loop without any
  host synchronisation (metrics stay on the device and are stacked at the end).

``"auto"`` picks per the policy above. Both drivers draw the same random numbers, so they give
the same results up to float reassociation.

``make_batch_sum`` applies the same choice to a sum over pre-cut batches (the masks' gradient
accumulation).

The host loops check for a recorded SIGINT or SIGTERM before every step
(``mcu_jax.runtime.signals``), so a long epoch stops within a step; a scanned epoch is checked
between epochs by its caller.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mcu_jax.errors import InvalidArgument
from mcu_jax.runtime import signals
from mcu_jax.typing import PyTree

# body(state, *inputs, indices, valid, key) -> (state, metrics); inputs end with the data dict.
Body = Callable[..., tuple[PyTree, dict]]
LOOPS = ("auto", "scan", "python")


def on_cpu() -> bool:
  """Whether the default backend is XLA:CPU."""
  return jax.default_backend() == "cpu"


def resolve_loop(loop: str) -> str:
  """``loop`` with "auto" made concrete: "python" on the CPU, "scan" elsewhere."""
  if loop not in LOOPS:
    raise InvalidArgument(f"loop: expected one of {', '.join(map(repr, LOOPS))}, got {loop!r}")
  if loop == "auto":
    return "python" if on_cpu() else "scan"
  return loop


def resolve_vectorize(vectorize: bool | None) -> bool:
  """Whether to vmap over several models: ``vectorize``, or when None, not on the CPU."""
  return (not on_cpu()) if vectorize is None else bool(vectorize)


def epoch_batches(key: jax.Array, num_examples: int, batch_size: int
                  ) -> tuple[jax.Array, jax.Array]:
  """A shuffled epoch as (indices, valid), both of shape (steps, batch_size).

  The last batch is filled up by wrapping around the shuffled order, marked valid=False: every
  example counts once in the losses, and BatchNorm's training-mode statistics see ordinary
  examples rather than copies of one.
  """
  steps = -(-num_examples // batch_size)
  order = jax.random.permutation(key, num_examples)
  indices = jnp.resize(order, (steps * batch_size,)).reshape(steps, batch_size)
  valid = (jnp.arange(steps * batch_size) < num_examples).reshape(steps, batch_size)
  return indices, valid


def _plan(batch_size: int, state, *inputs):
  """The epoch's batches and per-step keys; the state gets a fresh rng."""
  data = inputs[-1]
  rng, shuffle_key, step_key = jax.random.split(state.rng, 3)
  indices, valid = epoch_batches(shuffle_key, data["labels"].shape[0], batch_size)
  keys = jax.random.split(step_key, indices.shape[0])
  return state.replace(rng=rng), (indices, valid, keys)


def make_epoch(body: Body, batch_size: int, loop: str = "auto"):
  """``epoch(state, *inputs) -> (state, metrics)``; metrics leaves have shape (steps,).

  ``state`` is a flax.struct dataclass with an ``rng`` field; ``inputs[-1]`` is the data dict
  (its ``labels`` give the example count). The epoch donates ``state``.
  """
  if resolve_loop(loop) == "scan":
    @functools.partial(jax.jit, donate_argnums=(0,))
    def epoch(state, *inputs):
      state, xs = _plan(batch_size, state, *inputs)
      return jax.lax.scan(lambda s, x: body(s, *inputs, *x), state, xs)
    return epoch
  return LoopedEpoch(body, batch_size)


class LoopedEpoch:
  """An epoch as a host loop over one jitted, donated step; see the module docstring.

  ``lower(...).compile()`` compiles both programs ahead of time, like a jitted function's, so
  ``mcu_jax.runtime.train.compile_ahead`` works on it.
  """

  _plan: Any    # a jitted function, or after ``lower().compile()`` its compiled program
  _step: Any

  def __init__(self, body: Body, batch_size: int):
    self._plan = jax.jit(functools.partial(_plan, batch_size), donate_argnums=(0,))

    def step(state, xs, i, *inputs):
      return body(state, *inputs, *(x[i] for x in xs))
    self._step = jax.jit(step, donate_argnums=(0,))

  def __call__(self, state, *inputs):
    state, xs = self._plan(state, *inputs)
    metrics = []
    steps = xs[0].shape[0]
    for i in range(steps):
      signals.check(f"step {i + 1} of {steps}")
      state, m = self._step(state, xs, np.int32(i), *inputs)
      metrics.append(m)
    return state, jax.tree.map(lambda *values: jnp.stack(values), *metrics)

  def lower(self, state, *inputs):
    return _LoweredLoop(self, state, inputs)


class _LoweredLoop:

  def __init__(self, epoch: LoopedEpoch, state, inputs):
    self._epoch, self._state, self._inputs = epoch, state, inputs

  def compile(self) -> LoopedEpoch:
    epoch, state, inputs = self._epoch, self._state, self._inputs
    plan = epoch._plan.lower(state, *inputs).compile()
    # The step is compiled for what the plan really hands it, shardings included.
    planned = jax.tree.map(
        lambda shape, sharding: jax.ShapeDtypeStruct(shape.shape, shape.dtype,
                                                     sharding=sharding),
        jax.eval_shape(epoch._plan, state, *inputs), plan.output_shardings)
    compiled = LoopedEpoch.__new__(LoopedEpoch)
    compiled._plan = plan
    compiled._step = epoch._step.lower(*planned, np.int32(0), *inputs).compile()
    return compiled


def _index(tree: PyTree, i) -> PyTree:
  return jax.tree.map(lambda leaf: leaf[i], tree)


def _accumulator(out: PyTree) -> PyTree:
  """Zeros shaped like ``fn``'s output, in float32 or wider."""
  return jax.tree.map(
      lambda s: jnp.zeros(s.shape, jnp.promote_types(s.dtype, jnp.float32)), out)


def _add(total: PyTree, value: PyTree) -> PyTree:
  return jax.tree.map(lambda t, v: t + v.astype(t.dtype), total, value)


def make_batch_sum(fn: Callable[..., PyTree], loop: str = "auto"):
  """``total(*args, batches) -> sum over i of fn(*args, batches[i])``.

  ``batches`` is a pytree whose leaves share a leading axis of length num_batches. The sum is
  accumulated in float32 or wider. With ``"scan"`` it is one jitted ``lax.scan`` (a compiled
  one is tied to its number of batches); with ``"python"`` a host loop over one jitted step
  that donates the running total (a compiled one serves any number of batches of the same
  shape). Either supports ``lower(*args, batches).compile()`` and keeps the inputs'
  shardings. Build it once and reuse it: each new one compiles anew.
  """
  if resolve_loop(loop) == "scan":
    @jax.jit
    def total(*inputs):
      *args, batches = inputs
      return jax.lax.scan(lambda t, batch: (_add(t, fn(*args, batch)), None),
                          _zeros_for(fn, *inputs), batches)[0]
    return total
  return LoopedSum(fn)


def _zeros_for(fn, *inputs):
  *args, batches = inputs
  return _accumulator(jax.eval_shape(fn, *args, _index(batches, 0)))


class LoopedSum:
  """``make_batch_sum``'s host loop: per batch, an eager slice of ``batches`` and one jitted,
  donated ``total + fn(*args, batch)``. Eager slices keep the batches' placement: a
  committed (e.g. sharded) batch stays where it is, an uncommitted one joins the step's
  other arguments (one device or a mesh)."""

  _step: Any    # a jitted function, or after ``lower().compile()`` its compiled program

  def __init__(self, fn: Callable[..., PyTree]):
    self._fn = fn
    self._step = jax.jit(lambda total, *inputs: _add(total, fn(*inputs)), donate_argnums=(0,))
    self._totals: dict = {}   # input signature -> the total's shapes (tracing fn is costly)

  def _total_shapes(self, *inputs) -> PyTree:
    leaves, treedef = jax.tree.flatten(inputs)
    key = (treedef, tuple((np.shape(x), jnp.result_type(x)) for x in leaves))
    if key not in self._totals:
      self._totals[key] = jax.eval_shape(functools.partial(_zeros_for, self._fn), *inputs)
    return self._totals[key]

  def _zeros(self, *inputs):
    # Made outside jit: uncommitted, so the first step places them with its other inputs.
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), self._total_shapes(*inputs))

  def __call__(self, *inputs):
    *args, batches = inputs
    total = self._zeros(*inputs)
    count = jax.tree.leaves(batches)[0].shape[0]
    for i in range(count):
      signals.check(f"batch {i + 1} of {count}")
      total = self._step(total, *args, _index(batches, np.int32(i)))
    return total

  def lower(self, *inputs):
    return _LoweredSum(self, inputs)


def _slice_spec(leaf, first) -> jax.ShapeDtypeStruct:
  """What the step receives for ``leaf[i]``: the eager slice's sharding if ``leaf`` is
  committed, else unplaced (the compiled step then takes it wherever it is)."""
  committed = isinstance(leaf, jax.Array) and leaf.committed
  return jax.ShapeDtypeStruct(first.shape, first.dtype,
                              sharding=first.sharding if committed else None)


class _LoweredSum:

  def __init__(self, looped: LoopedSum, inputs):
    self._looped, self._inputs = looped, inputs

  def compile(self) -> LoopedSum:
    looped, inputs = self._looped, self._inputs
    *args, batches = inputs
    batch = jax.tree.map(_slice_spec, batches, _index(batches, np.int32(0)))
    compiled = LoopedSum.__new__(LoopedSum)
    compiled._fn, compiled._totals = looped._fn, looped._totals
    # The total stays unplaced, like the zeros it starts from.
    compiled._step = looped._step.lower(looped._total_shapes(*inputs), *args,
                                        batch).compile()
    return compiled
