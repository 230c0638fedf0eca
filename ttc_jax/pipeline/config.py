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
import dataclasses
import glob
import os
from typing import Any, Callable, Mapping, Sequence

import ml_collections

from ttc_jax import tasks
from ttc_jax.models import hf_import
from ttc_jax.models import memory
from ttc_jax.models.transformer import TransformerConfig
from ttc_jax.training import trainer



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


def check_int(value, key: str, low: int = 1, high: int | None = None) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < low or (
      high is not None and value > high):
    bound = f"[{low}, {high}]" if high is not None else f">= {low}"
    raise ConfigError(f"{key}={value!r}: expected an integer {bound}.")
  return value


def check_fraction(value, key: str, high_open: bool = False) -> float:
  """A number in [0, 1] (``high_open``: [0, 1))."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
      0 <= value < 1 if high_open else 0 <= value <= 1):
    raise ConfigError(f"{key}={value!r}: expected a number in [0, 1{')' if high_open else ']'}.")
  return float(value)


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


def model_config(fields: dict, vocab: int, head: str, key: str) -> TransformerConfig:
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
    check_int(section.max_seq_len, f"{key}.max_seq_len", 2, trained)
  try:
    return hf_import.config_from_hf(hf, max_seq_len=section.max_seq_len,
                                    param_dtype=section.param_dtype, dtype=section.dtype)
  except (hf_import.HFImportError, ValueError, KeyError) as e:
    raise ConfigError(f"{key}.path={path!r}: {e}") from e


@dataclasses.dataclass
class Facts:
  """What the checks of config sections need beside their own section: the task and its
  split sizes, the trained policy's vocabulary and architecture (None where their sections
  are invalid: their own checks say why), and the devices the trainer splits a batch over."""

  task: tasks.Task | None = None
  num_train: int | None = None
  num_test: int | None = None
  vocab: int | None = None
  policy: TransformerConfig | None = None
  training_devices: int | None = None


# A config section's check: (the whole config, facts) -> raises ConfigError naming the key.
Check = Callable[[ml_collections.ConfigDict, Facts], None]


def facts(config: ml_collections.ConfigDict, training_devices: int | None = None
          ) -> tuple[Facts, list[str]]:
  """The Facts of ``config``, and the errors of the task section (which every check reads)."""
  c, out, errors = config, Facts(training_devices=training_devices), Errors()
  with errors:
    try:
      out.task = tasks.build(c.task)
      out.num_train, out.num_test = (out.task.num_examples("train"),
                                     out.task.num_examples("test"))
    except ValueError as e:
      out.task = None
      raise ConfigError(str(e)) from e
  if "tokenizer" in c and "policy" in c:
    vocab = c.tokenizer.vocab_size
    if isinstance(vocab, int) and not isinstance(vocab, bool) and vocab >= 8:
      out.vocab = vocab
      try:
        out.policy = model_config(arch_fields(c.policy.model), vocab, "lm", "policy.model")
      except ConfigError:
        pass  # the policy section's check reports it
  return out, errors.messages


def validate(config: ml_collections.ConfigDict, stage_names: Sequence[str],
             checks: Mapping[str, Check], sections: Sequence[str] | None = None,
             training_devices: int | None = None) -> tasks.Task | None:
  """Checks everything that needs no data: the task, then each section a run reads (default:
  every section of the config) by its check in ``checks`` (section -> Check: the stages'
  and the shared sections', in run order). Every error is found before one ConfigError
  lists them all; returns the task."""
  c = config
  errors = Errors()
  with errors:
    if c.stage not in stage_names:
      raise ConfigError(f"stage={c.stage!r}: expected one of {list(stage_names)}.")
  known, task_errors = facts(c, training_devices)
  errors.messages += task_errors
  for section, check in checks.items():
    if section in c and (sections is None or section in sections):
      with errors:
        check(c, known)
  errors.raise_all()
  return known.task


def check_train(c: ml_collections.ConfigDict, section: str, known: Facts,
                rows_per_example: int = 1) -> None:
  """``section.train`` (a model trained here): a trainer config whose batch (of examples of
  ``rows_per_example`` rows: 2 for DPO's pairs) splits over the devices the trainer uses.
  ``section`` may be dotted (``revision_model.rounds``)."""
  train = c
  for part in f"{section}.train".split("."):
    train = train[part]
  try:
    trainer.check_config(train, prefix=f"{section}.train")
  except ValueError as e:
    raise ConfigError(str(e)) from e
  batch, devices = train.batch_size, known.training_devices
  if devices and batch * rows_per_example % devices:
    rows = f" ({batch * rows_per_example} rows)" if rows_per_example > 1 else ""
    raise ConfigError(
        f"{section}.train.batch_size={batch}{rows}: expected a multiple of the {devices} devices the "
        "trainer splits each batch over (one XLA CPU device per core on a CPU host; set "
        "XLA_FLAGS=--xla_force_host_platform_device_count=N to choose N).")


def check_sizes(section: ml_collections.ConfigDict, prefix: str, **bounds) -> None:
  """Each named field of ``section`` is an integer within its (low, high) bounds."""
  for field, (low, high) in bounds.items():
    check_int(section[field], f"{prefix}.{field}", low, high)


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


# What a model stage holds on a device when it samples or scores: (its architecture, its KV
# slots per row; None: it reads the policy's tokens, so it holds the policy's slots).
Held = tuple[TransformerConfig, int | None]


def memory_uses(config: ml_collections.ConfigDict, policy: Held, prm: Held | None
                ) -> list[memory.Use]:
  """The models a sampling stage holds on a device at once, with their rows and KV slots:
  the policy and the PRM (as the stages that fill their roles hold them: ``Stage.held``),
  each at the rows of a sampling batch or of a search call (a tree search pads its rows up
  to a power of two: up to twice rows_per_call), twice over when the sweep runs lookahead
  (its rollouts copy both caches). Slots are an upper bound: the whole context plus one step
  of a tree search's slack. ``prm`` None: the experiment has no PRM."""
  c = config
  policy, slots = policy
  search_rows = 2 * c.search.rows_per_call
  copies = 2 if "lookahead" in c.search.methods else 1
  scoring = scoring_batch_size(c)  # the verifier evaluation's full passes
  uses = [memory.Use("policy", policy, rows=max(c.sampling.batch_size, search_rows),
                     cache_size=slots, copies=copies, full_pass_rows=scoring)]
  if prm is not None:
    prm, prm_slots = prm
    uses.append(memory.Use("prm", prm, rows=search_rows,
                           cache_size=slots if prm_slots is None else prm_slots, copies=copies,
                           full_pass_rows=scoring))
  return uses


def scoring_batch_size(config: ml_collections.ConfigDict) -> int:
  """Rows per full forward pass of a verifier or the policy's likelihood over finished
  samples: ``verifier_eval.batch_size`` where the experiment sets one, else the sampling
  batch (speed only: scores do not depend on it)."""
  c = config
  ve = c.get("verifier_eval") or {}
  return ve.get("batch_size") or c.sampling.batch_size


def filled_by(config: ml_collections.ConfigDict, role: str) -> str | None:
  """The stage that fills ``role`` in this experiment (its ``stages`` section; default
  the stage of that name; None: left out, also spelled 'None': on the command line,
  ``--config.stages.dpo=None`` sets a string field to that text)."""
  name = (config.get("stages") or {}).get(role, role)
  return None if name in (None, "None") else name
