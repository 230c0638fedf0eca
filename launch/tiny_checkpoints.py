r"""Writes random tiny checkpoints of experiments/math_qwen.py's architectures, for its CPU
smoke run (``make study-math-smoke``): a Qwen2 chat LM and a Qwen2.5-Math-PRM-layout step
classifier, 32 wide. They check the wiring of the real-model study, not results.

  python launch/tiny_checkpoints.py --out=runs/tiny_checkpoints [--data=../shared/data]

Needs torch and transformers (``make venv``).
"""

import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))

OUT = flags.DEFINE_string("out", "runs/tiny_checkpoints", "Directory of the checkpoints.")
DATA = flags.DEFINE_string("data", "../shared/data", "MATH-500 / GSM8K folder (shared/data); "
                           "when absent, a few problems in its format are written to OUT/data.")


def main(argv):
  del argv
  import hf_fixtures  # pylint: disable=g-import-not-at-top
  paths = hf_fixtures.write_math_smoke(OUT.value, DATA.value)
  for name, path in paths.items():
    print(f"{name}: {path}")


if __name__ == "__main__":
  app.run(main)
