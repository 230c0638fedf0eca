"""The one place that names search methods: which strategy a name runs, with which parameters.

A method's name is what cells, curves and reports store (``"beam_m4"``, ``"dvts_m4"``,
``"lookahead_k3"``, ``"revisions_hier_orm"``, ...). It is made here from a family and the
parameters fixed for the whole curve, and read back only here (:func:`method`): everything
else asks a :class:`Method` for its family, its label or its fixed parameters, never looks
inside a name.

:func:`sweep` is the search sweep's grid: the cells (:class:`SweepCell`: method, params,
seed, strategy) of a ``search`` config section, in run order.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

from ttc_jax.search.beam import DVTS
from ttc_jax.search.beam import BeamSearch
from ttc_jax.search.beam import ParticleFilter
from ttc_jax.search.beam import default_width
from ttc_jax.search.best_of_n import BestOfN
from ttc_jax.search import records

# Families of the search sweep, in the order of search.methods' choices (SWEEP_METHODS).
BEST_OF_N, BEAM, BEAM_SQRT, DVTS_FAMILY, PARTICLES, LOOKAHEAD = (
    "best_of_n", "beam", "beam_sqrt", "dvts", "particles", "lookahead")
SWEEP_METHODS = (BEST_OF_N, BEAM, BEAM_SQRT, DVTS_FAMILY, PARTICLES, LOOKAHEAD)
# Sequential revisions: one method per selection of the final answer.
REVISIONS = "revisions"
# Search then revise (beyond the paper): a search's best candidate revised by the revision
# model; one method per search method and final-answer selection (HYBRID_SELECTIONS).
HYBRID = "hybrid"
HYBRID_SELECTIONS = ("last", "vote")
# The tree searches (a PRM call at every step), as opposed to best-of-N and revisions.
TREE_FAMILIES = (BEAM, BEAM_SQRT, DVTS_FAMILY, PARTICLES, LOOKAHEAD)


@dataclasses.dataclass(frozen=True)
class Method:
  """A method as stored by name: its family and the parameters its name fixes."""

  name: str
  family: str
  fixed: tuple[tuple[str, Any], ...] = ()  # e.g. (("m", 4),): the beam width of "beam_m4"

  @property
  def params(self) -> dict[str, Any]:
    return dict(self.fixed)

  @property
  def tree(self) -> bool:
    return self.family in TREE_FAMILIES

  def label(self, params: dict | None = None) -> str:
    """A reader's name (from the cell's ``params`` where the name fixes none)."""
    p, params = self.params, params or {}
    if self.family == BEST_OF_N:
      return "best-of-N weighted"
    if self.family == BEAM_SQRT:
      return "beam search M=sqrt(N)"
    if self.family == BEAM:
      return f"beam search M={p['m']}"
    if self.family == DVTS_FAMILY:
      return f"DVTS M={p['m']}"
    if self.family == PARTICLES:
      return "particle filtering"
    if self.family == LOOKAHEAD:
      return f"lookahead k={p['k']}" + (f" (M={params['m']})" if params.get("m") else "")
    if self.family == HYBRID:
      return f"{method(p['search']).label(params)}, then revised ({p['selection']})"
    return self.name


def name_of(family: str, **fixed) -> str:
  """The stored name of a method of ``family`` with ``fixed`` parameters (see :func:`method`)."""
  if family == BEST_OF_N:
    return "best_of_n_weighted"
  if family in (BEAM, DVTS_FAMILY):
    return f"{family}_m{fixed['m']}"
  if family == LOOKAHEAD:
    return f"lookahead_k{fixed['k']}"
  if family == REVISIONS:
    return f"revisions_{fixed['selection']}"
  if family == HYBRID:
    if fixed["selection"] not in HYBRID_SELECTIONS or method(fixed["search"]).family in (
        REVISIONS, HYBRID, "other"):
      raise ValueError(f"hybrid of {fixed['search']!r} with {fixed['selection']!r}: expected a "
                       f"search method and one of {HYBRID_SELECTIONS}.")
    return f"hybrid_{fixed['search']}_{fixed['selection']}"
  if family in (BEAM_SQRT, PARTICLES):
    return family
  raise ValueError(f"unknown search family {family!r}")


_FIXED = re.compile(r"^(beam|dvts)_m(\d+)$|^lookahead_k(\d+)$|^revisions_(\w+)$")
_HYBRID = re.compile(r"^hybrid_(\w+)_(" + "|".join(HYBRID_SELECTIONS) + r")$")


def method(name: str) -> Method:
  """The method a stored name stands for (the one reader of names); a name of no family
  (e.g. a compute-optimal curve's) is a Method of family "other"."""
  if name == "best_of_n_weighted":
    return Method(name, BEST_OF_N)
  if name in (BEAM_SQRT, PARTICLES):
    return Method(name, name)
  h = _HYBRID.match(name)
  if h is not None and method(h.group(1)).family not in (REVISIONS, HYBRID, "other"):
    return Method(name, HYBRID, (("search", h.group(1)), ("selection", h.group(2))))
  m = _FIXED.match(name)
  if m is None:
    return Method(name, "other")
  if m.group(1):
    return Method(name, m.group(1), (("m", int(m.group(2))),))
  if m.group(3):
    return Method(name, LOOKAHEAD, (("k", int(m.group(3))),))
  return Method(name, REVISIONS, (("selection", m.group(4)),))


def reference_beam(names: Sequence[str]) -> str | None:
  """The beam search a comparison stands for: the fixed-width one (beam_mM) if swept, else
  M = sqrt(N) if swept, else None."""
  return next((n for n in names if method(n).family == BEAM),
              next((n for n in names if method(n).family == BEAM_SQRT), None))


def first_of(names: Sequence[str], family: str) -> str | None:
  """The first of ``names`` of ``family`` (None if none is)."""
  return next((n for n in names if method(n).family == family), None)


def of_family(names: Sequence[str], family: str) -> list[str]:
  return [n for n in names if method(n).family == family]


def selection_of(name: str) -> str:
  """The answer selection of a revisions method."""
  m = method(name)
  if m.family != REVISIONS:
    raise ValueError(f"{name!r} is not a revisions method")
  return m.params["selection"]


@dataclasses.dataclass(frozen=True)
class SweepCell:
  """One cell of the search sweep to run: a method with its params, a seed, the strategy."""

  method: str
  params: dict
  seed: int
  strategy: Any  # the search strategy (a frozen dataclass of ttc_jax.search)

  @property
  def key(self) -> str:
    return records.cell_key(self.method, self.params, self.seed)


def sweep(search) -> list[SweepCell]:
  """The cells of a ``search`` config section in run order (by seed, then method, then
  budget: the first seed's curves are complete first)."""
  m, rounds = search.beam_width, search.max_rounds
  alpha = float(search.get("advantage", 0.0))
  per_seed = []

  def add(family, params, strategy, **fixed):
    per_seed.append((name_of(family, **fixed), params, strategy))

  for family in search.methods:
    for n in search.budgets:
      if n == 1 and family != BEST_OF_N:
        continue  # one generation is one policy sample, whatever the search: best-of-1
      if family == BEST_OF_N:
        add(BEST_OF_N, {"n": n}, BestOfN(n=n, selection="weighted", step_aggregation="last"))
      elif family == BEAM:
        w = min(m, n)
        add(BEAM, {"n": n, "m": w},
            BeamSearch(n=n, width=w, max_rounds=rounds, advantage=alpha), m=m)
      elif family == BEAM_SQRT:
        w = default_width(n)
        add(BEAM_SQRT, {"n": n, "m": w},
            BeamSearch(n=n, width=w, max_rounds=rounds, advantage=alpha))
      elif family == DVTS_FAMILY:
        w = min(m, n)
        add(DVTS_FAMILY, {"n": n, "m": w}, DVTS(n=n, width=w, max_rounds=rounds), m=m)
      elif family == PARTICLES:
        add(PARTICLES, {"n": n}, ParticleFilter(n=n, temperature=search.particle_temperature,
                                                max_rounds=rounds))
    if family == LOOKAHEAD:
      for k in search.lookahead_steps:
        for n in search.budgets:
          if n < m or n * (k + 1) > max(search.budgets):
            continue  # the budget N x (k + 1) must fit the sweep's range
          add(LOOKAHEAD, {"n": n, "m": m, "k": k},
              BeamSearch(n=n, width=m, lookahead=k, max_rounds=rounds,
                         advantage=alpha), k=k)
  return [SweepCell(method, params, s, strategy) for s in search.seeds
          for method, params, strategy in per_seed]
