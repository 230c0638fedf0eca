"""Compute-optimal scaling (paper sections 3, 5.3, 6.3, 7): predicted difficulty and its cost,
per-bin strategy selection with cross-validation, the FLOPs exchange."""

from __future__ import annotations

import ml_collections
import numpy as np

from ttc_jax import accounting
from ttc_jax.analysis import compute_optimal as co_lib
from ttc_jax.analysis import difficulty as difficulty_lib
from ttc_jax.analysis import study as study_lib
from ttc_jax.pipeline import artifacts
from ttc_jax.pipeline import config as config_lib
from ttc_jax.pipeline.config import ConfigError
from ttc_jax.pipeline.config import Facts
from ttc_jax.pipeline.config import check_int
from ttc_jax.pipeline.stage import Context
from ttc_jax.pipeline.stage import Stage
from ttc_jax.pipeline.stage import load_json
from ttc_jax.pipeline.stages import common
from ttc_jax.report import figures
from ttc_jax.report import markdown
from ttc_jax.search import records
from ttc_jax.verifiers import names


def _prediction_cost(ctx: Context, k: int) -> tuple[float, float, dict]:
  """What predicting a problem's difficulty costs: ``k`` policy samples (prompt and
  generation) and the predictor's model reading each whole sample (the PRM for prm_*, in
  its own tokens; the ORM; an LM-head verifier), in generations and FLOPs per problem. The
  policy's confidence (policy_likelihood, conf_*) is read from nothing: the sampling core
  returns it with the samples."""
  c = ctx.config
  predictor = c.compute_optimal.predictor
  diff, policy = ctx.inputs["difficulty"], ctx.inputs["policy"]
  probs = ctx.inputs["data"].problems("test", c.test_problems)
  tok, task = policy.tokenizer, ctx.inputs["data"].task
  prompt_ids = [tok.encode_prompt(task.format_prompt(p)) for p in probs]
  prompts = np.array([len(x) for x in prompt_ids])
  lengths = np.asarray(diff.gens.lengths, np.int64).reshape(len(probs), diff.n)[:, :k]
  rows = prompts[:, None] + lengths
  model = names.model_of(predictor)
  if model == names.PRM:
    scorer, name = ctx.inputs["prm"], "prm"
    # The PRM's own tokens of each sample (an imported PRM reads its own format).
    picked = [(p, s) for p in range(len(probs)) for s in range(k)]
    scored_rows = scorer.verifier(tok).solution_tokens(
        [probs[p].question for p, _ in picked],
        [prompt_ids[p] + list(diff.gens.row(p * diff.n + s)) for p, s in picked],
        [len(prompt_ids[p]) for p, _ in picked]).reshape(len(probs), k)
  elif model == names.ORM:
    scorer, name, scored_rows = ctx.inputs["orm"], "orm", rows
  elif model in names.LM_VERIFIERS:
    # A fine-tune of the policy (its architecture) reads each whole sample; the policy's own
    # log-probabilities, its reference, came with the samples.
    scorer, name, scored_rows = policy, f"{model} (the policy's architecture)", rows
  else:  # the policy's confidence came with its samples
    scorer, name, scored_rows = policy, "policy (with its samples)", np.zeros_like(rows)
  pol, ver = accounting.prediction_flops(accounting.ModelCost.from_config(policy.config),
                                         accounting.ModelCost.from_config(scorer.config),
                                         rows, scored_rows)
  return float(k), pol + ver, {"samples": k, "policy_flops_per_problem": pol,
                               "scorer": name, "scorer_flops_per_problem": ver}


