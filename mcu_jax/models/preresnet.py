"""PreResNet exactly as in the MCU reference (``models/preresnet.py``, from dnn-mode-connectivity).

Depth >= 44 uses Bottleneck blocks (expansion 4) with n = (depth - 2) // 9 blocks per stage,
so PreResNet-110 has 12 and PreResNet-164 has 18; smaller depths use BasicBlocks with
n = (depth - 2) // 6. Stem: a 3x3 conv only (no BN/ReLU). Three stages of widths 16, 32, 64
(strides 1, 2, 2). The first block of a stage has a downsample, a bias-free 1x1 conv (no BN)
applied to the raw block input, when the stride or the channel count changes. Then BN, ReLU,
global average pool (the reference's AvgPool2d(8) on its 8x8 maps is the same as a global
mean; the mean also accepts 28x28 or 8x8 inputs), and ``fc`` with bias. No conv has a bias.
Init as in the reference: conv N(0, sqrt(2 / (k * k * out_channels))), BN scale 1 and bias 0.

Parameters (10 classes, 3 input channels): PreResNet-110 1,146,842; PreResNet-164 1,703,258.

Flax names mirror the torch keys of the plain reference model (``torch_key`` maps them):

================================  =============================================  ============
Flax path (params / batch_stats)  torch key                                      layout
================================  =============================================  ============
conv1/kernel                      conv1.weight                                   OIHW -> HWIO
layer{s}_{i}/bn{j}/{scale,bias}   layer{s}.{i}.bn{j}.{weight,bias}
layer{s}_{i}/bn{j}/{mean,var}     layer{s}.{i}.bn{j}.{running_mean,running_var}
layer{s}_{i}/conv{j}/kernel       layer{s}.{i}.conv{j}.weight                    OIHW -> HWIO
layer{s}_0/downsample/kernel      layer{s}.0.downsample.0.weight                 OIHW -> HWIO
bn/{scale,bias}                   bn.{weight,bias}
bn/{mean,var}                     bn.{running_mean,running_var}
fc/{kernel,bias}                  fc.{weight,bias}                               transposed
================================  =============================================  ============

``s`` is 1..3 and ``i`` 0..n-1; BasicBlocks have only bn1/conv1/bn2/conv2. The reference's
curve model stores the same tensors as ``net.<same path>.weight_{b}`` / ``bias_{b}`` for bend
``b``, with ``downsample.weight_{b}`` (no ``.0``). Conv kernels convert as
``torch_w.transpose(2, 3, 1, 0)``, dense kernels as ``torch_w.T``.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mcu_jax.errors import InvalidArgument
from mcu_jax.models.resnet import batch_norm, conv_kernel_init, dense_kernel_init
from mcu_jax.models.resnet import torch_key as _torch_key


def torch_key(path: Sequence[str]) -> str:
  """The plain reference model's ``state_dict`` key of the Flax leaf at ``path``."""
  return _torch_key(path, aliases={"downsample": "downsample.0"})


def _conv(features: int, kernel: int, stride: int, dtype: Any, name: str) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), strides=stride, padding=kernel // 2,
                 use_bias=False, dtype=dtype, kernel_init=conv_kernel_init, name=name)


class PreActBasicBlock(nn.Module):
  """BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3, plus the (raw-input) shortcut; no final ReLU.

  (B, H, W, C_in) -> (B, ceil(H / stride), ceil(W / stride), planes).
  """
  planes: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    out = nn.relu(batch_norm(train, self.dtype, "bn1")(x))
    out = _conv(self.planes, 3, self.stride, self.dtype, "conv1")(out)
    out = nn.relu(batch_norm(train, self.dtype, "bn2")(out))
    out = _conv(self.planes, 3, 1, self.dtype, "conv2")(out)
    if self.stride != 1 or x.shape[-1] != self.planes:
      x = _conv(self.planes, 1, self.stride, self.dtype, "downsample")(x)
    return out + x


class PreActBottleneck(nn.Module):
  """BN-ReLU-conv1x1, BN-ReLU-conv3x3(stride), BN-ReLU-conv1x1(4 planes), plus the shortcut.

  (B, H, W, C_in) -> (B, ceil(H / stride), ceil(W / stride), 4 * planes). The shortcut is a
  bias-free conv1x1(stride) of the raw input when the shape changes, else the identity.
  """
  planes: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    out = nn.relu(batch_norm(train, self.dtype, "bn1")(x))
    out = _conv(self.planes, 1, 1, self.dtype, "conv1")(out)
    out = nn.relu(batch_norm(train, self.dtype, "bn2")(out))
    out = _conv(self.planes, 3, self.stride, self.dtype, "conv2")(out)
    out = nn.relu(batch_norm(train, self.dtype, "bn3")(out))
    out = _conv(4 * self.planes, 1, 1, self.dtype, "conv3")(out)
    if self.stride != 1 or x.shape[-1] != 4 * self.planes:
      x = _conv(4 * self.planes, 1, self.stride, self.dtype, "downsample")(x)
    return out + x


class PreResNet(nn.Module):
  """Pre-activation ResNet of the given ``depth`` (20, 56, 110, 164, ...).

  Input (B, H, W, C) NHWC, any C (1 or 3) and H, W; output float32 logits
  (B, num_classes). ``dtype`` is the computation dtype; parameters are always float32.
  """
  num_classes: int = 10
  depth: int = 110
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    block: type[PreActBottleneck] | type[PreActBasicBlock]
    if self.depth >= 44:
      if (self.depth - 2) % 9:
        raise InvalidArgument(f"PreResNet depth >= 44 must be 9n+2, got {self.depth}")
      n, block = (self.depth - 2) // 9, PreActBottleneck
    else:
      if (self.depth - 2) % 6:
        raise InvalidArgument(f"PreResNet depth < 44 must be 6n+2, got {self.depth}")
      n, block = (self.depth - 2) // 6, PreActBasicBlock
    x = x.astype(self.dtype)
    x = _conv(16, 3, 1, self.dtype, "conv1")(x)
    for s, (planes, stride) in enumerate(((16, 1), (32, 2), (64, 2))):
      for i in range(n):
        x = block(planes, stride if i == 0 else 1, self.dtype,
                  name=f"layer{s + 1}_{i}")(x, train)
    x = nn.relu(batch_norm(train, self.dtype, "bn")(x))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=dense_kernel_init,
                 name="fc")(x)
    return x.astype(jnp.float32)


PreResNet20 = functools.partial(PreResNet, depth=20)
PreResNet56 = functools.partial(PreResNet, depth=56)
PreResNet110 = functools.partial(PreResNet, depth=110)
PreResNet164 = functools.partial(PreResNet, depth=164)
