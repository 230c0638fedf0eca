"""The study's results as typed records: a per-problem outcome, a cell, a curve point.

* :class:`Outcome`: one problem's result in one run of a method (its answer, whether it is
  correct, what it spent).
* :class:`Cell`: one (method, params, seed) run on every study problem: the search sweep's
  and the revision sweep's unit of work, one :class:`Outcome` per problem.
* :class:`CurvePoint`: one (method, params) over its seeds (or a compute-optimal policy at
  one budget): accuracy with its interval, per difficulty bin, each problem's outcome
  averaged over seeds (``per_problem``, for paired tests) and its cost.

JSON stays the on-disk form; it is written and read only through ``to_json`` and
``from_json`` here. A cell is stored by columns (``"problems"``, ``"correct"``,
``"answers"``, ... one list per field of :class:`Outcome`), so a stored file reads as
before. Method names are the search registry's (:mod:`ttc_jax.search.registry`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np


def cell_key(method: str, params: Mapping[str, Any], seed: int) -> str:
  """A cell's key in a sweep's cell log: method, params (sorted) and seed."""
  return (f"{method}/" + ",".join(f"{k}={v}" for k, v in sorted(params.items()))
          + f"/seed={seed}")


@dataclasses.dataclass(frozen=True)
class Outcome:
  """One problem's result in a cell."""

  problem: str  # the problem's uid
  correct: int  # 1 if the selected answer is correct, else 0
  answer: str | None  # the selected answer (None: no finished candidate)
  finished: int  # finished candidates the answer was selected from
  policy_tokens: int  # tokens the policy read or wrote for this problem
  prm_tokens: int  # tokens the verifier read
  flops: float  # policy_flops + prm_flops
  policy_flops: float
  prm_flops: float


# Each Outcome field's column in a stored cell.
_COLUMNS = {"problem": "problems", "correct": "correct", "answer": "answers",
            "finished": "finished", "policy_tokens": "policy_tokens",
            "prm_tokens": "prm_tokens", "flops": "flops", "policy_flops": "policy_flops",
            "prm_flops": "prm_flops"}
_CASTS = {"problem": str, "correct": int, "finished": int, "policy_tokens": int,
          "prm_tokens": int, "flops": float, "policy_flops": float, "prm_flops": float}


@dataclasses.dataclass(frozen=True)
class Cell:
  """One (method, params, seed) run on the study problems: one outcome per problem.

  ``budget_generations`` is the generation budget the method spends per problem (the
  x-axis of every curve); ``wall_s`` excludes compilation (``compile_s``).
  """

  method: str
  params: Mapping[str, int]
  seed: int
  budget_generations: float
  outcomes: tuple[Outcome, ...]
  wall_s: float
  compile_s: float = 0.0

  @property
  def key(self) -> str:
    return cell_key(self.method, self.params, self.seed)

  @property
  def problems(self) -> list[str]:
    return [o.problem for o in self.outcomes]

  def column(self, field: str) -> np.ndarray:
    """One Outcome field over the problems (e.g. ``cell.column("correct")``)."""
    return np.asarray([getattr(o, field) for o in self.outcomes])

  def to_json(self) -> dict:
    out = {"key": self.key, "method": self.method, "params": dict(self.params),
           "seed": self.seed, "budget_generations": self.budget_generations,
           "wall_s": self.wall_s, "compile_s": self.compile_s}
    for field, column in _COLUMNS.items():
      out[column] = [getattr(o, field) for o in self.outcomes]
    return out

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> "Cell":
    columns = {f: d[c] for f, c in _COLUMNS.items()}
    n = len(columns["problem"])
    bad = [c for f, c in _COLUMNS.items() if len(columns[f]) != n]
    if bad:
      raise ValueError(f"cell {d.get('key')!r}: columns {bad} do not have one entry per "
                       f"problem ({n}).")
    outcomes = tuple(Outcome(**{f: _CASTS[f](columns[f][i]) if f in _CASTS else columns[f][i]
                                for f in _COLUMNS}) for i in range(n))
    return cls(method=d["method"], params=dict(d["params"]), seed=int(d["seed"]),
               budget_generations=d["budget_generations"], outcomes=outcomes,
               wall_s=float(d["wall_s"]), compile_s=float(d.get("compile_s", 0.0)))


@dataclasses.dataclass(frozen=True)
class CurvePoint:
  """A (method, params) over its seeds, or a compute-optimal policy at one budget.

  Every point has the fields up to ``flops_by_problem``. A point summarized from cells
  (:func:`ttc_jax.analysis.study.summarize`) also has the seeds and mean costs per seed; a
  compute-optimal point (:mod:`ttc_jax.analysis.compute_optimal`) has the choice its policy
  made and, when cross-validated, how stable that choice was. Fields a point does not have
  are None and left out of its JSON.
  """

  method: str
  params: Mapping[str, Any]
  budget_generations: float
  accuracy: float
  ci: Sequence[float]  # 95% bootstrap interval over problems
  accuracy_by_bin: Sequence[float]  # NaN for a bin without problems
  ci_by_bin: Sequence[Sequence[float]]
  per_problem: Sequence[float]  # each problem's outcome, mean over seeds (or repeats)
  flops: float  # total over problems (mean over seeds)
  flops_by_problem: Sequence[float] | None = None
  # Summarized from cells:
  seeds: Sequence[int] | None = None
  seed_accuracy: Sequence[float] | None = None
  seed_std: float | None = None
  policy_tokens: int | None = None  # totals over problems, mean over seeds
  prm_tokens: int | None = None
  wall_s: float | None = None
  # A compute-optimal policy:
  choice: Sequence[str] | None = None  # per bin, the candidate chosen on all problems
  repeat_accuracy: Sequence[float] | None = None  # cross-validated: accuracy of each repeat
  repeat_std: float | None = None
  choice_counts: Sequence[Mapping[str, int]] | None = None  # per bin, over the selections
  choice_agreement: Sequence[float] | None = None  # per bin, share of selections = choice
  selections: int | None = None  # repeats x folds
  folds: int | None = None
  repeats: int | None = None

  @property
  def num_problems(self) -> int:
    return len(self.per_problem)

  @property
  def flops_per_problem(self) -> float:
    return float(self.flops) / self.num_problems

  def to_json(self, fields: Sequence[str] | None = None) -> dict:
    """The point as JSON (only ``fields`` if given; fields that are None are left out)."""
    names = [f.name for f in dataclasses.fields(self)] if fields is None else fields
    out = {}
    for name in names:
      v = getattr(self, name)
      if v is not None:
        out[name] = dict(v) if name == "params" else v
    return out

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> "CurvePoint":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"curve point {d.get('method')!r}: unknown fields {unknown}.")
    return cls(**d)


def cells_from_json(rows: Sequence[Mapping[str, Any]]) -> list[Cell]:
  return [Cell.from_json(r) for r in rows]


def points_from_json(rows: Sequence[Mapping[str, Any]]) -> list[CurvePoint]:
  return [CurvePoint.from_json(r) for r in rows]
