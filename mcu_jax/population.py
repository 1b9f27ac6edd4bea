"""Populations: N models that differ only in their seed, as one stacked pytree.

The stronger forgetting evaluations (``mcu_jax.forget_quality``) compare populations of
unlearned and retrained models. A ``Population`` holds N members with every leaf stacked on a
leading axis of size N: ``params`` (N, ...), ``model_state`` (N, ...).

Drivers (the CPU policy of ``mcu_jax.runtime.loops``):

* ``train_population`` trains members from scratch (the originals on D, the retrained models
  on D_r) with the trainer's epoch (``train.make_program``): on GPU/TPU one jitted epoch
  ``vmap``-ed over the population axis, that axis split over the device mesh, run by
  ``train.fit``; on the CPU, where vmapped convolutions become grouped convolutions and run
  slower (``benchmarks/population.py``), ``train.train_model`` member by member, every member
  running the first one's compiled epoch. Member i equals ``train.train_model`` with
  ``rng=PRNGKey(seeds[i] + 1)`` from ``init(PRNGKey(seeds[i]))`` (the loop: exactly; vmapped:
  to float tolerance).
* ``unlearn_population`` applies a base method to every member of a population
  (``unlearn.run``, member by member, every backend: the methods have loops of their own),
  every member running the first member's compiled epoch (``unlearn.run``'s ``programs``; not
  SalUn, whose per-member mask is part of its optimizer); ``mcu_population`` applies
  ``unlearn_curve`` to every (theta_o, theta_p) pair, whose mask gradients and curve training
  are compiled once per setup (members whose mask or alignment targets differ compile their
  own curve step).
* ``population_logits`` evaluates every member on a set: (N, E, C).

Every driver takes an optional ``store`` (``MemberStore``): members it already holds are
loaded instead of made, and every new member is handed to it as soon as it exists (the vmapped
driver: chunk by chunk), so an interrupted population resumes member by member.
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
import tqdm.auto as tqdm

from mcu_jax.errors import InvalidArgument
from mcu_jax.preprocess import Preprocess, default_preprocess
from mcu_jax.runtime import evaluate, loops, parallel, signals, train
from mcu_jax.typing import PyTree
from mcu_jax.validation import check_positive


def stack(trees: Sequence[PyTree]) -> PyTree:
  """Pytrees of one structure -> one pytree with leaves stacked on a new leading axis."""
  if not trees:
    raise InvalidArgument("trees: expected at least one pytree to stack")
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def member(tree: PyTree, i: int) -> PyTree:
  """Member ``i`` of a stacked pytree."""
  return jax.tree.map(lambda leaf: leaf[i], tree)


@dataclasses.dataclass
class Population:
  """N models as stacked pytrees.

  Attributes:
    params, model_state: leaves (N, ...).
    seeds: (N,) the members' seeds.
    seconds: wall seconds of making the population (compilation excluded where it is
      measured apart).
    compile_seconds: ahead-of-time compilation.
    ts: for a population made by ``mcu_population``, each member's chosen t.
  """
  params: PyTree
  model_state: PyTree
  seeds: tuple[int, ...]
  seconds: float = 0.0
  compile_seconds: float = 0.0
  ts: tuple[float, ...] | None = None

  def __len__(self) -> int:
    return len(self.seeds)

  def member(self, i: int) -> tuple[PyTree, PyTree]:
    """(params, model_state) of member ``i``."""
    return member(self.params, i), member(self.model_state, i)

  @classmethod
  def of(cls, members: Sequence[tuple[PyTree, PyTree]], seeds: Sequence[int],
         seconds: float = 0.0, compile_seconds: float = 0.0) -> Population:
    """A population from its members' (params, model_state)."""
    if len(members) != len(seeds):
      raise InvalidArgument(f"seeds: expected one per member ({len(members)}), got {len(seeds)}")
    return cls(stack([m[0] for m in members]), stack([m[1] for m in members]),
               _check_seeds(seeds), seconds, compile_seconds)


class MemberStore(Protocol):
  """Where a population's members are kept while it is made. ``info`` holds ``seconds`` (the
  wall seconds of making the member) and, for MCU members, ``t``."""

  def load(self, i: int, like: tuple[PyTree, PyTree]) -> tuple[PyTree, PyTree, dict] | None:
    """(params, model_state, info) of member ``i`` if held, else None."""

  def save(self, i: int, params: PyTree, model_state: PyTree, info: dict) -> None:
    """Keeps member ``i``."""


def _check_seeds(seeds) -> tuple[int, ...]:
  seeds = tuple(seeds)
  if (not seeds or len(set(seeds)) != len(seeds) or not all(
      isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in seeds)):
    raise InvalidArgument(f"seeds: expected distinct integers, got {list(seeds)}")
  return tuple(int(s) for s in seeds)


