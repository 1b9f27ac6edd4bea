"""The study scripts of experiments/ on the tiny digits config (one seed, one or two epochs)."""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
MAIN_COLUMNS = ("UA", "RA", "TA", "MIA-Eff.", "loss-AUC", "Avg. Gap", "Gap w/o MIA", "RTE (s)")
ABLATION_COLUMNS = ("UA", "RA", "TA", "MIA-Eff.", "loss-AUC", "Avg. Gap", "Gap w/o MIA")


def _run(script, tmp, *extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, str(EXPERIMENTS / script), "--smoke", "--runs-dir", str(tmp / "runs"),
       "--results-dir", str(tmp / "results"), *extra],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout


def _filled(value):
  return isinstance(value, str) and value not in ("", "n/a") and "nan" not in value


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("study")
  _run("main_table.py", tmp)
  log = _run("ablations.py", tmp)
  return tmp, log


@pytest.mark.slow
def test_main_table_has_every_cell_and_column(smoke):
  tmp, _ = smoke
  results = tmp / "results" / "digits_smoke"
  record = json.loads((results / "main_table.json").read_text())
  assert record["failures"] == []
  assert set(record["scenarios"]) == {"random", "class"}
  for scenario in record["scenarios"].values():
    rows = {row["method"]: row for row in scenario["rows"]}
    assert set(rows) == {"Original", "Retrain", "FT", "FT+MCU", "RL", "RL+MCU"}
    for name, row in rows.items():
      assert row["seeds"] == 1
      for column in MAIN_COLUMNS + (("t",) if name.endswith("+MCU") else ()):
        assert _filled(row[column]), (name, column, row)
    pooled = scenario["tests"]["pooled"]
    assert pooled["n"] == 2 and "wilcoxon_p" in pooled and "ttest_p" in pooled
    assert set(scenario["tests"]["per_method"]) == {"ft", "rl"}
  text = (results / "main_table.md").read_text()
  assert ("| method | seeds | UA | RA | TA | MIA-Eff. | loss-AUC | Avg. Gap | Gap w/o MIA | "
          "RTE (s) | t |") in text
  assert "Wilcoxon" in text
  assert (results / "main_table_avg_gap.png").read_bytes()[:4] == b"\x89PNG"


def test_relearn_reads_every_cell_and_its_rebounds(smoke):
  tmp, _ = smoke
  _run("relearn.py", tmp, "--steps", "4")
  record = json.loads((tmp / "results" / "relearn_digits_smoke" / "relearn.json").read_text())
  assert record["failures"] == [] and record["steps"] == 4
  assert set(record["tables"]) == {f"{s}/{r}" for s in ("random", "class")
                                   for r in ("retain", "forget")}
  cell = json.loads((tmp / "runs" / "digits_smoke" / "class" / "seed0" / "rl"
                     / "relearn_retain_K4.json").read_text())
  for model, curve in cell["models"].items():
    assert curve["steps"] == [0, 1, 2, 3, 4], model
    assert curve["rebound"] == pytest.approx(curve["forget_acc"][-1] - curve["forget_acc"][0])
  block = record["tables"]["class/retain"]["rl"]
  assert block["rebound"]["mcu"] == [cell["models"]["mcu"]["rebound"]]
  # the report's own numbers are the relearn's step 0: FA = 100 - UA of the report's row
  report = json.loads((tmp / "runs" / "digits_smoke" / "class" / "seed0" / "rl"
                       / "report.json").read_text())
  assert cell["models"]["base"]["forget_acc"][0] == pytest.approx(100 - report["rows"][2]["UA"])


