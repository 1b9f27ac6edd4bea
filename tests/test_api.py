"""``unlearn_curve`` on three kinds of user model, checked against independent computations.

Each user brings a model the library has never seen (a plain function, a Linen CNN with
BatchNorm, an NNX model with BatchNorm), trains theta_o and theta_p with plain optax, and calls
``unlearn_curve`` once. The numbers it reports are recomputed here in NumPy float64.
"""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import mcu_jax
from mcu_jax import data, models
from mcu_jax.core.curves import line_controls
from mcu_jax.errors import InvalidArgument

FORGET_CLASS = 3
FAST = dict(mask=mcu_jax.MaskOptions(k=0.1),                  # k: a partial mask
            curve=mcu_jax.CurveOptions(epochs=2, batch_size=64),
            sweep=mcu_jax.SweepOptions(points=6, batch_size=256, recal_batch_size=64))
LINE = dict(mask=mcu_jax.MaskOptions(enabled=False), curve=mcu_jax.CurveOptions(train=False))


@pytest.fixture(scope="module")
def digits():
  """Float features (N, 64) in [0, 1], uint8 images (N, 8, 8, 1), labels; class 3 forgotten."""
  tt = data.load_digits()
  out = {}
  for name, ds in (("train", tt.train), ("test", tt.test)):
    out[name] = (ds.images, ds.images.reshape(len(ds), -1).astype(np.float32) / 255.0,
                 ds.labels)
  images, features, labels = out["train"]
  forget = labels == FORGET_CLASS
  test_images, test_features, test_labels = out["test"]
  keep = test_labels != FORGET_CLASS
  return {"forget": forget, "images": images, "features": features, "labels": labels,
          "test_images": test_images[keep], "test_features": test_features[keep],
          "test_labels": test_labels[keep]}


def fit(loss_fn, params, steps, lr):
  """Full-batch SGD with momentum, the user's own training loop."""
  tx = optax.sgd(lr, momentum=0.9)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state
  for _ in range(steps):
    params, opt_state = step(params, opt_state)
  return params


def ce(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def sets(digits, inputs, test_inputs):
  f = digits["forget"]
  return dict(forget=(inputs[f], digits["labels"][f]), retain=(inputs[~f], digits["labels"][~f]),
              test=(test_inputs, digits["test_labels"]))


def check_common(result, theta_o, theta_p):
  """Endpoints bit-identical; tensors outside the mask still on the straight line, exactly."""
  chex.assert_trees_all_equal(result.curve.start, theta_o)
  chex.assert_trees_all_equal(result.curve.end, theta_p)
  line = line_controls(theta_o, theta_p, 3)
  flags = jax.tree.leaves(result.mask)
  assert any(flags) and not all(flags)
  for flag, trained, initial in zip(flags, jax.tree.leaves(result.curve.controls),
                                    jax.tree.leaves(line)):
    if flag:
      assert not np.array_equal(trained, initial)
    else:
      np.testing.assert_array_equal(trained, initial)
  assert 0.75 <= result.t <= 1.0 and result.t == result.choice.t
  assert len(result.history) == FAST["curve"].epochs
  assert result.sweep.ts.shape == (FAST["sweep"].points,)


# ----------------------------------------------------------------------------- plain function

def mlp(params, x):
  h = jax.nn.relu(x @ params["w1"] + params["b1"])
  return h @ params["w2"] + params["b2"]


def mlp_np(params, x):
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  h = np.maximum(np.asarray(x, np.float64) @ p["w1"] + p["b1"], 0.0)
  return h @ p["w2"] + p["b2"]


def np_accuracy(logits, labels):
  return 100.0 * np.mean(np.argmax(logits, axis=1) == labels)


def np_ce(logits, labels):
  z = logits - logits.max(axis=1, keepdims=True)
  return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(labels)), labels]))


@pytest.fixture(scope="module")
def function_models(digits):
  x, y, f = digits["features"], digits["labels"], digits["forget"]
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  init = {"w1": jax.random.normal(k1, (64, 32)) * 0.25, "b1": jnp.zeros(32),
          "w2": jax.random.normal(k2, (32, 10)) * 0.25, "b2": jnp.zeros(10)}
  theta_o = fit(lambda p: ce(mlp(p, x), y), init, 200, 0.5)
  # The user's own base method: gradient ascent on D_f mixed with descent on D_r.
  theta_p = fit(lambda p: ce(mlp(p, x[~f]), y[~f]) - 0.05 * ce(mlp(p, x[f]), y[f]), theta_o,
                20, 0.1)
  return theta_o, theta_p


