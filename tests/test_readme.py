"""README's code runs as written."""

import pytest
import os
import re
import subprocess
import sys

import pipeline_utils as pu


def _block(title: str) -> str:
  text = open(os.path.join(pu.REPO, "README.md")).read()
  section = text.split(f"## {title}", 1)[1]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.e2e
def test_sampling_in_five_lines_runs():
  out = subprocess.run([sys.executable, "-c", _block("Sampling in five lines")], env=pu.env(),
                       capture_output=True, text=True, cwd=pu.REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "[" in out.stdout  # printed the tokens


def test_the_task_of_your_own_is_the_tested_one():
  """README shows the held-out task the suite runs (same registration, same keys)."""
  block = _block("A task of your own")
  source = open(os.path.join(pu.TESTS, "heldout_task.py")).read()
  registration = re.search(r"tasks.register_task\(.*\)", block).group(0)
  assert registration in source
  namespace = {}
  exec(block.replace(registration, ""), namespace)  # pylint: disable=exec-used
  import heldout_task  # noqa: F401
  readme_task, tested = namespace["ModSum"](), heldout_task.ModSum()
  for split, i in [("train", 0), ("train", 7), ("test", 3)]:
    assert readme_task.get(split, i) == tested.get(split, i)
