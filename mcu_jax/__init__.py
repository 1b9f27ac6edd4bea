"""mcu_jax: machine unlearning by mode connectivity (MCU) in JAX.

Given an original model theta_o, a pre-unlearned model theta_p from any base unlearning method,
a forget set and a retain set, MCU trains the middle point of a Bezier curve between them on
L(D_r) - beta L(D_f) at random t, then picks the point of the curve whose accuracies align
best with the targets. With your own model and theta_p::

    import mcu_jax
    apply = mcu_jax.models.from_function(my_fn)     # or from_linen(module) / from_nnx(model)
    result = mcu_jax.unlearn_curve(apply, theta_o, theta_p, forget=(xf, yf),
                                   retain=(xr, yr), test=(xt, yt))
    print(result.t, result.metrics)                 # the chosen model: result.params
    params, model_state = result.at(0.9)            # any other point, BatchNorm recalibrated

The steps ``unlearn_curve`` composes are public too: ``compute_mask``, ``train_curve`` and
``sweep_and_select``; so are the curve (``Curve``, ``point``), the masks and the beta policies.
Forgetting quality over model populations: ``mcu_jax.population`` (N models differing by
seed as one stacked pytree) and ``mcu_jax.forget_quality`` (the NeurIPS 2023 challenge's F,
U-LiRA). Submodules hold the rest (``mcu_jax.sweep.sweep``, ``mcu_jax.unlearn``,
``mcu_jax.data``, ...).
"""
from mcu_jax import forget_quality, models, population
from mcu_jax.api import MCUResult, unlearn_curve
from mcu_jax.batchnorm import recalibrate_batch_stats
from mcu_jax.beta import AdaptiveBeta, FixedBeta, Targets, alignment_targets
from mcu_jax.choice import Choice, select_t
from mcu_jax.curves import Curve, point, points
from mcu_jax.masks import MaskResult, compute_mask, mcu_mask, salun_mask
from mcu_jax.mcu import CurveTrainer, TrainedCurve, train_curve
from mcu_jax.optim import OptimConfig
from mcu_jax.sweep import SweepOptions, SweepResult, sweep_and_select
from mcu_jax.validation import InvalidArgument, MCUError

__version__ = "0.2.0"

__all__ = [
    "__version__",
    # the one call
    "unlearn_curve", "MCUResult",
    # its three steps
    "compute_mask", "MaskResult", "train_curve", "TrainedCurve", "sweep_and_select",
    # the pieces
    "Curve", "point", "points", "mcu_mask", "salun_mask", "AdaptiveBeta", "FixedBeta",
    "Targets", "alignment_targets", "CurveTrainer", "OptimConfig", "SweepOptions",
    "SweepResult", "select_t", "Choice", "recalibrate_batch_stats", "models",
    # forgetting quality over populations
    "population", "forget_quality",
    # errors
    "MCUError", "InvalidArgument",
]
