"""Validation of an experiment config, before any stage writes anything.

:func:`validate` checks every section that needs no data (types, ranges, steps
after warmup, model shapes, search strategies) and builds the task, which
validates its own keys. :func:`validate_lengths` checks what needs the task's
text and the tokenizer: training rows fit the context, the longest reference
solution fits ``sampling.max_new_tokens``, every prompt leaves room for it.
Each error names the key, the value and what was expected.
"""

from __future__ import annotations

import ast
import glob
import os
from typing import Any, Sequence

import ml_collections

from ttc_jax import hf_tokenizer
from ttc_jax import tasks
from ttc_jax.models import hf_import
from ttc_jax.models import memory
from ttc_jax.models.transformer import TransformerConfig
from ttc_jax.sampling.core import SamplingParams
from ttc_jax.search import BeamSearch
from ttc_jax.search import BestOfN
from ttc_jax.search import default_width
from ttc_jax.training import trainer

# The search methods a sweep can run (search.methods); see pipeline.stages.sweep.
SWEEP_METHODS = ("best_of_n", "beam", "beam_sqrt", "dvts", "particles", "lookahead")


class ConfigError(ValueError):
  """The experiment config cannot run; the message names the key."""


class Errors:
  """Collects the ConfigErrors of independent checks, to report them all at once:
  ``with errors: check()`` records a ConfigError and goes on; :meth:`raise_all` raises
  one ConfigError listing every message (a line each)."""

  def __init__(self):
    self.messages: list[str] = []

  def __enter__(self) -> "Errors":
    return self

  def __exit__(self, kind, value, tb) -> bool:
    if kind is not None and issubclass(kind, ConfigError):
      for line in str(value).split("\n"):
        if line.startswith("  - "):
          line = line[4:]
        elif line.startswith("the config has ") and line.endswith(" errors:"):
          continue
        if line and line not in self.messages:
          self.messages.append(line)
      return True
    return False

  def raise_all(self) -> None:
    if len(self.messages) == 1:
      raise ConfigError(self.messages[0])
    if self.messages:
      raise ConfigError(f"the config has {len(self.messages)} errors:\n"
                        + "\n".join(f"  - {m}" for m in self.messages))


def _int(value, key: str, low: int = 1, high: int | None = None) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < low or (
      high is not None and value > high):
    bound = f"[{low}, {high}]" if high is not None else f">= {low}"
    raise ConfigError(f"{key}={value!r}: expected an integer {bound}.")
  return value


def arch_fields(section: ml_collections.ConfigDict) -> dict:
  return {k: v for k, v in section.to_dict().items()}


def verifier_arch(policy_arch: dict, section: ml_collections.ConfigDict, key: str) -> dict:
  """A verifier's architecture: the policy's, with the non-None fields of ``key.model``.

  ``init='policy'`` (the backbone copied from the policy) requires the policy's
  shape or more layers (the extra blocks start as the identity); ``init='scratch'``
  may set any other.
  """
  init = section.init
  if init not in ("policy", "scratch"):
    raise ConfigError(f"{key}.init={init!r}: expected 'policy' or 'scratch'.")
  arch = dict(policy_arch)
  for field, value in section.model.to_dict().items():
    if value is None:
      continue
    if field not in arch:
      raise ConfigError(f"{key}.model.{field}: not a model field ({sorted(arch)}).")
    deeper = field == "num_layers" and value >= arch[field]
    if init == "policy" and value != arch[field] and not deeper:
      raise ConfigError(
          f"{key}.model.{field}={value!r} differs from the policy's {arch[field]!r}: a "
          f"verifier initialised from the policy ({key}.init='policy') has the policy's "
          f"shape, or more layers (new blocks on top); set {key}.init='scratch' to train "
          "one of another size.")
    arch[field] = value
  return arch


def _model(fields: dict, vocab: int, head: str, key: str) -> TransformerConfig:
  try:
    return TransformerConfig(vocab_size=vocab, head=head, **fields)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{key}: {e}") from e


# Files of a Hugging Face checkpoint directory that an import reads (its identity).
HF_FILES = ("config.json", "model.safetensors.index.json", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
            "chat_template.jinja")


