"""One study workdir: what each part writes, and loading it back with clear errors.

Layout::

  WORKDIR/data/                  TFDS array_record copy of the task
  WORKDIR/policy/                config.json, tokenizer.model, checkpoints/, metrics.jsonl,
                                 done.json, pass_at_1.json, pass_at_1.png
  WORKDIR/prm/                   config.json, labels/ (MC-labelled shards), checkpoints/, ...
  WORKDIR/orm/                   config.json, checkpoints/, ...
  WORKDIR/verifiers/             eval.json, eval.png

A part is finished when its ``done.json`` exists; a later part refuses to run
before the parts it reads, and refuses a workdir whose policy was trained with
a different task / tokenizer / model config.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from ttc_jax import tasks
from ttc_jax.models.transformer import Transformer
from ttc_jax.models.transformer import TransformerConfig
from ttc_jax.sampling.core import SamplingCore
from ttc_jax.sampling.core import SpecialIds
from ttc_jax.tasks import tfds_builder
from ttc_jax.tokenizer import Tokenizer
from ttc_jax.training import trainer

# Sections of the config that must agree between all parts of one workdir.
SHARED_SECTIONS = ("task", "tokenizer", "model", "seq_len")
PART_INPUTS = {"policy": (), "prm": ("policy",), "orm": ("policy", "prm"),
               "verifiers": ("policy", "prm", "orm"), "study": ("policy", "prm", "orm")}


class WorkdirError(RuntimeError):
  """The workdir is missing something a part needs, or was made by another config."""


def part_dir(workdir: str, part: str) -> str:
  return os.path.join(workdir, part)


def write_json(path: str, obj: Any) -> None:
  """Atomic JSON write (tmp file + rename): a killed process never leaves half a file."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True, default=_json_default)
  os.replace(tmp, path)


def _json_default(x):
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating,)):
    return float(x)
  if isinstance(x, np.ndarray):
    return x.tolist()
  raise TypeError(f"not JSON serializable: {type(x).__name__}")


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def _shared(config: ml_collections.ConfigDict) -> dict:
  return json.loads(json.dumps({k: config[k].to_dict() if hasattr(config[k], "to_dict")
                                else config[k] for k in SHARED_SECTIONS}))


