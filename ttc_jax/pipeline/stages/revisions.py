"""Sequential revisions (paper section 6): revision data, the revision model, its ORM, and the
revision chains on the test problems.

The revision data's policy answers and the revision chains use continuous batching when
``sampling.segment`` is set (the same answers; the chains' queue runs across steps, see
:mod:`ttc_jax.search.revisions`); by default static batches, each chain step's grouped by
the width of its attempts: on 2 CPU cores they are faster than the chains' continuous
batching (a step costs every slot up to the widest live prompt)."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time

import ml_collections
import numpy as np
from flax import nnx

from ttc_jax import accounting
from ttc_jax.analysis import revisions as revision_analysis
from ttc_jax.models import checkpoints
from ttc_jax.models.transformer import Transformer
from ttc_jax.pipeline import artifacts
from ttc_jax.pipeline import config as config_lib
from ttc_jax.pipeline import store
from ttc_jax.pipeline.config import ConfigError
from ttc_jax.pipeline.config import Facts
from ttc_jax.pipeline.config import check_int
from ttc_jax.analysis import chains
from ttc_jax.pipeline.stage import Context
from ttc_jax.pipeline.stage import MODEL_OUTPUTS
from ttc_jax.pipeline.stage import Stage
from ttc_jax.pipeline.stage import load_json
from ttc_jax.pipeline.stage import load_model
from ttc_jax.pipeline.stage import sampling_params
from ttc_jax.pipeline.stage import segment
from ttc_jax.sampling import solutions
from ttc_jax.sampling.core import SamplingCore
from ttc_jax.sampling import streams
from ttc_jax.search import revisions as chains_lib
from ttc_jax.training import data as data_lib
from ttc_jax.training import revisions
from ttc_jax.training import trainer
from ttc_jax.verifiers import names
from ttc_jax.verifiers.confidence import Measure


def run_revision_data(ctx: Context) -> dict:
  """K policy answers to each of the first ``num_problems`` train problems (shards of
  ``problems_per_shard``, resumable), and trajectories of incorrect answers closest to
  a correct one (paper section 6.1)."""
  c, pol = ctx.config, ctx.sampler()
  rc = c.revision_data
  tok, task = pol.tokenizer, pol.task
  probs = ctx.inputs["data"].problems("train", rc.num_problems)

  def sample(chunk):
    k = rc.samples_per_problem
    samples = solutions.sample_problems(pol.core, tok, task, chunk, k, c.seed,
                                        "revision_samples", pol.sp,
                                        batch_size=c.sampling.batch_size, segment=segment(c))
    texts = [samples.texts[i * k:(i + 1) * k] for i in range(len(chunk))]
    rngs = [streams.generator(c.seed, "revision_pairs", streams.split_id(p.split), p.index)
            for p in chunk]
    trajs, _ = revisions.build_trajectories(texts, samples.correct_matrix(), rngs,
                                            per_problem=rc.trajectories_per_problem,
                                            max_attempts=rc.max_attempts,
                                            keep_rate=rc.keep_rate)
    return revisions.RevisionData(problem_index=np.asarray([p.index for p in chunk], np.int64),
                        samples=samples.gens, correct=samples.correct, trajectories=trajs,
                        samples_per_problem=k).arrays(rc.max_attempts)

  shards = ctx.out.map_shards("revisions", probs, rc.problems_per_shard, sample, ctx.log)
  rd = revisions.RevisionData.concat([revisions.RevisionData.from_arrays(a)
                                      for a in shards.load_all()])
  stats = revisions.revision_stats(rd, rc.max_attempts)
  prompt_lengths = [len(revisions.encode_revision_prompt(tok, task, probs[t.problem], [
      tok.decode(rd.samples.row(t.problem * rd.samples_per_problem + a)) for a in t.attempts]))
      for t in rd.trajectories]
  stats["longest_prompt_tokens"] = max(prompt_lengths, default=0)
  ctx.log(f"revision data: {stats}")
  return stats


def load_revision_data(out: artifacts.StageDir, key: dict) -> revisions.RevisionData:
  del key
  return revisions.RevisionData.concat([revisions.RevisionData.from_arrays(a)
                                        for a in out.shards("revisions").load_all()])


def run_revision_model(ctx: Context) -> dict:
  """The revision model: the policy's backbone with a longer context, fine-tuned on each
  trajectory's correct answer given the question and the last ``window`` incorrect
  attempts (the loss on the answer and EOS only; paper section 6.1), with a share
  ``policy_rows`` of the policy's own SFT rows (question, reference solution) mixed in so
  that its first answer, which is conditioned like the policy's, is not forgotten.

  Then ``rounds.count`` on-policy rounds (RISE, arXiv 2407.18219): round r samples the
  round r - 1 model's own chains on the first ``rounds.num_problems`` revision-data
  problems (resumable shards, named by that model's parameter digest, so a shard of any
  other model is never read), draws trajectories over each problem's answers as the paper
  does over the policy's (its incorrect answers closest to its correct one), and fine-tunes
  the round r - 1 model on them with the earlier rounds' rows. Every round's checkpoint is
  chosen like the first's (``choice``); the last round's is the artifact's model."""
  cfg = ctx.config.revision_model
  data, policy, rd = ctx.inputs["data"], ctx.inputs["policy"], ctx.inputs["revision_data"]
  tok, task = policy.tokenizer, data.task
  model_cfg = dataclasses.replace(policy.config, max_seq_len=cfg.max_seq_len)
  model = Transformer(model_cfg, rngs=nnx.Rngs(cfg.train.seed))
  checkpoints.copy_backbone(policy.model, model, lm_head=True)  # the policy's LM, longer context
  problems = [task.get("train", int(i)) for i in rd.problem_index]
  pairs = revisions.revision_texts(task, problems, rd.texts(tok), rd.trajectories,
                                   window=cfg.window)
  if not pairs:
    raise artifacts.ArtifactError("revision_data has no trajectory (no train problem had a "
                                  "correct answer): nothing to train the revision model on.")
  stats = {"keep_trajectories": sum(t.keep for t in rd.trajectories)}
  rounds, step, ckpt_dir, chosen = [], None, None, None
  for r in range(cfg.rounds.count + 1):
    data_stats = {}
    if r:
      own, data_stats = _on_policy_round(ctx, r, model, problems[:cfg.rounds.num_problems],
                                         policy.special_ids)
      pairs = pairs + own
    model, step, ckpt_dir, chosen, train_stats = _train_round(
        ctx, r, model, model_cfg, pairs, problems, policy, data)
    rounds.append({"round": r, **train_stats, "own_data": data_stats or None,
                   "checkpoint_choice": chosen})
    if r == 0:
      stats.update(train_stats)
  stats["rounds"] = rounds
  temperature = _choose_temperature(ctx, model, policy, data, cfg, chosen)
  tok_path = os.path.join(policy.path, policy.description["tokenizer"]["path"])
  artifacts.write_model(
      ctx.out, model_cfg, artifacts.tokenizer_ref(ctx.out.dir, tok_path), step=step,
      checkpoint_dir=ckpt_dir,
      made_by={"stage": "revision_model", "objective": "lm (answer given earlier attempts)",
               "init": "policy", "policy": policy.identity, "window": cfg.window,
               "revision_temperature": temperature["temperature"],
               "train": cfg.train.to_dict(), "rounds_train": cfg.rounds.train.to_dict(),
               "data": stats, "checkpoint_choice": chosen, "temperature_choice": temperature})
  return {**stats, "checkpoint_choice": chosen, "temperature_choice": temperature}


