"""Hyperparameters of the base unlearning methods: one frozen, validated dataclass per method.

Every config embeds the optimizer fields of ``mcu_jax.runtime.optim.OptimConfig`` (SGD with
momentum, coupled weight decay as ``torch.optim.SGD``) and adds ``epochs`` and ``batch_size``; the
methods' defaults are the reference's (weight decay 1e-4, cosine annealing stepped once per
epoch, as its ``CosineAnnealingLR``). The subclasses add each method's own knobs. Defaults and
their sources are tabulated in ``mcu_jax.unlearn``'s docstring. Invalid values raise
``InvalidArgument`` (a ValueError and a TypeError) at construction, so a bad config fails
before any compilation.
"""
from __future__ import annotations

import dataclasses

from mcu_jax.errors import InvalidArgument
from mcu_jax.runtime.train import FitConfig
from mcu_jax.validation import check_choice, check_number


def _check_int(owner: str, name: str, value, low: int) -> None:
  check_number(f"{owner}.{name}", value, low=low, integer=True)


def _check_real(owner: str, name: str, value, **bounds) -> None:
  check_number(f"{owner}.{name}", value, **bounds)


@dataclasses.dataclass(frozen=True)
class MethodConfig(FitConfig):
  """Optimizer, schedule and data settings shared by every method (``train.FitConfig``).

  Attributes:
    epochs: passes over the method's training data (SCRUB: outer epochs, see ``ScrubConfig``).
    batch_size: examples per step.
    lr, momentum, weight_decay, cosine, schedule_unit: the optimizer (``OptimConfig``); the
      cosine anneals ``lr`` to 0 over ``epochs``, constant within an epoch by default (the
      reference's ``CosineAnnealingLR(T_max=epochs)`` stepped per epoch).
  """
  weight_decay: float = 1e-4
  cosine: bool = True


@dataclasses.dataclass(frozen=True)
class RetrainConfig(MethodConfig):
  """Train from a fresh initialisation on D_r: as long as the original model trained."""
  epochs: int = 200


@dataclasses.dataclass(frozen=True)
class FTConfig(MethodConfig):
  """Fine-tune the original model on D_r with cross-entropy."""


@dataclasses.dataclass(frozen=True)
class GAConfig(MethodConfig):
  """Gradient ascent on D_f (loss = -CE)."""
  epochs: int = 5
  lr: float = 1e-4


@dataclasses.dataclass(frozen=True)
class NegGradPlusConfig(MethodConfig):
  """NegGrad+: per batch of D_f and D_r mixed, loss = CE(D_r members) - beta * CE(D_f members).

  Attributes:
    beta: weight of the forget loss, >= 0.
  """
  beta: float = 0.15

  def __post_init__(self):
    super().__post_init__()
    _check_real(type(self).__name__, "beta", self.beta, low=0.0)


@dataclasses.dataclass(frozen=True)
class RLConfig(MethodConfig):
  """Random label: D_f with a uniformly drawn wrong label (redrawn every step) plus D_r, CE."""


@dataclasses.dataclass(frozen=True)
class SalUnConfig(RLConfig):
  """SalUn: random label, with updates restricted to the ``mask_ratio`` most salient weights.

  Attributes:
    mask_ratio: share of all weights that may move, in (0, 1] (1 = plain RL); ranked by
      |sum over D_f batches of grad CE| on the original model (``masks.salun_mask``).
  """
  mask_ratio: float = 0.5

  def __post_init__(self):
    super().__post_init__()
    _check_real(type(self).__name__, "mask_ratio", self.mask_ratio, low=0.0, high=1.0,
                low_open=True)


