"""Exchanging pretraining for test-time compute (paper section 7, Figure 9).

A model with M times the small model's parameters answers greedily (one
generation); the small model instead runs its compute-optimal strategy with the
generation budget X of equal total FLOPs,
``X = accounting.matched_generations(M, R) = M + 3 (M - 1) / R``, where R is the
ratio of inference to pretraining tokens (:data:`ttc_jax.accounting.R_POINTS`).

For each R the small model's point is its compute-optimal curve point at the
largest swept budget <= X:

* ``out of range``: every swept budget exceeds X (no point is affordable); no
  comparison, verdicts None, the report states X;
* ``capped``: X exceeds the largest swept budget, so the small model is given
  fewer generations (b_max) than it may spend;
* ``ok`` otherwise.

Per difficulty bin, per bin group and over all problems: the paired bootstrap
over problems of (small compute-optimal) - (large greedy)
(:func:`ttc_jax.analysis.study.compare_points`).

The paper's findings, tested by fixed rules (verdict strings of
:mod:`ttc_jax.analysis.claims`):

* "test-time compute beats the larger model on easy and medium problems when
  R << 1": at every R < 1, on the easy/medium group (the easier
  ceil(3/5 x num_bins) oracle bins: bins 0-2 of 5, the paper's levels 1-3),
  the paper's direction is small > large;
* "pretraining wins on hard problems or when R >> 1": at every R < 1 on the
  hard group (the remaining bins), and at every R > 1 on all problems, the
  paper's direction is large > small;
* R = 1 exactly is neither and gets no claim;
* out of range: verdict None with the reason;
* capped: a comparison in the small model's favour stands (it used fewer
  generations than allowed, so the test is conservative); where the paper says
  the large model wins, only a significant win of the small model is a verdict
  (``not reproduced``); otherwise the verdict is None with the reason, since a
  large-model win may be the sweep's cap rather than pretraining.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from ttc_jax import accounting
from ttc_jax.analysis import claims as claims_lib
from ttc_jax.analysis import stats as stats_lib
from ttc_jax.analysis import study as study_lib
from ttc_jax.search.records import CurvePoint

EASY_FRACTION = 3 / 5  # the paper's easy/medium levels: 3 of 5
_TOL = 1e-9


def groups(num_bins: int) -> dict[str, list[int]]:
  """The bin groups of the claims: ``easy`` (the easier ceil(3/5 x num_bins) bins), ``hard``
  (the rest; empty for one bin) and ``all``."""
  if num_bins < 1:
    raise ValueError(f"num_bins={num_bins}: expected >= 1.")
  k = math.ceil(EASY_FRACTION * num_bins - _TOL)
  return {"easy": list(range(k)), "hard": list(range(k, num_bins)),
          "all": list(range(num_bins))}


def matched_point(co_points: Sequence[CurvePoint], x: float) -> tuple[CurvePoint | None, str]:
  """The compute-optimal point at the largest swept budget <= ``x`` and the status: "ok",
  "capped" (``x`` beyond the largest budget) or "out of range" (point None)."""
  pts = sorted(co_points, key=lambda c: c.budget_generations)
  if not pts:
    raise ValueError("matched_point needs at least one compute-optimal point.")
  fit = [c for c in pts if c.budget_generations <= x + _TOL]
  if not fit:
    return None, "out of range"
  return fit[-1], ("capped" if x > pts[-1].budget_generations + _TOL else "ok")


def _estimate(values: np.ndarray, bins: np.ndarray, num_bins: int, seed: int) -> dict:
  est = stats_lib.mean_ci(values, seed=seed)
  by_bin = [stats_lib.mean_ci(values[bins == b], seed=seed) if np.any(bins == b) else None
            for b in range(num_bins)]
  return {"accuracy": est.mean, "ci": [est.low, est.high],
          "accuracy_by_bin": [None if e is None else e.mean for e in by_bin],
          "ci_by_bin": [None if e is None else [e.low, e.high] for e in by_bin]}


def _verdict(cmp: stats_lib.Comparison | None, sign: int, status: str, x: float,
             budgets: Sequence[float]) -> tuple[str | None, str | None]:
  if status == "out of range":
    return None, (f"out of range: the matched budget is {x:.3g} generations, the smallest swept "
                  f"budget is {min(budgets):g}")
  if cmp is None:
    return None, "no problems in the group"
  v = claims_lib.verdict(cmp, sign)
  if status == "capped" and sign < 0 and v != claims_lib.NOT_REPRODUCED:
    return None, (f"capped: the small model may spend {x:.3g} generations but the sweep ends at "
                  f"{max(budgets):g}; a larger-model win may be the cap's")
  return v, None


def exchange(co_points: Sequence[CurvePoint], small_params: float, large_params: float,
             large_greedy, bins, num_bins: int,
             r_values: Sequence[float] = accounting.R_POINTS, seed: int = 0,
             curve: str = "compute-optimal") -> dict:
  """The small model's compute-optimal curve against the large model's greedy answers at
  FLOPs-matched budgets, for each R; see the module docstring for the rules.

  Args:
    co_points: the small model's compute-optimal curve points (per-problem outcomes).
    small_params, large_params: parameter counts of the two policies (M = large / small).
    large_greedy: the large model's per-problem greedy outcome (0/1), same problems and order.
    bins: oracle difficulty bin per problem (0 = easiest).
    num_bins: number of bins.
    r_values: ratios of inference to pretraining tokens.
    seed: bootstrap seed.
    curve: the curve's name in the claims.

  Returns:
    {"curve", "param_ratio", "rows": [per R: r, matched_generations, budget (or None),
    status, small_accuracy, small_ci, overall (comparison JSON or None), by_bin (per bin),
    groups {"easy", "hard", "all"}], "claims": [...]}.
  """
  m = float(large_params) / float(small_params)
  greedy = np.asarray(large_greedy, np.float64)
  bins = np.asarray(bins, np.int64)
  if greedy.ndim != 1 or greedy.shape != bins.shape:
    raise ValueError(f"large_greedy has shape {greedy.shape}; expected ({bins.size},): one "
                     "outcome per problem, like bins.")
  for c in co_points:
    if len(c.per_problem) != greedy.size:
      raise ValueError(f"{c.method}@{c.budget_generations} has {len(c.per_problem)} "
                       f"per-problem outcomes; the large model has {greedy.size}.")
  budgets = [float(c.budget_generations) for c in co_points]
  grp = groups(num_bins)
  rows, claims = [], []
  for r in r_values:
    x = accounting.matched_generations(m, r)
    pt, status = matched_point(co_points, x)
    names = (f"{curve}@{pt.budget_generations:g}" if pt else curve, "large greedy")

    def cmp(mask):
      return study_lib.compare_outcomes(pt.per_problem, greedy, names, mask, seed)

    masks = {g: np.isin(bins, bs) for g, bs in grp.items()}
    group_cmp = {g: cmp(masks[g]) if pt is not None and bs else None for g, bs in grp.items()}
    rows.append({
        "r": float(r), "matched_generations": float(x),
        "budget": None if pt is None else float(pt.budget_generations), "status": status,
        "small_accuracy": None if pt is None else pt.accuracy,
        "small_ci": None if pt is None else pt.ci,
        "overall": None if group_cmp["all"] is None else group_cmp["all"].to_json(),
        "by_bin": [None if pt is None or not np.any(bins == b) else cmp(bins == b).to_json()
                   for b in range(num_bins)],
        "groups": {g: None if c is None else c.to_json() for g, c in group_cmp.items()}})
    if r < 1:
      tests = [("easy", 1, "test-time compute beats a larger model on easy and medium problems "
                "when R << 1 (Figure 9)"),
               ("hard", -1, "pretraining (the larger model) wins on hard problems (Figure 9)")]
    elif r > 1:
      tests = [("all", -1, "pretraining (the larger model) wins when R >> 1 (Figure 9)")]
    else:
      tests = []
    for g, sign, paper in tests:
      if not grp[g]:
        continue
      c = group_cmp[g]
      v, reason = _verdict(c, sign, status, x, budgets)
      where = {"easy": f"easy/medium bins {_bin_list(grp[g])}",
               "hard": f"hard bins {_bin_list(grp[g])}", "all": "all problems"}[g]
      used = "out of range" if pt is None else f"budget {pt.budget_generations:g}"
      claims.append({
          "claim": f"(f) {curve} ({used}) vs the {m:.3g}x larger model's greedy answer at "
                   f"R={r:g} (X={x:.3g}), {where}",
          "paper": paper, "verdict": v, "comparison": None if c is None else c.to_json(),
          "reason": reason, "r": float(r), "group": g, "paper_sign": sign, "curve": curve,
          "status": status, "budget": rows[-1]["budget"], "matched_generations": float(x)})
  return {"curve": curve, "param_ratio": m, "rows": rows, "claims": claims}


def _bin_list(bs: Sequence[int]) -> str:
  return ", ".join(str(b + 1) for b in bs)


def summary(co_curves: Mapping[str, Sequence[CurvePoint]], small_params: float,
            large_params: float, large_greedy, bins, num_bins: int,
            large_majority: Mapping | None = None,
            r_values: Sequence[float] = accounting.R_POINTS, seed: int = 0) -> dict:
  """:func:`exchange` for each named compute-optimal curve (e.g. {"search": ..., "revisions":
  ...}), with the large model's greedy accuracy and, if given, its majority curve
  (``large_majority`` = {"n": [N...], "per_problem": [[...] per N]}), JSON-able."""
  bins = np.asarray(bins, np.int64)
  greedy = np.asarray(large_greedy, np.float64)
  m = float(large_params) / float(small_params)
  if not m >= 1:
    raise ValueError(f"large_params={large_params} / small_params={small_params} = {m:.3g}: "
                     "expected the large model to have at least the small model's parameters.")
  majority = []
  if large_majority is not None:
    ns, per = list(large_majority["n"]), large_majority["per_problem"]
    if len(per) != len(ns):
      raise ValueError(f"large_majority: {len(ns)} values of n but {len(per)} per-problem "
                       "rows; expected one row per n.")
    majority = [{"n": n, **_estimate(np.asarray(v, np.float64), bins, num_bins, seed)}
                for n, v in zip(ns, per)]
  curves = {name: exchange(pts, small_params, large_params, greedy, bins, num_bins, r_values,
                           seed, curve=f"compute-optimal {name}")
            for name, pts in co_curves.items()}
  return {"param_ratio": m, "small_params": float(small_params),
          "large_params": float(large_params), "r_values": [float(r) for r in r_values],
          "groups": groups(num_bins), "large_greedy": _estimate(greedy, bins, num_bins, seed),
          "large_majority": majority, "curves": curves,
          "claims": [c for v in curves.values() for c in v["claims"]]}