def round_dir(out_dir: str, r: int) -> str:
  """Where round ``r`` of the revision model trains (round 0: the artifact's own directory,
  as without rounds)."""
  return out_dir if r == 0 else os.path.join(out_dir, f"round{r}")


def _on_policy_round(ctx: Context, r: int, model: Transformer, problems: list, special_ids
                     ) -> tuple[list[tuple[str, ...]], dict]:
  """Round ``r``'s rows: the revision model ``model`` (round r - 1's) writes chains on
  ``problems`` (shards ``round{r}-<its digest>``); trajectories over each problem's answers.
  Its chains sample every answer at the sampling temperature (training data: the revision
  temperature is chosen after the last round, for the final model)."""
  c, cfg = ctx.config, ctx.config.revision_model
  rc, tok, task = cfg.rounds, ctx.inputs["policy"].tokenizer, ctx.inputs["data"].task
  digest = checkpoints.params_digest(model)
  strategy = chains_lib.RevisionChains(lengths=(rc.length,) * rc.chains, window=cfg.window)
  core, sp = SamplingCore(model, special_ids), sampling_params(c)

  def make(chunk):
    pcs = chains_lib.run_chains(strategy, core, tok, task, chunk, seed=c.seed,
                                stream="revision_rounds", sp=sp, run=r,
                                rows_per_call=c.sampling.batch_size, segment=segment(c),
                                log_fn=ctx.log)
    gens, correct, k = chains_lib.answer_pool(pcs, sp.max_new_tokens, tok.pad_id)
    texts = [[a.text for chain in pc.chains for a in chain] for pc in pcs]
    rngs = [streams.generator(c.seed, "revision_round_pairs", streams.split_id(p.split),
                              p.index, r) for p in chunk]
    trajs, _ = revisions.build_trajectories(texts, correct.reshape(len(chunk), k), rngs,
                                            per_problem=rc.trajectories_per_problem,
                                            max_attempts=cfg.window, keep_rate=rc.keep_rate)
    arrays = revisions.RevisionData(
        problem_index=np.asarray([p.index for p in chunk], np.int64), samples=gens,
        correct=correct, trajectories=trajs, samples_per_problem=k).arrays(cfg.window)
    return {**arrays, "sampled_by": np.asarray(digest)}

  name = round_shards(r, digest)
  ctx.out.map_shards(name, problems, rc.problems_per_shard, make, ctx.log)
  own = load_round_data(ctx.out.dir, name)
  stats = {**revisions.revision_stats(own, cfg.window), "sampled_by": digest, "shards": name}
  stats["chain_accuracy_by_answer"] = own.correct.reshape(
      len(problems), rc.chains, rc.length).mean((0, 1)).tolist()
  ctx.log(f"revision model round {r}: its own chains' data {stats}")
  return revisions.revision_texts(task, problems, own.texts(tok), own.trajectories,
                                  window=cfg.window), stats


