import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import numpy as np
import pytest
from _cli_settings import FAST

from mcu_jax.pipeline import cli
from mcu_jax.runtime import checkpoint


def test_demo_writes_every_report_file_and_metric(demo_dir, capsys):
  record = json.loads((demo_dir / "report.json").read_text())
  names = [row["method"] for row in record["rows"]]
  assert names[:3] == ["Original", "Retrain", "RL"] and names[3].startswith("RL+MCU")
  for row in record["rows"]:
    for key in ("UA", "RA", "TA", "MIA", "loss_auc", "AvgGap", "RTE", "TA_forgotten"):
      assert isinstance(row[key], float), (row["method"], key)
  assert record["rows"][1]["AvgGap"] == 0.0
  # Class forgetting: TA counts the other classes only, which the retrained model knows.
  retrain = json.loads((demo_dir / "retrain.json").read_text())
  assert record["rows"][1]["TA"] > retrain["test_acc"]
  assert record["rows"][1]["TA_forgotten"] == 0.0
  assert 0.75 <= record["chosen_t"] <= 1.0
  text = (demo_dir / "report.md").read_text()
  assert "| method |" in text and "RL+MCU" in text
  for png in ("sweep.png", "methods.png"):
    data = (demo_dir / png).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
  sweep = json.loads((demo_dir / "sweep.json").read_text())
  assert len(sweep["sweep"]["ts"]) == 6
  config = json.loads((demo_dir / "config.json").read_text())
  assert config["forget"] == {"kind": "class", "ratio": 0.1, "classes": [3]}


def test_finished_stages_are_no_ops(demo_dir, capsys):
  model_file = next((demo_dir / "original" / "model").rglob("*"))
  before = {p: p.stat().st_mtime_ns for p in demo_dir.rglob("*") if p.is_file()}
  assert cli.main(["demo", "--run-dir", str(demo_dir), *FAST]) == 0
  after = {p: p.stat().st_mtime_ns for p in demo_dir.rglob("*") if p.is_file()}
  changed = [p.name for p in before if before[p] != after.get(p)]
  assert changed == ["config.json"] or changed == [], changed
  assert model_file.exists()
  assert "RL+MCU" in capsys.readouterr().out


def test_other_configuration_in_same_run_dir_is_refused(demo_dir, capsys):
  assert cli.main(["curve", "--run-dir", str(demo_dir), "--set", "curve.lr=0.5"]) == 2
  assert "another configuration (differs in: curve.lr)" in capsys.readouterr().err


def test_stage_commands_reuse_the_run_configuration(demo_dir, capsys):
  assert cli.main(["sweep", "--run-dir", str(demo_dir), "--no-progress"]) == 0
  assert "chosen_t" in capsys.readouterr().out


def test_stage_needs_its_inputs(tmp_path, capsys):
  assert cli.main(["curve", "--run-dir", str(tmp_path / "r"), *FAST]) == 2
  assert "stage 'original' has not run" in capsys.readouterr().err


@pytest.mark.parametrize("override,message", [
    ("curve.epoch=3", "unknown key(s) epoch"),
    ("curve.epochs=many", "expected an integer"),
    ("mask.k=2", "config.mask.k: must lie in"),
])
def test_config_errors_write_nothing(tmp_path, capsys, override, message):
  run_dir = tmp_path / "never"
  assert cli.main(["run", "--run-dir", str(run_dir), "--set", override]) == 2
  err = capsys.readouterr().err
  assert message in err and err.count("error") == 1
  assert not run_dir.exists()


