"""The import contracts of .importlinter hold: packages import downwards only, no cycles,
nothing below the pipeline imports report, search and verifiers import no pipeline, sampling / verifiers / search never touch files."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_contracts_are_kept():
  lint = os.path.join(os.path.dirname(sys.executable), "lint-imports")
  out = subprocess.run([lint, "--config", os.path.join(REPO, ".importlinter"), "--no-cache"],
                       cwd=REPO, capture_output=True, text=True)
  assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
  assert "5 kept, 0 broken" in out.stdout
