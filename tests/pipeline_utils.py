"""A tiny configuration of experiments/arith.py for tests of the training parts."""

import os
import subprocess
import sys


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from experiments import arith  # noqa: E402

# Flat overrides, usable in-process (apply_overrides) and on the command line
# (as --config.KEY=VALUE). Small task, 1-layer d32 model, a few steps.
TINY = {
    "task.num_train": 200, "task.num_test": 40, "task.max_ops": 2,
    "task.max_operand_digits": 1,
    "tokenizer.num_texts": 200,
    "model.d_model": 32, "model.num_layers": 1, "model.num_heads": 2, "model.num_kv_heads": 1,
    "model.mlp_dim": 64, "model.max_seq_len": 64, "seq_len": 64,
    "sampling.max_new_tokens": 32, "sampling.batch_size": 32,
}
TINY_PART = {
    "policy": {"train.steps": 24, "train.batch_size": 8, "train.checkpoint_every": 4,
               "train.log_every": 4, "train.warmup_steps": 2,
               "eval.num_problems": 8, "eval.samples_per_problem": 4},
    "prm": {"labels.num_problems": 8, "labels.samples_per_problem": 2, "labels.rollouts": 4,
            "labels.problems_per_shard": 4, "train.steps": 6, "train.batch_size": 8,
            "train.checkpoint_every": 3, "train.log_every": 3, "train.warmup_steps": 1},
    "orm": {"train.steps": 6, "train.batch_size": 8, "train.checkpoint_every": 3,
            "train.log_every": 3, "train.warmup_steps": 1},
    "verifiers": {"eval.num_problems": 6, "eval.samples_per_problem": 4, "eval.subsamples": 8,
                  "eval.auc_problems": 3, "eval.auc_samples_per_problem": 2,
                  "eval.rollouts": 4},
}


TINY_STUDY = {"study.num_problems": 6, "study.difficulty_samples": 4, "study.budgets": (1, 2, 4),
              "study.beam_width": 2, "study.lookahead_steps": (1,), "study.max_step_tokens": 8,
              "study.rows_per_call": 16}


def overrides(part: str) -> dict:
  if part == "study":
    nested = {f"{sub}.{k}": v for sub in ("policy", "prm", "orm") for k, v in TINY_PART[sub].items()}
    return {**TINY, **nested, **TINY_STUDY}
  return {**TINY, **TINY_PART[part]}


def tiny_config(part: str, **extra):
  config = arith.get_config(part)
  for key, value in {**overrides(part), **extra}.items():
    node = config
    *path, leaf = key.split(".")
    for p in path:
      node = node[p]
    node[leaf] = value
  return config


def cli(script: str, part: str, workdir: str, *extra: str) -> list[str]:
  args = [sys.executable, os.path.join(REPO, "launch", script),
          f"--config={os.path.join(REPO, 'experiments', 'arith.py')}:{part}",
          f"--workdir={workdir}"]
  args += [f"--config.{k}={v}".replace(" ", "") for k, v in overrides(part).items()]
  return args + list(extra)


def env() -> dict:
  e = dict(os.environ)
  e["XLA_FLAGS"] = ""  # one CPU device in subprocesses: fast startup
  e["PYTHONPATH"] = REPO + os.pathsep + e.get("PYTHONPATH", "")
  e["JAX_PLATFORMS"] = "cpu"
  return e


def run(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
  proc = subprocess.run(args, env=env(), capture_output=True, text=True)
  if check and proc.returncode != 0:
    raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc
