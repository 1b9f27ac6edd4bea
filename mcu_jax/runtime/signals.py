"""Ctrl-C (SIGINT) and SIGTERM that are never lost: a run stops at the next loop boundary.

Python's own SIGINT handler raises ``KeyboardInterrupt`` wherever the main thread is, a
garbage-collector callback of XLA's included, where it is printed as "Exception ignored" and
lost: the run carries on. ``install`` (the ``mcu-jax`` command calls it before importing JAX)
replaces the handlers of SIGINT and SIGTERM with one that only records the signal, and every
long loop calls ``check(where)`` at its boundaries, which raises ``Interrupted`` there::

    signals.install()
    for epoch in range(epochs):
      signals.check(f"train epoch {epoch + 1}")
      ...

A second signal exits at once (status 128 + its number), even while the main thread is inside
XLA: a watcher thread reads the signal numbers that Python's C-level handler writes to a
wakeup file descriptor as soon as they arrive. Without ``install`` nothing is ever recorded and
``check`` costs one read of a global.
"""
from __future__ import annotations

import os
import signal
import threading

HANDLED = (signal.SIGINT, signal.SIGTERM)

_received: int | None = None      # the first signal's number since install() / reset()
_installed: dict = {}             # signal -> the handler it had before install()
_wakeup: tuple[int, int] | None = None
_generation = 0                   # bumped by reset(): a watcher of an older install stops
_exiting = False                  # set by exiting(): the process is saying its last line
_second_message = "interrupted again: stopped at once"


def exit_code(signum: int) -> int:
  """The shell's status of a process ended by ``signum``: 130 for SIGINT, 143 for SIGTERM."""
  return 128 + int(signum)


def name(signum: int) -> str:
  return signal.Signals(signum).name


class Interrupted(KeyboardInterrupt):
  """A recorded SIGINT or SIGTERM, raised by ``check`` at a loop boundary.

  Attributes:
    signum: the signal's number.
    where: the loop and position that noticed it (``"train epoch 3"``).
    stage: the stage it interrupted, set by the pipeline (None outside a stage).
  """

  def __init__(self, signum: int, where: str):
    super().__init__(f"{name(signum)} during {where}")
    self.signum, self.where, self.stage = int(signum), where, None

  @property
  def exit_code(self) -> int:
    return exit_code(self.signum)


def requested() -> int | None:
  """The number of the first SIGINT or SIGTERM received since ``install``, or None."""
  return _received


def check(where: str) -> None:
  """Raises ``Interrupted`` if a signal was received; ``where`` names the loop position."""
  if _received is not None:
    raise Interrupted(_received, where)


def _record(signum: int) -> None:
  global _received
  if _received is None:
    _received = int(signum)


def _handler(signum, frame) -> None:
  del frame
  _record(signum)
  if _wakeup is None:   # no watcher thread counts the signals: count them here
    _count(signum, _generation)


_count_lock = threading.RLock()   # the fallback counts in the handler, maybe inside exiting()
_counted = 0


def _count(signum: int, generation: int) -> None:
  """Records ``signum`` (unless ``reset`` came since ``generation``); the second one ends the
  process at once."""
  global _counted
  with _count_lock:
    if generation != _generation or _exiting:
      return
    _counted += 1
    _record(signum)
    if _counted >= 2:   # under the lock: never after exiting() began the last line
      try:
        os.write(2, f"{_second_message} ({name(signum)})\n".encode())
      finally:
        os._exit(exit_code(signum))


def exiting() -> None:
  """The process is about to print its last line and exit: signals from now on are ignored,
  so that a second one cannot add a line of its own (or cut the last one)."""
  global _exiting
  with _count_lock:
    _exiting = True


def _watch(fd: int, generation: int) -> None:
  while True:
    try:
      data = os.read(fd, 64)
    except OSError:
      data = b""
    if not data or generation != _generation:   # reset() closed the other end
      os.close(fd)
      return
    for signum in data:
      if signum in HANDLED:
        _count(signum, generation)


def install(second_message: str | None = None) -> None:
  """Records SIGINT and SIGTERM instead of raising (from the main thread; idempotent).
  ``second_message`` is the line printed on stderr when a second signal ends the process."""
  global _wakeup, _second_message
  if second_message is not None:
    _second_message = second_message
  if _installed:
    return
  for signum in HANDLED:
    _installed[signum] = signal.signal(signum, _handler)
  read, write = os.pipe()
  os.set_blocking(write, False)
  try:
    signal.set_wakeup_fd(write, warn_on_full_buffer=False)
  except ValueError:      # not the main thread after all: the handler counts
    os.close(read)
    os.close(write)
    return
  _wakeup = (read, write)
  threading.Thread(target=_watch, args=(read, _generation), name="mcu_jax.runtime.signals",
                   daemon=True).start()


def reset() -> None:
  """Forgets the signals received and restores the handlers ``install`` replaced (tests)."""
  global _received, _counted, _wakeup, _generation, _exiting
  with _count_lock:
    _generation += 1
    _received, _counted, _exiting = None, 0, False
  for signum, previous in _installed.items():
    signal.signal(signum, previous)
  _installed.clear()
  if _wakeup is not None:
    signal.set_wakeup_fd(-1)
    os.close(_wakeup[1])   # the watcher reads end-of-file and returns
    _wakeup = None


__all__ = ["Interrupted", "check", "exit_code", "exiting", "install", "requested", "reset"]
