"""Command-line settings small enough for tests: a whole demo run in seconds on a CPU."""

FAST = ["--no-progress", "--set", "train.epochs=3", "--set", "curve.epochs=2",
        "--set", "unlearn.options={epochs: 1}", "--set", "sweep.points=6",
        "--set", "model_options={width: 8}"]
