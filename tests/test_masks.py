import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcu_jax.errors import InvalidArgument
from mcu_jax.runtime import masks


def grad_tree(rng, tie=False):
  shapes = {"c1": (3, 3, 1, 4), "b1": (4,), "c2": (3, 3, 4, 8), "b2": (8,), "d": (8, 10),
            "db": (10,), "s": (8,)}
  tree = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
  if tie:  # equal scores: same size and same values
    tree["s"] = tree["b2"].copy()
    tree["b1"] = np.zeros(4, np.float32)
    tree["db"] = np.zeros(10, np.float32)
  return tree


def np_saliency(g):
  g = np.asarray(g, np.float64).ravel()
  return np.sqrt(np.sum(g * g)) / g.size


def np_mcu_mask(retain, forget, k, kr):
  """Independent form: prefix sums over a (-score, position) ordering."""
  names = list(jax.tree.leaves(jax.tree.map(lambda _: 0, retain)))  # placeholder for order
  del names
  r = [np_saliency(g) for g in jax.tree.leaves(retain)]
  f = [np_saliency(g) for g in jax.tree.leaves(forget)]
  sizes = np.array([np.size(g) for g in jax.tree.leaves(retain)])
  total = sizes.sum()
  order_r = sorted(range(len(r)), key=lambda i: (-r[i], i))
  before = np.concatenate([[0], np.cumsum(sizes[order_r])[:-1]])
  excluded = {i for i, b in zip(order_r, before) if b < int(kr * total)}
  rest = [i for i in sorted(range(len(f)), key=lambda i: (-f[i], i)) if i not in excluded]
  before = np.concatenate([[0], np.cumsum(sizes[rest])[:-1]])
  selected = {i for i, b in zip(rest, before) if b < int(k * total)}
  flags = [i in selected for i in range(len(r))]
  return jax.tree.unflatten(jax.tree.structure(retain), flags)


def np_salun_mask(forget, ratio):
  leaves = jax.tree.leaves(forget)
  flat = np.concatenate([np.abs(np.asarray(g, np.float64)).ravel() for g in leaves])
  n_keep = int(flat.size * ratio)
  order = np.lexsort((np.arange(flat.size), -flat))  # by |g| desc, then position
  keep = np.zeros(flat.size, bool)
  keep[order[:n_keep]] = True
  out, offset = [], 0
  for g in leaves:
    out.append(keep[offset:offset + g.size].reshape(g.shape))
    offset += g.size
  return jax.tree.unflatten(jax.tree.structure(forget), out)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("tie", [False, True])
def test_mcu_mask_matches_numpy(seed, tie):
  rng = np.random.default_rng(seed)
  retain, forget = grad_tree(rng, tie), grad_tree(rng, tie)
  for k in (0.01, 0.1, 0.25, 0.5, 0.77, 1.0):
    for kr in (0.0, 0.05, 0.1, 0.3, 0.6, 0.95):
      got = masks.mcu_mask(retain, forget, k=k, kr=kr)
      assert all(isinstance(x, bool) for x in jax.tree.leaves(got))
      assert got == np_mcu_mask(retain, forget, k, kr), (k, kr)


def test_mcu_mask_kr_zero_excludes_nothing_and_k_one_takes_all():
  rng = np.random.default_rng(7)
  retain, forget = grad_tree(rng), grad_tree(rng)
  assert all(jax.tree.leaves(masks.mcu_mask(retain, forget, k=1.0, kr=0.0)))


def test_mcu_mask_overshoots_with_the_crossing_tensor():
  retain = {"a": np.ones(10, np.float32), "b": np.ones(90, np.float32)}
  forget = {"a": np.full(10, 5.0, np.float32), "b": np.ones(90, np.float32)}
  # a scores 5*sqrt(10)/10 > b: a is taken (10 < 50), then b is taken too (10 < 50).
  assert masks.mcu_mask(retain, forget, k=0.5) == {"a": True, "b": True}
  assert masks.mcu_mask(retain, forget, k=0.1) == {"a": True, "b": False}


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("ratio", [0.003, 0.1, 0.5, 0.9, 1.0])
def test_salun_mask_matches_numpy(seed, ratio):
  rng = np.random.default_rng(seed)
  forget = grad_tree(rng, tie=True)
  forget["d"][:, :3] = 0.25  # many exact ties
  got = masks.salun_mask(forget, ratio)
  want = np_salun_mask(forget, ratio)
  chex.assert_trees_all_equal(jax.tree.map(np.asarray, got), want)
  assert sum(int(np.sum(m)) for m in jax.tree.leaves(got)) == int(
      sum(np.size(g) for g in jax.tree.leaves(forget)) * ratio)


@pytest.mark.parametrize("loop", ["scan", "python"])
def test_layer_saliency_and_accumulation(loop):
  rng = np.random.default_rng(1)
  params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
  xs = jnp.asarray(rng.normal(size=(5, 8, 4)), jnp.float32)  # 5 batches of 8

  def loss_fn(p, x):
    return jnp.mean((x @ p["w"]) ** 2)

  total = masks.accumulate_gradients(loss_fn, params, xs, loop=loop)
  want = sum(2 * np.asarray(x).T @ (np.asarray(x) @ np.asarray(params["w"])) / (8 * 3)
             for x in xs)
  np.testing.assert_allclose(total["w"], want, rtol=2e-5, atol=1e-6)
  score = masks.layer_saliency(total)["w"]
  np.testing.assert_allclose(score, np.linalg.norm(want) / 12, rtol=2e-5)


