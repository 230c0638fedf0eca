"""The one registry of stages: what each reads, which config sections are its own,
what it writes, and the function that runs it.

A stage's run function receives a :class:`Context`: its own config sections
(nothing else of the config is visible to it), its inputs as loaded objects
(the task's data, a tokenizer, model artifacts with their sampling core or
scorer, labelled samples, ...) and a :class:`~ttc_jax.pipeline.artifacts.StageDir`
for its own outputs; never a workdir path. The library does the work; a run
function only wires it.

An artifact's identity is a hash of its stage's key: the stage name and
version, its config sections (minus fields that only change speed, which
results never depend on) and the identities of its inputs. Any change upstream
therefore gives every downstream artifact a new identity (a new directory), and
nothing else changes.

To add a stage: write its run function (and a loader for what it writes),
append a :class:`Stage` to ``STAGES`` after the stages it reads, give it a
config section in the experiment config, and say what it writes in ``outputs``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable

from absl import logging
import ml_collections
import numpy as np
from flax import nnx

from ttc_jax import accounting
from ttc_jax import host
from ttc_jax import tasks
from ttc_jax.analysis import claims as claims_lib
from ttc_jax.analysis import compute_optimal as co_lib
from ttc_jax.analysis import difficulty as difficulty_lib
from ttc_jax.analysis import revisions as revision_analysis
from ttc_jax.analysis import study as study_lib
from ttc_jax.analysis import verifiers as verifier_metrics
from ttc_jax.models import checkpoints
from ttc_jax.models.transformer import Transformer
from ttc_jax.models.transformer import TransformerConfig
from ttc_jax.pipeline import artifacts
from ttc_jax.pipeline import config as config_lib
from ttc_jax.pipeline import store
from ttc_jax.progress import CompileClock
from ttc_jax.progress import Progress
from ttc_jax.report import figures
from ttc_jax.report import markdown
from ttc_jax.sampling import solutions
from ttc_jax.sampling import streams
from ttc_jax.sampling.core import SamplingParams
from ttc_jax.search import BeamSearch
from ttc_jax.search import BestOfN
from ttc_jax.search import DVTS
from ttc_jax.search import ParticleFilter
from ttc_jax.search import SearchContext
from ttc_jax.search import default_width
from ttc_jax.search import search_problems
from ttc_jax.search import revisions as chains_lib
from ttc_jax.tokenizer import Tokenizer
from ttc_jax.training import data as data_lib
from ttc_jax.training import revisions
from ttc_jax.training import trainer
from ttc_jax.verifiers import aggregation
from ttc_jax.verifiers import labels as labels_lib
from ttc_jax.verifiers.scoring import STEP_AGGREGATIONS
from ttc_jax.verifiers.scoring import aggregate_steps
from ttc_jax.verifiers.scoring import min_token_prob

# Config fields that change how fast a stage runs, never what it computes: they
# are left out of artifact identities (results do not depend on the batch).
SPEED_ONLY = ("sampling.batch_size", "search.rows_per_call", "verifier_eval.batch_size",
              "*.checkpoint_every", "*.log_every")
# Config keys added after artifacts were made with the behaviour of their default: left out
# of identities at that default, so those artifacts stay valid (any other value is keyed).
ADDED_KEYS = {"sampling.top_p": 1.0}


@dataclasses.dataclass
class Context:
  """What a stage's run function receives."""

  config: ml_collections.ConfigDict  # the stage's own sections only
  inputs: dict[str, Any]  # input stage name -> loaded artifact
  out: artifacts.StageDir  # this stage's outputs
  log: Callable[[str], None] = logging.info
  # variant(stage, overrides) -> (loaded artifact, its stage record): the artifact of
  # ``stage`` under the experiment config with ``overrides`` ({dotted key: value}),
  # run (with what it is missing) or reused by identity (the ablation's variants).
  variant: Callable[[str, dict], tuple[Any, dict]] | None = None


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  doc: str
  inputs: tuple[str, ...]  # stages whose artifacts it reads
  sections: tuple[str, ...]  # its config sections (top-level keys of the experiment config)
  outputs: tuple[str, ...]  # files it writes in its directory
  run: Callable[[Context], dict]  # computes and writes; returns a JSON summary
  load: Callable[[artifacts.StageDir, dict], Any]  # (directory, key) -> loaded artifact
  version: int = 1  # bump when the stage computes something else from the same key
  # Stages read when their artifact is finished, never run for this one (part of its identity).
  optional: tuple[str, ...] = ()
  # The role this stage can fill for others (an experiment's ``stages`` config maps a role,
  # e.g. 'policy', to a stage that fills it, e.g. 'hf_policy'); default: its own name.
  fills: str | None = None
  # Inputs an experiment may leave out (its ``stages`` maps them to None); the run
  # function then finds no such key in ``ctx.inputs``.
  may_lack: tuple[str, ...] = ()
  # (its config sections, a digest cache path) -> what its result depends on beyond the
  # config (e.g. the sha256 of an imported checkpoint's files): part of its identity.
  fingerprint: Callable[[ml_collections.ConfigDict, str], dict] | None = None


def sampling_params(c: ml_collections.ConfigDict) -> SamplingParams:
  """The policy's sampling in every stage that samples (``sampling`` section)."""
  return SamplingParams(temperature=c.sampling.temperature,
                        top_p=c.sampling.get("top_p", 1.0),
                        max_new_tokens=c.sampling.max_new_tokens)


# ----------------------------------------------------------------------------
# data, tokenizer
# ----------------------------------------------------------------------------
def run_data(ctx: Context) -> dict:
  data = artifacts.TaskData(tasks.build(ctx.config.task), ctx.out.path("tfds"))
  if ctx.out.primary:
    data.build()
  ctx.out.barrier()
  return {"task": data.task.name, "params": dict(data.task.params),
          "num_train": data.task.num_examples("train"),
          "num_test": data.task.num_examples("test")}


def load_data(out: artifacts.StageDir, key: dict) -> artifacts.TaskData:
  return artifacts.TaskData(tasks.build(key["config"]["task"]), out.path("tfds"))


def run_tokenizer(ctx: Context) -> dict:
  data = ctx.inputs["data"]
  if ctx.out.primary:
    try:
      Tokenizer.train(data.task, ctx.out.path("tokenizer"),
                      vocab_size=ctx.config.tokenizer.vocab_size,
                      num_texts=ctx.config.tokenizer.num_texts)
    except ValueError as e:  # e.g. a vocabulary smaller than the task's characters
      raise config_lib.ConfigError(f"tokenizer: {e}") from None
  ctx.out.barrier()
  tok = Tokenizer.load(ctx.out.path("tokenizer.model"))
  return {"vocab_size": tok.vocab_size}


def load_tokenizer(out: artifacts.StageDir, key: dict) -> Tokenizer:
  del key
  return Tokenizer.load(out.path("tokenizer.model"))


# ----------------------------------------------------------------------------
# policy
# ----------------------------------------------------------------------------
def run_policy(ctx: Context, section: str = "policy") -> dict:
  """SFT of a policy on the train problems; ``section``: 'policy' or 'large_policy' (the
  exchange's larger model: the same data, tokens and training config, other shape)."""
  cfg = ctx.config[section]
  data, tok = ctx.inputs["data"], ctx.inputs["tokenizer"]
  model_cfg = TransformerConfig(vocab_size=tok.vocab_size, head="lm", **cfg.model.to_dict())
  model = Transformer(model_cfg, rngs=nnx.Rngs(cfg.train.seed))
  problems = data.problems("train")
  dataset = data_lib.sft_dataset(data.task, tok, problems, model_cfg.max_seq_len)
  # D of the 6 N D pretraining FLOPs: the steps' rows times the mean row length (every
  # policy of one study sees the same rows in the same order: same data, seed and steps).
  stats = {"train_problems": len(problems), "target_tokens": int(dataset.weights.sum()),
           "params": model_cfg.num_params(),
           "train_tokens": int(round(cfg.train.steps * cfg.train.batch_size
                                     * float(dataset.valid.sum(1).mean())))}
  ctx.log(f"{section}: {stats['params']:,} params, {len(problems)} train problems, "
          f"{stats['target_tokens']:,} target tokens")
  trainer.train(model, dataset, cfg.train, ctx.out.dir, objective="lm", name=section)
  artifacts.write_model(
      ctx.out, model_cfg, artifacts.tokenizer_ref(ctx.out.dir, tok.path), step=cfg.train.steps,
      made_by={"stage": section, "objective": "lm (SFT)", "train": cfg.train.to_dict(),
               "data": stats})
  return stats


