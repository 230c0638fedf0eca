"""Verifiers (paper section 5.1): MC-labelled policy samples and the value-head PRM and ORM
trained on them."""

from __future__ import annotations

import dataclasses
import os

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
from ttc_jax.training import data as data_lib
from ttc_jax.training import trainer
from ttc_jax.verifiers import labels as labels_lib
from ttc_jax.verifiers import synthetic


def run_mc_labels(ctx: Context) -> dict:
  c, pol = ctx.config, ctx.sampler()
  lc = c.mc_labels
  probs = ctx.inputs["data"].problems("train", lc.num_problems)

  def label(chunk):
    return labels_lib.sample_and_label(
        pol.core, pol.tokenizer, pol.task, chunk, lc.samples_per_problem, lc.rollouts, c.seed,
        ("label_samples", "rollouts"), pol.sp, batch_size=c.sampling.batch_size).arrays()

  shards = ctx.out.map_shards("labels", probs, lc.problems_per_shard, label, ctx.log)
  return _concat_shards(shards).stats()


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
  dense = kind == "prm" and cfg.label_positions == "every_token"
  dataset = data_lib.value_dataset([ls.row(i) for i in keep], [ls.ends(i) for i in keep],
                                   [targets[i] for i in keep], model_cfg.max_seq_len,
                                   policy.tokenizer.pad_id, every_token=dense,
                                   prompt_lengths=[int(ls.prompt_lengths[i]) for i in keep])
  stats = ls.stats()  # the samples and their MC labels
  # What this model is trained on (for an oracle-label PRM, not the MC labels above).
  flat = np.asarray([t for i in keep for t in targets[i]], np.float64)
  flat = flat[np.isfinite(flat)]
  stats["targets"] = {"labels": cfg.labels if kind == "prm" else "outcome", "steps": int(flat.size),
                      "mean": float(flat.mean()) if flat.size else float("nan")}
  stats["params"] = model_cfg.num_params()
  ctx.log(f"{kind}: {stats['params']:,} params ({cfg.init} init); data {stats}")
  trainer.train(model, dataset, cfg.train, ctx.out.dir, objective="value", name=kind)
  tok_path = os.path.join(policy.path, policy.description["tokenizer"]["path"])
  artifacts.write_model(
      ctx.out, model_cfg, artifacts.tokenizer_ref(ctx.out.dir, tok_path), step=cfg.train.steps,
      made_by={"stage": kind, "objective": f"value (BCE on {cfg.labels} step labels)"
               if kind == "prm"
               else "value (BCE on final correctness)", "init": cfg.init,
               "policy": policy.identity, "train": cfg.train.to_dict(), "data": stats})
  return stats


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
    run=run_mc_labels, load=load_mc_labels, version=2, cost_s=680, reads_train=True,
    checks={"mc_labels": check_mc_labels})

PRM = Stage(
    name="prm", doc="process reward model: value head trained on the MC step labels",
    # data: the task's step checker for prm.labels='oracle'.
    inputs=("mc_labels", "policy", "data"), sections=("prm",), outputs=MODEL_OUTPUTS,
    run=lambda ctx: train_verifier(ctx, "prm"), load=load_model, cost_s=260, trains=True,
    held=trained_prm_held, checks={"prm": check_prm})

ORM = Stage(
    name="orm", doc="outcome reward model: value head trained on final correctness",
    inputs=("mc_labels", "policy"), sections=("orm",), outputs=MODEL_OUTPUTS,
    run=lambda ctx: train_verifier(ctx, "orm"), load=load_model, cost_s=220, trains=True,
    checks={"orm": check_orm})
