"""VGG with BatchNorm as in the MCU reference (``models/vgg.py``), for 32x32-style inputs.

Each block of ``config`` is conv3x3 (with bias) - BN - ReLU per entry, then a 2x2 max-pool;
the classifier is Linear(flat, 512)-ReLU-Linear(512, 512)-ReLU-Linear(512, C). The flattened
size is 512 for 32x32 inputs (1x1 maps after five pools) and 2048 for the reference's 64x64
inputs. Pools are skipped once a map is 1 pixel high or wide, so 28x28 and 8x8 inputs also
end at 1x1 (torch's MaxPool2d would fail there). Maps are flattened in torch's (C, H, W)
order so that a reference Linear(2048, 512) converts by a plain transpose.

The reference's classifier starts with Dropout(0.5) before each of its first two Linear
layers. This module has none: the library's apply convention passes no dropout rng, and
dropout is the identity at inference, so logits of imported checkpoints are unchanged.

``reference_forward=True`` reproduces the reference's forward bug: a block's torch ModuleList
holds [conv, bn, conv, bn, ...] but ``zip(layers, activations)`` runs only its first
len(sizes) modules, each followed by ReLU. For VGG16-BN that is conv-ReLU-BN-ReLU in blocks 1
and 2 and conv-ReLU-BN-ReLU-conv-ReLU in blocks 3 to 5. The unused modules still exist, so
the parameter tree is the same in both modes (they are created at init time).

Parameters (10 classes, 3 channels): 15,253,578 for 32x32 inputs, 16,040,010 for 64x64 (the
reference's figure; its unused modules included).

Flax names mirror the torch keys (``torch_key`` maps them). In block ``b``, index ``2k`` is its
k-th conv and ``2k+1`` that conv's BN (with ``batch_norm=False`` the convs are numbered k):

====================================  ==========================================  ============
Flax path (params / batch_stats)      torch key                                   layout
====================================  ==========================================  ============
layer_blocks_{b}_{2k}/{kernel,bias}   layer_blocks.{b}.{2k}.{weight,bias}         OIHW -> HWIO
layer_blocks_{b}_{2k+1}/{scale,bias}  layer_blocks.{b}.{2k+1}.{weight,bias}
layer_blocks_{b}_{2k+1}/{mean,var}    layer_blocks.{b}.{2k+1}.running_{mean,var}
classifier_{1,4,6}/{kernel,bias}      classifier.{1,4,6}.{weight,bias}            transposed
====================================  ==========================================  ============

The reference's curve VGG names the classifier ``fc1``/``fc2``/``fc3`` (its import goes by
parameter order). Conv kernels convert as ``torch_w.transpose(2, 3, 1, 0)``, dense kernels
as ``torch_w.T``.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mcu_jax.models.resnet import batch_norm, conv_kernel_init, dense_kernel_init
from mcu_jax.models.resnet import torch_key as _torch_key

VGG16_CONFIG = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def torch_key(path: Sequence[str]) -> str:
  """The reference model's ``state_dict`` key of the Flax leaf at ``path``."""
  return _torch_key(path)


class VGG(nn.Module):
  """VGG of ``config`` blocks, with BatchNorm when ``batch_norm``.

  Input (B, H, W, C) NHWC, any C (1 or 3), H, W >= 1; output float32 logits
  (B, num_classes). ``dtype`` is the computation dtype; parameters are always float32.
  """
  num_classes: int = 10
  config: Sequence[Sequence[int]] = VGG16_CONFIG
  batch_norm: bool = True
  reference_forward: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    for b, sizes in enumerate(self.config):
      # the torch ModuleList: [conv, bn, conv, bn, ...] or [conv, conv, ...]
      layers: list[nn.Module] = []
      for channels in sizes:
        layers.append(nn.Conv(channels, (3, 3), padding=1, dtype=self.dtype,
                              kernel_init=conv_kernel_init, name=f"layer_blocks_{b}_{len(layers)}"))
        if self.batch_norm:
          layers.append(batch_norm(train, self.dtype, f"layer_blocks_{b}_{len(layers)}"))
      step = 2 if self.batch_norm else 1
      groups = [layers[i:i + step] for i in range(0, len(layers), step)]
      intended = functools.partial(_chain, groups)
      if self.reference_forward:
        if self.is_initializing():
          intended(x)  # creates the parameters of the modules the buggy forward skips
        x = _chain([[layer] for layer in layers[:len(sizes)]], x)
      else:
        x = intended(x)
      if min(x.shape[1:3]) >= 2:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape((x.shape[0], -1))
    dense = functools.partial(nn.Dense, dtype=self.dtype, kernel_init=dense_kernel_init)
    x = nn.relu(dense(512, name="classifier_1")(x))
    x = nn.relu(dense(512, name="classifier_4")(x))
    x = dense(self.num_classes, name="classifier_6")(x)
    return x.astype(jnp.float32)


def _chain(groups, x):
  """Each group of modules in turn, then ReLU: relu(bn(conv(x))) per group."""
  for group in groups:
    for module in group:
      x = module(x)
    x = nn.relu(x)
  return x


VGG16BN = functools.partial(VGG, config=VGG16_CONFIG, batch_norm=True)