def load_model(out: artifacts.StageDir, key: dict) -> artifacts.ModelArtifact:
  del key
  return artifacts.load_model(out.dir, out.identity)


# ----------------------------------------------------------------------------
# imported checkpoints (Hugging Face directories, used in place)
# ----------------------------------------------------------------------------
def checkpoint_fingerprint(section: str) -> Callable[[ml_collections.ConfigDict, str], dict]:
  """The sha256 of every file the import of ``section``'s checkpoint reads: a changed
  checkpoint is another artifact, and so is everything computed from it."""
  def fingerprint(config: ml_collections.ConfigDict, cache_path: str) -> dict:
    path = config[section].path
    if not isinstance(path, str) or not os.path.isdir(path):
      raise config_lib.ConfigError(f"{section}.path={path!r}: expected a Hugging Face "
                                   "checkpoint directory.")
    return {"files": store.directory_digests(path, config_lib.hf_files(path), cache_path)}
  return fingerprint


def run_hf_model(ctx: Context, section: str) -> dict:
  """Describes an imported checkpoint (``hf_policy``: the policy, ``hf_prm``: a PRM and
  its format) as a model artifact; its weights stay in its directory."""
  c = ctx.config[section]
  model_cfg = config_lib.hf_model_config(c, section)
  prm_format = c.format if section == "hf_prm" else None
  tokenizer = ({"step_delimiter": c.step_delimiter, "chat": c.chat, "system": c.system}
               if section == "hf_policy" else
               {"step_delimiter": "\n\n", "chat": False, "system": None})
  tok = artifacts.hf_tokenizer(c.path, **tokenizer)
  tok.check_vocab(model_cfg.vocab_size)
  files = store.directory_digests(c.path, config_lib.hf_files(c.path))
  artifacts.write_imported_model(
      ctx.out, model_cfg, c.path, tokenizer=tokenizer, files=files, prm_format=prm_format,
      made_by={"stage": section, "imported": os.path.abspath(c.path)})
  stats = {"params": model_cfg.num_params(), "head": model_cfg.head,
           "max_seq_len": model_cfg.max_seq_len, "param_dtype": model_cfg.param_dtype,
           "vocab_size": model_cfg.vocab_size, "files": len(files)}
  if prm_format:
    stats["prm_format"] = prm_format
  ctx.log(f"{section}: {c.path} ({stats['params']:,} params, {model_cfg.head} head, context "
          f"{model_cfg.max_seq_len}, {model_cfg.param_dtype}"
          + (f", PRM format {prm_format}" if prm_format else "") + ")")
  return stats


# ----------------------------------------------------------------------------
# difficulty (pass@1)
# ----------------------------------------------------------------------------
def run_difficulty(ctx: Context) -> dict:
  c = ctx.config
  data, policy = ctx.inputs["data"], ctx.inputs["policy"]
  tok, task = policy.tokenizer, data.task
  probs = data.problems("test", c.test_problems)
  n = c.difficulty.samples_per_problem
  samples = solutions.sample_problems(policy.sampling_core(), tok, task, probs, n, c.seed,
                                      "pass_at_1", sampling_params(c),
                                      batch_size=c.sampling.batch_size)
  p1 = samples.correct_matrix().mean(axis=1)
  summary = difficulty_lib.pass_at_1_summary(p1, [p.difficulty for p in probs])
  answers = [samples.answers[i * n:(i + 1) * n] for i in range(len(probs))]
  summary[f"majority_at_{n}"] = aggregation.accuracy_curves(
      answers, [task.normalize_answer(p.answer) for p in probs], None, [n], ["majority"], 1,
      c.seed)["majority"][0]
  ctx.out.save_npz("samples.npz", {"tokens": samples.gens.tokens,
                                   "lengths": samples.gens.lengths,
                                   "stopped": samples.gens.stopped,
                                   "samples_per_problem": np.array(n)})
  ctx.out.write_json("pass_at_1.json", {
      "summary": summary,
      "problems": [{"index": p.index, "uid": p.uid, "difficulty": p.difficulty,
                    "meta": dict(p.meta), "pass_at_1": float(v)} for p, v in zip(probs, p1)]})
  ctx.out.save_figure("pass_at_1.png", figures.pass_at_1(p1, [p.difficulty for p in probs],
                                                         task.difficulty_label))
  ctx.log(f"pass@1 on {len(probs)} test problems ({n} samples each): mean {summary['mean']:.3f}, "
          f">=0.7: {100 * summary['frac_ge_0.7']:.0f}%, <=0.2: {100 * summary['frac_le_0.2']:.0f}%; "
          f"majority@{n} {summary[f'majority_at_{n}']:.3f}")
  return summary


@dataclasses.dataclass
class Difficulty:
  """The difficulty artifact: per-problem pass@1 and the samples it was measured on."""

  pass_at_1: np.ndarray
  record: dict
  gens: solutions.Generations
  n: int

  def samples(self, tok, task, problems) -> solutions.ProblemSamples:
    """The graded samples of ``problems`` (the artifact's problems, in order)."""
    if len(problems) * self.n != self.gens.tokens.shape[0]:
      raise artifacts.ArtifactError(f"the difficulty artifact holds {self.gens.tokens.shape[0]} "
                                    f"samples, not {len(problems)} x {self.n}.")
    prompts = [tok.encode_prompt(task.format_prompt(p)) for p in problems]
    return solutions.grade(tok, task, problems, self.n, prompts, self.gens)


def load_difficulty(out: artifacts.StageDir, key: dict) -> Difficulty:
  del key
  record = out.read_json("pass_at_1.json")
  z = out.load_npz("samples.npz")
  return Difficulty(pass_at_1=np.array([p["pass_at_1"] for p in record["problems"]]),
                    record=record,
                    gens=solutions.Generations(tokens=z["tokens"], lengths=z["lengths"],
                                               stopped=z["stopped"]),
                    n=int(z["samples_per_problem"]))


# ----------------------------------------------------------------------------
# the larger policy (pretraining vs test-time FLOPs, paper section 7)
# ----------------------------------------------------------------------------
def run_large_policy_eval(ctx: Context) -> dict:
  """The larger policy on the study's test problems: greedy pass@1 (the paper's Figure 9
  reference) and ``exchange.samples_per_problem`` samples for its majority curve."""
  c = ctx.config
  data, large = ctx.inputs["data"], ctx.inputs["large_policy"]
  tok, task = large.tokenizer, data.task
  probs = data.problems("test", c.test_problems)
  core, bs = large.sampling_core(), c.sampling.batch_size
  greedy_sp = SamplingParams(temperature=0.0, max_new_tokens=c.sampling.max_new_tokens)
  greedy = solutions.sample_problems(core, tok, task, probs, 1, c.seed, "large_policy_samples",
                                     greedy_sp, batch_size=bs, log_fn=ctx.log)
  n = c.exchange.samples_per_problem
  samples = solutions.sample_problems(core, tok, task, probs, n, c.seed, "large_policy_samples",
                                      sampling_params(c), batch_size=bs, log_fn=ctx.log)
  truths = [task.normalize_answer(p.answer) for p in probs]
  ns = verifier_metrics.powers_of_two(n)
  answers = [samples.answers[i * n:(i + 1) * n] for i in range(len(probs))]
  majority = aggregation.per_problem_accuracy(answers, truths, None, ns, ["majority"],
                                              c.exchange.subsamples, c.seed)["majority"]
  sampled = np.asarray(samples.gens.lengths, np.int64).reshape(len(probs), n)
  result = {
      "params": large.config.num_params(),
      "model": large.summary(),
      "train_tokens": large.description.get("made_by", {}).get("data", {}).get("train_tokens"),
      "problems": [p.uid for p in probs],
      "greedy_correct": [int(x) for x in greedy.correct],
      "greedy_pass_at_1": float(np.mean(greedy.correct)),
      "sampled_pass_at_1": [float(x) for x in samples.correct_matrix().mean(axis=1)],
      "majority": {"n": ns, "per_problem": [[float(x) for x in row] for row in majority],
                   "accuracy": [float(row.mean()) for row in majority]},
      "samples_per_problem": n,
      "prompt_tokens": [len(x) for x in greedy.prompts],
      "greedy_tokens": [int(x) for x in greedy.gens.lengths],
      "sample_tokens_mean": float(sampled.mean()),
  }
  ctx.out.write_json("large_policy_eval.json", result)
  ctx.log(f"large policy ({result['params']:,} params): greedy pass@1 "
          f"{result['greedy_pass_at_1']:.3f}, sampled pass@1 "
          f"{np.mean(result['sampled_pass_at_1']):.3f}, majority@{ns[-1]} "
          f"{result['majority']['accuracy'][-1]:.3f}")
  return {k: result[k] for k in ("params", "greedy_pass_at_1")}


