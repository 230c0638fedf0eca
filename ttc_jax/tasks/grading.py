"""Grading final answers with math-verify, under a time limit that holds in any thread.

math-verify parses both answers to sympy and compares them (``verify(gold, pred)``, gold
first). Its own timeout uses SIGALRM, which only works in the main thread, and sympy can
take unbounded time on adversarial input; so here math-verify runs with its timeouts off
in a worker process, and a call that uses more than ``time_limit_s`` of the worker's CPU
time (Linux; wall time elsewhere) kills the worker (a fresh one starts on the next call)
and grades the answer incorrect. CPU time, not wall time: on a loaded machine a slow
verdict is not cut short, so verdicts do not depend on the load (a wall-clock backstop, far
above the limit, only catches a worker that is not scheduled at all). Nothing a model writes
can raise or hang a sweep. Verdicts are cached per (gold, prediction) pair: best-of-N grades
the same answer strings many times.

Grading never raises. A call the worker cannot answer is graded incorrect and counted in
``Grader.errors`` (its reason in ``Grader.last_error``), like the time limit's
``Grader.timeouts``, so a caller can report them: a worker that cannot be started, that does
not become ready (its start, which imports sympy and math-verify, is held to
``start_limit_s`` of the worker's CPU time, by the same rule and with a wall-clock backstop
of ``start_backstop_s``), that dies or whose pipe breaks, or a comparison that raises. Such
a verdict is not cached, and the next call starts a fresh worker.

Known limit (math-verify's): units are stripped, so "42 feet" is accepted for a gold
"42" in inches; :func:`units_conflict` rejects answers whose \\text{...} unit differs from
the gold answer's when the gold names one.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import re
import threading
import time

from absl import logging

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
  """The worker: grades (gold, pred) pairs until it receives None. Answers (True, verdict),
  or (False, reason) when the comparison raised."""
  while True:
    item = conn.recv()
    if item is None:
      return
    try:
      answer = (True, bool(function(*item)))
    except Exception as e:  # pylint: disable=broad-except
      answer = (False, f"the comparison raised {type(e).__name__}: {e}")
    conn.send(answer)


def _spawn(ctx, function):
  """Starts a worker process serving ``function``: (the process, the parent's end of its
  pipe). Module level, so a test can replace how workers start."""
  parent, child = ctx.Pipe()
  proc = ctx.Process(target=_serve, args=(child, function), daemon=True, name="ttc_jax-grader")
  try:
    proc.start()
  except BaseException:
    parent.close()
    raise
  finally:
    child.close()
  return proc, parent


class _WorkerError(Exception):
  """The worker could not answer a call (see the module docstring)."""


class Grader:
  """math-verify in a worker process; see the module docstring. Thread-safe."""

  def __init__(self, time_limit_s: float = 1.0, function=None, *, start_limit_s: float = 60.0,
               start_backstop_s: float = 300.0):
    """function: the (gold, pred) -> bool comparison run in the worker, a module-level
    function (default: math-verify's parse and verify).
    start_limit_s: the worker's CPU seconds to start and answer its first (warm-up) call,
    which imports sympy and math-verify; start_backstop_s: the wall-clock backstop of a
    start. Both are attributes a caller may change between calls."""
    for name, value in (("time_limit_s", time_limit_s), ("start_limit_s", start_limit_s),
                        ("start_backstop_s", start_backstop_s)):
      if not value > 0:
        raise ValueError(f"{name}={value}: expected > 0.")
    self._function = _verify if function is None else function
    try:  # the worker receives it pickled: a lambda or local function cannot be sent
      pickle.dumps(self._function)
    except Exception as e:  # pylint: disable=broad-except
      raise TypeError(f"function={self._function!r} cannot be sent to the worker process "
                      f"({type(e).__name__}: {e}); pass a module-level function.") from e
    self.time_limit_s = time_limit_s
    self.start_limit_s = start_limit_s
    self.start_backstop_s = start_backstop_s
    self.wall_backstop_s = max(30.0, 30 * time_limit_s)
    self.timeouts = 0  # calls killed at the time limit
    self.errors = 0  # calls the worker could not answer (graded incorrect, not cached)
    self.last_error: str | None = None  # the reason of the latest error
    self._ctx = multiprocessing.get_context("spawn")
    self._proc = None
    self._conn = None
    self._lock = threading.Lock()
    self._cache: dict[tuple[str, str], bool] = {}

  def _start(self) -> None:
    self._proc, self._conn = _spawn(self._ctx, self._function)
    # Warm up outside any answer's time limit.
    if not self._ask(("1", "1"), self.start_limit_s, self.start_backstop_s):
      raise _WorkerError(f"the grader process did not become ready within {self.start_limit_s:g}"
                         f" s of CPU time ({self.start_backstop_s:g} s wall-clock backstop).")
    self._conn.recv()  # the warm-up's answer (a comparison that raises shows on calls)

  def _ask(self, item, limit_s: float, backstop_s: float) -> bool:
    """Sends ``item`` to the worker and waits for its answer (or its end: EOF, which
    ``recv`` raises): False once the worker has used ``limit_s`` of CPU time since the send
    (wall time where that is unavailable) or ``backstop_s`` of wall time."""
    start, wall = _cpu_seconds(self._proc.pid), time.monotonic()
    self._conn.send(item)
    while not self._conn.poll(0.02):
      elapsed = time.monotonic() - wall
      now = _cpu_seconds(self._proc.pid) if start is not None else None
      used = elapsed if now is None else now - start
      if used > limit_s or elapsed > backstop_s:
        return False
    return True

  def _kill(self) -> None:
    proc, conn = self._proc, self._conn
    self._proc = self._conn = None
    if conn is not None:
      try:
        conn.close()
      except OSError:
        pass
    if proc is not None:
      try:
        proc.kill()
        proc.join(timeout=60)  # SIGKILL: at once, short of a process stuck in the kernel
      except Exception:  # pylint: disable=broad-except
        pass

  def close(self) -> None:
    with self._lock:
      if self._proc is not None and self._proc.is_alive():
        try:
          self._conn.send(None)
          self._proc.join(timeout=5)
        except (OSError, ValueError):
          pass
      self._kill()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass

  def grade(self, gold: str, pred: str | None) -> bool:
    """Whether ``pred`` is mathematically equal to ``gold`` (both LaTeX answers, e.g. the
    contents of \\boxed{}); False for no answer, a unit conflict, a timeout or an error.
    Never raises."""
    if pred is None or not str(pred).strip() or not str(gold).strip():
      return False
    key = (str(gold), str(pred))
    if units_conflict(*key):
      return False
    with self._lock:
      if key not in self._cache:
        verdict = self._call(*key)
        if verdict is None:  # an error: not the answer's verdict
          return False
        if len(self._cache) >= 1 << 16:
          self._cache.clear()
        self._cache[key] = verdict
      return self._cache[key]

  def _call(self, gold: str, pred: str) -> bool | None:
    """The worker's verdict; False at the time limit; None (counted) on an error."""
    try:
      if self._proc is None or not self._proc.is_alive():
        self._start()
      # The limit is the worker's CPU time, so a verdict does not depend on the machine's
      # load; the wall-clock backstop only catches a worker that is not scheduled at all.
      if not self._ask((gold, pred), self.time_limit_s, self.wall_backstop_s):
        self.timeouts += 1
        self._kill()
        return False
      ok, answer = self._conn.recv()
      if ok:
        return bool(answer)
      error = answer
    except Exception as e:  # pylint: disable=broad-except
      # EOFError / OSError (BrokenPipeError): the worker died; _WorkerError: it did not
      # become ready; anything from starting a process (OSError, pickling, a daemonic
      # parent's AssertionError).
      error = f"{type(e).__name__}: {e}"
      self._kill()
    self.errors += 1
    self.last_error = error
    if self.errors & (self.errors - 1) == 0:  # the 1st, 2nd, 4th, 8th, ...
      logging.warning("grading: %d call(s) graded incorrect because the grader failed; "
                      "latest: %s", self.errors, error)
    return None


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