def train_population(loss_fn: train.LossFn, init: Callable[[jax.Array], tuple[PyTree, PyTree]],
                     data: dict, *, config: train.FitConfig, seeds: Sequence[int],
                     preprocess: Preprocess = default_preprocess, mesh=None,
                     vectorize: bool | None = None, progress: bool = False,
                     desc: str = "population", store: MemberStore | None = None,
                     chunk: int | None = None) -> Population:
  """Trains one member per seed from ``init(PRNGKey(seed))`` on ``data`` (see the module
  docstring for the drivers) on ``mesh`` (None: all devices, ``parallel.resolve_mesh``).
  ``vectorize`` None follows the CPU policy. Members the ``store`` holds are loaded, only the
  others trained: the loop driver keeps each as it is made; the vmapped one trains ``chunk``
  members at a time (default: all missing ones) with one compiled program and keeps each
  chunk before the next starts."""
  seeds = _check_seeds(seeds)
  mesh = parallel.resolve_mesh(mesh)
  like = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype),
                      jax.eval_shape(init, jax.random.PRNGKey(0)))
  data = parallel.replicate(dict(data), mesh)
  compile_seconds = 0.0
  if not loops.resolve_vectorize(vectorize):
    programs: dict = {}                # every member runs the first one's compiled epoch

    def make(i):
      nonlocal compile_seconds
      params, model_state = init(jax.random.PRNGKey(seeds[i]))
      trained = train.train_model(loss_fn, params, model_state, data, config=config,
                                  rng=jax.random.PRNGKey(seeds[i] + 1), preprocess=preprocess,
                                  mesh=mesh, desc=desc, programs=programs)
      compile_seconds += trained.compile_seconds
      return trained.state.params, trained.state.model_state, {"seconds": trained.seconds}
    held = _member_by_member(len(seeds), desc, progress, store, lambda i: like, make)
    return Population.of([h[:2] for h in held], seeds, sum(h[2]["seconds"] for h in held),
                         compile_seconds)
  held = [None if store is None else store.load(i, like) for i in range(len(seeds))]
  missing = [i for i, h in enumerate(held) if h is None]
  chunk = len(missing) if chunk is None else check_positive("chunk", chunk, integer=True)
  program = train.make_program(loss_fn, config, int(data["labels"].shape[0]),
                               preprocess=preprocess, loop="scan")
  vepochs: dict = {}
  for first in range(0, len(missing), chunk):
    part = missing[first:first + chunk]
    made = _vectorized(program, init, data, config, [seeds[i] for i in part], mesh, progress,
                       desc, vepochs)
    compile_seconds += made.compile_seconds
    for j, i in enumerate(part):       # kept chunk by chunk: a rerun trains only the rest
      held[i] = (*made.member(j), {"seconds": made.seconds / len(part)})
      if store is not None:
        store.save(i, *held[i])
  return Population.of([h[:2] for h in held], seeds, sum(h[2]["seconds"] for h in held),
                       compile_seconds)


def _member_by_member(count: int, desc: str, progress: bool, store: MemberStore | None,
                      like: Callable[[int], tuple[PyTree, PyTree]],
                      make: Callable[[int], tuple[PyTree, PyTree, dict]]) -> list:
  """(params, model_state, info) of members 0 .. count - 1, in order: loaded from ``store``
  when it holds them (``like(i)``: the member's structure), else ``make(i)``, handed to
  ``store`` at once."""
  held: list = []
  for i in tqdm.trange(count, desc=desc, disable=not progress, leave=False):
    signals.check(f"{desc} member {i}")
    member: tuple | None = None if store is None else store.load(i, like(i))
    if member is None:
      member = make(i)
      if store is not None:
        store.save(i, *member)
    held.append(member)
  return held


def _vectorized(program, init, data, config, seeds, mesh, progress, desc, vepochs):
  """Members trained together: the trainer's ``program`` (``train.make_program``: its
  optimizer and its epoch, one ``lax.scan``) with the epoch ``vmap``-ed over the members, run
  by ``train.fit``; the population axis is split over the mesh when it divides. ``vepochs``
  keeps the compiled epoch per chunk size."""
  n = len(seeds)
  tx, epoch = program
  states = [train.TrainState.create(params=p, model_state=s, tx=tx,
                                    rng=jax.random.PRNGKey(seed + 1))
            for seed in seeds for p, s in [init(jax.random.PRNGKey(seed))]]
  spec = jax.sharding.PartitionSpec(
      parallel.DATA_AXIS if n % parallel.data_shards(mesh) == 0 else None)
  stacked = jax.device_put(stack(states), jax.sharding.NamedSharding(mesh, spec))
  compile_seconds = 0.0
  if n not in vepochs:
    vepoch = jax.jit(jax.vmap(epoch, in_axes=(0, None)), donate_argnums=(0,))
    vepochs[n], compile_seconds = train.compile_ahead(vepoch, stacked, data)
  stacked, history = train.fit(stacked, vepochs[n], data, config.epochs, desc=desc,
                               progress=progress, hint=f"lr = {config.lr:g} may be too large")
  return Population(stacked.params, stacked.model_state, tuple(seeds),
                    float(sum(record["seconds"] for record in history)), compile_seconds)


