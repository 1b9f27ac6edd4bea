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

OPTIMIZERS = ("sgd", "adam")


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
    optimizer: ``"sgd"`` (``torch.optim.SGD``) or ``"adam"`` (``torch.optim.Adam``: betas
      (0.9, 0.999), eps 1e-8, ``weight_decay`` added to the gradient; ``momentum`` unused), as
      ``optim.make_optimizer`` builds them. Bad Teacher and UNSIR use Adam, as their papers.
  """
  weight_decay: float = 1e-4
  cosine: bool = True
  optimizer: str = "sgd"

  def __post_init__(self):
    super().__post_init__()
    check_choice(f"{type(self).__name__}.optimizer", self.optimizer, OPTIMIZERS)


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


@dataclasses.dataclass(frozen=True)
class SSDConfig(MethodConfig):
  """SSD, selective synaptic dampening (Foster, Schoepf and Brintrup, AAAI 2024): no training.

  Importances are diagonal Fisher estimates at theta_o (inference mode): the mean over batches
  of ``batch_size`` of the squared gradient of the batch's mean CE, on D_f ([]_D_f) and on the
  whole training set D = D_r + D_f ([]_D). Every parameter with ``[]_D_f > alpha * []_D`` is
  multiplied by ``min(lam * []_D / []_D_f, 1)``; the others stay. The optimizer fields and
  ``epochs`` are unused.

  Attributes:
    alpha: selection weighting (the paper's alpha), > 0.
    lam: dampening constant (the paper's lambda), > 0.
    batch_size: examples per importance batch: 128, ``forget_random_main.py``'s ``-b``
      default (``forget_full_class_main.py``'s is 64; on digits class forgetting the two differ
      a lot: at 64 the defaults collapse the model, see ``unlearn.ssd``).
  """
  alpha: float = 10.0
  lam: float = 1.0

  def __post_init__(self):
    super().__post_init__()
    owner = type(self).__name__
    _check_real(owner, "alpha", self.alpha, low=0.0, low_open=True)
    _check_real(owner, "lam", self.lam, low=0.0, low_open=True)


@dataclasses.dataclass(frozen=True)
class BadTeacherConfig(MethodConfig):
  """Bad Teacher (Chundawat, Tarun, Mandal and Kankanhalli, AAAI 2023): the student (theta_o)
  distils theta_o on D_r and an incompetent teacher (a random initialisation) on D_f.

  Per batch of D_f and a random ``retain_fraction`` of D_r mixed, the loss is
  ``KL(p_teacher || softmax(student / T))`` averaged over every (example, class) entry (torch's
  ``F.kl_div`` default ``reduction="mean"``), where ``p_teacher`` is the softmax at temperature
  T of the incompetent teacher for forget examples and of theta_o for retain examples.

  Attributes:
    temperature: the distillation temperature T, > 0.
    retain_fraction: share of D_r drawn (once, without replacement) for the distillation, in
      (0, 1].
  """
  optimizer: str = "adam"
  lr: float = 1e-4
  weight_decay: float = 0.0
  cosine: bool = False
  epochs: int = 1
  batch_size: int = 256
  temperature: float = 1.0
  retain_fraction: float = 0.3

  def __post_init__(self):
    super().__post_init__()
    owner = type(self).__name__
    _check_real(owner, "temperature", self.temperature, low=0.0, low_open=True)
    _check_real(owner, "retain_fraction", self.retain_fraction, low=0.0, high=1.0,
                low_open=True)


@dataclasses.dataclass(frozen=True)
class UNSIRConfig(MethodConfig):
  """UNSIR (Tarun, Chundawat, Mandal and Kankanhalli, IEEE TNNLS 2023): error-maximising noise
  for each forget class, an impair epoch on the noise and a retain subset, a repair epoch on
  the retain subset.

  For each class c of D_f a noise batch N_c (``batch_size`` inputs of the model's input shape,
  standard normal at first) is trained by Adam (lr ``noise_lr``) for ``noise_steps`` steps to
  minimise ``-CE(f(N_c), c) + noise_l2 * mean_i ||N_c[i]||^2`` with theta_o fixed. Impair:
  ``epochs`` epochs of CE on ``noise_copies`` copies of every N_c (label c) and up to
  ``retain_per_class`` examples per class of D_r, optimizer ``optimizer``/``lr``. Repair:
  ``repair_epochs`` epochs of CE on the same retain examples at ``repair_lr``.

  Attributes:
    noise_steps, noise_lr, noise_l2: the noise optimisation (5 epochs x 8 steps, Adam 0.1 and
      0.1 in the authors' notebook).
    noise_copies: copies of each noise batch in the impair data (20).
    retain_per_class: retain examples kept per class (1000).
    repair_epochs, repair_lr: the repair phase (1 epoch, Adam lr 0.01).
  """
  optimizer: str = "adam"
  lr: float = 0.02
  weight_decay: float = 0.0
  cosine: bool = False
  epochs: int = 1
  batch_size: int = 256
  noise_steps: int = 40
  noise_lr: float = 0.1
  noise_l2: float = 0.1
  noise_copies: int = 20
  retain_per_class: int = 1000
  repair_epochs: int = 1
  repair_lr: float = 0.01

  def __post_init__(self):
    super().__post_init__()
    owner = type(self).__name__
    _check_int(owner, "noise_steps", self.noise_steps, 1)
    _check_real(owner, "noise_lr", self.noise_lr, low=0.0, low_open=True)
    _check_real(owner, "noise_l2", self.noise_l2, low=0.0)
    _check_int(owner, "noise_copies", self.noise_copies, 1)
    _check_int(owner, "retain_per_class", self.retain_per_class, 1)
    _check_int(owner, "repair_epochs", self.repair_epochs, 0)
    _check_real(owner, "repair_lr", self.repair_lr, low=0.0, low_open=True)


@dataclasses.dataclass(frozen=True)
class BoundaryShrinkConfig(MethodConfig):
  """Boundary Shrink (Chen, Gao, Lu, Yang and Wu, "Boundary Unlearning", CVPR 2023): each
  forget example is relabelled to the class theta_o predicts for its adversarial neighbour,
  then theta_o is fine-tuned on D_f with those labels (CE).

  The neighbour is an L-infinity PGD attack on theta_o (inference mode, fixed) in pixel space
  [0, 1]: ``attack_steps`` signed-gradient steps of ``attack_step`` on CE(true label), each
  projected onto the ``bound`` ball, clipped to [0, 1] and rounded to whole grey levels (1/255,
  the paper code's clamper), no random start (the paper's code: bound 0.1, step 8/255, 5 steps;
  ``attack_steps=1, attack_step=bound`` is SalUn's FGSM).

  Attributes:
    bound: the attack's radius in pixel units, > 0.
    attack_step: one step's size in pixel units, > 0.
    attack_steps: PGD iterations, >= 1.
  """
  lr: float = 1e-5
  weight_decay: float = 0.0
  cosine: bool = False
  epochs: int = 10
  bound: float = 0.1
  attack_step: float = 8 / 255
  attack_steps: int = 5

  def __post_init__(self):
    super().__post_init__()
    owner = type(self).__name__
    _check_real(owner, "bound", self.bound, low=0.0, low_open=True)
    _check_real(owner, "attack_step", self.attack_step, low=0.0, low_open=True)
    _check_int(owner, "attack_steps", self.attack_steps, 1)


@dataclasses.dataclass(frozen=True)
class IUConfig(MethodConfig):
  """IU, influence unlearning with a WoodFisher inverse-Hessian approximation (Izzo et al.
  2021; Koh and Liang 2017; as ``unlearn/Wfisher.py`` of the SalUn and Unlearn-Sparse code):
  no training.

  With g_f the sum over D_f and g_r the sum over D_r of per-batch mean-CE gradients times the
  batch size (theta_o, inference mode), n_f = |D_f|, n_r = |D_r|, the direction is
  ``v = g_f / (n_f + n_r) - g_r * n_f / ((n_f + n_r) * n_r)``; the WoodFisher recursion over
  the first ``woodfisher_samples + 2`` retain examples one at a time turns v into ``H^-1 v``,
  and theta = theta_o + ``alpha`` * H^-1 v. The optimizer fields and ``epochs`` are unused.

  Attributes:
    alpha: step size of the influence update (the codes' ``--alpha``; default 0.2 is their
      argument default, the READMEs leave it to the user), > 0.
    woodfisher_samples: the recursion's N (1000 in the code): its damping and its length.
    batch_size: examples per gradient batch (SalUn's ``--batch_size`` 256).
  """
  batch_size: int = 256
  alpha: float = 0.2
  woodfisher_samples: int = 1000

  def __post_init__(self):
    super().__post_init__()
    owner = type(self).__name__
    _check_real(owner, "alpha", self.alpha, low=0.0, low_open=True)
    _check_int(owner, "woodfisher_samples", self.woodfisher_samples, 1)
