"""BatchNorm recalibration: exact whole-pass statistics for Linen, NNX and plain states."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mcu_jax import models
from mcu_jax.errors import InvalidArgument
from mcu_jax.models import from_linen, get_model, init_model
from mcu_jax.preprocess import images as uint8_images
from mcu_jax.runtime import batchnorm as bn_lib
from mcu_jax.runtime import parallel


class ConvBN(nn.Module):
  """conv(bias) -> two BN branches with their own momenta -> dense."""
  momenta: tuple = (0.99, 0.9)

  @nn.compact
  def __call__(self, x, train=False):
    h = nn.Conv(4, (3, 3), name="conv")(x)
    outs = [nn.BatchNorm(use_running_average=not train, momentum=m, name=f"bn{i}")(h)
            for i, m in enumerate(self.momenta)]
    return nn.Dense(3, name="head")(jnp.mean(nn.relu(sum(outs)), axis=(1, 2)))


def _conv_f64(images, kernel, bias):
  """SAME 3x3 convolution in float64 NumPy, NHWC."""
  x = images.astype(np.float64) / 255.0
  n, h, w, _ = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros((n, h, w, kernel.shape[-1]))
  for i in range(3):
    for j in range(3):
      out += np.einsum("nhwc,cd->nhwd", xp[:, i:i + h, j:j + w], kernel[i, j])
  return out + bias


@pytest.fixture(scope="module")
def convbn():
  module = ConvBN()
  params, state = init_model(module, jax.random.key(0), (1, 6, 6, 1))
  images = np.random.default_rng(1).integers(0, 256, (203, 6, 6, 1), dtype=np.uint8)
  pre_bn = _conv_f64(images, np.asarray(params["conv"]["kernel"], np.float64),
                     np.asarray(params["conv"]["bias"], np.float64))
  return from_linen(module), params, state, images, pre_bn


@pytest.mark.parametrize("batch_size", [32, 203, 500])
def test_recalibration_equals_whole_data_statistics(convbn, batch_size):
  apply, params, state, images, pre_bn = convbn
  new = bn_lib.recalibrate_batch_stats(apply, params, state, images, batch_size=batch_size,
                                       preprocess=uint8_images)
  mean, var = pre_bn.mean(axis=(0, 1, 2)), pre_bn.var(axis=(0, 1, 2))
  for bn in ("bn0", "bn1"):      # momenta 0.99 and 0.9, both inferred
    stats = new["batch_stats"][bn]
    np.testing.assert_allclose(stats["mean"], mean, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], var, rtol=2e-5, atol=1e-7)
  chex.assert_trees_all_equal_shapes_and_dtypes(new, state)


def test_declared_and_probed_momentum_agree(convbn):
  apply, params, state, images, pre_bn = convbn
  only_bn1 = {"batch_stats": {"bn1": state["batch_stats"]["bn1"]}}

  def apply_bn1(p, s, x, train):   # bn0 left at its init values, only bn1 recalibrated
    full = {"batch_stats": {"bn0": state["batch_stats"]["bn0"], **s["batch_stats"]}}
    logits, out = apply(p, full, x, train)
    return logits, {"batch_stats": {"bn1": out["batch_stats"]["bn1"]}}

  declared = models.with_running_stats(apply_bn1, [models.RunningStats(
      "batch_stats/bn1/mean", "batch_stats/bn1/var", momentum=0.9)])
  given = bn_lib.recalibrate_batch_stats(declared, params, only_bn1, images, batch_size=50,
                                         preprocess=uint8_images)
  inferred = bn_lib.recalibrate_batch_stats(apply_bn1, params, only_bn1, images, batch_size=50,
                                            preprocess=uint8_images)
  np.testing.assert_allclose(given["batch_stats"]["bn1"]["var"], pre_bn.var(axis=(0, 1, 2)),
                             rtol=2e-5)
  chex.assert_trees_all_close(given, inferred, rtol=2e-6)


def test_recalibration_empty_state_and_bad_input(convbn):
  module = get_model("mlp", 3, hidden=(4,))
  params, state = init_model(module, jax.random.key(0), (1, 6, 6, 1))
  assert state == {}
  images = np.zeros((5, 6, 6, 1), np.uint8)
  assert bn_lib.recalibrate_batch_stats(from_linen(module), params, state, images,
                                        preprocess=uint8_images) is state
  apply, params, state, images, _ = convbn
  with pytest.raises(InvalidArgument, match="inputs: recalibrating BatchNorm statistics needs a "
                                            "non-empty set"):
    bn_lib.recalibrate_batch_stats(apply, params, state, images[:0], preprocess=uint8_images)
  assert bn_lib.recalibrate_batch_stats(apply, params, {}, None) == {}   # stateless: no inputs
  with pytest.raises(InvalidArgument, match="batch_size: "):
    bn_lib.recalibrate_batch_stats(apply, params, state, images, batch_size=0,
                                   preprocess=uint8_images)
  with pytest.raises(InvalidArgument, match="mesh: expected None or a jax.sharding.Mesh"):
    bn_lib.recalibrate_batch_stats(apply, params, state, images, mesh="data",
                                   preprocess=uint8_images)


def test_recalibration_on_a_mesh_equals_no_mesh(convbn):
  """A 1-device mesh: the same statistics, and they come back replicated on the mesh (the
  4-device comparison is in test_parallel.py)."""
  apply, params, state, images, _ = convbn
  mesh = parallel.make_mesh()
  plain = bn_lib.recalibrate_batch_stats(apply, params, state, images, batch_size=32,
                                         preprocess=uint8_images)
  meshed = bn_lib.recalibrate_batch_stats(apply, params, state, images, batch_size=32, mesh=mesh,
                                          preprocess=uint8_images)
  chex.assert_trees_all_close(meshed, plain, rtol=1e-6, atol=1e-7)
  leaf = jax.tree.leaves(meshed)[0]
  assert leaf.sharding.is_equivalent_to(parallel.replicated_sharding(mesh), leaf.ndim)




class NnxNet(nnx.Module):
  """dense -> BatchNorm (momentum 0.8) -> relu -> dense: an NNX model with a BatchNorm."""

  def __init__(self, rngs):
    self.dense = nnx.Linear(5, 4, rngs=rngs)
    self.bn = nnx.BatchNorm(4, momentum=0.8, rngs=rngs)
    self.head = nnx.Linear(4, 3, rngs=rngs)

  def __call__(self, x):
    return self.head(nnx.relu(self.bn(self.dense(x))))


@pytest.mark.parametrize("batch_size", [16, 70])
def test_nnx_state_variance_is_the_exact_variance_of_its_input(batch_size):
  apply, params, state = models.from_nnx(NnxNet(nnx.Rngs(0)))
  rng = np.random.default_rng(2)
  x = (rng.normal(size=(70, 5)) * np.array([1.0, 3.0, 0.5, 2.0, 1.5]) + 2.0).astype(np.float32)
  new = bn_lib.recalibrate_batch_stats(apply, params, state, x, batch_size=batch_size)
  kernel = np.asarray(params["dense"]["kernel"][...], np.float64)
  bias = np.asarray(params["dense"]["bias"][...], np.float64)
  h = x.astype(np.float64) @ kernel + bias               # the BatchNorm's input, in float64
  np.testing.assert_allclose(np.asarray(new["bn"]["var"][...]), h.var(axis=0), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(new["bn"]["mean"][...]), h.mean(axis=0), rtol=1e-5,
                             atol=1e-6)
  assert isinstance(new, nnx.State)
  # The same on the state as a pure dict, with an apply of one's own.
  graphdef = apply.graphdef
  pure = state.to_pure_dict()

  def pure_apply(p, s, inputs, train):
    template = jax.tree.map(lambda v: v, state)    # fresh Variables at this trace level
    nnx.replace_by_pure_dict(template, s)           # in place
    model = nnx.merge(graphdef, jax.tree.map(lambda v: v, p), template)
    model.train() if train else model.eval()
    logits = model(inputs)
    return logits, nnx.state(model, nnx.BatchStat).to_pure_dict()
  again = bn_lib.recalibrate_batch_stats(pure_apply, params, pure, x, batch_size=batch_size)
  np.testing.assert_allclose(again["bn"]["var"], h.var(axis=0), rtol=1e-5)


def test_a_variance_without_its_mean_is_refused_not_averaged(convbn):
  apply, params, state, images, _ = convbn
  renamed = {"batch_stats": {"bn0": {"running_mean_x": state["batch_stats"]["bn0"]["mean"],
                                     "var": state["batch_stats"]["bn0"]["var"]}}}
  with pytest.raises(InvalidArgument, match="expected a leaf batch_stats/bn0/mean"):
    bn_lib.recalibrate_batch_stats(apply, params, renamed, images, preprocess=uint8_images)

  def plain(p, s, x, train):      # an apply of one's own: probed by name
    del train
    return x.reshape(x.shape[0], -1)[:, :3] @ p["w"], s
  with pytest.raises(InvalidArgument, match="the variance bn/var has no sibling 'mean' leaf"):
    bn_lib.recalibrate_batch_stats(plain, {"w": jnp.ones((3, 2))},
                                   {"bn": {"mu": jnp.zeros(3), "var": jnp.ones(3)}}, images,
                                   preprocess=uint8_images)
  pairs = bn_lib.variance_pairs({"a": {"moving_mean": 0.0, "moving_variance": 1.0}})
  assert pairs == {1: 0}


# ---------------------------------------------------------------------------------------------
# Every adapter: the exact statistics, written so that the library's own inference reads them.

import _adapter_models as am  # noqa: E402


def _library(name):
  if name.startswith("haiku"):
    pytest.importorskip("haiku", reason="dm-haiku is not installed (pip install -e '.[haiku]')")
  if name.startswith("equinox"):
    pytest.importorskip("equinox", reason="equinox is not installed (pip install -e '.[equinox]')")
  library, _, mode = name.partition("-")
  return am.build(library, bn_mode=mode or "batch")


def _trained_state(case, params, x, steps=3):
  """The state after a few training forwards: counters and EMAs as a trained model has them."""
  state = case.state
  for i in range(steps):
    _, state = case.apply(params, state, jnp.asarray(x[:40]), True, rng=jax.random.key(i))
  return state


@pytest.mark.parametrize("library", am.LIBRARIES + ("equinox-ema",))
@pytest.mark.parametrize("batch_size", [32, 100])
def test_every_adapter_gets_the_exact_statistics_its_inference_reads(library, batch_size):
  """Against a float64 NumPy pass: the statistics the model's own inference reads, and its
  inference-mode logits, to 1e-5 relative (Haiku's debiased EMAs and Equinox's counters
  included: the state comes from a few training steps, counters far from 0)."""
  case = _library(library)
  rng = np.random.default_rng(3)
  x = (rng.normal(size=(100, 5)) * np.array([1.0, 3.0, 0.5, 2.0, 1.5]) + 2.0).astype(np.float32)
  params = am.perturbed(case.params, 1)
  state = _trained_state(case, params, x)
  new = bn_lib.recalibrate_batch_stats(case.apply, params, state, x, batch_size=batch_size)
  weights = case.weights(params)
  expected = am.reference_stats(weights, x, batch_size)
  for (mean, var), (want_mean, want_var) in zip(case.read_stats(new), expected):
    np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-5 * np.abs(want_mean).max())
    np.testing.assert_allclose(var, want_var, rtol=1e-5)
  logits, _ = case.apply(params, new, jnp.asarray(x), False)
  want = am.reference_logits(weights, expected, x)
  np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-5,
                             atol=1e-5 * np.abs(want).max())
  chex.assert_trees_all_equal_shapes_and_dtypes(new, state)
  # A second training step from the recalibrated state continues from it: inference still
  # reads the same statistics after training on a batch whose statistics they are.
  layout = bn_lib.stats_layout(case.apply, params, state, x)
  assert layout.source == library.split("-")[0] and len(layout.entries) == 2


class TwiceBN(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    bn = nn.BatchNorm(use_running_average=not train)
    return nn.Dense(2)(bn(nn.relu(bn(x))))


class CustomStats(nn.Module):
  """A layer of one's own writing running statistics into batch_stats."""
  @nn.compact
  def __call__(self, x, train=False):
    mu = self.variable("batch_stats", "mu", jnp.zeros, x.shape[-1:])
    if train:
      mu.value = 0.9 * mu.value + 0.1 * x.mean(axis=0)
    return nn.Dense(2)(x - mu.value)


