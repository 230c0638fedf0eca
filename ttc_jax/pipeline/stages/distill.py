"""Distilling test-time compute into the policy (beyond the paper: its third open direction;
``make distill``, not part of ``make study``, which picks its result up when present).

Each round, the current policy samples ``samples_per_problem`` solutions to each of its train
problems; best-of-N weighted by the policy's own confidence (``distill.verifier``, no label)
selects an answer per problem, and the most confident sample giving it becomes a training row
(question -> that solution); the current policy is fine-tuned on those rows with a share of
its original SFT rows mixed in, and the next round starts from the result. A labelled variant
(a reference, not label-free) keeps the most confident *correct* sample instead. Every round's
model is evaluated on the test problems with the same keys (paired): pass@1, best-of-N
weighted and majority; FLOPs spent (sampling, training; the verifier costs none). Beside the
last label-free round, the exchange's larger architecture trained from scratch to the same
total FLOPs (the policy's pretraining plus the rounds; ``distill.matched_large_policy``),
evaluated the same way and paired; when ``make exchange`` ran, study.md also sets the larger
policy beside it at its own pretraining FLOPs.
"""

from __future__ import annotations

import hashlib
import json
import os

import ml_collections
import numpy as np
from flax import nnx

from ttc_jax import accounting
from ttc_jax.analysis import claims as claims_lib
from ttc_jax.analysis import stats as stats_lib
from ttc_jax.models import checkpoints
from ttc_jax.models.transformer import Transformer
from ttc_jax.models.transformer import TransformerConfig
from ttc_jax.pipeline import config as config_lib
from ttc_jax.pipeline.config import ConfigError
from ttc_jax.pipeline.config import Facts
from ttc_jax.pipeline.config import check_int
from ttc_jax.pipeline.stage import Context
from ttc_jax.pipeline.stage import Stage
from ttc_jax.pipeline.stage import load_json
from ttc_jax.pipeline.stage import sampling_params
from ttc_jax.pipeline.stage import segment
from ttc_jax.pipeline.stages import common
from ttc_jax.pipeline.stages.models import sft_dataset
from ttc_jax.pipeline.stages.models import tokens_per_step
from ttc_jax.pipeline.stages.verifier_eval import confidence_scores
from ttc_jax.sampling import solutions
from ttc_jax.sampling.core import SamplingCore
from ttc_jax.training import data as data_lib
from ttc_jax.training import revisions as revisions_lib
from ttc_jax.training import trainer
from ttc_jax.verifiers import aggregation
from ttc_jax.verifiers import names
from ttc_jax.verifiers.scoring import Scorer

VARIANTS = ("selected", "labelled")  # label-free (the default claim) and the labelled reference


def first_problem(c: ml_collections.ConfigDict) -> int:
  """The first distillation train problem: ``distill.first_problem``, or right after the
  LM-head verifiers' samples (after every other stage's train problems)."""
  d = c.distill
  if d.first_problem is not None:
    return d.first_problem
  vs = c.verifier_samples
  return vs.first_problem + vs.num_problems


