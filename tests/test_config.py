import pytest

from mcu_jax.pipeline import config as config_lib
from mcu_jax.pipeline.config import ConfigError, load_config, read_file


def test_defaults_are_the_reference_mcu_hyperparameters():
  c = load_config()
  assert (c.curve.lr, c.curve.momentum, c.curve.epochs, c.curve.batch_size) == (0.01, 0.9, 10, 128)
  assert (c.curve.retain_ratio, c.curve.num_bends, c.curve.kind) == (0.5, 3, "bezier")
  assert (c.mask.k, c.mask.kr, c.sweep.points) == (0.5, 0.0, 20)
  assert c.curve.beta == "adaptive"


def test_file_and_overrides(tmp_path):
  path = tmp_path / "c.yaml"
  path.write_text("model: mlp\ncurve:\n  epochs: 3\nforget:\n  kind: class\n  classes: [1, 2]\n")
  c = load_config(path, ["curve.epochs=5", "curve.beta=0.2", "train.lr=0.05"])
  assert c.model == "mlp" and c.curve.epochs == 5 and c.curve.beta == 0.2
  assert c.forget.classes == [1, 2] and c.train.lr == 0.05
  toml = tmp_path / "c.toml"
  toml.write_text("seed = 3\n[mask]\nenabled = false\n")
  assert load_config(toml).mask.enabled is False


@pytest.mark.parametrize("override,message", [
    ("curve.epoch=3", r"config.curve: unknown key\(s\) epoch"),
    ("nonsense=1", r"config: unknown key\(s\) nonsense"),
    ("curve.epochs=three", r"config.curve.epochs: expected an integer"),
    ("curve.epochs=2.5", r"config.curve.epochs: expected an integer"),
    ("train.lr=[1]", r"config.train.lr: expected a number"),
    ("mask.k=1.5", r"config.mask.k: must lie in \(0.0, 1.0\]"),
    ("mask.kr=1.0", r"config.mask.kr: must lie in \[0.0, 1.0\)"),
    ("forget.ratio=0", r"config.forget.ratio: must lie in \(0.0, 1.0\)"),
    ("curve.beta=fast", r"config.curve.beta"),
    ("curve.num_bends=2", r"config.curve.num_bends"),
    ("sweep.points=3", r"config.sweep.points: cubic interpolation needs >= 4"),
    ("model=resnet1000", r"config.model: 'resnet1000' is not one of"),
    ("unlearn.method=magic", r"config.unlearn.method: 'magic' is not one of"),
    ("curve", r"must look like key.sub=value"),
    ("curve.precision=fp16", r"config.curve.precision: 'fp16' is not one of fp32, bf16"),
    ("train.lr=.inf", r"config.train.lr: must be finite, got inf"),
    ("train.lr=-1", r"config.train.lr: must lie in \(0, inf\), got -1"),
    ("curve.beta_low=-5", r"config.curve.beta_low: must lie in \[0.0, inf\), got -5"),
    ("curve.beta_low=0.9", r"config.curve.beta_low: must be <= config.curve.beta_high \(0.5\)"),
    ("curve.kind=spline", r"config.curve.kind: 'spline' is not one of bezier, polychain"),
    ("train.schedule_unit=batch", r"config.train.schedule_unit: 'batch' is not one of step"),
])
def test_bad_values_give_one_clear_message(override, message):
  with pytest.raises(ConfigError, match=message):
    load_config(overrides=[override])


def test_bf16_curve_needs_a_model_with_a_compute_dtype(monkeypatch):
  import flax.linen as nn

  from mcu_jax import models

  class NoDtype(nn.Module):
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))

  monkeypatch.setitem(models._REGISTRY, "test_no_dtype", NoDtype)
  assert load_config(overrides=["model=test_no_dtype"]).curve.precision == "fp32"
  with pytest.raises(ConfigError, match="config.curve.precision: 'bf16' needs a model with a "
                                        "compute dtype field; test_no_dtype has none"):
    load_config(overrides=["model=test_no_dtype", "curve.precision=bf16"])
  assert load_config(overrides=["curve.precision=bf16"]).curve.precision == "bf16"


