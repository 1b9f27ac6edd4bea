"""Files written whole or not at all, and the canonical JSON that digests are computed from.

``atomic_write`` writes a temporary file beside the target and ``os.replace``s it, so a reader
never sees a half-written file. ``canonical_json`` is the one text a value's digest is computed
from (keys sorted, no whitespace, floats as Python's shortest repr): it is independent of how
reports format numbers, so changing a report does not make run directories stale.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from mcu_jax.errors import InvalidArgument


def atomic_write(path, write, mode: str = "w") -> str:
  """Runs ``write(file)`` on a temporary file beside ``path``, then renames it into place."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  suffix = os.path.splitext(path)[1]
  fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=suffix + ".tmp",
                             dir=directory)
  try:
    encoding = None if "b" in mode else "utf-8"
    with os.fdopen(fd, mode, encoding=encoding) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return path


def to_jsonable(value: Any) -> Any:
  """NumPy/JAX scalars and arrays, tuples, dataclasses -> plain JSON types.

  Non-finite floats become None (strict JSON has no NaN or Infinity).
  """
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    if hasattr(value, "to_dict"):
      return to_jsonable(value.to_dict())
    return to_jsonable(dataclasses.asdict(value))
  if isinstance(value, Mapping):
    return {str(k): to_jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_jsonable(v) for v in value]
  if isinstance(value, (str, bool)) or value is None:
    return value
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(float(value)) else None
  if isinstance(value, np.bool_):
    return bool(value)
  if hasattr(value, "__array__"):
    array = np.asarray(value)
    return to_jsonable(array.item() if array.ndim == 0 else array.tolist())
  raise InvalidArgument(f"cannot write a {type(value).__name__} to JSON")


def write_json(path, record: Any, indent: int = 2) -> str:
  """Writes ``record`` (NumPy values allowed) as JSON, atomically; returns the path."""
  text = json.dumps(to_jsonable(record), indent=indent, sort_keys=False, allow_nan=False) + "\n"
  return atomic_write(path, lambda f: f.write(text))


def read_json(path) -> Any:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def write_text(path, text: str) -> str:
  return atomic_write(path, lambda f: f.write(text))


def write_markdown(path, text: str) -> str:
  """Writes markdown ``text`` atomically (a newline is added if missing); returns the path."""
  return write_text(path, text if text.endswith("\n") else text + "\n")


def canonical_json(value: Any) -> str:
  """The canonical text of a JSON-able value: keys sorted, compact separators."""
  return json.dumps(to_jsonable(value), sort_keys=True, separators=(",", ":"))


__all__ = ["atomic_write", "canonical_json", "read_json", "to_jsonable", "write_json",
           "write_markdown", "write_text"]