def _confidence(model: Transformer, pad_id: int, samples: solutions.ProblemSamples, tok,
                measure: str, batch_size: int) -> np.ndarray:
  """Each sample's score by ``model``'s own confidence in it (``measure``: a score name; one
  forward pass; in search they come with the sampled tokens)."""
  rows, _ = samples.rows_and_step_ends(tok)
  starts = [len(samples.prompts[i // samples.n]) for i in range(len(rows))]
  return confidence_scores(Scorer(model, pad_id=pad_id), rows, starts, [measure], batch_size,
                           desc="confidence")[measure]


def select_rows(samples: solutions.ProblemSamples, scores: np.ndarray, variant: str
                ) -> list[tuple[int, int]]:
  """(problem position, sample) of each training row: per problem, best-of-N weighted's
  answer and its most confident sample ('selected'; reads no label), or the most confident
  correct sample ('labelled'); a problem without one gives no row."""
  n = samples.n
  out = []
  for p in range(len(samples.problems)):
    answers = samples.answers[p * n:(p + 1) * n]
    s = scores[p * n:(p + 1) * n]
    if variant == "selected":
      chosen = aggregation.select_answer(answers, s, "weighted")
      ok = [a is not None and a == chosen for a in answers]
    else:
      ok = list(samples.correct[p * n:(p + 1) * n])
    if any(ok):
      out.append((p, int(np.argmax(np.where(ok, s, -np.inf)))))
  return out


def rows_digest(rows) -> str:
  return hashlib.sha256(json.dumps([list(r) for r in rows]).encode()).hexdigest()


def _flops_of(cost, samples: solutions.ProblemSamples) -> float:
  """Sampling FLOPs: each prompt once, each sample after it (as search counts them)."""
  prompts = np.asarray([len(x) for x in samples.prompts], np.int64)
  lengths = np.asarray(samples.gens.lengths, np.int64).reshape(len(prompts), samples.n)
  stop = prompts[:, None] + lengths
  return float(np.sum(accounting.forward_flops(cost, 0, prompts))
               + np.sum(accounting.forward_flops(cost, np.broadcast_to(prompts[:, None],
                                                                       stop.shape), stop)))


def _evaluate(ctx: Context, model: Transformer, pad_id: int, special_ids, tests: list, measure
              ) -> dict:
  """The model on the test problems (stream distill_eval, the same keys every round):
  per problem pass@1, best-of-N weighted (its own confidence) and majority at each N."""
  c, dc = ctx.config, ctx.config.distill
  tok, task = ctx.inputs["policy"].tokenizer, ctx.inputs["data"].task
  samples = solutions.sample_problems(SamplingCore(model, special_ids), tok, task, tests,
                                      dc.eval_samples, c.seed, "distill_eval",
                                      sampling_params(c), batch_size=c.sampling.batch_size,
                                      segment=segment(c), log_fn=ctx.log)
  scores = _confidence(model, pad_id, samples, tok, measure, c.sampling.batch_size)
  n = samples.n
  correct = samples.correct_matrix()
  answers = [samples.answers[p * n:(p + 1) * n] for p in range(len(tests))]
  right = [{a for a, ok in zip(answers[p], correct[p]) if ok} for p in range(len(tests))]
  out = {"pass@1": correct.mean(axis=1).tolist()}
  for k in dc.eval_n:
    for sel in ("weighted", "majority"):
      out[f"{sel}@{k}"] = [float(aggregation.select_answer(
          answers[p][:k], scores[p * n:p * n + k] if sel == "weighted" else None, sel)
          in right[p]) for p in range(len(tests))]
  return out


def _summary(per_problem: dict, seed: int) -> dict:
  return {k: {"mean": float(np.mean(v)), "ci": list(stats_lib.mean_ci(v, seed=seed).to_json()
                                                    ["ci"])} for k, v in per_problem.items()}


def run_distill(ctx: Context) -> dict:
  """Rounds of distillation per variant (see the module docstring); resumable: each round's
  samples are shards named by the sampling model's parameter digest, its training resumes
  from its checkpoints."""
  c, dc = ctx.config, ctx.config.distill
  data, policy = ctx.inputs["data"], ctx.inputs["policy"]
  tok, task = policy.tokenizer, data.task
  measure = dc.verifier
  probs = data.problems("train", dc.num_problems, start=first_problem(c))
  revisions_lib.require_train(probs, "distillation")
  tests = data.problems("test", c.test_problems)
  cost = accounting.ModelCost.from_config(policy.config)
  sp = sampling_params(c)
  base_eval = _evaluate(ctx, policy.model, tok.pad_id, policy.special_ids, tests, measure)
  # 6 N D with N every parameter, as the exchange counts pretraining (sampling: per token).
  params = policy.config.num_params()
  pretrain = 6.0 * params * float(policy.description["made_by"]["data"]["train_tokens"])
  result = {"verifier": dc.verifier, "problems": [probs[0].uid, probs[-1].uid],
            "num_problems": len(probs), "test_problems": len(tests),
            "policy_pretraining_flops": pretrain,
            "rounds": {v: [{"round": 0, "eval": base_eval, "summary": _summary(base_eval, c.seed),
                            "flops": {"sampling": 0.0, "training": 0.0, "total": 0.0}}]
                       for v in dc.variants}}
  for variant in dc.variants:
    model = policy.model
    spent = 0.0
    for r in range(1, dc.rounds + 1):
      digest = checkpoints.params_digest(model)
      core = SamplingCore(model, policy.special_ids)

      def make(chunk, core=core, r=r, model=model):
        s = solutions.sample_problems(core, tok, task, chunk, dc.samples_per_problem, c.seed,
                                      "distill_samples", sp, batch_size=c.sampling.batch_size,
                                      segment=segment(c), run=r, log_fn=ctx.log)
        return {"tokens": s.gens.tokens, "lengths": s.gens.lengths, "stopped": s.gens.stopped,
                "scores": _confidence(model, tok.pad_id, s, tok, measure,
                                      c.sampling.batch_size)}

      name = f"round{r}-{digest[:16]}"  # a round-0-model's samples serve every variant
      parts = ctx.out.map_shards(name, probs, dc.problems_per_shard, make, ctx.log).load_all()
      gens = solutions.Generations(tokens=_cat(parts, "tokens"), lengths=_cat(parts, "lengths"),
                                   stopped=_cat(parts, "stopped"))
      prompts = [tok.encode_prompt(task.format_prompt(p)) for p in probs]
      samples = solutions.grade(tok, task, probs, dc.samples_per_problem, prompts, gens)
      scores = np.concatenate([p["scores"] for p in parts])
      picked = select_rows(samples, scores, variant)
      n = samples.n
      rows = [(task.format_prompt(probs[p]), samples.texts[p * n + s]) for p, s in picked]
      rows_all = rows + revisions_lib.policy_rows(task, probs, len(rows), dc.policy_rows)
      dataset = data_lib.prompt_target_dataset(tok, rows_all, policy.config.max_seq_len)
      out_dir = os.path.join(ctx.out.dir, variant, f"round{r}")
      model = nnx.clone(model)  # the earlier model (the policy too) stays as it was
      try:
        trainer.train(model, dataset, dc.train, out_dir, objective="lm",
                      name=f"distill {variant} round {r}")
      except trainer.TooFewRows as e:
        raise ConfigError(
            f"distill ({variant}, round {r}): {len(rows_all)} training rows, fewer than "
            f"distill.train.batch_size={dc.train.batch_size}: more distill.num_problems or "
            "samples_per_problem, a smaller batch, or distill.train.bucket_pool_batches=0."
        ) from e
      train_tokens = dc.train.steps * dc.train.batch_size * float(dataset.valid.sum(1).mean())
      flops = {"sampling": _flops_of(cost, samples),
               "training": 6.0 * params * train_tokens}
      spent += flops["sampling"] + flops["training"]
      flops["total"] = spent
      ev = _evaluate(ctx, model, tok.pad_id, policy.special_ids, tests, measure)
      sel_correct = [bool(samples.correct[p * n + s]) for p, s in picked]
      record = {
          "round": r, "sampled_by": digest, "shards": name, "rows": len(rows),
          "policy_rows": len(rows_all) - len(rows), "rows_digest": rows_digest(rows),
          "picked": [[int(p), int(s)] for p, s in picked],
          "data_accuracy": float(np.mean(sel_correct)) if sel_correct else float("nan"),
          "sample_accuracy": float(samples.correct.mean()),
          "eval": ev, "summary": _summary(ev, c.seed), "flops": flops,
          "vs_policy": {k: stats_lib.paired_diff(ev[k], base_eval[k], seed=c.seed).to_json()
                        for k in ev}}
      result["rounds"][variant].append(record)
      ctx.log(f"distill {variant} round {r}: {len(rows)} rows (their answers right "
              f"{record['data_accuracy']:.3f}); test pass@1 "
              f"{record['summary']['pass@1']['mean']:.3f} (policy "
              f"{np.mean(base_eval['pass@1']):.3f})")
  if dc.matched_large_policy:
    result["matched"] = _matched_large_policy(ctx, result, tests, measure)
  result["claims"] = _claims(result, c.seed)
  ctx.out.write_json("distill.json", result)
  ctx.out.write_text("distill.md", "\n".join(distill_lines(result)) + "\n")
  return {v: [round(x["summary"]["pass@1"]["mean"], 3) for x in rs]
          for v, rs in result["rounds"].items()}


def _matched_large_policy(ctx: Context, result: dict, tests: list, measure: str) -> dict:
  """The exchange's larger architecture (``large_policy.model``) trained from scratch like
  the larger policy (its recipe, the policy's rows in the same order) but for the steps whose
  6 N D FLOPs equal the policy's pretraining plus the label-free variant's rounds (all of
  them), evaluated as each round is: the distilled model against more parameters at the same
  total FLOPs, paired on the test problems."""
  c = ctx.config
  data, policy = ctx.inputs["data"], ctx.inputs["policy"]
  tok = policy.tokenizer
  variant = "selected" if "selected" in result["rounds"] else next(iter(result["rounds"]))
  last = result["rounds"][variant][-1]
  total = result["policy_pretraining_flops"] + last["flops"]["total"]
  model_cfg = TransformerConfig(vocab_size=tok.vocab_size, head="lm",
                                **c.large_policy.model.to_dict())
  dataset, _ = sft_dataset(data, tok, c.large_policy, model_cfg.max_seq_len)
  train = ml_collections.ConfigDict(c.large_policy.train.to_dict())
  per_step = 6.0 * model_cfg.num_params() * tokens_per_step(dataset, train.batch_size)
  steps = max(2, int(round(total / per_step)))
  # The larger policy's schedule compressed to these steps (warmup: the same share).
  train.warmup_steps = max(1, min(steps - 1, int(round(
      train.warmup_steps * steps / c.large_policy.train.steps))))
  train.steps = steps
  train.checkpoint_every = min(train.checkpoint_every, steps)
  model = Transformer(model_cfg, rngs=nnx.Rngs(train.seed))
  ctx.log(f"distill: the larger architecture ({model_cfg.num_params():,} params) for {steps} "
          f"steps, {steps * per_step:.3g} FLOPs against the policy's pretraining and "
          f"{variant} round {last['round']}: {total:.3g}")
  trainer.train(model, dataset, train, os.path.join(ctx.out.dir, "matched_large_policy"),
                objective="lm", name="larger policy at matched FLOPs")
  ev = _evaluate(ctx, model, tok.pad_id, policy.special_ids, tests, measure)
  return {"params": model_cfg.num_params(), "steps": steps, "flops": steps * per_step,
          "against": {"variant": variant, "round": last["round"], "flops": total},
          "eval": ev, "summary": _summary(ev, c.seed),
          "distilled_minus_matched": {
              k: stats_lib.paired_diff(last["eval"][k], ev[k], seed=c.seed).to_json()
              for k in ev}}


def _cat(parts: list[dict], key: str) -> np.ndarray:
  if key == "tokens":  # shards may be cut to different widths
    width = max(p[key].shape[1] for p in parts)
    return np.concatenate([np.pad(p[key], ((0, 0), (0, width - p[key].shape[1])))
                           for p in parts])
  return np.concatenate([p[key] for p in parts])


def _claims(result: dict, seed: int) -> list[dict]:
  """Pre-specified: the last round of the label-free variant over the policy, pass@1 and
  best-of-N weighted at the largest N (paired over the test problems)."""
  del seed
  rounds = result["rounds"].get("selected")
  if not rounds or len(rounds) < 2:
    return []
  last = rounds[-1]
  out = []
  top = max((k for k in last["eval"] if k.startswith("weighted@")),
            key=lambda k: int(k.split("@")[1]))
  for key, what in (("pass@1", "pass@1"), (top, f"best-of-{top.split('@')[1]} weighted")):
    out.append(claims_lib.stored_claim(
        f"(g) distillation, round {last['round']} (no labels): {what} over the policy",
        "beyond the paper: fine-tuning the policy on its own test-time outputs (best-of-N "
        "weighted by its confidence) distils test-time compute into it",
        last["vs_policy"][key]))
  matched = result.get("matched")
  if matched:
    out.append(claims_lib.stored_claim(
        f"(g) distillation, round {last['round']} (no labels): pass@1 over the larger policy's "
        "architecture trained to the same total FLOPs",
        "beyond the paper: at equal total FLOPs, test-time compute distilled into the small "
        "policy against spending them on pretraining a larger one (section 7's exchange)",
        matched["distilled_minus_matched"]["pass@1"]))
  return out


def _cell(s: dict) -> str:
  return f"{s['mean']:.3f} [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]"


def _diff(c: dict) -> str:
  return f"{c['diff']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]"


def distill_lines(result: dict) -> list[str]:
  """distill.md: a table per variant (a row per round), the FLOPs, the claims."""
  lines = ["# Distilling test-time compute into the policy (beyond the paper)", "",
           f"Each round the current policy samples solutions to {result['num_problems']} train "
           f"problems ({result['problems'][0]} .. {result['problems'][1]}); best-of-N weighted "
           f"by its own `{result['verifier']}` picks an answer per problem and its most "
           "confident sample giving it is a training row ('selected': no label read; "
           "'labelled', a reference: the most confident correct sample); the policy is "
           "fine-tuned on them (with a share of its SFT rows) and the next round starts from "
           f"it. Test: {result['test_problems']} problems, the same sampling keys every round "
           "(paired); mean [95% CI]; difference to the policy (round 0) paired.", ""]
  for variant, rounds in result["rounds"].items():
    keys = [k for k in rounds[0]["eval"]]
    lines += [f"## {variant}", "",
              "| round | rows (their answers right) | " + " | ".join(keys)
              + " | pass@1 - policy | FLOPs (sampling + training, cumulative) |",
              "|---|---|" + "---|" * len(keys) + "---|---|"]
    for r in rounds:
      rows = ("" if r["round"] == 0 else
              f"{r['rows']} ({r['data_accuracy']:.3f})")
      vs = "" if r["round"] == 0 else _diff(r["vs_policy"]["pass@1"])
      lines.append(f"| {r['round']} | {rows} | "
                   + " | ".join(_cell(r["summary"][k]) for k in keys)
                   + f" | {vs} | {r['flops']['total']:.3g} |")
    lines.append("")
  lines.append(f"The policy's pretraining: {result['policy_pretraining_flops']:.3g} FLOPs (6 N D).")
  matched = result.get("matched")
  if matched:
    a = matched["against"]
    keys = list(matched["summary"])
    lines += ["", "## Against the larger policy at matched total FLOPs", "",
              f"The exchange's larger architecture ({matched['params']:,} params) trained from "
              f"scratch with its recipe for {matched['steps']} steps: {matched['flops']:.3g} "
              f"FLOPs (6 N D), the policy's pretraining plus {a['variant']} rounds 1..{a['round']} "
              f"({a['flops']:.3g}). Same test problems and keys; difference paired.", "",
              "| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys),
              f"| {a['variant']} round {a['round']} | "
              + " | ".join(_cell(result['rounds'][a['variant']][-1]['summary'][k])
                           for k in keys) + " |",
              "| larger policy, matched FLOPs | "
              + " | ".join(_cell(matched["summary"][k]) for k in keys) + " |",
              "| distilled - larger | "
              + " | ".join(_diff(matched["distilled_minus_matched"][k]) for k in keys) + " |"]
  lines.append("")
  lines.append("The exchange's larger policy at its own pretraining FLOPs: study.md (with `make "
               "exchange`).")
  if result["claims"]:
    lines += ["", "| claim | difference [95% CI] | verdict |", "|---|---|---|"]
    lines += [f"| {c['claim']} | {_diff(c['comparison'])} | **{c['verdict']}** |"
              for c in result["claims"]]
  return lines


def check_distill(c: ml_collections.ConfigDict, known: Facts) -> None:
  dc = c.distill
  check_int(dc.rounds, "distill.rounds", 1)
  check_int(dc.num_problems, "distill.num_problems", 1)
  check_int(dc.samples_per_problem, "distill.samples_per_problem", 2)
  check_int(dc.eval_samples, "distill.eval_samples", 1)
  check_int(dc.problems_per_shard, "distill.problems_per_shard", 1)
  if dc.first_problem is not None:
    check_int(dc.first_problem, "distill.first_problem", 0)
  common.check_train_range(first_problem(c), dc.num_problems, known, "distill")
  if not dc.variants or any(v not in VARIANTS for v in dc.variants) or len(
      set(dc.variants)) != len(dc.variants):
    raise ConfigError(f"distill.variants={dc.variants!r}: expected distinct names of "
                      f"{VARIANTS}.")
  if names.model_of(dc.verifier) != names.POLICY:
    raise ConfigError(f"distill.verifier={dc.verifier!r}: expected the policy's confidence "
                      f"('{names.LIKELIHOOD}' or conf_<token>_<aggregation>): each round's "
                      "model scores its own samples.")
  ns = list(dc.eval_n)
  if not ns or any(isinstance(k, bool) or not isinstance(k, int) or not 1 <= k
                   <= dc.eval_samples for k in ns):
    raise ConfigError(f"distill.eval_n={dc.eval_n!r}: expected integers in [1, "
                      f"{dc.eval_samples}] (distill.eval_samples).")
  if not 0 <= dc.policy_rows < 1:
    raise ConfigError(f"distill.policy_rows={dc.policy_rows!r}: expected a share in [0, 1).")
  config_lib.check_train(c, "distill", known)
  if dc.matched_large_policy and "large_policy" not in c:
    raise ConfigError("distill.matched_large_policy=True: the experiment has no large_policy "
                      "section (the architecture to train at matched FLOPs); set it False.")


DISTILL = Stage(
    name="distill", doc="distilling test-time compute into the policy: rounds of fine-tuning "
    "on its own best-of-N weighted answers to train problems (make distill)",
    inputs=("data", "policy"),
    sections=("seed", "sampling", "test_problems", "verifier_samples", "distill",
              "large_policy"),
    outputs=("distill.json", "distill.md"), run=run_distill, load=load_json("distill.json"),
    cost_s=600, trains=True, checks={"distill": check_distill})
