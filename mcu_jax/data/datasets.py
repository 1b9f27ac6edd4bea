"""The in-memory data set types and their per-channel normalisation statistics.

A ``Dataset`` is uint8 images NHWC with integer labels; a ``TrainTest`` is the pair every
source returns. ``NORMALIZATION`` holds the known mean/std constants, ``channel_stats``
computes them exactly, ``normalization_stats`` picks one or the other for a training set.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from mcu_jax.errors import InvalidArgument


@dataclasses.dataclass(frozen=True)
class Dataset:
  """images: (N, H, W, C) uint8; labels: (N,) int32 in [0, num_classes)."""
  name: str
  images: np.ndarray
  labels: np.ndarray
  num_classes: int

  def __post_init__(self):
    if self.images.ndim != 4 or self.images.dtype != np.uint8:
      raise InvalidArgument(f"{self.name}: images must be uint8 NHWC, got {self.images.dtype} "
                       f"{self.images.shape}")
    if self.labels.shape != (self.images.shape[0],):
      raise InvalidArgument(f"{self.name}: {self.labels.shape[0]} labels for "
                       f"{self.images.shape[0]} images")

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  def subset(self, indices: np.ndarray, name: str | None = None) -> Dataset:
    return Dataset(name or self.name, self.images[indices], self.labels[indices],
                   self.num_classes)


@dataclasses.dataclass(frozen=True)
class TrainTest:
  train: Dataset
  test: Dataset


# mean/std per channel of the training images scaled to [0, 1]. The CIFAR values are the
# reference implementation's (used there for CIFAR-10 and CIFAR-100 alike).
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
}


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Exact per-channel (mean, std) of uint8 NHWC images scaled to [0, 1].

  Uses a 256-bin histogram per channel, so memory stays at the size of one channel.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.dtype != np.uint8 or images.size == 0:
    raise InvalidArgument(f"channel_stats needs non-empty uint8 NHWC images, got {images.dtype} "
                     f"{images.shape}")
  values = np.arange(256, dtype=np.float64) / 255.0
  means, stds = [], []
  for c in range(images.shape[-1]):
    counts = np.bincount(images[..., c].reshape(-1), minlength=256).astype(np.float64)
    p = counts / counts.sum()
    mean = float(p @ values)
    means.append(mean)
    stds.append(float(np.sqrt(max(p @ (values - mean) ** 2, 0.0))))
  return tuple(means), tuple(stds)


def normalization_stats(train: Dataset) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Known constants for ``train``'s data set (by name) or else ``channel_stats`` of it."""
  base = train.name.split("/")[0].lower().replace("-", "_")
  known = NORMALIZATION.get(base)
  if known is not None and len(known[0]) == train.images.shape[-1]:
    return known
  return channel_stats(train.images)
