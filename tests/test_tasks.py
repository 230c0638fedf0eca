"""Tests for the task protocol, the arithmetic task and its TFDS builder."""

import collections
import json
import os
import random
import re

import numpy as np
import pytest

from ttc_jax import tasks
from ttc_jax.tasks import arithmetic
from ttc_jax.tasks import base
from ttc_jax.tasks import tfds_builder

_STEP_RE = re.compile(r"([0-9]+)([-+*/])([0-9]+)=([0-9]+)")
_QUESTION_RE = re.compile(r"([0-9]+)((?: [-+*/][0-9]+)+)")


@pytest.fixture(scope="module")
def task():
  return tasks.get_task("arith")


@pytest.fixture(scope="module")
def train_problems(task):
  return [task.get("train", i) for i in range(2000)]


@pytest.fixture(scope="module")
def test_problems(task):
  return [task.get("test", i) for i in range(task.num_examples("test"))]


def _check_reference(task, problem):
  """Independently re-derives a reference solution from its question."""
  match = _QUESTION_RE.fullmatch(problem.question)
  assert match, problem.question
  start = int(match.group(1))
  ops = [(g[0], int(g[1:])) for g in match.group(2).split()]
  digits = problem.meta["operand_digits"]
  assert len(ops) == problem.difficulty
  assert len(str(start)) == digits

  steps = task.split_steps(problem.solution)
  assert len(steps) == problem.difficulty + 1
  assert steps[-1] == f"Answer: {problem.answer}"
  value = start
  for step, (op, operand) in zip(steps[:-1], ops):
    m = _STEP_RE.fullmatch(step)
    assert m, step
    a, step_op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(
        m.group(4))
    assert (a, step_op, b) == (value, op, operand), (step, problem.question)
    if op in "+-":
      assert len(str(b)) == digits
      expected = a + b if op == "+" else a - b
    else:
      assert 2 <= b <= 9
      if op == "*":
        expected = a * b
      else:
        assert a % b == 0, f"inexact division in {step}"
        expected = a // b
    assert c == expected, step
    assert 0 <= c <= 999
    value = c
  assert str(value) == problem.answer


class TestRegistry:

  def test_get_task_builds_with_kwargs(self):
    task = tasks.get_task("arith", max_ops=3, num_test=7)
    assert isinstance(task, arithmetic.ArithmeticTask)
    assert task.num_examples("test") == 7
    assert task.params["max_ops"] == 3
    assert "arith" in tasks.list_tasks()

  def test_unknown_task_names_known_ones(self):
    with pytest.raises(ValueError, match=r"'nope'.*arith"):
      tasks.get_task("nope")

  def test_duplicate_registration_rejected(self):
    with pytest.raises(ValueError, match="already registered"):
      tasks.register_task("arith", arithmetic.ArithmeticTask)


class TestGeneration:

  def test_deterministic(self, task):
    other = tasks.get_task("arith")
    for split in ("train", "test"):
      for i in (0, 1, 17, 499):
        assert task.get(split, i) == other.get(split, i)

  def test_problem_fields(self, task):
    p = task.get("test", 17)
    assert (p.uid, p.index, p.split) == ("arith/test/17", 17, "test")
    assert set(p.meta) == {"operand_digits"}
    assert p.meta["operand_digits"] in (1, 2)
    hash(p)  # Problems are hashable despite the dict-valued meta.

  def test_seed_changes_problems(self, task):
    other = tasks.get_task("arith", seed=1)
    same = sum(task.get("train", i).question == other.get("train", i).question
               for i in range(100))
    assert same < 10

  def test_independent_of_split_sizes(self, task):
    small = tasks.get_task("arith", num_train=10, num_test=3)
    assert small.get("train", 9) == task.get("train", 9)
    assert small.get("test", 2) == task.get("test", 2)

  def test_reference_solutions_are_correct(self, task, train_problems,
                                           test_problems):
    for p in train_problems + test_problems:
      assert task.is_correct(p.solution, p), p
      assert task.extract_answer(p.solution) == p.answer
      _check_reference(task, p)

  def test_reference_solutions_other_config(self):
    task = tasks.get_task("arith", min_operand_digits=3, max_operand_digits=3,
                          min_ops=5, max_ops=6, seed=3)
    for i in range(200):
      p = task.get("train", i)
      assert p.meta["operand_digits"] == 3 and p.difficulty in (5, 6)
      _check_reference(task, p)

  def test_restricted_operations(self):
    task = tasks.get_task("arith", operations="-+")
    questions = "".join(task.get("train", i).question for i in range(200))
    assert "*" not in questions and "/" not in questions
    assert task.params["operations"] == "+-"

  def test_difficulty_spread(self, train_problems):
    counts = collections.Counter(p.difficulty for p in train_problems)
    assert sorted(counts) == list(range(1, 9))
    expected = len(train_problems) / 8
    assert all(0.75 * expected < c < 1.25 * expected for c in counts.values())
    digits = collections.Counter(p.meta["operand_digits"]
                                 for p in train_problems)
    assert sorted(digits) == [1, 2]

  def test_configured_difficulty_range(self):
    task = tasks.get_task("arith", min_ops=3, max_ops=5)
    got = {task.get("train", i).difficulty for i in range(100)}
    assert got == {3, 4, 5}

  def test_all_operations_used(self, train_problems):
    ops = collections.Counter(c for p in train_problems for c in p.question
                              if c in "+-*/")
    assert set(ops) == set("+-*/")

  def test_texts_are_short(self, task, train_problems):
    # The documented character budgets (an upper bound on token counts).
    assert max(len(task.format_prompt(p)) for p in train_problems) <= 35
    assert max(len(p.solution) for p in train_problems) <= 99

  def test_index_and_split_errors(self, task):
    with pytest.raises(IndexError, match="out of range"):
      task.get("test", task.num_examples("test"))
    with pytest.raises(IndexError):
      task.get("train", -1)
    with pytest.raises(ValueError, match="Unknown split"):
      task.get("validation", 0)

  @pytest.mark.parametrize("kwargs", [
      dict(min_ops=4, max_ops=3),
      dict(min_ops=0),
      dict(max_operand_digits=3, max_value=500),
      dict(operations="*/+"),
      dict(operations="+-%"),
      dict(max_factor=1),
      dict(seed=-1),
  ])
  def test_invalid_config(self, kwargs):
    with pytest.raises(ValueError):
      tasks.get_task("arith", **kwargs)