def round_shards(r: int, digest: str) -> str:
  """The shards of round ``r``'s data, sampled by the model of parameter digest ``digest``."""
  return f"round{r}-{digest[:16]}"


def load_round_data(out_dir: str, name: str) -> revisions.RevisionData:
  """An on-policy round's data (its shards ``name`` in the revision model's directory)."""
  parts = store.Shards.open(out_dir, name).load_all()
  return revisions.RevisionData.concat([revisions.RevisionData.from_arrays(a) for a in parts])


def _train_round(ctx: Context, r: int, model: Transformer, model_cfg, pairs, problems, policy,
                 data):
  """Trains round ``r`` on ``pairs`` and the policy's rows (round 0: ``train`` from the
  policy's backbone; later rounds: ``rounds.train`` from the last round's model) and chooses
  its checkpoint; returns the model, its step and checkpoint directory (relative to the
  artifact), the choice and the data's stats."""
  cfg = ctx.config.revision_model
  trajectories = len(pairs)
  rows = pairs + revisions.policy_rows(ctx.inputs["data"].task, problems, trajectories,
                                       cfg.policy_rows)
  try:
    dataset = data_lib.prompt_target_dataset(policy.tokenizer, rows, model_cfg.max_seq_len)
  except ValueError as e:
    raise config_lib.ConfigError(f"revision_model.max_seq_len={cfg.max_seq_len}: {e}") from e
  lengths = dataset.valid.sum(1)
  stats = {"trajectories": trajectories, "policy_rows": len(rows) - trajectories,
           "target_tokens": int(dataset.weights.sum()),
           "longest_row": int(lengths.max()), "mean_row": float(lengths.mean()),
           "params": model_cfg.num_params()}
  ctx.log(f"revision model round {r}: {stats}")
  choice = cfg.choice
  base_cfg = cfg.train if r == 0 else cfg.rounds.train
  train_cfg = ml_collections.ConfigDict(base_cfg.to_dict())
  if choice.num_problems:  # a checkpoint at every candidate step (resuming is finer, no more)
    train_cfg.checkpoint_every = math.gcd(base_cfg.checkpoint_every, choice.every)
  out = round_dir(ctx.out.dir, r)
  trainer.train(model, dataset, train_cfg, out, objective="lm",
                name="revision_model" + (f" round {r}" if r else ""),
                keep_checkpoints=None if choice.num_problems else 2)
  rel = os.path.relpath(out, ctx.out.dir)
  if not choice.num_problems:
    return model, int(train_cfg.steps), os.path.normpath(os.path.join(rel, "checkpoints")), \
        None, stats
  chosen = _choose_checkpoint(ctx, model_cfg, policy, data, cfg, out, int(train_cfg.steps))
  model = checkpoints.restore_params(os.path.join(out, "checkpoints"), model,
                                     step=chosen["step"], any_step=True)
  shutil.rmtree(os.path.join(out, "chosen"), ignore_errors=True)  # a killed run's
  checkpoints.save_params(os.path.join(out, "chosen"), chosen["step"], model)
  return model, chosen["step"], os.path.normpath(os.path.join(rel, "chosen")), chosen, stats


