r"""Runs the study (the main job): trains or reuses the models, then the search sweep.

  python launch/study.py --config=experiments/arith.py:study --workdir=runs/arith

Writes WORKDIR/study/report.md, results.json and figures. Rerunning after an
interruption resumes without redoing finished work.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ttc_jax import progress
from ttc_jax.study import runner

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file and part, e.g. experiments/arith.py:study.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory shared by all parts of a study.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  progress.quiet_library_logs()
  runner.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
