"""Verifiers (paper section 5.1): MC-labelled policy samples and the value-head PRM and ORM
trained on them."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil

import ml_collections
import numpy as np
from flax import nnx

from ttc_jax.models import checkpoints
from ttc_jax.models.transformer import Transformer
from ttc_jax.models.transformer import TransformerConfig
from ttc_jax.pipeline import artifacts
from ttc_jax.pipeline import config as config_lib
from ttc_jax.pipeline.config import ConfigError
from ttc_jax.pipeline.config import Facts
from ttc_jax.pipeline.config import check_int
from ttc_jax.pipeline.stage import Context
from ttc_jax.pipeline.stage import MODEL_OUTPUTS
from ttc_jax.pipeline.stage import Stage
from ttc_jax.pipeline.stage import load_model
from ttc_jax.pipeline.stage import segment
from ttc_jax.pipeline.stages import common
from ttc_jax.sampling import solutions
from ttc_jax.training import data as data_lib
from ttc_jax.training import revisions as revisions_lib
from ttc_jax.training import trainer
from ttc_jax.verifiers import confidence
from ttc_jax.verifiers import labels as labels_lib
from ttc_jax.verifiers import synthetic


def run_mc_labels(ctx: Context) -> dict:
  c, pol = ctx.config, ctx.sampler()
  lc = c.mc_labels
  probs = ctx.inputs["data"].problems("train", lc.num_problems)

  def label(chunk):
    return labels_lib.sample_and_label(
        pol.core, pol.tokenizer, pol.task, chunk, lc.samples_per_problem, lc.rollouts, c.seed,
        ("label_samples", "rollouts"), pol.sp, batch_size=c.sampling.batch_size,
        segment=segment(c)).arrays()

  shards = ctx.out.map_shards("labels", probs, lc.problems_per_shard, label, ctx.log)
  return _concat_shards(shards).stats()


def run_verifier_samples(ctx: Context) -> dict:
  """Policy samples on train problems labelled by their outcome only (no rollout: cheap, so
  many more than the MC-labelled ones): the LM-head verifiers' training data."""
  c, pol = ctx.config, ctx.sampler()
  vs = c.verifier_samples
  probs = ctx.inputs["data"].problems("train", vs.num_problems, start=vs.first_problem)

  def label(chunk):
    samples = solutions.sample_problems(pol.core, pol.tokenizer, pol.task, chunk,
                                        vs.samples_per_problem, c.seed, "verifier_samples",
                                        pol.sp, batch_size=c.sampling.batch_size,
                                        segment=segment(c))
    return labels_lib.label_samples(pol.core, pol.tokenizer, pol.task, samples, 0, c.seed,
                                    "rollouts", pol.sp, batch_size=c.sampling.batch_size).arrays()

  shards = ctx.out.map_shards("samples", probs, vs.problems_per_shard, label, ctx.log)
  out = _concat_shards(shards)
  return {"samples": len(out), "problems": int(np.unique(out.problem_index).size),
          "sample_accuracy": float(out.correct.mean())}


def load_verifier_samples(out: artifacts.StageDir, key: dict) -> labels_lib.LabelledSamples:
  del key
  return _concat_shards(out.shards("samples"))


def check_verifier_samples(c: ml_collections.ConfigDict, known: Facts) -> None:
  vs = c.verifier_samples
  check_int(vs.samples_per_problem, "verifier_samples.samples_per_problem", 2)
  check_int(vs.num_problems, "verifier_samples.num_problems", 1)
  check_int(vs.problems_per_shard, "verifier_samples.problems_per_shard", 1)
  # After the MC-labelled problems and the verifier choice's held-out ones: the choice ranks
  # these verifiers on problems they did not train on.
  first_choice = c.mc_labels.num_problems if c.verifier_choice.first_problem is None \
      else c.verifier_choice.first_problem
  check_int(vs.first_problem, "verifier_samples.first_problem",
            max(c.mc_labels.num_problems, first_choice + c.verifier_choice.num_problems))
  if known.num_train is not None and vs.first_problem + vs.num_problems > known.num_train:
    raise ConfigError(f"verifier_samples: train problems {vs.first_problem}.."
                      f"{vs.first_problem + vs.num_problems - 1} but the task has "
                      f"{known.num_train} (task.num_train).")


def _concat_shards(shards) -> labels_lib.LabelledSamples:
  return labels_lib.LabelledSamples.concat(
      [labels_lib.LabelledSamples.from_arrays(a) for a in shards.load_all()])


