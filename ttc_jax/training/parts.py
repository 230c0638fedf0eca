"""The study's training parts: policy (SFT + pass@1), prm (MC labels + PRM), orm.

``run(config, workdir)`` is what ``launch/train.py`` calls. Every part is
resumable: rerunning the same command after a kill continues from the last
checkpoint (training) or the last finished shard (labelling) and redoes no
finished work; a finished part reruns in seconds.
"""

from __future__ import annotations

import glob
import os

from absl import logging
import ml_collections
import numpy as np
from flax import nnx

from ttc_jax import difficulty
from ttc_jax import workdir as wd
from ttc_jax.models.transformer import Transformer
from ttc_jax.sampling.core import SamplingParams
from ttc_jax.sampling import solutions
from ttc_jax.training import data
from ttc_jax.training import trainer
from ttc_jax.verifiers import aggregation
from ttc_jax.verifiers import labels as labels_lib


def sampling_params(config: ml_collections.ConfigDict) -> SamplingParams:
  return SamplingParams(temperature=config.sampling.temperature,
                        max_new_tokens=config.sampling.max_new_tokens)


def _init_model(config, tok, head: str) -> Transformer:
  return Transformer(wd.model_config(config, tok, head), rngs=nnx.Rngs(config.train.seed))


# ----------------------------------------------------------------------------
# policy
# ----------------------------------------------------------------------------
def run_policy(config: ml_collections.ConfigDict, workdir: str) -> dict:
  out = wd.part_dir(workdir, "policy")
  task = wd.get_task(config)
  tok = wd.tokenizer(config, workdir, task, create=True)
  model = _init_model(config, tok, "lm")
  problems = wd.problems(task, "train", workdir)
  dataset = data.sft_dataset(task, tok, problems, config.seq_len)
  logging.info("policy: %d params, %d train problems, %d target tokens",
               model.config.num_params(), len(problems), int(dataset.weights.sum()))
  trainer.train(model, dataset, config.train, out, objective="lm")
  wd.mark_done(workdir, "policy", step=config.train.steps)
  return evaluate_pass_at_1(config, workdir, task, tok, model)


def evaluate_pass_at_1(config, workdir, task, tok, model) -> dict:
  """pass@1 per test problem from ``eval.samples_per_problem`` samples -> json + png."""
  out = wd.part_dir(workdir, "policy")
  path = os.path.join(out, "pass_at_1.json")
  key = {"step": config.train.steps, "eval": config.eval.to_dict(),
         "sampling": config.sampling.to_dict(), "seed": config.seed}
  if os.path.exists(path) and wd.read_json(path).get("key") == key:
    logging.info("pass@1: up to date (%s)", path)
    return wd.read_json(path)
  probs = wd.problems(task, "test", workdir, config.eval.num_problems)
  core = wd.policy_core(config, workdir, tok, model)
  samples = solutions.sample_problems(
      core, tok, task, probs, config.eval.samples_per_problem, config.seed, "pass_at_1",
      sampling_params(config), batch_size=config.sampling.batch_size)
  p1 = samples.correct_matrix().mean(axis=1)
  n = config.eval.samples_per_problem
  majority = aggregation.accuracy_curves(
      [samples.answers[i * n:(i + 1) * n] for i in range(len(probs))],
      [task.normalize_answer(p.answer) for p in probs], None, [n], ["majority"], 1,
      config.seed)["majority"][0]
  diff = [p.difficulty for p in probs]
  summary = difficulty.pass_at_1_summary(p1, diff)
  summary[f"majority_at_{n}"] = majority
  summary["targets"] = {"mean_in_[0.3,0.6]": 0.3 <= summary["mean"] <= 0.6,
                        "frac_ge_0.7_at_least_0.2": summary["frac_ge_0.7"] >= 0.2,
                        "frac_le_0.2_at_least_0.2": summary["frac_le_0.2"] >= 0.2}
  result = {
      "key": key,
      "summary": summary,
      "problems": [{"index": p.index, "uid": p.uid, "difficulty": p.difficulty,
                    "operand_digits": p.meta.get("operand_digits"), "pass_at_1": float(v)}
                   for p, v in zip(probs, p1)],
  }
  wd.write_json(path, result)
  difficulty.plot_pass_at_1(p1, diff, os.path.join(out, "pass_at_1.png"))
  logging.info("pass@1 on %d test problems (%d samples each): mean %.3f, >=0.7: %.0f%%, "
               "<=0.2: %.0f%%; majority@%d %.3f; by #ops %s", len(probs), n,
               summary["mean"], 100 * summary["frac_ge_0.7"], 100 * summary["frac_le_0.2"],
               n, majority,
               {k: round(v, 2) for k, v in summary["by_difficulty"].items()})
  return result