def _choose_checkpoint(ctx: Context, model_cfg, policy, data, cfg, out: str, steps: int
                       ) -> dict:
  """Every checkpoint of a training run of the revision model (in ``out``), scored by what
  it is for: chains of ``choice.length`` answers on held-out train problems (``choice``),
  the accuracy of the last answer (after revising); the best step (ties: the later one)
  and the curve (with each checkpoint's correct -> incorrect rate: the share of its correct
  answers followed by an incorrect one)."""
  ch = cfg.choice
  probs = data.problems("train", ch.num_problems, start=ch.first_problem)
  revisions.require_train(probs, "revision model checkpoint choice")
  ckpt = os.path.join(out, "checkpoints")
  candidates = [s for s in sorted(checkpoints.manager(ckpt, None).all_steps())
                if s % ch.every == 0 or s == steps]
  curve = []
  for step in candidates:
    m = checkpoints.restore_params(ckpt, checkpoints.abstract_model(model_cfg), step=step,
                                   any_step=True)
    curve.append({"step": int(step), **_held_out_chains(ctx, m, policy, data, cfg, probs, None)})
    ctx.log(f"revision model checkpoint {step}: accuracy by answer on {len(probs)} held-out "
            f"train problems {[round(a, 3) for a in curve[-1]['accuracy_by_answer']]}, "
            f"correct -> incorrect {curve[-1]['correct_to_incorrect']:.3f}")
  best = max(curve, key=lambda r: (r["accuracy_by_answer"][-1], r["step"]))
  return {"step": best["step"], "problems": [ch.first_problem, ch.first_problem + ch.num_problems],
          "length": ch.length, "curve": curve}


def _held_out_chains(ctx: Context, model: Transformer, policy, data, cfg, probs,
                     temperature: float | None) -> dict:
  """One chain of ``choice.length`` answers per held-out train problem (stream
  revision_choice: the same keys for every candidate): accuracy by answer, the
  correct -> incorrect rate (the share of correct answers followed by an incorrect one) and
  each problem's grades ("0110": paired comparisons)."""
  strategy = chains_lib.RevisionChains(lengths=(cfg.choice.length,), window=cfg.window,
                                       revision_temperature=temperature)
  pcs = chains_lib.run_chains(strategy, SamplingCore(model, policy.special_ids),
                              policy.tokenizer, data.task, probs, seed=ctx.config.seed,
                              stream="revision_choice", sp=sampling_params(ctx.config),
                              rows_per_call=ctx.config.sampling.batch_size,
                              segment=segment(ctx.config))
  right = np.asarray([[a.correct for a in pc.chains[0]] for pc in pcs], bool)
  before = right[:, :-1]
  return {"accuracy_by_answer": right.mean(0).tolist(),
          "correct_to_incorrect": float((before & ~right[:, 1:]).sum() / max(before.sum(), 1)),
          "correct": ["".join("1" if x else "0" for x in row) for row in right]}


def _choose_temperature(ctx: Context, model: Transformer, policy, data, cfg,
                        chosen: dict | None) -> dict:
  """The revision temperature (of every answer after a chain's first; beyond the paper) among
  ``choice.revision_temperatures``, by the last answer's accuracy of the final model's
  chains on the held-out train problems of the checkpoint choice (ties: the earlier
  candidate). One candidate, or no held-out problems: that candidate (None: the sampling
  temperature), unmeasured."""
  ch = cfg.choice
  temps = [float(t) for t in ch.revision_temperatures]
  if len(temps) == 1 or not ch.num_problems:
    return {"temperature": temps[0] if temps else None, "curve": []}
  probs = data.problems("train", ch.num_problems, start=ch.first_problem)
  revisions.require_train(probs, "revision temperature choice")
  # The chosen checkpoint's own record (same problems and keys) at the sampling temperature.
  known = next(r for r in chosen["curve"] if r["step"] == chosen["step"])
  curve = []
  for t in temps:
    if t == float(ctx.config.sampling.temperature):
      curve.append({"temperature": t, **{k: known[k] for k in
                                         ("accuracy_by_answer", "correct_to_incorrect",
                                          "correct")}})
    else:
      curve.append({"temperature": t,
                    **_held_out_chains(ctx, model, policy, data, cfg, probs, t)})
    ctx.log(f"revision temperature {t}: accuracy by answer on {len(probs)} held-out train "
            f"problems {[round(a, 3) for a in curve[-1]['accuracy_by_answer']]}, correct -> "
            f"incorrect {curve[-1]['correct_to_incorrect']:.3f}")
  best = max(range(len(curve)), key=lambda i: (curve[i]["accuracy_by_answer"][-1], -i))
  return {"temperature": temps[best], "problems": [ch.first_problem,
                                                   ch.first_problem + ch.num_problems],
          "curve": curve}


def chain_strategy(revision_model: artifacts.ModelArtifact, lengths: tuple[int, ...]
                   ) -> chains_lib.RevisionChains:
  """Chains of ``lengths`` as the revision model was made to run: its window and its chosen
  revision temperature (None, the sampling temperature, for a model made without one)."""
  made_by = revision_model.description["made_by"]
  return chains_lib.RevisionChains(lengths=lengths, window=int(made_by["window"]),
                                   revision_temperature=made_by.get("revision_temperature"))


