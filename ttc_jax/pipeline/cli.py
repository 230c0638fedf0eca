"""The one launch entry point: run a stage and its missing inputs, or the whole study.

  python launch/run.py --config=experiments/arith.py[:STAGE][,task=NAME] --workdir=DIR \
      [--config.KEY=VALUE ...] [--task_module=my.module] [--distributed]

``launch/study.py``, ``launch/train.py`` and ``launch/evaluate.py`` are the same
entry point under their old names.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ttc_jax import host
from ttc_jax import progress
from ttc_jax import tasks

# The embedded study's config, wherever the command runs from (a checkout: the package's
# parent directory holds experiments/).
EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "experiments", "arith.py")


class CommandLineError(ValueError):
  """A flag's value cannot run: one line, before anything is loaded or written."""


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


def load_config(spec: str):
  """The config of ``--config=FILE[:ARG]``; a CommandLineError for a missing file, one that
  does not run or has no get_config, or an argument it refuses."""
  path = spec.partition(":")[0]
  if not os.path.isfile(path):
    raise CommandLineError(f"--config={spec}: no such file {path!r} (e.g. {EXAMPLE}).")
  try:
    return _load_config(spec)
  except SyntaxError as e:
    raise CommandLineError(f"--config={spec}: {path} line {e.lineno}: invalid Python "
                           f"({e.msg}).") from None
  except AttributeError as e:
    raise CommandLineError(f"--config={spec}: {path} cannot be used as an experiment config "
                           f"({e}; it must define get_config()).") from None
  except Exception as e:  # pylint: disable=broad-except
    raise CommandLineError(f"--config={spec}: {type(e).__name__}: {e}") from None


def _leaves(config, prefix: str = "") -> list[str]:
  out = []
  for key in config.keys():
    value = config[key]
    path = f"{prefix}{key}"
    out.append(path)
    if hasattr(value, "keys") and hasattr(value, "to_dict"):
      out += _leaves(value, path + ".")
  return out


def check_overrides(argv: Sequence[str], config) -> None:
  """``--config.KEY=VALUE`` flags name keys of ``config``, each once (a repeated tuple
  flag would otherwise append to the earlier value)."""
  keys = set(_leaves(config))
  seen: dict[str, str] = {}
  for arg in argv[1:]:
    m = re.match(r"--config\.([^=\s]+)(=(.*))?$", arg)
    if not m:
      continue
    key = m.group(1)
    if key not in keys:
      close = difflib.get_close_matches(key, sorted(keys), n=1)
      raise CommandLineError(f"--config.{key}: not a key of this experiment's config"
                             + (f" (did you mean --config.{close[0]}?)" if close else "")
                             + "; --help lists them.")
    if key in seen:
      raise CommandLineError(f"--config.{key} is given twice ({seen[key]!r} and "
                             f"{m.group(3)!r}): give each key once.")
    seen[key] = m.group(3)


# The config sections every experiment shares, with their comments (ttc_jax.configs.common).
_COMMON = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                       "common.py")


def _field_comments(path: str) -> tuple[dict[str, str], dict[str, str]]:
  """``# comments`` of a config file's fields: (by dotted path, by field name).

  Paths come from ``c.a.b = value  # ...`` and from ``name=value,  # ...`` inside a
  ``c.a = ml_collections.ConfigDict(...)`` block; field names from helper functions
  (e.g. the ``train`` and ``model`` sections). The shared sections' comments
  (ttc_jax/configs/common.py, one function per section) fill in what the file does not say.
  """
  paths, names = _file_comments(path)
  for key, note in _file_comments(_COMMON, functions_are_sections=True)[0].items():
    paths.setdefault(key, note)
  return paths, names


