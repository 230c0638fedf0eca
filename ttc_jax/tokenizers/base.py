"""The one tokenizer protocol: what the sampling core, search, verifiers and stages use of a
tokenizer, whether sentencepiece trained on the task (:mod:`ttc_jax.tokenizers.spm`) or an
imported checkpoint's (:mod:`ttc_jax.tokenizers.hf`)."""

from __future__ import annotations

from typing import Protocol
from typing import Sequence

import numpy as np


class Tokenizer(Protocol):
  """Ids, the special ids the sampling core stops on, and text in and out."""

  @property
  def vocab_size(self) -> int: ...

  @property
  def pad_id(self) -> int: ...

  @property
  def eos_ids(self) -> tuple[int, ...]: ...

  @property
  def step_ids(self) -> tuple[int, ...]:
    """Ids whose text ends a solution step (contains the task's step delimiter)."""

  @property
  def step_pairs(self) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
    """(before, after) id sets: a step also ends at an ``after`` id right after a ``before``
    id (a delimiter split over two tokens)."""

  @property
  def suppress_ids(self) -> tuple[int, ...]:
    """Ids never sampled (pad, BOS, unused pieces)."""

  def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]: ...

  def encode_prompt(self, text: str) -> list[int]:
    """A task prompt as the policy reads it (BOS + text, or a chat template's user turn)."""

  def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...

  def check_vocab(self, model_vocab_size: int) -> None:
    """Raises if an id of the tokenizer does not index the model's embedding."""