def run_revision_orm(ctx: Context) -> dict:
  """The revision ORM (paper section 6.1): revision chains on train problems the revision
  model was not trained on (resumable shards), each answer labelled by its correctness
  and read at its last token with the chain's earlier answers in context; a value head
  on the revision model's backbone."""
  c = ctx.config
  oc = c.revision_orm
  data, rev = ctx.inputs["data"], ctx.inputs["revision_model"]
  tok, task = rev.tokenizer, data.task
  probs = data.problems("train", oc.num_problems, start=oc.first_problem)
  revisions.require_train(probs, "revision ORM (its chains choose the gate)")
  strategy = chain_strategy(rev, (oc.length,) * oc.chains)
  core, sp = rev.sampling_core(), sampling_params(c)

  def make(chunk):
    pcs = chains_lib.run_chains(strategy, core, tok, task, chunk, seed=c.seed,
                                stream="revision_chains", sp=sp,
                                rows_per_call=c.sampling.batch_size, segment=segment(c),
                                log_fn=ctx.log)
    return chains_lib.answers_arrays(pcs)

  parts = ctx.out.map_shards("answers", probs, oc.problems_per_shard, make, ctx.log).load_all()
  rows = [part["tokens"][i, :n].tolist() for part in parts for i, n in enumerate(part["lengths"])]
  correct = np.concatenate([part["correct"] for part in parts])
  step = np.concatenate([part["step"] for part in parts])
  model_cfg = dataclasses.replace(rev.config, head="value", tie_embeddings=False)
  model = Transformer(model_cfg, rngs=nnx.Rngs(oc.train.seed))
  checkpoints.copy_backbone(rev.model, model)
  dataset = data_lib.value_dataset(rows, [[len(r) - 1] for r in rows],
                                   [[float(x)] for x in correct], model_cfg.max_seq_len,
                                   tok.pad_id)
  stats = {"problems": len(probs), "answers": len(rows),
           "accuracy": float(correct.mean()),
           "accuracy_by_step": [float(correct[step == k].mean()) for k in range(oc.length)],
           "longest_row": max(len(r) for r in rows), "params": model_cfg.num_params()}
  ctx.log(f"revision ORM: data {stats}")
  trainer.train(model, dataset, oc.train, ctx.out.dir, objective="value", name="revision_orm")
  tok_path = os.path.join(rev.path, rev.description["tokenizer"]["path"])
  artifacts.write_model(
      ctx.out, model_cfg, artifacts.tokenizer_ref(ctx.out.dir, tok_path), step=oc.train.steps,
      made_by={"stage": "revision_orm", "objective": "value (BCE on the correctness of "
               "revision-model answers, earlier answers in context)", "init": "revision_model",
               "revision_model": rev.identity, "window": strategy.window,
               "train": oc.train.to_dict(), "data": stats})
  return stats


def run_revision_sweep(ctx: Context) -> dict:
  """Revision chains on the test problems for every seed (resumable shards), each answer
  scored by the revision ORM (its earlier answers in context), by the single-answer verifier
  (``revisions.verifier``: the PRM or the likelihood verifier) and by the revision model's
  own confidence (``revisions.confidence``); every split of every budget into chains is a
  cell (paper section 6.2)."""
  c = ctx.config
  rc = c.revisions
  data, rev = ctx.inputs["data"], ctx.inputs["revision_model"]
  orm = ctx.inputs["revision_orm"]
  tok, task = rev.tokenizer, data.task
  probs = data.problems("test", c.test_problems)
  lengths = tuple(revision_analysis.chain_lengths(max(rc.budgets)))
  strategy = chain_strategy(rev, lengths)
  core, sp = rev.sampling_core(), sampling_params(c)
  # The single-answer verifier (flat_prm): the PRM, or the likelihood verifier
  # (revisions.verifier; its columns keep the name 'prm').
  verifier = rc.get("verifier", names.PRM)
  if verifier == names.PRM:
    ver = ctx.inputs["prm"]
    prm_scorer = ver.verifier(tok)
  else:
    ver = ctx.inputs[verifier]
    prm_scorer = ver.lm_verifier(ctx.inputs["policy"])
  orm_scorer = orm.verifier(tok)
  models = (("policy", rev), ("orm", orm), ("prm", ver))
  params = {**{f"{role}_params": m.config.num_params() for role, m in models},
            **{f"{role}_cost": accounting.ModelCost.from_config(m.config).to_dict()
               for role, m in models}}

  def make(seed):
    def chunk_arrays(chunk):
      t0 = time.time()
      pcs = chains_lib.run_chains(strategy, core, tok, task, chunk, seed=c.seed,
                                  stream="revision_chains", sp=sp, run=seed,
                                  rows_per_call=c.sampling.batch_size, segment=segment(c),
                                  log_fn=ctx.log)
      return chains.chain_arrays(pcs, lengths, orm_scorer, prm_scorer, tok,
                                 batch_size=c.sampling.batch_size, wall_s=time.time() - t0,
                                 confidence=Measure.from_name(rc.confidence))
    return chunk_arrays

  for seed in rc.seeds:
    ctx.out.map_shards(f"chains-seed{seed}", probs, rc.problems_per_shard, make(seed), ctx.log)
  ctx.out.write_json("params.json", {**params, "single_answer_verifier": verifier})
  sweep = read_revision_sweep(ctx.out, rc.seeds, rc.budgets)
  cells = revision_analysis.revision_cells(sweep.by_seed, rc.budgets)
  ctx.out.write_json("cells.json", [cell.to_json() for cell in cells])
  return {"cells": len(cells), "answers_per_problem": strategy.generations}