def test_bad_files(tmp_path):
  with pytest.raises(ConfigError, match="does not exist"):
    load_config(tmp_path / "missing.yaml")
  bad = tmp_path / "bad.yaml"
  bad.write_text("curve: [unclosed\n")
  with pytest.raises(ConfigError, match="cannot be parsed"):
    load_config(bad)
  ini = tmp_path / "c.ini"
  ini.write_text("x=1")
  with pytest.raises(ConfigError, match="unknown format"):
    load_config(ini)
  assert not any(p.name not in {"bad.yaml", "c.ini"} for p in tmp_path.iterdir())


def test_exponent_floats_parse_as_numbers():
  # YAML 1.1 (PyYAML) reads 1e-3, without a dot, as the string "1e-3".
  assert load_config(overrides=["train.lr=1e-3"]).train.lr == 1e-3
  assert load_config(overrides=["curve.lr=2E-2"]).curve.lr == 0.02
  assert load_config(overrides=["train.lr=1.5e-3"]).train.lr == 1.5e-3


@pytest.mark.parametrize("text,value", [("1e-3", 1e-3), ("1E3", 1000.0), (".5", 0.5),
                                        ("5.", 5.0), ("-.5", -0.5), ("1.0e3", 1000.0)])
def test_config_files_read_numbers_as_set_does(tmp_path, text, value):
  """YAML 1.1 (PyYAML) reads 1e-3, 1E3 and 1.0e3 as strings; files read them as --set does,
  and as TOML and JSON do wherever those accept the spelling (they refuse .5 and 5.)."""
  yaml_file = _write(tmp_path / "c.yaml", f"curve:\n  lr: {text}\n")
  toml_file = _write(tmp_path / "c.toml", f"[curve]\nlr = {text}\n")
  json_file = _write(tmp_path / "c.json", f'{{"curve": {{"lr": {text}}}}}')
  from_set = config_lib.parse_override(f"curve.lr={text}")
  assert read_file(yaml_file) == from_set == {"curve": {"lr": value}}
  assert type(from_set["curve"]["lr"]) is float
  if value > 0:
    assert load_config(yaml_file).curve.lr == value
    assert load_config(overrides=[f"curve.lr={text}"]).curve.lr == value
  if text in ("1e-3", "1E3", "1.0e3"):
    assert read_file(toml_file) == read_file(json_file) == from_set
  else:
    for path in (toml_file, json_file):
      with pytest.raises(ConfigError, match=f"config file {path} cannot be parsed"):
        read_file(path)


def _write(path, text):
  path.write_text(text)
  return path


def test_booleans_and_strings_in_files_are_unchanged(tmp_path):
  path = _write(tmp_path / "c.yaml", 'a: "1e-3"\nb: yes\nc: off\nd: abc\ne: 1e\nf: 10\n'
                                     "g: 0x1F\nh: .inf\ni: '5.'\nj: 1.2.3\nk: .\n")
  values = read_file(path)
  assert values == {"a": "1e-3", "b": True, "c": False, "d": "abc", "e": "1e", "f": 10,
                    "g": 31, "h": float("inf"), "i": "5.", "j": "1.2.3", "k": "."}
  assert type(values["f"]) is int and type(values["b"]) is bool


def test_a_directory_as_config_is_named_a_directory(tmp_path):
  with pytest.raises(ConfigError, match=f"config file {tmp_path} is a directory: give a "
                                        r"\.yaml, \.toml or \.json file"):
    load_config(tmp_path)


def test_configs_share_the_optimizer_fields():
  c = load_config()
  assert (c.train.cosine, c.train.schedule_unit, c.train.weight_decay) == (True, "step", 5e-4)
  assert (c.curve.cosine, c.curve.weight_decay) == (False, 0.0)
  assert c.curve.optim().lr == 0.01 and c.train.fit_fields()["epochs"] == 30


def test_unreadable_config_file_is_named(tmp_path):
  bad = tmp_path / "c.yaml"
  bad.write_bytes(b"curve:\n  lr: \xff\xfe\n")
  with pytest.raises(ConfigError, match=f"config file {bad} cannot be read"):
    load_config(bad)


# ------------------------------------------------- the library's option types, one map to the call

def test_the_config_holds_the_librarys_option_types():
  """``mask`` and ``curve`` are the library's own types; their defaults (and the sweep's) are
  the library's, written once."""
  from mcu_jax.runtime.masks import MaskOptions
  from mcu_jax.runtime.mcu import CurveOptions
  from mcu_jax.runtime.sweep import SweepOptions
  c = load_config()
  assert c.mask == MaskOptions() and type(c.mask) is MaskOptions
  assert c.curve == CurveOptions() and type(c.curve) is CurveOptions
  assert config_lib.sweep_options(c) == SweepOptions()
  assert c.eval_batch_size == SweepOptions().batch_size
  assert c.curve.optim() == CurveOptions().optim()


