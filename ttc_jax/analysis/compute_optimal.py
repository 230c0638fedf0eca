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
import math
from typing import Sequence

import numpy as np
from scipy import stats as scipy_stats

from ttc_jax.analysis import claims as claims_lib
from ttc_jax.analysis import difficulty as difficulty_lib
from ttc_jax.analysis import exchange as exchange_lib
from ttc_jax.analysis import stats as stats_lib
from ttc_jax.analysis import study as study_lib
from ttc_jax.search import registry

FOLDS = 2
REPEATS = 25
EFFICIENCY_RESAMPLES = 2000
PAPER_EFFICIENCY = 4.0
_DECIMALS = 12  # accuracies equal to 12 decimals tie
_TOL = 1e-12  # "accuracy >= a_N" up to float rounding


# --- difficulty ------------------------------------------------------------------------------


def mean_final_scores(scores, num_problems: int) -> np.ndarray:
  """Per-problem mean of per-sample verifier scores stored problem-major (problem i's samples
  are rows i * n .. (i + 1) * n - 1, as verifier_eval's scored.npz stores them)."""
  s = np.asarray(scores, np.float64)
  if s.ndim == 2:
    if s.shape[0] != num_problems:
      raise ValueError(f"scores of shape {s.shape}: expected ({num_problems}, samples).")
    return s.mean(axis=1)
  if s.ndim != 1 or num_problems < 1 or s.size % num_problems:
    raise ValueError(f"{s.size} scores (shape {s.shape}) are not {num_problems} problems x an "
                     "equal number of samples.")
  return s.reshape(num_problems, -1).mean(axis=1)


def predicted_bins(mean_scores, num_bins: int = difficulty_lib.NUM_BINS) -> np.ndarray:
  """Quantile bins of the verifier's mean final-answer score per problem (no ground truth),
  oriented like the oracle bins: 0 = easiest = highest mean score."""
  s = np.asarray(mean_scores, np.float64)
  if s.ndim != 1 or not np.isfinite(s).all():
    raise ValueError(f"mean_scores: expected a 1-D array of finite per-problem scores, got shape "
                     f"{s.shape} ({int((~np.isfinite(s)).sum())} not finite).")
  return difficulty_lib.oracle_bins(s, num_bins)


def _check_bins(bins, num_problems: int | None, num_bins: int, name: str = "bins") -> np.ndarray:
  b = np.asarray(bins)
  if b.ndim != 1 or (num_problems is not None and b.size != num_problems):
    raise ValueError(f"{name}: expected {num_problems if num_problems is not None else 'one'} "
                     f"bin indices (one per problem), got shape {b.shape}.")
  if b.size and (not np.issubdtype(b.dtype, np.integer) or b.min() < 0 or b.max() >= num_bins):
    raise ValueError(f"{name}: expected integers in [0, {num_bins}), got values in "
                     f"[{b.min()}, {b.max()}] ({b.dtype}).")
  return b.astype(np.int64)


def bin_agreement(bins_a, bins_b, num_bins: int, values_a=None, values_b=None) -> dict:
  """How two binnings of the same problems agree.

  Returns ``confusion`` (num_bins x num_bins counts, row = bin in a, column = bin in b),
  ``exact`` (fraction in the same bin), ``within_one`` (fraction at most one bin apart),
  ``spearman`` (rank correlation of ``values_a`` and ``values_b`` when both are given, else of
  the bins; None when one side is constant) and ``spearman_of`` ("values" or "bins").
  """
  a = _check_bins(bins_a, None, num_bins, "bins_a")
  b = _check_bins(bins_b, a.size, num_bins, "bins_b")
  if a.size == 0:
    raise ValueError("bin_agreement needs at least one problem.")
  confusion = np.zeros((num_bins, num_bins), np.int64)
  np.add.at(confusion, (a, b), 1)
  if (values_a is None) != (values_b is None):
    raise ValueError("values_a and values_b: give both (continuous values) or neither.")
  if values_a is not None:
    x, y = np.asarray(values_a, np.float64), np.asarray(values_b, np.float64)
    if x.shape != a.shape or y.shape != a.shape:
      raise ValueError(f"values_a {x.shape} and values_b {y.shape}: expected ({a.size},) like "
                       "the bins.")
    of = "values"
  else:
    x, y, of = a, b, "bins"
  rho = None
  if np.ptp(x) > 0 and np.ptp(y) > 0:
    rho = float(scipy_stats.spearmanr(x, y).statistic)
  return {"confusion": confusion.tolist(), "exact": float(np.mean(a == b)),
          "within_one": float(np.mean(np.abs(a - b) <= 1)), "spearman": rho,
          "spearman_of": of, "problems": int(a.size)}


