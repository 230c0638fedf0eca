r"""Evaluates the verifiers of a study (the 'verifiers' part).

  python launch/evaluate.py --config=experiments/arith.py:verifiers --workdir=runs/arith

Needs the policy, prm and orm parts of launch/train.py in the same workdir.
Writes WORKDIR/verifiers/eval.json and eval.png.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ttc_jax import progress
from ttc_jax.verifiers import evaluate

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file and part, e.g. experiments/arith.py:verifiers.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory shared by all parts of a study.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  progress.quiet_library_logs()
  evaluate.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