def hf_files(path: str) -> list[str]:
  """The files of checkpoint directory ``path`` that its import reads."""
  names = [n for n in HF_FILES if os.path.isfile(os.path.join(path, n))]
  shards = glob.glob(os.path.join(path, "*.safetensors"))
  return names + sorted(os.path.basename(f) for f in shards)


def hf_model_config(section: ml_collections.ConfigDict, key: str) -> TransformerConfig:
  """The architecture a checkpoint section (``hf_policy`` / ``hf_prm``) imports as."""
  path = section.path
  if not isinstance(path, str) or not os.path.isdir(path):
    raise ConfigError(f"{key}.path={path!r}: expected a Hugging Face checkpoint directory "
                      "(config.json, *.safetensors, tokenizer.json).")
  try:
    hf = hf_import.read_config(path)
  except hf_import.HFImportError as e:
    raise ConfigError(f"{key}.path={path!r}: {e}") from e
  trained = hf.get("max_position_embeddings")
  if section.max_seq_len is not None:
    _int(section.max_seq_len, f"{key}.max_seq_len", 2, trained)
  try:
    return hf_import.config_from_hf(hf, max_seq_len=section.max_seq_len,
                                    param_dtype=section.param_dtype, dtype=section.dtype)
  except (hf_import.HFImportError, ValueError, KeyError) as e:
    raise ConfigError(f"{key}.path={path!r}: {e}") from e


def _validate_imports(c: ml_collections.ConfigDict, sections: Sequence[str] | None = None
                      ) -> None:
  """The imported checkpoints' sections: directories, architectures, tokenizers, PRM format."""
  use = lambda name: name in c and (sections is None or name in sections)
  if use("hf_policy"):
    model = hf_model_config(c.hf_policy, "hf_policy")
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
  if use("hf_prm"):
    from ttc_jax.verifiers import adapters  # pylint: disable=g-import-not-at-top
    fmt = adapters.FORMATS.get(c.hf_prm.format)
    if fmt is None:
      raise ConfigError(f"hf_prm.format={c.hf_prm.format!r}: expected one of "
                        f"{sorted(adapters.FORMATS)}.")
    model = hf_model_config(c.hf_prm, "hf_prm")
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


# Sections of models trained here (their ``train`` subsection is a trainer config).
TRAINED = ("policy", "large_policy", "prm", "orm", "revision_model", "revision_orm")


def validate(config: ml_collections.ConfigDict, stage_names: Sequence[str],
             sections: Sequence[str] | None = None, training_devices: int | None = None
             ) -> tasks.Task | None:
  """Checks everything that needs no data, in the ``sections`` a run reads (default: every
  section of the config); returns the task. Every error is found before one ConfigError
  lists them all. ``training_devices``: the devices the trainer's 'data' axis spans (a
  train section's batch must split over them)."""
  c = config
  use = lambda name: name in c and (sections is None or name in sections)
  errors = Errors()
  with errors:
    if c.stage not in stage_names:
      raise ConfigError(f"stage={c.stage!r}: expected one of {list(stage_names)}.")
  with errors:
    _int(c.seed, "seed", 0)
  task = None
  with errors:
    try:
      task = tasks.build(c.task)
    except ValueError as e:
      raise ConfigError(str(e)) from e
  num_train = num_test = None
  if task is not None:
    with errors:
      try:
        num_train, num_test = task.num_examples("train"), task.num_examples("test")
      except ValueError as e:
        raise ConfigError(str(e)) from e
    if num_test is None:
      task = None
  if task is not None and use("test_problems"):
    with errors:
      _int(c.test_problems, "test_problems", 1, num_test)
  if use("sampling"):
    with errors:
      _validate_sampling(c)
  with errors:
    _validate_imports(c, sections)
  if "policy" in c and (sections is None or set(TRAINED) & set(sections)
                        or "tokenizer" in sections):
    _validate_trained(c, num_train, errors, use, training_devices)
  if use("difficulty"):
    with errors:
      _int(c.difficulty.samples_per_problem, "difficulty.samples_per_problem", 1)
  if use("compute_optimal"):
    with errors:
      _validate_compute_optimal(c)
  if use("verifier_eval"):
    with errors:
      _validate_verifier_eval(c, num_test)
  if use("search"):
    with errors:
      _validate_search(c)
  if use("report") and "test_problems" in c:
    with errors:
      _int(c.report.difficulty_bins, "report.difficulty_bins", 1,
           c.test_problems if isinstance(c.test_problems, int) else None)
  errors.raise_all()
  return task