@pytest.fixture(scope="module")
def function_result(digits, function_models):
  theta_o, theta_p = function_models
  apply = models.from_function(mlp)
  return mcu_jax.unlearn_curve(apply, theta_o, theta_p, scenario="class",
                               **sets(digits, digits["features"], digits["test_features"]),
                               **FAST)


def test_function_model_targets_are_theta_o_accuracy(digits, function_models, function_result):
  theta_o, _ = function_models
  train_acc = np_accuracy(mlp_np(theta_o, digits["features"]), digits["labels"])
  assert train_acc > 95.0      # float features: never divided by 255 again
  assert function_result.targets == mcu_jax.Targets(retain=train_acc, forget=0.0)


def test_function_model_metrics_hold_for_the_returned_params(digits, function_models,
                                                             function_result):
  check_common(function_result, *function_models)
  s = sets(digits, digits["features"], digits["test_features"])
  for name, (x, y) in s.items():
    logits = mlp_np(function_result.params, x)
    assert function_result.metrics[f"{name}_acc"] == pytest.approx(np_accuracy(logits, y),
                                                                   abs=1e-9)
    assert function_result.metrics[f"{name}_loss"] == pytest.approx(np_ce(logits, y), rel=1e-4)
  chex.assert_trees_all_close(function_result.params,
                              mcu_jax.point(function_result.curve, function_result.t))
  assert function_result.model_state == {}
  params, state = function_result.at(0.5)
  chex.assert_trees_all_close(params, mcu_jax.point(function_result.curve, 0.5))
  assert state == {}
  assert set(function_result.seconds) == {"mask", "curve", "sweep"}


# ----------------------------------------------------------------------------- Linen with BN

