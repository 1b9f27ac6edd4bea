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

Modules (every name below is also ``mcu_jax.data.<name>``):

* ``datasets``: ``Dataset``, ``TrainTest`` and the normalisation statistics.
* ``idx``: the IDX file format (``parse_idx``, ``read_idx``, ``write_idx``, ``load_idx_dir``).
* ``sources``: the loaders and ``load_dataset``.
* ``splits``: ``ForgetSplit``, ``make_split`` and the split files (``save_split``,
  ``load_split``).
* ``arrays``: host arrays for training (``subset_arrays``, ``forget_retain_data``,
  ``padded_batches``).
"""
from __future__ import annotations

from mcu_jax.data.arrays import forget_retain_data, padded_batches, subset_arrays
from mcu_jax.data.datasets import (
                                   NORMALIZATION,
                                   Dataset,
                                   TrainTest,
                                   channel_stats,
                                   normalization_stats,
)
from mcu_jax.data.idx import IdxFormatError, load_idx_dir, parse_idx, read_idx, write_idx
from mcu_jax.data.sources import (
                                   FASHION_MNIST_DIR,
                                   KNOWN_SOURCES,
                                   load_dataset,
                                   load_digits,
                                   load_fashion_mnist,
                                   load_tfds,
)
from mcu_jax.data.splits import (
                                   ForgetSplit,
                                   class_forget_split,
                                   load_split,
                                   make_split,
                                   random_forget_split,
                                   save_split,
)

__all__ = [
    # data sets
    "Dataset", "TrainTest", "NORMALIZATION", "channel_stats", "normalization_stats",
    # sources
    "load_dataset", "KNOWN_SOURCES", "load_digits", "load_fashion_mnist", "FASHION_MNIST_DIR",
    "load_tfds",
    # IDX files
    "IdxFormatError", "parse_idx", "read_idx", "write_idx", "load_idx_dir",
    # splits
    "ForgetSplit", "random_forget_split", "class_forget_split", "make_split", "save_split",
    "load_split",
    # arrays
    "subset_arrays", "forget_retain_data", "padded_batches",
]
