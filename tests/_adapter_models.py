"""One small model in every JAX model library, with BatchNorm and dropout, and a float64 NumPy
twin: dense -> BN -> relu -> dense -> BN -> relu -> dropout -> dense.

``build(library, sizes, seed, bn_mode)`` returns a ``Case``: the adapter's apply, params and
model state, ``weights(params)`` (the NumPy arrays of the twin) and ``read_stats(state)`` (the
(mean, var) each BatchNorm's inference reads, per layer). ``reference_stats`` and
``reference_logits`` are the twin: the exact statistics of a training-mode pass in batches, and
the inference-mode logits with given statistics.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import mcu_jax

EPS = 1e-5
LIBRARIES = ("linen", "nnx", "haiku", "equinox")


@dataclasses.dataclass
class Case:
  library: str
  apply: Any
  params: Any
  state: Any
  weights: Callable[[Any], dict]
  read_stats: Callable[[Any], list]


def _np(x):
  return np.asarray(x, np.float64)


def _linen(sizes, seed, dropout, **_):
  import flax.linen as nn

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      for i, width in enumerate(sizes[1:-1]):
        x = nn.Dense(width, name=f"dense{i}")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=EPS,
                         name=f"bn{i}")(x)
        x = nn.relu(x)
      x = nn.Dropout(dropout, deterministic=not train)(x)
      return nn.Dense(sizes[-1], name="head")(x)

  module = Net()
  variables = module.init(jax.random.key(seed), jnp.zeros((2, sizes[0])))
  params, state = variables["params"], {"batch_stats": variables["batch_stats"]}
  layers = len(sizes) - 2

  def weights(p):
    dense = [(_np(p[f"dense{i}"]["kernel"]), _np(p[f"dense{i}"]["bias"])) for i in range(layers)]
    bn = [(_np(p[f"bn{i}"]["scale"]), _np(p[f"bn{i}"]["bias"])) for i in range(layers)]
    return {"dense": dense, "bn": bn, "head": (_np(p["head"]["kernel"]), _np(p["head"]["bias"]))}

  def read_stats(s):
    return [(_np(s["batch_stats"][f"bn{i}"]["mean"]), _np(s["batch_stats"][f"bn{i}"]["var"]))
            for i in range(layers)]
  return Case("linen", mcu_jax.models.from_linen(module), params, state, weights, read_stats)


def _nnx(sizes, seed, dropout, **_):
  from flax import nnx

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.dense = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-2], sizes[1:-1])])
      self.bn = nnx.List([nnx.BatchNorm(b, momentum=0.9, epsilon=EPS, rngs=rngs)
                          for b in sizes[1:-1]])
      self.drop = nnx.Dropout(dropout, rngs=rngs)
      self.head = nnx.Linear(sizes[-2], sizes[-1], rngs=rngs)

    def __call__(self, x):
      for dense, bn in zip(self.dense, self.bn):
        x = nnx.relu(bn(dense(x)))
      return self.head(self.drop(x))

  apply, params, state = mcu_jax.models.from_nnx(Net(nnx.Rngs(seed)))
  layers = len(sizes) - 2

  def weights(p):
    dense = [(_np(p["dense"][i]["kernel"][...]), _np(p["dense"][i]["bias"][...]))
             for i in range(layers)]
    bn = [(_np(p["bn"][i]["scale"][...]), _np(p["bn"][i]["bias"][...])) for i in range(layers)]
    return {"dense": dense, "bn": bn,
            "head": (_np(p["head"]["kernel"][...]), _np(p["head"]["bias"][...]))}

  def read_stats(s):
    return [(_np(s["bn"][i]["mean"][...]), _np(s["bn"][i]["var"][...])) for i in range(layers)]
  return Case("nnx", apply, params, state, weights, read_stats)


def _haiku(sizes, seed, dropout, **_):
  import haiku as hk

  def net(x, is_training):
    for i, width in enumerate(sizes[1:-1]):
      x = hk.Linear(width, name=f"dense{i}")(x)
      x = hk.BatchNorm(True, True, decay_rate=0.99, eps=EPS, name=f"bn{i}")(x, is_training)
      x = jax.nn.relu(x)
    if is_training:
      x = hk.dropout(hk.next_rng_key(), dropout, x)
    return hk.Linear(sizes[-1], name="head")(x)

  transformed = hk.transform_with_state(net)
  params, state = transformed.init(jax.random.key(seed), jnp.zeros((2, sizes[0])), True)
  layers = len(sizes) - 2

  def weights(p):
    dense = [(_np(p[f"dense{i}"]["w"]), _np(p[f"dense{i}"]["b"])) for i in range(layers)]
    bn = [(_np(p[f"bn{i}"]["scale"]).ravel(), _np(p[f"bn{i}"]["offset"]).ravel())
          for i in range(layers)]
    return {"dense": dense, "bn": bn, "head": (_np(p["head"]["w"]), _np(p["head"]["b"]))}

  def read_stats(s):
    return [(_np(s[f"bn{i}/~/mean_ema"]["average"]).ravel(),
             _np(s[f"bn{i}/~/var_ema"]["average"]).ravel()) for i in range(layers)]
  return Case("haiku", mcu_jax.models.from_haiku(transformed), params, state, weights,
              read_stats)


def _equinox(sizes, seed, dropout, bn_mode="batch"):
  import equinox as eqx

  class Net(eqx.Module):
    dense: list
    bn: list
    drop: eqx.nn.Dropout
    head: eqx.nn.Linear

    def __init__(self, key):
      keys = jax.random.split(key, len(sizes))
      self.dense = [eqx.nn.Linear(a, b, key=k) for a, b, k in zip(sizes[:-2], sizes[1:-1], keys)]
      self.bn = [eqx.nn.BatchNorm(b, "batch", eps=EPS, momentum=0.99, mode=bn_mode)
                 for b in sizes[1:-1]]
      self.drop = eqx.nn.Dropout(dropout)
      self.head = eqx.nn.Linear(sizes[-2], sizes[-1], key=keys[-1])

    def __call__(self, x, state, *, key=None):
      for dense, bn in zip(self.dense, self.bn):
        x, state = bn(dense(x), state)
        x = jax.nn.relu(x)
      return self.head(self.drop(x, key=key)), state

  model, state = eqx.nn.make_with_state(Net)(jax.random.key(seed))
  apply, params, state = mcu_jax.models.from_equinox(model, state)
  layers = len(sizes) - 2

  def weights(p):
    dense = [(_np(d.weight).T, _np(d.bias)) for d in p.dense]
    bn = [(_np(b.weight), _np(b.bias)) for b in p.bn]
    return {"dense": dense, "bn": bn, "head": (_np(p.head.weight).T, _np(p.head.bias))}

  def read_stats(s):
    out = []
    for bn in model.bn[:layers]:
      if bn_mode == "ema":
        mean, var = s.get(bn.ema_state_index)
        out.append((_np(mean), _np(var)))
        continue
      counter = int(s.get(bn.batch_counter))
      mean, var = s.get(bn.batch_state_index)
      scale = 1.0 if counter == 0 else 1.0 - np.float32(bn.momentum) ** counter
      out.append((_np(mean) / scale, _np(var) / scale))
    return out
  return Case("equinox", apply, params, state, weights, read_stats)


def build(library: str, sizes=(5, 6, 4, 3), seed: int = 0, dropout: float = 0.5,
          bn_mode: str = "batch") -> Case:
  """The model of ``library`` with layer widths ``sizes`` (input, hidden..., classes)."""
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return {"linen": _linen, "nnx": _nnx, "haiku": _haiku, "equinox": _equinox}[library](
        tuple(sizes), seed, dropout, bn_mode=bn_mode)


def perturbed(params, seed: int, scale: float = 0.3):
  """``params`` plus Gaussian noise (BatchNorm scales and offsets away from 1 and 0)."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [x + scale * jax.random.normal(k, x.shape, x.dtype)
                                      for x, k in zip(leaves, keys)])