def _validate_sampling(c: ml_collections.ConfigDict) -> None:
  s = c.sampling
  temperature = s.temperature
  if isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and \
      temperature <= 0:
    raise ConfigError(f"sampling.temperature={temperature!r}: expected > 0. Every stage draws "
                      "several samples per prompt (pass@1 estimates, MC rollouts, best-of-N, "
                      "search); at temperature 0 they are all the same sample.")
  try:
    SamplingParams(temperature=temperature, top_p=s.get("top_p", 1.0),
                   max_new_tokens=s.max_new_tokens)
  except ValueError as e:
    raise ConfigError(f"sampling: {e}") from e
  _int(s.batch_size, "sampling.batch_size", 1)


def _validate_compute_optimal(c: ml_collections.ConfigDict) -> None:
  cc = c.compute_optimal
  _int(cc.folds, "compute_optimal.folds", 2, c.test_problems)  # no empty fold
  _int(cc.repeats, "compute_optimal.repeats", 1)
  if cc.predictor_samples is not None:
    _int(cc.predictor_samples, "compute_optimal.predictor_samples", 1,
         c.difficulty.samples_per_problem)
  rs = list(cc.r_values)
  if not rs or any(isinstance(r, bool) or not isinstance(r, (int, float)) or not r > 0
                   for r in rs):
    raise ConfigError(f"compute_optimal.r_values={cc.r_values!r}: expected numbers > 0 "
                      "(D_inference / D_pretrain).")


def _validate_verifier_eval(c: ml_collections.ConfigDict, num_test: int | None) -> None:
  ve = c.verifier_eval
  if "batch_size" in ve:
    _int(ve.batch_size, "verifier_eval.batch_size", 1)
  _int(ve.subsamples, "verifier_eval.subsamples", 1)
  if num_test is not None and isinstance(c.test_problems, int):
    _int(ve.auc_problems, "verifier_eval.auc_problems", 0, num_test - c.test_problems)
  _int(ve.auc_samples_per_problem, "verifier_eval.auc_samples_per_problem", 1)
  _int(ve.rollouts, "verifier_eval.rollouts", 1)
  if c.sampling.batch_size % ve.rollouts:
    raise ConfigError(f"sampling.batch_size={c.sampling.batch_size} must be a multiple of "
                      f"verifier_eval.rollouts={ve.rollouts} (a prefix's rollouts share one "
                      "call).")


