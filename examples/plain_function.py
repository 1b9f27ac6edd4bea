"""MCU on a plain JAX function: a two-layer MLP over float features, forgetting digit 3."""
import jax
import jax.numpy as jnp
import optax

import mcu_jax
from mcu_jax.data import load_digits


def mlp(params, x):
  return jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def train(params, x, y, steps, lr=0.5):  # the user's own loop: full-batch SGD
  tx = optax.sgd(lr, momentum=0.9)
  loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(mlp(p, x), y).mean()
  step = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p), s))
  state = tx.init(params)
  for _ in range(steps):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
  return params


digits = load_digits()
x, y = digits.train.images.reshape(-1, 64) / 255.0, digits.train.labels   # float features
xt, yt = digits.test.images.reshape(-1, 64) / 255.0, digits.test.labels
k1, k2 = jax.random.split(jax.random.PRNGKey(0))
init = {"w1": 0.2 * jax.random.normal(k1, (64, 64)), "b1": jnp.zeros(64),
        "w2": 0.2 * jax.random.normal(k2, (64, 10)), "b2": jnp.zeros(10)}
forget = y == 3
theta_o = train(init, x, y, 300)
wrong = jnp.where(forget, (y + 1) % 10, y)          # the user's base method: relabel D_f
theta_p = train(theta_o, x, wrong, 30, lr=0.2)

result = mcu_jax.unlearn_curve(mcu_jax.models.from_function(mlp), theta_o, theta_p,
                               forget=(x[forget], y[forget]), retain=(x[~forget], y[~forget]),
                               test=(xt[yt != 3], yt[yt != 3]), scenario="class")
print(f"t = {result.t:.3f}", {k: round(v, 2) for k, v in result.metrics.items()})
