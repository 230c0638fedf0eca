"""The paper's verifier-search findings, tested on the study's stored outcomes.

Each claim is a paired bootstrap over problems (:mod:`ttc_jax.analysis.stats`)
in the direction the paper states, and gets one verdict:

* ``reproduced``: the interval of the difference excludes zero in the paper's
  direction;
* ``not reproduced``: it excludes zero in the other direction;
* ``not significant``: it contains zero.

No threshold or budget is chosen after looking at the numbers: the budgets are
the sweep's low one (4 if swept) and its largest, the difficulty halves are the
easier and the harder half of the oracle bins.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ttc_jax.analysis import stats as stats_lib
from ttc_jax.analysis import study as study_lib
from ttc_jax.analysis.stats import Comparison
from ttc_jax.search import registry
from ttc_jax.search.records import CurvePoint

REPRODUCED, NOT_REPRODUCED, NOT_SIGNIFICANT = "reproduced", "not reproduced", "not significant"


def verdict(cmp: Comparison | None, paper_sign: int = 1) -> str | None:
  """``paper_sign`` = +1: the paper says a > b; -1: a < b."""
  if cmp is None:
    return None
  if not cmp.significant:
    return NOT_SIGNIFICANT
  return REPRODUCED if np.sign(cmp.diff.mean) == paper_sign else NOT_REPRODUCED


def claim(name: str, paper: str, cmp: Comparison | None, paper_sign: int = 1,
          **extra) -> dict | None:
  if cmp is None:
    return None
  return {"claim": name, "paper": paper, "verdict": verdict(cmp, paper_sign),
          "comparison": cmp.to_json(), **extra}


def stored_claim(name: str, paper: str, cmp: dict, **extra) -> dict:
  """A claim over a paired difference as stored (``Comparison.to_json()``), in the paper's
  direction (a > b): :func:`claim` for comparisons read back from an artifact."""
  v = (NOT_SIGNIFICANT if not cmp["significant"] else
       REPRODUCED if cmp["diff"] > 0 else NOT_REPRODUCED)
  return {"claim": name, "paper": paper, "verdict": v, "comparison": cmp, **extra}


def low_high(budgets: Sequence[int]) -> tuple[int, int]:
  budgets = sorted(budgets)
  return (4 if 4 in budgets else budgets[0]), budgets[-1]


def verifier_claims(ver: dict, score: str = "prm_last", seed: int = 0) -> list[dict]:
  """(a) the search verifier over the ORM as N grows, weighted best-of-N at the low N (4) and
  the largest: verifier_eval's paired comparison for the PRM ('last', the aggregation search
  uses), or for another verifier (``score``: e.g. the one chosen on train problems) a paired
  bootstrap over the same per-problem accuracies (``ver['scored']``)."""
  ns = ver["n"]
  low, high = low_high(ns)
  idx = sorted({ns.index(low), ns.index(high)})
  pairs = ver.get("paired", {}).get(f"{score}/weighted vs orm/weighted")
  if not pairs:
    per = ver.get("scored", {})
    a, b = per.get(f"per_problem/{score}/weighted"), per.get("per_problem/orm/weighted")
    if a is None or b is None:
      return []
    pairs = {i: stats_lib.paired_diff(a[i], b[i], names=(f"{score}/weighted", "orm/weighted"),
                                      seed=seed).to_json() for i in idx}
  name = "PRM" if score == "prm_last" else score
  out = []
  for i in idx:
    out.append(stored_claim(f"(a) {name} over ORM, weighted best-of-N at N={ns[i]}",
                            "the PRM beats the ORM, by more as N grows (Figure 3)", pairs[i]))
  return out


def search_claims(curves: Sequence[CurvePoint], bins: np.ndarray, num_bins: int, beam: str,
                  seed: int = 0) -> list[dict]:
  """(b) beam vs best-of-N by budget and difficulty, (c) lookahead at equal budget,
  and DVTS and particle filtering against beam search and best-of-N."""
  budgets = sorted({c.budget_generations for c in curves})
  low, high = low_high(budgets)
  bins = np.asarray(bins)
  easy = bins < num_bins // 2 if num_bins > 1 else np.ones_like(bins, bool)
  hard = bins >= num_bins - num_bins // 2 if num_bins > 1 else np.ones_like(bins, bool)
  bon = "best_of_n_weighted"
  cmp = lambda a, b, mask=None: study_lib.compare(curves, a, b, mask, seed)  # noqa: E731
  out = [
      claim(f"(b) {beam} over best-of-N at budget {low}",
             "beam search beats best-of-N at low budgets (Figure 3, right)",
             cmp((beam, low), (bon, low))),
      claim(f"(b) {beam} over best-of-N at budget {low}, harder half of the bins",
             "beam search helps most on harder problems", cmp((beam, low), (bon, low), hard)),
      claim(f"(b) {beam} vs best-of-N at budget {high}, easier half of the bins",
             "at high budgets best-of-N catches up or wins on easy problems (Figure 3)",
             cmp((beam, high), (bon, high), easy), paper_sign=-1),
  ]
  looks = sorted(registry.of_family(study_lib.methods(curves), registry.LOOKAHEAD))
  for look in looks:
    shared = sorted({c.budget_generations for c in curves if c.method == look}
                    & {c.budget_generations for c in curves if c.method == beam})
    if shared:
      b = shared[-1]
      out.append(claim(f"(c) {look} vs {beam} at equal generation budget {b}",
                        "lookahead underperforms beam search at equal budget (Figure 3)",
                        cmp((look, b), (beam, b)), paper_sign=-1))
  for family, paper in (
      (registry.DVTS_FAMILY,
       "DVTS beats beam search at high budgets and best-of-N (Beeching et al. 2024)"),
      (registry.PARTICLES,
       "particle filtering beats beam search and best-of-N (Puri et al. 2025)")):
    name = registry.first_of(study_lib.methods(curves), family)
    if name is None:
      continue
    for b in sorted({low, high}):
      out.append(claim(f"{name} over {beam} at budget {b}", paper, cmp((name, b), (beam, b))))
    out.append(claim(f"{name} over best-of-N at budget {high}", paper,
                      cmp((name, high), (bon, high))))
  return [c for c in out if c is not None]
