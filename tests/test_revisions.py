"""Revision training data: the task's revision prompt and the trajectories (paper section 6.1)."""

import collections
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import pipeline_utils as pu
from conftest import assert_close
from ttc_jax import tasks
from ttc_jax.pipeline import Pipeline
from ttc_jax.sampling import utilization
from ttc_jax.training import revisions

pytestmark = pytest.mark.e2e


def _edit_distance(a: str, b: str) -> int:
  """Plain dynamic-programming Levenshtein distance (the reference for rapidfuzz's)."""
  row = list(range(len(b) + 1))
  for i, ca in enumerate(a, 1):
    prev, row[0] = row[0], i
    for j, cb in enumerate(b, 1):
      prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
  return row[-1]


# A policy trained long enough on one-operation problems to answer some of them right
# (the shared tiny study's policy answers none, so trajectories would be vacuous).
# Its samples for the LM-head verifiers (16 problems x 8) hold problems answered both right and
# wrong: the implicit PRM and DPO train on them.
TRAINED = dict(task__max_ops=1, policy__train__steps=240, policy__train__checkpoint_every=120,
               policy__train__log_every=60, large_policy__train__checkpoint_every=120,
               large_policy__train__log_every=60, revision_data__samples_per_problem=8,
               stages__implicit_prm="implicit_prm", stages__dpo="dpo", stages__sft_lm="sft_lm")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """The trained tiny policy, its revision data and revision model (built once per
  session, shared by the xdist workers; copy it before changing it)."""
  return pu.shared_workdir(
      tmp_path_factory, "revision_trained",
      lambda workdir: Pipeline(pu.tiny_config(**TRAINED), workdir).run("revision_model"))


@pytest.fixture(scope="module")
def task():
  return tasks.build(tasks.default_config("arith"))


def test_the_revision_prompt_holds_the_attempts_between_two_questions(task):
  p = task.get("train", 5)
  assert task.format_revision_prompt(p, []) == task.format_prompt(p)
  a, b = "1+2=3\nAnswer: 3", "1+2=4\nAnswer: 4"
  text = task.format_revision_prompt(p, [a, b])
  q = task.format_prompt(p)
  assert text == q + a + "\n" + b + "\n" + q
  # Only characters of the task's own corpus: a tokenizer trained on it encodes the prompt.
  corpus = set("".join(task.corpus("train", 200)))
  assert set(text) <= corpus | set(a + b)


def test_attempts_are_the_closest_incorrect_answers_farthest_first():
  texts = ["12+3=15\nAnswer: 15",  # 0 right
           "12+3=16\nAnswer: 16",  # 1 close
           "12+3=15\nAnswer: 16",  # 2 closest
           "99*9=891\nAnswer: 891",  # 3 far
           "12-3=9\nAnswer: 9"]  # 4 middle
  wrong = [1, 2, 3, 4]
  dist = {w: _edit_distance(texts[0], texts[w]) for w in wrong}
  for k in range(5):
    got = revisions.closest_incorrect(texts, 0, wrong, k)
    want = sorted(wrong, key=lambda w: (dist[w], w))[:k][::-1]
    assert list(got) == want, (k, dist)
  assert revisions.closest_incorrect(texts, 0, [], 3) == ()
  # Ties: the lower sample index counts as closer.
  assert revisions.closest_incorrect(["ab", "xb", "ax"], 0, [2, 1], 1) == (1,)


def test_trajectories_follow_the_paper_and_skip_problems_without_a_right_answer():
  rng = np.random.default_rng(0)
  texts, correct = [], []
  for p in range(30):
    answers = [f"{p}+{i}={p + i}\nAnswer: {p + i}" for i in range(12)]
    right = rng.random(12) < (0.0 if p % 5 == 0 else 0.3)
    texts.append(answers)
    correct.append(right)
  rngs = [np.random.default_rng([7, p]) for p in range(30)]
  trajs, stats = revisions.build_trajectories(texts, correct, rngs, per_problem=20)
  no_right = sum(1 for c in correct if not c.any())
  assert stats["without_correct"] == no_right >= 6
  assert stats["trajectories"] == len(trajs) == 20 * (30 - no_right)
  assert sum(stats["attempts_histogram"]) == len(trajs)
  for t in trajs:
    assert correct[t.problem][t.target]
    bad = np.flatnonzero(~correct[t.problem])
    assert len(t.attempts) <= min(4, len(bad))
    assert all(not correct[t.problem][a] for a in t.attempts)
    assert t.attempts == revisions.closest_incorrect(texts[t.problem], t.target, bad,
                                                     len(t.attempts))
  # Every k from 0 to 4 occurs, near uniformly where enough wrong answers exist.
  ks = collections.Counter(len(t.attempts) for t in trajs
                           if (~correct[t.problem]).sum() >= 4)
  assert set(ks) == set(range(5))
  total = sum(ks.values())
  for k in range(5):
    assert abs(ks[k] / total - 0.2) < 0.06, ks
  # A problem's trajectories depend only on its own answers and generator.
  one, _ = revisions.build_trajectories(texts[3:4], correct[3:4],
                                        [np.random.default_rng([7, 3])], per_problem=20)
  assert [(t.attempts, t.target) for t in one] == [
      (t.attempts, t.target) for t in trajs if t.problem == 3]


def test_keep_trajectories_show_the_correct_answer_they_keep(task):
  """Issue 27, item 1: a share keep_rate of the trajectories hold their correct target in
  context (the last attempt shown) before writing it again; the others are the paper's."""
  rng = np.random.default_rng(1)
  texts, correct = [], []
  for p in range(30):
    texts.append([f"{p}+{i}={p + i}\nAnswer: {p + i}" for i in range(12)])
    correct.append(rng.random(12) < 0.3)
  correct[0][:] = False  # no correct answer: no trajectory, keep or not
  gens = lambda: [np.random.default_rng([7, p]) for p in range(30)]
  paper, _ = revisions.build_trajectories(texts, correct, gens(), per_problem=20)
  again, stats = revisions.build_trajectories(texts, correct, gens(), per_problem=20,
                                              keep_rate=0.0)
  assert again == paper and stats["keep_trajectories"] == 0
  trajs, stats = revisions.build_trajectories(texts, correct, gens(), per_problem=20,
                                              keep_rate=0.4)
  keeps = [t for t in trajs if t.keep]
  assert stats["keep_trajectories"] == len(keeps) and len(trajs) == len(paper)
  assert abs(len(keeps) / len(trajs) - 0.4) < 0.06, len(keeps)
  for t in trajs:
    assert correct[t.problem][t.target] and t.problem != 0
    wrong = t.attempts[:-1] if t.keep else t.attempts
    assert all(not correct[t.problem][a] for a in wrong)
    bad = np.flatnonzero(~correct[t.problem])
    assert wrong == revisions.closest_incorrect(texts[t.problem], t.target, bad, len(wrong))
  # Its revision prompt shows the correct answer it is trained to write.
  problems = [task.get("train", i) for i in range(30)]
  for t, (*pieces, target) in zip(keeps, revisions.revision_texts(task, problems, texts, keeps)):
    assert pieces[-2] == target + task.step_delimiter and target == texts[t.problem][t.target]
  with pytest.raises(ValueError, match="keep_rate=1.5"):
    revisions.build_trajectories(texts, correct, gens(), per_problem=1, keep_rate=1.5)


def test_policy_rows_are_the_policy_s_sft_rows_at_their_share(task):
  problems = [task.get("train", i) for i in range(3)]
  rows = revisions.policy_rows(task, problems, trajectories=9, share=0.25)
  assert len(rows) == 3 and len(rows) / (len(rows) + 9) == 0.25
  assert rows == [(task.format_prompt(p), p.solution) for p in problems]
  assert len(revisions.policy_rows(task, problems, trajectories=12, share=0.5)) == 12
  assert revisions.policy_rows(task, problems, trajectories=12, share=0.0) == []
  with pytest.raises(ValueError, match="share=1"):
    revisions.policy_rows(task, problems, trajectories=12, share=1)


def test_retry_rows_show_erroneous_attempts_then_the_correction(task):
  """Retry data for the policy's SFT mix: a drawn share of the problems, each row the revision
  prompt with 1..max_attempts of the task's erroneous solutions, then the reference."""
  problems = [task.get("train", i) for i in range(400)]
  rows = revisions.retry_rows(task, problems, rate=0.25, max_attempts=2, seed=0)
  assert 70 < len(rows) < 130  # a quarter, drawn per problem
  # A problem's row depends on (seed, problem) only: not on the others, nor their order.
  each = [revisions.retry_rows(task, [p], rate=0.25, max_attempts=2, seed=0) for p in problems]
  assert rows == [r for e in each for r in e]
  assert revisions.retry_rows(task, problems[::-1][:150], rate=0.25, max_attempts=2,
                              seed=0) == [r for e in each[::-1][:150] for r in e]
  shown = collections.Counter()
  for p, e in zip(problems, each):
    for row in e:
      *prompt, target = row
      attempts = [a[:-len(task.step_delimiter)] for a in prompt[1:-1]]
      assert prompt[0] == prompt[-1] == task.format_prompt(p) and target == p.solution
      assert 1 <= len(attempts) <= 2
      for a in attempts:
        assert task.first_wrong_step(a, p) is not None and not task.is_correct(a, p)
      assert tuple(prompt) == tuple(task.revision_prompt_pieces(p, attempts))
      shown[len(attempts)] += 1
  assert set(shown) == {1, 2}
  assert revisions.retry_rows(task, problems, rate=0.25, max_attempts=2, seed=1) != rows
  assert len(revisions.retry_rows(task, problems[:10], rate=1.0, max_attempts=3, seed=0)) == 10
  assert revisions.retry_rows(task, problems, rate=0.0, max_attempts=2, seed=0) == []
  with pytest.raises(ValueError, match="is not a train problem"):
    revisions.retry_rows(task, [task.get("test", 0)], rate=1.0, max_attempts=2, seed=0)
  import heldout_task  # pylint: disable=g-import-not-at-top
  other = heldout_task.ModSum()
  with pytest.raises(ValueError, match="cannot write erroneous solutions"):
    revisions.retry_rows(other, [other.get("train", 0)], rate=0.5, max_attempts=2, seed=0)


