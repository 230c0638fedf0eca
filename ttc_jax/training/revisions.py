"""Training data of the revision model (Snell et al. 2024, section 6.1), without file IO.

From K policy answers to a problem, a *trajectory* is k incorrect answers followed by a
correct one, the target the revision model learns to write after them. As in the paper:

* k is uniform in 0..``max_attempts`` (capped by the incorrect answers there are);
* the incorrect answers are the k closest to the target in character edit distance
  (Levenshtein, computed by rapidfuzz), so the errors of a chain are correlated with
  its answer rather than arbitrary;
* problems with no correct answer give no trajectory (counted in the stats).

Beyond the paper, a share ``keep_rate`` of the trajectories are *keep* trajectories: the
correct target is itself the last attempt shown, after k - 1 closest incorrect ones, so the
model also sees a correct answer in context and learns to write it again. The paper names
the absence of correct answers in context as the cause of its correct -> incorrect
revisions (about 38%); RISE (Qu et al. 2024, arXiv 2407.18219) trains on such turns too.

The attempts are ordered farthest first, so each is closer to the target than the one
before it (ties by sample index). Every draw comes from the problem's own generator:
a problem's trajectories do not depend on which other problems are built with it.
The prompt text is the task's (:meth:`ttc_jax.tasks.Task.format_revision_prompt`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

from ttc_jax.sampling import solutions
from ttc_jax.tasks import Problem
from ttc_jax.tasks import Task
from ttc_jax.tasks.base import encode_revision_prompt  # noqa: F401  (re-exported)
from ttc_jax.tasks.base import shown_attempts


@dataclasses.dataclass(frozen=True)
class Trajectory:
  """Sample indices of one problem: ``attempts`` (incorrect, in order; a keep trajectory's
  last one is the correct ``target`` itself) then ``target``."""

  problem: int  # position in the problems given to build_trajectories
  attempts: tuple[int, ...]
  target: int

  @property
  def keep(self) -> bool:
    """Whether the correct target is already in context (its last attempt)."""
    return bool(self.attempts) and self.attempts[-1] == self.target


def closest_incorrect(texts: Sequence[str], target: int, wrong: Sequence[int], k: int
                      ) -> tuple[int, ...]:
  """The ``k`` samples of ``wrong`` closest to ``texts[target]`` in edit distance,
  farthest first (ties: lower sample index counts as closer)."""
  if k <= 0 or len(wrong) == 0:
    return ()
  dist = process.cdist([texts[target]], [texts[w] for w in wrong],
                       scorer=Levenshtein.distance, dtype=np.int64)[0]
  wrong = np.asarray(wrong, np.int64)
  closest = np.lexsort((wrong, dist))[:k]  # by distance, then index
  return tuple(int(wrong[i]) for i in closest[::-1])


def build_trajectories(texts: Sequence[Sequence[str]], correct: Sequence[Sequence[bool]],
                       rngs: Sequence[np.random.Generator], *, per_problem: int,
                       max_attempts: int = 4, keep_rate: float = 0.0
                       ) -> tuple[list[Trajectory], dict]:
  """``per_problem`` trajectories for each problem that has a correct answer.

  Args:
    texts: per problem, its K answer texts (solutions as sampled).
    correct: per problem, whether each answer is correct.
    rngs: per problem, the generator of its draws (target, k).
    per_problem: trajectories drawn per problem (targets drawn with replacement).
    max_attempts: the largest k (the paper: 4).
    keep_rate: the probability that a trajectory is a keep trajectory: its target is also
      its last attempt (after max(k, 1) - 1 closest incorrect answers). 0: the paper's data.

  Returns:
    The trajectories, and counts: problems, problems without a correct answer
    (they contribute nothing), trajectories, how many have each k, and the keep ones.
  """
  if not len(texts) == len(correct) == len(rngs):
    raise ValueError(f"texts, correct and rngs must have one entry per problem; got "
                     f"{len(texts)}, {len(correct)} and {len(rngs)}.")
  if per_problem < 1 or max_attempts < 0:
    raise ValueError(f"per_problem={per_problem} must be >= 1 and max_attempts="
                     f"{max_attempts} >= 0.")
  if not 0.0 <= keep_rate <= 1.0 or (keep_rate > 0 and max_attempts < 1):
    raise ValueError(f"keep_rate={keep_rate} must be in [0, 1] (and > 0 only with "
                     f"max_attempts >= 1; got {max_attempts}).")
  out, skipped, keeps = [], 0, 0
  hist = np.zeros(max_attempts + 1, np.int64)
  for p, (answers, right, rng) in enumerate(zip(texts, correct, rngs)):
    right = np.asarray(right, bool)
    if len(right) != len(answers):
      raise ValueError(f"problem {p}: {len(answers)} answers but {len(right)} correctness "
                       "flags.")
    good, bad = np.flatnonzero(right), np.flatnonzero(~right)
    if not len(good):
      skipped += 1
      continue
    for _ in range(per_problem):
      target = int(rng.choice(good))
      k = int(rng.integers(0, max_attempts + 1))
      # Drawn only when keep trajectories are asked for: keep_rate=0 draws what it always drew.
      if keep_rate > 0 and rng.random() < keep_rate:
        attempts = closest_incorrect(answers, target, bad, min(max(k, 1) - 1, len(bad)))
        attempts += (target,)
        keeps += 1
      else:
        attempts = closest_incorrect(answers, target, bad, min(k, len(bad)))
      hist[len(attempts)] += 1
      out.append(Trajectory(problem=p, attempts=attempts, target=target))
  stats = {"problems": len(texts), "without_correct": skipped, "trajectories": len(out),
           "attempts_histogram": hist.tolist(), "keep_trajectories": keeps}
  return out, stats


def revision_texts(task: Task, problems: Sequence[Problem], texts: Sequence[Sequence[str]],
                   trajectories: Sequence[Trajectory], window: int = 4
                   ) -> list[tuple[str, ...]]:
  """(prompt pieces..., target) texts of each trajectory: the task's revision prompt
  showing the last ``window`` attempts (the sliding window of inference) as its pieces,
  then the correct answer, the target. Every problem must be a train problem (a test
  problem in the revision model's data is an error naming it)."""
  require_train(problems, "revision data")
  out = []
  for t in trajectories:
    answers = texts[t.problem]
    shown = shown_attempts(t.attempts, window)
    out.append((*task.revision_prompt_pieces(problems[t.problem], [answers[i] for i in shown]),
                answers[t.target]))
  return out


def require_train(problems: Sequence[Problem], what: str) -> None:
  """Raises ValueError naming the first of ``problems`` that is not a train problem: the
  revision model, its checkpoint choice and its gate, the likelihood verifier's LM learn from
  train problems only."""
  for p in problems:
    if p.split != "train":
      raise ValueError(f"{what}: {p.uid} is not a train problem (it learns and chooses on "
                       "train problems only).")


def policy_rows(task: Task, problems: Sequence[Problem], trajectories: int, share: float
                ) -> list[tuple[str, str]]:
  """The policy's own SFT rows (its prompt, the reference solution: no attempts) to mix into
  the revision model's ``trajectories`` rows so they make a share ``share`` of the whole:
  ``problems`` in order, repeated if there are fewer."""
  if not 0 <= share < 1:
    raise ValueError(f"share={share}: expected a number in [0, 1).")
  if not share:
    return []
  if not problems:
    raise ValueError("policy rows need problems; got none.")
  count = int(round(trajectories * share / (1 - share)))
  return [(task.format_prompt(problems[i % len(problems)]), problems[i % len(problems)].solution)
          for i in range(count)]


RETRY_STREAM = 0x52657472  # the retry rows' random stream ("Retr")


def retry_rows(task: Task, problems: Sequence[Problem], rate: float, max_attempts: int,
               seed: int) -> list[tuple[str, ...]]:
  """Retry data for the policy's own SFT mix (issue 27, item 5; Physics of Language Models
  2.2, arXiv 2408.16293: error correction is learnt from retry data in the training mix):
  each problem gets, with probability ``rate``, one row that shows 1..``max_attempts``
  (uniform) erroneous solutions of it (:meth:`Task.erroneous_solution`) in the revision
  prompt, then its reference solution as the target. Every draw comes from the problem's own
  generator (seed, stream, problem index): a problem's row does not depend on the others.
  Train problems only."""
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"retry rate={rate!r}: expected a share of the train problems in [0, 1].")
  if not rate:
    return []
  if not isinstance(max_attempts, int) or max_attempts < 1:
    raise ValueError(f"retry max_attempts={max_attempts!r}: expected an integer >= 1.")
  if not task.has_erroneous_solutions:
    raise ValueError(f"retry rate={rate}: task {task.name!r} cannot write erroneous solutions "
                     "(Task.erroneous_solution); set the rate to 0.")
  require_train(problems, "retry data")
  rows = []
  for p in problems:
    rng = np.random.default_rng(np.random.SeedSequence([seed, RETRY_STREAM, p.index]))
    if rng.random() >= rate:
      continue
    k = int(rng.integers(1, max_attempts + 1))
    attempts = [task.erroneous_solution(p, rng) for _ in range(k)]
    rows.append((*task.revision_prompt_pieces(p, attempts), p.solution))
  return rows


