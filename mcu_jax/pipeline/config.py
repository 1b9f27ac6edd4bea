"""Run configuration: frozen dataclasses, read from YAML, TOML or JSON, overridden from the
command line.

Validation is strict: an unknown key, a value of the wrong type or an impossible value raises
``ConfigError`` with one message naming the key (``config.curve.lr: must lie in ...``), before
anything is written. The rules are their owners' (``mcu_jax.validation`` checks, the optimizer
fields of ``train.FitConfig``, curve kinds from ``curves``, precisions from ``models``, mask
fractions from ``masks``, beta weights from ``beta``): config states none of them again.

The MCU settings are the library's own types: ``mask`` is a ``MaskOptions``, ``curve`` a
``CurveOptions`` (their defaults are the reference's MCU hyperparameters: SGD lr 0.01, momentum
0.9, no weight decay, 10 epochs, batch 128, retain_ratio 0.5, 3 bends, Bezier, k = 0.5,
kr = 0), and ``sweep`` holds the config keys of ``SweepOptions`` (20 points, t on [0.75, 1])
plus the pipeline's choice of targets. ``relearn`` is the relearn attack's ``RelearnConfig``
(``mcu-jax relearn``; its defaults are its own: 100 SGD steps, lr 0.01, momentum 0.9, batch
128, on D_r). ``unlearn_curve_kwargs`` is the one map from a
configuration to the library's call; the stages pass the same objects to its three steps.
The other defaults are a digits-sized original model.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mcu_jax.errors import InvalidArgument
from mcu_jax.preprocess import Preprocess, default_preprocess
from mcu_jax.relearn import RelearnConfig
from mcu_jax.runtime.masks import MaskOptions
from mcu_jax.runtime.mcu import CurveOptions
from mcu_jax.runtime.sweep import SweepOptions
from mcu_jax.runtime.train import FitConfig
from mcu_jax.validation import check_choice, check_number

CURVE_SEED_OFFSET = 300
"""The curve's seed (its retain subset and training randomness) is ``seed + 300``."""


class ConfigError(InvalidArgument):
  """A configuration file or override is invalid; the message names the key."""


def _number(where, key, value, **bounds):
  check_number(f"{where}.{key}", value, error=ConfigError, **bounds)


def _choice(where, key, value, choices):
  check_choice(f"{where}.{key}", value, choices, error=ConfigError)


@dataclasses.dataclass(frozen=True)
class ForgetConfig:
  kind: str = "random"            # "random" or "class"
  ratio: float = 0.1              # share of the training set, random forgetting
  classes: list[int] = dataclasses.field(default_factory=lambda: [0])  # class forgetting

  def validate(self, where):
    _choice(where, "kind", self.kind, ("random", "class"))
    if self.kind == "random":
      _number(where, "ratio", self.ratio, low=0.0, high=1.0, low_open=True, high_open=True)
    elif not self.classes:
      raise ConfigError(f"{where}.classes: class forgetting needs at least one class id")


@dataclasses.dataclass(frozen=True)
class TrainConfig(FitConfig):
  """Training of the original and retrained models: SGD + momentum, weight decay, cosine
  annealing per step (``train.FitConfig``'s fields)."""
  epochs: int = 30
  lr: float = 0.1
  batch_size: int = 64
  weight_decay: float = 5e-4
  cosine: bool = True
  schedule_unit: str = "step"

  def validate(self, where):
    pass                          # FitConfig checks every field at construction


@dataclasses.dataclass(frozen=True)
class UnlearnConfig:
  """The base method producing theta_p; ``options`` override its documented defaults."""
  method: str = "rl"
  options: dict[str, Any] = dataclasses.field(default_factory=dict)

  def validate(self, where):
    from mcu_jax import unlearn
    _choice(where, "method", self.method, tuple(unlearn.METHODS))
    config_type = type(unlearn.default_config(self.method))
    try:
      config_type(**self.options)
    except (TypeError, ValueError) as e:
      raise ConfigError(f"{where}.options: invalid {self.method} hyperparameters: {e}") from e


SWEEP_KEYS = ("points", "chunk_size", "t_search", "recalibrate_on")
"""The fields of ``SweepOptions`` a configuration holds (under ``sweep``)."""


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  """``SweepOptions``' configurable fields (``SWEEP_KEYS``, their defaults its own) and the
  targets the pipeline's sweep aims at: "alignment" (the original model) or "retrain"."""
  points: int = SweepOptions.points
  chunk_size: int | None = SweepOptions.chunk_size   # t values vmapped at once
  t_search: list[float] = dataclasses.field(
      default_factory=lambda: list(SweepOptions.t_search))
  targets: str = "alignment"
  recalibrate_on: str = SweepOptions.recalibrate_on

  def validate(self, where):
    _choice(where, "targets", self.targets, ("alignment", "retrain"))
    try:
      SweepOptions(**{key: getattr(self, key) for key in SWEEP_KEYS})
    except InvalidArgument as e:
      raise ConfigError(_renamed(str(e), "SweepOptions", where)) from None


