"""Compute-optimal strategy choice, efficiency over best-of-N, the pretraining exchange, and
their report (synthetic outcome tables; no models)."""

import dataclasses
import functools
import io
import json

import numpy as np
import pytest

from ttc_jax import accounting
from ttc_jax.analysis import claims as claims_lib
from ttc_jax.analysis import compute_optimal as co
from ttc_jax.analysis import difficulty as difficulty_lib
from ttc_jax.analysis import efficiency as efficiency_lib
from ttc_jax.analysis import exchange as ex
from ttc_jax.analysis import study as study_lib
from ttc_jax.report import figures
from ttc_jax.report import markdown
from ttc_jax.search import registry
from ttc_jax.search.records import Cell
from ttc_jax.search.records import CurvePoint
from ttc_jax.search.records import Outcome


def _pt(method, params, budget, per_problem, flops_per_problem=1.0):
  """A curve point with what compute-optimal selection reads (no interval, no bins)."""
  per = np.asarray(per_problem, np.float64)
  fpp = np.broadcast_to(np.asarray(flops_per_problem, np.float64), per.shape)
  acc = float(per.mean())
  return CurvePoint(method=method, params=dict(params), budget_generations=budget,
                    per_problem=[float(x) for x in per], accuracy=acc, ci=[acc, acc],
                    accuracy_by_bin=[], ci_by_bin=[], flops=float(fpp.sum()),
                    flops_by_problem=[float(x) for x in fpp])


# --- cross-validation cannot see the evaluation fold -------------------------------------------


def test_a_candidate_that_wins_only_on_the_evaluation_fold_is_never_chosen_for_it():
  bins = np.repeat([0, 1], 20)
  fold = co.assign_folds(bins, 2, 2, np.random.default_rng([0, 0]))  # cross_validate's split
  assert sorted(np.bincount(fold).tolist()) == [20, 20]
  assert all(np.bincount(fold[bins == b]).tolist() == [10, 10] for b in (0, 1))  # stratified
  planted = _pt("planted", {"n": 4}, 4, (fold == 0).astype(float))  # perfect on fold 0 only
  honest = _pt("honest", {"n": 4}, 4, np.full(40, 0.6))
  (got,) = co.cross_validate([planted, honest], [4], bins, 2, folds=2, repeats=1, seed=0)
  # Fold 0 is scored with the choice made on fold 1 (planted 0 < honest 0.6: honest); fold 1
  # with the choice made on fold 0 (planted 1.0): planted, which is 0 on fold 1.
  np.testing.assert_allclose(got.per_problem, np.where(fold == 0, 0.6, 0.0))
  assert got.accuracy == pytest.approx(0.3)
  assert got.choice_counts == [{"honest n=4": 1, "planted n=4": 1}] * 2
  # A leaky choice (made on the evaluated fold itself) would score 0.8; choosing on all problems
  # and scoring on them (the in-sample reference) picks honest: 0.6. CV is below both.
  leaky = np.where(fold == 0, 1.0, 0.6).mean()
  (ins,) = co.in_sample([planted, honest], [4], bins, 2)
  assert ins.accuracy == pytest.approx(0.6) and ins.choice == ["honest n=4"] * 2
  assert got.accuracy < ins.accuracy < leaky
  assert got.choice == ["honest n=4"] * 2  # the learned policy uses all problems


def test_pure_noise_candidates_are_not_inflated_by_cross_validation():
  rng = np.random.default_rng(7)
  bins = np.repeat([0, 1], 100)
  cands = [_pt(f"noise{i:02d}", {}, 4, rng.integers(0, 2, 200)) for i in range(30)]
  (cv,) = co.cross_validate(cands, [4], bins, 2, repeats=5, seed=1)
  (ins,) = co.in_sample(cands, [4], bins, 2)
  truth = np.mean([c.accuracy for c in cands])
  assert ins.accuracy > truth + 0.05  # picking the best on the same problems overfits
  assert abs(cv.accuracy - truth) < 0.05
  assert cv.accuracy < ins.accuracy - 0.04


