"""A tiny configuration of experiments/arith.py, and running the launch scripts on it."""

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Callable

import filelock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")
sys.path.insert(0, REPO)

from experiments import arith  # noqa: E402
from ttc_jax import host  # noqa: E402

def _train(section: str, steps: int = 6, batch_size: int = 8, every: int = 3,
           warmup_steps: int = 1) -> dict:
  """A tiny training run's overrides of ``section.train`` (checkpoints and logs every
  ``every`` steps)."""
  return {f"{section}.train.{k}": v for k, v in dict(
      steps=steps, batch_size=batch_size, checkpoint_every=every, log_every=every,
      warmup_steps=warmup_steps).items()}


# Flat overrides, usable in-process (tiny_config) and on the command line
# (as --config.KEY=VALUE). Small task, 1-layer d32 models, a few steps.
TINY = {
    "task.num_train": 200, "task.num_test": 40, "task.max_ops": 2,
    "task.max_operand_digits": 1,
    "tokenizer.num_texts": 200,
    "policy.model.d_model": 32, "policy.model.num_layers": 1, "policy.model.num_heads": 2,
    "policy.model.num_kv_heads": 1, "policy.model.mlp_dim": 64, "policy.model.max_seq_len": 64,
    "sampling.max_new_tokens": 32, "sampling.batch_size": 32,
    **_train("policy", steps=24, batch_size=8, every=4, warmup_steps=2),
    # A checkpoint every 12 steps (an orbax save costs ~0.2 s; the loss is still logged every 4).
    "policy.train.checkpoint_every": 12,
    "test_problems": 8, "difficulty.samples_per_problem": 4,
    "mc_labels.num_problems": 8, "mc_labels.samples_per_problem": 2, "mc_labels.rollouts": 4,
    "mc_labels.problems_per_shard": 4,
    **_train("prm"), **_train("orm"),
    "verifier_samples.first_problem": 24, "verifier_samples.num_problems": 16,
    "verifier_samples.samples_per_problem": 8, "verifier_samples.problems_per_shard": 8,
    **_train("implicit_prm"),
    # The tiny policy writes no final answer: no data for the LM-head verifiers (the trained
    # tiny policy of test_revisions trains them).
    "stages.implicit_prm": None, "stages.dpo": None,
    **_train("dpo", batch_size=4),
    # The likelihood verifier (trained with the LM-head verifiers in test_revisions).
    "stages.sft_lm": None, "sft_lm.first_problem": 24, "sft_lm.num_problems": 40,
    # The revision chains' single-answer verifier: the PRM (the likelihood verifier is off).
    "revisions.verifier": "prm",
    **_train("sft_lm"),
    "verifier_eval.subsamples": 8, "verifier_eval.auc_problems": 3,
    "verifier_eval.auc_samples_per_problem": 2, "verifier_eval.rollouts": 4,
    "verifier_choice.first_problem": 8, "verifier_choice.num_problems": 8,
    "verifier_choice.samples_per_problem": 4,
    "allocation.num_problems": 4, "allocation.budgets": (1, 1.5, 2, 3),
    "hybrid.revisions": (1, 2),
    "distill.num_problems": 8, "distill.samples_per_problem": 4, "distill.eval_samples": 4,
    "distill.eval_n": (2, 4), "distill.problems_per_shard": 4,
    **_train("distill"), "distill.train.bucket_pool_batches": 0,
    "search.budgets": (1, 2, 4), "search.beam_width": 2, "search.lookahead_steps": (1,),
    "search.max_step_tokens": 8, "search.rows_per_call": 16, "search.seeds": (0,),
    "ablation.variants": ("prm.labels=hard", "prm.labels=oracle"), "ablation.n": (2, 4),
    "revision_data.num_problems": 8, "revision_data.samples_per_problem": 6,
    "revision_data.trajectories_per_problem": 3, "revision_data.problems_per_shard": 4,
    "revision_model.max_seq_len": 192, **_train("revision_model"),
    "revision_model.choice.first_problem": 12, "revision_model.choice.num_problems": 4,
    "revision_model.choice.length": 2, "revision_model.choice.every": 3,
    "revision_model.rounds.num_problems": 8, "revision_model.rounds.chains": 2,
    "revision_model.rounds.length": 2, "revision_model.rounds.problems_per_shard": 4,
    **_train("revision_model.rounds"),
    "revision_orm.first_problem": 8, "revision_orm.num_problems": 4, "revision_orm.chains": 2,
    "revision_orm.length": 2, "revision_orm.problems_per_shard": 2,
    **_train("revision_orm"),
    "revisions.budgets": (1, 2, 4), "revisions.seeds": (0,), "revisions.problems_per_shard": 4,
    # The exchange's larger policy: 2.6x the tiny policy (its training follows the policy's).
    "large_policy.model.d_model": 48, "large_policy.model.num_layers": 1,
    "large_policy.model.num_heads": 2, "large_policy.model.num_kv_heads": 1,
    "large_policy.model.mlp_dim": 96, "large_policy.model.max_seq_len": 64,
    "large_policy.train.checkpoint_every": 4, "large_policy.train.log_every": 4,
    "large_policy.train.warmup_steps": 2,
    "exchange.samples_per_problem": 4, "exchange.subsamples": 8,
}