@dataclasses.dataclass
class RevisionData:
  """The revision data: K policy answers per train problem, and trajectories over them
  (sample indices within a problem; see :mod:`ttc_jax.training.revisions`)."""

  problem_index: np.ndarray  # (P,) train-split indices
  samples: solutions.Generations  # row p * K + s: answer s to problem p
  correct: np.ndarray  # (P * K,) bool
  trajectories: list[Trajectory]  # .problem: position in problem_index
  samples_per_problem: int

  def texts(self, tok) -> list[list[str]]:
    """Per problem, its answers as text (what the revision prompt shows)."""
    k = self.samples_per_problem
    return [[tok.decode(self.samples.row(p * k + s)) for s in range(k)]
            for p in range(len(self.problem_index))]

  def arrays(self, max_attempts: int) -> dict[str, np.ndarray]:
    attempts = np.full((len(self.trajectories), max_attempts), -1, np.int32)
    for i, t in enumerate(self.trajectories):
      attempts[i, :len(t.attempts)] = t.attempts
    return {"problem_index": self.problem_index, "tokens": self.samples.tokens,
            "lengths": self.samples.lengths, "stopped": self.samples.stopped,
            "correct": self.correct, "samples_per_problem": np.int64(self.samples_per_problem),
            "traj_problem": np.asarray([t.problem for t in self.trajectories], np.int32),
            "traj_target": np.asarray([t.target for t in self.trajectories], np.int32),
            "traj_attempts": attempts}

  @classmethod
  def from_arrays(cls, a: dict) -> "RevisionData":
    trajs = [Trajectory(problem=int(p), attempts=tuple(int(x) for x in row if x >= 0),
                                  target=int(t))
             for p, t, row in zip(a["traj_problem"], a["traj_target"], a["traj_attempts"])]
    return cls(problem_index=a["problem_index"],
               samples=solutions.Generations(tokens=a["tokens"], lengths=a["lengths"],
                                             stopped=a["stopped"]),
               correct=a["correct"], trajectories=trajs,
               samples_per_problem=int(a["samples_per_problem"]))

  @classmethod
  def concat(cls, parts: list["RevisionData"]) -> "RevisionData":
    k = parts[0].samples_per_problem
    width = max(p.samples.tokens.shape[1] for p in parts)
    pad = lambda x: np.pad(x, ((0, 0), (0, width - x.shape[1])))
    trajs, offset = [], 0
    for part in parts:
      trajs += [dataclasses.replace(t, problem=t.problem + offset) for t in part.trajectories]
      offset += len(part.problem_index)
    return cls(problem_index=np.concatenate([p.problem_index for p in parts]),
               samples=solutions.Generations(
                   tokens=np.concatenate([pad(p.samples.tokens) for p in parts]),
                   lengths=np.concatenate([p.samples.lengths for p in parts]),
                   stopped=np.concatenate([p.samples.stopped for p in parts])),
               correct=np.concatenate([p.correct for p in parts]), trajectories=trajs,
               samples_per_problem=k)


def revision_stats(rd: RevisionData, max_attempts: int) -> dict:
  per = rd.correct.reshape(len(rd.problem_index), rd.samples_per_problem)
  hist = np.bincount([len(t.attempts) for t in rd.trajectories], minlength=max_attempts + 1)
  return {"problems": int(len(rd.problem_index)),
          "without_correct": int((~per.any(1)).sum()),
          "sample_accuracy": float(rd.correct.mean()),
          "trajectories": len(rd.trajectories), "attempts_histogram": hist.tolist(),
          "keep_trajectories": sum(t.keep for t in rd.trajectories)}
