"""A small Vision Transformer (``vit_tiny``): patch embedding, class token, pre-norm blocks.

Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at
Scale", ICLR 2021. The architecture follows the MCU reference's ``models/vit.py`` (timm's
``VisionTransformer``; the reference's ``ViTBase`` and ``ViTCurve`` build it at 224x224 with
patch 16, dim 768, depth 12, 8 heads (timm's default is 12; the reference passes 8), MLP
ratio 4, qkv bias):

* patch embedding: a conv with kernel = stride = ``patch_size`` and bias, (B, H, W, C) ->
  (B, H/p * W/p, dim), patches in row-major order (torch's ``flatten(2)`` of NCHW);
* a learned class token prepended, a learned position embedding added, (B, N + 1, dim);
* ``depth`` pre-norm blocks: x + Attn(LN(x)), then x + MLP(LN(x)); the attention has one fused
  ``qkv`` dense (3 dim outputs, bias), ``num_heads`` heads scaled by head_dim^-1/2 and an
  output ``proj`` dense; the MLP is dense(mlp_ratio * dim)-GELU(exact erf)-dense(dim);
* a final LayerNorm, and the ``head`` dense on the class token. LayerNorms use eps 1e-6.

No BatchNorm anywhere: the model state is ``{}``, so the MCU sweep recalibrates nothing.

Defaults ("tiny", sized for 32x32 CIFAR and CPU tests): ``patch_size`` 4 (8x8 = 64 patches
on 32x32, 7x7 on 28x28 Fashion-MNIST, 2x2 on the bundled 8x8 digits; ``patch_size`` 2 gives
digits 4x4 patches but learns them far more slowly), ``dim`` 64 (the reference's 768 scaled
down), ``depth`` 6 (half the reference's 12), ``num_heads`` 8, ``mlp_ratio`` 4 and
``qkv_bias`` True (the reference's), ``dropout_rate`` 0 (the reference's ``drop_rate``;
attention dropout and drop-path, 0 in the reference, are not implemented). Parameters at the
defaults, 10 classes, 32x32x3 inputs: 308,042 (the position embedding has N + 1 rows, so the
count depends on the image size; ``vit_param_count`` gives it in closed form).

Initialisation as the reference's ``_init_weights``: dense kernels, the class token and the
position embedding N(0, 0.02) (timm's ``trunc_normal_(std=.02)`` truncates at +-2 in absolute
value, i.e. at 100 standard deviations: a plain normal), dense biases 0, LayerNorm scale 1
and bias 0; the patch conv keeps torch's default kernel init, U(+-1/sqrt(fan_in)), with bias 0
(Flax's bias initialiser does not see fan_in; torch draws it from the same range).

Deviations: ``ViTBase`` starts from pretrained ImageNet weights at 224x224 (timm's ViT-B/16,
fine-tuned from ImageNet-21k) and replaces the head; this model is trained from scratch at
the data's own size. The attention softmax is taken in float32 whatever ``dtype`` is (with
bf16 the logits are cast up first). LayerNorm eps is the plain model's 1e-6 everywhere (the
reference's curve model uses ``curves.LayerNorm``'s 1e-5; here endpoints and curve points
are one model). The optional ``representation_size`` pre-logits layer, the hybrid CNN stem
and the distilled variant are left out (``ViTBase`` uses none of them).

Flax names mirror the reference's torch keys: ``patch_embed`` (torch ``patch_embed.proj``),
``cls_token``, ``pos_embed``, ``blocks_{i}/{norm1,attn/qkv,attn/proj,norm2,mlp/fc1,mlp/fc2}``,
``norm``, ``head``.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mcu_jax.errors import InvalidArgument
from mcu_jax.models.resnet import dense_kernel_init

LAYER_NORM_EPS = 1e-6
"""The reference's ``partial(nn.LayerNorm, eps=1e-6)``."""
_normal_002 = nn.initializers.normal(0.02)


def _layer_norm(dtype: Any, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=dtype, name=name)


def _dense(features: int, dtype: Any, name: str, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, kernel_init=_normal_002,
                  bias_init=nn.initializers.zeros, name=name)


class Attention(nn.Module):
  """Multi-head self-attention, (B, N, dim) -> (B, N, dim), with a fused qkv projection."""
  num_heads: int
  qkv_bias: bool = True
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    b, n, dim = x.shape
    head_dim = dim // self.num_heads
    qkv = _dense(3 * dim, self.dtype, "qkv", self.qkv_bias)(x)
    # torch's reshape(B, N, 3, heads, head_dim): q, k, v, each split into heads.
    qkv = qkv.reshape(b, n, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]               # (B, N, heads, head_dim)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * jnp.asarray(head_dim ** -0.5, q.dtype)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, dim)
    out = _dense(dim, self.dtype, "proj")(out)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(out)


