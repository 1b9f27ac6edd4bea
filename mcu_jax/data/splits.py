"""Forget/retain splits of a training set: construction, checks and persistence.

A ``ForgetSplit`` is two disjoint index arrays into the training set that together cover it;
every method in a comparison is given the same one, so all see the same D_f and D_r. Splits
are random (a share of the examples) or class-wise (every example of some classes), made by
``make_split`` and kept across runs with ``save_split``/``load_split``.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import zipfile

import numpy as np

from mcu_jax.data.datasets import Dataset
from mcu_jax.errors import DataFormatError, InvalidArgument, MissingFileError


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
    raise InvalidArgument(f"forget ratio must lie in (0, 1), got {ratio!r}")
  count = max(1, int(round(ratio * num_examples)))
  if count >= num_examples:
    raise InvalidArgument(f"forget ratio {ratio} leaves no retain example out of {num_examples}")
  order = np.random.default_rng(seed).permutation(num_examples)
  return ForgetSplit(np.sort(order[:count]), np.sort(order[count:]), "random")


def class_forget_split(labels: np.ndarray, classes) -> ForgetSplit:
  """Forget every training example whose label is in ``classes``."""
  classes = tuple(sorted({int(c) for c in np.atleast_1d(classes)}))
  if not classes:
    raise InvalidArgument("class-wise forgetting needs at least one class id")
  is_forget = np.isin(labels, classes)
  missing = [c for c in classes if not np.any(labels == c)]
  if missing:
    raise InvalidArgument(f"forget classes {missing} have no training example "
                     f"(labels present: {sorted(set(labels.tolist()))})")
  if is_forget.all():
    raise InvalidArgument(f"forgetting classes {list(classes)} leaves no retain example")
  return ForgetSplit(np.flatnonzero(is_forget), np.flatnonzero(~is_forget), "class", classes)


def make_split(train: Dataset, kind: str = "random", ratio: float = 0.1, classes=None,
               seed: int = 0) -> ForgetSplit:
  """A forget split of ``train``: ``random`` (a ``ratio`` share, drawn from ``seed``) or
  ``class`` (every example of ``classes``)."""
  if kind == "random":
    if classes is not None:
      raise InvalidArgument("random forgetting takes no classes")
    return random_forget_split(len(train), ratio, seed)
  if kind == "class":
    if classes is None:
      raise InvalidArgument("class-wise forgetting needs classes=")
    bad = [int(c) for c in np.atleast_1d(classes) if not 0 <= int(c) < train.num_classes]
    if bad:
      raise InvalidArgument(f"forget classes {bad} lie outside [0, {train.num_classes})")
    return class_forget_split(train.labels, classes)
  raise InvalidArgument(f"unknown split kind {kind!r}; known: 'random', 'class'")


_SPLIT_FORMAT = 1


def save_split(path: str | os.PathLike, split: ForgetSplit) -> None:
  """Writes ``split`` as an .npz file, atomically: a temporary file in the same directory,
  then ``os.replace``; on any failure nothing new is left behind."""
  path = os.fspath(path)
  _check_split(split, None, path)
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=".split-", suffix=".tmp", dir=directory)
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, format=np.int64(_SPLIT_FORMAT), forget=np.asarray(split.forget, np.int64),
               retain=np.asarray(split.retain, np.int64), kind=np.str_(split.kind),
               classes=np.asarray(split.classes, np.int64),
               num_examples=np.int64(len(split.forget) + len(split.retain)))
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    try:
      os.unlink(tmp)
    except FileNotFoundError:
      pass
    raise


def load_split(path: str | os.PathLike, num_examples: int | None = None,
               labels: np.ndarray | None = None) -> ForgetSplit:
  """Reads a split written by ``save_split`` and checks it.

  Always: forget and retain are disjoint, free of duplicates and cover range(n) for the n it
  was made for. With ``num_examples``: n equals it. With ``labels`` (class splits): the forget
  set is exactly the examples of the stored classes.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise MissingFileError(f"split file {path} does not exist")
  try:
    with np.load(path, allow_pickle=False) as z:
      fields = {k: z[k] for k in ("format", "forget", "retain", "kind", "classes",
                                  "num_examples")}
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    raise DataFormatError(f"split file {path} is corrupt or not a split file ({e})") from None
  if int(fields["format"]) != _SPLIT_FORMAT:
    raise DataFormatError(f"split file {path} has format {int(fields['format'])}, "
                     f"this code reads {_SPLIT_FORMAT}")
  split = ForgetSplit(fields["forget"].astype(np.int64), fields["retain"].astype(np.int64),
                      str(fields["kind"]), tuple(int(c) for c in fields["classes"]))
  n = int(fields["num_examples"])
  _check_split(split, n, path)
  if num_examples is not None and n != num_examples:
    raise InvalidArgument(f"split file {path} was made for {n} training examples, "
                     f"the training set has {num_examples}")
  if labels is not None and split.kind == "class":
    labels = np.asarray(labels)
    if len(labels) != n or not np.array_equal(
        np.flatnonzero(np.isin(labels, split.classes)), np.sort(split.forget)):
      raise InvalidArgument(f"split file {path}: its forget set is not the examples of classes "
                       f"{list(split.classes)} in these labels")
  return split


def _check_split(split: ForgetSplit, n: int | None, where: str) -> None:
  """Raises ValueError (naming ``where``) unless ``split`` is a partition of range(n)."""
  forget, retain = np.asarray(split.forget), np.asarray(split.retain)
  if split.kind not in ("random", "class"):
    raise InvalidArgument(f"{where}: split kind must be 'random' or 'class', got {split.kind!r}")
  for part, idx in (("forget", forget), ("retain", retain)):
    if idx.ndim != 1 or not (idx.size == 0 or np.issubdtype(idx.dtype, np.integer)):
      raise InvalidArgument(f"{where}: {part} indices must be a 1-D integer array, got "
                       f"{idx.dtype} {idx.shape}")
  total = len(forget) + len(retain)
  n = total if n is None else n
  both = np.concatenate([forget, retain]).astype(np.int64)
  if np.intersect1d(forget, retain).size:
    raise InvalidArgument(f"{where}: forget and retain sets overlap")
  if total != n or not np.array_equal(np.sort(both), np.arange(n)):
    raise InvalidArgument(f"{where}: forget and retain sets do not cover range({n}) exactly once")
