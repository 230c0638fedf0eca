"""Figures of the study. Each function returns a matplotlib ``Figure``.

The Figure API needs no pyplot backend: nothing global changes (notebooks keep
their inline backend).
"""

from __future__ import annotations

from typing import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ttc_jax.analysis import verifiers as verifier_metrics
from ttc_jax.analysis.study import methods as _methods
from ttc_jax.analysis.study import point
from ttc_jax.search import records
from ttc_jax.search import registry
from ttc_jax.search.records import CurvePoint
from ttc_jax.verifiers import confidence as confidence_lib
from ttc_jax.verifiers import names as verifier_names

if TYPE_CHECKING:
  from matplotlib.figure import Figure


def _figure(**kwargs) -> "Figure":
  """A matplotlib Figure; matplotlib is imported on first use (about a second of every
  process start, which most stages never need)."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top,redefined-outer-name
  return Figure(**kwargs)


def method_label(method: str, params: dict | None = None) -> str:
  """A reader's name for a sweep method (from its params, never a fixed width)."""
  return registry.method(method).label(params)


def pass_at_1(p1: np.ndarray, difficulty: Sequence[int], difficulty_label: str,
              title: str = "policy pass@1") -> Figure:
  """Histogram of per-problem pass@1 and mean pass@1 per value of the task's knob."""
  p = np.asarray(p1)
  d = np.asarray(difficulty)
  fig = _figure(figsize=(10, 3.6))
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


VERIFIER_COLORS = {"prm_last": "tab:blue", "prm_min": "tab:cyan", "prm_prod": "tab:purple",
                   "orm": "tab:red", "policy_likelihood": "tab:olive"}


def _best_of_n_panel(a, result: dict) -> None:
  """Best-of-N accuracy against N per selection, with 95% bands and the pass@1 line."""
  ns = result["n"]
  styles = {"vanilla": "--", "weighted": "-"}
  bands = result.get("curves_ci", {})
  for name, curve in result["curves"].items():
    if name == "majority":
      a.plot(ns, curve, "k:", marker="o", ms=3, label="majority")
      color = "k"
    else:
      verifier, method = name.split("/")
      color = VERIFIER_COLORS.get(verifier)
      a.plot(ns, curve, styles.get(method, "-"), color=color, marker="o", ms=3,
             label=f"{verifier} {method}")
    if name in bands:
      lo, hi = np.asarray(bands[name]).T
      a.fill_between(ns, lo, hi, color=color, alpha=0.08, lw=0)
  a.axhline(result["pass_at_1"], color="gray", lw=0.8, label="pass@1")
  a.set_xscale("log", base=2)
  a.set_xlabel("N (samples per problem)")
  a.set_ylabel("accuracy (95% CI over problems)")
  a.set_title(f"best-of-N on {result['num_problems']} test problems "
              f"(mean of {result['subsamples']} subsets)")
  a.legend(fontsize=6, ncol=2)


def _within_auc_panel(w, within: dict) -> None:
  """Bars of each verifier's mean within-problem AUC [95% CI] and pairwise ranking accuracy
  (nothing if ``within`` is empty)."""
  if not within:
    return
  names = list(within)
  means = [within[k]["mean_auc"] for k in names]
  err = np.array([[m - within[k]["mean_auc_ci"][0], within[k]["mean_auc_ci"][1] - m]
                  for k, m in zip(names, means)]).T
  pos = np.arange(len(names))
  w.bar(pos - 0.2, means, 0.4, yerr=err, capsize=3, label="mean per-problem AUC",
        color=[VERIFIER_COLORS.get(k, "gray") for k in names])
  w.bar(pos + 0.2, [within[k]["pairwise_accuracy"] for k in names], 0.4, color="lightgray",
        label="pairwise ranking accuracy")
  w.axhline(0.5, color="k", lw=0.8, ls=":")
  w.set_xticks(pos)
  w.set_xticklabels(names)
  w.set_ylim(0, 1)
  w.set_title(f"within-problem AUC ({within[names[0]]['problems']} problems with right and "
              "wrong samples)", fontsize=9)
  w.legend(fontsize=7, loc="lower right")


def _calibration_panel(e, calibration: dict) -> None:
  """Each verifier's reliability curve (fraction correct against binned score) with its ECE."""
  for name, cal in calibration.items():
    e.plot(cal["mean_score"], cal["frac_correct"], marker="o", ms=3,
           color=VERIFIER_COLORS.get(name), label=f"{name} (ECE {cal['ece']:.3f})")
  e.plot([0, 1], [0, 1], "k:", lw=0.8)
  e.set_xlabel("final score (binned)")
  e.set_ylabel("fraction of samples correct")
  e.set_title("calibration (reliability curve)")
  e.legend(fontsize=7)


