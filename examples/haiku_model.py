"""MCU on a Haiku model with BatchNorm and dropout, on float digit features, forgetting digit 3."""
import haiku as hk
import jax
import jax.numpy as jnp
import optax

import mcu_jax
from mcu_jax.data import load_digits


def net(x, is_training):
  x = jax.nn.relu(hk.BatchNorm(True, True, decay_rate=0.99)(hk.Linear(64)(x), is_training))
  if is_training:
    x = hk.dropout(hk.next_rng_key(), 0.2, x)
  return hk.Linear(10)(x)


def train(model, params, state, x, y, steps, lr):  # the user's own loop: full-batch SGD
  tx = optax.sgd(lr, momentum=0.9)

  @jax.jit
  def step(params, state, opt_state, key):
    def loss(p):
      logits, new_state = model.apply(p, state, key, x, True)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_state
    grads, state = jax.grad(loss, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), state, opt_state
  opt_state = tx.init(params)
  for key in jax.random.split(jax.random.key(1), steps):
    params, state, opt_state = step(params, state, opt_state, key)
  return params, state


digits = load_digits()
x, y = jnp.asarray(digits.train.images.reshape(-1, 64) / 255.0), digits.train.labels
xt, yt = digits.test.images.reshape(-1, 64) / 255.0, digits.test.labels
forget = y == 3
model = hk.transform_with_state(net)
params, state = model.init(jax.random.key(0), x[:2], True)
theta_o, state_o = train(model, params, state, x, y, 200, 0.3)
wrong = jnp.where(forget, (y + 1) % 10, y)          # the user's base method: relabel D_f
theta_p, _ = train(model, theta_o, state_o, x, wrong, 30, 0.05)

result = mcu_jax.unlearn_curve(mcu_jax.models.from_haiku(model), theta_o, theta_p,
                               model_state=state_o, scenario="class",
                               forget=(x[forget], y[forget]), retain=(x[~forget], y[~forget]),
                               test=(xt[yt != 3], yt[yt != 3]))
print(f"t = {result.t:.3f}", {k: round(v, 2) for k, v in result.metrics.items()})
