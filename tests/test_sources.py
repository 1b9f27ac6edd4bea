"""Data set sources and load_dataset: digits, Fashion-MNIST, tfds (mcu_jax.data.sources)."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from mcu_jax import data


def test_fashion_mnist():
  if not os.path.isdir(data.FASHION_MNIST_DIR):
    pytest.skip(f"{data.FASHION_MNIST_DIR} is absent: apt-get install -y dataset-fashion-mnist")
  tt = data.load_dataset("fashion_mnist")
  assert tt.train.images.shape == (60000, 28, 28, 1) and tt.train.images.dtype == np.uint8
  assert tt.test.images.shape == (10000, 28, 28, 1) and tt.test.labels.shape == (10000,)
  assert tt.train.num_classes == 10 and tt.train.labels.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(tt.train.labels), np.full(10, 6000))
  mean, std = data.channel_stats(tt.train.images)
  np.testing.assert_allclose(mean, data.NORMALIZATION["fashion_mnist"][0], atol=1e-4)
  np.testing.assert_allclose(std, data.NORMALIZATION["fashion_mnist"][1], atol=1e-4)
  assert data.normalization_stats(tt.train) == data.NORMALIZATION["fashion_mnist"]


def test_fashion_mnist_missing_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
    data.load_dataset("fashion_mnist", directory=tmp_path / "absent")


def test_unknown_dataset_name():
  for name in ("imagenet", "idx:", "tfds:", ""):
    with pytest.raises(ValueError, match="known sources: digits, fashion_mnist"):
      data.load_dataset(name)


def test_digits_default():
  tt = data.load_dataset()
  assert tt.train.name == "digits/train" and tt.train.images.shape[1:] == (8, 8, 1)
  assert len(tt.train) + len(tt.test) == 1797


def test_tfds_not_installed(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(ImportError, match=r"pip install 'mcu_jax\[tfds\]'"):
    data.load_dataset("tfds:cifar10")


def test_tfds_mock(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  try:
    import tensorflow  # noqa: F401  (tfds.testing.mock_data needs TensorFlow)
  except ImportError:
    pytest.skip("tfds.testing.mock_data needs TensorFlow (pip install tensorflow-cpu)")
  with tfds.testing.mock_data(num_examples=6):
    tt = data.load_dataset("tfds:cifar10", data_dir=tmp_path)
    assert tt.train.images.shape == (6, 32, 32, 3) and tt.train.images.dtype == np.uint8
    assert tt.test.images.shape == (6, 32, 32, 3)
    assert tt.train.labels.dtype == np.int32 and tt.train.num_classes == 10
    assert tt.train.name == "cifar10/train"
    assert data.normalization_stats(tt.train) == data.NORMALIZATION["cifar10"]
    tt = data.load_dataset("tfds:mnist", data_dir=tmp_path)
    assert tt.train.images.shape == (6, 28, 28, 1)
  with pytest.raises(FileNotFoundError, match=f"not prepared under {tmp_path}.*tfds build"):
    data.load_dataset("tfds:mnist", data_dir=tmp_path)
  with pytest.raises(ValueError, match="no data set 'no_such_dataset_xyz'"):
    data.load_dataset("tfds:no_such_dataset_xyz", data_dir=tmp_path)