def _file_comments(path: str, functions_are_sections: bool = False
                   ) -> tuple[dict[str, str], dict[str, str]]:
  paths, names, section = {}, {}, None
  try:
    lines = open(path).read().splitlines()
  except OSError:
    return paths, names
  for line in lines:
    block = re.match(r"\s*c\.([\w.]+)\s*=\s*ml_collections\.ConfigDict\(", line)
    if functions_are_sections:
      block = re.match(r"def (\w+)\(", line) or block
    if block:
      section = block.group(1)
      continue
    top = re.match(r"\s*c\.([\w.]+)\s*=.*?#\s*(.+)$", line)
    if top:
      paths.setdefault(top.group(1), top.group(2).strip())
      section = None
      continue
    entry = re.match(r"\s*(\w+)\s*=[^=].*?#\s*(.+)$", line)
    if entry:
      key = f"{section}.{entry.group(1)}" if section else entry.group(1)
      (paths if section else names).setdefault(key, entry.group(2).strip())
    elif re.match(r"\s*\)\)", line) and not functions_are_sections:
      section = None
  return paths, names


def config_help(spec: str) -> str:
  """The config keys, their values and comments, for --help."""
  from ttc_jax.pipeline import runner  # pylint: disable=g-import-not-at-top
  from ttc_jax.pipeline.stages import STAGES  # pylint: disable=g-import-not-at-top
  try:
    config = _load_config(spec)
  except Exception as e:  # pylint: disable=broad-except
    return f"(could not load {spec} to list its keys: {type(e).__name__}: {e})"
  paths, names = _field_comments(spec.partition(":")[0])

  def line(key, value):
    parent, _, leaf = key.rpartition(".")
    note = paths.get(key) or (names.get(leaf) if parent.endswith((".train", ".model")) else None)
    return f"    --config.{key}={value!r}" + (f"  # {note}" if note else "")
  keys = "\n".join(line(k, v) for k, v in runner.flatten(config.to_dict()).items())
  stages = "\n".join(f"    {name}: {s.doc} (reads {', '.join(s.inputs) or 'nothing'}"
                     + (f"; if finished: {', '.join(s.optional)}" if s.optional else "") + ")"
                     for name, s in STAGES.items())
  return (f"Experiment config file, optionally ':STAGE' and/or 'task=NAME' (comma separated), "
          f"e.g. experiments/arith.py:prm. Stages:\n{stages}\n  Keys of {spec} (override any with "
          f"--config.KEY=VALUE):\n{keys}")


def main(argv: Sequence[str] | None = None) -> None:
  """Defines the flags, then runs ``config.stage`` of the pipeline under absl."""
  argv = list(sys.argv if argv is None else argv)
  help_only = any(a in ("--help", "-h", "--helpfull", "--helpshort", "-?") for a in argv[1:])
  spec = (_prescan(argv, "config") or [EXAMPLE])[0]
  try:
    # Task modules register their tasks before the config file is read (it builds
    # the task's section from the task's defaults).
    tasks.import_modules(_prescan(argv, "task_module"))
    if not help_only:
      check_overrides(argv, load_config(spec))
  except (CommandLineError, ValueError) as e:
    print(f"{os.path.basename(argv[0])}: error: {e}", file=sys.stderr)
    sys.exit(2)
  values = _define_flags(argv, spec)
  app.run(lambda args: _run(args, values), argv=argv)


def _define_flags(argv: Sequence[str], spec: str) -> dict:
  """The launch script's flags (absl); returns their holders by name."""
  out = {"config": config_flags.DEFINE_config_file("config", None, config_help(spec),
                                                    lock_config=True)}
  out["workdir"] = flags.DEFINE_string("workdir", None, "Directory of the study's artifacts: "
                                       "WORKDIR/<stage>/<id>/ and WORKDIR/<stage>/latest.")
  flags.DEFINE_multi_string("task_module", [], "Python module(s) to import first: they "
                            "register tasks of your own (README, 'A task of your own').")
  out["distributed"] = flags.DEFINE_bool(
      "distributed", False, "Multi-host: call jax.distributed.initialize() (TPU pods, SLURM, "
      "or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID); process 0 writes.")
  out["xla_cache_dir"] = flags.DEFINE_string("xla_cache_dir", host.default_cache_dir(),
                                             "Persistent XLA compilation cache ('' disables).")
  out["jobs"] = flags.DEFINE_integer(
      "jobs", 1, "Stage processes at a time: independent stages (e.g. PRM and ORM, the search "
      "sweep and the verifier evaluation) run side by side. For CPU hosts (make study: 2); "
      "keep 1 on a GPU or TPU and with --distributed.", lower_bound=1)
  out["mesh"] = flags.DEFINE_list(
      "mesh", ["1", "1"], "DATA,MODEL: the devices of each process that sample and score, as a "
      "'data' x 'model' mesh (rows split over 'data'; attention heads, MLP units and the "
      "vocabulary over 'model'). 1,1 (one device) is fastest on a CPU host; -1,1 uses every "
      "device of a GPU or TPU host; -1,4 adds 4-way tensor parallelism for a model that does "
      "not fit one device. Results do not depend on it.")
  out["redo"] = flags.DEFINE_list(
      "redo", [], "STAGE[,STAGE]: remove these stages' artifacts (of this config) and compute "
      "them again, e.g. after an error names a damaged file; the artifacts that read one are "
      "recomputed if it comes out different.")
  flags.mark_flags_as_required(["config", "workdir"])
  # --help shows the main module's key flags: make these the launch script's.
  for name in ("config", "workdir", "task_module", "distributed", "xla_cache_dir", "jobs", "mesh",
               "redo"):
    flags.FLAGS.register_key_flag_for_module(argv[0], flags.FLAGS[name])
  return out


