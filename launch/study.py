r"""Runs the study (the main job): trains or reuses the models, then the search sweep.

  python launch/study.py --config=experiments/arith.py:study --workdir=runs/arith

Writes WORKDIR/study/report.md, results.json and figures. Rerunning after an
interruption resumes without redoing finished work.
"""

from ttc_jax import cli
from ttc_jax.study import runner

if __name__ == "__main__":
  cli.run(runner.run, example="experiments/arith.py:study")
