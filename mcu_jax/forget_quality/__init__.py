"""Forgetting quality of an unlearned model *population* against a retrained one.

SalUn's SVC attack (``mia.mia_efficacy``) looks at one model and saturates. The stronger
standards compare N unlearned models U_1..U_N with M models retrained without D_f, R_1..R_M,
example by example. Everything here is NumPy float64 on the CPU; JAX arrays are accepted
(converted with ``np.asarray``) and NumPy is returned.

* ``confidence``: ``logit_scaled_confidence``, LiRA's per-example score of one model;
* ``epsilon``: the challenge's per-example epsilon and its forgetting quality F
  (``forget_score``, ``challenge_score``);
* ``lira``: U-LiRA's per-example likelihood-ratio attack (``lira``);
* ``model_level``: the same scores with their uncertainty over models: bootstrap intervals,
  paired permutation tests of base vs base+MCU, LiRA over random splits (``mcu_jax.core.stats``).
  The model is the unit of every test: all examples are scored by the same models.

Errors raise ``mcu_jax.InvalidArgument`` naming the argument.
"""
from mcu_jax.forget_quality.confidence import logit_scaled_confidence
from mcu_jax.forget_quality.epsilon import (
                                            DELTA,
                                            EPSILON_CAP,
                                            ForgetScore,
                                            challenge_score,
                                            epsilon_bucket_scores,
                                            forget_score,
                                            per_example_epsilons,
)
from mcu_jax.forget_quality.lira import LiraResult, lira

__all__ = ["DELTA", "EPSILON_CAP", "ForgetScore", "LiraResult", "logit_scaled_confidence",
           "per_example_epsilons", "epsilon_bucket_scores", "forget_score", "challenge_score",
           "lira"]
