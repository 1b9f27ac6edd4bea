"""The run directory: the files of a run, who may write them, and whether they are current.

    run_dir/config.json        the resolved configuration (written when new or changed)
    run_dir/split.npz          D_f / D_r indices into the training set
    run_dir/<record>.json      a stage's record, written last and atomically
    run_dir/<name>/model       a saved model (orbax), its digest in the stage's record
    run_dir/<name>/ckpt        a training stage's epoch checkpoints
    run_dir/.lock              held by the one process that writes (``RunDir.acquire``)

Every record carries its provenance: the digest of the configuration keys its stage reads and
the digests of the records it was made from, so a stage whose inputs changed is stale whatever
touched them. It lists its outputs too, file by file with their sizes (``RunDir.inventory``),
so a stage whose outputs were deleted or truncated is not done either (``RunDir.damage``).
Every write goes through this class: process 0 of a multi-host run writes, all processes wait
for it (``parallel.sync``), and the first write takes the directory's lock, so a finished run
can be read (and reported) from read-only media without taking it. OS errors name the full
path, not the bare file name that shutil and orbax give.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import jax
import numpy as np

from mcu_jax import io
from mcu_jax.errors import MCUError
from mcu_jax.runtime import checkpoint, parallel
from mcu_jax.typing import PyTree


class StageError(MCUError, RuntimeError):
  """A stage cannot run: a missing or stale input, a busy run directory, a partial checkpoint."""


def digest(value: Any) -> str:
  """SHA-256 (16 hex digits) of a JSON-able value, keys sorted."""
  return hashlib.sha256(io.canonical_json(value).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage of a run.

  Attributes:
    name: its command (``mcu-jax <name>``).
    record: the record it writes last (``<record>.json``); "done" means it exists and is
      current.
    needs: the records it reads (their digests go into its provenance).
    keys: the configuration keys it reads (dotted prefixes of the config's dict).
    outputs: the other files and directories it owns, relative to the run directory; a
      directory ending in ``ckpt`` holds resumable state, kept when the stage reruns.
    run: ``run(context, stage) -> record``.
    in_run: whether ``mcu-jax run`` (and ``demo``) runs it; optional stages run on request.
    keeps: outputs that survive even a configuration change, because they are keyed by what
      made them (the forget-quality stage's store of population members).
  """
  name: str
  record: str
  needs: tuple[str, ...]
  keys: tuple[str, ...]
  outputs: tuple[str, ...]
  run: Callable[[Any, Any], dict]
  in_run: bool = True
  keeps: tuple[str, ...] = ()

  def started(self, run: RunDir) -> bool:
    """Whether anything of it is on disk: its record, or a partial checkpoint."""
    return run.has(self.record) or any(
        o.endswith("ckpt") and o not in self.keeps and (run.path / o).is_dir()
        and any((run.path / o).iterdir()) for o in self.outputs)

  @property
  def products(self) -> tuple[str, ...]:
    """Its outputs but its checkpoints: what its record lists and ``begin`` removes."""
    return tuple(o for o in self.outputs if not o.endswith("ckpt"))

  def kept(self, run_dir: str | os.PathLike) -> str:
    """What an interrupted run of it kept to continue from, in words."""
    for output in self.outputs:
      if not output.endswith("ckpt"):
        continue
      directory = Path(run_dir) / output
      if output in self.keeps:
        members = len(list(directory.glob("*/*.json"))) if directory.is_dir() else 0
        return f"kept: {members} finished population member(s) in {directory}"
      steps = [int(p.name) for p in directory.iterdir()
               if p.name.isdigit()] if directory.is_dir() else []
      if steps:
        return f"last checkpoint kept: epoch {max(steps)} in {directory}"
      return f"no epoch had finished, so no checkpoint was kept in {directory}"
    return "it keeps no checkpoint and restarts from its beginning"


def nonfinite_paths(value: Any, path: str = "record") -> list[str]:
  """The paths (``record.a.b[3]``) of the NaN or infinite numbers in a record: floats, NumPy
  and JAX scalars and arrays inside dicts, lists and tuples."""
  if isinstance(value, dict):
    return [p for k, v in value.items() for p in nonfinite_paths(v, f"{path}.{k}")]
  if isinstance(value, (list, tuple)):
    return [p for i, v in enumerate(value) for p in nonfinite_paths(v, f"{path}[{i}]")]
  if isinstance(value, (float, np.floating, np.ndarray, jax.Array)):
    array = np.asarray(value)
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
      return [path]
  return []