@pytest.mark.parametrize("module, match", [
    (TwiceBN(), "BatchNorm_0 runs twice per forward"),
    (CustomStats(), "batch_stats leaf batch_stats/mu is not kept by a flax.linen.BatchNorm"),
])
def test_linen_states_no_rule_fits_are_refused(module, match):
  variables = module.init(jax.random.key(0), jnp.ones((2, 3)))
  x = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
  with pytest.raises(InvalidArgument, match=match):
    bn_lib.recalibrate_batch_stats(from_linen(module), variables["params"],
                                   {"batch_stats": variables["batch_stats"]}, x)


def _debiased_apply(p, s, x, train):
  """An apply of one's own whose 'mean' is a zero-debiased average (Haiku's rule) under a
  name the probe knows: the probe must not accept it."""
  if not train:
    return x @ p["w"], s
  count = s["bn"]["count"] + 1
  hidden = 0.99 * s["bn"]["hidden"] + 0.01 * x.mean(axis=0)
  mean = hidden / (1.0 - 0.99 ** count.astype(jnp.float32))
  return x @ p["w"], {"bn": {"count": count, "hidden": hidden, "mean": mean}}


def _unnamed_apply(p, s, x, train):
  """Running statistics in leaves without a known name."""
  new = {"a": 0.9 * s["a"] + 0.1 * x.mean(axis=0)} if train else s
  return x @ p["w"], new


