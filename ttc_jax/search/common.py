"""What every search strategy shares: the models, the budget, the result, final selection."""

from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

import numpy as np

from ttc_jax.budget import Budget
from ttc_jax.sampling.core import SamplingCore
from ttc_jax.sampling.solutions import left_pad
from ttc_jax.sampling.solutions import round_up
from ttc_jax.verifiers.incremental import IncrementalScorer

# Key stream of search samples: row_keys(seed, SEARCH_STREAM, problem, slot, round).
SEARCH_STREAM = 7


@dataclasses.dataclass
class SearchContext:
  """The policy's sampling core, the PRM's incremental scorer and the task's grading.

  max_new_tokens: cap on a solution's length (tokens after the prompt).
  max_step_tokens: cap on one step's length (a longer step is cut and scored).
  """

  core: SamplingCore
  prm: IncrementalScorer
  task: object
  tokenizer: object
  seed: int = 0
  temperature: float = 1.0
  max_new_tokens: int = 96
  max_step_tokens: int = 24

  @property
  def policy_params(self) -> int:
    return self.core.config.num_params()

  @property
  def prm_params(self) -> int:
    return self.prm.config.num_params()

  def encode_prompts(self, problems: Sequence) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
    """Token lists (BOS + prompt) and their left-padded (P, L) array and mask."""
    prompts = [self.tokenizer.encode(self.task.format_prompt(p), bos=True) for p in problems]
    length = round_up(max(len(p) for p in prompts), 16)
    tokens, valid = left_pad(prompts, length, self.tokenizer.pad_id)
    return prompts, tokens, valid

  def cache_size(self, prompt_len: int) -> int:
    return min(self.core.config.max_seq_len, prompt_len + self.max_new_tokens)


@dataclasses.dataclass
class Candidate:
  """A finished solution: its tokens (after the prompt), PRM score, final answer."""

  tokens: list[int]
  score: float
  answer: str | None
  correct: bool


@dataclasses.dataclass
class SearchResult:
  """Per problem: the finished candidates, the selected answer and the budget spent."""

  problem: object
  candidates: list[Candidate]
  answer: str | None
  correct: bool
  budget: Budget


def weighted_select(candidates: Sequence[Candidate]) -> str | None:
  """Weighted best-of-N: the answer with the largest total score (ties: first seen)."""
  totals: dict[str, float] = collections.OrderedDict()
  for c in candidates:
    if c.answer is not None:
      totals[c.answer] = totals.get(c.answer, 0.0) + c.score
  if not totals:
    return None
  return max(totals, key=lambda a: totals[a])


def make_candidate(ctx: SearchContext, problem, tokens: list[int], score: float) -> Candidate:
  text = ctx.tokenizer.decode(tokens)
  answer = ctx.task.extract_answer(text)
  return Candidate(tokens=list(tokens), score=float(score), answer=answer,
                   correct=bool(answer is not None and ctx.task.is_correct(text, problem)))


def finish(ctx: SearchContext, problems, pools, budgets) -> list[SearchResult]:
  results = []
  for p, pool, budget in zip(problems, pools, budgets):
    answer = weighted_select(pool)
    correct = answer is not None and answer == ctx.task.normalize_answer(p.answer)
    results.append(SearchResult(problem=p, candidates=pool, answer=answer, correct=correct,
                                budget=budget))
  return results
