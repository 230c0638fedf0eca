"""MATH and GSM8K from local JSON Lines files (no download), graded with math-verify.

The files are those of ``shared/data`` (its README gives their sources and checksums):
``math/test.jsonl`` (MATH-500), ``math/train_reconstructed.jsonl`` (the 12k train split of
PRM800K), ``gsm8k/{train,test}.jsonl``. A task's ``params`` hold the files' names and
sha256 digests, so the TFDS materialization (:mod:`ttc_jax.tasks.tfds_builder`) and every
cached result are keyed by the data's content, not by where it lies.

Final answers: MATH, the last ``\\boxed{...}`` of a solution (balanced braces); GSM8K, the
number after the last ``####``, else the last ``\\boxed{...}``. Steps are separated by
"\\n\\n". Grading: :class:`ttc_jax.tasks.grading.Grader` (math-verify, time-limited).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from typing import Any, Mapping

from ttc_jax.tasks import base
from ttc_jax.tasks import grading


def last_boxed(text: str) -> str | None:
  """The contents of the last ``\\boxed{...}`` (or ``\\fbox{...}``; braces balanced) or of a
  ``\\boxed x`` without braces; None if there is none or it is unclosed."""
  if not isinstance(text, str):
    return None
  boxed, fbox = text.rfind("\\boxed"), text.rfind("\\fbox")
  start, skip = (boxed, len("\\boxed")) if boxed >= fbox else (fbox, len("\\fbox"))
  if start < 0:
    return None
  rest = text[start + skip:]
  if rest.startswith(" ") and not rest.lstrip().startswith("{"):
    m = re.match(r"\s+([^\s$]+)", rest)
    return m.group(1) if m else None
  rest = rest.lstrip()
  if not rest.startswith("{"):
    return None
  depth = 0
  for i, ch in enumerate(rest):
    depth += (ch == "{") - (ch == "}")
    if depth == 0:
      inner = rest[1:i].strip()
      return inner or None
  return None


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


class _JsonlTask(base.Task):
  """A task over two local JSON Lines files (train, test)."""

  step_delimiter = "\n\n"
  FILES: Mapping[str, str] = {}

  def __init__(self, data_dir: str = "", grading_time_limit_s: float = 1.0):
    data_dir = data_dir or os.environ.get("TTC_JAX_DATA_DIR", "")
    if not data_dir:
      raise ValueError(f"task {self.name!r} needs data_dir (--config.task.data_dir=DIR, or "
                       "$TTC_JAX_DATA_DIR): the folder holding math/ and gsm8k/ JSON Lines "
                       "files (shared/data).")
    self.data_dir = data_dir
    self.paths = {split: os.path.join(data_dir, rel) for split, rel in self.FILES.items()}
    missing = [p for p in self.paths.values() if not os.path.isfile(p)]
    if missing:
      raise ValueError(f"task {self.name!r}: data files {missing} not found under "
                       f"data_dir={data_dir!r}.")
    self.grading_time_limit_s = grading_time_limit_s

  @functools.cached_property
  def params(self) -> Mapping[str, Any]:
    return {"files": dict(self.FILES),
            "sha256": {split: _sha256(p) for split, p in sorted(self.paths.items())}}

  # The text fields every row of the task's files must have.
  FIELDS: tuple[str, ...] = ()

  @functools.cached_property
  def _rows(self) -> dict[str, list[dict]]:
    """Each split's rows; a ValueError naming the file and line for a row that is not a JSON
    object with the task's text fields (a truncated or damaged file)."""
    out = {}
    for split, path in self.paths.items():
      rows = []
      with open(path, encoding="utf-8", errors="strict") as f:
        try:
          lines = f.read().split("\n")
        except UnicodeDecodeError as e:
          raise ValueError(f"task {self.name!r}: {path} is not UTF-8 text ({e.reason} at byte "
                           f"{e.start}): the file is damaged.") from None
      for number, line in enumerate(lines, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except ValueError as e:
          raise ValueError(f"task {self.name!r}: {path} line {number} is not a JSON object "
                           f"({e.msg}): the file looks truncated or damaged.") from None
        bad = [k for k in self.FIELDS if not isinstance(row, dict) or not isinstance(
            row.get(k), str)] if isinstance(row, dict) else list(self.FIELDS)
        if bad:
          raise ValueError(f"task {self.name!r}: {path} line {number} lacks the text field(s) "
                           f"{bad} (expected {list(self.FIELDS)}): the file looks truncated "
                           "or is not this task's data.")
        rows.append(row)
      if not rows:
        raise ValueError(f"task {self.name!r}: {path} holds no problem.")
      out[split] = rows
    return out

  def num_examples(self, split: str) -> int:
    if split not in base.SPLITS:
      raise ValueError(f"Unknown split {split!r}; expected one of {base.SPLITS}.")
    return len(self._rows[split])

  def get(self, split: str, index: int) -> base.Problem:
    self._check_split_index(split, index)
    return self._problem(split, index, self._rows[split][index])

  @property
  def grader(self) -> grading.Grader:
    return grading.shared_grader(self.grading_time_limit_s)

  def normalize_answer(self, raw: str) -> str | None:
    raw = raw.strip() if isinstance(raw, str) else ""
    return raw or None

  def is_correct(self, solution_text: str, problem: base.Problem) -> bool:
    return self.grader.grade(problem.answer, self.extract_answer(solution_text))

  def _problem(self, split: str, index: int, row: dict) -> base.Problem:
    raise NotImplementedError


class MathTask(_JsonlTask):
  """MATH: 12,000 train problems (PRM800K's split) and the 500 of MATH-500."""

  name = "math"
  answer_marker = "\\boxed"
  difficulty_label = "MATH level"
  FILES = {"train": "math/train_reconstructed.jsonl", "test": "math/test.jsonl"}
  FIELDS = ("problem", "solution", "answer")
  DEFAULTS = dict(data_dir="", grading_time_limit_s=1.0)

  def _problem(self, split, index, row):
    return base.Problem(uid=f"{self.name}/{split}/{index}", index=index, split=split,
                        question=row["problem"], solution=row["solution"],
                        answer=row["answer"].strip(), difficulty=int(row.get("level") or 0))

  def extract_answer(self, solution_text: str) -> str | None:
    found = last_boxed(solution_text)
    return None if found is None else self.normalize_answer(found)


class GSM8KTask(_JsonlTask):
  """GSM8K: 7,473 train and 1,319 test problems; the reference solution's steps are its
  reasoning lines (calculator annotations <<...>> removed), then "#### answer"."""

  name = "gsm8k"
  answer_marker = "####"
  difficulty_label = "reasoning steps"
  FILES = {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"}
  FIELDS = ("question", "answer")
  DEFAULTS = dict(data_dir="", grading_time_limit_s=1.0)
  _NUMBER = re.compile(r"-?[\d,]*\.?\d+")

  def _problem(self, split, index, row):
    reasoning, _, answer = row["answer"].rpartition("####")
    lines = [re.sub(r"<<[^>]*>>", "", l).strip() for l in reasoning.strip().split("\n")]
    lines = [l for l in lines if l]
    answer = self.normalize_answer(answer) or ""
    return base.Problem(uid=f"{self.name}/{split}/{index}", index=index, split=split,
                        question=row["question"],
                        solution=self.join_steps(lines + [f"#### {answer}"]),
                        answer=answer, difficulty=len(lines))

  def normalize_answer(self, raw: str) -> str | None:
    raw = raw.strip() if isinstance(raw, str) else ""
    m = self._NUMBER.search(raw)
    return m.group(0).replace(",", "") if m else (raw or None)

  def extract_answer(self, solution_text: str) -> str | None:
    if not isinstance(solution_text, str):
      return None
    if "####" in solution_text:
      return self.normalize_answer(solution_text.rsplit("####", 1)[1].split("\n")[0])
    found = last_boxed(solution_text)
    return None if found is None else self.normalize_answer(found)
