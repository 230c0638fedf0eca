"""Stages that make the models: SFT of the policy (and of the exchange's larger policy), and
imported Hugging Face checkpoints in the policy and PRM roles (used in place)."""

from __future__ import annotations

import os
from typing import Callable

import ml_collections
import numpy as np
from flax import nnx

from ttc_jax.models.transformer import Transformer
from ttc_jax.models.transformer import TransformerConfig
from ttc_jax.pipeline import artifacts
from ttc_jax.pipeline import config as config_lib
from ttc_jax.pipeline import store
from ttc_jax.tokenizers import hf as hf_tokenizer
from ttc_jax.pipeline.config import ConfigError
from ttc_jax.pipeline.config import Facts
from ttc_jax.verifiers import adapters
from ttc_jax.pipeline.stage import Context
from ttc_jax.pipeline.stage import MODEL_OUTPUTS
from ttc_jax.pipeline.stage import Stage
from ttc_jax.pipeline.stage import load_model
from ttc_jax.training import data as data_lib
from ttc_jax.training import revisions as revisions_lib
from ttc_jax.training import trainer


def run_policy(ctx: Context, section: str = "policy") -> dict:
  """SFT of a policy on the train problems; ``section``: 'policy' or 'large_policy' (the
  exchange's larger model: the same data, tokens and training config, other shape)."""
  cfg = ctx.config[section]
  data, tok = ctx.inputs["data"], ctx.inputs["tokenizer"]
  model_cfg = TransformerConfig(vocab_size=tok.vocab_size, head="lm", **cfg.model.to_dict())
  model = Transformer(model_cfg, rngs=nnx.Rngs(cfg.train.seed))
  problems = data.problems("train")
  dataset, retry = sft_dataset(data, tok, cfg, model_cfg.max_seq_len)
  # D of the 6 N D pretraining FLOPs: the steps' rows times the mean row length (every
  # policy of one study sees the same rows in the same order: same data, seed and steps).
  stats = {"train_problems": len(problems), "retry_rows": len(retry),
           "target_tokens": int(dataset.weights.sum()),
           "params": model_cfg.num_params(),
           "train_tokens": int(round(cfg.train.steps * tokens_per_step(dataset,
                                                                       cfg.train.batch_size)))}
  ctx.log(f"{section}: {stats['params']:,} params, {len(problems)} train problems"
          + (f" and {len(retry)} retry rows" if retry else "")
          + f", {stats['target_tokens']:,} target tokens")
  trainer.train(model, dataset, cfg.train, ctx.out.dir, objective="lm", name=section)
  artifacts.write_model(
      ctx.out, model_cfg, artifacts.tokenizer_ref(ctx.out.dir, tok.path), step=cfg.train.steps,
      made_by={"stage": section, "objective": "lm (SFT)", "train": cfg.train.to_dict(),
               "data": stats})
  return stats


def sft_dataset(data, tok, cfg: ml_collections.ConfigDict, max_seq_len: int):
  """A policy section's (``cfg``: policy or large_policy) SFT rows over every train problem
  (question -> reference solution), with its retry rows (an error followed by its
  correction, in the revision prompt's format: revisions_lib.retry_rows; 0: none, the paper's
  policy; drawn from the section's training seed); and the retry rows."""
  problems = data.problems("train")
  retry = revisions_lib.retry_rows(data.task, problems, cfg.get("retry_rate", 0.0),
                                   cfg.get("retry_attempts", 2), cfg.train.seed)
  dataset = data_lib.prompt_target_dataset(
      tok, [(data.task.format_prompt(p), p.solution) for p in problems] + retry, max_seq_len)
  return dataset, retry


def tokens_per_step(dataset, batch_size: int) -> float:
  """Tokens a training step reads on average (D / steps of 6 N D): rows x mean row length."""
  return batch_size * float(dataset.valid.sum(1).mean())


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


def trained_policy_lengths(c: ml_collections.ConfigDict, data, load) -> str:
  """The trained policy's rows (train and test problems, with the tokenizer of this run)
  fit its context, and the reference solutions fit the sampling budget."""
  tok, train = load("tokenizer"), data.problems("train")
  longest = config_lib.validate_lengths(c, data.task, tok,
                                        {"train": train, "test": data.problems("test")})
  # The retry rows (policy.retry_rate) are BOS, their pieces and EOS, as the trainer encodes them.
  retry = revisions_lib.retry_rows(data.task, train, c.policy.get("retry_rate", 0.0),
                                   c.policy.get("retry_attempts", 2), c.policy.train.seed)
  lengths = [2 + sum(len(tok.encode(piece)) for piece in row) for row in retry]
  if lengths and max(lengths) > c.policy.model.max_seq_len:
    i = int(np.argmax(lengths))
    raise ConfigError(
        f"policy.model.max_seq_len={c.policy.model.max_seq_len} is shorter than the longest retry "
        f"row ({lengths[i]} tokens: BOS + revision prompt + solution + EOS, of "
        f"{len(retry)} rows at policy.retry_rate={c.policy.retry_rate}). Set it >= {lengths[i]}.")
  return (f"lengths: longest prompt {longest['prompt']}, solution {longest['solution']} (with "
          f"EOS), training row {longest['row']} tokens"
          + (f", retry row {max(lengths)} tokens" if lengths else ""))


