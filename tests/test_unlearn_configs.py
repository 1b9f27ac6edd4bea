"""The base methods' configs (mcu_jax.unlearn.configs): invalid values raise at construction."""
import pytest

from mcu_jax import unlearn


@pytest.mark.parametrize("make, match", [
    (lambda: unlearn.FTConfig(lr=-0.1), "lr"),
    (lambda: unlearn.FTConfig(lr=float("nan")), "finite"),
    (lambda: unlearn.FTConfig(epochs=0), "epochs"),
    (lambda: unlearn.FTConfig(momentum=1.0), "momentum"),
    (lambda: unlearn.FTConfig(weight_decay=-1e-4), "weight_decay"),
    (lambda: unlearn.FTConfig(batch_size=0), "batch_size"),
    (lambda: unlearn.NegGradPlusConfig(beta=-0.1), "beta"),
    (lambda: unlearn.SalUnConfig(mask_ratio=0.0), "mask_ratio"),
    (lambda: unlearn.SalUnConfig(mask_ratio=1.5), "mask_ratio"),
    (lambda: unlearn.L1SparseConfig(alpha=-1.0), "alpha"),
    (lambda: unlearn.L1SparseConfig(epochs=3, no_l1_epochs=3), "no_l1_epochs"),
    (lambda: unlearn.NegTVConfig(coef=0.0), "coef"),
    (lambda: unlearn.NegTVConfig(batch_stats="bogus"), "batch_stats"),
    (lambda: unlearn.ScrubConfig(epochs=1), "msteps"),
    (lambda: unlearn.ScrubConfig(temperature=0.0), "temperature"),
    (lambda: unlearn.ScrubConfig(forget_batch_size=0), "forget_batch_size"),
])
def test_bad_config_values_raise(make, match):
  with pytest.raises(ValueError, match=match):
    make()
