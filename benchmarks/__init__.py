"""Benchmarks of mcu_jax: each module is a script (``python3 benchmarks/<name>.py`` or
``python3 -m benchmarks.<name>``) with a ``main(argv) -> dict`` that the smoke tests call.
The figures, the commands that made them and the machines are in ``RESULTS.md``."""