def test_revision_texts_window_the_last_attempts(task):
  problems = [task.get("train", i) for i in range(2)]
  texts = [[f"a{i}\nAnswer: {i}" for i in range(6)], ["b\nAnswer: 1"]]
  trajs = [revisions.Trajectory(problem=0, attempts=(1, 2, 3, 4, 5), target=0),
           revisions.Trajectory(problem=1, attempts=(), target=0)]
  (*p0, t0), (*p1, t1) = revisions.revision_texts(task, problems, texts, trajs, window=4)
  shown = [texts[0][i] for i in (2, 3, 4, 5)]
  assert "".join(p0) == task.format_revision_prompt(problems[0], shown)
  assert p0 == task.revision_prompt_pieces(problems[0], shown) and len(p0) == 6
  assert t0 == texts[0][0]
  assert p1 == [task.format_prompt(problems[1])] and t1 == texts[1][0]


def test_bad_input_is_named():
  with pytest.raises(ValueError, match="one entry per problem"):
    revisions.build_trajectories([["a"]], [], [], per_problem=1)
  with pytest.raises(ValueError, match="problem 0: 2 answers but 1 correctness"):
    revisions.build_trajectories([["a", "b"]], [[True]], [np.random.default_rng(0)],
                                 per_problem=1)
  with pytest.raises(ValueError, match="per_problem=0"):
    revisions.build_trajectories([["a"]], [[True]], [np.random.default_rng(0)], per_problem=0)


def test_the_revision_data_stage_is_resumable_and_does_not_depend_on_its_shards(
    trained, tmp_path):
  workdir = str(tmp_path / "w")
  shutil.copytree(trained, workdir, symlinks=True)
  pipe = Pipeline(pu.tiny_config(**TRAINED), workdir)
  rd = pipe.load("revision_data")
  task, tok = pipe.load("data").task, pipe.load("policy").tokenizer
  k = rd.samples_per_problem
  assert len(rd.problem_index) == 8 and rd.samples.tokens.shape[0] == 8 * k
  texts = rd.texts(tok)
  problems = [task.get("train", int(i)) for i in rd.problem_index]
  per = rd.correct.reshape(8, k)
  assert per.any(), "the trained tiny policy should answer some problems right"
  # Grading and trajectories follow the stored answers: targets right, attempts wrong.
  for p in range(8):
    for s in range(k):
      assert per[p, s] == (bool(rd.samples.stopped[p * k + s])
                           and task.is_correct(texts[p][s], problems[p]))
  assert len(rd.trajectories) == 3 * int(per.any(1).sum()) > 0
  for t in rd.trajectories:
    wrong = t.attempts[:-1] if t.keep else t.attempts  # a keep trajectory shows its target
    assert per[t.problem, t.target] and not any(per[t.problem, a] for a in wrong)
  # A killed run resumes from its shards; one shard per problem gives the same data.
  shard = os.path.join(pipe.directory("revision_data"), "revisions-00001.npz")
  assert os.path.exists(shard)
  os.remove(shard)
  os.remove(os.path.join(pipe.directory("revision_data"), "stage.json"))
  again = Pipeline(pu.tiny_config(**TRAINED), workdir).run("revision_data")
  one = Pipeline(pu.tiny_config(**TRAINED, revision_data__problems_per_shard=1), workdir).run(
      "revision_data")
  for other in (again, one):
    assert [other.samples.row(i) for i in range(8 * k)] == [rd.samples.row(i)
                                                            for i in range(8 * k)]
    assert other.trajectories == rd.trajectories


