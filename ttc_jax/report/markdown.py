"""The study's report.md, generated from results.json alone."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ttc_jax.analysis.study import methods as _methods
from ttc_jax.analysis.study import point as _row
from ttc_jax.report.figures import method_label


def low_high(budgets: Sequence[int]) -> list[int]:
  """The budgets the per-bin views show: a low one (4 if swept) and the largest, once each."""
  budgets = sorted(budgets)
  low = 4 if 4 in budgets else budgets[0]
  return sorted({low, budgets[-1]})


def _label(curves, method):
  return method_label(method, next(c["params"] for c in curves if c["method"] == method))


def _fmt(x):
  return "n/a" if x is None else f"{x:.2f}"


def study_report(result: dict, figures: Sequence[str]) -> str:
  """Markdown of the study (``figures``: file names next to the report)."""
  curves = result["curves"]
  methods = _methods(curves)
  budgets = sorted({c["budget_generations"] for c in curves})
  d = result["difficulty"]
  num_bins = len(d["bin_mean_pass_at_1"])
  models = result.get("models", {})
  lines = [
      f"# Study: test-time search on the task '{result.get('task', '?')}'",
      "",
      "## What was run",
      "",
  ]
  for role, info in models.items():
    lines.append(f"- {role}: artifact `{info['id']}`, {info['params']:,} parameters "
                 f"({info['d_model']}d x {info['num_layers']} layers, {info['head']} head).")
  lines += [
      f"- Oracle difficulty: pass@1 of the policy from {d['samples_per_problem']} samples on "
      f"each of {d['num_problems']} test problems (mean {d['mean_pass_at_1']:.3f}); {num_bins} "
      "quantile bins, mean pass@1 per bin (easiest first): "
      + ", ".join(f"{x:.2f}" for x in d["bin_mean_pass_at_1"]) + ".",
      "- Methods, all selecting the final answer by PRM-weighted voting over finished "
      f"candidates: {', '.join(_label(curves, m) for m in methods)}; generation budgets "
      f"{', '.join(str(b) for b in budgets)}. Lookahead with k steps costs N x (k + 1) "
      "generations.",
      "",
      "## Results",
      "",
      "Accuracy on the test problems by generation budget (rows) and method (columns):",
      "",
      "| budget | " + " | ".join(_label(curves, m) for m in methods) + " |",
      "|---|" + "---|" * len(methods),
  ]
  for b in budgets:
    cells = [_row(curves, m, b) for m in methods]
    lines.append(f"| {b} | " + " | ".join("" if c is None else f"{c['accuracy']:.3f}"
                                          for c in cells) + " |")
  shown = low_high(budgets)
  lines += ["", f"Accuracy per oracle difficulty bin (1 = easiest) at budget"
            f"{'s' if len(shown) > 1 else ''} {' and '.join(map(str, shown))}:", "",
            "| method | budget | " + " | ".join(f"bin {b + 1}" for b in range(num_bins)) + " |",
            "|---|---|" + "---|" * num_bins]
  for b in shown:
    for m in methods:
      row = _row(curves, m, b)
      if row:
        lines.append(f"| {_label(curves, m)} | {b} | "
                     + " | ".join(f"{x:.2f}" for x in row["accuracy_by_bin"]) + " |")
  perf = result["perf"]
  lines += ["", "Cost:", "",
            "| method | budget | policy tokens | PRM tokens | FLOPs | wall s |",
            "|---|---|---|---|---|---|"]
  for b in shown:
    for m in methods:
      c = _row(curves, m, b)
      if c:
        lines.append(f"| {_label(curves, m)} | {b} | {c['policy_tokens']:,} | "
                     f"{c['prm_tokens']:,} | {c['flops']:.3g} | {c['wall_s']:.1f} |")
  lines += ["", f"- {method_label(perf['beam_method'])} over best-of-N wall time at "
            f"N={perf['beam_vs_bon_n']} (compilation excluded): "
            f"{_fmt(perf['beam_vs_bon_wall_ratio'])}.",
            "- PRM tokens per policy token over all beam and lookahead runs: "
            f"{_fmt(perf['prm_tokens_per_policy_token'])} (every token goes through the PRM "
            "once; lookahead rollouts included).", ""]
  ver = result.get("verifiers")
  if ver:
    lines += ["## Verifiers", "",
              f"On {ver['num_problems']} test problems with {ver['samples_per_problem']} policy "
              f"samples each (pass@1 {ver['pass_at_1']:.3f}); accuracy at N = "
              f"{ver['n'][-1]}:", "", "| selection | accuracy |", "|---|---|"]
    for name, acc in ver["accuracy_at_max_n"].items():
      lines.append(f"| {name} | {acc:.3f} |")
    lines += ["", f"PRM step ROC AUC against held-out Monte-Carlo labels: "
              f"{ver['auc']['prm_step_auc']:.3f} ({ver['auc']['num_steps']} steps).", ""]
  lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures]
  lines += ["", "## Reading (generated from the numbers above)", ""]
  lines += reading(result, budgets)
  return "\n".join(lines) + "\n"


def reading(result: dict, budgets: Sequence[int]) -> list[str]:
  """Short statements comparing the measured curves with the paper's claims."""
  curves = result["curves"]
  out = []

  def acc(method, budget):
    row = _row(curves, method, budget)
    return None if row is None else row["accuracy"]

  low, high = low_high(budgets)[0], low_high(budgets)[-1]
  beam = result["perf"]["beam_method"]
  b_low, b_high = acc(beam, low), acc(beam, high)
  n_low, n_high = acc("best_of_n_weighted", low), acc("best_of_n_weighted", high)
  name = method_label(beam)
  if None not in (b_low, n_low, b_high, n_high):
    out.append(
        f"- Paper: beam search beats best-of-N at low budgets, and the gap closes or reverses at "
        f"high budgets. Here: at budget {low} {name} {b_low:.3f} vs best-of-N {n_low:.3f} "
        f"({b_low - n_low:+.3f}); at budget {high} {b_high:.3f} vs {n_high:.3f} "
        f"({b_high - n_high:+.3f}).")
  for budget in low_high(budgets):
    rows = [c for c in curves if c["budget_generations"] == budget]
    if not rows:
      continue
    bins = len(rows[0]["accuracy_by_bin"])
    hard = slice(bins // 2, bins)
    easy = max(rows, key=lambda c: c["accuracy_by_bin"][0])
    hardest = max(rows, key=lambda c: np.mean(c["accuracy_by_bin"][hard]))
    out.append(f"- Budget {budget}: best on the easiest bin: "
               f"{method_label(easy['method'], easy['params'])} "
               f"({easy['accuracy_by_bin'][0]:.2f}); best on bins {bins // 2 + 1}-{bins}: "
               f"{method_label(hardest['method'], hardest['params'])} "
               f"({np.mean(hardest['accuracy_by_bin'][hard]):.2f}). Paper: on easy questions "
               "best-of-N is as good or better; on medium/hard ones beam search helps more.")
  looks = sorted({c["method"] for c in curves if c["method"].startswith("lookahead")})
  if looks:
    parts = ", ".join(f"{method_label(m)} {_fmt(acc(m, high))}" for m in looks)
    out.append(f"- Paper: lookahead underperforms at equal generation budget (its rollouts cost "
               f"budget). Here at budget {high}: {parts}; {name} {_fmt(b_high)}.")
  out.append("- These are single runs without confidence intervals; differences of a few "
             "points are within noise at this number of problems.")
  return out
