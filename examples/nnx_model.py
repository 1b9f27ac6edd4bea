"""MCU on a Flax NNX model with BatchNorm, on float digit features, forgetting digit 3."""
import jax.numpy as jnp
import optax
from flax import nnx

import mcu_jax
from mcu_jax.data import load_digits


class Net(nnx.Module):
  def __init__(self, rngs):
    self.hidden, self.bn = nnx.Linear(64, 64, rngs=rngs), nnx.BatchNorm(64, rngs=rngs)
    self.out = nnx.Linear(64, 10, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.bn(self.hidden(x))))


def train(model, x, y, steps, lr):  # the user's own loop: full-batch SGD
  opt = nnx.Optimizer(model, optax.sgd(lr, momentum=0.9), wrt=nnx.Param)
  loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
  step = nnx.jit(lambda model, opt: opt.update(model, nnx.grad(loss)(model)))
  model.train()
  for _ in range(steps):
    step(model, opt)


digits = load_digits()
x, y = jnp.asarray(digits.train.images.reshape(-1, 64) / 255.0), digits.train.labels
forget = y == 3
model = Net(nnx.Rngs(0))
train(model, x, y, 200, 0.3)
apply, theta_o, model_state = mcu_jax.models.from_nnx(model)     # theta_o's params and stats
train(model, x, jnp.where(forget, (y + 1) % 10, y), 30, 0.05)  # base method: relabel D_f
_, theta_p, _ = mcu_jax.models.from_nnx(model)

xt, yt = digits.test.images.reshape(-1, 64) / 255.0, digits.test.labels
result = mcu_jax.unlearn_curve(apply, theta_o, theta_p, model_state=model_state,
                               forget=(x[forget], y[forget]), retain=(x[~forget], y[~forget]),
                               test=(xt[yt != 3], yt[yt != 3]), scenario="class")
unlearned = mcu_jax.models.to_nnx(apply, result.params, result.model_state)    # back to NNX
print(f"t = {result.t:.3f}", {k: round(v, 2) for k, v in result.metrics.items()})
