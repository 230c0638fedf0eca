"""The study's figures (PNG) and report (markdown), from results.json alone."""

from __future__ import annotations

import os

import numpy as np

LABELS = {"best_of_n_weighted": "best-of-N weighted", "beam_m4": "beam search M=4",
          "beam_sqrt": "beam search M=sqrt(N)", "lookahead_k1": "lookahead k=1 (M=4)",
          "lookahead_k3": "lookahead k=3 (M=4)"}


def _methods(curves):
  out = []
  for c in curves:
    if c["method"] not in out:
      out.append(c["method"])
  return out


def _series(curves, method):
  rows = sorted((c for c in curves if c["method"] == method),
                key=lambda c: c["budget_generations"])
  return rows


def plot(result: dict, study_dir: str) -> list[str]:
  # The Figure API needs no pyplot backend: nothing global changes (notebooks keep
  # their inline backend).
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  curves = result["curves"]
  methods = _methods(curves)
  paths = []
  fig = Figure(figsize=(6.5, 4.5))
  ax = fig.subplots()
  for method in methods:
    rows = _series(curves, method)
    ax.plot([r["budget_generations"] for r in rows], [r["accuracy"] for r in rows], marker="o",
            ms=3, label=LABELS.get(method, method))
  ax.axhline(result["difficulty"]["mean_pass_at_1"], color="gray", lw=0.8, ls=":",
             label="pass@1")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("generation budget")
  ax.set_ylabel("accuracy")
  ax.set_title(f"search against the PRM ({result['difficulty']['num_problems']} test problems)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  paths.append(os.path.join(study_dir, "accuracy_vs_budget.png"))
  fig.savefig(paths[-1], dpi=110)

  budgets = sorted({c["budget_generations"] for c in curves})
  low, high = _low_high(budgets)
  fig = Figure(figsize=(12, 4.2))
  axes = fig.subplots(1, 2, sharey=True)
  width = 0.8 / max(1, len(methods))
  for ax, budget in zip(axes, (low, high)):
    for i, method in enumerate(methods):
      row = next((c for c in curves if c["method"] == method
                  and c["budget_generations"] == budget), None)
      if row is None:
        continue
      ax.bar(np.arange(5) + i * width, row["accuracy_by_bin"], width,
             label=LABELS.get(method, method))
    ax.set_xticks(np.arange(5) + width * (len(methods) - 1) / 2)
    ax.set_xticklabels([f"bin {b + 1}" for b in range(5)])
    ax.set_xlabel("oracle difficulty bin (1 = easiest)")
    ax.set_title(f"generation budget {budget}")
  axes[0].set_ylabel("accuracy")
  axes[0].legend(fontsize=7)
  axes[1].legend(fontsize=7)
  fig.tight_layout()
  paths.append(os.path.join(study_dir, "accuracy_by_difficulty.png"))
  fig.savefig(paths[-1], dpi=110)
  return paths


def _low_high(budgets):
  low = 4 if 4 in budgets else budgets[0]
  return low, budgets[-1]


def _best(curves, budget):
  rows = [c for c in curves if c["budget_generations"] == budget]
  return max(rows, key=lambda c: c["accuracy"]) if rows else None


def write(result: dict, study_dir: str, config) -> str:
  figures = plot(result, study_dir)
  curves = result["curves"]
  methods = _methods(curves)
  budgets = sorted({c["budget_generations"] for c in curves})
  d = result["difficulty"]
  lines = [
      "# Study: compute-optimal test-time search on the embedded arithmetic task",
      "",
      "## What was run",
      "",
      "- Policy, PRM (Monte-Carlo step labels) and ORM trained in this workdir (configs in "
      "`policy/`, `prm/`, `orm/`).",
      f"- Oracle difficulty: pass@1 of the policy from {d['samples_per_problem']} samples on "
      f"each of {d['num_problems']} test problems (mean {d['mean_pass_at_1']:.3f}); 5 quantile "
      f"bins, mean pass@1 per bin (easiest first): "
      + ", ".join(f"{x:.2f}" for x in d["bin_mean_pass_at_1"]) + ".",
      f"- Methods, all selecting the final answer by PRM-weighted voting over finished "
      f"candidates: {', '.join(LABELS.get(m, m) for m in methods)}; N = "
      f"{', '.join(str(n) for n in config.study.budgets)}. Lookahead costs N x (k + 1) "
      "generations.",
      "",
      "## Results",
      "",
      "Accuracy on the test problems by generation budget (rows) and method (columns):",
      "",
      "| budget | " + " | ".join(LABELS.get(m, m) for m in methods) + " |",
      "|---|" + "---|" * len(methods),
  ]
  for b in budgets:
    cells = []
    for m in methods:
      row = next((c for c in curves if c["method"] == m and c["budget_generations"] == b), None)
      cells.append("" if row is None else f"{row['accuracy']:.3f}")
    lines.append(f"| {b} | " + " | ".join(cells) + " |")
  low, high = _low_high(budgets)
  lines += ["", f"Accuracy per oracle difficulty bin (1 = easiest) at budgets {low} and {high}:",
            "", "| method | budget | bin 1 | bin 2 | bin 3 | bin 4 | bin 5 |",
            "|---|---|---|---|---|---|---|"]
  for b in (low, high):
    for m in methods:
      row = next((c for c in curves if c["method"] == m and c["budget_generations"] == b), None)
      if row:
        lines.append(f"| {LABELS.get(m, m)} | {b} | "
                     + " | ".join(f"{x:.2f}" for x in row["accuracy_by_bin"]) + " |")
  perf = result["perf"]
  lines += ["", "Cost:", "",
            "| method | budget | policy tokens | PRM tokens | FLOPs | wall s |", "|---|---|---|---|---|---|"]
  for c in curves:
    if c["budget_generations"] in (low, high):
      lines.append(f"| {LABELS.get(c['method'], c['method'])} | {c['budget_generations']} | "
                   f"{c['policy_tokens']:,} | {c['prm_tokens']:,} | {c['flops']:.3g} | "
                   f"{c['wall_s']:.1f} |")
  lines += ["", f"- {LABELS.get(perf['beam_method'], perf['beam_method'])} over best-of-N wall time "
            f"at N={perf['beam_vs_bon_n']} (compilation excluded): "
            f"{_fmt(perf['beam_vs_bon_wall_ratio'])}.",
            f"- PRM tokens per policy token over all beam and lookahead runs: "
            f"{_fmt(perf['prm_tokens_per_policy_token'])} (every token goes through the PRM once; "
            "lookahead rollouts included).", ""]
  lines += ["## Figures", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})"
                                 for p in figures]
  lines += ["", "## Reading (generated from the numbers above)", ""] + _reading(result, budgets)
  text = "\n".join(lines) + "\n"
  path = os.path.join(study_dir, "report.md")
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)
  return path


