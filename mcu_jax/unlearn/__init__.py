"""Base unlearning methods: the ways to obtain theta_p, the end point of MCU's curve.

Usage::

    result = unlearn.run("salun", apply=apply, params=params, model_state=state, train=train,
                         split=split, preprocess=preprocess, rng=jax.random.PRNGKey(0))
    theta_p = (result.params, result.model_state); result.rte_seconds; result.history

Every method is a per-batch loss over a view of the data, run by the one trainer
(``train.make_epoch``: one jitted epoch, a ``lax.scan`` or on the CPU a host loop over one
jitted step, its batches split over the device mesh; ``train.fit``: progress bar, history,
checkpoint/resume). ``METHODS`` is the registry, ``default_config(name)`` gives a method's
hyperparameters (a frozen, validated dataclass; ``config.replace(epochs=1)`` or a dict of
fields to override), ``run`` executes one. RTE = the trainer's per-epoch seconds plus the
method's own extra computation, compilation excluded (see ``UnlearnResult``).

Common defaults (every method unless its row says otherwise), from the reference
(TIML-Group/Mode-Connectivity-Unlearning, ``arg_parser.py``): SGD, lr 0.01, momentum 0.9,
weight decay 1e-4 (coupled, as ``torch.optim.SGD``), batch 128, cosine annealing over the
epochs stepped once per epoch (``--milestones None`` -> ``CosineAnnealingLR``).

=============  ====================  ==========================  ===================================
method         data                  loss                        defaults (source)
=============  ====================  ==========================  ===================================
retrain        D_r, fresh init       CE                          200 epochs (reference ``--epochs``
                                                                 and README retrain command
                                                                 ``--lr=0.01 --epochs=200``)
ft             D_r                   CE                          10 epochs (the reference fixes no
                                                                 per-method epochs; SalUn's and
                                                                 Unlearn-Sparse's FT command
                                                                 ``--unlearn_lr 0.01
                                                                 --unlearn_epochs 10``)
ga             D_f                   -CE                         lr 1e-4, 5 epochs (SalUn and
                                                                 Unlearn-Sparse README GA command
                                                                 ``--unlearn_lr 0.0001
                                                                 --unlearn_epochs 5``; the
                                                                 reference has no GA-specific value)
neggrad_plus   D_f + D_r shuffled,   CE(D_r members)             beta 0.15 (reference ``--beta``,
               ``is_forget`` flag    - beta * CE(D_f members),   "beta for NegGrad+"); 10 epochs
                                     per-batch subset means      (as FT)
rl             D_f (random wrong     CE                          10 epochs (SalUn's RL command
               label) + D_r                                      ``--unlearn_epochs 10``)
salun          as rl                 CE, updates masked to the   mask_ratio 0.5 (reference
                                     top mask_ratio weights by   ``generate_mask.py``
                                     abs(sum_batches grad CE)    ``threshold_list = [0.5]``);
                                     on D_f at theta_o           10 epochs
l1_sparse      D_r                   CE + alpha_e * ||theta||_1  alpha 5e-4, decaying linearly per
                                                                 epoch to 0, no_l1_epochs 0; weight
                                                                 decay 5e-4; lr 0.01, 10 epochs
                                                                 (Jia et al. 2023, "Model Sparsity
                                                                 Can Simplify Machine Unlearning",
                                                                 Unlearn-Sparse: ``FT_iter``'s
                                                                 ``alpha * (1 - epoch /
                                                                 (unlearn_epochs - no_l1_epochs))``,
                                                                 ``--weight_decay 5e-4``,
                                                                 ``--no-l1-epochs 0``, README
                                                                 ``--unlearn_lr 0.01
                                                                 --unlearn_epochs 10``; see note 4)
negtv          D_f (fine-tune)       CE; then theta_o - coef     coef 0.9 (reference ``--coef``,
                                     * (theta_ft - theta_o)      ``main_tv.py``); fine-tune 10
                                                                 epochs (as FT); BN stats by the
                                                                 same formula (reference)
scrub          max: D_f, min: D_r    max: -KL_T(t || s);         Kurmanji et al. 2023, SCRUB repo
                                     min: gamma CE + alpha KL_T  ``large_scale_unlearning.ipynb``
                                                                 (CIFAR-10): 3 epochs
                                                                 (``sgda_epochs``), msteps 2, lr
                                                                 5e-4 constant (its decay epochs
                                                                 [3, 5, 9] never fire in 3 epochs),
                                                                 momentum 0.9, weight decay 5e-4,
                                                                 gamma 0.99, alpha 0.001, beta 0
                                                                 (no extra KD term), T 4, retain
                                                                 batch 256, forget batch 512 (the
                                                                 notebook's loaders)
ssd            D_f and D = D_r + D_f  no training: weights with   alpha 10, lambda 1, batch 128
               (importances)         []_D_f > alpha []_D scaled  (Foster et al., AAAI 2024; code
                                     by min(lambda []_D /        ``forget_random_main.py``)
                                     []_D_f, 1)
bad_teacher    D_f + 30 % of D_r     KL(teacher || student),     Adam lr 1e-4, 1 epoch, batch 256,
                                     teacher theta_o on D_r,     T 1 (Chundawat et al., AAAI 2023;
                                     a random net on D_f         code ``blindspot_unlearner``)
unsir          noise per forget      CE: impair (noise + D_r     noise: Adam 0.1, 40 steps, l2 0.1;
               class + <= 1000       subset), then repair        impair Adam 0.02, repair 0.01,
               per class of D_r      (D_r subset)                1 epoch each, batch 256 (Tarun et
                                                                 al., TNNLS 2023; authors' notebook)
boundary_      D_f relabelled to     CE                          PGD bound 0.1, step 8/255, 5 steps;
shrink         its adversarial                                   SGD lr 1e-5, 10 epochs (Chen et
               neighbours' classes                               al., CVPR 2023; paper's code)
iu             D_f, D_r (gradients)  no training: theta_o +      alpha 0.2, N 1000, batch 256 (the
                                     alpha * WoodFisher H^-1 v   SalUn/Unlearn-Sparse ``Wfisher``)
=============  ====================  ==========================  ===================================

The five methods of issue #25 live in modules of their own (``ssd``, ``bad_teacher``,
``unsir``, ``boundary_shrink``, ``influence``), whose docstrings give each computation, the
source of every default and every deviation from the original code. SSD and IU do not train:
their history is empty and their RTE is their extra seconds. Bad Teacher and UNSIR use Adam
(``MethodConfig.optimizer``), as their papers.

Notes and deviations from the reference:

0. The gold standard of a run (``mcu-jax retrain``) is the ``retrain`` method itself, with the
   run's own training recipe (``config.retrain``, or ``config.train`` when it is null): the
   original model and the retrained one differ only in their data, D vs D_r. The 200-epoch
   defaults above are the reference's, for callers of ``unlearn.run`` without a recipe.

1. NegGrad+ follows the reference (``CE_r - beta * CE_f`` on mixed batches, beta 0.15), not the
   SCRUB paper's ``alpha * CE_r - (1 - alpha) * CE_f`` over paired retain/forget loaders; the two
   differ by a per-batch weighting and an overall scale of the loss (beta = (1 - alpha) / alpha).
2. Random labels (rl, salun) are drawn uniformly from the other classes, afresh every step from
   the step's PRNG key (the reference redraws in every ``__getitem__``: same distribution).
3. SalUn: here weights outside the mask never move, weight decay included (``train.make_epoch``
   masks gradients and updates), as the SalUn paper intends. The reference multiplies only the
   gradients by the mask before ``optimizer.step()``, whose coupled weight decay and momentum
   still move masked-out weights. The gradients for the mask are those of each batch's mean CE
   over D_f (batches of ``batch_size``, in order), summed, the model in inference mode and
   without augmentation; the ranking is ``masks.salun_mask`` (global, ties stable).
4. l1-sparse's alpha: Unlearn-Sparse's code fixes the decay formula but not the value (its
   ``--alpha`` default, 0.2, is a placeholder shared with other methods, and its README leaves
   ``${alpha}``); 5e-4 is the value this project adopts for Jia et al. (SalUn-lineage scripts
   use 1e-4 on CIFAR-10). The penalty enters as its subgradient ``alpha * sign(theta)`` added
   to the gradient (``l1.l1_penalty``), identical to adding ``alpha * ||theta||_1`` to the
   loss; the reported ``train_loss`` is the CE alone. All parameters are penalised, BN's
   included (the reference's ``model.parameters()``).
5. NegTV applies the formula to every floating leaf of params and of the model state (the
   reference's task vector spans the whole state_dict, BN buffers included). A running variance
   can then turn negative; ``NegTVConfig(batch_stats="original" | "recalibrate")`` keeps
   theta_o's statistics or recomputes them on D_r.
6. SCRUB: outer epoch e (1-based) runs a max-epoch over D_f if e <= msteps, then a min-epoch
   over D_r, sharing one optimiser, as the paper's code; each phase is one jitted epoch. The
   teacher (theta_o, inference mode) rides in the trainer's model state, so it is an argument
   of the jitted epochs rather than a baked-in constant.
7. Cosine annealing is stepped per epoch, as the reference's scheduler (``cosine=False`` for a
   constant rate). A last partial batch is filled up by wrapping around the shuffled order
   (``loops.epoch_batches``) and the filler is masked out of every loss; BatchNorm's
   training-mode batch statistics see those real examples, not copies of one.
"""
from __future__ import annotations

