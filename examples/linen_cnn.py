"""MCU on a Flax Linen CNN with BatchNorm, on uint8 digit images, forgetting digit 3."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import mcu_jax
from mcu_jax.data import load_digits


class CNN(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(16, (3, 3))(x)))
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


def train(model, variables, x, y, steps, lr):  # the user's own loop: full-batch SGD
  tx = optax.sgd(lr, momentum=0.9)

  @jax.jit
  def step(variables, opt_state):
    def loss(params):
      logits, state = model.apply({**variables, "params": params}, x, train=True,
                                  mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), state
    grads, state = jax.grad(loss, has_aux=True)(variables["params"])
    updates, opt_state = tx.update(grads, opt_state)
    return {"params": optax.apply_updates(variables["params"], updates), **state}, opt_state
  opt_state = tx.init(variables["params"])
  for _ in range(steps):
    variables, opt_state = step(variables, opt_state)
  return variables


digits = load_digits()
x, y, forget = digits.train.images, digits.train.labels, digits.train.labels == 3  # uint8
xt, yt = digits.test.images, digits.test.labels
model = CNN()
original = train(model, model.init(jax.random.PRNGKey(0), x[:1] / 255.0, train=False),
                 x / 255.0, y, 200, 0.5)
wrong = jnp.where(forget, (y + 1) % 10, y)          # the user's base method: relabel D_f
pre_unlearned = train(model, original, x / 255.0, wrong, 30, 0.1)

result = mcu_jax.unlearn_curve(
    mcu_jax.models.from_linen(model), original["params"], pre_unlearned["params"],
    model_state={"batch_stats": original["batch_stats"]}, scenario="class",
    forget=(x[forget], y[forget]), retain=(x[~forget], y[~forget]),
    test=(xt[yt != 3], yt[yt != 3]), preprocess=mcu_jax.preprocess.images)  # uint8 / 255
print(f"t = {result.t:.3f}", {k: round(v, 2) for k, v in result.metrics.items()})
