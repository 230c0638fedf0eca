r"""Trains one part of a study: policy, prm or orm.

  python launch/train.py --config=experiments/arith.py:policy --workdir=runs/arith \
      [--config.train.steps=100]

Parts must run in order in one workdir (policy, prm, orm); rerunning a command
after an interruption resumes it.
"""

from ttc_jax import cli
from ttc_jax.training import parts

if __name__ == "__main__":
  cli.run(parts.run, example="experiments/arith.py:policy")