def test_unlearn_curve_kwargs_equal_the_direct_call():
  """Every key of the configuration reaches the call: the map equals the objects a library
  user would build by hand."""
  import mcu_jax
  c = load_config(overrides=[
      "mask.k=0.3", "mask.kr=0.1", "curve.lr=0.02", "curve.momentum=0.5",
      "curve.weight_decay=1e-4", "curve.cosine=true", "curve.epochs=3", "curve.batch_size=32",
      "curve.retain_ratio=0.25", "curve.num_bends=4", "curve.kind=polychain", "curve.beta=0.3",
      "curve.beta_low=0.05", "curve.beta_high=0.6", "curve.precision=bf16", "sweep.points=9",
      "sweep.t_search=[0.5, 0.9]", "sweep.chunk_size=3", "sweep.recalibrate_on=train",
      "eval_batch_size=256", "seed=7"])
  kwargs = config_lib.unlearn_curve_kwargs(c, scenario="class")
  assert kwargs == dict(
      scenario="class", seed=7 + config_lib.CURVE_SEED_OFFSET,
      mask=mcu_jax.MaskOptions(k=0.3, kr=0.1),
      curve=mcu_jax.CurveOptions(lr=0.02, momentum=0.5, weight_decay=1e-4, cosine=True,
                                 epochs=3, batch_size=32, retain_ratio=0.25, num_bends=4,
                                 kind="polychain", beta=0.3, beta_low=0.05, beta_high=0.6,
                                 precision="bf16"),
      sweep=mcu_jax.SweepOptions(points=9, t_search=(0.5, 0.9), chunk_size=3,
                                 recalibrate_on="train", batch_size=256, recal_batch_size=32),
      preprocess=kwargs["preprocess"], mesh=None, progress=False)
  import inspect
  assert set(kwargs) <= set(inspect.signature(mcu_jax.unlearn_curve).parameters)


def test_old_config_files_read_the_same(tmp_path):
  """The keys of the option types are the config keys they replaced: a file of every key
  reads, and its dict (what run-directory digests are computed from) is unchanged."""
  path = tmp_path / "c.yaml"
  path.write_text("mask: {enabled: true, k: 0.5, kr: 0.0}\n"
                  "curve: {epochs: 10, lr: 0.01, momentum: 0.9, weight_decay: 0.0, cosine: false,"
                  " schedule_unit: epoch, batch_size: 128, retain_ratio: 0.5, num_bends: 3,"
                  " kind: bezier, beta: adaptive, beta_low: 0.01, beta_high: 0.5, train: true,"
                  " precision: fp32}\n"
                  "sweep: {points: 20, chunk_size: null, t_search: [0.75, 1.0],"
                  " targets: alignment, recalibrate_on: retain}\n")
  c = load_config(path)
  assert c == load_config()
  d = c.to_dict()
  assert list(d["mask"]) == ["enabled", "k", "kr"]
  assert d["sweep"]["t_search"] == [0.75, 1.0]
  assert set(d["curve"]) == {"lr", "momentum", "weight_decay", "cosine", "schedule_unit",
                             "epochs", "batch_size", "retain_ratio", "num_bends", "kind", "beta",
                             "beta_low", "beta_high", "train", "precision"}


@pytest.mark.parametrize("override,message", [
    ("sweep.t_search=[0.9, 0.1]", r"config.sweep.t_search: expected 0 <= lo < hi <= 1"),
    ("sweep.chunk_size=0", r"config.sweep.chunk_size: must lie in"),
    ("sweep.recalibrate_on=test", r"config.sweep.recalibrate_on: 'test' is not one of"),
    ("sweep.targets=oracle", r"config.sweep.targets: 'oracle' is not one of"),
    ("curve.retain_ratio=0", r"config.curve.retain_ratio: must lie in \(0.0, 1.0\]"),
    ("mask.enabled=1", r"config.mask.enabled: expected bool"),
])
def test_option_values_are_refused_naming_the_config_key(override, message):
  with pytest.raises(ConfigError, match=message):
    load_config(overrides=[override])