class TestSplits:

  def test_no_test_question_in_train(self, task, test_problems):
    train = {task.get("train", i).question for i in range(5000)}
    assert not train & {p.question for p in test_problems}

  def test_membership_is_a_function_of_the_question(self, train_problems,
                                                    test_problems):
    assert all(arithmetic._split_bit(p.question) == 0 for p in train_problems)
    assert all(arithmetic._split_bit(p.question) == 1 for p in test_problems)

  def test_disjoint_even_when_problem_space_is_tiny(self):
    # ~200 distinct one-step one-digit questions: without the split rule,
    # 300 + 300 draws would overlap almost surely.
    task = tasks.get_task("arith", min_ops=1, max_ops=1, max_operand_digits=1,
                          num_train=300, num_test=300)
    train = {task.get("train", i).question for i in range(300)}
    test = {task.get("test", i).question for i in range(300)}
    assert len(train) > 40 and len(test) > 40
    assert not train & test


class TestAnswers:

  @pytest.mark.parametrize("text, expected", [
      ("1+2=3\nAnswer: 3", "3"),
      ("Answer: 236", "236"),
      ("Answer:236", "236"),
      ("Answer:  0236 ", "236"),
      ("Answer: +5", "5"),
      ("Answer: 000", "0"),
      ("Answer: -0", "0"),
      ("Answer: -12", "-12"),
      ("  Answer: 5", "5"),
      ("Answer: 1\nAnswer: 2", "2"),
      ("Answer: 2\nAnswer: x", None),  # The last answer line decides.
      ("Answer: 5\n</s>\x00garbage", "5"),
      ("1+2=3", None),
      ("", None),
      ("Answer:", None),
      ("Answer: ", None),
      ("Answer: 3.5", None),
      ("Answer: 1,000", None),
      ("Answer: 12abc", None),
      ("Answer: 5</s>garbage", None),
      ("Answer: 1 2", None),
      ("Answer: \u0663", None),  # Non-ASCII digit.
      ("Answer: 1_000", None),
      ("the Answer: 5", None),
      ("answer: 5", None),
  ])
  def test_extract_answer(self, task, text, expected):
    assert task.extract_answer(text) == expected

  def test_huge_integer(self, task):
    assert task.extract_answer("Answer: " + "9" * 10_000) == "9" * 10_000

  def test_non_string_input(self, task):
    p = task.get("test", 0)
    for bad in (None, b"Answer: 1", 12):
      assert task.extract_answer(bad) is None
      assert task.is_correct(bad, p) is False

  def test_is_correct(self, task):
    p = task.get("test", 0)
    steps = task.split_steps(p.solution)

    def with_answer(answer):
      return task.join_steps(steps[:-1] + [f"Answer: {answer}"])

    assert task.is_correct(with_answer("0" + p.answer), p)
    assert not task.is_correct(with_answer(int(p.answer) + 1), p)
    assert not task.is_correct(task.join_steps(steps[:-1]), p)

  def test_is_correct_never_raises_on_garbage(self, task):
    p = task.get("test", 3)
    rng = random.Random(0)
    alphabet = list("0123456789+-*/= \n\t:.,Aa\x00\u0663\u2581") + [
        "Answer:", "Answer: ", p.answer, "</s>", "<unk>"]
    for _ in range(2000):
      text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(40)))
      result = task.is_correct(text, p)
      assert isinstance(result, bool)
      assert result == (task.extract_answer(text) == p.answer)


