"""Incremental verifier scoring: the PRM keeps its own KV cache during search.

Scoring a new step is "extend the PRM cache by the step's tokens and read the
value at the step's last token", so every token of a search tree goes through
the PRM exactly once (prompts included), and selecting rows of the frontier is a
gather over the batch axis of the PRM cache, just as for the policy.

:class:`IncrementalScorer` is the policy's :class:`~ttc_jax.sampling.core.CachedModel`
(the same compiled prefill / extend / gather, the same :class:`DecodeState`) bound
to a value-head model: a state's ``logits`` are the value logits at each row's
last token, and a score is their sigmoid.

Shapes are fixed: rows that add nothing in a call pass an all-False ``valid``
row and keep their previous score.
"""

from __future__ import annotations

import numpy as np
import scipy.special
from jax.sharding import Mesh

from ttc_jax.models.transformer import Transformer
from ttc_jax.sampling.cached import CachedModel
from ttc_jax.sampling.cached import DecodeState


class IncrementalScorer(CachedModel):
  """A value-head model bound to a mesh: prefill / extend / gather from
  :class:`CachedModel`, plus step scores (sigmoid of the value head)."""

  def __init__(self, model: Transformer, mesh: Mesh | None = None, pad_id: int = 0,
               window_granularity: int = 32):
    if model.config.head != "value":
      raise ValueError(f"a verifier needs a value-head model; got head={model.config.head!r}.")
    super().__init__(model, mesh=mesh, pad_id=pad_id, window_granularity=window_granularity)

  def scores(self, state: DecodeState) -> np.ndarray:
    """(num_rows,) score at each row's last token."""
    return _sigmoid(np.asarray(state.logits)[:state.num_rows])

  def extend_scores(self, state: DecodeState, tokens, valid) -> tuple[DecodeState, np.ndarray]:
    """Like :meth:`extend`; also returns the (num_rows, T) scores at every new token."""
    state, values = self.extend_outputs(state, tokens, valid)
    return state, _sigmoid(np.asarray(values)[:state.num_rows])


def _sigmoid(x: np.ndarray) -> np.ndarray:
  """The value head's score, on the host (float32, like the model's output)."""
  return scipy.special.expit(np.asarray(x, np.float32))