# --- a known answer -----------------------------------------------------------------------------


def test_cross_validated_curve_on_a_known_outcome_table():
  bins = np.repeat([0, 1], 8)
  a = _pt("a", {"n": 4}, 4, np.where(bins == 0, 0.75, 0.25), 10.0)
  b = _pt("b", {"n": 4}, 4, np.where(bins == 0, 0.25, 0.9), 20.0)
  c = _pt("c", {"n": 1}, 1, np.full(16, 0.5), 1.0)
  d = _pt("d", {"n": 16}, 16, np.ones(16), 100.0)
  got = co.cross_validate([a, b, c, d], [1, 2, 4, 16], bins, 2, method="co", repeats=4, seed=3)
  assert [p.budget_generations for p in got] == [1, 2, 4, 16]
  assert [p.method for p in got] == ["co"] * 4
  # Budget 1 (and 2, a cap): only c fits. Budget 4: a on bin 0, b on bin 1, in every fold,
  # since each candidate is constant within a bin. Budget 16: d everywhere.
  assert [p.accuracy for p in got] == pytest.approx([0.5, 0.5, (0.75 + 0.9) / 2, 1.0])
  assert got[2].accuracy_by_bin == pytest.approx([0.75, 0.9])
  assert got[2].flops == pytest.approx(8 * 10 + 8 * 20)
  assert got[2].flops_by_problem == pytest.approx(np.where(bins == 0, 10.0, 20.0))
  assert got[2].choice == ["a n=4", "b n=4"]
  assert got[2].choice_agreement == [1.0, 1.0]
  assert got[2].choice_counts == [{"a n=4": 8}, {"b n=4": 8}]
  assert got[2].selections == 8 and got[2].repeat_std == 0.0
  assert got[0].choice == ["c n=1"] * 2 and got[3].choice == ["d n=16"] * 2
  assert got[3].ci == [1.0, 1.0]
  # The same curve point record as study.summarize's, and its JSON reads back equal.
  assert study_lib.point(got, "co", 4) is got[2]
  assert [CurvePoint.from_json(json.loads(json.dumps(p.to_json()))) for p in got] == got


def test_report_bins_give_accuracy_by_other_bins():
  bins = np.repeat([0, 1], 4)
  other = np.array([0, 1] * 4)
  a = _pt("a", {}, 1, bins == 0)
  (got,) = co.cross_validate([a], [1], bins, 2, repeats=1, report_bins=other)
  assert got.accuracy_by_bin == [0.5, 0.5]


def test_a_bin_without_training_problems_falls_back_to_the_best_overall():
  bins = np.array([0, 0, 0, 0])  # bin 1 is empty
  a = _pt("a", {}, 1, [1, 1, 0, 0])
  b = _pt("b", {}, 1, [1, 1, 1, 0])
  got = co.choose([a, b], 1, bins, 2)
  assert [candidate.method for candidate in got] == ["b", "b"]
  got = co.choose([a, b], 1, bins, 2, train_mask=[True, True, False, False])
  assert [candidate.method for candidate in got] == ["a", "a"]  # tie at 1.0: the name


# --- tie-break and budget cap ------------------------------------------------------------------


def test_ties_go_to_fewer_flops_then_generations_then_name_in_any_order():
  bins = np.zeros(3, np.int64)
  same = [0.3, 0.2, 0.1]
  cheap = _pt("zeta", {"n": 4}, 4, same, 3.0)
  dear = _pt("alpha", {"n": 4}, 4, same, 5.0)
  fewer_gens = _pt("zeta", {"n": 2}, 2, same, 3.0)
  first_name = _pt("alpha", {"n": 2}, 2, same, 3.0)
  rng = np.random.default_rng(0)
  for cands, want in (([dear, cheap], "zeta n=4"), ([dear, cheap, fewer_gens], "zeta n=2"),
                      ([dear, cheap, fewer_gens, first_name], "alpha n=2")):
    for _ in range(4):
      order = [cands[i] for i in rng.permutation(len(cands))]
      assert co.candidate_name(co.choose(order, 4, bins, 1)[0]) == want
  # Equal sums added in another order differ in the last bit; they still tie.
  up = _pt("up", {}, 1, [0.1, 0.2, 0.3], 9.0)
  down = _pt("down", {}, 1, [0.3, 0.2, 0.1], 1.0)
  assert np.mean(up.per_problem) != np.mean(down.per_problem)
  assert co.choose([up, down], 1, bins, 1)[0] is down
  assert co.choose([down, up], 1, bins, 1)[0] is down
  with pytest.raises(ValueError, match="appear more than once"):
    co.choose([cheap, dataclasses.replace(cheap)], 4, bins, 1)