# ----------------------------------------------------------------------------
# MC labels, PRM, ORM
# ----------------------------------------------------------------------------
def problem_shards(ctx: Context, name: str, problems: list, per: int,
                   make: Callable[[list], dict[str, np.ndarray]]):
  """Resumable work over problems: shard i holds ``make(problems[i * per:(i + 1) * per])``;
  finished shards are kept, the missing ones computed. Returns the shards."""
  shards = ctx.out.shards(name, math.ceil(len(problems) / per))
  todo = shards.todo()
  progress = Progress(shards.count, f"{name} shards", unit="shards", every_s=0,
                      initial=shards.count - len(todo), log_fn=ctx.log)
  for s in todo:
    shards.save(s, make(problems[s * per:(s + 1) * per]))
    progress.update(1)
  ctx.out.barrier()
  return shards


def run_mc_labels(ctx: Context) -> dict:
  c = ctx.config
  lc = c.mc_labels
  data, policy = ctx.inputs["data"], ctx.inputs["policy"]
  tok, task = policy.tokenizer, data.task
  probs = data.problems("train", lc.num_problems)
  core, sp = policy.sampling_core(), sampling_params(c)

  def label(chunk):
    samples = solutions.sample_problems(core, tok, task, chunk, lc.samples_per_problem, c.seed,
                                        "label_samples", sp, batch_size=c.sampling.batch_size)
    return labels_lib.label_samples(core, tok, task, samples, lc.rollouts, c.seed, "rollouts",
                                    sp, batch_size=c.sampling.batch_size).arrays()

  shards = problem_shards(ctx, "labels", probs, lc.problems_per_shard, label)
  return label_stats(_concat_shards(shards))


def _concat_shards(shards) -> labels_lib.LabelledSamples:
  return labels_lib.LabelledSamples.concat(
      [labels_lib.LabelledSamples.from_arrays(a) for a in shards.load_all()])


def load_mc_labels(out: artifacts.StageDir, key: dict) -> labels_lib.LabelledSamples:
  lc = key["config"]["mc_labels"]
  count = math.ceil(lc["num_problems"] / lc["problems_per_shard"])
  return _concat_shards(out.shards("labels", count))


# ----------------------------------------------------------------------------
# revision data
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class RevisionData:
  """The revision data: K policy answers per train problem, and trajectories over them
  (sample indices within a problem; see :mod:`ttc_jax.training.revisions`)."""

  problem_index: np.ndarray  # (P,) train-split indices
  samples: solutions.Generations  # row p * K + s: answer s to problem p
  correct: np.ndarray  # (P * K,) bool
  trajectories: list[revisions.Trajectory]  # .problem: position in problem_index
  samples_per_problem: int

  def texts(self, tok) -> list[list[str]]:
    """Per problem, its answers as text (what the revision prompt shows)."""
    k = self.samples_per_problem
    return [[tok.decode(self.samples.row(p * k + s)) for s in range(k)]
            for p in range(len(self.problem_index))]

  def arrays(self, max_attempts: int) -> dict[str, np.ndarray]:
    attempts = np.full((len(self.trajectories), max_attempts), -1, np.int32)
    for i, t in enumerate(self.trajectories):
      attempts[i, :len(t.attempts)] = t.attempts
    return {"problem_index": self.problem_index, "tokens": self.samples.tokens,
            "lengths": self.samples.lengths, "stopped": self.samples.stopped,
            "correct": self.correct, "samples_per_problem": np.int64(self.samples_per_problem),
            "traj_problem": np.asarray([t.problem for t in self.trajectories], np.int32),
            "traj_target": np.asarray([t.target for t in self.trajectories], np.int32),
            "traj_attempts": attempts}

  @classmethod
  def from_arrays(cls, a: dict) -> "RevisionData":
    trajs = [revisions.Trajectory(problem=int(p), attempts=tuple(int(x) for x in row if x >= 0),
                                  target=int(t))
             for p, t, row in zip(a["traj_problem"], a["traj_target"], a["traj_attempts"])]
    return cls(problem_index=a["problem_index"],
               samples=solutions.Generations(tokens=a["tokens"], lengths=a["lengths"],
                                             stopped=a["stopped"]),
               correct=a["correct"], trajectories=trajs,
               samples_per_problem=int(a["samples_per_problem"]))

  @classmethod
  def concat(cls, parts: list["RevisionData"]) -> "RevisionData":
    k = parts[0].samples_per_problem
    width = max(p.samples.tokens.shape[1] for p in parts)
    pad = lambda x: np.pad(x, ((0, 0), (0, width - x.shape[1])))
    trajs, offset = [], 0
    for part in parts:
      trajs += [dataclasses.replace(t, problem=t.problem + offset) for t in part.trajectories]
      offset += len(part.problem_index)
    return cls(problem_index=np.concatenate([p.problem_index for p in parts]),
               samples=solutions.Generations(
                   tokens=np.concatenate([pad(p.samples.tokens) for p in parts]),
                   lengths=np.concatenate([p.samples.lengths for p in parts]),
                   stopped=np.concatenate([p.samples.stopped for p in parts])),
               correct=np.concatenate([p.correct for p in parts]), trajectories=trajs,
               samples_per_problem=k)


def run_revision_data(ctx: Context) -> dict:
  """K policy answers to each of the first ``num_problems`` train problems (shards of
  ``problems_per_shard``, resumable), and trajectories of incorrect answers closest to
  a correct one (paper section 6.1)."""
  c = ctx.config
  rc = c.revision_data
  data, policy = ctx.inputs["data"], ctx.inputs["policy"]
  tok, task = policy.tokenizer, data.task
  probs = data.problems("train", rc.num_problems)
  core, sp = policy.sampling_core(), sampling_params(c)

  def sample(chunk):
    k = rc.samples_per_problem
    samples = solutions.sample_problems(core, tok, task, chunk, k, c.seed, "revision_samples",
                                        sp, batch_size=c.sampling.batch_size)
    texts = [samples.texts[i * k:(i + 1) * k] for i in range(len(chunk))]
    rngs = [streams.generator(c.seed, "revision_pairs", streams.split_id(p.split), p.index)
            for p in chunk]
    trajs, _ = revisions.build_trajectories(texts, samples.correct_matrix(), rngs,
                                            per_problem=rc.trajectories_per_problem,
                                            max_attempts=rc.max_attempts)
    return RevisionData(problem_index=np.asarray([p.index for p in chunk], np.int64),
                        samples=samples.gens, correct=samples.correct, trajectories=trajs,
                        samples_per_problem=k).arrays(rc.max_attempts)

  shards = problem_shards(ctx, "revisions", probs, rc.problems_per_shard, sample)
  rd = RevisionData.concat([RevisionData.from_arrays(a) for a in shards.load_all()])
  stats = revision_stats(rd, rc.max_attempts)
  prompt_lengths = [len(revisions.encode_revision_prompt(tok, task, probs[t.problem], [
      tok.decode(rd.samples.row(t.problem * rd.samples_per_problem + a)) for a in t.attempts]))
      for t in rd.trajectories]
  stats["longest_prompt_tokens"] = max(prompt_lengths, default=0)
  ctx.log(f"revision data: {stats}")
  return stats