def _train_command(run_dir, epochs, extra=()):
  return [sys.executable, str(Path(__file__).with_name("_cli_train.py")), "train",
          "--run-dir", str(run_dir), "--no-progress", "--set", f"train.epochs={epochs}",
          "--set", "model_options={width: 8}", *extra]


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  epochs = 6
  killed = tmp_path / "killed"
  proc = subprocess.Popen(_train_command(killed, epochs), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
  ckpt = killed / "original" / "ckpt"
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    steps = [p for p in ckpt.glob("*") if p.name.isdigit()] if ckpt.exists() else []
    if any(int(p.name) >= 2 for p in steps):
      break
    time.sleep(0.05)
  assert proc.poll() is None, "training finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / "original.json").exists()

  refused = subprocess.run(_train_command(killed, epochs), env=env, capture_output=True,
                           text=True)
  assert refused.returncode == 2 and "--resume" in refused.stderr

  resumed = subprocess.run(_train_command(killed, epochs, ["--resume"]), env=env,
                           capture_output=True, text=True)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  history = json.loads((killed / "original.json").read_text())["history"]
  assert [h["epoch"] for h in history] == list(range(1, epochs + 1))

  straight = tmp_path / "straight"
  done = subprocess.run(_train_command(straight, epochs), env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-2000:]
  a = checkpoint.load_tree(killed / "original" / "model")
  b = checkpoint.load_tree(straight / "original" / "model")
  chex.assert_trees_all_equal(a, b)


def test_corrupt_model_checkpoint_names_the_file(demo_dir, tmp_path, capsys):
  import shutil
  copy = tmp_path / "copy"
  shutil.copytree(demo_dir, copy)
  for f in (copy / "unlearn" / "model").rglob("*"):
    if f.is_file() and "METADATA" not in f.name and f.stat().st_size:
      f.write_bytes(b"broken")
  (copy / "curve.json").unlink()
  assert cli.main(["curve", "--run-dir", str(copy), "--no-progress"]) == 2
  line = _one_error_line(capsys.readouterr().err)   # another size: caught before loading
  assert f"its output {copy / 'unlearn' / 'model'}/" in line and "(damaged)" in line
  assert f"`mcu-jax unlearn --run-dir {copy}` rebuilds it" in line


@pytest.mark.slow
def test_demo_on_two_devices_matches_one_device(demo_dir, tmp_path):
  """Every stage on a 2-device mesh (forced CPU devices): models restored from disk, base
  methods' outputs and the data all meet on the mesh, and the report agrees with the
  1-device run up to float reassociation (measured: identical)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  run_dir = tmp_path / "two"
  done = subprocess.run([sys.executable, str(Path(__file__).with_name("_cli_train.py")), "demo",
                         "--run-dir", str(run_dir), *FAST], env=env, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  one = json.loads((demo_dir / "report.json").read_text())["rows"]
  two = json.loads((run_dir / "report.json").read_text())["rows"]
  assert [r["method"] for r in one[:3]] == [r["method"] for r in two[:3]]
  for a, b in zip(one, two):
    for key in ("UA", "RA", "TA"):
      assert abs(a[key] - b[key]) <= 0.5, (a["method"], key, a[key], b[key])


def test_bf16_curve_stage_trains_close_to_fp32(demo_dir, tmp_path, capsys):
  """`curve.precision=bf16` really computes in bfloat16 (its losses are not fp32's bit for
  bit) and trains where float32 does (same seeds: per-epoch losses within 2 %)."""
  import shutil
  copy = tmp_path / "bf16"
  shutil.copytree(demo_dir, copy)
  assert cli.main(["curve", "--run-dir", str(copy), "--force", "--no-progress",
                   "--set", "curve.precision=bf16"]) == 0
  fp32 = json.loads((demo_dir / "curve.json").read_text())
  bf16 = json.loads((copy / "curve.json").read_text())
  assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16")
  assert not (copy / "sweep.json").exists()    # downstream stages were invalidated
  for a, b in zip(fp32["history"], bf16["history"]):
    for key in ("train_retain_loss", "train_forget_loss"):
      assert a[key] != b[key] and abs(a[key] - b[key]) <= 0.02 * abs(a[key]), (key, a, b)


@pytest.mark.slow
def test_two_process_curve_stage_equals_one_process(demo_dir, tmp_path):
  """`mcu-jax curve` under jax.distributed with 2 CPU processes (gloo) trains the same curve."""
  import shutil
  import socket
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  dirs = {}
  for name in ("one", "two"):
    dirs[name] = tmp_path / name
    shutil.copytree(demo_dir, dirs[name])
  base = [sys.executable, str(Path(__file__).with_name("_cli_train.py")), "curve",
          "--force", "--no-progress"]
  one = subprocess.run(base + ["--run-dir", str(dirs["one"])], env=env, capture_output=True,
                       text=True, timeout=300)
  assert one.returncode == 0, one.stderr[-2000:]
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen(base + ["--run-dir", str(dirs["two"]), "--coordinator",
                                    f"localhost:{port}", "--num-processes", "2",
                                    "--process-id", str(i)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
  a = checkpoint.load_tree(dirs["one"] / "curve" / "controls")
  b = checkpoint.load_tree(dirs["two"] / "curve" / "controls")
  chex.assert_trees_all_close(a, b, atol=1e-6, rtol=1e-5)
  assert json.loads((dirs["two"] / "curve.json").read_text())["trained"] is True


# ---------------------------------------------------------------------------------------------
# Faults: each asserts the exit code, the one-line message and the disk state afterwards.


def _copy(demo_dir, tmp_path, name="copy"):
  import shutil
  copy = tmp_path / name
  shutil.copytree(demo_dir, copy, ignore=shutil.ignore_patterns(".lock"))
  return copy


def _one_error_line(err: str) -> str:
  lines = [line for line in err.splitlines() if line.startswith("mcu-jax: error:")]
  assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
  return lines[0]


def test_force_with_a_changed_split_removes_what_it_makes_stale(demo_dir, tmp_path, capsys):
  run_dir = _copy(demo_dir, tmp_path)
  before = json.loads((run_dir / "split.json").read_text())
  code = cli.main(["curve", "--run-dir", str(run_dir), "--force", "--set",
                   "forget.classes=[4]"])
  out, err = capsys.readouterr()
  assert code == 2
  assert "stage 'unlearn' has not run" in _one_error_line(err)
  assert "configuration changed (forget.classes): removed the stale stages retrain, unlearn, " \
         "mask, curve, sweep, report" in out
  left = sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("."))
  assert left == ["config.json", "original", "original.json", "split.json", "split.npz"]
  assert json.loads((run_dir / "split.json").read_text())["forget"] != before["forget"]
  assert json.loads((run_dir / "config.json").read_text())["forget"]["classes"] == [4]
  assert cli.main(["report", "--run-dir", str(run_dir)]) == 2   # nothing mixed to report
  assert "has not run" in _one_error_line(capsys.readouterr().err)


def test_huge_lr_stops_training_and_marks_nothing_done(tmp_path, capsys):
  run_dir = tmp_path / "nan"
  assert cli.main(["run", "--run-dir", str(run_dir), *FAST, "--set", "train.lr=1e6"]) == 2
  line = _one_error_line(capsys.readouterr().err)
  assert "train: non-finite" in line and "epoch 1" in line and "lr = 1e+06" in line
  assert not (run_dir / "original.json").exists() and not (run_dir / "original" / "model").exists()


def test_huge_curve_lr_stops_the_curve_stage(demo_dir, tmp_path, capsys):
  run_dir = _copy(demo_dir, tmp_path)
  assert cli.main(["curve", "--run-dir", str(run_dir), "--force", "--no-progress",
                   "--set", "curve.lr=1e30"]) == 2
  line = _one_error_line(capsys.readouterr().err)
  assert "curve: non-finite" in line and "lr = 1e+30" in line
  assert not (run_dir / "curve.json").exists() and not (run_dir / "curve" / "controls").exists()
  assert (run_dir / "unlearn.json").exists()          # upstream results are intact


def test_two_writers_on_one_run_directory(demo_dir, tmp_path):
  run_dir = _copy(demo_dir, tmp_path)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from mcu_jax.pipeline.rundir import RunDir; "
       f"run = RunDir({str(run_dir)!r}); run.acquire(); print('held', flush=True); "
       "time.sleep(60)"],
      env=env, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    second = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("_cli_train.py")), "unlearn",
         "--run-dir", str(run_dir), "--force", "--method", "ga", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=300)
  finally:
    holder.kill()
    holder.wait()
  assert second.returncode == 2
  assert f"is in use by PID {holder.pid}" in _one_error_line(second.stderr)
  assert json.loads((run_dir / "config.json").read_text())["unlearn"]["method"] == "rl"
  assert (run_dir / "report.json").exists()           # the refused writer changed nothing


def test_demo_directories_are_unique(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert cli._demo_dir() != cli._demo_dir()


def test_a_finished_run_reports_from_read_only_media(demo_dir, tmp_path, capsys, monkeypatch):
  run_dir = _copy(demo_dir, tmp_path)

  def read_only(*args, **kwargs):
    raise OSError(30, "Read-only file system", str(run_dir))
  monkeypatch.setattr(os, "replace", read_only)
  monkeypatch.setattr(os, "mkdir", read_only)
  assert cli.main(["report", "--run-dir", str(run_dir), "--no-progress"]) == 0
  assert "RL+MCU" in capsys.readouterr().out
  # A stage that must write, on read-only media: one line, exit 1, nothing changed.
  assert cli.main(["sweep", "--run-dir", str(run_dir), "--force", "--no-progress"]) == 1
  line = _one_error_line(capsys.readouterr().err)
  assert "Read-only file system" in line


def test_a_file_where_the_run_directory_should_be(tmp_path, capsys):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  assert cli.main(["run", "--run-dir", str(blocker), *FAST]) in (1, 2)
  line = _one_error_line(capsys.readouterr().err)
  assert str(blocker) in line
  assert blocker.read_text() == "not a directory"


def test_a_byte_flipped_model_is_refused(demo_dir, tmp_path, capsys):
  run_dir = _copy(demo_dir, tmp_path)
  flipped = 0
  for f in (run_dir / "unlearn" / "model").rglob("*"):
    if f.is_file() and f.stat().st_size > 64 and "metadata" not in f.name.lower():
      raw = bytearray(f.read_bytes())
      raw[len(raw) // 2] ^= 0x01
      f.write_bytes(bytes(raw))
      flipped += 1
  assert flipped
  assert cli.main(["report", "--run-dir", str(run_dir), "--force", "--no-progress"]) == 2
  line = _one_error_line(capsys.readouterr().err)
  assert str(run_dir / "unlearn" / "model") in line
  assert "digest" in line or "cannot restore" in line
  assert "tensorstore_spec" not in line            # the one line, not a page of JSON
  assert not (run_dir / "report.json").exists() and not (run_dir / "report.md").exists()


def test_a_missing_config_is_an_error_not_a_reset(demo_dir, tmp_path, capsys):
  run_dir = _copy(demo_dir, tmp_path)
  (run_dir / "config.json").unlink()
  assert cli.main(["report", "--run-dir", str(run_dir)]) == 2
  assert "holds records" in _one_error_line(capsys.readouterr().err)
  assert not (run_dir / "config.json").exists()


def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
  run_dir = tmp_path / "interrupted"
  proc = subprocess.Popen(_train_command(run_dir, 50), env=dict(os.environ, JAX_PLATFORMS="cpu"),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and not (run_dir / "original" / "ckpt").exists():
    time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-2000:]
  (line,) = err.strip().splitlines()     # no "Exception ignored", no traceback
  assert line.startswith("mcu-jax: interrupted by SIGINT in stage 'train' (")
  assert str(run_dir / "original" / "ckpt") in line and "--resume` continues" in line
  assert not (run_dir / "original.json").exists()


def test_import_torch_into_an_impossible_path_fails_at_once(tmp_path, capsys):
  (tmp_path / "a-file").write_text("x")
  start = time.time()
  code = cli.main(["import-torch", str(tmp_path / "missing.pt"), "--model", "preresnet110",
                   "--out", str(tmp_path / "a-file" / "sub")])
  assert code == 2 and time.time() - start < 30
  assert "a-file is a file, not a directory" in _one_error_line(capsys.readouterr().err)


@pytest.mark.slow
def test_forget_quality_end_to_end_on_digits(demo_dir, tmp_path):
  """Populations of 4, scored against retraining; a rerun reuses everything."""
  run_dir = _copy(demo_dir, tmp_path)
  command = [sys.executable, str(Path(__file__).with_name("_cli_train.py")), "forget-quality",
             "--run-dir", str(run_dir), "--models", "4", "--no-progress",
             "--set", "forget_quality.resamples=20", "--set", "forget_quality.splits=3"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  record = json.loads((run_dir / "forget_quality.json").read_text())
  assert set(record["scores"]) == {"floor", "rl", "rl+mcu"}
  for name, score in record["scores"].items():
    assert 0.0 <= score["F"] <= 1.0 and 0.0 <= score["lira_auc"] <= 1.0, name
    assert len(score["epsilons"]) == len(np.load(run_dir / "split.npz")["forget"])
  assert abs(record["scores"]["floor"]["lira_auc"] - 0.5) < 0.25   # retrained vs retrained
  assert {k: v["models"] for k, v in record["populations"].items()} == {
      "originals": 4, "retrain_a": 4, "retrain_b": 4, "rl": 4, "rl+mcu": 4}
  assert 0.75 <= record["scores"]["rl+mcu"]["mean_t"] <= 1.0
  # Every score is recomputable from the per-model confidences on disk.
  confs = np.load(run_dir / "forget_quality" / "confidences.npz")
  assert set(confs) == {"originals", "retrain_a", "retrain_b", "rl", "rl+mcu"}
  assert all(confs[k].dtype == np.float32 and confs[k].shape == (4, len(score["epsilons"]))
             for k in confs)
  from mcu_jax import forget_quality
  assert forget_quality.forget_score(confs["rl+mcu"], confs["retrain_a"]).score == \
      record["scores"]["rl+mcu"]["F"]
  for name, score in record["scores"].items():
    for key in ("F", "lira_auc", "challenge"):
      low, high = score[f"{key}_ci95"]
      assert low <= score[key] <= high, (name, key)
  test = record["scores"]["rl+mcu"]["vs_base"]
  assert test["F"]["exact"] and test["F"]["flips"] == 16 and 0 < test["F"]["p_value"] <= 1
  assert test["lira_auc"]["difference"] == pytest.approx(
      record["scores"]["rl+mcu"]["lira_auc"] - record["scores"]["rl"]["lira_auc"])
  text = (run_dir / "forget_quality.md").read_text()
  assert "retrain B (the floor)" in text and "LiRA AUC [95% CI]" in text
  assert "paired permutation" in text and "Description, not a test" in text
  assert (run_dir / "forget_quality.png").read_bytes()[:4] == b"\x89PNG"
  assert (run_dir / "report.json").exists()             # the run's own stages are untouched
  again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0 and json.loads(
      (run_dir / "forget_quality.json").read_text()) == record


def _model_digest(path):
  return checkpoint.tree_digest(checkpoint.load_tree(path))


def test_a_done_stage_whose_model_is_gone_is_not_done(demo_dir, tmp_path, capsys):
  """rm -r RUN/original/model: single-stage commands name the directory and the command that
  rebuilds it; that command rebuilds the same model from the stage's own checkpoints."""
  run_dir = _copy(demo_dir, tmp_path)
  import shutil
  shutil.rmtree(run_dir / "original" / "model")
  before = {p.name: p.read_bytes() for p in run_dir.glob("*.json")}
  for command in ("report", "sweep"):
    assert cli.main([command, "--run-dir", str(run_dir), "--no-progress"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == (f"mcu-jax: error: stage 'original' in {run_dir} is not done: its output "
                    f"{run_dir / 'original' / 'model'} is missing; `mcu-jax train --run-dir "
                    f"{run_dir}` rebuilds it")
  assert {p.name: p.read_bytes() for p in run_dir.glob("*.json")} == before   # nothing moved
  assert cli.main(["train", "--run-dir", str(run_dir)]) == 0
  assert f"[train] its output {run_dir / 'original' / 'model'} is missing: rebuilding it" in \
      capsys.readouterr().out
  assert _model_digest(run_dir / "original" / "model") == \
      _model_digest(demo_dir / "original" / "model")
  record = json.loads((run_dir / "original.json").read_text())
  assert record["model_digest"] == json.loads(
      (demo_dir / "original.json").read_text())["model_digest"]
  assert not (run_dir / "unlearn.json").exists() and not (run_dir / "report.json").exists()
  assert (run_dir / "retrain.json").read_bytes() == before["retrain.json"]   # not downstream


def test_run_rebuilds_a_damaged_output_and_only_what_depends_on_it(demo_dir, tmp_path,
                                                                    capsys):
  run_dir = _copy(demo_dir, tmp_path)
  png = run_dir / "sweep.png"
  png.write_bytes(png.read_bytes()[:100])           # truncated: same name, another size
  kept = {p.name: p.stat().st_mtime_ns for p in run_dir.glob("*.json") if p.name != "report.json"}
  assert cli.main(["run", "--run-dir", str(run_dir), "--no-progress"]) == 0
  assert "RL+MCU" in capsys.readouterr().out
  assert png.stat().st_size == (demo_dir / "sweep.png").stat().st_size
  assert {p.name: p.stat().st_mtime_ns for p in run_dir.glob("*.json")
          if p.name != "report.json"} == kept
  record = json.loads((run_dir / "report.json").read_text())
  assert record["outputs"]["sweep.png"] == png.stat().st_size


def test_yaml_config_with_an_exponent_trains(tmp_path, capsys):
  config = tmp_path / "c.yaml"
  config.write_text("train:\n  lr: 1e-3\n  epochs: 1\nmodel_options:\n  width: 4\n")
  run_dir = tmp_path / "run"
  assert cli.main(["train", "--config", str(config), "--run-dir", str(run_dir),
                   "--no-progress"]) == 0
  assert "error" not in capsys.readouterr().err
  assert json.loads((run_dir / "config.json").read_text())["train"]["lr"] == 0.001
  assert (run_dir / "original.json").exists()


def test_a_directory_given_as_config_is_named_a_directory(tmp_path, capsys):
  run_dir = tmp_path / "never"
  assert cli.main(["run", "--config", str(tmp_path), "--run-dir", str(run_dir)]) == 2
  assert _one_error_line(capsys.readouterr().err) == (
      f"mcu-jax: error: config file {tmp_path} is a directory: give a .yaml, .toml or .json file")
  assert not run_dir.exists()


def _without_permission_override():
  """A command prefix under which file permissions bind (root ignores them), or None."""
  import shutil
  if os.geteuid() != 0:
    return []
  setpriv = shutil.which("setpriv")
  if setpriv is None or subprocess.run([setpriv, "--bounding-set=-dac_override", "true"],
                                       capture_output=True).returncode:
    return None
  return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]


def test_a_read_only_model_directory_names_its_path_and_the_stage(demo_dir, tmp_path):
  prefix = _without_permission_override()
  if prefix is None:
    pytest.skip("running as root without setpriv: permissions cannot be made to bind")
  run_dir = _copy(demo_dir, tmp_path)
  model = run_dir / "original" / "model"
  files = sorted(p.relative_to(model) for p in model.rglob("*"))
  for path in [model, *model.rglob("*")]:
    path.chmod(path.stat().st_mode & ~0o222)
  try:
    done = subprocess.run([*prefix, sys.executable, str(Path(__file__).with_name("_cli_train.py")),
                           "train", "--run-dir", str(run_dir), "--force", "--no-progress"],
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                          text=True, timeout=300)
  finally:
    for path in [model, *model.rglob("*")]:
      path.chmod(path.stat().st_mode | 0o200)
  assert done.returncode == 1, done.stderr[-2000:]
  line = _one_error_line(done.stderr)
  assert line.startswith(f"mcu-jax: error: stage 'train': Permission denied: {model}/"), line
  assert line.endswith("check the path, its permissions and the free space")
  assert sorted(p.relative_to(model) for p in model.rglob("*")) == files
  # Nothing of train, or of what is made from it, is marked done; retrain is not made from it.
  assert sorted(p.stem for p in run_dir.glob("*.json")) == ["config", "retrain", "split"]


def _unraisable(error):
  """The hook's argument for ``error`` raised where Python can only print it (a __del__)."""
  caught = []

  class Raising:
    def __del__(self):
      raise error
  hook, sys.unraisablehook = sys.unraisablehook, caught.append
  try:
    Raising()
  finally:
    sys.unraisablehook = hook
  return caught[0]


def test_only_the_closed_event_loop_of_a_failed_restore_is_silenced(capsys):
  cli._quiet_unraisable(_unraisable(RuntimeError("Event loop is closed")))
  assert capsys.readouterr().err == ""
  cli._quiet_unraisable(_unraisable(RuntimeError("something else")))
  assert "RuntimeError: something else" in capsys.readouterr().err