def test_states_of_ones_own_are_probed_only_when_the_probe_verifies():
  x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32) + 1.0
  p = {"w": jnp.ones((3, 2))}
  debiased = {"bn": {"count": jnp.zeros((), jnp.int32), "hidden": jnp.zeros(3),
                     "mean": jnp.zeros(3)}}
  with pytest.raises(InvalidArgument, match="bn/hidden changes in a training forward"):
    bn_lib.recalibrate_batch_stats(_debiased_apply, p, debiased, x)
  with pytest.raises(InvalidArgument, match="the leaf a changes in a training forward but is "
                                            "not a BatchNorm statistic"):
    bn_lib.recalibrate_batch_stats(_unnamed_apply, p, {"a": jnp.zeros(3)}, x)
  declared = models.with_running_stats(_unnamed_apply, [models.RunningStats("a", None, 0.9)])
  new = bn_lib.recalibrate_batch_stats(declared, p, {"a": jnp.zeros(3)}, x, batch_size=16)
  np.testing.assert_allclose(new["a"], x.astype(np.float64).mean(axis=0), rtol=1e-6)


def test_a_declaration_that_does_not_fit_the_model_is_refused():
  x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32) + 1.0
  wrong = models.with_running_stats(_unnamed_apply, [models.RunningStats("a", None, 0.5)])
  with pytest.raises(InvalidArgument, match="the mean of a does not behave as declared"):
    bn_lib.recalibrate_batch_stats(wrong, {"w": jnp.ones((3, 2))}, {"a": jnp.zeros(3)}, x)