def revision_stats(rd: RevisionData, max_attempts: int) -> dict:
  per = rd.correct.reshape(len(rd.problem_index), rd.samples_per_problem)
  hist = np.bincount([len(t.attempts) for t in rd.trajectories], minlength=max_attempts + 1)
  return {"problems": int(len(rd.problem_index)),
          "without_correct": int((~per.any(1)).sum()),
          "sample_accuracy": float(rd.correct.mean()),
          "trajectories": len(rd.trajectories), "attempts_histogram": hist.tolist()}


def load_revision_data(out: artifacts.StageDir, key: dict) -> RevisionData:
  rc = key["config"]["revision_data"]
  count = math.ceil(rc["num_problems"] / rc["problems_per_shard"])
  return RevisionData.concat([RevisionData.from_arrays(a)
                              for a in out.shards("revisions", count).load_all()])


def run_revision_model(ctx: Context) -> dict:
  """The revision model: the policy's backbone with a longer context, fine-tuned on each
  trajectory's correct answer given the question and the last ``window`` incorrect
  attempts (the loss on the answer and EOS only; paper section 6.1)."""
  cfg = ctx.config.revision_model
  data, policy, rd = ctx.inputs["data"], ctx.inputs["policy"], ctx.inputs["revision_data"]
  tok, task = policy.tokenizer, data.task
  model_cfg = dataclasses.replace(policy.config, max_seq_len=cfg.max_seq_len)
  model = Transformer(model_cfg, rngs=nnx.Rngs(cfg.train.seed))
  checkpoints.copy_backbone(policy.model, model)
  problems = [task.get("train", int(i)) for i in rd.problem_index]
  pairs = revisions.revision_texts(task, problems, rd.texts(tok), rd.trajectories,
                                   window=cfg.window)
  if not pairs:
    raise artifacts.ArtifactError("revision_data has no trajectory (no train problem had a "
                                  "correct answer): nothing to train the revision model on.")
  try:
    dataset = data_lib.prompt_target_dataset(tok, pairs, model_cfg.max_seq_len)
  except ValueError as e:
    raise config_lib.ConfigError(f"revision_model.max_seq_len={cfg.max_seq_len}: {e}") from e
  lengths = dataset.valid.sum(1)
  stats = {"trajectories": len(pairs), "target_tokens": int(dataset.weights.sum()),
           "longest_row": int(lengths.max()), "mean_row": float(lengths.mean()),
           "params": model_cfg.num_params()}
  ctx.log(f"revision model: {stats}")
  trainer.train(model, dataset, cfg.train, ctx.out.dir, objective="lm", name="revision_model")
  tok_path = os.path.join(policy.path, policy.description["tokenizer"]["path"])
  artifacts.write_model(
      ctx.out, model_cfg, artifacts.tokenizer_ref(ctx.out.dir, tok_path), step=cfg.train.steps,
      made_by={"stage": "revision_model", "objective": "lm (answer given earlier attempts)",
               "init": "policy", "policy": policy.identity, "window": cfg.window,
               "train": cfg.train.to_dict(), "data": stats})
  return stats


def _revision_window(revision_model: artifacts.ModelArtifact) -> int:
  return int(revision_model.description["made_by"]["window"])


def _answers_arrays(pcs: list[chains_lib.ProblemChains]) -> dict[str, np.ndarray]:
  """Every answer of ``pcs`` as a verifier row (its revision prompt + its tokens) and its
  correctness (the revision ORM's data)."""
  answers = [(q, step, a) for q, pc in enumerate(pcs) for chain in pc.chains
             for step, a in enumerate(chain)]
  rows = [a.prompt + a.tokens for _, _, a in answers]
  tokens = np.zeros((len(rows), max(len(r) for r in rows)), np.int32)
  for i, r in enumerate(rows):
    tokens[i, :len(r)] = r
  return {"tokens": tokens, "lengths": np.asarray([len(r) for r in rows], np.int32),
          "correct": np.asarray([a.correct for _, _, a in answers], bool),
          "step": np.asarray([step for _, step, _ in answers], np.int32),
          "problem_index": np.asarray([pcs[q].problem.index for q, _, _ in answers], np.int64)}


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
  strategy = chains_lib.RevisionChains(lengths=(oc.length,) * oc.chains,
                                       window=_revision_window(rev))
  core, sp = rev.sampling_core(), sampling_params(c)

  def make(chunk):
    pcs = chains_lib.run_chains(strategy, core, tok, task, chunk, seed=c.seed,
                                stream="revision_chains", sp=sp,
                                rows_per_call=c.sampling.batch_size, log_fn=ctx.log)
    return _answers_arrays(pcs)

  parts = problem_shards(ctx, "answers", probs, oc.problems_per_shard, make).load_all()
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
  scored by the revision ORM (its earlier answers in context) and by the single-answer
  PRM; every split of every budget into chains is a cell (paper section 6.2)."""
  c = ctx.config
  rc = c.revisions
  data, rev = ctx.inputs["data"], ctx.inputs["revision_model"]
  orm, prm = ctx.inputs["revision_orm"], ctx.inputs["prm"]
  tok, task = rev.tokenizer, data.task
  probs = data.problems("test", c.test_problems)
  lengths = tuple(revision_analysis.chain_lengths(max(rc.budgets)))
  strategy = chains_lib.RevisionChains(lengths=lengths, window=_revision_window(rev))
  core, sp = rev.sampling_core(), sampling_params(c)
  orm_scorer, prm_scorer = orm.scorer(), prm.scorer()
  models = (("policy", rev), ("orm", orm), ("prm", prm))
  params = {**{f"{role}_params": m.config.num_params() for role, m in models},
            **{f"{role}_cost": accounting.ModelCost.from_config(m.config).to_dict()
               for role, m in models}}

  def make(seed):
    def chunk_arrays(chunk):
      t0 = time.time()
      pcs = chains_lib.run_chains(strategy, core, tok, task, chunk, seed=c.seed,
                                  stream="revision_chains", sp=sp, run=seed,
                                  rows_per_call=c.sampling.batch_size, log_fn=ctx.log)
      return chain_arrays(pcs, lengths, orm_scorer, prm_scorer, tok,
                          batch_size=c.sampling.batch_size, wall_s=time.time() - t0)
    return chunk_arrays

  for seed in rc.seeds:
    problem_shards(ctx, f"chains-seed{seed}", probs, rc.problems_per_shard, make(seed))
  ctx.out.write_json("params.json", params)
  sweep = load_revision_sweep(ctx.out, {"config": {"test_problems": c.test_problems,
                                                   "revisions": rc.to_dict()}})
  cells = revision_analysis.revision_cells(sweep.by_seed, rc.budgets)
  ctx.out.write_json("cells.json", cells)
  return {"cells": len(cells), "answers_per_problem": strategy.generations}


@dataclasses.dataclass
class RevisionSweep:
  """The revision chains of every seed (the chains dicts of
  :mod:`ttc_jax.analysis.revisions`) and the budgets they cover."""

  by_seed: list[dict]
  budgets: list[int]


def load_revision_sweep(out: artifacts.StageDir, key: dict) -> RevisionSweep:
  rc = key["config"]["revisions"]
  count = math.ceil(key["config"]["test_problems"] / rc["problems_per_shard"])
  params = out.read_json("params.json")
  by_seed = [{**concat_chain_arrays(out.shards(f"chains-seed{seed}", count).load_all()),
              **params, "seed": seed} for seed in rc["seeds"]]
  return RevisionSweep(by_seed=by_seed, budgets=list(rc["budgets"]))


def chain_arrays(pcs: list[chains_lib.ProblemChains], lengths: tuple[int, ...], orm_scorer,
                 prm_scorer, tok, *, batch_size: int, wall_s: float) -> dict[str, np.ndarray]:
  """(problems, chains, steps) arrays of chains: grades, answers, verifier scores, tokens."""
  shape = (len(pcs), len(lengths), max(lengths))
  out = {"mask": np.zeros(shape, bool), "correct": np.zeros(shape, bool),
         "has_answer": np.zeros(shape, bool), "answers": np.full(shape, "", object),
         "orm": np.zeros(shape), "prm": np.zeros(shape),
         "policy_tokens": np.zeros(shape, np.int64), "orm_tokens": np.zeros(shape, np.int64),
         "prm_tokens": np.zeros(shape, np.int64)}
  where, orm_rows, prm_rows, prm_ends = [], [], [], []
  for q, pc in enumerate(pcs):
    for ch, chain in enumerate(pc.chains):
      for step, a in enumerate(chain):
        i = (q, ch, step)
        where.append(i)
        out["mask"][i], out["correct"][i] = True, a.correct
        out["has_answer"][i] = a.answer is not None
        out["answers"][i] = a.answer or ""
        out["policy_tokens"][i] = a.extension_tokens + len(a.tokens)
        orm_rows.append(a.prompt + a.tokens)
        prm_rows.append(pc.prefix + a.tokens)
        prm_ends.append([len(pc.prefix) + e for e in solutions.step_ends(
            a.tokens, tok.step_ids, tok.eos_ids, tok.step_pairs)] or [len(pc.prefix) - 1])
  orm_scores = orm_scorer.token_scores(orm_rows, batch_size=batch_size, desc="revision ORM")
  prm_scores = prm_scorer.step_scores(prm_rows, prm_ends, batch_size=batch_size)
  for i, o, p, orow, prow in zip(where, orm_scores, prm_scores, orm_rows, prm_rows):
    out["orm"][i], out["prm"][i] = float(o[-1]), float(aggregate_steps([p], "last")[0])
    out["orm_tokens"][i], out["prm_tokens"][i] = len(orow), len(prow)
  out["answers"] = out["answers"].astype(str)
  out["prefix_tokens"] = np.asarray([len(pc.prefix) for pc in pcs], np.int64)
  out["problems"] = np.asarray([pc.problem.uid for pc in pcs], str)
  out["wall_s"] = np.float64(wall_s)
  return out


def concat_chain_arrays(parts: list[dict[str, np.ndarray]]) -> dict:
  """One seed's shards as the chains dict of :mod:`ttc_jax.analysis.revisions`."""
  out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]
         if k not in ("wall_s", "answers", "has_answer", "problems")}
  answers = np.concatenate([p["answers"] for p in parts]).astype(object)
  answers[~np.concatenate([p["has_answer"] for p in parts])] = None
  out["answers"] = answers
  out["problems"] = [str(u) for p in parts for u in p["problems"]]
  out["wall_s"] = float(sum(float(p["wall_s"]) for p in parts))
  return out


