"""What a method's run function receives and returns, and the plumbing the methods share.

Every method is ``run_<name>(ctx: MethodContext, config) -> Outcome`` (``registry.METHODS`` lists
them): ``MethodContext`` holds the original model, the data and the run's settings as ``runner.run``
resolved them; ``Outcome`` is theta_p with the timings ``runner.run`` turns into an
``UnlearnResult``. ``train_on`` runs the one trainer (``mcu_jax.runtime.train.train_model``) with
the context's mesh, preprocessing, evaluation and checkpoints and returns its ``Outcome``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax

from mcu_jax import data as data_lib
from mcu_jax.errors import InvalidArgument
from mcu_jax.models.adapters import Apply
from mcu_jax.preprocess import Preprocess
from mcu_jax.runtime import parallel
from mcu_jax.runtime import train as train_lib
from mcu_jax.runtime.checkpoint import Checkpointer
from mcu_jax.typing import PyTree
from mcu_jax.unlearn import configs as cfgs

Evaluate = Callable[[PyTree, PyTree], Mapping[str, float]]


@dataclasses.dataclass(frozen=True)
class MethodContext:
  """A method's inputs (see ``runner.run`` for each).

  Attributes:
    apply: ``apply(params, state, x, train) -> (logits, new_state)``.
    params, model_state: theta_o, replicated on ``mesh``.
    train: the training set ``split`` indexes.
    split: D_f / D_r as index arrays into ``train``.
    preprocess: ``fn(key, inputs) -> float`` inputs.
    rng: the method's PRNG key.
    progress: show the trainer's progress bar.
    checkpointer: per-epoch checkpoints and resume, or None.
    evaluate: ``fn(params, model_state) -> dict`` after every epoch, or None.
    init_params: retrain's start, ``(params, model_state)`` or ``fn(rng) -> (params,
      model_state)``; None for the other methods.
    desc: the progress bar's label (the method's name).
    mesh: the ``jax.sharding.Mesh`` the data and the state are replicated on.
    programs: a dict shared by the runs of one population (``train.train_model``'s
      ``programs``): every member runs the first member's compiled epoch; None: its own.
  """
  apply: Apply
  params: PyTree
  model_state: PyTree
  train: data_lib.Dataset
  split: data_lib.ForgetSplit
  preprocess: Preprocess
  rng: jax.Array
  progress: bool
  checkpointer: Checkpointer | None
  evaluate: Evaluate | None
  init_params: Any
  desc: str
  mesh: Any
  programs: dict | None = None


@dataclasses.dataclass
class Outcome:
  """What a method returns: theta_p, the trainer's history and the seconds outside it.

  Attributes:
    params, model_state: the unlearned model.
    history: ``train.fit``'s per-epoch records (their ``seconds`` make the train time).
    compile_seconds: ahead-of-time compilation, of the epoch(s) and of the extra steps.
    extra_seconds: the method's timed work outside the epochs (part of the RTE).
    extras: method-specific outputs (``UnlearnResult.extras``).
  """
  params: PyTree
  model_state: PyTree
  history: list[dict]
  compile_seconds: float
  extra_seconds: float = 0.0
  extras: dict[str, Any] = dataclasses.field(default_factory=dict)


def wrap_evaluate(ctx: MethodContext, view: Callable[[Any], tuple[PyTree, PyTree]]):
  """``ctx.evaluate`` as the trainer's ``fn(state) -> dict``, on the model ``view(state)``
  picks out as (params, model_state); None without an ``evaluate``."""
  if ctx.evaluate is None:
    return None
  return lambda state: dict(ctx.evaluate(*view(state)))


def _plain_view(state: train_lib.TrainState) -> tuple[PyTree, PyTree]:
  return state.params, state.model_state


def fresh_init(ctx: MethodContext, key: jax.Array, why: str) -> tuple[PyTree, PyTree]:
  """``ctx.init_params`` (a pair, or ``fn(key) -> pair``) as (params, model_state) of theta_o's
  structure; raises ``InvalidArgument`` saying ``why`` the method needs one when it is missing,
  or when its structure is not theta_o's."""
  init = ctx.init_params
  if init is None:
    raise InvalidArgument(f"{why}: pass init_params=(params, model_state) or a function "
                          "rng -> (params, model_state) of the original model's architecture")
  params, model_state = init(key) if callable(init) else init
  for name, fresh, original in (("params", params, ctx.params),
                                ("model_state", model_state, ctx.model_state)):
    # mypy: jax's PyTreeDef alias is opaque to it, hence the ignore
    if jax.tree.structure(fresh) != jax.tree.structure(original):  # type: ignore[operator]
      raise InvalidArgument(f"init_params' {name} do not have the structure of the original "
                            f"model's:\n  {jax.tree.structure(fresh)}\n  "
                            f"{jax.tree.structure(original)}")
  return params, model_state


def place(ctx: MethodContext, tree: PyTree) -> PyTree:
  """``tree`` replicated on the context's mesh."""
  return parallel.replicate(tree, ctx.mesh)


def retain_arrays(ctx: MethodContext) -> dict:
  """The data dict of D_r (``images`` (N_r, ...), ``labels`` (N_r,))."""
  return data_lib.subset_arrays(ctx.train, ctx.split.retain)


def forget_arrays(ctx: MethodContext) -> dict:
  """The data dict of D_f (``images`` (N_f, ...), ``labels`` (N_f,))."""
  return data_lib.subset_arrays(ctx.train, ctx.split.forget)


def train_on(ctx: MethodContext, config: cfgs.MethodConfig, loss_fn: train_lib.LossFn, arrays: dict,
             *, start: tuple[PyTree, PyTree] | None = None, rng: jax.Array | None = None,
             params_mask: PyTree | None = None, penalty_for_steps=None) -> Outcome:
  """``config.epochs`` epochs of ``loss_fn`` over ``arrays`` (``train.train_model``) with the
  context's mesh, preprocessing, evaluation and checkpoints.

  ``start``: the (params, model_state) to train, by default theta_o; ``rng``: by default the
  context's key. ``params_mask`` and ``penalty_for_steps`` are ``train_model``'s ``mask`` and
  ``penalty``. Returns the trained model as an ``Outcome`` (no extra seconds, no extras).
  """
  params, model_state = (ctx.params, ctx.model_state) if start is None else start
  trained = train_lib.train_model(
      loss_fn, params, model_state, arrays, config=config,
      rng=ctx.rng if rng is None else rng, preprocess=ctx.preprocess,
      mesh=ctx.mesh, mask=params_mask, penalty=penalty_for_steps,
      evaluate=wrap_evaluate(ctx, _plain_view), checkpointer=ctx.checkpointer,
      progress=ctx.progress, desc=ctx.desc, programs=ctx.programs)
  return Outcome(trained.state.params, trained.state.model_state, trained.history,
                 trained.compile_seconds)