def check_and_record(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Checks that the earlier parts are done and agree with ``config``; saves the config."""
  part = config.part
  if not workdir:
    raise WorkdirError("--workdir is required (the directory all parts of a study share).")
  for needed in PART_INPUTS[part]:
    if not os.path.exists(os.path.join(part_dir(workdir, needed), "done.json")):
      raise WorkdirError(
          f"part {part!r} needs part {needed!r} to have finished in {workdir} "
          f"({os.path.join(part_dir(workdir, needed), 'done.json')} is missing); run "
          f"--config=...:{needed} with the same --workdir first.")
  policy_cfg = os.path.join(part_dir(workdir, "policy"), "config.json")
  if os.path.exists(policy_cfg):
    saved = read_json(policy_cfg)
    mine = _shared(config)
    for key in SHARED_SECTIONS:
      if saved.get(key) != mine[key]:
        raise WorkdirError(
            f"config.{key} = {mine[key]} differs from {saved.get(key)} used by the policy in "
            f"{workdir}; use a fresh --workdir or the same config.")
  write_json(os.path.join(part_dir(workdir, part), "config.json"), json.loads(config.to_json()))


def mark_done(workdir: str, part: str, **info) -> None:
  write_json(os.path.join(part_dir(workdir, part), "done.json"), info)


def get_task(config: ml_collections.ConfigDict) -> tasks.Task:
  kwargs = config.task.to_dict()
  return tasks.get_task(kwargs.pop("name"), **kwargs)


def problems(task: tasks.Task, split: str, workdir: str, num: int | None = None
             ) -> list[tasks.Problem]:
  """The first ``num`` problems of ``split``, read through the task's TFDS data source."""
  source = tfds_builder.build_data_source(task, split, os.path.join(workdir, "data"))
  n = len(source) if num is None else num
  if not 0 < n <= len(source):
    raise ValueError(f"asked for {n} {split} problems; the task has {len(source)}.")
  return [tfds_builder.record_to_problem(source[i], task.meta_keys) for i in range(n)]


def tokenizer(config: ml_collections.ConfigDict, workdir: str, task: tasks.Task,
              create: bool = False) -> Tokenizer:
  path = os.path.join(part_dir(workdir, "policy"), "tokenizer")
  if os.path.exists(path + ".model"):
    tok = Tokenizer.load(path + ".model")
  elif create:
    tok = Tokenizer.train(task, path, vocab_size=config.tokenizer.vocab_size,
                          num_texts=config.tokenizer.num_texts)
  else:
    raise WorkdirError(f"no tokenizer at {path}.model; run the policy part first.")
  tok.check_vocab(config.tokenizer.vocab_size)
  return tok


def model_config(config: ml_collections.ConfigDict, tok: Tokenizer, head: str = "lm"
                 ) -> TransformerConfig:
  return TransformerConfig(vocab_size=tok.vocab_size, head=head, **config.model.to_dict())


def special_ids(tok: Tokenizer) -> SpecialIds:
  return SpecialIds(pad_id=tok.pad_id, eos_id=tok.eos_id, step_id=tok.step_id)


def load_model(config: ml_collections.ConfigDict, workdir: str, part: str, tok: Tokenizer
               ) -> Transformer:
  """The trained model of ``part`` ('policy' -> LM head; 'prm'/'orm' -> value head)."""
  head = "lm" if part == "policy" else "value"
  done = read_json(os.path.join(part_dir(workdir, part), "done.json"))
  model = nnx.eval_shape(lambda: Transformer(model_config(config, tok, head), rngs=nnx.Rngs(0)))
  model = _materialize(model)
  return trainer.load_params(os.path.join(part_dir(workdir, part), "checkpoints"), model,
                             expect_step=done["step"])


def _materialize(abstract: Transformer) -> Transformer:
  """Zero-filled concrete model from an ``eval_shape``'d one (params are restored next)."""
  graphdef, state = nnx.split(abstract)
  state = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), state)
  return nnx.merge(graphdef, state)


def policy_core(config: ml_collections.ConfigDict, workdir: str, tok: Tokenizer,
                model: Transformer | None = None) -> SamplingCore:
  model = load_model(config, workdir, "policy", tok) if model is None else model
  return SamplingCore(model, special_ids(tok))


def part_config(config: ml_collections.ConfigDict, part: str) -> ml_collections.ConfigDict:
  """The config of ``part`` inside a study config (shared sections + ``config[part]``)."""
  if part not in config:
    raise KeyError(f"the config has no section {part!r}.")
  c = ml_collections.ConfigDict()
  c.part = part
  c.seed = config.seed
  for key in SHARED_SECTIONS + ("sampling",):
    value = config[key]
    c[key] = ml_collections.ConfigDict(value.to_dict()) if hasattr(value, "to_dict") else value
  for key, value in config[part].items():
    c[key] = ml_collections.ConfigDict(value.to_dict()) if hasattr(value, "to_dict") else value
  return c


def search_context(config: ml_collections.ConfigDict, workdir: str, **kwargs):
  """A SearchContext over the workdir's trained policy and PRM (``config``: any part's or
  the study's config; kwargs override SearchContext fields, e.g. max_step_tokens)."""
  from ttc_jax.search.common import SearchContext  # pylint: disable=g-import-not-at-top
  from ttc_jax.verifiers.incremental import IncrementalScorer  # pylint: disable=g-import-not-at-top
  task = get_task(config)
  tok = tokenizer(config, workdir, task)
  fields = dict(seed=config.seed, temperature=config.sampling.temperature,
                max_new_tokens=config.sampling.max_new_tokens)
  fields.update(kwargs)
  return SearchContext(
      core=policy_core(config, workdir, tok),
      prm=IncrementalScorer(load_model(config, workdir, "prm", tok), pad_id=tok.pad_id),
      task=task, tokenizer=tok, **fields)