@dataclasses.dataclass(frozen=True)
class L1SparseConfig(MethodConfig):
  """l1-sparse: fine-tune on D_r with ``alpha_e * ||theta||_1`` added to the loss.

  Attributes:
    alpha: l1 weight of the first epoch, >= 0.
    no_l1_epochs: trailing epochs without the penalty, in [0, epochs). In epoch e (0-based)
      ``alpha_e = alpha * (1 - e / (epochs - no_l1_epochs))`` while e < epochs - no_l1_epochs,
      else 0 (Unlearn-Sparse ``FT_iter``).
  """
  weight_decay: float = 5e-4
  alpha: float = 5e-4
  no_l1_epochs: int = 0

  def __post_init__(self):
    super().__post_init__()
    owner = type(self).__name__
    _check_real(owner, "alpha", self.alpha, low=0.0)
    _check_int(owner, "no_l1_epochs", self.no_l1_epochs, 0)
    if self.no_l1_epochs >= self.epochs:
      raise InvalidArgument(f"{owner}.no_l1_epochs: must be < epochs ({self.epochs}), got "
                            f"{self.no_l1_epochs}")


NEGTV_BATCH_STATS = ("formula", "original", "recalibrate")


@dataclasses.dataclass(frozen=True)
class NegTVConfig(MethodConfig):
  """Negative task vector: theta_o - coef * (theta_ft - theta_o), theta_ft = FT of theta_o on D_f.

  The optimiser fields configure the fine-tuning on D_f.

  Attributes:
    coef: scaling of the negated task vector, > 0.
    batch_stats: BatchNorm running statistics of the result: ``"formula"`` (the same formula
      on every floating leaf of the model state, as the reference applies the task vector to
      the whole state_dict, buffers included; a running variance can come out negative when
      fine-tuning more than doubles it), ``"original"`` (theta_o's statistics) or
      ``"recalibrate"`` (recomputed for the result over one pass of D_r,
      ``batchnorm.recalibrate_batch_stats``; counted in the RTE).
  """
  coef: float = 0.9
  batch_stats: str = "formula"

  def __post_init__(self):
    super().__post_init__()
    owner = type(self).__name__
    _check_real(owner, "coef", self.coef, low=0.0, low_open=True)
    check_choice(f"{owner}.batch_stats", self.batch_stats, NEGTV_BATCH_STATS)


@dataclasses.dataclass(frozen=True)
class ScrubConfig(MethodConfig):
  """SCRUB (Kurmanji et al. 2023): a student, initialised as the original model, alternates
  max-steps (maximise KL(teacher || student) on D_f) and min-steps (gamma * CE + alpha * KL on
  D_r); the teacher is the original model in inference mode.

  Outer epoch e (1-based) runs one max-epoch over D_f when e <= msteps, then one min-epoch over
  D_r. One optimiser (and momentum) serves both phases, as in the paper's code.

  Attributes:
    msteps: outer epochs with a max-phase, in [0, epochs].
    gamma: weight of the CE term of the min-step, >= 0.
    alpha: weight of the KL term of the min-step, >= 0.
    temperature: distillation temperature T > 0; KL_T = T^2 * KL(softmax(t/T) || softmax(s/T)).
    forget_batch_size: batch size of the max-phase over D_f (``batch_size`` is the min-phase's).
  """
  epochs: int = 3
  lr: float = 5e-4
  weight_decay: float = 5e-4
  batch_size: int = 256
  cosine: bool = False
  msteps: int = 2
  gamma: float = 0.99
  alpha: float = 0.001
  temperature: float = 4.0
  forget_batch_size: int = 512

  def __post_init__(self):
    super().__post_init__()
    owner = type(self).__name__
    _check_int(owner, "msteps", self.msteps, 0)
    if self.msteps > self.epochs:
      raise InvalidArgument(f"{owner}.msteps: must be <= epochs ({self.epochs}), got "
                            f"{self.msteps}")
    _check_real(owner, "gamma", self.gamma, low=0.0)
    _check_real(owner, "alpha", self.alpha, low=0.0)
    _check_real(owner, "temperature", self.temperature, low=0.0, low_open=True)
    _check_int(owner, "forget_batch_size", self.forget_batch_size, 1)
