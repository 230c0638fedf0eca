"""Devices, meshes and processes: the one place that knows axis names and hosts.

* Mesh axes: ``'data'`` (batch rows; every caller shards its rows over it) and
  ``'model'`` (kept in every mesh for tensor parallelism).
* Processes (multi-host): :func:`initialize` starts ``jax.distributed`` when asked
  (``--distributed`` in the launch scripts); everything else works unchanged with
  one process. Work that is a list of independent chunks (sampling, rollouts,
  scoring, search calls) is split over processes with :func:`my_chunks` and the
  results are collected on every process with :func:`allgather_objects`
  (``jax.experimental.multihost_utils``); training runs over a global mesh
  (:func:`make_mesh` lays every device of every process on ``'data'``).
  Only the primary process (:func:`is_primary`) writes files.
"""

from __future__ import annotations

import os
import pickle
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

DATA_AXIS = "data"
MODEL_AXIS = "model"


def make_mesh(num_data: int | None = None, num_model: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'model') mesh; by default every device (of every process) on 'data'."""
  devices = list(jax.devices() if devices is None else devices)
  if num_data is None:
    num_data = len(devices) // num_model
  if num_data * num_model > len(devices) or num_data < 1 or num_model < 1:
    raise ValueError(
        f"mesh data={num_data} x model={num_model} needs {num_data * num_model} "
        f"devices; {len(devices)} available.")
  grid = np.asarray(devices[: num_data * num_model]).reshape(num_data, num_model)
  return Mesh(grid, (DATA_AXIS, MODEL_AXIS))


# The local mesh that sampling and scoring use unless given one: (data, model) shards.
_SAMPLING_MESH = (1, 1)


def set_sampling_mesh(num_data: int, num_model: int = 1) -> None:
  """Sets the mesh of this process's devices that :func:`local_mesh` returns (the launch
  flag ``--mesh``). ``num_data`` -1: every local device not used by ``num_model``.

  One device is the default: on a CPU host with few cores it runs a whole batch fastest
  (see BUILD.md); on a GPU or TPU host use every device, with 'model' shards when a model's
  parameters and caches do not fit one device.
  """
  n = jax.local_device_count()
  if num_model < 1 or n % num_model:
    raise ValueError(f"--mesh model shards {num_model}: expected a divisor of this process's "
                     f"{n} devices.")
  if num_data == -1:
    num_data = n // num_model
  elif num_data < 1:
    raise ValueError(f"--mesh data shards {num_data}: expected >= 1, or -1 for every device.")
  if num_data < 1 or num_data * num_model > n:
    raise ValueError(f"--mesh {num_data},{num_model} needs {num_data * num_model} devices; this "
                     f"process has {n}.")
  global _SAMPLING_MESH
  _SAMPLING_MESH = (num_data, num_model)


def local_mesh() -> Mesh:
  """The ('data', 'model') mesh of this process's devices that sampling and scoring use
  (:func:`set_sampling_mesh`; by default its first device). Their work is split over
  processes by chunks (:func:`map_chunks`)."""
  num_data, num_model = _SAMPLING_MESH
  return make_mesh(num_data, num_model, devices=jax.local_devices()[:num_data * num_model])


# ----------------------------------------------------------------------------
# Processes
# ----------------------------------------------------------------------------
def initialize(distributed: bool, *, coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None) -> None:
  """Starts ``jax.distributed`` if ``distributed`` (before any other JAX call).

  On TPU VMs and SLURM / Open MPI clusters JAX finds the coordinator itself; on
  other hosts pass the three arguments (or set JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES, JAX_PROCESS_ID). On the CPU backend the collectives use gloo.
  """
  if not distributed:
    return
  # Cross-process collectives of the CPU backend (no effect on GPU / TPU devices).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  env = os.environ
  kwargs = {}
  address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
  count = num_processes if num_processes is not None else env.get("JAX_NUM_PROCESSES")
  pid = process_id if process_id is not None else env.get("JAX_PROCESS_ID")
  if address:
    kwargs["coordinator_address"] = address
  if count is not None:
    kwargs["num_processes"] = int(count)
  if pid is not None:
    kwargs["process_id"] = int(pid)
  jax.distributed.initialize(**kwargs)


def process_index() -> int:
  return jax.process_index()


def process_count() -> int:
  return jax.process_count()


def is_primary() -> bool:
  """True on the process that writes files (process 0)."""
  return jax.process_index() == 0


def my_chunks(num_chunks: int) -> list[int]:
  """The chunk indices this process computes (round robin over processes)."""
  return list(range(jax.process_index(), num_chunks, jax.process_count()))


def allgather_objects(obj: Any) -> list[Any]:
  """Every process's ``obj`` (any picklable value), in process order, on every process."""
  if jax.process_count() == 1:
    return [obj]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  blob = np.frombuffer(pickle.dumps(obj), np.uint8)
  sizes = multihost_utils.process_allgather(np.array([blob.size], np.int64))
  padded = np.zeros(int(np.max(sizes)), np.uint8)
  padded[:blob.size] = blob
  every = multihost_utils.process_allgather(padded)
  return [pickle.loads(every[p, :int(sizes[p][0])].tobytes()) for p in range(every.shape[0])]


def gather_chunks(mine: dict[int, Any], num_chunks: int) -> list[Any]:
  """Results of all chunks in chunk order, from ``{chunk: result}`` of each process."""
  merged: dict[int, Any] = {}
  for part in allgather_objects(mine):
    merged.update(part)
  missing = sorted(set(range(num_chunks)) - set(merged))
  if missing:
    raise RuntimeError(f"chunks {missing} were computed by no process.")
  return [merged[c] for c in range(num_chunks)]


def map_chunks(fn: Callable[[int], Any], num_chunks: int) -> list[Any]:
  """``[fn(c) for c in range(num_chunks)]``, each chunk computed by one process
  (:func:`my_chunks`) and the results gathered on every process."""
  if jax.process_count() == 1:
    return [fn(c) for c in range(num_chunks)]
  return gather_chunks({c: fn(c) for c in my_chunks(num_chunks)}, num_chunks)


def barrier(name: str) -> None:
  """Waits until every process gets here (no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)
