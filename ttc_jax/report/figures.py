"""Figures of the study. Each function returns a matplotlib ``Figure``.

The Figure API needs no pyplot backend: nothing global changes (notebooks keep
their inline backend).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from ttc_jax.analysis import verifiers as verifier_metrics
from ttc_jax.analysis.study import methods as _methods
from ttc_jax.analysis.study import point


def method_label(method: str, params: dict | None = None) -> str:
  """A reader's name for a sweep method (from its params, never a fixed width)."""
  params = params or {}
  if method == "best_of_n_weighted":
    return "best-of-N weighted"
  if method == "beam_sqrt":
    return "beam search M=sqrt(N)"
  if method.startswith("beam_m"):
    return f"beam search M={method[len('beam_m'):]}"
  if method.startswith("lookahead_k"):
    m = params.get("m")
    return f"lookahead k={method[len('lookahead_k'):]}" + (f" (M={m})" if m else "")
  return method


def pass_at_1(p1: np.ndarray, difficulty: Sequence[int], difficulty_label: str,
              title: str = "policy pass@1") -> Figure:
  """Histogram of per-problem pass@1 and mean pass@1 per value of the task's knob."""
  p = np.asarray(p1)
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
  b.set_xlabel(f"task difficulty knob ({difficulty_label})")
  b.set_ylabel("mean pass@1")
  b.set_ylim(0, 1)
  fig.tight_layout()
  return fig


def verifier_eval(result: dict, auc_scores: np.ndarray, positive: np.ndarray) -> Figure:
  """Accuracy against N per selection method and verifier; the PRM's step ROC curve."""
  fig = Figure(figsize=(12, 4.5))
  a, b = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
  ns = result["n"]
  styles = {"vanilla": "--", "weighted": "-"}
  colors = {"prm_last": "tab:blue", "prm_min": "tab:cyan", "prm_prod": "tab:purple",
            "orm": "tab:red"}
  for name, curve in result["curves"].items():
    if name == "majority":
      a.plot(ns, curve, "k:", marker="o", ms=3, label="majority")
      continue
    verifier, method = name.split("/")
    a.plot(ns, curve, styles.get(method, "-"), color=colors.get(verifier), marker="o", ms=3,
           label=f"{verifier} {method}")
  a.axhline(result["pass_at_1"], color="gray", lw=0.8, label="pass@1")
  a.set_xscale("log", base=2)
  a.set_xlabel("N (samples per problem)")
  a.set_ylabel("accuracy")
  a.set_title(f"best-of-N on {result['num_problems']} test problems "
              f"(mean of {result['subsamples']} subsets)")
  a.legend(fontsize=7, ncol=2)
  fpr, tpr = verifier_metrics.roc_curve(auc_scores, positive)
  b.plot(fpr, tpr, color="tab:blue")
  b.plot([0, 1], [0, 1], "k:", lw=0.8)
  b.set_xlabel("false positive rate")
  b.set_ylabel("true positive rate")
  b.set_title(f"PRM steps vs MC labels: AUC {result['auc']['prm_step_auc']:.3f}")
  fig.tight_layout()
  return fig


def _params_of(curves, method):
  return next(c["params"] for c in curves if c["method"] == method)


def accuracy_vs_budget(curves: Sequence[dict], pass_at_1: float, num_problems: int) -> Figure:
  fig = Figure(figsize=(6.5, 4.5))
  ax = fig.subplots()
  for method in _methods(curves):
    rows = sorted((c for c in curves if c["method"] == method),
                  key=lambda c: c["budget_generations"])
    ax.plot([r["budget_generations"] for r in rows], [r["accuracy"] for r in rows], marker="o",
            ms=3, label=method_label(method, _params_of(curves, method)))
  ax.axhline(pass_at_1, color="gray", lw=0.8, ls=":", label="pass@1")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("generation budget")
  ax.set_ylabel("accuracy")
  ax.set_title(f"search against the PRM ({num_problems} test problems)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


def accuracy_by_difficulty(curves: Sequence[dict], budgets: Sequence[int]) -> Figure:
  """Accuracy per oracle difficulty bin, one panel per budget in ``budgets``."""
  methods = _methods(curves)
  num_bins = len(curves[0]["accuracy_by_bin"])
  fig = Figure(figsize=(6 * len(budgets), 4.2))
  axes = np.atleast_1d(fig.subplots(1, len(budgets), sharey=True))
  width = 0.8 / max(1, len(methods))
  for ax, budget in zip(axes, budgets):
    for i, method in enumerate(methods):
      row = point(curves, method, budget)
      if row is None:
        continue
      ax.bar(np.arange(num_bins) + i * width, row["accuracy_by_bin"], width,
             label=method_label(method, row["params"]))
    ax.set_xticks(np.arange(num_bins) + width * (len(methods) - 1) / 2)
    ax.set_xticklabels([f"bin {b + 1}" for b in range(num_bins)])
    ax.set_xlabel("oracle difficulty bin (1 = easiest)")
    ax.set_title(f"generation budget {budget}")
    ax.legend(fontsize=7)
  axes[0].set_ylabel("accuracy")
  fig.tight_layout()
  return fig