def test_a_candidate_beyond_the_budget_is_never_chosen():
  bins = np.repeat([0, 1], 6)
  big = _pt("big", {"n": 16}, 16, np.ones(12))
  small = _pt("small", {"n": 4}, 4, np.full(12, 0.5))
  got = co.cross_validate([big, small], [4, 8, 16], bins, 2, repeats=3)
  for p in got[:2]:
    assert p.accuracy == 0.5
    assert all(set(c) == {"small n=4"} for c in p.choice_counts)
  assert got[2].accuracy == 1.0 and got[2].choice == ["big n=16"] * 2
  with pytest.raises(ValueError, match=r"budget 2: no candidate fits \(the smallest candidate "
                     r"budget is 4 generations\)"):
    co.cross_validate([big, small], [2], bins, 2)
  with pytest.raises(ValueError, match="folds=1"):
    co.cross_validate([big, small], [4], bins, 2, folds=1)
  with pytest.raises(ValueError, match="per-problem outcomes"):
    co.choose([big, _pt("short", {}, 4, np.ones(3))], 4, bins, 2)


# --- efficiency ---------------------------------------------------------------------------------


def _nested(frac, p=50):
  return (np.arange(p) < round(frac * p)).astype(float)


def _efficiency_curves():
  bon = [_pt("best_of_n_weighted", {"n": n}, n, _nested(f), 10.0 * n)
         for n, f in ((1, 0.2), (4, 0.4), (16, 0.6))]
  # Compute-optimal reaches best-of-N@4 at 1 and best-of-N@16 at 4: 4x on both.
  cos = [_pt("co", {}, b, _nested(f), 10.0 * b) for b, f in ((1, 0.4), (4, 0.6), (16, 0.8))]
  return bon, cos


def test_efficiency_of_a_curve_with_a_known_ratio():
  bon, cos = _efficiency_curves()
  eff = efficiency_lib.efficiency(cos, bon, seed=0, resamples=500)
  rows = {r["n"]: r for r in eff["rows"]}
  assert rows[1]["budget"] == 1 and rows[1]["generations_ratio"] == 1.0
  assert rows[4]["budget"] == 1 and rows[4]["generations_ratio"] == 4.0
  assert rows[16]["budget"] == 4 and rows[16]["generations_ratio"] == 4.0
  assert rows[16]["flops_ratio"] == pytest.approx(160 / 40)
  assert rows[16]["generations_ratio_ci"] == [4.0, 4.0]  # nested outcomes: every resample
  assert rows[16]["unreached_resamples"] == 0 and rows[16]["reached"]
  assert eff["best"]["generations_ratio"] == 4.0 and eff["best"]["generations_ratio_ci"] == [4, 4]
  claim = efficiency_lib.efficiency_claim(eff, "co", "Figure 4")
  assert claim["verdict"] == claims_lib.REPRODUCED
  assert claim["comparison"]["diff"] == 0.0
  json.dumps(eff)
  # Charged with 3 generations and 30 FLOPs per problem: best-of-N@16 needs co@4 + 3 = 7.
  charged = co.charge(cos, 3, 30.0, "co_charged")
  assert [p.budget_generations for p in charged] == [4.0, 7.0, 19.0]
  assert charged[0].flops == pytest.approx(cos[0].flops + 30 * 50)
  assert cos[0].budget_generations == 1  # the input is left alone
  rows = {r["n"]: r for r in efficiency_lib.efficiency(charged, bon, resamples=200)["rows"]}
  assert rows[16]["generations_ratio"] == pytest.approx(16 / 7)
  assert rows[16]["flops_ratio"] == pytest.approx(160 / 70)
  assert rows[1]["generations_ratio"] == pytest.approx(1 / 4)


