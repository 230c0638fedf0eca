"""The study: sweep cells, resume after SIGKILL and a torn cell log, the report."""

import glob
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import pipeline_utils as pu
from ttc_jax.search.registry import sweep
from ttc_jax.report import markdown
from ttc_jax.search.common import call_chunks
from ttc_jax.search.records import Cell
from ttc_jax.search.records import CurvePoint
from ttc_jax.pipeline import Pipeline
from ttc_jax.verifiers import names



def _results(workdir):
  with open(os.path.join(workdir, "report", "latest", "results.json")) as f:
    res = json.load(f)
  return [{k: v for k, v in c.items() if k != "wall_s"} for c in res["curves"]], res


def test_sweep_cells_follow_the_config():
  from ttc_jax.search.registry import SWEEP_METHODS
  cells = sweep(pu.tiny_config(search__methods=SWEEP_METHODS).search)
  names = [(c.method, c.params["n"]) for c in cells]
  assert names[:3] == [("best_of_n_weighted", 1), ("best_of_n_weighted", 2),
                       ("best_of_n_weighted", 4)]
  assert ("beam_m2", 4) in names and ("beam_sqrt", 4) in names
  # A one-generation search is one policy sample: only best-of-1 measures it.
  assert [m for m, n in names if n == 1] == ["best_of_n_weighted"]
  # Lookahead k=1 costs N x 2 generations: only N = 2 fits a budget range up to 4.
  assert [c.params for c in cells if c.method == "lookahead_k1"] == [
      {"n": 2, "m": 2, "k": 1}]
  assert len({c.key for c in cells}) == len(cells)
  assert {c.method for c in cells} >= {"dvts_m2", "particles"}
  only = sweep(pu.tiny_config(search__methods=("particles", "best_of_n")).search)
  assert [c.method for c in only] == ["particles"] * 2 + ["best_of_n_weighted"] * 3
  # Every cell runs once per search seed, the first seed's curves complete first.
  two = sweep(pu.tiny_config(search__methods=SWEEP_METHODS, search__seeds=(0, 3)).search)
  assert len(two) == 2 * len(cells) and [c.seed for c in two] == [0] * len(cells) + [3] * len(
      cells)
  assert len({c.key for c in two}) == len(two)


def test_points_average_seeds_per_problem_with_intervals():
  from ttc_jax.analysis import study as study_lib
  def cell(seed, correct, problems="abcd"):
    return Cell.from_json({
        "method": "m", "params": {"n": 4}, "seed": seed, "budget_generations": 4,
        "problems": list(problems), "correct": correct, "answers": [None] * 4,
        "finished": [1] * 4, "policy_tokens": [1, 1, 1, 1], "prm_tokens": [1, 1, 1, 1],
        "flops": [2.0] * 4, "policy_flops": [2.0] * 4, "prm_flops": [0.0] * 4, "wall_s": 1.0})
  cells = [cell(0, [1, 0, 1, 0]), cell(1, [1, 1, 0, 0]), cell(2, [1, 0, 0, 0])]
  (pt,) = study_lib.points(cells)
  got = study_lib.summarize(pt, np.array([0, 0, 1, 1]), 2)
  assert got.per_problem == [1.0, 1 / 3, 1 / 3, 0.0]
  assert got.accuracy == np.mean([1.0, 1 / 3, 1 / 3, 0.0])
  assert got.ci[0] <= got.accuracy <= got.ci[1]
  assert got.seed_accuracy == [0.5, 0.5, 0.25] and got.seeds == [0, 1, 2]
  assert got.accuracy_by_bin == [2 / 3, 1 / 6]
  bad = cell(3, [1, 1, 1, 1], problems="abce")
  with pytest.raises(ValueError, match="other problems"):
    study_lib.summarize(cells + [bad], np.zeros(4), 1)


def test_cells_and_curve_points_read_back_what_they_wrote():
  from ttc_jax.analysis import study as study_lib
  row = {"key": "beam_m4/m=4,n=16/seed=2", "method": "beam_m4", "params": {"n": 16, "m": 4},
         "seed": 2, "budget_generations": 16, "problems": ["p0", "p1"], "correct": [1, 0],
         "answers": ["3", None], "finished": [4, 0], "policy_tokens": [90, 80],
         "prm_tokens": [95, 85], "flops": [3.5, 2.5], "policy_flops": [3.0, 2.0],
         "prm_flops": [0.5, 0.5], "wall_s": 1.25, "compile_s": 0.5}
  cell = Cell.from_json(row)
  assert cell.to_json() == row and cell.key == row["key"]
  assert cell.outcomes[1].answer is None and cell.column("correct").tolist() == [1, 0]
  with pytest.raises(ValueError, match=r"columns \['answers'\] do not have one entry per"):
    Cell.from_json({**row, "answers": ["3"]})
  pt = study_lib.summarize([cell], np.array([0, 1]), 2)
  assert CurvePoint.from_json(json.loads(json.dumps(pt.to_json()))) == pt
  assert "choice" not in pt.to_json()  # fields a point does not have are left out
  with pytest.raises(ValueError, match=r"unknown fields \['score'\]"):
    CurvePoint.from_json({**pt.to_json(), "score": 1.0})


