"""The one verifier protocol: everything that scores a policy's solutions.

A verifier scores finished solutions in full passes (the verifier evaluation, the ablation,
the revision sweep, compute-optimal's difficulty prediction) and partial ones one step at a
time during search (its own state per row, fed the policy's tokens), and counts its own
tokens: they, with its model's architecture (``config``), are what the budget charges it.

Four kinds implement it: a value head over the policy's own tokens (the PRMs and ORMs
trained here; :class:`~ttc_jax.verifiers.value_head.ValueHeadVerifier`), an imported PRM that
reads the policy's steps in its own format and tokens
(:class:`~ttc_jax.verifiers.adapters.PolicyBridge`), an LM head fine-tuned from the policy and
read by its implicit reward against it (the implicit PRM and the DPO verifier;
:class:`~ttc_jax.verifiers.implicit.ImplicitRewardVerifier`), and the policy's own confidence
in the tokens it sampled (:class:`~ttc_jax.verifiers.confidence.ConfidenceVerifier`: no model
call during search, 0 FLOPs). Search, the stages and the accounting use only this protocol.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np

from ttc_jax.models.transformer import TransformerConfig


class Verifier(Protocol):
  """Scores solutions (see the module docstring)."""

  # Its model's architecture: its FLOPs per token (accounting.ModelCost.from_config).
  config: TransformerConfig

  # --- search: a state per row, fed the policy's tokens -------------------------------------
  def start(self, problems: Sequence, tokens: np.ndarray, valid: np.ndarray, *,
            cache_size: int, max_step_tokens: int) -> Any:
    """The state of the problems' prompts (``tokens``/``valid``: the policy's left-padded
    prompts; ``cache_size``: the policy's slots, ``max_step_tokens``: its step cap)."""

  def gather(self, state: Any, rows, compact: bool = False) -> Any:
    """The state of rows ``rows`` (repeats allowed): expansion and selection in search."""

  def extend(self, state: Any, tokens, valid, confidence=None) -> Any:
    """Each row fed its next step (its valid tokens of ``tokens``; ``confidence``: what the
    sampling core returned with them, ``SampleOutput.token_stats``, which a verifier may read
    instead of running a model)."""

  def extend_scores(self, state: Any, tokens, valid, confidence=None) -> tuple[Any, np.ndarray]:
    """Like :meth:`extend` with a whole solution per row; returns each token's score (NaN
    where none is defined)."""

  def scores(self, state: Any) -> np.ndarray:
    """Each row's score after what it was fed."""

  def cache_index(self, state: Any) -> int:
    """Where its cache writes next (the slot after the longest row; 0 without a cache): a
    search compacts before a step would run past its slots."""

  def tokens_fed(self, state: Any) -> np.ndarray | None:
    """The verifier's own tokens each row has read so far (None: it reads the policy's
    tokens, at the policy's positions)."""

  # --- finished solutions -------------------------------------------------------------------
  def solution_step_scores(self, questions: Sequence[str], rows: Sequence[Sequence[int]],
                           prompt_lengths: Sequence[int], ends: Sequence[Sequence[int]], *,
                           batch_size: int) -> list[np.ndarray]:
    """Each solution's score at each of its steps (``rows``: prompt and generation in the
    policy's tokens; ``ends``: each step's last position in its row); NaN at a span that is
    no step."""

  def solution_tokens(self, questions: Sequence[str], rows: Sequence[Sequence[int]],
                      prompt_lengths: Sequence[int]) -> np.ndarray:
    """The verifier's own tokens of each finished solution (what reading it costs)."""
