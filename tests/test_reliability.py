"""A hostile but fair user: tampered, damaged, killed and shared workdirs, and bad input.

Each test names the item of issue 24 it covers. A killed, tampered or half-written workdir
ends in a correct result or one line that names the file and a fix that works when
followed.
"""

import glob
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import pipeline_utils as pu
from ttc_jax import tasks
from ttc_jax.pipeline import artifacts
from ttc_jax.pipeline import cli
from ttc_jax.pipeline import jobs
from ttc_jax.pipeline import workdir as workdir_lib
from ttc_jax.pipeline.config import ConfigError
from ttc_jax.pipeline.runner import Pipeline
from ttc_jax.pipeline.store import StoreError


@pytest.fixture
def study(tmp_path_factory, tmp_path):
  """A copy of the tiny study's workdir (search report; sealed artifacts)."""
  base = pu.shared_study(tmp_path_factory)
  workdir = str(tmp_path / "w")
  shutil.copytree(base, workdir, symlinks=True)
  return workdir


def _latest(workdir, stage):
  return os.path.realpath(os.path.join(workdir, stage, "latest"))


def _flip_a_bit(path, offset=None):
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x10
    f.seek(0)
    f.write(data)


def _largest_file(directory):
  files = [f for f in glob.glob(os.path.join(directory, "**", "*"), recursive=True)
           if os.path.isfile(f)]
  return max(files, key=os.path.getsize)


# ---------------------------------------------------------------------------------------------
# 1-3, 8: finished artifacts are verified before use; --redo recomputes a damaged one
# ---------------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_a_flipped_bit_in_a_checkpoint_is_named_and_redo_recomputes_it(study):
  """Item 1: a bit flip in a parameter file restored without a word (NaN weights)."""
  victim = _largest_file(os.path.join(_latest(study, "policy"), "checkpoints"))
  _flip_a_bit(victim)
  pipe = Pipeline(pu.tiny_config(), study)
  with pytest.raises(artifacts.ArtifactError) as e:
    pipe.load("policy")
  message = str(e.value)
  assert "\n" not in message and victim in message and "--redo=policy" in message
  # An artifact that reads it is not trusted either: the error names the damaged one.
  with pytest.raises(artifacts.ArtifactError, match=r"the policy artifact .*--redo=policy"):
    Pipeline(pu.tiny_config(), study).load("prm")
  # Following the advice works: the policy is trained again and loads.
  from flax import nnx
  import jax
  model = Pipeline(pu.tiny_config(), study).run("policy", redo=("policy",))
  assert all(np.isfinite(np.asarray(x)).all()
             for x in jax.tree.leaves(nnx.state(model.model, nnx.Param)))


@pytest.mark.e2e
def test_an_edited_model_description_is_named(study, tmp_path):
  """Item 2: model.json was trusted (an edited rope_theta, a checkpoint.dir pointing at
  another model of the same shape, a path outside the artifact)."""
  policy, prm = _latest(study, "policy"), _latest(study, "prm")
  path = os.path.join(policy, "model.json")
  desc = json.load(open(path))
  for change in ({"config": {**desc["config"], "rope_theta": 500.0}},
                 {"checkpoint": {**desc["checkpoint"],
                                 "dir": os.path.relpath(os.path.join(prm, "checkpoints"),
                                                        policy)}}):
    with open(path, "w") as f:
      json.dump({**desc, **change}, f)
    with pytest.raises(artifacts.ArtifactError, match=r"model\.json differs from the file its "
                                                      r"stage wrote.*--redo=policy"):
      Pipeline(pu.tiny_config(), study).load("policy")
  # Paths are confined to the artifact (and the tokenizer to the workdir), sealed or not.
  other = str(tmp_path / "w2")
  shutil.copytree(study, other, symlinks=True)
  loose = os.path.join(other, "policy", os.path.basename(policy))
  with open(os.path.join(loose, "model.json"), "w") as f:
    json.dump({**desc, "checkpoint": {**desc["checkpoint"], "dir": "/tmp"}}, f)
  with pytest.raises(artifacts.ArtifactError, match=r"checkpoint.dir of .* points outside"):
    artifacts.load_model(loose)
  with open(os.path.join(loose, "model.json"), "w") as f:
    json.dump({**desc, "tokenizer": {**desc["tokenizer"], "path": "/etc/passwd"}}, f)
  with pytest.raises(artifacts.ArtifactError, match=r"tokenizer path of .* points outside"):
    artifacts.load_model(loose)