class LinenCNN(nn.Module):
  """A user's Linen CNN: conv-BN-relu, pool, dense."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(8, (3, 3), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    return nn.Dense(10)(jnp.mean(x, axis=(1, 2)))


@pytest.fixture(scope="module")
def linen_result(digits):
  module = LinenCNN()
  x = digits["images"].astype(np.float32) / 255.0
  y, f = digits["labels"], digits["forget"]
  variables = module.init(jax.random.PRNGKey(0), x[:1], train=False)

  def loss(params, inputs, labels, sign=1.0):
    logits, _ = module.apply({"params": params, "batch_stats": variables["batch_stats"]},
                             inputs, train=True, mutable=["batch_stats"])
    return sign * ce(logits, labels)
  theta_o = fit(lambda p: loss(p, x, y), variables["params"], 150, 0.5)
  theta_p = fit(lambda p: loss(p, x[~f], y[~f]) - 0.05 * loss(p, x[f], y[f]), theta_o, 15, 0.1)
  _, state = module.apply({"params": theta_o, "batch_stats": variables["batch_stats"]}, x,
                          train=True, mutable=["batch_stats"])
  result = mcu_jax.unlearn_curve(models.from_linen(module), theta_o, theta_p,
                                 model_state={"batch_stats": state["batch_stats"]},
                                 scenario="class", preprocess=mcu_jax.preprocess.images,
                                 **sets(digits, digits["images"], digits["test_images"]), **FAST)
  return module, theta_o, theta_p, result


def test_linen_model_with_batchnorm(digits, linen_result):
  module, theta_o, theta_p, result = linen_result
  check_common(result, theta_o, theta_p)
  f = digits["forget"]
  retain = digits["images"][~f].astype(np.float64) / 255.0
  # The first BatchNorm's statistics: exact mean and variance of its input over D_r.
  kernel = np.asarray(result.params["Conv_0"]["kernel"], np.float64)
  h = np.asarray(jax.lax.conv_general_dilated(
      jnp.asarray(retain), jnp.asarray(kernel), (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest"), np.float64)
  stats = result.model_state["batch_stats"]["BatchNorm_0"]
  np.testing.assert_allclose(stats["mean"], h.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats["var"], h.var(axis=(0, 1, 2)), rtol=1e-5)
  for name, (x, y) in sets(digits, digits["images"], digits["test_images"]).items():
    logits = module.apply({"params": result.params, **result.model_state},
                          jnp.asarray(x, jnp.float32) / 255.0, train=False)
    assert result.metrics[f"{name}_acc"] == pytest.approx(np_accuracy(np.asarray(logits), y),
                                                          abs=1e-9)


# ----------------------------------------------------------------------------- NNX with BN

class NnxMLP(nnx.Module):
  def __init__(self, rngs):
    self.dense = nnx.Linear(64, 32, rngs=rngs)
    self.bn = nnx.BatchNorm(32, rngs=rngs)
    self.head = nnx.Linear(32, 10, rngs=rngs)

  def __call__(self, x):
    return self.head(nnx.relu(self.bn(self.dense(x))))


@pytest.fixture(scope="module")
def nnx_result(digits):
  x, y, f = digits["features"], digits["labels"], digits["forget"]
  model = NnxMLP(nnx.Rngs(0))
  for inputs, labels, steps, sign in ((x, y, 120, 0.0), (x[~f], y[~f], 15, 0.05)):
    opt = nnx.Optimizer(model, optax.sgd(0.3 if sign == 0 else 0.05, momentum=0.9),
                        wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, sign=sign, inputs=inputs, labels=labels):
      def loss(m):
        out = ce(m(inputs), labels)
        return out - sign * ce(m(x[f]), y[f]) if sign else out
      grads = nnx.grad(loss)(model)
      opt.update(model, grads)
    model.train()
    for _ in range(steps):
      step(model, opt)
    if sign == 0:
      apply, theta_o, model_state = models.from_nnx(model)
  _, theta_p, _ = models.from_nnx(model)
  result = mcu_jax.unlearn_curve(apply, theta_o, theta_p, model_state=model_state,
                                 scenario="class",
                                 **sets(digits, digits["features"], digits["test_features"]),
                                 **FAST)
  return apply, theta_o, theta_p, result


def test_nnx_model_with_batchnorm(digits, nnx_result):
  apply, theta_o, theta_p, result = nnx_result
  check_common(result, theta_o, theta_p)
  retain = digits["features"][~digits["forget"]].astype(np.float64)
  kernel = np.asarray(result.params["dense"]["kernel"][...], np.float64)
  bias = np.asarray(result.params["dense"]["bias"][...], np.float64)
  h = retain @ kernel + bias                       # the first BatchNorm's input
  np.testing.assert_allclose(np.asarray(result.model_state["bn"]["var"][...]), h.var(axis=0),
                             rtol=1e-5)
  model = models.to_nnx(apply, result.params, result.model_state)
  model.eval()
  for name, (x, y) in sets(digits, digits["features"], digits["test_features"]).items():
    assert result.metrics[f"{name}_acc"] == pytest.approx(
        np_accuracy(np.asarray(model(jnp.asarray(x))), y), abs=1e-9)


# ----------------------------------------------------------------------------- bad input

def test_bad_calls_name_the_argument(digits, function_models):
  theta_o, theta_p = function_models
  apply = models.from_function(mlp)
  kw = sets(digits, digits["features"], digits["test_features"])
  with pytest.raises(InvalidArgument, match="theta_o and theta_p differ in shape"):
    mcu_jax.unlearn_curve(apply, theta_o, {**theta_p, "b2": jnp.zeros(3)}, **kw)
  with pytest.raises(InvalidArgument, match="test: random forgetting aims D_f at the original "
                                            "model's test accuracy"):
    mcu_jax.unlearn_curve(apply, theta_o, theta_p, **{**kw, "test": None})
  with pytest.raises(InvalidArgument, match=r"forget labels: expected integers, got 'float64'"):
    mcu_jax.unlearn_curve(apply, theta_o, theta_p,
                          **{**kw, "forget": (kw["forget"][0], kw["forget"][1] * 1.0)})
  with pytest.raises(InvalidArgument, match="retain: expected inputs of shape"):
    mcu_jax.unlearn_curve(apply, theta_o, theta_p,
                          **{**kw, "retain": (kw["retain"][0][:, :10], kw["retain"][1])})
  with pytest.raises(InvalidArgument, match=r"targets: expected mcu_jax.Targets"):
    mcu_jax.unlearn_curve(apply, theta_o, theta_p, targets=(99.0, 90.0), **kw)
  with pytest.raises(InvalidArgument, match="model_state: from_function models have no state"):
    mcu_jax.unlearn_curve(apply, theta_o, theta_p, model_state={"x": jnp.zeros(2)}, **kw)
  with pytest.raises(InvalidArgument, match=r"mask\['w1'\]: expected a Python bool"):
    mcu_jax.unlearn_curve(apply, theta_o, theta_p, mask={**jax.tree.map(lambda _: True, theta_o),
                                                         "w1": jnp.ones(3, bool)}, **kw)


def test_linen_state_convention_is_checked(digits, linen_result):
  module, theta_o, theta_p, result = linen_result
  apply = models.from_linen(module)
  kw = dict(sets(digits, digits["images"], digits["test_images"]),
            preprocess=mcu_jax.preprocess.images)
  with pytest.raises(InvalidArgument, match=r"model_state does not fit LinenCNN.*Expected the "
                                            r"module's non-'params' collections as a dict"):
    mcu_jax.unlearn_curve(apply, theta_o, theta_p,
                          model_state=result.model_state["batch_stats"], **kw)
  with pytest.raises(InvalidArgument, match="params go separately"):
    mcu_jax.unlearn_curve(apply, theta_o, theta_p,
                          model_state={"params": theta_o, **result.model_state}, **kw)



def _no_training(monkeypatch):
  """Makes any mask computation or curve training fail the test: refusals come first."""
  def boom(*args, **kwargs):
    raise AssertionError("training ran before the bad input was refused")
  monkeypatch.setattr(mcu_jax.runtime.masks, "compute_mask", boom)
  monkeypatch.setattr(mcu_jax.runtime.mcu, "train_curve", boom)


@pytest.mark.parametrize("change, match", [
    (lambda kw: {"forget": (kw["forget"][0], np.where(np.arange(len(kw["forget"][1])) == 5, 10,
                                                      kw["forget"][1]))},
     r"forget labels: expected integers in \[0, 10\) \(the model has 10 classes\), got 10 at "
     r"index 5"),
    (lambda kw: {"retain": (kw["retain"][0], np.where(np.arange(len(kw["retain"][1])) == 7, -1,
                                                      kw["retain"][1]))},
     r"retain labels: expected integers in \[0, 10\) .*got -1 at index 7"),
    (lambda kw: {"test": (np.where(np.arange(len(kw["test"][1]))[:, None] == 2, np.nan,
                                   kw["test"][0]), kw["test"][1])},
     "test inputs: expected finite values, got NaN or infinity in example 2"),
])
def test_bad_data_is_refused_before_any_training(digits, function_models, monkeypatch, change,
                                                 match):
  theta_o, theta_p = function_models
  kw = sets(digits, digits["features"], digits["test_features"])
  _no_training(monkeypatch)
  with pytest.raises(InvalidArgument, match=match):
    mcu_jax.unlearn_curve(models.from_function(mlp), theta_o, theta_p, **{**kw, **change(kw)})


def test_non_finite_parameters_and_uint8_are_refused_before_any_training(digits,
                                                                        function_models,
                                                                        monkeypatch):
  theta_o, theta_p = function_models
  kw = sets(digits, digits["features"], digits["test_features"])
  apply = models.from_function(mlp)
  _no_training(monkeypatch)
  with pytest.raises(InvalidArgument, match=r"theta_o: expected finite parameters, got NaN or "
                                            r"infinity in \['b1'\]"):
    mcu_jax.unlearn_curve(apply, {**theta_o, "b1": theta_o["b1"].at[3].set(np.nan)}, theta_p,
                          **kw)
  with pytest.raises(InvalidArgument, match=r"theta_p: expected finite parameters"):
    mcu_jax.unlearn_curve(apply, theta_o, {**theta_p, "w2": theta_p["w2"] * np.inf}, **kw)
  as_uint8 = sets(digits, digits["images"].reshape(-1, 64), digits["test_images"].reshape(-1, 64))
  with pytest.raises(InvalidArgument, match="inputs: uint8 arrays are images to divide by 255 "
                                            "or integer ids"):
    mcu_jax.unlearn_curve(apply, theta_o, theta_p, **as_uint8)


def bag_of_ids(params, ids):
  """A user's model over integer ids (tokens, buckets): an embedding per position, summed,
  then a dense layer."""
  return jnp.sum(params["emb"][jnp.arange(ids.shape[1]), ids], axis=1) @ params["w"]


def test_integer_ids_reach_the_model_unchanged(digits):
  """Digit pixels as ids (17 levels stored as uint8 0..255 by load_digits): uint8 ids with
  preprocess=as_is and int32 ids with the default give the accuracy of the raw ids, in NumPy."""
  rng = np.random.default_rng(0)
  ids = digits["images"].reshape(-1, 64)                        # uint8, (N, 64)
  test_ids = digits["test_images"].reshape(-1, 64)
  y, f = digits["labels"], digits["forget"]
  theta = {"emb": jnp.asarray(rng.normal(size=(64, 256, 4)) * 0.1, jnp.float32),
           "w": jnp.asarray(rng.normal(size=(4, 10)) * 0.1, jnp.float32)}
  theta = fit(lambda p: ce(bag_of_ids(p, ids), y), theta, 100, 0.5)

  def np_logits(params, x):
    emb, w = np.asarray(params["emb"], np.float64), np.asarray(params["w"], np.float64)
    return emb[np.arange(x.shape[1]), np.asarray(x, np.int64)].sum(axis=1) @ w
  kw = dict(targets=mcu_jax.Targets(retain=95.0, forget=0.0), **LINE,
            sweep=mcu_jax.SweepOptions(points=4, t_search=(0.5, 1.0)))
  for inputs, test_inputs, extra in ((ids, test_ids, {"preprocess": mcu_jax.preprocess.as_is}),
                                     (ids.astype(np.int32), test_ids.astype(np.int32), {})):
    data_sets = dict(forget=(inputs[f], y[f]), retain=(inputs[~f], y[~f]),
                     test=(test_inputs, digits["test_labels"]))
    import warnings
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")          # t at the window's bound: not the point here
      result = mcu_jax.unlearn_curve(models.from_function(bag_of_ids), theta, theta, **kw,
                                     **data_sets, **extra)
    for name, (x, labels) in data_sets.items():
      assert result.metrics[f"{name}_acc"] == pytest.approx(
          np_accuracy(np_logits(result.params, x), labels), abs=1e-9)
    assert result.metrics["retain_acc"] > 50.0   # far from chance: the ids were not rescaled


def test_theta_o_near_chance_is_warned_about(digits):
  """A theta_o that does not fit its inputs (here: untrained) makes targets that mean
  nothing: warned about, with the rule's numbers."""
  rng = np.random.default_rng(0)
  theta = {"w1": jnp.asarray(rng.normal(size=(64, 32)) * 0.01, jnp.float32),
           "b1": jnp.zeros(32), "w2": jnp.asarray(rng.normal(size=(32, 10)) * 0.01, jnp.float32),
           "b2": jnp.zeros(10)}
  kw = sets(digits, digits["features"], digits["test_features"])
  with pytest.warns(UserWarning, match=r"theta_o's accuracy on D_f \+ D_r is \d+\.\d %, near "
                                       r"chance \(10\.0 % for 10 classes\)"):
    mcu_jax.unlearn_curve(models.from_function(mlp), theta, theta, **LINE,
                          sweep=mcu_jax.SweepOptions(points=4), scenario="class", **kw)


