"""Compute-optimal test-time scaling (paper sections 3, 5.3, 6.3): per-bin strategy choice.

A compute-optimal policy at generation budget B predicts a problem's difficulty
bin and runs, for that bin, the strategy (search method and hyperparameters,
or revision split) that did best on the bin's training problems. Everything
here re-slices stored per-problem outcomes (the curve points of
:func:`ttc_jax.analysis.study.summarize`); nothing re-runs search.

Difficulty:

* oracle bins: quantiles of the policy's pass@1 (ground truth;
  :func:`ttc_jax.analysis.difficulty.oracle_bins`);
* predicted bins: quantiles of the verifier's mean final-answer score over the
  same samples (no ground truth), bin 0 = easiest = highest score. Predicting
  costs generations and verifier FLOPs; :func:`charge` adds that cost to a
  curve's budget ("charged" curves), the uncharged curve is the paper's.

Strategy choice (:func:`choose`, :func:`cross_validate`):

* a budget is a cap: at budget B any candidate with ``budget_generations <= B``
  may be picked (a policy that may spend B generations may spend fewer);
* per bin the candidate with the highest mean per-problem accuracy on the bin's
  training problems; ties (accuracies equal after rounding to 12 decimals, so
  that equal sums added in another order tie) go to fewer FLOPs per problem,
  then fewer generations, then the candidate's name (method, then its sorted
  params) alphabetically, so the choice does not depend on candidate order;
* a bin without training problems gets the best candidate over all training
  problems;
* the paper's protocol is cross-validation: problems are split into ``folds``
  folds stratified by bin; each fold's problems get the choice made on the
  other folds only (the evaluation fold's outcomes are sliced away before the
  choice is made), repeated ``repeats`` times with fresh splits, each problem's
  outcome averaged over the repeats. The choice made on all problems is the
  learned policy shown in the report, never used to score it.

Efficiency over best-of-N (:func:`efficiency`): for each best-of-N point
(budget N, accuracy a_N), the smallest compute-optimal budget b reaching a_N;
the ratio N / b (generations) and FLOPs(best-of-N) / FLOPs(compute-optimal at b)
per problem. Problems are resampled jointly for every point (percentile
bootstrap, interval endpoints are resampled values); a resample in which no
compute-optimal budget reaches a_N gets the ratio 0, meaning "below N / b_max",
the smallest ratio the sweep can show, and is counted.

The paper's findings, fixed rules only (verdict strings of
:mod:`ttc_jax.analysis.claims`):

* (e) compute-optimal against its baseline (best-of-N weighted for search, pure
  parallel sampling for revisions, selected by majority vote when every revision
  selector is a candidate) at the largest budget both have: paired
  bootstrap over problems, the paper says compute-optimal is better;
* (e) "up to 4x" on the generation axis: the best ratio over the baseline's
  budgets N (max over N, its interval the bootstrap distribution of that max)
  is ``reproduced`` if the interval's lower end is >= 4, ``not reproduced`` if
  its upper end is < 4, else ``not significant``; as a comparison, the
  difference ratio - 4 with its interval. Oracle and predicted bins are
  separate claims; charged curves are reported, not tested (the paper does not
  charge the prediction).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

import numpy as np

from ttc_jax.analysis import claims as claims_lib
from ttc_jax.analysis import difficulty as difficulty_lib
from ttc_jax.analysis import efficiency as efficiency_lib
from ttc_jax.analysis import exchange as exchange_lib
from ttc_jax.analysis import stats as stats_lib
from ttc_jax.analysis import study as study_lib
from ttc_jax.search import records
from ttc_jax.search import registry
from ttc_jax.search.records import CurvePoint

FOLDS = 2
REPEATS = 25
_DECIMALS = 12  # accuracies equal to 12 decimals tie
_TOL = 1e-12  # "accuracy >= a_N" up to float rounding


# --- candidates ------------------------------------------------------------------------------


def family(point: CurvePoint) -> str:
  """"revision" for revision points (methods named revision_* or revisions_*), else "search"."""
  return "revision" if registry.method(point.method).family == registry.REVISIONS else "search"


def candidate_name(point: CurvePoint) -> str:
  """A candidate's stable name: its method, then its params sorted by key."""
  params = point.params or {}
  return point.method + "".join(f" {k}={params[k]}" for k in sorted(params))


