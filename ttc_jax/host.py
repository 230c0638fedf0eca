"""Host-platform setup that must happen before JAX initialises its backends.

This module imports nothing from JAX: call :func:`cpu_device_per_core` at the
top of a launch script, before anything imports ``jax``.
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


def default_cpu_devices(max_devices: int = 8) -> int:
  """The usable cores rounded down to a power of two, at most ``max_devices``: batch
  sizes (powers of two in the configs) then divide the 'data' axis, and a large
  host keeps several cores per device for the matmuls."""
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    cores = os.cpu_count() or 1
  return min(max_devices, 1 << (max(1, cores).bit_length() - 1))
