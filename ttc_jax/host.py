"""Host-platform setup that must happen before JAX initialises its backends.

This module imports nothing from JAX at import time. XLA_FLAGS is read when JAX
initialises its backends (the first computation or ``jax.devices()``), so call
:func:`cpu_device_per_core` at the top of a launch script, before that.
"""

from __future__ import annotations

import os
import sys
from typing import MutableMapping

_FLAG = "--xla_force_host_platform_device_count"


def cpu_device_per_core(environ: MutableMapping[str, str] = os.environ) -> int:
  """Exposes one XLA CPU device per core (:func:`default_cpu_devices`), unless
  XLA_FLAGS already sets a count.

  On the CPU backend one device runs its attention kernels (batched matrix-vector
  products during decode) on a single thread, and decode-sized matmuls gain little
  from the second thread; a 'data' mesh axis over one device per core runs the
  two halves of the batch side by side. Samples do not depend on the number of
  devices (see tests/test_sharding.py). On GPU/TPU hosts the flag only affects
  the CPU platform. Returns the host device count that is now requested.
  """
  flags = environ.get("XLA_FLAGS", "")
  for part in flags.split():
    if part.startswith(_FLAG + "="):
      return int(part.split("=", 1)[1])
  if "jax" in sys.modules:
    import jax  # pylint: disable=g-import-not-at-top
    if jax._src.xla_bridge.backends_are_initialized():  # pylint: disable=protected-access
      raise RuntimeError(
          "cpu_device_per_core() was called after JAX initialised its backends; call it "
          "before the first JAX computation (at the top of the launch script).")
  n = default_cpu_devices()
  environ["XLA_FLAGS"] = f"{flags} {_FLAG}={n}".strip()
  return n


def requested_cpu_devices(environ: MutableMapping[str, str] = os.environ) -> int:
  """The XLA CPU devices a process started with ``environ`` gets after
  :func:`cpu_device_per_core`: XLA_FLAGS' count, else :func:`default_cpu_devices`."""
  for part in environ.get("XLA_FLAGS", "").split():
    if part.startswith(_FLAG + "="):
      return int(part.split("=", 1)[1])
  return default_cpu_devices()


def default_cpu_devices(max_devices: int = 8) -> int:
  """The usable cores rounded down to a power of two, at most ``max_devices``: batch
  sizes (powers of two in the configs) then divide the 'data' axis, and a large
  host keeps several cores per device for the matmuls."""
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    cores = os.cpu_count() or 1
  return min(max_devices, 1 << (max(1, cores).bit_length() - 1))


def map_count_fraction() -> float | None:
  """Memory mappings of this process over the kernel's limit (vm.max_map_count);
  None where /proc does not tell (not Linux)."""
  try:
    with open("/proc/sys/vm/max_map_count") as f:
      limit = int(f.read())
    with open("/proc/self/maps") as f:
      count = sum(1 for _ in f)
  except (OSError, ValueError):
    return None
  return count / limit


def free_compiled_code(threshold: float = 0.5) -> bool:
  """Drops JAX's compiled programs when this process nears its memory-map limit.

  XLA:CPU maps every JIT-compiled kernel into memory regions of its own (code,
  constants, data: about 80 mappings per program here), and a long run that
  compiles many shapes (the study: on the order of a thousand programs) reaches
  Linux's vm.max_map_count (65530 by default); LLVM then fails with "Cannot
  allocate memory" and the process segfaults (seen in `make study`). Clearing
  JAX's caches unmaps them; programs needed again are recompiled. Call between
  units of work (parts, sweep cells). Returns whether the caches were dropped.
  """
  fraction = map_count_fraction()
  if fraction is None or fraction < threshold:
    return False
  import gc  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  jax.clear_caches()
  gc.collect()
  return True


def default_cache_dir() -> str:
  """Where compiled XLA programs persist: $TTC_JAX_CACHE_DIR, else ~/.cache/ttc_jax/xla."""
  return os.environ.get("TTC_JAX_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "ttc_jax", "xla")


def enable_compilation_cache(directory: str | None) -> str | None:
  """Turns on JAX's persistent compilation cache in ``directory`` (None/'': off).

  Every program is cached (no minimum compile time or size): a process that
  compiles a shape another process (or this one, before its caches were dropped
  by :func:`free_compiled_code`) already compiled loads it from disk instead.
  """
  if not directory:
    return None
  import jax  # pylint: disable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return directory


HOLD_ENV = "TTC_JAX_HOLD"


def hold(tag: str) -> None:
  """A point where a test can stop this process (tests/pipeline_utils.kill_when).

  With ``TTC_JAX_HOLD=TAG=FILE`` in the environment, the process that reaches the point
  ``tag`` writes its pid to FILE and waits while FILE exists: the test kills it there, at a
  point it chose, however fast the machine or warm the compilation cache (no race), or
  removes FILE to let it go on. Tags: ``stage:NAME`` (a stage about to compute),
  ``checkpoint:NAME:STEP`` (a training checkpoint written), ``shard:NAME:I`` (a shard
  written), ``cell:N`` (the sweep's N-th cell written). Without the variable: nothing.
  """
  spec = os.environ.get(HOLD_ENV)
  if not spec:
    return
  want, _, path = spec.partition("=")
  if want != tag or not path:
    return
  import time  # pylint: disable=g-import-not-at-top
  with open(path + ".tmp", "w") as f:
    f.write(str(os.getpid()))
  os.replace(path + ".tmp", path)
  while os.path.exists(path):
    time.sleep(0.05)


class CompileMeter:
  """What JAX compiled in this process since the last :meth:`take` (listening to
  ``jax.monitoring``): XLA programs built or loaded (``programs``; ``cache_hits`` of them
  read from the persistent cache) and the seconds spent tracing, lowering and compiling
  (a cache hit's compile seconds are its load)."""

  _EVENTS = {"/jax/core/compile/backend_compile_duration": "compile_s",
             "/jax/core/compile/jaxpr_trace_duration": "trace_s",
             "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s"}

  def __init__(self):
    self._counts = self._zero()
    import jax  # pylint: disable=g-import-not-at-top
    jax.monitoring.register_event_duration_secs_listener(self._on_duration)
    jax.monitoring.register_event_listener(self._on_event)

  @staticmethod
  def _zero() -> dict:
    return {"programs": 0, "cache_hits": 0, "compile_s": 0.0, "trace_s": 0.0, "lower_s": 0.0}

  def _on_duration(self, event: str, duration: float, **kwargs) -> None:
    del kwargs
    field = self._EVENTS.get(event)
    if field is not None:
      self._counts[field] += float(duration)
      if field == "compile_s":
        self._counts["programs"] += 1

  def _on_event(self, event: str, **kwargs) -> None:
    del kwargs
    if event == "/jax/compilation_cache/cache_hits":
      self._counts["cache_hits"] += 1

  def take(self) -> dict:
    """The counts so far (seconds rounded to ms), and a fresh count from here."""
    out, self._counts = self._counts, self._zero()
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


_COMPILE_METER: CompileMeter | None = None


def compile_meter() -> CompileMeter:
  """This process's :class:`CompileMeter` (listening from its first call)."""
  global _COMPILE_METER
  if _COMPILE_METER is None:
    _COMPILE_METER = CompileMeter()
  return _COMPILE_METER