def test_calls_have_equal_sizes_and_cover_every_problem():
  calls = call_chunks(10, 4)
  assert [len(c) for c in calls] == [4, 4, 4]
  assert sorted(set(i for c in calls for i in c)) == list(range(10))


@pytest.mark.e2e
def test_the_report_is_generic(tmp_path_factory, tmp_path):
  base = pu.shared_study(tmp_path_factory)
  curves, res = _results(base)
  assert len(curves) == len(sweep(pu.tiny_config().search))
  for c in curves:
    assert 0 <= c["accuracy"] <= 1 and len(c["accuracy_by_bin"]) == 5
    assert c["policy_tokens"] > 0 and c["prm_tokens"] == c["policy_tokens"]
  assert res["perf"]["prm_tokens_per_policy_token"] == 1.0
  assert res["perf"]["beam_method"] == "beam_m2" and res["perf"]["beam_vs_bon_wall_ratio"] > 0
  assert set(res["models"]) == {"policy", "prm", "orm"} and res["task"] == "arith"
  report_dir = os.path.join(base, "report", "latest")
  text = open(os.path.join(report_dir, "report.md")).read()
  assert "beam search M=2" in text and "M=4" not in text  # the width comes from the config
  rows = [line for line in text.splitlines() if line.startswith("| beam search M=2 | 4 |")]
  assert len(rows) == 2, rows  # one bins row and one cost row: budget 4 shown once
  for name in ("report.md", "accuracy_vs_budget.png", "accuracy_by_difficulty.png",
               "verifiers.png"):
    assert os.path.getsize(os.path.join(report_dir, name)) > 0
  # Verifier quality within problems, the ablation, and the paper's findings with verdicts.
  ver = res["verifiers"]
  assert set(ver["within_problem"]) == {"prm_last", "prm_min", "prm_prod", "orm",
                                       "policy_likelihood", *names.CONFIDENCE_SCORES}
  assert all(len(ci) == 2 for ci in ver["curves_ci"]["majority"])
  assert "within-problem AUC" in text and "Exploitation" in text
  rows_ab = res["ablation"]["rows"]
  assert [r["name"] for r in rows_ab] == ["default (this study's PRM)", "prm.labels=hard",
                                          "prm.labels=oracle"]
  assert rows_ab[0]["prm"] == res["models"]["prm"]["id"] and rows_ab[1]["prm"] != rows_ab[0]["prm"]
  assert "## Verifier ablation" in text and "| prm.labels=hard |" in text
  assert res["claims"] and all(c["verdict"] in ("reproduced", "not reproduced",
                                                "not significant") for c in res["claims"])
  assert any(c["claim"].startswith("(b)") for c in res["claims"])
  assert "## The paper's findings, tested" in text and "**not significant**" in text
  assert markdown.low_high([1, 2, 4]) == [4] and markdown.low_high([1, 2, 8]) == [1, 8]
  # Another number of difficulty bins: only the report is redone.
  workdir = str(tmp_path / "w")
  shutil.copytree(base, workdir, symlinks=True)
  out = pu.run(pu.cli(None, workdir, overrides={"report.difficulty_bins": 3}))
  assert "search_sweep: up to date" in out.stderr and "report: running" in out.stderr
  curves3, res3 = _results(workdir)
  assert all(len(c["accuracy_by_bin"]) == 3 for c in curves3)
  assert len(res3["difficulty"]["bin_mean_pass_at_1"]) == 3
  assert "| bin 1 | bin 2 | bin 3 |" in open(
      os.path.join(workdir, "report", "latest", "report.md")).read()


