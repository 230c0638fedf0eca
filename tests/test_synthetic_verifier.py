"""The synthetic verifier of controlled quality: the step checker through calibrated noise."""

import numpy as np
import pytest
from scipy import stats

from conftest import assert_close
from ttc_jax import tasks
from ttc_jax.analysis.verifiers import calibrate_separation
from ttc_jax.analysis.verifiers import mean_within_auc
from ttc_jax.models.transformer import TransformerConfig
from ttc_jax.verifiers.synthetic import SyntheticVerifier
from ttc_jax.verifiers.synthetic import oracle_step_labels

EOS = 3


class CharTokenizer:
  """One token per character (ids 10+), EOS = 3, the step delimiter '\\n' its own id."""

  eos_ids = (EOS,)
  step_pairs = ()

  def __init__(self):
    self.step_ids = (10 + ord("\n"),)

  def encode(self, text):
    return [10 + ord(c) for c in text]

  def decode(self, ids):
    return "".join(chr(i - 10) for i in ids if i >= 10)


CONFIG = TransformerConfig(vocab_size=200, d_model=16, num_layers=1, num_heads=2, num_kv_heads=1,
                           mlp_dim=32, max_seq_len=64)


@pytest.fixture(scope="module")
def task():
  return tasks.get_task("arith", num_train=40, num_test=20, max_ops=3)


def _table(rng, problems=300, samples=16, mismatch=0.0):
  correct = rng.random((problems, samples)) < rng.uniform(0.1, 0.9, (problems, 1))
  sound = np.where(rng.random(correct.shape) < mismatch, ~correct, correct)
  return sound, correct, rng.standard_normal(correct.shape)


@pytest.mark.parametrize("target", [0.6, 0.7, 0.8, 0.9, 0.97])
def test_the_noise_calibration_hits_its_target_auc(target):
  sound, correct, noise = _table(np.random.default_rng(0))
  d, reached = calibrate_separation(target, sound, correct, noise)
  assert reached == pytest.approx(target, abs=0.005)
  assert mean_within_auc(d * np.where(sound, 1, -1) + noise, correct) == reached
  # With labels that are the outcomes, the binormal model: AUC = Phi(sqrt(2) d).
  assert stats.norm.cdf(np.sqrt(2) * d) == pytest.approx(target, abs=0.03)
  # The same separation on fresh problems gives about the same AUC (it generalises).
  sound2, correct2, noise2 = _table(np.random.default_rng(1))
  assert mean_within_auc(d * np.where(sound2, 1, -1) + noise2, correct2) == pytest.approx(
      target, abs=0.03)


def test_a_target_beyond_what_the_labels_allow_is_reported_not_reached():
  sound, correct, noise = _table(np.random.default_rng(2), mismatch=0.2)
  d, reached = calibrate_separation(0.97, sound, correct, noise, max_separation=20.0)
  assert d == 20.0 and reached < 0.9
  with pytest.raises(ValueError, match=r"target within-problem AUC 1.2"):
    calibrate_separation(1.2, sound, correct, noise)


def _verifier(task, separation, seed=0):
  problems = [task.get("test", i) for i in range(6)]
  return SyntheticVerifier(separation, task, CharTokenizer(), CONFIG, problems, seed=seed), problems


def test_scores_follow_the_step_checker(task):
  v, problems = _verifier(task, 40.0)
  tok = v.tokenizer
  for p in problems:
    right = tok.encode(p.solution) + [EOS]
    steps = task.split_steps(p.solution)
    steps[0] = steps[0].split("=")[0] + "=" + str(int(steps[0].split("=")[1]) + 1)
    steps[-1] = f"Answer: {int(p.answer) + 1}"
    wrong = tok.encode(task.join_steps(steps)) + [EOS]
    assert v.score(p, right) > 0.999 and v.score(p, wrong) < 0.001
    # A partial solution is judged by the checker: before the slip it is sound, from it on not.
    first = tok.encode(task.split_steps(p.solution)[0] + "\n")
    assert v.score(p, first) > 0.999
    assert v.score(p, tok.encode(steps[0] + "\n")) < 0.001
    # A finished solution that stops before its answer has no wrong step but is not right.
    short = tok.encode(task.join_steps(task.split_steps(p.solution)[:1])) + [EOS]
    assert v.score(p, short) < 0.001
  # Separation 0: the score is the noise alone, whatever the solution.
  v0, _ = _verifier(task, 0.0)
  p = problems[0]
  assert v0.score(p, right) == pytest.approx(1 / (1 + np.exp(-v0.noise(p, right))))


