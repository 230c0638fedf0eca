"""Synthetic multi-step arithmetic task ("arith"), generated on the fly.

A problem is a chain of operations applied left to right to a running value.
The surface format is deliberately compact so that a tiny character-level
transformer can learn it in minutes on a CPU:

  prompt:    "37 +48 *3 -19\\n"
  solution:  "37+48=85\\n85*3=255\\n255-19=236\\nAnswer: 236"

The question is the start value followed by one `" <op><operand>"` group per
operation (no precedence: operations apply in order). The reference solution
has one step `"<a><op><b>=<c>"` per operation, where `a` is the previous
result (the start value for the first step), followed by the final-answer line
`"Answer: <value>"`, which is itself the last step. Errors compound: a wrong
intermediate result is copied into the next step.

Generation rules (all draws from a per-problem `np.random.Generator`):

* difficulty = number of operations, uniform in `[min_ops, max_ops]`;
* operand digits `d`, uniform in `[min_operand_digits, max_operand_digits]`;
  the start value and every `+`/`-` operand have exactly `d` digits;
* the running value stays in `[0, max_value]`. At every step the operation is
  uniform over the *feasible* ones, then its operand is uniform over the
  feasible operands:
    `+ b`  if `v + b <= max_value`;
    `- b`  if `b <= v` (no negative values);
    `* k`  with `2 <= k <= max_factor` and `v * k <= max_value`, `v > 0`;
    `/ k`  with `2 <= k <= max_factor` and `k` divides `v > 0` (exact only).
  Because `max_value >= 10**max_operand_digits - 1`, `+` or `-` is always
  feasible, so every chain has exactly the requested length.

Split membership is decided by the question text itself: a candidate generated
from `SeedSequence([seed, split_id, index, attempt])` is accepted for split
`split_id` (train=0, test=1) only if the lowest bit of a BLAKE2b hash of its
question equals `split_id`; otherwise the next `attempt` is tried. A question
text therefore belongs to at most one split, which makes train and test
disjoint by construction. Problem `(split, index)` depends only on `seed` and
the generation knobs, not on the split sizes. Within a split, questions may
repeat (short chains have few distinct questions).

Length budget with the defaults (<= 8 ops, <= 2-digit operands, values
<= 999): a prompt has at most 2 + 8 * 4 + 1 = 35 characters and a solution at
most 8 * 10 + 8 + len("Answer: 999") = 99 characters, i.e. at most 35 and 93
tokens with one token per character and the answer marker as a single token
(the trained tokenizer also merges " +" etc., giving <= 27 prompt tokens).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Mapping

import numpy as np

from ttc_jax.tasks import base

# Bump when the generation procedure changes, so that caches keyed on
# `ArithmeticTask.params` (e.g. TFDS configs) are invalidated.
GENERATOR_VERSION = 1

_SPLIT_IDS = {"train": 0, "test": 1}
_MAX_ATTEMPTS = 1000
_OPERATIONS = "+-*/"
_INTEGER_RE = re.compile(r"([+-]?)([0-9]+)")
_STEP_RE = re.compile(r"\s*([0-9]+)\s*([+\-*/])\s*([0-9]+)\s*=\s*([0-9]+)\s*")
_QUESTION_RE = re.compile(r"([0-9]+)((?: [+\-*/][0-9]+)*)")
_OPERATION_RE = re.compile(r" ([+\-*/])([0-9]+)")


def _split_bit(question: str) -> int:
  """Split (0 = train, 1 = test) that owns `question`; a stable hash bit."""
  digest = hashlib.blake2b(question.encode("utf-8"), digest_size=8).digest()
  return digest[0] & 1


def _apply(op: str, a: int, b: int) -> int:
  if op == "+":
    return a + b
  if op == "-":
    return a - b
  if op == "*":
    return a * b
  if op == "/":
    return a // b
  raise ValueError(f"Unknown operation {op!r}.")


def _exact(op: str, a: int, b: int, c: int) -> bool:
  """Whether "a op b = c" holds exactly (a division with no remainder)."""
  if op == "/":
    return b != 0 and a % b == 0 and a // b == c
  return _apply(op, a, b) == c


class ArithmeticTask(base.Task):
  """Deterministic synthetic multi-step arithmetic (see module docstring)."""

  name = "arith"
  step_delimiter = "\n"
  answer_marker = "Answer:"
  meta_keys = ("operand_digits",)
  difficulty_label = "number of operations"
  # The task's config section (keyword arguments of __init__ and their defaults).
  DEFAULTS = dict(seed=0, num_train=20_000, num_test=500, min_ops=1, max_ops=8,
                  min_operand_digits=1, max_operand_digits=2, max_value=999, max_factor=9,
                  operations=_OPERATIONS)

  def __init__(
      self,
      *,
      seed: int = 0,
      num_train: int = 20_000,
      num_test: int = 500,
      min_ops: int = 1,
      max_ops: int = 8,
      min_operand_digits: int = 1,
      max_operand_digits: int = 2,
      max_value: int = 999,
      max_factor: int = 9,
      operations: str = _OPERATIONS,
  ):
    """Initializes the task.

    Args:
      seed: Non-negative base seed of the generator.
      num_train: Number of train problems.
      num_test: Number of test problems.
      min_ops: Minimum number of operations (difficulty), >= 1.
      max_ops: Maximum number of operations (difficulty).
      min_operand_digits: Minimum digits of the start value and +/- operands.
      max_operand_digits: Maximum digits of the start value and +/- operands.
      max_value: Inclusive upper bound of every running value; must be at
        least `10**max_operand_digits - 1`.
      max_factor: Largest multiplier / divisor (>= 2); factors are >= 2.
      operations: Allowed operations, a subset of "+-*/" containing "+" and
        "-" (which guarantee that some operation is always feasible).
    """
    if seed < 0:
      raise ValueError(f"seed must be non-negative, got {seed}.")
    if num_train < 0 or num_test < 0:
      raise ValueError(
          f"Split sizes must be non-negative, got {num_train=}, {num_test=}."
      )
    if not 1 <= min_ops <= max_ops:
      raise ValueError(
          f"Need 1 <= min_ops <= max_ops, got {min_ops}, {max_ops}."
      )
    if not 1 <= min_operand_digits <= max_operand_digits:
      raise ValueError(
          "Need 1 <= min_operand_digits <= max_operand_digits, got "
          f"{min_operand_digits}, {max_operand_digits}."
      )
    if max_value < 10**max_operand_digits - 1:
      raise ValueError(
          f"max_value={max_value} must be >= {10**max_operand_digits - 1} so "
          f"that every {max_operand_digits}-digit start value is in range."
      )
    if max_factor < 2:
      raise ValueError(f"max_factor must be >= 2, got {max_factor}.")
    if (
        not set(operations) <= set(_OPERATIONS)
        or not {"+", "-"} <= set(operations)
        or len(set(operations)) != len(operations)
    ):
      raise ValueError(
          f"operations must be distinct characters of {_OPERATIONS!r} "
          f"including '+' and '-', got {operations!r}."
      )
    self._seed = seed
    self._sizes = {"train": num_train, "test": num_test}
    self._min_ops = min_ops
    self._max_ops = max_ops
    self._min_digits = min_operand_digits
    self._max_digits = max_operand_digits
    self._max_value = max_value
    self._max_factor = max_factor
    # Canonical order so that e.g. "-+" and "+-" generate the same problems.
    self._operations = "".join(op for op in _OPERATIONS if op in operations)

  @property
  def params(self) -> Mapping[str, Any]:
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": self._seed,
        "num_train": self._sizes["train"],
        "num_test": self._sizes["test"],
        "min_ops": self._min_ops,
        "max_ops": self._max_ops,
        "min_operand_digits": self._min_digits,
        "max_operand_digits": self._max_digits,
        "max_value": self._max_value,
        "max_factor": self._max_factor,
        "operations": self._operations,
    }

  def num_examples(self, split: str) -> int:
    if split not in self._sizes:
      raise ValueError(
          f"Unknown split {split!r}; expected one of {base.SPLITS}."
      )
    return self._sizes[split]

  def get(self, split: str, index: int) -> base.Problem:
    self._check_split_index(split, index)
    split_id = _SPLIT_IDS[split]
    for attempt in range(_MAX_ATTEMPTS):
      rng = np.random.default_rng(
          np.random.SeedSequence([self._seed, split_id, index, attempt])
      )
      question, steps, answer, num_ops, digits = self._sample(rng)
      if _split_bit(question) == split_id:
        break
    else:  # Only reachable for degenerate configurations.
      raise RuntimeError(
          f"No {split} problem found for index {index} after {_MAX_ATTEMPTS} "
          "attempts; the configured problem space is too small."
      )
    steps.append(self.format_answer_line(str(answer)))
    return base.Problem(
        uid=f"{self.name}/{split}/{index}",
        index=index,
        split=split,
        question=question,
        solution=self.join_steps(steps),
        answer=str(answer),
        difficulty=num_ops,
        meta={"operand_digits": digits},
    )

  has_step_checker = True

  def first_wrong_step(self, solution_text: str, problem: base.Problem) -> int | None:
    """The first wrong step (see :meth:`base.Task.first_wrong_step`). Step i < the number
    of operations must read "a<op>b=c" with a the previous step's result (the start value
    for the first), op and b the question's i-th operation, and c = a op b exactly (a
    division leaves no remainder); the step after the last operation must be the answer
    line with c's value; nothing may follow it."""
    match = _QUESTION_RE.fullmatch(problem.question.strip())
    if match is None:
      raise ValueError(f"{problem.uid}: question {problem.question!r} is not an arith chain.")
    value = int(match.group(1))
    ops = [(op, int(b)) for op, b in _OPERATION_RE.findall(match.group(2))]
    if not isinstance(solution_text, str):
      return 0
    for i, step in enumerate(self.split_steps(solution_text)):
      if i == len(ops):
        right = step.lstrip().startswith(self.answer_marker) and self.normalize_answer(
            step.lstrip()[len(self.answer_marker):]) == str(value)
      elif i > len(ops):
        right = False
      else:
        got = _STEP_RE.fullmatch(step)
        op, b = ops[i]
        right = got is not None and (int(got.group(1)), got.group(2), int(got.group(3))) == (
            value, op, b) and _exact(op, value, b, int(got.group(4)))
        value = int(got.group(4)) if right else value
      if not right:
        return i
    return None

  has_erroneous_solutions = True

  def erroneous_solution(self, problem: base.Problem, rng: np.random.Generator) -> str:
    """The reference solution with an arithmetic slip (see :meth:`base.Task.
    erroneous_solution`): at a step drawn uniformly, one digit of the result is replaced by
    another; the later steps compute exactly from the wrong value. A slip whose later steps
    would leave [0, max_value], divide with a remainder or reach the right answer after all
    is drawn again (up to 32 times; then the slip is at the last operation, which always
    gives a wrong final answer)."""
    match = _QUESTION_RE.fullmatch(problem.question.strip())
    if match is None:
      raise ValueError(f"{problem.uid}: question {problem.question!r} is not an arith chain.")
    start = int(match.group(1))
    ops = [(op, int(b)) for op, b in _OPERATION_RE.findall(match.group(2))]
    values = [start]
    for op, b in ops:
      values.append(_apply(op, values[-1], b))
    for attempt in range(33):
      i = int(rng.integers(len(ops))) if attempt < 32 else len(ops) - 1
      right = str(values[i + 1])
      pos = int(rng.integers(len(right)))
      digits = [d for d in "0123456789" if d != right[pos] and not (
          pos == 0 and d == "0" and len(right) > 1)]
      wrong = int(right[:pos] + digits[int(rng.integers(len(digits)))] + right[pos + 1:])
      steps = [f"{values[j]}{op}{b}={values[j + 1]}" for j, (op, b) in enumerate(ops[:i])]
      steps.append(f"{values[i]}{ops[i][0]}{ops[i][1]}={wrong}")
      value, ok = wrong, True
      for op, b in ops[i + 1:]:
        if not _exact(op, value, b, _apply(op, value, b)) or not (
            0 <= _apply(op, value, b) <= self._max_value):
          ok = False
          break
        steps.append(f"{value}{op}{b}={_apply(op, value, b)}")
        value = _apply(op, value, b)
      if ok and value != values[-1]:
        return self.join_steps(steps + [self.format_answer_line(str(value))])
    raise AssertionError("unreachable: a slip at the last operation is always wrong")

  def normalize_answer(self, raw: str) -> str | None:
    """Canonical integer string: "+007" -> "7", "-0" -> "0"; else None.

    Only ASCII digits with an optional sign, surrounded by whitespace, are
    accepted (no decimal points, separators or trailing text).
    """
    match = _INTEGER_RE.fullmatch(raw.strip())
    if match is None:
      return None
    sign, digits = match.groups()
    digits = digits.lstrip("0") or "0"
    return "-" + digits if sign == "-" and digits != "0" else digits

  def _sample(
      self, rng: np.random.Generator
  ) -> tuple[str, list[str], int, int, int]:
    """Draws one candidate: (question, steps, answer, num_ops, digits)."""
    num_ops = int(rng.integers(self._min_ops, self._max_ops + 1))
    digits = int(rng.integers(self._min_digits, self._max_digits + 1))
    lo = 10 ** (digits - 1) if digits > 1 else 1
    hi = 10**digits - 1
    value = int(rng.integers(lo, hi + 1))
    question = [str(value)]
    steps = []
    for _ in range(num_ops):
      # Feasible operations, each with its list/range of feasible operands.
      choices: list[tuple[str, Any]] = []
      for op in self._operations:
        if op == "+" and min(hi, self._max_value - value) >= lo:
          choices.append((op, (lo, min(hi, self._max_value - value))))
        elif op == "-" and min(hi, value) >= lo:
          choices.append((op, (lo, min(hi, value))))
        elif op == "*" and value > 0:
          top = min(self._max_factor, self._max_value // value)
          if top >= 2:
            choices.append((op, (2, top)))
        elif op == "/" and value > 0:
          divisors = [
              k for k in range(2, self._max_factor + 1) if value % k == 0
          ]
          if divisors:
            choices.append((op, divisors))
      op, operands = choices[int(rng.integers(len(choices)))]
      if isinstance(operands, tuple):
        operand = int(rng.integers(operands[0], operands[1] + 1))
      else:
        operand = operands[int(rng.integers(len(operands)))]
      result = _apply(op, value, operand)
      question.append(f" {op}{operand}")
      steps.append(f"{value}{op}{operand}={result}")
      value = result
    return "".join(question), steps, value, num_ops, digits
