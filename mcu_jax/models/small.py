"""Small models for the bundled digits data and for tests."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class SmallCNN(nn.Module):
  """conv3x3(w)-BN-ReLU, conv3x3(2w)-BN-ReLU, 2x2 max-pool, global average pool, dense.

  Input NHWC float; output logits (B, num_classes).
  """
  num_classes: int = 10
  width: int = 16
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)
    x = x.astype(self.dtype)
    x = nn.relu(norm()(nn.Conv(self.width, (3, 3), use_bias=False, dtype=self.dtype)(x)))
    x = nn.relu(norm()(nn.Conv(2 * self.width, (3, 3), use_bias=False, dtype=self.dtype)(x)))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


class MLP(nn.Module):
  """Flatten, hidden Dense-ReLU layers, Dense logits. No BatchNorm, no model state."""
  num_classes: int = 10
  hidden: tuple[int, ...] = (64,)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    x = x.reshape((x.shape[0], -1)).astype(self.dtype)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