# ---------------------------------------------------------- every library: BN, dropout, exact

import _adapter_models as am  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("library", am.LIBRARIES)
def test_every_library_with_batchnorm_and_dropout_is_exact(digits, library):
  """theta_o and theta_p of a model with two BatchNorms and dropout in each JAX library;
  the one call's metrics and the returned statistics recomputed in NumPy float64."""
  if library in ("haiku", "equinox"):
    pytest.importorskip(library, reason=f"{library} is not installed")
  from mcu_jax.runtime import train
  case = am.build(library, sizes=(64, 32, 16, 10), dropout=0.2)
  x, y, f = digits["features"], digits["labels"], digits["forget"]
  config = train.FitConfig(lr=0.1, momentum=0.9, epochs=8, batch_size=64)
  original = train.train_model(train.supervised_loss(case.apply), case.params, case.state,
                               {"images": x, "labels": y}, config=config,
                               rng=jax.random.PRNGKey(1)).state
  relabeled = np.where(f, (y + 1) % 10, y)
  pre = train.train_model(train.supervised_loss(case.apply), original.params,
                          original.model_state, {"images": x, "labels": relabeled},
                          config=train.FitConfig(lr=0.05, momentum=0.9, epochs=2, batch_size=64),
                          rng=jax.random.PRNGKey(2)).state
  kw = sets(digits, x, digits["test_features"])
  result = mcu_jax.unlearn_curve(case.apply, original.params, pre.params,
                                 model_state=original.model_state, scenario="class", **kw,
                                 **FAST)
  chex.assert_trees_all_equal(result.curve.start, original.params)
  chex.assert_trees_all_equal(result.curve.end, pre.params)
  line = line_controls(original.params, pre.params, 3)
  for flag, trained, initial in zip(jax.tree.leaves(result.mask),
                                    jax.tree.leaves(result.curve.controls),
                                    jax.tree.leaves(line)):
    if not flag:     # (a trained bias right before a BatchNorm has gradient 0 and stays too)
      np.testing.assert_array_equal(trained, initial)
  weights = case.weights(result.params)
  stats = am.reference_stats(weights, kw["retain"][0], FAST["sweep"].recal_batch_size)
  for (mean, var), (want_mean, want_var) in zip(case.read_stats(result.model_state), stats):
    np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-5 * np.abs(want_mean).max())
    np.testing.assert_allclose(var, want_var, rtol=1e-5)
  for name, (inputs, labels) in kw.items():
    logits = am.reference_logits(weights, stats, inputs)
    assert result.metrics[f"{name}_acc"] == pytest.approx(np_accuracy(logits, labels), abs=1e-9)
    assert result.metrics[f"{name}_loss"] == pytest.approx(np_ce(logits, labels), rel=1e-4)
  assert result.metrics["retain_acc"] > 90.0 and result.metrics["forget_acc"] < 20.0
  assert not result.choice.collapsed


