"""Smoke tests of the benchmark scripts: tiny models and data, a few steps, JSON checked.

The comparisons with the PyTorch reference run only when MCU_REFERENCE_PATH names a checkout
of TIML-Group/Mode-Connectivity-Unlearning (and torch is installed).
"""
import importlib
import json
import math
import os

import pytest

REFERENCE = os.environ.get("MCU_REFERENCE_PATH")


@pytest.fixture(scope="module")
def bench():
  return lambda name: importlib.import_module(f"benchmarks.{name}")


def _positive(x):
  return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _check_machine(machine):
  for key in ("date", "jax", "backend", "device_kind", "cpu_count", "cpu_model"):
    assert key in machine, key


def _load(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def test_step_throughput(bench, tmp_path):
  out = tmp_path / "steps.json"
  record = bench("step_throughput").main([
      "--model", "small_cnn", "--image-shape", "8,8,1", "--batch-size", "8", "--steps", "2",
      "--warmup", "1", "--precision", "fp32", "--scan-steps", "2", "--out", str(out)])
  saved = _load(out)
  assert saved["benchmark"] == "step_throughput"
  _check_machine(saved["machine"])
  rows = {row["name"]: row for row in saved["rows"]}
  assert set(rows) == {"jax plain fp32", "jax curve fp32", "jax plain fp32 scan2",
                       "jax curve fp32 scan2"}
  for row in rows.values():
    assert _positive(row["images_per_s"]) and _positive(row["ms_per_step"])
    assert row["steps_per_call"] == (2 if "scan" in row["name"] else 1)
  assert len(rows["jax curve fp32"]["times_s"]) == 2
  for name in ("jax plain fp32", "jax curve fp32"):   # XLA's account of the compiled step
    row = rows[name]
    assert _positive(row["flops"]) and _positive(row["compile_s"])
    assert _positive(row["achieved_tflops"]) and row["entry_ops"]["parameter"] >= 3
  # The curve step does the plain step's forward and backward: same flops within 1 %.
  assert abs(rows["jax curve fp32"]["flops"] / rows["jax plain fp32"]["flops"] - 1) < 0.01
  assert set(saved["ratios"]["curve_overhead_pct"]) == {"jax fp32", "jax fp32 scan2"}
  assert saved["config"]["batch_size"] == 8 and "step_throughput.py" in saved["command"]
  assert record["rows"][0]["name"] == saved["rows"][0]["name"]


def test_entry_op_counts_reads_only_the_entry_computation(bench):
  hlo = """HloModule m

fused_add {
  a = f32[2]{0} parameter(0)
  ROOT b = f32[2]{0} add(a, a)
}

ENTRY main {
  p0 = f32[2]{0} parameter(0)
  p1 = s32[] parameter(1)
  c = (f32[2]{0}, u8[0]{0}) custom-call(p0), custom_call_target="__cudnn$convForward"
  w = (f32[], f32[], f32[], f32[], f32[], /*index=5*/f32[]) tuple(p1, p1, p1, p1, p1, p1)
  g = f32[2]{0} get-tuple-element(c), index=0
  f = f32[2]{0} fusion(g), kind=kLoop, calls=fused_add
  ROOT t = (f32[2]{0}, s32[]) tuple(f, p1)
}
"""
  assert bench("step_throughput").entry_op_counts(hlo) == {
      "parameter": 2, "custom-call:__cudnn$convForward": 1, "tuple": 2,
      "get-tuple-element": 1, "fusion": 1}


def test_step_throughput_bf16_curve_only(bench):
  record = bench("step_throughput").main([
      "--model", "small_cnn", "--image-shape", "8,8,1", "--batch-size", "8", "--steps", "2",
      "--warmup", "1", "--precision", "bf16", "--skip-plain"])
  assert [row["name"] for row in record["rows"]] == ["jax curve bf16"]
  assert _positive(record["rows"][0]["images_per_s"])
  assert record["ratios"]["curve_overhead_pct"] == {}
  assert record["training_check"]["results"] == {}   # no fp32 run to compare with


def test_step_throughput_training_check(bench):
  """bf16 compute tracks fp32 over the timed curve steps (the report names the fastest
  precision that does); a tolerance of 0 fails every precision but fp32 itself."""
  args = ["--model", "small_cnn", "--image-shape", "8,8,1", "--batch-size", "16", "--steps",
          "14", "--warmup", "2", "--precision", "fp32,bf16", "--skip-plain"]
  record = bench("step_throughput").main(args)
  check = record["training_check"]
  assert len(check["trajectories"]["bf16"]["retain_loss"]) == 16   # warm-up + timed steps
  bf16, fp32 = check["results"]["bf16"], check["results"]["fp32"]
  assert bf16["trains_correctly"], bf16
  assert 0 < bf16["deviation_vs_fp32"]["retain_loss"] < 0.1
  assert fp32["deviation_vs_fp32"] == {"retain_loss": 0.0, "forget_loss": 0.0}
  assert fp32["final"]["retain_loss"] < fp32["initial"]["retain_loss"]   # it trains
  rows = {row["name"]: row["ms_per_step"] for row in record["rows"]}
  assert record["ratios"]["fastest_correct_curve"]["name"] == min(rows, key=rows.get)
  strict = bench("step_throughput").main(args + ["--check-tolerance", "0"])
  assert not strict["training_check"]["results"]["bf16"]["trains_correctly"]
  assert strict["ratios"]["fastest_correct_curve"]["name"] == "jax curve fp32"


def test_training_check_scale_is_fp32_progress(bench):
  """Deviations count against the change fp32 made, floored at 1 % of its final loss."""
  check = bench("step_throughput").training_check({
      "fp32": {"retain_loss": [3.0, 2.0], "forget_loss": [5.0, 5.0]},
      "bf16": {"retain_loss": [3.0, 2.1], "forget_loss": [5.0, 5.04]},
      "fp8": {"retain_loss": [3.0, 2.5], "forget_loss": [5.0, 5.0]},
  }, tolerance=0.1, window=1)
  assert check["bf16"]["deviation_vs_fp32"]["retain_loss"] == pytest.approx(0.1)
  assert check["bf16"]["deviation_vs_fp32"]["forget_loss"] == pytest.approx(0.8)  # 0.04 / 0.05
  assert not check["bf16"]["trains_correctly"]
  assert check["fp8"]["deviation_vs_fp32"]["retain_loss"] == pytest.approx(0.5)
  assert check["fp32"]["trains_correctly"]


def test_step_throughput_rejects_bad_arguments(bench):
  st = bench("step_throughput")
  with pytest.raises(ValueError, match="precision"):
    st.main(["--model", "small_cnn", "--precision", "fp8", "--steps", "1"])
  with pytest.raises(ValueError, match="PreResNet"):
    st.main(["--model", "small_cnn", "--reference", "/nonexistent", "--steps", "1"])


def test_end_to_end(bench, tmp_path):
  out = tmp_path / "e2e.json"
  bench("end_to_end").main([
      "--model", "small_cnn", "--image-shape", "8,8,1", "--num-images", "48",
      "--num-test", "16", "--epochs", "2", "--points", "2", "--batch-size", "8",
      "--eval-batch-size", "16", "--out", str(out)])
  saved = _load(out)
  assert saved["benchmark"] == "end_to_end"
  _check_machine(saved["machine"])
  jax_result = saved["results"]["jax"]
  for key in ("mask_s", "curve_s", "curve_compile_s", "sweep_s", "total_s"):
    assert _positive(jax_result[key]), key
  assert len(jax_result["curve_epoch_s"]) == 2
  assert jax_result["total_s"] == pytest.approx(
      jax_result["mask_s"] + jax_result["curve_s"] + jax_result["sweep_s"])
  assert [row["part"] for row in saved["rows"]] == ["mask", "curve", "(curve compile)",
                                                    "sweep", "total"]
  assert saved["config"]["forget_size"] == 5 and saved["speedups"] == {}


def test_end_to_end_scan_loop(bench, tmp_path):
  record = bench("end_to_end").main([
      "--model", "small_cnn", "--image-shape", "8,8,1", "--num-images", "40",
      "--num-test", "8", "--epochs", "1", "--points", "2", "--batch-size", "8",
      "--jax-loop", "scan", "--curve-mask", "computed"])
  result = record["results"]["jax"]
  assert _positive(result["total_s"]) and 0 < result["mask_fraction"] <= 1


def test_device_scaling_forced_cpu_devices(bench, tmp_path):
  out = tmp_path / "scaling.json"
  bench("device_scaling").main([
      "--model", "small_cnn", "--image-shape", "8,8,1", "--per-device-batch", "4",
      "--devices", "1,2", "--steps", "2", "--warmup", "1", "--force-cpu", "--out", str(out)])
  saved = _load(out)
  assert saved["real_scaling_measurement"] is False
  assert "not a real scaling measurement" in saved["mode"]
  assert [row["devices"] for row in saved["rows"]] == [1, 2]
  assert [row["global_batch"] for row in saved["rows"]] == [4, 8]
  for row in saved["rows"]:
    assert row["forced_cpu_devices"] is True and row["visible_devices"] >= row["devices"]
    assert _positive(row["images_per_s"]) and _positive(row["efficiency"])


needs_reference = pytest.mark.skipif(
    not REFERENCE, reason="set MCU_REFERENCE_PATH to a checkout of "
                          "TIML-Group/Mode-Connectivity-Unlearning to compare with it")


@pytest.fixture
def preresnet8(monkeypatch):
  """PreResNet-8 (one BasicBlock per stage), which the reference builds with depth=8: the
  smallest model both sides share, registered for the test only."""
  import functools

  from mcu_jax import models
  from mcu_jax.models.preresnet import PreResNet
  monkeypatch.setitem(models._REGISTRY, "preresnet8", functools.partial(PreResNet, depth=8))
  return "preresnet8"


@needs_reference
def test_step_throughput_with_reference(bench, tmp_path, preresnet8):
  pytest.importorskip("torch")
  out = tmp_path / "ref_steps.json"
  bench("step_throughput").main([
      "--model", preresnet8, "--batch-size", "4", "--steps", "1", "--warmup", "1",
      "--precision", "fp32", "--reference", REFERENCE, "--out", str(out)])
  saved = _load(out)
  rows = {row["name"]: row for row in saved["rows"]}
  for name in ("reference plain fp32", "reference curve fp32"):
    assert _positive(rows[name]["images_per_s"])
  assert _positive(saved["ratios"]["curve_speedup_vs_reference"]["jax fp32"])
  assert "reference" in saved["ratios"]["curve_overhead_pct"]
  assert "torch" in saved["machine"]


@needs_reference
def test_end_to_end_with_reference(bench, tmp_path, preresnet8):
  pytest.importorskip("torch")
  record = bench("end_to_end").main([
      "--model", preresnet8, "--num-images", "40", "--num-test", "8", "--epochs", "1",
      "--points", "2", "--batch-size", "8", "--reference", REFERENCE])
  ref = record["results"]["reference"]
  for key in ("mask_s", "curve_s", "sweep_s", "total_s"):
    assert _positive(ref[key]), key
  assert set(record["speedups"]) == {"mask", "curve", "sweep", "total",
                                     "total_without_curve_compile"}


@pytest.mark.slow
def test_population_benchmark(bench, tmp_path):
  out = tmp_path / "population.json"
  record = bench("population").main(["--sizes", "1", "2", "--epochs", "1", "--width", "4",
                                     "--out", str(out)])
  assert _load(out) == json.loads(json.dumps(record))
  _check_machine(record["machine"])
  drivers = {(r["models"], r["driver"]) for r in record["rows"]}
  assert drivers == {(n, d) for n in (1, 2) for d in ("separate", "loop", "vmap")}
  for row in record["rows"]:
    assert _positive(row["wall_s"]) and _positive(row["models_per_s"])
    assert row["max_abs_diff_vs_separate"] < (1e-4 if row["driver"] == "vmap" else 1e-12)
  assert record["config"]["default_driver"] == "loop"        # the CPU policy