def _flops_by_problem(point: CurvePoint, num_problems: int) -> np.ndarray:
  if point.flops_by_problem is not None:
    f = np.asarray(point.flops_by_problem, np.float64)
    if f.shape != (num_problems,):
      raise ValueError(f"{candidate_name(point)}: flops_by_problem has shape {f.shape}; "
                       f"expected ({num_problems},).")
    return f
  return np.full(num_problems, float(point.flops) / num_problems)


class _Table:
  """The candidates as arrays: outcomes (K, P), FLOPs (K, P), budgets (K,), and each
  candidate's rank in the tie-break order (fewer FLOPs per problem, fewer generations, name)."""

  def __init__(self, candidates: Sequence[CurvePoint]):
    if not candidates:
      raise ValueError("compute-optimal selection needs at least one candidate curve point.")
    self.points = list(candidates)
    self.names = [candidate_name(p) for p in self.points]
    dup = [n for n, k in collections.Counter(self.names).items() if k > 1]
    if dup:
      raise ValueError(f"candidates {dup} appear more than once: each (method, params) must be "
                       "one curve point.")
    sizes = {len(p.per_problem) for p in self.points}
    if len(sizes) != 1:
      raise ValueError(f"candidates have {sorted(sizes)} per-problem outcomes: every candidate "
                       "needs the same problems in the same order.")
    self.num_problems = sizes.pop()
    self.outcomes = np.asarray([p.per_problem for p in self.points], np.float64)
    self.flops = np.stack([_flops_by_problem(p, self.num_problems) for p in self.points])
    self.budgets = np.asarray([float(p.budget_generations) for p in self.points])
    order = sorted(range(len(self.points)),
                   key=lambda k: (float(self.flops[k].mean()), self.budgets[k], self.names[k]))
    self.rank = np.empty(len(order), np.int64)
    self.rank[order] = np.arange(len(order))

  def eligible(self, budget: float) -> np.ndarray:
    ok = self.budgets <= float(budget) + _TOL
    if not ok.any():
      raise ValueError(f"budget {budget}: no candidate fits (the smallest candidate budget is "
                       f"{self.budgets.min():g} generations).")
    return ok


def _best(outcomes_train: np.ndarray, eligible: np.ndarray, rank: np.ndarray) -> int:
  """The eligible candidate with the highest mean outcome over the given (training) columns;
  ties to the lowest tie-break rank."""
  acc = np.round(outcomes_train.mean(axis=1), _DECIMALS)
  best = acc[eligible].max()
  ties = eligible & (acc == best)
  return int(np.flatnonzero(ties)[np.argmin(rank[ties])])


def _select(outcomes_train: np.ndarray, bins_train: np.ndarray, num_bins: int,
            eligible: np.ndarray, rank: np.ndarray) -> list[int]:
  """Per bin, the chosen candidate index. Sees only the training problems' outcomes and bins
  (the caller slices the rest away), so no other problem can influence the choice."""
  if bins_train.size == 0:
    raise ValueError("strategy selection needs at least one training problem.")
  fallback = _best(outcomes_train, eligible, rank)
  return [_best(outcomes_train[:, bins_train == b], eligible, rank)
          if np.any(bins_train == b) else fallback for b in range(num_bins)]


def choose(candidates: Sequence[CurvePoint], budget: float, bins, num_bins: int,
           train_mask=None) -> list[CurvePoint]:
  """Per difficulty bin, the candidate a compute-optimal policy with ``budget`` generations
  runs: among candidates with ``budget_generations <= budget``, the best mean per-problem
  accuracy on the bin's training problems (``train_mask``; None = all problems), ties to fewer
  FLOPs per problem, then fewer generations, then the name. A bin without training problems
  gets the best candidate over all training problems.

  Raises:
    ValueError: no candidate fits the budget, no training problem, or candidates/bins/mask
      disagree on the number of problems.
  """
  table = _Table(candidates)
  bins = difficulty_lib.check_bins(bins, table.num_problems, num_bins)
  train = (np.ones(table.num_problems, bool) if train_mask is None
           else np.asarray(train_mask, bool))
  if train.shape != bins.shape:
    raise ValueError(f"train_mask has shape {train.shape}; expected ({table.num_problems},).")
  picks = _select(table.outcomes[:, train], bins[train], num_bins, table.eligible(budget),
                  table.rank)
  return [table.points[k] for k in picks]


