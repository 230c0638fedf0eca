"""Verifier quality: best-of-N curves (the paper's Figure 3, left), and whether the
verifier tells a right sample from a wrong one of the SAME problem.

Inputs are stored arrays: M graded samples per problem, each verifier's score
per sample, and held-out step scores with their Monte-Carlo labels.

An AUC pooled over problems mostly ranks problems by difficulty (easy problems
have high scores and right samples); search chooses among samples of one
problem, so what matters is the within-problem view:

* within-problem AUC: over problems with both right and wrong samples, each
  problem's AUC (right vs wrong samples), averaged; and the pairwise ranking
  accuracy (all within-problem right/wrong pairs pooled).
* step AUC within problems: the same for steps against their MC labels.
* calibration: the reliability curve of final scores against correctness.
* exploitation: the expected score and correctness of the top-scored sample of
  a random N-subset as N grows (exact, not sampled). A verifier that is
  exploited has its top score rise while the top sample's correctness falls.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from ttc_jax.analysis import stats as stats_lib
from ttc_jax.verifiers import aggregation
from ttc_jax.verifiers import names


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
  """Area under the ROC curve (Mann-Whitney U; ties count one half)."""
  scores = np.asarray(scores, np.float64)
  positive = np.asarray(positive, bool)
  n1, n0 = positive.sum(), (~positive).sum()
  if n1 == 0 or n0 == 0:
    return float("nan")
  from scipy import stats  # here, not at the top: 1.7 s of every process start
  ranks = stats.rankdata(scores)
  return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  order = np.argsort(-np.asarray(scores), kind="stable")
  pos = np.asarray(positive, bool)[order]
  tpr = np.concatenate([[0], np.cumsum(pos) / max(pos.sum(), 1)])
  fpr = np.concatenate([[0], np.cumsum(~pos) / max((~pos).sum(), 1)])
  return fpr, tpr


def _pearson(x, y) -> float:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.size < 2 or x.std() == 0 or y.std() == 0:
    return float("nan")  # undefined for a constant
  return float(np.corrcoef(x, y)[0, 1])


def powers_of_two(m: int) -> list[int]:
  ns, n = [], 1
  while n <= m:
    ns.append(n)
    n *= 2
  return ns


def within_problem_auc(scores: np.ndarray, positive: np.ndarray,
                       groups: np.ndarray | None = None, seed: int = 0) -> dict:
  """AUC of ``scores`` for ``positive`` within each group (problem), over groups
  with both classes: the mean per-group AUC with its bootstrap interval over
  groups, and the pairwise ranking accuracy (within-group pairs pooled; ties 1/2).

  scores, positive: (P, M) arrays (group = row), or 1-D with ``groups`` ids.
  """
  scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
  if groups is None:
    if scores.ndim != 2 or scores.shape != positive.shape:
      raise ValueError(f"scores {scores.shape} and positive {positive.shape}: expected equal "
                       "(problems, samples) shapes.")
    rows = [(scores[i], positive[i]) for i in range(scores.shape[0])]
  else:
    groups = np.asarray(groups)
    rows = [(scores[groups == g], positive[groups == g]) for g in np.unique(groups)]
  aucs, pairs, right = _per_group_aucs(rows)
  out = {"problems": len(aucs), "of": len(rows), "pairs": int(pairs),
         "pairwise_accuracy": float(right / pairs) if pairs else float("nan")}
  if aucs:
    est = stats_lib.mean_ci(aucs, seed=seed, name="per-problem AUC")
    out.update(mean_auc=est.mean, mean_auc_ci=[est.low, est.high])
  else:
    out.update(mean_auc=float("nan"), mean_auc_ci=[float("nan")] * 2)
  return out


def _per_group_aucs(rows) -> tuple[list[float], int, float]:
  """Per (scores, positive) group with both classes its AUC (ties 1/2); the pooled number of
  within-group pairs and of pairs ranked right."""
  aucs, pairs, right = [], 0, 0.0
  for s, y in rows:
    pos, neg = s[y], s[~y]
    if pos.size and neg.size:
      wins = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
      aucs.append(wins / (pos.size * neg.size))
      pairs += pos.size * neg.size
      right += wins
  return aucs, pairs, right


def mean_within_auc(scores: np.ndarray, positive: np.ndarray) -> float:
  """The mean per-problem AUC of :func:`within_problem_auc` alone (no interval): ``scores``
  and ``positive`` (problems, samples); NaN when no problem has both classes."""
  scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
  aucs, _, _ = _per_group_aucs(zip(scores, positive))
  return float(np.mean(aucs)) if aucs else float("nan")


def calibrate_separation(target: float, sound: np.ndarray, correct: np.ndarray,
                         noise: np.ndarray, *, max_separation: float = 20.0,
                         tol: float = 1e-4) -> tuple[float, float]:
  """The separation d at which the synthetic verifier's scores d * (+/-1 by ``sound``) +
  ``noise`` reach mean within-problem AUC ``target`` for ``correct`` (all (problems,
  samples): the calibration problems' samples, their soundness by the step checker and their
  fixed noise draws): (d, the AUC reached). The AUC does not decrease with d (a pair's order
  changes only from wrong to right), so bisection finds the smallest d reaching the target
  (within ``tol`` of d); a target beyond the AUC at ``max_separation`` gets that separation
  and its AUC (labels and outcomes disagree on some samples)."""
  if not 0.5 <= target < 1:
    raise ValueError(f"target within-problem AUC {target!r}: expected a number in [0.5, 1).")
  sign = np.where(np.asarray(sound, bool), 1.0, -1.0)
  noise = np.asarray(noise, np.float64)
  auc = lambda d: mean_within_auc(d * sign + noise, correct)
  lo, hi = 0.0, float(max_separation)
  if not np.isfinite(auc(hi)):
    raise ValueError("no calibration problem has both right and wrong samples.")
  if auc(hi) < target:
    return hi, auc(hi)
  if auc(lo) >= target:
    return lo, auc(lo)
  while hi - lo > tol:
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if auc(mid) < target else (lo, mid)
  return hi, auc(hi)


def calibration(scores: np.ndarray, correct: np.ndarray, bins: int = 10) -> dict:
  """Reliability curve: scores in ``bins`` equal-width bins of [0, 1]; per bin the
  mean score, the fraction correct and the count; ECE = sum(count * |gap|) / total."""
  s = np.clip(np.asarray(scores, np.float64).ravel(), 0.0, 1.0)
  y = np.asarray(correct, np.float64).ravel()
  which = np.minimum((s * bins).astype(int), bins - 1)
  count = np.bincount(which, minlength=bins)
  mean_s = np.bincount(which, s, bins) / np.maximum(count, 1)
  frac = np.bincount(which, y, bins) / np.maximum(count, 1)
  ece = float(np.sum(count * np.abs(mean_s - frac)) / max(s.size, 1))
  keep = count > 0
  return {"mean_score": [float(x) for x in mean_s[keep]],
          "frac_correct": [float(x) for x in frac[keep]],
          "count": [int(x) for x in count[keep]], "ece": ece, "bins": bins}


def top_of_subsets(scores: np.ndarray, values: np.ndarray, ns: Sequence[int]) -> np.ndarray:
  """(len(ns), P): the expected ``values`` of the top-scored sample of a uniformly
  random N-subset of each problem's M samples, exactly.

  The sample ranked r (0 = best) tops a random N-subset with probability
  C(M-1-r, N-1) / C(M, N). Tied scores share their probability equally (a random
  ordered subset breaks ties uniformly).
  """
  scores, values = np.asarray(scores, np.float64), np.asarray(values, np.float64)
  p, m = scores.shape
  order = np.argsort(-scores, axis=1, kind="stable")
  s_sorted = np.take_along_axis(scores, order, 1)
  v_sorted = np.take_along_axis(values, order, 1)
  for i in range(p):  # ties: each tied sample stands for the group's mean value
    _, start, counts = np.unique(-s_sorted[i], return_index=True, return_counts=True)
    for a, c in zip(start, counts):
      if c > 1:
        v_sorted[i, a:a + c] = v_sorted[i, a:a + c].mean()
  out = np.zeros((len(ns), p))
  r = np.arange(m)
  for k, n in enumerate(ns):
    w = np.array([math.comb(m - 1 - j, n - 1) for j in r], np.float64) / math.comb(m, n)
    out[k] = v_sorted @ w
  return out


def evaluate(answers: Sequence[Sequence[str | None]], truth: Sequence[str],
             correct: np.ndarray, scores: Mapping[str, np.ndarray], auc_scores: np.ndarray,
             auc_labels: np.ndarray, auc_groups: np.ndarray | None = None, *,
             subsamples: int, seed: int) -> dict:
  """Majority, vanilla and weighted best-of-N per verifier with 95% intervals over
  problems, within-problem AUC, calibration, the exploitation curve, step AUCs.

  Args:
    answers: per problem, its M samples' final answers (None: none).
    truth: per problem, the normalized reference answer.
    correct: (P, M) bool, each sample's correctness.
    scores: verifier name -> (P, M) score per sample ('prm_last', 'orm', ...).
    auc_scores / auc_labels: held-out step scores of the PRM and their MC labels;
      auc_groups: the problem of each step (for the within-problem step AUC).
    subsamples: random N-subsets per (problem, N).
  """
  correct = np.asarray(correct, bool)
  p, m = correct.shape
  ns = powers_of_two(m)
  per = {"majority": aggregation.per_problem_accuracy(
      answers, truth, None, ns, ["majority"], subsamples, seed)["majority"]}
  within, calib, exploit = {}, {}, {}
  for name, s in scores.items():
    s = np.asarray(s, np.float64).reshape(p, m)
    c = aggregation.per_problem_accuracy(answers, truth, s, ns, ["vanilla", "weighted"],
                                         subsamples, seed)
    per[f"{name}/vanilla"], per[f"{name}/weighted"] = c["vanilla"], c["weighted"]
    within[name] = within_problem_auc(s, correct, seed=seed)
    calib[name] = calibration(s, correct)
    exploit[name] = {"top_score": [float(x) for x in top_of_subsets(s, s, ns).mean(1)],
                     "top_correct": [float(x) for x in top_of_subsets(s, correct, ns).mean(1)]}
  curves = {k: [float(x) for x in v.mean(axis=1)] for k, v in per.items()}
  ci = {k: [stats_lib.mean_ci(row, seed=seed).to_json()["ci"] for row in v]
        for k, v in per.items()}
  pass1 = float(np.mean(correct))
  positive = np.asarray(auc_labels) >= 0.5
  if not np.size(auc_labels):  # no MC-labelled steps: the step AUC is not measured
    auc = {"prm_step_auc": None, "num_steps": 0}
  else:
    auc = {"prm_step_auc": roc_auc(auc_scores, positive),
           "num_steps": int(np.size(auc_labels)), "num_positive": int(positive.sum()),
           "pearson_r": _pearson(auc_scores, auc_labels),
           "positive_means": "MC label >= 0.5"}
  if auc_groups is not None and np.size(auc_labels):
    auc["prm_step_auc_within_problems"] = within_problem_auc(auc_scores, positive, auc_groups,
                                                             seed=seed)
  at_max = {k: float(v[-1]) for k, v in curves.items()}
  result = {"n": ns, "curves": curves, "curves_ci": ci, "pass_at_1": pass1,
            "pass_at_1_ci": stats_lib.mean_ci(correct.mean(axis=1), seed=seed).to_json()["ci"],
            "auc": auc, "within_problem": within, "calibration": calib, "exploitation": exploit,
            "num_problems": p, "samples_per_problem": m, "subsamples": subsamples,
            "accuracy_at_max_n": at_max}
  prms = [k for k in within if names.model_of(k) == names.PRM]
  best = max(within, key=lambda k: within[k]["mean_auc"] if k in prms else -1, default=None)
  if best is not None:
    result["best_within_problem_auc"] = {"verifier": best, **within[best]}
  if "prm_last/weighted" in at_max:
    result["prm_weighted_minus_pass_at_1"] = at_max["prm_last/weighted"] - pass1
    if "orm/weighted" in at_max:
      result["prm_vs_orm_weighted_at_max_n"] = at_max["prm_last/weighted"] - at_max["orm/weighted"]
  # Paired comparisons over problems at every N (the report's claims rest on these):
  # weighted best-of-N vs majority, vanilla best-of-N vs pass@1, each PRM vs the ORM.
  pairs = [(f"{v}/weighted", "majority") for v in scores]
  pairs += [(f"{v}/vanilla", "pass@1") for v in scores]
  if "orm" in scores:
    pairs += [(f"{v}/weighted", "orm/weighted") for v in scores
              if names.model_of(v) == names.PRM]
  per_pass1 = np.broadcast_to(correct.mean(axis=1), (len(ns), p))
  result["paired"] = {
      f"{a} vs {b}": [stats_lib.paired_diff(per[a][i], per_pass1[i] if b == "pass@1" else per[b][i],
                                            names=(a, b), seed=seed).to_json()
                      for i in range(len(ns))]
      for a, b in pairs}
  return result, per


def step_auc_arrays(step_scores: Sequence[np.ndarray], labels: np.ndarray,
                    ends: Sequence[Sequence[int]], problem_index: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The (score, MC label, problem) of every scored step of labelled samples, flattened for
  the step AUC: ``step_scores[i]`` scores sample i's steps (``ends[i]``); ``labels`` (samples,
  max steps). A span with no score (NaN: an adapted PRM's span that is no step) is left out."""
  idx = range(len(step_scores))
  scores = np.concatenate([np.asarray(s) for s in step_scores]).astype(np.float64)
  flat = np.concatenate([labels[i, :len(ends[i])] for i in idx]).astype(np.float64)
  groups = np.concatenate([np.full(len(ends[i]), problem_index[i]) for i in idx]).astype(
      np.int64)
  steps = ~np.isnan(scores)
  return scores[steps], flat[steps], groups[steps]
