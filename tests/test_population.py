"""Populations: every member equals its seed trained alone, on every driver."""
import logging

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mcu_jax
from mcu_jax import data, models, population, unlearn
from mcu_jax.errors import InvalidArgument
from mcu_jax.preprocess import normalize_uint8
from mcu_jax.runtime import evaluate, parallel, train

CONFIG = train.FitConfig(lr=0.2, momentum=0.9, epochs=1, batch_size=64, cosine=True,
                         schedule_unit="step")
SEEDS = (3, 11, 12, 40)


@pytest.fixture(scope="module")
def setup():
  tt = data.load_digits()
  module = models.get_model("small_cnn", 10, width=4)
  init = lambda key: models.init_model(module, key, (1, 8, 8, 1))
  arrays = {"images": tt.train.images, "labels": tt.train.labels}
  return tt, models.from_linen(module), init, arrays


def solo(setup, seed):
  _, apply, init, arrays = setup
  params, state = init(jax.random.PRNGKey(seed))
  return train.train_model(train.supervised_loss(apply), params, state, arrays, config=CONFIG,
                           rng=jax.random.PRNGKey(seed + 1), preprocess=normalize_uint8).state


@pytest.fixture(scope="module")
def originals(setup):
  _, apply, init, arrays = setup
  return population.train_population(train.supervised_loss(apply), init, arrays,
                                     config=CONFIG, seeds=SEEDS, vectorize=False,
                                     preprocess=normalize_uint8)


def test_a_population_of_four_equals_four_solo_runs(setup, originals):
  assert len(originals) == 4 and originals.seeds == SEEDS
  assert jax.tree.leaves(originals.params)[0].shape[0] == 4
  for i, seed in enumerate(SEEDS):
    alone = solo(setup, seed)
    params, state = originals.member(i)
    chex.assert_trees_all_equal(params, alone.params)       # the same compiled program
    chex.assert_trees_all_equal(state, alone.model_state)
  first, second = originals.member(0)[0], originals.member(1)[0]
  assert not np.allclose(jax.tree.leaves(first)[0], jax.tree.leaves(second)[0])
  assert originals.seconds > 0 and originals.compile_seconds > 0