def imported_policy_lengths(c: ml_collections.ConfigDict, data, load) -> str:
  """The imported policy's chat prompts of the test problems the run reads fit its context
  with the sampling budget."""
  del load
  h = c.hf_policy
  tok = artifacts.hf_tokenizer(h.path, step_delimiter=h.step_delimiter, chat=h.chat,
                               system=h.system)
  auc = c.verifier_eval.auc_problems if "verifier_eval" in c else 0
  longest = config_lib.validate_lengths(
      c, data.task, tok, {"test": data.problems("test", c.test_problems + auc)},
      context=config_lib.hf_model_config(h, "hf_policy").max_seq_len)
  return (f"lengths: longest prompt {longest['prompt']} tokens (the imported policy's chat "
          f"prompt), reference solution {longest['solution']}")


def check_policy(c: ml_collections.ConfigDict, known: Facts) -> None:
  """The trained policy's architecture (with the tokenizer's vocabulary) and training."""
  if known.vocab is not None:
    config_lib.model_config(config_lib.arch_fields(c.policy.model), known.vocab, "lm",
                            "policy.model")
  config_lib.check_train(c, "policy", known)
  rate, attempts = c.policy.get("retry_rate", 0.0), c.policy.get("retry_attempts", 2)
  if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
    raise ConfigError(f"policy.retry_rate={rate!r}: expected the share of the train problems "
                      "given a retry row, in [0, 1] (0: none).")
  if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
    raise ConfigError(f"policy.retry_attempts={attempts!r}: expected an integer >= 1 "
                      "(erroneous solutions shown before the correction, at most).")
  if rate and known.task is not None and not known.task.has_erroneous_solutions:
    raise ConfigError(f"policy.retry_rate={rate}: task {known.task.name!r} cannot write "
                      "erroneous solutions (Task.erroneous_solution); expected 0.")


def check_large_policy(c: ml_collections.ConfigDict, known: Facts) -> None:
  """The exchange's larger policy: more parameters than the policy, at least its context,
  trained on the same rows in the same order."""
  config_lib.check_train(c, "large_policy", known)
  policy = known.policy
  if policy is None:
    return
  large = config_lib.model_config(config_lib.arch_fields(c.large_policy.model), known.vocab,
                                  "lm", "large_policy.model")
  if large.max_seq_len < policy.max_seq_len:
    raise ConfigError(f"large_policy.model.max_seq_len={large.max_seq_len}: expected >= the "
                      f"policy's {policy.max_seq_len} (it answers the same prompts).")
  if large.num_params() <= policy.num_params():
    raise ConfigError(f"large_policy.model has {large.num_params():,} parameters: expected "
                      f"more than the policy's {policy.num_params():,} (the exchange compares "
                      "test-time compute with a larger model).")
  # The same pretraining tokens: the data order is a function of these (training.data).
  for field in ("steps", "batch_size", "seed", "pad_multiple", "bucket_pool_batches"):
    if c.large_policy.train[field] != c.policy.train[field]:
      raise ConfigError(
          f"large_policy.train.{field}={c.large_policy.train[field]!r} differs from "
          f"policy.train.{field}={c.policy.train[field]!r}: the larger policy is trained on the "
          "same rows in the same order (the exchange's D_pretrain).")
  for field, default in (("retry_rate", 0.0), ("retry_attempts", 2)):
    if c.large_policy.get(field, default) != c.policy.get(field, default):
      raise ConfigError(
          f"large_policy.{field}={c.large_policy.get(field, default)!r} differs from "
          f"policy.{field}={c.policy.get(field, default)!r}: the larger policy is trained on "
          "the same rows (the exchange's D_pretrain).")


def trained_policy_held(c: ml_collections.ConfigDict) -> config_lib.Held:
  """The trained policy: its context and one step of a tree search's slack per row."""
  model = config_lib.model_config(config_lib.arch_fields(c.policy.model), c.tokenizer.vocab_size,
                                  "lm", "policy.model")
  return model, model.max_seq_len + c.search.max_step_tokens


