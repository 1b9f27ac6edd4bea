"""Bad Teacher (mcu_jax.unlearn.bad_teacher): the loss against a float64 NumPy computation, the
retain sample, the init_params requirement, and class-3 forgetting on digits."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _digits import accuracies

from mcu_jax import data, models, unlearn
from mcu_jax.errors import InvalidArgument
from mcu_jax.preprocess import normalize_uint8
from mcu_jax.unlearn import bad_teacher

T = 2.0


def _linear(params, x):
  return x.reshape(x.shape[0], -1) @ params["w"] + params["b"]


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _hand_batch():
  """4 rows x 3 features, 3 classes: rows 0, 2 forget, 1 retain, 3 filler (invalid). The
  incompetent teacher's bias of -1e4 on class 2 makes its probability exactly 0 (0 log 0)."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 3))
  student = {"w": rng.normal(size=(3, 3)), "b": rng.normal(size=3)}
  teacher = {"w": rng.normal(size=(3, 3)), "b": rng.normal(size=3)}
  bad = {"w": rng.normal(size=(3, 3)), "b": np.array([0.3, -0.2, -1e4])}
  batch = {"images": x, "labels": np.array([0, 1, 2, 0]),
           "is_forget": np.array([True, False, True, False]),
           "valid": np.array([True, True, True, False])}
  return x, student, teacher, bad, batch


def _numpy_loss_and_grad(x, student, teacher, bad, batch):
  """float64: sum over valid rows and classes of p (log p - log q) / (rows * C), and its
  gradient w.r.t. the student's w and b (q = softmax(s / T), d/ds = (q - p) / T per row)."""
  s = x @ student["w"] + student["b"]
  p_full = _softmax((x @ teacher["w"] + teacher["b"]) / T)
  p_bad = _softmax((x @ bad["w"] + bad["b"]) / T)
  p = np.where(batch["is_forget"][:, None], p_bad, p_full)
  log_q = np.log(_softmax(s / T))
  with np.errstate(divide="ignore", invalid="ignore"):
    plogp = np.where(p > 0, p * np.log(p), 0.0)
  valid = batch["valid"]
  n, c = valid.sum(), s.shape[1]
  loss = np.sum((plogp - p * log_q)[valid]) / (n * c)
  ds = np.where(valid[:, None], (np.exp(log_q) - p) / T, 0.0) / (n * c)
  return loss, {"w": x.T @ ds, "b": ds.sum(0)}, p


def test_loss_matches_numpy_float64():
  x, student, teacher, bad, batch = _hand_batch()
  expected, expected_grad, p = _numpy_loss_and_grad(x, student, teacher, bad, batch)
  assert p[0, 2] == 0.0 and p[2, 2] == 0.0 and p[1, 2] > 0.0   # both 0 log 0 rows exercised
  f32 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), tree)
  apply = models.from_function(_linear)
  state = {"student": {}, "teacher": (f32(teacher), {}), "incompetent": (f32(bad), {})}
  jbatch = {**f32({"images": x}), "labels": jnp.asarray(batch["labels"]),
            "is_forget": jnp.asarray(batch["is_forget"]), "valid": jnp.asarray(batch["valid"])}
  loss_fn = bad_teacher.bad_teacher_loss(apply, T)
  (loss, (new_state, metrics)), grad = jax.value_and_grad(loss_fn, has_aux=True)(
      f32(student), state, jbatch, jax.random.PRNGKey(0))
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  for name in ("w", "b"):
    np.testing.assert_allclose(np.asarray(grad[name]), expected_grad[name], rtol=1e-4,
                               atol=1e-7)
  chex.assert_trees_all_equal(new_state, state)   # the teachers ride along unchanged
  assert int(metrics["forget_count"]) == 2 and int(metrics["retain_count"]) == 1
  # The filler row is ignored whatever it holds.
  changed = {**jbatch, "images": jbatch["images"].at[3].set(100.0),
             "is_forget": jbatch["is_forget"].at[3].set(True)}
  np.testing.assert_allclose(float(loss_fn(f32(student), state, changed, None)[0]), float(loss),
                             rtol=1e-6)
  # The student distilling exactly its teacher's distribution has zero loss.
  same = {**state, "incompetent": (f32(student), {}), "teacher": (f32(student), {})}
  assert abs(float(loss_fn(f32(student), same, jbatch, None)[0])) < 1e-6


