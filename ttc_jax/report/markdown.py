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


def _acc(c) -> str:
  if c is None:
    return ""
  if "ci" in c:
    return f"{c['accuracy']:.3f} [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}]"
  return f"{c['accuracy']:.3f}"


def _ci(x, ci) -> str:
  return f"{x:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def study_report(result: dict, figures: Sequence[str]) -> str:
  """Markdown of the study (``figures``: file names next to the report)."""
  curves = result["curves"]
  methods = _methods(curves)
  budgets = sorted({c["budget_generations"] for c in curves})
  d = result["difficulty"]
  num_bins = len(d["bin_mean_pass_at_1"])
  models = result.get("models", {})
  seeds = curves[0].get("seeds", [0]) if curves else [0]
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
      f"generations. Every search cell was run with {len(seeds)} search seed"
      f"{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))}).",
      "- Statistics: an accuracy is the mean over problems of each problem's outcome averaged "
      "over the seeds; [low, high] is its 95% percentile bootstrap interval over problems. A "
      "comparison is a paired bootstrap over problems of the difference; it is called "
      "significant only when that interval excludes zero.",
      "",
  ]
  ver = result.get("verifiers")
  if ver:
    lines += verifier_section(ver)
  lines += ["## Search", "",
            "Accuracy on the test problems by generation budget (rows) and method (columns), "
            "mean [95% CI]:", "",
            "| budget | " + " | ".join(_label(curves, m) for m in methods) + " |",
            "|---|" + "---|" * len(methods)]
  for b in budgets:
    cells = [_row(curves, m, b) for m in methods]
    lines.append(f"| {b} | " + " | ".join(_acc(c) for c in cells) + " |")
  if len(seeds) > 1:
    lines += ["", "Spread of the search seeds (standard deviation of the per-seed accuracies) "
              "at the largest budget: " + ", ".join(
                  f"{_label(curves, m)} {_row(curves, m, budgets[-1])['seed_std']:.3f}"
                  for m in methods if _row(curves, m, budgets[-1])) + "."]
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
  lines += ["", "Cost (per seed):", "",
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
            "- PRM tokens per policy token over all tree searches: "
            f"{_fmt(perf['prm_tokens_per_policy_token'])} (every token goes through the PRM "
            "once; lookahead rollouts included).", ""]
  if result.get("ablation"):
    lines += ablation_section(result["ablation"])
  lines += ["## The paper's findings, tested", ""]
  lines += claims_section(result.get("claims", []))
  lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures]
  return "\n".join(lines) + "\n"


def verifier_section(ver: dict) -> list[str]:
  """Within-problem verifier quality, calibration, exploitation, best-of-N with CIs."""
  ns = ver["n"]
  lines = ["## Verifiers", "",
           f"On {ver['num_problems']} test problems with {ver['samples_per_problem']} policy "
           f"samples each (pass@1 {_ci(ver['pass_at_1'], ver.get('pass_at_1_ci', [0, 0]))}).",
           ""]
  within = ver.get("within_problem")
  if within:
    lines += ["Does the verifier tell a right sample from a wrong one of the same problem? "
              "(problems with both; AUC averaged over problems [95% CI]; pairwise ranking "
              "accuracy pools all right/wrong pairs; ECE of the reliability curve):", "",
              "| verifier | within-problem AUC | pairwise accuracy | problems | ECE |",
              "|---|---|---|---|---|"]
    for name, w in within.items():
      ece = ver.get("calibration", {}).get(name, {}).get("ece")
      lines.append(f"| {name} | {_ci(w['mean_auc'], w['mean_auc_ci'])} | "
                   f"{w['pairwise_accuracy']:.3f} | {w['problems']} | {_fmt(ece)} |")
    auc = ver["auc"]
    step = auc.get("prm_step_auc_within_problems")
    lines += ["", f"PRM step AUC against held-out MC labels (>= 0.5): pooled "
              f"{auc['prm_step_auc']:.3f} ({auc['num_steps']} steps), within problems "
              + (f"{_ci(step['mean_auc'], step['mean_auc_ci'])} ({step['problems']} problems)"
                 if step else "n/a") + ". A pooled AUC also ranks problems by difficulty; "
              "the within-problem AUC is what search needs.", ""]
  exploit = ver.get("exploitation")
  if exploit:
    lines += ["Exploitation: the top-scored sample of N (exact expectation over N-subsets): "
              "its score and whether it is right.", "",
              "| verifier | " + " | ".join(f"N={n}" for n in ns) + " |",
              "|---|" + "---|" * len(ns)]
    for name, e in exploit.items():
      lines.append(f"| {name} score | " + " | ".join(f"{x:.3f}" for x in e["top_score"]) + " |")
      lines.append(f"| {name} right | " + " | ".join(f"{x:.3f}" for x in e["top_correct"])
                   + " |")
    lines.append("")
  curves, cis = ver.get("curves", {}), ver.get("curves_ci", {})
  if curves:
    lines += ["Best-of-N from one pool of samples per problem (mean over random N-subsets) "
              "[95% CI]:", "", "| selection | " + " | ".join(f"N={n}" for n in ns) + " |",
              "|---|" + "---|" * len(ns)]
    for name, curve in curves.items():
      ci = cis.get(name)
      lines.append(f"| {name} | " + " | ".join(
          _ci(x, ci[i]) if ci else f"{x:.3f}" for i, x in enumerate(curve)) + " |")
    lines.append("")
  return lines