def _mlp():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(96, 5)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32)
  apply = models.from_function(lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"])
  init = lambda key: ({"w1": jax.random.normal(key, (5, 8)) * 0.5,
                       "w2": jax.random.normal(jax.random.fold_in(key, 1), (8, 2)) * 0.5}, {})
  return x, y, apply, init, train.FitConfig(lr=0.1, momentum=0.9, epochs=3, batch_size=32)


class _DictStore:
  """A ``MemberStore`` in memory that lists what it was asked to keep."""

  def __init__(self):
    self.kept, self.saved = {}, []

  def load(self, i, like):
    return self.kept.get(i)

  def save(self, i, params, model_state, info):
    self.kept[i] = (params, model_state, info)
    self.saved.append(i)


def test_the_vmapped_driver_resumes_member_by_member():
  x, y, apply, init, config = _mlp()
  kw = dict(config=config, seeds=(0, 1, 2, 3, 4), vectorize=True, chunk=2)
  store = _DictStore()
  full = population.train_population(train.supervised_loss(apply), init,
                                     {"images": x, "labels": y}, store=store, **kw)
  assert store.saved == [0, 1, 2, 3, 4]
  for i in (2, 4):                           # lost: an interruption, or a damaged checkpoint
    del store.kept[i]
  store.saved.clear()
  again = population.train_population(train.supervised_loss(apply), init,
                                      {"images": x, "labels": y}, store=store, **kw)
  assert store.saved == [2, 4]               # only the missing members were trained
  chex.assert_trees_all_equal(again.member(3), full.member(3))       # loaded as kept
  chex.assert_trees_all_close(again.params, full.params, atol=1e-6, rtol=1e-6)
  with pytest.raises(InvalidArgument, match="chunk"):
    population.train_population(train.supervised_loss(apply), init,
                                {"images": x, "labels": y}, store=_DictStore(),
                                **{**kw, "chunk": 0})


def test_the_vmapped_driver_equals_solo_runs_to_float_tolerance():
  x, y, apply, init, config = _mlp()
  loss = train.supervised_loss(apply)
  vmapped = population.train_population(loss, init, {"images": x, "labels": y}, config=config,
                                        seeds=(0, 1, 2), vectorize=True)
  for i, seed in enumerate((0, 1, 2)):
    params, state = init(jax.random.PRNGKey(seed))
    alone = train.train_model(loss, params, state, {"images": x, "labels": y}, config=config,
                              rng=jax.random.PRNGKey(seed + 1)).state
    chex.assert_trees_all_close(vmapped.member(i)[0], alone.params, atol=1e-5, rtol=1e-5)


def _compiled_steps(caplog) -> int:
  """Compilations of a training step logged so far (``jax.log_compiles``)."""
  return sum("Compiling jit(step)" in r.getMessage() for r in caplog.records)


def test_base_methods_and_mcu_apply_member_by_member(setup, originals, caplog):
  tt, apply, _, _ = setup
  split = data.class_forget_split(tt.train.labels, [3])
  kw = dict(apply=apply, train_set=tt.train, split=split, preprocess=normalize_uint8,
            config={"epochs": 1})
  two = population.Population.of([originals.member(i) for i in (0, 1)], SEEDS[:2])
  caplog.set_level(logging.WARNING)
  with jax.log_compiles():       # one compiled program serves both members
    unlearned = population.unlearn_population("rl", two, seeds=(7, 8), **kw)
  assert _compiled_steps(caplog) == 1
  alone = unlearn.run("rl", apply=apply, params=two.member(1)[0], model_state=two.member(1)[1],
                      train=tt.train, split=split, preprocess=kw["preprocess"],
                      config={"epochs": 1}, rng=jax.random.PRNGKey(8), progress=False)
  chex.assert_trees_all_equal(unlearned.member(1)[0], alone.params)
  forget = (tt.train.images[split.forget], tt.train.labels[split.forget])
  retain = (tt.train.images[split.retain], tt.train.labels[split.retain])
  options = dict(scenario="class", curve=mcu_jax.CurveOptions(epochs=1, batch_size=64),
                 sweep=mcu_jax.SweepOptions(points=5, recal_batch_size=64),
                 preprocess=normalize_uint8, targets=mcu_jax.Targets(retain=95.0, forget=0.0))
  caplog.clear()
  with jax.log_compiles():
    curves = population.mcu_population(apply, two, unlearned, forget=forget, retain=retain,
                                       seeds=(5, 6), **options)
  assert _compiled_steps(caplog) == 1
  result = mcu_jax.unlearn_curve(apply, two.member(0)[0], unlearned.member(0)[0],
                                 model_state=two.member(0)[1], forget=forget, retain=retain,
                                 seed=5, **options)
  chex.assert_trees_all_close(curves.member(0)[0], result.params, rtol=1e-6, atol=1e-7)
  assert curves.ts[0] == result.t and len(curves.ts) == 2


@pytest.mark.parametrize("method,config", [
    ("ssd", None), ("iu", {"woodfisher_samples": 50}), ("boundary_shrink", {"epochs": 1}),
    ("bad_teacher", None), ("unsir", {"noise_steps": 2, "retain_per_class": 20})])
def test_issue25_methods_run_in_a_population_as_alone(setup, originals, method, config):
  tt, apply, init, _ = setup
  split = data.class_forget_split(tt.train.labels, [3])
  two = population.Population.of([originals.member(i) for i in (0, 1)], SEEDS[:2])
  unlearned = population.unlearn_population(
      method, two, apply=apply, train_set=tt.train, split=split, preprocess=normalize_uint8,
      config=config, seeds=(7, 8), init=init)
  alone = unlearn.run(method, apply=apply, params=two.member(1)[0], model_state=two.member(1)[1],
                      train=tt.train, split=split, preprocess=normalize_uint8, config=config,
                      rng=jax.random.PRNGKey(8), progress=False, init=init)
  chex.assert_trees_all_close(unlearned.member(1), (alone.params, alone.model_state),
                              rtol=1e-6, atol=1e-6)


def test_logits_of_a_population(setup, originals):
  tt, apply, _, _ = setup
  x = tt.test.images[:50]
  looped = population.population_logits(apply, originals, x, vectorize=False,
                                        preprocess=normalize_uint8)
  vmapped = population.population_logits(apply, originals, x, vectorize=True,
                                         preprocess=normalize_uint8)
  assert looped.shape == (4, 50, 10)
  np.testing.assert_allclose(vmapped, looped, rtol=1e-5, atol=1e-5)
  alone = evaluate.predict_logits(apply, *originals.member(2), x, preprocess=normalize_uint8)
  np.testing.assert_array_equal(looped[2], alone)
  mesh = parallel.make_mesh()        # what None means (parallel.resolve_mesh)
  for vectorize, want in ((False, looped), (True, vmapped)):
    np.testing.assert_array_equal(population.population_logits(
        apply, originals, x, vectorize=vectorize, preprocess=normalize_uint8, mesh=mesh), want)
  with pytest.raises(InvalidArgument, match="mesh: expected None or a jax.sharding.Mesh"):
    population.population_logits(apply, originals, x, mesh=jax.devices())


def test_the_loop_driver_compiles_one_epoch_for_all_members(caplog):
  """Every member runs ``train.train_model`` with the first member's compiled epoch."""
  x, y, apply, init, config = _mlp()
  caplog.set_level(logging.WARNING)
  with jax.log_compiles():
    made = population.train_population(train.supervised_loss(apply), init,
                                       {"images": x, "labels": y}, config=config,
                                       seeds=(0, 1, 2), vectorize=False)
  compiled = [r.getMessage() for r in caplog.records
              if r.getMessage().startswith(("Compiling jit(step)", "Compiling jit(epoch)"))]
  assert len(compiled) == 1 and len(made) == 3, compiled


def test_bad_populations():
  with pytest.raises(InvalidArgument, match="seeds: expected distinct integers"):
    population.train_population(None, None, {"labels": np.zeros(3)}, config=CONFIG,
                                seeds=(1, 1))
  with pytest.raises(InvalidArgument, match=r"seeds: expected distinct integers, got \[1\.5\]"):
    population.train_population(None, None, {"labels": np.zeros(3)}, config=CONFIG,
                                seeds=(1.5,))     # never truncated to 1
  with pytest.raises(InvalidArgument, match="trees: expected at least one pytree"):
    population.stack([])
  with pytest.raises(InvalidArgument, match="seeds: expected one per member"):
    population.Population.of([({"w": jnp.ones(2)}, {})], (1, 2))
