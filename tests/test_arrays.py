"""Host arrays for training: subsets and D_f + D_r flagged (mcu_jax.data.arrays)."""
from __future__ import annotations

import numpy as np
import pytest

from mcu_jax import data


@pytest.fixture(scope="module")
def digits():
  return data.load_digits()


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
