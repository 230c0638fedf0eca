"""The one launch entry point: run a stage and its missing inputs, or the whole study.

  python launch/run.py --config=experiments/arith.py[:STAGE][,task=NAME] --workdir=DIR \
      [--config.KEY=VALUE ...] [--task_module=my.module] [--distributed]

``launch/study.py``, ``launch/train.py`` and ``launch/evaluate.py`` are the same
entry point under their old names.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ttc_jax import host
from ttc_jax import progress
from ttc_jax import tasks

EXAMPLE = "experiments/arith.py"


def _prescan(argv: Sequence[str], name: str) -> list[str]:
  """Values of ``--name=V`` / ``--name V`` in argv (before absl parses the flags)."""
  out = []
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      out.append(arg.split("=", 1)[1])
    elif arg == f"--{name}" and i + 1 < len(argv):
      out.append(argv[i + 1])
  return out


def _load_config(spec: str):
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_ttc_config_for_help", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def config_help(spec: str) -> str:
  """The config keys and their values, for --help."""
  from ttc_jax.pipeline import runner  # pylint: disable=g-import-not-at-top
  from ttc_jax.pipeline.stages import STAGES  # pylint: disable=g-import-not-at-top
  try:
    config = _load_config(spec)
  except Exception as e:  # pylint: disable=broad-except
    return f"(could not load {spec} to list its keys: {type(e).__name__}: {e})"
  keys = "\n".join(f"    --config.{k}={v!r}" for k, v in runner.flatten(config.to_dict()).items())
  stages = "\n".join(f"    {name}: {s.doc} (reads {', '.join(s.inputs) or 'nothing'})"
                     for name, s in STAGES.items())
  return (f"Experiment config file, optionally ':STAGE' and/or 'task=NAME' (comma separated), "
          f"e.g. {EXAMPLE}:prm. Stages:\n{stages}\n  Keys of {spec} (override any with "
          f"--config.KEY=VALUE):\n{keys}")


def main(argv: Sequence[str] | None = None) -> None:
  """Defines the flags, then runs ``config.stage`` of the pipeline under absl."""
  argv = list(sys.argv if argv is None else argv)
  # Task modules register their tasks before the config file is read (it builds
  # the task's section from the task's defaults).
  tasks.import_modules(_prescan(argv, "task_module"))
  spec = (_prescan(argv, "config") or [EXAMPLE])[0]
  config = config_flags.DEFINE_config_file("config", None, config_help(spec), lock_config=True)
  workdir = flags.DEFINE_string("workdir", None, "Directory of the study's artifacts: "
                                "WORKDIR/<stage>/<id>/ and WORKDIR/<stage>/latest.")
  flags.DEFINE_multi_string("task_module", [], "Python module(s) to import first: they "
                            "register tasks of your own (README, 'A task of your own').")
  distributed = flags.DEFINE_bool(
      "distributed", False, "Multi-host: call jax.distributed.initialize() (TPU pods, SLURM, "
      "or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID); process 0 writes.")
  cache = flags.DEFINE_string("xla_cache_dir", host.default_cache_dir(),
                              "Persistent XLA compilation cache ('' disables).")
  flags.mark_flags_as_required(["config", "workdir"])
  # --help shows the main module's key flags: make these the launch script's.
  for name in ("config", "workdir", "task_module", "distributed", "xla_cache_dir"):
    flags.FLAGS.register_key_flag_for_module(argv[0], flags.FLAGS[name])

  def run(args):
    if len(args) > 1:
      raise app.UsageError(f"Unexpected arguments: {args[1:]}")
    logging.set_verbosity(logging.INFO)
    progress.quiet_library_logs()
    from ttc_jax import parallel  # pylint: disable=g-import-not-at-top
    parallel.initialize(distributed.value)
    host.enable_compilation_cache(cache.value)
    import jax  # pylint: disable=g-import-not-at-top
    logging.info("process %d of %d; devices: %s", jax.process_index(), jax.process_count(),
                 jax.devices())
    run_pipeline(config.value, workdir.value)

  app.run(run, argv=argv)


def run_pipeline(config, workdir: str):
  """Runs ``config.stage``; a known failure is one line on stderr and exit status 1."""
  from ttc_jax.models.checkpoints import CheckpointError  # pylint: disable=g-import-not-at-top
  from ttc_jax.pipeline import Pipeline  # pylint: disable=g-import-not-at-top
  from ttc_jax.pipeline.artifacts import ArtifactError  # pylint: disable=g-import-not-at-top
  from ttc_jax.pipeline.config import ConfigError  # pylint: disable=g-import-not-at-top
  from ttc_jax.pipeline.store import StoreError  # pylint: disable=g-import-not-at-top
  try:
    return Pipeline(config, workdir).run()
  except (ConfigError, ArtifactError, StoreError, CheckpointError) as e:
    logging.error("%s: %s", type(e).__name__, e)
    sys.exit(1)
