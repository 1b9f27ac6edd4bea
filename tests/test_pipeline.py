"""The pipeline's stages are the library's steps: load, call, save; and the one map from a
configuration to the library's call (``config.unlearn_curve_kwargs``) is what they run."""
import chex
import jax
import numpy as np

import mcu_jax
from mcu_jax.pipeline import config as config_lib
from mcu_jax.pipeline import stages as pipeline


def test_curve_stage_equals_unlearn_curve(demo_dir):
  config = config_lib.load_config(demo_dir / "config.json")
  ctx = pipeline.make_context(config, demo_dir, progress=False)
  theta_o, model_state = ctx.load_model("original")
  theta_p, _ = ctx.load_model("unlearn")
  stage_curve, _ = pipeline.load_curve(ctx)
  kwargs = config_lib.unlearn_curve_kwargs(config, scenario=ctx.split.kind,
                                           preprocess=ctx.preprocess_train, mesh=ctx.mesh)
  result = mcu_jax.unlearn_curve(ctx.apply, theta_o, theta_p, model_state=model_state,
                                 forget=ctx.arrays(ctx.split.forget),
                                 retain=ctx.arrays(ctx.split.retain), **kwargs)
  assert result.targets == pipeline.alignment_targets(ctx)
  flags = pipeline.load_mask(ctx, theta_o)
  assert jax.tree.leaves(result.mask) == jax.tree.leaves(flags)
  chex.assert_trees_all_close(result.curve.controls, stage_curve.controls, rtol=1e-6, atol=1e-7)
  moved = [float(np.max(np.abs(a - b))) for a, b in
           zip(jax.tree.leaves(stage_curve.controls),
               jax.tree.leaves(mcu_jax.Curve.from_endpoints(theta_o, theta_p).controls))]
  assert max(moved) > 1e-3      # a trained curve, not two straight lines
  swept = ctx.record("sweep")
  assert result.t == swept["chosen_t"]      # the sweep stage: the same options, the same t
