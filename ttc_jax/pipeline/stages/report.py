"""The reports: the search study (report.md), sequential revisions (revisions.md) and the study's
index of every verdict (study.md)."""

from __future__ import annotations

from ttc_jax.analysis import claims as claims_lib
from ttc_jax.analysis import difficulty as difficulty_lib
from ttc_jax.analysis import revisions as revision_analysis
from ttc_jax.analysis import study as study_lib
from ttc_jax.search import registry
from ttc_jax.pipeline import store
from ttc_jax.pipeline.stage import Context
from ttc_jax.pipeline.stage import Stage
from ttc_jax.pipeline.stage import load_json
from ttc_jax.report import figures
from ttc_jax.report import markdown
from ttc_jax.verifiers.confidence import Measure


def run_report(ctx: Context) -> dict:
  c = ctx.config
  diff, cells = ctx.inputs["difficulty"], ctx.inputs["search_sweep"]
  p1 = diff.pass_at_1
  num_bins = c.report.difficulty_bins
  bins = difficulty_lib.oracle_bins(p1, num_bins)
  curves = [study_lib.summarize(pt, bins, num_bins, c.seed) for pt in study_lib.points(cells)]
  beam = registry.reference_beam(study_lib.methods(curves)) or registry.name_of(registry.BEAM_SQRT)
  ver = ctx.inputs["verifier_eval"]
  claims = (claims_lib.verifier_claims(ver)
            + claims_lib.search_claims(curves, bins, num_bins, beam, c.seed))
  result = {
      "task": ctx.inputs["data"].task.name,
      "models": {role: ctx.inputs[role].summary() for role in ("policy", "prm", "orm")
                 if role in ctx.inputs},
      "curves": [cv.to_json() for cv in curves],
      "perf": study_lib.perf(curves, beam),
      "difficulty": {
          "num_problems": int(p1.size), "samples_per_problem": diff.n,
          "mean_pass_at_1": float(p1.mean()),
          "bin_mean_pass_at_1": [float(p1[bins == b].mean()) for b in range(num_bins)]},
      "verifiers": {k: ver[k] for k in ("n", "pass_at_1", "pass_at_1_ci", "accuracy_at_max_n",
                                        "auc", "num_problems", "samples_per_problem",
                                        "curves", "curves_ci", "within_problem", "calibration",
                                        "exploitation", "best_within_problem_auc", "paired",
                                        "costs")
                    if k in ver},
      "bins": [int(b) for b in bins],
      "ablation": ctx.inputs.get("verifier_ablation"),
      "claims": claims,
  }
  ctx.out.write_json("results.json", result)
  low_high = markdown.low_high(sorted({cv.budget_generations for cv in curves}))
  figs = {"accuracy_vs_budget.png": figures.accuracy_vs_budget(
              curves, result["difficulty"]["mean_pass_at_1"], int(p1.size)),
          "accuracy_by_difficulty.png": figures.accuracy_by_difficulty(curves, low_high),
          "verifiers.png": figures.verifier_eval(ver)}
  for name, fig in figs.items():
    ctx.out.save_figure(name, fig)
  ctx.out.write_text("report.md", markdown.study_report(result, list(figs)))
  ctx.log(f"report: {ctx.out.path('report.md')}")
  return {"curves": len(curves)}


def run_revision_report(ctx: Context) -> dict:
  """Sequential revisions against parallel sampling and search (paper section 6):
  revisions.json, figures 6 and 7, the transition rates, revisions.md."""
  c = ctx.config
  p1 = ctx.inputs["difficulty"].pass_at_1
  num_bins = c.report.difficulty_bins
  bins = difficulty_lib.oracle_bins(p1, num_bins)
  search_curves = [study_lib.summarize(pt, bins, num_bins, c.seed)
                   for pt in study_lib.points(ctx.inputs["search_sweep"])]
  sweep = ctx.inputs["revision_sweep"]
  # The gate's threshold: chosen on the revision ORM's chains, on train problems only.
  orm = ctx.inputs["revision_orm"]
  measure = Measure.from_name(c.revisions.confidence)
  train = revision_analysis.train_chains(store.Shards.open(orm.path, "answers").load_all(),
                                         measure)
  gate_choice = {**revision_analysis.choose_gate(*train), "confidence": measure.name}
  rev = revision_analysis.summary(sweep.by_seed, sweep.budgets, bins, num_bins, search_curves,
                                  c.seed, policy_pass_at_1=p1, gate_choice=gate_choice)
  rev["models"] = {role: ctx.inputs[role].summary()
                   for role in ("revision_model", "revision_orm", "prm")}
  made_by = ctx.inputs["revision_model"].description["made_by"]
  rev["training_rounds"] = revision_analysis.training_rounds(
      made_by["data"].get("rounds", []), c.seed)
  rev["temperature_choice"] = made_by.get("temperature_choice")
  if ctx.inputs.get("revision_ablation") is not None:  # `make retry-ablation` ran
    rev["ablation"] = ctx.inputs["revision_ablation"]
  ctx.out.write_json("revisions.json", rev)
  figs = {"revisions_vs_budget.png": figures.revisions_vs_budget(rev),
          "revisions_by_difficulty.png": figures.revisions_by_difficulty(rev),
          "revision_transitions.png": figures.revision_transitions(rev)}
  for name, fig in figs.items():
    ctx.out.save_figure(name, fig)
  ctx.out.write_text("revisions.md", "\n".join(
      ["# Sequential revisions (Snell et al. 2024, section 6)", ""]
      + markdown.revisions_section(rev, list(figs))) + "\n")
  pooled = rev["transitions"]["pooled"]["correct_to_incorrect"]
  ctx.log(f"revisions: correct->incorrect {pooled['rate']}; report "
          f"{ctx.out.path('revisions.md')}")
  return {"curves": len(rev["curves"]), "claims": len(rev["claims"])}


