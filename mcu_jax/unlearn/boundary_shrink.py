"""Boundary Shrink: relabel every forget example to the class of its adversarial neighbour under
theta_o, then fine-tune theta_o on D_f with those labels.

Chen, Gao, Lu, Yang and Wu, "Boundary Unlearning: Rapid Forgetting of Deep Networks via
Shifting the Decision Space", CVPR 2023. Defaults (``configs.BoundaryShrinkConfig``) are the
paper code's ``boundary_shrink``: ``LinfPGD`` with bound 0.1, step 8/255, 5 iterations, no
random start; SGD lr 1e-5, momentum 0.9, 10 epochs over D_f. SalUn's ``boundary_sh.py`` uses a
one-step FGSM instead (``attack_steps=1, attack_step=bound``).

The neighbour. The attack model is theta_o in inference mode and never changes, so each forget
example's neighbour label is computed once, before the fine-tuning, in one jitted pass over
D_f (a ``lax.map`` over batches of ``batch_size``). In pixel space, x = uint8 / 255 in [0, 1],
starting from x_adv = x, each of ``attack_steps`` iterations does (the paper code's
``adv_generator.py``, ``LinfPGD.perturb`` and ``AttackBase.clamper``)

    x_adv = x_adv + attack_step * sign(grad_x_adv CE(f(norm(x_adv)), y))
    x_adv = clip(x + clip(x_adv - x, -bound, bound), 0, 1)
    x_adv = round(255 * x_adv) / 255                      # the code's ``discretize``

and the label is argmax f(norm(x_adv)). ``norm`` is how pixels become model inputs: identity for
``mcu_jax.preprocess.images`` (``normalize_uint8``), per-channel ``(x - mean) / std`` for a
``Preprocessor`` (``make_preprocess``); any other preprocess is refused, since the attack must
work in pixel space. The rounding (half to even, as ``torch.round``) can leave x_adv up to half
a grey level outside the bound ball, as in the paper's code. The relabelling's seconds are the
outcome's extra seconds; the labels are ``extras["neighbour_labels"]``.

The fine-tuning: CE of theta_o (training mode) on D_f against the neighbour labels, by the
shared trainer (``train_on``), with the context's preprocess (augmentation included).

Deviations from the paper's code: it attacks every batch anew at each of the 10 epochs, on the
batch as its loader returns it (augmented, if the loader augments); with a fixed attack model and
no random start the labels only differ between epochs through that augmentation, so here they
are computed once on the un-augmented images. The paper code's normalisation constants carry a
typo (third channel mean 0.2265 for 0.4465); here the preprocess's own mean and std are used.
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from mcu_jax import data as data_lib
from mcu_jax import preprocess as preprocess_lib
from mcu_jax.core import objectives
from mcu_jax.errors import InvalidArgument
from mcu_jax.models.adapters import Apply
from mcu_jax.runtime import train as train_lib
from mcu_jax.unlearn import configs as cfgs
from mcu_jax.unlearn.losses import ce_loss
from mcu_jax.unlearn.method_context import MethodContext, Outcome, forget_arrays, place, train_on

Norm = tuple[tuple[float, ...], tuple[float, ...]] | None


def pixel_norm(preprocess) -> Norm:
  """How ``preprocess`` maps pixels in [0, 1] to model inputs: None for ``preprocess.images``
  (identity), (mean, std) per channel for a ``Preprocessor``; anything else raises."""
  if preprocess is preprocess_lib.normalize_uint8:
    return None
  if isinstance(preprocess, preprocess_lib.Preprocessor):
    return tuple(preprocess.mean), tuple(preprocess.std)
  raise InvalidArgument(
      "preprocess: boundary_shrink attacks in pixel space [0, 1] and must know how pixels become "
      "model inputs; it accepts mcu_jax.preprocess.images (normalize_uint8) or a Preprocessor "
      f"from mcu_jax.preprocess.make_preprocess, got {preprocess!r}")


def _normalize(pixels: jax.Array, norm: Norm) -> jax.Array:
  if norm is None:
    return pixels
  mean, std = (jnp.asarray(v, jnp.float32) for v in norm)
  return (pixels - mean) / std


def pgd_attack(apply: Apply, params, model_state, pixels: jax.Array, labels: jax.Array,
               norm: Norm, bound, step, steps: int) -> jax.Array:
  """The L-inf PGD neighbour (module docstring) of ``pixels`` (B, ...) float32 in [0, 1] with
  true ``labels`` (B,), the model in inference mode: (B, ...) float32 pixels, multiples of
  1/255. ``bound`` and ``step`` are in pixel units; ``steps`` is static."""
  def batch_ce(x):
    logits, _ = apply(params, model_state, _normalize(x, norm), False)
    # A sum, not a mean: each example's gradient is its own (inference mode), and the sign of
    # the step is the same.
    return jnp.sum(objectives.cross_entropy(logits, labels))

  def iteration(_, x_adv):
    x_adv = x_adv + step * jnp.sign(jax.grad(batch_ce)(x_adv))
    x_adv = jnp.clip(pixels + jnp.clip(x_adv - pixels, -bound, bound), 0.0, 1.0)
    return jnp.round(x_adv * 255.0) / 255.0

  return jax.lax.fori_loop(0, steps, iteration, pixels)


def neighbour_labels_fn(apply: Apply, norm: Norm, steps: int):
  """A jitted ``fn(params, model_state, batches, bound, step) -> labels (steps_b * B,)``:
  argmax of the model (inference mode) at each example's ``pgd_attack`` neighbour; ``batches``
  holds ``images`` (steps_b, B, ...) uint8 and ``labels`` (steps_b, B) as
  ``data.padded_batches`` makes them (padding rows get labels too: drop them). Made once per
  (apply, norm, steps) when apply is hashable."""
  try:
    hash(apply)
  except TypeError:
    return _neighbour_labels_fn.__wrapped__(apply, norm, int(steps))
  return _neighbour_labels_fn(apply, norm, int(steps))


@functools.lru_cache(maxsize=8)
def _neighbour_labels_fn(apply: Apply, norm: Norm, steps: int):
  @jax.jit
  def neighbours(params, model_state, batches, bound, step):
    def one(batch):
      pixels = batch["images"].astype(jnp.float32) / 255.0
      x_adv = pgd_attack(apply, params, model_state, pixels, batch["labels"], norm, bound,
                         step, steps)
      logits, _ = apply(params, model_state, _normalize(x_adv, norm), False)
      return jnp.argmax(logits, axis=-1).astype(batch["labels"].dtype)
    return jax.lax.map(one, {"images": batches["images"], "labels": batches["labels"]}
                       ).reshape(-1)
  return neighbours


def run_boundary_shrink(ctx: MethodContext, config: cfgs.BoundaryShrinkConfig) -> Outcome:
  """Neighbour labels, then CE fine-tuning on D_f against them (module docstring)."""
  norm = pixel_norm(ctx.preprocess)
  forget = forget_arrays(ctx)   # uint8 pixels: a Dataset holds nothing else
  batches = place(ctx, data_lib.padded_batches(forget, config.batch_size))
  args = (ctx.params, ctx.model_state, batches, place(ctx, jnp.float32(config.bound)),
          place(ctx, jnp.float32(config.attack_step)))
  relabel, relabel_compile = train_lib.compile_ahead(
      neighbour_labels_fn(ctx.apply, norm, config.attack_steps), *args)
  start = time.perf_counter()
  labels = jax.block_until_ready(relabel(*args))
  relabel_seconds = time.perf_counter() - start
  neighbours = np.asarray(labels)[:len(forget["labels"])]
  trained = train_on(ctx, config, ce_loss(ctx.apply),
                     {"images": forget["images"], "labels": neighbours})
  return Outcome(trained.params, trained.model_state, trained.history,
                 trained.compile_seconds + relabel_compile, relabel_seconds,
                 {"neighbour_labels": neighbours})