def _validate_trained(c: ml_collections.ConfigDict, num_train: int | None, errors: Errors,
                      use, training_devices: int | None) -> None:
  """The sections of models trained here: tokenizer, policy, verifiers, revisions."""
  policy = vocab = None
  with errors:
    vocab = _int(c.tokenizer.vocab_size, "tokenizer.vocab_size", 8)
    _int(c.tokenizer.num_texts, "tokenizer.num_texts", 1)
  if vocab is not None:
    with errors:
      policy = _model(arch_fields(c.policy.model), vocab, "lm", "policy.model")
  for part in TRAINED:
    if use(part):
      with errors:
        try:
          trainer.check_config(c[part].train, prefix=f"{part}.train")
        except ValueError as e:
          raise ConfigError(str(e)) from e
        batch = c[part].train.batch_size
        if training_devices and batch % training_devices:
          raise ConfigError(
              f"{part}.train.batch_size={batch}: expected a multiple of the "
              f"{training_devices} devices the trainer splits each batch over (one XLA CPU "
              "device per core on a CPU host; set XLA_FLAGS="
              "--xla_force_host_platform_device_count=N to choose N).")
  if use("large_policy") and vocab is not None and policy is not None:
    with errors:
      _validate_large_policy(c, vocab, policy)
  if use("exchange"):
    with errors:
      _int(c.exchange.samples_per_problem, "exchange.samples_per_problem", 1)
      _int(c.exchange.subsamples, "exchange.subsamples", 1)
  if use("revision_model") and policy is not None:
    with errors:
      _int(c.revision_model.window, "revision_model.window", 1)
      _int(c.revision_model.max_seq_len, "revision_model.max_seq_len", policy.max_seq_len)
  for part in ("prm", "orm"):
    if use(part) and vocab is not None and policy is not None:
      with errors:
        arch = verifier_arch(arch_fields(c.policy.model), c[part], part)
        model = _model(arch, vocab, "value", f"{part}.model")
        if model.max_seq_len < policy.max_seq_len:
          raise ConfigError(f"{part}.model.max_seq_len={model.max_seq_len} is shorter than the "
                            f"policy's {policy.max_seq_len}: a verifier reads whole policy "
                            "samples.")
  if use("prm"):
    with errors:
      if c.prm.labels not in ("soft", "hard"):
        raise ConfigError(f"prm.labels={c.prm.labels!r}: expected 'soft' (the MC value) or "
                          "'hard' (1 if any rollout reaches the right answer).")
    with errors:
      if c.prm.label_positions not in ("step_end", "every_token"):
        raise ConfigError(f"prm.label_positions={c.prm.label_positions!r}: expected "
                          "'step_end' or 'every_token'.")
  if use("mc_labels"):
    with errors:
      _validate_mc_labels(c, num_train)
  if use("revision_data"):
    with errors:
      rd = c.revision_data
      _int(rd.num_problems, "revision_data.num_problems", 1, num_train)
      _int(rd.samples_per_problem, "revision_data.samples_per_problem", 1)
      _int(rd.trajectories_per_problem, "revision_data.trajectories_per_problem", 1)
      _int(rd.max_attempts, "revision_data.max_attempts", 0)
      _int(rd.problems_per_shard, "revision_data.problems_per_shard", 1)
  if use("revision_orm"):
    with errors:
      _validate_revision_orm(c, num_train)
  if use("revisions"):
    with errors:
      _validate_revisions(c)


def _validate_large_policy(c: ml_collections.ConfigDict, vocab: int,
                           policy: TransformerConfig) -> None:
  large = _model(arch_fields(c.large_policy.model), vocab, "lm", "large_policy.model")
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


def _validate_mc_labels(c: ml_collections.ConfigDict, num_train: int | None) -> None:
  ml = c.mc_labels
  _int(ml.num_problems, "mc_labels.num_problems", 1, num_train)
  _int(ml.samples_per_problem, "mc_labels.samples_per_problem", 1)
  _int(ml.rollouts, "mc_labels.rollouts", 1)
  _int(ml.problems_per_shard, "mc_labels.problems_per_shard", 1)
  if c.sampling.batch_size % ml.rollouts:
    raise ConfigError(f"sampling.batch_size={c.sampling.batch_size} must be a multiple of "
                      f"mc_labels.rollouts={ml.rollouts} (a prefix's rollouts share one call).")


def _validate_revision_orm(c: ml_collections.ConfigDict, num_train: int | None) -> None:
  ro = c.revision_orm
  _int(ro.first_problem, "revision_orm.first_problem", 0,
       None if num_train is None else num_train - 1)
  _int(ro.num_problems, "revision_orm.num_problems", 1,
       None if num_train is None else num_train - ro.first_problem)
  _int(ro.chains, "revision_orm.chains", 1)
  _int(ro.length, "revision_orm.length", 1)
  _int(ro.problems_per_shard, "revision_orm.problems_per_shard", 1)
  if "revision_data" in c and ro.first_problem < c.revision_data.num_problems:
    raise ConfigError(
        f"revision_orm.first_problem={ro.first_problem}: expected >= revision_data."
        f"num_problems={c.revision_data.num_problems} (the revision model was trained on "
        "those problems; its answers there would flatter the ORM's data).")