def downstream(stages: Sequence[Stage], record: str) -> tuple[str, ...]:
  """The records that depend on ``record``, directly or not, in stage order."""
  found: set[str] = set()
  for stage in stages:       # stages are in order: a stage's needs come before it
    if record in stage.needs or found & set(stage.needs):
      found.add(stage.record)
  return tuple(s.record for s in stages if s.record in found)


def _with_path(error: OSError, path) -> OSError:
  """``error`` naming ``path`` in full (shutil and orbax name bare file names)."""
  return type(error)(error.errno, error.strerror or str(error), str(Path(path).absolute()))


def _rmtree(path: Path) -> None:
  def raise_with_path(function, name, info):
    error = info if isinstance(info, BaseException) else info[1]
    if isinstance(error, OSError):
      raise _with_path(error, name) from None
    raise error
  if sys.version_info >= (3, 12):
    shutil.rmtree(path, onexc=raise_with_path)
  else:
    shutil.rmtree(path, onerror=raise_with_path)


def upstream(stages: Sequence[Stage], record: str) -> tuple[str, ...]:
  """The records ``record`` is made from, directly or not, in stage order."""
  by_record = {s.record: s for s in stages}
  found, todo = set(), [record]
  while todo:
    for need in by_record[todo.pop()].needs:
      if need in by_record and need not in found:
        found.add(need)
        todo.append(need)
  return tuple(s.record for s in stages if s.record in found)


def config_section(config: dict, keys: Iterable[str]) -> dict:
  """{dotted key: value} of the configuration keys a stage reads."""
  out = {}
  for key in keys:
    value = config
    for part in key.split("."):
      value = value[part]
    out[key] = value
  return out