@pytest.mark.e2e
def test_an_edited_result_is_named_before_it_reaches_a_report(study):
  """Item 3: edited numbers in a finished JSON result flowed into the report."""
  path = os.path.join(_latest(study, "search_sweep"), "cells.json")
  cells = json.load(open(path))
  cells[0]["correct"] = [1] * len(cells[0]["correct"])
  with open(path, "w") as f:
    json.dump(cells, f)
  shutil.rmtree(_latest(study, "report"))
  with pytest.raises(artifacts.ArtifactError, match=r"cells\.json differs .*"
                                                    r"--redo=search_sweep"):
    Pipeline(pu.tiny_config(), study).run("report")
  # An edited stage record (its summary, its digests) is found too.
  record = os.path.join(_latest(study, "difficulty"), "stage.json")
  rec = json.load(open(record))
  rec["summary"]["mean"] = 0.99
  with open(record, "w") as f:
    json.dump(rec, f)
  with pytest.raises(artifacts.ArtifactError, match=r"stage\.json was changed after its stage "
                                                    r"finished.*--redo=difficulty"):
    Pipeline(pu.tiny_config(), study).is_done("difficulty")


@pytest.mark.e2e
def test_redo_after_damage_works_from_the_command_line_and_never_points_outside(study):
  """Item 8: "delete it to recompute" advice gave the same error on every rerun (the record
  still said done), and an edited tokenizer path of /etc/passwd got "delete it"."""
  tok = os.path.join(_latest(study, "tokenizer"), "tokenizer.model")
  _flip_a_bit(tok, offset=100)
  out = pu.run(pu.cli("difficulty", study), check=False)
  errors = [l for l in out.stderr.splitlines() if re.match(r"E\d{4} ", l)]
  assert out.returncode == 1 and len(errors) == 1, out.stderr[-3000:]
  assert tok in errors[0] and "--redo=tokenizer" in errors[0] and "Traceback" not in out.stderr
  # The advice, followed: the tokenizer is trained again (deterministic: the same bytes), so
  # the policy that read it is still valid and nothing else is recomputed.
  out = pu.run(pu.cli("difficulty", study, "--redo=tokenizer"))
  assert "tokenizer: running" in out.stderr and "policy: up to date" in out.stderr
  assert "difficulty: up to date" in out.stderr
  # A path outside the workdir in a sealed description: never "delete" it.
  path = os.path.join(_latest(study, "policy"), "model.json")
  desc = json.load(open(path))
  desc["tokenizer"]["path"] = "/etc/passwd"
  with open(path, "w") as f:
    json.dump(desc, f)
  with pytest.raises(artifacts.ArtifactError) as e:
    Pipeline(pu.tiny_config(), study).load("policy")
  assert "--redo=policy" in str(e.value) and "delete" not in str(e.value).lower()


@pytest.mark.e2e
def test_an_input_computed_again_differently_makes_its_readers_run_again(study):
  """--redo of a stage whose result changes: what read the old one is not reused."""
  pipe = Pipeline(pu.tiny_config(), study)
  old = pipe.record("difficulty")["input_content"]["policy"]
  shutil.rmtree(_latest(study, "policy"))  # trained again below: new bytes (metrics times)
  lines = []
  Pipeline(pu.tiny_config(), study, log=lines.append).run("difficulty")
  assert any("difficulty: its input(s) ['policy'] were computed again" in l for l in lines)
  assert Pipeline(pu.tiny_config(), study).record("difficulty")["input_content"]["policy"] != old


