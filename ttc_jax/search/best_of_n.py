"""Best-of-N: N independent samples per problem, scored by the PRM, then aggregated.

Each prompt is encoded once (policy and PRM) and its caches gathered N ways;
the PRM reads every new token once and scores each step at its last token, so
the step scores are aggregated (last / min / prod) without a second pass.

Budget: each prompt once per model (positions 0 .. len - 1), then each sample's
tokens at the positions after its prompt (:mod:`ttc_jax.budget`).

Selection: 'weighted' (sum of scores per distinct final answer, the paper's
best-of-N weighted), 'vanilla' (the single best-scoring sample) or 'majority';
all three are :func:`ttc_jax.verifiers.aggregation.select_answer`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ttc_jax.budget import Budget
from ttc_jax.sampling.solutions import step_ends
from ttc_jax.sampling import utilization
from ttc_jax.search import common
from ttc_jax.search.tree import chunk_width
from ttc_jax.verifiers.aggregation import METHODS
from ttc_jax.verifiers.scoring import STEP_AGGREGATIONS
from ttc_jax.verifiers.scoring import aggregate_steps


@dataclasses.dataclass(frozen=True)
class BestOfN:
  """N independent samples per problem; the answer chosen by ``selection``
  (weighted, vanilla or majority; see :mod:`ttc_jax.verifiers.aggregation`) over
  their PRM scores aggregated over steps by ``step_aggregation``."""

  n: int
  selection: str = "weighted"
  step_aggregation: str = "last"

  def __post_init__(self):
    if not isinstance(self.n, int) or self.n < 1:
      raise ValueError(f"best-of-N needs an integer n >= 1, got {self.n!r}.")
    if self.selection not in METHODS:
      raise ValueError(f"selection {self.selection!r}: expected one of {METHODS}.")
    if self.step_aggregation not in STEP_AGGREGATIONS:
      raise ValueError(f"step_aggregation {self.step_aggregation!r}: expected one of "
                       f"{STEP_AGGREGATIONS}.")

  name = "best_of_n"

  @property
  def generations(self) -> int:
    return self.n

  def run(self, ctx: common.SearchContext, problems: Sequence) -> list[common.SearchResult]:
    return best_of_n(self, ctx, problems)


def best_of_n(strategy: BestOfN, ctx: common.SearchContext, problems: Sequence
              ) -> list[common.SearchResult]:
  n, num = strategy.n, len(problems)
  prompts, tokens, valid = ctx.encode_prompts(problems)
  # Slots for the prompts and max_new_tokens; each row also stops at the context.
  size = tokens.shape[1] + ctx.max_new_tokens
  expand = np.repeat(np.arange(num), n)
  pol = ctx.core.gather(ctx.core.prefill(tokens, valid, cache_size=size), expand)
  prm = ctx.prm_start(problems, tokens, valid, size)
  head = ctx.prm.tokens_fed(prm)  # the PRM's own prompt tokens (an adapted PRM), else None
  prm = ctx.prm.gather(prm, expand)
  ids = np.asarray([p.index for p in problems], np.int64)[expand]
  keys = ctx.keys(ids, np.tile(np.arange(n), num), 0)
  out = ctx.core.sample(pol, keys, ctx.sp)
  lengths = np.asarray(out.lengths)
  utilization.record(int(out.row_steps), int(lengths.sum()))
  width = chunk_width(int(lengths.max()), ctx.max_new_tokens, 16)
  gen = np.asarray(out.tokens)[:, :width]
  stopped = np.asarray(out.stopped)
  prm, per_token = ctx.prm.extend_scores(prm, gen, np.arange(width)[None] < lengths[:, None],
                                         out.token_stats(width))
  fed = ctx.prm.tokens_fed(prm)
  budgets = [Budget(generations=n) for _ in problems]
  pools: list[list[common.Candidate]] = [[] for _ in problems]
  pol_cost, prm_cost = ctx.policy_cost, ctx.prm_cost
  for q, p in enumerate(prompts):  # each prompt encoded once per model, positions from 0
    budgets[q].add_policy(pol_cost, 0, len(p))
    budgets[q].add_prm(prm_cost, 0, len(p) if head is None else int(head[q]))
  for r in range(num * n):
    q = r // n
    toks = gen[r, :lengths[r]].tolist()
    # Every sample continues its own copy of the prompt: positions after the prompt.
    budgets[q].add_policy(pol_cost, len(prompts[q]), len(toks))
    budgets[q].add_prm(prm_cost, *common.prm_span(None if head is None else head[expand], fed,
                                                  r, len(prompts[q]), len(toks)))
    ends = step_ends(toks, ctx.tokenizer.step_ids, ctx.tokenizer.eos_ids,
                     ctx.tokenizer.step_pairs)
    steps = per_token[r, ends]  # an adapted PRM leaves NaN where a span adds no step
    score = aggregate_steps([steps[~np.isnan(steps)]], strategy.step_aggregation)[0]
    cand = common.make_candidate(ctx, problems[q], toks, score)
    if not stopped[r]:
      cand = dataclasses.replace(cand, answer=None, correct=False)  # truncated: no answer
    pools[q].append(cand)
  return common.finish(ctx, problems, pools, budgets, strategy.selection)