def load_mc_labels(out: artifacts.StageDir, key: dict) -> labels_lib.LabelledSamples:
  del key
  return _concat_shards(out.shards("labels"))


# ----------------------------------------------------------------------------
# revision data


def verifier_config(policy: TransformerConfig, section: ml_collections.ConfigDict, kind: str
                    ) -> TransformerConfig:
  """A verifier's architecture: the policy artifact's, changed where ``kind.model`` says."""
  arch = {k: getattr(policy, k) for k in section.model.keys()}
  arch = config_lib.verifier_arch(arch, section, kind)
  return dataclasses.replace(policy, head="value", tie_embeddings=False, **arch)


def train_verifier(ctx: Context, kind: str) -> dict:
  """PRM (every step's MC label) or ORM (the last step: the sample's correctness)."""
  cfg = ctx.config[kind]
  policy, ls = ctx.inputs["policy"], ctx.inputs["mc_labels"]
  model_cfg = verifier_config(policy.config, cfg, kind)
  model = Transformer(model_cfg, rngs=nnx.Rngs(cfg.train.seed))
  if cfg.init == "policy":
    checkpoints.copy_backbone(policy.model, model)
  if kind == "prm" and cfg.labels == "oracle":
    # Diagnosis only: the task's step checker labels each step (does a PRM of this size learn
    # from exact labels what it does not learn from MC ones?).
    data = ctx.inputs["data"]
    probs = data.problems("train", int(ls.problem_index.max()) + 1)
    targets = [synthetic.oracle_step_labels(data.task, policy.tokenizer,
                                            probs[int(ls.problem_index[i])], ls.row(i),
                                            int(ls.prompt_lengths[i]), ls.ends(i))
               for i in range(len(ls))]
  elif kind == "prm":
    targets = [ls.step_labels(i, cfg.labels) for i in range(len(ls))]
  else:
    targets = [[np.nan] * (len(ls.ends(i)) - 1) + [float(ls.correct[i])] for i in range(len(ls))]
  keep = [i for i in range(len(ls)) if ls.ends(i)]
  held = []
  holdout = float(cfg.get("holdout", 0.0))
  if holdout:  # early stopping on held-out train questions (the paper's PRM recipe)
    out = held_out_questions(ls.problem_index, holdout, cfg.train.seed)
    held = [i for i in keep if out[i]]
    keep = [i for i in keep if not out[i]]
    if not held or not keep:
      raise artifacts.ArtifactError(
          f"{kind}.holdout={holdout}: {len(held)} of the {len(held) + len(keep)} samples are "
          "held out; expected some on both sides (more MC-labelled problems, or another "
          "fraction).")
  dense = kind == "prm" and cfg.label_positions == "every_token"
  dataset_of = lambda rows: data_lib.value_dataset(  # noqa: E731
      [ls.row(i) for i in rows], [ls.ends(i) for i in rows], [targets[i] for i in rows],
      model_cfg.max_seq_len, policy.tokenizer.pad_id, every_token=dense,
      prompt_lengths=[int(ls.prompt_lengths[i]) for i in rows])
  dataset = dataset_of(keep)
  stats = ls.stats()  # the samples and their MC labels
  # What this model is trained on (for an oracle-label PRM, not the MC labels above).
  flat = np.asarray([t for i in keep for t in targets[i]], np.float64)
  flat = flat[np.isfinite(flat)]
  stats["targets"] = {"labels": cfg.labels if kind == "prm" else "outcome", "steps": int(flat.size),
                      "mean": float(flat.mean()) if flat.size else float("nan")}
  stats["params"] = model_cfg.num_params()
  ctx.log(f"{kind}: {stats['params']:,} params ({cfg.init} init); data {stats}")
  train_cfg = cfg.train
  if held:  # a checkpoint at every candidate step (resuming is finer, no coarser)
    train_cfg = ml_collections.ConfigDict(cfg.train.to_dict())
    train_cfg.checkpoint_every = math.gcd(cfg.train.checkpoint_every, cfg.holdout_every)
  trainer.train(model, dataset, train_cfg, ctx.out.dir, objective="value", name=kind,
                keep_checkpoints=None if held else 2)
  step, checkpoint_dir, stopping = cfg.train.steps, "checkpoints", None
  if held:
    stopping = _early_stopping(ctx, model_cfg, dataset_of(held), cfg, kind)
    stopping.update(holdout=holdout, held_samples=len(held),
                    held_questions=len(np.unique(ls.problem_index[held])))
    step, checkpoint_dir = stopping["step"], "chosen"
    model = checkpoints.restore_params(os.path.join(ctx.out.dir, "checkpoints"), model,
                                       step=step, any_step=True)
    shutil.rmtree(os.path.join(ctx.out.dir, checkpoint_dir), ignore_errors=True)  # a killed run's
    checkpoints.save_params(os.path.join(ctx.out.dir, checkpoint_dir), step, model)
  tok_path = os.path.join(policy.path, policy.description["tokenizer"]["path"])
  artifacts.write_model(
      ctx.out, model_cfg, artifacts.tokenizer_ref(ctx.out.dir, tok_path), step=step,
      checkpoint_dir=checkpoint_dir,
      made_by={"stage": kind, "objective": f"value (BCE on {cfg.labels} step labels)"
               if kind == "prm"
               else "value (BCE on final correctness)", "init": cfg.init,
               "policy": policy.identity, "train": cfg.train.to_dict(), "data": stats,
               "early_stopping": stopping})
  return stats if stopping is None else {**stats, "early_stopping_step": step}