# ---------------------------------------------------------------------------------------------
# 4, 7, 19, 20, 21: configs and tasks that cannot give an answer
# ---------------------------------------------------------------------------------------------
class _Blank(tasks.Task):
  """Arithmetic whose reference answers are empty (a broken data file)."""
  name, step_delimiter, answer_marker = "blank", "\n", "Answer:"

  def __init__(self, num_train=50, num_test=20):
    self.inner = tasks.build(tasks.default_config("arith"))
    self.sizes = {"train": num_train, "test": num_test}

  @property
  def params(self):
    return dict(self.sizes)

  def num_examples(self, split):
    return self.sizes[split]

  def get(self, split, index):
    p = self.inner.get(split, index)
    blank = index % 7 == 3
    return tasks.Problem(uid=f"blank/{split}/{index}", index=index, split=split,
                         question=p.question, answer="" if blank else p.answer,
                         difficulty=p.difficulty, solution=p.solution)


tasks.register_task("blank", _Blank, dict(num_train=50, num_test=20))


@pytest.mark.e2e
def test_a_task_whose_references_do_not_grade_stops_before_any_model(tmp_path):
  """Item 4: empty reference answers ran to the end with accuracy 0."""
  workdir = str(tmp_path / "w")
  config = pu.tiny_config("policy,task=blank")
  with pytest.raises(ConfigError, match=r"task 'blank': \d+ of the \d+ problems this run reads "
                                        r"have no usable reference \(blank/train/3: answer '' "
                                        r"is empty"):
    Pipeline(config, workdir).run()
  assert sorted(n for n in os.listdir(workdir) if not n.startswith(".")) == ["data"]


def test_temperature_zero_is_refused_where_samples_are_drawn():
  """Item 7: temperature 0 made N identical samples."""
  with pytest.raises(ConfigError, match=r"sampling.temperature=0.0: expected > 0"):
    Pipeline(pu.tiny_config(sampling__temperature=0.0), "/x").validate()
  with pytest.raises(ConfigError, match=r"sampling: top_p=1.5"):
    Pipeline(pu.tiny_config(sampling__top_p=1.5), "/x").validate()
  Pipeline(pu.tiny_config(sampling__top_p=0.9), "/x").validate()  # top-p is a config key


def test_a_run_validates_what_it_runs_and_every_error_at_once():
  """Items 19 and 20: one stage needed every section valid; errors came one at a time."""
  broken = pu.tiny_config(large_policy__model__max_seq_len=8)
  Pipeline(broken, "/x").validate("report")  # the report never reads the larger policy
  with pytest.raises(ConfigError, match=r"large_policy.model.max_seq_len=8"):
    Pipeline(broken, "/x").validate("large_policy")
  three = pu.tiny_config(search__budgets=(4, 1), prm__labels="fuzzy", mc_labels__rollouts=0)
  with pytest.raises(ConfigError) as e:
    Pipeline(three, "/x").validate("report")
  lines = str(e.value).splitlines()
  assert lines[0] == "the config has 3 errors:", lines
  for needle in ("search.budgets=(4, 1)", "prm.labels='fuzzy'", "mc_labels.rollouts=0"):
    assert sum(needle in l for l in lines[1:]) == 1, (needle, lines)


def test_lookahead_that_fits_no_budget_is_an_error():
  """Item 21: lookahead with no fitting budget ran 0 lookahead cells without a word."""
  with pytest.raises(ConfigError, match=r"no budget fits lookahead_steps k=3"):
    Pipeline(pu.tiny_config(search__lookahead_steps=(3,)), "/x").validate("search_sweep")


# ---------------------------------------------------------------------------------------------
# 5, 10, 23: the command line
# ---------------------------------------------------------------------------------------------
ARITH = os.path.join(pu.REPO, "experiments", "arith.py")


