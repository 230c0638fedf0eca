"""Progress lines with rate and ETA for long loops (absl logging)."""

from __future__ import annotations

import time
from typing import Callable

from absl import logging


def fmt_duration(seconds: float) -> str:
  s = int(max(seconds, 0))
  return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
  """Logs ``desc done/total (pct) | rate unit/s | ETA h:mm:ss`` at most every ``every_s`` seconds.

  Example::

    progress = Progress(total=len(rows), desc="rollouts", unit="rows")
    for chunk in chunks:
      ...
      progress.update(len(chunk))
    progress.close()
  """

  def __init__(self, total: int, desc: str, unit: str = "it", every_s: float = 10.0,
               log_fn: Callable[[str], None] = logging.info, initial: int = 0):
    self.total, self.desc, self.unit, self.every_s, self.log_fn = total, desc, unit, every_s, log_fn
    self.done = initial
    self._start_done = initial
    self.start = time.time()
    self._last_log = -float("inf")

  def update(self, n: int = 1, extra: str = "") -> None:
    self.done += n
    now = time.time()
    if now - self._last_log >= self.every_s or self.done >= self.total:
      self._last_log = now
      self.log_fn(self.line(extra))

  @property
  def rate(self) -> float:
    return (self.done - self._start_done) / max(time.time() - self.start, 1e-9)

  def line(self, extra: str = "") -> str:
    rate = self.rate
    eta = (self.total - self.done) / rate if rate > 0 else float("inf")
    pct = 100.0 * self.done / max(self.total, 1)
    eta_s = fmt_duration(eta) if eta != float("inf") else "?"
    tail = f" | {extra}" if extra else ""
    return (f"{self.desc} {self.done}/{self.total} ({pct:.0f}%) | {self._rate_text(rate)} | "
            f"ETA {eta_s}{tail}")

  def _rate_text(self, rate: float) -> str:
    if 0 < rate < 1:
      return f"{1 / rate:,.1f} s/{self.unit.rstrip('s') or self.unit}"
    return f"{rate:,.1f} {self.unit}/s"

  def close(self) -> float:
    """Logs a final line; returns the elapsed seconds."""
    elapsed = time.time() - self.start
    self.log_fn(f"{self.desc} done: {self.done} {self.unit} in {fmt_duration(elapsed)} "
                f"({self._rate_text(self.rate)})")
    return elapsed


class _LibraryInfoFilter:
  """Drops INFO records of chatty libraries (orbax, tfds) from the absl log, and orbax's
  background-thread copies of errors its caller raises."""

  _PREFIXES = ("orbax", "tensorflow_datasets", "etils", "jax._src")

  def filter(self, record) -> bool:
    name = getattr(record, "pathname", "") or ""
    if name.endswith("orbax/checkpoint/_src/futures/future.py") and \
        "raised an exception" in str(record.msg):
      # A failed checkpoint write (e.g. a full disk) logged with its traceback by each of
      # orbax's writer threads; the same exception reaches the caller, which reports it in
      # one line (ttc_jax.models.checkpoints.save).
      return False
    if record.levelno >= 30:  # WARNING and above always pass
      return True
    return not any(f"/{p.replace('.', '/')}/" in name for p in self._PREFIXES)


def quiet_library_logs() -> None:
  """Keeps INFO progress lines from ttc_jax, hides orbax / tfds INFO chatter."""
  import logging as py_logging  # pylint: disable=g-import-not-at-top
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _LibraryInfoFilter) for f in handler.filters):
    handler.addFilter(_LibraryInfoFilter())
  for name in ("orbax", "tensorflow_datasets", "absl.tfds"):
    py_logging.getLogger(name).setLevel(py_logging.WARNING)


class CompileClock:
  """Seconds spent tracing, lowering and compiling with XLA since the process started.

  Benchmarks subtract it from wall time so that a measurement is not dominated
  by one-off compilation of new shapes. One listener per process.
  """

  _EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
             "/jax/core/compile/jaxpr_to_mlir_module_duration",
             "/jax/core/compile/backend_compile_duration")
  _instance: "CompileClock | None" = None

  def __init__(self):
    self.seconds = 0.0

  @classmethod
  def get(cls) -> "CompileClock":
    if cls._instance is None:
      import jax  # pylint: disable=g-import-not-at-top
      cls._instance = cls()
      jax.monitoring.register_event_duration_secs_listener(cls._instance._on_event)
    return cls._instance

  def _on_event(self, event: str, duration: float, **kwargs) -> None:
    del kwargs
    if event in self._EVENTS:
      self.seconds += duration