@dataclasses.dataclass(frozen=True)
class ForgetQualityConfig:
  """``mcu-jax forget-quality``: populations of ``models`` members per method (empty
  ``methods``: the run's own method), each with and without MCU; intervals from ``resamples``
  bootstrap resamples over models, base vs MCU tested with ``permutations`` random swaps (all
  2^models when fewer), U-LiRA over ``splits`` random splits."""
  models: int = 16
  methods: list[str] = dataclasses.field(default_factory=list)
  mcu: bool = True
  resamples: int = 200             # the intervals use the bootstrap sd: 200 give it to ~5 %
  permutations: int = 2000
  splits: int = 20

  def validate(self, where):
    from mcu_jax import unlearn
    _number(where, "models", self.models, low=4, integer=True)
    for name in ("resamples", "permutations", "splits"):
      _number(where, name, getattr(self, name), low=1, integer=True)
    for i, method in enumerate(self.methods):
      _choice(where, f"methods[{i}]", method, tuple(m for m in unlearn.METHODS if m != "retrain"))


@dataclasses.dataclass(frozen=True)
class RunConfig:
  dataset: str = "digits"
  model: str = "small_cnn"
  model_options: dict[str, Any] = dataclasses.field(default_factory=dict)
  seed: int = 0
  augment: bool = False            # random crop (padding 4) + flip; off for digits
  eval_batch_size: int = SweepOptions.batch_size   # every evaluation's inference batch
  forget: ForgetConfig = dataclasses.field(default_factory=ForgetConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  retrain: TrainConfig | None = None   # None: the same recipe as train (the gold standard)
  unlearn: UnlearnConfig = dataclasses.field(default_factory=UnlearnConfig)
  mask: MaskOptions = dataclasses.field(default_factory=MaskOptions)
  curve: CurveOptions = dataclasses.field(default_factory=CurveOptions)
  sweep: SweepConfig = dataclasses.field(default_factory=SweepConfig)
  forget_quality: ForgetQualityConfig = dataclasses.field(default_factory=ForgetQualityConfig)
  relearn: RelearnConfig = dataclasses.field(default_factory=RelearnConfig)   # mcu-jax relearn

  def validate(self, where="config"):
    from mcu_jax import models
    _choice(where, "model", self.model, tuple(models.model_names()))
    try:
      module = models.get_model(self.model, 10, **self.model_options)
    except TypeError as e:
      raise ConfigError(f"{where}.model_options: invalid options for {self.model}: {e}") from e
    fields = {f.name for f in dataclasses.fields(module)}
    if self.curve.precision != "fp32" and "dtype" not in fields:
      raise ConfigError(f"{where}.curve.precision: {self.curve.precision!r} needs a model "
                        f"with a compute dtype field; {self.model} has none")
    if not self.dataset:
      raise ConfigError(f"{where}.dataset: empty data set name")
    _number(where, "eval_batch_size", self.eval_batch_size, low=1, integer=True)
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if hasattr(value, "validate"):    # the library's option types check at construction
        value.validate(f"{where}.{field.name}")

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def sweep_options(config: RunConfig, *, preprocess: Preprocess = default_preprocess, mesh=None,
                  progress: bool = False) -> SweepOptions:
  """The ``SweepOptions`` of ``config``: its ``sweep`` keys, every evaluation's batch
  ``eval_batch_size`` and the recalibration's batch ``curve.batch_size``."""
  return SweepOptions(**{key: getattr(config.sweep, key) for key in SWEEP_KEYS},
                      batch_size=config.eval_batch_size,
                      recal_batch_size=config.curve.batch_size, preprocess=preprocess,
                      progress=progress, mesh=mesh)


def unlearn_curve_kwargs(config: RunConfig, *, scenario: str,
                         preprocess: Preprocess = default_preprocess, mesh=None,
                         progress: bool = False) -> dict:
  """``unlearn_curve``'s keyword arguments for ``config``: the one map from a run's
  configuration to the library's call (the stages call its three steps with the same
  options). ``scenario``: the split's kind; the seed is ``config.seed + CURVE_SEED_OFFSET``,
  the curve stage's."""
  return dict(scenario=scenario, mask=config.mask, curve=config.curve,
              sweep=sweep_options(config),
              seed=config.seed + CURVE_SEED_OFFSET, preprocess=preprocess, mesh=mesh,
              progress=progress)


# ---------------------------------------------------------------------------------------------
# Building from dicts, files and overrides


def _coerce(where: str, annotation, value):
  """``value`` checked against the field's annotation (no silent conversions but int->float)."""
  origin = typing.get_origin(annotation)
  if origin in (typing.Union, types.UnionType):
    errors = []
    for option in typing.get_args(annotation):
      try:
        return _coerce(where, option, value)
      except ConfigError as e:
        errors.append(str(e))
    raise ConfigError(f"{where}: {value!r} is none of {annotation}")
  if dataclasses.is_dataclass(annotation):
    if not isinstance(value, dict):
      raise ConfigError(f"{where}: expected a table/mapping, got {type(value).__name__}")
    return _from_dict(annotation, value, where)
  if origin is list:
    if not isinstance(value, list):
      raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
    (item,) = typing.get_args(annotation)
    return [_coerce(f"{where}[{i}]", item, v) for i, v in enumerate(value)]
  if origin is dict or annotation is dict:
    if not isinstance(value, dict):
      raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return dict(value)
  if annotation is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
    return float(value)
  if annotation is int:
    if isinstance(value, bool) or not isinstance(value, int):
      raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
    return value
  if annotation in (bool, str):
    if not isinstance(value, annotation):
      raise ConfigError(f"{where}: expected {annotation.__name__}, got "
                        f"{type(value).__name__} {value!r}")
    return value
  if annotation is Any:
    return value
  if annotation is type(None):
    if value is not None:
      raise ConfigError(f"{where}: expected null, got {value!r}")
    return None
  raise TypeError(f"unsupported annotation {annotation}")


def _from_dict(cls, values: dict, where: str):
  hints = typing.get_type_hints(cls)
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - names)
  if unknown:
    raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: "
                      f"{', '.join(sorted(names))}")
  kwargs = {k: _coerce(f"{where}.{k}", hints[k], v) for k, v in values.items()}
  try:
    return cls(**kwargs)
  except ConfigError:
    raise
  except InvalidArgument as e:     # a check at construction names "<Class>.<key>"
    raise ConfigError(_renamed(str(e), cls.__name__, where)) from None