def _fmt(x):
  return "n/a" if x is None else f"{x:.2f}"


def _reading(result, budgets) -> list[str]:
  """Short statements comparing the measured curves with the paper's claims."""
  curves = result["curves"]
  out = []

  def acc(method, budget):
    row = next((c for c in curves if c["method"] == method and c["budget_generations"] == budget),
               None)
    return None if row is None else row["accuracy"]

  low, high = _low_high(budgets)
  b_low, b_high = acc("beam_m4", low), acc("beam_m4", high)
  n_low, n_high = acc("best_of_n_weighted", low), acc("best_of_n_weighted", high)
  if None not in (b_low, n_low, b_high, n_high):
    out.append(
        f"- Paper: beam search beats best-of-N at low budgets, and the gap closes or reverses at "
        f"high budgets. Here: at budget {low} beam M=4 {b_low:.3f} vs best-of-N {n_low:.3f} "
        f"({b_low - n_low:+.3f}); at budget {high} {b_high:.3f} vs {n_high:.3f} "
        f"({b_high - n_high:+.3f}).")
  for budget in (low, high):
    rows = [c for c in curves if c["budget_generations"] == budget]
    if not rows:
      continue
    easy = max(rows, key=lambda c: c["accuracy_by_bin"][0])
    hard = max(rows, key=lambda c: np.mean(c["accuracy_by_bin"][2:]))
    out.append(f"- Budget {budget}: best on the easiest bin: {LABELS.get(easy['method'])} "
               f"({easy['accuracy_by_bin'][0]:.2f}); best on bins 3-5: "
               f"{LABELS.get(hard['method'])} ({np.mean(hard['accuracy_by_bin'][2:]):.2f}). "
               "Paper: on easy questions best-of-N is as good or better; on medium/hard ones "
               "beam search helps more.")
  la1, la3 = acc("lookahead_k1", high), acc("lookahead_k3", high)
  if la1 is not None or la3 is not None:
    out.append(f"- Paper: lookahead underperforms at equal generation budget (its rollouts cost "
               f"budget). Here at budget {high}: lookahead k=1 {_fmt(la1)}, k=3 {_fmt(la3)}, "
               f"beam M=4 {_fmt(b_high)}.")
  return out