class Mlp(nn.Module):
  """dense(hidden)-GELU-dense(dim), (B, N, dim) -> (B, N, dim); GELU is torch's exact one."""
  hidden: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    dim = x.shape[-1]
    drop = lambda h: nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    x = drop(nn.gelu(_dense(self.hidden, self.dtype, "fc1")(x), approximate=False))
    return drop(_dense(dim, self.dtype, "fc2")(x))


class Block(nn.Module):
  """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)); (B, N, dim) kept."""
  num_heads: int
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    dim = x.shape[-1]
    x = x + Attention(self.num_heads, self.qkv_bias, self.dropout_rate, self.dtype,
                      name="attn")(_layer_norm(self.dtype, "norm1")(x), train)
    return x + Mlp(int(dim * self.mlp_ratio), self.dropout_rate, self.dtype,
                   name="mlp")(_layer_norm(self.dtype, "norm2")(x), train)


class ViT(nn.Module):
  """Vision Transformer; the defaults are ``vit_tiny`` (see the module docstring).

  Input (B, H, W, C) NHWC float, any C, H and W multiples of ``patch_size``; output float32
  logits (B, num_classes). ``dtype`` is the computation dtype; parameters are always float32.
  With ``dropout_rate`` > 0, training forwards draw from the ``dropout`` rng stream (the Linen
  adapter's default).
  """
  num_classes: int = 10
  patch_size: int = 4
  dim: int = 64
  depth: int = 6
  num_heads: int = 8
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  def __post_init__(self):
    for name in ("patch_size", "dim", "depth", "num_heads"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidArgument(f"ViT.{name}: expected an integer >= 1, got {value!r}")
    if self.dim % self.num_heads:
      raise InvalidArgument(f"ViT.dim: must be a multiple of num_heads = {self.num_heads}, "
                            f"got {self.dim}")
    if not isinstance(self.mlp_ratio, int | float) or int(self.dim * self.mlp_ratio) < 1:
      raise InvalidArgument(f"ViT.mlp_ratio: expected a number > 0 with dim * mlp_ratio >= 1, "
                            f"got {self.mlp_ratio!r}")
    if not isinstance(self.dropout_rate, int | float) or not 0.0 <= self.dropout_rate < 1.0:
      raise InvalidArgument(f"ViT.dropout_rate: expected a number in [0, 1), "
                            f"got {self.dropout_rate!r}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4:
      raise InvalidArgument(f"inputs: ViT expects NHWC images (B, H, W, C), got shape {x.shape}")
    b, h, w, _ = x.shape
    p = self.patch_size
    if h % p or w % p:
      raise InvalidArgument(f"inputs: image size {h}x{w} is not divisible by the ViT "
                            f"patch_size {p}; choose a patch_size dividing both")
    x = nn.Conv(self.dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                kernel_init=dense_kernel_init, name="patch_embed")(x.astype(self.dtype))
    x = x.reshape(b, (h // p) * (w // p), self.dim)
    cls = self.param("cls_token", _normal_002, (1, 1, self.dim))
    pos = self.param("pos_embed", _normal_002, (1, x.shape[1] + 1, self.dim))
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (b, 1, self.dim)), x], axis=1)
    x = x + pos.astype(self.dtype)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    for i in range(self.depth):
      x = Block(self.num_heads, self.mlp_ratio, self.qkv_bias, self.dropout_rate, self.dtype,
                name=f"blocks_{i}")(x, train)
    x = _layer_norm(self.dtype, "norm")(x)[:, 0]
    return _dense(self.num_classes, self.dtype, "head")(x).astype(jnp.float32)


def vit_param_count(num_classes: int, image_size: tuple[int, int], channels: int, *,
                patch_size: int = 4, dim: int = 64, depth: int = 6, mlp_ratio: float = 4.0,
                qkv_bias: bool = True) -> int:
  """The closed-form parameter count of ``ViT`` for (H, W) = ``image_size`` inputs."""
  h, w = image_size
  tokens = (h // patch_size) * (w // patch_size) + 1
  hidden = int(dim * mlp_ratio)
  embed = patch_size * patch_size * channels * dim + dim + dim + tokens * dim
  block = (2 * 2 * dim                                     # norm1, norm2
           + dim * 3 * dim + (3 * dim if qkv_bias else 0)  # qkv
           + dim * dim + dim                               # proj
           + dim * hidden + hidden + hidden * dim + dim)   # fc1, fc2
  return embed + depth * block + 2 * dim + dim * num_classes + num_classes


__all__ = ["ViT", "Block", "Attention", "Mlp", "vit_param_count", "LAYER_NORM_EPS"]
