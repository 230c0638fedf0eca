"""One budget record for every test-time method (the paper's accounting).

generations: the paper's unit of test-time compute: N for best-of-N and beam
  search with budget N; N x (k + 1) for lookahead search with k steps.
policy_tokens / prm_tokens: tokens run through each model, prompts included
  (a prompt encoded once and shared by a tree's rows counts once).
flops: 2 x parameters x tokens for each model (inference, 2ND).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Budget:
  generations: float = 0.0
  policy_tokens: int = 0
  prm_tokens: int = 0
  flops: float = 0.0

  def add_policy(self, tokens: int, params: int) -> None:
    self.policy_tokens += int(tokens)
    self.flops += 2.0 * params * tokens

  def add_prm(self, tokens: int, params: int) -> None:
    self.prm_tokens += int(tokens)
    self.flops += 2.0 * params * tokens

  def __add__(self, other: "Budget") -> "Budget":
    return Budget(self.generations + other.generations, self.policy_tokens + other.policy_tokens,
                  self.prm_tokens + other.prm_tokens, self.flops + other.flops)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)