def label_stats(ls: labels_lib.LabelledSamples) -> dict:
  steps = ls.labels[np.isfinite(ls.labels)]
  return {"samples": len(ls), "problems": int(np.unique(ls.problem_index).size),
          "steps": int(steps.size), "sample_accuracy": float(ls.correct.mean()),
          "mean_step_label": float(steps.mean()),
          "frac_steps_label_ge_0.5": float((steps >= 0.5).mean())}


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
  if kind == "prm":
    targets = [ls.step_labels(i, cfg.labels) for i in range(len(ls))]
  else:
    targets = [[np.nan] * (len(ls.ends(i)) - 1) + [float(ls.correct[i])] for i in range(len(ls))]
  keep = [i for i in range(len(ls)) if ls.ends(i)]
  dense = kind == "prm" and cfg.label_positions == "every_token"
  dataset = data_lib.value_dataset([ls.row(i) for i in keep], [ls.ends(i) for i in keep],
                                   [targets[i] for i in keep], model_cfg.max_seq_len,
                                   policy.tokenizer.pad_id, every_token=dense,
                                   prompt_lengths=[int(ls.prompt_lengths[i]) for i in keep])
  stats = label_stats(ls)
  stats["params"] = model_cfg.num_params()
  ctx.log(f"{kind}: {stats['params']:,} params ({cfg.init} init); data {stats}")
  trainer.train(model, dataset, cfg.train, ctx.out.dir, objective="value", name=kind)
  tok_path = os.path.join(policy.path, policy.description["tokenizer"]["path"])
  artifacts.write_model(
      ctx.out, model_cfg, artifacts.tokenizer_ref(ctx.out.dir, tok_path), step=cfg.train.steps,
      made_by={"stage": kind, "objective": f"value (BCE on {cfg.labels} MC step labels)"
               if kind == "prm"
               else "value (BCE on final correctness)", "init": cfg.init,
               "policy": policy.identity, "train": cfg.train.to_dict(), "data": stats})
  return stats


