"""Saliency masks: which tensors (MCU) or which weights (SalUn) an unlearning update may move.

Both masks are computed once, from gradients summed over a whole data set, on the host: they
are small decisions over a handful of scores, not a hot loop. The gradient accumulation that
feeds them is ``loops.make_batch_sum`` (the CPU policy of ``mcu_jax.runtime.loops``).
``compute_mask`` is the mask step of MCU: the gradients of theta_o on D_r and D_f, then
``mcu_mask``.

Ordering rule for ties (both masks): scores are ranked in descending order with a stable sort
over the tree's leaves in ``jax.tree.leaves`` order (element order within a leaf), so of two
equal scores the one met first wins.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mcu_jax import data
from mcu_jax.core import objectives
from mcu_jax.core.curves import check_same_tree
from mcu_jax.errors import InvalidArgument
from mcu_jax.models.adapters import check_data
from mcu_jax.preprocess import Preprocess, default_preprocess
from mcu_jax.runtime import loops, parallel, train
from mcu_jax.typing import PyTree
from mcu_jax.validation import check_choice, check_number, check_pair


def accumulate_gradients(loss_fn: Callable[[PyTree, PyTree], jax.Array], params: PyTree,
                         batches: PyTree, loop: str = "auto") -> PyTree:
  """Sum over batches of ``grad(loss_fn)(params, batch)``.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``; typically the mean cross-entropy of the
      batch's valid members.
    params: the parameter pytree to differentiate.
    batches: a pytree whose leaves have a leading axis of length num_batches; ``loss_fn``
      gets one slice of it at a time.
    loop: ``mcu_jax.runtime.loops`` driver: one jitted scan, or a host loop over one jitted step
      (``"auto"``: the loop on CPU, see ``mcu_jax.runtime.loops``).

  Returns:
    A pytree like ``params``, in float32 or wider, of the summed gradients.

  Repeated calls with the same ``loss_fn`` object and loop reuse the compiled program.
  """
  return _gradient_sum(loss_fn, loops.resolve_loop(loop))(params, batches)


@functools.lru_cache(maxsize=16)
def _gradient_sum(loss_fn, loop: str):
  # Like jax.jit's own cache keyed on the function: a new jax.grad(loss_fn) per call would
  # otherwise compile per call.
  return loops.make_batch_sum(jax.grad(loss_fn), loop)


GRADIENT_SUMS = ("grad", "squared", "count_weighted")
"""What ``summed_ce_gradients_fn`` sums per batch (its ``of``)."""


def batch_mean_ce(apply, preprocess):
  """``fn(params, model_state, batch) -> scalar``: the mean cross-entropy of the batch's valid
  members, the model in inference mode, inputs ``preprocess(None, batch["images"])``."""
  def batch_loss(params, model_state, batch):
    logits, _ = apply(params, model_state, preprocess(None, batch["images"]), False)
    return objectives.masked_mean(objectives.cross_entropy(logits, batch["labels"]),
                                  batch["valid"])
  return batch_loss


def summed_ce_gradients_fn(apply, preprocess, loop: str = "auto", of: str = "grad"):
  """``fn(params, model_state, batches) -> pytree like params``: the sum over batches of the
  gradient g of each batch's mean cross-entropy (``batch_mean_ce``: inference mode, no
  augmentation), or of what ``of`` makes of it: ``"grad"`` g (the masks), ``"squared"`` g**2
  elementwise (SSD's Fisher importances), ``"count_weighted"`` g times the batch's number of
  valid members (IU: the sum of per-example gradients). The reference's
  generate_weight_mask.py and SalUn's generate_mask.py sum the same gradients in inference mode
  too, but over their training loaders, whose transform augments (random crop and flip): their
  masks see augmented images.

  ``batches`` holds ``images`` (steps, B, ...) inputs, ``labels`` (steps, B) and ``valid``
  (steps, B) bool, e.g. from ``mcu_jax.data.padded_batches`` (a padded last batch is the mean
  over its own members). ``fn`` is jitted (or a host loop over a jitted step on CPU, see
  ``loops.make_batch_sum``) and supports ``fn.lower(...).compile()``. It is made once per
  (apply, preprocess, loop, of) when they are hashable, so that a population's members share
  one compiled program; otherwise each new function compiles anew.
  """
  check_choice("of", of, GRADIENT_SUMS)
  try:
    hash((apply, preprocess, loop))
  except TypeError:
    return _summed_ce_gradients.__wrapped__(apply, preprocess, loop, of)
  return _summed_ce_gradients(apply, preprocess, loop, of)


@functools.lru_cache(maxsize=16)
def _summed_ce_gradients(apply, preprocess, loop: str, of: str):
  grad_fn = jax.grad(batch_mean_ce(apply, preprocess))
  if of == "grad":
    return loops.make_batch_sum(grad_fn, loop)

  def transformed(params, model_state, batch):
    grads = grad_fn(params, model_state, batch)
    if of == "squared":
      return jax.tree.map(jnp.square, grads)
    count = jnp.sum(batch["valid"])
    return jax.tree.map(lambda g: g * count.astype(g.dtype), grads)
  return loops.make_batch_sum(transformed, loop)


def layer_saliency(grads: PyTree) -> PyTree:
  """Per-tensor score ``||g||_2 / numel(g)``: a pytree of float32 scalars like ``grads``."""
  return jax.tree.map(lambda g: jnp.linalg.norm(jnp.ravel(g).astype(jnp.float32)) / g.size,
                      grads)


def _check_fraction(name: str, value: float, low_closed: bool, high_closed: bool,
                    error: type = InvalidArgument) -> None:
  check_number(name, value, low=0.0, high=1.0, low_open=not low_closed,
               high_open=not high_closed, error=error)


def check_fractions(k: float, kr: float, names: tuple[str, str] = ("k", "kr"),
                    error: type = InvalidArgument) -> None:
  """``k`` in (0, 1] (the share selected) and ``kr`` in [0, 1) (the share excluded first)."""
  _check_fraction(names[0], k, low_closed=False, high_closed=True, error=error)
  _check_fraction(names[1], kr, low_closed=True, high_closed=False, error=error)


@dataclasses.dataclass(frozen=True)
class MaskOptions:
  """MCU's tensor mask: what ``compute_mask`` and ``unlearn_curve(mask=...)`` take, and what a
  run's configuration holds as ``mask`` (``mcu_jax.pipeline.config.RunConfig``).

  Attributes:
    enabled: compute the mask; False: every tensor trains.
    k: share of the parameters selected by forget saliency, in (0, 1] (``mcu_mask``).
    kr: share of the parameters excluded first by retain saliency, in [0, 1).
  """
  enabled: bool = True
  k: float = 0.5
  kr: float = 0.0

  def __post_init__(self):
    owner = type(self).__name__
    if not isinstance(self.enabled, (bool, np.bool_)):
      raise InvalidArgument(f"{owner}.enabled: expected a bool, got "
                            f"{type(self.enabled).__name__} {self.enabled!r}")
    check_fractions(self.k, self.kr, names=(f"{owner}.k", f"{owner}.kr"))

  def replace(self, **changes) -> MaskOptions:
    """A copy with ``changes`` applied (and validated)."""
    return dataclasses.replace(self, **changes)


def full_mask(params: PyTree) -> PyTree:
  """The mask that trains every tensor."""
  return jax.tree.map(lambda _: True, params)


def _descending_order(scores: np.ndarray) -> np.ndarray:
  return np.argsort(-scores, kind="stable")


def mcu_mask(retain_grads: PyTree, forget_grads: PyTree, k: float = MaskOptions.k,
             kr: float = MaskOptions.kr) -> PyTree:
  """MCU's layer-wise mask: one Python bool per tensor, True = the tensor trains.

  With N the total parameter count and tensors scored by ``layer_saliency``:
  1. walk tensors by retain score, descending; while the excluded count is below
     ``floor(kr * N)``, exclude the tensor and add its size (so the tensor that crosses the
     bound is excluded too; kr = 0 excludes nothing);
  2. walk the tensors not excluded by forget score, descending; while the selected count is
     below ``floor(k * N)``, select the tensor and add its size.
  The counting and the floors are the reference's (generate_weight_mask.py). k is a greedy
  threshold over the sorted scores, not an exact share: on a small model a few large tensors
  hold most parameters, so k = 0.5 often selects nearly every tensor (``mask_fraction`` says
  how much trains). One difference:
  the reference gives excluded tensors score 0 rather than removing them, so it can still
  select them when the others hold fewer than k * N parameters; here excluded means frozen.

  Args:
    retain_grads, forget_grads: summed gradients on D_r and D_f, same structure as params.
    k: share of parameters to select, in (0, 1].
    kr: share of parameters to exclude first by retain saliency, in [0, 1).

  Returns:
    A pytree like the gradients with a Python bool at every leaf.
  """
  check_fractions(k, kr)
  check_same_tree(retain_grads, forget_grads, ("retain_grads", "forget_grads"))

  leaves, treedef = jax.tree.flatten(retain_grads)
  sizes = np.array([np.size(g) for g in leaves], dtype=np.int64)
  total = sizes.sum()
  retain_scores = np.array(jax.device_get(jax.tree.leaves(layer_saliency(retain_grads))))
  forget_scores = np.array(jax.device_get(jax.tree.leaves(layer_saliency(forget_grads))))

  if int(k * total) == 0:
    raise InvalidArgument(f"k: {k} selects no parameter out of {total} (floor(k * N) is 0)")
  excluded = np.zeros(len(leaves), dtype=bool)
  count = 0
  for i in _descending_order(retain_scores):
    if count >= int(kr * total):
      break
    excluded[i] = True
    count += sizes[i]

  selected = np.zeros(len(leaves), dtype=bool)
  count = 0
  for i in _descending_order(forget_scores):
    if count >= int(k * total):
      break
    if excluded[i]:
      continue
    selected[i] = True
    count += sizes[i]
  return jax.tree.unflatten(treedef, [bool(s) for s in selected])


def salun_mask(forget_grads: PyTree, ratio: float = 0.5) -> PyTree:
  """SalUn's element-wise mask: True on the ``floor(ratio * N)`` weights with the largest |g|.

  The ranking is global over all leaves. Returns a pytree of boolean arrays like the grads.
  """
  _check_fraction("ratio", ratio, low_closed=False, high_closed=True)
  leaves, treedef = jax.tree.flatten(forget_grads)
  flat = np.concatenate([np.abs(np.asarray(jax.device_get(g), np.float32)).ravel()
                         for g in leaves])
  if int(flat.size * ratio) == 0:
    raise InvalidArgument(f"ratio: {ratio} selects no weight out of {flat.size} "
                          "(floor(ratio * N) is 0)")
  chosen = np.zeros(flat.size, dtype=bool)
  chosen[_descending_order(flat)[:int(flat.size * ratio)]] = True
  masks, offset = [], 0
  for g in leaves:
    masks.append(jnp.asarray(chosen[offset:offset + np.size(g)].reshape(np.shape(g))))
    offset += np.size(g)
  return jax.tree.unflatten(treedef, masks)


def mask_fraction(mask: PyTree, like: PyTree) -> float:
  """Share of the parameters of ``like`` that ``mask`` lets train (bool or array leaves)."""
  trained = sum(float(np.sum(np.broadcast_to(np.asarray(m), np.shape(p))))
                for m, p in zip(jax.tree.leaves(mask), jax.tree.leaves(like)))
  return trained / sum(np.size(p) for p in jax.tree.leaves(like))


@dataclasses.dataclass
class MaskResult:
  """What ``compute_mask`` returns.

  Attributes:
    mask: one Python bool per tensor, like the params (True = the tensor trains).
    fraction: share of the parameters that train.
    seconds: wall seconds of the gradient sums and the ranking (compilation excluded).
    compile_seconds: ahead-of-time compilation of the gradient sums.
  """
  mask: PyTree
  fraction: float
  seconds: float
  compile_seconds: float


def batched(inputs, labels, batch_size: int) -> dict:
  """(inputs, labels) as padded batches ``images`` (steps, B, ...), ``labels``, ``valid``."""
  return data.padded_batches({"images": inputs, "labels": labels},
                             min(int(batch_size), int(np.shape(labels)[0])))


def compute_mask(apply, params: PyTree, model_state: PyTree, *, forget, retain,
                 options: MaskOptions = MaskOptions(),
                 batch_size: int = train.FitConfig.batch_size,
                 preprocess: Preprocess = default_preprocess, mesh=None,
                 loop: str = "auto") -> MaskResult:
  """MCU's mask of ``params`` (theta_o): summed CE gradients on ``retain`` and ``forget`` in
  inference mode, batches of ``batch_size`` in order (the reference's
  generate_weight_mask.py, with the curve's batch size), then ``mcu_mask(k, kr)`` of
  ``options``; with ``options.enabled`` False, every tensor (nothing is computed).

  ``forget``, ``retain``: (inputs, labels) pairs. ``mesh``: a device mesh the params and
  batches are replicated on (None: all devices, ``parallel.resolve_mesh``). ``loop``: the
  driver of the gradient sums (``mcu_jax.runtime.loops``).
  """
  if not isinstance(options, MaskOptions):
    raise InvalidArgument(f"options: expected a MaskOptions, got {type(options).__name__}")
  if not options.enabled:
    return MaskResult(mask=full_mask(params), fraction=1.0, seconds=0.0, compile_seconds=0.0)
  k, kr = options.k, options.kr
  pairs = {"retain": check_pair("retain", retain), "forget": check_pair("forget", forget)}
  check_data(apply, params, model_state, pairs, preprocess, {"params": params})
  mesh = parallel.resolve_mesh(mesh)
  gradients_fn = summed_ce_gradients_fn(apply, preprocess, loop)
  params, model_state = parallel.replicate((params, model_state), mesh)
  batches, compiled, compile_seconds = {}, {}, 0.0
  for name, pair in pairs.items():
    batches[name] = parallel.replicate(batched(*pair, batch_size), mesh)
    compiled[name], seconds = train.compile_ahead(gradients_fn, params, model_state,
                                                  batches[name])
    compile_seconds += seconds
  start = time.perf_counter()
  grads = {name: fn(params, model_state, batches[name]) for name, fn in compiled.items()}
  mask = mcu_mask(grads["retain"], grads["forget"], k=k, kr=kr)
  seconds = time.perf_counter() - start
  return MaskResult(mask=mask, fraction=mask_fraction(mask, params), seconds=seconds,
                    compile_seconds=compile_seconds)
