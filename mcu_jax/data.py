"""Datasets as NumPy arrays, forget/retain splits and the curve's training set.

A ``Dataset`` is uint8 images NHWC with integer labels. Everything a run trains on is built
from index arrays into the training set, so that every method in a comparison sees the same
D_f and D_r.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Dataset:
  """images: (N, H, W, C) uint8; labels: (N,) int32 in [0, num_classes)."""
  name: str
  images: np.ndarray
  labels: np.ndarray
  num_classes: int

  def __post_init__(self):
    if self.images.ndim != 4 or self.images.dtype != np.uint8:
      raise ValueError(f"{self.name}: images must be uint8 NHWC, got {self.images.dtype} "
                       f"{self.images.shape}")
    if self.labels.shape != (self.images.shape[0],):
      raise ValueError(f"{self.name}: {self.labels.shape[0]} labels for "
                       f"{self.images.shape[0]} images")

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  def subset(self, indices: np.ndarray, name: str | None = None) -> "Dataset":
    return Dataset(name or self.name, self.images[indices], self.labels[indices],
                   self.num_classes)


@dataclasses.dataclass(frozen=True)
class TrainTest:
  train: Dataset
  test: Dataset


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> TrainTest:
  """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), split train/test.

  Pixel values 0..16 are scaled to 0..255; the split is stratified and fixed by ``seed``.
  """
  from sklearn.datasets import load_digits as sk_digits
  from sklearn.model_selection import train_test_split
  bunch = sk_digits()
  images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = bunch.target.astype(np.int32)
  train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=test_fraction,
                                         random_state=seed, stratify=labels)
  train_idx.sort(), test_idx.sort()
  full = Dataset("digits", images, labels, 10)
  return TrainTest(full.subset(train_idx, "digits/train"), full.subset(test_idx, "digits/test"))


@dataclasses.dataclass(frozen=True)
class ForgetSplit:
  """Disjoint index arrays into the training set that together cover it."""
  forget: np.ndarray
  retain: np.ndarray
  kind: str                      # "random" or "class"
  classes: tuple[int, ...] = ()  # the forgotten classes for kind == "class"


def random_forget_split(num_examples: int, ratio: float, seed: int) -> ForgetSplit:
  """Forget a uniformly drawn ``ratio`` share (rounded, at least one) of the training set."""
  if not 0.0 < ratio < 1.0:
    raise ValueError(f"forget ratio must lie in (0, 1), got {ratio!r}")
  count = max(1, int(round(ratio * num_examples)))
  if count >= num_examples:
    raise ValueError(f"forget ratio {ratio} leaves no retain example out of {num_examples}")
  order = np.random.default_rng(seed).permutation(num_examples)
  return ForgetSplit(np.sort(order[:count]), np.sort(order[count:]), "random")


def class_forget_split(labels: np.ndarray, classes) -> ForgetSplit:
  """Forget every training example whose label is in ``classes``."""
  classes = tuple(sorted({int(c) for c in np.atleast_1d(classes)}))
  if not classes:
    raise ValueError("class-wise forgetting needs at least one class id")
  is_forget = np.isin(labels, classes)
  missing = [c for c in classes if not np.any(labels == c)]
  if missing:
    raise ValueError(f"forget classes {missing} have no training example "
                     f"(labels present: {sorted(set(labels.tolist()))})")
  if is_forget.all():
    raise ValueError(f"forgetting classes {list(classes)} leaves no retain example")
  return ForgetSplit(np.flatnonzero(is_forget), np.flatnonzero(~is_forget), "class", classes)


def curve_training_set(train: Dataset, split: ForgetSplit, retain_ratio: float = 0.5,
                       seed: int = 0) -> dict[str, np.ndarray]:
  """All of D_f plus a random ``retain_ratio`` share of D_r, with an ``is_forget`` flag.

  Returns a dict of ``images`` (M, H, W, C) uint8, ``labels`` (M,) int32 and ``is_forget``
  (M,) bool; the curve's epoch function shuffles it on the device.
  """
  if not 0.0 < retain_ratio <= 1.0:
    raise ValueError(f"retain_ratio must lie in (0, 1], got {retain_ratio!r}")
  if len(split.forget) == 0:
    raise ValueError("the forget set is empty")
  count = max(1, int(round(retain_ratio * len(split.retain))))
  retain = np.sort(np.random.default_rng(seed).choice(split.retain, count, replace=False))
  indices = np.concatenate([split.forget, retain])
  return {
      "images": train.images[indices],
      "labels": train.labels[indices].astype(np.int32),
      "is_forget": np.concatenate([np.ones(len(split.forget), bool), np.zeros(count, bool)]),
  }
