"""What the digits runs of the base-method tests measure (shared by their test files)."""
from mcu_jax.preprocess import normalize_uint8
from mcu_jax.runtime import evaluate


def accuracies(tt, split, apply, params, model_state) -> dict:
  """Percent accuracy of the model on D_f, D_r and the test set: ``forget_acc``,
  ``retain_acc``, ``test_acc`` (uint8 digits, ``normalize_uint8``)."""
  out = {}
  for name, images, labels in (
      ("forget_acc", tt.train.images[split.forget], tt.train.labels[split.forget]),
      ("retain_acc", tt.train.images[split.retain], tt.train.labels[split.retain]),
      ("test_acc", tt.test.images, tt.test.labels)):
    out[name], _ = evaluate.accuracy_and_loss(apply, params, model_state, images, labels,
                                              preprocess=normalize_uint8)
  return out