def _run(args: Sequence[str], f: dict) -> None:
  """Runs the pipeline once absl has parsed the flags (``f``: their holders)."""
  if len(args) > 1:
    raise app.UsageError(f"Unexpected arguments: {args[1:]}")
  logging.set_verbosity(logging.INFO)
  progress.quiet_library_logs()
  try:
    shape = tuple(int(x) for x in f["mesh"].value)
  except ValueError:
    shape = ()
  if len(shape) != 2:
    raise app.UsageError(f"--mesh={','.join(f['mesh'].value)}: expected DATA,MODEL (two "
                         "integers).")
  config, workdir, redo = f["config"].value, f["workdir"].value, tuple(f["redo"].value)
  if f["jobs"].value > 1:
    if f["distributed"].value:
      raise app.UsageError("--jobs > 1 runs stages in separate processes of one host; "
                           "with --distributed use --jobs=1.")
    if shape != (1, 1):
      raise app.UsageError("--jobs > 1 shares one CPU host between stage processes; with "
                           "--mesh use --jobs=1.")
    # The parent only schedules: it starts no JAX backend (each stage process does).
    run_pipeline(config, workdir, jobs=f["jobs"].value, task_modules=flags.FLAGS.task_module,
                 cache_dir=f["xla_cache_dir"].value, redo=redo)
    return
  # Training stages see one XLA CPU device per core, as in a --jobs run's training stage
  # processes (the trainer's 'data' mesh spans them), so both give the same artifacts;
  # sampling and scoring use the --mesh devices (one by default).
  host.cpu_device_per_core()
  from ttc_jax import parallel  # pylint: disable=g-import-not-at-top
  parallel.initialize(f["distributed"].value)
  host.enable_compilation_cache(f["xla_cache_dir"].value)
  try:
    parallel.set_sampling_mesh(*shape)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  import jax  # pylint: disable=g-import-not-at-top
  logging.info("process %d of %d; devices: %s", jax.process_index(), jax.process_count(),
               jax.devices())
  run_pipeline(config, workdir, redo=redo)



def run_pipeline(config, workdir: str, *, jobs: int = 1, task_modules=(),
                 cache_dir: str | None = None, redo: tuple[str, ...] = ()):
  """Runs ``config.stage`` in this process, or with ``jobs`` > 1 its stages in up to
  ``jobs`` processes at a time (:mod:`ttc_jax.pipeline.jobs`); a known failure is one
  line on stderr and exit status 1."""
  from ttc_jax.pipeline import jobs as jobs_lib  # pylint: disable=g-import-not-at-top
  from ttc_jax.pipeline import runner  # pylint: disable=g-import-not-at-top
  try:
    if jobs > 1:
      return jobs_lib.run(runner.Pipeline(config, workdir), config.stage, jobs,
                          task_modules=task_modules, cache_dir=cache_dir, redo=redo)
    return runner.Pipeline(config, workdir).run(redo=redo)
  except runner.KNOWN_ERRORS + (jobs_lib.StageFailed,) as e:
    logging.error("%s: %s", type(e).__name__, e)
    sys.exit(1)