def test_efficiency_when_best_of_n_is_never_reached():
  bon, cos = _efficiency_curves()
  bon = bon[:2] + [_pt("best_of_n_weighted", {"n": 16}, 16, np.ones(50), 160.0)]
  eff = efficiency_lib.efficiency(cos, bon, resamples=300)
  r = eff["rows"][-1]
  assert not r["reached"] and r["budget"] is None and r["generations_ratio"] is None
  assert r["unreached_resamples"] == 300
  assert r["generations_ratio_ci"] == [0.0, 0.0] and r["budget_ci"] == [None, None]
  assert r["floor"] == 1.0  # 16 / the largest compute-optimal budget
  assert eff["best"]["n"] == 4  # the best ratio over N comes from a reached point
  eff = efficiency_lib.efficiency(cos[:1], bon[2:], resamples=100)
  assert efficiency_lib.efficiency_claim(eff, "co", "x")["verdict"] == claims_lib.NOT_REPRODUCED


def test_a_flat_baseline_gets_no_credit_for_the_budget_it_wastes():
  """All outcomes zero (random models): best-of-1 already matches best-of-16, so a
  compute-optimal curve at budget 1 is not 16x more efficient; its ratio is N' / b = 1."""
  zeros = np.zeros(20)
  bon = [_pt("best_of_n_weighted", {"n": n}, n, zeros, 10.0 * n) for n in (1, 4, 16)]
  cos = [_pt("co", {}, n, zeros, 10.0 * n) for n in (1, 4, 16)]
  eff = efficiency_lib.efficiency(cos, bon, resamples=200)
  for r in eff["rows"]:
    assert r["baseline_budget"] == 1 and r["budget"] == 1 and r["generations_ratio"] == 1.0
    assert r["generations_ratio_ci"] == [1.0, 1.0] and r["flops_ratio"] == 1.0
  assert efficiency_lib.efficiency_claim(eff, "co", "x")["verdict"] == claims_lib.NOT_REPRODUCED
  # A baseline that rises from 4 to 16 but not from 1 to 4: N' is 1 at N = 4, 16 at N = 16.
  bon = [_pt("best_of_n_weighted", {"n": n}, n, np.r_[np.zeros(10), np.ones(10) * (n == 16)],
             10.0 * n) for n in (1, 4, 16)]
  rows = {r["n"]: r for r in efficiency_lib.efficiency(cos, bon, resamples=50)["rows"]}
  assert rows[4]["baseline_budget"] == 1 and rows[16]["baseline_budget"] == 16


def test_efficiency_claim_rule():
  def claim(ratio, ci):
    eff = {"best": {"generations_ratio": ratio, "generations_ratio_ci": ci, "n": 16.0},
           "baseline_method": "best_of_n_weighted", "problems": 10}
    return efficiency_lib.efficiency_claim(eff, "co", "Figure 4")
  assert claim(6, [4.0, 8.0])["verdict"] == claims_lib.REPRODUCED
  assert claim(5, [3.9, 8.0])["verdict"] == claims_lib.NOT_SIGNIFICANT
  assert claim(2, [1.0, 3.99])["verdict"] == claims_lib.NOT_REPRODUCED
  c = claim(5, [3.0, 8.0])
  assert c["comparison"]["diff"] == 1.0 and c["comparison"]["ci"] == [-1.0, 4.0]
  assert not c["comparison"]["significant"]


# --- difficulty ---------------------------------------------------------------------------------


