"""The workdir as a whole: one writer at a time, and what a killed run left behind.

* :class:`WorkdirLock`: a run holds ``WORKDIR/.lock`` (an exclusive ``flock``) for as long
  as it may write. A second run on the same workdir stops at once with one line naming
  the holder (pid, host, command, start time); the kernel releases the lock when the
  holder exits, however it exits (``kill -9`` included), so a stale lock never blocks.
  The stage processes of a ``--jobs`` run write under their parent's lock.
* :func:`remove_stale_temporaries`: files and directories a killed writer left half
  made (``*.tmp-PID`` of :mod:`ttc_jax.pipeline.store`, orbax's
  ``*.orbax-checkpoint-tmp*`` and TFDS's ``incomplete.*`` directories). Called with the
  lock held, so nothing else is writing them.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import time

from ttc_jax.pipeline import store

LOCK_FILE = ".lock"

# Made by a writer and renamed into place when complete: left only by a killed writer.
_STALE = (re.compile(r".*\.tmp-\d+$"),  # store._atomic, Pipeline._point_latest, Shards
          re.compile(r".*\.orbax-checkpoint-tmp.*"),  # orbax, before its rename
          re.compile(r"^incomplete\.[A-Z0-9]+_.*"))  # TFDS, before its rename


class WorkdirBusy(RuntimeError):
  """Another run holds the workdir."""


# Locks this process holds: realpath -> [open file, count] (re-entrant: a variant's
# Pipeline, or a test that runs several Pipelines in turn, in one process).
_HELD: dict[str, list] = {}


class WorkdirLock:
  """``with WorkdirLock(workdir):`` one writer per workdir (see the module docstring)."""

  def __init__(self, workdir: str):
    self.workdir = workdir

  def __enter__(self) -> "WorkdirLock":
    acquire(self.workdir)
    return self

  def __exit__(self, *exc) -> None:
    release(self.workdir)


def _describe(path: str) -> str:
  try:
    with open(path) as f:
      holder = json.load(f)
    return (f"pid {holder['pid']} on {holder['host']}, started {holder['started']}: "
            f"{holder['command']}")
  except (OSError, ValueError, KeyError, TypeError):
    return "a process that has not yet said who it is"


def acquire(workdir: str) -> None:
  """Takes the workdir's lock (re-entrant within a process). Raises WorkdirBusy naming
  the holder, or a StoreError when the workdir cannot be created or written."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise store.StoreError(f"--workdir={workdir}: cannot create it: [Errno {e.errno}] "
                           f"{os.strerror(e.errno)}.") from None
  if not os.path.isdir(workdir):
    raise store.StoreError(f"--workdir={workdir}: not a directory.")
  key = os.path.realpath(workdir)
  if key in _HELD:
    _HELD[key][1] += 1
    return
  path = os.path.join(workdir, LOCK_FILE)
  try:
    f = open(path, "a+")  # pylint: disable=consider-using-with
  except OSError as e:
    raise store.StoreError(f"--workdir={workdir}: cannot write in it: [Errno {e.errno}] "
                           f"{os.strerror(e.errno)}.") from None
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    f.close()
    if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
      raise store.StoreError(f"--workdir={workdir}: cannot lock {path}: [Errno {e.errno}] "
                             f"{os.strerror(e.errno)}.") from None
    raise WorkdirBusy(f"--workdir={workdir} is in use by another run ({_describe(path)}); "
                      "one run writes a workdir at a time: wait for it to finish, or stop "
                      "it (its finished work is kept) and rerun.") from None
  f.seek(0)
  f.truncate()
  json.dump({"pid": os.getpid(), "host": socket.gethostname(),
             "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "command": " ".join(sys.argv)[:300]}, f)
  f.flush()
  _HELD[key] = [f, 1]


def release(workdir: str) -> None:
  key = os.path.realpath(workdir)
  held = _HELD.get(key)
  if held is None:
    return
  held[1] -= 1
  if held[1] == 0:
    del _HELD[key]
    held[0].close()  # closing the file releases the flock


def holds(workdir: str) -> bool:
  return os.path.realpath(workdir) in _HELD


def remove_stale_temporaries(root: str) -> list[str]:
  """Removes what killed writers left under ``root`` (see the module docstring); returns
  the removed paths. Call with the workdir's lock held."""
  removed = []
  for directory, dirs, files in os.walk(root):
    for name in list(dirs):
      if any(p.match(name) for p in _STALE):
        path = os.path.join(directory, name)
        if os.path.islink(path):
          os.remove(path)  # a link being put in place (Pipeline._point_latest)
        else:
          shutil.rmtree(path, ignore_errors=True)
        dirs.remove(name)
        removed.append(path)
    for name in files:
      if any(p.match(name) for p in _STALE):
        path = os.path.join(directory, name)
        try:
          os.remove(path)
          removed.append(path)
        except FileNotFoundError:
          pass
  return removed
