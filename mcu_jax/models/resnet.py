"""ResNet-18 with the CIFAR stem, plus the initialisers and torch-key helper shared by the models.

Architecture (torchvision's ResNet-18 with the usual CIFAR change, as in SalUn's models):
3x3 stem conv with stride 1 and no max-pool, then four stages of two BasicBlocks with widths
64, 128, 256, 512 (strides 1, 2, 2, 2), a global average pool and a dense layer. Inputs are
NHWC with any number of channels (1 for grey, 3 for colour) and any spatial size: the global
average pool takes whatever the last stage leaves (4x4 for 32x32 inputs, 1x1 for 8x8).

Flax names mirror the torch ``state_dict`` keys. Replace every ``_<digits>`` in a module name
with ``.<digits>`` and rename the leaf (``torch_key`` does exactly this):

================================  ==============================  =========================
Flax path (params / batch_stats)  torch key                       layout
================================  ==============================  =========================
conv1/kernel                      conv1.weight                    OIHW -> HWIO
bn1/{scale,bias}                  bn1.{weight,bias}
bn1/{mean,var}                    bn1.{running_mean,running_var}
layer{s}_{i}/conv{1,2}/kernel     layer{s}.{i}.conv{1,2}.weight   OIHW -> HWIO
layer{s}_{i}/bn{1,2}/*            layer{s}.{i}.bn{1,2}.*
layer{s}_0/downsample_0/kernel    layer{s}.0.downsample.0.weight  OIHW -> HWIO (1x1, s > 1)
layer{s}_0/downsample_1/*         layer{s}.0.downsample.1.*       its BatchNorm
fc/{kernel,bias}                  fc.{weight,bias}                transposed
================================  ==============================  =========================

Checkpoints in the kuangliu/pytorch-cifar naming use ``shortcut.{0,1}`` for ``downsample.{0,1}``
and ``linear`` for ``fc``. torch's ``num_batches_tracked`` buffers have no Flax counterpart.
Conv kernels convert as ``torch_w.transpose(2, 3, 1, 0)`` (OIHW -> HWIO), dense kernels as
``torch_w.T``.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# torch's kaiming_normal_(mode="fan_out", nonlinearity="relu") == the reference's
# N(0, sqrt(2 / (k * k * out_channels))). Flax's fan_out of an HWIO kernel is k * k * out.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch.nn.Linear's default weight init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)). (torch also draws
# the bias from that range; Flax's bias initialiser does not see fan_in, so biases start at 0.)
dense_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias",
                  "mean": "running_mean", "var": "running_var"}


def torch_key(path: Sequence[str], aliases: Mapping[str, str] | None = None) -> str:
  """The torch ``state_dict`` key of the Flax leaf at ``path`` (collection name excluded).

  ``("layer2_0", "downsample_0", "kernel") -> "layer2.0.downsample.0.weight"``. ``aliases``
  renames whole module names first (PreResNet: ``{"downsample": "downsample.0"}``).
  """
  *modules, leaf = path
  aliases = aliases or {}
  parts = [re.sub(r"_(\d+)", r".\1", aliases.get(m, m)) for m in modules]
  return ".".join(parts + [_LEAF_TO_TORCH[leaf]])


def batch_norm(train: bool, dtype: Any, name: str | None = None) -> nn.BatchNorm:
  """torch.nn.BatchNorm2d's momentum (0.1 -> Flax 0.9), eps (1e-5) and init (scale 1, bias 0).

  One difference stays: in training mode Flax updates the running variance with the biased
  batch variance, torch with the unbiased one (times n / (n - 1)). mcu_jax recomputes every
  evaluated model's statistics exactly (``mcu_jax.runtime.batchnorm``), so no reported number rests
  on either running average.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      name=name)


class BasicBlock(nn.Module):
  """conv3x3(stride)-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU.

  (B, H, W, C_in) -> (B, ceil(H / stride), ceil(W / stride), planes). The shortcut is
  conv1x1(stride)-BN when the shape changes, the identity otherwise.
  """
  planes: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             kernel_init=conv_kernel_init)
    out = conv(self.planes, (3, 3), strides=self.stride, padding=1, name="conv1")(x)
    out = nn.relu(batch_norm(train, self.dtype, "bn1")(out))
    out = conv(self.planes, (3, 3), padding=1, name="conv2")(out)
    out = batch_norm(train, self.dtype, "bn2")(out)
    if self.stride != 1 or x.shape[-1] != self.planes:
      x = conv(self.planes, (1, 1), strides=self.stride, padding=0, name="downsample_0")(x)
      x = batch_norm(train, self.dtype, "downsample_1")(x)
    return nn.relu(out + x)


class ResNet(nn.Module):
  """ResNet with the CIFAR stem (3x3 conv, stride 1, no max-pool) and BasicBlocks.

  Input (B, H, W, C) NHWC, any C and H, W; output float32 logits (B, num_classes).
  ``dtype`` is the computation dtype; parameters are always float32.
  """
  num_classes: int = 10
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  width: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    x = nn.Conv(self.width, (3, 3), padding=1, use_bias=False, dtype=self.dtype,
                kernel_init=conv_kernel_init, name="conv1")(x)
    x = nn.relu(batch_norm(train, self.dtype, "bn1")(x))
    for s, blocks in enumerate(self.stage_sizes):
      for i in range(blocks):
        stride = 2 if s > 0 and i == 0 else 1
        x = BasicBlock(self.width * 2 ** s, stride, self.dtype,
                       name=f"layer{s + 1}_{i}")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=dense_kernel_init,
                 name="fc")(x)
    return x.astype(jnp.float32)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2))
