"""Checkpoints: saved trees, epoch checkpoints, corruption and the fall-back to a good one."""
import chex
import jax.numpy as jnp
import numpy as np
import pytest

from mcu_jax.runtime import checkpoint


def test_missing_and_corrupt_checkpoints(tmp_path):
  params = {"w": jnp.arange(12.0).reshape(3, 4), "b": jnp.ones(4)}
  with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
    checkpoint.load_tree(tmp_path / "nothing", params)
  checkpoint.save_tree(tmp_path / "model", params)
  chex.assert_trees_all_equal(checkpoint.load_tree(tmp_path / "model", params), params)
  for f in (tmp_path / "model").rglob("*"):
    if f.is_file() and f.stat().st_size > 0 and "METADATA" not in f.name:
      f.write_bytes(b"garbage")
  with pytest.raises(checkpoint.CheckpointError, match=str(tmp_path / "model")):
    checkpoint.load_tree(tmp_path / "model", params)
  with checkpoint.Checkpointer(tmp_path / "empty") as empty:
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint in"):
      empty.restore(params)


def test_checkpoint_structure_mismatch_is_clear(tmp_path):
  checkpoint.save_tree(tmp_path / "m", {"a": jnp.ones(3)})
  with pytest.raises(checkpoint.CheckpointError, match="cannot restore checkpoint"):
    checkpoint.load_tree(tmp_path / "m", {"a": jnp.ones(4)})


def _corrupt(step_dir):
  for path in step_dir.rglob("*"):
    if path.is_file() and path.stat().st_size > 64 and "metadata" not in path.name.lower():
      raw = bytearray(path.read_bytes())
      raw[len(raw) // 2] ^= 0x01
      path.write_bytes(bytes(raw))


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_good_one(tmp_path):
  first, second = {"w": jnp.arange(8.0)}, {"w": jnp.arange(8.0) * 2}
  with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
    ckpt.save(1, first, {"epoch": 1})
    ckpt.save(2, second, {"epoch": 2})
  _corrupt(tmp_path / "ckpt" / "2")
  with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
    with pytest.warns(UserWarning, match=r"checkpoint .*2.*falling back to checkpoint 1"):
      state, meta = ckpt.restore(first)
  chex.assert_trees_all_equal(state, first)
  assert meta["epoch"] == 1
  _corrupt(tmp_path / "ckpt" / "1")
  with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint .*1"):
      with pytest.warns(UserWarning):
        ckpt.restore(first)


def test_tree_digest_sees_every_byte_shape_and_name():
  tree = {"a": np.arange(4, dtype=np.float32)}
  base = checkpoint.tree_digest(tree)
  assert checkpoint.tree_digest({"a": np.arange(4, dtype=np.float32)}) == base
  flipped = tree["a"].copy()
  flipped.view(np.uint8)[3] ^= 1
  for other in ({"a": flipped}, {"b": tree["a"]}, {"a": tree["a"].reshape(2, 2)},
                {"a": tree["a"].astype(np.float64)}):
    assert checkpoint.tree_digest(other) != base