def predicted_difficulty(ctx: Context) -> tuple[np.ndarray, np.ndarray, float, float, dict]:
  """What compute-optimal selection reads of the difficulty samples: their (problems,
  samples) correctness (oracle bins), each problem's mean score of the predictor on its first
  ``compute_optimal.predictor_samples`` (predicted bins), and what predicting costs per
  problem (generations, FLOPs, and the record of both)."""
  c = ctx.config
  cc = c.compute_optimal
  diff, ver = ctx.inputs["difficulty"], ctx.inputs["verifier_eval"]
  scored = ver["scored"]
  n_probs = diff.pass_at_1.size
  # The verifiers' per-sample scores (not the labels, AUC arrays or per-problem curves).
  verifiers = sorted(k for k in scored if names.model_of(k) is not None)
  if cc.predictor not in verifiers:
    raise artifacts.ArtifactError(
        f"compute_optimal.predictor={cc.predictor!r}: the verifier evaluation scored "
        f"{verifiers}.")
  k = diff.n if cc.predictor_samples is None else cc.predictor_samples
  if not 1 <= k <= diff.n:
    raise config_lib.ConfigError(f"compute_optimal.predictor_samples={k}: expected an integer "
                                 f"in [1, {diff.n}] (difficulty.samples_per_problem).")
  scores = np.asarray(scored[cc.predictor], np.float64).reshape(n_probs, diff.n)[:, :k]
  correct = np.asarray(scored["correct"], np.float64).reshape(n_probs, diff.n)
  gens, flops, cost = _prediction_cost(ctx, k)
  return correct, scores.mean(axis=1), gens, flops, cost


def run_compute_optimal(ctx: Context) -> dict:
  """Compute-optimal scaling (paper sections 3, 5.3, 6.3, 7): predicted difficulty, per-bin
  strategy selection with cross-validation over problems, efficiency over best-of-N, and the
  pretraining / test-time FLOPs exchange when the larger policy was evaluated."""
  c = ctx.config
  cc = c.compute_optimal
  diff = ctx.inputs["difficulty"]
  num_bins = c.report.difficulty_bins
  correct, mean_scores, gens, flops, cost = predicted_difficulty(ctx)
  search_points = records.points_from_json(ctx.inputs["report"]["curves"])
  revision_points = (records.points_from_json(ctx.inputs["revision_report"]["curves"])
                     if "revision_report" in ctx.inputs else None)
  hybrid_points = None
  if ctx.inputs.get("hybrid_sweep") is not None:  # search then revise
    bins = difficulty_lib.oracle_bins(diff.pass_at_1, num_bins)
    hybrid_points = [study_lib.summarize(pt, bins, num_bins, c.seed)
                     for pt in study_lib.points(ctx.inputs["hybrid_sweep"])]
  large = ctx.inputs.get("large_policy_eval")
  exchange_inputs = None
  if large is not None:
    exchange_inputs = {"small_params": ctx.inputs["policy"].config.num_params(),
                       "large_params": large["params"],
                       "large_greedy": large["greedy_correct"],
                       "large_majority": large["majority"],
                       "r_values": tuple(cc.r_values)}
  result = co_lib.compute_optimal_summary(
      search_points, revision_points, correct, mean_scores, num_bins, gens, flops,
      exchange_inputs=exchange_inputs, folds=cc.folds, repeats=cc.repeats, seed=c.seed,
      revision_selection=None, hybrid_points=hybrid_points)
  result["difficulty"]["prediction_cost"].update(cost)
  if hybrid_points:
    result["claims"] = result["claims"] + co_lib.hybrid_claims(hybrid_points, search_points,
                                                                c.seed)
  alloc = ctx.inputs.get("allocation")
  if alloc is not None:
    vs, claims = co_lib.adaptive_summary(alloc, {k: records.points_from_json(v) for k, v in
                                                 result["curves"].items()},
                                         result["curve_keys"], c.seed)
    result["adaptive"] = {**{k: alloc[k] for k in ("verifier", "selection", "pool", "train",
                                                    "choices", "adaptive", "baselines",
                                                    "efficiency")}, **vs}
    result["claims"] = result["claims"] + alloc["claims"] + claims
  result["difficulty"].update(predictor=cc.predictor, samples_per_problem=diff.n)
  if large is not None:
    result["large_policy"] = {k: large[k] for k in ("model", "params", "greedy_pass_at_1",
                                                    "train_tokens", "samples_per_problem")}
    result["large_policy"]["majority"] = {"n": large["majority"]["n"],
                                          "accuracy": large["majority"]["accuracy"]}
  ctx.out.write_json("compute_optimal.json", result)
  figs = {"compute_optimal.png": figures.compute_optimal_curves(result),
          "compute_optimal_efficiency.png": figures.compute_optimal_efficiency(result),
          "difficulty_bins.png": figures.bin_confusion(result)}
  if "adaptive" in result:
    figs["adaptive_allocation.png"] = figures.adaptive_allocation(result)
  if result["exchange"] is not None:
    figs["exchange.png"] = figures.compute_optimal_exchange(result)
  for name, fig in figs.items():
    ctx.out.save_figure(name, fig)
  ctx.out.write_text("compute_optimal.md", "\n".join(
      ["# Compute-optimal test-time compute (Snell et al. 2024, sections 3, 5.3, 6.3, 7)", ""]
      + markdown.compute_optimal_section(result, list(figs))) + "\n")
  ctx.log(f"compute-optimal: {ctx.out.path('compute_optimal.md')}"
          + ("" if large is not None else " (no exchange: no larger policy was evaluated; in "
                                          "the embedded study `make exchange` trains one)"))
  return {"claims": len(result["claims"]), "exchange": result["exchange"] is not None}


