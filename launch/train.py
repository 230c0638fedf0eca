r"""Trains one part of a study: policy, prm or orm.

  python launch/train.py --config=experiments/arith.py:policy --workdir=runs/arith \
      [--config.train.steps=100]

Parts must run in order in one workdir (policy, prm, orm); rerunning a command
after an interruption resumes it.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ttc_jax import progress
from ttc_jax.training import parts

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file and part, e.g. experiments/arith.py:policy.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory shared by all parts of a study.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  progress.quiet_library_logs()
  parts.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
