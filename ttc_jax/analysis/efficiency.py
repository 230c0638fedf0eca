"""How much less compute the compute-optimal policy needs than a baseline to reach its accuracy
(paper sections 5.3 and 6.3, "4x fewer generations"), with bootstrap intervals over problems,
and the claims that test it.

For each baseline budget N, the smallest compute-optimal budget b whose accuracy reaches the
baseline's at N; the ratio N' / b, where N' is the baseline's own smallest budget with that
accuracy (so a flat baseline gets no credit for budget it wastes), and the same in FLOPs.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ttc_jax.analysis import claims as claims_lib
from ttc_jax.analysis import stats as stats_lib
from ttc_jax.analysis import study as study_lib
from ttc_jax.search.records import CurvePoint

EFFICIENCY_RESAMPLES = 2000
PAPER_EFFICIENCY = 4.0
_TOL = 1e-12  # "accuracy >= a_N" up to float rounding


def _interval(x: np.ndarray, confidence: float) -> list:
  """Percentile interval whose endpoints are values of ``x`` (inf -> None)."""
  alpha = 100 * (1 - confidence) / 2
  lo = float(np.percentile(x, alpha, method="lower"))
  hi = float(np.percentile(x, 100 - alpha, method="higher"))
  return [None if math.isinf(v) else v for v in (lo, hi)]


def _resample_counts(p: int, resamples: int, seed: int) -> np.ndarray:
  idx = np.random.default_rng(seed).integers(0, p, (resamples, p))
  counts = np.zeros((resamples, p))
  np.add.at(counts, (np.repeat(np.arange(resamples), p), idx.reshape(-1)), 1.0)
  return counts


def efficiency(co_points: Sequence[CurvePoint], bon_points: Sequence[CurvePoint], seed: int = 0,
               resamples: int = EFFICIENCY_RESAMPLES,
               confidence: float = stats_lib.CONFIDENCE, baseline: str | None = None) -> dict:
  """How many times fewer generations (and FLOPs) the compute-optimal curve needs to match
  each baseline point.

  For each baseline point (budget N, accuracy a_N): the smallest compute-optimal budget b with
  accuracy >= a_N (up to 1e-12); ``generations_ratio`` N' / b, ``flops_ratio`` the baseline's
  FLOPs per problem at N' over the compute-optimal point's at b, where N' is the baseline's
  own smallest budget with accuracy >= a_N (N wherever its curve still rises; a flat curve
  gets no credit for the budgets it wastes: all-zero accuracies give ratios <= 1). A bootstrap over problems (the
  same resamples for every point) gives each ratio's percentile interval; a resample in which
  no budget reaches a_N counts in ``unreached_resamples`` and has ratio 0, read as "below
  N' / b_max" (``floor``). ``best``: the largest ratio over the baseline's budgets, its interval
  from the per-resample maximum.

  Returns:
    {"rows": [per baseline point: n, baseline_accuracy, baseline_ci, reached, budget (b or
    None), budget_ci, co_accuracy, generations_ratio, generations_ratio_ci, flops_ratio,
    flops_ratio_ci, baseline_flops_per_problem, co_flops_per_problem, floor,
    unreached_resamples], "best": {generations_ratio, generations_ratio_ci, n, flops_ratio,
    flops_ratio_ci, n_flops}, "co_budgets", "resamples", "co_method", "baseline_method",
    "baseline" (``baseline``: a reader's name for it, default the method), "problems"}.
  """
  co = sorted(co_points, key=lambda c: c.budget_generations)
  bon = sorted(bon_points, key=lambda c: c.budget_generations)
  if not co or not bon:
    raise ValueError(f"efficiency needs compute-optimal and baseline points, got {len(co)} and "
                     f"{len(bon)}.")
  sizes = {len(c.per_problem) for c in co + bon}
  if len(sizes) != 1:
    raise ValueError(f"points have {sorted(sizes)} per-problem outcomes: expected the same "
                     "problems for every point.")
  p = sizes.pop()
  v = np.asarray([c.per_problem for c in co], np.float64)
  w = np.asarray([c.per_problem for c in bon], np.float64)
  b_co = np.asarray([float(c.budget_generations) for c in co])
  f_co = np.asarray([c.flops / p for c in co], np.float64)
  b_bon = np.asarray([float(c.budget_generations) for c in bon])
  f_bon_all = np.asarray([c.flops / p for c in bon], np.float64)
  counts = _resample_counts(p, resamples, seed)
  boot_co, boot_bon = counts @ v.T / p, counts @ w.T / p  # (resamples, points)
  acc_co, acc_bon = v.mean(axis=1), w.mean(axis=1)
  rows, gen_r, flops_r = [], [], []
  for j, pt in enumerate(bon):
    row, g, fl = _row(j, pt, (boot_co, acc_co, b_co, f_co),
                      (boot_bon, acc_bon, b_bon, f_bon_all), confidence)
    rows.append(row)
    gen_r.append(g)
    flops_r.append(fl)
  best = _best(rows, gen_r, flops_r, confidence)
  return {"rows": rows, "best": best, "co_budgets": [float(b) for b in b_co],
          "resamples": int(resamples), "co_method": co[0].method,
          "baseline_method": bon[0].method, "baseline": baseline or bon[0].method,
          "problems": int(p)}


def _row(j: int, pt: dict, co: tuple, bon: tuple, confidence: float
         ) -> tuple[dict, np.ndarray, np.ndarray]:
  """Baseline point j against the compute-optimal curve: its row, and its generations and FLOPs
  ratios in every bootstrap resample. ``co`` / ``bon``: (bootstrap accuracies (resamples,
  points), accuracies, budgets, FLOPs per problem) of the compute-optimal and baseline points."""
  boot_co, acc_co, b_co, f_co = co
  boot_bon, acc_bon, b_bon, f_bon_all = bon
  n = float(pt.budget_generations)
  reach = boot_co >= boot_bon[:, j:j + 1] - _TOL
  hit = reach.any(axis=1)
  first = np.argmax(reach, axis=1)
  # The baseline's own smallest budget reaching its accuracy at N (j itself at the latest).
  own = np.argmax(boot_bon[:, :j + 1] >= boot_bon[:, j:j + 1] - _TOL, axis=1)
  needed = np.where(hit, b_co[first], np.inf)
  g = np.where(hit, b_bon[own] / b_co[first], 0.0)
  fl = np.where(hit, f_bon_all[own] / f_co[first], 0.0)
  ok = acc_co >= acc_bon[j] - _TOL
  k = int(np.argmax(ok)) if ok.any() else None
  o = int(np.argmax(acc_bon[:j + 1] >= acc_bon[j] - _TOL))
  f_bon = float(f_bon_all[o])
  row = {
      "n": n, "baseline_accuracy": float(acc_bon[j]), "baseline_ci": pt.ci,
      "baseline_budget": float(b_bon[o]),
      "reached": k is not None, "budget": None if k is None else float(b_co[k]),
      "budget_ci": _interval(needed, confidence),
      "co_accuracy": None if k is None else float(acc_co[k]),
      "generations_ratio": None if k is None else float(b_bon[o]) / float(b_co[k]),
      "generations_ratio_ci": _interval(g, confidence),
      "flops_ratio": None if k is None else float(f_bon / f_co[k]),
      "flops_ratio_ci": _interval(fl, confidence),
      "baseline_flops_per_problem": f_bon,
      "co_flops_per_problem": None if k is None else float(f_co[k]),
      "floor": float(b_bon[o]) / float(b_co[-1]), "unreached_resamples": int((~hit).sum())}
  return row, g, fl


def _best(rows: list[dict], gen_r: list, flops_r: list, confidence: float) -> dict:
  """The largest ratio over the baseline's budgets; its interval from the per-resample
  maximum."""
  gen_point = [r["generations_ratio"] or 0.0 for r in rows]
  flops_point = [r["flops_ratio"] or 0.0 for r in rows]
  jg, jf = int(np.argmax(gen_point)), int(np.argmax(flops_point))
  return {"generations_ratio": gen_point[jg],
          "generations_ratio_ci": _interval(np.max(gen_r, axis=0), confidence),
          "n": rows[jg]["n"], "flops_ratio": flops_point[jf],
          "flops_ratio_ci": _interval(np.max(flops_r, axis=0), confidence),
          "n_flops": rows[jf]["n"]}


# --- claims ----------------------------------------------------------------------------------


def efficiency_claim(eff: dict, label: str, paper: str, baseline: str | None = None,
                     threshold: float = PAPER_EFFICIENCY) -> dict:
  """The "up to 4x" claim from :func:`efficiency`'s ``best`` generation ratio: reproduced if
  its interval's lower end is >= ``threshold``, not reproduced if its upper end is below,
  else not significant. ``comparison``: ratio - threshold with its interval."""
  best = eff["best"]
  lo, hi = best["generations_ratio_ci"]
  lo, hi = (0.0 if lo is None else lo), (0.0 if hi is None else hi)
  if lo >= threshold:
    verdict = claims_lib.REPRODUCED
  elif hi < threshold:
    verdict = claims_lib.NOT_REPRODUCED
  else:
    verdict = claims_lib.NOT_SIGNIFICANT
  significant = verdict != claims_lib.NOT_SIGNIFICANT
  cmp = {"a": f"best generation ratio of {label}", "b": f"{threshold:g}x",
         "diff": best["generations_ratio"] - threshold, "ci": [lo - threshold, hi - threshold],
         "n": eff["problems"], "significant": significant,
         "verdict": f"ratio {best['generations_ratio']:.2f} at N={best['n']:g}"}
  return {"claim": f"(e) {label}: up to {threshold:g}x fewer generations than "
                   f"{baseline or eff['baseline_method']}",
          "paper": f"compute-optimal scaling matches the baseline with up to {threshold:g}x less "
                   f"test-time compute ({paper})",
          "verdict": verdict, "comparison": cmp, "ratio": best["generations_ratio"],
          "ratio_ci": [lo, hi], "n": best["n"], "rule": f"lower end >= {threshold:g}: "
          f"reproduced; upper end < {threshold:g}: not reproduced; else not significant"}


def equal_budget_claim(co_points: Sequence[CurvePoint], baseline_points: Sequence[CurvePoint],
                       label: str, paper: str, seed: int = 0, baseline: str | None = None
                       ) -> dict | None:
  """Compute-optimal minus the baseline at the largest budget both have (paired bootstrap over
  problems); the paper says compute-optimal is better. None if no budget is shared."""
  shared = sorted({c.budget_generations for c in co_points}
                  & {c.budget_generations for c in baseline_points})
  if not shared:
    return None
  b = shared[-1]
  a = next(c for c in co_points if c.budget_generations == b)
  o = next(c for c in baseline_points if c.budget_generations == b)
  cmp = study_lib.compare_points(a, o, (f"{a.method}@{b:g}", f"{o.method}@{b:g}"),
                                 seed=seed)
  return claims_lib.claim(f"(e) {label} over {baseline or o.method} at budget {b:g}", paper,
                           cmp, budget=b)
