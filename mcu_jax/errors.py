"""The one error family: everything mcu_jax raises on purpose is an ``MCUError``.

Each class also derives from the built-in exception a caller would expect, so ``except
ValueError`` or ``except FileNotFoundError`` keep working:

- ``InvalidArgument``: an argument the code cannot handle correctly (``ValueError``,
  ``TypeError``); configuration errors (``mcu_jax.pipeline.config.ConfigError``) are these.
- ``DataFormatError``: a file that is not what it claims to be (an IDX file, a split file).
- ``MissingFileError``: a file or directory the call needs does not exist.
- ``MissingDependency``: an optional package the call needs is not installed.
- ``CheckpointError``: a checkpoint is missing, incomplete or of another structure.
- ``NonFiniteError``: a computation produced a NaN or an infinity; nothing of it was kept.
- ``StageError`` (``mcu_jax.pipeline.rundir``): a pipeline stage cannot run or resume.
"""


class MCUError(Exception):
  """Base class of the errors mcu_jax raises on purpose."""


class InvalidArgument(MCUError, ValueError, TypeError):
  """An argument the code cannot handle correctly; the message names it."""


class DataFormatError(InvalidArgument):
  """A file that is not well formed (the message names the file)."""


class MissingFileError(MCUError, FileNotFoundError):
  """A file or directory the call needs does not exist (the message names it)."""


class MissingDependency(MCUError, ImportError):
  """An optional package the call needs (torch, tensorflow-datasets) is not installed."""


class CheckpointError(MCUError, RuntimeError):
  """A checkpoint is missing, incomplete or does not match the expected structure."""


class NonFiniteError(MCUError, FloatingPointError):
  """A computation produced a NaN or an infinity (training, a sweep); nothing of it was kept."""


__all__ = ["MCUError", "InvalidArgument", "DataFormatError", "MissingFileError",
           "MissingDependency", "CheckpointError", "NonFiniteError"]
