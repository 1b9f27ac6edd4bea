"""Data sources, IDX files, splits and their persistence, on-device data."""
from __future__ import annotations

import gzip
import os
import sys

import chex
import jax
import numpy as np
import pytest

from mcu_jax import data, parallel


@pytest.fixture(scope="module")
def digits():
  return data.load_digits()


# ---------------------------------------------------------------------------- splits

@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.5, 0.9])
def test_random_split_invariants(digits, ratio):
  n = len(digits.train)
  split = data.make_split(digits.train, "random", ratio=ratio, seed=3)
  assert split.kind == "random" and split.classes == ()
  assert len(split.forget) == max(1, round(ratio * n))
  assert np.intersect1d(split.forget, split.retain).size == 0
  np.testing.assert_array_equal(np.sort(np.concatenate([split.forget, split.retain])),
                                np.arange(n))
  again = data.make_split(digits.train, "random", ratio=ratio, seed=3)
  np.testing.assert_array_equal(split.forget, again.forget)
  np.testing.assert_array_equal(split.retain, again.retain)
  other = data.make_split(digits.train, "random", ratio=ratio, seed=4)
  assert not np.array_equal(split.forget, other.forget)


def test_class_split_invariants(digits):
  labels = digits.train.labels
  split = data.make_split(digits.train, "class", classes=[7, 2])
  assert split.kind == "class" and split.classes == (2, 7)
  assert set(labels[split.forget].tolist()) == {2, 7}
  assert not np.isin(labels[split.retain], [2, 7]).any()
  assert len(split.forget) == int(np.isin(labels, [2, 7]).sum())
  np.testing.assert_array_equal(np.sort(np.concatenate([split.forget, split.retain])),
                                np.arange(len(labels)))
  again = data.make_split(digits.train, "class", classes=(2, 7), seed=99)
  np.testing.assert_array_equal(split.forget, again.forget)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_ratio_outside_open_interval(digits, ratio):
  with pytest.raises(ValueError, match="ratio"):
    data.make_split(digits.train, "random", ratio=ratio)


def test_forget_class_absent_from_labels(digits):
  labels = digits.train.labels.copy()
  labels[labels == 3] = 4
  train = data.Dataset("x", digits.train.images, labels, 10)
  with pytest.raises(ValueError, match=r"\[3\].*no training example"):
    data.make_split(train, "class", classes=[3])
  with pytest.raises(ValueError, match="outside"):
    data.make_split(train, "class", classes=[10])
  with pytest.raises(ValueError, match="classes="):
    data.make_split(train, "class")
  with pytest.raises(ValueError, match="kind"):
    data.make_split(train, "sideways")


def test_split_save_load_round_trip(digits, tmp_path):
  for split in (data.make_split(digits.train, "random", ratio=0.1, seed=1),
                data.make_split(digits.train, "class", classes=[0, 9])):
    path = tmp_path / f"{split.kind}.npz"
    data.save_split(path, split)
    loaded = data.load_split(path, num_examples=len(digits.train), labels=digits.train.labels)
    assert loaded.kind == split.kind and loaded.classes == split.classes
    np.testing.assert_array_equal(loaded.forget, split.forget)
    np.testing.assert_array_equal(loaded.retain, split.retain)
    assert os.listdir(tmp_path).count(path.name) == 1
  assert sorted(os.listdir(tmp_path)) == ["class.npz", "random.npz"]  # no temporary files
  with pytest.raises(ValueError, match="made for"):
    data.load_split(tmp_path / "random.npz", num_examples=len(digits.train) + 1)
  wrong = digits.train.labels.copy()
  wrong[wrong == 0] = 1
  with pytest.raises(ValueError, match="classes"):
    data.load_split(tmp_path / "class.npz", labels=wrong)


