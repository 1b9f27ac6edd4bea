"""``mcu-jax relearn`` on the FAST demo: outputs, record, no-op rerun, a lost output rebuilt,
and the report's rebound column."""
import json
import shutil

import pytest

from mcu_jax.pipeline import cli


@pytest.fixture(scope="module")
def relearned(demo_dir, tmp_path_factory):
  """A copy of the demo run with the relearn stage done (40 steps, to keep the file short)."""
  run_dir = tmp_path_factory.mktemp("relearn") / "run"
  shutil.copytree(demo_dir, run_dir)
  assert cli.main(["relearn", "--run-dir", str(run_dir), "--no-progress", "--steps", "40"]) == 0
  return run_dir


def test_the_stage_writes_its_curves_plot_and_record(relearned, capsys):
  record = json.loads((relearned / "relearn.json").read_text())
  assert set(record["outputs"]) == {"relearn/relearn.json", "relearn/relearn.png"}
  curves = json.loads((relearned / "relearn" / "relearn.json").read_text())
  assert list(curves["models"]) == ["original", "retrain", "unlearn", "mcu"]
  assert curves["config"]["steps"] == 40 and curves["config"]["source"] == "retain"
  for key, curve in curves["models"].items():
    assert curve["steps"] == [0, 10, 20, 30, 40], key
    assert all(0.0 <= a <= 100.0 for a in curve["forget_acc"] + curve["retain_acc"])
    assert curve["rebound"] == pytest.approx(curve["forget_acc"][-1] - curve["forget_acc"][0])
    assert record["rebound"][key] == curve["rebound"]
  assert curves["models"]["retrain"]["forget_acc"][0] == 0.0     # class 3 never seen
  png = (relearned / "relearn" / "relearn.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
  assert "| model |" in record["table"] and "rebound" in record["table"]
  print("\n" + record["table"])


@pytest.mark.slow
def test_a_rerun_is_a_no_op_and_a_lost_output_is_rebuilt(relearned, tmp_path, capsys):
  run_dir = tmp_path / "run"
  shutil.copytree(relearned, run_dir)
  before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
  assert cli.main(["relearn", "--run-dir", str(run_dir), "--no-progress"]) == 0
  after = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
  assert [p.name for p in before if before[p] != after.get(p)] in ([], ["config.json"])
  curves = (run_dir / "relearn" / "relearn.json").read_text()
  (run_dir / "relearn" / "relearn.png").unlink()
  assert cli.main(["relearn", "--run-dir", str(run_dir)]) == 0
  assert "relearn.png is missing: rebuilding it" in capsys.readouterr().out
  assert (run_dir / "relearn" / "relearn.png").exists()
  rebuilt = json.loads((run_dir / "relearn" / "relearn.json").read_text())
  for key, curve in json.loads(curves)["models"].items():    # the same curves (seconds aside)
    assert rebuilt["models"][key]["forget_acc"] == curve["forget_acc"], key


def test_the_report_gets_a_rebound_column_once_the_stage_has_run(relearned, tmp_path, capsys):
  run_dir = tmp_path / "run"
  shutil.copytree(relearned, run_dir)
  assert not (run_dir / "report.json").exists()      # the stage made the report not done
  assert cli.main(["report", "--run-dir", str(run_dir), "--no-progress"]) == 0
  report = json.loads((run_dir / "report.json").read_text())
  curves = json.loads((run_dir / "relearn" / "relearn.json").read_text())["models"]
  assert report["relearn"] is True
  assert [row["relearn_rebound"] for row in report["rows"]] == [
      curves[k]["rebound"] for k in ("original", "retrain", "unlearn", "mcu")]
  for row, key in zip(report["rows"], ("original", "retrain", "unlearn", "mcu")):
    assert curves[key]["forget_acc"][0] == pytest.approx(100.0 - row["UA"]), key
  text = (run_dir / "report.md").read_text()
  assert "relearn rebound" in report["table"] and "## Relearn attack" in text
  assert "relearn/relearn.png" in text


def test_bad_relearn_settings_are_refused_before_anything_runs(demo_dir, tmp_path, capsys):
  run_dir = tmp_path / "run"
  shutil.copytree(demo_dir, run_dir)
  assert cli.main(["relearn", "--run-dir", str(run_dir), "--steps", "10"]) == 2
  assert "config.relearn.steps: expected a multiple of intervals = 4" in capsys.readouterr().err
  assert not (run_dir / "relearn.json").exists()