def assign_folds(bins, num_bins: int, folds: int, rng: np.random.Generator) -> np.ndarray:
  """Fold index per problem, stratified by bin: each bin's problems in random order dealt
  round-robin to the folds (continuing the deal across bins, so folds differ in size by at
  most one). :func:`cross_validate` uses ``rng = np.random.default_rng([seed, repeat])``."""
  bins = difficulty_lib.check_bins(bins, None, num_bins)
  if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
    raise ValueError(f"folds={folds!r}: expected an integer >= 2.")
  if folds > bins.size:
    raise ValueError(f"folds={folds} exceeds the {bins.size} problems.")
  out = np.empty(bins.size, np.int64)
  dealt = 0
  for b in range(num_bins):
    idx = rng.permutation(np.flatnonzero(bins == b))
    out[idx] = (dealt + np.arange(idx.size)) % folds
    dealt += idx.size
  return out


def _point(method: str, budget: float, per_problem: np.ndarray, flops: np.ndarray,
           report_bins: np.ndarray, num_bins: int, seed: int, **extra) -> CurvePoint:
  est = stats_lib.mean_ci(per_problem, seed=seed)
  by_bin = [stats_lib.mean_ci(per_problem[report_bins == b], seed=seed)
            if np.any(report_bins == b) else None for b in range(num_bins)]
  return CurvePoint(
      method=method, params={"budget": budget}, budget_generations=budget,
      accuracy=est.mean, ci=[est.low, est.high],
      accuracy_by_bin=[float("nan") if e is None else e.mean for e in by_bin],
      ci_by_bin=[[float("nan")] * 2 if e is None else [e.low, e.high] for e in by_bin],
      per_problem=[float(x) for x in per_problem],
      flops=float(flops.sum()), flops_by_problem=[float(x) for x in flops], **extra)


def cross_validate(candidates: Sequence[CurvePoint], budgets: Sequence[float] | None, bins,
                   num_bins: int, method: str = "compute_optimal", folds: int = FOLDS,
                   repeats: int = REPEATS, seed: int = 0, report_bins=None) -> list[CurvePoint]:
  """The compute-optimal curve by cross-validated per-bin strategy choice.

  For each repeat r, the problems are split into ``folds`` folds stratified by ``bins``
  (:func:`assign_folds` with ``np.random.default_rng([seed, r])``); each fold's problems get,
  per bin, the candidate chosen on the other folds alone, and their outcome and FLOPs are that
  candidate's on them. Each problem's outcome and FLOPs are averaged over the repeats.

  Args:
    candidates: curve points (``method``, ``params``, ``budget_generations``, ``per_problem``,
      ``flops``; ``flops_by_problem`` if known, else FLOPs are spread evenly).
    budgets: generation budgets of the curve (None: every candidate budget).
    bins: the difficulty bin per problem the policy conditions on (oracle or predicted).
    num_bins: number of bins.
    method: the curve's method name (e.g. "compute_optimal_search").
    folds, repeats, seed: the cross-validation.
    report_bins: bins for ``accuracy_by_bin`` (None: ``bins``); e.g. oracle bins for a curve
      that chooses by predicted bins, so every curve is reported on the same bins.

  Returns:
    One curve point per budget in the format of :func:`ttc_jax.analysis.study.summarize`
    (``method``, ``params`` {"budget": B}, ``budget_generations``, ``accuracy``, ``ci``,
    ``accuracy_by_bin``, ``ci_by_bin``, ``per_problem``, ``flops`` (total over problems),
    ``flops_by_problem``), plus ``repeat_accuracy`` (accuracy of each repeat) and
    ``repeat_std``, ``choice`` (per bin, the candidate name chosen on all problems: the
    learned policy), ``choice_counts`` (per bin, {candidate name: times chosen} over the
    ``selections`` = repeats x folds cross-validation choices), ``choice_agreement`` (per bin,
    the fraction of those choices equal to ``choice``), ``folds``, ``repeats``.
  """
  table = _Table(candidates)
  p = table.num_problems
  bins = difficulty_lib.check_bins(bins, p, num_bins)
  report_bins = bins if report_bins is None else difficulty_lib.check_bins(report_bins, p, num_bins,
                                                             "report_bins")
  if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
    raise ValueError(f"repeats={repeats!r}: expected an integer >= 1.")
  if budgets is None:
    budgets = sorted(set(table.budgets.tolist()))
  splits = [assign_folds(bins, num_bins, folds, np.random.default_rng([seed, r]))
            for r in range(repeats)]
  out = []
  for budget in budgets:
    eligible = table.eligible(budget)
    outcome = np.empty((repeats, p))
    flops = np.empty((repeats, p))
    counts = [collections.Counter() for _ in range(num_bins)]
    for r, fold_of in enumerate(splits):
      for f in range(folds):
        evaluate = fold_of == f
        train = ~evaluate
        # The choice sees the training columns only: the evaluation fold is sliced away here.
        picks = _select(table.outcomes[:, train], bins[train], num_bins, eligible, table.rank)
        for b, k in enumerate(picks):
          rows = evaluate & (bins == b)
          outcome[r, rows] = table.outcomes[k, rows]
          flops[r, rows] = table.flops[k, rows]
          counts[b][table.names[k]] += 1
    learned = _select(table.outcomes, bins, num_bins, eligible, table.rank)
    choice = [table.names[k] for k in learned]
    selections = repeats * folds
    acc = outcome.mean(axis=1)
    out.append(_point(
        method, float(budget), outcome.mean(axis=0), flops.mean(axis=0), report_bins, num_bins,
        seed, repeat_accuracy=[float(x) for x in acc],
        repeat_std=float(acc.std(ddof=1)) if repeats > 1 else 0.0, choice=choice,
        choice_counts=[dict(sorted(c.items())) for c in counts],
        choice_agreement=[c[n] / selections for c, n in zip(counts, choice)],
        selections=selections, folds=int(folds), repeats=int(repeats)))
  return out


