"""MATH and GSM8K tasks over local files; math-verify grading under a time limit."""

import json
import os

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from ttc_jax import tasks
from ttc_jax.tasks.grading import Grader
from ttc_jax.tasks.grading import shared_grader
from ttc_jax.tasks.grading import units_conflict
from ttc_jax.tasks.math_benchmarks import GSM8KTask
from ttc_jax.tasks.math_benchmarks import MathTask
from ttc_jax.tasks.math_benchmarks import last_boxed

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
needs_shared = pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "math")),
                                  reason="shared/data (MATH, GSM8K) is not next to the repo")


def slow_on_request(gold, pred):
  """A grading function that spins forever on the prediction 'hang' (burning CPU, as sympy
  does on adversarial input) and answers at once otherwise."""
  while pred == "hang":
    pass
  return gold == pred


@pytest.fixture(scope="module")
def grader():
  return shared_grader(1.0)  # the tasks' own: one worker process for the module


@pytest.mark.parametrize("text, want", [
    ("so $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("\\boxed{1} then \\boxed{{a}+{b}}", "{a}+{b}"),
    ("\\boxed 5 apples", "5"),
    ("\\fbox{7}", "7"),
    ("\\boxed{unclosed", None),
    ("no box", None),
    ("\\boxed{}", None),
])
def test_last_boxed(text, want):
  assert last_boxed(text) == want


@pytest.mark.parametrize("gold, pred, want", [
    ("\\frac{1}{2}", "0.5", True),
    ("\\frac{1}{2}", "\\dfrac12", True),
    ("3", "4", False),
    ("(1, 2)", "(1,2)", True),
    ("x^2+2x+1", "(x+1)^2", True),
    ("10", None, False),
    ("42 \\text{ inches}", "42 \\text{ feet}", False),  # math-verify alone accepts it
    ("42 \\text{ inches}", "42 \\text{ inch}", True),
])
def test_grading(grader, gold, pred, want):
  assert grader.grade(gold, pred) is want


def test_units_conflict():
  assert units_conflict("5 \\text{ cm}", "5 \\text{ m}")
  assert not units_conflict("5 \\text{ cm}", "5")  # no unit on one side: math-verify decides
  assert not units_conflict("5 \\mbox{ inches}", "5\\text{inch}")


def test_time_limit_kills_a_hanging_call_and_recovers():
  g = Grader(time_limit_s=1.0, function=slow_on_request)
  try:
    assert g.grade("a", "a") is True
    assert g.grade("a", "hang") is False and g.timeouts == 1
    assert g.grade("b", "b") is True  # a fresh worker took over
  finally:
    g.close()


latexish = st.lists(st.sampled_from(list("0123456789+-*/^_{}()[]\\., xyzabc$=")
                                    + ["\\frac", "\\sqrt", "\\boxed{", "\\text{", "\\pi",
                                       "\\infty", "^{", "!", "\\left(", "\\right)"]),
                    max_size=30).map("".join)


@settings(max_examples=40, deadline=None)
@given(text=st.one_of(st.text(max_size=80), latexish), gold=latexish)
def test_fuzz_extraction_and_grading_never_raise(grader, text, gold):
  """Any text: extraction returns a string or None; grading returns a bool (the worker's
  1 s limit bounds every call: a hang is killed, see the test above)."""
  math = MathTask.__new__(MathTask)  # extraction only: no data files needed
  answer = math.extract_answer(text)
  assert answer is None or isinstance(answer, str)
  gsm = GSM8KTask.__new__(GSM8KTask)
  assert gsm.extract_answer(text) is None or isinstance(gsm.extract_answer(text), str)
  assert grader.grade(gold, answer) in (True, False)
  assert grader.grade(gold, text) in (True, False)


def _write(tmp_path):
  (tmp_path / "math").mkdir()
  (tmp_path / "gsm8k").mkdir()
  rows = [{"problem": "What is $1+1$?", "solution": "We add.\n\nSo $\\boxed{2}$.",
           "answer": "2", "subject": "Algebra", "level": 1, "unique_id": "x"},
          {"problem": "Half?", "solution": "$\\boxed{\\frac12}$", "answer": "\\frac12",
           "subject": "Algebra", "level": None, "unique_id": "y"}]
  for name in ("math/test.jsonl", "math/train_reconstructed.jsonl"):
    (tmp_path / name).write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  g = [{"question": "Tom has 3 apples and buys 1,000 more. How many?",
        "answer": "3 + 1000 = <<3+1000=1003>>1003\n#### 1,003"}]
  for name in ("gsm8k/test.jsonl", "gsm8k/train.jsonl"):
    (tmp_path / name).write_text(json.dumps(g[0]) + "\n")


def test_tasks_on_small_files(tmp_path):
  _write(tmp_path)
  math = tasks.get_task("math", data_dir=str(tmp_path))
  p = math.get("test", 0)
  assert (p.answer, p.difficulty, math.num_examples("train")) == ("2", 1, 2)
  assert math.get("test", 1).difficulty == 0  # level null
  assert math.is_correct("thus \\boxed{2.0}", p) and not math.is_correct("\\boxed{3}", p)
  assert math.split_steps(p.solution) == ["We add.", "So $\\boxed{2}$."]
  gsm = tasks.get_task("gsm8k", data_dir=str(tmp_path))
  q = gsm.get("train", 0)
  assert q.answer == "1003" and q.solution == "3 + 1000 = 1003\n\n#### 1003"
  assert gsm.is_correct("3+1000 is 1003.\n\n#### 1,003", q)
  assert gsm.is_correct("The answer is $\\boxed{1003}$", q)
  assert not gsm.is_correct("#### 1004", q)
  # The data's content keys the task (TFDS config, caches), not its location.
  before = math.params
  (tmp_path / "math/test.jsonl").write_text("")
  assert tasks.get_task("math", data_dir=str(tmp_path)).params != before


def test_missing_data_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.delenv("TTC_JAX_DATA_DIR", raising=False)
  with pytest.raises(ValueError, match="needs data_dir"):
    tasks.get_task("math")
  with pytest.raises(ValueError, match=r"data files .*math/test.jsonl.* not found"):
    tasks.get_task("math", data_dir=str(tmp_path))


@needs_shared
def test_shared_data_reference_solutions_grade_correct(grader):
  """Every 20th MATH-500 reference solution is graded right against its own answer, and
  GSM8K's reference solutions too; the files are the README's (their checksums)."""
  math = tasks.get_task("math", data_dir=SHARED)
  assert math.num_examples("test") == 500 and math.num_examples("train") == 12_000
  assert math.params["sha256"]["test"].startswith("35dc41080a36")
  wrong = [i for i in range(0, 500, 20)
           if not math.is_correct(math.get("test", i).solution, math.get("test", i))]
  assert not wrong, wrong
  gsm = tasks.get_task("gsm8k", data_dir=SHARED)
  assert gsm.num_examples("test") == 1319
  assert all(gsm.is_correct(gsm.get("test", i).solution, gsm.get("test", i))
             for i in range(0, 1319, 100))