def test_predicted_bins_and_agreement_on_a_known_case():
  scores = np.array([0.9, 0.8, 0.1, 0.2, 0.5, 0.45])
  np.testing.assert_array_equal(difficulty_lib.predicted_bins(scores, 3), [0, 0, 2, 2, 1, 1])
  np.testing.assert_allclose(difficulty_lib.mean_final_scores(np.arange(6.0), 2), [1.0, 4.0])
  with pytest.raises(ValueError, match="5 scores"):
    difficulty_lib.mean_final_scores(np.arange(5.0), 2)
  oracle = np.array([0, 1, 2, 2, 0, 1])
  agr = difficulty_lib.bin_agreement(oracle, difficulty_lib.predicted_bins(scores, 3), 3)
  assert agr["confusion"] == [[1, 1, 0], [1, 1, 0], [0, 0, 2]]
  assert agr["exact"] == pytest.approx(4 / 6) and agr["within_one"] == 1.0
  assert agr["spearman_of"] == "bins"
  same = difficulty_lib.bin_agreement([0, 1, 2], [0, 1, 2], 3, [3.0, 2.0, 1.0], [0.9, 0.5, 0.1])
  assert same["spearman"] == pytest.approx(1.0) and same["spearman_of"] == "values"
  rev = difficulty_lib.bin_agreement([0, 1, 2], [2, 1, 0], 3, [3.0, 2.0, 1.0], [0.1, 0.5, 0.9])
  assert rev["spearman"] == pytest.approx(-1.0)
  assert rev["exact"] == pytest.approx(1 / 3) and rev["within_one"] == pytest.approx(1 / 3)
  assert difficulty_lib.bin_agreement([0, 0], [0, 1], 2)["spearman"] is None  # one side constant
  with pytest.raises(ValueError, match=r"bins_b: expected integers in \[0, 2\)"):
    difficulty_lib.bin_agreement([0, 1], [0, 2], 2)


def test_split_half_stability():
  half = np.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
  stable = difficulty_lib.split_half_stability(np.concatenate([half, half, np.zeros((4, 1))], axis=1), 2)
  assert stable["samples_per_half"] == 4
  assert stable["exact"] == 1.0 and stable["spearman"] == pytest.approx(1.0)
  flipped = difficulty_lib.split_half_stability(np.concatenate([half, half[::-1]], axis=1), 2)
  assert flipped["exact"] == 0.0 and flipped["spearman"] == pytest.approx(-1.0)
  assert flipped["confusion"] == [[0, 2], [2, 0]]


# --- the exchange ------------------------------------------------------------------------------


def test_exchange_groups_and_matched_budgets():
  assert ex.groups(5) == {"easy": [0, 1, 2], "hard": [3, 4], "all": [0, 1, 2, 3, 4]}
  assert ex.groups(1)["easy"] == [0] and ex.groups(1)["hard"] == []
  assert ex.groups(4)["easy"] == [0, 1, 2] and ex.groups(10)["easy"] == list(range(6))
  pts = [_pt("co", {}, b, np.zeros(4)) for b in (1, 2, 4, 8, 16)]
  x = accounting.matched_generations(4, 22.0)  # 4 + 9 / 22
  assert ex.matched_point(pts, x)[0].budget_generations == 4
  assert ex.matched_point(pts, x)[1] == "ok"
  assert ex.matched_point(pts, 16.0) == (pts[-1], "ok")
  assert ex.matched_point(pts, 60.0) == (pts[-1], "capped")
  assert ex.matched_point(pts[3:], 4.4) == (None, "out of range")


