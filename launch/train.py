r"""Trains one model of the study and what it needs (an alias of launch/run.py).

  python launch/train.py --config=experiments/arith.py:policy --workdir=runs/arith   # or :prm, :orm
"""

from ttc_jax.pipeline import cli

if __name__ == "__main__":
  cli.main()
