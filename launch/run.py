r"""Runs a stage of the pipeline and the inputs it is missing, or the whole study.

  python launch/run.py --config=experiments/arith.py --workdir=runs/arith          # the study
  python launch/run.py --config=experiments/arith.py:prm --workdir=runs/arith      # one stage
  python launch/run.py --helpfull   # every flag; --help lists the stages and config keys

Artifacts go to WORKDIR/<stage>/<id>/ (WORKDIR/<stage>/latest links the newest);
rerunning resumes unfinished work and reuses finished work of the same config.
"""

from ttc_jax.pipeline import cli

if __name__ == "__main__":
  cli.main()