@pytest.mark.parametrize("args, message", [
    ([f"--config={ARITH}:policy", "--config.policy.train.stepz=3"],
     r"--config.policy.train.stepz: not a key .*did you mean --config.policy.train.steps\?"),
    ([f"--config={ARITH}:policy", "--config.search.seeds=(0,)", "--config.search.seeds=(1,)"],
     r"--config.search.seeds is given twice \('\(0,\)' and '\(1,\)'\)"),
    (["--config=/nonexistent/exp.py"], r"--config=/nonexistent/exp.py: no such file"),
    ([f"--config={ARITH}:task=nosuch"], r"Unknown task 'nosuch'"),
    ([f"--config={ARITH}:a=b"], r"config argument 'a=b': expected a stage name"),
    ([f"--config={ARITH}", "--task_module=no_such_module_here"],
     r"--task_module=no_such_module_here: cannot import it"),
])
def test_bad_command_lines_are_one_line(args, message, capsys):
  """Items 5 and 10: tracebacks (55 lines for an unknown key), and repeated tuple overrides
  appended."""
  with pytest.raises(SystemExit) as e:
    cli.main(["run.py", "--workdir=/tmp/unused"] + args)
  err = capsys.readouterr().err.strip()
  assert e.value.code == 2 and len(err.splitlines()) == 1 and re.search(message, err), err


def test_a_config_file_that_does_not_run_and_a_task_module_that_raises(tmp_path, capsys,
                                                                       monkeypatch):
  bad = tmp_path / "exp.py"
  bad.write_text("def get_config(:\n")
  raising = tmp_path / "raising_task_module.py"
  raising.write_text("raise RuntimeError('boom')\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  for args, message in [([f"--config={bad}"], r"exp.py line 1: invalid Python"),
                        ([f"--config={ARITH}", "--task_module=raising_task_module"],
                         r"importing it raised RuntimeError: boom \(.*raising_task_module.py:1\)")]:
    with pytest.raises(SystemExit):
      cli.main(["run.py", "--workdir=/tmp/unused"] + args)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err


def test_help_lists_the_config_keys_from_any_directory(tmp_path, monkeypatch):
  """Item 23: --help outside the repository could not list the keys (a relative path)."""
  monkeypatch.chdir(tmp_path)
  text = cli.config_help(cli.EXAMPLE)
  assert "--config.policy.train.steps=" in text and "could not load" not in text


@pytest.mark.e2e
def test_bad_values_that_only_a_run_finds_are_one_line(tmp_path):
  """Item 10: a workdir that is a file or cannot be made, vocab_size=8, a truncated data file,
  a garbled tokenizer file, a training set smaller than a batch."""
  afile = tmp_path / "afile"
  afile.write_text("x")
  with pytest.raises(ConfigError, match=r"--workdir=.*afile: not a directory"):
    Pipeline(pu.tiny_config(), str(afile))
  with pytest.raises(StoreError, match=r"--workdir=.*afile/w: cannot create it"):
    Pipeline(pu.tiny_config(), str(afile / "w")).run("data")
  with pytest.raises(ConfigError, match=r"tokenizer: vocab_size=8 is too small for this "
                                        r"corpus: .* need at least \d+ ids"):
    Pipeline(pu.tiny_config(tokenizer__vocab_size=8), str(tmp_path / "v")).run("tokenizer")
  data = tmp_path / "data"
  for task, names in (("math", ("test.jsonl", "train_reconstructed.jsonl")),):
    os.makedirs(data / task)
    row = json.dumps({"problem": "1+1?", "solution": "$\\boxed{2}$", "answer": "2"})
    (data / task / names[1]).write_text(row + "\n")
    (data / task / names[0]).write_text(row + "\n" + row[:20])  # cut mid-line
  c = tasks.default_config("math")
  c.data_dir = str(data)
  with pytest.raises(ValueError, match=r"test.jsonl line 2 is not a JSON object .* truncated"):
    tasks.build(c).num_examples("test")
  from ttc_jax.tokenizers.hf import HFTokenizer
  from ttc_jax.tokenizers.hf import TokenizerError
  garbled = tmp_path / "tok"
  garbled.mkdir()
  (garbled / "tokenizer.json").write_bytes(b'{"version": "1.0", "model": {"ty\x00\x01')
  with pytest.raises(TokenizerError, match=r"tokenizer.json is not a Hugging Face tokenizer"):
    HFTokenizer.load(str(garbled))
  (garbled / "tokenizer_config.json").write_text("{not json")
  with pytest.raises(TokenizerError, match=r"tokenizer_config.json is not valid JSON"):
    HFTokenizer.load(str(garbled))


