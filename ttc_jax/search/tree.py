"""The step-wise tree search loop shared by beam search, lookahead, DVTS and particle
filtering: a vectorized tree expansion over the sampling core.

The frontier is a batch of the live rows of P problems (at most N each), padded
to one of a few bucket sizes so that shapes stay fixed. Each round:

1. every active row samples one step (the sampling core stops it at the step
   delimiter or EOS), continuing from its own KV cache;
2. the PRM, which keeps its own cache, is extended by exactly the new tokens and
   read at each step's last token (lookahead: each candidate is first rolled out
   k more steps at temperature 0 on a copy of both caches and scored at the end
   of the rollout; the copies are discarded);
3. per problem, rows that ended with EOS join the problem's pool of finished
   candidates; then the strategy's ``select`` says which unfinished rows are
   continued (with repetition: a row continued M times is expanded M ways) and
   which pool entries stay. Continuing is a gather over the batch axis of tokens
   and both caches; no prefix is ever re-encoded. Problems never mix.

Search ends when no row is active or after ``max_rounds``; the strategy's
``final`` pool is returned and the answer is chosen among it by weighted
best-of-N (sum of PRM scores per distinct final answer). A row that reaches its
solution cap (``max_new_tokens``) or the model context without EOS is cut: it
never finishes and is never continued.

Batch independence: every row's step is limited by its own numbers only (a
step, what is left of its own token cap and of its own context), the cache has
one step of slack past the longest row (:meth:`SearchContext.tree_cache_size`),
and every random draw is keyed by (seed, problem index, slot, round), so a
problem's result is the same alone or batched with any others.

Budget (the paper's accounting): generations = N, N x (k + 1) with lookahead;
tokens count every token run through each model (prompts once per problem;
lookahead rollouts included); FLOPs (policy and PRM apart, attention included,
:mod:`ttc_jax.budget`) count each token at its position in its row: a prompt
from 0, a step or a rollout step at the row's length before it.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Protocol, Sequence

import numpy as np

from ttc_jax.budget import Budget
from ttc_jax.sampling.core import SamplingParams
from ttc_jax.sampling import utilization
from ttc_jax.search import common


@dataclasses.dataclass
class Frontier:
  """One problem's view of a round, handed to the strategy's ``select``.

  alive_scores / alive_slots: the unfinished rows that may be continued (with room
    left), their selection scores (after lookahead) and slots (in row order).
  alive_advantages: each of those rows' process advantage, its verifier score at its new
    step minus the score at its previous step, Q(s_h) - Q(s_{h-1}) (Setlur et al., arXiv
    2410.08146); 0 in the first round, whose rows share their parent, the prompt.
  pool_scores: scores of the problem's pool of finished candidates (this round's
    newly finished included).
  rng: a generator keyed by (seed, 'resample', problem index, round), for
    strategies that draw at random.
  """

  alive_scores: np.ndarray
  alive_slots: np.ndarray
  pool_scores: np.ndarray
  rng_factory: object
  alive_advantages: np.ndarray | None = None  # None: zeros

  @property
  def rng(self) -> np.random.Generator:
    return self.rng_factory()


class TreeStrategy(Protocol):
  n: int
  lookahead: int
  max_rounds: int

  def select(self, f: Frontier) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(parents: positions into the alive rows, one per next-round row, with
    repetition; their slots; pool positions kept, with repetition)."""

  def final(self, pool: list[common.Candidate]) -> list[common.Candidate]:
    """The returned candidates, from the pool left after the last round."""


def bucket(n: int) -> int:
  """Padded frontier size: a power of two >= 8 (few distinct compiled shapes; at most
  half of a frontier is padding)."""
  return max(8, 1 << (n - 1).bit_length())