def tiny_config(arg: str | None = None, **extra):
  """The experiment config with TINY (and ``extra``, keys with dots as '__') applied."""
  config = arith.get_config(arg)
  tiny = {k: v for k, v in TINY.items()
          if not (k.startswith("task.") and config.task.name != "arith")}  # another task's keys
  for key, value in {**tiny, **{k.replace("__", "."): v for k, v in extra.items()}}.items():
    node = config
    *path, leaf = key.split(".")
    for p in path:
      node = node[p]
    node[leaf] = value
  return config


def _flag(key, value) -> str:
  return f"--config.{key}={value}".replace(" ", "")


def cli(stage: str | None, workdir: str, *extra: str, script: str = "run.py",
        overrides: dict | None = None) -> list[str]:
  """The command line of a launch script on the tiny config (``stage``: the config arg)."""
  # The tiny study stops at the search report: its vacuous policy answers nothing right, so
  # there is no revision data (the revision stages are tested on a trained tiny policy).
  spec = os.path.join(REPO, "experiments", "arith.py") + f":{stage or 'report'}"
  args = [sys.executable, os.path.join(REPO, "launch", script), f"--config={spec}",
          f"--workdir={workdir}"]
  tiny = {k: v for k, v in TINY.items()
          if not (k.startswith("task.") and "task=" in (stage or ""))}  # another task's keys
  args += [_flag(k, v) for k, v in {**tiny, **(overrides or {})}.items()]
  return args + list(extra)


def subprocess_xla_flags() -> str:
  """The suite's XLA_FLAGS (conftest.py) but one CPU device: fast startup."""
  return re.sub(r"--xla_force_host_platform_device_count=\S*", "",
                os.environ.get("XLA_FLAGS", "")).strip()


def env() -> dict:
  e = dict(os.environ)
  e["XLA_FLAGS"] = subprocess_xla_flags()
  e["PYTHONPATH"] = os.pathsep.join([REPO, TESTS, e.get("PYTHONPATH", "")])
  e["JAX_PLATFORMS"] = "cpu"
  # Compiled programs persist across the suite's processes (the launch scripts' default).
  e.setdefault("TTC_JAX_CACHE_DIR", host.default_cache_dir())
  return e


def run(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
  proc = subprocess.run(args, env=env(), capture_output=True, text=True)
  if check and proc.returncode != 0:
    raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc


def shared_workdir(tmp_path_factory, name: str, build: Callable[[str], object]) -> str:
  """A workdir made once per test session by ``build(workdir)`` (shared by xdist workers:
  the first one builds it under a file lock, the others wait). Copy it before changing it."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent
  workdir = str(root / name)
  with filelock.FileLock(workdir + ".lock"):
    if not os.path.exists(workdir + ".done"):
      shutil.rmtree(workdir, ignore_errors=True)
      build(workdir)
      open(workdir + ".done", "w").close()
  return workdir


def shared_study(tmp_path_factory, name: str = "tiny_study", stage: str | None = None) -> str:
  """A workdir where the tiny study ran once per test session (see :func:`shared_workdir`;
  its log is WORKDIR.log). Copy it before changing it."""
  def build(workdir):
    # One process (a stage process per stage costs each its own JAX start-up); the log
    # is kept. test_pipeline reruns stages with --jobs=2.
    proc = run(cli(stage, workdir))
    with open(workdir + ".log", "w") as f:
      f.write(proc.stderr)

  return shared_workdir(tmp_path_factory, name, build)


def plant_test_problem(monkeypatch, start: int) -> None:
  """A planted leak: the task data hands test problem 0 as the first of the train problems
  read from ``start`` (a stage that must learn or choose on train problems only reads it)."""
  from ttc_jax.pipeline import artifacts  # pylint: disable=g-import-not-at-top
  real = artifacts.TaskData.problems

  def leaky(self, split, num=None, start_=0):
    out = real(self, split, num, start_)
    return real(self, "test", 1) + out[1:] if split == "train" and start_ == start else out

  monkeypatch.setattr(artifacts.TaskData, "problems",
                      lambda self, split, num=None, start=0: leaky(self, split, num, start))


@contextlib.contextmanager
def chdir(path):
  old = os.getcwd()
  os.chdir(path)
  try:
    yield
  finally:
    os.chdir(old)


def held_env(tag: str, marker: str) -> dict:
  """The environment of a launch script that stops at hold point ``tag`` (ttc_jax.host.hold):
  it writes ``marker`` there and waits for :func:`kill_when` (or for ``marker`` to go)."""
  e = env()
  e[host.HOLD_ENV] = f"{tag}={marker}"
  return e


def kill_when(proc: subprocess.Popen, marker: str, timeout: float = 600) -> int:
  """SIGKILLs ``proc`` once it holds at its hold point (``marker`` exists: see
  :func:`held_env`); returns the pid that wrote the marker (the process holding: ``proc``
  or one of its stage processes). Fails if ``proc`` ends first, or after ``timeout`` seconds
  (a bound for a broken run, not a measurement: the point does not depend on speed)."""
  deadline = time.monotonic() + timeout
  while not os.path.exists(marker):
    if proc.poll() is not None:
      raise AssertionError(f"the run ended ({proc.returncode}) before its hold point "
                           f"({marker}): nothing was killed")
    if time.monotonic() > deadline:
      proc.kill()
      raise AssertionError(f"the run did not reach its hold point in {timeout} s")
    time.sleep(0.02)
  with open(marker) as f:
    holder = int(f.read())
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  os.remove(marker)  # a process still holding there goes on
  return holder