def _exploitation_panel(r, result: dict) -> None:
  """The top-scored sample of N per verifier: its score and whether it is right, against N."""
  ns = result["n"]
  for name, ex in result.get("exploitation", {}).items():
    color = VERIFIER_COLORS.get(name)
    r.plot(ns, ex["top_score"], "--", color=color, marker="o", ms=3, label=f"{name} top score")
    r.plot(ns, ex["top_correct"], "-", color=color, marker="o", ms=3,
           label=f"{name} top sample correct")
  r.axhline(result["pass_at_1"], color="gray", lw=0.8, label="pass@1")
  r.set_xscale("log", base=2)
  r.set_xlabel("N")
  r.set_title("exploitation: the top-scored sample of N")
  r.legend(fontsize=6, ncol=2)


def _step_auc_panels(x, b, auc: dict, auc_scores: np.ndarray | None,
                     positive: np.ndarray | None) -> None:
  """The PRM's step AUC bars against MC labels (``x``) and its pooled step ROC curve (``b``,
  switched off unless the AUC was measured and its scores are given)."""
  measured = auc.get("prm_step_auc") is not None
  step_within = auc.get("prm_step_auc_within_problems")
  labels = [("step AUC pooled", auc["prm_step_auc"])] if measured else []
  if step_within:
    labels.append(("step AUC within problems", step_within["mean_auc"]))
  x.barh([k for k, _ in labels], [v for _, v in labels], color="tab:blue")
  x.axvline(0.5, color="k", lw=0.8, ls=":")
  x.set_xlim(0, 1)
  x.set_title("PRM steps vs held-out MC labels (>= 0.5)" if measured
              else "PRM step AUC: not measured (verifier_eval.auc_problems=0)")
  if auc_scores is not None and measured:
    fpr, tpr = verifier_metrics.roc_curve(auc_scores, positive)
    b.plot(fpr, tpr, color="tab:blue")
    b.plot([0, 1], [0, 1], "k:", lw=0.8)
    b.set_xlabel("false positive rate")
    b.set_ylabel("true positive rate")
    b.set_title(f"PRM step ROC (pooled): AUC {auc['prm_step_auc']:.3f}")
  else:
    b.set_axis_off()


def _without_confidence(result: dict) -> dict:
  """``result`` with the confidence measures (conf_*) left out of its per-verifier parts (they
  have their own figure, :func:`confidence_eval`)."""
  def keep(name: str) -> bool:
    return name.split("/")[0] not in verifier_names.CONFIDENCE_SCORES

  out = dict(result)
  for part in ("curves", "curves_ci", "within_problem", "calibration", "exploitation"):
    if part in result:
      out[part] = {k: v for k, v in result[part].items() if keep(k)}
  return out


def verifier_eval(result: dict, auc_scores: np.ndarray | None = None,
                  positive: np.ndarray | None = None) -> Figure:
  """Best-of-N accuracy against N with 95% bands; within-problem AUC; calibration;
  the exploitation curve; the PRM's step ROC curve (if its scores are given). The confidence
  measures have their own figure (:func:`confidence_eval`)."""
  result = _without_confidence(result)
  fig = _figure(figsize=(15, 8.5))
  axes = fig.subplots(2, 3)
  a, w, e = axes[0]
  r, x, b = axes[1]
  _best_of_n_panel(a, result)
  _within_auc_panel(w, result.get("within_problem", {}))
  _calibration_panel(e, result.get("calibration", {}))
  _exploitation_panel(r, result)
  _step_auc_panels(x, b, result["auc"], auc_scores, positive)
  fig.tight_layout()
  return fig


