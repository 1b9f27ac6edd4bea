"""Forget/retain splits: random and class-wise, checks, save/load (mcu_jax.data.splits)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from mcu_jax import data
from mcu_jax.data import splits


@pytest.fixture(scope="module")
def digits():
  return data.load_digits()


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
  monkeypatch.setattr(splits.np, "savez", broken_savez)
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
