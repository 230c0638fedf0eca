"""The names of the verifier scores the study compares: built and read here only.

A score name says which model scored a solution and how: ``prm_last``, ``prm_min`` and
``prm_prod`` are the PRM's step scores aggregated (:data:`STEP_AGGREGATIONS`), ``orm`` the
ORM's score of the whole solution, ``policy_likelihood`` the policy's least likely generated
token (a reference that needs no training).
"""

from __future__ import annotations

from ttc_jax.verifiers.scoring import STEP_AGGREGATIONS

PRM, ORM, POLICY = "prm", "orm", "policy"  # the models that score
LIKELIHOOD = "policy_likelihood"


def prm_score(aggregation: str) -> str:
  """The name of the PRM's step scores aggregated by ``aggregation`` (e.g. 'prm_last')."""
  if aggregation not in STEP_AGGREGATIONS:
    raise ValueError(f"step aggregation {aggregation!r}: expected one of {STEP_AGGREGATIONS}.")
  return f"{PRM}_{aggregation}"


PRM_SCORES = tuple(prm_score(h) for h in STEP_AGGREGATIONS)
SCORES = PRM_SCORES + (ORM, LIKELIHOOD)


def model_of(score: str) -> str | None:
  """The model a score name needs ('prm', 'orm' or 'policy'); None for a name of none."""
  if score in PRM_SCORES:
    return PRM
  return {ORM: ORM, LIKELIHOOD: POLICY}.get(score)