def read_revision_sweep(out: artifacts.StageDir, seeds, budgets) -> chains.RevisionSweep:
  """The chains of every seed (their shards) and the budgets they cover."""
  params = out.read_json("params.json")
  by_seed = [{**chains.concat_chain_arrays(out.shards(f"chains-seed{seed}").load_all()),
              **params, "seed": seed} for seed in seeds]
  return chains.RevisionSweep(by_seed=by_seed, budgets=list(budgets))


def load_revision_sweep(out: artifacts.StageDir, key: dict) -> chains.RevisionSweep:
  rc = key["config"]["revisions"]
  return read_revision_sweep(out, rc["seeds"], rc["budgets"])




def check_revision_data(c: ml_collections.ConfigDict, known: Facts) -> None:
  rd = c.revision_data
  check_int(rd.num_problems, "revision_data.num_problems", 1, known.num_train)
  check_int(rd.samples_per_problem, "revision_data.samples_per_problem", 1)
  check_int(rd.trajectories_per_problem, "revision_data.trajectories_per_problem", 1)
  check_int(rd.max_attempts, "revision_data.max_attempts", 0)
  check_int(rd.problems_per_shard, "revision_data.problems_per_shard", 1)
  config_lib.check_fraction(rd.keep_rate, "revision_data.keep_rate")
  if rd.keep_rate > 0 and rd.max_attempts < 1:
    raise ConfigError(f"revision_data.keep_rate={rd.keep_rate}: a keep trajectory shows an "
                      "attempt, but revision_data.max_attempts=0.")


def check_revision_model(c: ml_collections.ConfigDict, known: Facts) -> None:
  config_lib.check_train(c, "revision_model", known)
  check_int(c.revision_model.window, "revision_model.window", 1)
  config_lib.check_fraction(c.revision_model.policy_rows, "revision_model.policy_rows",
                            high_open=True)
  ch = c.revision_model.choice
  check_int(ch.num_problems, "revision_model.choice.num_problems", 0)
  check_int(ch.length, "revision_model.choice.length", 1)
  check_int(ch.every, "revision_model.choice.every", 1)
  temps = ch.get("revision_temperatures", (1.0,))
  if (not isinstance(temps, (tuple, list)) or not temps or len(set(temps)) != len(temps)
      or any(isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0 for t in temps)):
    raise ConfigError(f"revision_model.choice.revision_temperatures={temps!r}: expected distinct "
                      "temperatures >= 0 (the revision temperatures compared on the held-out "
                      "train problems).")
  if ch.num_problems:
    num_train = known.num_train
    check_int(ch.first_problem, "revision_model.choice.first_problem", 0,
              None if num_train is None else num_train - ch.num_problems)
    # Held out from every other use of train problems by the revision stages.
    used = [("revision_data", 0, c.revision_data.num_problems)]
    if "revision_orm" in c:
      used.append(("revision_orm", c.revision_orm.first_problem,
                   c.revision_orm.first_problem + c.revision_orm.num_problems))
    for name, lo, hi in used:
      if ch.first_problem < hi and lo < ch.first_problem + ch.num_problems:
        raise ConfigError(
            f"revision_model.choice.first_problem={ch.first_problem} (num_problems="
            f"{ch.num_problems}): overlaps {name}'s train problems [{lo}, {hi}); the checkpoint "
            "is chosen on held-out problems.")
  rounds = c.revision_model.rounds
  check_int(rounds.count, "revision_model.rounds.count", 0)
  if rounds.count:
    config_lib.check_train(c, "revision_model.rounds", known)
    check_int(rounds.num_problems, "revision_model.rounds.num_problems", 1,
              c.revision_data.num_problems)
    check_int(rounds.chains, "revision_model.rounds.chains", 1)
    check_int(rounds.length, "revision_model.rounds.length", 1)
    check_int(rounds.trajectories_per_problem, "revision_model.rounds.trajectories_per_problem",
              1)
    check_int(rounds.problems_per_shard, "revision_model.rounds.problems_per_shard", 1)
    config_lib.check_fraction(rounds.keep_rate, "revision_model.rounds.keep_rate")
  if known.policy is not None:
    check_int(c.revision_model.max_seq_len, "revision_model.max_seq_len",
              known.policy.max_seq_len)


