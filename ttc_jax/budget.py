"""One budget record for every test-time method (the paper's accounting).

generations: the paper's unit of test-time compute: N for best-of-N and beam
  search with budget N; N x (k + 1) for lookahead search with k steps.
policy_tokens / prm_tokens: tokens run through each model, prompts included
  (a prompt encoded once and shared by a tree's rows counts once).
policy_flops / prm_flops: forward FLOPs of each model (the PRM is the verifier),
  attention over the context included: every run of tokens is added with its
  position range in its row, and costs :func:`ttc_jax.accounting.forward_flops`
  (2 N per token plus 4 n_layer d_attn (t + 1) at position t).
flops: their sum (what stored cells and reports read).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ttc_jax import accounting
from ttc_jax.accounting import ModelCost


@dataclasses.dataclass
class Budget:
  """Test-time compute spent on one problem (see the module docstring)."""

  generations: float = 0.0
  policy_tokens: int = 0
  prm_tokens: int = 0
  policy_flops: float = 0.0
  prm_flops: float = 0.0

  @property
  def flops(self) -> float:
    """Policy and verifier FLOPs together."""
    return self.policy_flops + self.prm_flops

  def add_policy(self, cost: ModelCost, start: int, count: int) -> None:
    """The policy ran ``count`` tokens of a row that already held ``start`` tokens
    (positions [start, start + count): a prompt from 0, a step or rollout at the
    row's current length)."""
    self.policy_tokens += _count(count)
    self.policy_flops += _flops(cost, start, count)

  def add_prm(self, cost: ModelCost, start: int, count: int) -> None:
    """The PRM ran ``count`` tokens at positions [start, start + count) of a row."""
    self.prm_tokens += _count(count)
    self.prm_flops += _flops(cost, start, count)

  def __add__(self, other: "Budget") -> "Budget":
    return Budget(self.generations + other.generations, self.policy_tokens + other.policy_tokens,
                  self.prm_tokens + other.prm_tokens, self.policy_flops + other.policy_flops,
                  self.prm_flops + other.prm_flops)

  def to_dict(self) -> dict:
    return {**dataclasses.asdict(self), "flops": self.flops}


def _count(count) -> int:
  if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
    raise ValueError(f"count={count!r}: expected a token count (an integer >= 0).")
  return int(count)


def _flops(cost: ModelCost, start, count) -> float:
  if not isinstance(cost, ModelCost):
    raise TypeError(f"cost={cost!r}: expected a ttc_jax.accounting.ModelCost (the model's "
                    "parameters, layers and attention width), not a bare parameter count.")
  return accounting.forward_flops(cost, start, start + int(count))
