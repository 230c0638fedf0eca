"""What every launch script shares: the --config / --workdir flags and logging setup.

A launch script is its docstring plus one call::

  if __name__ == "__main__":
    cli.run(parts.run, example="experiments/arith.py:policy")
"""

from __future__ import annotations

from typing import Callable

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from ttc_jax import progress


def run(fn: Callable[[ml_collections.ConfigDict, str], object], example: str) -> None:
  """Defines --config (an ml_collections file:part, locked) and --workdir, then runs
  ``fn(config, workdir)`` under absl with INFO progress logs."""
  config = config_flags.DEFINE_config_file(
      "config", None, f"Experiment config file and part, e.g. {example}.", lock_config=True)
  workdir = flags.DEFINE_string("workdir", None, "Directory shared by all parts of a study.")
  flags.mark_flags_as_required(["config", "workdir"])

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    progress.quiet_library_logs()
    import jax  # pylint: disable=g-import-not-at-top
    logging.info("JAX devices: %s", jax.devices())
    fn(config.value, workdir.value)

  app.run(main)