def ablation_section(ablation: dict) -> list[str]:
  rows = ablation["rows"]
  ns = ablation["n"]
  lines = ["## Verifier ablation", "", ablation.get("doc", ""), "",
           "| choice | within-problem AUC | " + " | ".join(
               f"weighted@{n} | vanilla@{n}" for n in ns) + " | train s | params |",
           "|---|---|" + "---|---|" * len(ns) + "---|---|"]
  for r in rows:
    lines.append(f"| {r['name']} | {_ci(r['within_auc'], r['within_auc_ci'])} | " + " | ".join(
        f"{r['weighted'][i]:.3f} | {r['vanilla'][i]:.3f}" for i in range(len(ns)))
        + f" | {r['train_s']:.0f} | {r['params']:,} |")
  return lines + [""]


def claims_section(claims: Sequence[dict]) -> list[str]:
  if not claims:
    return ["No claim could be tested (the sweep lacks the methods or budgets)."]
  lines = ["| finding | paper | difference [95% CI] | verdict |", "|---|---|---|---|"]
  for c in claims:
    cmp = c["comparison"]
    lines.append(f"| {c['claim']} | {c['paper']} | {cmp['diff']:+.3f} "
                 f"[{cmp['ci'][0]:+.3f}, {cmp['ci'][1]:+.3f}] | **{c['verdict']}** |")
  return lines + ["", "reproduced: the 95% interval of the paired difference excludes zero in "
                  "the paper's direction; not reproduced: it excludes zero the other way; not "
                  "significant: it contains zero (no difference can be claimed)."]


def _rate(e: dict) -> str:
  if e["rate"] is None:
    return "n/a (no pairs)"
  return f"{e['rate']:.3f} [{e['ci'][0]:.3f}, {e['ci'][1]:.3f}] ({e['count']}/{e['of']})"


def _rev_point(curves, selection, n, chains):
  return next((c for c in curves if c["method"] == f"revisions_{selection}"
               and c["params"]["n"] == n and c["params"]["chains"] == chains), None)


def _flops_pp(c) -> str:
  return "" if c is None else f"{c['flops'] / len(c['per_problem']):.3g}"