HOLDOUT_STREAM = 0x486f6c64  # the held-out questions' random stream ("Hold")


def held_out_questions(problem_index: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Whether each sample's question is held out: a question is, with probability
  ``fraction``, by a draw of its own (seed, stream, question), so the split of one question
  does not depend on which others are there; all of a question's samples go together."""
  q = np.asarray(problem_index, np.int64)
  draw = {int(i): np.random.default_rng(np.random.SeedSequence(
      [seed, HOLDOUT_STREAM, int(i)])).random() for i in np.unique(q)}
  return np.asarray([draw[int(i)] < fraction for i in q], bool)


def _early_stopping(ctx: Context, model_cfg: TransformerConfig, held: data_lib.TokenDataset,
                    cfg: ml_collections.ConfigDict, kind: str) -> dict:
  """The loss on the held-out questions' samples of the checkpoint at every
  ``holdout_every`` steps and the last; the step of the lowest (ties: the earlier)."""
  ckpt = os.path.join(ctx.out.dir, "checkpoints")
  steps = cfg.train.steps
  candidates = [s for s in sorted(checkpoints.manager(ckpt, None).all_steps())
                if s % cfg.holdout_every == 0 or s == steps]
  curve = []
  for step in candidates:
    m = checkpoints.restore_params(ckpt, checkpoints.abstract_model(model_cfg), step=step,
                                   any_step=True)
    r = trainer.evaluate(m, held, objective="value", batch_size=cfg.train.batch_size)
    curve.append({"step": int(step), "loss": r["loss"], "accuracy": r["accuracy"]})
    ctx.log(f"{kind} step {step}: held-out loss {r['loss']:.4f}, accuracy {r['accuracy']:.3f}")
  best = min(curve, key=lambda r: (r["loss"], r["step"]))
  return {"curve": curve, "step": best["step"]}


# ----------------------------------------------------------------------------
# LM-head verifiers (implicit PRM, DPO)


def lm_verifier_data(ls: labels_lib.LabelledSamples, task, tokenizer, problems, scorer, *,
                     kind: str, max_pairs: int, seed: int, batch_size: int, seq_len: int,
                     log) -> tuple[data_lib.TokenDataset, dict]:
  """The training set of an LM-head verifier from the policy's labelled samples: every
  sample with a parsable final answer (the paper's recipe drops the others), labelled by its
  correctness (implicit PRM), or per problem up to ``max_pairs`` pairs of a correct and an
  incorrect sample (DPO; drawn from (seed, problem)); with the policy's (``scorer``'s)
  log-probability of every token, the reference of the implicit reward."""
  by_index = {p.index: p for p in problems}
  keep, unparsed = [], 0
  for i in range(len(ls)):
    p = int(ls.prompt_lengths[i])
    problem = by_index[int(ls.problem_index[i])]
    if problem.split != "train":
      raise artifacts.ArtifactError(f"{kind}: sample {i} is of {problem.uid}, not a train "
                                    "problem (a verifier never trains on test problems).")
    if task.extract_answer(tokenizer.decode(ls.row(i)[p:])) is None:
      unparsed += 1
    else:
      keep.append(i)
  if kind == "dpo":
    rng_of = lambda q: np.random.default_rng(np.random.SeedSequence([seed, q]))
    by_problem: dict[int, list[int]] = {}
    for i in keep:
      by_problem.setdefault(int(ls.problem_index[i]), []).append(i)
    order = []
    for q in sorted(by_problem):
      good = [i for i in by_problem[q] if ls.correct[i]]
      bad = [i for i in by_problem[q] if not ls.correct[i]]
      pairs = [(g, b) for g in good for b in bad]
      if len(pairs) > max_pairs:
        pairs = [pairs[j] for j in sorted(rng_of(q).choice(len(pairs), max_pairs, replace=False))]
      order += [i for pair in pairs for i in pair]
    group = 2
  else:
    order, group = keep, 1
  if not order:
    raise artifacts.ArtifactError(f"{kind}: no training example (of {len(ls)} samples, "
                                  f"{unparsed} without a parsable answer; DPO needs a problem "
                                  "with a correct and an incorrect sample).")
  needed = sorted(set(order))
  ref = dict(zip(needed, scorer.token_confidence([ls.row(i) for i in needed],
                                                 batch_size=batch_size,
                                                 desc=f"{kind} reference", log_fn=log)))
  dataset = data_lib.implicit_reward_dataset(
      [ls.row(i) for i in order], [int(ls.prompt_lengths[i]) for i in order],
      [ref[i][:, 0] for i in order], [float(ls.correct[i]) for i in order], seq_len,
      tokenizer.pad_id, group=group)
  stats = {"samples": len(ls), "without_answer": unparsed, "used_samples": len(needed),
           "examples": len(dataset), "rows_per_example": group,
           "correct_rows": float(np.mean([ls.correct[i] for i in order])),
           "problems": int(np.unique(ls.problem_index[needed]).size)}
  return dataset, stats


def train_lm_verifier(ctx: Context, kind: str) -> dict:
  """An LM-head verifier: the policy fine-tuned on its own train-problem samples with the
  implicit-PRM (cross-entropy on outcomes) or DPO (correct over incorrect) objective; it
  keeps the policy's architecture and LM head (``ttc_jax.verifiers.implicit``)."""
  cfg = ctx.config[kind]
  policy, ls, data = ctx.inputs["policy"], ctx.inputs["verifier_samples"], ctx.inputs["data"]
  probs = data.problems("train", int(ls.problem_index.max()) + 1)
  dataset, stats = lm_verifier_data(
      ls, data.task, policy.tokenizer, probs, policy.scorer(), kind=kind,
      max_pairs=cfg.get("max_pairs_per_problem", 0), seed=cfg.train.seed,
      batch_size=ctx.config.sampling.batch_size, seq_len=policy.config.max_seq_len, log=ctx.log)
  model = Transformer(policy.config, rngs=nnx.Rngs(cfg.train.seed))
  nnx.update(model, nnx.state(policy.model))  # pi starts as pi_ref (the trainer copies it)
  stats["params"] = policy.config.num_params()
  ctx.log(f"{kind}: the policy's {stats['params']:,} params; data {stats}")
  trainer.train(model, dataset, cfg.train, ctx.out.dir, objective=kind, name=kind,
                options={"beta": cfg.beta})
  tok_path = os.path.join(policy.path, policy.description["tokenizer"]["path"])
  objective = ("implicit PRM: BCE of sigmoid(implicit reward) on final correctness"
               if kind == "implicit_prm" else "DPO: correct over incorrect of the same problem")
  artifacts.write_model(
      ctx.out, policy.config, artifacts.tokenizer_ref(ctx.out.dir, tok_path),
      step=cfg.train.steps,
      made_by={"stage": kind, "objective": objective, "beta": float(cfg.beta), "init": "policy",
               "policy": policy.identity, "train": cfg.train.to_dict(), "data": stats})
  return stats


def check_lm_verifier(c: ml_collections.ConfigDict, known: Facts, kind: str) -> None:
  config_lib.check_train(c, kind, known, trainer.OBJECTIVE_GROUP.get(kind, 1))
  if not isinstance(c[kind].beta, (int, float)) or not c[kind].beta > 0:
    raise ConfigError(f"{kind}.beta={c[kind].beta!r}: expected a number > 0.")
  if kind == "dpo":
    check_int(c.dpo.max_pairs_per_problem, "dpo.max_pairs_per_problem", 1)


# ----------------------------------------------------------------------------
# the likelihood verifier


def run_sft_lm(ctx: Context) -> dict:
  """The likelihood verifier's LM (``ttc_jax.verifiers.likelihood``): the policy trained
  further by its own SFT objective on the reference solutions of train problems outside those
  the verifier choice and adaptive allocation choose on; it keeps the policy's architecture."""
  cfg = ctx.config.sft_lm
  policy, data = ctx.inputs["policy"], ctx.inputs["data"]
  tok = policy.tokenizer
  problems = data.problems("train", cfg.num_problems, start=cfg.first_problem)
  revisions_lib.require_train(problems, "sft_lm")
  dataset = data_lib.sft_dataset(data.task, tok, problems, policy.config.max_seq_len)
  model = Transformer(policy.config, rngs=nnx.Rngs(cfg.train.seed))
  nnx.update(model, nnx.state(policy.model))  # it starts as the policy
  stats = {"problems": len(problems), "first_problem": problems[0].index,
           "target_tokens": int(dataset.weights.sum()), "params": policy.config.num_params()}
  ctx.log(f"sft_lm: the policy's {stats['params']:,} params, {len(problems)} train problems "
          f"from {cfg.first_problem}, {stats['target_tokens']:,} target tokens")
  trainer.train(model, dataset, cfg.train, ctx.out.dir, objective="lm", name="sft_lm")
  tok_path = os.path.join(policy.path, policy.description["tokenizer"]["path"])
  artifacts.write_model(
      ctx.out, policy.config, artifacts.tokenizer_ref(ctx.out.dir, tok_path),
      step=cfg.train.steps,
      made_by={"stage": "sft_lm", "objective": "lm (SFT on reference solutions); the score: "
               f"the {cfg.aggregation} of a solution's token log-probabilities",
               "aggregation": cfg.aggregation, "init": "policy", "policy": policy.identity,
               "train": cfg.train.to_dict(), "data": stats})
  return stats


def check_sft_lm(c: ml_collections.ConfigDict, known: Facts) -> None:
  sc = c.sft_lm
  config_lib.check_train(c, "sft_lm", known, 1)
  if sc.aggregation not in confidence.AGGREGATIONS:
    raise ConfigError(f"sft_lm.aggregation={sc.aggregation!r}: expected one of "
                      f"{confidence.AGGREGATIONS}.")
  check_int(sc.first_problem, "sft_lm.first_problem", 0)
  check_int(sc.num_problems, "sft_lm.num_problems", 1)
  common.check_train_range(sc.first_problem, sc.num_problems, known, "sft_lm")
  lo, hi = sc.first_problem, sc.first_problem + sc.num_problems
  for what, a, b in common.held_out_train_ranges(c):
    if lo < b and a < hi:
      raise ConfigError(f"sft_lm: train problems {lo}..{hi - 1} overlap {what}'s {a}..{b - 1} "
                        "(chosen on: a verifier trained there would look better than it is); "
                        "expected sft_lm.first_problem and num_problems outside them.")


# ----------------------------------------------------------------------------
# verifier evaluation


def trained_prm_held(c: ml_collections.ConfigDict) -> config_lib.Held:
  """The trained PRM reads the policy's tokens (it holds the policy's slots)."""
  return config_lib.model_config(
      config_lib.verifier_arch(config_lib.arch_fields(c.policy.model), c.prm, "prm"),
      c.tokenizer.vocab_size, "value", "prm.model"), None


def check_mc_labels(c: ml_collections.ConfigDict, known: Facts) -> None:
  ml = c.mc_labels
  check_int(ml.num_problems, "mc_labels.num_problems", 1, known.num_train)
  check_int(ml.samples_per_problem, "mc_labels.samples_per_problem", 1)
  check_int(ml.rollouts, "mc_labels.rollouts", 1)
  check_int(ml.problems_per_shard, "mc_labels.problems_per_shard", 1)
  if c.sampling.batch_size % ml.rollouts:
    raise ConfigError(f"sampling.batch_size={c.sampling.batch_size} must be a multiple of "
                      f"mc_labels.rollouts={ml.rollouts} (a prefix's rollouts share one call).")


def _check_verifier(c: ml_collections.ConfigDict, known: Facts, kind: str) -> None:
  """A value-head verifier's architecture (the policy's, changed where ``kind.model`` says)
  and training."""
  config_lib.check_train(c, kind, known)
  holdout = c[kind].get("holdout", 0.0)
  if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) \
      or not 0 <= holdout <= 0.5:
    raise ConfigError(f"{kind}.holdout={holdout!r}: expected a fraction in [0, 0.5] of the "
                      "MC-labelled train questions held out for early stopping (0: none).")
  if holdout:
    check_int(c[kind].holdout_every, f"{kind}.holdout_every", 1, c[kind].train.steps)
  if known.policy is None:
    return
  arch = config_lib.verifier_arch(config_lib.arch_fields(c.policy.model), c[kind], kind)
  model = config_lib.model_config(arch, known.vocab, "value", f"{kind}.model")
  if model.max_seq_len < known.policy.max_seq_len:
    raise ConfigError(f"{kind}.model.max_seq_len={model.max_seq_len} is shorter than the "
                      f"policy's {known.policy.max_seq_len}: a verifier reads whole policy "
                      "samples.")