def check_compute_optimal(c: ml_collections.ConfigDict, known: Facts) -> None:
  del known
  cc = c.compute_optimal
  check_int(cc.folds, "compute_optimal.folds", 2, c.test_problems)  # no empty fold
  check_int(cc.repeats, "compute_optimal.repeats", 1)
  common.check_score(c, cc.predictor, "compute_optimal.predictor")
  if cc.predictor_samples is not None:
    check_int(cc.predictor_samples, "compute_optimal.predictor_samples", 1,
              c.difficulty.samples_per_problem)
  rs = list(cc.r_values)
  if not rs or any(isinstance(r, bool) or not isinstance(r, (int, float)) or not r > 0
                   for r in rs):
    raise ConfigError(f"compute_optimal.r_values={cc.r_values!r}: expected numbers > 0 "
                      "(D_inference / D_pretrain).")

COMPUTE_OPTIMAL = Stage(
    name="compute_optimal", doc="predicted difficulty, per-bin strategy selection with "
    "cross-validation, efficiency over best-of-N, the pretraining / test-time FLOPs exchange "
    "(with the larger policy when `make exchange` ran)",
    inputs=("data", "policy", "prm", "orm", "difficulty", "verifier_eval", "report",
            "revision_report", "hybrid_sweep", "allocation"),
    sections=("seed", "test_problems", "report", "compute_optimal"),
    outputs=("compute_optimal.json", "compute_optimal.md", "compute_optimal.png",
             "compute_optimal_efficiency.png", "difficulty_bins.png"),
    run=run_compute_optimal, load=load_json("compute_optimal.json"),
    optional=("large_policy_eval",), may_lack=("prm", "orm", "revision_report", "hybrid_sweep", "allocation"),
    version=8, changelog=(
        "2: efficiency against the baseline's own smallest budget",
        "3: the prediction cost counts an imported PRM's own tokens; the floor N' / b_max",
        "4: the prediction cost charges the predictor's own model (the ORM, the policy)",
        "5: curve_keys: each curve's family, bins and charged flag (its name is not parsed)",
        "6: a predictor of the policy's confidence reads nothing more (it came with the "
        "samples)",
        "7: adaptive allocation (the allocation stage) beside compute-optimal search, its "
        "claims; search-then-revise cells (hybrid_sweep) among the combined candidates",
        "8: the pre-specified claims of search then revise (against the search alone and "
        "against more search)"),
    cost_s=5,
    checks={"compute_optimal": check_compute_optimal})
