"""Membership inference and the standard metrics of an unlearned model.

* ``mia_efficacy``: SalUn's SVC confidence attack (``evaluation/SVC_MIA.py``, as used in SalUn's
  ``main_forget.py`` for ``SVC_MIA_forget_efficacy``; the MCU reference ships the same file but
  never calls it).
* ``loss_attack_auc``: ROC-AUC of a loss-threshold attack on D_f against the test set.
* ``unlearning_metrics``: UA, RA, TA, MIA (percent) and the loss AUC of one model;
  ``avg_gap``: the mean absolute difference to the retrained model's metrics.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mcu_jax.core import objectives
from mcu_jax.errors import InvalidArgument
from mcu_jax.models.adapters import Apply
from mcu_jax.preprocess import Preprocess, default_preprocess
from mcu_jax.runtime.evaluate import predict_logits
from mcu_jax.typing import PyTree


def _as_feature(values, name: str) -> np.ndarray:
  values = np.asarray(values, dtype=np.float64).reshape(-1)
  if values.size == 0:
    raise InvalidArgument(f"{name} is empty")
  if not np.all(np.isfinite(values)):
    raise InvalidArgument(f"{name} has non-finite values")
  return values


def mia_efficacy(conf_retain, conf_test, conf_forget, seed: int = 0) -> float:
  """MIA-Efficacy: the share of D_f that SalUn's SVC attack calls a non-member, in [0, 1].

  As SalUn's ``SVC_MIA`` with ``shadow_train`` = retain, ``shadow_test`` = test,
  ``target_train`` = None, ``target_test`` = forget:

  * feature: the softmax probability of the true label (1-D);
  * shadow members (label 1): the *first* ``len(conf_test)`` retain examples
    (SalUn: ``Subset(retain_dataset, list(range(test_len)))``, all of them when the retain set
    is smaller), so members and non-members are balanced whenever retain >= test;
  * shadow non-members (label 0): every test example;
  * shuffled (``sklearn.utils.shuffle``, here seeded with ``seed``), then
    ``SVC(C=3, gamma="auto", kernel="rbf")``;
  * result: ``1 - mean(prediction on D_f)``.

  Higher is better unlearning: the attack sees D_f as unseen data.
  """
  from sklearn.svm import SVC
  from sklearn.utils import shuffle
  retain = _as_feature(conf_retain, "conf_retain")
  test = _as_feature(conf_test, "conf_test")
  forget = _as_feature(conf_forget, "conf_forget")
  members = retain[:test.size]
  x = np.concatenate([members, test])[:, None]
  y = np.concatenate([np.ones(members.size), np.zeros(test.size)])
  x, y = shuffle(x, y, random_state=seed)
  clf = SVC(C=3, gamma="auto", kernel="rbf")
  clf.fit(x, y)
  return float(1.0 - clf.predict(forget[:, None]).mean())


def loss_attack_auc(loss_forget, loss_test) -> float:
  """ROC-AUC of a loss-threshold attack telling D_f (positives) from test (negatives).

  The score is ``-loss`` (members have low loss): 1.0 means every forget example has a lower
  loss than every test example (D_f still memorised), 0.5 means indistinguishable.
  """
  from sklearn.metrics import roc_auc_score
  forget = _as_feature(loss_forget, "loss_forget")
  test = _as_feature(loss_test, "loss_test")
  y = np.concatenate([np.ones(forget.size), np.zeros(test.size)])
  return float(roc_auc_score(y, -np.concatenate([forget, test])))


def _outputs(apply, params, state, images, labels, batch_size, preprocess, mesh=None):
  """(true-label confidence, per-example CE, correct) of one set, float64 NumPy arrays."""
  import jax
  import jax.numpy as jnp
  logits = predict_logits(apply, params, state, images, batch_size, preprocess, mesh=mesh)
  labels = np.asarray(labels).astype(np.int32)
  if labels.shape != (logits.shape[0],):
    raise InvalidArgument(f"{labels.shape} labels for {logits.shape[0]} images")
  lg, lb = jnp.asarray(logits), jnp.asarray(labels)
  conf = jnp.take_along_axis(jax.nn.softmax(lg, axis=-1), lb[:, None], axis=1)[:, 0]
  loss = objectives.cross_entropy(lg, lb)
  hit = objectives.correct(lg, lb)
  return tuple(np.asarray(a, dtype=np.float64) for a in (conf, loss, hit))


def model_confidences(apply: Apply, params: PyTree, state: PyTree, images, labels,
                      batch_size: int = 512, preprocess: Preprocess = default_preprocess, *,
                      mesh=None) -> np.ndarray:
  """softmax(logits)[label] of every example in inference mode: float64 (N,).

  ``mesh``: a device mesh to split the inference batches over (``evaluate.predict_logits``).
  """
  return _outputs(apply, params, state, images, labels, batch_size, preprocess, mesh)[0]


def unlearning_metrics(apply: Apply, params: PyTree, state: PyTree, *, forget, retain, test,
                       batch_size: int = 512, preprocess: Preprocess = default_preprocess,
                       seed: int = 0, mesh=None) -> dict[str, float]:
  """The standard metrics of an unlearned model (SalUn's protocol), in percent.

  ``forget``, ``retain`` and ``test`` are (images, labels) pairs; ``state`` should hold BN
  statistics fit for ``params`` (e.g. from ``recalibrate_batch_stats``). Returns:
  UA = 100 - accuracy on D_f, RA = accuracy on D_r, TA = test accuracy, MIA = 100 *
  ``mia_efficacy``, loss_auc = ``loss_attack_auc`` (a fraction), and FA = accuracy on D_f.
  ``mesh``: a device mesh to split the inference batches over (``evaluate.predict_logits``;
  None: all devices, ``parallel.resolve_mesh``).
  """
  out = {}
  for name, (images, labels) in (("forget", forget), ("retain", retain), ("test", test)):
    if int(np.shape(labels)[0]) == 0:
      raise InvalidArgument(f"the {name} set is empty")
    out[name] = _outputs(apply, params, state, images, labels, batch_size, preprocess, mesh)
  fa = 100.0 * out["forget"][2].mean()
  return {
      "UA": 100.0 - fa,
      "RA": 100.0 * out["retain"][2].mean(),
      "TA": 100.0 * out["test"][2].mean(),
      "MIA": 100.0 * mia_efficacy(out["retain"][0], out["test"][0], out["forget"][0], seed),
      "loss_auc": loss_attack_auc(out["forget"][1], out["test"][1]),
      "FA": fa,
  }


def avg_gap(metrics: Mapping[str, float], retrain_metrics: Mapping[str, float],
            keys: Sequence[str] = ("UA", "RA", "TA", "MIA")) -> float:
  """Avg. Gap: mean over ``keys`` of |metric - the retrained model's metric|."""
  keys = tuple(keys)
  if not keys:
    raise InvalidArgument("keys must name at least one metric")
  missing = [k for k in keys if k not in metrics or k not in retrain_metrics]
  if missing:
    raise InvalidArgument(f"metrics missing from one of the records: {missing}")
  return float(np.mean([abs(float(metrics[k]) - float(retrain_metrics[k])) for k in keys]))


__all__ = ["mia_efficacy", "loss_attack_auc", "model_confidences", "unlearning_metrics",
           "avg_gap"]
