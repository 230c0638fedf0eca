"""Step-level tree searches over the shared loop of :mod:`ttc_jax.search.tree`: beam
search (and lookahead), DVTS and particle filtering. Each is a frozen dataclass
whose ``select`` says, per problem and round, which unfinished rows continue.

* Beam search (the paper): keep the N / M best rows, expand each M ways. The N
  best finished candidates are returned (search-and-learn: beams finishing in
  different rounds can add up to more than N).
* Lookahead (the paper): beam search whose selection score is the PRM score
  after a k-step greedy rollout of each candidate; costs N x (k + 1) generations.
* Beam search with a process advantage (Setlur et al., arXiv 2410.08146): rows ranked by
  Q + alpha x A, A = Q(s_h) - Q(s_{h-1}) the step's change of the verifier's score
  (``advantage`` = alpha; 0: the paper's beam search). Among siblings of one parent A
  only shifts Q, so it reorders rows of different parents: those whose last step raised
  the score over those that merely inherited a high one.
* DVTS (Beeching et al. 2024, search-and-learn): N / M independent subtrees, each
  a beam search of width M that keeps its one best row per round and expands it
  M ways; subtrees never compete, which keeps the N solutions diverse. Like our
  beam search (and unlike search-and-learn, which stops a subtree whose best
  continuation finished), every finished row joins the pool and the subtree goes
  on from its best unfinished row; the N best finished are returned.
* Particle filtering (Puri et al. 2025, arXiv 2502.01618; its_hub): N particles;
  each round the unfinished ones take one step, then N particles are drawn with
  replacement (multinomial) from all current ones, finished included, with
  probability softmax(logit(PRM score) / temperature); a finished particle drawn
  twice counts twice. Resampling stops when a problem has no unfinished particle.
  The final particles are returned (duplicates included, so weighted voting
  counts them with their multiplicity).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from ttc_jax.search import common
from ttc_jax.search import tree


class _TreeSearch:
  """What the tree strategies share: run on the tree loop; return the N best finished."""

  def final(self, pool):
    return sorted(pool, key=lambda c: -c.score)[:self.n]

  def run(self, ctx: common.SearchContext, problems: Sequence) -> list[common.SearchResult]:
    return tree.tree_search(self, ctx, problems)


@dataclasses.dataclass(frozen=True)
class BeamSearch(_TreeSearch):
  """Beam search with budget ``n`` and beam width ``width`` (M); ``lookahead`` = k."""

  n: int
  width: int
  lookahead: int = 0
  max_rounds: int = 40
  advantage: float = 0.0  # alpha: rows ranked by Q + alpha x (Q(s_h) - Q(s_{h-1}))

  def __post_init__(self):
    if self.n < 1 or self.width < 1 or self.n % self.width:
      raise ValueError(f"beam search needs n >= 1 and a beam width M dividing n; got n={self.n}, "
                       f"M={self.width}.")
    if self.lookahead < 0 or self.max_rounds < 1:
      raise ValueError(f"lookahead={self.lookahead} must be >= 0 and max_rounds="
                       f"{self.max_rounds} >= 1.")
    if not (isinstance(self.advantage, (int, float)) and math.isfinite(self.advantage)
            and self.advantage >= 0):
      raise ValueError(f"advantage={self.advantage!r}: expected a finite number >= 0.")

  @property
  def name(self) -> str:
    return "lookahead" if self.lookahead else "beam"

  @property
  def generations(self) -> int:
    return self.n * (self.lookahead + 1)

  def select(self, f: tree.Frontier):
    m = self.width
    rank = f.alive_scores
    if self.advantage and f.alive_advantages is not None:
      rank = rank + self.advantage * f.alive_advantages
    kept = tree.top_per_group(rank, f.alive_slots,
                              np.zeros(f.alive_scores.size, np.int64), self.n // m)
    return np.repeat(kept, m), np.arange(kept.size * m), np.arange(f.pool_scores.size)



@dataclasses.dataclass(frozen=True)
class DVTS(_TreeSearch):
  """Diverse verifier tree search: ``n / width`` subtrees, each a beam search of width
  M = ``width`` keeping its best row."""

  n: int
  width: int
  max_rounds: int = 40
  lookahead = 0

  def __post_init__(self):
    if self.n < 1 or self.width < 1 or self.n % self.width:
      raise ValueError(f"DVTS needs n >= 1 and a subtree width M dividing n; got n={self.n}, "
                       f"M={self.width}.")
    if self.max_rounds < 1:
      raise ValueError(f"max_rounds={self.max_rounds} must be >= 1.")

  name = "dvts"

  @property
  def generations(self) -> int:
    return self.n

  def select(self, f: tree.Frontier):
    m = self.width
    tree_of = f.alive_slots // m  # subtree g holds slots g*M .. g*M + M - 1
    kept = tree.top_per_group(f.alive_scores, f.alive_slots, tree_of, 1)
    slots = (tree_of[kept][:, None] * m + np.arange(m)[None]).ravel()
    return np.repeat(kept, m), slots, np.arange(f.pool_scores.size)



def resampling_weights(scores: np.ndarray, temperature: float) -> np.ndarray:
  """softmax(logit(score) / temperature), scores clipped to [1e-7, 1 - 1e-7]."""
  s = np.clip(np.asarray(scores, np.float64), 1e-7, 1 - 1e-7)
  z = np.log(s / (1 - s)) / temperature
  w = np.exp(z - z.max())
  return w / w.sum()


@dataclasses.dataclass(frozen=True)
class ParticleFilter(_TreeSearch):
  """Particle filtering with ``n`` particles resampled each step in proportion to
  softmax(logit(PRM score) / ``temperature``)."""

  n: int
  temperature: float = 1.0
  max_rounds: int = 40
  lookahead = 0

  def __post_init__(self):
    if self.n < 1 or self.max_rounds < 1:
      raise ValueError(f"particle filtering needs n >= 1 and max_rounds >= 1; got n={self.n}, "
                       f"max_rounds={self.max_rounds}.")
    if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
      raise ValueError(f"temperature={self.temperature!r}: expected a number > 0.")

  name = "particle_filter"

  @property
  def generations(self) -> int:
    return self.n

  def select(self, f: tree.Frontier):
    alive = f.alive_scores.size
    if alive == 0:  # every particle has finished: nothing left to resample
      return np.zeros(0, np.int64), np.zeros(0, np.int64), np.arange(f.pool_scores.size)
    weights = resampling_weights(np.concatenate([f.alive_scores, f.pool_scores]),
                                 self.temperature)
    draws = np.sort(f.rng.choice(weights.size, size=self.n, replace=True, p=weights))
    chosen = draws[draws < alive]
    return chosen, np.arange(chosen.size), draws[draws >= alive] - alive

  def final(self, pool):
    return list(pool)


def default_width(n: int) -> int:
  """M = sqrt(N) rounded to a divisor of N (the paper's second beam width)."""
  m = max(1, int(round(math.sqrt(n))))
  while n % m:
    m -= 1
  return m