def split_half_stability(correct_matrix, num_bins: int = difficulty_lib.NUM_BINS) -> dict:
  """Oracle bins from the first half of each problem's samples against bins from the second
  half (each half n // 2 samples; an odd last sample is left out): how stable the oracle
  difficulty itself is at this sample count. :func:`bin_agreement` of the two, Spearman of
  the two pass@1 estimates, and ``samples_per_half``."""
  c = np.asarray(correct_matrix, np.float64)
  if c.ndim != 2 or c.shape[1] < 2:
    raise ValueError(f"correct_matrix: expected (problems, samples >= 2), got shape {c.shape}.")
  h = c.shape[1] // 2
  p_a, p_b = c[:, :h].mean(axis=1), c[:, h:2 * h].mean(axis=1)
  out = bin_agreement(difficulty_lib.oracle_bins(p_a, num_bins),
                      difficulty_lib.oracle_bins(p_b, num_bins), num_bins, p_a, p_b)
  out["samples_per_half"] = int(h)
  return out


# --- candidates ------------------------------------------------------------------------------


def family(point: dict) -> str:
  """"revision" for revision points (methods named revision_* or revisions_*), else "search"."""
  return "revision" if registry.method(point["method"]).family == registry.REVISIONS else "search"


def candidate_name(point: dict) -> str:
  """A candidate's stable name: its method, then its params sorted by key."""
  params = point.get("params") or {}
  return point["method"] + "".join(f" {k}={params[k]}" for k in sorted(params))


def _flops_by_problem(point: dict, num_problems: int) -> np.ndarray:
  if point.get("flops_by_problem") is not None:
    f = np.asarray(point["flops_by_problem"], np.float64)
    if f.shape != (num_problems,):
      raise ValueError(f"{candidate_name(point)}: flops_by_problem has shape {f.shape}; "
                       f"expected ({num_problems},).")
    return f
  return np.full(num_problems, float(point["flops"]) / num_problems)


class _Table:
  """The candidates as arrays: outcomes (K, P), FLOPs (K, P), budgets (K,), and each
  candidate's rank in the tie-break order (fewer FLOPs per problem, fewer generations, name)."""

  def __init__(self, candidates: Sequence[dict]):
    if not candidates:
      raise ValueError("compute-optimal selection needs at least one candidate curve point.")
    self.points = list(candidates)
    self.names = [candidate_name(p) for p in self.points]
    dup = [n for n, k in collections.Counter(self.names).items() if k > 1]
    if dup:
      raise ValueError(f"candidates {dup} appear more than once: each (method, params) must be "
                       "one curve point.")
    sizes = {len(p["per_problem"]) for p in self.points}
    if len(sizes) != 1:
      raise ValueError(f"candidates have {sorted(sizes)} per-problem outcomes: every candidate "
                       "needs the same problems in the same order.")
    self.num_problems = sizes.pop()
    self.outcomes = np.asarray([p["per_problem"] for p in self.points], np.float64)
    self.flops = np.stack([_flops_by_problem(p, self.num_problems) for p in self.points])
    self.budgets = np.asarray([float(p["budget_generations"]) for p in self.points])
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


