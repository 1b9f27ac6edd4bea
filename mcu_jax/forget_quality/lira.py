"""U-LiRA: per-example likelihood-ratio attacks on unlearned populations.

Hayes et al., "Inexact Unlearning Needs More Careful Evaluations to Avoid a False Sense of
Privacy", arXiv 2403.01218: a per-example likelihood-ratio attack (LiRA, arXiv 2112.03570,
applied to unlearning). Per example e, Gaussians are fit over the populations' models to the
logit-scaled confidences of the unlearned models, N(mu_u, sd_u^2), and of the retrained models,
N(mu_r, sd_r^2) (``np.std``, ddof = 0, as LiRA's code; each sd floored at ``std_floor``, 1e-6 by
default, so that a population that is constant on an example gives a finite, steep ratio;
LiRA's code adds 1e-30 instead). A target model's score on e is the log-likelihood ratio
``log N(x; mu_u, sd_u) - log N(x; mu_r, sd_r)``: > 0 votes "unlearned" (trained on e, then
unlearned), < 0 "retrained" (never saw e). Given the targets' true status, the attack is scored
over all (target, example) pairs pooled, as LiRA and U-LiRA evaluate their per-example attack
over many targets and examples: ROC-AUC (ties count 1/2), TPR at FPR <= 1 % and <= 5 % (the
best ROC point within the FPR budget; positive = unlearned), and balanced accuracy (mean of TPR
and TNR) of the threshold-free decision LLR > 0, the Bayes rule for equal priors under the
fitted Gaussians. Balanced accuracy equals Hayes et al.'s accuracy when half of the pairs are
unlearned, as in their game; pooling the pairs and using LLR > 0 rather than a tuned threshold
are our reading where the paper gives no formula.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from mcu_jax.errors import InvalidArgument
from mcu_jax.forget_quality.checks import finite, populations


@dataclasses.dataclass(frozen=True, eq=False)
class LiraResult:
  """U-LiRA's log-likelihood ratios (targets, examples) and, given labels, pooled metrics.

  ``scores`` > 0 votes "unlearned". The metrics are None when ``target_is_unlearned`` was not
  given; otherwise fractions in [0, 1] over all (target, example) pairs.
  """
  scores: np.ndarray
  auc: float | None = None
  tpr_at_1pct_fpr: float | None = None
  tpr_at_5pct_fpr: float | None = None
  balanced_accuracy: float | None = None


def _roc(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(FPR, TPR) at every distinct threshold, from (0, 0) to (1, 1); tied scores move together."""
  order = np.argsort(-scores, kind="stable")
  s, p = scores[order], positive[order]
  tp, fp = np.cumsum(p), np.cumsum(~p)
  last = np.r_[s[1:] != s[:-1], True]          # the last pair of each run of equal scores
  tpr = np.r_[0.0, tp[last] / tp[-1]]
  fpr = np.r_[0.0, fp[last] / fp[-1]]
  return fpr, tpr


def _labels(target_is_unlearned, shape: tuple[int, int]) -> np.ndarray:
  labels = np.asarray(target_is_unlearned)
  if labels.dtype != bool:
    if not np.issubdtype(labels.dtype, np.integer) or not np.all((labels == 0) | (labels == 1)):
      raise InvalidArgument("target_is_unlearned must be bool (or 0/1 integers)")
    labels = labels.astype(bool)
  if labels.shape == shape[:1]:
    labels = labels[:, None]
  elif labels.shape != shape:
    raise InvalidArgument(f"target_is_unlearned must have shape {shape[:1]} (one status per "
                          f"target) or {shape} (per target and example), got {labels.shape}")
  labels = np.broadcast_to(labels, shape)
  if labels.all() or not labels.any():
    raise InvalidArgument("target_is_unlearned must mark both unlearned and retrained targets")
  return labels


def lira(target_confs, unlearned_confs, retrained_confs, target_is_unlearned=None, *,
         std_floor: float = 1e-6) -> LiraResult:
  """U-LiRA (Hayes et al., arXiv 2403.01218): per-example Gaussian likelihood ratios.

  ``target_confs`` (T, E): the logit-scaled confidences of the T held-out target models on the
  E forget examples; ``unlearned_confs`` (N, E) and ``retrained_confs`` (M, E) (N, M >= 2): the
  populations the per-example Gaussians are fit to. ``target_is_unlearned``: bool (T,), or
  (T, E) when a target's status differs per example, True where the target is an unlearned
  model; None skips the metrics. ``std_floor`` (confidence units, > 0) floors each fitted std.
  Returns ``LiraResult`` (module docstring for the metrics).
  """
  u, r = populations(unlearned_confs, retrained_confs)
  x = np.asarray(target_confs, dtype=np.float64)
  if x.ndim != 2 or x.shape[0] < 1:
    raise InvalidArgument(f"target_confs must be 2-D (targets, examples), got shape {x.shape}")
  if x.shape[1] != u.shape[1]:
    raise InvalidArgument(f"target_confs has {x.shape[1]} examples but unlearned_confs and "
                          f"retrained_confs have {u.shape[1]}")
  if not np.all(np.isfinite(x)):
    raise InvalidArgument("target_confs has non-finite values")
  std_floor = finite(std_floor, "std_floor")
  if std_floor <= 0:
    raise InvalidArgument(f"std_floor must be > 0, got {std_floor}")

  def log_density(mean, std):
    return -np.log(std) - 0.5 * ((x - mean) / std) ** 2   # the 2 pi terms cancel in the ratio

  llr = (log_density(u.mean(axis=0), np.maximum(u.std(axis=0), std_floor))
         - log_density(r.mean(axis=0), np.maximum(r.std(axis=0), std_floor)))
  llr.setflags(write=False)
  if target_is_unlearned is None:
    return LiraResult(scores=llr)
  labels = _labels(target_is_unlearned, x.shape).ravel()
  scores = llr.ravel()
  fpr, tpr = _roc(scores, labels)
  auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
  vote = scores > 0
  balanced = 0.5 * (vote[labels].mean() + (~vote[~labels]).mean())
  return LiraResult(scores=llr, auc=auc,
                    tpr_at_1pct_fpr=float(tpr[fpr <= 0.01].max()),
                    tpr_at_5pct_fpr=float(tpr[fpr <= 0.05].max()),
                    balanced_accuracy=float(balanced))