def check_revision_orm(c: ml_collections.ConfigDict, known: Facts) -> None:
  config_lib.check_train(c, "revision_orm", known)
  ro, num_train = c.revision_orm, known.num_train
  check_int(ro.first_problem, "revision_orm.first_problem", 0,
            None if num_train is None else num_train - 1)
  check_int(ro.num_problems, "revision_orm.num_problems", 1,
            None if num_train is None else num_train - ro.first_problem)
  check_int(ro.chains, "revision_orm.chains", 1)
  check_int(ro.length, "revision_orm.length", 1)
  check_int(ro.problems_per_shard, "revision_orm.problems_per_shard", 1)
  if "revision_data" in c and ro.first_problem < c.revision_data.num_problems:
    raise ConfigError(
        f"revision_orm.first_problem={ro.first_problem}: expected >= revision_data."
        f"num_problems={c.revision_data.num_problems} (the revision model was trained on "
        "those problems; its answers there would flatter the ORM's data).")


def check_revisions(c: ml_collections.ConfigDict, known: Facts) -> None:
  del known
  rv = c.revisions
  budgets = list(rv.budgets)
  if not budgets or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 or n & (n - 1)
                        for n in budgets) or budgets != sorted(set(budgets)):
    raise ConfigError(f"revisions.budgets={rv.budgets!r}: expected increasing powers of two "
                      "(each budget is split into C chains of length N / C).")
  seeds = list(rv.seeds)
  if not seeds or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in seeds) \
      or len(set(seeds)) != len(seeds):
    raise ConfigError(f"revisions.seeds={rv.seeds!r}: expected distinct integers >= 0.")
  check_int(rv.problems_per_shard, "revisions.problems_per_shard", 1)
  try:
    Measure.from_name(rv.confidence)
  except ValueError as e:
    raise ConfigError(f"revisions.confidence={rv.confidence!r}: {e}") from None
  # A verifier that reads nothing but its own model: the revision model's answers come with
  # no policy log-probabilities (an implicit reward's reference, the policy's confidence).
  verifier = rv.get("verifier", names.PRM)
  if verifier not in REVISION_VERIFIERS:
    raise ConfigError(f"revisions.verifier={verifier!r}: expected one of "
                      f"{REVISION_VERIFIERS} (the PRM, or the likelihood verifier).")
  if config_lib.filled_by(c, verifier) is None:
    raise ConfigError(f"revisions.verifier={verifier!r}: this experiment leaves the "
                      f"{verifier} stage out (stages.{verifier}=None).")


REVISION_VERIFIERS = (names.PRM, names.SFT_LM)  # revisions.verifier: the single-answer verifier

REVISION_DATA = Stage(
    name="revision_data", doc="policy answers to train problems and revision trajectories "
    "(incorrect answers closest to a correct one)",
    inputs=("data", "policy"), sections=("seed", "sampling", "revision_data"),
    run=run_revision_data, load=load_revision_data, cost_s=55, reads_train=True,
    checks={"revision_data": check_revision_data})

REVISION_MODEL = Stage(
    name="revision_model", doc="the policy fine-tuned to answer after its earlier incorrect "
    "attempts",
    inputs=("data", "policy", "revision_data"), sections=("seed", "sampling", "revision_model"),
    outputs=MODEL_OUTPUTS, run=run_revision_model, load=load_model, cost_s=770, trains=True,
    reads_train=True, version=3, changelog=("2: the checkpoint chosen on held-out train "
                                            "problems (revision_model.choice)",
                                            "3: starts from the policy's LM head too (it "
                                            "started from a random head on the policy's "
                                            "backbone); its revision temperature chosen on "
                                            "the held-out train problems"),
    checks={"revision_model": check_revision_model})

REVISION_ORM = Stage(
    name="revision_orm", doc="the revision ORM: value head on the revision model's own answers, "
    "earlier answers in context",
    inputs=("data", "revision_model"), sections=("seed", "sampling", "revision_orm"),
    outputs=MODEL_OUTPUTS, run=run_revision_orm, load=load_model, cost_s=215, trains=True,
    reads_train=True, version=2,
    changelog=("2: each answer's chain and sampled tokens' statistics in its shards (the "
               "revision gate's train data)",),
    checks={"revision_orm": check_revision_orm})

