"""Reports: atomic JSON/markdown, PNG plots."""
import json
import os

import numpy as np
import pytest

from mcu_jax import io
from mcu_jax.core.beta import Targets
from mcu_jax.core.choice import select_t
from mcu_jax.pipeline import report
from mcu_jax.runtime.sweep import SweepResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
  with open(path, "rb") as f:
    content = f.read()
  assert content[:8] == PNG_MAGIC
  assert len(content) > 1024


def _no_temp_files(directory):
  assert not [name for name in os.listdir(directory) if name.endswith(".tmp")]


def test_write_json_roundtrip(tmp_path):
  record = {"t": np.float32(0.5), "accs": np.arange(3, dtype=np.float64), "n": np.int64(4),
            "ok": np.bool_(True), "nan": float("nan"), "nested": {"pair": (1, 2.5)}}
  path = io.write_json(tmp_path / "sub" / "run.json", record)
  loaded = io.read_json(path)
  assert loaded == {"t": 0.5, "accs": [0.0, 1.0, 2.0], "n": 4, "ok": True, "nan": None,
                    "nested": {"pair": [1, 2.5]}}
  io.write_json(path, {"again": 1})        # overwrite in place
  assert json.load(open(path)) == {"again": 1}
  _no_temp_files(tmp_path / "sub")
  with pytest.raises(TypeError):
    io.write_json(tmp_path / "bad.json", {"x": object()})
  assert not (tmp_path / "bad.json").exists()
  _no_temp_files(tmp_path)


def test_markdown_table(tmp_path):
  rows = [{"method": "MCU", "UA": 10.123, "RA": 99.0},
          {"method": "a|b", "UA": 5.0, "MIA": None}]
  table = report.markdown_table(rows, ["method", ("UA", "UA (%)"), "RA", "MIA"])
  lines = table.strip().split("\n")
  assert lines[0] == "| method | UA (%) | RA | MIA |"
  assert lines[1] == "|:---|---:|---:|:---|"     # an all-blank column stays left-aligned
  assert lines[2] == "| MCU | 10.12 | 99.00 |  |"
  assert lines[3] == "| a\\|b | 5.00 |  |  |"
  default = report.markdown_table(rows)
  assert default.split("\n")[0] == "| method | UA | RA | MIA |"
  path = io.write_markdown(tmp_path / "table.md", table)
  assert open(path).read() == table
  with pytest.raises(ValueError):
    report.markdown_table([], [])


def _sweep_result():
  ts = np.linspace(0.0, 1.0, 20)
  accuracy = {"retain": 99.0 - 8.0 * np.sin(np.pi * ts) ** 2 - 3.0 * ts,
              "forget": 99.0 - 30.0 * ts ** 1.5, "test": 90.0 - 5.0 * ts}
  return SweepResult(ts=ts, accuracy=accuracy, loss={k: 0 * v for k, v in accuracy.items()},
                     path_length=ts)


def test_plot_sweep(tmp_path):
  result = _sweep_result()
  targets = (97.0, 85.0)
  with pytest.warns(UserWarning, match="lower bound"):
    choice = select_t(result, Targets(*targets))
  path = report.plot_sweep(result, targets, choice.region, choice.t, tmp_path / "sweep.png",
                           title="synthetic sweep")
  _assert_png(path)
  # dict targets, no region, no chosen t
  _assert_png(report.plot_sweep(result, {"retain": 97.0, "test": 88.0}, None, None,
                                tmp_path / "sweep2.png"))
  _no_temp_files(tmp_path)


def test_plot_methods(tmp_path):
  rows = [{"method": "Retrain", "UA": 8.0, "RA": 100.0, "TA": 92.0, "MIA": 15.0},
          {"method": "FT", "UA": 2.0, "RA": 99.0, "TA": 91.0, "MIA": 6.0},
          {"method": "MCU", "UA": 7.5, "RA": 99.2, "TA": 91.5, "MIA": 13.0}]
  _assert_png(report.plot_methods(rows, tmp_path / "methods.png"))
  with pytest.raises(ValueError):
    report.plot_methods([], tmp_path / "empty.png")