# ----------------------------------------------------------------------------
# prm / orm
# ----------------------------------------------------------------------------
def label_spec(config, workdir) -> dict:
  """Everything that determines the MC labels (keys the shards on disk)."""
  done = wd.read_json(os.path.join(wd.part_dir(workdir, "policy"), "done.json"))
  return {"policy_step": done["step"], "labels": config.labels.to_dict(),
          "sampling": {"temperature": config.sampling.temperature,
                       "max_new_tokens": config.sampling.max_new_tokens},
          "seed": config.seed}


def mc_labels(config, workdir, task, tok, core) -> labels_lib.LabelledSamples:
  """MC-labelled policy samples on train problems (resumable shards in prm/labels)."""
  lc = config.labels
  probs = wd.problems(task, "train", workdir, lc.num_problems)
  sp = sampling_params(config)

  def make_shard(chunk):
    samples = solutions.sample_problems(core, tok, task, chunk, lc.samples_per_problem,
                                        config.seed, "label_samples", sp,
                                        batch_size=config.sampling.batch_size)
    return labels_lib.label_samples(core, tok, task, samples, lc.rollouts, config.seed,
                                    "rollouts", sp, batch_size=config.sampling.batch_size)

  return labels_lib.build_label_shards(
      os.path.join(wd.part_dir(workdir, "prm"), "labels"), label_spec(config, workdir), probs,
      lc.problems_per_shard, make_shard, logging.info)


def read_labels(workdir) -> labels_lib.LabelledSamples:
  """The MC-labelled samples written by the prm part."""
  directory = os.path.join(wd.part_dir(workdir, "prm"), "labels")
  paths = sorted(glob.glob(os.path.join(directory, "shard-*.npz")))
  if not paths:
    raise wd.WorkdirError(f"no label shards in {directory}; run the prm part first.")
  return labels_lib.LabelledSamples.concat([labels_lib.LabelledSamples.load(p) for p in paths])


def init_verifier(config, tok, policy: Transformer) -> Transformer:
  """A value-head model whose backbone (embeddings, blocks, final norm) is the policy's."""
  model = _init_model(config, tok, "value")
  state = nnx.state(model)
  pure = nnx.to_pure_dict(state)
  source = nnx.to_pure_dict(nnx.state(policy))
  for key in ("embed", "layers", "final_norm"):
    pure[key] = source[key]
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(model, state)
  return model


def label_stats(ls: labels_lib.LabelledSamples) -> dict:
  steps = ls.labels[np.isfinite(ls.labels)]
  return {"samples": len(ls), "problems": int(np.unique(ls.problem_index).size),
          "steps": int(steps.size), "sample_accuracy": float(ls.correct.mean()),
          "mean_step_label": float(steps.mean()),
          "frac_steps_label_ge_0.5": float((steps >= 0.5).mean())}


def run_verifier(config: ml_collections.ConfigDict, workdir: str, kind: str) -> dict:
  out = wd.part_dir(workdir, kind)
  task = wd.get_task(config)
  tok = wd.tokenizer(config, workdir, task)
  policy = wd.load_model(config, workdir, "policy", tok)
  if kind == "prm":
    ls = mc_labels(config, workdir, task, tok, wd.policy_core(config, workdir, tok, policy))
    targets = [ls.step_labels(i) for i in range(len(ls))]
  else:
    ls = read_labels(workdir)
    targets = [[np.nan] * (len(ls.ends(i)) - 1) + [float(ls.correct[i])] for i in range(len(ls))]
  keep = [i for i in range(len(ls)) if ls.ends(i)]
  dataset = data.value_dataset([ls.row(i) for i in keep], [ls.ends(i) for i in keep],
                               [targets[i] for i in keep], config.seq_len, tok.pad_id)
  stats = label_stats(ls)
  logging.info("%s data: %s", kind, stats)
  model = init_verifier(config, tok, policy)
  trainer.train(model, dataset, config.train, out, objective="value")
  wd.mark_done(workdir, kind, step=config.train.steps, data=stats)
  return stats


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs part ``config.part`` in ``workdir``; returns its summary."""
  wd.check_and_record(config, workdir)
  if config.part == "policy":
    return run_policy(config, workdir)
  if config.part in ("prm", "orm"):
    return run_verifier(config, workdir, config.part)
  raise ValueError(f"part {config.part!r} is not a training part (policy, prm, orm).")
