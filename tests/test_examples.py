"""The examples in examples/ (one per model library) run as a user would run them, and unlearn
digit 3."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


NEEDS = {"haiku_model": "haiku", "equinox_model": "equinox"}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["plain_function", "linen_cnn", "nnx_model", "haiku_model",
                                  "equinox_model"])
def test_example_runs_and_forgets(name):
  if name in NEEDS:
    pytest.importorskip(NEEDS[name], reason=f"{NEEDS[name]} is not installed "
                        f"(pip install -e '.[{NEEDS[name]}]')")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py")], capture_output=True,
                       text=True, timeout=300, env=env, cwd=EXAMPLES.parent)
  assert out.returncode == 0, out.stderr[-3000:]
  line = out.stdout.strip().splitlines()[-1]
  t, metrics = line.split(" ", 3)[2], ast.literal_eval(line.split(" ", 3)[3])
  assert 0.75 <= float(t) <= 1.0
  assert metrics["forget_acc"] < 5.0            # digit 3 is forgotten
  assert metrics["retain_acc"] > 90.0 and metrics["test_acc"] > 85.0