def test_exchange_verdict_rules():
  bins = np.repeat(np.arange(5), 20)
  easy = bins < 3
  large = np.where(easy, np.arange(100) % 2, 1.0)  # 0.5 on easy bins, 1 on hard bins
  pts = [_pt("co", {}, 4, np.zeros(100)),  # used at R=22 (X = 4.41): worse everywhere
         _pt("co", {}, 8, easy), _pt("co", {}, 16, easy)]  # R=0.79 (X=15.4), R=0.16 (capped)
  got = ex.exchange(pts, 1e6, 4e6, large, bins, 5, seed=0)
  assert got["param_ratio"] == 4.0
  rows = {r["r"]: r for r in got["rows"]}
  assert [rows[r]["budget"] for r in accounting.R_POINTS] == [16, 8, 4]
  assert [rows[r]["status"] for r in accounting.R_POINTS] == ["capped", "ok", "ok"]
  assert rows[0.79]["by_bin"][0]["diff"] == pytest.approx(0.5)
  assert rows[0.79]["by_bin"][4]["diff"] == pytest.approx(-1.0)
  v = {(c["r"], c["group"]): c for c in got["claims"]}
  assert set(v) == {(0.16, "easy"), (0.16, "hard"), (0.79, "easy"), (0.79, "hard"),
                    (22.0, "all")}
  assert v[0.79, "easy"]["verdict"] == claims_lib.REPRODUCED  # small better on easy
  assert v[0.79, "hard"]["verdict"] == claims_lib.REPRODUCED  # large better on hard
  assert v[22.0, "all"]["verdict"] == claims_lib.REPRODUCED  # large better overall
  assert v[0.16, "easy"]["verdict"] == claims_lib.REPRODUCED  # capped: conservative, stands
  assert v[0.16, "hard"]["verdict"] is None and "capped" in v[0.16, "hard"]["reason"]
  # Capped but the small model wins on hard problems anyway: that verdict stands.
  weak = np.where(easy, large, 0.0)
  win = ex.exchange(pts[:2] + [_pt("co", {}, 16, np.ones(100))], 1e6, 4e6, weak, bins, 5)
  hard = next(c for c in win["claims"] if c["r"] == 0.16 and c["group"] == "hard")
  assert hard["verdict"] == claims_lib.NOT_REPRODUCED
  # A sweep starting above X: out of range, no comparison, the needed budget stated.
  far = ex.exchange([_pt("co", {}, 32, easy)], 1e6, 4e6, large, bins, 5, r_values=(22.0,))
  (claim,) = far["claims"]
  assert far["rows"][0]["status"] == "out of range" and far["rows"][0]["budget"] is None
  assert claim["verdict"] is None and claim["comparison"] is None
  assert "out of range" in claim["reason"] and "4.41" in claim["reason"]
  with pytest.raises(ValueError, match="large_greedy has shape"):
    ex.exchange(pts, 1e6, 4e6, large[:10], bins, 5)


# --- the summary, figures and the report section -----------------------------------------------


def _cells(method, params, budget, correct_by_seed, flops_pp):
  def outcome(i, ok):
    return Outcome(problem=f"q{i}", correct=int(ok), answer=None, finished=1, policy_tokens=10,
                   prm_tokens=10, flops=float(flops_pp), policy_flops=float(flops_pp),
                   prm_flops=0.0)
  return [Cell(method=method, params=params, seed=s, budget_generations=budget,
               outcomes=tuple(outcome(i, ok) for i, ok in enumerate(c)), wall_s=1.0)
          for s, c in enumerate(correct_by_seed)]


@functools.lru_cache(maxsize=None)
def _synthetic_summary(with_exchange: bool, with_revisions: bool = True) -> str:
  """compute_optimal_summary of a small synthetic study, as JSON (tests load their own copy)."""
  rng = np.random.default_rng(0)
  p, num_bins = 40, 2
  skill = np.linspace(0.9, 0.1, p)  # problem 0 easiest
  correct = rng.random((p, 16)) < skill[:, None]
  scores = skill + 0.1 * rng.normal(size=p)
  bins = difficulty_lib.oracle_bins(correct.mean(1), num_bins)

  def outcomes(boost, seeds=2):
    return [(rng.random(p) < np.clip(skill + boost, 0, 1)).astype(int) for _ in range(seeds)]

  cells = []
  for n, boost in ((1, 0.0), (4, 0.1), (16, 0.15)):
    cells += _cells("best_of_n_weighted", {"n": n}, n, outcomes(boost), 10.0 * n)
  for n, boost in ((4, 0.12), (16, 0.1)):
    cells += _cells("beam_m4", {"m": 4, "n": n}, n, outcomes(boost), 10.0 * n)
  for n in (1, 2, 4):
    for c in (n, 1) if n > 1 else (1,):
      cells += _cells("revisions_hier_orm", {"n": n, "chains": c, "length": n // c}, n,
                      outcomes(0.05 * n / c), 12.0 * n)
  pts = [study_lib.summarize(pt, bins, num_bins) for pt in study_lib.points(cells)]
  revs = [x for x in pts if registry.method(x.method).family == registry.REVISIONS]
  search = [x for x in pts if x not in revs]
  exchange = None
  if with_exchange:
    exchange = {"small_params": 1e6, "large_params": 4e6,
                "large_greedy": (rng.random(p) < skill).astype(int).tolist(),
                "large_majority": {"n": [1, 4], "per_problem": [skill.tolist()] * 2}}
  return json.dumps(co.compute_optimal_summary(
      search, revs if with_revisions else None, correct, scores, num_bins, 16, 160.0, exchange,
      repeats=2, seed=0, resamples=200))


def _png(fig) -> bytes:
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=40)
  return buf.getvalue()