def in_sample(candidates: Sequence[CurvePoint], budgets: Sequence[float] | None, bins,
              num_bins: int,
              method: str = "compute_optimal_in_sample", seed: int = 0) -> list[CurvePoint]:
  """The optimistic curve that chooses on all problems and scores on the same problems (no
  cross-validation): an upper reference only, never a result."""
  table = _Table(candidates)
  bins = difficulty_lib.check_bins(bins, table.num_problems, num_bins)
  if budgets is None:
    budgets = sorted(set(table.budgets.tolist()))
  out = []
  for budget in budgets:
    picks = _select(table.outcomes, bins, num_bins, table.eligible(budget), table.rank)
    k = np.asarray(picks)[bins]
    idx = np.arange(table.num_problems)
    out.append(_point(method, float(budget), table.outcomes[k, idx], table.flops[k, idx], bins,
                      num_bins, seed, choice=[table.names[j] for j in picks]))
  return out


def charge(points: Sequence[CurvePoint], generations_per_problem: float, flops_per_problem: float,
           name: str) -> list[CurvePoint]:
  """``points`` with the difficulty prediction's cost added: budget + ``generations_per_problem``
  generations and + ``flops_per_problem`` FLOPs on every problem; method renamed ``name``."""
  g, f = float(generations_per_problem), float(flops_per_problem)
  if not (g >= 0 and f >= 0):
    raise ValueError(f"prediction cost ({generations_per_problem!r} generations, "
                     f"{flops_per_problem!r} FLOPs per problem): expected numbers >= 0.")
  out = []
  for pt in points:
    n = len(pt.per_problem)
    out.append(dataclasses.replace(
        pt, method=name, budget_generations=float(pt.budget_generations) + g,
        flops=float(pt.flops) + f * n,
        params={**(pt.params or {}), "charged_generations": g, "charged_flops_per_problem": f},
        flops_by_problem=[float(x) + f for x in _flops_by_problem(pt, n)]))
  return out


# --- the summary -----------------------------------------------------------------------------


