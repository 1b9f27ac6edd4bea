"""Where data sets come from: the named sources and ``load_dataset``, the one entry point.

* ``digits`` (default): scikit-learn's bundled 8x8 digits; no download.
* ``idx:<dir>``: a directory of MNIST-format IDX files (``mcu_jax.data.idx``).
* ``fashion_mnist``: ``idx:/usr/share/datasets/fashion-mnist``, where Debian's package
  ``dataset-fashion-mnist`` installs the four .gz files.
* ``tfds:<name>``: a prepared tensorflow-datasets data set; never downloads.
"""
from __future__ import annotations

import os

import numpy as np

from mcu_jax.data.datasets import Dataset, TrainTest
from mcu_jax.data.idx import load_idx_dir
from mcu_jax.errors import InvalidArgument, MissingDependency, MissingFileError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
KNOWN_SOURCES = ("digits", "fashion_mnist", "idx:<dir>", "tfds:<name>")


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


def load_fashion_mnist(directory: str | os.PathLike = FASHION_MNIST_DIR) -> TrainTest:
  """Fashion-MNIST (60,000 train / 10,000 test, 28x28x1, 10 classes) from IDX files."""
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    raise MissingFileError(
        f"Fashion-MNIST directory {directory} does not exist: on Debian/Ubuntu run "
        "`apt-get install -y dataset-fashion-mnist`, or copy the four IDX .gz files there "
        "(or use load_dataset('idx:<dir>') with another directory)")
  return load_idx_dir(directory, "fashion_mnist")


def load_tfds(name: str, data_dir: str | os.PathLike | None = None, train_split: str = "train",
              test_split: str = "test", batch_size: int = 4096) -> TrainTest:
  """A prepared tensorflow-datasets data set as NumPy arrays; never downloads.

  ``data_dir`` defaults to TFDS's own default ($TFDS_DATA_DIR or ~/tensorflow_datasets).
  """
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise MissingDependency(f"loading 'tfds:{name}' needs tensorflow-datasets: "
                      f"pip install 'mcu_jax[tfds]' ({e})") from e
  data_dir = None if data_dir is None else os.fspath(data_dir)
  where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  try:
    splits, info = tfds.load(name, split=[train_split, test_split], data_dir=data_dir,
                             download=False, as_supervised=True, with_info=True,
                             batch_size=batch_size)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise InvalidArgument(f"tensorflow-datasets knows no data set {name!r}") from e
  except AssertionError as e:
    if "could not find data" not in str(e):
      raise
    raise MissingFileError(
        f"tensorflow-datasets data for {name!r} is not prepared under {where}. Prepare it on a "
        f"machine with internet (`tfds build {name} --data_dir DIR`, or "
        f"`tfds.builder({name!r}, data_dir=DIR).download_and_prepare()`), copy DIR to this "
        "machine and pass data_dir=DIR (this loader never downloads)") from e
  label = info.features[info.supervised_keys[1]]
  num_classes = int(label.num_classes)
  parts = []
  for part, ds in zip(("train", "test"), splits):
    image_list: list[np.ndarray] = []
    label_list: list[np.ndarray] = []
    for x, y in tfds.as_numpy(ds):
      image_list.append(np.asarray(x))
      label_list.append(np.asarray(y))
    if not image_list:
      raise InvalidArgument(f"tfds:{name} split {part!r} is empty")
    images, labels = np.concatenate(image_list), np.concatenate(label_list).astype(np.int32)
    if images.ndim == 3:
      images = images[..., None]
    parts.append(Dataset(f"{name}/{part}", images.astype(np.uint8, copy=False), labels,
                         num_classes))
  return TrainTest(*parts)


def load_dataset(name: str = "digits", **kw) -> TrainTest:
  """Loads a data set by name; see the module docstring for the sources.

  Keyword arguments go to the loader: ``load_digits`` (test_fraction, seed), ``load_idx_dir``
  (name), ``load_fashion_mnist`` (directory), ``load_tfds`` (data_dir, train_split,
  test_split).
  """
  if not isinstance(name, str):
    raise InvalidArgument(f"data set name must be a string, got {type(name).__name__}")
  key = name.strip()
  if key.lower() == "digits":
    return load_digits(**kw)
  if key.lower().replace("-", "_") == "fashion_mnist":
    return load_fashion_mnist(**kw)
  if key.startswith("idx:") and key[4:]:
    return load_idx_dir(os.path.expanduser(key[4:]), **kw)
  if key.startswith("tfds:") and key[5:]:
    return load_tfds(key[5:], **kw)
  raise InvalidArgument(f"unknown data set {name!r}; known sources: {', '.join(KNOWN_SOURCES)}")
