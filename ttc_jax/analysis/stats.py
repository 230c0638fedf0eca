"""Confidence intervals and paired comparisons over problems (scipy.stats.bootstrap).

The unit of resampling is the problem: an accuracy is the mean of per-problem
outcomes (0/1 for one run; a fraction for a best-of-N curve averaged over
subsets of a problem's sample pool, or for a search method averaged over its
seeds), and its 95% interval is a bootstrap over problems. A comparison of two
methods run on the same problems is paired: the interval of the mean
per-problem difference. "Better" is claimed only where that interval excludes
zero.

Percentile intervals (not BCa): accuracies are means of bounded values, often
0/1, where BCa's jackknife acceleration is undefined for a constant sample and
unstable near 0 or 1. Every interval is deterministic given ``seed``.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000


@dataclasses.dataclass(frozen=True)
class Estimate:
  """A mean over problems with its bootstrap interval."""

  mean: float
  low: float
  high: float
  n: int  # problems

  def to_json(self) -> dict:
    return {"mean": self.mean, "ci": [self.low, self.high], "n": self.n}

  def __str__(self) -> str:
    return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


@dataclasses.dataclass(frozen=True)
class Comparison:
  """Mean per-problem difference a - b with its paired bootstrap interval."""

  diff: Estimate
  a: str
  b: str

  @property
  def significant(self) -> bool:
    return self.diff.low > 0 or self.diff.high < 0

  @property
  def verdict(self) -> str:
    """'a better', 'b better' or 'no significant difference'."""
    if self.diff.low > 0:
      return f"{self.a} better"
    if self.diff.high < 0:
      return f"{self.b} better"
    return "no significant difference"

  def to_json(self) -> dict:
    return {"a": self.a, "b": self.b, "diff": self.diff.mean,
            "ci": [self.diff.low, self.diff.high], "n": self.diff.n,
            "significant": self.significant, "verdict": self.verdict}


def _values(x, name: str) -> np.ndarray:
  v = np.asarray(x, np.float64)
  if v.ndim != 1 or v.size == 0:
    raise ValueError(f"{name}: expected a non-empty 1-D array of per-problem values, got shape "
                     f"{v.shape}.")
  if not np.isfinite(v).all():
    raise ValueError(f"{name}: {int((~np.isfinite(v)).sum())} per-problem values are not finite.")
  return v


def mean_ci(values, *, confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
            seed: int = 0, name: str = "values") -> Estimate:
  """The mean of per-problem ``values`` and its percentile bootstrap interval."""
  v = _values(values, name)
  m = float(v.mean())
  if v.size == 1 or np.all(v == v[0]):  # no spread: the bootstrap distribution is a point
    return Estimate(m, m, m, int(v.size))
  from scipy import stats  # here, not at the top: 1.7 s of every process start
  res = stats.bootstrap((v,), np.mean, confidence_level=confidence, n_resamples=resamples,
                        method="percentile", vectorized=True, rng=np.random.default_rng(seed))
  ci = res.confidence_interval
  return Estimate(m, float(ci.low), float(ci.high), int(v.size))


def paired_diff(a, b, *, names: tuple[str, str] = ("a", "b"), confidence: float = CONFIDENCE,
                resamples: int = RESAMPLES, seed: int = 0) -> Comparison:
  """Paired bootstrap over problems of mean(a) - mean(b); ``a[i]``, ``b[i]``: problem i."""
  a, b = _values(a, names[0]), _values(b, names[1])
  if a.shape != b.shape:
    raise ValueError(f"paired comparison of {names[0]} ({a.size} problems) and {names[1]} "
                     f"({b.size} problems): both need the same problems in the same order.")
  return Comparison(mean_ci(a - b, confidence=confidence, resamples=resamples, seed=seed,
                            name=f"{names[0]} - {names[1]}"), *names)


def per_problem_mean(runs: Sequence[Sequence[float]], name: str = "runs") -> np.ndarray:
  """(seeds, problems) outcomes -> per-problem mean over seeds (the bootstrap unit)."""
  r = np.asarray(runs, np.float64)
  if r.ndim != 2 or r.shape[0] == 0:
    raise ValueError(f"{name}: expected (seeds, problems) outcomes, got shape {r.shape}.")
  return r.mean(axis=0)


def seed_spread(runs: Sequence[Sequence[float]]) -> dict:
  """Accuracy of each seed's run, and their standard deviation (ddof=1; 0 for one seed)."""
  acc = np.asarray(runs, np.float64).mean(axis=1)
  return {"per_seed": [float(x) for x in acc],
          "std": float(acc.std(ddof=1)) if acc.size > 1 else 0.0}