def check_prm(c: ml_collections.ConfigDict, known: Facts) -> None:
  if c.prm.labels not in ("soft", "hard", "oracle"):
    raise ConfigError(f"prm.labels={c.prm.labels!r}: expected 'soft' (the MC value), "
                      "'hard' (1 if any rollout reaches the right answer) or 'oracle' (the "
                      "task's step checker; diagnosis only).")
  if c.prm.labels == "oracle" and known.task is not None and not known.task.has_step_checker:
    raise ConfigError(f"prm.labels='oracle': task {known.task.name!r} has no step checker.")
  if c.prm.label_positions not in ("step_end", "every_token"):
    raise ConfigError(f"prm.label_positions={c.prm.label_positions!r}: expected "
                      "'step_end' or 'every_token'.")
  _check_verifier(c, known, "prm")


def check_orm(c: ml_collections.ConfigDict, known: Facts) -> None:
  _check_verifier(c, known, "orm")

MC_LABELS = Stage(
    name="mc_labels", doc="policy samples on train problems, steps labelled by MC rollouts",
    inputs=("data", "policy"), sections=("seed", "sampling", "mc_labels"),
    run=run_mc_labels, load=load_mc_labels, version=2, cost_s=285, reads_train=True,
    checks={"mc_labels": check_mc_labels})

