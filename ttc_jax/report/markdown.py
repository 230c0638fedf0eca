"""The study's report.md, generated from results.json alone."""

from __future__ import annotations

from typing import Sequence


from ttc_jax.analysis.study import methods as _methods
from ttc_jax.analysis.study import point as _row
from ttc_jax.report.figures import method_label
from ttc_jax.search import records
from ttc_jax.search import registry
from ttc_jax.search.records import CurvePoint


def low_high(budgets: Sequence[int]) -> list[int]:
  """The budgets the per-bin views show: a low one (4 if swept) and the largest, once each."""
  budgets = sorted(budgets)
  low = 4 if 4 in budgets else budgets[0]
  return sorted({low, budgets[-1]})


def _label(curves: Sequence[CurvePoint], method: str) -> str:
  return method_label(method, next(c.params for c in curves if c.method == method))


def _fmt(x, spec: str = ".2f"):
  return "n/a" if x is None or x != x else format(x, spec)


def _acc(c: CurvePoint | None) -> str:
  return "" if c is None else _ci(c.accuracy, c.ci)


def _ci(x, ci) -> str:
  return f"{x:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _what_was_run(result: dict, curves: Sequence[CurvePoint], methods: list,
                  budgets: list[int], seeds: list[int]) -> list[str]:
  """The report's "What was run" section: models, oracle difficulty, methods, statistics."""
  d = result["difficulty"]
  num_bins = len(d["bin_mean_pass_at_1"])
  lines = ["## What was run", ""]
  for role, info in result.get("models", {}).items():
    lines.append(f"- {role}: artifact `{info['id']}`, {info['params']:,} parameters "
                 f"({info['d_model']}d x {info['num_layers']} layers, {info['head']} head"
                 + (f", imported from `{info['imported']}`" if info.get("imported") else "")
                 + (f", PRM format {info['prm_format']}" if info.get("prm_format") else "")
                 + ").")
  return lines + [
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


def study_report(result: dict, figures: Sequence[str]) -> str:
  """Markdown of the study (``figures``: file names next to the report)."""
  curves = records.points_from_json(result["curves"])
  methods = _methods(curves)
  budgets = sorted({c.budget_generations for c in curves})
  num_bins = len(result["difficulty"]["bin_mean_pass_at_1"])
  seeds = (curves[0].seeds or [0]) if curves else [0]
  lines = [f"# Study: test-time search on the task '{result.get('task', '?')}'", ""]
  lines += _what_was_run(result, curves, methods, budgets, seeds)
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
                  f"{_label(curves, m)} {_row(curves, m, budgets[-1]).seed_std:.3f}"
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
                     + " | ".join(f"{x:.2f}" for x in row.accuracy_by_bin) + " |")
  perf = result["perf"]
  lines += ["", "Cost (per seed):", "",
            "| method | budget | policy tokens | PRM tokens | FLOPs | wall s |",
            "|---|---|---|---|---|---|"]
  for b in shown:
    for m in methods:
      c = _row(curves, m, b)
      if c:
        lines.append(f"| {_label(curves, m)} | {b} | {c.policy_tokens:,} | "
                     f"{c.prm_tokens:,} | {c.flops:.3g} | {c.wall_s:.1f} |")
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
              "accuracy pools all right/wrong pairs; ECE of the reliability curve; train s: "
              "the wall time of its model's stage; FLOPs per token it reads in search, "
              "attention left out: 0 for what comes with the sampled tokens):", "",
              "| verifier | within-problem AUC | pairwise accuracy | problems | ECE | train s | "
              "FLOPs / token |", "|---|---|---|---|---|---|---|"]
    costs = ver.get("costs", {})
    for name, w in within.items():
      ece = ver.get("calibration", {}).get(name, {}).get("ece")
      cost = costs.get(name, {})
      lines.append(f"| {name} | {_ci(w['mean_auc'], w['mean_auc_ci'])} | "
                   f"{w['pairwise_accuracy']:.3f} | {w['problems']} | {_fmt(ece)} | "
                   f"{_fmt(cost.get('train_s'), '.0f')} | "
                   f"{_fmt(cost.get('flops_per_token'), '.3g')} |")
    auc = ver["auc"]
    step = auc.get("prm_step_auc_within_problems")
    if auc.get("prm_step_auc") is None:
      lines += ["", "PRM step AUC against MC labels: not measured (verifier_eval.auc_problems"
                "=0).", ""]
    else:
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


def _rev_point(curves: Sequence[CurvePoint], selection: str, n: int, chains: int
               ) -> CurvePoint | None:
  method = registry.name_of(registry.REVISIONS, selection=selection)
  return next((c for c in curves if c.method == method and c.params["n"] == n
               and c.params["chains"] == chains), None)


def _flops_pp(c: CurvePoint | None) -> str:
  return "" if c is None else f"{c.flops_per_problem:.3g}"