def test_options_of_the_wrong_kind_are_refused_naming_the_argument(digits, function_models,
                                                                  monkeypatch):
  theta_o, theta_p = function_models
  kw = sets(digits, digits["features"], digits["test_features"])
  apply = models.from_function(mlp)
  _no_training(monkeypatch)
  for bad, message in ((dict(mask=False), r"mask: expected MaskOptions or a pytree of bools"),
                       (dict(curve={"epochs": 2}), r"curve: expected a CurveOptions, got dict"),
                       (dict(sweep=mcu_jax.MaskOptions()),
                        r"sweep: expected a SweepOptions, got MaskOptions"),
                       (dict(sweep=mcu_jax.SweepOptions(preprocess=mcu_jax.preprocess.images)),
                        r"sweep.preprocess: unlearn_curve runs every step with its own")):
    with pytest.raises(InvalidArgument, match=message):
      mcu_jax.unlearn_curve(apply, theta_o, theta_p, **kw, **bad)
  with pytest.raises(InvalidArgument, match=r"CurveOptions.epochs"):
    mcu_jax.CurveOptions(epochs=0)


def test_unlearn_curve_takes_the_three_option_types_and_no_flat_copies():
  """Each setting has one owner: no keyword of ``unlearn_curve`` repeats a field of the
  option types, and the steps take the same types."""
  import dataclasses
  import inspect
  params = set(inspect.signature(mcu_jax.unlearn_curve).parameters)
  for kind in (mcu_jax.MaskOptions, mcu_jax.CurveOptions, mcu_jax.SweepOptions):
    fields = {f.name for f in dataclasses.fields(kind)}
    assert not (fields & params) - {"preprocess", "mesh", "progress"}, kind
  for step, kind in ((mcu_jax.compute_mask, mcu_jax.MaskOptions),
                     (mcu_jax.train_curve, mcu_jax.CurveOptions),
                     (mcu_jax.sweep_and_select, mcu_jax.SweepOptions)):
    assert inspect.signature(step).parameters["options"].default == kind()
