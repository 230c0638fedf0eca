"""Grading final answers with math-verify, under a time limit that holds in any thread.

math-verify parses both answers to sympy and compares them (``verify(gold, pred)``, gold
first). Its own timeout uses SIGALRM, which only works in the main thread, and sympy can
take unbounded time on adversarial input; so here math-verify runs with its timeouts off
in a worker process, and a call that uses more than ``time_limit_s`` of the worker's CPU
time (Linux; wall time elsewhere) kills the worker (a fresh one starts on the next call)
and grades the answer incorrect. CPU time, not wall time: on a loaded machine a slow
verdict is not cut short, so verdicts do not depend on the load. Nothing a model writes can
raise or hang a sweep. Verdicts are cached per (gold, prediction) pair: best-of-N grades
the same answer strings many times.

Known limit (math-verify's): units are stripped, so "42 feet" is accepted for a gold
"42" in inches; :func:`units_conflict` rejects answers whose \\text{...} unit differs from
the gold answer's when the gold names one.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import threading
import time

_TEXT = re.compile(r"\\(?:text|mbox|mathrm)\{\s*([A-Za-z][A-Za-z ]*?)\s*\}")


def units_conflict(gold: str, pred: str) -> bool:
  """True when both answers name a unit in \\text{...} and the units differ (singular and
  plural forms match: "foot"/"feet" do not, "inch"/"inches" do)."""
  def units(s):
    return {re.sub(r"(es|s)$", "", u.lower()) for u in _TEXT.findall(s)}
  g, p = units(gold), units(pred)
  return bool(g and p and not g & p)


def _verify(gold: str, pred: str) -> bool:
  import math_verify  # pylint: disable=g-import-not-at-top
  from math_verify import ExprExtractionConfig  # pylint: disable=g-import-not-at-top
  from math_verify import LatexExtractionConfig  # pylint: disable=g-import-not-at-top

  targets = [LatexExtractionConfig(), ExprExtractionConfig()]
  try:
    g = math_verify.parse(f"${gold}$", extraction_config=targets, parsing_timeout=None)
    p = math_verify.parse(f"${pred}$", extraction_config=targets, parsing_timeout=None)
    if not g or not p:
      return False
    return bool(math_verify.verify(g, p, timeout_seconds=None))
  except Exception:  # pylint: disable=broad-except
    return False


def _serve(conn, function) -> None:
  """The worker: grades (gold, pred) pairs until it receives None."""
  while True:
    item = conn.recv()
    if item is None:
      return
    try:
      verdict = bool(function(*item))
    except Exception:  # pylint: disable=broad-except
      verdict = False
    conn.send(verdict)


class Grader:
  """math-verify in a worker process; see the module docstring. Thread-safe."""

  def __init__(self, time_limit_s: float = 1.0, function=None):
    """function: the (gold, pred) -> bool comparison run in the worker, a module-level
    function (default: math-verify's parse and verify)."""
    if not time_limit_s > 0:
      raise ValueError(f"time_limit_s={time_limit_s}: expected > 0.")
    self.time_limit_s = time_limit_s
    self.timeouts = 0  # calls killed at the time limit
    self._function = _verify if function is None else function
    self._ctx = multiprocessing.get_context("spawn")
    self._proc = None
    self._conn = None
    self._lock = threading.Lock()
    self._cache: dict[tuple[str, str], bool] = {}
    self._start_timeout = 60.0  # the worker's first call imports sympy and math-verify
    self.wall_backstop_s = max(30.0, 30 * time_limit_s)

  def _start(self) -> None:
    parent, child = self._ctx.Pipe()
    self._proc = self._ctx.Process(target=_serve, args=(child, self._function), daemon=True,
                                   name="ttc_jax-grader")
    self._proc.start()
    child.close()
    self._conn = parent
    # Warm up outside any answer's time limit.
    self._conn.send(("1", "1"))
    if not self._conn.poll(self._start_timeout):
      self._kill()
      raise RuntimeError("the math-verify grader process did not start within "
                         f"{self._start_timeout:.0f} s.")
    self._conn.recv()

  def _kill(self) -> None:
    if self._proc is not None:
      self._proc.kill()
      self._proc.join()
    self._proc = self._conn = None

  def close(self) -> None:
    with self._lock:
      if self._proc is not None and self._proc.is_alive():
        try:
          self._conn.send(None)
        except OSError:
          pass
        self._proc.join(timeout=5)
      self._kill()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass

  def grade(self, gold: str, pred: str | None) -> bool:
    """Whether ``pred`` is mathematically equal to ``gold`` (both LaTeX answers, e.g. the
    contents of \\boxed{}); False for no answer, a unit conflict or a timeout."""
    if pred is None or not str(pred).strip() or not str(gold).strip():
      return False
    if units_conflict(gold, pred):
      return False
    key = (str(gold), str(pred))
    with self._lock:
      if key not in self._cache:
        if len(self._cache) >= 1 << 16:
          self._cache.clear()
        self._cache[key] = self._call(*key)
      return self._cache[key]

  def _call(self, gold: str, pred: str) -> bool:
    if self._proc is None or not self._proc.is_alive():
      self._start()
    start, wall = _cpu_seconds(self._proc.pid), time.monotonic()
    self._conn.send((gold, pred))
    while not self._conn.poll(0.02):
      used = (time.monotonic() - wall if start is None
              else _cpu_seconds(self._proc.pid) - start)
      # The limit is the worker's CPU time, so a verdict does not depend on the machine's
      # load; the wall-clock backstop only catches a worker that is not scheduled at all.
      if used > self.time_limit_s or time.monotonic() - wall > self.wall_backstop_s:
        self.timeouts += 1
        self._kill()
        return False
    return bool(self._conn.recv())


def _cpu_seconds(pid: int) -> float | None:
  """User + system CPU seconds of process ``pid`` (Linux /proc), None where unavailable."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
  except (OSError, ValueError, IndexError):
    return None


_SHARED: dict[float, Grader] = {}
_SHARED_LOCK = threading.Lock()


def shared_grader(time_limit_s: float = 1.0) -> Grader:
  """One grader (one worker process) per time limit for the whole process: every task
  instance and thread shares it, and its verdict cache."""
  with _SHARED_LOCK:
    if time_limit_s not in _SHARED:
      _SHARED[time_limit_s] = Grader(time_limit_s)
    return _SHARED[time_limit_s]
