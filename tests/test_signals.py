"""SIGINT and SIGTERM recorded, never lost: mcu_jax.runtime.signals, and the command that uses
it."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcu_jax.runtime import checkpoint, loops, signals

ENV = dict(os.environ, JAX_PLATFORMS="cpu")
CLI = [sys.executable, str(Path(__file__).with_name("_cli_train.py"))]


@pytest.fixture
def installed():
  before = {s: signal.getsignal(s) for s in signals.HANDLED}
  signals.install()
  yield before
  signals.reset()


def _deliver(signum):
  os.kill(os.getpid(), signum)
  deadline = time.time() + 10
  while signals.requested() is None and time.time() < deadline:
    time.sleep(0.01)       # the handler runs in the main thread between bytecodes


def test_check_is_a_no_op_without_install():
  assert signals.requested() is None
  signals.check("anywhere")


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_is_recorded_and_raised_at_the_next_check(installed, signum, code):
  _deliver(signum)                         # no KeyboardInterrupt here: only recorded
  assert signals.requested() == signum
  with pytest.raises(signals.Interrupted) as caught:
    signals.check("train epoch 3")
  assert (caught.value.exit_code, caught.value.where) == (code, "train epoch 3")
  assert isinstance(caught.value, KeyboardInterrupt) and caught.value.stage is None
  signals.reset()
  assert signals.requested() is None
  assert {s: signal.getsignal(s) for s in signals.HANDLED} == installed


def test_loops_stop_at_their_boundaries(installed):
  """The host loops of mcu_jax.runtime.loops (training steps, the mask's batch sums) and train.fit's
  epochs raise at their next boundary: before the first step once a signal is recorded."""
  import flax.struct

  from mcu_jax.runtime import train

  @flax.struct.dataclass
  class State:
    rng: jax.Array

  epoch = loops.make_epoch(lambda state, data, idx, valid, key: (state, {"n": jnp.sum(valid)}),
                           4, loop="python")
  data = {"labels": jnp.arange(10)}
  _, metrics = epoch(State(jax.random.PRNGKey(0)), data)
  assert metrics["n"].shape == (3,)
  total = loops.make_batch_sum(lambda x: x, loop="python")
  np.testing.assert_array_equal(total(jnp.ones((2, 3))), np.full(3, 2.0))
  _deliver(signal.SIGINT)
  with pytest.raises(signals.Interrupted, match="step 1 of 3"):
    epoch(State(jax.random.PRNGKey(0)), data)
  with pytest.raises(signals.Interrupted, match="batch 1 of 2"):
    total(jnp.ones((2, 3)))
  with pytest.raises(signals.Interrupted, match="demo epoch 1"):
    train.fit(State(jax.random.PRNGKey(0)), lambda s, d: (s, {}), {}, 3, desc="demo",
              progress=False)


def test_a_second_signal_exits_at_once_while_python_is_blocked(tmp_path):
  """With SIGINT blocked in the main thread, which then sleeps inside C for a minute, only
  the watcher thread sees the signals: the second one ends the process at once."""
  script = textwrap.dedent("""
      import signal, time
      from mcu_jax.runtime import signals
      signals.install("test: stopped at once")
      signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
      print("ready", flush=True)
      time.sleep(60)
      print("slept", flush=True)
  """)
  proc = subprocess.Popen([sys.executable, "-c", script], env=ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "ready"
  proc.send_signal(signal.SIGINT)
  time.sleep(0.2)
  assert proc.poll() is None             # the first one is only recorded
  start = time.time()
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=30)
  assert proc.returncode == 130 and time.time() - start < 10
  assert err.strip() == "test: stopped at once (SIGINT)" and "slept" not in out


def test_the_command_module_imports_no_jax():
  """The handlers are installed by ``cli.run`` before anything heavy is imported: importing
  the command's module (and the package) imports neither JAX nor orbax."""
  script = ("import sys, mcu_jax.pipeline.cli; "
            "heavy = [m for m in ('jax', 'orbax', 'numpy', 'flax') "
            "if m in sys.modules]; print(heavy)")
  out = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True,
                       timeout=60)
  assert out.stdout.strip() == "[]", out.stderr[-2000:]


def test_after_the_last_line_began_signals_add_nothing():
  """Once the command says its last line (``exiting``), a second signal neither adds a line
  nor cuts it: the process ends as it was going to."""
  script = textwrap.dedent("""
      import os, signal, time
      from mcu_jax.runtime import signals
      signals.install("test: stopped at once")
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.5)
      signals.exiting()
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.5)
      print("last line", signals.requested(), flush=True)
  """)
  out = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True,
                       timeout=60)
  assert (out.returncode, out.stdout, out.stderr) == (0, "last line 2\n", "")


def _caught(pid: int, signum: int) -> bool:
  status = Path(f"/proc/{pid}/status").read_text()
  mask = int(next(line.split()[1] for line in status.splitlines()
                  if line.startswith("SigCgt:")), 16)
  return bool(mask & (1 << (signum - 1)))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_ctrl_c_during_start_up_is_one_line(tmp_path):
  """A signal while JAX and orbax are imported (the handlers are in place from the first
  line of the command: SIGTERM is caught, which Python itself never does)."""
  run_dir = tmp_path / "never"
  proc = subprocess.Popen([*CLI, "train", "--run-dir", str(run_dir), "--no-progress"],
                          env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 60
  while proc.poll() is None and not _caught(proc.pid, signal.SIGTERM):
    assert time.time() < deadline
    time.sleep(0.002)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-2000:]
  assert err.strip().splitlines() == [
      "mcu-jax: interrupted by SIGINT before any stage ran (start-up): nothing was marked done"]
  assert not run_dir.exists()


def _train(run_dir, *extra):
  return [*CLI, "train", "--run-dir", str(run_dir), "--no-progress", "--set", "train.epochs=5",
          "--set", "model_options={width: 4}", *extra]


@pytest.mark.slow
def test_sigterm_mid_training_stops_cleanly_and_resume_is_bit_identical(tmp_path):
  run_dir = tmp_path / "stopped"
  proc = subprocess.Popen(_train(run_dir), env=ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  ckpt = run_dir / "original" / "ckpt"
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir()):
      break
    time.sleep(0.02)
  assert proc.poll() is None, "training finished before it could be stopped"
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err[-2000:]
  (line,) = err.strip().splitlines()
  kept = max(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
  assert line.startswith("mcu-jax: interrupted by SIGTERM in stage 'train' (")
  assert f"nothing of it was marked done; last checkpoint kept: epoch {kept} in {ckpt}" in line
  assert f"`mcu-jax train --run-dir {run_dir} --resume` continues" in line
  assert not (run_dir / "original.json").exists()
  assert not (run_dir / "original" / "model").exists()

  resumed = subprocess.run(_train(run_dir, "--resume"), env=ENV, capture_output=True,
                           text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  straight = tmp_path / "straight"
  done = subprocess.run(_train(straight), env=ENV, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  chex.assert_trees_all_equal(checkpoint.load_tree(run_dir / "original" / "model"),
                              checkpoint.load_tree(straight / "original" / "model"))
  history = [json.loads((d / "original.json").read_text())["history"] for d in
             (run_dir, straight)]
  assert [[h["train_loss"] for h in x] for x in history][0] == \
         [[h["train_loss"] for h in x] for x in history][1]
  assert np.isfinite(history[0][-1]["train_loss"])