PRM = Stage(
    name="prm", doc="process reward model: value head trained on the MC step labels",
    # data: the task's step checker for prm.labels='oracle'.
    inputs=("mc_labels", "policy", "data"), sections=("prm",), outputs=MODEL_OUTPUTS,
    run=lambda ctx: train_verifier(ctx, "prm"), load=load_model, cost_s=140, trains=True,
    held=trained_prm_held, checks={"prm": check_prm})

VERIFIER_SAMPLES = Stage(
    name="verifier_samples", doc="policy samples on train problems labelled by their outcome "
    "(the LM-head verifiers' data)",
    inputs=("data", "policy"), sections=("seed", "sampling", "verifier_samples"),
    run=run_verifier_samples, load=load_verifier_samples, cost_s=100, reads_train=True,
    checks={"verifier_samples": check_verifier_samples})

IMPLICIT_PRM = Stage(
    name="implicit_prm", doc="implicit PRM: the policy fine-tuned by cross-entropy of its "
    "implicit reward on outcome labels (LM head)",
    inputs=("verifier_samples", "policy", "data"), sections=("sampling", "implicit_prm"),
    outputs=MODEL_OUTPUTS, run=lambda ctx: train_lm_verifier(ctx, "implicit_prm"),
    load=load_model, cost_s=255, trains=True,
    checks={"implicit_prm": lambda c, k: check_lm_verifier(c, k, "implicit_prm")})