def chunk_width(longest: int, cap: int, multiple: int = 8) -> int:
  """Width of a chunk of new tokens fed to the PRM: the longest rounded up to a
  multiple of ``multiple`` (at most ``cap``), so the PRM compiles a few widths, not
  every one."""
  return min(cap, -(-max(1, longest) // multiple) * multiple)


def step_chunk(out, cap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(lengths, tokens (rows, chunk_width), valid) of a sampling call's new tokens."""
  lengths = np.asarray(out.lengths)
  width = chunk_width(int(lengths.max()), cap)
  tokens = np.asarray(out.tokens)[:, :width]
  return lengths, tokens, np.arange(width)[None] < lengths[:, None]


def padded(x: np.ndarray, width: int | None = None) -> np.ndarray:
  """``x`` padded (with its first element) to ``width`` or to its bucket size."""
  width = bucket(x.size) if width is None else width
  return np.concatenate([x, np.repeat(x[:1], width - x.size)])


class _Round(NamedTuple):
  """One round's new step on every frontier row (arrays over the padded batch)."""

  pol: object  # the policy's state after the step
  prm: object  # the PRM's state, extended by the step
  active: np.ndarray  # the live rows (the rest is padding)
  scores: np.ndarray  # each row's PRM score at its new step
  ended: np.ndarray  # rows whose step ended with EOS
  room: np.ndarray  # rows with room left (their cap and the context) for another step
  used: np.ndarray  # each live row's solution tokens so far


def _count_prompts(ctx: common.SearchContext, budgets: list[Budget], prompts, prm) -> None:
  """Adds each problem's prompt to its budget, once per model, from position 0 (the PRM's
  own prompt tokens for an adapted PRM)."""
  pol_cost, prm_cost = ctx.policy_cost, ctx.prm_cost
  head = ctx.prm.tokens_fed(prm)  # None: the PRM reads the policy's prompt tokens
  for q, (b, p) in enumerate(zip(budgets, prompts)):
    b.add_policy(pol_cost, 0, len(p))
    b.add_prm(prm_cost, 0, len(p) if head is None else int(head[q]))


def _sample_round(ctx: common.SearchContext, pol, prm, seqs: list[list[int]],
                  row_problem: np.ndarray, row_slot: np.ndarray, rnd: int, *, sp,
                  index_of: np.ndarray, prompt_len: np.ndarray, budgets: list[Budget],
                  eos: set[int]) -> _Round:
  """Samples one step on every live row and feeds it to the PRM; appends each row's new
  tokens to ``seqs`` and counts them in its problem's budget."""
  pol_cost, prm_cost = ctx.policy_cost, ctx.prm_cost
  live = row_problem.size
  width = pol.num_rows
  active = np.arange(width) < live
  used = np.asarray([len(q) for q in seqs], np.int64)
  limits = ctx.step_limits(prompt_len[row_problem], used)  # > 0: cut rows were dropped
  keys = ctx.keys(padded(index_of[row_problem], width), padded(row_slot, width), rnd)
  out = ctx.core.sample(pol, keys, sp, active=active, limits=padded(limits, width))
  pol = out.state
  lengths, step, step_valid = step_chunk(out, ctx.max_step_tokens)
  # Every padded row pays each step: the padding rows are idle, the live rows' tokens are
  # the alive row-steps, the rest is live rows whose step had ended.
  utilization.record_call(out, active)
  before = ctx.prm.tokens_fed(prm)
  prm = ctx.prm.extend(prm, step, step_valid, out.token_stats(step.shape[1]))
  after = ctx.prm.tokens_fed(prm)
  scores = ctx.prm.scores(prm)
  ended = np.zeros(width, bool)
  for r in range(live):
    new = step[r, :lengths[r]].tolist()
    # The step continues the row at its current length: its prompt and earlier steps.
    start = int(prompt_len[row_problem[r]]) + len(seqs[r])
    budgets[row_problem[r]].add_policy(pol_cost, start, len(new))
    budgets[row_problem[r]].add_prm(prm_cost, *common.prm_span(before, after, r, start,
                                                                len(new)))
    seqs[r] = seqs[r] + new
    ended[r] = bool(new) and new[-1] in eos
  used = np.asarray([len(q) for q in seqs], np.int64)
  # A row with no room left (its cap or the context) can never finish: cut it.
  room = np.zeros(width, bool)
  room[:live] = ctx.step_limits(prompt_len[row_problem], used) > 0
  return _Round(pol, prm, active, scores, ended, room, used)


def _select(strategy: TreeStrategy, ctx: common.SearchContext, problems: Sequence,
            pools: list[list[common.Candidate]], seqs: list[list[int]], row_problem: np.ndarray,
            row_slot: np.ndarray, rnd: int, sampled: _Round, select_scores: np.ndarray,
            parent_scores: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
  """Per problem: rows that ended join its pool, and the strategy picks which rows continue
  and which pool entries stay (``pools`` is updated). Returns the next round's (parents:
  rows continued, their problems, their slots), or None when no row continues."""
  parents, next_problem, next_slot = [], [], []
  for q in range(len(problems)):
    rows = np.nonzero(row_problem == q)[0]
    for r in rows[sampled.ended[rows]]:
      pools[q].append(common.make_candidate(ctx, problems[q], seqs[r], sampled.scores[r]))
    alive = rows[~sampled.ended[rows] & sampled.room[rows]]
    frontier = Frontier(
        alive_scores=np.asarray(select_scores[alive], np.float64),
        alive_slots=row_slot[alive],
        pool_scores=np.asarray([c.score for c in pools[q]], np.float64),
        rng_factory=lambda q=q, rnd=rnd: ctx.generator("resample", problems[q].index, rnd),
        alive_advantages=np.asarray(sampled.scores, np.float64)[alive] - parent_scores[alive])
    chosen, slots, kept = strategy.select(frontier)
    pools[q] = [pools[q][i] for i in kept]
    if len(chosen):
      parents.append(alive[chosen])
      next_problem.append(np.full(len(chosen), q))
      next_slot.append(np.asarray(slots, np.int64))
  if not parents:
    return None
  return np.concatenate(parents), np.concatenate(next_problem), np.concatenate(next_slot)


def tree_search(strategy: TreeStrategy, ctx: common.SearchContext, problems: Sequence
                ) -> list[common.SearchResult]:
  """Runs ``strategy`` on ``problems`` in one batch (see the module docstring).

  The frontier holds only live rows: after each round the continued rows are
  gathered into a batch padded to a few bucket sizes, so problems and rows that
  have finished stop costing compute. Row r of the frontier is slot
  ``row_slot[r]`` of problem ``row_problem[r]``; its key depends on (problem
  index, slot, round) only, so results do not depend on the batch.
  """
  n, k = strategy.n, strategy.lookahead
  num = len(problems)
  eos = set(ctx.tokenizer.eos_ids)
  prompts, tokens, valid = ctx.encode_prompts(problems)
  prompt_len = np.asarray([len(p) for p in prompts], np.int64)
  size = ctx.tree_cache_size(tokens.shape[1])
  budgets = [Budget(generations=strategy.generations) for _ in problems]
  prm = ctx.prm_start(problems, tokens, valid, size)
  _count_prompts(ctx, budgets, prompts, prm)
  index_of = np.asarray([p.index for p in problems], np.int64)
  sp = ctx.step_params()

  row_problem = np.repeat(np.arange(num), n)
  row_slot = np.tile(np.arange(n), num)
  src = padded(row_problem)
  pol = ctx.core.gather(ctx.core.prefill(tokens, valid, cache_size=size), src, compact=True)
  prm = ctx.prm.gather(prm, src, compact=True)
  seqs: list[list[int]] = [[] for _ in range(row_problem.size)]
  pools: list[list[common.Candidate]] = [[] for _ in problems]
  parent_scores = None  # each row's score at its previous step (None: the first round)

  for rnd in range(strategy.max_rounds):
    if row_problem.size == 0:
      break
    sampled = _sample_round(ctx, pol, prm, seqs, row_problem, row_slot, rnd, sp=sp,
                            index_of=index_of, prompt_len=prompt_len, budgets=budgets, eos=eos)
    pol, prm = sampled.pol, sampled.prm
    select_scores = sampled.scores
    if k:
      width = sampled.active.size
      rollout = sampled.active & ~sampled.ended & sampled.room
      select_scores = _lookahead_scores(ctx, pol, prm, rollout, sampled.scores, k, size, budgets,
                                        padded(row_problem, width),
                                        padded(prompt_len[row_problem], width),
                                        padded(sampled.used, width))
    # The first step's rows share their parent, the prompt: their advantage is 0.
    live_scores = np.asarray(sampled.scores, np.float64)[:row_problem.size]
    parent_scores = live_scores if parent_scores is None else parent_scores
    chosen = _select(strategy, ctx, problems, pools, seqs, row_problem, row_slot, rnd, sampled,
                     select_scores, parent_scores)
    if chosen is None:
      break
    parents, row_problem, row_slot = chosen
    parent_scores = live_scores[parents]
    src = padded(parents)
    pol = ctx.core.gather(pol, src, compact=True)
    prm = ctx.prm.gather(prm, src, compact=True)
    seqs = [list(seqs[s]) for s in parents]
  return common.finish(ctx, problems, [strategy.final(pool) for pool in pools], budgets)


def top_per_group(scores: np.ndarray, slots: np.ndarray, groups: np.ndarray, keep: int
                  ) -> np.ndarray:
  """Positions of the ``keep`` best rows of each group (score descending, then slot),
  groups in increasing order."""
  out = []
  for g in np.unique(groups):
    idx = np.nonzero(groups == g)[0]
    out.append(idx[np.lexsort((slots[idx], -scores[idx]))][:keep])
  return np.concatenate(out) if out else np.zeros(0, np.int64)


def _lookahead_scores(ctx, pol, prm, rollout, scores, k, size, budgets, row_problem,
                      prompt_len, used) -> np.ndarray:
  """PRM score after rolling each candidate out k steps at temperature 0 (on copies).

  Rollout tokens count against the candidate's own token cap and context, as
  if the solution went on; the copies of both caches are discarded.
  """
  rows = scores.shape[0]
  ident = np.arange(rows)
  step = ctx.max_step_tokens
  pol_cost, prm_cost = ctx.policy_cost, ctx.prm_cost
  # Compact the copies only when a step would not fit (the round's holes): slots
  # are storage, and compacting moves them.
  # (The PRM's cache may run ahead of the policy's: its chunks are rounded up.)
  compact = max(int(pol.cache.index), ctx.prm.cache_index(prm)) + step > size
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
    if max(int(pol_la.cache.index), ctx.prm.cache_index(prm_la)) + step > size:
      pol_la = ctx.core.gather(pol_la, ident, compact=True)
      prm_la = ctx.prm.gather(prm_la, ident, compact=True)
    out = ctx.core.sample(pol_la, keys, sp, active=live, limits=limits)
    pol_la = out.state
    lengths, new, new_valid = step_chunk(out, step)
    utilization.record_call(out, live)
    before = ctx.prm.tokens_fed(prm_la)
    prm_la = ctx.prm.extend(prm_la, new, new_valid, out.token_stats(new.shape[1]))
    after = ctx.prm.tokens_fed(prm_la)
    for r in np.nonzero(live)[0]:  # the rollout continues the row past its solution so far
      start = int(prompt_len[r] + used[r])
      budgets[row_problem[r]].add_policy(pol_cost, start, int(lengths[r]))
      budgets[row_problem[r]].add_prm(prm_cost, *common.prm_span(before, after, r, start,
                                                                  int(lengths[r])))
    used = used + lengths
    ended = np.asarray(out.stopped) & np.isin(new[ident, np.maximum(lengths - 1, 0)], eos)
    live &= ~ended
  return np.where(rollout, ctx.prm.scores(prm_la), scores)
