"""Answer aggregation across N samples: majority vote, vanilla and weighted best-of-N.

* majority: the most frequent final answer.
* best_of_n (vanilla): the answer of the single highest-scoring sample.
* weighted: the answer with the largest sum of verifier scores over the samples
  that give it (the paper's "best-of-N weighted").
Samples without a final answer never win a vote; vanilla best-of-N can still pick
one (and is then wrong). Ties are broken uniformly at random (seeded).

``accuracy_curves`` estimates the accuracy at each N as the mean over many
random N-subsets of each problem's samples, not one draw.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

METHODS = ("majority", "best_of_n", "weighted")


def _answer_ids(answers: Sequence[str | None]) -> tuple[np.ndarray, list[str]]:
  distinct: dict[str, int] = {}
  ids = np.array([-1 if a is None else distinct.setdefault(a, len(distinct)) for a in answers],
                 np.int64)
  return ids, list(distinct)


def select(answers_ids: np.ndarray, scores: np.ndarray | None, subsets: np.ndarray,
           num_answers: int, method: str, rng: np.random.Generator) -> np.ndarray:
  """Chosen answer id (or -1) for each subset (R, N) of one problem's samples."""
  ids = answers_ids[subsets]  # (R, N)
  r, n = ids.shape
  noise = rng.random((r, max(num_answers, 1))) * 1e-9  # random tie-breaking
  if method == "best_of_n":
    s = scores[subsets] + rng.random((r, n)) * 1e-12
    return ids[np.arange(r), np.argmax(s, axis=1)]
  if num_answers == 0:
    return np.full(r, -1)
  onehot = (ids[..., None] == np.arange(num_answers)).astype(np.float64)  # (R, N, A)
  if method == "majority":
    weight = onehot.sum(1)
  elif method == "weighted":
    weight = (onehot * scores[subsets][..., None]).sum(1)
  else:
    raise ValueError(f"method {method!r}: expected one of {METHODS}.")
  has = onehot.sum(1) > 0
  weight = np.where(has, weight + noise, -np.inf)
  choice = np.argmax(weight, axis=1)
  return np.where(has.any(1), choice, -1)


def accuracy_curves(answers: Sequence[Sequence[str | None]], correct_answers: Sequence[str],
                    scores: np.ndarray | None, ns: Sequence[int], methods: Sequence[str],
                    subsamples: int, seed: int = 0) -> dict[str, list[float]]:
  """Mean accuracy of each method at each N, averaged over ``subsamples`` N-subsets.

  Args:
    answers: per problem, its M samples' normalized final answers (None: none).
    correct_answers: per problem, the normalized reference answer.
    scores: (P, M) verifier scores, or None (majority only).
    ns: subset sizes, each <= M.
    methods: subset of METHODS.
    subsamples: random subsets per (problem, N).
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
    if method not in METHODS:
      raise ValueError(f"method {method!r}: expected one of {METHODS}.")
    if method != "majority" and scores is None:
      raise ValueError(f"method {method!r} needs verifier scores.")
  rng = np.random.default_rng(seed)
  out = {method: [] for method in methods}
  for n in ns:
    acc = {method: 0.0 for method in methods}
    for p in range(num):
      ids, distinct = _answer_ids(answers[p])
      right = np.array([a == correct_answers[p] for a in distinct] + [False])  # -1 -> False
      subsets = np.argsort(rng.random((subsamples, m)), axis=1)[:, :n]
      for method in methods:
        s = None if scores is None else np.asarray(scores[p], np.float64)
        chosen = select(ids, s, subsets, len(distinct), method, rng)
        acc[method] += right[chosen].mean()
    for method in methods:
      out[method].append(acc[method] / num)
  return out
