"""l1-sparse's penalty (mcu_jax.unlearn.l1): the per-epoch decay of alpha and the gradient it
adds."""
import jax.numpy as jnp
import numpy as np

from mcu_jax import unlearn
from mcu_jax.unlearn import methods as methods_lib


def test_l1_alpha_decays_linearly_per_epoch():
  cfg = unlearn.L1SparseConfig(epochs=4, alpha=0.3, no_l1_epochs=1)
  alpha = methods_lib.l1_alpha_schedule(cfg, steps_per_epoch=10)
  got = [float(alpha(jnp.asarray(c))) for c in (0, 9, 10, 19, 20, 29, 30, 39)]
  np.testing.assert_allclose(got, [0.3, 0.3, 0.2, 0.2, 0.1, 0.1, 0.0, 0.0], atol=1e-7)
  # The penalty adds alpha * sign(theta) to the gradient.
  pen = unlearn.l1_penalty(lambda count: 0.5)
  params = {"w": jnp.array([-2.0, 0.0, 3.0])}
  upd, _ = pen.update({"w": jnp.zeros(3)}, pen.init(params), params)
  np.testing.assert_array_equal(upd["w"], [-0.5, 0.0, 0.5])
