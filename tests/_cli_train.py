"""Run by test_cli.py as a subprocess that the test kills with SIGKILL mid-training."""
import sys

from mcu_jax import cli

sys.exit(cli.main(sys.argv[1:]))