# ----------------------------------------------------------------------------
# verifier evaluation
# ----------------------------------------------------------------------------
def run_verifier_eval(ctx: Context) -> dict:
  """Best-of-N curves of the PRM's step aggregations, the ORM (when the study has one) and
  the policy's own likelihood on the difficulty samples; the PRM's step AUC against MC
  labels of held-out problems (``verifier_eval.auc_problems``; 0: none)."""
  c = ctx.config
  ec = c.verifier_eval
  data, policy = ctx.inputs["data"], ctx.inputs["policy"]
  prm, orm = ctx.inputs["prm"], ctx.inputs.get("orm")
  tok, task = policy.tokenizer, data.task
  probs = data.problems("test", c.test_problems)
  samples = ctx.inputs["difficulty"].samples(tok, task, probs)
  m = samples.n
  rows, ends = _rows_and_step_ends(samples, tok)
  bs = config_lib.scoring_batch_size(c)
  prompt_lengths = [len(samples.prompts[i // m]) for i in range(len(rows))]
  prm_steps = prm.solution_step_scores(tok, [probs[i // m].question for i in range(len(rows))],
                                       rows, prompt_lengths, ends, batch_size=bs)
  scores = {f"prm_{h}": aggregate_steps(prm_steps, h) for h in STEP_AGGREGATIONS}
  if orm is not None:
    scores["orm"] = aggregate_steps(orm.scorer().step_scores(
        rows, [[len(r) - 1] for r in rows], batch_size=bs), "last")
  # A reference that needs no training: the policy's own likelihood (its least likely
  # generated token). It shows what a model of the policy's size can tell apart.
  scores["policy_likelihood"] = min_token_prob(
      policy.scorer().token_scores(rows, batch_size=bs, desc="policy likelihood"),
      prompt_lengths)
  # Step AUC: held-out test problems, their own samples and MC labels (streams used nowhere else).
  auc_scores = auc_labels = auc_groups = np.zeros(0)
  if ec.auc_problems:
    auc_probs = data.problems("test", ec.auc_problems, start=c.test_problems)
    core, sp = policy.sampling_core(), sampling_params(c)
    auc_samples = solutions.sample_problems(core, tok, task, auc_probs,
                                            ec.auc_samples_per_problem, c.seed, "auc_samples",
                                            sp, batch_size=c.sampling.batch_size)
    auc_ls = labels_lib.label_samples(core, tok, task, auc_samples, ec.rollouts, c.seed,
                                      "auc_rollouts", sp, batch_size=c.sampling.batch_size)
    idx = range(len(auc_ls))
    question = {p.index: p.question for p in auc_probs}
    auc_steps = prm.solution_step_scores(
        tok, [question[int(auc_ls.problem_index[i])] for i in idx],
        [auc_ls.row(i) for i in idx], [int(auc_ls.prompt_lengths[i]) for i in idx],
        [auc_ls.ends(i) for i in idx], batch_size=bs)
    auc_scores = np.concatenate([s for s in auc_steps]).astype(np.float64)
    auc_labels = np.concatenate([auc_ls.labels[i, :len(auc_ls.ends(i))]
                                 for i in idx]).astype(np.float64)
    auc_groups = np.concatenate([np.full(len(auc_ls.ends(i)), auc_ls.problem_index[i])
                                 for i in idx]).astype(np.int64)
    steps = ~np.isnan(auc_scores)  # an adapted PRM's span that is no step has no score
    auc_scores, auc_labels, auc_groups = auc_scores[steps], auc_labels[steps], auc_groups[steps]
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
  ctx.out.save_figure("eval.png", figures.verifier_eval(result, auc_scores, auc_labels >= 0.5))
  within = {k: round(v["mean_auc"], 3) for k, v in result["within_problem"].items()}
  auc = result["auc"].get("prm_step_auc")
  ctx.log(f"verifiers: pass@1 {result['pass_at_1']:.3f}; at N={result['n'][-1]}: "
          f"{ {k: round(v, 3) for k, v in result['accuracy_at_max_n'].items()} }; PRM step AUC "
          f"{'n/a' if auc is None else f'{auc:.3f}'}; within-problem AUC {within}")
  return {"pass_at_1": result["pass_at_1"], "accuracy_at_max_n": result["accuracy_at_max_n"],
          "prm_step_auc": auc, "within_problem_auc": within}


def _rows_and_step_ends(samples: solutions.ProblemSamples, tok) -> tuple[list, list]:
  """Each sample as prompt + generation, and the positions of its step ends."""
  m = samples.n
  rows = [samples.prompts[i // m] + samples.gens.row(i) for i in range(len(samples.texts))]
  ends = [[len(samples.prompts[i // m]) + e
           for e in solutions.step_ends(samples.gens.row(i), tok.step_ids, tok.eos_ids,
                                        tok.step_pairs)]
          for i in range(len(rows))]
  return rows, ends


# ----------------------------------------------------------------------------
# verifier ablation
# ----------------------------------------------------------------------------
def run_verifier_ablation(ctx: Context) -> dict:
  """Each variant's PRM (trained, or reused by identity) scores the difficulty samples:
  within-problem AUC and vanilla / weighted best-of-N at a few N."""
  c = ctx.config
  data, policy = ctx.inputs["data"], ctx.inputs["policy"]
  tok, task = policy.tokenizer, data.task
  probs = data.problems("test", c.test_problems)
  samples = ctx.inputs["difficulty"].samples(tok, task, probs)
  rows, ends = _rows_and_step_ends(samples, tok)
  m = samples.n
  ns = [n for n in c.ablation.n if n <= m]
  answers = [samples.answers[i * m:(i + 1) * m] for i in range(len(probs))]
  truth = [task.normalize_answer(p.answer) for p in probs]
  correct = samples.correct_matrix()
  table = []
  for text in ("",) + tuple(c.ablation.variants):
    prm, record = ctx.variant("prm", config_lib.parse_variant(text))
    steps = prm.scorer().step_scores(rows, ends, batch_size=config_lib.scoring_batch_size(c))
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


def load_json(name: str):
  def load(out: artifacts.StageDir, key: dict) -> dict:
    del key
    return out.read_json(name)
  return load


# ----------------------------------------------------------------------------
# the search sweep
# ----------------------------------------------------------------------------
def sweep(search: ml_collections.ConfigDict) -> list[dict]:
  """The cells of the sweep: {method, params, seed, strategy} in run order (by seed,
  then method, then budget: the first seed's curves are complete first)."""
  m, rounds = search.beam_width, search.max_rounds
  per_seed = []
  for method in search.methods:
    for n in search.budgets:
      if n == 1 and method != "best_of_n":
        continue  # one generation is one policy sample, whatever the search: best-of-1
      if method == "best_of_n":
        per_seed.append({"method": "best_of_n_weighted", "params": {"n": n},
                         "strategy": BestOfN(n=n, selection="weighted", step_aggregation="last")})
      elif method == "beam":
        w = min(m, n)
        per_seed.append({"method": f"beam_m{m}", "params": {"n": n, "m": w},
                         "strategy": BeamSearch(n=n, width=w, max_rounds=rounds)})
      elif method == "beam_sqrt":
        w = default_width(n)
        per_seed.append({"method": "beam_sqrt", "params": {"n": n, "m": w},
                         "strategy": BeamSearch(n=n, width=w, max_rounds=rounds)})
      elif method == "dvts":
        w = min(m, n)
        per_seed.append({"method": f"dvts_m{m}", "params": {"n": n, "m": w},
                         "strategy": DVTS(n=n, width=w, max_rounds=rounds)})
      elif method == "particles":
        per_seed.append({"method": "particles", "params": {"n": n},
                         "strategy": ParticleFilter(n=n, temperature=search.particle_temperature,
                                                    max_rounds=rounds)})
    if method == "lookahead":
      for k in search.lookahead_steps:
        for n in search.budgets:
          if n < m or n * (k + 1) > max(search.budgets):
            continue  # the budget N x (k + 1) must fit the sweep's range
          per_seed.append({"method": f"lookahead_k{k}", "params": {"n": n, "m": m, "k": k},
                           "strategy": BeamSearch(n=n, width=m, lookahead=k, max_rounds=rounds)})
  return [{**cell, "seed": s} for s in search.seeds for cell in per_seed]


def cell_key(cell: dict) -> str:
  return (f"{cell['method']}/" + ",".join(f"{k}={v}" for k, v in sorted(cell["params"].items()))
          + f"/seed={cell['seed']}")


def run_search_sweep(ctx: Context) -> dict:
  c = ctx.config
  sc = c.search
  data, policy, prm = ctx.inputs["data"], ctx.inputs["policy"], ctx.inputs["prm"]
  probs = data.problems("test", c.test_problems)
  cells = sweep(sc)
  log = ctx.out.cells("cells.jsonl")
  done = log.read()
  todo = [cell for cell in cells if cell_key(cell) not in done]
  ctx.log(f"search: {len(cells)} cells, {len(cells) - len(todo)} already done")
  if todo:
    core, scorer = policy.sampling_core(), prm.search_scorer(policy.tokenizer)
    progress = Progress(len(cells), "search cells", unit="cells", every_s=0,
                        initial=len(cells) - len(todo), log_fn=ctx.log)
    clock = CompileClock.get()
    for cell in todo:
      _free_compiled_code(ctx)
      strategy = cell["strategy"]
      search_ctx = SearchContext(
          core=core, prm=scorer, task=data.task, tokenizer=policy.tokenizer, seed=c.seed,
          run=cell["seed"], sp=sampling_params(c), max_step_tokens=sc.max_step_tokens)
      compiled0, t0 = clock.seconds, time.time()
      results = search_problems(strategy, search_ctx, probs, rows_per_call=sc.rows_per_call)
      # wall_s excludes XLA tracing / compilation of new shapes (compile_s).
      compile_s = clock.seconds - compiled0
      row = {"key": cell_key(cell), "method": cell["method"], "params": cell["params"],
             "seed": cell["seed"], "budget_generations": strategy.generations,
             "problems": [r.problem.uid for r in results],
             "correct": [int(r.correct) for r in results],
             "answers": [r.answer for r in results],
             "finished": [len(r.candidates) for r in results],
             "policy_tokens": [r.budget.policy_tokens for r in results],
             "prm_tokens": [r.budget.prm_tokens for r in results],
             "flops": [r.budget.flops for r in results],
             "policy_flops": [r.budget.policy_flops for r in results],
             "prm_flops": [r.budget.prm_flops for r in results],
             "wall_s": time.time() - t0 - compile_s, "compile_s": compile_s}
      log.append([row])
      progress.update(1, extra=f"{cell['method']} {cell['params']} seed {cell['seed']}: acc "
                               f"{np.mean(row['correct']):.3f} in {row['wall_s']:.1f}s")
      host.hold(f"cell:{progress.done}")  # cells written so far
    ctx.out.barrier()
    done = log.read()
  rows = [done[cell_key(cell)] for cell in cells]
  ctx.out.write_json("cells.json", rows)
  return {"cells": len(rows)}


def _free_compiled_code(ctx: Context) -> None:
  """Unmaps compiled programs when the process nears vm.max_map_count (see
  :func:`ttc_jax.host.free_compiled_code`); programs needed again come back
  from the persistent compilation cache."""
  if host.free_compiled_code():
    ctx.log("dropped JAX's compiled programs (memory-map limit); shapes needed again are "
            "reloaded from the compilation cache or recompiled")


# ----------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------
def run_report(ctx: Context) -> dict:
  c = ctx.config
  diff, cells = ctx.inputs["difficulty"], ctx.inputs["search_sweep"]
  p1 = diff.pass_at_1
  num_bins = c.report.difficulty_bins
  bins = difficulty_lib.oracle_bins(p1, num_bins)
  curves = [study_lib.summarize(pt, bins, num_bins, c.seed) for pt in study_lib.points(cells)]
  beam = next((cv["method"] for cv in curves if cv["method"].startswith("beam_m")), "beam_sqrt")
  ver = ctx.inputs["verifier_eval"]
  claims = (claims_lib.verifier_claims(ver)
            + claims_lib.search_claims(curves, bins, num_bins, beam, c.seed))
  result = {
      "task": ctx.inputs["data"].task.name,
      "models": {role: ctx.inputs[role].summary() for role in ("policy", "prm", "orm")
                 if role in ctx.inputs},
      "curves": curves,
      "perf": study_lib.perf(curves, beam),
      "difficulty": {
          "num_problems": int(p1.size), "samples_per_problem": diff.n,
          "mean_pass_at_1": float(p1.mean()),
          "bin_mean_pass_at_1": [float(p1[bins == b].mean()) for b in range(num_bins)]},
      "verifiers": {k: ver[k] for k in ("n", "pass_at_1", "pass_at_1_ci", "accuracy_at_max_n",
                                        "auc", "num_problems", "samples_per_problem",
                                        "curves", "curves_ci", "within_problem", "calibration",
                                        "exploitation", "best_within_problem_auc", "paired")
                    if k in ver},
      "bins": [int(b) for b in bins],
      "ablation": ctx.inputs.get("verifier_ablation"),
      "claims": claims,
  }
  ctx.out.write_json("results.json", result)
  low_high = markdown.low_high(sorted({cv["budget_generations"] for cv in curves}))
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
  rev = revision_analysis.summary(sweep.by_seed, sweep.budgets, bins, num_bins, search_curves,
                                  c.seed)
  rev["models"] = {role: ctx.inputs[role].summary()
                   for role in ("revision_model", "revision_orm", "prm")}
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


def _prediction_cost(ctx: Context, k: int) -> tuple[float, float, dict]:
  """What predicting a problem's difficulty costs: ``k`` policy samples (prompt and
  generation) and the predictor's model reading each whole sample (the PRM for prm_*, in
  its own tokens; the ORM; the policy again for its likelihood), in generations and FLOPs
  per problem."""
  c = ctx.config
  predictor = c.compute_optimal.predictor
  diff, policy = ctx.inputs["difficulty"], ctx.inputs["policy"]
  probs = ctx.inputs["data"].problems("test", c.test_problems)
  tok, task = policy.tokenizer, ctx.inputs["data"].task
  prompt_ids = [tok.encode_prompt(task.format_prompt(p)) for p in probs]
  prompts = np.array([len(x) for x in prompt_ids])
  lengths = np.asarray(diff.gens.lengths, np.int64).reshape(len(probs), diff.n)[:, :k]
  rows = prompts[:, None] + lengths
  if predictor.startswith("prm"):
    scorer, name = ctx.inputs["prm"], "prm"
    # The PRM's own tokens of each sample (an imported PRM reads its own format).
    picked = [(p, s) for p in range(len(probs)) for s in range(k)]
    scored_rows = scorer.solution_tokens(
        tok, [probs[p].question for p, _ in picked],
        [prompt_ids[p] + list(diff.gens.row(p * diff.n + s)) for p, s in picked],
        [len(prompt_ids[p]) for p, _ in picked]).reshape(len(probs), k)
  elif predictor == "orm":
    scorer, name, scored_rows = ctx.inputs["orm"], "orm", rows
  else:  # policy_likelihood: the policy re-reads its samples
    scorer, name, scored_rows = policy, "policy", rows
  pol_cost = accounting.ModelCost.from_config(policy.config)
  scorer_cost = accounting.ModelCost.from_config(scorer.config)
  pol = float(np.sum(accounting.forward_flops(pol_cost, 0, rows))) / len(probs)
  ver = float(np.sum(accounting.forward_flops(scorer_cost, 0, scored_rows))) / len(probs)
  return float(k), pol + ver, {"samples": k, "policy_flops_per_problem": pol,
                               "scorer": name, "scorer_flops_per_problem": ver}


def run_compute_optimal(ctx: Context) -> dict:
  """Compute-optimal scaling (paper sections 3, 5.3, 6.3, 7): predicted difficulty, per-bin
  strategy selection with cross-validation over problems, efficiency over best-of-N, and the
  pretraining / test-time FLOPs exchange when the larger policy was evaluated."""
  c = ctx.config
  cc = c.compute_optimal
  diff, ver = ctx.inputs["difficulty"], ctx.inputs["verifier_eval"]
  num_bins = c.report.difficulty_bins
  scored = ver["scored"]
  n_probs = diff.pass_at_1.size
  # The verifiers' per-sample scores (not the labels, AUC arrays or per-problem curves).
  verifiers = sorted(k for k in scored
                     if "/" not in k and k != "correct" and not k.startswith("auc_"))
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
  search_points = ctx.inputs["report"]["curves"]
  revision_points = (ctx.inputs["revision_report"]["curves"]
                     if "revision_report" in ctx.inputs else None)
  large = ctx.inputs.get("large_policy_eval")
  exchange_inputs = None
  if large is not None:
    exchange_inputs = {"small_params": ctx.inputs["policy"].config.num_params(),
                       "large_params": large["params"],
                       "large_greedy": large["greedy_correct"],
                       "large_majority": large["majority"],
                       "r_values": tuple(cc.r_values)}
  result = co_lib.compute_optimal_summary(
      search_points, revision_points, correct, scores.mean(axis=1), num_bins, gens, flops,
      exchange_inputs=exchange_inputs, folds=cc.folds, repeats=cc.repeats, seed=c.seed,
      revision_selection=None)
  result["difficulty"]["prediction_cost"].update(cost)
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


def run_study(ctx: Context) -> dict:
  """The study's index: every claim's verdict (search, verifiers, revisions) and links to
  the two reports."""
  report, co = ctx.inputs["report"], ctx.inputs["compute_optimal"]
  rev = ctx.inputs.get("revision_report")
  exchange = (co.get("exchange") or {}).get("claims", [])
  claims = report["claims"] + (rev["claims"] if rev else []) + co["claims"] + exchange
  ctx.out.write_json("claims.json", claims)
  lines = ["# The study", "",
           "- Verifiers and search: `report/latest/report.md` (results.json, figures).",
           "- Sequential revisions: `revision_report/latest/revisions.md` (revisions.json, "
           "figures)." if rev else "- Sequential revisions: not in this experiment (no "
           "revision model).",
           "- Compute-optimal scaling and the FLOPs exchange: "
           "`compute_optimal/latest/compute_optimal.md` (compute_optimal.json, figures)"
           + ("." if co.get("exchange") else "; the exchange needs a larger policy's evaluation (`make exchange` in the "
              "embedded study)."), ""]
  lines += markdown.study_headline(co) + ["## Every finding", ""]
  lines += markdown.claims_section([c for c in claims if c.get("verdict") is not None])
  untested = [c for c in claims if c.get("verdict") is None]
  if untested:
    lines += ["", "Not tested:"] + [f"- {c['claim']}: {c.get('reason', 'no comparison')}"
                                     for c in untested]
  ctx.out.write_text("study.md", "\n".join(lines) + "\n")
  ctx.log(f"study: {ctx.out.path('study.md')}")
  return {"claims": len(claims)}


def load_verifier_eval(out: artifacts.StageDir, key: dict) -> dict:
  """eval.json, with the per-sample scores of scored.npz under "scored"."""
  del key
  result = out.read_json("eval.json")
  result["scored"] = dict(out.load_npz("scored.npz"))
  return result


def load_cells(out: artifacts.StageDir, key: dict) -> list[dict]:
  del key
  return out.read_json("cells.json")


MODEL_OUTPUTS = ("model.json", "checkpoints", "metrics.jsonl")
# Stages that run before the token-length and memory checks (they need no model, or are
# what the checks read).
BEFORE_CHECKS = ("data", "tokenizer", "hf_policy", "hf_prm")

STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("data", "the task's problems as TFDS array_record", (), ("task",), ("tfds",),
          run_data, load_data),
    Stage("tokenizer", "sentencepiece trained on the task's train texts", ("data",),
          ("tokenizer",), ("tokenizer.model",), run_tokenizer, load_tokenizer),
    Stage("policy", "SFT of the policy (LM head) on the train problems",
          ("data", "tokenizer"), ("policy",), MODEL_OUTPUTS, run_policy, load_model),
    Stage("hf_policy", "an imported Hugging Face causal LM as the policy (used in place; "
          "keyed by its files' sha256)", (), ("hf_policy",), ("model.json",),
          lambda ctx: run_hf_model(ctx, "hf_policy"), load_model, fills="policy",
          fingerprint=checkpoint_fingerprint("hf_policy")),
    Stage("large_policy", "a larger policy (the exchange's M x parameters) trained like the "
          "policy: same data, tokens and training config", ("data", "tokenizer"),
          ("large_policy",), MODEL_OUTPUTS, lambda ctx: run_policy(ctx, "large_policy"),
          load_model),
    Stage("large_policy_eval", "the larger policy's greedy pass@1 and majority curve on the "
          "test problems", ("data", "large_policy"),
          ("seed", "sampling", "test_problems", "exchange"), ("large_policy_eval.json",),
          run_large_policy_eval, load_json("large_policy_eval.json")),
    Stage("difficulty", "pass@1 per test problem from the policy's samples (oracle bins)",
          ("data", "policy"), ("seed", "sampling", "test_problems", "difficulty"),
          ("pass_at_1.json", "samples.npz", "pass_at_1.png"), run_difficulty, load_difficulty,
          version=2),
    Stage("mc_labels", "policy samples on train problems, steps labelled by MC rollouts",
          ("data", "policy"), ("seed", "sampling", "mc_labels"), (), run_mc_labels,
          load_mc_labels,
          version=2),
    Stage("revision_data", "policy answers to train problems and revision trajectories (incorrect "
          "answers closest to a correct one)", ("data", "policy"),
          ("seed", "sampling", "revision_data"), (), run_revision_data, load_revision_data),
    Stage("revision_model", "the policy fine-tuned to answer after its earlier incorrect attempts",
          ("data", "policy", "revision_data"), ("revision_model",), MODEL_OUTPUTS,
          run_revision_model, load_model),
    Stage("prm", "process reward model: value head trained on the MC step labels",
          ("mc_labels", "policy"), ("prm",), MODEL_OUTPUTS,
          lambda ctx: train_verifier(ctx, "prm"), load_model),
    Stage("hf_prm", "an imported Hugging Face process reward model and its format "
          "(verifiers.adapters.FORMATS; used in place, keyed by its files' sha256)", (),
          ("hf_prm",), ("model.json",), lambda ctx: run_hf_model(ctx, "hf_prm"), load_model,
          fills="prm", fingerprint=checkpoint_fingerprint("hf_prm")),
    Stage("orm", "outcome reward model: value head trained on final correctness",
          ("mc_labels", "policy"), ("orm",), MODEL_OUTPUTS,
          lambda ctx: train_verifier(ctx, "orm"), load_model),
    Stage("revision_orm", "the revision ORM: value head on the revision model's own answers, "
          "earlier answers in context", ("data", "revision_model"),
          ("seed", "sampling", "revision_orm"), MODEL_OUTPUTS, run_revision_orm, load_model),
    Stage("revision_sweep", "revision chains on the test problems: every split of each budget "
          "into sequential chains; majority, revision-ORM (flat, hierarchical), PRM selection", ("data", "revision_model", "revision_orm",
                                                       "prm"),
          ("seed", "sampling", "test_problems", "revisions"), ("params.json", "cells.json"),
          run_revision_sweep, load_revision_sweep, version=2),  # 2: model costs (FLOPs)
    Stage("verifier_eval", "best-of-N curves per verifier and the PRM's step AUC",
          ("data", "policy", "difficulty", "prm", "orm"),
          ("seed", "sampling", "test_problems", "verifier_eval"),
          ("eval.json", "scored.npz", "eval.png"), run_verifier_eval, load_verifier_eval,
          version=3,  # 3: an imported PRM's spans that are no step skipped (NaN)
          may_lack=("orm",)),
    Stage("verifier_ablation", "PRM variants (config overrides) scored on the difficulty "
          "samples: within-problem AUC, best-of-N",
          ("data", "policy", "difficulty", "mc_labels", "prm"),
          ("seed", "sampling", "test_problems", "mc_labels", "prm", "verifier_eval", "ablation"),
          ("ablation.json",), run_verifier_ablation, load_json("ablation.json")),
    Stage("search_sweep", "best-of-N, beam, DVTS, particle filtering and lookahead search at "
          "every budget and search seed",
          ("data", "policy", "prm"), ("seed", "sampling", "test_problems", "search"),
          ("cells.jsonl", "cells.json"), run_search_sweep, load_cells,
          version=3),  # 3: FLOPs with attention, policy and PRM apart
    Stage("report", "results.json, figures and report.md of the study",
          ("data", "policy", "prm", "orm", "difficulty", "verifier_eval", "verifier_ablation",
           "search_sweep"),
          ("seed", "report"), ("results.json", "report.md", "accuracy_vs_budget.png",
                        "accuracy_by_difficulty.png", "verifiers.png"), run_report,
          load_json("results.json"), version=2, may_lack=("orm", "verifier_ablation")),
    Stage("revision_report", "sequential revisions vs parallel sampling and search: "
          "revisions.json, figures 6 and 7, revisions.md",
          ("data", "difficulty", "search_sweep", "revision_sweep", "revision_model",
           "revision_orm", "prm"),
          ("seed", "report"), ("revisions.json", "revisions.md", "revisions_vs_budget.png",
                               "revisions_by_difficulty.png", "revision_transitions.png"),
          run_revision_report, load_json("revisions.json")),
    Stage("compute_optimal", "predicted difficulty, per-bin strategy selection with "
          "cross-validation, efficiency over best-of-N, the pretraining / test-time FLOPs "
          "exchange (with the larger policy when `make exchange` ran)",
          ("data", "policy", "prm", "orm", "difficulty", "verifier_eval", "report",
           "revision_report"),
          ("seed", "test_problems", "report", "compute_optimal"),
          ("compute_optimal.json", "compute_optimal.md", "compute_optimal.png",
           "compute_optimal_efficiency.png", "difficulty_bins.png"),
          run_compute_optimal, load_json("compute_optimal.json"),
          optional=("large_policy_eval",), may_lack=("orm", "revision_report"),
          # 2: efficiency against the baseline's own smallest budget; 3: the prediction
          # cost counts an imported PRM's own tokens, the floor N' / b_max; 4: the
          # prediction cost charges the predictor's own model (the ORM, the policy)
          version=4),
    Stage("study", "the whole study: every claim's verdict and the three reports",
          ("report", "revision_report", "compute_optimal"), (), ("claims.json", "study.md"),
          run_study, load_json("claims.json"), version=3,  # 3: its text without revisions
          may_lack=("revision_report",)),
]}
