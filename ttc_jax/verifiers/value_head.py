"""A value head over the policy's own tokens (the PRMs and ORMs trained here) as a
:class:`~ttc_jax.verifiers.base.Verifier`: incremental scores on its KV cache during search
(:class:`~ttc_jax.verifiers.incremental.IncrementalScorer`), full passes over finished
solutions (:class:`~ttc_jax.verifiers.scoring.Scorer`)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ttc_jax.models.transformer import Transformer
from ttc_jax.verifiers.incremental import IncrementalScorer
from ttc_jax.verifiers.scoring import Scorer


class ValueHeadVerifier:
  """A value-head model that reads the policy's tokens (its scores at the policy's
  positions; it costs what the policy's tokens cost it)."""

  def __init__(self, model: Transformer, pad_id: int, mesh=None):
    self.model, self.pad_id, self.mesh = model, pad_id, mesh
    self.config = model.config
    self._incremental: IncrementalScorer | None = None
    self._full: Scorer | None = None

  @property
  def incremental(self) -> IncrementalScorer:
    """Its KV-cached scorer (kept: its compiled functions are reused)."""
    if self._incremental is None:
      self._incremental = IncrementalScorer(self.model, mesh=self.mesh, pad_id=self.pad_id)
    return self._incremental

  @property
  def full(self) -> Scorer:
    """Its full-pass scorer over finished rows (kept)."""
    if self._full is None:
      self._full = Scorer(self.model, mesh=self.mesh, pad_id=self.pad_id)
    return self._full

  # --- search ------------------------------------------------------------------------------
  def start(self, problems: Sequence, tokens: np.ndarray, valid: np.ndarray, *,
            cache_size: int, max_step_tokens: int):
    del problems, max_step_tokens  # it reads the policy's prompt tokens, in the policy's slots
    return self.incremental.prefill(tokens, valid, cache_size=cache_size)

  def gather(self, state, rows, compact: bool = False):
    return self.incremental.gather(state, rows, compact=compact)

  def extend(self, state, tokens, valid, confidence=None):
    del confidence  # it reads the tokens
    return self.incremental.extend(state, tokens, valid)

  def extend_scores(self, state, tokens, valid, confidence=None):
    del confidence
    return self.incremental.extend_scores(state, tokens, valid)

  def cache_index(self, state) -> int:
    return int(state.cache.index)

  def scores(self, state) -> np.ndarray:
    return self.incremental.scores(state)

  def tokens_fed(self, state) -> None:
    del state
    return None

  # --- finished solutions ------------------------------------------------------------------
  def solution_step_scores(self, questions: Sequence[str], rows: Sequence[Sequence[int]],
                           prompt_lengths: Sequence[int], ends: Sequence[Sequence[int]], *,
                           batch_size: int) -> list[np.ndarray]:
    del questions, prompt_lengths
    return self.full.step_scores(rows, ends, batch_size=batch_size)

  def solution_tokens(self, questions: Sequence[str], rows: Sequence[Sequence[int]],
                      prompt_lengths: Sequence[int]) -> np.ndarray:
    del questions, prompt_lengths
    return np.asarray([len(r) for r in rows], np.int64)