# What the report needs of a curve point (per-problem values kept for paired tests).
_REPORTED = ("method", "params", "budget_generations", "seeds", "accuracy", "ci",
             "accuracy_by_bin", "ci_by_bin", "per_problem", "flops", "flops_by_problem",
             "repeat_accuracy", "repeat_std", "choice", "choice_counts", "choice_agreement",
             "selections", "folds", "repeats")


def _strip(pt: CurvePoint) -> dict:
  return pt.to_json(_REPORTED)


def _split_points(points: Sequence[CurvePoint], chains_of, selection: str | None
                  ) -> list[CurvePoint]:
  """One selection's revision points with ``chains_of(n)`` chains at each budget n: those of
  ``selection`` (None: majority voting, the selector that needs no verifier) if swept, else
  the first method's."""
  names = study_lib.methods(points)
  wanted = registry.name_of(registry.REVISIONS, selection=selection or "majority")
  method = wanted if wanted in names else (names[0] if names else None)
  out = [p for p in points if p.method == method
         and p.params.get("chains") == chains_of(p.params["n"])]
  return sorted(out, key=lambda p: p.budget_generations)


def curve_name(family: str, kind: str) -> str:
  """The name of a compute-optimal curve of candidates ``family`` ('search', 'revisions',
  'combined') with bins ``kind`` ('oracle', 'predicted', 'predicted_charged'); the summary's
  ``curve_keys`` maps it back (nothing reads a name)."""
  return f"{family}_{kind}"


def compute_optimal_summary(search_points: Sequence[CurvePoint],
                            revision_points: Sequence[CurvePoint] | None,
                            correct_matrix, mean_scores, num_bins: int,
                            prediction_generations: float, prediction_flops: float,
                            exchange_inputs: dict | None = None, folds: int = FOLDS,
                            repeats: int = REPEATS, seed: int = 0,
                            revision_selection: str | None = "hier_orm",
                            resamples: int = efficiency_lib.EFFICIENCY_RESAMPLES,
                            hybrid_points: Sequence[CurvePoint] | None = None) -> dict:
  """Every compute-optimal result in one JSON-able dict (the input of the report's section
  and figures).

  Args:
    search_points: the search sweep's curve points (study.summarize), including
      best_of_n_weighted; every point on the same problems as ``correct_matrix``'s rows.
    revision_points: the revision sweep's curve points (revisions.curves), or None/empty.
    correct_matrix: (problems, samples) 0/1 correctness of the difficulty samples; oracle
      bins are quantile bins of its row means (pass@1).
    mean_scores: per-problem mean verifier score of the same samples (predicted bins).
    num_bins: difficulty bins.
    prediction_generations, prediction_flops: the cost per problem of predicting difficulty
      (the charged curves).
    exchange_inputs: None (the large model was not run), or a dict with ``small_params``,
      ``large_params``, ``large_greedy`` (per-problem 0/1), optionally ``large_majority``
      ({"n": [...], "per_problem": [[...] per n]}) and ``r_values``.
    folds, repeats, seed: the cross-validation and every bootstrap.
    revision_selection: the revision points that are candidates and baselines (the paper's
      hierarchical ORM selection; None: every selection).
    resamples: bootstrap resamples of the efficiency ratios.
    hybrid_points: search-then-revise curve points (the hybrid sweep), candidates of the
      combined family only (their choices per bin show when the combination wins).

  Returns:
    {"num_problems", "num_bins", "folds", "repeats", "seed", "difficulty": {"oracle_bins",
    "predicted_bins", "pass_at_1", "mean_scores", "agreement", "split_half",
    "prediction_cost"}, "curves": {name: [co points]} for names family_bins[_charged] with
    family in search/revisions/combined and bins in oracle/predicted, "baselines":
    {"best_of_n", "beam", "revisions_parallel", "revisions_sequential"} curve points,
    "candidates": {name: {method, params, family, budget_generations, accuracy,
    flops_per_problem}}, "efficiency": {curve name: efficiency.efficiency(...)}, "claims": [...],
    "exchange": exchange.summary(...) or None}.
  """
  correct = np.asarray(correct_matrix, np.float64)
  p1, scores = _difficulty_inputs(correct, mean_scores)
  oracle = difficulty_lib.oracle_bins(p1, num_bins)
  predicted = difficulty_lib.predicted_bins(scores, num_bins)
  search = list(search_points)
  revs = [r for r in (revision_points or []) if revision_selection is None
          or registry.selection_of(r.method) == revision_selection]
  if revision_points and not revs:
    raise ValueError(f"revision_selection={revision_selection!r}: no revision point has a method "
                     f"ending in it (methods: {study_lib.methods(revision_points)}).")
  base = _baselines(search, revision_points or [], revision_selection)
  families = {"search": search}
  hybrid = list(hybrid_points or [])
  if revs:
    families["revisions"] = revs
    families["combined"] = search + revs + hybrid
  curves, keys = _curves(families, oracle, predicted, num_bins, prediction_generations,
                         prediction_flops, folds=folds, repeats=repeats, seed=seed)
  eff = {name: efficiency_lib.efficiency(pts, base[keys[name]["family"]], seed, resamples,
                                         baseline=BASELINE_NAMES[keys[name]["family"]])
         for name, pts in curves.items() if base[keys[name]["family"]]}
  exchange = None
  if exchange_inputs is not None:
    exchange = exchange_lib.summary(
        {k: curves[curve_name(k, "oracle")] for k in ("search", "revisions") if k in families},
        bins=oracle, num_bins=num_bins, seed=seed, **exchange_inputs)
  return {
      "num_problems": int(p1.size), "num_bins": int(num_bins), "folds": int(folds),
      "repeats": int(repeats), "seed": int(seed), "revision_selection": revision_selection,
      "difficulty": _difficulty_summary(correct, scores, oracle, predicted, num_bins,
                                        prediction_generations, prediction_flops),
      "curves": {k: [_strip(p) for p in v] for k, v in curves.items()}, "curve_keys": keys,
      "baselines": {"best_of_n": [_strip(p) for p in base["search"]],
                    "beam": [_strip(p) for p in base["beam"]],
                    "revisions_parallel": [_strip(p) for p in base["revisions"]],
                    "revisions_sequential": [_strip(p) for p in base["sequential"]]},
      "candidates": candidate_table(search + revs + hybrid), "efficiency": eff,
      "hybrid_wins": hybrid_wins(curves, keys, hybrid),
      "claims": _claims(curves, base, eff, families, seed), "exchange": exchange}