class TestSteps:

  def test_round_trip_on_references(self, task, train_problems):
    for p in train_problems[:500]:
      assert task.join_steps(task.split_steps(p.solution)) == p.solution

  def test_split_drops_empty_steps(self, task):
    assert task.split_steps("a\n\n b\n  \nAnswer: 1\n") == [
        "a", " b", "Answer: 1"]
    assert task.split_steps("") == []

  def test_prompt_and_corpus(self, task):
    p = task.get("train", 0)
    assert task.format_prompt(p) == p.question + "\n"
    corpus = list(task.corpus("train", 3))
    assert corpus[0] == task.format_prompt(p) + p.solution
    assert len(corpus) == 3
    small = tasks.get_task("arith", num_train=4)
    assert len(list(small.corpus("train", 10))) == 4


@pytest.fixture(scope="module")
def small_task():
  return tasks.get_task("arith", num_train=200, num_test=50)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


class TestTfdsBuilder:

  def test_records_equal_task_problems(self, small_task, data_dir):
    for split in ("train", "test"):
      source = tfds_builder.build_data_source(small_task, split, data_dir)
      assert len(source) == small_task.num_examples(split)
      for i in range(len(source)):
        record = source[i]
        assert isinstance(record["question"], bytes)
        problem = tfds_builder.record_to_problem(record, small_task.meta_keys)
        assert problem == small_task.get(split, i)

  def test_reuses_existing_data(self, small_task, data_dir):
    tfds_builder.build_data_source(small_task, "test", data_dir)
    builder = tfds_builder.TaskDatasetBuilder(small_task, data_dir=data_dir)
    files = sorted(builder.data_path.glob("*.array_record*"))
    mtimes = [os.stat(os.fspath(f)).st_mtime_ns for f in files]
    source = tfds_builder.build_data_source(small_task, "test", data_dir)
    assert len(files) == 2
    assert [os.stat(os.fspath(f)).st_mtime_ns for f in files] == mtimes
    assert len(source) == 50

  def test_params_change_config(self, small_task, data_dir):
    other = tasks.get_task("arith", num_train=200, num_test=50, max_ops=3)
    name = tfds_builder.config_name(small_task)
    assert tfds_builder.config_name(other) != name
    same = tasks.get_task("arith", num_train=200, num_test=50)
    assert tfds_builder.config_name(same) == name
    source = tfds_builder.build_data_source(other, "test", data_dir)
    problems = [tfds_builder.record_to_problem(source[i], other.meta_keys)
                for i in range(len(source))]
    assert problems == [other.get("test", i) for i in range(50)]
    assert max(p.difficulty for p in problems) <= 3

  def test_stale_metadata_detected(self, small_task, tmp_path):
    tfds_builder.build_data_source(small_task, "test", str(tmp_path))
    builder = tfds_builder.TaskDatasetBuilder(small_task,
                                              data_dir=str(tmp_path))
    meta_path = builder.data_path / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["params"]["seed"] = 123
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(RuntimeError, match="built with parameters"):
      tfds_builder.build_data_source(small_task, "test", str(tmp_path))

  def test_bad_split(self, small_task, data_dir):
    with pytest.raises(ValueError, match="Unknown split"):
      tfds_builder.build_data_source(small_task, "validation", data_dir)


def test_base_task_defaults():
  """The generic base-class logic works for a minimal custom task."""

  class Echo(base.Task):
    name = "echo"
    step_delimiter = " | "
    answer_marker = "=>"
    params = {}

    def num_examples(self, split):
      return 2

    def get(self, split, index):
      self._check_split_index(split, index)
      return base.Problem(uid=f"echo/{split}/{index}", index=index,
                          split=split, question=f"q{index}",
                          solution=f"s | => a{index}", answer=f"a{index}",
                          difficulty=1)

  task = Echo()
  p = task.get("train", 1)
  assert task.split_steps(p.solution) == ["s", "=> a1"]
  assert task.is_correct(p.solution, p)
  assert task.extract_answer("=>   ") is None
  assert task.format_prompt(p) == "q1 | "
  assert np.array_equal(list(task.corpus("test", 5)),
                        ["q0 | s | => a0", "q1 | s | => a1"])


# --- the step checker (an oracle for diagnosis) ------------------------------------------------


def _problem(task, question, answer):
  return base.Problem(uid="arith/test/x", index=0, split="test", question=question,
                      solution="", answer=str(answer), difficulty=question.count(" "), meta={})


