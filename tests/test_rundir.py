"""The run directory: one writer, records, digests, removal, checkpoint policy."""
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from mcu_jax.pipeline import rundir
from mcu_jax.pipeline.rundir import RunDir, Stage, StageError


def test_records_round_trip_and_reading_never_writes(tmp_path):
  run = RunDir(tmp_path / "r")
  assert not run.has("a")
  with pytest.raises(StageError, match="a.json does not exist"):
    run.read("a")
  assert not (tmp_path / "r").exists()          # reading made nothing, took no lock
  run.write("a", {"x": 1.5, "v": np.arange(3)})
  assert run.read("a") == {"x": 1.5, "v": [0, 1, 2]}
  assert (tmp_path / "r" / ".lock").read_text() == str(os.getpid())
  run.record_path("b").write_bytes(b"{not json\xff")
  with pytest.raises(StageError, match=r"b.json is corrupt .*rerun its stage with --force"):
    run.read("b")


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path):
  run = RunDir(tmp_path / "r")
  run.write("a", {"x": 1})
  script = textwrap.dedent(f"""
      from mcu_jax.pipeline.rundir import RunDir, StageError
      try:
        RunDir({str(tmp_path / 'r')!r}).write("b", {{"y": 2}})
      except StageError as e:
        print(e)
  """)
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert f"is in use by PID {os.getpid()}" in out.stdout, out.stderr[-2000:]
  assert not run.has("b")                       # nothing written by the refused writer
  run.release()
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0 and out.stdout == "" and run.read("b") == {"y": 2}


