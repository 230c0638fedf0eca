r"""Runs the whole study (an alias of launch/run.py, whose default stage is "study").

  python launch/study.py --config=experiments/arith.py:study --workdir=runs/arith
"""

from ttc_jax.pipeline import cli

if __name__ == "__main__":
  cli.main()
