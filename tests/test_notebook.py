"""The quickstart notebook runs top to bottom on the CPU (so it never rots)."""

import os

import nbformat
from nbclient import NotebookClient
import pytest

import pipeline_utils as pu

NOTEBOOK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "experiments", "colab", "quickstart.ipynb")

pytestmark = pytest.mark.e2e


def test_quickstart_notebook_executes(monkeypatch):
  monkeypatch.setenv("TTC_QUICK", "1")
  monkeypatch.setenv("XLA_FLAGS", pu.subprocess_xla_flags())  # one CPU device in the kernel
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  NotebookClient(nb, kernel_name="python3", timeout=None,
                 resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}).execute()
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.get("outputs", []))
  assert "policy pass@1 on 40 test problems:" in outputs
  assert "| chosen:" in outputs
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]
  assert images, "the notebook should show its plot"