@pytest.mark.e2e
def test_study_survives_sigkill_and_a_torn_cell_line(tmp_path_factory, tmp_path):
  base = pu.shared_study(tmp_path_factory)
  ref, _ = _results(base)
  killed = str(tmp_path / "killed")
  shutil.copytree(base, killed, symlinks=True)
  for stage in ("search_sweep", "report"):  # everything before the sweep is reused
    shutil.rmtree(os.path.join(killed, stage))
  # Killed right after its third cell is written (a hold point: no race with its speed).
  marker = str(tmp_path / "held")
  proc = subprocess.Popen(pu.cli(None, killed), env=pu.held_env("cell:3", marker),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  pu.kill_when(proc, marker)
  cells = glob.glob(os.path.join(killed, "search_sweep", "*", "cells.jsonl"))[0]
  with open(cells) as f:
    done_before = sum(1 for line in f if line.endswith("\n"))
  assert done_before == 3
  with open(cells, "a") as f:
    f.write('{"key": "beam_m2/m=2,n=4", "correct": [1, 0')  # a row torn by a kill mid-write
  out = pu.run(pu.cli(None, killed))
  assert re.search(rf"search: \d+ cells, {done_before} already done", out.stderr), \
      out.stderr[-3000:]
  got, _ = _results(killed)
  assert got == ref
  with open(cells) as f:
    rows = [json.loads(line) for line in f]  # every line is whole again
  assert len(rows) == len(ref)
  # A rerun of a finished study redoes nothing.
  out = pu.run(pu.cli(None, killed))
  assert "search_sweep: up to date" in out.stderr and "report: up to date" in out.stderr


@pytest.mark.e2e
def test_the_search_verifier_is_chosen_on_held_out_train_problems_only(tmp_path_factory,
                                                                       tmp_path, monkeypatch):
  """The verifier choice reads held-out train problems (after the MC-labelled ones) and ranks
  the verifiers search can use; a test problem planted among its problems stops it with one
  line. (study.md's note on it: tests/test_revisions.py, on the trained tiny study.)"""
  base = pu.shared_study(tmp_path_factory)
  workdir = str(tmp_path / "w")
  shutil.copytree(base, workdir, symlinks=True)
  choice = Pipeline(pu.tiny_config(), workdir).run("verifier_choice")
  assert choice["split"] == "train"
  assert choice["problems"] == [f"arith/train/{i}" for i in range(8, 16)]  # MC labels: 0..7
  assert set(choice["ranking"]) == {"prm_last", "policy_likelihood", *names.CONFIDENCE_SCORES}
  assert choice["chosen"] == choice["ranking"][0]
  assert set(choice["table"]) >= {"prm_last", "prm_min", "prm_prod", "orm"}
  # A planted leak: the data hands a test problem to the choice.
  from ttc_jax.pipeline import artifacts  # pylint: disable=g-import-not-at-top
  pu.plant_test_problem(monkeypatch, 8)
  shutil.rmtree(os.path.join(workdir, "verifier_choice"))
  with pytest.raises(artifacts.ArtifactError, match=r"arith/test/0 is not a train problem"):
    Pipeline(pu.tiny_config(), workdir).run("verifier_choice")


@pytest.mark.e2e
def test_search_by_the_policy_s_confidence_charges_no_verifier_flops(tmp_path_factory, tmp_path):
  """search.verifier names the verifier of the sweep: with the policy's confidence every cell
  is charged the policy's tokens only (the scores came with them), and nothing upstream of the
  sweep is redone."""
  base = pu.shared_study(tmp_path_factory)
  workdir = str(tmp_path / "w")
  shutil.copytree(base, workdir, symlinks=True)
  logged = []
  pipe = Pipeline(pu.tiny_config(search__verifier="conf_topk_lowest_group"), workdir,
                  log=logged.append)
  pipe.run("search_sweep")
  assert any("steps scored by conf_topk_lowest_group" in line for line in logged)
  assert not any(f"{stage}: running" in line for line in logged
                 for stage in ("policy", "difficulty", "prm")), logged
  prm_cells = {c["key"]: c for c in json.load(open(
      os.path.join(base, "search_sweep", "latest", "cells.json")))}
  cells = json.load(open(os.path.join(pipe.directory("search_sweep"), "cells.json")))
  assert [c["key"] for c in cells] == list(prm_cells)
  for cell in cells:
    assert sum(cell["prm_tokens"]) == 0 and sum(cell["prm_flops"]) == 0
    assert sum(cell["policy_tokens"]) > 0
    assert cell["flops"] == cell["policy_flops"]
    if cell["method"] == "best_of_n_weighted" and cell["params"]["n"] == 1:
      # Best-of-1 is one policy sample whatever scores it: the same tokens and outcome.
      assert cell["policy_tokens"] == prm_cells[cell["key"]]["policy_tokens"]
      assert cell["correct"] == prm_cells[cell["key"]]["correct"]


@pytest.mark.e2e
def test_cells_store_per_problem_outcomes(tmp_path_factory):
  base = pu.shared_study(tmp_path_factory)
  cells = json.load(open(os.path.join(base, "search_sweep", "latest", "cells.json")))
  curves, _ = _results(base)
  assert len(cells) == len(curves)  # one seed: one cell per point
  for cell, curve in zip(cells, curves):
    assert len(cell["correct"]) == len(cell["problems"]) == len(cell["answers"]) == 8
    assert cell["seed"] == 0 and curve["seeds"] == [0]
    assert np.mean(cell["correct"]) == pytest.approx(curve["accuracy"])
    assert curve["per_problem"] == [float(x) for x in cell["correct"]]  # outcomes round-trip
    assert curve["ci"][0] <= curve["accuracy"] <= curve["ci"][1]
    assert sum(cell["policy_tokens"]) == curve["policy_tokens"]


def test_claims_follow_the_paired_interval_and_the_papers_direction():
  from ttc_jax.analysis import claims
  rs = np.random.RandomState(0)
  n = 200
  bins = np.repeat(np.arange(4), n // 4)
  bon = (rs.rand(n) < 0.5).astype(float)
  better = np.maximum(bon, rs.rand(n) < 0.3)  # beam: right wherever best-of-N is, and more

  def point(method, budget, per_problem):
    acc = float(np.mean(per_problem))
    return CurvePoint(method=method, params={"n": budget}, budget_generations=budget,
                      per_problem=list(map(float, per_problem)), accuracy=acc, ci=[acc, acc],
                      accuracy_by_bin=[], ci_by_bin=[], flops=0.0)

  curves = [point("best_of_n_weighted", 4, bon), point("beam_m4", 4, better),
            point("best_of_n_weighted", 16, better), point("beam_m4", 16, bon),
            point("lookahead_k3", 16, bon), point("dvts_m4", 4, bon), point("dvts_m4", 16, bon)]
  got = {c["claim"]: c["verdict"] for c in claims.search_claims(curves, bins, 4, "beam_m4")}
  assert got["(b) beam_m4 over best-of-N at budget 4"] == "reproduced"
  # At the high budget best-of-N wins on easy problems: the paper's direction (-1).
  assert got["(b) beam_m4 vs best-of-N at budget 16, easier half of the bins"] == "reproduced"
  assert got["(c) lookahead_k3 vs beam_m4 at equal generation budget 16"] == "not significant"
  assert got["dvts_m4 over beam_m4 at budget 4"] == "not reproduced"
  assert len(got) == 7  # one comparison per distinct budget, no duplicates
  ver = {"n": [1, 4, 64], "paired": {"prm_last/weighted vs orm/weighted": [
      {"diff": 0.0, "ci": [0, 0], "significant": False},
      {"diff": 0.05, "ci": [0.01, 0.09], "significant": True},
      {"diff": -0.04, "ci": [-0.07, -0.01], "significant": True}]}}
  assert [c["verdict"] for c in claims.verifier_claims(ver)] == ["reproduced", "not reproduced"]


def test_the_findings_under_the_chosen_verifier_sit_beside_the_study_s():
  from ttc_jax.report import markdown
  cmp = lambda d: {"diff": d, "ci": [d - 0.1, d + 0.1]}  # noqa: E731
  study = [{"claim": "(a) PRM over ORM, weighted best-of-N at N=4", "verdict": "not significant",
            "comparison": cmp(0.01)},
           {"claim": "(b) beam_m4 over best-of-N at budget 4", "verdict": "not reproduced",
            "comparison": cmp(-0.2)}]
  chosen = {"search_verifier": "conf_logprob_mean", "score": "conf_logprob_mean",
            "same_as_study": False,
            "claims": [{"claim": "(a) conf_logprob_mean over ORM, weighted best-of-N at N=4",
                        "verdict": "reproduced", "comparison": cmp(0.3)},
                       {"claim": "(b) beam_m4 over best-of-N at budget 4",
                        "verdict": "reproduced", "comparison": cmp(0.25)},
                       {"claim": "(e) search: compute-optimal over best-of-N", "verdict": None}]}
  lines = markdown.chosen_verifier_lines(study, chosen, "prm")
  rows = [line for line in lines if line.startswith("| (")]
  assert rows == [
      "| (a) the search verifier over ORM, weighted best-of-N at N=4 | +0.010 [-0.090, +0.110] "
      "**not significant** | +0.300 [+0.200, +0.400] **reproduced** |",
      "| (b) beam_m4 over best-of-N at budget 4 | -0.200 [-0.300, -0.100] **not reproduced** | "
      "+0.250 [+0.150, +0.350] **reproduced** |"]
  same = markdown.chosen_verifier_lines(study, {**chosen, "search_verifier": "prm",
                                                "same_as_study": True}, "prm")
  assert not [line for line in same if line.startswith("| (")]
  assert markdown.chosen_verifier_lines(study, None, "prm")[-2].startswith("- Not run")

