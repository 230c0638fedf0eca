"""Reasoning tasks and their registry.

Usage:
  task = tasks.get_task("arith", max_ops=4)
  problem = task.get("test", 0)
  task.is_correct(sample_text, problem)

`ttc_jax.tasks.tfds_builder` (TFDS / ArrayRecord materialization) is not
imported here, to keep `import ttc_jax.tasks` light.
"""

from __future__ import annotations

from typing import Any, Callable

from ttc_jax.tasks.arithmetic import ArithmeticTask
from ttc_jax.tasks.base import Problem
from ttc_jax.tasks.base import SPLITS
from ttc_jax.tasks.base import Task

_REGISTRY: dict[str, Callable[..., Task]] = {}


def register_task(name: str, factory: Callable[..., Task]) -> None:
  """Registers `factory(**kwargs) -> Task` under `name`.

  Raises:
    ValueError: If `name` is already registered.
  """
  if name in _REGISTRY:
    raise ValueError(f"Task {name!r} is already registered.")
  _REGISTRY[name] = factory


def get_task(name: str, **kwargs: Any) -> Task:
  """Builds the task registered as `name` with constructor `kwargs`.

  Raises:
    ValueError: If no task is registered under `name`.
  """
  if name not in _REGISTRY:
    raise ValueError(
        f"Unknown task {name!r}; known tasks: {sorted(_REGISTRY)}."
    )
  return _REGISTRY[name](**kwargs)


def list_tasks() -> list[str]:
  """Sorted names of the registered tasks."""
  return sorted(_REGISTRY)


register_task(ArithmeticTask.name, ArithmeticTask)

__all__ = [
    "ArithmeticTask",
    "Problem",
    "SPLITS",
    "Task",
    "get_task",
    "list_tasks",
    "register_task",
]
