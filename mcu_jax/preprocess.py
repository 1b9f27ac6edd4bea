"""Preprocessing: what turns stored inputs into the arrays a model sees.

A ``Preprocess`` is ``fn(key, inputs) -> model inputs``. Training calls it with a PRNG key
(augmentation may use it); evaluation calls it with ``key=None`` (no randomness). Every
function in mcu_jax that feeds a model takes one. Nothing is rescaled unless you say so:

==============  ====================================================================
inputs          ``default_preprocess``
==============  ====================================================================
floating        passed unchanged (never rescaled)
int8..int64,    passed unchanged: integer ids (tokens, buckets) reach the model as they
uint16..uint64  are
uint8           refused: pixels or ids? say which with ``preprocess=images`` (divided by
                255) or ``preprocess=as_is`` (unchanged)
bool, other     refused
==============  ====================================================================

* ``images`` (= ``normalize_uint8``): uint8 images -> float32 / 255; anything else raises.
* ``as_is``: every dtype unchanged.
* ``make_preprocess``: per-channel ``(x / 255 - mean) / std`` of uint8 NHWC images, with
  random crop and flip when given a key (``Preprocessor``, hashable so that jitted functions
  reuse their compilation). The command line's data sets are images and use it.

``random_crop`` and ``random_flip`` keep the dtype (uint8 in, uint8 out), so augmentation runs
on the compact on-device data before the float conversion.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mcu_jax.errors import InvalidArgument

Preprocess = Callable[[jax.Array | None, jax.Array], jax.Array]


def _require_uint8(inputs, who: str) -> None:
  if jnp.result_type(inputs) != jnp.uint8:
    raise InvalidArgument(f"{who} takes uint8 images (it divides by 255), got "
                          f"{jnp.result_type(inputs)} inputs; float inputs are never rescaled: "
                          "use default_preprocess, or a preprocess of your own")


def default_preprocess(key: jax.Array | None, inputs: jax.Array) -> jax.Array:
  """Floating inputs and integer ids unchanged; uint8 refused. Ignores ``key``.

  uint8 arrays are images as often as ids, and guessing would be a silent wrong answer either
  way, so they raise ``InvalidArgument`` asking for ``images`` or ``as_is``.
  """
  del key
  dtype = jnp.result_type(inputs)
  if dtype == jnp.uint8:
    raise InvalidArgument(
        "inputs: uint8 arrays are images to divide by 255 or integer ids to pass unchanged; "
        "say which with preprocess=mcu_jax.preprocess.images or "
        "preprocess=mcu_jax.preprocess.as_is")
  if jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer):
    return jnp.asarray(inputs)
  raise InvalidArgument(f"inputs: expected floating features, integer ids or uint8 images, got "
                        f"{dtype}; pass a preprocess that maps them to what the model takes")


def as_is(key: jax.Array | None, inputs: jax.Array) -> jax.Array:
  """Inputs of any dtype unchanged (uint8 ids, say). Ignores ``key``."""
  del key
  return jnp.asarray(inputs)


def normalize_uint8(key: jax.Array | None, images: jax.Array) -> jax.Array:
  """uint8 images -> float32 in [0, 1]; any other dtype raises InvalidArgument. Ignores ``key``."""
  del key
  _require_uint8(images, "normalize_uint8")
  return jnp.asarray(images).astype(jnp.float32) / 255.0


images = normalize_uint8
"""uint8 images -> float32 in [0, 1] (``normalize_uint8``)."""


def random_crop(key: jax.Array, images: jax.Array, padding: int) -> jax.Array:
  """Zero-pads every image by ``padding`` pixels on each side and crops it back to its size
  at an offset drawn per example (the usual CIFAR "pad 4, random crop")."""
  padding = int(padding)
  if padding < 0:
    raise InvalidArgument(f"padding must be >= 0, got {padding}")
  if images.ndim != 4:
    raise InvalidArgument(f"random_crop needs NHWC images, got shape {images.shape}")
  if padding == 0:
    return images
  n, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))
  return jax.vmap(crop)(padded, offsets)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
  """Mirrors each image left-right with probability 1/2, drawn per example."""
  if images.ndim != 4:
    raise InvalidArgument(f"random_flip needs NHWC images, got shape {images.shape}")
  flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def _per_channel(values, channels: int, what: str):
  """``values`` as a 1-D float32 array of 1 or ``channels`` entries (NumPy when concrete)."""
  if isinstance(values, jax.core.Tracer):
    values = jnp.atleast_1d(values).astype(jnp.float32)
  else:
    values = np.atleast_1d(np.asarray(values, np.float32))
    if what == "std" and np.any(values <= 0):
      raise InvalidArgument(f"std must be positive, got {values.tolist()}")
  if values.ndim != 1 or values.size not in (1, channels):
    raise InvalidArgument(f"{what} has {values.size} values for images with {channels} channels")
  return values


def normalize(images: jax.Array, mean, std) -> jax.Array:
  """uint8 images -> float32 ``(x / 255 - mean) / std``, per channel (or one value for all).

  Other dtypes raise InvalidArgument (float inputs are never rescaled)."""
  _require_uint8(images, "normalize")
  channels = images.shape[-1]
  mean = _per_channel(mean, channels, "mean")
  std = _per_channel(std, channels, "std")
  return (images.astype(jnp.float32) / 255.0 - mean) / std


@dataclasses.dataclass(frozen=True)
class Preprocessor:
  """A hashable ``Preprocess``: equal settings compare and hash equal, so jitted functions
  that take it as a static argument (``evaluate.accuracy_and_loss``) reuse their compilation."""
  mean: tuple[float, ...]
  std: tuple[float, ...]
  augment: bool = True
  padding: int = 4
  flip: bool = True

  def __call__(self, key: jax.Array | None, images: jax.Array) -> jax.Array:
    if key is not None and self.augment:
      crop_key, flip_key = jax.random.split(key)
      if self.padding:
        images = random_crop(crop_key, images, self.padding)
      if self.flip:
        images = random_flip(flip_key, images)
    return normalize(images, self.mean, self.std)


def make_preprocess(mean: Sequence[float] | float, std: Sequence[float] | float,
                    augment: bool = True, padding: int = 4, flip: bool = True) -> Preprocessor:
  """``fn(key, images_uint8) -> float32``: random crop (``padding``) and horizontal flip
  (``flip``; leave it off for digits and other data with a handedness) when ``augment`` and a
  key is given, then ``normalize``. ``key=None`` means evaluation: normalisation only."""
  if int(padding) < 0:
    raise InvalidArgument(f"padding must be >= 0, got {padding}")
  as_tuple = lambda v: tuple(float(x) for x in np.atleast_1d(np.asarray(v, np.float64)))
  mean, std = as_tuple(mean), as_tuple(std)
  if any(s <= 0 for s in std):
    raise InvalidArgument(f"std must be positive, got {std}")
  return Preprocessor(mean, std, bool(augment), int(padding), bool(flip))
