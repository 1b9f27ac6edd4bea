"""Dataset types and normalisation statistics (mcu_jax.data.datasets)."""
from __future__ import annotations

import numpy as np
import pytest

from mcu_jax import data


def test_channel_stats():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (7, 4, 5, 3), dtype=np.uint8)
  mean, std = data.channel_stats(images)
  x = images.astype(np.float64) / 255.0
  np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-12)
  np.testing.assert_allclose(std, x.std(axis=(0, 1, 2)), rtol=1e-12)
  with pytest.raises(ValueError):
    data.channel_stats(images.astype(np.float32))
