"""A likelihood verifier: a solution scored by its likelihood under a verifier LM.

The verifier LM starts as a copy of the policy and is trained further, by the policy's own SFT
objective, on reference solutions of train problems (the SFT term of a generative verifier:
Zhang et al., "Generative Verifiers: Reward Modeling as Next-Token Prediction", arXiv
2408.15240, train their verifier on correct solutions beside its verification objective; the
score here is the likelihood itself, with no Yes/No token). A model that computes the task's
steps better than the policy puts less probability on a step the policy got wrong: on the
embedded study's test problems the policy's own mean log-probability ranks its samples at a
within-problem AUC of 0.84, this model's at 0.90 (README, "The likelihood verifier").

A solution is summarised as the policy's confidence is (:class:`ttc_jax.verifiers.confidence
.Measure`, with the sampled token's log-probability: ``mean`` by default), so a step's score is
that of the solution so far, mapped to [0, 1] by ``exp`` (a geometric-mean probability).

During search it keeps the verifier LM's KV cache over the policy's tokens, in the policy's
slots (one forward of a policy-sized model per token, as an implicit PRM): the budget charges
those tokens. A finished solution is scored by one full forward pass.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ttc_jax.models.transformer import Transformer
from ttc_jax.sampling.cached import DecodeState
from ttc_jax.verifiers.confidence import Measure
from ttc_jax.verifiers.confidence import TOKEN_CONFIDENCES
from ttc_jax.verifiers.confidence import step_scores
from ttc_jax.verifiers.implicit import LMVerifierBase


@dataclasses.dataclass(frozen=True)
class _State:
  """Per row of a search: the verifier LM's decode state and the log-probabilities it gave
  the row's solution tokens so far (as (T, 3) confidence stats; only column 0 is read)."""

  decode: DecodeState
  stats: tuple[np.ndarray, ...]


class LikelihoodVerifier(LMVerifierBase):
  """The likelihood of the policy's solutions under ``model`` (an LM head) as a
  :class:`~ttc_jax.verifiers.base.Verifier` (see the module docstring); ``measure`` summarises
  a solution's token log-probabilities (its token must be 'logprob')."""

  def __init__(self, model: Transformer, measure: Measure, pad_id: int,
               name: str = "sft_lm", mesh=None):
    if model.config.head != "lm":
      raise ValueError(f"a likelihood verifier needs an LM head; got head={model.config.head!r}.")
    if measure.token != "logprob":
      raise ValueError(f"a likelihood verifier summarises log-probabilities; got the measure "
                       f"{measure.name!r} of token confidence {measure.token!r}.")
    super().__init__(model, pad_id, name, mesh)
    self.measure = measure

  # --- search ------------------------------------------------------------------------------
  def start(self, problems: Sequence, tokens: np.ndarray, valid: np.ndarray, *,
            cache_size: int, max_step_tokens: int) -> _State:
    del problems, max_step_tokens  # it reads the policy's prompt tokens, in the policy's slots
    decode = self.cached.prefill(tokens, valid, cache_size=cache_size)
    empty = np.zeros((0, len(TOKEN_CONFIDENCES)), np.float32)
    return _State(decode, tuple(empty for _ in range(decode.num_rows)))

  def gather(self, state: _State, rows, compact: bool = False) -> _State:
    rows = np.asarray(rows).reshape(-1)
    return _State(self.cached.gather(state.decode, rows, compact=compact),
                  tuple(state.stats[int(r)] for r in rows))

  def extend(self, state: _State, tokens, valid, confidence=None) -> _State:
    return self._extend(state, tokens, valid)[0]

  def extend_scores(self, state: _State, tokens, valid, confidence=None
                    ) -> tuple[_State, np.ndarray]:
    del confidence  # its own log-probabilities, not the policy's
    return self._extend(state, tokens, valid)

  def _extend(self, state: _State, tokens, valid) -> tuple[_State, np.ndarray]:
    """The model fed each row's valid new tokens; the score after each (NaN at invalid ones)."""
    tokens = np.asarray(tokens, np.int32)
    valid = np.asarray(valid, bool)
    rows, width = valid.shape
    if len(state.stats) != rows:
      raise ValueError(f"{rows} rows of tokens for a state of {len(state.stats)} rows.")
    decode, lp = self.cached.extend_logprobs(state.decode, tokens, valid)
    new, scores = [], np.full((rows, width), np.nan)
    for r in range(rows):
      added = np.zeros((int(valid[r].sum()), len(TOKEN_CONFIDENCES)), np.float32)
      added[:, 0] = lp[r, valid[r]]
      stats = np.concatenate([state.stats[r], added])
      new.append(stats)
      if added.shape[0]:
        scores[r, np.nonzero(valid[r])[0]] = self.measure.prefix_scores(stats, last=len(added))
    return _State(decode, tuple(new)), scores

  def scores(self, state: _State) -> np.ndarray:
    return np.asarray([self.measure.score(s) for s in state.stats], np.float64)

  # --- finished solutions -------------------------------------------------------------------
  def solution_step_scores(self, questions: Sequence[str], rows: Sequence[Sequence[int]],
                           prompt_lengths: Sequence[int], ends: Sequence[Sequence[int]], *,
                           batch_size: int) -> list[np.ndarray]:
    del questions
    stats = self.full.token_confidence(rows, batch_size=batch_size, desc=self.name)
    return step_scores(self.measure, stats, prompt_lengths, ends)  # reads the log-prob column
