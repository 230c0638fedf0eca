"""Multi-host: two local CPU processes (jax.distributed over gloo) run stages together.

Sampling work is split over the processes and gathered with multihost_utils; only
process 0 writes. The same stage in one process gives the same per-problem results.
"""

import json
import os
import re
import shutil
import socket
import subprocess

import numpy as np
import pytest

import pipeline_utils as pu

pytestmark = pytest.mark.multiprocess


def _port() -> int:
  """A port for the coordinator: one the kernel just gave out (it may be taken again before
  the coordinator binds it: :func:`_run_two` then retries with another)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_once(args: list[str], port: int) -> list[subprocess.CompletedProcess]:
  procs = []
  for pid in range(2):
    env = pu.env()
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(pid))
    procs.append(subprocess.Popen(args + ["--distributed"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  outs = []
  for p in procs:
    stdout, stderr = p.communicate(timeout=600)
    outs.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
  return outs


_PORT_TAKEN = re.compile(r"[Aa]ddress already in use|Failed to bind|bind.*failed", re.S)


def _run_two(args: list[str]) -> list[subprocess.CompletedProcess]:
  """Two processes of one distributed run; a coordinator port taken by another program in
  the meantime (the one race of picking a port) is retried with a new port."""
  for _ in range(3):
    outs = _run_once(args, _port())
    if not any(o.returncode and _PORT_TAKEN.search(o.stderr) for o in outs):
      break
  for pid, out in enumerate(outs):
    assert out.returncode == 0, f"process {pid} failed:\n{out.stderr[-4000:]}"
  return outs


def test_two_processes_sample_and_train_like_one(tmp_path_factory, tmp_path):
  base = pu.shared_study(tmp_path_factory)
  workdir = str(tmp_path / "w")
  shutil.copytree(base, workdir, symlinks=True)
  shutil.rmtree(os.path.join(workdir, "difficulty"))
  outs = _run_two(pu.cli("difficulty", workdir))
  assert "process 0 of 2" in outs[0].stderr and "process 1 of 2" in outs[1].stderr
  ref = json.load(open(os.path.join(base, "difficulty", "latest", "pass_at_1.json")))
  got = json.load(open(os.path.join(workdir, "difficulty", "latest", "pass_at_1.json")))
  assert got["problems"] == ref["problems"]
  a = np.load(os.path.join(base, "difficulty", "latest", "samples.npz"))
  b = np.load(os.path.join(workdir, "difficulty", "latest", "samples.npz"))
  np.testing.assert_array_equal(a["tokens"], b["tokens"])
  # Training over a global mesh of both processes' devices (gradients all-reduced)
  # follows the one-process training of the shared study.
  two = str(tmp_path / "two")
  shutil.copytree(base, two, symlinks=True)
  shutil.rmtree(os.path.join(two, "policy"))
  _run_two(pu.cli("policy", two))

  def losses(w):
    with open(os.path.join(w, "policy", "latest", "metrics.jsonl")) as f:
      return np.array([json.loads(line)["loss"] for line in f])
  assert losses(two).shape == losses(base).shape == (6,)
  np.testing.assert_allclose(losses(two), losses(base), rtol=1e-3)


def test_the_tpu_vm_launcher_runs_the_study_on_every_host():
  """launch/tpu_vm.sh (DRY_RUN: the gcloud commands it would run): one process per host
  of the slice, distributed, with the caller's flags."""
  script = os.path.join(pu.REPO, "launch", "tpu_vm.sh")
  env = dict(os.environ, DRY_RUN="1", GCLOUD_FLAGS="--project=p")
  out = subprocess.run([script, "run", "slice", "us-central2-b", "--",
                        "--config=experiments/arith.py", "--workdir=/mnt/ttc/runs/a"],
                       env=env, capture_output=True, text=True, check=True).stdout
  assert out.startswith("gcloud compute tpus tpu-vm ssh slice --zone=us-central2-b "
                        "--worker=all --project=p ")
  for needle in ("launch/run.py", "--config=experiments/arith.py",
                 "--workdir=/mnt/ttc/runs/a", "--distributed", "--jobs=1", "nohup"):
    assert needle in out, needle
  bad = subprocess.run([script, "run", "slice"], env=env, capture_output=True, text=True)
  assert bad.returncode == 2 and "launch/tpu_vm.sh setup TPU_NAME ZONE" in bad.stderr