def _bn(h, mean, var, scale, bias):
  return (h - mean) / np.sqrt(var + EPS) * scale + bias


def reference_stats(weights: dict, x, batch_size: int) -> list:
  """Exact (mean, biased var) of every BatchNorm's input over a training-mode pass of ``x`` in
  batches of ``batch_size`` (each batch normalised by its own statistics), float64."""
  h = _np(x)
  stats = []
  for (kernel, bias), (scale, offset) in zip(weights["dense"], weights["bn"]):
    z = h @ kernel + bias
    stats.append((z.mean(axis=0), z.var(axis=0)))
    parts = []
    for start in range(0, len(z), batch_size):
      zb = z[start:start + batch_size]
      parts.append(np.maximum(_bn(zb, zb.mean(axis=0), zb.var(axis=0), scale, offset), 0.0))
    h = np.concatenate(parts)
  return stats


def reference_logits(weights: dict, stats: list, x) -> np.ndarray:
  """Inference-mode logits with the BatchNorm statistics ``stats``, float64 (no dropout)."""
  h = _np(x)
  for (kernel, bias), (scale, offset), (mean, var) in zip(weights["dense"], weights["bn"], stats):
    h = np.maximum(_bn(h @ kernel + bias, mean, var, scale, offset), 0.0)
  kernel, bias = weights["head"]
  return h @ kernel + bias
