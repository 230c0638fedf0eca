"""Answer selection across N samples: the one implementation every caller uses.

* majority: the final answer given by the most samples.
* vanilla (best-of-N): the answer of the single highest-scoring sample.
* weighted (best-of-N weighted, the paper's default): the answer with the
  largest sum of verifier scores over the samples that give it.

Samples without a final answer (None) never win a vote; vanilla best-of-N can
still pick one (no answer: wrong).

Ties are broken deterministically by sample order: among tied answers, the one
whose first sample comes earliest wins (vanilla: the earliest of the tied
samples). Sums are accumulated in sample order, so a result does not depend on
anything but the samples, their order and their scores. Search passes its
candidates in the order it produced them; :func:`accuracy_curves` draws each
N-subset as a random ordered subset, so its ties fall uniformly at random.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

METHODS = ("majority", "vanilla", "weighted")


def _check_method(method: str, scores) -> None:
  if method not in METHODS:
    raise ValueError(f"selection method {method!r}: expected one of {METHODS}.")
  if method != "majority" and scores is None:
    raise ValueError(f"selection method {method!r} needs verifier scores.")


def answer_ids(answers: Sequence[str | None]) -> tuple[np.ndarray, list[str]]:
  """Integer id per sample (-1: no answer) and the distinct answers, first seen first."""
  distinct: dict[str, int] = {}
  ids = np.array([-1 if a is None else distinct.setdefault(a, len(distinct)) for a in answers],
                 np.int64)
  return ids, list(distinct)


def choose(ids: np.ndarray, scores: np.ndarray | None, method: str) -> np.ndarray:
  """Chosen answer id per row (-1: none) of ``ids`` (R, N): each row is an ordered
  set of samples; ``scores`` (R, N) are their verifier scores."""
  _check_method(method, scores)
  ids = np.asarray(ids, np.int64)
  r, n = ids.shape
  if method == "vanilla":
    best = np.argmax(np.asarray(scores, np.float64), axis=1)  # first maximum
    return ids[np.arange(r), best]
  num = int(ids.max()) + 1 if ids.size else 0
  if num == 0:
    return np.full(r, -1)
  weight = np.zeros((r, num), np.float64)
  first = np.full((r, num), n, np.int64)
  rows = np.arange(r)
  for j in range(n):  # in sample order: sums do not depend on anything else
    a = ids[:, j]
    ok = a >= 0
    w = 1.0 if method == "majority" else np.asarray(scores, np.float64)[ok, j]
    weight[rows[ok], a[ok]] += w
    first[rows[ok], a[ok]] = np.minimum(first[rows[ok], a[ok]], j)
  present = first < n
  weight = np.where(present, weight, -np.inf)
  tied = present & (weight == weight.max(axis=1, keepdims=True))
  choice = np.argmin(np.where(tied, first, n + 1), axis=1)
  return np.where(present.any(axis=1), choice, -1)


def select_answer(answers: Sequence[str | None], scores: Sequence[float] | None,
                  method: str = "weighted") -> str | None:
  """The answer chosen among one problem's samples (in their order), or None."""
  if not len(answers):
    _check_method(method, scores)
    return None
  ids, distinct = answer_ids(answers)
  s = None if scores is None else np.asarray(scores, np.float64)[None]
  chosen = int(choose(ids[None], s, method)[0])
  return None if chosen < 0 else distinct[chosen]


def accuracy_curves(answers: Sequence[Sequence[str | None]], correct_answers: Sequence[str],
                    scores: np.ndarray | None, ns: Sequence[int], methods: Sequence[str],
                    subsamples: int, seed: int = 0) -> dict[str, list[float]]:
  """Mean accuracy of each method at each N, averaged over ``subsamples`` N-subsets
  (the mean over problems of :func:`per_problem_accuracy`)."""
  per = per_problem_accuracy(answers, correct_answers, scores, ns, methods, subsamples, seed)
  return {method: [float(x) for x in a.mean(axis=1)] for method, a in per.items()}


def per_problem_accuracy(answers: Sequence[Sequence[str | None]],
                         correct_answers: Sequence[str], scores: np.ndarray | None,
                         ns: Sequence[int], methods: Sequence[str], subsamples: int,
                         seed: int = 0) -> dict[str, np.ndarray]:
  """Per method, a (len(ns), P) array: problem p's accuracy at N, the fraction of
  ``subsamples`` random ordered N-subsets of its M samples whose choice is right.

  Args:
    answers: per problem, its M samples' normalized final answers (None: none).
    correct_answers: per problem, the normalized reference answer.
    scores: (P, M) verifier scores, or None (majority only).
    ns: subset sizes, each <= M.
    methods: subset of METHODS.
    subsamples: random ordered subsets per (problem, N).
  """
  num = len(answers)
  m = len(answers[0])
  if any(len(a) != m for a in answers):
    raise ValueError("every problem needs the same number of samples.")
  if max(ns) > m:
    raise ValueError(f"N={max(ns)} exceeds the {m} samples per problem.")
  if scores is not None and np.shape(scores) != (num, m):
    raise ValueError(f"scores has shape {np.shape(scores)}; expected {(num, m)}.")
  for method in methods:
    _check_method(method, scores)
  rng = np.random.default_rng(seed)
  out = {method: np.zeros((len(ns), num)) for method in methods}
  for i, n in enumerate(ns):
    for p in range(num):
      ids, distinct = answer_ids(answers[p])
      right = np.array([a == correct_answers[p] for a in distinct] + [False])  # -1 -> False
      subsets = np.argsort(rng.random((subsamples, m)), axis=1)[:, :n]
      s = None if scores is None else np.asarray(scores[p], np.float64)[subsets]
      for method in methods:
        out[method][i, p] = right[choose(ids[subsets], s, method)].mean()
  return out
