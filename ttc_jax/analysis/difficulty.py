"""Problem difficulty from the policy's own success rate (the paper's oracle difficulty).

``pass@1`` of a problem is the fraction of ``n`` policy samples (temperature 1)
that reach the right answer. Oracle bins are the quantiles of pass@1 over the
evaluated problems (bin 0 = easiest, i.e. highest pass@1, as in the paper's
level 1).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ttc_jax.sampling import solutions

NUM_BINS = 5


def pass_at_1_summary(pass_at_1: np.ndarray, difficulty: Sequence[int]) -> dict:
  """Mean, spread and per-difficulty-knob means of per-problem pass@1."""
  p = np.asarray(pass_at_1, np.float64)
  d = np.asarray(difficulty)
  return {
      "num_problems": int(p.size),
      "mean": float(p.mean()),
      "frac_ge_0.7": float((p >= 0.7).mean()),
      "frac_le_0.2": float((p <= 0.2).mean()),
      "by_difficulty": {int(k): float(p[d == k].mean()) for k in np.unique(d)},
  }


def oracle_bins(pass_at_1: np.ndarray, num_bins: int = NUM_BINS) -> np.ndarray:
  """Bin index per problem: quantile bins of pass@1, 0 = easiest (highest pass@1).

  Ties are broken by problem order so that bins have equal sizes (+-1).
  """
  p = np.asarray(pass_at_1, np.float64)
  if not 1 <= num_bins <= max(1, p.size):
    raise ValueError(f"num_bins={num_bins} must be in [1, {p.size}] (the number of problems).")
  order = np.lexsort((np.arange(p.size), -p))  # descending pass@1, stable
  bins = np.empty(p.size, np.int64)
  bins[order] = np.arange(p.size) * num_bins // p.size
  return bins


@dataclasses.dataclass
class Difficulty:
  """The difficulty artifact: per-problem pass@1 and the samples it was measured on."""

  pass_at_1: np.ndarray
  record: dict
  gens: solutions.Generations
  n: int

  def samples(self, tok, task, problems) -> solutions.ProblemSamples:
    """The graded samples of ``problems`` (the artifact's problems, in order)."""
    if len(problems) * self.n != self.gens.tokens.shape[0]:
      raise ValueError(f"the difficulty artifact holds {self.gens.tokens.shape[0]} "
                                    f"samples, not {len(problems)} x {self.n}.")
    prompts = [tok.encode_prompt(task.format_prompt(p)) for p in problems]
    return solutions.grade(tok, task, problems, self.n, prompts, self.gens)