def test_the_step_checker_on_hand_written_steps(task):
  p = _problem(task, "37 +48 *3 -19", 236)
  check = lambda text: task.first_wrong_step(text, p)  # noqa: E731
  assert task.has_step_checker
  assert check("37+48=85\n85*3=255\n255-19=236\nAnswer: 236") is None
  assert check("37 + 48 = 85\n85*3=255\n255-19=236\nAnswer: 236") is None  # spacing is fine
  assert check("37+48=85\n85*3=265\n265-19=246\nAnswer: 246") == 1  # an arithmetic slip
  assert check("37+48=85\n58*3=174\n174-19=155\nAnswer: 155") == 1  # a copied wrong value
  assert check("37+48=85\n85*4=340\n340-19=321\nAnswer: 321") == 1  # a wrong operand
  assert check("37+48=85\n85+3=88\n88-19=69\nAnswer: 69") == 1  # a wrong operation
  assert check("37+48=85\n85*3=255\n255-19=236\nAnswer: 237") == 3  # answer line != result
  assert check("37+48=85\n85*3=255\nAnswer: 255") == 2  # the answer comes a step early
  assert check("37+48=85\n85*3=255\n255-19=236\nAnswer: 236\n1+1=2") == 4  # after the answer
  assert check("37+48=85\n85*3=255") is None  # cut short: no wrong step (and not correct)
  assert not task.is_correct("37+48=85\n85*3=255", p)
  assert check("") is None
  assert check("37+48=85\nthe answer is 255") == 1  # not a step
  assert check("38+47=85\n85*3=255\n255-19=236\nAnswer: 236") == 0  # not the start value
  # An inexact division is wrong even where floor division agrees.
  d = _problem(task, "7 /2", 3)
  assert task.first_wrong_step("7/2=3\nAnswer: 3", d) == 0


def test_every_reference_passes_and_every_planted_error_is_found(task, train_problems):
  rng = random.Random(0)
  for p in train_problems[:500]:
    assert task.first_wrong_step(p.solution, p) is None
    steps = task.split_steps(p.solution)
    k = rng.randrange(len(steps) - 1)  # an operation step
    a, op, b, c = _STEP_RE.fullmatch(steps[k]).groups()
    steps[k] = f"{a}{op}{b}={int(c) + rng.choice([-2, -1, 1, 2]) if int(c) > 1 else int(c) + 1}"
    assert task.first_wrong_step(task.join_steps(steps), p) == k



def test_a_task_without_a_step_checker_says_so():
  import heldout_task  # pylint: disable=g-import-not-at-top
  t = heldout_task.ModSum()
  assert not t.has_step_checker
  with pytest.raises(NotImplementedError, match="has no step checker"):
    t.first_wrong_step("1", t.get("test", 0))


def test_an_erroneous_solution_slips_once_and_follows_its_slip(task, train_problems):
  """arith's erroneous solutions (retry data): the reference up to one step whose result has
  one digit replaced, later steps exact from the wrong value, a wrong final answer."""
  assert task.has_erroneous_solutions
  wrong_at = collections.Counter()
  for p in train_problems[:600]:
    rng = np.random.default_rng(p.index)
    text = task.erroneous_solution(p, rng)
    assert text == task.erroneous_solution(p, np.random.default_rng(p.index))  # its draws only
    k = task.first_wrong_step(text, p)
    ref, got = task.split_steps(p.solution), task.split_steps(text)
    assert k is not None and k < len(ref) - 1 and not task.is_correct(text, p), (p.question, text)
    assert len(got) == len(ref) and got[:k] == ref[:k]
    # The slip: the step's operands are right, its result differs from the right one in one
    # digit (same length); each later step is exact arithmetic on the wrong value.
    a, op, b, c = _STEP_RE.fullmatch(got[k]).groups()
    right = _STEP_RE.fullmatch(ref[k]).groups()[3]
    assert (a, op, b) == _STEP_RE.fullmatch(ref[k]).groups()[:3]
    assert len(c) == len(right) and sum(x != y for x, y in zip(c, right)) == 1
    value = int(c)
    for step in got[k + 1:-1]:
      a, op, b, c = _STEP_RE.fullmatch(step).groups()
      assert int(a) == value and arithmetic._exact(op, value, int(b), int(c))
      assert 0 <= int(c) <= 999
      value = int(c)
    assert task.extract_answer(text) == str(value) != p.answer
    wrong_at[k == len(ref) - 2] += 1
  # Slips are drawn at every step, not only at the last operation.
  assert wrong_at[False] > 100 and wrong_at[True] > 100


def test_a_task_that_cannot_write_erroneous_solutions_says_so():
  import heldout_task  # pylint: disable=g-import-not-at-top
  t = heldout_task.ModSum()
  assert not t.has_erroneous_solutions
  with pytest.raises(NotImplementedError, match="cannot write erroneous solutions"):
    t.erroneous_solution(t.get("train", 0), np.random.default_rng(0))
