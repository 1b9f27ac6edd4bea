"""The registry of base unlearning methods: ``METHODS`` by name, each with its config type,
run function and whether it trains on D_r; ``get_method``, ``default_config`` and
``method_names`` read it, ``resolve_config`` turns a ``run`` call's config into the method's.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from mcu_jax.errors import InvalidArgument
from mcu_jax.unlearn import (
  bad_teacher,
  boundary_shrink,
  influence,
  methods,
  negtv,
  scrub,
  ssd,
  unsir,
)
from mcu_jax.unlearn import configs as cfgs
from mcu_jax.unlearn.method_context import MethodContext, Outcome


@dataclasses.dataclass(frozen=True)
class Method:
  """A registered method: its config type, implementation and which sets it needs."""
  name: str
  config_type: type[cfgs.MethodConfig]
  impl: Callable[[MethodContext, Any], Outcome]
  needs_retain: bool
  summary: str


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("retrain", cfgs.RetrainConfig, methods.run_retrain, True,
           "train from a fresh initialisation on D_r (CE)"),
    Method("ft", cfgs.FTConfig, methods.run_ft, True, "fine-tune on D_r (CE)"),
    Method("ga", cfgs.GAConfig, methods.run_ga, False, "gradient ascent on D_f (-CE)"),
    Method("neggrad_plus", cfgs.NegGradPlusConfig, methods.run_neggrad_plus, True,
           "D_f and D_r mixed, CE_r - beta * CE_f per batch"),
    Method("rl", cfgs.RLConfig, methods.run_rl, True, "random wrong labels on D_f plus D_r (CE)"),
    Method("salun", cfgs.SalUnConfig, methods.run_salun, True,
           "random label restricted to the most forget-salient weights"),
    Method("l1_sparse", cfgs.L1SparseConfig, methods.run_l1_sparse, True,
           "fine-tune on D_r with a decaying l1 penalty"),
    Method("negtv", cfgs.NegTVConfig, negtv.run_negtv, False,
           "negated task vector of a fine-tuning on D_f"),
    Method("scrub", cfgs.ScrubConfig, scrub.run_scrub, True,
           "teacher-student: max KL on D_f, min CE + KL on D_r"),
    Method("ssd", cfgs.SSDConfig, ssd.run_ssd, True,
           "dampen the weights far more important to D_f than to D (no training)"),
    Method("bad_teacher", cfgs.BadTeacherConfig, bad_teacher.run_bad_teacher, True,
           "distil theta_o on D_r and a random network on D_f"),
    Method("unsir", cfgs.UNSIRConfig, unsir.run_unsir, True,
           "error-maximising noise per forget class: impair, then repair on D_r"),
    Method("boundary_shrink", cfgs.BoundaryShrinkConfig, boundary_shrink.run_boundary_shrink,
           False, "fine-tune D_f on the labels of its adversarial neighbours"),
    Method("iu", cfgs.IUConfig, influence.run_iu, True,
           "influence update with a WoodFisher inverse Hessian (no training)"),
)}


def method_names() -> list[str]:
  return list(METHODS)


def get_method(name: str) -> Method:
  """The registered method ``name``; unknown names raise, listing the known ones."""
  if not isinstance(name, str):
    raise InvalidArgument(f"method name must be a string, got {type(name).__name__}")
  if name not in METHODS:
    raise InvalidArgument(f"unknown unlearning method {name!r}; known methods: "
                     f"{', '.join(METHODS)}")
  return METHODS[name]


def default_config(method: str) -> cfgs.MethodConfig:
  """The default hyperparameters of ``method`` (see the table in ``mcu_jax.unlearn``)."""
  return get_method(method).config_type()


def resolve_config(spec: Method, config) -> cfgs.MethodConfig:
  """``spec``'s config from ``config``: the defaults for None, a dict of its fields (unknown
  names raise ValueError), or an instance of exactly its config type (else TypeError)."""
  if config is None:
    return spec.config_type()
  if isinstance(config, Mapping):
    fields = {f.name for f in dataclasses.fields(spec.config_type)}
    unknown = sorted(set(config) - fields)
    if unknown:
      raise InvalidArgument(f"unknown {spec.name} hyperparameters {unknown}; "
                       f"{spec.config_type.__name__} has {sorted(fields)}")
    return spec.config_type(**config)
  if type(config) is not spec.config_type:
    raise InvalidArgument(f"method {spec.name!r} takes a {spec.config_type.__name__} (or a dict of "
                    f"its fields), got {type(config).__name__}")
  return config
