"""The relearn attack: readings, the SGD it runs (against NumPy float64), the forget subset, the
config's checks, populations, and a rebound on digits."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcu_jax import models, population, relearn
from mcu_jax.errors import InvalidArgument
from mcu_jax.forget_quality import forget_score, logit_scaled_confidence, model_level
from mcu_jax.preprocess import normalize_uint8
from mcu_jax.relearn import RelearnConfig
from mcu_jax.runtime import evaluate


def _linear_problem(n=40, seed=0):
  """Float features (n, 3), 3 classes from a noisy linear rule, and a linear model."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 3)).astype(np.float32)
  y = (np.argmax(x @ rng.normal(size=(3, 3)) + 0.8 * rng.normal(size=(n, 3)), axis=1)
       ).astype(np.int32)
  params = {"w": (0.3 * rng.normal(size=(3, 3))).astype(np.float32),
            "b": np.zeros(3, np.float32)}
  apply = models.from_function(lambda p, x: x @ p["w"] + p["b"])
  return x, y, params, apply


def _numpy_sgd(params, x, y, *, lr, momentum, weight_decay, steps):
  """Full-batch SGD on mean softmax cross-entropy in float64, as torch.optim.SGD (and optax's
  add_decayed_weights + sgd(momentum)): g = grad + wd w; v = g + m v; w -= lr v. Returns the
  params after every step (steps + 1 entries)."""
  w, b = (np.asarray(params[k], np.float64) for k in ("w", "b"))
  x = np.asarray(x, np.float64)
  onehot = np.eye(w.shape[1])[y]
  vw, vb = np.zeros_like(w), np.zeros_like(b)
  out = [(w.copy(), b.copy())]
  for _ in range(steps):
    z = x @ w + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dz = (p - onehot) / len(y)
    gw, gb = x.T @ dz + weight_decay * w, dz.sum(0) + weight_decay * b
    vw, vb = gw + momentum * vw, gb + momentum * vb
    w, b = w - lr * vw, b - lr * vb
    out.append((w.copy(), b.copy()))
  return out


def _numpy_acc(wb, x, y) -> float:
  w, b = wb
  return 100.0 * float(np.mean(np.argmax(np.asarray(x, np.float64) @ w + b, 1) == y))


def test_zero_steps_reads_the_input_model_exactly(digits_original):
  tt, _, apply, state = digits_original
  y = tt.train.labels
  forget = (tt.train.images[y == 3], y[y == 3])
  retain = (tt.train.images[y != 3], y[y != 3])
  result = relearn.relearn(apply, state.params, state.model_state, forget=forget, retain=retain,
                           test=(tt.test.images, tt.test.labels), preprocess=normalize_uint8,
                           config=RelearnConfig(steps=0))
  assert result.steps.tolist() == [0] and result.rebound == 0.0
  for name, (images, labels) in (("forget", forget), ("retain", retain),
                                 ("test", (tt.test.images, tt.test.labels))):
    expected = evaluate.accuracy_and_loss(apply, state.params, state.model_state, images,
                                          labels, preprocess=normalize_uint8)[0]
    assert getattr(result, f"{name}_acc").tolist() == [expected]
  jax.tree.map(np.testing.assert_array_equal, result.params, state.params)
  assert result.seconds == 0.0 and result.compile_seconds == 0.0