def test_a_lock_left_by_a_killed_process_is_free(tmp_path):
  script = textwrap.dedent(f"""
      import os, signal
      from mcu_jax.pipeline.rundir import RunDir
      RunDir({str(tmp_path / 'r')!r}).write("a", {{"x": 1}})
      os.kill(os.getpid(), signal.SIGKILL)
  """)
  subprocess.run([sys.executable, "-c", script], timeout=120,
                 env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert (tmp_path / "r" / ".lock").read_text().strip()     # the dead writer's PID is left
  RunDir(tmp_path / "r").write("b", {"y": 2})                # and its lock is not


def test_a_file_where_the_directory_should_be(tmp_path):
  (tmp_path / "f").write_text("x")
  with pytest.raises(StageError, match="exists and is not a directory"):
    RunDir(tmp_path / "f").write("a", {})


def test_saved_trees_are_checked_against_their_digest(tmp_path):
  run = RunDir(tmp_path / "r")
  tree = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
  digest = run.save_tree("m/model", tree)
  np.testing.assert_array_equal(run.load_tree("m/model", tree, digest)["w"], tree["w"])
  data_files = [p for p in (tmp_path / "r" / "m" / "model").rglob("*")
                if p.is_file() and p.stat().st_size > 64 and "METADATA" not in p.name.upper()]
  flipped = 0
  for path in data_files:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    flipped += 1
  assert flipped
  with pytest.raises((StageError, rundir.checkpoint.CheckpointError),
                     match="digest recorded when it was saved|cannot restore"):
    run.load_tree("m/model", tree, digest)


def test_remove_and_copy(tmp_path):
  a, b = RunDir(tmp_path / "a"), RunDir(tmp_path / "b")
  a.write("x", {"v": 1})
  a.save_tree("x/model", {"w": jnp.ones(2)})
  b.copy_from(a, ["x/model", "x.json"])
  assert b.read("x") == {"v": 1} and (tmp_path / "b" / "x" / "model").is_dir()
  b.remove(["x.json", "x/model", "never/there"])
  assert not b.has("x") and not (tmp_path / "b" / "x" / "model").exists()


def test_downstream_is_derived_from_the_needs():
  noop = lambda ctx, stage: {}
  stages = (Stage("train", "original", (), (), (), noop),
            Stage("retrain", "retrain", (), (), (), noop),
            Stage("unlearn", "unlearn", ("original",), (), (), noop),
            Stage("curve", "curve", ("original", "unlearn"), (), (), noop),
            Stage("report", "report", ("retrain", "curve"), (), (), noop))
  assert rundir.downstream(stages, "original") == ("unlearn", "curve", "report")
  assert rundir.downstream(stages, "retrain") == ("report",)
  assert rundir.downstream(stages, "report") == ()


def test_digests_are_of_content_and_config_sections_pick_keys():
  assert rundir.digest({"a": 1, "b": [1, 2]}) == rundir.digest({"b": [1, 2], "a": 1})
  assert rundir.digest({"a": 1}) != rundir.digest({"a": 2})
  config = {"curve": {"lr": 0.1, "epochs": 3}, "seed": 0}
  assert rundir.config_section(config, ("curve.lr", "seed")) == {"curve.lr": 0.1, "seed": 0}


def test_checkpointer_policy_for_a_partial_run(tmp_path):
  run = RunDir(tmp_path / "r")
  with run.checkpointer("s", resume=False, force=False) as ckpt:
    ckpt.save(1, {"w": jnp.ones(2)}, {"epoch": 1})
  with pytest.raises(StageError, match="partial checkpoint.*--resume.*--force"):
    run.checkpointer("s", resume=False, force=False)
  with run.checkpointer("s", resume=True, force=False) as ckpt:
    assert ckpt.latest_step() == 1
  with run.checkpointer("s", resume=True, force=True) as ckpt:
    assert ckpt.latest_step() is None           # force starts over


def test_nonfinite_paths_names_every_nan_and_inf():
  record = {"a": 1.0, "b": {"c": float("nan"), "d": [0.5, np.float32(np.inf)]},
            "e": np.array([1.0, np.nan]), "f": jnp.ones(3), "g": "nan", "h": 3, "i": None,
            "j": (2.0, float("-inf"))}
  assert rundir.nonfinite_paths(record) == ["record.b.c", "record.b.d[1]", "record.e",
                                            "record.j[1]"]
  assert rundir.nonfinite_paths({"x": [1.0, {"y": np.int64(2)}]}) == []


def test_inventory_and_damage_name_the_file_or_directory_lost(tmp_path):
  run = RunDir(tmp_path / "r")
  run.save_tree("m/model", {"w": jnp.arange(6.0)})
  run.write_file(lambda path: path.write_text("# report\n"), run.path / "report.md")
  files = run.inventory(["m/model", "report.md", "never/there"])
  assert files["report.md"] == len("# report\n") and len(files) > 3
  assert all(name.startswith("m/model/") for name in files if name != "report.md")
  assert run.damage(files) is None
  (run.path / "report.md").write_text("#")
  assert run.damage(files) == (f"its output {run.path / 'report.md'} has 1 bytes, not the 9 it "
                               "was written with (damaged)")
  (run.path / "report.md").write_text("# report\n")
  import shutil
  shutil.rmtree(run.path / "m" / "model")
  assert run.damage(files) == f"its output {run.path / 'm' / 'model'} is missing"


def test_removal_and_save_errors_name_the_full_path(tmp_path, monkeypatch):
  run = RunDir(tmp_path / "r")
  run.save_tree("m/model", {"w": jnp.ones(2)})

  def denied(path, *args, **kwargs):   # what an fd-based rmtree reports: the bare name
    raise PermissionError(13, "Permission denied", os.path.basename(path))
  with monkeypatch.context() as patch:
    patch.setattr(os, "unlink", denied)
    with pytest.raises(PermissionError) as caught:
      run.remove(["m/model"])
  assert os.path.dirname(caught.value.filename) == str(run.path / "m" / "model")
  monkeypatch.setattr(rundir.tempfile, "mkdtemp", lambda prefix, dir: denied(dir / prefix))
  with pytest.raises(PermissionError) as caught:
    run.save_tree("n/model", {"w": jnp.ones(2)})
  assert caught.value.filename == str(run.path / "n")
  assert not (run.path / "n" / "model").exists()


def test_upstream_and_what_an_interrupted_stage_kept(tmp_path):
  noop = lambda ctx, stage: {}
  stages = (Stage("train", "original", ("split",), (), ("original/model", "original/ckpt"), noop),
            Stage("unlearn", "unlearn", ("original",), (), (), noop),
            Stage("curve", "curve", ("unlearn",), (), (), noop),
            Stage("fq", "fq", ("split",), (), ("fq.md", "fq/ckpt"), noop, keeps=("fq/ckpt",)))
  assert rundir.upstream(stages, "curve") == ("original", "unlearn")
  assert rundir.upstream(stages, "original") == ()
  assert stages[0].products == ("original/model",)
  ckpt = tmp_path / "original" / "ckpt"
  assert stages[0].kept(tmp_path) == ("no epoch had finished, so no checkpoint was kept in "
                                      f"{ckpt}")
  for name in ("3", "4", "5.orbax-checkpoint-tmp-1"):
    (ckpt / name).mkdir(parents=True)
  assert stages[0].kept(tmp_path) == f"last checkpoint kept: epoch 4 in {ckpt}"
  assert stages[1].kept(tmp_path) == "it keeps no checkpoint and restarts from its beginning"
  for name in ("a-1/0.json", "a-1/1.json", "b-2/0.json"):
    (tmp_path / "fq" / "ckpt" / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "fq" / "ckpt" / name).write_text("{}")
  assert stages[3].kept(tmp_path) == ("kept: 3 finished population member(s) in "
                                      f"{tmp_path / 'fq' / 'ckpt'}")
