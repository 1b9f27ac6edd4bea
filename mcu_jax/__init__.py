"""mcu_jax: machine unlearning by mode connectivity (MCU) in JAX.

Given an original model theta_o, a pre-unlearned model theta_p from any base unlearning method,
a forget set and a retain set, MCU trains the middle point of a Bezier curve between them on
L(D_r) - beta L(D_f) at random t, then picks the point of the curve whose accuracies align
best with the targets. With your own model and theta_p::

    import mcu_jax
    apply = mcu_jax.models.from_function(my_fn)     # or from_linen / from_nnx / from_haiku /
                                                    # from_equinox
    result = mcu_jax.unlearn_curve(apply, theta_o, theta_p, forget=(xf, yf),
                                   retain=(xr, yr), test=(xt, yt))
    print(result.t, result.metrics)                 # the chosen model: result.params
    params, model_state = result.at(0.9)            # any other point, BatchNorm recalibrated

The steps ``unlearn_curve`` composes are public too: ``compute_mask``, ``train_curve`` and
``sweep_and_select``; so are the curve (``Curve``, ``point``), the masks and the beta policies.
Forgetting quality over model populations: ``mcu_jax.population`` (N models differing by
seed as one stacked pytree) and ``mcu_jax.forget_quality`` (the NeurIPS 2023 challenge's F,
U-LiRA). Shallow vs deep forgetting: ``mcu_jax.relearn`` (the relearn attack: fine-tune K steps,
read the forget accuracy's rebound; ``relearn.relearn``, ``relearn.relearn_population``).
Submodules hold the rest (``mcu_jax.runtime.sweep.sweep``, ``mcu_jax.unlearn``,
``mcu_jax.data``, ...).
"""
import importlib

__version__ = "0.2.0"

# Where each public name lives. They are imported on first use (PEP 562), so that importing
# ``mcu_jax.pipeline.cli`` stays light: the command installs its signal handlers before JAX is
# imported.
_SUBMODULES = ("core", "data", "forget_quality", "models", "pipeline", "population",
               "preprocess", "relearn", "runtime", "unlearn")
_FROM = {
    "api": ("MCUResult", "unlearn_curve"),
    "runtime.batchnorm": ("recalibrate_batch_stats",),
    "core.beta": ("AdaptiveBeta", "FixedBeta", "Targets", "alignment_targets"),
    "core.choice": ("Choice", "select_t"),
    "core.curves": ("Curve", "point", "points"),
    "runtime.masks": ("MaskOptions", "MaskResult", "compute_mask", "mcu_mask", "salun_mask"),
    "runtime.mcu": ("CurveOptions", "CurveTrainer", "TrainedCurve", "train_curve"),
    "runtime.optim": ("OptimConfig",),
    "relearn": ("RelearnConfig", "RelearnResult"),
    "runtime.sweep": ("SweepOptions", "SweepResult", "sweep_and_select"),
    "errors": ("InvalidArgument", "MCUError", "NonFiniteError"),
}
_HOME = {name: module for module, names in _FROM.items() for name in names}


def __getattr__(name: str):
  """A public name, or any submodule (``mcu_jax.data``), imported when first asked for."""
  if name in _HOME:
    value = getattr(importlib.import_module(f"mcu_jax.{_HOME[name]}"), name)
  else:
    try:
      value = importlib.import_module(f"mcu_jax.{name}")
    except ModuleNotFoundError as e:
      if e.name != f"mcu_jax.{name}":
        raise
      raise AttributeError(f"module 'mcu_jax' has no attribute {name!r}") from None
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_HOME) | set(_SUBMODULES))


__all__ = [
    "__version__",
    # the one call
    "unlearn_curve", "MCUResult",
    # its settings
    "MaskOptions", "CurveOptions", "SweepOptions",
    # its three steps
    "compute_mask", "MaskResult", "train_curve", "TrainedCurve", "sweep_and_select",
    # the pieces
    "Curve", "point", "points", "mcu_mask", "salun_mask", "AdaptiveBeta", "FixedBeta",
    "Targets", "alignment_targets", "CurveTrainer", "OptimConfig", "SweepResult", "select_t",
    "Choice", "recalibrate_batch_stats", "models", "preprocess",
    # forgetting quality over populations, and the relearn attack
    "population", "forget_quality", "relearn", "RelearnConfig", "RelearnResult",
    # errors
    "MCUError", "InvalidArgument", "NonFiniteError",
]