def test_retain_sample_is_drawn_once_without_replacement():
  retain = np.arange(100, 200)
  key = jax.random.PRNGKey(3)
  got = bad_teacher.sample_retain(key, retain, 0.3)
  assert len(got) == 30 and len(np.unique(got)) == 30 and np.all(np.isin(got, retain))
  assert np.all(np.diff(got) > 0)
  np.testing.assert_array_equal(got, bad_teacher.sample_retain(key, retain, 0.3))
  assert not np.array_equal(got, bad_teacher.sample_retain(jax.random.PRNGKey(4), retain, 0.3))
  assert len(bad_teacher.sample_retain(key, retain, 1.0)) == 100
  with pytest.raises(InvalidArgument, match="retain_fraction"):
    bad_teacher.sample_retain(key, np.arange(3), 0.3)


def _tiny_run(**kw):
  rng = np.random.default_rng(0)
  train = data.Dataset("tiny", rng.integers(0, 256, (20, 2, 2, 1), dtype=np.uint8),
                       np.arange(20, dtype=np.int32) % 3, 3)
  params = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
  split = data.ForgetSplit(np.arange(5), np.arange(5, 20), "random")
  return unlearn.run("bad_teacher", apply=models.from_function(_linear), params=params,
                     model_state={}, train=train, split=split, preprocess=normalize_uint8,
                     rng=0, progress=False, **kw)


def test_needs_init_params_of_the_original_structure():
  with pytest.raises(InvalidArgument, match="init_params"):
    _tiny_run()
  with pytest.raises(InvalidArgument, match="structure"):
    _tiny_run(init_params=({"w": jnp.zeros((4, 3))}, {}))
  result = _tiny_run(init_params=lambda key: ({"w": jax.random.normal(key, (4, 3)),
                                               "b": jnp.zeros(3)}, {}))
  assert len(result.extras["retain_sample"]) == int(0.3 * 15)
  assert result.model_state == {}


FORGET_CLASS = 3


def test_digits_defaults_barely_move_and_a_stronger_setting_unlearns(digits_original):
  tt, module, apply, state = digits_original
  split = data.make_split(tt.train, "class", classes=FORGET_CLASS)
  before = accuracies(tt, split, apply, state.params, state.model_state)
  init = lambda key: models.init_model(module, key, (1, 8, 8, 1))
  results = {}
  for label, overrides in (("defaults", {}), ("lr 1e-3, 5 epochs", {"lr": 1e-3, "epochs": 5})):
    result = unlearn.run("bad_teacher", apply=apply, params=state.params,
                         model_state=state.model_state, train=tt.train, split=split,
                         preprocess=normalize_uint8, rng=0, config=overrides, progress=False,
                         init_params=init)
    chex.assert_trees_all_equal_shapes_and_dtypes(result.params, state.params)
    chex.assert_trees_all_equal_shapes_and_dtypes(result.model_state, state.model_state)
    assert len(result.history) == result.config.epochs and result.extra_seconds == 0.0
    assert result.rte_seconds == pytest.approx(result.train_seconds)
    results[label] = after = accuracies(tt, split, apply, result.params, result.model_state)
    print(f"\nbad_teacher {label}: RTE {result.rte_seconds:.3f} s, compile "
          f"{result.compile_seconds:.2f} s; before {before}; after {after}")
  assert before["forget_acc"] > 95.0
  # Paper defaults (Adam 1e-4, one epoch: 3 steps on digits) leave the model nearly as it was.
  assert results["defaults"]["forget_acc"] > before["forget_acc"] - 5.0
  assert results["defaults"]["retain_acc"] > 95.0
  stronger = results["lr 1e-3, 5 epochs"]
  assert stronger["forget_acc"] < 60.0
  assert stronger["retain_acc"] > 90.0 and stronger["test_acc"] > 80.0