def unlearn_population(method: str, originals: Population, *, apply, train_set, split,
                       preprocess: Preprocess, seeds: Sequence[int], config=None, init=None,
                       mesh=None, progress: bool = False,
                       store: MemberStore | None = None) -> Population:
  """Base method ``method`` (``unlearn.run``) applied to every member of ``originals``; member
  i runs with ``rng=PRNGKey(seeds[i])``. Returns the population of theta_p."""
  from mcu_jax import unlearn
  seeds = _check_seeds(seeds)
  if len(seeds) != len(originals):
    raise InvalidArgument(f"seeds: expected {len(originals)} (one per original), got "
                          f"{len(seeds)}")
  compile_seconds = 0.0
  programs: dict = {}

  def make(i):
    nonlocal compile_seconds
    params, model_state = originals.member(i)
    result = unlearn.run(method, apply=apply, params=params, model_state=model_state,
                         train=train_set, split=split, preprocess=preprocess, config=config,
                         rng=jax.random.PRNGKey(seeds[i]), progress=False, init=init,
                         mesh=mesh, programs=programs)
    compile_seconds += result.compile_seconds
    return result.params, result.model_state, {"seconds": result.rte_seconds}
  held = _member_by_member(len(seeds), method, progress, store, originals.member, make)
  return Population.of([h[:2] for h in held], seeds, sum(h[2]["seconds"] for h in held),
                       compile_seconds)


def mcu_population(apply, originals: Population, unlearned: Population, *, forget, retain,
                   test=None, seeds: Sequence[int], progress: bool = False,
                   store: MemberStore | None = None, curve_store: MemberStore | None = None,
                   **options) -> Population:
  """``unlearn_curve`` on every (theta_o, theta_p) pair, member i with ``seed=seeds[i]``;
  ``options`` are its keyword options. The members are the chosen points, BatchNorm
  recalibrated; ``Population.ts`` their t (a t on its window's bound is not warned about
  member by member: ``ts`` shows it). A member's info also keeps its sweep
  (``SweepResult.to_dict``) and alignment targets, and ``curve_store`` (optional) its trained
  controls (as params, with an empty model state), so that another t rule can be applied to
  the same curves later."""
  from mcu_jax.api import unlearn_curve
  seeds = _check_seeds(seeds)
  if not len(originals) == len(unlearned) == len(seeds):
    raise InvalidArgument(f"unlearned: expected as many members as originals and seeds "
                          f"({len(originals)}, {len(seeds)}), got {len(unlearned)}")

  def make(i):
    theta_o, model_state = originals.member(i)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", UserWarning)
      result = unlearn_curve(apply, theta_o, unlearned.member(i)[0], forget=forget,
                             retain=retain, test=test, model_state=model_state,
                             seed=seeds[i], **options)
    if curve_store is not None:
      curve_store.save(i, result.curve.controls, {}, {"seconds": 0.0, "t": result.t})
    return (result.params, result.model_state,     # the unlearning's seconds: mask and curve
            {"seconds": result.seconds["mask"] + result.seconds["curve"], "t": result.t,
             "sweep": result.sweep.to_dict(),
             "targets": {"retain": float(result.targets.retain),
                         "forget": float(result.targets.forget)}})
  held = _member_by_member(len(seeds), "mcu", progress, store, originals.member, make)
  return dataclasses.replace(
      Population.of([h[:2] for h in held], seeds, sum(h[2]["seconds"] for h in held)),
      ts=tuple(h[2]["t"] for h in held))


@functools.partial(jax.jit, static_argnames=("apply", "batch_size", "preprocess", "mesh"))
def _stacked_logits(apply, params, state, inputs, batch_size, preprocess, mesh):
  logits = jax.vmap(lambda p, s: evaluate.logits_of(apply, p, s, inputs, batch_size, preprocess,
                                                    mesh))(params, state)
  return parallel.gathered(logits, mesh)


def population_logits(apply, population: Population, inputs, *, batch_size: int = 512,
                      preprocess: Preprocess = default_preprocess,
                      vectorize: bool | None = None, mesh=None) -> np.ndarray:
  """Inference-mode logits of every member on ``inputs`` (E, ...): float32 (N, E, C).

  Members one at a time (``evaluate.predict_logits``) or ``vmap``-ed (``vectorize``; None:
  the CPU policy of ``mcu_jax.runtime.loops``); either way every batch is split over ``mesh``
  (None: all devices, ``parallel.resolve_mesh``) as ``evaluate`` does.
  """
  mesh = parallel.resolve_mesh(mesh)
  check_positive("batch_size", batch_size, integer=True)
  if not loops.resolve_vectorize(vectorize):
    return np.stack([evaluate.predict_logits(apply, *population.member(i), inputs, batch_size,
                                             preprocess, mesh=mesh)
                     for i in range(len(population))])
  size = parallel.inference_batch_size(batch_size, evaluate.num_examples(inputs), mesh)
  params, state, inputs = parallel.replicate(
      (population.params, population.model_state, inputs), mesh)
  return np.asarray(_stacked_logits(apply, params, state, inputs, size, preprocess, mesh))


__all__ = ["Population", "stack", "member", "train_population", "unlearn_population",
           "mcu_population", "population_logits"]