def test_summary_and_report_section():
  res = json.loads(_synthetic_summary(with_exchange=True))
  assert set(res["curves"]) == {f"{f}_{k}" for f in ("search", "revisions", "combined")
                                for k in ("oracle", "predicted", "predicted_charged")}
  assert [p["budget_generations"] for p in res["curves"]["search_predicted_charged"]] == [
      17.0, 20.0, 32.0]
  assert [p["params"]["chains"] for p in res["baselines"]["revisions_parallel"]] == [1, 2, 4]
  assert [p["params"]["chains"] for p in res["baselines"]["revisions_sequential"]] == [1, 1, 1]
  assert res["efficiency"]["revisions_oracle"]["baseline"] == "parallel sampling"
  verdicts = [c["verdict"] for c in res["claims"]]
  assert len(verdicts) == 8 and set(verdicts) <= {
      claims_lib.REPRODUCED, claims_lib.NOT_REPRODUCED, claims_lib.NOT_SIGNIFICANT}
  assert set(res["exchange"]["curves"]) == {"search", "revisions"}
  text = "\n".join(markdown.compute_optimal_section(res, ["co.png"]))
  assert "| oracle \\ predicted | 1 | 2 |" in text
  assert "| compute-optimal | baseline | N |" in text
  assert "| budget | bin 1 | bin 2 |" in text
  assert "best-of-N weighted N=16 (" in text or "beam search M=4 N=16 (" in text
  assert "| curve | R | M | X | budget used |" in text
  assert "(f) compute-optimal search" in text and "![co.png](co.png)" in text
  assert "make exchange" not in text
  for r in res["exchange"]["curves"]["search"]["rows"]:
    assert f"| search | {r['r']:g} | 4 | {r['matched_generations']:.3g} |" in text
  # The figure marks an out-of-range R (none in this sweep: one row made so).
  row = res["exchange"]["curves"]["search"]["rows"][0]
  row.update(status="out of range", budget=None, overall=None, by_bin=[None, None])
  for fig in (figures.compute_optimal_exchange(res), figures.bin_confusion(res)):
    assert _png(fig).startswith(b"\x89PNG")


def test_curve_and_efficiency_figures_render():
  res = json.loads(_synthetic_summary(with_exchange=False, with_revisions=False))
  assert set(res["curves"]) == {"search_oracle", "search_predicted", "search_predicted_charged"}
  for fig in (figures.compute_optimal_curves(res), figures.compute_optimal_efficiency(res)):
    assert _png(fig).startswith(b"\x89PNG")


def test_report_section_without_the_larger_model():
  res = json.loads(_synthetic_summary(with_exchange=False, with_revisions=False))
  assert res["exchange"] is None
  text = "\n".join(markdown.compute_optimal_section(res, []))
  assert "`make exchange`" in text and "| curve | R |" not in text
  with pytest.raises(ValueError, match="no exchange"):
    figures.compute_optimal_exchange(res)


