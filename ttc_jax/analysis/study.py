"""Summaries of the study's stored cells: accuracy per budget and difficulty bin, cost.

A cell is one (method, params, seed) of the search sweep run on every study
problem; it stores per-problem outcomes (correct, answer, budget), so every
summary here is a re-slicing of stored outcomes. A curve point is a
(method, params) over its seeds: its accuracy is the mean over problems of
each problem's outcome averaged over seeds, with a bootstrap interval over
problems (:mod:`ttc_jax.analysis.stats`); comparisons are paired.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ttc_jax.analysis import stats as stats_lib
from ttc_jax.search import registry
from ttc_jax.search.records import Cell
from ttc_jax.search.records import CurvePoint


def points(cells: Sequence[Cell]) -> list[list[Cell]]:
  """The cells grouped by (method, params) in sweep order: one curve point's seeds."""
  groups: dict[tuple, list[Cell]] = {}
  for cell in cells:
    key = (cell.method, tuple(sorted(cell.params.items())))
    groups.setdefault(key, []).append(cell)
  return list(groups.values())


def outcomes(seeds: Sequence[Cell]) -> np.ndarray:
  """(seeds, problems) 0/1 outcomes of one point's cells (every seed on the same problems)."""
  problems = seeds[0].problems
  for cell in seeds[1:]:
    if cell.problems != problems:
      raise ValueError(f"cell {cell.key} was run on other problems than "
                       f"{seeds[0].key}: seeds of a point must share their problems.")
  return np.asarray([c.column("correct") for c in seeds], np.float64)


def summarize(seeds: Sequence[Cell], bins: np.ndarray, num_bins: int, seed: int = 0
              ) -> CurvePoint:
  """One curve point from its cells (one per search seed): accuracy with a 95%
  bootstrap interval over problems (each problem's outcome averaged over seeds),
  per difficulty bin likewise, the spread of the seeds, and mean costs per seed (FLOPs also
  per problem: ``flops_by_problem``)."""
  runs = outcomes(seeds)
  bins = np.asarray(bins)
  if runs.shape[1] != bins.size:
    raise ValueError(f"cell {seeds[0].method} {seeds[0].params} has {runs.shape[1]} "
                     f"outcomes for {bins.size} problems.")
  per_problem = stats_lib.per_problem_mean(runs)
  est = stats_lib.mean_ci(per_problem, seed=seed)
  by_bin = [stats_lib.mean_ci(per_problem[bins == b], seed=seed) if np.any(bins == b) else None
            for b in range(num_bins)]
  first = seeds[0]
  k = len(seeds)
  spread = stats_lib.seed_spread(runs)
  flops = [np.asarray(c.column("flops"), np.float64) for c in seeds]
  return CurvePoint(
      method=first.method, params=first.params, budget_generations=first.budget_generations,
      seeds=[c.seed for c in seeds],
      accuracy=est.mean, ci=[est.low, est.high],
      seed_accuracy=spread["per_seed"], seed_std=spread["std"],
      accuracy_by_bin=[float("nan") if e is None else e.mean for e in by_bin],
      ci_by_bin=[[float("nan")] * 2 if e is None else [e.low, e.high] for e in by_bin],
      per_problem=[float(x) for x in per_problem],
      policy_tokens=int(round(sum(np.sum(c.column("policy_tokens")) for c in seeds) / k)),
      prm_tokens=int(round(sum(np.sum(c.column("prm_tokens")) for c in seeds) / k)),
      flops=float(sum(np.sum(f) for f in flops) / k),
      # Each problem's FLOPs, mean over seeds: what a policy that runs this point on
      # some problems only spends (compute_optimal).
      flops_by_problem=[float(x) for x in np.mean(flops, axis=0)],
      wall_s=float(sum(c.wall_s for c in seeds) / k))


def compare(curves: Sequence[CurvePoint], a: tuple[str, float], b: tuple[str, float],
            mask: np.ndarray | None = None, seed: int = 0) -> stats_lib.Comparison | None:
  """Paired bootstrap over problems of point a = (method, budget) minus point b
  (on the problems where ``mask`` is set); None if either point was not swept."""
  return compare_points(point(curves, *a), point(curves, *b), (f"{a[0]}@{a[1]}",
                                                                f"{b[0]}@{b[1]}"), mask, seed)


def compare_points(pa: CurvePoint | None, pb: CurvePoint | None, names: tuple[str, str],
                   mask: np.ndarray | None = None, seed: int = 0
                   ) -> stats_lib.Comparison | None:
  """Paired bootstrap over problems of curve point pa minus pb (on the problems where
  ``mask`` is set); None if either is missing or the mask is empty."""
  if pa is None or pb is None:
    return None
  return compare_outcomes(pa.per_problem, pb.per_problem, names, mask, seed)


def compare_outcomes(x, y, names: tuple[str, str], mask: np.ndarray | None = None,
                     seed: int = 0) -> stats_lib.Comparison | None:
  """Paired bootstrap over problems of per-problem outcomes x minus y (on the problems where
  ``mask`` is set); None if the mask is empty."""
  x, y = np.asarray(x), np.asarray(y)
  if mask is not None:
    x, y = x[np.asarray(mask)], y[np.asarray(mask)]
  if x.size == 0:
    return None
  return stats_lib.paired_diff(x, y, names=names, seed=seed)


def methods(curves: Sequence[CurvePoint]) -> list[str]:
  """The methods of ``curves`` in sweep order."""
  return list(dict.fromkeys(c.method for c in curves))


def point(curves: Sequence[CurvePoint], method: str, budget: float) -> CurvePoint | None:
  """The curve point of ``method`` at generation budget ``budget`` (None if not swept)."""
  return next((c for c in curves if c.method == method and c.budget_generations == budget),
              None)


def perf(curves: Sequence[CurvePoint], beam_method: str, baseline: str = "best_of_n_weighted"
         ) -> dict:
  """Wall time of ``beam_method`` over ``baseline`` at the largest N, and PRM tokens per
  policy token over every tree-search cell (beam, lookahead, DVTS, particles)."""
  def find(method, n):
    return next((c for c in curves if c.method == method and c.params["n"] == n), None)

  nmax = max(c.params["n"] for c in curves)
  beam, bon = find(beam_method, nmax), find(baseline, nmax)
  search = [c for c in curves if registry.method(c.method).tree]
  pol = sum(c.policy_tokens for c in search)
  return {
      "beam_vs_bon_wall_ratio": beam.wall_s / bon.wall_s if beam and bon else None,
      "beam_vs_bon_n": nmax,
      "beam_method": beam_method,
      "prm_tokens_per_policy_token": sum(c.prm_tokens for c in search) / pol if pol else None,
  }