def test_incremental_scores_equal_the_full_pass_and_do_not_depend_on_the_batch(task):
  v, problems = _verifier(task, 1.0)
  tok = v.tokenizer
  sols = [tok.encode(p.solution) + [EOS] for p in problems[:3]]
  # Full pass: prompt + solution rows, each step's last position.
  prompts = [[1, 2] for _ in sols]
  ends = [[2 + i for i, t in enumerate(s) if t in tok.step_ids or t == EOS] for s in sols]
  full = v.solution_step_scores([p.question for p in problems[:3]],
                                [pr + s for pr, s in zip(prompts, sols)], [2] * 3, ends,
                                batch_size=2)
  # Search: fed in pieces of 5 tokens, all rows together, then one row alone.
  def feed(rows):
    state = v.start([problems[r] for r in rows], None, None, cache_size=0, max_step_tokens=0)
    out = [[] for _ in rows]
    for start in range(0, max(len(sols[r]) for r in rows), 5):
      chunk = np.zeros((len(rows), 5), np.int64)
      valid = np.zeros((len(rows), 5), bool)
      for j, r in enumerate(rows):
        piece = sols[r][start:start + 5]
        chunk[j, :len(piece)], valid[j, :len(piece)] = piece, True
      state, scores = v.extend_scores(state, chunk, valid)
      # Each step's score where it ends (a piece's last token, mid-step, is scored too: the
      # solution so far ends there).
      ends = valid & np.isin(chunk, tok.step_ids + (EOS,))
      for j in range(len(rows)):
        out[j] += list(scores[j][ends[j]])
    return out, v.scores(state)

  together, last = feed([0, 1, 2])
  for j in range(3):
    assert_close(together[j], full[j])
    assert last[j] == pytest.approx(full[j][-1])
    alone, _ = feed([j])
    assert alone[0] == together[j]
  # Gathering rows (search's expansion) keeps each row's prefix and problem.
  state = v.start(problems[:2], None, None, cache_size=0, max_step_tokens=0)
  state = v.extend(state, np.asarray([sols[0][:4], sols[1][:4]]), np.ones((2, 4), bool))
  g = v.gather(state, [1, 1, 0])
  assert [p.question for p in g.problems] == [problems[1].question] * 2 + [problems[0].question]
  assert list(v.scores(g)) == [v.scores(state)[1]] * 2 + [v.scores(state)[0]]
  assert v.tokens_fed(state) is None  # charged as a PRM of the policy's size


def test_a_task_without_a_checker_and_bad_separations_are_refused(task):
  import heldout_task  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="has no step checker"):
    SyntheticVerifier(1.0, heldout_task.ModSum(), CharTokenizer(), CONFIG, [])
  with pytest.raises(ValueError, match=r"separation -1.0: expected a number >= 0"):
    SyntheticVerifier(-1.0, task, CharTokenizer(), CONFIG, [])


def test_oracle_step_labels_mark_every_step_from_the_first_wrong_one(task):
  """The oracle-label PRM's labels (prm.labels='oracle'): 1 for each step up to the first wrong
  one, 0 from it on; the last step of a finished solution is its correctness."""
  tok = CharTokenizer()
  p = next(q for q in (task.get("test", i) for i in range(20)) if q.difficulty == 3)
  steps = task.split_steps(p.solution)
  prompt = [1, 2, 3 + 10]
  ends_of = lambda sol: [len(prompt) + i for i, t in enumerate(sol) if t in tok.step_ids + (EOS,)]
  right = tok.encode(p.solution) + [EOS]
  assert oracle_step_labels(task, tok, p, prompt + right, len(prompt), ends_of(right)) == [1.0] * 4
  slip = list(steps)
  a, c = slip[1].split("=")
  slip[1] = f"{a}={int(c) + 1}"
  wrong = tok.encode(task.join_steps(slip[:-1] + [f"Answer: {int(p.answer) + 1}"])) + [EOS]
  assert oracle_step_labels(task, tok, p, prompt + wrong, len(prompt), ends_of(wrong)) == [
      1.0, 0.0, 0.0, 0.0]
  # A slip that the answer line hides (the right answer after a wrong step): the last step is
  # the outcome, the steps between are the checker's.
  hidden = list(slip[:-1]) + [steps[-1]]
  hidden = tok.encode(task.join_steps(hidden)) + [EOS]
  assert oracle_step_labels(task, tok, p, prompt + hidden, len(prompt), ends_of(hidden)) == [
      1.0, 0.0, 0.0, 1.0]
