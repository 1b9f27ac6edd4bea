"""vit_tiny: shapes, the parameter count in closed form, one forward against float64 NumPy, bf16,
dropout through the adapter, bad sizes, and the whole pipeline on digits without BatchNorm."""
import json
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from mcu_jax import models
from mcu_jax.errors import InvalidArgument
from mcu_jax.models import vit
from mcu_jax.pipeline import cli
from mcu_jax.pipeline import config as config_lib
from mcu_jax.runtime import batchnorm


def _shapes(module, shape):
  """(params, state) shapes of ``module`` for inputs of ``shape``, traced, never compiled."""
  variables = jax.eval_shape(lambda r: module.init(r, jnp.zeros(shape), train=False),
                             jax.random.PRNGKey(0))
  variables = dict(variables)
  return variables.pop("params"), variables


def _random_params(module, shape, scale=0.7, seed=0):
  """Parameters of ``module`` drawn N(0, scale^2) everywhere (LayerNorm scales and biases
  too), so that every parameter shows in the output and the attention is far from uniform."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(scale * rng.normal(size=s.shape), jnp.float32),
                      _shapes(module, shape)[0])


@pytest.mark.parametrize("shape, options", [((2, 32, 32, 3), {}), ((2, 28, 28, 1), {}),
                                            ((2, 8, 8, 1), {"patch_size": 2})])
def test_logits_shape_dtype_and_empty_state(shape, options):
  module = models.get_model("vit_tiny", 7, **options)
  params, state = _shapes(module, shape)
  assert state == {}
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  tokens = (shape[1] // module.patch_size) * (shape[2] // module.patch_size) + 1
  assert params["pos_embed"].shape == (1, tokens, 64)
  assert [k for k in params if k.startswith("blocks_")] == [f"blocks_{i}" for i in range(6)]
  apply = models.from_linen(module)
  logits, new_state = jax.eval_shape(
      lambda p, x, r: models.forward(apply, p, state, x, True, r), params,
      jax.ShapeDtypeStruct(shape, jnp.float32), jax.random.PRNGKey(1))
  assert logits.shape == (shape[0], 7) and logits.dtype == jnp.float32
  assert new_state == {}


def test_initialisation_is_the_references():
  module = models.get_model("vit_tiny", 10, depth=1)
  params, _ = models.init_model(module, jax.random.PRNGKey(0), (1, 32, 32, 3))
  blk = params["blocks_0"]
  for w in (params["pos_embed"], params["cls_token"], blk["attn"]["qkv"]["kernel"],
            blk["mlp"]["fc1"]["kernel"]):
    n = w.size                                          # 4 standard errors of each estimate
    assert abs(float(jnp.mean(w))) < 4 * 0.02 / math.sqrt(n)
    assert abs(float(jnp.std(w)) - 0.02) < 4 * 0.02 / math.sqrt(2 * n)
  bound = 1 / math.sqrt(4 * 4 * 3)                     # torch's conv default, U(+-1/sqrt(fan_in))
  kernel = params["patch_embed"]["kernel"]
  assert float(jnp.max(jnp.abs(kernel))) <= bound
  assert abs(float(jnp.std(kernel)) - bound / math.sqrt(3)) < 0.1 * bound
  for leaf in (blk["attn"]["qkv"]["bias"], blk["norm1"]["bias"], params["head"]["bias"]):
    assert not np.any(np.asarray(leaf))
  np.testing.assert_array_equal(params["norm"]["scale"], 1.0)


def test_parameter_count_closed_form():
  # By hand, defaults on 32x32x3, 10 classes: patch conv 4*4*3*64 + 64 = 3136, class token 64,
  # position embedding 65*64 = 4160; per block 2 LayerNorms 256, qkv 64*192 + 192 = 12480,
  # proj 4160, fc1 64*256 + 256 = 16640, fc2 256*64 + 64 = 16448, i.e. 49984, times 6;
  # final LayerNorm 128, head 650.
  by_hand = 3136 + 64 + 4160 + 6 * 49984 + 128 + 650
  params, _ = _shapes(models.get_model("vit_tiny", 10), (1, 32, 32, 3))
  assert models.param_count(params) == by_hand == 308_042
  assert vit.vit_param_count(10, (32, 32), 3) == by_hand
  for shape, options in [((1, 28, 28, 1), {}),
                         ((1, 8, 8, 1), {"patch_size": 2, "dim": 16, "depth": 3,
                                         "num_heads": 4, "mlp_ratio": 3.0, "qkv_bias": False})]:
    params, _ = _shapes(models.get_model("vit_tiny", 10, **options), shape)
    options = {k: v for k, v in options.items() if k != "num_heads"}
    assert models.param_count(params) == vit.vit_param_count(10, shape[1:3], shape[3], **options)


def _layer_norm(x, p):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + vit.LAYER_NORM_EPS) * p["scale"] + p["bias"]


def _dense(x, p):
  return x @ p["kernel"] + p["bias"]


def _numpy_vit(params, x, patch, heads):
  """The forward in float64, written from the architecture's definition."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  b, h, w, c = x.shape
  patches = x.reshape(b, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
  patches = patches.reshape(b, (h // patch) * (w // patch), patch * patch * c)   # row-major
  kernel = p["patch_embed"]["kernel"].reshape(patch * patch * c, -1)              # HWIO
  tokens = patches @ kernel + p["patch_embed"]["bias"]
  dim = tokens.shape[-1]
  z = np.concatenate([np.broadcast_to(p["cls_token"], (b, 1, dim)), tokens], 1) + p["pos_embed"]
  n, hd = z.shape[1], dim // heads
  i = 0
  while f"blocks_{i}" in p:
    blk = p[f"blocks_{i}"]
    qkv = _dense(_layer_norm(z, blk["norm1"]), blk["attn"]["qkv"]).reshape(b, n, 3, heads, hd)
    q, k, v = (qkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3))           # (B, H, N, hd)
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
    att = np.exp(scores - scores.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    out = (att @ v).transpose(0, 2, 1, 3).reshape(b, n, dim)
    z = z + _dense(out, blk["attn"]["proj"])
    hidden = _dense(_layer_norm(z, blk["norm2"]), blk["mlp"]["fc1"])
    hidden = 0.5 * hidden * (1.0 + erf(hidden / math.sqrt(2.0)))                 # exact GELU
    z = z + _dense(hidden, blk["mlp"]["fc2"])
    i += 1
  return _dense(_layer_norm(z, p["norm"])[:, 0], p["head"])


def test_forward_matches_float64_numpy():
  module = models.get_model("vit_tiny", 3, patch_size=2, dim=8, depth=2, num_heads=2,
                            mlp_ratio=2.0)
  params = _random_params(module, (1, 4, 6, 3))
  x = np.random.default_rng(1).normal(size=(2, 4, 6, 3)).astype(np.float32)
  swapped = x.copy()            # two patches exchanged: the position embedding tells them apart
  swapped[:, 0:2, 0:2], swapped[:, 2:4, 4:6] = x[:, 2:4, 4:6], x[:, 0:2, 0:2]
  forward = jax.jit(lambda p, x: module.apply({"params": p}, x, train=False))
  got = np.asarray(forward(params, np.concatenate([x, swapped])))
  want = _numpy_vit(params, np.concatenate([x, swapped]).astype(np.float64), 2, 2)
  assert np.std(want) > 0.5
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert np.max(np.abs(want[:2] - want[2:])) > 1e-2     # far beyond the float32 tolerance


def test_bf16_computes_in_bf16_and_returns_float32_logits():
  module = models.get_model("vit_tiny", 10, dim=16, depth=1)
  params = _random_params(module, (1, 8, 8, 1), scale=0.3)
  x = jax.random.uniform(jax.random.PRNGKey(2), (4, 8, 8, 1))
  apply = models.from_linen(module)
  low = models.with_precision(apply, "bf16")
  assert low.module.dtype == jnp.bfloat16
  fp32 = jax.jit(lambda p, x: apply(p, {}, x, False)[0])(params, x)
  bf16 = jax.jit(lambda p, x: low(p, {}, x, False)[0])(params, x)
  assert fp32.dtype == bf16.dtype == jnp.float32
  err, size = float(jnp.max(jnp.abs(bf16 - fp32))), float(jnp.max(jnp.abs(fp32)))
  assert 0 < err < 0.05 * size, (err, size)    # bf16 rounding (8 bits), nothing worse
  config_lib.RunConfig(model="vit_tiny", curve=config_lib.CurveOptions(precision="bf16")
                       ).validate()


def test_dropout_draws_from_the_adapter_rng():
  module = models.get_model("vit_tiny", 10, dim=16, depth=1, dropout_rate=0.3)
  params = _random_params(module, (1, 8, 8, 1), scale=0.3)
  apply, plain = models.from_linen(module), models.from_linen(module.clone(dropout_rate=0.0))
  x = jax.random.uniform(jax.random.PRNGKey(2), (4, 8, 8, 1))
  run = jax.jit(lambda p, x, r: models.forward(apply, p, {}, x, True, r)[0])
  a, b = run(params, x, jax.random.PRNGKey(0)), run(params, x, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, run(params, x, jax.random.PRNGKey(1)))
  infer = lambda fn: jax.jit(lambda p, x: fn(p, {}, x, False)[0])(params, x)
  np.testing.assert_array_equal(infer(apply), infer(plain))    # inference: no dropout


def test_registry_and_bad_arguments():
  assert "vit_tiny" in models.model_names()
  module = models.get_model("vit_tiny", 100)
  assert isinstance(module, models.ViT) and module.num_classes == 100
  with pytest.raises(InvalidArgument, match=r"image size 30x30 is not divisible .* patch_size 4"):
    _shapes(module, (1, 30, 30, 3))
  with pytest.raises(InvalidArgument, match=r"image size 8x6 .* patch_size 4"):
    _shapes(module, (1, 8, 6, 3))
  with pytest.raises(InvalidArgument, match="NHWC"):
    _shapes(module, (8, 8, 1))
  with pytest.raises(InvalidArgument, match="ViT.dim: must be a multiple of num_heads = 8"):
    models.get_model("vit_tiny", 10, dim=60)
  with pytest.raises(InvalidArgument, match=r"ViT.dropout_rate: .* \[0, 1\)"):
    models.get_model("vit_tiny", 10, dropout_rate=1.0)
  with pytest.raises(InvalidArgument, match="ViT.patch_size: expected an integer >= 1"):
    models.get_model("vit_tiny", 10, patch_size=0)


# vit_tiny at one block (patch 4, so digits' 8x8 images are 2x2 patches), the pipeline's SGD 0.1
# in batches of 32 for 5 epochs: ~90 % test accuracy on digits. (Patch 2 and the default 6
# blocks learn far more slowly in so few epochs.)
VIT_DEMO = ["--no-progress", "--set", "model=vit_tiny", "--set", "model_options={depth: 1}",
            "--set", "train.epochs=5", "--set", "train.batch_size=32", "--set", "curve.epochs=2",
            "--set", "unlearn.options={epochs: 2}", "--set", "sweep.points=6"]


@pytest.mark.slow
def test_pipeline_runs_vit_without_batchnorm_recalibration(tmp_path, monkeypatch):
  calls = []

  def refuse(name):
    def fn(*args, **kwargs):
      calls.append(name)
      raise AssertionError(f"batchnorm.{name} called for a model without BatchNorm")
    return fn

  for name in ("recalibrated", "stats_layout", "_recalibrate_jit"):
    monkeypatch.setattr(batchnorm, name, refuse(name))
  run_dir = tmp_path / "run"
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    assert cli.main(["demo", "--run-dir", str(run_dir), *VIT_DEMO]) == 0
  assert calls == []
  assert not [w for w in caught if "batchnorm" in str(w.message).lower()
              or "recalib" in str(w.message).lower()]
  text = (run_dir / "report.md").read_text()
  assert text.startswith("# MCU run: vit_tiny on digits")
  assert "no BatchNorm statistics: none are recomputed" in text and "recomputed on D_r" not in text
  assert len(json.loads((run_dir / "sweep.json").read_text())["sweep"]["ts"]) == 6
  rows = {row["method"].split(" ")[0]: row
          for row in json.loads((run_dir / "report.json").read_text())["rows"]}
  original, rl = rows["Original"], rows["RL"]
  mcu = next(row for name, row in rows.items() if name.startswith("RL+MCU"))
  assert original["RA"] > 75 and original["TA"] > 75 and original["UA"] < 25
  for row in (rl, mcu):
    assert row["UA"] > original["UA"] + 50     # UA = 100 - forget accuracy
    assert row["RA"] > 50 and row["TA"] > 50
