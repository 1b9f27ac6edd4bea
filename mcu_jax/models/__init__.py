"""Models: the zoo of Flax Linen modules looked up by name, and the adapters from any JAX model.

The library's model convention is ``Apply`` (``apply(params, model_state, inputs, train,
rng=None) -> (logits, new_model_state)``, see ``mcu_jax.models.adapters``). One adapter per
JAX model library makes one, and declares what its state's BatchNorm statistics mean
(``mcu_jax.models.running_stats``): ``from_function`` (a plain function), ``from_linen``,
``from_nnx`` (and ``to_nnx``), ``from_haiku``, ``from_equinox`` (and ``to_equinox``).
``with_running_stats`` declares the statistics of an apply of one's own.
``get_model(name, num_classes)`` builds a registered module, ``init_model`` its variables.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mcu_jax.errors import InvalidArgument
from mcu_jax.models.adapters import (
  COMPUTE_DTYPES,
  Apply,
  CastApply,
  FunctionApply,
  check_model_state,
  compute_dtype,
  forward,
  from_function,
  with_precision,
  with_running_stats,
)
from mcu_jax.models.equinox_adapter import EquinoxApply, from_equinox, to_equinox
from mcu_jax.models.haiku_adapter import HaikuApply, from_haiku
from mcu_jax.models.linen_adapter import LinenApply, from_linen
from mcu_jax.models.nnx_adapter import NnxApply, from_nnx, to_nnx
from mcu_jax.models.preresnet import PreResNet20, PreResNet56, PreResNet110, PreResNet164
from mcu_jax.models.resnet import ResNet18
from mcu_jax.models.running_stats import RunningStats, StatsLayout
from mcu_jax.models.small import MLP, SmallCNN
from mcu_jax.models.vgg import VGG16BN
from mcu_jax.models.vit import ViT
from mcu_jax.typing import PyTree

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "mlp": MLP,
    "resnet18": ResNet18,
    "preresnet20": PreResNet20,
    "preresnet56": PreResNet56,
    "preresnet110": PreResNet110,
    "preresnet164": PreResNet164,
    "vgg16_bn": VGG16BN,
    "vit_tiny": ViT,
}


def register(name: str, constructor: Callable[..., nn.Module]) -> None:
  """Adds a model constructor ``constructor(num_classes=..., **kwargs) -> nn.Module``."""
  _REGISTRY[name] = constructor


def model_names() -> list[str]:
  return sorted(_REGISTRY)


def get_model(name: str, num_classes: int, **kwargs) -> nn.Module:
  """The Flax module registered as ``name``; unknown names raise, listing the known ones."""
  if name not in _REGISTRY:
    raise InvalidArgument(f"unknown model {name!r}; known models: {', '.join(model_names())}")
  if not isinstance(num_classes, int) or num_classes < 2:
    raise InvalidArgument(f"num_classes must be an integer >= 2, got {num_classes!r}")
  return _REGISTRY[name](num_classes=num_classes, **kwargs)


@functools.lru_cache(maxsize=32)
def _jitted_init(module: nn.Module, input_shape: tuple[int, ...]):
  return jax.jit(lambda r: module.init(r, jnp.zeros(input_shape, jnp.float32), train=False))


def init_model(module: nn.Module, rng: jax.Array, input_shape: tuple[int, ...]
               ) -> tuple[PyTree, PyTree]:
  """(params, state) of ``module`` for NHWC inputs of ``input_shape`` (batch axis included).
  The jitted initialiser is kept per (module, shape): many seeds compile it once."""
  variables = _jitted_init(module, tuple(int(d) for d in input_shape))(rng)
  variables = dict(variables)
  params = variables.pop("params")
  return params, variables


def param_count(params: PyTree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))


__all__ = [
    "Apply", "forward", "from_function", "from_linen", "from_nnx", "to_nnx", "from_haiku",
    "from_equinox", "to_equinox", "with_running_stats", "RunningStats", "StatsLayout",
    "with_precision", "check_model_state", "compute_dtype", "COMPUTE_DTYPES", "FunctionApply",
    "LinenApply", "NnxApply", "HaikuApply", "EquinoxApply", "CastApply", "register",
    "model_names", "get_model", "init_model",
    "param_count", "MLP", "SmallCNN", "ResNet18", "PreResNet20", "PreResNet56", "PreResNet110",
    "PreResNet164", "VGG16BN", "ViT",
]