class RunDir:
  """A run directory. Reading never writes; the first write takes the lock."""

  def __init__(self, path: str | os.PathLike):
    self.path = Path(path)
    self._lock: IO[str] | None = None

  @property
  def config_path(self) -> Path:
    return self.path / "config.json"

  @property
  def split_path(self) -> Path:
    return self.path / "split.npz"

  def record_path(self, name: str) -> Path:
    return self.path / f"{name}.json"

  # ---- the lock

  def acquire(self) -> None:
    """Takes the directory's advisory lock (idempotent); a live holder is an error. A lock
    left by a killed process is free again: the operating system drops it with the process."""
    if self._lock is not None or not parallel.is_primary():
      return
    import fcntl
    if self.path.exists() and not self.path.is_dir():
      raise StageError(f"{self.path} exists and is not a directory: choose another --run-dir")
    self.path.mkdir(parents=True, exist_ok=True)
    handle = open(self.path / ".lock", "a+", encoding="utf-8")
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      handle.seek(0)
      holder = handle.read().strip() or "another process"
      handle.close()
      if e.errno in (errno.EAGAIN, errno.EACCES):
        raise StageError(f"run directory {self.path} is in use by PID {holder}: wait for it to "
                         "finish or use another --run-dir") from None
      raise
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    self._lock = handle

  def release(self) -> None:
    if self._lock is not None:
      self._lock.close()     # closing drops the flock
      self._lock = None

  # ---- records

  def has(self, name: str) -> bool:
    return self.record_path(name).exists()

  def read(self, name: str) -> dict:
    """The record ``name``; a missing or unreadable one raises ``StageError`` naming it."""
    path = self.record_path(name)
    if not path.exists():
      raise StageError(f"{path} does not exist")
    try:
      return io.read_json(path)
    except (ValueError, UnicodeDecodeError) as e:
      raise StageError(f"{path} is corrupt ({type(e).__name__}: {e}); rerun its stage with "
                       "--force") from None

  def write(self, name: str, record: dict) -> None:
    """Writes the record atomically (process 0), then every process continues."""
    self.write_json(self.record_path(name), record)

  def write_json(self, path: Path, value: Any) -> None:
    self.acquire()
    if parallel.is_primary():
      io.write_json(path, value)
    parallel.sync(f"wrote {path}")

  def write_file(self, write, path: Path) -> None:
    """``write(path)`` on process 0 under the lock (plots, markdown, the split)."""
    self.acquire()
    if parallel.is_primary():
      write(path)
    parallel.sync(f"wrote {path}")

  # ---- trees

  def save_tree(self, relative: str, tree: PyTree) -> str:
    """Saves ``tree`` under ``relative`` (orbax, atomic); returns its ``tree_digest``."""
    self.acquire()
    target = self.path / relative
    try:        # orbax fails in a thread, with a page of log, where it cannot write: ask first
      target.parent.mkdir(parents=True, exist_ok=True)
      os.rmdir(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    except OSError as e:
      raise _with_path(e, target.parent) from None
    try:
      checkpoint.save_tree(target, tree, force=True)
    except OSError as e:
      if e.filename and Path(e.filename).is_absolute():
        raise
      raise _with_path(e, target / e.filename if e.filename else target) from None
    return checkpoint.tree_digest(tree)

  def load_tree(self, relative: str, like: PyTree, expected_digest: str | None) -> PyTree:
    """The tree saved under ``relative``, checked against ``expected_digest`` (a flipped byte
    is an error naming the file, never a silently different model)."""
    tree = checkpoint.load_tree(self.path / relative, like)
    if expected_digest is not None and checkpoint.tree_digest(tree) != expected_digest:
      raise StageError(f"{self.path / relative} does not match the digest recorded when it was "
                       "saved (the file is corrupt): rerun its stage with --force")
    return tree

  # ---- removal and checkpoints

  def remove(self, relatives: Iterable[str]) -> None:
    """Deletes files and directories of the run (process 0), then every process continues."""
    relatives = list(relatives)
    if parallel.is_primary():   # only process 0 looks: the others may look after it removed
      present = [r for r in relatives if (self.path / r).exists() or
                 (self.path / r).is_symlink()]
      if present:
        self.acquire()
      for relative in present:
        target = self.path / relative
        _rmtree(target) if target.is_dir() else target.unlink()
        parent = target.parent
        while parent != self.path and parent.is_dir() and not any(parent.iterdir()):
          parent.rmdir()           # a stage's directory goes with its last output
          parent = parent.parent
    parallel.sync(f"removed {relatives}")

  # ---- the outputs a record lists

  def inventory(self, relatives: Iterable[str]) -> dict[str, int]:
    """{file relative to the run directory: size in bytes} of the files and directories
    ``relatives`` that exist, every file of a directory listed."""
    out = {}
    for relative in relatives:
      path = self.path / relative
      if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
      else:
        files = [path] if path.is_file() else []
      out.update({str(f.relative_to(self.path)): f.stat().st_size for f in files})
    return out

  def damage(self, inventory: dict[str, int]) -> str | None:
    """The first file of ``inventory`` that is missing or has another size, in words, or
    None when every one is there (the digests are checked when they are loaded)."""
    for relative, size in inventory.items():
      path = self.path / relative
      if not path.is_file():
        while not path.parent.exists() and path.parent != self.path:
          path = path.parent         # name the directory that went with it
        return f"its output {path} is missing"
      if path.stat().st_size != size:
        return (f"its output {path} has {path.stat().st_size} bytes, not the {size} it was "
                "written with (damaged)")
    return None

  def copy_from(self, source: RunDir, relatives: Iterable[str]) -> None:
    """Copies files and directories of another run directory into this one (process 0)."""
    self.acquire()
    if parallel.is_primary():
      for relative in relatives:
        src, dst = source.path / relative, self.path / relative
        if dst.is_dir():
          _rmtree(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst) if src.is_dir() else shutil.copy2(src, dst)
    parallel.sync(f"copied {list(relatives)}")

  def checkpointer(self, name: str, *, resume: bool, force: bool) -> checkpoint.Checkpointer:
    """The epoch checkpoints of stage ``name``. A partial run continues with ``resume``,
    starts over with ``force``, and is an error otherwise."""
    directory = self.path / name / "ckpt"
    partial = directory.exists() and any(directory.iterdir())
    parallel.sync(f"looked at {directory}")  # every process decides before anyone deletes
    if partial and force:
      self.remove([f"{name}/ckpt"])
    elif partial and not resume:
      raise StageError(f"stage {name!r} has a partial checkpoint in {directory}: pass "
                       "--resume to continue it or --force to start over")
    self.acquire()
    return checkpoint.Checkpointer(directory)


__all__ = ["RunDir", "Stage", "StageError", "downstream", "upstream", "config_section",
           "digest", "nonfinite_paths"]
