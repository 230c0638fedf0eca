"""Problem difficulty from the policy's own success rate (the paper's oracle difficulty).

``pass@1`` of a problem is the fraction of ``n`` policy samples (temperature 1)
that reach the right answer. Oracle bins are the 5 quantiles of pass@1 over the
evaluated problems (bin 0 = easiest, i.e. highest pass@1, as in the paper's
level 1).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

NUM_BINS = 5


def pass_at_1_summary(pass_at_1: np.ndarray, difficulty: Sequence[int]) -> dict:
  """Mean, spread and per-difficulty means of per-problem pass@1."""
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
  order = np.lexsort((np.arange(p.size), -p))  # descending pass@1, stable
  bins = np.empty(p.size, np.int64)
  bins[order] = np.arange(p.size) * num_bins // p.size
  return bins


def plot_pass_at_1(pass_at_1: np.ndarray, difficulty: Sequence[int], path: str,
                   title: str = "policy pass@1") -> None:
  """Histogram of per-problem pass@1 and mean pass@1 per difficulty knob -> PNG."""
  # The Figure API needs no pyplot backend: nothing global changes (notebooks keep
  # their inline backend).
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  p = np.asarray(pass_at_1)
  d = np.asarray(difficulty)
  fig = Figure(figsize=(10, 3.6))
  a, b = fig.subplots(1, 2)
  a.hist(p, bins=np.linspace(0, 1, 21), color="tab:blue", edgecolor="white")
  a.axvline(p.mean(), color="k", ls="--", label=f"mean {p.mean():.2f}")
  a.set_xlabel("pass@1 (per test problem)")
  a.set_ylabel("problems")
  a.legend()
  a.set_title(title)
  ks = np.unique(d)
  b.bar(ks, [p[d == k].mean() for k in ks], color="tab:orange")
  b.set_xlabel("difficulty knob (number of operations)")
  b.set_ylabel("mean pass@1")
  b.set_ylim(0, 1)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=110)