def _validate_revisions(c: ml_collections.ConfigDict) -> None:
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
  _int(rv.problems_per_shard, "revisions.problems_per_shard", 1)


def _validate_search(c: ml_collections.ConfigDict) -> None:
  s = c.search
  budgets = list(s.budgets)
  if not budgets or any(isinstance(n, bool) or not isinstance(n, int) or n < 1
                        for n in budgets) or budgets != sorted(set(budgets)):
    raise ConfigError(f"search.budgets={s.budgets!r}: expected increasing integers >= 1.")
  _int(s.beam_width, "search.beam_width", 1)
  seeds = list(s.seeds)
  if not seeds or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in seeds) \
      or len(set(seeds)) != len(seeds):
    raise ConfigError(f"search.seeds={s.seeds!r}: expected distinct integers >= 0.")
  unknown = [m for m in s.methods if m not in SWEEP_METHODS]
  if not s.methods or unknown or len(set(s.methods)) != len(s.methods):
    raise ConfigError(f"search.methods={s.methods!r}: expected distinct names among "
                      f"{SWEEP_METHODS}.")
  if not (isinstance(s.particle_temperature, (int, float)) and s.particle_temperature > 0):
    raise ConfigError(f"search.particle_temperature={s.particle_temperature!r}: expected a "
                      "number > 0.")
  _int(s.max_rounds, "search.max_rounds", 1)
  _int(s.max_step_tokens, "search.max_step_tokens", 1, c.sampling.max_new_tokens)
  _int(s.rows_per_call, "search.rows_per_call", 1)
  for k in s.lookahead_steps:
    _int(k, "search.lookahead_steps[]", 1)
  try:
    for n in budgets:
      BestOfN(n=n)
      BeamSearch(n=n, width=min(s.beam_width, n), max_rounds=s.max_rounds)
      BeamSearch(n=n, width=default_width(n), max_rounds=s.max_rounds)
  except ValueError as e:
    raise ConfigError(f"search: {e} (search.beam_width={s.beam_width} must divide every "
                      f"budget >= it; budgets {budgets}).") from e
  if "lookahead" in s.methods and not list(s.lookahead_steps):
    raise ConfigError("search.methods has 'lookahead' but search.lookahead_steps is empty.")
  for k in s.lookahead_steps if "lookahead" in s.methods else ():
    if not any(s.beam_width <= n and n * (k + 1) <= budgets[-1] for n in budgets):
      raise ConfigError(
          f"search.methods has 'lookahead' but no budget fits lookahead_steps k={k}: a "
          f"lookahead cell needs a budget N >= search.beam_width={s.beam_width} with "
          f"N x (k + 1) <= the largest budget {budgets[-1]} (budgets {budgets}). Add a budget, "
          "lower k, or leave lookahead out of search.methods.")