def _transition_lines(tr: dict) -> list[str]:
  """The revision transitions: pooled rates, then a table of rates and accuracy per step."""
  pooled = tr["pooled"]
  lines = [f"Transitions over {tr['problems']} problems and {tr['seeds']} seed"
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
  return lines


def _training_round_lines(rounds: list[dict]) -> list[str]:
  """The revision model's rounds (round 0: the paper's data; then on-policy rounds on its own
  chains), each as chosen on held-out train problems ([] without a checkpoint choice)."""
  chosen = [r for r in rounds if r.get("chosen")]
  if not chosen:
    return []
  lo, hi = chosen[0]["chosen"]["problems"]
  lines = ["", f"The revision model's training, round by round (round 0: trajectories over the "
           "policy's answers; round r > 0: over round r - 1's own chains, added to the earlier "
           f"rows). Each round's checkpoint is chosen by the last of a chain's answers on held-out "
           f"train problems {lo}-{hi - 1}, same keys for every round; its figures there:", "",
           "| round | rows trained on (+ policy rows) | own trajectories (keep) | chosen step | "
           "first answer | last answer | correct -> incorrect | last answer vs the round before |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rounds:
    ch = r.get("chosen")
    own = ("" if r["own_trajectories"] is None
           else f"{r['own_trajectories']} ({r['own_keep_trajectories']})")
    if ch is None:
      lines.append(f"| {r['round']} | {r['trajectories']} (+{r['policy_rows']}) | {own} | "
                   "final | | | | |")
      continue
    est = lambda e: _ci(e["mean"], e["ci"])  # noqa: E731
    vs = ch.get("last_vs_previous_round")
    lines.append(f"| {r['round']} | {r['trajectories']} (+{r['policy_rows']}) | {own} | "
                 f"{ch['step']} | {est(ch['first'])} | {est(ch['last'])} | "
                 f"{_rate(ch['correct_to_incorrect'])} | "
                 f"{'' if vs is None else _cmp_cell(vs)} |")
  return lines + [""]


def _temperature_lines(choice: dict | None) -> list[str]:
  """The revision temperature (every answer after a chain's first) as chosen on the
  held-out train problems ([] when not chosen)."""
  if not choice or not choice.get("curve"):
    return []
  lo, hi = choice["problems"]
  lines = [f"Revisions are sampled at temperature {choice['temperature']:g} (a chain's first "
           "answer at the sampling temperature), chosen by the last answer of the final model's "
           f"chains on held-out train problems {lo}-{hi - 1} (same keys for each):", "",
           "| revision temperature | accuracy by answer | correct -> incorrect |", "|---|---|---|"]
  for c in choice["curve"]:
    lines.append(f"| {c['temperature']:g} | "
                 + " / ".join(f"{a:.3f}" for a in c["accuracy_by_answer"])
                 + f" | {c['correct_to_incorrect']:.3f} |")
  return lines + [""]


def _revision_ablation_lines(ablation: dict | None) -> list[str]:
  """The revision ablation's rows (`make retry-ablation`; [] when it has not run)."""
  if not ablation or not ablation.get("rows"):
    return []
  rows = ablation["rows"]
  est = lambda e: "" if e is None else _ci(e["mean"], e["ci"])  # noqa: E731
  cmp_ = lambda c: "" if c is None else _cmp_cell(c)  # noqa: E731
  where = next((r["problems"] for r in rows if r.get("problems")), None)
  lines = ["", "Ablation (`make retry-ablation`): each row makes the policy, its revision data "
           "and revision model with the study's config changed as named (the first row is the "
           "study's own). The revision model's last round at its chosen checkpoint, on "
           + (f"held-out train problems {where[0]}-{where[1] - 1}" if where else
              "held-out train problems")
           + "; the policy's pass@1 on the test problems; differences paired with the first "
           "row:", "",
           "| variant | retry rows | policy pass@1 | vs the study's | first answer | vs the "
           "study's | last answer | vs the study's | correct -> incorrect |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    c2i = r.get("correct_to_incorrect")
    lines.append(f"| {r['name']} | {r.get('retry_rows', 0)} | {est(r['policy_pass_at_1'])} | "
                 f"{cmp_(r.get('pass_at_1_vs_reference'))} | {est(r.get('first'))} | "
                 f"{cmp_(r.get('first_vs_reference'))} | {est(r.get('last'))} | "
                 f"{cmp_(r.get('last_vs_reference'))} | {'' if c2i is None else _rate(c2i)} |")
  return lines + [""]


def _within_chain_lines(rev: dict) -> list[str]:
  """The first answer against the policy, and one chain's selections against its first
  answer ([] for a summary without them)."""
  lines = []
  first = rev.get("first_answer")
  if first:
    c = first["comparison"]
    lines += ["", f"The revision model's first answer (every chain's, per problem) "
              f"{first['first_answer']:.3f} against the policy's pass@1 "
              f"{first['policy_pass_at_1']:.3f} on the same problems: {_cmp_cell(c)} "
              f"({c['verdict']})."]
  within = rev.get("within_chain") or []
  if within:
    lines += ["", "One chain of L answers, the answer chosen among them by each selection, "
              "minus the chain's first answer (paired over problems; the raw last answer is "
              "the accuracy at step L - 1 above):", "",
              "| selection | L | accuracy | minus the first answer [95% CI] | verdict |",
              "|---|---|---|---|---|"]
    for w in within:
      c = w["vs_first"]
      lines.append(f"| {w['selection']} | {w['length']} | {_ci(w['accuracy'], w['ci'])} | "
                   f"{_cmp_cell(c)} | {'' if c is None else c['verdict']} |")
  gated = rev.get("gated")
  if gated:
    g = gated["gate"]
    lines += ["", f"Gated chains: a chain revises only while its current answer's confidence "
              f"({g['confidence']}) is below {g['tau']:.4g}, the threshold that kept the most "
              f"correct answers on the revision ORM's {g['train_chains']} train chains of "
              f"{g['length']} answers (train accuracy {g['train_accuracy']:.3f} with "
              f"{g['train_generations']:.2f} generations per chain; never test problems). A "
              "gated chain keeps its last answer and is charged the generations it made; "
              "parallel sampling is taken at the smallest budget of at least its mean "
              "generations:", "",
              "| L | gated accuracy | generations (mean) | correct -> incorrect | "
              "minus the first answer | minus majority | minus hier_conf |",
              "|---|---|---|---|---|---|---|"]
    for r in gated["chains"]:
      par = lambda k: ("n/a" if r[k] is None  # noqa: E731
                       else f"{_cmp_cell(r[k])} (N={r[k]['budget']})")
      lines.append(f"| {r['length']} | {_ci(r['accuracy']['mean'], r['accuracy']['ci'])} | "
                   f"{r['generations']:.2f} | {_rate(r['correct_to_incorrect'])} | "
                   f"{_cmp_cell(r['vs_first'])} | {par('vs_parallel_majority')} | "
                   f"{par('vs_parallel_hier_conf')} |")
  return lines


def _vs_search_lines(vs: Sequence[dict]) -> list[str]:
  """The table of revisions against search at equal generation budget ([] without rows)."""
  if not vs:
    return []
  lines = ["", "Revisions against search at equal generation budget (difference: revisions "
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
  return lines


def _vs_flops_lines(vf: Sequence[dict]) -> list[str]:
  """The table of revisions against best-of-N weighted at equal FLOPs ([] without rows)."""
  if not vf:
    return []
  lines = ["", "Revisions against best-of-N weighted at equal FLOPs: the cheapest best-of-N "
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
  return lines


def revisions_section(rev: dict, figures: Sequence[str]) -> list[str]:
  """Sequential revisions against parallel sampling (paper section 6) from the revision
  summary (:func:`ttc_jax.analysis.revisions.summary`); ``figures``: file names."""
  curves = records.points_from_json(rev["curves"])
  budgets = sorted(rev["budgets"])
  swept = set(_methods(curves))
  selections = [s for s in rev["selections"]
                if registry.name_of(registry.REVISIONS, selection=s) in swept]
  lines = ["## Sequential revisions", "",
           f"A budget of N answers is split into C parallel chains of L = N / C revisions each "
           f"(chain lengths stored: {', '.join(map(str, rev['chain_lengths']))}). Selections: "
           "majority (all C x L answers vote), flat ORM (weighted best-of-N over all answers by "
           "the revision ORM), hierarchical ORM (per chain its best answer by the ORM, then "
           "weighted best-of-N over the chain winners), flat and hierarchical PRM (the same "
           f"by the single-answer verifier, `{rev.get('single_answer_verifier', 'prm')}`, "
           "reading each answer after the plain prompt), flat and hierarchical confidence (as the "
           "ORM's, by the revision "
           "model's own confidence in each answer: no model call, no verifier FLOPs). "
           "Accuracies: mean [95% bootstrap CI over problems].", ""]
  lines += _training_round_lines(rev.get("training_rounds", []))
  lines += _temperature_lines(rev.get("temperature_choice"))
  lines += _revision_ablation_lines(rev.get("ablation"))
  lines += _transition_lines(rev["transitions"])
  lines += _within_chain_lines(rev)
  lines += ["", "Accuracy by budget N and split C chains x L revisions (rows), selection "
            "(columns); FLOPs per problem (policy, plus the verifier a selection runs):", "",
            "| N | C x L | L / C | " + " | ".join(selections)
            + " | FLOPs/problem majority | ORM selections | PRM selection |",
            "|---|---|---|" + "---|" * len(selections) + "---|---|---|"]
  for n in budgets:
    for c in sorted({p.params["chains"] for p in curves if p.params["n"] == n},
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
  lines += _vs_search_lines(rev.get("vs_search", []))
  lines += _vs_flops_lines(rev.get("vs_search_flops", []))
  lines += [""] + [f"![{f}]({f})" for f in figures] + [""]
  return lines


# --- compute-optimal scaling ---------------------------------------------------------------

CO_KINDS = {"oracle": "oracle bins", "predicted": "predicted bins",
            "predicted_charged": "predicted bins, prediction cost charged"}


def _co_name(key: dict) -> str:
  """A compute-optimal curve's name for a reader, from its ``curve_keys`` entry."""
  return f"{key['family']} ({CO_KINDS.get(key['kind'], key['kind'])})"


def candidate_label(candidate: dict) -> str:
  """A reader's name for a compute-optimal candidate (search method at N, or revision split)."""
  p = candidate.get("params") or {}
  if "chains" in p:
    sel = registry.selection_of(candidate["method"])
    return f"revisions {sel} {p['chains']}x{p['length']}"
  if "revisions" in p:  # search then revise: its search's N, then L revisions
    return f"{method_label(candidate['method'], p)} N={p['n']}+{p['revisions']}"
  return f"{method_label(candidate['method'], p)} N={p.get('n', candidate['budget_generations'])}"


def _g(x) -> str:
  return "n/a" if x is None else f"{x:g}"


def _ratio(x, floor) -> str:
  if x is None:
    return "n/a"
  return f"< {floor:.3g}" if x == 0 else f"{x:.3g}"


def _ratio_ci(ci, floor) -> str:
  return f"[{_ratio(ci[0], floor)}, {_ratio(ci[1], floor)}]"


def _cmp_cell(c: dict | None) -> str:
  if c is None:
    return "n/a"
  return f"{c['diff']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]"


def _best_line(key: dict, e: dict) -> str:
  """The best efficiency ratio: the baseline's own budget N' reaching its accuracy at N over
  the budget compute-optimal needs to match it (above 1: compute-optimal needs less; below 1:
  more)."""
  b = e["best"]
  floor = min(r["floor"] for r in e["rows"])
  r = b["generations_ratio"]
  note = (f"; it needs {1 / r:.3g}x the generations" if r and r < 1 else
          "; it never matches the baseline" if r == 0 else "")
  return (f"- {_co_name(key)} vs {e.get('baseline', e['baseline_method'])}: best efficiency "
          f"**{_ratio(r, floor)}x** in generations (the baseline's smallest budget N' reaching its "
          f"accuracy at N, over the budget compute-optimal needs to match it; at N={b['n']:g}; "
          f"95% CI "
          f"{_ratio_ci(b['generations_ratio_ci'], floor)}{note}), {_ratio(b['flops_ratio'], floor)}x "
          f"in FLOPs (at N={b['n_flops']:g}; 95% CI {_ratio_ci(b['flops_ratio_ci'], floor)}).")


def _co_efficiency_table(eff: dict, keys: dict) -> list[str]:
  """The efficiency table: per compute-optimal curve and baseline budget N, the budget
  matching the baseline's accuracy and the generations and FLOPs ratios with 95% CIs."""
  lines = ["", "Efficiency per baseline budget N: the smallest compute-optimal budget b "
           "reaching the baseline's accuracy (95% CI of b); N' / b, where N' is the baseline's own "
           "smallest budget with that accuracy (N where its curve still rises), and the FLOPs "
           "ratio (baseline at N' / compute-optimal at b) with 95% CIs; 'unreached': "
           "bootstrap resamples where no budget reaches it:", "",
           "| compute-optimal | baseline | N | baseline accuracy | b | b 95% CI | N' / b "
           "[95% CI] | FLOPs ratio [95% CI] | unreached |",
           "|---|---|---|---|---|---|---|---|---|"]
  for name, e in eff.items():
    for r in e["rows"]:
      lines.append(
          f"| {_co_name(keys[name])} | {e.get('baseline', e['baseline_method'])} | {r['n']:g} | "
          + _efficiency_cells(r, _g) + f" | {r['unreached_resamples']}/{e['resamples']} |")
  return lines


def _efficiency_cells(r: dict, fmt) -> str:
  """An efficiency row's cells (efficiency.efficiency's rows): the baseline's accuracy, the
  budget reaching it and its interval, the generations and FLOPs ratios with intervals."""
  b_ci = r["budget_ci"]
  return (f"{r['baseline_accuracy']:.3f} | {fmt(r['budget']) if r['reached'] else 'not reached'} "
          f"| [{fmt(b_ci[0]) if b_ci[0] else 'never'}, {fmt(b_ci[1]) if b_ci[1] else 'never'}] | "
          f"{_ratio(r['generations_ratio'], r['floor'])} "
          f"{_ratio_ci(r['generations_ratio_ci'], r['floor'])} | "
          f"{_ratio(r['flops_ratio'], r['floor'])} {_ratio_ci(r['flops_ratio_ci'], r['floor'])}")


def _co_policy_tables(result: dict, keys: dict) -> list[str]:
  """The learned policy: per uncharged compute-optimal curve, a table of the strategy chosen
  per bin and budget (with the cross-validation agreement)."""
  cands, num_bins = result["candidates"], result["num_bins"]
  lines = ["", "The learned policy: the strategy chosen per oracle-or-predicted bin (1 = "
           "easiest) and budget on all problems; (x%): the share of the cross-validation "
           "choices that agree with it:", ""]
  for name, pts in result["curves"].items():
    if keys[name]["charged"]:
      continue
    lines += [f"{_co_name(keys[name])}:", "",
              "| budget | " + " | ".join(f"bin {b + 1}" for b in range(num_bins)) + " |",
              "|---|" + "---|" * num_bins]
    for p in records.points_from_json(pts):
      lines.append(f"| {p.budget_generations:g} | " + " | ".join(
          f"{candidate_label(cands[c]) if c in cands else c} ({100 * a:.0f}%)"
          for c, a in zip(p.choice, p.choice_agreement)) + " |")
    lines.append("")
  return lines


def _bin_agreement_lines(d: dict, num_bins: int) -> list[str]:
  """Oracle against predicted difficulty bins: the confusion table, their agreement and the
  split-half stability of the oracle bins."""
  agr, half = d["agreement"], d["split_half"]
  lines = ["Difficulty bins: oracle (rows) against predicted (columns), problem counts:", "",
           "| oracle \\ predicted | " + " | ".join(str(b + 1) for b in range(num_bins)) + " |",
           "|---|" + "---|" * num_bins]
  for i, row in enumerate(agr["confusion"]):
    lines.append(f"| {i + 1} | " + " | ".join(str(v) for v in row) + " |")
  rho = lambda a: "n/a" if a["spearman"] is None else f"{a['spearman']:.3f}"  # noqa: E731
  lines += ["", f"- Oracle vs predicted: same bin {agr['exact']:.3f}, within one bin "
            f"{agr['within_one']:.3f}, Spearman {rho(agr)} (pass@1 against the mean score).",
            f"- Split-half stability of the oracle bins ({half['samples_per_half']} samples "
            f"against the next {half['samples_per_half']}): same bin {half['exact']:.3f}, within "
            f"one bin {half['within_one']:.3f}, Spearman {rho(half)}: the agreement the "
            "oracle itself reaches at this sample count.", ""]
  return lines


def compute_optimal_section(result: dict, figures: Sequence[str]) -> list[str]:
  """Compute-optimal scaling (paper sections 5.3, 6.3, 7) from
  :func:`ttc_jax.analysis.compute_optimal.compute_optimal_summary`'s result; ``figures``: file
  names next to the report."""
  d = result["difficulty"]
  cost = d["prediction_cost"]
  curves = {k: records.points_from_json(v) for k, v in result["curves"].items()}
  base = {k: records.points_from_json(v) for k, v in result["baselines"].items()}
  eff = result["efficiency"]
  lines = ["## Compute-optimal scaling", "",
           f"A compute-optimal policy at generation budget B runs, per difficulty bin, the "
           f"candidate strategy with budget <= B (a budget is a cap) that was most accurate on "
           f"the bin's training problems. Choices are cross-validated: {result['folds']} folds "
           f"stratified by bin, {result['repeats']} random splits, each problem scored only by "
           "choices made without it (its outcome averaged over the splits). Ties: fewer FLOPs "
           "per problem, then fewer generations, then the name. Oracle bins: quantiles of the "
           f"policy's pass@1 ({d['samples_per_problem']} samples); predicted bins: quantiles of "
           f"{d.get('predictor', 'prm_last')}'s mean score over the same samples (no ground "
           "truth); predicting "
           f"costs {cost['generations']:g} generations and {cost['flops']:.3g} FLOPs per "
           "problem, added to the budget in the charged curves. Candidates: every search "
           "point; revision splits of the "
           f"{result.get('revision_selection') or 'every'} selection.", "",
           "Efficiency over the baseline (best-of-N weighted for search and combined, pure "
           "parallel sampling for revisions): the largest ratio over the baseline's budgets N "
           "of N to the smallest compute-optimal budget reaching its accuracy; '< x': not "
           "reached (x = N over the largest swept budget).", ""]
  keys = result["curve_keys"]
  lines += [_best_line(keys[name], e) for name, e in eff.items()]
  lines += ["", "The paper's findings, tested (the 4x rule: reproduced if the 95% CI of the best "
            "ratio starts at >= 4, not reproduced if it ends below 4; the column shows ratio - "
            "4):", ""]
  lines += claims_section(result.get("claims", []))
  budgets = sorted({p.budget_generations for k, v in curves.items() for p in v
                    if not keys[k]["charged"]})
  bases = {"best-of-N weighted": base["best_of_n"],
           **({method_label(base["beam"][0].method): base["beam"]} if base.get("beam") else {}),
           "revisions parallel": base["revisions_parallel"],
           "revisions sequential": base["revisions_sequential"]}
  cols = [(k, v) for k, v in bases.items() if v] + [
      (f"compute-optimal {_co_name(keys[k])}", v) for k, v in curves.items()
      if not keys[k]["charged"]]
  lines += ["", "Accuracy by generation budget, mean [95% CI]:", "",
            "| budget | " + " | ".join(k for k, _ in cols) + " |", "|---|" + "---|" * len(cols)]
  for b in budgets:
    lines.append(f"| {b:g} | " + " | ".join(
        _acc(next((p for p in v if p.budget_generations == b), None)) for _, v in cols)
        + " |")
  lines += _co_efficiency_table(eff, keys)
  lines += _co_policy_tables(result, keys)
  lines += _bin_agreement_lines(d, result["num_bins"])
  lines += hybrid_lines(result)
  lines += adaptive_lines(result)
  lines += exchange_lines(result.get("exchange"))
  lines += [f"![{f}]({f})" for f in figures] + [""]
  return lines


def hybrid_lines(result: dict) -> list[str]:
  """Search then revise: its cells' accuracy and where the combined policy chose one."""
  hyb = {k: c for k, c in result["candidates"].items()
         if registry.method(c["method"]).family == registry.HYBRID}
  if not hyb:
    return []
  lines = ["", "## Search then revise (beyond the paper)", "",
           "A search cell whose best candidate the revision model revises L times (a chain "
           "seeded with it); the answer is the last revision ('last') or the majority of the "
           "search's answer and the revisions ('vote'). Budget: the search's N plus L. These "
           "cells are candidates of the combined compute-optimal curves only.", "",
           "| cell | generations | accuracy | FLOPs per problem |", "|---|---|---|---|"]
  for c in sorted(hyb.values(), key=lambda c: (c["method"], c["budget_generations"])):
    lines.append(f"| {candidate_label(c)} | {c['budget_generations']:g} | {c['accuracy']:.3f} | "
                 f"{c['flops_per_problem']:.3g} |")
  wins = result.get("hybrid_wins") or []
  keys = result["curve_keys"]
  lines += [""] + ([f"The combined policy chose a search-then-revise cell in {len(wins)} (bin, "
                    "budget) places: " + "; ".join(
                        f"{_co_name(keys[w['curve']])} budget {w['budget']:g} bin "
                        f"{w['bin'] + 1}: {candidate_label(result['candidates'][w['choice']])} "
                        f"({100 * w['agreement']:.0f}%)" for w in wins) + "."]
                   if wins else ["The combined policy never chose a search-then-revise cell: "
                                 "in no bin and budget did the combination win on the training "
                                 "folds."])
  return lines


def adaptive_lines(result: dict) -> list[str]:
  """Adaptive allocation (compute_optimal's ``adaptive`` part): its curve against best-of-N
  weighted and majority on the same samples, the parameters chosen on train problems,
  efficiency, and the comparison with compute-optimal search."""
  ad = result.get("adaptive")
  if ad is None:
    return []
  pts = records.points_from_json(ad["adaptive"])
  base = {k: records.points_from_json(v) for k, v in ad["baselines"].items()}
  tr = ad["train"]
  lines = ["", "## Adaptive allocation (beyond the paper)", "",
           f"Best-of-N in rounds with one budget shared by the {len(pts[0].per_problem)} test "
           f"problems: each problem draws samples from its pool of {ad['pool']} (the difficulty "
           "samples, in order), votes are weighted by "
           f"`{ad['verifier']}`; after each round a problem whose leading answer holds >= "
           "*settle* of its vote stops (settled), one below *hopeless* is given up, the others "
           "double their samples until the budget (N x problems) is spent. No label is read. "
           f"The parameters at each budget were chosen on {len(tr['problems'])} held-out train "
           f"problems (from train problem {tr['first_problem']}; their pass@1 "
           f"{tr['pass_at_1']:.3f}), best-of-N among the candidates. Best-of-N weighted and "
           "majority read the first N of the same samples: every comparison is paired.", "",
           "| budget N | chosen (first, min samples, settle, hopeless) | train accuracy | "
           "generations spent | settled / hopeless | adaptive [95% CI] | best-of-N weighted "
           "at N | majority at N | adaptive - best-of-N [95% CI] |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r, p in zip(ad["choices"], pts):
    st = r["strategy"]
    n = r["budget"]
    bon = next((q for q in base["best_of_n_weighted"] if q.budget_generations == n), None)
    maj = next((q for q in base["majority"] if q.budget_generations == n), None)
    diff = _cmp_cell(r["vs_best_of_n"]) if r.get("vs_best_of_n") else ""
    settle = "never" if st["settle"] > 1 else f"{st['settle']:g}"
    lines.append(f"| {n:g} | {st['first']}, {st['min_samples']}, {settle}, {st['hopeless']:g} | "
                 f"{r['train_accuracy']:.3f} | {r['generations']:.2f} | "
                 f"{r['settled']:.2f} / {r['hopeless']:.2f} | {_acc(p)} | {_acc(bon)} | "
                 f"{_acc(maj)} | {diff} |")
  eff = ad["efficiency"]
  b, floor = eff["best"], min(r["floor"] for r in eff["rows"])
  lines += ["", f"Adaptive allocation vs best-of-N weighted: best efficiency "
            f"**{_ratio(b['generations_ratio'], floor)}x** in generations (best-of-N's smallest "
            f"budget N' reaching its accuracy at N={b['n']:g}, over the generations adaptive "
            f"allocation spent to match it; 95% CI {_ratio_ci(b['generations_ratio_ci'], floor)}"
            f"), {_ratio(b['flops_ratio'], floor)}x in FLOPs (95% CI "
            f"{_ratio_ci(b['flops_ratio_ci'], floor)}).", ""]
  lines += ["Efficiency per best-of-N budget (generations adaptive allocation spent to reach "
            "best-of-N weighted's accuracy at N):", "",
            "| N | best-of-N accuracy | adaptive generations | 95% CI | N' / b [95% CI] | "
            "FLOPs ratio [95% CI] |", "|---|---|---|---|---|---|"]
  for r in eff["rows"]:
    lines.append(f"| {r['n']:g} | " + _efficiency_cells(r, _fmt) + " |")
  vs = ad.get("vs_compute_optimal") or []
  if vs:
    cost = result["difficulty"]["prediction_cost"]["generations"]
    lines += ["", "Against compute-optimal search at the same budget (adaptive allocation spends "
              "at most N and predicts nothing; the predicted bins' curve also pays "
              f"{cost:g} generations per problem to predict, not counted here):", "",
              "| N | adaptive | compute-optimal (oracle bins) | adaptive - oracle [95% CI] | "
              "compute-optimal (predicted bins) | adaptive - predicted [95% CI] |",
              "|---|---|---|---|---|---|"]
    for r in vs:
      cells = []
      for kind in ("oracle", "predicted"):
        o = r.get(kind)
        cells += (["n/a", "n/a"] if o is None else
                  [_ci(o["accuracy"], o["ci"]), _cmp_cell(o["comparison"])])
      lines.append(f"| {r['budget']:g} | {_ci(r['adaptive'], r['adaptive_ci'])} | "
                   + " | ".join(cells) + " |")
  return lines + [""]


def exchange_lines(ex: dict | None) -> list[str]:
  """The pretraining-versus-test-time exchange (paper section 7) table and its verdicts."""
  lines = ["### Exchanging pretraining for test-time compute (paper section 7)", ""]
  if not ex:
    return lines + ["The larger model was not run: `make exchange` trains it and evaluates its "
                    "greedy answers, then this section compares it with the small model's "
                    "compute-optimal curves at FLOPs-matched budgets.", ""]
  g = ex["groups"]
  lg = ex["large_greedy"]
  lines += [f"The larger model has M = {ex['param_ratio']:.3g}x the parameters "
            f"({ex['large_params']:,.0f} against {ex['small_params']:,.0f}); its greedy "
            f"accuracy: {_ci(lg['accuracy'], lg['ci'])}. At a ratio R of inference to "
            "pretraining tokens the small model may spend X = M + 3 (M - 1) / R generations "
            "per problem for the same FLOPs; it runs its compute-optimal (oracle bins) point at "
            "the largest swept budget <= X ('capped': X exceeds the sweep, so it gets less than "
            "X; 'out of range': every swept budget exceeds X). Cells: small - large, paired "
            "bootstrap over problems, mean [95% CI]. Easy/medium: bins "
            + ", ".join(str(b + 1) for b in g["easy"]) + "; hard: bins "
            + (", ".join(str(b + 1) for b in g["hard"]) or "none") + ".", ""]
  if ex.get("large_majority"):
    lines += ["Larger model, majority vote: " + ", ".join(
        f"N={m['n']} {_ci(m['accuracy'], m['ci'])}" for m in ex["large_majority"]) + ".", ""]
  num_bins = len(lg["accuracy_by_bin"])
  lines += ["| curve | R | M | X | budget used | " + " | ".join(
      f"bin {b + 1}" for b in range(num_bins)) + " | all |",
      "|---|---|---|---|---|" + "---|" * (num_bins + 1)]
  for name, cv in ex["curves"].items():
    for r in cv["rows"]:
      used = (f"out of range (needs {r['matched_generations']:.3g} generations)"
              if r["budget"] is None else f"{r['budget']:g}"
              + (" (capped)" if r["status"] == "capped" else ""))
      lines.append(f"| {name} | {r['r']:g} | {ex['param_ratio']:.3g} | "
                   f"{r['matched_generations']:.3g} | {used} | "
                   + " | ".join(_cmp_cell(c) for c in r["by_bin"]) + f" | "
                   f"{_cmp_cell(r['overall'])} |")
  lines += ["", "| finding | paper | difference [95% CI] | verdict |", "|---|---|---|---|"]
  for c in ex["claims"]:
    v = f"**{c['verdict']}**" if c["verdict"] else f"none: {c['reason']}"
    lines.append(f"| {c['claim']} | {c['paper']} | {_cmp_cell(c['comparison'])} | {v} |")
  return lines + ["", "Rules: at R < 1 the paper says the small model wins on easy/medium bins "
                  "and the larger one on hard bins; at R > 1 the larger one wins on all "
                  "problems. Verdicts as above; none where the point is out of range, or where "
                  "the sweep is capped below X and the larger model is not significantly "
                  "beaten (its win could be the cap's).", ""]


def study_headline(co: dict) -> list[str]:
  """The study's headline (study.md): compute-optimal efficiency over best-of-N, oracle and
  predicted bins, and the exchange's verdicts, from the compute-optimal result."""
  lines = ["## Headline", ""]
  for name in ("search_oracle", "search_predicted", "revisions_oracle", "revisions_predicted",
               "combined_oracle", "combined_predicted"):
    if name in co["efficiency"]:
      lines.append(_best_line(co["curve_keys"][name], co["efficiency"][name]))
  ex = co.get("exchange")
  if not ex:
    lines += ["- Pretraining against test-time compute: not run (`make exchange`)."]
  else:
    for c in ex["claims"]:
      v = f"**{c['verdict']}**" if c["verdict"] else f"not tested ({c['reason']})"
      lines.append(f"- {c['claim']}: {_cmp_cell(c['comparison'])}, {v}")
  return lines + [""]


def verifier_choice_lines(choice: dict, used: str) -> list[str]:
  """study.md's note on the search verifier: the one the claims used (``used``:
  search.verifier) and the one chosen on held-out train problems, with their AUCs."""
  t = choice["table"]
  auc = lambda k: (f"{t[k]['mean_auc']:.3f} [{t[k]['mean_auc_ci'][0]:.3f}, "
                   f"{t[k]['mean_auc_ci'][1]:.3f}]")
  used_score = "prm_last" if used == "prm" else used
  lines = ["## The search verifier", "",
           f"- The search claims below used `search.verifier={used}` (within-problem AUC on "
           f"held-out train problems: {auc(used_score) if used_score in t else 'not measured'}).",
           f"- Chosen by within-problem AUC on {len(choice['problems'])} held-out train problems "
           f"({choice['samples_per_problem']} samples each; never a test problem): "
           f"`{choice['search_verifier']}` ({choice['chosen']}: {auc(choice['chosen'])}); next: "
           + ", ".join(f"{k} {t[k]['mean_auc']:.3f}" for k in choice["ranking"][1:4]) + "."]
  if choice["search_verifier"] in choice.get("ensembles", {}):
    e = choice["ensembles"][choice["search_verifier"]]
    lines.append(f"- `{choice['search_verifier']}` is an ensemble fitted on those problems: "
                 "sigmoid(" + " + ".join([f"{e['bias']:.2f}"] + [
                     f"{w:.2f} logit({k})" for k, w in zip(e["components"], e["weights"])])
                 + "); its AUC there is cross-validated over them. chosen_search searches with it.")
  elif choice["search_verifier"] != used:
    lines.append(f"- To run search with the chosen verifier: `--config.search.verifier="
                 f"{choice['search_verifier']}`.")
  return lines + [""]


def chosen_verifier_lines(claims: Sequence[dict], chosen: dict | None, used: str) -> list[str]:
  """study.md's side-by-side table: each of the paper's findings (a)-(c), (e) tested on the
  study's sweep (``claims``, steps scored by ``used``: search.verifier) and on the same sweep
  with steps scored by the verifier chosen on held-out train problems (``chosen``: the
  chosen_search stage's result)."""
  lines = ["## The findings under the chosen verifier", ""]
  if chosen is None:
    return lines + ["- Not run (this experiment has no verifier choice).", ""]
  name, score = chosen["search_verifier"], chosen["score"]
  if chosen["same_as_study"]:
    return lines + [f"- The chosen verifier, `{name}`, is the one the study's claims used: "
                    "its verdicts are those below.", ""]

  def cell(c: dict | None) -> str:
    if c is None or c.get("verdict") is None:
      return "not tested"
    cmp = c["comparison"]
    return (f"{cmp['diff']:+.3f} [{cmp['ci'][0]:+.3f}, {cmp['ci'][1]:+.3f}] "
            f"**{c['verdict']}**")

  used_name = "PRM" if used == "prm" else used
  # The study's claim of each of the chosen verifier's (the (a) claims name their verifier).
  def study_text(text: str) -> str:
    return text.replace(f"(a) {score} over", f"(a) {used_name} over", 1)

  by_text = {c["claim"]: c for c in claims}
  lines += [f"Each finding on the same test problems and search sweep, with steps scored by "
            f"`search.verifier={used}` (the claims below) and by `{name}` (chosen on held-out "
            f"train problems; `chosen_search/latest/chosen.json`): difference [95% CI] and "
            "verdict.", "",
            f"| finding | under `{used}` | under `{name}` |", "|---|---|---|"]
  for c in chosen["claims"]:
    if c.get("verdict") is None:
      continue
    label = c["claim"].replace(f"(a) {score} over", "(a) the search verifier over", 1)
    lines.append(f"| {label} | {cell(by_text.get(study_text(c['claim'])))} | {cell(c)} |")
  return lines + [""]


def verifier_axis_lines(axis: dict | None) -> list[str]:
  """study.md's note on the verifier-quality axis (diagnosis): the crossover per tree search,
  or how to run it."""
  lines = ["## Verifier quality as an axis (diagnosis)", ""]
  if axis is None:
    return lines + ["- Not run: `make verifier-axis` (search against a synthetic verifier of "
                    "calibrated AUC; the study picks it up when present).", ""]
  if axis.get("skipped"):
    return lines + [f"- Skipped: {axis['skipped']}.", ""]
  for k, v in axis["crossover"].items():
    lines.append(f"- {k} beats best-of-N weighted " + (
        f"from a verifier AUC of {v['auc']:.3f} on" if v["auc"] is not None
        else f"at no level up to AUC {v['no_crossover_up_to']:.3f}") + ".")
  return lines + ["- Table, per difficulty half and figure: "
                  "`verifier_axis/latest/axis.md` (axis.png).", ""]


def distill_lines(distill: dict | None, large: dict | None) -> list[str]:
  """study.md's distillation note (``make distill``): pass@1 and best-of-N per round of the
  label-free variant, their FLOPs, and the exchange's larger policy (``large``:
  compute_optimal's ``large_policy``, when ``make exchange`` ran) at its pretraining FLOPs."""
  if distill is None:
    return []
  lines = ["## Distillation (`make distill`)", ""]
  pre = distill["policy_pretraining_flops"]
  for variant, rounds in distill["rounds"].items():
    keys = sorted(rounds[0]["summary"], key=lambda k: (k != "pass@1", int(k.split("@")[1])
                                                       if "@" in k and k != "pass@1" else 0,
                                                       not k.startswith("weighted")))
    cells = "; ".join(
        f"round {r['round']}: " + ", ".join(
            f"{k} {r['summary'][k]['mean']:.3f}" for k in keys)
        + f" (pretraining + {r['flops']['total']:.3g} FLOPs)" for r in rounds)
    lines.append(f"- {variant}: {cells}.")
  matched = distill.get("matched")
  if matched:
    a, d = matched["against"], matched["distilled_minus_matched"]["pass@1"]
    lines.append(
        f"- The larger architecture ({matched['params']:,} params) trained to the same total FLOPs "
        f"({matched['flops']:.3g}: {matched['steps']} steps): pass@1 "
        f"{matched['summary']['pass@1']['mean']:.3f}; {a['variant']} round {a['round']} minus it "
        f"{d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] (paired).")
  if large is None:
    lines.append("- The larger policy of the exchange: not evaluated (`make exchange`).")
  else:
    d = 6.0 * large["params"] * float(large.get("train_tokens") or 0)
    # Like for like: its temperature-1 samples (majority at N = 1 is their mean accuracy).
    maj = dict(zip(large.get("majority", {}).get("n", []),
                   large.get("majority", {}).get("accuracy", [])))
    same = ", ".join(f"{k} {maj[n]:.3f}" for k, n in (("pass@1", 1), ("majority@4", 4),
                                                       ("majority@16", 16)) if n in maj)
    lines.append(f"- The exchange's larger policy ({large['params']:,} params): "
                 + (f"{same} (temperature 1, as the rounds above), " if same else "")
                 + f"greedy pass@1 {large['greedy_pass_at_1']:.3f}, for {d:.3g} pretraining "
                 f"FLOPs, against the policy's {pre:.3g} plus each round's FLOPs above (6 N D).")
  return lines + [""]


def study_index(claims: list[dict], compute_optimal: dict, *, revisions: bool,
                verifier: list[str] = (), distill: bool = False) -> str:
  """study.md: links to the three reports, the headline, the search verifier's note
  (``verifier``: :func:`verifier_choice_lines`) and every claim's verdict (those not tested
  listed with why). ``revisions``: the experiment has a revision report."""
  co = compute_optimal
  lines = ["# The study", "",
           "- Verifiers and search: `report/latest/report.md` (results.json, figures).",
           "- Sequential revisions: `revision_report/latest/revisions.md` (revisions.json, "
           "figures)." if revisions else "- Sequential revisions: not in this experiment (no "
           "revision model).",
           "- Compute-optimal scaling and the FLOPs exchange: "
           "`compute_optimal/latest/compute_optimal.md` (compute_optimal.json, figures)"
           + ("." if co.get("exchange") else "; the exchange needs a larger policy's "
              "evaluation (`make exchange` in the embedded study)."),
           "- Distilling test-time compute into the policy: `distill/latest/distill.md`."
           if distill else "- Distillation: not run (`make distill` in the embedded study; "
           "the study picks it up when present).", ""]
  lines += study_headline(co) + list(verifier) + ["## Every finding", ""]
  lines += claims_section([c for c in claims if c.get("verdict") is not None])
  untested = [c for c in claims if c.get("verdict") is None]
  if untested:
    lines += ["", "Not tested:"] + [f"- {c['claim']}: {c.get('reason', 'no comparison')}"
                                     for c in untested]
  return "\n".join(lines) + "\n"
