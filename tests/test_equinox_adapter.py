"""from_equinox / to_equinox: an Equinox model as an Apply (vmapped, keyed, inference mode)."""
import jax
import numpy as np
import pytest

eqx = pytest.importorskip("equinox", reason="equinox is not installed "
                          "(pip install -e '.[equinox]')")

from mcu_jax import models  # noqa: E402
from mcu_jax.errors import InvalidArgument  # noqa: E402

X = np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32)


class Stateful(eqx.Module):
  lin: eqx.nn.Linear
  bn: eqx.nn.BatchNorm

  def __init__(self, key):
    self.lin, self.bn = eqx.nn.Linear(5, 3, key=key), eqx.nn.BatchNorm(3, "batch", mode="batch")

  def __call__(self, x, state, *, key=None):
    return self.bn(self.lin(x), state)


class NoKey(eqx.Module):
  lin: eqx.nn.Linear

  def __call__(self, x):
    return self.lin(x)


def test_round_trip_and_batched_calls():
  model, state = eqx.nn.make_with_state(Stateful)(jax.random.key(0))
  apply, params, model_state = models.from_equinox(model, state)
  assert model_state is state
  assert jax.tree.leaves(params) == jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))
  logits, new_state = apply(params, model_state, X, True, rng=jax.random.PRNGKey(0))
  want, want_state = jax.vmap(model, axis_name="batch", in_axes=(0, None),
                              out_axes=(0, None))(X, state)
  np.testing.assert_allclose(logits, want, rtol=1e-6)
  assert int(new_state.get(model.bn.batch_counter)) == 1
  inference = eqx.nn.inference_mode(model)
  out, _ = apply(params, new_state, X, False)
  np.testing.assert_allclose(out, jax.vmap(inference, axis_name="batch", in_axes=(0, None),
                                           out_axes=(0, None))(X, new_state)[0], rtol=1e-6)
  back, back_state = models.to_equinox(apply, params, new_state)
  assert back_state is new_state
  assert jax.tree.leaves(eqx.filter(back, eqx.is_array)) == jax.tree.leaves(
      eqx.filter(model, eqx.is_array))
  # The State can be given to apply any number of times (Equinox invalidates a used one).
  apply(params, model_state, X, True, rng=jax.random.PRNGKey(1))
  apply(params, model_state, X, True, rng=jax.random.PRNGKey(1))


def test_stateless_model_without_a_key_argument():
  model = NoKey(eqx.nn.Linear(5, 3, key=jax.random.key(0)))
  apply, params, state = models.from_equinox(model)
  assert state == {} and not apply.takes_key
  out, _ = apply(params, {}, X, True, rng=jax.random.PRNGKey(0))
  np.testing.assert_allclose(out, jax.vmap(model)(X), rtol=1e-6)
  assert models.to_equinox(apply, params) is not None


def test_bad_input_is_refused():
  model, state = eqx.nn.make_with_state(Stateful)(jax.random.key(0))
  with pytest.raises(InvalidArgument, match="state: the model keeps state"):
    models.from_equinox(model)
  with pytest.raises(InvalidArgument, match="state: expected an eqx.nn.State"):
    models.from_equinox(model, {"bn": 1})
  with pytest.raises(InvalidArgument, match="model: expected an equinox.Module"):
    models.from_equinox(lambda x: x)
  apply, params, _ = models.from_equinox(model, state)
  with pytest.raises(InvalidArgument, match="model_state: expected the eqx.nn.State"):
    apply(params, {}, X, True)
  with pytest.raises(InvalidArgument, match="apply: expected the apply of from_equinox"):
    models.to_equinox(models.from_function(lambda p, x: x), params)
