"""Stages of the task's data: its problems as TFDS array_record, and the sentencepiece
tokenizer trained on them."""

from __future__ import annotations

import ml_collections

from ttc_jax import tasks
from ttc_jax.pipeline import artifacts
from ttc_jax.pipeline import config as config_lib
from ttc_jax.pipeline.config import Facts
from ttc_jax.pipeline.config import check_int
from ttc_jax.pipeline.stage import Context
from ttc_jax.pipeline.stage import Stage
from ttc_jax.tokenizers.spm import SentencePieceTokenizer


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
      SentencePieceTokenizer.train(data.task, ctx.out.path("tokenizer"),
                      vocab_size=ctx.config.tokenizer.vocab_size,
                      num_texts=ctx.config.tokenizer.num_texts)
    except ValueError as e:  # e.g. a vocabulary smaller than the task's characters
      raise config_lib.ConfigError(f"tokenizer: {e}") from None
  ctx.out.barrier()
  tok = SentencePieceTokenizer.load(ctx.out.path("tokenizer.model"))
  return {"vocab_size": tok.vocab_size}


def load_tokenizer(out: artifacts.StageDir, key: dict) -> SentencePieceTokenizer:
  del key
  return SentencePieceTokenizer.load(out.path("tokenizer.model"))


# ----------------------------------------------------------------------------
# policy


def check_tokenizer(c: ml_collections.ConfigDict, known: Facts) -> None:
  del known
  check_int(c.tokenizer.vocab_size, "tokenizer.vocab_size", 8)
  check_int(c.tokenizer.num_texts, "tokenizer.num_texts", 1)

DATA = Stage(
    name="data", doc="the task's problems as TFDS array_record",
    sections=("task",), outputs=("tfds",), run=run_data, load=load_data,
    cost_s=5, before_checks=True)

TOKENIZER = Stage(
    name="tokenizer", doc="sentencepiece trained on the task's train texts",
    inputs=("data",), sections=("tokenizer",), outputs=("tokenizer.model",),
    run=run_tokenizer, load=load_tokenizer, cost_s=1, before_checks=True,
    checks={"tokenizer": check_tokenizer})
