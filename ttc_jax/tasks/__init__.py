"""Reasoning tasks and their registry.

Usage:
  task = tasks.get_task("arith", max_ops=4)
  problem = task.get("test", 0)
  task.is_correct(sample_text, problem)

A task registers a factory and its default keyword arguments; those defaults are
the task's section of an experiment config (:func:`default_config`), so a task
owns its keys: :func:`build` passes a section only to the task it was made for.
A task of one's own lives in its own module that calls :func:`register_task`
(see README, "A task of your own"); the launch scripts import it with
``--task_module``.

`ttc_jax.tasks.tfds_builder` (TFDS / ArrayRecord materialization) is not
imported here, to keep `import ttc_jax.tasks` light.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping

import ml_collections

from ttc_jax.tasks.arithmetic import ArithmeticTask
from ttc_jax.tasks.math_benchmarks import GSM8KTask
from ttc_jax.tasks.math_benchmarks import MathTask
from ttc_jax.tasks.base import Problem
from ttc_jax.tasks.base import SPLITS
from ttc_jax.tasks.base import Task
from ttc_jax.tasks.base import unusable_references


@dataclasses.dataclass(frozen=True)
class _Entry:
  factory: Callable[..., Task]
  defaults: Mapping[str, Any]


_REGISTRY: dict[str, _Entry] = {}


def register_task(name: str, factory: Callable[..., Task],
                  defaults: Mapping[str, Any] | None = None) -> None:
  """Registers ``factory(**kwargs) -> Task`` under ``name``.

  Args:
    name: registry name (the config's ``task.name``).
    factory: builds the task from keyword arguments and validates them (raise
      ValueError naming the bad value).
    defaults: every keyword the factory takes, with its default: the task's
      config section. Values must be plain (int, float, str, bool, tuples).

  Raises:
    ValueError: If ``name`` is already registered to another factory.
  """
  entry = _Entry(factory, dict(defaults or {}))
  if "name" in entry.defaults:
    raise ValueError(f"task {name!r}: 'name' is reserved in a task's config section.")
  if name in _REGISTRY and _REGISTRY[name] != entry:
    raise ValueError(f"Task {name!r} is already registered.")
  _REGISTRY[name] = entry


def get_task(name: str, **kwargs: Any) -> Task:
  """Builds the task registered as ``name`` with keyword arguments ``kwargs``."""
  return _entry(name).factory(**kwargs)


def list_tasks() -> list[str]:
  """Sorted names of the registered tasks."""
  return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
  if name not in _REGISTRY:
    raise ValueError(
        f"Unknown task {name!r}; known tasks: {sorted(_REGISTRY)} (a task of your own: "
        "register it in a module and pass --task_module=your.module).")
  return _REGISTRY[name]


def default_config(name: str) -> ml_collections.ConfigDict:
  """The task's config section: ``name`` plus every key of its factory, with defaults."""
  return ml_collections.ConfigDict({"name": name, **_entry(name).defaults})


def build(section: Mapping[str, Any] | ml_collections.ConfigDict) -> Task:
  """The task of a config section made by :func:`default_config` (a task's factory
  only ever receives its own keys)."""
  section = dict(section.to_dict() if hasattr(section, "to_dict") else section)
  name = section.pop("name", None)
  entry = _entry(name)
  extra = sorted(set(section) - set(entry.defaults))
  missing = sorted(set(entry.defaults) - set(section))
  if extra or missing:
    raise ValueError(
        f"config.task is not a section of task {name!r}: unexpected keys {extra}, missing keys "
        f"{missing}. A task's section is built from its own defaults: choose the task with "
        f"--config=EXPERIMENT.py:task={name} rather than --config.task.name={name}.")
  try:
    return entry.factory(**section)
  except (TypeError, ValueError) as e:
    raise ValueError(f"config.task ({name}): {e}") from e


def import_modules(modules) -> None:
  """Imports user modules that register tasks (``--task_module``)."""
  for module in modules or ():
    try:
      importlib.import_module(module)
    except ModuleNotFoundError as e:
      if e.name and module.startswith(e.name):  # the module itself (or its package) is missing
        raise ValueError(f"--task_module={module}: cannot import it ({e}); is its directory "
                         "on PYTHONPATH?") from e
      raise ValueError(f"--task_module={module}: importing it failed: {e}") from e
    except Exception as e:  # pylint: disable=broad-except
      where = ""
      tb = e.__traceback__
      while tb is not None:
        where = f" ({tb.tb_frame.f_code.co_filename}:{tb.tb_lineno})"
        tb = tb.tb_next
      raise ValueError(f"--task_module={module}: importing it raised "
                       f"{type(e).__name__}: {e}{where}") from e


register_task(ArithmeticTask.name, ArithmeticTask, ArithmeticTask.DEFAULTS)
register_task(MathTask.name, MathTask, MathTask.DEFAULTS)
register_task(GSM8KTask.name, GSM8KTask, GSM8KTask.DEFAULTS)

__all__ = [
    "ArithmeticTask",
    "GSM8KTask",
    "MathTask",
    "Problem",
    "SPLITS",
    "Task",
    "build",
    "default_config",
    "get_task",
    "import_modules",
    "list_tasks",
    "register_task",
    "unusable_references",
]