# What each family of compute-optimal curves is measured against: search and the combined
# curve against best-of-N weighted, revisions against their own pure parallel sampling (the
# paper's Figure 8 baseline).
BASELINE_NAMES = {"search": "best-of-N weighted", "revisions": "parallel sampling",
                  "combined": "best-of-N weighted"}


def hybrid_wins(curves: dict[str, list[CurvePoint]], keys: dict,
                hybrid: Sequence[CurvePoint]) -> list[dict]:
  """Where the combined policy chose a search-then-revise cell: per combined curve (without
  the charge), budget and bin, the cell chosen and the share of cross-validation choices
  that agree."""
  names = {candidate_name(p) for p in hybrid}
  out = []
  for name, pts in curves.items():
    k = keys[name]
    if k["family"] != "combined" or k["charged"]:
      continue
    for p in pts:
      for b, (choice, agree) in enumerate(zip(p.choice or [], p.choice_agreement or [])):
        if choice in names:
          out.append({"curve": name, "budget": p.budget_generations, "bin": b,
                      "choice": choice, "agreement": float(agree)})
  return out


def _curves(families: dict[str, list[CurvePoint]], oracle: np.ndarray, predicted: np.ndarray,
            num_bins: int, prediction_generations: float, prediction_flops: float, *,
            folds: int, repeats: int, seed: int) -> tuple[dict[str, list[CurvePoint]], dict]:
  """Each family's cross-validated compute-optimal curves with oracle and with predicted
  bins, and the predicted curve with the prediction's cost charged; and each curve's key
  (its family, bins and whether the cost is charged)."""
  curves, keys = {}, {}
  for fam, cands in families.items():
    for kind, bins in (("oracle", oracle), ("predicted", predicted)):
      name = curve_name(fam, kind)
      keys[name] = {"family": fam, "kind": kind, "charged": False}
      curves[name] = cross_validate(cands, None, bins, num_bins,
                                    method=f"compute_optimal_{name}", folds=folds,
                                    repeats=repeats, seed=seed, report_bins=oracle)
    name = curve_name(fam, "predicted_charged")
    keys[name] = {"family": fam, "kind": "predicted_charged", "charged": True}
    curves[name] = charge(curves[curve_name(fam, "predicted")], prediction_generations,
                          prediction_flops, f"compute_optimal_{name}")
  return curves, keys


