"""What every search strategy shares: the models, token caps, the result, final selection."""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

import numpy as np

from ttc_jax import accounting
from ttc_jax import parallel
from ttc_jax.budget import Budget
from ttc_jax.sampling import streams
from ttc_jax.sampling.core import SamplingCore
from ttc_jax.sampling.core import SamplingParams
from ttc_jax.sampling.solutions import left_pad
from ttc_jax.sampling.solutions import round_up
from ttc_jax.tasks import Task
from ttc_jax.tokenizers import Tokenizer
from ttc_jax.verifiers import aggregation
from ttc_jax.verifiers.base import Verifier


@dataclasses.dataclass
class SearchContext:
  """The policy's sampling core, the PRM's incremental scorer and the task's grading.

  sp: the policy's sampling parameters (temperature, top-k, top-p) and its cap on a
    solution's length (``max_new_tokens``: tokens after the prompt, per solution: a
    candidate that reaches it without EOS is cut and never finishes).
  max_step_tokens: cap on one step's length (a longer step is cut and scored).
  run: which independent repeat of the search this is: folded into every key.
  No row ever goes past the model context (``max_seq_len`` tokens, prompt included).
  """

  core: SamplingCore
  prm: Verifier  # scores each step (a value head over the policy's tokens, an adapted PRM)
  task: Task
  tokenizer: Tokenizer
  seed: int = 0
  run: int = 0  # independent repeat of a search (the study's search seeds)
  sp: SamplingParams = SamplingParams(temperature=1.0, max_new_tokens=96)
  max_step_tokens: int = 24

  @property
  def max_new_tokens(self) -> int:
    return self.sp.max_new_tokens

  def step_params(self) -> SamplingParams:
    """The policy's sampling parameters for one step of a tree search: at most
    ``max_step_tokens`` tokens, stopping where the step ends."""
    return dataclasses.replace(self.sp, max_new_tokens=self.max_step_tokens, stop_at_step=True)

  @property
  def policy_cost(self) -> accounting.ModelCost:
    """The policy's FLOPs model (parameters, layers, attention width), from its config."""
    return accounting.ModelCost.from_config(self.core.config)

  @property
  def prm_cost(self) -> accounting.ModelCost:
    """The PRM's FLOPs model, from its config."""
    return accounting.ModelCost.from_config(self.prm.config)

  def encode_prompts(self, problems: Sequence) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
    """Token lists (BOS + prompt) and their left-padded (P, L) array and mask."""
    prompts = [self.tokenizer.encode_prompt(self.task.format_prompt(p)) for p in problems]
    length = round_up(max(len(p) for p in prompts), 16)
    tokens, valid = left_pad(prompts, length, self.tokenizer.pad_id)
    return prompts, tokens, valid

  def prm_start(self, problems: Sequence, tokens: np.ndarray, valid: np.ndarray,
                cache_size: int):
    """The PRM's state of the prompts (the policy's, in ``cache_size`` slots)."""
    return self.prm.start(problems, tokens, valid, cache_size=cache_size,
                          max_step_tokens=self.max_step_tokens)

  def keys(self, problem_index, slot, rnd: int):
    """Row keys of search samples: (seed, 'search', problem index, slot, round, run)."""
    return streams.keys(self.seed, "search", problem_index, slot, rnd, self.run)

  def generator(self, stream: str, *ids: int) -> np.random.Generator:
    """Host-side draws of a search (e.g. resampling): (seed, stream, *ids, run)."""
    return streams.generator(self.seed, stream, *ids, self.run)

  def step_limits(self, prompt_len: np.ndarray, used: np.ndarray) -> np.ndarray:
    """Tokens each row may add in its next step: at most a step, what is left of its
    solution cap, and what is left of the context (each row's own numbers only)."""
    left = np.minimum(self.max_new_tokens - used,
                      self.core.config.max_seq_len - prompt_len - used)
    return np.clip(left, 0, self.max_step_tokens).astype(np.int32)

  def tree_cache_size(self, prompt_width: int) -> int:
    """KV slots of a step-wise tree search over prompts padded to ``prompt_width``.

    All rows write at one index; after each round's compaction the index is the
    longest row, at most min(context, prompt + max_new_tokens), and a round
    appends up to one step: so one step of slack past that. The slack is storage
    (masked holes), not context: every row still stops at ``max_seq_len``.
    """
    longest = min(self.core.config.max_seq_len, prompt_width + self.max_new_tokens)
    return max(prompt_width, longest) + self.max_step_tokens


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


class Strategy(Protocol):
  """A search strategy: frozen, hashable data plus a run function."""

  n: int

  @property
  def generations(self) -> float: ...

  def run(self, ctx: SearchContext, problems: Sequence) -> list[SearchResult]: ...


def make_candidate(ctx: SearchContext, problem, tokens: list[int], score: float) -> Candidate:
  text = ctx.tokenizer.decode(tokens)
  answer = ctx.task.extract_answer(text)
  return Candidate(tokens=list(tokens), score=float(score), answer=answer,
                   correct=bool(answer is not None and ctx.task.is_correct(text, problem)))


def finish(ctx: SearchContext, problems, pools, budgets, selection: str = "weighted"
           ) -> list[SearchResult]:
  """One result per problem: its candidate pool, the answer chosen among the pool by
  ``selection`` (see :mod:`ttc_jax.verifiers.aggregation`) and whether it is right."""
  results = []
  for p, pool, budget in zip(problems, pools, budgets):
    answer = aggregation.select_answer([c.answer for c in pool], [c.score for c in pool],
                                       selection)
    correct = answer is not None and answer == ctx.task.normalize_answer(p.answer)
    results.append(SearchResult(problem=p, candidates=pool, answer=answer, correct=correct,
                                budget=budget))
  return results


def call_chunks(num: int, cap: int) -> list[list[int]]:
  """Problem indices per search call: equal-size calls of at most ``cap`` problems; the
  last is padded by repeating its first problem (those duplicates are dropped)."""
  calls = -(-num // max(1, cap))
  size = -(-num // calls)
  out = []
  for s in range(0, num, size):
    idx = list(range(s, min(num, s + size)))
    out.append(idx + [idx[0]] * (size - len(idx)))
  return out


def search_problems(strategy: Strategy, ctx: SearchContext, problems: Sequence, *,
                    rows_per_call: int) -> list[SearchResult]:
  """Runs ``strategy`` on every problem, ``rows_per_call // n`` problems per call
  (calls of equal size: few compiled shapes), calls split over processes. A
  problem's result does not depend on the call it lands in."""
  calls = call_chunks(len(problems), rows_per_call // strategy.n)

  def run(c: int) -> list[SearchResult]:
    idx = calls[c]
    return strategy.run(ctx, [problems[i] for i in idx])[:len(set(idx))]

  return [r for chunk in parallel.map_chunks(run, len(calls)) for r in chunk]


def prm_span(before: np.ndarray | None, after: np.ndarray | None, row: int, start: int,
             n: int) -> tuple[int, int]:
  """The PRM tokens (first position, count) a row's last feed added: the policy's
  (``start``, ``n``) when the PRM reads the policy's tokens (``before`` None), else the
  adapted PRM's own (``Verifier.tokens_fed`` before and after the feed)."""
  if before is None:
    return start, n
  return int(before[row]), int(after[row] - before[row])
