"""Run by test_cli.py as a subprocess that the test kills with SIGKILL mid-training: the
``mcu-jax`` command itself (``cli.run``)."""
from mcu_jax.pipeline import cli

cli.run()