def run_study(ctx: Context) -> dict:
  """The study's index: every claim's verdict (search, verifiers, revisions) and links to
  the two reports."""
  report, co = ctx.inputs["report"], ctx.inputs["compute_optimal"]
  rev = ctx.inputs.get("revision_report")
  exchange = (co.get("exchange") or {}).get("claims", [])
  distill = ctx.inputs.get("distill")
  claims = (report["claims"] + (rev["claims"] if rev else []) + co["claims"] + exchange
            + (distill["claims"] if distill else []))
  ctx.out.write_json("claims.json", claims)
  choice = ctx.inputs.get("verifier_choice")
  choice = [] if choice is None else markdown.verifier_choice_lines(choice,
                                                                   ctx.config.search.verifier)
  if ctx.inputs.get("verifier_choice") is not None:
    choice += markdown.chosen_verifier_lines(claims, ctx.inputs.get("chosen_search"),
                                             ctx.config.search.verifier)
  choice += markdown.verifier_axis_lines(ctx.inputs.get("verifier_axis"))
  choice += markdown.distill_lines(distill, co.get("large_policy"))
  ctx.out.write_text("study.md", markdown.study_index(claims, co, revisions=rev is not None,
                                                      verifier=choice,
                                                      distill=distill is not None))
  ctx.log(f"study: {ctx.out.path('study.md')}")
  return {"claims": len(claims)}


REPORT = Stage(
    name="report", doc="results.json, figures and report.md of the study",
    inputs=("data", "policy", "prm", "orm", "difficulty", "verifier_eval", "verifier_ablation",
            "search_sweep"),
    sections=("seed", "report"),
    outputs=("results.json", "report.md", "accuracy_vs_budget.png",
             "accuracy_by_difficulty.png", "verifiers.png"),
    run=run_report, load=load_json("results.json"), version=2,
    may_lack=("prm", "orm", "verifier_ablation"), cost_s=5)

REVISION_REPORT = Stage(
    name="revision_report", doc="sequential revisions vs parallel sampling and search, gated "
    "chains: revisions.json, figures 6 and 7, revisions.md",
    inputs=("data", "difficulty", "search_sweep", "revision_sweep", "revision_model",
            "revision_orm", "prm"),
    sections=("seed", "report", "revisions"),
    outputs=("revisions.json", "revisions.md", "revisions_vs_budget.png",
             "revisions_by_difficulty.png", "revision_transitions.png"),
    optional=("revision_ablation",),
    run=run_revision_report, load=load_json("revisions.json"), cost_s=5, version=5,
    changelog=("2: the first answer against the policy's pass@1; one chain's selections "
               "against its first answer; gated chains (threshold chosen on train chains)",
               "3: the revision model's training rounds as chosen on held-out train problems",
               "4: the (d) claims also with the revision model's confidence selection "
               "(hier_conf)",
               "5: hierarchical selection by the single-answer verifier (hier_prm), in every "
               "table and with its own (d) claims"))

STUDY = Stage(
    name="study", doc="the whole study: every claim's verdict and the three reports",
    inputs=("report", "revision_report", "compute_optimal", "verifier_choice",
            "chosen_search"),
    sections=("search",), outputs=("claims.json", "study.md"),
    run=run_study, load=load_json("claims.json"), optional=("verifier_axis", "distill"),
    version=5, changelog=("3: its text without revisions",
                          "4: the search verifier used, and the one chosen on train problems",
                          "5: the findings under the chosen verifier, side by side"),
    may_lack=("revision_report", "verifier_choice", "chosen_search"), cost_s=1)