@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.9, 0.01)])
def test_k_full_batch_steps_equal_numpy_float64_sgd(momentum, weight_decay):
  x, y, params, apply = _linear_problem()
  forget, retain = (x[:10], y[:10]), (x[10:], y[10:])
  config = RelearnConfig(steps=8, intervals=4, lr=0.5, momentum=momentum,
                         weight_decay=weight_decay, batch_size=64)   # batch >= |D_r|: all of it
  result = relearn.relearn(apply, params, {}, forget=forget, retain=retain, config=config)
  path = _numpy_sgd(params, *retain, lr=0.5, momentum=momentum, weight_decay=weight_decay,
                    steps=8)
  np.testing.assert_allclose(result.params["w"], path[-1][0], rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(result.params["b"], path[-1][1], rtol=2e-5, atol=2e-6)
  assert result.steps.tolist() == [0, 2, 4, 6, 8]
  assert result.forget_acc.tolist() == pytest.approx(
      [_numpy_acc(path[s], *forget) for s in result.steps], abs=1e-9)
  assert result.retain_acc.tolist() == pytest.approx(
      [_numpy_acc(path[s], *retain) for s in result.steps], abs=1e-9)
  assert result.test_acc is None and result.F is None and result.relearn_examples == 30
  assert not np.allclose(path[-1][0], params["w"])      # it did move


def test_the_forget_subset_is_relearned_and_the_rest_is_read():
  x, y, params, apply = _linear_problem(n=60, seed=1)
  forget, retain = (x[:20], y[:20]), (x[20:], y[20:])
  config = RelearnConfig(steps=4, intervals=2, lr=0.5, momentum=0.0, source="forget",
                         forget_examples=5)
  result = relearn.relearn(apply, params, {}, forget=forget, retain=retain, config=config,
                           seed=7)
  used, held = relearn.forget_subset(20, 5, 7)
  assert result.forget_indices == tuple(used.tolist()) and len(used) == 5
  assert sorted(np.r_[used, held].tolist()) == list(range(20))       # a partition of D_f
  expected = np.random.default_rng(7).permutation(20)[:5]
  assert sorted(expected.tolist()) == used.tolist()
  path = _numpy_sgd(params, x[used], y[used], lr=0.5, momentum=0.0, weight_decay=0.0, steps=4)
  np.testing.assert_allclose(result.params["w"], path[-1][0], rtol=2e-5, atol=2e-6)
  assert result.forget_acc.tolist() == pytest.approx(
      [_numpy_acc(path[s], x[held], y[held]) for s in (0, 2, 4)], abs=1e-9)
  assert result.relearn_examples == 5
  assert result.to_dict()["forget_indices"] == used.tolist()


def test_readings_do_not_change_the_trajectory():
  """Step s draws from fold_in(key, s): the batches (here 8 of 30, without replacement) do not
  depend on where the curve is read."""
  x, y, params, apply = _linear_problem()
  forget, retain = (x[:10], y[:10]), (x[10:], y[10:])
  runs = [relearn.relearn(apply, params, {}, forget=forget, retain=retain, seed=3,
                          config=RelearnConfig(steps=12, intervals=k, batch_size=8, lr=0.3))
          for k in (1, 4)]
  np.testing.assert_array_equal(runs[0].params["w"], runs[1].params["w"])
  assert runs[1].steps.tolist() == [0, 3, 6, 9, 12]
  assert runs[0].forget_acc[-1] == runs[1].forget_acc[-1]
  other = relearn.relearn(apply, params, {}, forget=forget, retain=retain, seed=4,
                          config=RelearnConfig(steps=12, intervals=1, batch_size=8, lr=0.3))
  assert not np.array_equal(other.params["w"], runs[0].params["w"])    # the seed draws them


@pytest.mark.parametrize("field, value, message", [
    ("steps", -4, "RelearnConfig.steps: must lie in"),
    ("steps", 10, "RelearnConfig.steps: expected a multiple of intervals = 4"),
    ("steps", 4.0, "RelearnConfig.steps: must be an integer"),
    ("intervals", 0, "RelearnConfig.intervals"),
    ("batch_size", 0, "RelearnConfig.batch_size"),
    ("source", "test", "RelearnConfig.source: 'test' is not one of retain, forget"),
    ("forget_examples", 0, "RelearnConfig.forget_examples"),
    ("lr", 0.0, "RelearnConfig.lr"),
    ("momentum", 1.0, "RelearnConfig.momentum"),
    ("schedule_unit", "epoch", "RelearnConfig.schedule_unit: relearning counts steps"),
])
def test_bad_config_values_name_the_field(field, value, message):
  with pytest.raises(InvalidArgument, match=message):
    RelearnConfig(**{field: value})


def test_bad_calls_name_the_argument():
  x, y, params, apply = _linear_problem()
  forget, retain = (x[:10], y[:10]), (x[10:], y[10:])
  with pytest.raises(InvalidArgument, match="retain: source='retain' relearns on D_r"):
    relearn.relearn(apply, params, {}, forget=forget)
  with pytest.raises(InvalidArgument, match="forget_examples: expected fewer than the 10"):
    relearn.relearn(apply, params, {}, forget=forget,
                    config=RelearnConfig(source="forget", forget_examples=10))
  with pytest.raises(InvalidArgument, match="config: expected a RelearnConfig"):
    relearn.relearn(apply, params, {}, forget=forget, retain=retain, config={"steps": 4})
  with pytest.raises(InvalidArgument, match="forget: expected an"):
    relearn.relearn(apply, params, {}, forget=x, retain=retain)
  pop = population.Population.of([(params, {})] * 3, [0, 1, 2])
  with pytest.raises(InvalidArgument, match="tested: expected a Population of at least 4"):
    relearn.relearn_population(apply, pop, pop, forget=forget, retain=retain)


def test_a_diverging_relearn_stops_with_the_steps_and_the_lr():
  from mcu_jax.errors import NonFiniteError
  x, y, params, apply = _linear_problem()
  with pytest.raises(NonFiniteError, match=r"steps 1..4 of 8 \(likely cause: lr = 1e\+30"):
    relearn.relearn(apply, params, {}, forget=(x[:10], y[:10]), retain=(x[10:] * 1e20, y[10:]),
                    config=RelearnConfig(steps=8, intervals=2, lr=1e30, momentum=0.0))


def _mlp_population(seeds):
  apply = models.from_function(lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"])
  members = [({"w1": jax.random.normal(jax.random.PRNGKey(s), (3, 8)),
               "w2": 0.5 * jax.random.normal(jax.random.PRNGKey(s + 100), (8, 3))}, {})
             for s in seeds]
  return apply, members


def test_a_population_relearns_every_member_and_scores_it_against_the_reference():
  """4 + 4 tiny MLPs, full-batch steps (no randomness): every member equals ``relearn`` of it
  alone, and F and the AUC at every reading equal ``forget_quality``'s on their logits."""
  x, y, _, _ = _linear_problem(n=50, seed=2)
  forget, retain = (x[:12], y[:12]), (x[12:], y[12:])
  apply, tested = _mlp_population((0, 1, 2, 3))
  _, reference = _mlp_population((10, 11, 12, 13))
  config = RelearnConfig(steps=6, intervals=2, lr=0.3, batch_size=64)
  result = relearn.relearn_population(
      apply, population.Population.of(tested, [0, 1, 2, 3]),
      population.Population.of(reference, [10, 11, 12, 13]), forget=forget, retain=retain,
      config=config, splits=3, vectorize=False)
  programs: dict = {}
  solo = {name: [[relearn.relearn(apply, p, {}, forget=forget, retain=retain,
                                  config=RelearnConfig(steps=s, intervals=1, lr=0.3,
                                                       batch_size=64), programs=programs).params
                  for p, _ in members] for s in (0, 6)]
          for name, members in (("tested", tested), ("reference", reference))}
  tol = dict(rel=1e-6, abs=1e-6)
  for r, step in ((0, 0), (2, 6)):
    logits = {name: np.stack([evaluate.predict_logits(apply, p, {}, forget[0])
                              for p in solo[name][r // 2]]) for name in solo}
    accs = {name: 100.0 * np.mean(np.argmax(v, -1) == forget[1]) for name, v in logits.items()}
    assert result.forget_acc[r] == pytest.approx(accs["tested"], **tol), step
    assert result.reference.forget_acc[r] == pytest.approx(accs["reference"], **tol), step
    confs = {name: logit_scaled_confidence(v, forget[1]) for name, v in logits.items()}
    assert result.F[r] == pytest.approx(
        forget_score(confs["tested"], confs["reference"]).score, abs=1e-9), step
    assert result.lira_auc[r] == pytest.approx(model_level.lira_splits(
        confs["tested"], confs["reference"], splits=3, seed=0).mean, abs=1e-6), step
  assert result.steps.tolist() == [0, 3, 6] and result.reference.F is None
  out = result.to_dict()
  assert out["reference"]["forget_acc"] == result.reference.forget_acc.tolist()
  again = relearn.RelearnResult.from_dict(out)
  np.testing.assert_array_equal(again.lira_auc, result.lira_auc)
  assert again.rebound == result.rebound
  vmapped = relearn.relearn_population(     # the other driver: the same, to float tolerance
      apply, population.Population.of(tested, [0, 1, 2, 3]),
      population.Population.of(reference, [10, 11, 12, 13]), forget=forget, retain=retain,
      config=config, splits=3, vectorize=True)
  np.testing.assert_allclose(vmapped.forget_acc, result.forget_acc)
  np.testing.assert_allclose(vmapped.retain_acc, result.retain_acc)
  np.testing.assert_allclose(vmapped.lira_auc, result.lira_auc, atol=1e-6)


def test_digits_relearning_brings_a_suppressed_class_back(digits_original):
  """Class-3 forgetting on digits. theta_o after gradient ascent on D_f until FA < 10 % (a
  shallow, destructive unlearning: FA 0, RA ~47): 100 steps on D_r, which holds no 3, lift FA
  to ~67 % at K/4 (then it fades to ~27 %); 100 steps on 32 examples of class 3 bring the
  held-out 3s to 100 %, while every other class collapses into 3 (RA 0): that attack's price
  at the defaults, which the readings show."""
  tt, _, apply, state = digits_original
  y = tt.train.labels
  forget = (tt.train.images[y == 3], y[y == 3])
  retain = (tt.train.images[y != 3], y[y != 3])
  test = (tt.test.images[tt.test.labels != 3], tt.test.labels[tt.test.labels != 3])
  shallow = _suppress(apply, state, forget)
  kw = dict(forget=forget, retain=retain, test=test, preprocess=normalize_uint8, seed=0)
  on_retain = relearn.relearn(apply, *shallow, config=RelearnConfig(), **kw)
  attacked = relearn.relearn(apply, *shallow, config=RelearnConfig(source="forget"), **kw)
  print(f"\nshallow: FA {on_retain.forget_acc.round(1).tolist()} RA "
        f"{on_retain.retain_acc.round(1).tolist()} TA {on_retain.test_acc.round(1).tolist()} "
        f"(D_r); FA {attacked.forget_acc.round(1).tolist()} RA "
        f"{attacked.retain_acc.round(1).tolist()} (32 of D_f); {on_retain.seconds:.2f} s + "
        f"{on_retain.compile_seconds:.2f} s compile")
  assert on_retain.forget_acc[0] < 10.0 and np.max(on_retain.forget_acc) > 40.0
  assert on_retain.retain_acc[-1] > 90.0 and on_retain.test_acc[-1] > 85.0
  assert attacked.forget_acc[0] < 10.0 and attacked.forget_acc[-1] > 90.0
  assert attacked.retain_acc[-1] < 10.0


def _suppress(apply, state, forget):
  """theta_o after gradient ascent on D_f until its forget accuracy is below 10 %: a shallow
  unlearning (a few steps, the weights barely move)."""
  import optax

  from mcu_jax.core import objectives
  from mcu_jax.models.adapters import forward
  params, model_state = state.params, state.model_state
  images = normalize_uint8(None, jnp.asarray(forget[0]))
  labels = jnp.asarray(forget[1])

  @jax.jit
  def ascend(params):
    def loss(p):
      logits, _ = forward(apply, p, model_state, images, False)
      return -jnp.mean(objectives.cross_entropy(logits, labels))
    grads = jax.grad(loss)(params)
    return optax.apply_updates(params, jax.tree.map(lambda g: -0.05 * g, grads))
  for _ in range(100):
    acc = evaluate.accuracy_and_loss(apply, params, model_state, *forget,
                                     preprocess=normalize_uint8)[0]
    if acc < 10.0:
      break
    params = ascend(params)
  return params, model_state
