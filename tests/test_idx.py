"""IDX files: parse, read, write and load a directory of them (mcu_jax.data.idx)."""
from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

from mcu_jax import data


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
