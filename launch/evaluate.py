r"""Evaluates the verifiers of a study (the 'verifiers' part).

  python launch/evaluate.py --config=experiments/arith.py:verifiers --workdir=runs/arith

Needs the policy, prm and orm parts of launch/train.py in the same workdir.
Writes WORKDIR/verifiers/eval.json and eval.png.
"""

from ttc_jax import cli
from ttc_jax.verifiers import evaluate

if __name__ == "__main__":
  cli.run(evaluate.run, example="experiments/arith.py:verifiers")