def test_a_training_set_smaller_than_a_batch_names_its_key(tmp_path):
  from ttc_jax.models.transformer import Transformer
  from ttc_jax.training import data as data_lib
  from ttc_jax.training import trainer
  from conftest import policy_config
  from flax import nnx
  tokens = np.ones((3, 8), np.int32)
  dataset = data_lib.TokenDataset(tokens=tokens, valid=np.ones_like(tokens, bool),
                                  weights=np.ones(tokens.shape, np.float32))
  cfg = pu.tiny_config().revision_model.train
  with pytest.raises(trainer.TooFewRows, match=r"revision_model: 3 training rows, fewer than "
                                               r"revision_model.train.batch_size=8"):
    trainer.train(Transformer(policy_config(), rngs=nnx.Rngs(0)), dataset, cfg,
                  str(tmp_path), objective="lm", name="revision_model")


# ---------------------------------------------------------------------------------------------
# 6, 9, 12, 13: kills, concurrent runs, stage processes
# ---------------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_a_missing_or_stale_latest_link_is_repaired(study):
  """Item 6: a kill between the "done" record and the latest link left latest missing or on
  an older artifact for ever."""
  link = os.path.join(study, "difficulty", "latest")
  target = os.readlink(link)
  os.remove(link)
  lines = []
  Pipeline(pu.tiny_config(), study, log=lines.append).run("difficulty")
  assert os.readlink(link) == target and any("latest repaired" in l for l in lines)
  # On an artifact that finished earlier (another config's): repaired too.
  older = os.path.join(study, "difficulty", "older")
  shutil.copytree(os.path.join(study, "difficulty", target), older)
  rec = json.load(open(os.path.join(older, "stage.json")))
  rec["finished"] = "2000-01-01T00:00:00Z"
  with open(os.path.join(older, "stage.json"), "w") as f:
    json.dump(rec, f)
  os.remove(link)
  os.symlink("older", link)
  Pipeline(pu.tiny_config(), study, log=lines.append).run("difficulty")
  assert os.readlink(link) == target