def _renamed(message: str, owner: str, where: str) -> str:
  """An option type's message (``"<owner>.<key>: ..."``) in config terms (``<where>.<key>``)."""
  if not message.startswith(f"{owner}."):
    return f"{where}: {message}"
  return message.replace(f"{owner}.", f"{where}.")


def merge(base: dict, update: dict) -> dict:
  """``update`` laid over ``base``, nested mappings merged key by key (neither is changed)."""
  out = dict(base)
  for key, value in update.items():
    if isinstance(value, dict) and isinstance(out.get(key), dict):
      out[key] = merge(out[key], value)
    else:
      out[key] = value
  return out


# YAML 1.2's floats: PyYAML resolves YAML 1.1, where a float needs a dot and a signed
# exponent, so that 1e-3, 1E3 and 1.0e3 would be strings. A digit and a dot or an exponent.
_FLOAT = re.compile(r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                       |\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
                       |[0-9][0-9_]*[eE][-+]?[0-9]+)$""", re.X)


def _yaml_loader():
  """PyYAML's safe loader, reading numbers as YAML 1.2 (and TOML and JSON) do."""
  import yaml

  class Loader(yaml.SafeLoader):
    pass
  Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+.0123456789"))
  return Loader


def _yaml(text: str):
  import yaml
  return yaml.load(text, Loader=_yaml_loader())


def read_file(path: str | os.PathLike) -> dict:
  """A config file as a dict: ``.yaml``/``.yml``, ``.toml`` or ``.json``. Numbers read the
  same in the three: ``1e-3``, ``1E3``, ``.5`` and ``5.`` are floats in YAML (as with
  ``--set``), wherever TOML and JSON accept them."""
  path = Path(path)
  if path.is_dir():
    raise ConfigError(f"config file {path} is a directory: give a .yaml, .toml or .json file")
  if not path.is_file():
    raise ConfigError(f"config file {path} does not exist")
  try:
    text = path.read_text(encoding="utf-8")
  except (OSError, UnicodeDecodeError) as e:
    raise ConfigError(f"config file {path} cannot be read: {e}") from None
  try:
    if path.suffix in (".yaml", ".yml"):
      values = _yaml(text) or {}
    elif path.suffix == ".toml":
      import tomllib
      values = tomllib.loads(text)
    elif path.suffix == ".json":
      values = json.loads(text)
    else:
      raise ConfigError(f"config file {path}: unknown format {path.suffix!r} "
                        "(use .yaml, .toml or .json)")
  except ConfigError:
    raise
  except Exception as e:
    raise ConfigError(f"config file {path} cannot be parsed: {e}") from e
  if not isinstance(values, dict):
    raise ConfigError(f"config file {path}: the top level must be a mapping")
  return values


def parse_override(text: str) -> dict:
  """``"curve.epochs=3"`` -> ``{"curve": {"epochs": 3}}``; values are parsed as YAML, numbers
  as in config files."""
  import yaml
  if "=" not in text:
    raise ConfigError(f"override {text!r} must look like key.sub=value")
  key, raw = text.split("=", 1)
  try:
    value = _yaml(raw) if raw.strip() else ""
  except yaml.YAMLError as e:
    raise ConfigError(f"override {text!r}: cannot parse value: {e}") from e
  out: Any = value
  for part in reversed(key.strip().split(".")):
    if not part:
      raise ConfigError(f"override {text!r}: empty key component")
    out = {part: out}
  return out


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = (),
                base: dict | None = None) -> RunConfig:
  """Defaults <- ``base`` <- file <- overrides, then validated as a whole."""
  values = dict(base or {})
  if path is not None:
    values = merge(values, read_file(path))
  for text in overrides:
    values = merge(values, parse_override(text))
  config = _from_dict(RunConfig, values, "config")
  config.validate()
  return config
