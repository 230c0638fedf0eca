"""The study: sweep cells, resume after SIGKILL with identical results, report files."""

import json
import os
import shutil
import signal
import subprocess
import time

import pipeline_utils as pu
from ttc_jax.study import runner


def _curves(workdir):
  with open(os.path.join(workdir, "study", "results.json")) as f:
    res = json.load(f)
  return [{k: v for k, v in c.items() if k != "wall_s"} for c in res["curves"]], res


def test_sweep_cells_follow_the_config():
  config = pu.tiny_config("study")
  cells = runner.sweep(config)
  names = [(c["method"], c["params"]["n"]) for c in cells]
  assert names[:3] == [("best_of_n_weighted", 1), ("best_of_n_weighted", 2),
                       ("best_of_n_weighted", 4)]
  assert ("beam_m2", 4) in names and ("beam_sqrt", 4) in names
  # Lookahead k=1 costs N x 2 generations: only N = 2 fits a budget range up to 4.
  assert [c["params"] for c in cells if c["method"] == "lookahead_k1"] == [
      {"n": 2, "m": 2, "k": 1}]
  assert len({runner.cell_key(c) for c in cells}) == len(cells)


def test_chunks_have_equal_sizes_and_cover_every_problem():
  calls = runner._chunks(10, 4)  # pylint: disable=protected-access
  assert [len(c) for c in calls] == [4, 4, 4]
  assert sorted(set(i for c in calls for i in c)) == list(range(10))


def test_study_survives_sigkill_and_reruns_to_the_same_results(tmp_path):
  base, killed = str(tmp_path / "base"), str(tmp_path / "killed")
  # Train the parts once; both runs start from copies of the same trained models.
  for part in ("policy", "prm", "orm"):
    pu.run(pu.cli("train.py", part, base))
  shutil.copytree(base, killed)
  pu.run(pu.cli("study.py", "study", base))
  ref, ref_res = _curves(base)
  assert len(ref) == len(runner.sweep(pu.tiny_config("study")))
  for c in ref:
    assert 0 <= c["accuracy"] <= 1 and len(c["accuracy_by_bin"]) == 5
    assert c["policy_tokens"] > 0 and c["prm_tokens"] == c["policy_tokens"]
  assert ref_res["perf"]["prm_tokens_per_policy_token"] == 1.0
  assert ref_res["perf"]["beam_vs_bon_wall_ratio"] > 0
  for name in ("report.md", "accuracy_vs_budget.png", "accuracy_by_difficulty.png"):
    assert os.path.getsize(os.path.join(base, "study", name)) > 0

  cells = os.path.join(killed, "study", "cells.jsonl")
  proc = subprocess.Popen(pu.cli("study.py", "study", killed), env=pu.env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  while proc.poll() is None:
    if os.path.exists(cells) and sum(1 for _ in open(cells)) >= 3:
      break
    time.sleep(0.02)
  assert proc.poll() is None, "the study finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done_before = 0
  for line in open(cells):
    try:
      json.loads(line)
      done_before += 1
    except ValueError:
      pass  # a line torn by the kill does not count
  out = pu.run(pu.cli("study.py", "study", killed))
  assert f"{done_before} already done" in out.stderr
  got, _ = _curves(killed)
  assert got == ref
  # A rerun of a finished study redoes no cell.
  out = pu.run(pu.cli("study.py", "study", killed))
  assert f"{len(ref)} cells, {len(ref)} already done" in out.stderr
