"""The model adapters: one apply convention from plain functions, Linen and NNX models."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mcu_jax import models
from mcu_jax.errors import InvalidArgument

X = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)


class WithTrain(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    h = nn.BatchNorm(use_running_average=not train, momentum=0.5)(nn.Dense(4)(x))
    return nn.Dense(3)(nn.relu(h))


class NoTrain(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(x)


class Training(nn.Module):
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, training=False):
    return nn.Dense(3, dtype=self.dtype)(x)


def test_from_function_is_stateless_and_hashable():
  fn = lambda p, x: x @ p
  apply = models.from_function(fn)
  w = np.ones((5, 3), np.float32)
  logits, state = apply(w, {}, X, True)
  np.testing.assert_allclose(logits, X @ w, rtol=1e-6)
  assert state == {}
  assert apply == models.from_function(fn) and hash(apply) == hash(models.from_function(fn))
  with pytest.raises(InvalidArgument, match="model_state: from_function models have no state"):
    apply(w, {"batch_stats": {"m": jnp.zeros(3)}}, X, False)
  with pytest.raises(InvalidArgument, match="fn: expected a callable"):
    models.from_function(3)


def test_from_linen_with_batch_stats_updates_them_in_training_only():
  module = WithTrain()
  variables = module.init(jax.random.PRNGKey(0), X, train=False)
  params, state = variables["params"], {"batch_stats": variables["batch_stats"]}
  apply = models.from_linen(module)
  assert apply.train_arg == "train"
  logits, same = apply(params, state, X, False)
  assert same is state
  want = module.apply(variables, X, train=False)
  np.testing.assert_array_equal(logits, want)
  _, new = apply(params, state, X, True)
  h = np.asarray(X @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"], np.float64)
  np.testing.assert_allclose(new["batch_stats"]["BatchNorm_0"]["mean"], 0.5 * h.mean(0),
                             rtol=1e-5, atol=1e-6)
  assert apply == models.from_linen(WithTrain()) and hash(apply) == hash(models.from_linen(module))


def test_from_linen_without_train_argument_or_state():
  module = NoTrain()
  params = module.init(jax.random.PRNGKey(0), X)["params"]
  apply = models.from_linen(module)
  assert apply.train_arg is None
  for train in (False, True):
    logits, state = apply(params, {}, X, train)
    np.testing.assert_array_equal(logits, module.apply({"params": params}, X))
    assert state == {}
  assert models.from_linen(Training()).train_arg == "training"
  with pytest.raises(InvalidArgument, match="train_arg: NoTrain.__call__ has no argument 'train'"):
    models.from_linen(module, train_arg="train")
  with pytest.raises(InvalidArgument, match="module: expected a flax.linen.Module"):
    models.from_linen(lambda x: x)


def test_linen_state_of_the_wrong_shape_of_tree_says_what_was_expected():
  module = WithTrain()
  variables = module.init(jax.random.PRNGKey(0), X, train=False)
  apply = models.from_linen(module)
  for wrong in (variables["batch_stats"], {}):
    with pytest.raises(InvalidArgument, match=r"model_state does not fit WithTrain: .*Expected "
                                              r"the module's non-'params' collections"):
      apply(variables["params"], wrong, X, True)
  with pytest.raises(InvalidArgument, match="params go separately"):
    apply(variables["params"], dict(variables), X, False)


class NnxNet(nnx.Module):
  def __init__(self, rngs):
    self.dense = nnx.Linear(5, 4, rngs=rngs)
    self.bn = nnx.BatchNorm(4, momentum=0.5, rngs=rngs)

  def __call__(self, x):
    return self.bn(self.dense(x))


def test_from_nnx_and_back():
  model = NnxNet(nnx.Rngs(0))
  apply, params, state = models.from_nnx(model)
  assert isinstance(params, nnx.State) and set(state) == {"bn"}
  model.eval()
  logits, same = apply(params, state, X, False)
  np.testing.assert_allclose(logits, model(jnp.asarray(X)), rtol=1e-6)
  assert same is state
  _, new = jax.jit(apply, static_argnums=3)(params, state, X, True)   # traceable
  h = np.asarray(model.dense(jnp.asarray(X)), np.float64)
  np.testing.assert_allclose(new["bn"]["mean"][...], 0.5 * h.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(model.bn.mean[...], np.zeros(4))          # the model is untouched
  back = models.to_nnx(apply, params, new)
  np.testing.assert_array_equal(back.bn.mean[...], new["bn"]["mean"][...])
  with pytest.raises(InvalidArgument, match="apply: expected the apply of from_nnx"):
    models.to_nnx(models.from_function(lambda p, x: x), params, new)
  with pytest.raises(InvalidArgument, match="model: expected a flax.nnx.Module"):
    models.from_nnx(WithTrain())


def test_with_precision_computes_in_bfloat16_with_float32_params():
  module = Training()
  params = module.init(jax.random.PRNGKey(0), X)["params"]
  apply = models.from_linen(module)
  assert models.with_precision(apply, "fp32") is apply
  bf16 = models.with_precision(apply, "bf16")
  assert bf16.module.dtype == jnp.bfloat16                     # cloned, not cast
  logits, _ = bf16(params, {}, X, False)
  full, _ = apply(params, {}, X, False)
  assert logits.dtype == jnp.bfloat16 or logits.dtype == jnp.float32
  assert not np.array_equal(np.asarray(logits, np.float32), np.asarray(full))
  np.testing.assert_allclose(np.asarray(logits, np.float32), full, atol=0.05)
  cast = models.with_precision(models.from_function(lambda p, x: x @ p), "bf16")
  assert isinstance(cast, models.CastApply)
  out, _ = cast(np.ones((5, 3), np.float32), {}, X, False)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, X @ np.ones((5, 3)), rtol=2e-2, atol=2e-2)   # bf16 inputs
  assert not np.array_equal(out, (X @ np.ones((5, 3), np.float32)).astype(np.float32))
  with pytest.raises(InvalidArgument, match="precision: expected one of 'fp32', 'bf16'"):
    models.with_precision(apply, "fp16")
  with pytest.raises(InvalidArgument, match=r"needs an apply from a models.from_\* adapter"):
    models.with_precision(lambda p, s, x, t: (x, s), "bf16")


def test_cast_apply_keeps_the_state_dtypes():
  model = NnxNet(nnx.Rngs(0))
  apply, params, state = models.from_nnx(model)
  _, new = models.with_precision(apply, "bf16")(params, state, X, True)
  chex.assert_trees_all_equal_dtypes(new, state)


def test_check_model_state():
  module = WithTrain()
  variables = module.init(jax.random.PRNGKey(0), X, train=False)
  apply = models.from_linen(module)
  state = {"batch_stats": variables["batch_stats"]}
  models.check_model_state(apply, variables["params"], state, X)
  weird = lambda p, s, x, t: (jnp.zeros((x.shape[0], 3)), {"other": jnp.zeros(2)})
  with pytest.raises(InvalidArgument, match="returned a model state of another structure"):
    models.check_model_state(weird, variables["params"], state, X)
  flat = lambda p, s, x, t: (jnp.zeros((3,)), s)
  with pytest.raises(InvalidArgument, match=r"logits of shape \(batch, num_classes\)"):
    models.check_model_state(flat, variables["params"], state, X)


# ---------------------------------------------------------------------------------------------
# Randomness: a fresh key at every training step, derived from the seed; inference without.

import _adapter_models as am  # noqa: E402

from mcu_jax.core.curves import Curve  # noqa: E402
from mcu_jax.runtime import evaluate, mcu  # noqa: E402
from mcu_jax.runtime.optim import OptimConfig  # noqa: E402


def _case(library, dropout):
  if library in ("haiku", "equinox"):
    pytest.importorskip(library, reason=f"{library} is not installed "
                        f"(pip install -e '.[{library}]')")
  return am.build(library, dropout=dropout)


def _stepper(case):
  """``losses(seed)``: the losses of three curve steps on the same batch with theta_o =
  theta_p (t changes nothing) and a learning rate too small to move anything: they differ
  only by the dropout masks. One trainer, so one compilation."""
  curve = Curve.from_endpoints(case.params, case.params)
  trainer = mcu.CurveTrainer(case.apply, curve, optimizer=OptimConfig(lr=1e-12, momentum=0.0),
                             beta=0.0, batch_size=8)
  batch = {"images": jnp.asarray(np.tile(X, (2, 1))[:8]), "labels": jnp.arange(8) % 3,
           "is_forget": jnp.zeros(8, bool)}

  def losses(seed):
    state = trainer.init(case.state, jax.random.PRNGKey(seed))
    out = []
    for _ in range(3):
      state, metrics = trainer.step(state, batch)
      out.append(float(metrics["loss"]))
    return out
  return losses


@pytest.mark.parametrize("library", am.LIBRARIES)
def test_dropout_draws_a_fresh_mask_at_every_step_reproducibly(library):
  case = _case(library, dropout=0.5)
  losses = _stepper(case)
  first = losses(0)
  assert len(set(first)) == 3, first                     # a new key at every step
  assert losses(0) == first                               # the same seed, the same masks
  assert losses(1) != first                               # another seed, other masks
  quiet = _stepper(_case(library, dropout=0.0))(0)
  np.testing.assert_allclose(quiet, quiet[0], rtol=1e-6)  # without dropout: no randomness
  # Inference is deterministic.
  x = np.tile(X, (2, 1))
  a = evaluate.predict_logits(case.apply, case.params, case.state, x)
  b = evaluate.predict_logits(case.apply, case.params, case.state, x)
  np.testing.assert_array_equal(a, b)


def test_from_function_feeds_rng_to_a_function_that_takes_it():
  seen = []

  def noisy(params, x, rng=None):
    seen.append(rng is None)
    if rng is None:
      return x @ params
    return x @ params * jax.random.bernoulli(rng, 0.5, (x.shape[0], 1))
  apply = models.from_function(noisy)
  w = np.ones((5, 3), np.float32)
  train_a, _ = apply(w, {}, X, True, rng=jax.random.PRNGKey(0))
  train_b, _ = apply(w, {}, X, True, rng=jax.random.PRNGKey(1))
  assert not np.array_equal(np.asarray(train_a), np.asarray(train_b))
  np.testing.assert_allclose(apply(w, {}, X, False)[0], X @ w, rtol=1e-6)
  assert seen == [False, False, True]                    # inference: rng=None


class NeedsNoise(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    if train:
      x = x + jax.random.normal(self.make_rng("noise"), x.shape)
    return nn.Dense(3)(x)


def test_linen_rng_streams_other_than_dropout_are_named_or_refused():
  module = NeedsNoise()
  params = module.init(jax.random.key(0), X)["params"]
  with pytest.raises(InvalidArgument, match=r"needs an RNG stream mcu_jax does not feed.*"
                                            r"from_linen\(module, rngs=\(...\)\)"):
    models.from_linen(module)(params, {}, X, True, rng=jax.random.PRNGKey(0))
  apply = models.from_linen(module, rngs=("noise",))
  a, _ = apply(params, {}, X, True, rng=jax.random.PRNGKey(0))
  b, _ = apply(params, {}, X, True, rng=jax.random.PRNGKey(1))
  assert not np.array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(InvalidArgument, match="rngs: expected a tuple"):
    models.from_linen(module, rngs="noise")


def test_nnx_rng_state_stays_keys_through_a_training_step():
  case = am.build("nnx", dropout=0.5)
  _, new_state = case.apply(case.params, case.state, jnp.asarray(X), True,
                            rng=jax.random.PRNGKey(0))
  keys = [x for x in jax.tree.leaves(new_state)
          if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)]
  assert len(keys) == 1
  chex.assert_trees_all_equal_structs(new_state, case.state)