def test_accumulate_gradients_compiles_once_per_loss_fn():
  traces = []

  def loss_fn(p, x):
    traces.append(1)
    return jnp.sum(x @ p)

  params, xs = jnp.ones((3, 2)), jnp.ones((4, 5, 3))
  masks.accumulate_gradients(loss_fn, params, xs, loop="scan")
  first = len(traces)
  for _ in range(2):
    total = masks.accumulate_gradients(loss_fn, params, xs, loop="scan")
  np.testing.assert_allclose(total, np.full((3, 2), 20.0))
  assert first > 0 and len(traces) == first   # later calls trace nothing


@pytest.mark.parametrize("loop", ["scan", "python"])
def test_summed_ce_gradients_match_numpy(loop):
  """Sum over padded batches of each batch's mean-CE gradient of a linear model, compiled
  ahead, against float64 NumPy: padding must not count and each batch averages its own."""
  from mcu_jax import data
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, size=(11, 2, 2, 1), dtype=np.uint8)
  labels = rng.integers(0, 3, size=11).astype(np.int32)
  params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}

  def apply(p, model_state, x, train):
    return x.reshape(x.shape[0], -1) @ p["w"], model_state

  def preprocess(key, x):
    return x.astype(jnp.float32) / 255.0

  batches = data.padded_batches({"images": images, "labels": labels}, 4)  # 4 + 4 + 3
  fn = masks.summed_ce_gradients_fn(apply, preprocess, loop=loop)
  got = fn.lower(params, {}, batches).compile()(params, {}, batches)

  x = images.reshape(11, -1).astype(np.float64) / 255.0
  logits = x @ np.asarray(params["w"], np.float64)
  probs = np.exp(logits - logits.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  residual = probs - np.eye(3)[labels]
  want = sum(x[b].T @ residual[b] / len(range(11)[b])
             for b in (slice(0, 4), slice(4, 8), slice(8, 11)))
  np.testing.assert_allclose(got["w"], want, rtol=1e-5, atol=1e-6)
  assert got["w"].dtype == jnp.float32


@pytest.mark.parametrize("kwargs,name", [({"k": 0.0}, "k"), ({"k": 1.5}, "k"), ({"k": -1}, "k"),
                                         ({"kr": 1.0}, "kr"), ({"kr": -0.1}, "kr")])
def test_mcu_mask_bad_fractions(kwargs, name):
  g = {"a": np.ones(3, np.float32)}
  with pytest.raises(ValueError, match=f"^{name}: must lie in"):
    masks.mcu_mask(g, g, **kwargs)


@pytest.mark.parametrize("ratio", [0.0, -0.5, 1.01])
def test_salun_mask_bad_ratio(ratio):
  with pytest.raises(ValueError, match="ratio: must lie in"):
    masks.salun_mask({"a": np.ones(3, np.float32)}, ratio)


def test_mcu_mask_mismatched_trees():
  with pytest.raises(ValueError, match="retain_grads and forget_grads"):
    masks.mcu_mask({"a": np.ones(3)}, {"b": np.ones(3)})


def test_fractions_that_select_nothing_raise():
  g = {"a": np.ones(100, np.float32)}
  with pytest.raises(ValueError, match="selects no weight"):
    masks.salun_mask(g, 0.005)
  with pytest.raises(ValueError, match="selects no parameter"):
    masks.mcu_mask(g, g, k=0.005)
  with pytest.raises(ValueError, match="k: expected a number, got str '0.5'"):
    masks.mcu_mask(g, g, k="0.5")


def test_mask_options_defaults_and_refusals():
  """``MaskOptions`` holds the defaults of ``mcu_mask`` and refuses bad values naming the
  field."""
  import inspect
  options = masks.MaskOptions()
  assert (options.enabled, options.k, options.kr) == (True, 0.5, 0.0)
  defaults = inspect.signature(masks.mcu_mask).parameters
  assert (defaults["k"].default, defaults["kr"].default) == (options.k, options.kr)
  for kwargs, message in ((dict(k=0.0), r"MaskOptions.k: must lie in \(0.0, 1.0\]"),
                          (dict(kr=1.0), r"MaskOptions.kr: must lie in \[0.0, 1.0\)"),
                          (dict(k="0.5"), r"MaskOptions.k"),
                          (dict(enabled="yes"), r"MaskOptions.enabled: expected a bool")):
    with pytest.raises(InvalidArgument, match=message):
      masks.MaskOptions(**kwargs)
  with pytest.raises(InvalidArgument, match=r"MaskOptions.k"):
    options.replace(k=2.0)


def test_a_disabled_mask_trains_every_tensor_and_computes_nothing(monkeypatch):
  params = {"a": jnp.ones((2, 3)), "b": jnp.ones(3)}
  monkeypatch.setattr(masks, "summed_ce_gradients_fn", None)     # nothing may be computed
  found = masks.compute_mask(None, params, {}, forget=None, retain=None,
                             options=masks.MaskOptions(enabled=False))
  assert found.mask == {"a": True, "b": True} and found.fraction == 1.0
  with pytest.raises(InvalidArgument, match="options: expected a MaskOptions"):
    masks.compute_mask(None, params, {}, forget=None, retain=None, options={"k": 0.5})
