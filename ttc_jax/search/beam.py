"""Step-level beam search and lookahead search as vectorized tree expansions.

The frontier is a batch of the live beams of P problems (at most N each), padded
to one of a few bucket sizes so that shapes stay fixed. Each round:

1. every active slot samples one step (the sampling core stops it at the step
   delimiter or EOS), continuing from its own KV cache;
2. the PRM, which keeps its own cache, is extended by exactly the new tokens and
   read at each step's last token (lookahead: each candidate is first rolled out
   k more steps at temperature 0 on a copy of both caches and scored at the end
   of the rollout; the copies are discarded);
3. per problem, candidates that ended with EOS join the problem's finished pool
   (kept, never expanded); among the others the top N / M by score are kept and
   each is expanded M ways: slot j of the next round continues kept beam j // M.
   Selection is a gather over the batch axis of tokens and both caches; no
   prefix is ever re-encoded. Problems never mix: selection is per problem.

Search ends when no slot is active or after ``max_rounds``; only finished
candidates are returned (at most N: the best-scoring ones, as in
search-and-learn, since beams finishing in different rounds can add up to more),
and the answer is chosen among them by weighted best-of-N (sum of PRM scores per
distinct final answer). A beam that reaches its solution cap
(``max_new_tokens``) or the model context without EOS is cut: it never
finishes and is not expanded.

Batch independence: every row's step is limited by its own numbers only (a
step, what is left of its own token cap and of its own context), and the cache
has one step of slack past the longest row (:meth:`SearchContext.tree_cache_size`),
so a long beam of one problem never shortens the steps of another: a problem's
result is the same alone or batched with any others.

Budget (the paper's accounting): generations = N for beam search, N x (k + 1)
for lookahead; tokens count every token run through each model (prompts once
per problem; lookahead rollouts included).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from ttc_jax.budget import Budget
from ttc_jax.sampling.core import SamplingParams
from ttc_jax.search import common


@dataclasses.dataclass(frozen=True)
class BeamSearch:
  """Beam search with budget ``n`` and beam width ``width`` (M); ``lookahead`` = k."""

  n: int
  width: int
  lookahead: int = 0
  max_rounds: int = 40

  def __post_init__(self):
    if self.n < 1 or self.width < 1 or self.n % self.width:
      raise ValueError(f"beam search needs n >= 1 and a beam width M dividing n; got n={self.n}, "
                       f"M={self.width}.")
    if self.lookahead < 0 or self.max_rounds < 1:
      raise ValueError(f"lookahead={self.lookahead} must be >= 0 and max_rounds="
                       f"{self.max_rounds} >= 1.")

  @property
  def name(self) -> str:
    return "lookahead" if self.lookahead else "beam"

  @property
  def generations(self) -> int:
    return self.n * (self.lookahead + 1)

  def run(self, ctx: common.SearchContext, problems: Sequence) -> list[common.SearchResult]:
    return beam_search(self, ctx, problems)


def _bucket(n: int) -> int:
  """Padded frontier size: few distinct shapes (powers of two, then multiples of 128)."""
  if n <= 128:
    return max(8, 1 << (n - 1).bit_length())
  return -(-n // 128) * 128


def beam_search(strategy: BeamSearch, ctx: common.SearchContext, problems: Sequence
                ) -> list[common.SearchResult]:
  """Runs ``strategy`` on ``problems`` in one batch (see the module docstring).

  The frontier holds only live beams: after each round the kept beams' children
  are gathered into a batch padded to a few bucket sizes, so problems and beams
  that have finished stop costing compute. Row r of the frontier is slot
  ``row_slot[r]`` of problem ``row_problem[r]``; its key depends on (problem
  index, slot, round) only, so results do not depend on the batch.
  """
  n, m, k = strategy.n, strategy.width, strategy.lookahead
  keep = n // m
  num = len(problems)
  eos = set(ctx.tokenizer.eos_ids)
  prompts, tokens, valid = ctx.encode_prompts(problems)
  prompt_len = np.asarray([len(p) for p in prompts], np.int64)
  size = ctx.tree_cache_size(tokens.shape[1])
  budgets = [Budget(generations=strategy.generations) for _ in problems]
  for b, p in zip(budgets, prompts):
    b.add_policy(len(p), ctx.policy_params)
    b.add_prm(len(p), ctx.prm_params)
  index_of = np.asarray([p.index for p in problems], np.int64)
  sp = SamplingParams(temperature=ctx.temperature, max_new_tokens=ctx.max_step_tokens,
                      stop_at_step=True)

  row_problem = np.repeat(np.arange(num), n)
  row_slot = np.tile(np.arange(n), num)
  src = _padded(row_problem)
  pol = ctx.core.gather(ctx.core.prefill(tokens, valid, cache_size=size), src, compact=True)
  prm = ctx.prm.gather(ctx.prm.prefill(tokens, valid, cache_size=size), src, compact=True)
  seqs: list[list[int]] = [[] for _ in range(row_problem.size)]
  pools: list[list[common.Candidate]] = [[] for _ in problems]

  for rnd in range(strategy.max_rounds):
    live = row_problem.size
    if live == 0:
      break
    width = pol.num_rows
    active = np.arange(width) < live
    used = np.asarray([len(q) for q in seqs], np.int64)
    limits = ctx.step_limits(prompt_len[row_problem], used)  # > 0: cut rows were dropped
    keys = ctx.keys(_padded(index_of[row_problem], width), _padded(row_slot, width), rnd)
    out = ctx.core.sample(pol, keys, sp, active=active, limits=_padded(limits, width))
    pol = out.state
    lengths = np.asarray(out.lengths)
    step = np.asarray(out.tokens)[:, :max(1, int(lengths.max()))]
    step_valid = np.arange(step.shape[1])[None] < lengths[:, None]
    prm = ctx.prm.extend(prm, step, step_valid)
    scores = ctx.prm.scores(prm)
    ended = np.zeros(width, bool)
    for r in range(live):
      new = step[r, :lengths[r]].tolist()
      seqs[r] = seqs[r] + new
      ended[r] = bool(new) and new[-1] in eos
      budgets[row_problem[r]].add_policy(len(new), ctx.policy_params)
      budgets[row_problem[r]].add_prm(len(new), ctx.prm_params)
    used = np.asarray([len(q) for q in seqs], np.int64)
    # A beam with no room left (its cap or the context) can never finish: cut it.
    room = np.zeros(width, bool)
    room[:live] = ctx.step_limits(prompt_len[row_problem], used) > 0

    select_scores = scores
    if k:
      select_scores = _lookahead_scores(ctx, pol, prm, active & ~ended & room, scores, k, size,
                                        budgets, _padded(row_problem, width),
                                        _padded(prompt_len[row_problem], width),
                                        _padded(used, width))

    # Per problem: finished candidates join the pool; the best unfinished are expanded.
    parents, next_problem, next_slot = [], [], []
    for q in range(num):
      rows = np.nonzero(row_problem == q)[0]
      for r in rows[ended[rows]]:
        pools[q].append(common.make_candidate(ctx, problems[q], seqs[r], scores[r]))
      alive = rows[~ended[rows] & room[rows]]
      if alive.size == 0:
        continue
      kept = alive[np.lexsort((row_slot[alive], -select_scores[alive]))][:keep]
      parents.append(np.repeat(kept, m))
      next_problem.append(np.full(kept.size * m, q))
      next_slot.append(np.arange(kept.size * m))
    if not parents:
      break
    parents = np.concatenate(parents)
    row_problem, row_slot = np.concatenate(next_problem), np.concatenate(next_slot)
    src = _padded(parents)
    pol = ctx.core.gather(pol, src, compact=True)
    prm = ctx.prm.gather(prm, src, compact=True)
    seqs = [list(seqs[s]) for s in parents]
  # Finished beams accumulate over rounds; like search-and-learn, keep the N best.
  pools = [sorted(pool, key=lambda c: -c.score)[:n] for pool in pools]
  return common.finish(ctx, problems, pools, budgets)


def _padded(x: np.ndarray, width: int | None = None) -> np.ndarray:
  """``x`` padded (with its first element) to ``width`` or to its bucket size."""
  width = _bucket(x.size) if width is None else width
  return np.concatenate([x, np.repeat(x[:1], width - x.size)])


def _lookahead_scores(ctx, pol, prm, rollout, scores, k, size, budgets, row_problem,
                      prompt_len, used) -> np.ndarray:
  """PRM score after rolling each candidate out k steps at temperature 0 (on copies).

  Rollout tokens count against the candidate's own token cap and context, as
  if the solution went on; the copies of both caches are discarded.
  """
  rows = scores.shape[0]
  ident = np.arange(rows)
  step = ctx.max_step_tokens
  # Compact the copies only when a step would not fit (the round's holes): slots
  # are storage, and compacting moves them.
  compact = int(pol.cache.index) + step > size
  pol_la = ctx.core.gather(pol, ident, compact=compact)
  prm_la = ctx.prm.gather(prm, ident, compact=compact)
  live = rollout.copy()
  used = used.copy()
  keys = ctx.keys(ident, 0, 0)  # unused: greedy
  sp = SamplingParams(temperature=0.0, max_new_tokens=step, stop_at_step=True)
  eos = np.asarray(ctx.tokenizer.eos_ids)
  for _ in range(k):
    limits = np.where(live, ctx.step_limits(prompt_len, used), 0)
    live &= limits > 0
    if not live.any():
      break  # no room left: score where the rollouts stand
    if int(pol_la.cache.index) + step > size:
      pol_la = ctx.core.gather(pol_la, ident, compact=True)
      prm_la = ctx.prm.gather(prm_la, ident, compact=True)
    out = ctx.core.sample(pol_la, keys, sp, active=live, limits=limits)
    pol_la = out.state
    lengths = np.asarray(out.lengths)
    new = np.asarray(out.tokens)[:, :max(1, int(lengths.max()))]
    prm_la = ctx.prm.extend(prm_la, new, np.arange(new.shape[1])[None] < lengths[:, None])
    for r in np.nonzero(live)[0]:
      budgets[row_problem[r]].add_policy(int(lengths[r]), ctx.policy_params)
      budgets[row_problem[r]].add_prm(int(lengths[r]), ctx.prm_params)
    used = used + lengths
    ended = np.asarray(out.stopped) & np.isin(new[ident, np.maximum(lengths - 1, 0)], eos)
    live &= ~ended
  return np.where(rollout, ctx.prm.scores(prm_la), scores)


def default_width(n: int) -> int:
  """M = sqrt(N) rounded to a divisor of N (the paper's second beam width)."""
  m = max(1, int(round(math.sqrt(n))))
  while n % m:
    m -= 1
  return m
