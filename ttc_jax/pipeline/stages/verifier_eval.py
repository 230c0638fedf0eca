"""The verifiers as best-of-N selectors on the difficulty samples, their step AUC, and the
ablation of PRM variants (paper section 5.2)."""

from __future__ import annotations

from typing import Collection

import ml_collections
import numpy as np

from ttc_jax import accounting
from ttc_jax.analysis import verifiers as verifier_metrics
from ttc_jax.pipeline import artifacts
from ttc_jax.pipeline import config as config_lib
from ttc_jax.pipeline.config import ConfigError
from ttc_jax.pipeline.config import Facts
from ttc_jax.pipeline.config import check_int
from ttc_jax.pipeline.stage import Context
from ttc_jax.pipeline.stage import Stage
from ttc_jax.pipeline.stage import load_json
from ttc_jax.pipeline.stage import sampling_params
from ttc_jax.pipeline.stage import segment
from ttc_jax.report import figures
from ttc_jax.sampling import solutions
from ttc_jax.verifiers import aggregation
from ttc_jax.verifiers import ensemble as ensemble_lib
from ttc_jax.verifiers import labels as labels_lib
from ttc_jax.verifiers.scoring import STEP_AGGREGATIONS
from ttc_jax.verifiers.scoring import aggregate_steps
from ttc_jax.verifiers import names


def ensembles_of(ctx: Context) -> dict[str, ensemble_lib.Ensemble]:
  """The verifier ensembles verifier_choice fitted on held-out train problems (none when the
  stage has no verifier choice among its inputs)."""
  choice = ctx.inputs.get("verifier_choice")
  return {k: ensemble_lib.Ensemble.from_json(d)
          for k, d in ((choice or {}).get("ensembles") or {}).items()}


def score_samples(ctx: Context, samples, only: Collection[str] | None = None
                  ) -> dict[str, np.ndarray]:
  """Every verifier's score of each of ``samples`` (solutions.ProblemSamples): the PRM's step
  aggregations, the ORM's and the LM-head verifiers' (when the study has them), the policy's
  confidence measures and its likelihood (:data:`ttc_jax.verifiers.names.SCORES`), and the
  ensembles verifier_choice fitted (``ens_*``, from their components' scores); ``only``: just
  the models those score names need (the others are not run)."""
  ensembles = ensembles_of(ctx)
  wanted = [k for k in (ensembles if only is None else only)
            if names.ensemble_base(k) is not None]
  unknown = [k for k in wanted if k not in ensembles]
  if unknown:
    raise artifacts.ArtifactError(f"verifier {unknown[0]!r}: no such ensemble was fitted "
                                  f"(verifier_choice fitted {sorted(ensembles)}).")
  parts = None if only is None else sorted(
      {k for k in only if names.ensemble_base(k) is None}
      | {c for k in wanted for c in ensembles[k].components})
  scores = _model_scores(ctx, samples, parts)
  for k in wanted:
    if all(c in scores for c in ensembles[k].components):
      scores[k] = ensembles[k].combine([scores[c] for c in ensembles[k].components])
  return scores if only is None else {k: scores[k] for k in only}