def test_split_atomic_write(digits, tmp_path, monkeypatch):
  split = data.make_split(digits.train, "random", ratio=0.2, seed=0)
  target = tmp_path / "a_directory"
  target.mkdir()
  with pytest.raises(OSError):          # os.replace onto a directory fails
    data.save_split(target, split)
  assert os.listdir(tmp_path) == ["a_directory"] and os.listdir(target) == []
  with pytest.raises(FileNotFoundError):  # missing parent directory: nothing is created
    data.save_split(tmp_path / "missing" / "s.npz", split)

  path = tmp_path / "s.npz"
  data.save_split(path, split)
  before = path.read_bytes()

  def broken_savez(f, **arrays):
    f.write(b"half a file")
    raise RuntimeError("disk full")
  monkeypatch.setattr(data.np, "savez", broken_savez)
  with pytest.raises(RuntimeError, match="disk full"):
    data.save_split(path, data.make_split(digits.train, "random", ratio=0.3, seed=0))
  assert sorted(os.listdir(tmp_path)) == ["a_directory", "s.npz"]
  assert path.read_bytes() == before    # the old split is untouched


def test_save_split_rejects_invalid(tmp_path):
  bad = data.ForgetSplit(np.array([0, 1]), np.array([1, 2]), "random")
  with pytest.raises(ValueError, match="overlap"):
    data.save_split(tmp_path / "bad.npz", bad)
  assert os.listdir(tmp_path) == []


def test_split_file_missing_or_corrupt(tmp_path):
  missing = tmp_path / "nope.npz"
  with pytest.raises(FileNotFoundError, match=str(missing)):
    data.load_split(missing)
  corrupt = tmp_path / "corrupt.npz"
  corrupt.write_bytes(b"PK\x03\x04 not really a zip")
  with pytest.raises(ValueError, match=str(corrupt)):
    data.load_split(corrupt)
  other = tmp_path / "other.npz"
  np.savez(other, something=np.arange(3))
  with pytest.raises(ValueError, match=str(other)):
    data.load_split(other)
  gap = tmp_path / "gap.npz"
  np.savez(gap, format=np.int64(1), forget=np.array([0]), retain=np.array([2, 3]),
           kind=np.str_("random"), classes=np.zeros(0, np.int64), num_examples=np.int64(3))
  with pytest.raises(ValueError, match="cover"):
    data.load_split(gap)


# ---------------------------------------------------------------------------- IDX files

def _write_idx_dir(directory, gz: bool, n_train=6, n_test=4, shape=(5, 3)):
  rng = np.random.default_rng(0)
  directory.mkdir()
  arrays = {
      "train-images-idx3-ubyte": rng.integers(0, 256, (n_train,) + shape, dtype=np.uint8),
      "train-labels-idx1-ubyte": rng.integers(0, 3, n_train).astype(np.uint8),
      "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test,) + shape, dtype=np.uint8),
      "t10k-labels-idx1-ubyte": np.array([0, 1, 4, 2][:n_test], np.uint8),
  }
  for stem, values in arrays.items():
    data.write_idx(directory / (stem + (".gz" if gz else "")), values)
  return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
  arrays = _write_idx_dir(tmp_path / "tiny", gz)
  raw = (tmp_path / "tiny" / ("train-images-idx3-ubyte" + (".gz" if gz else ""))).read_bytes()
  if gz:
    assert raw[:2] == b"\x1f\x8b"
    raw = gzip.decompress(raw)
  assert raw[:4] == bytes([0, 0, 0x08, 3]) and raw[4:8] == (6).to_bytes(4, "big")
  tt = data.load_dataset(f"idx:{tmp_path / 'tiny'}")
  assert tt.train.images.shape == (6, 5, 3, 1) and tt.test.images.shape == (4, 5, 3, 1)
  assert tt.train.images.dtype == np.uint8 and tt.train.labels.dtype == np.int32
  np.testing.assert_array_equal(tt.train.images[..., 0], arrays["train-images-idx3-ubyte"])
  np.testing.assert_array_equal(tt.test.labels, arrays["t10k-labels-idx1-ubyte"])
  assert tt.train.num_classes == tt.test.num_classes == 5   # largest label (4) + 1
  assert tt.train.name == "tiny/train"


@pytest.mark.parametrize("values", [np.arange(-5, 5, dtype=np.int16).reshape(2, 5),
                                    np.linspace(0, 1, 6, dtype=np.float32),
                                    np.arange(24, dtype=np.int32).reshape(2, 3, 4)])
def test_idx_other_dtypes(tmp_path, values):
  data.write_idx(tmp_path / "x.idx", values)
  read = data.read_idx(tmp_path / "x.idx")
  assert read.dtype == values.dtype and read.dtype.isnative
  np.testing.assert_array_equal(read, values)