DPO = Stage(
    name="dpo", doc="DPO verifier (V-STaR): the policy fine-tuned to prefer correct over "
    "incorrect samples of the same train problem (LM head)",
    inputs=("verifier_samples", "policy", "data"), sections=("sampling", "dpo"),
    outputs=MODEL_OUTPUTS, run=lambda ctx: train_lm_verifier(ctx, "dpo"),
    load=load_model, cost_s=180, trains=True,
    checks={"dpo": lambda c, k: check_lm_verifier(c, k, "dpo")})

SFT_LM = Stage(
    name="sft_lm", doc="likelihood verifier: the policy trained further on reference solutions "
    "of train problems; a solution's score is its likelihood under it (LM head)",
    inputs=("policy", "data"), sections=("sft_lm",), outputs=MODEL_OUTPUTS, run=run_sft_lm,
    load=load_model, cost_s=190, trains=True, reads_train=True,
    checks={"sft_lm": check_sft_lm})

ORM = Stage(
    name="orm", doc="outcome reward model: value head trained on final correctness",
    inputs=("mc_labels", "policy"), sections=("orm",), outputs=MODEL_OUTPUTS,
    run=lambda ctx: train_verifier(ctx, "orm"), load=load_model, cost_s=120, trains=True,
    checks={"orm": check_orm})