def _model_scores(ctx: Context, samples, only: Collection[str] | None
                  ) -> dict[str, np.ndarray]:
  policy, prm, orm = ctx.inputs["policy"], ctx.inputs.get("prm"), ctx.inputs.get("orm")
  need = None if only is None else {names.model_of(k) for k in only}
  if need is not None:
    prm, orm = (prm if names.PRM in need else None), (orm if names.ORM in need else None)
  tok, m = policy.tokenizer, samples.n
  rows, ends = samples.rows_and_step_ends(tok)
  bs = config_lib.scoring_batch_size(ctx.config)
  prompt_lengths = [len(samples.prompts[i // m]) for i in range(len(rows))]
  questions = [samples.problems[i // m].question for i in range(len(rows))]
  scores = {}
  if prm is not None:
    prm_steps = prm.verifier(tok).solution_step_scores(questions, rows, prompt_lengths, ends,
                                                       batch_size=bs)
    scores.update({names.prm_score(h): aggregate_steps(prm_steps, h) for h in STEP_AGGREGATIONS})
  if orm is not None:
    scores[names.ORM] = aggregate_steps(orm.verifier(tok).solution_step_scores(
        questions, rows, prompt_lengths, [[len(r) - 1] for r in rows], batch_size=bs), "last")
  # LM-head verifiers trained from the policy (when the study has them): the implicit reward
  # of the whole solution, or its likelihood under the sft_lm model.
  for name in names.LM_VERIFIERS:
    if ctx.inputs.get(name) is not None and (need is None or name in need):
      scores[name] = aggregate_steps(ctx.verifier(name).solution_step_scores(
          questions, rows, prompt_lengths, [[len(r) - 1] for r in rows], batch_size=bs), "last")
  # No training: the policy's confidence in its own tokens (ttc_jax.verifiers.confidence), read
  # here by one forward pass (in search they come with the sampled tokens). The least likely
  # token, policy_likelihood, is the reference of what a model of the policy's size tells apart.
  if need is None or names.POLICY in need:
    wanted = [k for k in (names.LIKELIHOOD,) + names.CONFIDENCE_SCORES
              if only is None or k in only]
    scores.update(confidence_scores(policy.scorer(), rows, prompt_lengths, wanted, bs))
  return scores if only is None else {k: scores[k] for k in only}


def confidence_scores(scorer, rows, starts, score_names, batch_size: int,
                      desc: str = "policy confidence") -> dict[str, np.ndarray]:
  """Each row's confidence measures (``score_names``: policy_likelihood, conf_*) under the
  model of ``scorer`` (a :class:`ttc_jax.verifiers.scoring.Scorer`), over its tokens from
  ``starts[i]`` (after the prompt): one forward pass for all of them."""
  stats = scorer.token_confidence(rows, batch_size=batch_size, desc=desc)
  return {name: np.asarray([names.measure_of(name).score(s[p:]) for s, p in zip(stats, starts)])
          for name in score_names}


def verifier_costs(ctx: Context, scores) -> dict[str, dict]:
  """What each verifier score costs: the model computing it, its stage's wall seconds (its
  training; 0 for the policy's confidence, which needs none) and the dense FLOPs per token it
  reads in search (2 x its matmul parameters, attention left out; 0 for the policy's
  confidence, which comes with the sampled tokens, as an LM-head verifier's reference does)."""
  out = {}
  for name in scores:
    model = names.charged_model(name)
    if model is None:
      continue
    if model == names.POLICY:
      out[name] = {"model": "policy (with its samples)", "train_s": 0.0, "flops_per_token": 0.0}
      continue
    art = ctx.inputs[model]
    record = artifacts.read_stage(art.path) or {}
    out[name] = {"model": f"{model} {art.identity}",
                 "train_s": float(record.get("seconds", float("nan"))),
                 "flops_per_token": float(accounting.dense_flops(
                     accounting.ModelCost.from_config(art.config), 0, 1))}
  return out


def run_verifier_eval(ctx: Context) -> dict:
  """Best-of-N curves of the PRM's step aggregations, the ORM (when the study has one) and
  the policy's own likelihood on the difficulty samples; the PRM's step AUC against MC
  labels of held-out problems (``verifier_eval.auc_problems``; 0: none)."""
  c = ctx.config
  ec = c.verifier_eval
  data, policy = ctx.inputs["data"], ctx.inputs["policy"]
  tok, task = policy.tokenizer, data.task
  probs = data.problems("test", c.test_problems)
  samples = ctx.inputs["difficulty"].samples(tok, task, probs)
  m = samples.n
  scores = score_samples(ctx, samples)
  prm = ctx.inputs.get("prm")
  bs = config_lib.scoring_batch_size(c)
  # Step AUC: held-out test problems, their own samples and MC labels (streams used nowhere else).
  auc_scores = auc_labels = auc_groups = np.zeros(0)
  if ec.auc_problems and prm is not None:
    auc_probs = data.problems("test", ec.auc_problems, start=c.test_problems)
    auc_ls = labels_lib.sample_and_label(
        policy.sampling_core(), tok, task, auc_probs, ec.auc_samples_per_problem, ec.rollouts,
        c.seed, ("auc_samples", "auc_rollouts"), sampling_params(c),
        batch_size=c.sampling.batch_size, segment=segment(c))
    idx = range(len(auc_ls))
    question = {p.index: p.question for p in auc_probs}
    ends = [auc_ls.ends(i) for i in idx]
    auc_steps = prm.verifier(tok).solution_step_scores(
        [question[int(auc_ls.problem_index[i])] for i in idx],
        [auc_ls.row(i) for i in idx], [int(auc_ls.prompt_lengths[i]) for i in idx], ends,
        batch_size=bs)
    auc_scores, auc_labels, auc_groups = verifier_metrics.step_auc_arrays(
        auc_steps, auc_ls.labels, ends, auc_ls.problem_index)
  answers = [samples.answers[i * m:(i + 1) * m] for i in range(len(probs))]
  result, per_problem = verifier_metrics.evaluate(
      answers, [task.normalize_answer(p.answer) for p in probs],
      samples.correct_matrix(), scores, auc_scores, auc_labels, auc_groups,
      subsamples=ec.subsamples, seed=c.seed)
  result["auc"].update({"problems": ec.auc_problems, "rollouts": ec.rollouts,
                        "samples_per_problem": ec.auc_samples_per_problem})
  ctx.out.save_npz("scored.npz", {**{k: np.asarray(v) for k, v in scores.items()},
                                  "correct": samples.correct, "auc_scores": auc_scores,
                                  "auc_labels": auc_labels, "auc_problems": auc_groups,
                                  **{f"per_problem/{k}": v for k, v in per_problem.items()}})
  ctx.out.write_json("eval.json", result)
  # Apart from eval.json, which depends on its inputs only: train_s is a wall time.
  ctx.out.write_json("costs.json", verifier_costs(ctx, scores))
  ctx.out.save_figure("eval.png", figures.verifier_eval(result, auc_scores, auc_labels >= 0.5))
  ctx.out.save_figure("confidence.png", figures.confidence_eval(result))
  within = {k: round(v["mean_auc"], 3) for k, v in result["within_problem"].items()}
  auc = result["auc"].get("prm_step_auc")
  ctx.log(f"verifiers: pass@1 {result['pass_at_1']:.3f}; at N={result['n'][-1]}: "
          f"{ {k: round(v, 3) for k, v in result['accuracy_at_max_n'].items()} }; PRM step AUC "
          f"{'n/a' if auc is None else f'{auc:.3f}'}; within-problem AUC {within}")
  return {"pass_at_1": result["pass_at_1"], "accuracy_at_max_n": result["accuracy_at_max_n"],
          "prm_step_auc": auc, "within_problem_auc": within}


# ----------------------------------------------------------------------------
# the search verifier, chosen on held-out train problems


def run_verifier_choice(ctx: Context) -> dict:
  """Every verifier that can score search's steps (the PRM's latest step, the LM-head
  verifiers, the policy's confidence measures and likelihood) ranked by within-problem AUC on the policy's samples of
  held-out *train* problems (no PRM or ORM training problem, never a test problem): the best is
  the study's search verifier candidate (``search_verifier``: a ``search.verifier`` value)."""
  c = ctx.config
  vc = c.verifier_choice
  pol = ctx.sampler()
  probs = ctx.inputs["data"].problems("train", vc.num_problems, start=_first_choice_problem(c))
  leaked = [p.uid for p in probs if p.split != "train"]
  if leaked:
    raise artifacts.ArtifactError(f"verifier choice: {leaked[0]} is not a train problem (a "
                                  "verifier is never chosen on test problems).")
  samples = solutions.sample_problems(pol.core, pol.tokenizer, pol.task, probs,
                                      vc.samples_per_problem, c.seed, "choice_samples", pol.sp,
                                      batch_size=c.sampling.batch_size, segment=segment(c),
                                      log_fn=ctx.log)
  correct = samples.correct_matrix()
  table = {}
  scored = score_samples(ctx, samples)
  for name, s in scored.items():
    table[name] = _within(s, correct, c.seed)
  ensembles = _fit_ensembles(c, scored, correct, table, ctx.log)
  searchable = [k for k in table if k in (names.prm_score("last"),) + names.LM_VERIFIERS
                or names.measure_of(k) or k in ensembles]
  ranked = sorted(searchable, key=lambda k: -np.nan_to_num(table[k]["mean_auc"], nan=-1.0))
  chosen = ranked[0]
  result = {"chosen": chosen, "search_verifier": names.PRM if chosen == names.prm_score("last")
            else chosen, "ranking": ranked, "table": table, "split": "train",
            "problems": [p.uid for p in probs], "samples_per_problem": vc.samples_per_problem,
            "pass_at_1": float(correct.mean()),
            "ensembles": {k: e.to_json() for k, e in ensembles.items()},
            "doc": "Within-problem AUC [95% CI] of each verifier on the policy's samples of "
                   "held-out train problems; the search verifier is the best of those search "
                   "can use (the PRM's latest step score, the LM-head verifiers, the policy's "
                   "confidence, their ensembles: each ensemble's AUC from "
                   f"{vc.ensemble_folds}-fold cross-validation over these problems, its "
                   "weights fitted on all of them)."}
  ctx.out.write_json("choice.json", result)
  ctx.log(f"verifier choice on {len(probs)} train problems: {chosen} (AUC "
          f"{table[chosen]['mean_auc']:.3f}); then " + ", ".join(
              f"{k} {table[k]['mean_auc']:.3f}" for k in ranked[1:4]))
  return {"chosen": chosen, "auc": table[chosen]["mean_auc"]}


def _within(scores: np.ndarray, correct: np.ndarray, seed: int) -> dict:
  w = verifier_metrics.within_problem_auc(np.reshape(scores, correct.shape), correct, seed=seed)
  return {k: w[k] for k in ("mean_auc", "mean_auc_ci", "pairwise_accuracy", "problems")}


def _fit_ensembles(c: ml_collections.ConfigDict, scored: dict, correct: np.ndarray,
                   table: dict, log) -> dict[str, ensemble_lib.Ensemble]:
  """Each ensemble of ``verifier_choice.ensembles`` whose components were scored, fitted on
  all the choice's samples; its row of ``table`` (added here) is from the same fit on the
  other folds' problems (:func:`ttc_jax.verifiers.ensemble.cross_validated`)."""
  vc = c.verifier_choice
  groups = np.repeat(np.arange(correct.shape[0]), correct.shape[1])
  out = {}
  for base in vc.ensembles:
    parts = [x for x in (names.base_score(base),) if x] + list(vc.ensemble_confidence)
    if not all(p in scored for p in parts):
      continue  # its base verifier is not in this study
    features = {p: np.asarray(scored[p], np.float64) for p in parts}
    name = ensemble_lib.name_of(base)
    try:
      held = ensemble_lib.cross_validated(features, correct.reshape(-1), groups,
                                          folds=vc.ensemble_folds)
      out[name] = ensemble_lib.fit(features, correct.reshape(-1))
    except ValueError as e:
      log(f"ensemble {name} not fitted: {e}")
      continue
    table[name] = {**_within(held, correct, c.seed), "cross_validated": vc.ensemble_folds}
  return out


def _first_choice_problem(c: ml_collections.ConfigDict) -> int:
  return c.verifier_choice.first_problem  # (set: check_verifier_choice)


def check_verifier_choice(c: ml_collections.ConfigDict, known: Facts) -> None:
  vc = c.verifier_choice
  check_int(vc.samples_per_problem, "verifier_choice.samples_per_problem", 2)
  check_int(vc.num_problems, "verifier_choice.num_problems", 1)
  check_int(vc.ensemble_folds, "verifier_choice.ensemble_folds", 2, vc.num_problems)
  bad = [b for b in vc.ensembles if b not in names.ENSEMBLE_BASES]
  if bad or len(set(vc.ensembles)) != len(vc.ensembles):
    raise ConfigError(f"verifier_choice.ensembles={tuple(vc.ensembles)!r}: expected distinct "
                      f"bases among {names.ENSEMBLE_BASES}.")
  conf = list(vc.ensemble_confidence)
  if any(names.model_of(k) != names.POLICY for k in conf) or len(set(conf)) != len(conf) \
      or (vc.ensembles and not conf):
    raise ConfigError(f"verifier_choice.ensemble_confidence={tuple(conf)!r}: expected distinct "
                      f"confidence measures ('{names.LIKELIHOOD}' or conf_<token>_<aggregation>"
                      "), at least one when verifier_choice.ensembles is not empty.")
  # Held out from the verifiers' training: after the MC-labelled (PRM / ORM) problems.
  if vc.first_problem is None:
    raise ConfigError("verifier_choice.first_problem=None: expected the first of its held-out "
                      "train problems (after any a verifier trains on).")
  check_int(vc.first_problem, "verifier_choice.first_problem",
            c.mc_labels.num_problems if "mc_labels" in c else 0)
  first = _first_choice_problem(c)
  if known.num_train is not None and first + vc.num_problems > known.num_train:
    raise ConfigError(f"verifier_choice: train problems {first}..{first + vc.num_problems - 1} "
                      f"but the task has {known.num_train} (task.num_train).")


# ----------------------------------------------------------------------------
# verifier ablation


def load_verifier_eval(out: artifacts.StageDir, key: dict) -> dict:
  """eval.json, with the per-sample scores of scored.npz under "scored" and what each
  verifier costs (costs.json) under "costs"."""
  del key
  result = out.read_json("eval.json")
  result["scored"] = dict(out.load_npz("scored.npz"))
  result["costs"] = out.read_json("costs.json")
  return result


def run_verifier_ablation(ctx: Context) -> dict:
  """Each variant's PRM (trained, or reused by identity) scores the difficulty samples:
  within-problem AUC and vanilla / weighted best-of-N at a few N."""
  c = ctx.config
  data, policy = ctx.inputs["data"], ctx.inputs["policy"]
  tok, task = policy.tokenizer, data.task
  probs = data.problems("test", c.test_problems)
  samples = ctx.inputs["difficulty"].samples(tok, task, probs)
  rows, ends = samples.rows_and_step_ends(tok)
  m = samples.n
  ns = [n for n in c.ablation.n if n <= m]
  answers = [samples.answers[i * m:(i + 1) * m] for i in range(len(probs))]
  truth = [task.normalize_answer(p.answer) for p in probs]
  correct = samples.correct_matrix()
  table = []
  for text in ("",) + tuple(c.ablation.variants):
    prm, record = ctx.variant("prm", config_lib.parse_variant(text))
    steps = prm.verifier(tok).solution_step_scores(
        [probs[i // m].question for i in range(len(rows))], rows,
        [len(samples.prompts[i // m]) for i in range(len(rows))], ends,
        batch_size=config_lib.scoring_batch_size(c))
    s = np.asarray(aggregate_steps(steps, "last"), np.float64).reshape(len(probs), m)
    within = verifier_metrics.within_problem_auc(s, correct, seed=c.seed)
    acc = aggregation.accuracy_curves(answers, truth, s, ns, ["vanilla", "weighted"],
                                      c.verifier_eval.subsamples, c.seed)
    row = {"name": text or "default (this study's PRM)",
           "overrides": config_lib.parse_variant(text),
           "prm": prm.identity, "params": prm.config.num_params(),
           "train_s": float(record.get("seconds", float("nan"))),
           "within_auc": within["mean_auc"], "within_auc_ci": within["mean_auc_ci"],
           "pairwise_accuracy": within["pairwise_accuracy"],
           "weighted": acc["weighted"], "vanilla": acc["vanilla"]}
    table.append(row)
    ctx.log(f"ablation {row['name']}: within-problem AUC {row['within_auc']:.3f}; weighted "
            f"{[round(x, 3) for x in row['weighted']]}, vanilla "
            f"{[round(x, 3) for x in row['vanilla']]} at N={ns}")
  result = {"n": ns, "rows": table, "aggregation": "last",
            "doc": "Each row is a PRM trained with the study's config changed as named (the "
                   "first is the study's own); all score the same difficulty samples. Within-"
                   "problem AUC of the PRM's last-step score [95% CI]; best-of-N accuracy "
                   "(mean over random N-subsets) with weighted and vanilla selection; training "
                   "time of that PRM (its stage's wall time on the machine that trained it)."}
  ctx.out.write_json("ablation.json", result)
  return {"variants": len(table)}


def check_verifier_eval(c: ml_collections.ConfigDict, known: Facts) -> None:
  ve = c.verifier_eval
  if ve.get("batch_size") is not None:
    check_int(ve.batch_size, "verifier_eval.batch_size", 1)
  check_int(ve.subsamples, "verifier_eval.subsamples", 1)
  if known.num_test is not None and isinstance(c.test_problems, int):
    check_int(ve.auc_problems, "verifier_eval.auc_problems", 0,
              known.num_test - c.test_problems)
  check_int(ve.auc_samples_per_problem, "verifier_eval.auc_samples_per_problem", 1)
  check_int(ve.rollouts, "verifier_eval.rollouts", 1)
  if c.sampling.batch_size % ve.rollouts:
    raise ConfigError(f"sampling.batch_size={c.sampling.batch_size} must be a multiple of "
                      f"verifier_eval.rollouts={ve.rollouts} (a prefix's rollouts share one "
                      "call).")

VERIFIER_EVAL = Stage(
    name="verifier_eval", doc="best-of-N curves per verifier (trained, and the policy's "
    "confidence) and the PRM's step AUC",
    inputs=("data", "policy", "difficulty", "prm", "orm", "implicit_prm", "dpo", "sft_lm",
            "verifier_choice"),
    sections=("seed", "sampling", "test_problems", "verifier_eval"),
    outputs=("eval.json", "scored.npz", "eval.png", "confidence.png", "costs.json"),
    run=run_verifier_eval, load=load_verifier_eval,
    version=7, changelog=("3: an imported PRM's spans that are no step skipped (NaN)",
                          "4: the confidence verifiers (conf_*) scored beside the others",
                          "5: the LM-head verifiers (implicit_prm, dpo) scored beside them; "
                          "each verifier's training seconds and FLOPs per token",
                          "6: the ensembles verifier_choice fitted on train problems (ens_*)",
                          "7: the likelihood verifier (sft_lm) scored beside them"),
    may_lack=("prm", "orm", "implicit_prm", "dpo", "sft_lm", "verifier_choice"),
    speed_only=("verifier_eval.batch_size",),
    cost_s=285,
    checks={"verifier_eval": check_verifier_eval})

VERIFIER_CHOICE = Stage(
    name="verifier_choice", doc="the search verifier chosen by within-problem AUC on held-out "
    "train problems",
    inputs=("data", "policy", "prm", "orm", "implicit_prm", "dpo", "sft_lm"),
    sections=("seed", "sampling", "verifier_eval", "verifier_choice"),
    outputs=("choice.json",), run=run_verifier_choice, load=load_json("choice.json"),
    version=4, changelog=("2: the LM-head verifiers (implicit_prm, dpo) among the candidates",
                          "3: ensembles of a verifier and the policy's confidence (ens_*)",
                          "4: the likelihood verifier (sft_lm) and its ensemble"),
    may_lack=("orm", "implicit_prm", "dpo", "sft_lm"), speed_only=("verifier_eval.batch_size",),
    cost_s=90,
    checks={"verifier_choice": check_verifier_choice})

VERIFIER_ABLATION = Stage(
    name="verifier_ablation", doc="PRM variants (config overrides) scored on the difficulty "
    "samples: within-problem AUC, best-of-N",
    inputs=("data", "policy", "difficulty", "mc_labels", "prm"),
    sections=("seed", "sampling", "test_problems", "mc_labels", "prm", "verifier_eval",
              "ablation"),
    outputs=("ablation.json",),
    run=run_verifier_ablation, load=load_json("ablation.json"),
    cost_s=305, trains=True)  # it trains the PRM variants it has not found