def _difficulty_summary(correct: np.ndarray, scores: np.ndarray, oracle: np.ndarray,
                        predicted: np.ndarray, num_bins: int, prediction_generations: float,
                        prediction_flops: float) -> dict:
  """The bins, how well the predicted ones agree with the oracle's, and what predicting
  costs."""
  p1 = correct.mean(axis=1)
  return {
      "oracle_bins": [int(b) for b in oracle], "predicted_bins": [int(b) for b in predicted],
      "pass_at_1": [float(x) for x in p1], "mean_scores": [float(x) for x in scores],
      "samples_per_problem": int(correct.shape[1]),
      "agreement": difficulty_lib.bin_agreement(oracle, predicted, num_bins, p1, scores),
      "split_half": difficulty_lib.split_half_stability(correct, num_bins),
      "prediction_cost": {"generations": float(prediction_generations),
                          "flops": float(prediction_flops)}}


def _difficulty_inputs(correct: np.ndarray, mean_scores) -> tuple[np.ndarray, np.ndarray]:
  """Per-problem pass@1 (oracle difficulty) and mean verifier score (predicted), checked."""
  if correct.ndim != 2:
    raise ValueError(f"correct_matrix: expected (problems, samples), got shape {correct.shape}.")
  p1 = correct.mean(axis=1)
  scores = np.asarray(mean_scores, np.float64)
  if scores.shape != p1.shape:
    raise ValueError(f"mean_scores has shape {scores.shape}; expected ({p1.size},) like the "
                     "rows of correct_matrix.")
  return p1, scores


def _baselines(search: Sequence[CurvePoint], revision_points: Sequence[CurvePoint],
               selection: str | None) -> dict[str, list[CurvePoint]]:
  """The baseline curves by budget: best-of-N weighted (the baseline of search and of the
  combined curve), the fixed-width beam search, and pure parallel and pure sequential
  revisions of ``selection``."""
  by_budget = lambda pts: sorted(pts, key=lambda c: c.budget_generations)  # noqa: E731
  bon = by_budget(c for c in search if c.method == registry.name_of(registry.BEST_OF_N))
  if not bon:
    raise ValueError("search_points have no best_of_n_weighted point: the baseline is needed.")
  beam_name = registry.first_of(study_lib.methods(search), registry.BEAM)
  parallel = _split_points(revision_points, lambda n: n, selection)
  return {"search": bon, "combined": bon, "revisions": parallel,
          "beam": by_budget(c for c in search if c.method == beam_name),
          "sequential": _split_points(revision_points, lambda n: 1, selection)}


def _claims(curves: dict, base: dict, eff: dict, families: dict, seed: int) -> list[dict]:
  """The paper's compute-optimal findings (e): better than the baseline at equal budget, and
  the 4x efficiency, for search and for revisions, with oracle and predicted bins."""
  claims = []
  paper = {"search": "PRM search, Figure 4", "revisions": "revisions, Figure 8"}
  for fam in ("search", "revisions"):
    if fam not in families or not base[fam]:
      continue
    for kind in ("oracle", "predicted"):
      name = curve_name(fam, kind)
      label = f"compute-optimal {fam} ({kind} bins)"
      c = efficiency_lib.equal_budget_claim(
          curves[name], base[fam], label, f"compute-optimal scaling beats the baseline at "
          f"equal generation budget ({paper[fam]})", seed, BASELINE_NAMES[fam])
      if c is not None:
        claims.append(c)
      claims.append(efficiency_lib.efficiency_claim(eff[name], label, paper[fam],
                                                    BASELINE_NAMES[fam]))
  return claims


def candidate_table(points: Sequence[CurvePoint]) -> dict[str, dict]:
  """Every candidate strategy by name: its method, params, family, budget, accuracy and
  FLOPs per problem."""
  return {candidate_name(pt): {
      "method": pt.method, "params": pt.params, "family": family(pt),
      "budget_generations": pt.budget_generations, "accuracy": pt.accuracy,
      "flops_per_problem": pt.flops / len(pt.per_problem)} for pt in points}