def imported_policy_held(c: ml_collections.ConfigDict) -> config_lib.Held:
  """An imported policy, as it imports: its context and a tree search step's slack."""
  model = config_lib.hf_model_config(c.hf_policy, "hf_policy")
  return model, model.max_seq_len + c.search.max_step_tokens


def imported_prm_held(c: ml_collections.ConfigDict) -> config_lib.Held:
  """An imported PRM reads its own tokens: its context and the search's slack
  (PolicyBridge.start). A row re-scored in full may grow it further (AdaptedPRM.step): not
  counted here."""
  model = config_lib.hf_model_config(c.hf_prm, "hf_prm")
  return model, model.max_seq_len + adapters.PolicyBridge.cache_slack(c.search.max_step_tokens)


def check_hf_policy(c: ml_collections.ConfigDict, known: Facts) -> None:
  """An imported policy: a causal LM whose tokenizer fits its embedding and ends steps."""
  del known
  model = config_lib.hf_model_config(c.hf_policy, "hf_policy")
  if model.head != "lm":
    raise ConfigError(f"hf_policy.path={c.hf_policy.path!r} is a {model.head!r} model: the "
                      "policy must be a causal LM (*ForCausalLM).")
  try:
    tok = hf_tokenizer.HFTokenizer.load(c.hf_policy.path,
                                        step_delimiter=c.hf_policy.step_delimiter)
    tok.with_prompt(chat=c.hf_policy.chat, system=c.hf_policy.system)
    tok.check_vocab(model.vocab_size)
  except hf_tokenizer.TokenizerError as e:
    raise ConfigError(f"hf_policy: {e}") from e
  if not tok.step_ids and not tok.step_pairs:
    raise ConfigError(f"hf_policy.step_delimiter={c.hf_policy.step_delimiter!r}: no token "
                      "of the tokenizer contains it and no two tokens in a row complete it "
                      "(steps would never end).")


def check_hf_prm(c: ml_collections.ConfigDict, known: Facts) -> None:
  """An imported PRM: a known format, the head that format reads, a tokenizer it can use."""
  del known
  fmt = adapters.FORMATS.get(c.hf_prm.format)
  if fmt is None:
    raise ConfigError(f"hf_prm.format={c.hf_prm.format!r}: expected one of "
                      f"{sorted(adapters.FORMATS)}.")
  model = config_lib.hf_model_config(c.hf_prm, "hf_prm")
  want = fmt.model_head
  if model.head != want:
    raise ConfigError(f"hf_prm.format={fmt.name!r} reads a {want!r} head; "
                      f"{c.hf_prm.path} imports with a {model.head!r} head.")
  try:
    tok = hf_tokenizer.HFTokenizer.load(c.hf_prm.path)
    tok.check_vocab(model.vocab_size)
    adapters.AdaptedPRM.check_tokenizer(tok, fmt)
  except (hf_tokenizer.TokenizerError, adapters.FormatError) as e:
    raise ConfigError(f"hf_prm: {e}") from e

POLICY = Stage(
    name="policy", doc="SFT of the policy (LM head) on the train problems",
    inputs=("data", "tokenizer"), sections=("policy",), outputs=MODEL_OUTPUTS,
    run=run_policy, load=load_model, cost_s=215, trains=True, reads_train=True,
    lengths=trained_policy_lengths, held=trained_policy_held,
    checks={"policy": check_policy})

HF_POLICY = Stage(
    name="hf_policy", doc="an imported Hugging Face causal LM as the policy (used in place; "
    "keyed by its files' sha256)",
    sections=("hf_policy",), outputs=("model.json",),
    run=lambda ctx: run_hf_model(ctx, "hf_policy"), load=load_model, fills="policy",
    fingerprint=checkpoint_fingerprint("hf_policy"), before_checks=True,
    lengths=imported_policy_lengths, held=imported_policy_held,
    checks={"hf_policy": check_hf_policy})

LARGE_POLICY = Stage(
    name="large_policy", doc="a larger policy (the exchange's M x parameters) trained like the "
    "policy: same data, tokens and training config",
    inputs=("data", "tokenizer"), sections=("large_policy",), outputs=MODEL_OUTPUTS,
    run=lambda ctx: run_policy(ctx, "large_policy"), load=load_model, cost_s=2100,
    trains=True, reads_train=True,
    checks={"large_policy": check_large_policy})

HF_PRM = Stage(
    name="hf_prm", doc="an imported Hugging Face process reward model and its format "
    "(verifiers.adapters.FORMATS; used in place, keyed by its files' sha256)",
    sections=("hf_prm",), outputs=("model.json",),
    run=lambda ctx: run_hf_model(ctx, "hf_prm"), load=load_model, fills="prm",
    fingerprint=checkpoint_fingerprint("hf_prm"), before_checks=True, held=imported_prm_held,
    checks={"hf_prm": check_hf_prm})