def test_idx_corrupt_header(tmp_path):
  good = bytes([0, 0, 0x08, 1]) + (3).to_bytes(4, "big") + bytes([1, 2, 3])
  np.testing.assert_array_equal(data.parse_idx(good), [1, 2, 3])
  cases = {
      "short": (b"\x00\x00", "too short"),
      "magic": (b"\x01\x00" + good[2:], "magic"),
      "code": (bytes([0, 0, 0x07, 1]) + good[4:], "type code"),
      "truncated": (good[:6], "truncated"),
      "size": (good + b"\x00", "declares shape"),
  }
  for stem, (raw, message) in cases.items():
    path = tmp_path / stem
    path.write_bytes(raw)
    with pytest.raises(data.IdxFormatError, match=message) as err:
      data.read_idx(path)
    assert str(path) in str(err.value)
  bad_gz = tmp_path / "bad.gz"
  bad_gz.write_bytes(gzip.compress(good)[:-6])
  with pytest.raises(data.IdxFormatError, match=f"{bad_gz}.*gzip"):
    data.read_idx(bad_gz)


def test_idx_directory_errors(tmp_path):
  missing = tmp_path / "no_such_dir"
  with pytest.raises(FileNotFoundError, match=str(missing)):
    data.load_dataset(f"idx:{missing}")
  _write_idx_dir(tmp_path / "partial", gz=True)
  os.remove(tmp_path / "partial" / "t10k-labels-idx1-ubyte.gz")
  with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
    data.load_dataset(f"idx:{tmp_path / 'partial'}")
  _write_idx_dir(tmp_path / "mismatch", gz=False)
  data.write_idx(tmp_path / "mismatch" / "train-labels-idx1-ubyte", np.zeros(5, np.uint8))
  with pytest.raises(data.IdxFormatError, match="6 images but .* 5 labels"):
    data.load_dataset(f"idx:{tmp_path / 'mismatch'}")


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


# ---------------------------------------------------------------------------- tfds

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


# ---------------------------------------------------------------------------- statistics

def test_channel_stats():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (7, 4, 5, 3), dtype=np.uint8)
  mean, std = data.channel_stats(images)
  x = images.astype(np.float64) / 255.0
  np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-12)
  np.testing.assert_allclose(std, x.std(axis=(0, 1, 2)), rtol=1e-12)
  with pytest.raises(ValueError):
    data.channel_stats(images.astype(np.float32))


# ---------------------------------------------------------------------------- arrays/device

def test_forget_retain_and_subset_arrays(digits):
  split = data.make_split(digits.train, "class", classes=[5])
  mixed = data.forget_retain_data(digits.train, split)
  n = len(digits.train)
  assert set(mixed) == {"images", "labels", "is_forget"}
  assert mixed["images"].shape == (n, 8, 8, 1) and mixed["labels"].dtype == np.int32
  np.testing.assert_array_equal(mixed["labels"][mixed["is_forget"]], 5)
  assert not np.any(mixed["labels"][~mixed["is_forget"]] == 5)
  assert mixed["is_forget"].sum() == len(split.forget)
  sub = data.subset_arrays(digits.train, split.retain[:10])
  assert set(sub) == {"images", "labels"} and sub["labels"].dtype == np.int32
  np.testing.assert_array_equal(sub["images"], digits.train.images[split.retain[:10]])


def test_to_device_and_fits(digits):
  arrays = data.subset_arrays(digits.train, np.arange(16))
  assert data.tree_nbytes(arrays) == 16 * 64 + 16 * 4
  assert data.fits_on_device(data.tree_nbytes(arrays))
  assert data.fits_on_device(arrays)
  on_device = data.to_device(arrays)
  assert all(isinstance(v, jax.Array) for v in on_device.values())
  chex.assert_trees_all_equal(on_device, arrays)
  mesh = parallel.make_mesh()
  for sharding in (parallel.replicated_sharding(mesh), mesh):
    replicated = data.to_device(arrays, sharding)
    for v in replicated.values():
      assert v.sharding.is_fully_replicated
      assert len(v.sharding.device_set) == mesh.devices.size
    chex.assert_trees_all_equal(replicated, arrays)
