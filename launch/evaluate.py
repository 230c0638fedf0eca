r"""Evaluates the verifiers (an alias of launch/run.py with the stage verifier_eval).

  python launch/evaluate.py --config=experiments/arith.py:verifiers --workdir=runs/arith
"""

from ttc_jax.pipeline import cli

if __name__ == "__main__":
  cli.main()