def revisions_section(rev: dict, figures: Sequence[str]) -> list[str]:
  """Sequential revisions against parallel sampling (paper section 6) from the revision
  summary (:func:`ttc_jax.analysis.revisions.summary`); ``figures``: file names."""
  curves = rev["curves"]
  budgets = sorted(rev["budgets"])
  selections = [s for s in rev["selections"]
                if any(c["method"] == f"revisions_{s}" for c in curves)]
  tr = rev["transitions"]
  pooled = tr["pooled"]
  lines = ["## Sequential revisions", "",
           f"A budget of N answers is split into C parallel chains of L = N / C revisions each "
           f"(chain lengths stored: {', '.join(map(str, rev['chain_lengths']))}). Selections: "
           "majority (all C x L answers vote), flat ORM (weighted best-of-N over all answers by "
           "the revision ORM), hierarchical ORM (per chain its best answer by the ORM, then "
           "weighted best-of-N over the chain winners), flat PRM (weighted best-of-N by the "
           "single-answer PRM). Accuracies: mean [95% bootstrap CI over problems].", "",
           f"Transitions over {tr['problems']} problems and {tr['seeds']} seed"
           f"{'s' if tr['seeds'] != 1 else ''}, pooled over all revision steps (rate [95% CI] "
           "(count/of)):", "",
           f"- correct -> incorrect: {_rate(pooled['correct_to_incorrect'])} of the correct "
           "answers are revised into incorrect ones (the paper: about 38%).",
           f"- incorrect -> correct: {_rate(pooled['incorrect_to_correct'])} of the incorrect "
           "answers are revised into correct ones.", "",
           "| step | correct -> incorrect | incorrect -> correct | accuracy at the step |",
           "|---|---|---|---|"]
  acc = {a["step"]: a for a in tr["accuracy_by_step"]}
  if 0 in acc:
    lines.append(f"| 0 | | | {_rate(acc[0])} |")
  for s in tr["by_step"]:
    lines.append(f"| {s['step']} | {_rate(s['correct_to_incorrect'])} | "
                 f"{_rate(s['incorrect_to_correct'])} | "
                 + (_rate(acc[s["step"]]) if s["step"] in acc else "") + " |")
  lines += ["", "Accuracy by budget N and split C chains x L revisions (rows), selection "
            "(columns); FLOPs per problem (policy, plus the verifier a selection runs):", "",
            "| N | C x L | L / C | " + " | ".join(selections)
            + " | FLOPs/problem majority | ORM selections | PRM selection |",
            "|---|---|---|" + "---|" * len(selections) + "---|---|---|"]
  for n in budgets:
    for c in sorted({p["params"]["chains"] for p in curves if p["params"]["n"] == n},
                    reverse=True):
      l = n // c
      cells = [_rev_point(curves, s, n, c) for s in selections]
      lines.append(f"| {n} | {c} x {l} | {l / c:g} | " + " | ".join(_acc(x) for x in cells)
                   + f" | {_flops_pp(_rev_point(curves, 'majority', n, c))} | "
                   f"{_flops_pp(_rev_point(curves, 'hier_orm', n, c))} | "
                   f"{_flops_pp(_rev_point(curves, 'flat_prm', n, c))} |")
  best = [b for b in rev.get("best_ratio_by_bin", []) if b["budget"] == budgets[-1]]
  if best:
    lines += ["", f"The best split per oracle difficulty bin (1 = easiest) at N={budgets[-1]}, "
              f"{best[0]['selection']} selection (descriptive; ties: the more parallel split):",
              "", "| bin | problems | best C x L | L / C | accuracy in the bin | tied splits |",
              "|---|---|---|---|---|---|"]
    for b in best[0]["bins"]:
      if b["accuracy"] is None:
        lines.append(f"| {b['bin'] + 1} | {b['problems']} | n/a | | | |")
      else:
        lines.append(f"| {b['bin'] + 1} | {b['problems']} | {b['chains']} x {b['length']} | "
                     f"{b['ratio']:g} | {_ci(b['accuracy'], b['ci'])} | {b['ties']} |")
  lines += ["", "The paper's findings on revisions, tested (hierarchical ORM, largest budget):",
            ""]
  lines += claims_section(rev.get("claims", []))
  vs = rev.get("vs_search", [])
  if vs:
    lines += ["", "Revisions against search at equal generation budget (difference: revisions "
              "minus search, paired over problems):", "",
              "| N | revisions | accuracy | FLOPs/problem | search | accuracy | FLOPs/problem "
              "| difference [95% CI] | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for r in vs:
      a, s, cmp = r["revisions"], r["search"], r["comparison"]
      lines.append(
          f"| {r['budget']} | {a['chains']} x {a['length']} ({a['role']}) | "
          f"{_ci(a['accuracy'], a['ci'])} | {a['flops_per_problem']:.3g} | "
          f"{method_label(s['method'])} | {_ci(s['accuracy'], s['ci'])} | "
          f"{s['flops_per_problem']:.3g} | {cmp['diff']:+.3f} [{cmp['ci'][0]:+.3f}, "
          f"{cmp['ci'][1]:+.3f}] | {cmp['verdict']} |")
  vf = rev.get("vs_search_flops", [])
  if vf:
    lines += ["", "Revisions against best-of-N weighted at equal FLOPs: the cheapest best-of-N "
              "point that spent at least the revisions' FLOPs per problem (marked * where every "
              "swept best-of-N point spent fewer: its largest):", "",
              "| N | revisions | accuracy | FLOPs/problem | best-of-N at N | accuracy | "
              "FLOPs/problem | difference [95% CI] | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for r in vf:
      a, s, cmp = r["revisions"], r["search"], r["comparison"]
      star = "" if r["search_flops_at_least"] else "*"
      lines.append(
          f"| {r['budget']} | {a['chains']} x {a['length']} ({a['role']}) | "
          f"{_ci(a['accuracy'], a['ci'])} | {a['flops_per_problem']:.3g} | {s['budget']}{star} | "
          f"{_ci(s['accuracy'], s['ci'])} | {s['flops_per_problem']:.3g} | {cmp['diff']:+.3f} "
          f"[{cmp['ci'][0]:+.3f}, {cmp['ci'][1]:+.3f}] | {cmp['verdict']} |")
  lines += [""] + [f"![{f}]({f})" for f in figures] + [""]
  return lines
