"""Summaries of the study's stored cells: accuracy per budget and difficulty bin, cost.

A cell is one (method, params) of the search sweep run on every study problem;
it stores per-problem outcomes (correct, budget), so every summary here is a
re-slicing of stored outcomes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def summarize(cell: dict, bins: np.ndarray, num_bins: int) -> dict:
  """One curve point of a stored cell: accuracy overall and per difficulty bin, costs."""
  correct = np.asarray(cell["correct"], np.float64)
  bins = np.asarray(bins)
  if correct.shape != bins.shape:
    raise ValueError(f"cell {cell['method']} {cell['params']} has {correct.size} outcomes for "
                     f"{bins.size} problems.")
  by_bin = [float(correct[bins == b].mean()) if np.any(bins == b) else float("nan")
            for b in range(num_bins)]
  return {"method": cell["method"], "params": cell["params"],
          "budget_generations": cell["budget_generations"],
          "accuracy": float(correct.mean()), "accuracy_by_bin": by_bin,
          "policy_tokens": int(np.sum(cell["policy_tokens"])),
          "prm_tokens": int(np.sum(cell["prm_tokens"])),
          "flops": float(np.sum(cell["flops"])), "wall_s": cell["wall_s"]}


def methods(curves: Sequence[dict]) -> list[str]:
  """The methods of ``curves`` in sweep order."""
  return list(dict.fromkeys(c["method"] for c in curves))


def point(curves: Sequence[dict], method: str, budget: float) -> dict | None:
  """The curve point of ``method`` at generation budget ``budget`` (None if not swept)."""
  return next((c for c in curves if c["method"] == method and c["budget_generations"] == budget),
              None)


def perf(curves: Sequence[dict], beam_method: str, baseline: str = "best_of_n_weighted") -> dict:
  """Wall time of ``beam_method`` over ``baseline`` at the largest N, and PRM tokens per
  policy token over every beam and lookahead cell."""
  def find(method, n):
    return next((c for c in curves if c["method"] == method and c["params"]["n"] == n), None)

  nmax = max(c["params"]["n"] for c in curves)
  beam, bon = find(beam_method, nmax), find(baseline, nmax)
  search = [c for c in curves if c["method"].startswith(("beam", "lookahead"))]
  pol = sum(c["policy_tokens"] for c in search)
  return {
      "beam_vs_bon_wall_ratio": beam["wall_s"] / bon["wall_s"] if beam and bon else None,
      "beam_vs_bon_n": nmax,
      "beam_method": beam_method,
      "prm_tokens_per_policy_token": sum(c["prm_tokens"] for c in search) / pol if pol else None,
  }
