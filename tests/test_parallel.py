import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mcu_jax.errors import InvalidArgument
from mcu_jax.runtime import parallel


@pytest.mark.slow
def test_sharded_step_batch_sums_unlearn_and_sweep_match_single_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  script = Path(__file__).with_name("_sharded_step.py")
  out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout)
  assert result["controls_devices"] == 4 and result["batch_devices"] == 4
  assert result["max_diff"] < 1e-5
  for single, sharded in zip(result["single_metrics"], result["sharded_metrics"]):
    assert single.keys() == sharded.keys()
    for key in single:
      np.testing.assert_allclose(sharded[key], single[key], rtol=1e-5, atol=1e-5, err_msg=key)
  assert result["indivisible_error"] == ("batch size: expected a multiple of the mesh's 4 "
                                         "devices, got 6")
  assert set(result["batch_sums"]) == {
      f"{loop}{compiled}{placement}" for loop in ("scan", "python")
      for compiled in ("", " compiled") for placement in ("", " uncommitted")}
  for name, sums in result["batch_sums"].items():
    assert sums["max_error"] < 1e-4 and sums["devices"] == 4, (name, sums)
  # unlearn.run("rl") on a 1-device mesh and on 4 devices: the same theta_p.
  base = result["unlearn"]
  assert base["devices"] == 4 and base["moved"] > 1e-3, base
  assert base["params_diff"] < 1e-5 and base["state_diff"] < 1e-5, base
  # The BatchNorm sweep (and predict_logits) on 1 device and on 4: the same results, and the
  # 4-device program splits its batches (all-reduces although every input is replicated).
  swept = result["sweep"]
  for name in ("retain", "forget", "test"):
    assert swept["accuracy"][name] < 1e-9 and swept["loss"][name] < 1e-5, (name, swept)
  assert swept["states_diff"] < 1e-5 and swept["path_diff"] < 1e-5, swept
  assert swept["logits_diff"] < 1e-5, swept
  assert len(set(swept["accuracy_one"]["test"])) > 1, swept   # t matters: not degenerate
  assert swept["input_devices"] == 4, swept
  assert swept["rounded_batch_sizes"] == [16, 32, 64], swept
  assert swept["recal_error"].startswith("recal_batch_size: expected a multiple of the mesh's "
                                         "4 devices, got 18"), swept
  assert swept["replicated_inputs"] and swept["all_reduces"] > 0, swept


def test_initialize_is_a_no_op_without_configuration(monkeypatch):
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
               "MCU_JAX_DISTRIBUTED"):
    monkeypatch.delenv(name, raising=False)
  assert parallel.initialize() is False


def test_initialize_requires_all_values(monkeypatch):
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1234")
  monkeypatch.delenv("JAX_NUM_PROCESSES", raising=False)
  with pytest.raises(ValueError, match="num_processes"):
    parallel.initialize()


def test_single_device_mesh():
  mesh = parallel.make_mesh()
  assert mesh.axis_names == ("data",)
  batch = parallel.shard_batch({"x": np.arange(8.0)}, mesh)
  np.testing.assert_array_equal(np.asarray(batch["x"]), np.arange(8.0))


def test_resolve_mesh_makes_none_all_devices_and_refuses_the_rest():
  import jax
  from jax.sharding import Mesh
  mesh = parallel.resolve_mesh(None)
  assert mesh.axis_names == ("data",) and list(mesh.devices.flat) == jax.devices()
  assert mesh == parallel.make_mesh()        # equal meshes: jitted functions share programs
  given = parallel.make_mesh(jax.devices()[:1])
  assert parallel.resolve_mesh(given) is given
  for bad in (jax.devices(), "data", Mesh(np.asarray(jax.devices()), ("batch",))):
    with pytest.raises(InvalidArgument, match="options.mesh: expected None or a "
                                              "jax.sharding.Mesh with a 'data' axis"):
      parallel.resolve_mesh(bad, "options.mesh")


class _FourDevices:
  shape = {"data": 4}      # all that data_shards reads


def test_batch_sizes_the_mesh_splits():
  four = _FourDevices()
  assert parallel.check_batch_size("batch_size", 8, four) == 8
  with pytest.raises(InvalidArgument, match=r"^curve.batch_size: expected a multiple of the "
                                            r"mesh's 4 devices, got 18$"):
    parallel.check_batch_size("curve.batch_size", 18, four)
  with pytest.raises(InvalidArgument, match="batch_size: must lie in"):
    parallel.check_batch_size("batch_size", 0, four)
  assert parallel.inference_batch_size(512, 13, four) == 16
  assert parallel.inference_batch_size(30, 100, four) == 32
  assert parallel.inference_batch_size(64, 100, four) == 64
  assert parallel.inference_batch_size(512, 13, parallel.resolve_mesh(None)) == 13  # 1 device


def test_replicate_keeps_what_is_already_placed():
  import jax.numpy as jnp
  mesh = parallel.resolve_mesh(None)
  placed = parallel.replicate({"a": np.arange(3.0), "b": None}, mesh)
  assert placed["a"].committed and placed["b"] is None
  again = parallel.replicate(placed, mesh)
  assert again["a"] is placed["a"]
  assert parallel.replicate(jnp.ones(2), mesh).committed


def _last_json(text: str) -> dict:
  return json.loads(text.strip().splitlines()[-1])


@pytest.mark.slow
def test_two_process_cpu_run_matches_one_process():
  """jax.distributed on localhost with gloo CPU collectives: the curve equals 1 process."""
  import socket
  script = str(Path(__file__).with_name("_multiprocess_curve.py"))
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = str(s.getsockname()[1])
  workers = [subprocess.Popen([sys.executable, script, "worker", port, str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
  outputs = [w.communicate(timeout=300) for w in workers]
  for w, (_, err) in zip(workers, outputs):
    assert w.returncode == 0, err[-3000:]
  single = subprocess.run([sys.executable, script, "single"], env=env, capture_output=True,
                          text=True, timeout=300)
  assert single.returncode == 0, single.stderr[-3000:]
  base = _last_json(single.stdout)
  assert base["processes"] == 1
  for out, _ in outputs:
    result = _last_json(out)
    assert result["processes"] == 2 and result["devices"] == 2
    for a, b in zip(result["leaves"], base["leaves"]):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