REVISION_SWEEP = Stage(
    name="revision_sweep", doc="revision chains on the test problems: every split of each budget "
    "into sequential chains; majority, revision-ORM (flat, hierarchical), PRM and confidence "
    "(flat, hierarchical) selection",
    # prm or sft_lm (and the policy it was trained from): revisions.verifier's.
    inputs=("data", "revision_model", "revision_orm", "prm", "sft_lm", "policy"),
    sections=("seed", "sampling", "test_problems", "revisions"),
    outputs=("params.json", "cells.json"), run=run_revision_sweep, load=load_revision_sweep,
    may_lack=("sft_lm",),
    reads=lambda c, role: (role not in ("prm", "sft_lm", "policy")
                           or c.revisions.get("verifier", names.PRM)
                           == (names.SFT_LM if role == "policy" else role)),
    version=3, changelog=("2: model costs (FLOPs)", "3: each answer's confidence under the "
                          "revision model (revisions.confidence) and its selections"),
    cost_s=250,
    checks={"revisions": check_revisions})


# ----------------------------------------------------------------------------
# revision ablation (variants of what the revision model is made from)


def run_revision_ablation(ctx: Context) -> dict:
  """Each variant (config overrides, e.g. retry data in the policy's SFT mix) makes its own
  policy, revision data and revision model (trained, or reused by identity, in this
  workdir); a row per variant: its revision model's last round as chosen on the held-out
  train problems (first answer, last answer, correct -> incorrect) and its policy's pass@1
  on the test problems, each against the study's own (the first row) on the same problems."""
  c = ctx.config
  rows, reference = [], None
  for text in ("",) + tuple(c.revision_ablation.variants):
    overrides = config_lib.parse_variant(text)
    policy, _ = ctx.variant("policy", overrides)
    model, record = ctx.variant("revision_model", overrides)
    difficulty, _ = ctx.variant("difficulty", overrides)
    row = revision_analysis.ablation_row(
        text or "default (this study's)", overrides,
        model.description["made_by"]["data"].get("rounds", []), difficulty.pass_at_1,
        reference, seed=c.seed)
    row.update(policy=policy.identity, revision_model=model.identity,
               retry_rows=int(policy.description["made_by"]["data"].get("retry_rows") or 0),
               revision_model_s=float(record.get("seconds", float("nan"))))
    reference = reference or row
    rows.append(row)
    last, c2i = row.get("last"), (row.get("correct_to_incorrect") or {}).get("rate")
    ctx.log(f"revision ablation {row['name']}: policy pass@1 "
            f"{row['policy_pass_at_1']['mean']:.3f}"
            + (f"; last of {len(row['_right'][0])} answers {last['mean']:.3f}, correct -> "
               f"incorrect {'n/a' if c2i is None else f'{c2i:.3f}'}" if last else ""))
  result = {"rows": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
            "doc": "Each row makes the policy, revision data and revision model with the "
                   "study's config changed as named (the first is the study's own). The "
                   "revision model's last round at its chosen checkpoint, chains on the "
                   "held-out train problems of revision_model.choice: first and last answer "
                   "accuracy and correct -> incorrect [95% CI]; the policy's pass@1 on the "
                   "test problems; differences paired with the first row on the same problems."}
  ctx.out.write_json("ablation.json", result)
  return {"variants": len(rows)}


def check_revision_ablation(c: ml_collections.ConfigDict, known: Facts) -> None:
  del known
  variants = c.revision_ablation.variants
  if not isinstance(variants, (tuple, list)) or not all(isinstance(v, str) for v in variants):
    raise ConfigError(f"revision_ablation.variants={variants!r}: expected a tuple of "
                      "'key=value,key=value' override strings.")
  for v in variants:
    if not config_lib.parse_variant(v):
      raise ConfigError(f"revision_ablation.variants: {v!r} overrides nothing.")


REVISION_ABLATION = Stage(
    name="revision_ablation", doc="variants of what the revision model is made from (config "
    "overrides, e.g. retry data in the policy's SFT mix): the revision model's chains on "
    "held-out train problems and the policy's pass@1, beside the study's",
    inputs=("data", "policy", "difficulty", "revision_model"),
    sections=("seed", "revision_ablation"),
    outputs=("ablation.json",), run=run_revision_ablation,
    load=load_json("ablation.json"),
    cost_s=1500, trains=True,  # it trains the variants' models it has not found
    checks={"revision_ablation": check_revision_ablation})
