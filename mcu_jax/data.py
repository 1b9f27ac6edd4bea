"""Datasets as NumPy arrays, forget/retain splits and the curve's training set.

A ``Dataset`` is uint8 images NHWC with integer labels. Everything a run trains on is built
from index arrays into the training set, so that every method in a comparison sees the same
D_f and D_r.

Sources (``load_dataset``):

* ``digits`` (default): scikit-learn's bundled 8x8 digits; no download.
* ``idx:<dir>``: a directory of MNIST-format IDX files, gzipped or not (MNIST, Fashion-MNIST,
  KMNIST, ...).
* ``fashion_mnist``: ``idx:/usr/share/datasets/fashion-mnist``, where Debian's package
  ``dataset-fashion-mnist`` installs the four .gz files.
* ``tfds:<name>`` (cifar10, cifar100, mnist, svhn_cropped, ...): tensorflow-datasets, an
  optional extra (``pip install 'mcu_jax[tfds]'``); reads prepared data only, never downloads.
"""
from __future__ import annotations

import dataclasses
import gzip
import os
import tempfile
import zipfile
from typing import Any, Mapping

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


# --------------------------------------------------------------------------------------------
# IDX files (MNIST format)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# IDX type codes (third byte of the magic number) and the big-endian dtypes they stand for.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


class IdxFormatError(ValueError):
  """A file that is not a well-formed IDX file (the message names the file)."""