def test_ablations_have_every_table_and_plot(smoke):
  tmp, _ = smoke
  results = tmp / "results" / "digits_smoke"
  record = json.loads((results / "ablations.json").read_text())
  assert record["failures"] == [] and record["base_method"] == "rl"
  ablations = record["ablations"]
  assert set(ablations) == {"line_vs_curve", "mask", "beta", "t_and_region"}
  for scenario in ("random", "class"):
    line = ablations["line_vs_curve"]["rows"][scenario]
    assert [r["variant"] for r in line][1:] == ["straight line (no training)",
                                                "Bezier, trained (MCU)"]
    mask = ablations["mask"]["rows"][scenario]
    beta = ablations["beta"]["rows"][scenario]
    assert [r["variant"] for r in beta] == ["adaptive beta", "fixed beta = 0.05",
                                            "fixed beta = 0.5"]
    for row in line + mask + beta:
      for column in ABLATION_COLUMNS:
        assert _filled(row[column]), (scenario, row["variant"], column)
    for row in mask:
      for column in ("trained share", "mask s", "curve s", "mask + curve s"):
        assert _filled(row[column]), (scenario, row["variant"], column)
    cells = {r["cell"]: r for r in ablations["t_and_region"][scenario]}
    assert {"FT+MCU", "RL+MCU", "RL line", "RL no mask"} <= set(cells)
    for row in cells.values():
      assert _filled(row["t"]) and _filled(row["region length"])
  text = (results / "ablations.md").read_text()
  for heading in ("## 1. Straight line", "## 2. Mask", "## 3. Adaptive", "## 4. Chosen t"):
    assert heading in text
  for png in ("ablation_line_vs_curve.png", "ablation_beta.png", "ablation_t_region.png"):
    assert (results / png).read_bytes()[:4] == b"\x89PNG"


def test_a_second_run_reuses_finished_cells(smoke):
  tmp, log = smoke
  assert ": train " not in log      # the ablations reused the main table's base models
  again = _run("main_table.py", tmp)
  assert "  random/seed0/" not in again and "  class/seed0/" not in again   # nothing reran
  split = tmp / "runs" / "digits_smoke" / "random" / "seed0"
  assert (split / "rl" / "split.npz").read_bytes() == (split / "base" / "split.npz").read_bytes()


def _verdict_of(d_f, p_f, d_auc, p_auc, mcu_f_high=0.05):
  module = importlib.import_module("experiments.forget_quality")
  row = lambda f, f_ci, auc: {"F": f, "F_ci95": f_ci, "lira_auc": auc,
                              "lira_auc_ci95": [auc - 0.01, auc + 0.01], "retain_acc": 99.0,
                              "test_acc": 98.0}
  vs_base = {"F": {"difference": d_f, "ci95": [d_f - 0.01, d_f + 0.01], "p_value": p_f},
             "lira_auc": {"difference": d_auc, "ci95": [d_auc - 0.01, d_auc + 0.01],
                          "p_value": p_auc}}
  scores = {"floor": row(0.2, [0.15, 0.25], 0.5), "rl": row(0.01, [0.0, 0.02], 0.99),
            "rl+mcu": {**row(0.01 + d_f, [0.0, mcu_f_high], 0.99 + d_auc), "ts": [0.9] * 64,
                       "vs_base": vs_base}}
  return module.verdict(scores, ["rl"])[0]


@pytest.mark.parametrize("test, words", [
    ((0.04, 0.001, -0.1, 0.001), "MCU improves forgetting quality"),
    ((0.04, 0.001, -0.1, 0.3), "MCU improves forgetting quality"),
    ((-0.04, 0.001, 0.1, 0.01), "MCU worsens forgetting quality"),
    ((0.04, 0.001, 0.1, 0.01), "MCU gives mixed forgetting quality"),
    ((0.04, 0.2, -0.1, 0.06), "MCU shows no detectable change"),      # not significant
])
def test_forget_quality_verdict_follows_the_model_level_tests(test, words):
  line = _verdict_of(*test)
  assert words in line and "n = 64 model pairs" in line
  assert f"p = {test[1]:.3g}" in line and "floor (retrain B) is F 0.200 [0.150, 0.250]" in line


def test_forget_quality_verdict_says_when_mcu_stays_far_from_retraining():
  assert "far from retraining" in _verdict_of(0.04, 0.001, -0.1, 0.001, mcu_f_high=0.1)
  assert "far from retraining" not in _verdict_of(0.04, 0.001, -0.1, 0.001, mcu_f_high=0.16)


