"""Task protocol shared by every reasoning task (arithmetic, MATH, GSM8K, ...).

A *task* is an indexed, deterministic collection of problems per split plus the
text conventions needed to train and evaluate models on it:

* A **solution text** is a sequence of *steps* separated (not terminated) by
  `Task.step_delimiter`. The last step is the *final-answer line*
  `f"{answer_marker} {answer}"`, and it counts as a step: the solution
  `"s1\ns2\nAnswer: 5"` has 3 steps and 2 delimiters.
* The text a policy is conditioned on is `Task.format_prompt(problem)`; the
  full training text is `format_prompt(problem) + problem.solution` (the EOS
  token is added by the tokenizer, not by the task).
* `extract_answer` and `is_correct` grade arbitrary (possibly malformed,
  model-generated) text and never raise.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class Problem:
  """One problem of a task.

  Attributes:
    uid: Stable id, `f"{task.name}/{split}/{index}"`.
    index: Index of the problem within its split.
    split: "train" or "test".
    question: Problem statement.
    solution: Reference solution: steps joined by the task's step delimiter,
      ending in the final-answer line.
    answer: Canonical final answer (as produced by `Task.normalize_answer`).
    difficulty: The task's difficulty knob (e.g. number of operations).
    meta: Extra generation knobs (e.g. operand digits). Excluded from hashing.
  """

  uid: str
  index: int
  split: str
  question: str
  solution: str
  answer: str
  difficulty: int
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)

  def __post_init__(self):
    # Defensive copy so that a caller mutating its dict cannot alter a Problem.
    object.__setattr__(self, "meta", dict(self.meta))


class Task(abc.ABC):
  """Interface of a reasoning task.

  Subclasses set the class attributes, implement the abstract methods and may
  override `normalize_answer` / `format_prompt`. The step and answer handling
  implemented here is generic and shared by all tasks.

  Attributes:
    name: Registry name of the task; also the prefix of `Problem.uid`.
    step_delimiter: Separator between solution steps (e.g. "\\n").
    answer_marker: Prefix of the final-answer line (e.g. "Answer:").
    meta_keys: Names of the integer-valued entries of `Problem.meta` (used to
      declare dataset features).
    difficulty_label: What `Problem.difficulty` counts, for figures and reports.
  """

  name: str
  step_delimiter: str
  answer_marker: str
  meta_keys: tuple[str, ...] = ()
  difficulty_label: str = "difficulty"  # What Problem.difficulty measures (figure axes).

  # ---------------------------------------------------------------------------
  # Problem access (task specific).
  # ---------------------------------------------------------------------------

  @property
  @abc.abstractmethod
  def params(self) -> Mapping[str, Any]:
    """JSON-serializable parameters that fully determine the task's problems.

    Used to key on-disk caches (e.g. TFDS configs): two tasks with equal
    `name` and `params` must produce identical problems.
    """

  @abc.abstractmethod
  def num_examples(self, split: str) -> int:
    """Number of problems in `split`."""

  @abc.abstractmethod
  def get(self, split: str, index: int) -> Problem:
    """Returns problem `index` of `split`; deterministic."""

  # ---------------------------------------------------------------------------
  # Text conventions (generic).
  # ---------------------------------------------------------------------------

  def format_prompt(self, problem: Problem) -> str:
    """Text the policy is conditioned on: the question and a step delimiter."""
    return problem.question + self.step_delimiter

  def format_revision_prompt(self, problem: Problem, attempts: Sequence[str]) -> str:
    """Text the revision model is conditioned on (Snell et al. 2024, section 6).

    The question, each earlier attempt (a solution text, verbatim) followed by a step
    delimiter, then the question again: the revision model writes its next attempt
    after the repeated question, as the policy writes one after the question. Only
    text the task's own corpus contains is used, so a tokenizer trained on the task
    encodes it. With no attempts it is ``format_prompt(problem)``: a chain's first
    answer is conditioned like the policy's. Tasks with a chat format override it.
    """
    return "".join(self.revision_prompt_pieces(problem, attempts))

  def revision_prompt_pieces(self, problem: Problem, attempts: Sequence[str]) -> list[str]:
    """:meth:`format_revision_prompt` as pieces that are tokenized one by one (training
    and inference alike, :func:`ttc_jax.training.revisions.encode_revision_prompt`): the
    prompt, each attempt with its delimiter, the prompt again. A piece boundary is a
    token boundary, so the first piece's tokens -- the policy's own prompt -- are a
    prefix of every revision prompt of the problem, and a chain reuses their KV cache."""
    prompt = self.format_prompt(problem)
    if not attempts:
      return [prompt]
    return [prompt] + [a + self.step_delimiter for a in attempts] + [prompt]

  def split_steps(self, solution_text: str) -> list[str]:
    """Splits a solution into steps.

    The delimiter is removed and steps that are empty or whitespace-only are
    dropped; kept steps are returned verbatim (not stripped), so that
    `join_steps(split_steps(t)) == t` for every canonical solution `t`.

    Args:
      solution_text: A reference or generated solution.

    Returns:
      The non-empty steps, final-answer line included.
    """
    return [s for s in solution_text.split(self.step_delimiter) if s.strip()]

  def join_steps(self, steps: Sequence[str]) -> str:
    """Inverse of `split_steps` for canonical steps."""
    return self.step_delimiter.join(steps)

  def format_answer_line(self, answer: str) -> str:
    """The final-answer line (last step) of a solution."""
    return f"{self.answer_marker} {answer}"

  def normalize_answer(self, raw: str) -> str | None:
    """Canonical form of a raw answer string, or None if it is not an answer.

    The default strips surrounding whitespace and rejects empty strings. Tasks
    override this with a stricter, task-specific normalization. Must never
    raise for any `str` input.
    """
    raw = raw.strip()
    return raw or None

  def extract_answer(self, solution_text: str) -> str | None:
    """Normalized final answer of a solution, or None for "no answer".

    The answer is read from the LAST step that starts (after leading
    whitespace) with `answer_marker`. Returns None if there is no such step or
    its remainder does not normalize. Never raises.

    Args:
      solution_text: A reference or generated solution (any string).
    """
    if not isinstance(solution_text, str):
      return None
    for step in reversed(solution_text.split(self.step_delimiter)):
      step = step.lstrip()
      if step.startswith(self.answer_marker):
        try:
          return self.normalize_answer(step[len(self.answer_marker):])
        except Exception:  # pylint: disable=broad-except
          # A subclass normalizer must not crash grading of model samples.
          return None
    return None

  def is_correct(self, solution_text: str, problem: Problem) -> bool:
    """Whether `solution_text`'s final answer equals `problem.answer`.

    Both sides are normalized with `normalize_answer`; "no answer" is
    incorrect. Never raises.
    """
    predicted = self.extract_answer(solution_text)
    if predicted is None:
      return False
    try:
      return predicted == self.normalize_answer(problem.answer)
    except Exception:  # pylint: disable=broad-except
      return False

  # A task that can tell which step of a solution is wrong sets this and implements
  # first_wrong_step (an oracle for diagnosis: oracle step labels, a synthetic verifier of
  # controlled quality; never a verifier of the study's claims).
  has_step_checker: bool = False

  def first_wrong_step(self, solution_text: str, problem: Problem) -> int | None:
    """The index, among ``split_steps(solution_text)``, of the first step that is wrong;
    None if no step is wrong. A solution cut short has no wrong step (whether it reaches
    the answer is :meth:`is_correct`'s question); a step after the final-answer line is
    wrong. Never raises for a ``str`` solution.

    Raises:
      NotImplementedError: the task has no step checker (``has_step_checker`` is False).
    """
    raise NotImplementedError(f"task {self.name!r} has no step checker.")

  # A task that can write a plausible wrong solution sets this and implements
  # erroneous_solution (retry data: an error followed by its correction in the policy's SFT
  # mix, ttc_jax.training.revisions.retry_rows).
  has_erroneous_solutions: bool = False

  def erroneous_solution(self, problem: Problem, rng: np.random.Generator) -> str:
    """A solution of ``problem`` in the task's format with one wrong step, the steps after it
    following from the wrong value as a solver who slipped would write them, and a wrong
    final answer; every draw from ``rng``.

    Raises:
      NotImplementedError: the task cannot write one (``has_erroneous_solutions`` is False).
    """
    del rng
    raise NotImplementedError(f"task {self.name!r} cannot write erroneous solutions "
                              f"({problem.uid}); retry data needs them.")

  def corpus(self, split: str, n: int) -> Iterator[str]:
    """Yields `format_prompt(p) + p.solution` for the first `n` problems.

    Args:
      split: Split to read.
      n: Number of texts; clipped to the split size.
    """
    for index in range(min(n, self.num_examples(split))):
      problem = self.get(split, index)
      yield self.format_prompt(problem) + problem.solution

  # ---------------------------------------------------------------------------
  # Helpers for subclasses.
  # ---------------------------------------------------------------------------

  def _check_split_index(self, split: str, index: int) -> None:
    if split not in SPLITS:
      raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
    n = self.num_examples(split)
    if not 0 <= index < n:
      raise IndexError(
          f"{self.name}: index {index} out of range for split {split!r} "
          f"with {n} examples."
      )


def unusable_references(task: Task, problems: Sequence[Problem]) -> list[tuple[Problem, str]]:
  """The problems whose reference cannot grade anything: an empty answer, or a reference
  solution that does not grade correct against its own answer (a broken data file or
  grader: every sample of such a problem would be graded wrong). (problem, why) pairs."""
  out = []
  for p in problems:
    if not isinstance(p.answer, str) or not p.answer.strip():
      out.append((p, f"answer {p.answer!r} is empty"))
    elif not task.is_correct(p.solution, p):
      out.append((p, f"its solution's final answer {task.extract_answer(p.solution)!r} does "
                     f"not grade correct against its answer {p.answer!r}"))
  return out


def shown_attempts(attempts: Sequence, window: int) -> list:
  """The attempts a revision prompt shows: the last ``window`` (the sliding window)."""
  if window < 0:
    raise ValueError(f"window={window}: expected >= 0 previous attempts.")
  return list(attempts[-window:]) if window else []


def encode_revision_prompt(tokenizer, task: "Task", problem: Problem, attempts: Sequence[str]
                           ) -> list[int]:
  """BOS + the task's revision prompt pieces, each tokenized on its own (as
  :func:`ttc_jax.training.data.prompt_target_dataset` tokenizes them at training): the
  first piece's tokens, BOS + the policy's prompt, are a prefix of every revision prompt
  of the problem."""
  ids = [tokenizer.bos_id]
  for piece in task.revision_prompt_pieces(problem, attempts):
    ids += tokenizer.encode(piece)
  return ids