def choose(candidates: Sequence[dict], budget: float, bins, num_bins: int,
           train_mask=None) -> list[dict]:
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
  bins = _check_bins(bins, table.num_problems, num_bins)
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
  bins = _check_bins(bins, None, num_bins)
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
           report_bins: np.ndarray, num_bins: int, seed: int, **extra) -> dict:
  est = stats_lib.mean_ci(per_problem, seed=seed)
  by_bin = [stats_lib.mean_ci(per_problem[report_bins == b], seed=seed)
            if np.any(report_bins == b) else None for b in range(num_bins)]
  return {"method": method, "params": {"budget": budget}, "budget_generations": budget,
          "accuracy": est.mean, "ci": [est.low, est.high],
          "accuracy_by_bin": [float("nan") if e is None else e.mean for e in by_bin],
          "ci_by_bin": [[float("nan")] * 2 if e is None else [e.low, e.high] for e in by_bin],
          "per_problem": [float(x) for x in per_problem],
          "flops": float(flops.sum()), "flops_by_problem": [float(x) for x in flops], **extra}


def cross_validate(candidates: Sequence[dict], budgets: Sequence[float] | None, bins,
                   num_bins: int, method: str = "compute_optimal", folds: int = FOLDS,
                   repeats: int = REPEATS, seed: int = 0, report_bins=None) -> list[dict]:
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
  bins = _check_bins(bins, p, num_bins)
  report_bins = bins if report_bins is None else _check_bins(report_bins, p, num_bins,
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


def in_sample(candidates: Sequence[dict], budgets: Sequence[float] | None, bins, num_bins: int,
              method: str = "compute_optimal_in_sample", seed: int = 0) -> list[dict]:
  """The optimistic curve that chooses on all problems and scores on the same problems (no
  cross-validation): an upper reference only, never a result."""
  table = _Table(candidates)
  bins = _check_bins(bins, table.num_problems, num_bins)
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


def charge(points: Sequence[dict], generations_per_problem: float, flops_per_problem: float,
           name: str) -> list[dict]:
  """``points`` with the difficulty prediction's cost added: budget + ``generations_per_problem``
  generations and + ``flops_per_problem`` FLOPs on every problem; method renamed ``name``."""
  g, f = float(generations_per_problem), float(flops_per_problem)
  if not (g >= 0 and f >= 0):
    raise ValueError(f"prediction cost ({generations_per_problem!r} generations, "
                     f"{flops_per_problem!r} FLOPs per problem): expected numbers >= 0.")
  out = []
  for pt in points:
    n = len(pt["per_problem"])
    new = dict(pt, method=name, budget_generations=float(pt["budget_generations"]) + g,
               flops=float(pt["flops"]) + f * n,
               params={**(pt.get("params") or {}), "charged_generations": g,
                       "charged_flops_per_problem": f})
    new["flops_by_problem"] = [float(x) + f for x in _flops_by_problem(pt, n)]
    out.append(new)
  return out


# --- efficiency ------------------------------------------------------------------------------


def _interval(x: np.ndarray, confidence: float) -> list:
  """Percentile interval whose endpoints are values of ``x`` (inf -> None)."""
  alpha = 100 * (1 - confidence) / 2
  lo = float(np.percentile(x, alpha, method="lower"))
  hi = float(np.percentile(x, 100 - alpha, method="higher"))
  return [None if math.isinf(v) else v for v in (lo, hi)]


def _resample_counts(p: int, resamples: int, seed: int) -> np.ndarray:
  idx = np.random.default_rng(seed).integers(0, p, (resamples, p))
  counts = np.zeros((resamples, p))
  np.add.at(counts, (np.repeat(np.arange(resamples), p), idx.reshape(-1)), 1.0)
  return counts


def efficiency(co_points: Sequence[dict], bon_points: Sequence[dict], seed: int = 0,
               resamples: int = EFFICIENCY_RESAMPLES,
               confidence: float = stats_lib.CONFIDENCE, baseline: str | None = None) -> dict:
  """How many times fewer generations (and FLOPs) the compute-optimal curve needs to match
  each baseline point.

  For each baseline point (budget N, accuracy a_N): the smallest compute-optimal budget b with
  accuracy >= a_N (up to 1e-12); ``generations_ratio`` N' / b, ``flops_ratio`` the baseline's
  FLOPs per problem at N' over the compute-optimal point's at b, where N' is the baseline's
  own smallest budget with accuracy >= a_N (N wherever its curve still rises; a flat curve
  gets no credit for the budgets it wastes: all-zero accuracies give ratios <= 1). A bootstrap over problems (the
  same resamples for every point) gives each ratio's percentile interval; a resample in which
  no budget reaches a_N counts in ``unreached_resamples`` and has ratio 0, read as "below
  N' / b_max" (``floor``). ``best``: the largest ratio over the baseline's budgets, its interval
  from the per-resample maximum.

  Returns:
    {"rows": [per baseline point: n, baseline_accuracy, baseline_ci, reached, budget (b or
    None), budget_ci, co_accuracy, generations_ratio, generations_ratio_ci, flops_ratio,
    flops_ratio_ci, baseline_flops_per_problem, co_flops_per_problem, floor,
    unreached_resamples], "best": {generations_ratio, generations_ratio_ci, n, flops_ratio,
    flops_ratio_ci, n_flops}, "co_budgets", "resamples", "co_method", "baseline_method",
    "baseline" (``baseline``: a reader's name for it, default the method), "problems"}.
  """
  co = sorted(co_points, key=lambda c: c["budget_generations"])
  bon = sorted(bon_points, key=lambda c: c["budget_generations"])
  if not co or not bon:
    raise ValueError(f"efficiency needs compute-optimal and baseline points, got {len(co)} and "
                     f"{len(bon)}.")
  sizes = {len(c["per_problem"]) for c in co + bon}
  if len(sizes) != 1:
    raise ValueError(f"points have {sorted(sizes)} per-problem outcomes: expected the same "
                     "problems for every point.")
  p = sizes.pop()
  v = np.asarray([c["per_problem"] for c in co], np.float64)
  w = np.asarray([c["per_problem"] for c in bon], np.float64)
  b_co = np.asarray([float(c["budget_generations"]) for c in co])
  f_co = np.asarray([c["flops"] / p for c in co], np.float64)
  b_bon = np.asarray([float(c["budget_generations"]) for c in bon])
  f_bon_all = np.asarray([c["flops"] / p for c in bon], np.float64)
  counts = _resample_counts(p, resamples, seed)
  boot_co, boot_bon = counts @ v.T / p, counts @ w.T / p  # (resamples, points)
  acc_co, acc_bon = v.mean(axis=1), w.mean(axis=1)
  rows, gen_r, flops_r = [], [], []
  for j, pt in enumerate(bon):
    n = float(pt["budget_generations"])
    reach = boot_co >= boot_bon[:, j:j + 1] - _TOL
    hit = reach.any(axis=1)
    first = np.argmax(reach, axis=1)
    # The baseline's own smallest budget reaching its accuracy at N (j itself at the latest).
    own = np.argmax(boot_bon[:, :j + 1] >= boot_bon[:, j:j + 1] - _TOL, axis=1)
    needed = np.where(hit, b_co[first], np.inf)
    g = np.where(hit, b_bon[own] / b_co[first], 0.0)
    fl = np.where(hit, f_bon_all[own] / f_co[first], 0.0)
    gen_r.append(g)
    flops_r.append(fl)
    ok = acc_co >= acc_bon[j] - _TOL
    k = int(np.argmax(ok)) if ok.any() else None
    o = int(np.argmax(acc_bon[:j + 1] >= acc_bon[j] - _TOL))
    f_bon = float(f_bon_all[o])
    rows.append({
        "n": n, "baseline_accuracy": float(acc_bon[j]), "baseline_ci": pt.get("ci"),
        "baseline_budget": float(b_bon[o]),
        "reached": k is not None, "budget": None if k is None else float(b_co[k]),
        "budget_ci": _interval(needed, confidence),
        "co_accuracy": None if k is None else float(acc_co[k]),
        "generations_ratio": None if k is None else float(b_bon[o]) / float(b_co[k]),
        "generations_ratio_ci": _interval(g, confidence),
        "flops_ratio": None if k is None else float(f_bon / f_co[k]),
        "flops_ratio_ci": _interval(fl, confidence),
        "baseline_flops_per_problem": f_bon,
        "co_flops_per_problem": None if k is None else float(f_co[k]),
        "floor": float(b_bon[o]) / float(b_co[-1]), "unreached_resamples": int((~hit).sum())})
  gen_point = [r["generations_ratio"] or 0.0 for r in rows]
  flops_point = [r["flops_ratio"] or 0.0 for r in rows]
  jg, jf = int(np.argmax(gen_point)), int(np.argmax(flops_point))
  best = {"generations_ratio": gen_point[jg],
          "generations_ratio_ci": _interval(np.max(gen_r, axis=0), confidence),
          "n": rows[jg]["n"], "flops_ratio": flops_point[jf],
          "flops_ratio_ci": _interval(np.max(flops_r, axis=0), confidence),
          "n_flops": rows[jf]["n"]}
  return {"rows": rows, "best": best, "co_budgets": [float(b) for b in b_co],
          "resamples": int(resamples), "co_method": co[0]["method"],
          "baseline_method": bon[0]["method"], "baseline": baseline or bon[0]["method"],
          "problems": int(p)}


# --- claims ----------------------------------------------------------------------------------


def efficiency_claim(eff: dict, label: str, paper: str, baseline: str | None = None,
                     threshold: float = PAPER_EFFICIENCY) -> dict:
  """The "up to 4x" claim from :func:`efficiency`'s ``best`` generation ratio: reproduced if
  its interval's lower end is >= ``threshold``, not reproduced if its upper end is below,
  else not significant. ``comparison``: ratio - threshold with its interval."""
  best = eff["best"]
  lo, hi = best["generations_ratio_ci"]
  lo, hi = (0.0 if lo is None else lo), (0.0 if hi is None else hi)
  if lo >= threshold:
    verdict = claims_lib.REPRODUCED
  elif hi < threshold:
    verdict = claims_lib.NOT_REPRODUCED
  else:
    verdict = claims_lib.NOT_SIGNIFICANT
  significant = verdict != claims_lib.NOT_SIGNIFICANT
  cmp = {"a": f"best generation ratio of {label}", "b": f"{threshold:g}x",
         "diff": best["generations_ratio"] - threshold, "ci": [lo - threshold, hi - threshold],
         "n": eff["problems"], "significant": significant,
         "verdict": f"ratio {best['generations_ratio']:.2f} at N={best['n']:g}"}
  return {"claim": f"(e) {label}: up to {threshold:g}x fewer generations than "
                   f"{baseline or eff['baseline_method']}",
          "paper": f"compute-optimal scaling matches the baseline with up to {threshold:g}x less "
                   f"test-time compute ({paper})",
          "verdict": verdict, "comparison": cmp, "ratio": best["generations_ratio"],
          "ratio_ci": [lo, hi], "n": best["n"], "rule": f"lower end >= {threshold:g}: "
          f"reproduced; upper end < {threshold:g}: not reproduced; else not significant"}


def equal_budget_claim(co_points: Sequence[dict], baseline_points: Sequence[dict], label: str,
                       paper: str, seed: int = 0, baseline: str | None = None) -> dict | None:
  """Compute-optimal minus the baseline at the largest budget both have (paired bootstrap over
  problems); the paper says compute-optimal is better. None if no budget is shared."""
  shared = sorted({c["budget_generations"] for c in co_points}
                  & {c["budget_generations"] for c in baseline_points})
  if not shared:
    return None
  b = shared[-1]
  a = next(c for c in co_points if c["budget_generations"] == b)
  o = next(c for c in baseline_points if c["budget_generations"] == b)
  cmp = study_lib.compare_points(a, o, (f"{a['method']}@{b:g}", f"{o['method']}@{b:g}"),
                                 seed=seed)
  return claims_lib._claim(f"(e) {label} over {baseline or o['method']} at budget {b:g}", paper,
                           cmp, budget=b)


# --- the summary -----------------------------------------------------------------------------


def prediction_cost_estimate(bon_points: Sequence[dict], samples: int) -> tuple[float, float]:
  """(generations, FLOPs) per problem of predicting difficulty from ``samples`` policy samples
  scored by the PRM, estimated as ``samples`` times the per-generation FLOPs per problem of the
  largest best-of-N point (policy and PRM; the same samples cost the same per generation)."""
  if not bon_points:
    raise ValueError("prediction_cost_estimate needs best-of-N points.")
  top = max(bon_points, key=lambda c: c["budget_generations"])
  per_gen = top["flops"] / len(top["per_problem"]) / float(top["budget_generations"])
  return float(samples), float(samples * per_gen)


def _strip(pt: dict) -> dict:
  """A curve point with what the report needs (per-problem values kept for paired tests)."""
  keys = ("method", "params", "budget_generations", "seeds", "accuracy", "ci", "accuracy_by_bin",
          "ci_by_bin", "per_problem", "flops", "flops_by_problem", "repeat_accuracy",
          "repeat_std", "choice", "choice_counts", "choice_agreement", "selections", "folds",
          "repeats")
  return {k: pt[k] for k in keys if k in pt}


def _split_points(points: Sequence[dict], chains_of, selection: str | None) -> list[dict]:
  """One selection's revision points with ``chains_of(n)`` chains at each budget n: those of
  ``selection`` (None: majority voting, the selector that needs no verifier) if swept, else
  the first method's."""
  names = study_lib.methods(points)
  wanted = registry.name_of(registry.REVISIONS, selection=selection or "majority")
  method = wanted if wanted in names else (names[0] if names else None)
  out = [p for p in points if p["method"] == method
         and p["params"].get("chains") == chains_of(p["params"]["n"])]
  return sorted(out, key=lambda p: p["budget_generations"])


def curve_name(family: str, kind: str) -> str:
  """The name of a compute-optimal curve of candidates ``family`` ('search', 'revisions',
  'combined') with bins ``kind`` ('oracle', 'predicted', 'predicted_charged'); the summary's
  ``curve_keys`` maps it back (nothing reads a name)."""
  return f"{family}_{kind}"


def compute_optimal_summary(search_points: Sequence[dict],
                            revision_points: Sequence[dict] | None,
                            correct_matrix, mean_scores, num_bins: int,
                            prediction_generations: float, prediction_flops: float,
                            exchange_inputs: dict | None = None, folds: int = FOLDS,
                            repeats: int = REPEATS, seed: int = 0,
                            revision_selection: str | None = "hier_orm",
                            resamples: int = EFFICIENCY_RESAMPLES) -> dict:
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
      (charged curves; e.g. :func:`prediction_cost_estimate`).
    exchange_inputs: None (the large model was not run), or a dict with ``small_params``,
      ``large_params``, ``large_greedy`` (per-problem 0/1), optionally ``large_majority``
      ({"n": [...], "per_problem": [[...] per n]}) and ``r_values``.
    folds, repeats, seed: the cross-validation and every bootstrap.
    revision_selection: the revision points that are candidates and baselines (the paper's
      hierarchical ORM selection; None: every selection).
    resamples: bootstrap resamples of the efficiency ratios.

  Returns:
    {"num_problems", "num_bins", "folds", "repeats", "seed", "difficulty": {"oracle_bins",
    "predicted_bins", "pass_at_1", "mean_scores", "agreement", "split_half",
    "prediction_cost"}, "curves": {name: [co points]} for names family_bins[_charged] with
    family in search/revisions/combined and bins in oracle/predicted, "baselines":
    {"best_of_n", "beam", "revisions_parallel", "revisions_sequential"} curve points,
    "candidates": {name: {method, params, family, budget_generations, accuracy,
    flops_per_problem}}, "efficiency": {curve name: efficiency(...)}, "claims": [...],
    "exchange": exchange.summary(...) or None}.
  """
  correct = np.asarray(correct_matrix, np.float64)
  if correct.ndim != 2:
    raise ValueError(f"correct_matrix: expected (problems, samples), got shape {correct.shape}.")
  p1 = correct.mean(axis=1)
  scores = np.asarray(mean_scores, np.float64)
  if scores.shape != p1.shape:
    raise ValueError(f"mean_scores has shape {scores.shape}; expected ({p1.size},) like the "
                     "rows of correct_matrix.")
  oracle = difficulty_lib.oracle_bins(p1, num_bins)
  predicted = predicted_bins(scores, num_bins)
  search = list(search_points)
  revs = [r for r in (revision_points or []) if revision_selection is None
          or registry.selection_of(r["method"]) == revision_selection]
  if revision_points and not revs:
    raise ValueError(f"revision_selection={revision_selection!r}: no revision point has a method "
                     f"ending in it (methods: {study_lib.methods(revision_points)}).")
  bon = sorted((c for c in search if c["method"] == registry.name_of(registry.BEST_OF_N)),
               key=lambda c: c["budget_generations"])
  if not bon:
    raise ValueError("search_points have no best_of_n_weighted point: the baseline is needed.")
  beam_name = registry.first_of(study_lib.methods(search), registry.BEAM)
  beam = sorted((c for c in search if c["method"] == beam_name),
                key=lambda c: c["budget_generations"])
  parallel = _split_points(revision_points or [], lambda n: n, revision_selection)
  sequential = _split_points(revision_points or [], lambda n: 1, revision_selection)
  families = {"search": search}
  if revs:
    families["revisions"] = revs
    families["combined"] = search + revs
  curves: dict[str, list[dict]] = {}
  keys: dict[str, dict] = {}  # curve name -> its family, bins and whether the cost is charged
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
  # Search is measured against best-of-N weighted, revisions against their own pure parallel
  # sampling (the paper's Figure 8 baseline), the combined curve against best-of-N.
  baseline_of = {"search": bon, "revisions": parallel, "combined": bon}
  baseline_name = {"search": "best-of-N weighted", "revisions": "parallel sampling",
                   "combined": "best-of-N weighted"}
  eff = {}
  for name, pts in curves.items():
    fam = keys[name]["family"]
    if baseline_of[fam]:
      eff[name] = efficiency(pts, baseline_of[fam], seed, resamples, baseline=baseline_name[fam])
  claims = []
  paper = {"search": "PRM search, Figure 4", "revisions": "revisions, Figure 8"}
  for fam in ("search", "revisions"):
    if fam not in families or not baseline_of[fam]:
      continue
    for kind in ("oracle", "predicted"):
      name = curve_name(fam, kind)
      label = f"compute-optimal {fam} ({kind} bins)"
      c = equal_budget_claim(curves[name], baseline_of[fam], label,
                             f"compute-optimal scaling beats the baseline at equal generation "
                             f"budget ({paper[fam]})", seed, baseline_name[fam])
      if c is not None:
        claims.append(c)
      claims.append(efficiency_claim(eff[name], label, paper[fam], baseline_name[fam]))
  exchange = None
  if exchange_inputs is not None:
    exchange = exchange_lib.summary(
        {k: curves[curve_name(k, "oracle")] for k in ("search", "revisions") if k in families},
        bins=oracle, num_bins=num_bins, seed=seed, **exchange_inputs)
  candidates = {}
  for pt in search + revs:
    candidates[candidate_name(pt)] = {
        "method": pt["method"], "params": pt["params"], "family": family(pt),
        "budget_generations": pt["budget_generations"], "accuracy": pt["accuracy"],
        "flops_per_problem": pt["flops"] / len(pt["per_problem"])}
  return {
      "num_problems": int(p1.size), "num_bins": int(num_bins), "folds": int(folds),
      "repeats": int(repeats), "seed": int(seed), "revision_selection": revision_selection,
      "difficulty": {
          "oracle_bins": [int(b) for b in oracle], "predicted_bins": [int(b) for b in predicted],
          "pass_at_1": [float(x) for x in p1], "mean_scores": [float(x) for x in scores],
          "samples_per_problem": int(correct.shape[1]),
          "agreement": bin_agreement(oracle, predicted, num_bins, p1, scores),
          "split_half": split_half_stability(correct, num_bins),
          "prediction_cost": {"generations": float(prediction_generations),
                              "flops": float(prediction_flops)}},
      "curves": {k: [_strip(p) for p in v] for k, v in curves.items()}, "curve_keys": keys,
      "baselines": {"best_of_n": [_strip(p) for p in bon], "beam": [_strip(p) for p in beam],
                    "revisions_parallel": [_strip(p) for p in parallel],
                    "revisions_sequential": [_strip(p) for p in sequential]},
      "candidates": candidates, "efficiency": eff, "claims": claims, "exchange": exchange}