def confidence_eval(result: dict) -> Figure:
  """The policy's confidence as a verifier: each measure's within-problem AUC [95% CI] (the
  trained verifiers' for reference), and weighted best-of-N with each against N."""
  within = result.get("within_problem", {})
  fig = _figure(figsize=(14, 5.5))
  w, a = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
  order = sorted(within, key=lambda k: within[k]["mean_auc"])
  means = np.array([within[k]["mean_auc"] for k in order])
  err = np.array([[m - within[k]["mean_auc_ci"][0], within[k]["mean_auc_ci"][1] - m]
                  for k, m in zip(order, means)]).T.reshape(2, -1)
  conf = [k in verifier_names.CONFIDENCE_SCORES or k == verifier_names.LIKELIHOOD for k in order]
  w.barh(np.arange(len(order)), means, xerr=err, capsize=2,
         color=["tab:olive" if c else VERIFIER_COLORS.get(k, "gray") for k, c in zip(order, conf)])
  w.set_yticks(np.arange(len(order)))
  w.set_yticklabels(order, fontsize=7)
  w.axvline(0.5, color="k", lw=0.8, ls=":")
  w.set_xlim(0, 1)
  w.set_xlabel("mean within-problem AUC [95% CI]")
  w.set_title("within-problem AUC (olive: the policy's confidence)", fontsize=9)
  ns = result["n"]
  # Line style by token confidence, colour by summary.
  styles = {"logprob": "-", "topk": "--", "certainty": ":"}
  for name, curve in result["curves"].items():
    verifier, method = name.split("/") if "/" in name else (name, "")
    measure = None if name == "majority" else verifier_names.measure_of(verifier)
    if name == "majority":
      a.plot(ns, curve, "k-", lw=2, alpha=0.4, label="majority")
    elif method == "weighted" and measure is not None:
      a.plot(ns, curve, styles[measure.token], lw=1, marker="o", ms=2,
             color=f"C{confidence_lib.AGGREGATIONS.index(measure.aggregation)}", label=verifier)
  a.axhline(result["pass_at_1"], color="gray", lw=0.8, label="pass@1")
  a.set_xscale("log", base=2)
  a.set_xlabel("N (samples per problem)")
  a.set_ylabel("accuracy")
  a.set_title("weighted best-of-N by the policy's confidence", fontsize=9)
  a.legend(fontsize=5, ncol=2)
  fig.tight_layout()
  return fig


