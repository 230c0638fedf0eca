"""A verifier of controlled quality: the task's step checker seen through calibrated noise.

For diagnosis only (the verifier-quality axis of the study), never for its claims: it reads
the task's step checker (:meth:`ttc_jax.tasks.Task.first_wrong_step`) and its grader, which a
real verifier does not have. A partial solution is *sound* when the checker finds no wrong
step in it so far, a finished one when it is correct (so the final score's AUC is against the
very outcomes the study counts); its score is

    sigmoid(separation * (+1 if sound else -1) + noise),   noise ~ N(0, 1),

so ``separation`` sets how well the score tells sound from unsound solutions (a finished
solution's within-problem AUC is about Phi(sqrt(2) * separation)). The separation
for a target within-problem AUC is found on train problems' samples
(:func:`ttc_jax.analysis.verifiers.calibrate_separation`) and the AUC reached on test
problems is measured, never assumed.

The noise of a prefix is drawn from a key of (seed, its problem, a hash of its tokens): the
same prefix scores the same in any batch, during search or in a full pass, and two prefixes'
noises are independent (a verifier whose errors are independent from step to step).

It reads the policy's tokens at the policy's positions (``tokens_fed`` is None), so the budget
charges it as a PRM of the policy's size (``config``: the policy's architecture).
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Sequence

import numpy as np
import scipy.special

from ttc_jax.models.transformer import TransformerConfig
from ttc_jax.sampling import streams
from ttc_jax.sampling.solutions import step_ends


def sound(task, tokenizer, problem, tokens: Sequence[int]) -> bool:
  """The oracle's label of a solution so far (``tokens``, after the prompt): a finished one
  (ending in EOS) is sound when it is correct, a partial one when the task's step checker
  finds no wrong step in it."""
  text = tokenizer.decode(list(tokens))
  if len(tokens) > 0 and tokens[-1] in tokenizer.eos_ids:
    return bool(task.is_correct(text, problem))
  return task.first_wrong_step(text, problem) is None


def oracle_step_labels(task, tokenizer, problem, row: Sequence[int], prompt_length: int,
                       ends: Sequence[int]) -> list[float]:
  """1.0 / 0.0 per step of a sample (``row``: prompt and solution; ``ends``: each step's last
  position in it): whether the solution up to that step is :func:`sound`. For diagnosis
  only: the labels of the oracle-label PRM (``prm.labels='oracle'``)."""
  gen = list(row[prompt_length:])
  return [float(sound(task, tokenizer, problem, gen[:e - prompt_length + 1])) for e in ends]


@dataclasses.dataclass(frozen=True)
class _State:
  """Per row of a search: its problem and the solution tokens so far."""

  problems: tuple
  tokens: tuple[tuple[int, ...], ...]


class SyntheticVerifier:
  """The step checker with calibrated noise as a :class:`~ttc_jax.verifiers.base.Verifier`
  (see the module docstring). ``problems``: those it may be asked about (a finished
  solution is named by its question)."""

  def __init__(self, separation: float, task, tokenizer, config: TransformerConfig,
               problems: Sequence, seed: int = 0):
    if not task.has_step_checker:
      raise ValueError(f"task {task.name!r} has no step checker: no synthetic verifier.")
    if not np.isfinite(separation) or separation < 0:
      raise ValueError(f"separation {separation!r}: expected a number >= 0.")
    self.separation, self.task, self.tokenizer = float(separation), task, tokenizer
    self.config, self.seed = config, seed
    self._by_question = {p.question: p for p in problems}

  # --- the score of one prefix ---------------------------------------------------------------
  def sound(self, problem, tokens: Sequence[int]) -> bool:
    return sound(self.task, self.tokenizer, problem, tokens)

  def noise(self, problem, tokens: Sequence[int]) -> float:
    digest = zlib.crc32(np.asarray(tokens, np.int64).tobytes())
    rng = streams.generator(self.seed, "synthetic_verifier", streams.split_id(problem.split),
                            problem.index, digest)
    return float(rng.standard_normal())

  def score(self, problem, tokens: Sequence[int]) -> float:
    y = 1.0 if self.sound(problem, tokens) else -1.0
    return float(scipy.special.expit(self.separation * y + self.noise(problem, tokens)))

  # --- search ------------------------------------------------------------------------------
  def start(self, problems: Sequence, tokens: np.ndarray, valid: np.ndarray, *,
            cache_size: int, max_step_tokens: int) -> _State:
    del tokens, valid, cache_size, max_step_tokens
    return _State(tuple(problems), tuple(() for _ in problems))

  def gather(self, state: _State, rows, compact: bool = False) -> _State:
    del compact
    idx = [int(r) for r in np.asarray(rows).reshape(-1)]
    return _State(tuple(state.problems[i] for i in idx), tuple(state.tokens[i] for i in idx))

  def extend(self, state: _State, tokens, valid, confidence=None) -> _State:
    del confidence
    tokens, valid = np.asarray(tokens), np.asarray(valid, bool)
    return _State(state.problems, tuple(t + tuple(int(x) for x in tokens[r][valid[r]])
                                        for r, t in enumerate(state.tokens)))

  def extend_scores(self, state: _State, tokens, valid, confidence=None
                    ) -> tuple[_State, np.ndarray]:
    """Scores at the steps' last tokens of what each row adds (NaN elsewhere)."""
    before = [len(t) for t in state.tokens]
    state = self.extend(state, tokens, valid, confidence)
    out = np.full(np.asarray(tokens).shape, np.nan)
    tok = self.tokenizer
    for r, (p, t) in enumerate(zip(state.problems, state.tokens)):
      for e in step_ends(t, tok.step_ids, tok.eos_ids, tok.step_pairs):
        if e >= before[r]:
          out[r, e - before[r]] = self.score(p, t[:e + 1])
    return state, out

  def scores(self, state: _State) -> np.ndarray:
    return np.asarray([self.score(p, t) for p, t in zip(state.problems, state.tokens)])

  def tokens_fed(self, state: _State) -> None:
    del state
    return None  # charged as a PRM of the policy's size reading the policy's tokens

  def cache_index(self, state: _State) -> int:
    del state
    return 0

  # --- finished solutions -------------------------------------------------------------------
  def solution_step_scores(self, questions: Sequence[str], rows: Sequence[Sequence[int]],
                           prompt_lengths: Sequence[int], ends: Sequence[Sequence[int]], *,
                           batch_size: int) -> list[np.ndarray]:
    del batch_size
    out = []
    for q, row, p, e in zip(questions, rows, prompt_lengths, ends):
      if q not in self._by_question:
        raise ValueError(f"the synthetic verifier was not given the problem {q!r}.")
      problem, gen = self._by_question[q], list(row[p:])
      out.append(np.asarray([self.score(problem, gen[:i - p + 1]) for i in e], np.float64))
    return out

  def solution_tokens(self, questions: Sequence[str], rows: Sequence[Sequence[int]],
                      prompt_lengths: Sequence[int]) -> np.ndarray:
    del questions, prompt_lengths
    return np.asarray([len(r) for r in rows], np.int64)
