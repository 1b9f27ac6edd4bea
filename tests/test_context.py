"""The run context: records are written only when every number in them is finite."""
import types

import pytest

from mcu_jax.pipeline import context, rundir


def test_finish_refuses_a_non_finite_record_and_writes_nothing(tmp_path):
  run = rundir.RunDir(tmp_path / "run")
  ctx = types.SimpleNamespace(run=run)
  stage = rundir.Stage("sweep", "sweep", (), (), (), lambda ctx, stage: {})
  with pytest.raises(rundir.StageError, match=r"stage 'sweep': non-finite value\(s\) at "
                                              r"record\.gap, record\.ts\[2\]; nothing"):
    context.finish(ctx, stage, {"gap": float("nan"), "ts": [0.0, 0.5, float("inf")], "n": 3})
  assert not run.has("sweep")