def verifier_axis(result: dict) -> Figure:
  """The verifier-quality axis: each tree search's accuracy minus best-of-N weighted's at the
  same budget [paired 95% CI] against the synthetic verifier's measured test AUC, and every
  method's accuracy against it."""
  levels = result["levels"]
  fig = _figure(figsize=(13, 9))
  (d, a), halves = fig.subplots(2, 2)
  x = np.array([lv["test_auc"]["mean_auc"] for lv in levels])
  keys = sorted({k for lv in levels for k in lv["minus_best_of_n"]})

  def minus(ax, part, title):
    for i, k in enumerate(keys):
      diff = np.array([part(lv)[k]["diff"] for lv in levels])
      ci = np.array([part(lv)[k]["ci"] for lv in levels])
      ax.errorbar(x + 0.002 * (i - len(keys) / 2), diff, yerr=[diff - ci[:, 0], ci[:, 1] - diff],
                  marker="o", ms=3, capsize=2, color=f"C{i}", label=k)
    ax.axhline(0, color="k", lw=0.8)
    ax.axvline(0.9, color="gray", ls=":", lw=0.8, label="Chen et al.: ~0.9")
    ax.set_xlabel("synthetic verifier's within-problem AUC (test problems)")
    ax.set_ylabel("accuracy minus best-of-N weighted (paired 95% CI)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6)

  minus(d, lambda lv: lv["minus_best_of_n"], "when does tree search pay? (all test problems)")
  for ax, half in zip(halves, ("easier half", "harder half")):
    minus(ax, lambda lv, half=half: lv["minus_best_of_n_by_half"][half],
          f"the {half} (oracle pass@1)")
  for i, k in enumerate(sorted({k for lv in levels for k in lv["accuracy"]})):
    a.plot(x, [lv["accuracy"][k]["mean"] for lv in levels], marker="o", ms=3, color=f"C{i % 10}",
           ls="-" if k.startswith("best_of_n") else "--", label=k)
  a.set_xlabel("synthetic verifier's within-problem AUC (test problems)")
  a.set_ylabel("accuracy")
  a.set_title("accuracy by verifier quality", fontsize=9)
  a.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  return fig


def _params_of(curves: Sequence[CurvePoint], method: str) -> dict:
  return next(c.params for c in curves if c.method == method)


def _color(method: str, i: int):
  return f"C{i % 10}"


def accuracy_vs_budget(curves: Sequence[CurvePoint], pass_at_1: float, num_problems: int
                       ) -> Figure:
  """Accuracy (mean over search seeds) against the generation budget, 95% bands."""
  fig = _figure(figsize=(7.5, 5))
  ax = fig.subplots()
  for i, method in enumerate(_methods(curves)):
    rows = sorted((c for c in curves if c.method == method), key=lambda c: c.budget_generations)
    x = [r.budget_generations for r in rows]
    ax.plot(x, [r.accuracy for r in rows], marker="o", ms=3, color=_color(method, i),
            label=method_label(method, _params_of(curves, method)))
    ax.fill_between(x, [r.ci[0] for r in rows], [r.ci[1] for r in rows],
                    color=_color(method, i), alpha=0.1, lw=0)
  ax.axhline(pass_at_1, color="gray", lw=0.8, ls=":", label="pass@1")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("generation budget")
  ax.set_ylabel("accuracy (95% CI over problems)")
  seeds = len(curves[0].seeds or [0]) if curves else 0
  ax.set_title(f"search against the PRM ({num_problems} test problems, {seeds} seed"
               f"{'s' if seeds != 1 else ''})")
  ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def accuracy_by_difficulty(curves: Sequence[CurvePoint], budgets: Sequence[int]) -> Figure:
  """Accuracy per oracle difficulty bin with 95% error bars, one panel per budget."""
  methods = _methods(curves)
  num_bins = len(curves[0].accuracy_by_bin)
  fig = _figure(figsize=(6.5 * len(budgets), 4.4))
  axes = np.atleast_1d(fig.subplots(1, len(budgets), sharey=True))
  width = 0.8 / max(1, len(methods))
  for ax, budget in zip(axes, budgets):
    for i, method in enumerate(methods):
      row = point(curves, method, budget)
      if row is None:
        continue
      acc = np.asarray(row.accuracy_by_bin)
      ci = np.asarray(row.ci_by_bin)
      err = np.abs(np.stack([acc - ci[:, 0], ci[:, 1] - acc]))
      ax.bar(np.arange(num_bins) + i * width, acc, width, yerr=err, capsize=2,
             color=_color(method, i), label=method_label(method, row.params))
    ax.set_xticks(np.arange(num_bins) + width * (len(methods) - 1) / 2)
    ax.set_xticklabels([f"bin {b + 1}" for b in range(num_bins)])
    ax.set_xlabel("oracle difficulty bin (1 = easiest)")
    ax.set_title(f"generation budget {budget}")
    ax.legend(fontsize=7)
  axes[0].set_ylabel("accuracy (95% CI)")
  fig.tight_layout()
  return fig


REVISION_COLORS = {"majority": "k", "flat_orm": "tab:red", "hier_orm": "tab:purple",
                   "flat_prm": "tab:blue", "hier_prm": "tab:cyan", "flat_conf": "tab:olive",
                   "hier_conf": "tab:green"}


def _rev_rows(curves: Sequence[CurvePoint], selection: str) -> list[CurvePoint]:
  return [c for c in curves
          if c.method == registry.name_of(registry.REVISIONS, selection=selection)]


def _rev_find(rows: Sequence[CurvePoint], n: int, chains: int) -> CurvePoint | None:
  return next((r for r in rows if r.params["n"] == n and r.params["chains"] == chains), None)


def _ratio(p: CurvePoint) -> float:  # a revision point's sequential / parallel ratio L / C
  return p.params["length"] / p.params["chains"]


def revisions_vs_budget(rev_summary: dict) -> Figure:
  """Paper Figure 6: accuracy against the budget for pure parallel sampling (C = N chains of
  one answer) and pure sequential revisions (one chain of N), each selection, 95% bands;
  accuracy against the sequential/parallel ratio L/C at each budget (hierarchical ORM)."""
  curves = records.points_from_json(rev_summary["curves"])
  budgets = sorted(rev_summary["budgets"])
  fig = _figure(figsize=(13, 4.8))
  a, r = fig.subplots(1, 2)
  for sel in rev_summary["selections"]:
    rows = _rev_rows(curves, sel)
    color = REVISION_COLORS.get(sel)
    for name, style, chains in (("parallel", "--", lambda n: n), ("sequential", "-",
                                                                     lambda n: 1)):
      pts = [(n, p) for n in budgets if (p := _rev_find(rows, n, chains(n))) is not None]
      if not pts:
        continue
      x = [n for n, _ in pts]
      a.plot(x, [p.accuracy for _, p in pts], style, color=color, marker="o", ms=3,
             label=f"{sel} {name}")
      a.fill_between(x, [p.ci[0] for _, p in pts], [p.ci[1] for _, p in pts],
                     color=color, alpha=0.07, lw=0)
  a.set_xscale("log", base=2)
  a.set_xlabel("generation budget N")
  a.set_ylabel("accuracy (95% CI over problems)")
  a.set_title("parallel sampling (--) vs sequential revisions (-)")
  a.legend(fontsize=6, ncol=2)
  rows = _rev_rows(curves, "hier_orm")
  for i, n in enumerate(budgets):
    pts = sorted((r_ for r_ in rows if r_.params["n"] == n), key=_ratio)
    if not pts:
      continue
    x = [_ratio(p) for p in pts]
    acc = np.array([p.accuracy for p in pts])
    ci = np.array([p.ci for p in pts], np.float64)
    r.errorbar(x, acc, yerr=np.abs(np.stack([acc - ci[:, 0], ci[:, 1] - acc])), marker="o",
               ms=3, capsize=2, color=f"C{i % 10}", label=f"N={n}")
  r.set_xscale("log", base=2)
  r.set_xlabel("sequential / parallel ratio L / C")
  r.set_ylabel("accuracy (95% CI)")
  r.set_title("hierarchical ORM selection, by ratio")
  r.legend(fontsize=7)
  fig.tight_layout()
  return fig


def revisions_by_difficulty(rev_summary: dict) -> Figure:
  """Paper Figure 7: accuracy per oracle difficulty bin against the ratio L/C at the largest
  budget (hierarchical ORM selection), 95% error bars."""
  n = max(rev_summary["budgets"])
  pts = sorted((p for p in _rev_rows(records.points_from_json(rev_summary["curves"]), "hier_orm")
                if p.params["n"] == n), key=_ratio)
  num_bins = len(pts[0].accuracy_by_bin) if pts else 0
  fig = _figure(figsize=(7.5, 4.8))
  ax = fig.subplots()
  x = np.array([_ratio(p) for p in pts], np.float64)
  for b in range(num_bins):
    acc = np.array([p.accuracy_by_bin[b] for p in pts], np.float64)
    ci = np.array([p.ci_by_bin[b] for p in pts], np.float64)
    if np.all(np.isnan(acc)):
      continue
    shift = 2.0 ** (0.06 * (b - (num_bins - 1) / 2))  # side by side on the log axis
    ax.errorbar(x * shift, acc, yerr=np.abs(np.stack([acc - ci[:, 0], ci[:, 1] - acc])),
                marker="o", ms=3, capsize=2, color=f"C{b % 10}", label=f"bin {b + 1}")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("sequential / parallel ratio L / C")
  ax.set_ylabel("accuracy (95% CI)")
  ax.set_title(f"by oracle difficulty bin (1 = easiest), N={n}, hierarchical ORM")
  ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def _rate_bars(ax, rows: Sequence[dict], x: np.ndarray, key: str | None, label: str,
               color: str) -> None:
  got = [(xi, r[key] if key else r) for xi, r in zip(x, rows)]
  got = [(xi, e) for xi, e in got if e["rate"] is not None]
  if not got:
    return
  xs = np.array([xi for xi, _ in got], np.float64)
  rate = np.array([e["rate"] for _, e in got], np.float64)
  ci = np.array([e["ci"] for _, e in got], np.float64)
  ax.errorbar(xs, rate, yerr=np.abs(np.stack([rate - ci[:, 0], ci[:, 1] - rate])), marker="o",
              ms=3, capsize=2, color=color, label=label)


def revision_transitions(rev_summary: dict) -> Figure:
  """Correct -> incorrect and incorrect -> correct rates by revision step, and the accuracy
  of the answers at each step, 95% bootstrap intervals over problems."""
  tr = rev_summary["transitions"]
  fig = _figure(figsize=(11, 4.2))
  a, b = fig.subplots(1, 2)
  steps = tr["by_step"]
  x = np.array([s["step"] for s in steps], np.float64)
  _rate_bars(a, steps, x, "correct_to_incorrect", "correct -> incorrect", "tab:red")
  _rate_bars(a, steps, x, "incorrect_to_correct", "incorrect -> correct", "tab:green")
  pooled = tr["pooled"]["correct_to_incorrect"]
  if pooled["rate"] is not None:
    a.axhline(pooled["rate"], color="tab:red", lw=0.8, ls=":",
              label=f"pooled correct -> incorrect {pooled['rate']:.2f}")
  a.set_xlabel("revision step l (answer l against answer l - 1)")
  a.set_ylabel("fraction of answers (95% CI)")
  a.set_ylim(0, 1)
  a.set_title("how revisions change correctness")
  a.legend(fontsize=7)
  acc = tr["accuracy_by_step"]
  _rate_bars(b, acc, np.array([s["step"] for s in acc], np.float64), None,
             "accuracy at step", "tab:purple")
  b.set_xlabel("revision step l (0 = first answer)")
  b.set_ylabel("accuracy (95% CI)")
  b.set_ylim(0, 1)
  b.set_title("accuracy of the answers by step")
  b.legend(fontsize=7)
  fig.tight_layout()
  return fig


# --- compute-optimal scaling (paper Figures 4, 8, 9) -----------------------------------------

CO_LABELS = {"oracle": "compute-optimal (oracle bins)",
             "predicted": "compute-optimal (predicted bins)",
             "predicted_charged": "compute-optimal (predicted, prediction cost charged)"}
CO_COLORS = {"oracle": "tab:red", "predicted": "tab:green", "predicted_charged": "tab:olive"}
CO_FAMILY_TITLES = {"search": "search against the PRM (Figure 4)",
                    "revisions": "sequential revisions (Figure 8)",
                    "combined": "search + revisions"}


def _plain_log2(ax, which: str = "x") -> None:
  """A base-2 log axis labelled with plain numbers (1, 2, 4, ...): budgets read as budgets."""
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  axis = ax.xaxis if which == "x" else ax.yaxis
  (ax.set_xscale if which == "x" else ax.set_yscale)("log", base=2)
  axis.set_major_locator(ticker.LogLocator(base=2))
  axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
  axis.set_minor_locator(ticker.NullLocator())


def _band(ax, pts: Sequence[CurvePoint], label: str, color, style: str = "-",
          marker: str = "o") -> None:
  """Accuracy against the generation budget with its 95% band (nothing if ``pts`` is empty)."""
  pts = sorted(pts, key=lambda p: p.budget_generations)
  if not pts:
    return
  x = [p.budget_generations for p in pts]
  ax.plot(x, [p.accuracy for p in pts], style, marker=marker, ms=3, color=color, label=label)
  ax.fill_between(x, [p.ci[0] for p in pts], [p.ci[1] for p in pts], color=color, alpha=0.1,
                  lw=0)


def adaptive_allocation(co: dict) -> Figure:
  """Adaptive allocation against the generations it spent (95% bands), beside best-of-N
  weighted and majority on the same samples and compute-optimal search (oracle and predicted
  bins); and the samples it gave each difficulty bin at each budget.

  Args:
    co: the compute_optimal result with its ``adaptive`` part.
  """
  ad = co["adaptive"]
  fig = _figure(figsize=(12.4, 4.8))
  a, b = fig.subplots(1, 2)
  _band(a, records.points_from_json(ad["adaptive"]), f"adaptive ({ad['verifier']})", "tab:purple")
  _band(a, records.points_from_json(ad["baselines"]["best_of_n_weighted"]),
        "best-of-N weighted (same samples)", "tab:blue")
  _band(a, records.points_from_json(ad["baselines"]["majority"]), "majority (same samples)",
        "tab:gray")
  keys = co["curve_keys"]
  for name, k in keys.items():
    if k["family"] == "search" and k["kind"] in ("oracle", "predicted"):
      _band(a, records.points_from_json(co["curves"][name]), CO_LABELS[k["kind"]],
            CO_COLORS[k["kind"]], marker="s")
  _plain_log2(a)
  a.set_xlabel("generations per problem (adaptive: spent)")
  a.set_ylabel("accuracy (95% CI over problems)")
  a.set_title("adaptive allocation (test problems)", fontsize=10)
  a.legend(fontsize=6)
  rows = ad["choices"]
  bins = np.arange(len(rows[0]["samples_by_bin"]))
  width = 0.8 / len(rows)
  for j, r in enumerate(rows):
    b.bar(bins + j * width, r["samples_by_bin"], width, label=f"budget {r['budget']:g}")
  b.set_xticks(bins + 0.4 - width / 2, [f"bin {i}" for i in bins])
  b.set_yscale("log", base=2)
  b.set_xlabel("oracle difficulty bin (0: easiest)")
  b.set_ylabel("mean samples per problem")
  b.set_title("where the budget went", fontsize=10)
  b.legend(fontsize=5, ncol=2)
  return fig


def compute_optimal_curves(co: dict) -> Figure:
  """Compute-optimal accuracy against the generation budget, 95% bands, one panel per family
  present: search (best-of-N weighted, beam search, compute-optimal with oracle and predicted
  bins, the predicted curve with the prediction's cost charged dashed; paper Figure 4),
  revisions (pure parallel, pure sequential, compute-optimal; Figure 8), and the combined
  search + revisions curve against each family's compute-optimal curve.

  Args:
    co: :func:`ttc_jax.analysis.compute_optimal.compute_optimal_summary`'s result.
  """
  curves, base = ({k: records.points_from_json(v) for k, v in co[part].items()}
                  for part in ("curves", "baselines"))
  keys = co["curve_keys"]
  by_key = {(k["family"], k["kind"]): name for name, k in keys.items()}
  fams = [f for f in ("search", "revisions", "combined") if (f, "oracle") in by_key]
  fig = _figure(figsize=(6.2 * len(fams), 4.8))
  axes = np.atleast_1d(fig.subplots(1, len(fams), sharey=True))
  for ax, fam in zip(axes, fams):
    if fam == "search":
      _band(ax, base["best_of_n"], "best-of-N weighted", "tab:blue")
      if base.get("beam"):
        _band(ax, base["beam"], method_label(base["beam"][0].method), "tab:orange")
    elif fam == "revisions":
      _band(ax, base["revisions_parallel"], "parallel (N chains x 1)", "tab:blue")
      _band(ax, base["revisions_sequential"], "sequential (1 chain x N)", "tab:purple")
    else:
      _band(ax, base["best_of_n"], "best-of-N weighted", "tab:blue")
      _band(ax, curves[by_key["search", "oracle"]], "compute-optimal search (oracle)",
            "tab:orange")
      _band(ax, curves.get(by_key.get(("revisions", "oracle")), []),
            "compute-optimal revisions (oracle)", "tab:purple")
    for kind in ("oracle", "predicted", "predicted_charged"):
      pts = curves.get(by_key.get((fam, kind)), [])
      label = CO_LABELS[kind] if fam != "combined" else f"combined {CO_LABELS[kind]}"
      _band(ax, pts, label, CO_COLORS[kind], "--" if kind == "predicted_charged" else "-",
            "s" if kind == "oracle" else "o")
    _plain_log2(ax)
    ax.set_xlabel("generation budget per problem")
    ax.set_title(CO_FAMILY_TITLES[fam], fontsize=10)
    ax.legend(fontsize=6)
  axes[0].set_ylabel("accuracy (95% CI over problems)")
  fig.suptitle(f"compute-optimal scaling ({co['num_problems']} problems, {co['folds']}-fold "
               f"cross-validation x {co['repeats']})", fontsize=10)
  fig.tight_layout()
  return fig


def _efficiency_series(ax, eff: dict, axis: str, label: str, color, style: str, top: float,
                       shift: float) -> None:
  """One compute-optimal curve's needed cost against the baseline's, 95% whiskers; a triangle
  at ``top`` where never reached. ``shift``: horizontal factor that keeps whiskers apart."""
  rows = eff["rows"]
  if axis == "generations":
    x = np.array([r["n"] for r in rows], np.float64)
    y = [r["budget"] for r in rows]
    lo_hi = [r["budget_ci"] for r in rows]
  else:
    x = np.array([r["baseline_flops_per_problem"] for r in rows], np.float64)
    y = [r["co_flops_per_problem"] for r in rows]
    lo_hi = [[None if not hi else f / hi, None if not lo else f / lo]
             for f, (lo, hi) in zip(x, (r["flops_ratio_ci"] for r in rows))]
  x = x * shift
  reached = np.array([v is not None for v in y])
  yv = np.array([top if v is None else v for v in y], np.float64)
  lo = np.array([top if a is None else a for a, _ in lo_hi], np.float64)
  hi = np.array([top if b is None else b for _, b in lo_hi], np.float64)
  err = np.abs(np.stack([yv - np.minimum(lo, yv), np.maximum(hi, yv) - yv]))
  ax.errorbar(x[reached], yv[reached], yerr=err[:, reached], fmt=style, marker="o", ms=4,
              capsize=2, color=color, label=label)
  if (~reached).any():
    ax.errorbar(x[~reached], yv[~reached], yerr=err[:, ~reached], fmt="none", capsize=2,
                color=color, alpha=0.5)
    ax.scatter(x[~reached], yv[~reached], marker="^", s=40, color=color)


def compute_optimal_efficiency(co: dict) -> Figure:
  """For each baseline budget N, the compute-optimal budget that matches its accuracy (95%
  bootstrap interval over problems), on generations (left) and FLOPs per problem (right), one
  row per family (search, revisions, combined), with the y = x line (equal cost) and the
  y = x / 4 line (the paper's 4x); a triangle on the top line: never reached (an interval
  running to the top line: some resamples never reach it)."""
  eff, keys = co["efficiency"], co["curve_keys"]
  fams = [f for f in ("search", "revisions", "combined")
          if any(keys[k]["family"] == f for k in eff)]
  fig = _figure(figsize=(12, 4.4 * max(1, len(fams))))
  grid = np.atleast_2d(fig.subplots(max(1, len(fams)), 2))
  for row, fam in zip(grid, fams):
    mine = {k: e for k, e in eff.items() if keys[k]["family"] == fam}
    for ax, axis in zip(row, ("generations", "flops")):
      vals = []
      for e in mine.values():
        for r in e["rows"]:
          if axis == "generations":
            vals += [r["n"]] + [v for v in [r["budget"]] + r["budget_ci"] if v]
          else:
            vals += [r["baseline_flops_per_problem"]] + ([r["co_flops_per_problem"]]
                                                          if r["co_flops_per_problem"] else [])
      vmin, vmax = min(vals), max(vals)
      top = vmax * 2.0
      for i, (name, e) in enumerate(mine.items()):
        kind = keys[name]["kind"]
        _efficiency_series(ax, e, axis, CO_LABELS.get(kind, kind), CO_COLORS.get(kind, f"C{i}"),
                           "--" if keys[name]["charged"] else "-", top,
                           2.0 ** (0.06 * (i - (len(mine) - 1) / 2)))
      line = np.array([vmin / 2, top])
      ax.plot(line, line, "k:", lw=0.8, label="y = x (no saving)")
      ax.plot(line, line / 4, "k--", lw=0.8, label="y = x / 4 (4x saving)")
      ax.axhline(top, color="gray", lw=0.5)
      if axis == "generations":
        _plain_log2(ax, "x")
        _plain_log2(ax, "y")
      else:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.minorticks_off()
      unit = "generations" if axis == "generations" else "FLOPs per problem"
      baseline = next(iter(mine.values())).get("baseline") or next(
          iter(mine.values()))["baseline_method"]
      ax.set_xlabel(f"{baseline} ({unit})")
      ax.set_ylabel(f"compute-optimal {unit} to match")
      ax.set_title(f"{fam}: {unit} to match the baseline (95% CI; top line: never)", fontsize=9)
      if axis == "generations":
        ax.legend(fontsize=6, loc="lower right")
  fig.tight_layout()
  return fig


def compute_optimal_exchange(co: dict) -> Figure:
  """Paper Figure 9: per oracle difficulty bin (and over all problems), the small model's
  compute-optimal accuracy at the FLOPs-matched budget for each R minus the larger model's
  greedy accuracy, 95% paired bootstrap whiskers; out-of-range R marked with its needed budget,
  capped R (the sweep ends below the matched budget) hatched. Needs ``co["exchange"]``."""
  ex = co.get("exchange")
  if not ex:
    raise ValueError("compute_optimal_exchange: the result has no exchange (the larger model "
                     "was not run).")
  names = list(ex["curves"])
  fig = _figure(figsize=(7 * len(names), 4.6))
  axes = np.atleast_1d(fig.subplots(1, len(names), sharey=True))
  num_bins = co["num_bins"]
  rs = ex["r_values"]
  width = 0.8 / max(1, len(rs))
  for ax, name in zip(axes, names):
    rows = ex["curves"][name]["rows"]
    for i, row in enumerate(rows):
      cmps = row["by_bin"] + [row["overall"]]
      x = np.arange(num_bins + 1) + i * width
      color = f"C{i % 10}"
      if row["status"] == "out of range":
        for xi in x:
          ax.text(xi, 0, f"needs {row['matched_generations']:.3g}", rotation=90, fontsize=6,
                  ha="center", va="bottom", color=color)
        ax.bar([], [], color=color, label=f"R={row['r']:g}: out of range")
        continue
      d = np.array([np.nan if c is None else c["diff"] for c in cmps], np.float64)
      lo = np.array([np.nan if c is None else c["ci"][0] for c in cmps], np.float64)
      hi = np.array([np.nan if c is None else c["ci"][1] for c in cmps], np.float64)
      capped = row["status"] == "capped"
      ax.bar(x, np.nan_to_num(d), width, yerr=np.abs(np.stack([d - lo, hi - d])), capsize=2,
             color=color, hatch="//" if capped else None, edgecolor="white" if capped else None,
             label=f"R={row['r']:g}: X={row['matched_generations']:.3g}, budget "
                   f"{row['budget']:g}" + (" (capped)" if capped else ""))
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(np.arange(num_bins + 1) + width * (len(rs) - 1) / 2)
    ax.set_xticklabels([f"bin {b + 1}" for b in range(num_bins)] + ["all"])
    ax.set_xlabel("oracle difficulty bin (1 = easiest)")
    ax.set_title(f"{name}: small compute-optimal - {ex['param_ratio']:.3g}x larger model "
                 "(greedy)", fontsize=9)
    ax.legend(fontsize=6)
  axes[0].set_ylabel("accuracy difference (95% CI)")
  fig.tight_layout()
  return fig


def bin_confusion(co: dict) -> Figure:
  """Oracle against predicted difficulty bins (counts), and the oracle bins of one half of
  each problem's samples against the other half's (the oracle's own stability)."""
  d = co["difficulty"]
  fig = _figure(figsize=(10.5, 4.4))
  axes = fig.subplots(1, 2)
  for ax, agr, (ylab, xlab) in zip(
      axes, (d["agreement"], d["split_half"]),
      (("oracle bin (pass@1)", "predicted bin (mean verifier score)"),
       (f"oracle bin, first {d['split_half']['samples_per_half']} samples",
        f"oracle bin, next {d['split_half']['samples_per_half']} samples"))):
    m = np.asarray(agr["confusion"])
    ax.imshow(m, cmap="Blues")
    for (i, j), v in np.ndenumerate(m):
      ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
              color="white" if v > m.max() / 2 else "black")
    ticks = np.arange(m.shape[0])
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels([str(t + 1) for t in ticks])
    ax.set_yticklabels([str(t + 1) for t in ticks])
    ax.set_xlabel(xlab)
    ax.set_ylabel(ylab)
    rho = "n/a" if agr["spearman"] is None else f"{agr['spearman']:.2f}"
    ax.set_title(f"exact {agr['exact']:.2f}, within one bin {agr['within_one']:.2f}, "
                 f"Spearman {rho}", fontsize=9)
  fig.tight_layout()
  return fig