def test_the_revision_model_learns_only_the_answer_after_its_attempts(trained, tmp_path):
  from ttc_jax.training import data as data_lib
  workdir = str(tmp_path / "w")
  shutil.copytree(trained, workdir, symlinks=True)
  pipe = Pipeline(pu.tiny_config(**TRAINED), workdir)
  model = pipe.run("revision_model")
  assert model.config.max_seq_len == 192 and model.config.head == "lm"
  policy = pipe.load("policy")
  assert model.config.num_params() == policy.config.num_params()
  # The policy's own rows make revision_model.policy_rows (0.25) of its rows (round 0).
  made = model.description["made_by"]["data"]
  assert made["policy_rows"] == round(made["trajectories"] / 3) > 0
  # Each round's checkpoint is chosen among its steps 3 and 6 by chains on held-out train
  # problems 12-15; the artifact holds the last round's chosen step's parameters.
  rounds = made["rounds"]
  assert [r["round"] for r in rounds] == [0, 1]
  for r in rounds:
    choice = r["checkpoint_choice"]
    assert [c["step"] for c in choice["curve"]] == [3, 6] and choice["problems"] == [12, 16]
    assert all(len(c["accuracy_by_answer"]) == 2 and 0 <= c["correct_to_incorrect"] <= 1
               for c in choice["curve"])
  choice = model.description["made_by"]["checkpoint_choice"]
  assert choice == rounds[1]["checkpoint_choice"]
  best = max(choice["curve"], key=lambda r: (r["accuracy_by_answer"][-1], r["step"]))
  assert model.description["checkpoint"] == {"dir": "round1/chosen", "step": best["step"]}
  from ttc_jax.models import checkpoints
  kept = checkpoints.restore_params(os.path.join(model.path, "round1", "checkpoints"),
                                    checkpoints.abstract_model(model.config), step=best["step"],
                                    any_step=True)
  import jax
  for a, b in zip(jax.tree.leaves(nnx.state(kept, nnx.Param)),
                  jax.tree.leaves(nnx.state(model.model, nnx.Param))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Then the revision temperature, by the chosen model's chains on the same held-out train
  # problems (at the sampling temperature, 1.0: the checkpoint choice's own record); the
  # chains of every later stage run at it (chain_strategy).
  from ttc_jax.pipeline.stages import revisions as stage
  temp = model.description["made_by"]["temperature_choice"]
  assert [c["temperature"] for c in temp["curve"]] == [1.0, 0.5, 0.0]
  assert temp["problems"] == [12, 16]
  record = next(c for c in choice["curve"] if c["step"] == best["step"])
  assert {k: temp["curve"][0][k] for k in record if k != "step"} == {
      k: v for k, v in record.items() if k != "step"}
  accs = [c["accuracy_by_answer"][-1] for c in temp["curve"]]
  assert temp["temperature"] == [1.0, 0.5, 0.0][accs.index(max(accs))]
  assert model.description["made_by"]["revision_temperature"] == temp["temperature"]
  strategy = stage.chain_strategy(model, (4, 2))
  assert strategy.revision_temperature == temp["temperature"] and strategy.window == 4
  # The loss covers the target and EOS only, never the question or the attempts.
  tok = policy.tokenizer
  prompt_text = "2 +3\n2+3=6\nAnswer: 6\n2 +3\n"
  ds = data_lib.prompt_target_dataset(tok, [(prompt_text, "2+3=5\nAnswer: 5")], 64)
  prompt = len(tok.encode(prompt_text)) + 1  # + BOS
  row = ds.valid[0].sum()
  assert ds.weights[0, :prompt].sum() == 0 and ds.weights[0, prompt:row].all()
  assert ds.weights[0, row:].sum() == 0
  # Without a choice (choice.num_problems=0) nor rounds, the final step is the model, from
  # checkpoints/.
  final = Pipeline(pu.tiny_config(**TRAINED, revision_model__choice__num_problems=0,
                                  revision_model__rounds__count=0), workdir).run("revision_model")
  assert final.description["checkpoint"] == {"dir": "checkpoints", "step": 6}
  assert final.description["made_by"]["checkpoint_choice"] is None
  assert final.description["made_by"]["revision_temperature"] == 1.0  # the first, unmeasured
  assert not os.path.exists(os.path.join(final.path, "chosen"))
  # A context shorter than the policy's is named before anything runs.
  with pytest.raises(Exception, match=r"revision_model.max_seq_len=40: expected an integer "
                                      r">= 64"):
    Pipeline(pu.tiny_config(**TRAINED, revision_model__max_seq_len=40), workdir).run(
        "revision_model")


def test_an_on_policy_round_trains_on_the_revision_model_s_own_chains(trained, tmp_path):
  """Round 1's data are the chains of round 0's model (by its parameter digest, and token for
  token when rerun with its keys); its trajectories hold its own right and wrong answers;
  a round killed mid-way resumes to the same data and the same model."""
  import jax
  from ttc_jax.models import checkpoints
  from ttc_jax.pipeline.stage import sampling_params
  from ttc_jax.pipeline.stages import revisions as stage
  from ttc_jax.sampling.core import SamplingCore
  from ttc_jax.search import revisions as chains_lib
  workdir = str(tmp_path / "w")
  shutil.copytree(trained, workdir, symlinks=True)
  config = pu.tiny_config(**TRAINED)
  pipe = Pipeline(config, workdir)
  model, policy, task = pipe.load("revision_model"), pipe.load("policy"), pipe.load("data").task
  round1 = model.description["made_by"]["data"]["rounds"][1]["own_data"]
  first = checkpoints.restore_params(os.path.join(model.path, "chosen"),
                                     checkpoints.abstract_model(model.config))
  assert round1["sampled_by"] == checkpoints.params_digest(first)
  assert round1["sampled_by"] != checkpoints.params_digest(model.model)
  assert round1["shards"] == stage.round_shards(1, round1["sampled_by"])
  own = stage.load_round_data(model.path, round1["shards"])
  assert own.problem_index.tolist() == list(range(8)) and own.samples_per_problem == 4
  # Rerun with round 0's model and the round's keys: the same answers, token for token.
  problems = [task.get("train", i) for i in range(8)]
  sp = sampling_params(config)
  pcs = chains_lib.run_chains(chains_lib.RevisionChains(lengths=(2, 2), window=4),
                              SamplingCore(first, policy.special_ids), policy.tokenizer, task,
                              problems, seed=config.seed, stream="revision_rounds", sp=sp, run=1)
  gens, correct, k = chains_lib.answer_pool(pcs, sp.max_new_tokens, policy.tokenizer.pad_id)
  assert k == 4
  assert [gens.row(i) for i in range(32)] == [own.samples.row(i) for i in range(32)]
  np.testing.assert_array_equal(correct, own.correct)
  # Trajectories: a right target after its own wrong answers (a keep one shows the target).
  per = own.correct.reshape(8, 4)
  assert len(own.trajectories) == (config.revision_model.rounds.trajectories_per_problem
                                   * int(per.any(1).sum()))
  for t in own.trajectories:
    wrong = t.attempts[:-1] if t.keep else t.attempts
    assert per[t.problem, t.target] and not any(per[t.problem, a] for a in wrong)
  # Killed in round 1 (its second shard and its training lost): the same data and model.
  os.remove(os.path.join(model.path, round1["shards"] + "-00001.npz"))
  os.remove(os.path.join(model.path, "stage.json"))
  shutil.rmtree(os.path.join(model.path, "round1"))
  again = Pipeline(config, workdir).run("revision_model")
  again_own = stage.load_round_data(again.path, round1["shards"])
  assert [again_own.samples.row(i) for i in range(32)] == [own.samples.row(i)
                                                           for i in range(32)]
  assert again_own.trajectories == own.trajectories
  assert again.description["made_by"]["data"]["rounds"][1]["own_data"] == round1
  for a, b in zip(jax.tree.leaves(nnx.state(again.model, nnx.Param)),
                  jax.tree.leaves(nnx.state(model.model, nnx.Param))):
    assert_close(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------
# revision chains (inference)
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def revision_model(trained):
  return Pipeline(pu.tiny_config(**TRAINED), trained).load("revision_model")


def _chains(model, task, problems, lengths, rows_per_call, max_new_tokens=24, segment=None,
            seeds=None, revision_temperature=None, seed=3):
  from ttc_jax.sampling.core import SamplingParams
  from ttc_jax.search import revisions as chains_lib
  sp = SamplingParams(temperature=1.0, max_new_tokens=max_new_tokens)
  strategy = chains_lib.RevisionChains(lengths=lengths, window=4,
                                       revision_temperature=revision_temperature)
  return chains_lib.run_chains(strategy, model.sampling_core(), model.tokenizer, task, problems,
                               seed=seed, stream="revision_chains", sp=sp, run=1,
                               rows_per_call=rows_per_call, segment=segment, seeds=seeds)


def test_a_revision_temperature_applies_to_answers_written_after_others(trained, revision_model):
  """revision_temperature: a chain's first answer is sampled as before (same keys, same
  tokens); every later answer, and every answer of a seeded chain, at that temperature: at 0
  they are greedy, the same whatever the random seed."""
  from ttc_jax.search import revisions as chains_lib
  pipe = Pipeline(pu.tiny_config(**TRAINED), trained)
  task = pipe.load("data").task
  problems = pipe.load("data").problems("test", 6)
  texts = lambda pcs: [[a.text for a in chain] for pc in pcs for chain in pc.chains]  # noqa: E731
  plain = texts(_chains(revision_model, task, problems, (3,), rows_per_call=8))
  greedy = [texts(_chains(revision_model, task, problems, (3,), rows_per_call=8,
                          revision_temperature=0.0, seed=s)) for s in (3, 4)]
  assert [c[0] for c in greedy[0]] == [c[0] for c in plain]  # the first answers: untouched
  assert [c[0] for c in greedy[0]] != [c[0] for c in greedy[1]]  # (they depend on the seed)
  seeds = [[["1+1=2\nAnswer: 2", "9*9=80\nAnswer: 80"]] for _ in problems]
  seeded = [texts(_chains(revision_model, task, problems, (2,), rows_per_call=8, seeds=seeds,
                          revision_temperature=0.0, seed=s)) for s in (3, 4)]
  assert seeded[0] == seeded[1]  # every answer of a seeded chain revises: greedy
  sampled = [texts(_chains(revision_model, task, problems, (2,), rows_per_call=8, seeds=seeds,
                           seed=s)) for s in (3, 4)]
  assert sampled[0] != sampled[1]
  for bad in (-0.5, True, "0.5"):
    with pytest.raises(ValueError, match="revision_temperature="):
      chains_lib.RevisionChains(lengths=(2,), revision_temperature=bad)


def test_a_seeded_chain_revises_the_seed_and_counts_it_in_its_window(trained, revision_model):
  """Search then revise: a chain seeded with another model's answers shows them first (the
  window counts them) and writes its own after them; its budget counts the seeds only as
  prompt tokens; an unseeded chain beside it is the chain it would be alone."""
  pipe = Pipeline(pu.tiny_config(**TRAINED), trained)
  task, tok = pipe.load("data").task, revision_model.tokenizer
  problems = pipe.load("data").problems("test", 2)
  seeds = [[["1+1=2\nAnswer: 2", "9*9=80\nAnswer: 80", "3-1=2\nAnswer: 2"], []]
           for _ in problems]
  out = _chains(revision_model, task, problems, (3, 2), rows_per_call=8, seeds=seeds)
  plain = _chains(revision_model, task, problems, (3, 2), rows_per_call=8)
  for pc, ref, p, seed in zip(out, plain, problems, seeds):
    chain = pc.chains[0]
    for step, a in enumerate(chain):
      shown = (seed[0] + [x.text for x in chain[:step]])[-4:]
      assert a.prompt == revisions.encode_revision_prompt(tok, task, p, shown)
    assert chain[2].prompt == revisions.encode_revision_prompt(
        tok, task, p, seed[0][1:] + [chain[0].text, chain[1].text])  # the window slid
    # The unseeded chain: the same as without any seed anywhere.
    assert [a.tokens for a in pc.chains[1]] == [a.tokens for a in ref.chains[1]]
    assert pc.policy_tokens() == len(pc.prefix) + sum(
        a.extension_tokens + len(a.tokens) for ch in pc.chains for a in ch)
  with pytest.raises(ValueError, match="seeds: expected one list of seed texts per chain"):
    _chains(revision_model, task, problems, (3, 2), rows_per_call=8, seeds=[[[]]] * 2)


def test_revision_chains_slide_their_window_and_match_one_answer_at_a_time(
    trained, revision_model):
  """Each answer is what the model writes, alone, after the revision prompt showing exactly
  the chain's last 4 answers (same key); the budget counts the shared prefix once and each
  answer's extension and tokens."""
  from ttc_jax.sampling import streams
  from ttc_jax.sampling.core import SamplingParams
  from ttc_jax.sampling.solutions import left_pad
  pipe = Pipeline(pu.tiny_config(**TRAINED), trained)
  data = pipe.load("data")
  task, tok = data.task, revision_model.tokenizer
  problems = data.problems("test", 3)
  lengths = (6, 2, 1)
  out = _chains(revision_model, task, problems, lengths, rows_per_call=4)
  core = revision_model.sampling_core()
  sp = SamplingParams(temperature=1.0, max_new_tokens=24)
  for pc, p in zip(out, problems):
    assert [len(ch) for ch in pc.chains] == list(lengths)
    assert pc.prefix == tok.encode(task.format_prompt(p), bos=True)
    expected_tokens = len(pc.prefix)
    for c, chain in enumerate(pc.chains):
      for step, a in enumerate(chain):
        shown = [x.text for x in chain[max(0, step - 4):step]]
        assert a.prompt == revisions.encode_revision_prompt(tok, task, p, shown)
        assert a.prompt[:len(pc.prefix)] == pc.prefix
        if step == 5:  # the window slid: answer 0 is no longer shown
          assert tok.decode(a.prompt) == task.format_revision_prompt(p, shown)
          assert len(shown) == 4 and shown == [x.text for x in chain[1:5]]
        keys = streams.keys(3, "revision_chains", [streams.split_id(p.split)], [p.index], [c],
                            step, 1)
        width = -(-len(a.prompt) // 64) * 64  # left-padded: a few compiled shapes
        tokens, valid = left_pad([a.prompt], width, tok.pad_id)
        ref = core.generate(tokens, valid, keys, sp)
        n = int(ref.lengths[0])
        assert a.tokens == np.asarray(ref.tokens)[0, :n].tolist(), (p.uid, c, step)
        # Its confidence (what flat_conf / hier_conf read) is the sampled tokens' own.
        assert a.token_stats.shape == (n, 3)
        assert_close(a.token_stats, ref.token_stats(n)[0])
        assert a.finished == bool(ref.stopped[0])
        assert a.extension_tokens == len(a.prompt) - len(pc.prefix)
        assert a.correct == (a.finished and task.is_correct(a.text, p))
        expected_tokens += len(a.prompt) - len(pc.prefix) + n
    assert pc.policy_tokens() == expected_tokens
    assert pc.policy_tokens(1, 2) == len(pc.prefix) + sum(
        a.extension_tokens + len(a.tokens) for a in pc.chains[0][:2])


def test_revision_chains_do_not_depend_on_the_batch(trained, revision_model):
  """A problem's chains are the same alone or with others, in calls of any size, and a
  shorter run is a prefix of a longer one."""
  pipe = Pipeline(pu.tiny_config(**TRAINED), trained)
  data = pipe.load("data")
  problems = data.problems("test", 4)
  many = _chains(revision_model, data.task, problems, (3, 2, 1, 1), rows_per_call=3)
  utilization.take()
  alone = _chains(revision_model, data.task, problems[2:3], (3, 1), rows_per_call=512)
  meter = utilization.take()  # its calls of 2, 1 and 1 rows padded to 8: idle row-steps
  assert meter.calls == 3 and 0 < meter.idle_steps <= meter.row_steps - meter.alive_steps
  assert meter.idle_steps >= 6 * 1 + 7 * 2  # each call runs at least one step
  toks = lambda chain: [a.tokens for a in chain]  # noqa: E731
  assert toks(alone[0].chains[0]) == toks(many[2].chains[0])
  assert toks(alone[0].chains[1]) == toks(many[2].chains[1])[:1]
  # Continuous batching (3 slots refilled every 5 steps): the same answers, log-probs and
  # budget records.
  utilization.take()
  served = _chains(revision_model, data.task, problems, (3, 2, 1, 1), rows_per_call=3,
                   segment=5)
  meter = utilization.take()  # one queue across the steps: its calls are its segments
  assert meter.alive_steps == sum(len(a.tokens) for pc in served for chain in pc.chains
                                  for a in chain)
  assert meter.alive_steps + meter.idle_steps <= meter.row_steps
  for a_pc, b_pc in zip(served, many):
    for a_chain, b_chain in zip(a_pc.chains, b_pc.chains):
      assert toks(a_chain) == toks(b_chain)
      for a, b in zip(a_chain, b_chain):
        assert (a.prompt, a.correct, a.extension_tokens) == (b.prompt, b.correct,
                                                             b.extension_tokens)
        assert_close(a.token_stats, b.token_stats)
  # With a revision temperature: one queue for the first answers, one for the revisions.
  greedy = [_chains(revision_model, data.task, problems, (3, 2, 1, 1), rows_per_call=rows,
                    segment=segment, revision_temperature=0.0)
            for rows, segment in ((512, None), (3, 2))]
  assert [[toks(c) for c in pc.chains] for pc in greedy[0]] == [
      [toks(c) for c in pc.chains] for pc in greedy[1]]


@given(st.integers(1, 5000), st.sampled_from([1, 3, 8, 16, 100, 512]))
@settings(max_examples=200, deadline=None)
def test_a_step_s_rows_are_cut_into_calls_of_power_of_two_sizes(n, most):
  from ttc_jax.search.revisions import call_sizes
  sizes = call_sizes(n, most)
  assert sum(sizes) == n and max(sizes) <= most
  assert sizes == sorted(sizes, reverse=True)
  # Every call but a last one of fewer than 8 rows is a power of two (few compiled shapes,
  # no padding rows).
  full = [x for x in sizes if x >= 8]
  assert all(x & (x - 1) == 0 for x in full)
  assert sum(x < 8 for x in sizes) <= 1 or most < 8


def test_a_revision_prompt_past_the_context_is_named(trained, revision_model):
  import dataclasses
  pipe = Pipeline(pu.tiny_config(**TRAINED), trained)
  data = pipe.load("data")
  p = data.problems("test", 1)[0]
  long = dataclasses.replace(p, question=" + ".join(["1"] * 120))
  with pytest.raises(ValueError, match=rf"problem {p.uid}, chain 0, revision 0: the revision "
                                       r"prompt has \d+ tokens; the revision model's context "
                                       r"is 192 tokens"):
    _chains(revision_model, data.task, [p, long], (2,), rows_per_call=8)


# ----------------------------------------------------------------------------
# the revision stages, the revision report and the study
# ----------------------------------------------------------------------------
# The search part of that study cut to what the revision report compares with.
STUDY = dict(search__methods=("best_of_n", "beam"), ablation__variants=())


@pytest.fixture(scope="module")
def revision_study(trained, tmp_path_factory):
  """The whole study (search and revisions) on the trained tiny policy (built once per
  session)."""
  def build(workdir):
    shutil.copytree(trained, workdir, symlinks=True)
    Pipeline(pu.tiny_config(**TRAINED, **STUDY), workdir).run("study")

  return pu.shared_workdir(tmp_path_factory, "revision_study", build)


def _latest(workdir, stage, name):
  import json
  with open(os.path.join(workdir, stage, "latest", name)) as f:
    return json.load(f)


def test_no_test_problem_reaches_the_revision_model_or_its_orm(revision_study):
  pipe = Pipeline(pu.tiny_config(**TRAINED), revision_study)
  data = pipe.load("data")
  test_questions = {p.question for p in data.problems("test")}
  rd = pipe.load("revision_data")
  train = [data.task.get("train", int(i)) for i in rd.problem_index]
  assert all(p.split == "train" for p in train)
  pairs = revisions.revision_texts(data.task, train, rd.texts(pipe.load("policy").tokenizer),
                                   rd.trajectories)
  assert pairs and not {pair[0] for pair in pairs} & {data.task.format_prompt(p)
                                                       for p in data.problems("test")}
  # The on-policy rounds' chains and every checkpoint choice ran on train problems too.
  from ttc_jax.pipeline.stages import revisions as stage
  model = pipe.load("revision_model")
  for r in model.description["made_by"]["data"]["rounds"]:
    lo, hi = r["checkpoint_choice"]["problems"]
    assert not {data.task.get("train", i).question for i in range(lo, hi)} & test_questions
    if r["own_data"]:
      own = stage.load_round_data(model.path, r["own_data"]["shards"])
      assert set(own.problem_index.tolist()) <= set(rd.problem_index.tolist())
  orm = pipe.load("revision_orm")
  made = orm.description["made_by"]
  assert made["revision_model"] == pipe.load("revision_model").identity and made["window"] == 4
  # The ORM's chains ran on train problems after the revision model's.
  cfg = pu.tiny_config(**TRAINED).revision_orm
  assert cfg.first_problem >= len(rd.problem_index)
  shards = [f for f in os.listdir(pipe.directory("revision_orm")) if f.startswith("answers-")]
  from ttc_jax.pipeline import store
  for f in shards:
    idx = store.load_npz(os.path.join(pipe.directory("revision_orm"), f))["problem_index"]
    assert idx.min() >= cfg.first_problem and idx.max() < cfg.first_problem + cfg.num_problems
    assert not {data.task.get("train", int(i)).question for i in idx} & test_questions
  # The revision gate's threshold is chosen on exactly these train chains.
  gate = _latest(revision_study, "revision_report", "revisions.json")["gated"]["gate"]
  assert gate["train_chains"] == cfg.num_problems * cfg.chains and gate["length"] == cfg.length


def test_lm_head_verifiers_train_on_train_samples_and_are_scored_beside_the_others(
    revision_study):
  """The implicit PRM and the DPO verifier are fine-tunes of the study's policy on its
  samples of train problems (DPO: pairs of one problem's right and wrong answers); the
  verifier evaluation and the verifier choice score them beside the PRM."""
  pipe = Pipeline(pu.tiny_config(**TRAINED, **STUDY), revision_study)
  policy, ls = pipe.load("policy"), pipe.load("verifier_samples")
  for kind in ("implicit_prm", "dpo"):
    model = pipe.load(kind)
    made = model.description["made_by"]
    assert made["policy"] == policy.identity and made["beta"] > 0 and made["stage"] == kind
    assert model.config == policy.config  # the policy's architecture and LM head
    data = made["data"]
    assert data["samples"] == len(ls) and 0 < data["used_samples"] <= len(ls)
    assert data["examples"] > 0 and data["rows_per_example"] == (2 if kind == "dpo" else 1)
    if kind == "dpo":
      assert data["correct_rows"] == 0.5  # each pair: one right, one wrong answer
  # The likelihood verifier's LM: the policy trained further on reference solutions of the
  # train problems of its range (outside the verifier choice's and allocation's).
  sft = pipe.load("sft_lm")
  made = sft.description["made_by"]
  cfg = pu.tiny_config(**TRAINED, **STUDY)
  assert made["policy"] == policy.identity and made["aggregation"] == "mean"
  assert sft.config == policy.config
  assert made["data"]["problems"] == cfg.sft_lm.num_problems
  assert made["data"]["first_problem"] == cfg.sft_lm.first_problem
  assert cfg.sft_lm.first_problem >= (cfg.verifier_choice.first_problem
                                      + cfg.verifier_choice.num_problems
                                      + cfg.allocation.num_problems)
  ev = _latest(revision_study, "verifier_eval", "eval.json")
  assert {"implicit_prm", "dpo", "sft_lm"} <= set(ev["within_problem"])
  # What each costs: its model's training and FLOPs per token read in search (the policy's
  # confidence: none; the PRM's value head is cheaper than an LM head over the vocabulary).
  costs = _latest(revision_study, "verifier_eval", "costs.json")
  assert costs["policy_likelihood"] == {"model": "policy (with its samples)", "train_s": 0.0,
                                        "flops_per_token": 0.0}
  for name in ("prm_last", "orm", "implicit_prm", "dpo", "sft_lm"):
    assert costs[name]["train_s"] > 0 and costs[name]["flops_per_token"] > 0
  assert costs["dpo"]["flops_per_token"] > costs["prm_last"]["flops_per_token"]
  assert costs["sft_lm"]["flops_per_token"] == costs["dpo"]["flops_per_token"]
  assert costs["dpo"]["model"] == f"dpo {pipe.load('dpo').identity}"
  report_md = open(os.path.join(revision_study, "report", "latest", "report.md")).read()
  assert "| train s | FLOPs / token |" in report_md
  choice = _latest(revision_study, "verifier_choice", "choice.json")
  assert {"implicit_prm", "dpo", "sft_lm", "prm_last"} <= set(choice["ranking"])


def test_the_ensembles_are_fitted_on_train_problems_and_scored_on_test_problems(revision_study):
  """verifier_choice fits each base verifier with the policy's confidence on its held-out
  train samples (ranked by cross-validation there); verifier_eval scores every ensemble on
  the test problems from its components' test scores, charged as its base."""
  from ttc_jax.verifiers import ensemble
  choice = _latest(revision_study, "verifier_choice", "choice.json")
  assert set(choice["ensembles"]) == {"ens_conf", "ens_prm", "ens_implicit_prm", "ens_dpo",
                                      "ens_sft_lm"}
  for name, e in choice["ensembles"].items():
    assert e["components"][-2:] == ["conf_logprob_mean", "policy_likelihood"]
    assert choice["table"][name]["cross_validated"] == 5 and name in choice["ranking"]
  pipe = Pipeline(pu.tiny_config(**TRAINED, **STUDY), revision_study)
  scored = pipe.load("verifier_eval")["scored"]
  ev = _latest(revision_study, "verifier_eval", "eval.json")
  costs = _latest(revision_study, "verifier_eval", "costs.json")
  for name, e in choice["ensembles"].items():
    e = ensemble.Ensemble.from_json(e)
    np.testing.assert_allclose(scored[name], e.combine([scored[k] for k in e.components]))
    assert name in ev["within_problem"] and f"{name}/weighted vs majority" in ev["paired"]
  assert costs["ens_conf"]["flops_per_token"] == 0.0
  assert costs["ens_prm"]["flops_per_token"] == costs["prm_last"]["flops_per_token"] > 0
  assert costs["ens_dpo"]["flops_per_token"] == costs["dpo"]["flops_per_token"]


def test_a_planted_test_problem_stops_lm_verifier_training():
  from ttc_jax.pipeline import artifacts
  from ttc_jax.pipeline.stages import verifiers as stages_lib
  from ttc_jax.verifiers.labels import LabelledSamples
  task = tasks.build(tasks.default_config("arith"))
  planted = task.get("test", 3)
  ls = LabelledSamples(problem_index=np.array([3]), sample_index=np.array([0]),
                       rows=np.array([[1, 5, 6, 7]], np.int32), lengths=np.array([4]),
                       prompt_lengths=np.array([2]), step_ends=np.array([[3]], np.int32),
                       labels=np.array([[1.0]], np.float32), correct=np.array([True]))
  with pytest.raises(artifacts.ArtifactError, match=r"arith/test/3, not a train problem"):
    stages_lib.lm_verifier_data(ls, task, None, [planted], None, kind="dpo", max_pairs=1,
                                seed=0, batch_size=4, seq_len=16, log=print)


def test_a_planted_test_problem_stops_the_revision_data(task):
  """A test problem among the revision model's problems (its trajectories, on-policy rounds,
  checkpoint choice or the gate's chains) is an error naming it, before any training."""
  train, planted = task.get("train", 1), task.get("test", 3)
  texts = [["1+2=3\nAnswer: 3"], ["1+2=4\nAnswer: 4"]]
  trajs = [revisions.Trajectory(problem=1, attempts=(), target=0)]
  with pytest.raises(ValueError, match=r"revision data: arith/test/3 is not a train problem"):
    revisions.revision_texts(task, [train, planted], texts, trajs)
  with pytest.raises(ValueError, match=r"choice: arith/test/3 is not a train problem"):
    revisions.require_train([train, planted], "choice")
  revisions.require_train([train], "choice")  # train problems pass


def test_the_revision_answers_may_be_read_by_the_likelihood_verifier(revision_study, tmp_path):
  """revisions.verifier='sft_lm': every answer of the chains is scored by the likelihood
  verifier after the plain prompt (flat_prm's column), charged its model; the chains are the
  study's own (the same samples), the scores are not the PRM's."""
  workdir = str(tmp_path / "w")
  shutil.copytree(revision_study, workdir, symlinks=True)
  pipe = Pipeline(pu.tiny_config(**TRAINED, **STUDY, revisions__verifier="sft_lm"), workdir)
  by_sft = pipe.run("revision_sweep")
  base = Pipeline(pu.tiny_config(**TRAINED, **STUDY), workdir).load("revision_sweep")
  params = json.load(open(os.path.join(pipe.directory("revision_sweep"), "params.json")))
  assert params["single_answer_verifier"] == "sft_lm"
  assert params["prm_params"] == pipe.load("policy").config.num_params()
  for a, b in zip(by_sft.by_seed, base.by_seed):
    mask = a["mask"]
    np.testing.assert_array_equal(a["answers"], b["answers"])
    assert np.all((a["prm"][mask] > 0) & (a["prm"][mask] <= 1))
    assert np.all(a["prm_tokens"][mask] > 0)
    assert not np.allclose(a["prm"][mask], b["prm"][mask])


def test_search_by_an_lm_head_verifier_charges_its_model(revision_study, tmp_path):
  """search.verifier='dpo': every step is scored by the DPO verifier, charged its forward over
  the policy's tokens (its reference's log-probabilities came with them)."""
  workdir = str(tmp_path / "w")
  shutil.copytree(revision_study, workdir, symlinks=True)
  logged = []
  pipe = Pipeline(pu.tiny_config(**TRAINED, **STUDY, search__verifier="dpo"), workdir,
                  log=logged.append)
  pipe.run("search_sweep")
  assert any("steps scored by dpo" in line for line in logged)
  assert not any(f"{stage}: running" in line for line in logged
                 for stage in ("policy", "difficulty", "dpo")), logged
  cells = json.load(open(os.path.join(pipe.directory("search_sweep"), "cells.json")))
  for cell in cells:
    assert sum(cell["prm_tokens"]) >= sum(cell["policy_tokens"]) > 0
    assert sum(cell["prm_flops"]) > 0


def test_the_revision_report_has_every_split_selection_and_claim(revision_study):
  from ttc_jax.analysis import revisions as rev_lib
  rev = _latest(revision_study, "revision_report", "revisions.json")
  cells = _latest(revision_study, "revision_sweep", "cells.json")
  config = pu.tiny_config(**TRAINED, **STUDY)
  budgets = list(config.revisions.budgets)
  want = {(f"revisions_{s}", n, c) for s in rev_lib.SELECTIONS for n in budgets
          for c, _ in rev_lib.splits(n)}
  assert {(c["method"], c["params"]["n"], c["params"]["chains"]) for c in rev["curves"]} == want
  assert len(cells) == len(want) * len(config.revisions.seeds)
  for cell in cells:
    assert len(cell["correct"]) == config.test_problems
    assert cell["params"]["chains"] * cell["params"]["length"] == cell["budget_generations"]
  for curve in rev["curves"]:
    assert curve["ci"][0] <= curve["accuracy"] <= curve["ci"][1]
  # A budget's pure-parallel split with majority voting is plain majority over the first
  # answers of N chains: more budget never costs fewer tokens.
  par = sorted((c for c in rev["curves"] if c["method"] == "revisions_majority"
                and c["params"]["length"] == 1), key=lambda c: c["params"]["n"])
  assert [c["params"]["n"] for c in par] == budgets
  assert all(a["policy_tokens"] < b["policy_tokens"] for a, b in zip(par, par[1:]))
  assert rev["transitions"]["by_step"] and rev["chain_lengths"] == rev_lib.chain_lengths(4)
  assert {c["verdict"] for c in rev["claims"]} <= {"reproduced", "not reproduced",
                                                   "not significant"}
  # The revision temperature as chosen on held-out train problems, in revisions.md.
  temp = rev["temperature_choice"]
  md = open(os.path.join(revision_study, "revision_report", "latest", "revisions.md")).read()
  assert f"Revisions are sampled at temperature {temp['temperature']:g}" in md
  assert md.count("\n| 0.5 | ") == 1
  # The first answer against the policy, one chain's selections, the gated chains.
  assert rev["first_answer"]["comparison"]["n"] == config.test_problems
  assert {(w["selection"], w["length"]) for w in rev["within_chain"]} == {
      (s, n) for s in rev_lib.SELECTIONS for n in budgets if n > 1}
  gated = rev["gated"]["chains"]
  assert [g["length"] for g in gated] == [n for n in budgets if n > 1]
  assert all(1 <= g["generations"] <= g["length"] for g in gated)
  assert any(c["claim"].startswith("(d) sequential revisions over parallel")
             for c in rev["claims"])
  md = open(os.path.join(revision_study, "revision_report", "latest", "revisions.md")).read()
  assert "## Sequential revisions" in md and "revisions_vs_budget.png" in md
  claims = _latest(revision_study, "study", "claims.json")
  assert len(claims) == (len(_latest(revision_study, "report", "results.json")["claims"])
                         + len(rev["claims"])
                         + len(_latest(revision_study, "compute_optimal",
                                       "compute_optimal.json")["claims"]))


def test_the_study_selects_strategies_per_difficulty_bin_out_of_fold(revision_study):
  """The compute-optimal stage reads every search and revision cell of the study."""
  co = _latest(revision_study, "compute_optimal", "compute_optimal.json")
  config = pu.tiny_config(**TRAINED, **STUDY)
  fams = ("search", "revisions", "combined")
  assert set(co["curves"]) == {f"{f}_{k}" for f in fams
                               for k in ("oracle", "predicted", "predicted_charged")}
  search_budgets = sorted(set(config.search.budgets))
  assert [p["budget_generations"] for p in co["curves"]["search_oracle"]] == search_budgets
  revision_budgets = sorted(set(config.revisions.budgets))
  hybrid_budgets = {n + r for n in config.hybrid.budgets for r in config.hybrid.revisions}
  assert [p["budget_generations"] for p in co["curves"]["combined_oracle"]] == sorted(
      set(search_budgets) | set(revision_budgets) | hybrid_budgets)
  # Charged curves pay the difficulty samples: every budget moves by their number.
  k = config.difficulty.samples_per_problem
  assert [p["budget_generations"] for p in co["curves"]["search_predicted_charged"]] == [
      b + k for b in search_budgets]
  for name, points in co["curves"].items():
    for p in points:
      assert len(p["per_problem"]) == config.test_problems
      assert p["ci"][0] <= p["accuracy"] <= p["ci"][1], name
  cost = co["difficulty"]["prediction_cost"]
  assert cost["samples"] == k and cost["policy_flops_per_problem"] > 0 < cost[
      "scorer_flops_per_problem"] and cost["scorer"] == "prm"
  assert co["exchange"] is None and {c["verdict"] for c in co["claims"]} <= {
      "reproduced", "not reproduced", "not significant"}
  md = open(os.path.join(revision_study, "compute_optimal", "latest",
                         "compute_optimal.md")).read()
  assert "The learned policy" in md and "`make exchange`" in md
  study_md = open(os.path.join(revision_study, "study", "latest", "study.md")).read()
  assert "compute_optimal.md" in study_md and "make exchange" in study_md
  # The search verifier: the one the claims used and the one chosen on held-out train problems.
  choice = _latest(revision_study, "verifier_choice", "choice.json")
  assert "## The search verifier" in study_md and "`search.verifier=prm`" in study_md
  assert "- Not run: `make verifier-axis`" in study_md
  assert f"`{choice['search_verifier']}` ({choice['chosen']}: " in study_md
  assert all("/train/" in uid for uid in choice["problems"])
  # The paper's findings again, steps scored by the chosen verifier, side by side in study.md.
  chosen = _latest(revision_study, "chosen_search", "chosen.json")
  assert chosen["search_verifier"] == choice["search_verifier"]
  assert chosen["same_as_study"] == (choice["search_verifier"] == "prm")
  main_cells = _latest(revision_study, "search_sweep", "cells.json")
  cells = _latest(revision_study, "chosen_search", "cells.json")
  assert [c["key"] for c in cells] == [c["key"] for c in main_cells]
  texts = [c["claim"] for c in chosen["claims"]]
  assert any(t.startswith("(b) ") for t in texts) and any(t.startswith("(e) ") for t in texts)
  assert "## The findings under the chosen verifier" in study_md
  if not chosen["same_as_study"]:
    # Scored by a verifier other than the PRM: not the PRM's tokens (a confidence measure reads
    # none; an LM-head verifier its own model's).
    assert [c["prm_flops"] for c in cells] != [c["prm_flops"] for c in main_cells]
    assert f"| under `{choice['search_verifier']}` |" in study_md


def test_the_study_picks_up_the_larger_policy_when_make_exchange_ran(revision_study, tmp_path):
  from ttc_jax.pipeline import artifacts
  work = str(tmp_path / "exchange")
  shutil.copytree(revision_study, work, symlinks=True)
  config = pu.tiny_config(**TRAINED, **STUDY)
  pipe = Pipeline(config, work)
  before = pipe.identity("compute_optimal")
  assert pipe.is_done("compute_optimal") and not pipe.is_done("large_policy_eval")
  Pipeline(config, work).run("large_policy_eval")
  pipe = Pipeline(config, work)
  assert pipe.identity("compute_optimal") != before and not pipe.is_done("compute_optimal")
  pipe.run("study")
  # The larger policy saw the policy's rows in the policy's order, with more parameters.
  small, large = pipe.load("policy"), pipe.load("large_policy")
  s_made, l_made = small.description["made_by"], large.description["made_by"]
  assert l_made["data"]["train_tokens"] == s_made["data"]["train_tokens"]
  for field in ("steps", "batch_size", "seed", "pad_multiple", "bucket_pool_batches"):
    assert l_made["train"][field] == s_made["train"][field]
  assert large.config.num_params() > small.config.num_params()
  co = _latest(work, "compute_optimal", "compute_optimal.json")
  ex = co["exchange"]
  assert ex["param_ratio"] == pytest.approx(large.config.num_params()
                                            / small.config.num_params())
  assert ex["r_values"] == list(config.compute_optimal.r_values)
  assert os.path.exists(os.path.join(work, "compute_optimal", "latest", "exchange.png"))
  claims = _latest(work, "study", "claims.json")
  assert {c["claim"] for c in ex["claims"]} <= {c["claim"] for c in claims}
  # The artifact without the exchange is kept beside the new one.
  assert artifacts.read_stage(os.path.join(work, "compute_optimal", before))["status"] == "done"


def test_the_revision_sweep_resumes_after_sigkill(trained, revision_study, tmp_path):
  import glob
  import subprocess
  killed = str(tmp_path / "killed")
  shutil.copytree(revision_study, killed, symlinks=True)
  for stage in ("revision_sweep", "revision_report", "study"):
    shutil.rmtree(os.path.join(killed, stage))
  overrides = {k.replace("__", "."): v for k, v in {**TRAINED, **STUDY}.items()}
  args = pu.cli("revision_sweep", killed, overrides=overrides)
  # Killed right after its first shard is written (a hold point: no race with its speed).
  marker = str(tmp_path / "held")
  proc = subprocess.Popen(args, env=pu.held_env("shard:chains-seed0:0", marker),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  pu.kill_when(proc, marker)
  shard = glob.glob(os.path.join(killed, "revision_sweep", "*", "chains-seed0-00000.npz"))[0]
  assert not os.path.exists(os.path.join(os.path.dirname(shard), "chains-seed0-00001.npz"))
  out = pu.run(args)
  assert "chains-seed0 shards 2/2" in out.stderr and "1/2" not in out.stderr.split(
      "chains-seed0 shards")[1][:8], out.stderr[-3000:]
  timeless = lambda cells: [{k: v for k, v in c.items() if k != "wall_s"}  # noqa: E731
                            for c in cells]
  assert timeless(_latest(killed, "revision_sweep", "cells.json")) == timeless(_latest(
      revision_study, "revision_sweep", "cells.json"))


@pytest.mark.parametrize("override, message", [
    (dict(revision_orm__train__steps=0), r"revision_orm.train.steps=0 must be an integer > 0"),
    (dict(revisions__budgets=(1, 3)), r"revisions.budgets=\(1, 3\): expected increasing "
                                      r"powers of two"),
    (dict(revision_orm__first_problem=190, revision_orm__num_problems=20),
     r"revision_orm.num_problems=20: expected an integer \[1, 10\]"),
    (dict(revisions__seeds=(0, 0)), r"revisions.seeds=\(0, 0\): expected distinct"),
    (dict(revision_model__window=0), r"revision_model.window=0: expected an integer >= 1"),
    (dict(revision_orm__first_problem=4), r"revision_orm.first_problem=4: expected >= "
                                          r"revision_data.num_problems=8"),
    (dict(revision_data__keep_rate=-0.1), r"revision_data.keep_rate=-0.1: expected a number "
                                          r"in \[0, 1\]"),
    (dict(revision_data__max_attempts=0), r"revision_data.keep_rate=0.7: a keep trajectory"),
    (dict(revision_model__policy_rows=1.0), r"revision_model.policy_rows=1.0: expected a "
                                            r"number in \[0, 1\)"),
    (dict(revision_model__choice__first_problem=10), r"revision_model.choice.first_problem=10 "
                                                     r"\(num_problems=4\): overlaps revision_orm"),
    (dict(revision_model__rounds__num_problems=9), r"revision_model.rounds.num_problems=9: "
                                                   r"expected an integer \[1, 8\]"),
    (dict(revision_model__rounds__train__steps=0), r"revision_model.rounds.train.steps=0 must "
                                                   r"be an integer > 0"),
    (dict(revision_model__rounds__count=-1), r"revision_model.rounds.count=-1: expected an "
                                             r"integer >= 0"),
    (dict(revisions__confidence="prm"), r"revisions.confidence='prm': confidence verifier "
                                        r"'prm': expected conf_<token>_<aggregation>"),
    (dict(policy__retry_rate=1.5), r"policy.retry_rate=1.5: expected the share"),
    (dict(policy__retry_attempts=0), r"policy.retry_attempts=0: expected an integer >= 1"),
    (dict(revision_model__choice__revision_temperatures=(1.0, -0.5)),
     r"revision_model.choice.revision_temperatures=\(1.0, -0.5\): expected distinct"),
    (dict(revision_model__choice__revision_temperatures=()),
     r"revision_model.choice.revision_temperatures=\(\): expected distinct"),
])
def test_bad_revision_configs_are_named_before_anything_runs(override, message):
  from ttc_jax.pipeline import config as config_lib
  from ttc_jax.pipeline.stages import CHECKS
  from ttc_jax.pipeline.stages import STAGES
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(pu.tiny_config(**override), list(STAGES), CHECKS)


def test_the_prediction_cost_charges_the_predictor_s_own_model(revision_study, tmp_path):
  """Predicting difficulty from the ORM costs the ORM reading the samples; from the PRM, the
  PRM; from the policy's confidence (its likelihood, a confidence measure), nothing past
  writing them: it came with the samples (each predictor's identity differs: each is its own
  compute-optimal artifact)."""
  workdir = str(tmp_path / "w")
  shutil.copytree(revision_study, workdir, symlinks=True)
  costs = {}
  predictors = ("prm_last", "orm", "policy_likelihood", "conf_topk_lowest_group", "dpo")
  for predictor in predictors:
    pipe = Pipeline(pu.tiny_config(**TRAINED, **STUDY, compute_optimal__predictor=predictor),
                    workdir)
    co = pipe.run("compute_optimal")
    costs[predictor] = co["difficulty"]["prediction_cost"]
    assert co["difficulty"]["predictor"] == predictor
  assert [costs[p]["scorer"] for p in predictors] == ["prm", "orm"] + ["policy (with its "
                                                                       "samples)"] * 2 + [
      "dpo (the policy's architecture)"]
  assert costs["prm_last"]["policy_flops_per_problem"] > 0
  for p in predictors:
    assert costs[p]["policy_flops_per_problem"] == pytest.approx(
        costs["prm_last"]["policy_flops_per_problem"])
  assert costs["policy_likelihood"]["scorer_flops_per_problem"] == 0
  assert costs["conf_topk_lowest_group"]["scorer_flops_per_problem"] == 0
  # The tiny study's ORM and PRM share the policy's shape: the same FLOPs per token. The DPO
  # verifier is the policy with its LM head (its reference, the policy, came with the
  # samples): the head over the vocabulary costs more than a value head's one output.
  assert costs["orm"]["scorer_flops_per_problem"] == pytest.approx(
      costs["prm_last"]["scorer_flops_per_problem"])
  assert costs["dpo"]["scorer_flops_per_problem"] > costs["prm_last"]["scorer_flops_per_problem"]
  assert costs["orm"]["scorer_flops_per_problem"] > 0


@pytest.mark.e2e
def test_the_verifier_axis_calibrates_on_train_problems_and_maps_search_against_quality(
    revision_study, tmp_path):
  """The synthetic verifier reaches each target AUC on train problems (never test ones), its
  test AUC is measured and grows with the target, every cell is charged a PRM of the
  policy's size, and the stage resumes from its cells."""
  workdir = str(tmp_path / "w")
  shutil.copytree(revision_study, workdir, symlinks=True)
  axis_cfg = dict(verifier_axis__aucs=(0.6, 0.9), verifier_axis__calibration_problems=16,
                  verifier_axis__samples_per_problem=4, verifier_axis__budgets=(2, 4),
                  verifier_axis__methods=("best_of_n", "beam"))
  logged = []
  pipe = Pipeline(pu.tiny_config(**TRAINED, **STUDY, **axis_cfg), workdir, log=logged.append)
  axis = pipe.run("verifier_axis")
  assert not any(f"{s}: running" in line for line in logged for s in ("policy", "difficulty"))
  cal = axis["calibration"]
  assert len(cal["problems"]) == 16 and all("/train/" in uid for uid in cal["problems"])
  low, high = axis["levels"]
  for lv, target in ((low, 0.6), (high, 0.9)):
    # A finished sample is labelled by its outcome: every target is reached on train problems
    # (overshot on so few problems: the AUC moves in steps).
    assert lv["target"] == target and lv["train_auc"] >= target
    assert 0 <= lv["test_auc"]["mean_auc"] <= 1
  assert high["separation"] > low["separation"]
  assert high["test_auc"]["mean_auc"] > low["test_auc"]["mean_auc"]
  assert set(low["accuracy"]) == {"best_of_n_weighted@2", "best_of_n_weighted@4", "beam_m2@2",
                                  "beam_m2@4"}
  assert set(low["minus_best_of_n"]) == {"beam_m2@2", "beam_m2@4"}
  for half in ("easier half", "harder half"):  # per difficulty half too (4 + 4 problems)
    assert set(low["minus_best_of_n_by_half"][half]) == {"beam_m2@2", "beam_m2@4"}
    assert low["minus_best_of_n_by_half"][half]["beam_m2@4"]["n"] == 4
  assert set(axis["crossover"]) == {"beam_m2@4"}
  cells = [json.loads(line) for line in open(os.path.join(pipe.directory("verifier_axis"),
                                                          "cells.jsonl"))]
  assert len(cells) == 2 * 4
  for cell in cells:
    # Charged as a PRM of the policy's size reading the policy's tokens.
    assert cell["prm_tokens"] == cell["policy_tokens"] and cell["prm_flops"] == cell["policy_flops"]
  for name in ("axis.md", "axis.png"):
    assert os.path.getsize(os.path.join(pipe.directory("verifier_axis"), name)) > 0
  md = open(os.path.join(pipe.directory("verifier_axis"), "axis.md")).read()
  assert "| target AUC | separation | train AUC | test AUC [95% CI] |" in md
  assert "- beam_m2@4: " in md and "The same on the harder half" in md
  # Done cells are not redone.
  logged.clear()
  again = Pipeline(pu.tiny_config(**TRAINED, **STUDY, **axis_cfg), workdir, log=logged.append)
  assert again.run("verifier_axis") == axis
  # The study picks it up (only the study is redone).
  logged.clear()
  again.run("study")
  assert [line.split(":")[0] for line in logged if ": running" in line] == ["study"]
  study_md = open(os.path.join(again.directory("study"), "study.md")).read()
  assert "## Verifier quality as an axis (diagnosis)" in study_md
  assert "- beam_m2@4 beats best-of-N weighted " in study_md


def test_adaptive_allocation_is_chosen_on_train_problems_and_paired_with_best_of_n(
    revision_study, tmp_path, monkeypatch):
  """The allocation stage chooses its parameters on held-out train problems (after the verifier
  choice's), never spends more than each budget on the test problems, reads best-of-N and
  majority from the same samples, and its claims reach compute_optimal.md and study.md; run
  again it gives the same result; a test problem planted among its train problems stops it
  with one line."""
  base = revision_study
  config = pu.tiny_config(**TRAINED, **STUDY)
  alloc = json.load(open(os.path.join(base, "allocation", "latest", "allocation.json")))
  assert alloc["train"]["problems"] == [f"arith/train/{i}" for i in range(16, 20)]
  assert [r["budget"] for r in alloc["choices"]] == [1, 1.5, 2, 3]
  for r, p in zip(alloc["choices"], alloc["adaptive"]):
    assert p["budget_generations"] == r["generations"] <= r["budget"] + 1e-9
    assert len(p["per_problem"]) == 8
  bon = {p["budget_generations"]: p for p in alloc["baselines"]["best_of_n_weighted"]}
  assert sorted(bon) == [1, 2, 4]
  # Budget 1: one sample per problem, best-of-1 whatever the parameters.
  assert alloc["adaptive"][0]["per_problem"] == bon[1]["per_problem"]
  co = json.load(open(os.path.join(base, "compute_optimal", "latest", "compute_optimal.json")))
  assert co["adaptive"]["choices"] == alloc["choices"]
  md = open(os.path.join(base, "compute_optimal", "latest", "compute_optimal.md")).read()
  assert "## Adaptive allocation (beyond the paper)" in md
  claims = _latest(base, "study", "claims.json")
  assert sum(c["claim"].startswith("(f) adaptive allocation") for c in claims) == len(
      alloc["claims"]) + 1  # and against compute-optimal search
  workdir = str(tmp_path / "w")
  shutil.copytree(base, workdir, symlinks=True)
  shutil.rmtree(os.path.join(workdir, "allocation"))
  again = Pipeline(config, workdir).run("allocation")
  assert again == alloc
  # A planted leak: the data hands a test problem to the allocation's train problems.
  from ttc_jax.pipeline import artifacts  # pylint: disable=g-import-not-at-top
  pu.plant_test_problem(monkeypatch, 16)
  shutil.rmtree(os.path.join(workdir, "allocation"))
  with pytest.raises(artifacts.ArtifactError, match=r"arith/test/0 is not a train problem"):
    Pipeline(config, workdir).run("allocation")


# ----------------------------------------------------------------------------
# distillation (make distill)
DISTILL = {}  # the tiny config's distill section (tests/pipeline_utils.py)


def test_the_selection_reads_no_label():
  from ttc_jax.pipeline.stages import distill as distill_lib
  from ttc_jax.sampling import solutions
  samples = solutions.ProblemSamples(
      problems=["p0", "p1"], n=3, prompts=[[1], [1]], gens=None, texts=["a", "b", "c"] * 2,
      answers=["1", "2", "2", None, "5", None], correct=np.array([1, 0, 0, 0, 0, 0], bool))
  scores = np.array([0.9, 0.5, 0.6, 0.9, 0.1, 0.8])
  # Problem 0: "2" has 1.1 of the vote against 0.9, its most confident sample is 2; problem 1:
  # only "5" is an answer.
  assert distill_lib.select_rows(samples, scores, "selected") == [(0, 2), (1, 1)]
  flipped = dataclasses.replace(samples, correct=~samples.correct)
  assert distill_lib.select_rows(flipped, scores, "selected") == [(0, 2), (1, 1)]
  # The labelled reference keeps the most confident correct sample (none for problem 1).
  assert distill_lib.select_rows(samples, scores, "labelled") == [(0, 0)]


def test_distillation_rounds_train_on_their_selection_and_resume_identically(trained, tmp_path,
                                                                              monkeypatch):
  """Two rounds per variant on the trained tiny policy: each round's rows are its selection
  over the samples of the model before it (the shards of that model's parameter digest), of
  train problems only; losing the last round's training and its stage record and running
  again gives the same result; a planted test problem stops it with one line; study.md picks
  it up."""
  from ttc_jax.models import checkpoints
  from ttc_jax.pipeline import store
  from ttc_jax.pipeline.stages import distill as distill_lib
  from ttc_jax.sampling import solutions
  workdir = str(tmp_path / "w")
  shutil.copytree(trained, workdir, symlinks=True)
  config = pu.tiny_config(**TRAINED, **DISTILL)
  pipe = Pipeline(config, workdir)
  result = pipe.run("distill")
  out = pipe.directory("distill")
  policy, data = pipe.load("policy"), pipe.load("data")
  tok, task = policy.tokenizer, data.task
  assert result["problems"] == ["arith/train/40", "arith/train/47"]
  assert set(result["rounds"]) == {"selected", "labelled"}
  # Round 1 of both variants samples the policy itself: one set of shards serves both.
  first = {v: rs[1]["sampled_by"] for v, rs in result["rounds"].items()}
  assert first["selected"] == first["labelled"] == checkpoints.params_digest(policy.model)
  probs = data.problems("train", 8, start=40)
  for variant, rounds in result["rounds"].items():
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[2]["sampled_by"] != rounds[1]["sampled_by"]  # round 1's model sampled it
    for r in rounds[1:]:
      parts = store.Shards.open(out, r["shards"]).load_all()
      gens = solutions.Generations(tokens=distill_lib._cat(parts, "tokens"),
                                   lengths=distill_lib._cat(parts, "lengths"),
                                   stopped=distill_lib._cat(parts, "stopped"))
      prompts = [tok.encode_prompt(task.format_prompt(p)) for p in probs]
      samples = solutions.grade(tok, task, probs, 4, prompts, gens)
      picked = distill_lib.select_rows(samples, np.concatenate([p["scores"] for p in parts]),
                                       variant)
      assert [list(x) for x in picked] == r["picked"]
      rows = [(task.format_prompt(probs[p]), samples.texts[p * 4 + s]) for p, s in picked]
      assert distill_lib.rows_digest(rows) == r["rows_digest"]
      assert set(r["vs_policy"]) == {"pass@1", "weighted@2", "majority@2", "weighted@4",
                                     "majority@4"}
  # The larger architecture trained to the same total FLOPs as the policy and the label-free
  # rounds: its steps are those FLOPs over 6 N D per step, counted from its own rows.
  from ttc_jax.models.transformer import TransformerConfig
  from ttc_jax.pipeline.stages import models as models_lib
  matched, last = result["matched"], result["rounds"]["selected"][-1]
  large_cfg = TransformerConfig(vocab_size=tok.vocab_size, head="lm",
                                **config.large_policy.model.to_dict())
  dataset, _ = models_lib.sft_dataset(data, tok, config.large_policy, large_cfg.max_seq_len)
  per_step = 6.0 * large_cfg.num_params() * config.large_policy.train.batch_size * float(
      dataset.valid.sum(1).mean())
  total = result["policy_pretraining_flops"] + last["flops"]["total"]
  assert matched["against"] == {"variant": "selected", "round": 2, "flops": total}
  assert matched["params"] == large_cfg.num_params()
  assert matched["steps"] == max(2, round(total / per_step))
  assert abs(matched["flops"] - total) <= per_step / 2 or matched["steps"] == 2
  assert checkpoints.manager(os.path.join(out, "matched_large_policy", "checkpoints"),
                             None).latest_step() == matched["steps"]
  assert set(matched["distilled_minus_matched"]) == set(last["eval"])
  diff = matched["distilled_minus_matched"]["pass@1"]["diff"]
  assert diff == pytest.approx(np.mean(last["eval"]["pass@1"]) - np.mean(
      matched["eval"]["pass@1"]), abs=1e-9)
  # Lose round 2's training (each variant) and the stage record: the rerun resumes from round
  # 1's checkpoints and shards and gives the same result.
  for variant in ("selected", "labelled"):
    shutil.rmtree(os.path.join(out, variant, "round2"))
  os.remove(os.path.join(out, "stage.json"))
  assert Pipeline(config, workdir).run("distill") == result
  # study.md (with the study) picks it up: tested through the claims' shape here.
  assert [c["claim"] for c in result["claims"]] == [
      "(g) distillation, round 2 (no labels): pass@1 over the policy",
      "(g) distillation, round 2 (no labels): best-of-4 weighted over the policy",
      "(g) distillation, round 2 (no labels): pass@1 over the larger policy's architecture "
      "trained to the same total FLOPs"]
  # A planted leak: the data hands a test problem to the distillation.
  pu.plant_test_problem(monkeypatch, 40)
  shutil.rmtree(out)
  with pytest.raises(ValueError, match=r"distillation: arith/test/0 is not a train problem"):
    Pipeline(config, workdir).run("distill")


def test_search_then_revise_cells_add_the_revisions_to_the_sweep_s_search(revision_study):
  """A hybrid cell is the sweep's own search cell (same seed: same answers and tokens) then L
  revisions of its best candidate: its budget is N + L, its verifier tokens the search's, its
  policy tokens and FLOPs the search's plus the revision model's chain (growing with L; the
  same for both selections); the cells are candidates of the combined compute-optimal curves."""
  from ttc_jax.search import registry
  config = pu.tiny_config(**TRAINED, **STUDY)
  cells = {c["key"]: c for c in _latest(revision_study, "hybrid_sweep", "cells.json")}
  sweep = {(c["method"], c["params"]["n"], c["seed"]): c
           for c in _latest(revision_study, "search_sweep", "cells.json")}
  revs = config.hybrid.revisions
  assert len(cells) == len(config.hybrid.budgets) * len(revs) * 2
  for n in config.hybrid.budgets:
    search = sweep[("beam_m2", n, config.hybrid.seed)]
    by = {}
    for c in cells.values():
      m = registry.method(c["method"])
      assert m.family == registry.HYBRID and m.params["search"] == "beam_m2"
      assert c["budget_generations"] == n + c["params"]["revisions"]
      assert c["prm_tokens"] == search["prm_tokens"] and c["prm_flops"] == search["prm_flops"]
      extra = np.subtract(c["policy_tokens"], search["policy_tokens"])
      assert (extra > 0).all()
      assert_close(np.subtract(c["flops"], search["flops"]),
                   np.subtract(c["policy_flops"], search["policy_flops"]))
      by.setdefault(c["params"]["revisions"], []).append(extra)
    for L in revs:  # both selections pay the same
      assert (by[L][0] == by[L][1]).all()
    assert all((by[a][0] < by[b][0]).all() for a, b in zip(revs, revs[1:]))
  co = _latest(revision_study, "compute_optimal", "compute_optimal.json")
  hybrid = [k for k, v in co["candidates"].items()
            if registry.method(v["method"]).family == registry.HYBRID]
  assert len(hybrid) == len(cells)
  md = open(os.path.join(revision_study, "compute_optimal", "latest",
                         "compute_optimal.md")).read()
  assert "## Search then revise (beyond the paper)" in md
  # The pre-specified claims: the most-revised 'vote' cell over its search alone at N and
  # over the same search at the smallest swept budget >= N + L, paired over the problems.
  curves = {(c["method"], c["budget_generations"]): c
            for c in _latest(revision_study, "report", "results.json")["curves"]}
  L = max(revs)
  claims = {c["claim"]: c for c in co["claims"] if c["claim"].startswith("(h)")}
  expected = 0
  for n in config.hybrid.budgets:
    vote = next(c for c in cells.values() if c["method"] == "hybrid_beam_m2_vote"
                and c["params"]["revisions"] == L and c["params"]["n"] == n)
    more = min((b for (m, b) in curves if m == "beam_m2" and b >= n + L), default=None)
    expected += 1 + (more is not None)
    for budget, name in ((n, f"over beam_m2 alone at budget {n}"),
                         (more, f", {n + L} generations, over beam_m2 at budget {more}")):
      if budget is None:  # no swept budget as large: no such claim
        assert not any(f"{n + L} generations" in k for k in claims)
        continue
      claim = claims[f"(h) search then revise: beam_m2 N={n} then {L} revisions (vote) {name}"
                     .replace(" ,", ",")]
      want = np.mean(vote["correct"]) - np.mean(curves[("beam_m2", budget)]["per_problem"])
      assert claim["comparison"]["diff"] == pytest.approx(want, abs=1e-9)
      assert claim["verdict"] in ("reproduced", "not reproduced", "not significant")
  assert len(claims) == expected


def test_the_revision_ablation_makes_each_variant_and_revisions_md_sets_it_beside_the_study(
    revision_study, tmp_path):
  """A variant (retry data in the policy's SFT mix) makes its own policy, revision data and
  revision model in the workdir without moving the study's `latest`; the ablation's rows
  compare it with the study's own on the same problems, and revisions.md shows them once
  the ablation has run."""
  workdir = str(tmp_path / "w")
  shutil.copytree(revision_study, workdir, symlinks=True)
  variant = "policy.retry_rate=0.5,policy.retry_attempts=1"
  config = pu.tiny_config(**TRAINED, **STUDY, revision_ablation__variants=(variant,))
  pipe = Pipeline(config, workdir)
  before = {s: os.readlink(os.path.join(workdir, s, "latest"))
            for s in ("policy", "revision_data", "revision_model", "difficulty")}
  report_before = os.readlink(os.path.join(workdir, "revision_report", "latest"))
  out = pipe.run("revision_ablation")
  default, retry = out["rows"]
  assert default["name"] == "default (this study's)" and default["retry_rows"] == 0
  assert default["policy"] == before["policy"]
  assert default["revision_model"] == before["revision_model"]
  assert retry["name"] == variant and retry["overrides"] == {"policy.retry_rate": 0.5,
                                                             "policy.retry_attempts": 1}
  assert 60 < retry["retry_rows"] < 140  # half of the 200 train problems
  assert retry["policy"] != default["policy"]
  assert retry["revision_model"] != default["revision_model"]
  made = json.load(open(os.path.join(workdir, "policy", retry["policy"], "model.json")))
  assert made["made_by"]["data"]["retry_rows"] == retry["retry_rows"]
  # The revision model of the variant is made from the variant's policy.
  rm = json.load(open(os.path.join(workdir, "revision_model", retry["revision_model"],
                                   "stage.json")))
  assert rm["key"]["inputs"]["policy"] == retry["policy"]
  # Paired with the study's row on the same problems.
  lo, hi = default["problems"]  # revision_model.choice's held-out train problems
  for key in ("first_vs_reference", "last_vs_reference"):
    assert retry[key]["n"] == hi - lo
  assert retry["pass_at_1_vs_reference"]["n"] == config.test_problems
  assert "first_vs_reference" not in default
  # The study's artifacts stay its `latest`.
  assert before == {s: os.readlink(os.path.join(workdir, s, "latest")) for s in before}
  # revisions.md picks the ablation up (the report's identity records that it was there).
  pipe.run("revision_report")
  assert os.readlink(os.path.join(workdir, "revision_report", "latest")) != report_before
  text = open(os.path.join(workdir, "revision_report", "latest", "revisions.md")).read()
  assert "Ablation (`make retry-ablation`)" in text and f"| {variant} | " in text
