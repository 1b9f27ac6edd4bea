"""The ``mcu-jax`` command and its run directories.

``config`` (RunConfig), ``context`` (what a run needs: data, model, mesh), ``rundir`` (a run
directory that owns its files), ``stages`` (train, retrain, unlearn, mask, curve, sweep, report),
``forget_stage`` (forgetting quality over populations), ``report`` (tables and plots),
``torch_import`` (the reference's PyTorch checkpoints) and ``cli``. Importing this package
imports no JAX: the command installs its signal handlers first.
"""
