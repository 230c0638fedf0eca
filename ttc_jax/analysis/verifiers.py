"""Verifier quality: best-of-N curves and step-level ROC AUC (the paper's Figure 3, left).

Inputs are stored arrays: M graded samples per problem, each verifier's score
per sample, and held-out step scores with their Monte-Carlo labels.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy import stats

from ttc_jax.verifiers import aggregation


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
  """Area under the ROC curve (Mann-Whitney U; ties count one half)."""
  scores = np.asarray(scores, np.float64)
  positive = np.asarray(positive, bool)
  n1, n0 = positive.sum(), (~positive).sum()
  if n1 == 0 or n0 == 0:
    return float("nan")
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


def evaluate(answers: Sequence[Sequence[str | None]], truth: Sequence[str],
             correct: np.ndarray, scores: Mapping[str, np.ndarray], auc_scores: np.ndarray,
             auc_labels: np.ndarray, *, subsamples: int, seed: int) -> dict:
  """Accuracy of majority, vanilla and weighted best-of-N per verifier, and step AUC.

  Args:
    answers: per problem, its M samples' final answers (None: none).
    truth: per problem, the normalized reference answer.
    correct: (P, M) bool, each sample's correctness.
    scores: verifier name -> (P, M) score per sample ('prm_last', 'orm', ...).
    auc_scores / auc_labels: held-out step scores of the PRM and their MC labels.
    subsamples: random N-subsets per (problem, N).
  """
  p, m = np.shape(correct)
  ns = powers_of_two(m)
  curves = {"majority": [float(x) for x in aggregation.accuracy_curves(
      answers, truth, None, ns, ["majority"], subsamples, seed)["majority"]]}
  for name, s in scores.items():
    c = aggregation.accuracy_curves(answers, truth, np.asarray(s).reshape(p, m), ns,
                                    ["vanilla", "weighted"], subsamples, seed)
    curves[f"{name}/vanilla"] = [float(x) for x in c["vanilla"]]
    curves[f"{name}/weighted"] = [float(x) for x in c["weighted"]]
  pass1 = float(np.mean(correct))
  positive = np.asarray(auc_labels) >= 0.5
  auc = {"prm_step_auc": roc_auc(auc_scores, positive),
         "num_steps": int(np.size(auc_labels)), "num_positive": int(positive.sum()),
         "pearson_r": _pearson(auc_scores, auc_labels),
         "positive_means": "MC label >= 0.5"}
  at_max = {k: float(v[-1]) for k, v in curves.items()}
  result = {"n": ns, "curves": curves, "pass_at_1": pass1, "auc": auc, "num_problems": p,
            "samples_per_problem": m, "subsamples": subsamples,
            "accuracy_at_max_n": at_max}
  if "prm_last/weighted" in at_max:
    result["prm_weighted_minus_pass_at_1"] = at_max["prm_last/weighted"] - pass1
    if "orm/weighted" in at_max:
      result["prm_vs_orm_weighted_at_max_n"] = at_max["prm_last/weighted"] - at_max["orm/weighted"]
  return result
