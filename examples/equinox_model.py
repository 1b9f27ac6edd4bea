"""MCU on an Equinox model with BatchNorm and dropout, on float digit features, forgetting 3."""
import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import mcu_jax
from mcu_jax.data import load_digits


class Net(eqx.Module):
  hidden: eqx.nn.Linear
  bn: eqx.nn.BatchNorm
  drop: eqx.nn.Dropout
  out: eqx.nn.Linear

  def __init__(self, key):
    k1, k2 = jax.random.split(key)
    self.hidden, self.out = eqx.nn.Linear(64, 64, key=k1), eqx.nn.Linear(64, 10, key=k2)
    self.bn, self.drop = eqx.nn.BatchNorm(64, "batch", mode="batch"), eqx.nn.Dropout(0.2)

  def __call__(self, x, state, *, key=None):     # one example; BatchNorm syncs over "batch"
    x, state = self.bn(self.hidden(x), state)
    return self.out(self.drop(jax.nn.relu(x), key=key)), state


def train(model, state, x, y, steps, lr):  # the user's own loop: full-batch SGD
  tx = optax.sgd(lr, momentum=0.9)
  params, static = eqx.partition(model, eqx.is_inexact_array)

  @jax.jit
  def step(params, state, opt_state, key):
    def loss(p):
      one = lambda xi, s, k: eqx.combine(p, static)(xi, s, key=k)
      forward = jax.vmap(one, axis_name="batch", in_axes=(0, None, 0), out_axes=(0, None))
      logits, new_state = forward(x, state, jax.random.split(key, x.shape[0]))
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_state
    grads, state = jax.grad(loss, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), state, opt_state
  opt_state = tx.init(params)
  for key in jax.random.split(jax.random.key(1), steps):
    params, state, opt_state = step(params, state, opt_state, key)
  return eqx.combine(params, static), state


digits = load_digits()
x, y = jnp.asarray(digits.train.images.reshape(-1, 64) / 255.0), digits.train.labels
xt, yt = digits.test.images.reshape(-1, 64) / 255.0, digits.test.labels
forget = y == 3
model, state = eqx.nn.make_with_state(Net)(jax.random.key(0))
original, state_o = train(model, state, x, y, 200, 0.3)
wrong = jnp.where(forget, (y + 1) % 10, y)          # the user's base method: relabel D_f
pre_unlearned, _ = train(original, state_o, x, wrong, 30, 0.05)

apply, theta_o, model_state = mcu_jax.models.from_equinox(original, state_o)
_, theta_p, _ = mcu_jax.models.from_equinox(pre_unlearned, state_o)
result = mcu_jax.unlearn_curve(apply, theta_o, theta_p, model_state=model_state,
                               scenario="class", forget=(x[forget], y[forget]),
                               retain=(x[~forget], y[~forget]), test=(xt[yt != 3], yt[yt != 3]))
unlearned, unlearned_state = mcu_jax.models.to_equinox(apply, result.params, result.model_state)
print(f"t = {result.t:.3f}", {k: round(v, 2) for k, v in result.metrics.items()})
