"""Flax models, looked up by name, and the adapter to the library's apply convention.

Every function in mcu_jax that runs a model takes ``apply(params, state, x, train) ->
(logits, new_state)``, where ``state`` holds the non-trainable collections (``batch_stats``)
and is ``{}`` for models without any. ``make_apply`` builds it from a Flax module whose
``__call__`` takes ``train: bool``.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mcu_jax.models.preresnet import PreResNet20, PreResNet56, PreResNet110, PreResNet164
from mcu_jax.models.resnet import ResNet18
from mcu_jax.models.small import MLP, SmallCNN
from mcu_jax.models.vgg import VGG16BN

PyTree = Any
Apply = Callable[[PyTree, PyTree, jax.Array, bool], tuple[jax.Array, PyTree]]

# Precision names -> the modules' computation dtype; parameters stay float32 either way.
COMPUTE_DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "mlp": MLP,
    "resnet18": ResNet18,
    "preresnet20": PreResNet20,
    "preresnet56": PreResNet56,
    "preresnet110": PreResNet110,
    "preresnet164": PreResNet164,
    "vgg16_bn": VGG16BN,
}


def register(name: str, constructor: Callable[..., nn.Module]) -> None:
  """Adds a model constructor ``constructor(num_classes=..., **kwargs) -> nn.Module``."""
  _REGISTRY[name] = constructor


def model_names() -> list[str]:
  return sorted(_REGISTRY)


def get_model(name: str, num_classes: int, **kwargs) -> nn.Module:
  """The Flax module registered as ``name``; unknown names raise, listing the known ones."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(model_names())}")
  if not isinstance(num_classes, int) or num_classes < 2:
    raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
  return _REGISTRY[name](num_classes=num_classes, **kwargs)


def compute_dtype(precision: str):
  """The computation dtype of a precision name ("fp32", "bf16"); unknown names raise."""
  if precision not in COMPUTE_DTYPES:
    raise ValueError(f"unknown precision {precision!r}; use {' or '.join(COMPUTE_DTYPES)}")
  return COMPUTE_DTYPES[precision]


def make_apply(module: nn.Module) -> Apply:
  """``apply(params, state, x, train) -> (logits, new_state)`` for a Flax module.

  In training mode the mutable collections in ``state`` (BatchNorm's running statistics) are
  updated and returned; in inference mode ``state`` comes back unchanged.
  """
  def apply(params, state, x, train):
    variables = {"params": params, **state}
    if train and state:
      logits, updates = module.apply(variables, x, train=True, mutable=list(state))
      return logits, {**state, **updates}
    return module.apply(variables, x, train=train), state
  return apply


def init_model(module: nn.Module, rng: jax.Array, input_shape: tuple[int, ...]
               ) -> tuple[PyTree, PyTree]:
  """(params, state) of ``module`` for NHWC inputs of ``input_shape`` (batch axis included)."""
  variables = jax.jit(lambda r: module.init(r, jnp.zeros(input_shape, jnp.float32),
                                            train=False))(rng)
  variables = dict(variables)
  params = variables.pop("params")
  return params, variables


def param_count(params: PyTree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))