def test_the_committed_n64_study_is_recomputable_from_its_files():
  """F, the challenge score, the LiRA AUC and the base vs MCU differences of the committed
  forget-quality study, from its confidences and per-model accuracies alone."""
  import numpy as np

  from mcu_jax import forget_quality as fq
  from mcu_jax.forget_quality import model_level
  results = EXPERIMENTS / "results" / "forget_quality_digits_n64"
  record = json.loads((results / "forget_quality.json").read_text())["scenarios"]["class"]
  confs = np.load(results / record["confidences"])
  assert confs["rl"].shape == (64, len(record["forget_indices"]))
  ref, pops = confs["retrain_a"], record["populations"]
  mean = lambda name, key: float(np.mean(pops[name][key]))
  splits = record["statistics"]["splits"]
  for name, score in record["scores"].items():
    pop = "retrain_b" if name == "floor" else name
    F = fq.forget_score(confs[pop], ref).score
    assert F == score["F"], name
    assert fq.challenge_score(F, mean(pop, "retain_acc"), mean("retrain_a", "retain_acc"),
                              mean(pop, "test_acc"), mean("retrain_a", "test_acc")
                              ) == pytest.approx(score["challenge"], rel=1e-12)
    assert model_level.lira_splits(confs[pop], ref, splits=splits).mean == pytest.approx(
        score["lira_auc"], rel=1e-12)
  for method in record["methods"]:
    d = record["scores"][f"{method}+mcu"]["vs_base"]["F"]["difference"]
    assert d == pytest.approx(record["scores"][f"{method}+mcu"]["F"]
                              - record["scores"][method]["F"], abs=1e-15)


def test_tuning_rule_picks_the_lowest_admissible_forget_accuracy_ties_to_smaller_lr():
  from experiments.tuning import select
  point = lambda lr, fa, ra: {"options": {"lr": lr}, "FA": fa, "RA": ra}
  grid = [point(1e-4, 96.0, 91.4), point(3e-3, 1.0, 90.0), point(1e-2, 0.5, 89.0),
          point(3e-2, 0.0, 80.0)]
  assert select(grid, 91.5, 5.0, 1.0)["options"] == {"lr": 3e-3}    # tie with 1e-2; 3e-2 out
  assert select(grid, 91.5, 5.0, 0.1)["options"] == {"lr": 1e-2}
  assert select(grid[3:], 91.5, 5.0, 1.0) is None


def test_tuning_ties_go_to_the_gentlest_point_in_the_listed_order():
  from experiments.tuning import method_grid, select
  # SSD's grid runs from alpha 10 (gentlest) down: a tie goes to the larger alpha, whatever lr
  reference, points = method_grid({"reference": {"alpha": 10.0},
                                   "points": [{"alpha": 10.0}, {"alpha": 5.0}, {"alpha": 1.0}]})
  assert reference == {"alpha": 10.0} and [p["alpha"] for p in points] == [10.0, 5.0, 1.0]
  scored = [{"options": p, "FA": fa, "RA": 90.0} for p, fa in zip(points, (90.0, 10.5, 10.0))]
  assert select(scored, 91.0, 5.0, 1.0)["options"] == {"alpha": 5.0}
  assert method_grid([{"lr": 1e-4}, {"lr": 1e-3}]) == ({"lr": 1e-4}, [{"lr": 1e-4}, {"lr": 1e-3}])


def test_seed_tests_recompute_from_the_committed_json(tmp_path):
  from experiments import seed_tests
  main = json.loads((EXPERIMENTS / "results" / "fashion_mnist" / "main_table.json").read_text())
  result = seed_tests.tests(main)
  rl = result["random"]["methods"]["rl"]["AvgGap"]
  assert rl["n"] == 3 and rl["p"] == pytest.approx(0.25)   # 3 of 3 lower: 2 / 2^3
  assert rl["mean"] == pytest.approx(-0.92, abs=0.01)