@pytest.mark.e2e
def test_one_run_writes_a_workdir(study, tmp_path):
  """Item 9: two processes on one workdir both crashed or did all the work twice."""
  # Another process holds the workdir's lock (an flock, as WorkdirLock takes it).
  holder = subprocess.Popen(
      [sys.executable, "-c", "import fcntl, json, os, sys, time; f = open(sys.argv[1], 'a+'); "
       "fcntl.flock(f, fcntl.LOCK_EX); f.truncate(0); json.dump({'pid': os.getpid(), 'host': "
       "'h', 'started': 's', 'command': 'c'}, f); f.flush(); print('held', flush=True); "
       "time.sleep(600)", os.path.join(study, workdir_lib.LOCK_FILE)],
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(workdir_lib.WorkdirBusy) as e:
      Pipeline(pu.tiny_config(), study).run("difficulty")
    assert f"pid {holder.pid}" in str(e.value) and "\n" not in str(e.value)
  finally:
    holder.kill()
    holder.wait()
  # The kernel released the lock of the killed holder: the next run goes on.
  Pipeline(pu.tiny_config(), study).run("difficulty")


@pytest.mark.e2e
def test_a_killed_jobs_run_leaves_no_stage_process(study, tmp_path):
  """Item 9: kill -9 of a --jobs=2 parent left its stage processes running as orphans."""
  for stage in ("prm", "orm", "verifier_eval"):
    shutil.rmtree(os.path.join(study, stage))
  marker = str(tmp_path / "held")
  proc = subprocess.Popen(pu.cli("verifier_eval", study, "--jobs=2"),
                          env=pu.held_env("stage:prm", marker),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  child = pu.kill_when(proc, marker)
  assert child != proc.pid  # the stage process held, not the parent
  deadline = time.monotonic() + 120  # a bound for a broken run, not a measurement
  while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
    with open(f"/proc/{child}/stat") as f:
      if f.read().split(")")[-1].split()[0] == "Z":  # exited (a zombie until reaped)
        break
    time.sleep(0.05)
  alive = os.path.exists(f"/proc/{child}") and open(
      f"/proc/{child}/stat").read().split(")")[-1].split()[0] != "Z"
  assert not alive, "the stage process outlived its killed parent"


def test_a_batch_that_does_not_split_over_the_training_devices_fails_before_anything(tmp_path):
  """Item 12: batch_size=7 with --jobs=2 failed late inside a stage process."""
  workdir = str(tmp_path / "w")
  config = pu.tiny_config(policy__train__batch_size=7)
  for run in (lambda p: p.run(), lambda p: jobs.run(p, "policy", 2)):
    with pytest.raises(ConfigError, match=r"policy.train.batch_size=7: expected a multiple of "
                                          r"the \d+ devices the trainer splits"):
      run(Pipeline(config, workdir))
    assert not os.path.exists(workdir)


@pytest.mark.e2e
def test_temporaries_of_a_killed_run_are_removed(study):
  """Item 13: killed runs left temporary files (and a partial data copy) behind."""
  prm = _latest(study, "prm")
  stale = [os.path.join(prm, "checkpoints", "9.orbax-checkpoint-tmp-123"),
           os.path.join(study, "data", "incomplete.ABC123_1.0.0"),
           os.path.join(_latest(study, "mc_labels"), "labels-00001.npz.tmp-4242"),
           os.path.join(study, "report", "latest.tmp-77")]
  os.makedirs(stale[0])
  os.makedirs(stale[1])
  open(stale[2], "w").close()
  os.symlink("nowhere", stale[3])
  lines = []
  Pipeline(pu.tiny_config(), study, log=lines.append).run("report")
  assert not any(os.path.lexists(p) for p in stale)
  assert any("removed 4 temporary file(s) of a stopped run" in l for l in lines), lines


# ---------------------------------------------------------------------------------------------
# 11: a full disk
# ---------------------------------------------------------------------------------------------
def test_orbax_thread_copies_of_a_write_error_are_not_logged():
  """Item 11: a full disk during a checkpoint printed ~300 lines and 7 tracebacks before the
  one line (orbax's writer threads log the exception its caller then raises)."""
  from ttc_jax.progress import _LibraryInfoFilter
  import orbax.checkpoint
  orbax_dir = os.path.dirname(orbax.checkpoint.__file__)
  record = logging.LogRecord(
      "absl", logging.ERROR, os.path.join(orbax_dir, "_src", "futures", "future.py"), 387,
      "[process=%d][thread=%s][operation_id=%s] _SignalingThread.run() raised an exception: %s",
      (0, "array_type_handler", 1, "RESOURCE_EXHAUSTED"), None)
  assert not _LibraryInfoFilter().filter(record)
  other = logging.LogRecord("absl", logging.ERROR, "/x/ttc_jax/pipeline/cli.py", 1,
                            "CheckpointError: could not write", (), None)
  assert _LibraryInfoFilter().filter(other)
