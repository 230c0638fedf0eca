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


# --- predicted bins and how they agree with the oracle's -------------------------------


def mean_final_scores(scores, num_problems: int) -> np.ndarray:
  """Per-problem mean of per-sample verifier scores stored problem-major (problem i's samples
  are rows i * n .. (i + 1) * n - 1, as verifier_eval's scored.npz stores them)."""
  s = np.asarray(scores, np.float64)
  if s.ndim == 2:
    if s.shape[0] != num_problems:
      raise ValueError(f"scores of shape {s.shape}: expected ({num_problems}, samples).")
    return s.mean(axis=1)
  if s.ndim != 1 or num_problems < 1 or s.size % num_problems:
    raise ValueError(f"{s.size} scores (shape {s.shape}) are not {num_problems} problems x an "
                     "equal number of samples.")
  return s.reshape(num_problems, -1).mean(axis=1)


def predicted_bins(mean_scores, num_bins: int = NUM_BINS) -> np.ndarray:
  """Quantile bins of the verifier's mean final-answer score per problem (no ground truth),
  oriented like the oracle bins: 0 = easiest = highest mean score."""
  s = np.asarray(mean_scores, np.float64)
  if s.ndim != 1 or not np.isfinite(s).all():
    raise ValueError(f"mean_scores: expected a 1-D array of finite per-problem scores, got shape "
                     f"{s.shape} ({int((~np.isfinite(s)).sum())} not finite).")
  return oracle_bins(s, num_bins)


def check_bins(bins, num_problems: int | None, num_bins: int, name: str = "bins") -> np.ndarray:
  b = np.asarray(bins)
  if b.ndim != 1 or (num_problems is not None and b.size != num_problems):
    raise ValueError(f"{name}: expected {num_problems if num_problems is not None else 'one'} "
                     f"bin indices (one per problem), got shape {b.shape}.")
  if b.size and (not np.issubdtype(b.dtype, np.integer) or b.min() < 0 or b.max() >= num_bins):
    raise ValueError(f"{name}: expected integers in [0, {num_bins}), got values in "
                     f"[{b.min()}, {b.max()}] ({b.dtype}).")
  return b.astype(np.int64)


def bin_agreement(bins_a, bins_b, num_bins: int, values_a=None, values_b=None) -> dict:
  """How two binnings of the same problems agree.

  Returns ``confusion`` (num_bins x num_bins counts, row = bin in a, column = bin in b),
  ``exact`` (fraction in the same bin), ``within_one`` (fraction at most one bin apart),
  ``spearman`` (rank correlation of ``values_a`` and ``values_b`` when both are given, else of
  the bins; None when one side is constant) and ``spearman_of`` ("values" or "bins").
  """
  a = check_bins(bins_a, None, num_bins, "bins_a")
  b = check_bins(bins_b, a.size, num_bins, "bins_b")
  if a.size == 0:
    raise ValueError("bin_agreement needs at least one problem.")
  confusion = np.zeros((num_bins, num_bins), np.int64)
  np.add.at(confusion, (a, b), 1)
  if (values_a is None) != (values_b is None):
    raise ValueError("values_a and values_b: give both (continuous values) or neither.")
  if values_a is not None:
    x, y = np.asarray(values_a, np.float64), np.asarray(values_b, np.float64)
    if x.shape != a.shape or y.shape != a.shape:
      raise ValueError(f"values_a {x.shape} and values_b {y.shape}: expected ({a.size},) like "
                       "the bins.")
    of = "values"
  else:
    x, y, of = a, b, "bins"
  from scipy import stats as scipy_stats  # here, not at the top: 1.7 s of every process start
  rho = None
  if np.ptp(x) > 0 and np.ptp(y) > 0:
    rho = float(scipy_stats.spearmanr(x, y).statistic)
  return {"confusion": confusion.tolist(), "exact": float(np.mean(a == b)),
          "within_one": float(np.mean(np.abs(a - b) <= 1)), "spearman": rho,
          "spearman_of": of, "problems": int(a.size)}


def split_half_stability(correct_matrix, num_bins: int = NUM_BINS) -> dict:
  """Oracle bins from the first half of each problem's samples against bins from the second
  half (each half n // 2 samples; an odd last sample is left out): how stable the oracle
  difficulty itself is at this sample count. :func:`bin_agreement` of the two, Spearman of
  the two pass@1 estimates, and ``samples_per_half``."""
  c = np.asarray(correct_matrix, np.float64)
  if c.ndim != 2 or c.shape[1] < 2:
    raise ValueError(f"correct_matrix: expected (problems, samples >= 2), got shape {c.shape}.")
  h = c.shape[1] // 2
  p_a, p_b = c[:, :h].mean(axis=1), c[:, h:2 * h].mean(axis=1)
  out = bin_agreement(oracle_bins(p_a, num_bins),
                      oracle_bins(p_b, num_bins), num_bins, p_a, p_b)
  out["samples_per_half"] = int(h)
  return out