def parse_variant(text: str) -> dict[str, Any]:
  """'prm.model.num_layers=4,prm.labels=hard' -> {dotted key: value}; '' -> {}.

  Values are Python literals where they parse as one (4, 1e-3, (1, 2)), else strings."""
  out = {}
  for part in filter(None, (x.strip() for x in text.split(","))):
    if "=" not in part:
      raise ConfigError(f"ablation variant {text!r}: {part!r} is not KEY=VALUE.")
    key, value = part.split("=", 1)
    try:
      out[key.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      out[key.strip()] = value.strip()
  return out


def validate_lengths(config: ml_collections.ConfigDict, task: tasks.Task, tok,
                     problems: dict[str, list[tasks.Problem]], *, context: int | None = None
                     ) -> dict:
  """Checks token lengths against the config; returns the longest of each kind.

  ``problems``: split -> the problems that will be read (train: SFT and MC
  labels; test: evaluation). ``context``: an imported policy's context (its prompts are
  checked; reference solutions are not: it was not trained on them here); default the
  trained policy's (``policy.model.max_seq_len``).
  """
  c = config
  max_new = c.sampling.max_new_tokens
  trained = context is None
  context = c.policy.model.max_seq_len if trained else context
  longest = {"prompt": (0, None), "solution": (0, None), "row": (0, None)}
  for split, probs in problems.items():
    for p in probs:
      prompt = len(tok.encode_prompt(task.format_prompt(p)))
      solution = len(tok.encode(p.solution)) + 1  # + EOS
      for kind, n in (("prompt", prompt), ("solution", solution), ("row", prompt + solution)):
        if n > longest[kind][0]:
          longest[kind] = (n, p.uid)
  sol, sol_uid = longest["solution"]
  if trained and sol > max_new:
    raise ConfigError(
        f"sampling.max_new_tokens={max_new} is shorter than the longest reference solution "
        f"({sol} tokens with EOS, {sol_uid}): samples that long would be cut and graded wrong. "
        f"Set sampling.max_new_tokens >= {sol}.")
  row, row_uid = longest["row"]
  if trained and row > context:
    raise ConfigError(
        f"policy.model.max_seq_len={context} is shorter than the longest training row "
        f"({row} tokens: BOS + prompt + solution + EOS, {row_uid}). Set it >= {row}.")
  prompt, prompt_uid = longest["prompt"]
  if prompt + max_new > context:
    key = "policy.model.max_seq_len" if trained else "the imported policy's context"
    raise ConfigError(
        f"the longest prompt ({prompt} tokens, {prompt_uid}) + sampling.max_new_tokens="
        f"{max_new} = {prompt + max_new} exceeds {key}={context}: solutions "
        "would be cut by the context. Lower sampling.max_new_tokens or raise the context.")
  return {k: v[0] for k, v in longest.items()}


def memory_uses(config: ml_collections.ConfigDict) -> list[memory.Use]:
  """The models a sampling stage holds on a device at once, with their rows and KV slots:
  the policy and the PRM, each at the rows of a sampling batch or of a search call (a tree
  search pads its rows up to a power of two: up to twice rows_per_call), twice over when the
  sweep runs lookahead (its rollouts copy both caches). Slots are an upper bound: the whole context plus
  one step of a tree search's slack. Imported checkpoints (``hf_policy`` / ``hf_prm``)
  count with the architecture they import as."""
  c = config
  if filled_by(c, "policy") == "hf_policy":
    policy = hf_model_config(c.hf_policy, "hf_policy")
  else:
    policy = _model(arch_fields(c.policy.model), c.tokenizer.vocab_size, "lm", "policy.model")
  slots = policy.max_seq_len + c.search.max_step_tokens
  if filled_by(c, "prm") == "hf_prm":
    prm = hf_model_config(c.hf_prm, "hf_prm")
    # Its own tokens: its context and the search's slack (SearchContext.prm_prefill). A row
    # re-scored in full may grow it further (AdaptedPRM.step): not counted here.
    prm_slots = prm.max_seq_len + 4 * c.search.max_step_tokens + 16
  else:
    prm = _model(verifier_arch(arch_fields(c.policy.model), c.prm, "prm"),
                 c.tokenizer.vocab_size, "value", "prm.model")
    prm_slots = slots
  search_rows = 2 * c.search.rows_per_call
  copies = 2 if "lookahead" in c.search.methods else 1
  scoring = scoring_batch_size(c)  # the verifier evaluation's full passes
  return [memory.Use("policy", policy, rows=max(c.sampling.batch_size, search_rows),
                     cache_size=slots, copies=copies, full_pass_rows=scoring),
          memory.Use("prm", prm, rows=search_rows, cache_size=prm_slots, copies=copies,
                     full_pass_rows=scoring)]


def scoring_batch_size(config: ml_collections.ConfigDict) -> int:
  """Rows per full forward pass of a verifier or the policy's likelihood over finished
  samples: ``verifier_eval.batch_size`` where the experiment sets one, else the sampling
  batch (speed only: scores do not depend on it)."""
  c = config
  ve = c.get("verifier_eval") or {}
  return ve.get("batch_size") or c.sampling.batch_size


def filled_by(config: ml_collections.ConfigDict, role: str) -> str | None:
  """The stage that fills ``role`` in this experiment (its ``stages`` section; default
  the stage of that name; None: left out)."""
  return (config.get("stages") or {}).get(role, role)