def test_the_distillation_note_sets_the_larger_policy_beside_the_rounds():
  """study.md's distillation lines: every round's pass@1 and best-of-N in a fixed order, the
  FLOPs spent, and the exchange's larger policy at its 6 N D pretraining FLOPs when present."""
  from ttc_jax.report import markdown
  summary = {k: {"mean": v, "ci": [v - 0.1, v + 0.1]} for k, v in
             {"weighted@16": 0.61, "majority@4": 0.57, "pass@1": 0.48, "weighted@4": 0.6,
              "majority@16": 0.6}.items()}
  distill = {"policy_pretraining_flops": 1.3e13, "rounds": {"selected": [
      {"round": 0, "summary": summary, "flops": {"total": 0.0}},
      {"round": 1, "summary": summary, "flops": {"total": 2.3e12}}]}}
  lines = markdown.distill_lines(distill, None)
  assert lines[0] == "## Distillation (`make distill`)"
  assert ("round 1: pass@1 0.480, weighted@4 0.600, majority@4 0.570, weighted@16 0.610, "
          "majority@16 0.600 (pretraining + 2.3e+12 FLOPs)") in lines[2]
  assert "not evaluated (`make exchange`)" in lines[3]
  large = {"params": 1000, "greedy_pass_at_1": 0.7, "train_tokens": 2000}
  assert "greedy pass@1 0.700, for 1.2e+07 pretraining FLOPs, against the policy's 1.3e+13" in \
      markdown.distill_lines(distill, large)[3]
  # Like for like with the rounds: its temperature-1 samples' pass@1 and majority votes.
  large["majority"] = {"n": [1, 2, 4, 8, 16], "accuracy": [0.52, 0.5, 0.55, 0.58, 0.6]}
  assert ("pass@1 0.520, majority@4 0.550, majority@16 0.600 (temperature 1, as the rounds "
          "above), greedy pass@1 0.700") in markdown.distill_lines(distill, large)[3]
  assert markdown.distill_lines(None, large) == []
  # The larger architecture trained to the same total FLOPs (make distill): its own line.
  distill["matched"] = {"params": 1000, "flops": 1.5e13, "steps": 250,
                        "against": {"variant": "selected", "round": 1, "flops": 1.53e13},
                        "summary": {"pass@1": {"mean": 0.41, "ci": [0.35, 0.47]}},
                        "distilled_minus_matched": {"pass@1": {"diff": 0.07, "ci": [0.02, 0.12]}}}
  assert markdown.distill_lines(distill, large)[3] == (
      "- The larger architecture (1,000 params) trained to the same total FLOPs (1.5e+13: 250 "
      "steps): pass@1 0.410; selected round 1 minus it +0.070 [+0.020, +0.120] (paired).")


def test_search_then_revise_claims_are_its_most_revised_vote_cell_against_its_search():
  """(h): per search of the hybrid cells, the 'vote' cell with the most revisions against the
  search alone at N and at the smallest swept budget >= N + L (paired); the 'last' cells and
  fewer revisions make no claim; without a budget that large, only the first claim."""
  rs = np.random.RandomState(0)
  outcome = lambda p: (rs.random_sample(300) < p).astype(float)  # noqa: E731
  search = [_pt("beam_m4", {"m": 4, "n": n}, n, outcome(p)) for n, p in ((4, 0.4), (16, 0.45))]
  hybrid = [_pt(f"hybrid_beam_m4_{sel}", {"m": 4, "n": 4, "revisions": L}, 4 + L, outcome(p))
            for sel, p in (("vote", 0.6), ("last", 0.3)) for L in (1, 4)]
  claims = co.hybrid_claims(hybrid, search, seed=0)
  assert [c["claim"] for c in claims] == [
      "(h) search then revise: beam_m4 N=4 then 4 revisions (vote) over beam_m4 alone at budget 4",
      "(h) search then revise: beam_m4 N=4 then 4 revisions (vote), 8 generations, over beam_m4 "
      "at budget 16"]
  vote = hybrid[1]
  for claim, other in zip(claims, search):
    assert claim["comparison"]["diff"] == pytest.approx(
        np.mean(vote.per_problem) - np.mean(other.per_problem), abs=1e-12)
    assert claim["verdict"] == "reproduced" and claim["budget"] == 8
  assert len(co.hybrid_claims(hybrid, search[:1], seed=0)) == 1