def parse_idx(raw: bytes, source: str = "<bytes>") -> np.ndarray:
  """Decodes the bytes of one (uncompressed) IDX file into an array of native byte order.

  Layout: two zero bytes, a type code, the number of dimensions ``d``, ``d`` big-endian
  uint32 sizes, then the values, big-endian, row-major.
  """
  if len(raw) < 4:
    raise IdxFormatError(f"{source}: {len(raw)} bytes is too short for an IDX header")
  if raw[0] != 0 or raw[1] != 0:
    raise IdxFormatError(f"{source}: bad IDX magic number {raw[:4].hex()} "
                         "(the first two bytes must be zero)")
  code, ndim = raw[2], raw[3]
  if code not in _IDX_DTYPES:
    raise IdxFormatError(f"{source}: unknown IDX type code 0x{code:02x} "
                         f"(known: {', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)})")
  if ndim == 0:
    raise IdxFormatError(f"{source}: IDX header declares zero dimensions")
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise IdxFormatError(f"{source}: truncated IDX header ({len(raw)} bytes, {ndim} "
                         f"dimensions need {header})")
  dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
  dtype = np.dtype(_IDX_DTYPES[code])
  expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
  if len(raw) != expected:
    raise IdxFormatError(f"{source}: IDX header declares shape {dims} of {dtype.str} "
                         f"({expected} bytes with the header) but the file has {len(raw)} bytes")
  values = np.frombuffer(raw, dtype, offset=header).reshape(dims)
  return values.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads one IDX file, gzipped (detected by its magic bytes) or not."""
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except FileNotFoundError:
    raise FileNotFoundError(f"IDX file {path} does not exist") from None
  if raw[:2] == b"\x1f\x8b":
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError, zipfile.BadZipFile) as e:
      raise IdxFormatError(f"{path}: corrupt gzip data ({e})") from None
  return parse_idx(raw, path)


def _find_idx_file(directory: str, stem: str) -> str:
  """``stem`` or its variants (``.gz``, ``train-images.idx3-ubyte``) inside ``directory``."""
  dotted = stem.replace("-idx", ".idx")
  candidates = [stem, stem + ".gz", dotted, dotted + ".gz"]
  for candidate in candidates:
    path = os.path.join(directory, candidate)
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(f"IDX directory {directory} has no {stem}[.gz] "
                          f"(looked for {', '.join(candidates)})")


def load_idx_dir(directory: str | os.PathLike, name: str | None = None) -> TrainTest:
  """A train/test pair from a directory of MNIST-format IDX files.

  Expects ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
  and ``t10k-labels-idx1-ubyte``, each optionally ``.gz``. Images are (N, H, W) or
  (N, H, W, C) uint8; ``num_classes`` is one more than the largest label.
  """
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"IDX dataset directory {directory} does not exist")
  name = name or os.path.basename(os.path.normpath(directory)).replace("-", "_")
  arrays = {}
  for (part, kind), stem in _IDX_FILES.items():
    path = _find_idx_file(directory, stem)
    values = read_idx(path)
    if kind == "images":
      if values.dtype != np.uint8 or values.ndim not in (3, 4):
        raise IdxFormatError(f"{path}: images must be uint8 of rank 3 or 4, got "
                             f"{values.dtype} {values.shape}")
      values = values[..., None] if values.ndim == 3 else values
    else:
      if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
        raise IdxFormatError(f"{path}: labels must be a 1-D integer array, got "
                             f"{values.dtype} {values.shape}")
      if values.size and values.min() < 0:
        raise IdxFormatError(f"{path}: negative label {values.min()}")
      values = values.astype(np.int32)
    arrays[part, kind] = (path, values)
  for part in ("train", "test"):
    (ipath, images), (lpath, labels) = arrays[part, "images"], arrays[part, "labels"]
    if images.shape[0] != labels.shape[0]:
      raise IdxFormatError(f"{ipath} has {images.shape[0]} images but {lpath} has "
                           f"{labels.shape[0]} labels")
  if arrays["train", "images"][1].shape[1:] != arrays["test", "images"][1].shape[1:]:
    raise IdxFormatError(f"{directory}: train images {arrays['train', 'images'][1].shape[1:]} "
                         f"and test images {arrays['test', 'images'][1].shape[1:]} differ")
  if len(arrays["train", "labels"][1]) == 0:
    raise IdxFormatError(f"{directory}: the training set is empty")
  num_classes = 1 + int(max(arrays[p, "labels"][1].max(initial=0) for p in ("train", "test")))
  return TrainTest(*(Dataset(f"{name}/{part}", arrays[part, "images"][1],
                             arrays[part, "labels"][1], num_classes)
                     for part in ("train", "test")))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
  """Writes ``array`` as an IDX file (gzipped when ``path`` ends in ``.gz``); for tests/tools."""
  array = np.asarray(array)
  codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
  dtype = array.dtype.newbyteorder("=")
  if dtype not in codes:
    raise ValueError(f"IDX cannot store dtype {array.dtype}")
  raw = (bytes([0, 0, codes[dtype], array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
         + array.astype(_IDX_DTYPES[codes[dtype]]).tobytes())
  path = os.fspath(path)
  with open(path, "wb") as f:
    f.write(gzip.compress(raw) if path.endswith(".gz") else raw)


def load_fashion_mnist(directory: str | os.PathLike = FASHION_MNIST_DIR) -> TrainTest:
  """Fashion-MNIST (60,000 train / 10,000 test, 28x28x1, 10 classes) from IDX files."""
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"Fashion-MNIST directory {directory} does not exist: on Debian/Ubuntu run "
        "`apt-get install -y dataset-fashion-mnist`, or copy the four IDX .gz files there "
        "(or use load_dataset('idx:<dir>') with another directory)")
  return load_idx_dir(directory, "fashion_mnist")


# --------------------------------------------------------------------------------------------
# tensorflow-datasets (optional)

def load_tfds(name: str, data_dir: str | os.PathLike | None = None, train_split: str = "train",
              test_split: str = "test", batch_size: int = 4096) -> TrainTest:
  """A prepared tensorflow-datasets data set as NumPy arrays; never downloads.

  ``data_dir`` defaults to TFDS's own default ($TFDS_DATA_DIR or ~/tensorflow_datasets).
  """
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(f"loading 'tfds:{name}' needs tensorflow-datasets: "
                      f"pip install 'mcu_jax[tfds]' ({e})") from e
  data_dir = None if data_dir is None else os.fspath(data_dir)
  where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  try:
    splits, info = tfds.load(name, split=[train_split, test_split], data_dir=data_dir,
                             download=False, as_supervised=True, with_info=True,
                             batch_size=batch_size)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"tensorflow-datasets knows no data set {name!r}") from e
  except AssertionError as e:
    if "could not find data" not in str(e):
      raise
    raise FileNotFoundError(
        f"tensorflow-datasets data for {name!r} is not prepared under {where}. Prepare it on a "
        f"machine with internet (`tfds build {name} --data_dir DIR`, or "
        f"`tfds.builder({name!r}, data_dir=DIR).download_and_prepare()`), copy DIR to this "
        "machine and pass data_dir=DIR (this loader never downloads)") from e
  label = info.features[info.supervised_keys[1]]
  num_classes = int(label.num_classes)
  parts = []
  for part, ds in zip(("train", "test"), splits):
    images, labels = [], []
    for x, y in tfds.as_numpy(ds):
      images.append(np.asarray(x)), labels.append(np.asarray(y))
    if not images:
      raise ValueError(f"tfds:{name} split {part!r} is empty")
    images, labels = np.concatenate(images), np.concatenate(labels).astype(np.int32)
    if images.ndim == 3:
      images = images[..., None]
    parts.append(Dataset(f"{name}/{part}", images.astype(np.uint8, copy=False), labels,
                         num_classes))
  return TrainTest(*parts)


# --------------------------------------------------------------------------------------------
# One entry point

KNOWN_SOURCES = ("digits", "fashion_mnist", "idx:<dir>", "tfds:<name>")


def load_dataset(name: str = "digits", **kw) -> TrainTest:
  """Loads a data set by name; see the module docstring for the sources.

  Keyword arguments go to the loader: ``load_digits`` (test_fraction, seed), ``load_idx_dir``
  (name), ``load_fashion_mnist`` (directory), ``load_tfds`` (data_dir, train_split,
  test_split).
  """
  if not isinstance(name, str):
    raise TypeError(f"data set name must be a string, got {type(name).__name__}")
  key = name.strip()
  if key.lower() == "digits":
    return load_digits(**kw)
  if key.lower().replace("-", "_") == "fashion_mnist":
    return load_fashion_mnist(**kw)
  if key.startswith("idx:") and key[4:]:
    return load_idx_dir(os.path.expanduser(key[4:]), **kw)
  if key.startswith("tfds:") and key[5:]:
    return load_tfds(key[5:], **kw)
  raise ValueError(f"unknown data set {name!r}; known sources: {', '.join(KNOWN_SOURCES)}")


# --------------------------------------------------------------------------------------------
# Normalisation constants

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
    raise ValueError(f"channel_stats needs non-empty uint8 NHWC images, got {images.dtype} "
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


# --------------------------------------------------------------------------------------------
# Splits: construction and persistence

def make_split(train: Dataset, kind: str = "random", ratio: float = 0.1, classes=None,
               seed: int = 0) -> ForgetSplit:
  """A forget split of ``train``: ``random`` (a ``ratio`` share, drawn from ``seed``) or
  ``class`` (every example of ``classes``)."""
  if kind == "random":
    if classes is not None:
      raise ValueError("random forgetting takes no classes")
    return random_forget_split(len(train), ratio, seed)
  if kind == "class":
    if classes is None:
      raise ValueError("class-wise forgetting needs classes=")
    bad = [int(c) for c in np.atleast_1d(classes) if not 0 <= int(c) < train.num_classes]
    if bad:
      raise ValueError(f"forget classes {bad} lie outside [0, {train.num_classes})")
    return class_forget_split(train.labels, classes)
  raise ValueError(f"unknown split kind {kind!r}; known: 'random', 'class'")


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
    raise FileNotFoundError(f"split file {path} does not exist")
  try:
    with np.load(path, allow_pickle=False) as z:
      fields = {k: z[k] for k in ("format", "forget", "retain", "kind", "classes",
                                  "num_examples")}
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f"split file {path} is corrupt or not a split file ({e})") from None
  if int(fields["format"]) != _SPLIT_FORMAT:
    raise ValueError(f"split file {path} has format {int(fields['format'])}, "
                     f"this code reads {_SPLIT_FORMAT}")
  split = ForgetSplit(fields["forget"].astype(np.int64), fields["retain"].astype(np.int64),
                      str(fields["kind"]), tuple(int(c) for c in fields["classes"]))
  n = int(fields["num_examples"])
  _check_split(split, n, path)
  if num_examples is not None and n != num_examples:
    raise ValueError(f"split file {path} was made for {n} training examples, "
                     f"the training set has {num_examples}")
  if labels is not None and split.kind == "class":
    labels = np.asarray(labels)
    if len(labels) != n or not np.array_equal(
        np.flatnonzero(np.isin(labels, split.classes)), np.sort(split.forget)):
      raise ValueError(f"split file {path}: its forget set is not the examples of classes "
                       f"{list(split.classes)} in these labels")
  return split


def _check_split(split: ForgetSplit, n: int | None, where: str) -> None:
  forget, retain = np.asarray(split.forget), np.asarray(split.retain)
  if split.kind not in ("random", "class"):
    raise ValueError(f"{where}: split kind must be 'random' or 'class', got {split.kind!r}")
  for part, idx in (("forget", forget), ("retain", retain)):
    if idx.ndim != 1 or not (idx.size == 0 or np.issubdtype(idx.dtype, np.integer)):
      raise ValueError(f"{where}: {part} indices must be a 1-D integer array, got "
                       f"{idx.dtype} {idx.shape}")
  total = len(forget) + len(retain)
  n = total if n is None else n
  both = np.concatenate([forget, retain]).astype(np.int64)
  if np.intersect1d(forget, retain).size:
    raise ValueError(f"{where}: forget and retain sets overlap")
  if total != n or not np.array_equal(np.sort(both), np.arange(n)):
    raise ValueError(f"{where}: forget and retain sets do not cover range({n}) exactly once")


# --------------------------------------------------------------------------------------------
# Arrays for training and their place on the device

def subset_arrays(train: Dataset, indices) -> dict[str, np.ndarray]:
  """``images`` and ``labels`` (int32) of the examples at ``indices``."""
  indices = np.asarray(indices)
  return {"images": train.images[indices], "labels": train.labels[indices].astype(np.int32)}


def forget_retain_data(train: Dataset, split: ForgetSplit) -> dict[str, np.ndarray]:
  """All of D_f then all of D_r with an ``is_forget`` flag (for NegGrad+-style methods)."""
  if len(split.forget) == 0 or len(split.retain) == 0:
    raise ValueError("forget_retain_data needs a non-empty forget and retain set")
  indices = np.concatenate([split.forget, split.retain])
  data = subset_arrays(train, indices)
  data["is_forget"] = np.concatenate([np.ones(len(split.forget), bool),
                                      np.zeros(len(split.retain), bool)])
  return data


def tree_nbytes(arrays) -> int:
  """Total bytes of the array leaves of ``arrays``."""
  import jax
  return int(sum(x.nbytes if hasattr(x, "nbytes") else np.asarray(x).nbytes
                 for x in jax.tree.leaves(arrays)))


def fits_on_device(nbytes, fraction: float = 0.5, device=None) -> bool:
  """Whether ``nbytes`` (an int or a tree of arrays) fits in ``fraction`` of the free memory of
  ``device`` (default: the first local device). Best effort: True on CPUs and wherever the
  backend reports no memory statistics."""
  import jax
  if not isinstance(nbytes, (int, np.integer)):
    nbytes = tree_nbytes(nbytes)
  device = device or jax.local_devices()[0]
  if device.platform == "cpu":
    return True
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except  (backends without the statistics)
    return True
  if not stats or "bytes_limit" not in stats:
    return True
  free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
  return int(nbytes) <= fraction * free


def to_device(arrays: Mapping[str, Any], sharding=None) -> dict:
  """Puts a dict of arrays on the device: the default device, or every device of ``sharding``
  (a ``jax.sharding.Sharding``, typically replicated over the mesh, or a ``Mesh``, which means
  replicated over it). On several hosts every process passes the same full arrays."""
  import jax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  arrays = dict(arrays)
  if sharding is None:
    return jax.device_put(arrays)
  if isinstance(sharding, Mesh):
    sharding = NamedSharding(sharding, PartitionSpec())
  if jax.process_count() == 1:
    return jax.device_put(arrays, sharding)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in arrays.items()}


def padded_batches(arrays: Mapping[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  """Host arrays reshaped to (steps, batch_size, ...) in order, zero-padded, plus ``valid``
  (steps, batch_size) bool marking the real examples."""
  n = int(arrays["labels"].shape[0])
  if n == 0:
    raise ValueError("cannot batch an empty set")
  steps = -(-n // batch_size)
  pad = steps * batch_size - n
  out = {}
  for name, value in arrays.items():
    value = np.asarray(value)
    value = np.concatenate([value, np.zeros((pad,) + value.shape[1:], value.dtype)])
    out[name] = value.reshape((steps, batch_size) + value.shape[1:])
  out["valid"] = (np.arange(steps * batch_size) < n).reshape(steps, batch_size)
  return out