from mcu_jax.unlearn.configs import (
                                     BadTeacherConfig,
                                     BoundaryShrinkConfig,
                                     FTConfig,
                                     GAConfig,
                                     IUConfig,
                                     L1SparseConfig,
                                     MethodConfig,
                                     NegGradPlusConfig,
                                     NegTVConfig,
                                     RetrainConfig,
                                     RLConfig,
                                     SalUnConfig,
                                     ScrubConfig,
                                     SSDConfig,
                                     UNSIRConfig,
)
from mcu_jax.unlearn.l1 import l1_penalty
from mcu_jax.unlearn.losses import distill_kl, random_wrong_labels
from mcu_jax.unlearn.negtv import negate_task_vector
from mcu_jax.unlearn.registry import METHODS, Method, default_config, get_method, method_names
from mcu_jax.unlearn.runner import UnlearnResult, check_split, run

__all__ = [
    "METHODS", "Method", "UnlearnResult", "run", "default_config", "get_method",
    "method_names", "check_split", "l1_penalty", "distill_kl",
    "negate_task_vector", "random_wrong_labels", "MethodConfig", "RetrainConfig", "FTConfig",
    "GAConfig", "NegGradPlusConfig", "RLConfig", "SalUnConfig", "L1SparseConfig",
    "NegTVConfig", "ScrubConfig", "SSDConfig", "BadTeacherConfig", "UNSIRConfig",
    "BoundaryShrinkConfig", "IUConfig",
]
