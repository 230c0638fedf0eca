"""Adaptive allocation: best-of-N in rounds, one budget shared by the problems.

Every problem first draws ``first`` samples. After each round, from what its samples so far
show (no label), a problem is *settled* when its leading answer holds at least ``settle`` of
its vote (the verifier-weighted vote of best-of-N weighted, or the plain count for majority)
and *hopeless* when it holds less than ``hopeless``; both are decided only once the problem
has ``min_samples``. Every problem neither settled nor hopeless draws as many more samples as
it has (rounds double), until the budget, ``budget`` x problems generations, is spent: when
it cannot pay every open problem's round, each gets an equal share and the remainder goes
one sample each to the most contested (lowest leading share, then problem order). The answer
is chosen over the samples drawn, as best-of-N chooses it.

A problem's j-th sample is the one best-of-N would draw as its j-th (the same key: seed,
stream, problem, sample j), whenever it is drawn, so allocating over the first samples of a
stored pool of each problem's samples is exactly sampling in rounds (:func:`allocate` reads a
sample only once the allocation has drawn it). The allocation is a function of the set of
problems (they share the budget); each sample is not. With ``settle`` > 1 and ``hopeless``
= 0 every problem draws ``budget``: best-of-N.

The parameters are chosen on train problems only (:func:`choose`), never on the problems they
are applied to.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Sequence

import numpy as np

from ttc_jax.verifiers import aggregation

SELECTIONS = ("weighted", "majority")
NEVER = 1.01  # a settle share no vote reaches: never settle


@dataclasses.dataclass(frozen=True)
class AdaptiveAllocation:
  """Best-of-N in rounds over a shared budget (see the module docstring)."""

  budget: float  # average generations per problem: the total is budget x problems
  first: int = 1  # samples per problem in the first round
  min_samples: int = 2  # samples a problem has before it may be settled or given up
  settle: float = NEVER  # leading answer's share of the vote that settles a problem
  hopeless: float = 0.0  # leading share below which a problem is given up (0: never)
  selection: str = "weighted"

  name = "adaptive"

  def __post_init__(self):
    if not (isinstance(self.budget, (int, float)) and not isinstance(self.budget, bool)
            and self.budget >= 1):
      raise ValueError(f"adaptive allocation: budget={self.budget!r}: expected a number >= 1 "
                       "(generations per problem).")
    for field in ("first", "min_samples"):
      v = getattr(self, field)
      if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"adaptive allocation: {field}={v!r}: expected an integer >= 1.")
    if self.first > self.budget:
      raise ValueError(f"adaptive allocation: first={self.first} exceeds the budget "
                       f"{self.budget:g} per problem.")
    if not 0.0 <= self.hopeless <= 1.0 or not 0.0 < self.settle:
      raise ValueError(f"adaptive allocation: settle={self.settle!r}, hopeless="
                       f"{self.hopeless!r}: expected shares (settle > 0, 0 <= hopeless <= 1).")
    if self.selection not in SELECTIONS:
      raise ValueError(f"adaptive allocation: selection={self.selection!r}: expected one of "
                       f"{SELECTIONS}.")

  def params(self) -> dict:
    return {k: getattr(self, k) for k in ("first", "min_samples", "settle", "hopeless")}


@dataclasses.dataclass(frozen=True)
class Allocation:
  """What :func:`allocate` did: samples drawn per problem, the chosen answer id per problem
  (-1: none) and the rounds."""

  counts: np.ndarray  # (problems,) samples drawn
  chosen: np.ndarray  # (problems,) answer id chosen over them (-1: none)
  rounds: int
  settled: np.ndarray  # (problems,) bool: stopped as settled
  hopeless: np.ndarray  # (problems,) bool: stopped as hopeless

  @property
  def generations(self) -> float:
    """Average generations per problem."""
    return float(self.counts.mean())


def leading_shares(ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """(problems, pool + 1): the leading answer's share of each problem's vote over its first n
  samples, for every n (0 when nothing was answered)."""
  num, pool = ids.shape
  kinds = int(ids.max()) + 1 if ids.size else 0
  votes = np.zeros((num, kinds + 1))  # the last column: samples without an answer
  out = np.zeros((num, pool + 1))
  rows = np.arange(num)
  for j in range(pool):
    votes[rows, np.where(ids[:, j] >= 0, ids[:, j], kinds)] += weights[:, j]
    total = votes.sum(axis=1)
    lead = votes[:, :kinds].max(axis=1) if kinds else np.zeros(num)
    out[:, j + 1] = np.where(total > 0, lead / np.where(total > 0, total, 1.0), 0.0)
  return out


def _weights(scores: np.ndarray, selection: str) -> np.ndarray:
  return np.ones_like(scores) if selection == "majority" else scores


def _check_pool(ids, scores) -> tuple[np.ndarray, np.ndarray]:
  ids = np.asarray(ids, np.int64)
  scores = np.asarray(scores, np.float64)
  if ids.ndim != 2 or ids.shape != scores.shape:
    raise ValueError(f"adaptive allocation: ids {ids.shape} and scores {scores.shape}: expected "
                     "the same (problems, pool) shape.")
  if np.isnan(scores).any() or (scores < 0).any():
    raise ValueError("adaptive allocation: expected verifier scores >= 0; a sample's score is "
                     "NaN or negative.")
  return ids, scores


def allocate(strategy: AdaptiveAllocation, ids: np.ndarray, scores: np.ndarray,
             shares: np.ndarray | None = None) -> Allocation:
  """Run ``strategy`` over pools of samples: ``ids`` (problems, pool) answer ids (-1: no
  answer; :func:`pool_ids`), ``scores`` the verifier's score of each (>= 0). A decision reads
  a problem's samples only up to what it has drawn (``shares``: :func:`leading_shares` of the
  same pool and selection, if already computed); no problem draws more than the pool.
  Nothing here sees a label."""
  ids, scores = _check_pool(ids, scores)
  num, pool = ids.shape
  weights = _weights(scores, strategy.selection)
  shares = leading_shares(ids, weights) if shares is None else shares
  total = int(np.floor(strategy.budget * num + 1e-9))
  counts = np.full(num, min(strategy.first, pool), np.int64)
  settled = np.zeros(num, bool)
  hopeless = np.zeros(num, bool)
  rows_all = np.arange(num)
  rounds = 1
  while True:
    share = shares[rows_all, counts]  # what each problem's drawn samples say
    decided = counts >= strategy.min_samples
    settled |= decided & ~hopeless & (share >= strategy.settle)
    hopeless |= decided & ~settled & (share < strategy.hopeless)
    open_ = ~settled & ~hopeless & (counts < pool)
    left = total - int(counts.sum())
    if not open_.any() or left <= 0:
      break
    want = np.minimum(counts, pool - counts)  # double, within the pool
    rows = np.flatnonzero(open_)
    if want[rows].sum() <= left:
      counts[rows] += want[rows]
    else:  # equal shares, then one more each to the most contested
      each = np.minimum(want[rows], left // len(rows))
      counts[rows] += each
      left -= int(each.sum())
      for p in sorted(rows, key=lambda p: (share[p], p)):
        if left <= 0:
          break
        if counts[p] < pool:
          counts[p] += 1
          left -= 1
    rounds += 1
  masked = np.where(np.arange(pool)[None] < counts[:, None], ids, -1)
  chosen = aggregation.choose(masked, weights if strategy.selection == "weighted" else None,
                              strategy.selection)
  return Allocation(counts=counts, chosen=chosen, rounds=rounds, settled=settled,
                    hopeless=hopeless)


def outcomes(alloc: Allocation, ids: np.ndarray, correct: np.ndarray) -> np.ndarray:
  """Each problem's 0/1 outcome: whether the chosen answer is right (a sample with the chosen
  id is correct; no answer: wrong). Read after the allocation, never by it."""
  ids = np.asarray(ids, np.int64)
  correct = np.asarray(correct, bool)
  out = np.zeros(len(ids))
  for p, a in enumerate(alloc.chosen):
    if a >= 0:
      out[p] = float(correct[p][ids[p] == a].any())
  return out


def best_of_n(n: int, selection: str = "weighted") -> AdaptiveAllocation:
  """Best-of-N as an allocation: every problem draws exactly ``n`` (one round)."""
  return AdaptiveAllocation(budget=n, first=n, min_samples=n, settle=NEVER, hopeless=0.0,
                            selection=selection)


# The parameters :func:`choose` tries: best-of-N (first = budget, never settle) is among them.
GRID = {"first": (1, 2, 4), "min_samples": (2, 4, 8), "settle": (0.6, 0.7, 0.8, 0.9, NEVER),
        "hopeless": (0.0, 0.2, 0.3, 0.4)}


def candidates(budget: float, selection: str = "weighted", grid: dict | None = None
               ) -> list[AdaptiveAllocation]:
  """Every strategy of ``grid`` (default :data:`GRID`) at ``budget``, best-of-N first."""
  grid = GRID if grid is None else grid
  out = [best_of_n(int(budget), selection)] if float(budget).is_integer() else []
  for first, m, s, h in itertools.product(grid["first"], grid["min_samples"], grid["settle"],
                                          grid["hopeless"]):
    if first <= budget and h < s:
      out.append(AdaptiveAllocation(budget=budget, first=first, min_samples=m, settle=s,
                                    hopeless=h, selection=selection))
  return out


@dataclasses.dataclass(frozen=True)
class Choice:
  strategy: AdaptiveAllocation
  train_accuracy: float
  train_generations: float
  tried: int


def choose(budget: float, ids: np.ndarray, scores: np.ndarray, correct: np.ndarray,
           selection: str = "weighted", grid: dict | None = None) -> Choice:
  """The strategy of the grid with the best accuracy on these (train) problems at ``budget``;
  ties go to fewer generations, then to the earlier candidate (best-of-N first)."""
  ids, scores = _check_pool(ids, scores)
  shares = leading_shares(ids, _weights(scores, selection))
  best = None
  tried = candidates(budget, selection, grid)
  for k, strat in enumerate(tried):
    alloc = allocate(strat, ids, scores, shares)
    acc = float(outcomes(alloc, ids, correct).mean())
    key = (-acc, alloc.generations, k)
    if best is None or key < best[0]:
      best = (key, strat, acc, alloc.generations)
  _, strat, acc, gens = best
  return Choice(strategy=strat, train_accuracy=acc, train_generations=gens, tried=len(tried))


def pool_ids(answers: Sequence[Sequence[str | None]]) -> np.ndarray:
  """(problems, pool) answer ids from each problem's answers (ids per problem)."""
  return np.stack([aggregation.answer_ids(list(a))[0] for a in answers])