def adaptive_summary(allocation: dict, curves: dict, keys: dict, seed: int = 0
                     ) -> tuple[dict, list[dict]]:
  """Adaptive allocation (the allocation stage's result) beside compute-optimal search: at each
  budget both have, adaptive allocation (nominal budget: it spends at most that) minus the
  compute-optimal search curve with oracle bins and with predicted bins (paired over the same
  test problems; the predicted curve's prediction cost, in generations, is what adaptive
  allocation does without); and the pre-specified claims against the oracle-bin curve at the
  largest shared budget. Returns (the summary, claims)."""
  nominal = records.points_from_json(allocation["adaptive_nominal"])
  by_kind = {k["kind"]: name for name, k in keys.items() if k["family"] == "search"}
  rows, claims = [], []
  shared = sorted({p.budget_generations for p in nominal}
                  & {p.budget_generations for p in curves.get(by_kind.get("oracle"), [])})
  for b in shared:
    a = next(p for p in nominal if p.budget_generations == b)
    row = {"budget": b, "adaptive": a.accuracy, "adaptive_ci": list(a.ci),
           "adaptive_generations": float(a.params.get("generations", b))}
    for kind in ("oracle", "predicted"):
      pts = curves.get(by_kind.get(kind), [])
      o = next((p for p in pts if p.budget_generations == b), None)
      if o is None:
        continue
      cmp = study_lib.compare_points(a, o, (f"adaptive@{b:g}", f"{o.method}@{b:g}"), seed=seed)
      row[kind] = {"accuracy": o.accuracy, "ci": list(o.ci), "comparison": cmp.to_json()}
      if kind == "oracle" and b == shared[-1]:
        c = claims_lib.claim(
            f"(f) adaptive allocation over compute-optimal search (oracle bins) at budget {b:g}",
            "beyond the paper: allocating as samples arrive needs no difficulty prediction and "
            "beats strategy selection by difficulty bin", cmp, budget=b)
        if c is not None:
          claims.append(c)
    rows.append(row)
  return {"vs_compute_optimal": rows}, claims


def hybrid_claims(hybrid_points: Sequence[CurvePoint], search_points: Sequence[CurvePoint],
                  seed: int = 0) -> list[dict]:
  """The pre-specified claims of search then revise (beyond the paper): per search method of
  the hybrid cells, its cell with the most revisions and the 'vote' answer against (1) the
  same search alone at its budget N (what the revisions add) and (2) the same search at the
  smallest budget of the sweep >= N + L (whether revising spends the generations better than
  more search), paired over the test problems (the search points over their seeds)."""
  claims = []
  for pt in hybrid_points:
    if not pt.method.endswith("_vote"):
      continue
    search = pt.method[len("hybrid_"):-len("_vote")]
    same = [p for p in hybrid_points if p.method == pt.method]
    if pt.params["revisions"] != max(p.params["revisions"] for p in same):
      continue
    n, total = int(pt.params["n"]), pt.budget_generations
    runs = sorted((p for p in search_points if p.method == search),
                  key=lambda p: p.budget_generations)
    alone = next((p for p in runs if p.budget_generations == n), None)
    more = next((p for p in runs if p.budget_generations >= total), None)
    label = f"{search} N={n} then {pt.params['revisions']} revisions (vote)"
    for other, name, paper in (
        (alone, f"(h) search then revise: {label} over {search} alone at budget {n}",
         "beyond the paper: revising the search's best answer adds accuracy to the search"),
        (more, f"(h) search then revise: {label}, {total:g} generations, over {search} at "
               f"budget {0 if more is None else more.budget_generations:g}",
         "beyond the paper: revising the search's answer spends generations better than more "
         "search")):
      if other is None:
        continue
      cmp = study_lib.compare_points(pt, other, (f"{pt.method}@{total:g}",
                                                 f"{search}@{other.budget_generations:g}"),
                                     seed=seed)
      c = claims_lib.claim(name, paper, cmp, budget=total)
      if c is not None:
        claims.append(c)
  return claims
