"""Files of the pipeline: atomic writes, resumable shards, append-only cell logs.

Every write is atomic (a temporary file renamed into place), so a killed
process leaves either the old file or the new one, never half of one. Only the
primary process writes (:func:`ttc_jax.parallel.is_primary`); the others
compute the same values and skip the write.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import re
from typing import Any, Callable, Iterable

import numpy as np

from ttc_jax import host
from ttc_jax import parallel


class StoreError(RuntimeError):
  """A stored file is missing, damaged or cannot be written."""


def canonical(obj: Any) -> Any:
  """``obj`` as plain JSON values (tuples -> lists, numpy scalars -> numbers)."""
  return json.loads(json.dumps(obj, sort_keys=True, default=_json_default))


def digest(obj: Any, length: int = 12) -> str:
  """A short sha256 of ``obj``'s canonical JSON: the identity of a key."""
  blob = json.dumps(canonical(obj), sort_keys=True).encode()
  return hashlib.sha256(blob).hexdigest()[:length]


def file_digest(path: str) -> str:
  """The sha256 of a file's bytes (read in blocks: checkpoint shards are gigabytes)."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def tree_digests(directory: str, skip: tuple[str, ...] = ()) -> dict[str, str]:
  """{path relative to ``directory``: sha256} of every file under it (symlinks
  followed to files, never into directories), except the top-level names in ``skip``.
  Every byte is read: a file damaged in place (a flipped bit keeps size and times) is
  found."""
  out = {}
  for root, dirs, files in os.walk(directory):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(root, name)
      rel = os.path.relpath(path, directory)
      if rel in skip:
        continue
      out[rel] = file_digest(path)
  return out


_DIGESTS: dict[tuple, str] = {}


def directory_digests(directory: str, names: list[str], cache_path: str | None = None
                      ) -> dict[str, str]:
  """{name: sha256} of files in ``directory``. Digests are remembered per process and, with
  ``cache_path``, in that JSON file across processes, keyed by (path, inode, size, mtime and
  ctime in ns): a changed or replaced file is hashed again (so is one whose metadata changed,
  e.g. after chmod, or on a file system whose inodes change between mounts: speed only)."""
  stored = {}
  if cache_path and os.path.exists(cache_path):
    try:
      with open(cache_path) as f:
        stored = json.load(f)
    except (OSError, ValueError):
      stored = {}
  out, changed = {}, False
  for name in names:
    path = os.path.join(directory, name)
    st = os.stat(path)
    stamp = {"inode": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
             "ctime_ns": st.st_ctime_ns}
    key = (os.path.abspath(path),) + tuple(stamp.values())
    entry = stored.get(key[0])
    if key not in _DIGESTS and entry and {k: entry.get(k) for k in stamp} == stamp:
      _DIGESTS[key] = entry["sha256"]
    if key not in _DIGESTS:
      _DIGESTS[key] = file_digest(path)
      stored[key[0]] = {**stamp, "sha256": _DIGESTS[key]}
      changed = True
    out[name] = _DIGESTS[key]
  if changed and cache_path:
    write_json(cache_path, stored)
  return out


def _json_default(x):
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.floating):
    return float(x)
  if isinstance(x, np.bool_):
    return bool(x)
  if isinstance(x, np.ndarray):
    return x.tolist()
  raise TypeError(f"not JSON serializable: {type(x).__name__}")


def _atomic(path: str, write: Callable[[str], None]) -> None:
  if not parallel.is_primary():
    return
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    write(tmp)
    os.replace(tmp, path)
  except OSError as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise StoreError(f"could not write {path}: [Errno {e.errno}] {os.strerror(e.errno)}"
                     + (" (the disk is full)" if e.errno == errno.ENOSPC else "")) from None


def write_json(path: str, obj: Any) -> None:
  def write(tmp):
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=1, sort_keys=True, default=_json_default)
  _atomic(path, write)


def read_json(path: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise StoreError(f"{path} is not valid JSON ({e}).") from e


def write_text(path: str, text: str) -> None:
  def write(tmp):
    with open(tmp, "w") as f:
      f.write(text)
  _atomic(path, write)


def save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
  def write(tmp):
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
  _atomic(path, write)


def load_npz(path: str) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except Exception as e:  # pylint: disable=broad-except
    raise StoreError(f"{path} is unreadable ({type(e).__name__}: {e}).") from e


def save_figure(path: str, fig) -> None:
  def write(tmp):
    with open(tmp, "wb") as f:
      fig.savefig(f, dpi=110, format=os.path.splitext(path)[1][1:] or "png")
  _atomic(path, write)


class Shards:
  """``count`` numbered shard files (``NAME-00000.npz`` ...): a resumable list of work.

  A shard is computed once and written atomically; after a kill, :meth:`todo`
  lists exactly the shards that are missing. ``NAME.shards.json`` beside them records the
  count (:meth:`create`), so a reader never recomputes it from a config (:meth:`open`).
  """

  def __init__(self, directory: str, name: str, count: int):
    self.directory, self.name, self.count = directory, name, count

  @classmethod
  def create(cls, directory: str, name: str, count: int) -> "Shards":
    """The shards of a new (or resumed) piece of work, its manifest written."""
    shards = cls(directory, name, count)
    manifest = os.path.join(directory, f"{name}.shards.json")
    if not os.path.exists(manifest) or read_json(manifest).get("count") != count:
      write_json(manifest, {"name": name, "count": count})
    return shards

  @classmethod
  def open(cls, directory: str, name: str) -> "Shards":
    """Finished shards, as their manifest counts them (shards written before manifests:
    the files present)."""
    manifest = os.path.join(directory, f"{name}.shards.json")
    if os.path.exists(manifest):
      return cls(directory, name, int(read_json(manifest)["count"]))
    pattern = re.compile(rf"{re.escape(name)}-\d{{5}}\.npz$")
    count = sum(1 for f in os.listdir(directory) if pattern.match(f))
    return cls(directory, name, count)

  def path(self, i: int) -> str:
    return os.path.join(self.directory, f"{self.name}-{i:05d}.npz")

  def todo(self) -> list[int]:
    if parallel.is_primary():
      for stale in glob.glob(os.path.join(self.directory, f"{self.name}-*.tmp-*")):
        os.remove(stale)  # a shard being written when a process was killed
    return [i for i in range(self.count) if not os.path.exists(self.path(i))]

  def save(self, i: int, arrays: dict[str, np.ndarray]) -> None:
    save_npz(self.path(i), arrays)
    host.hold(f"shard:{self.name}:{i}")

  def load(self, i: int) -> dict[str, np.ndarray]:
    try:
      return load_npz(self.path(i))
    except StoreError as e:
      raise StoreError(f"{e} Delete it to compute that shard again.") from None

  def load_all(self) -> list[dict[str, np.ndarray]]:
    return [self.load(i) for i in range(self.count)]


class CellLog:
  """An append-only JSON-lines log of finished cells, keyed by ``row['key']``.

  A line torn by a kill mid-write is ignored when reading and cut off before
  the next append, so the log never grows a line that mixes two rows.
  """

  def __init__(self, path: str):
    self.path = path

  def read(self) -> dict[str, dict]:
    done: dict[str, dict] = {}
    if not os.path.exists(self.path):
      return done
    with open(self.path) as f:
      for line in f:
        try:
          row = json.loads(line)
        except ValueError:
          continue  # a torn line
        if isinstance(row, dict) and "key" in row:
          done[row["key"]] = row
    return done

  def _repair(self) -> None:
    """Cuts a torn last line (a file that does not end with a newline)."""
    if not os.path.exists(self.path):
      return
    with open(self.path, "rb+") as f:
      data = f.read()
      if not data or data.endswith(b"\n"):
        return
      f.truncate(data.rfind(b"\n") + 1)

  def append(self, rows: Iterable[dict]) -> None:
    if not parallel.is_primary():
      return
    os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
    self._repair()
    try:
      with open(self.path, "a") as f:
        for row in rows:
          f.write(json.dumps(row, sort_keys=True, default=_json_default) + "\n")
        f.flush()
        os.fsync(f.fileno())
    except OSError as e:
      raise StoreError(f"could not append to {self.path}: [Errno {e.errno}] "
                       f"{os.strerror(e.errno)}") from None
