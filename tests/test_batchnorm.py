"""BatchNorm recalibration: exact whole-pass statistics for Linen, NNX and plain states."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mcu_jax import batchnorm as bn_lib
from mcu_jax import models, parallel
from mcu_jax.models import from_linen, get_model, init_model
from mcu_jax.validation import InvalidArgument


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
  new = bn_lib.recalibrate_batch_stats(apply, params, state, images, batch_size=batch_size)
  mean, var = pre_bn.mean(axis=(0, 1, 2)), pre_bn.var(axis=(0, 1, 2))
  for bn in ("bn0", "bn1"):      # momenta 0.99 and 0.9, both inferred
    stats = new["batch_stats"][bn]
    np.testing.assert_allclose(stats["mean"], mean, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], var, rtol=2e-5, atol=1e-7)
  chex.assert_trees_all_equal_shapes_and_dtypes(new, state)


def test_recalibration_with_given_momentum(convbn):
  apply, params, state, images, pre_bn = convbn
  only_bn1 = {"batch_stats": {"bn1": state["batch_stats"]["bn1"]}}

  def apply_bn1(p, s, x, train):   # bn0 left at its init values, only bn1 recalibrated
    full = {"batch_stats": {"bn0": state["batch_stats"]["bn0"], **s["batch_stats"]}}
    logits, out = apply(p, full, x, train)
    return logits, {"batch_stats": {"bn1": out["batch_stats"]["bn1"]}}

  given = bn_lib.recalibrate_batch_stats(apply_bn1, params, only_bn1, images, batch_size=50,
                                     momentum=0.9)
  inferred = bn_lib.recalibrate_batch_stats(apply_bn1, params, only_bn1, images, batch_size=50)
  np.testing.assert_allclose(given["batch_stats"]["bn1"]["var"], pre_bn.var(axis=(0, 1, 2)),
                             rtol=2e-5)
  chex.assert_trees_all_close(given, inferred, rtol=2e-6)


def test_recalibration_empty_state_and_bad_input(convbn):
  module = get_model("mlp", 3, hidden=(4,))
  params, state = init_model(module, jax.random.key(0), (1, 6, 6, 1))
  assert state == {}
  images = np.zeros((5, 6, 6, 1), np.uint8)
  assert bn_lib.recalibrate_batch_stats(from_linen(module), params, state, images) is state
  apply, params, state, images, _ = convbn
  with pytest.raises(InvalidArgument, match="inputs: recalibrating BatchNorm statistics needs a "
                                            "non-empty set"):
    bn_lib.recalibrate_batch_stats(apply, params, state, images[:0])
  assert bn_lib.recalibrate_batch_stats(apply, params, {}, None) == {}   # stateless: no inputs
  with pytest.raises(InvalidArgument, match="batch_size: "):
    bn_lib.recalibrate_batch_stats(apply, params, state, images, batch_size=0)
  with pytest.raises(InvalidArgument, match="mesh: expected None or a jax.sharding.Mesh"):
    bn_lib.recalibrate_batch_stats(apply, params, state, images, mesh="data")


def test_recalibration_on_a_mesh_equals_no_mesh(convbn):
  """A 1-device mesh: the same statistics, and they come back replicated on the mesh (the
  4-device comparison is in test_parallel.py)."""
  apply, params, state, images, _ = convbn
  mesh = parallel.make_mesh()
  plain = bn_lib.recalibrate_batch_stats(apply, params, state, images, batch_size=32)
  meshed = bn_lib.recalibrate_batch_stats(apply, params, state, images, batch_size=32, mesh=mesh)
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
  with pytest.raises(InvalidArgument, match="the variance batch_stats/bn0/var has no sibling "
                                            "'mean' leaf"):
    bn_lib.recalibrate_batch_stats(apply, params, renamed, images)
  pairs = bn_lib.variance_pairs({"a": {"moving_mean": 0.0, "moving_variance": 1.0}})
  assert pairs == {1: 0}
